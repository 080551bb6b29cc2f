//! The signals that end a run: Ctrl-C (SIGINT), SIGTERM and SIGHUP. A command that holds a
//! stopped target catches them, takes its breakpoints out, lets the target continue, and only
//! then exits (bounded in time). A second one while it does is said and changes nothing (an
//! impatient Ctrl-C twice still leaves the target clean); a third exits at once (the record of
//! breakpoints written lets the next session take them out).

use std::time::Duration;

/// How long letting the target continue may take when a signal ends the run.
pub const RESUME_WITHIN: Duration = Duration::from_secs(15);

/// A signal that ends the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sig {
    /// Ctrl-C.
    Interrupt,
    /// SIGTERM.
    Terminate,
    /// SIGHUP (the terminal went away).
    Hangup,
}

impl Sig {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Sig::Interrupt => "interrupted (Ctrl-C)",
            Sig::Terminate => "terminated (SIGTERM)",
            Sig::Hangup => "hung up (SIGHUP)",
        }
    }

    /// The exit code, as shells report a death by this signal (128 + its number).
    pub fn exit_code(self) -> u8 {
        match self {
            Sig::Interrupt => 130,
            Sig::Terminate => 143,
            Sig::Hangup => 129,
        }
    }
}

/// The ending signals a process takes before it gives up cleaning up and exits at once.
pub const GIVE_UP_AT: u32 = 3;

/// The ending signals, caught from when this is made.
pub struct Ending {
    /// Ending signals received so far.
    count: u32,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
    #[cfg(not(unix))]
    int: bool,
}

impl Ending {
    /// Catches SIGINT, SIGTERM and SIGHUP (Ctrl-C elsewhere) from now on.
    pub fn catch() -> std::io::Result<Ending> {
        Ending::make(true)
    }

    /// Catches SIGTERM and SIGHUP only (where Ctrl-C means something else, as at the prompt).
    pub fn catch_but_interrupt() -> std::io::Result<Ending> {
        Ending::make(false)
    }

    fn make(interrupt: bool) -> std::io::Result<Ending> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Ending {
                count: 0,
                int: if interrupt {
                    Some(signal(SignalKind::interrupt())?)
                } else {
                    None
                },
                term: signal(SignalKind::terminate())?,
                hup: signal(SignalKind::hangup())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Ending {
            count: 0,
            int: interrupt,
        })
    }

    /// The next ending signal.
    pub async fn next(&mut self) -> Sig {
        let s = self.receive().await;
        self.count += 1;
        s
    }

    /// While cleaning up after an ending: the signal that makes [`GIVE_UP_AT`], and the
    /// process exits at once. Those before it are said (`doing`: what goes on meanwhile).
    pub async fn give_up(&mut self, doing: &str) -> Sig {
        loop {
            let s = self.next().await;
            if self.count >= GIVE_UP_AT {
                return s;
            }
            eprintln!(
                "kdnet: {} again: still {doing}; once more exits at once",
                s.name()
            );
        }
    }

    async fn receive(&mut self) -> Sig {
        #[cfg(unix)]
        {
            let int = async {
                match &mut self.int {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(()) = int => Sig::Interrupt,
                Some(()) = self.term.recv() => Sig::Terminate,
                Some(()) = self.hup.recv() => Sig::Hangup,
                else => std::future::pending().await,
            }
        }
        #[cfg(not(unix))]
        {
            if self.int && tokio::signal::ctrl_c().await.is_ok() {
                return Sig::Interrupt;
            }
            std::future::pending().await
        }
    }
}

/// After `sig`: lets the target of `host` continue (unless `leave_stopped`), first waiting
/// briefly for a break-in under way (`breaking`) to land, so a target about to stop is not
/// left stopped. The ending signal that makes [`GIVE_UP_AT`] meanwhile gives up at once. The
/// exit code.
pub async fn resume_before_exit(
    host: &kdnet_live::Session,
    sig: Sig,
    signals: &mut Ending,
    leave_stopped: bool,
    breaking: bool,
) -> u8 {
    if leave_stopped {
        eprintln!(
            "kdnet: {}: the target stays stopped (--leave-stopped)",
            sig.name()
        );
        return sig.exit_code();
    }
    eprintln!(
        "kdnet: {}: letting the target continue before exiting (at most {} s)",
        sig.name(),
        RESUME_WITHIN.as_secs()
    );
    let resume = async {
        if breaking && !host.status().stopped {
            let mut w = host.watch();
            let _ = tokio::time::timeout(Duration::from_secs(3), w.wait_for(|s| s.stopped)).await;
        }
        let mut went = None;
        // A `g` under way may have breakpoints in the running target (and, until it sees the
        // cancel, may write them once more): stop it, take them out, let it go, until none
        // is left.
        for _ in 0..3 {
            if !host.breakpoints_written().is_empty() && !host.status().stopped {
                let _ = host.break_in(Duration::from_secs(5)).await;
            }
            if host.status().stopped {
                // Whatever is being read: the read in flight is abandoned.
                went = Some(host.go_now(sig.name()).await);
            }
            if host.breakpoints_written().is_empty() {
                break;
            }
        }
        crate::recovery::settled(host);
        match went {
            Some(r) => r.map(|()| true),
            None => Ok(false),
        }
    };
    tokio::select! {
        r = tokio::time::timeout(RESUME_WITHIN, resume) => match r {
            Ok(Ok(true)) => eprintln!("kdnet: the target continues"),
            Ok(Ok(false)) => eprintln!("kdnet: the target was not stopped"),
            Ok(Err(e)) => eprintln!("kdnet: could not let the target continue: {e}"),
            Err(_) => eprintln!(
                "kdnet: could not let the target continue within {} s",
                RESUME_WITHIN.as_secs()
            ),
        },
        s = signals.give_up("letting the target continue") => eprintln!(
            "kdnet: {} again: exiting at once; the target may stay stopped (the next session takes out the breakpoints left in it)",
            s.name()
        ),
    }
    sig.exit_code()
}
