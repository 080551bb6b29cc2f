//! The few operating-system calls the standard library lacks, as safe functions. The only
//! module of the workspace allowed `unsafe` (`[workspace.lints]` denies it everywhere else).
#![allow(unsafe_code)]

/// The real user id of this process.
#[cfg(unix)]
pub fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// Sets the file-creation mask; returns the previous one.
#[cfg(unix)]
pub fn umask(mask: u32) -> u32 {
    // SAFETY: umask only swaps the process's file-creation mask.
    unsafe { libc::umask(mask as libc::mode_t) as u32 }
}

/// Takes an exclusive advisory lock on `f` without waiting: whether it was taken (it is held
/// until the file is closed).
#[cfg(unix)]
pub fn try_lock(f: &std::fs::File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: flock on a descriptor `f` owns for the length of the call; no memory involved.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Gives SIGINT back its default disposition (a handler installed by a library goes).
#[cfg(unix)]
pub fn default_sigint() {
    // SAFETY: setting a signal's disposition to the default has no preconditions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
    }
}

/// CPU time (user + system) this process has used, if the system says.
#[cfg(unix)]
pub fn cpu_time() -> Option<std::time::Duration> {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole rusage into the buffer we own; it is read only after
    // the call succeeded.
    let u = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, u.as_mut_ptr()) != 0 {
            return None;
        }
        u.assume_init()
    };
    let tv = |t: libc::timeval| {
        std::time::Duration::from_secs(t.tv_sec.max(0) as u64)
            + std::time::Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    Some(tv(u.ru_utime) + tv(u.ru_stime))
}
