//! What a killed session leaves behind, undone by the next one.
//!
//! Breakpoints are written into a target only while it runs (a `g`), and every ending this
//! process sees takes them out before the target goes on. A `kill -9` sees nothing: the target
//! runs on with `int 3`s in it, and the first one it meets stops it, waiting for a debugger.
//! So before a breakpoint is written the session records it in a file of the user's state
//! directory (one per target address, owner-only, written by rename), and removes the file
//! when none is left. A session that connects to a target with such a file, whose writer is
//! gone, takes every breakpoint out of the kernel's table (RestoreBreakPoint for the 32
//! handles, as WinDbg does when it attaches; the kernel puts the bytes back), lets the target
//! go on if it found it stopped, says so, and removes the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kdnet_commands::control::Record;
use kdnet_live::Session;

/// The directory records are kept in: `$KDNET_STATE_DIR`, else `$XDG_STATE_HOME/kdnet`,
/// else `~/.local/state/kdnet` (`%LOCALAPPDATA%\kdnet` on Windows).
pub fn state_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("KDNET_STATE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return Some(PathBuf::from(d).join("kdnet"));
    }
    if cfg!(windows)
        && let Some(d) = std::env::var_os("LOCALAPPDATA")
    {
        return Some(PathBuf::from(d).join("kdnet"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state/kdnet"))
}

/// The record file of the target at `peer` sending to this debugger's `port` (the target by
/// its address and the port bcdedit gave it: its own port changes from boot to boot).
pub fn record_path(dir: &Path, peer: SocketAddr, port: u16) -> PathBuf {
    let ip = peer.ip().to_string().replace([':', '.'], "_");
    dir.join(format!("breakpoints-{ip}-{port}.json"))
}

/// A session's record of the breakpoints it has in one target.
#[derive(Debug, Clone)]
pub struct FileRecord {
    path: PathBuf,
    peer: SocketAddr,
}

impl FileRecord {
    /// The record for the target at `peer` sending to `port`, in the state directory.
    pub fn for_target(peer: SocketAddr, port: u16) -> Option<FileRecord> {
        Some(FileRecord {
            path: record_path(&state_dir()?, peer, port),
            peer,
        })
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        let mut f = o.open(&tmp)?;
        std::io::Write::write_all(&mut f, text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

impl Record for FileRecord {
    fn written(&mut self, now: &[(u64, u32)]) -> Result<(), String> {
        if now.is_empty() {
            return match std::fs::remove_file(&self.path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(format!("{}: {e}", self.path.display())),
            };
        }
        let v = serde_json::json!({
            "pid": std::process::id(),
            "target": self.peer.to_string(),
            "breakpoints": now.iter().map(|(a, h)| serde_json::json!({
                "address": format!("{a:#x}"), "handle": h,
            })).collect::<Vec<_>>(),
        });
        write_private(&self.path, &v.to_string())
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }
}

/// Whether process `pid` is alive (another session still holding its record).
fn alive(pid: u64) -> bool {
    if pid == u64::from(std::process::id()) {
        return false;
    }
    #[cfg(target_os = "linux")]
    {
        Path::new(&format!("/proc/{pid}")).exists()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        false
    }
}

/// Undoes what a killed session left in the target `session` is connected to: see the module
/// description. Returns what it did, for the user, or None when there was nothing to do.
pub async fn recover(session: &Session) -> Option<String> {
    let peer = session.status().peer?;
    let path = record_path(&state_dir()?, peer, session.local_addr().port());
    let text = std::fs::read_to_string(&path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let pid = v["pid"].as_u64().unwrap_or(0);
    if alive(pid) {
        return Some(format!(
            "kdnet: process {pid} records breakpoints in this target and still runs; they are left to it"
        ));
    }
    let recorded = v["breakpoints"].as_array().map_or(0, Vec::len);
    let was_running = !session.status().stopped;
    if was_running && let Err(e) = session.break_in(Duration::from_secs(10)).await {
        return Some(format!(
            "kdnet: a session that ended without cleaning up (pid {pid}) recorded {recorded} breakpoint(s) in this target, but it could not be stopped to take them out: {e}"
        ));
    }
    let found = match session.take_out_all().await {
        Ok(n) => n,
        Err(e) => {
            return Some(format!(
                "kdnet: taking out the breakpoints a killed session (pid {pid}) left failed: {e}"
            ));
        }
    };
    let _ = std::fs::remove_file(&path);
    let mut said = format!(
        "kdnet: a session that ended without cleaning up (pid {pid}) left breakpoints in this target: {found} taken out of the kernel's table ({recorded} recorded)"
    );
    if was_running {
        match session.go().await {
            Ok(()) => said.push_str("; the target continues"),
            Err(e) => said.push_str(&format!("; could not let it continue: {e}")),
        }
    }
    Some(said)
}

/// Makes `e` record the breakpoints it writes into the target of `session` (see the module
/// description), and raise `moving` while it lets the target run.
pub fn attach(
    e: &mut kdnet_commands::engine::Engine,
    session: &Session,
    moving: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    if let Some(peer) = session.status().peer
        && let Some(r) = FileRecord::for_target(peer, session.local_addr().port())
    {
        e.control.record = Some(Box::new(r));
    }
    e.control.moving = Some(moving.clone());
}

/// An ending came while the engine may be inside a `g` (`moving`): it has been cancelled, and
/// stops the target and takes its breakpoints out by itself; wait for that (at most 20 s) so
/// that the target is let go after. The signal that makes [`crate::signals::GIVE_UP_AT`]
/// exits at once.
pub async fn let_motion_end(
    moving: &std::sync::atomic::AtomicBool,
    signals: &mut crate::signals::Ending,
) {
    let ordering = std::sync::atomic::Ordering::SeqCst;
    if !moving.load(ordering) {
        return;
    }
    let end = std::time::Instant::now() + Duration::from_secs(20);
    let wait = async {
        while moving.load(ordering) && std::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        () = wait => {}
        s = signals.give_up("taking the breakpoints out") => {
            eprintln!(
                "kdnet: {} again: exiting at once; the target may stay stopped (the next session takes out the breakpoints left in it)",
                s.name()
            );
            std::process::exit(i32::from(s.exit_code()));
        }
    }
}

/// The session took every breakpoint out of its target (an ending did): this process's
/// record of them goes, whatever its engine thread had time to do.
pub fn settled(session: &Session) {
    if !session.breakpoints_written().is_empty() {
        return;
    }
    let (Some(peer), Some(dir)) = (session.status().peer, state_dir()) else {
        return;
    };
    let path = record_path(&dir, peer, session.local_addr().port());
    let ours = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v["pid"].as_u64() == Some(u64::from(std::process::id())));
    if ours {
        let _ = std::fs::remove_file(&path);
    }
}
