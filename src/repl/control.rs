//! Control of the target from the prompt: a dump (always stopped) or a live session (go,
//! break in, reboot, detach), Ctrl-C and termination signals, and the target's events.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use kdnet_commands::engine::Engine;
use kdnet_live::{self as live, Event};

use super::{PrinterSlot, emit};

/// What the prompt can do to the target besides running commands.
pub trait Control {
    /// Stopped in the debugger.
    fn stopped(&self) -> bool;
    /// How many times it has stopped, and on which processor it last did.
    fn stop_serial(&self) -> (u64, u32);
    /// The kernel model (the target must be stopped).
    fn open(&mut self) -> Result<Engine, String>;
    /// Lets it run.
    fn go(&mut self) -> Result<(), String>;
    /// Stops it; the processor it stopped on.
    fn break_in(&mut self) -> Result<u32, String>;
    /// Reboots it.
    fn reboot(&mut self) -> Result<(), String>;
    /// Leaves: the target continues unless `leave_stopped`.
    fn detach(&mut self, leave_stopped: bool);
    /// The session, for a live target (one that can run).
    fn host(&self) -> Option<live::Session> {
        None
    }
}

/// A dump file: always stopped, never runs.
pub struct DumpControl {
    /// The engine, until the prompt takes it.
    pub engine: Option<Engine>,
}

impl Control for DumpControl {
    fn stopped(&self) -> bool {
        true
    }
    fn stop_serial(&self) -> (u64, u32) {
        (0, 0)
    }
    fn open(&mut self) -> Result<Engine, String> {
        self.engine
            .take()
            .ok_or_else(|| "the dump is already open".to_string())
    }
    fn go(&mut self) -> Result<(), String> {
        Err("a dump cannot run".into())
    }
    fn break_in(&mut self) -> Result<u32, String> {
        Err("a dump does not run".into())
    }
    fn reboot(&mut self) -> Result<(), String> {
        Err("a dump cannot reboot".into())
    }
    fn detach(&mut self, _leave_stopped: bool) {}
}

/// A live KDNET session.
pub(super) struct LiveControl {
    pub(super) host: live::Session,
    pub(super) rt: tokio::runtime::Handle,
    pub(super) symbols: Option<String>,
    /// Set when SIGTERM or SIGHUP arrived: the signal's handler lets the target go on.
    pub(super) ending: Arc<AtomicBool>,
    /// Raised while a `g` of the engine lets the target run.
    pub(super) moving: Arc<AtomicBool>,
}

impl Control for LiveControl {
    fn host(&self) -> Option<live::Session> {
        Some(self.host.clone())
    }
    fn stopped(&self) -> bool {
        self.host.status().stopped
    }
    fn stop_serial(&self) -> (u64, u32) {
        let s = self.host.status();
        (s.stops, s.stop.map_or(0, |x| x.processor))
    }
    fn open(&mut self) -> Result<Engine, String> {
        self.host
            .open(
                self.rt.clone(),
                crate::symbols::path(self.symbols.as_deref()),
            )
            .map(|k| {
                let mut e = Engine::new(k);
                crate::recovery::attach(&mut e, &self.host, &self.moving);
                e
            })
            .map_err(|e| e.to_string())
    }
    fn go(&mut self) -> Result<(), String> {
        self.rt.block_on(self.host.go()).map_err(|e| e.to_string())
    }
    fn break_in(&mut self) -> Result<u32, String> {
        self.rt
            .block_on(self.host.break_in(Duration::from_secs(10)))
            .map(|s| s.processor)
            .map_err(|e| e.to_string())
    }
    fn reboot(&mut self) -> Result<(), String> {
        let mut events = self.host.events();
        self.rt
            .block_on(self.host.reboot())
            .map_err(|e| e.to_string())?;
        eprintln!("kdnet: the target reboots; waiting up to 5 minutes for it to come back");
        // It comes back with a new boot's offer and a new handshake.
        self.rt.block_on(async {
            let wait = async {
                loop {
                    match events.next().await {
                        Some(Event::Connected { .. }) => return Ok(()),
                        Some(_) => {}
                        None => return Err("the session closed".to_string()),
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(300), wait)
                .await
                .map_err(|_| "the target did not come back within 5 minutes".to_string())?
        })
    }
    fn detach(&mut self, leave_stopped: bool) {
        if self.ending.load(Ordering::SeqCst) {
            return;
        }
        if !self.stopped() {
            eprintln!("kdnet: detached; the target runs");
        } else if leave_stopped {
            eprintln!("kdnet: detached; the target stays stopped");
        } else {
            match self.go() {
                Ok(()) => eprintln!("kdnet: detached; the target continues"),
                Err(e) => eprintln!("kdnet: could not let the target continue: {e}"),
            }
        }
    }
}

pub(super) fn break_in(control: &mut dyn Control) {
    match control.break_in() {
        Ok(p) => eprintln!("kdnet: stopped on processor {p}"),
        Err(e) => eprintln!("kdnet: could not break in: {e}"),
    }
}

/// Ctrl-C outside the line editor (while a command runs, or when input is not a terminal):
/// cancels the running command, or breaks into a running target. Call it after the line
/// editor exists: the editor installs its own SIGINT handler, and this registration must come
/// after it to be the one that runs.
pub(super) fn watch_interrupts(
    host: Option<live::Session>,
    cancel: Arc<AtomicBool>,
    busy: Arc<AtomicBool>,
) {
    // The line editor's own SIGINT handler goes: chained behind ours it would leave a stale
    // interrupt that ends the next prompt as if Ctrl-C had been typed there.
    #[cfg(unix)]
    crate::sys::default_sigint();
    #[cfg(unix)]
    let mut sigint = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kdnet: Ctrl-C will not cancel commands: {e}");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            #[cfg(unix)]
            if sigint.recv().await.is_none() {
                break;
            }
            #[cfg(not(unix))]
            if tokio::signal::ctrl_c().await.is_err() {
                break;
            }
            if busy.load(Ordering::SeqCst) {
                cancel.store(true, Ordering::SeqCst);
                eprintln!("^C: cancelling the command");
            } else if let Some(h) = &host {
                if !h.status().stopped {
                    eprintln!("^C: breaking in");
                    if let Err(e) = h.break_in(Duration::from_secs(10)).await {
                        eprintln!("kdnet: could not break in: {e}");
                    }
                }
            } else {
                std::process::exit(130);
            }
        }
    });
}

/// SIGTERM or SIGHUP: the command under way is cancelled, the target continues (unless
/// `--leave-stopped`), and the process exits (Ctrl-C keeps its meaning at the prompt).
/// The flag it returns is set as soon as such a signal arrives.
pub(super) fn resume_on_termination(
    host: live::Session,
    cancel: Arc<AtomicBool>,
    moving: Arc<AtomicBool>,
    leave_stopped: bool,
) -> anyhow::Result<Arc<AtomicBool>> {
    let mut signals = crate::signals::Ending::catch_but_interrupt().context("catching signals")?;
    let ending = Arc::new(AtomicBool::new(false));
    let flag = ending.clone();
    tokio::spawn(async move {
        let sig = signals.next().await;
        flag.store(true, Ordering::SeqCst);
        cancel.store(true, Ordering::SeqCst);
        // A `g` under way stops the target and takes its breakpoints out first.
        crate::recovery::let_motion_end(&moving, &mut signals).await;
        let code =
            crate::signals::resume_before_exit(&host, sig, &mut signals, leave_stopped, false)
                .await;
        std::process::exit(i32::from(code));
    });
    Ok(ending)
}

/// Prints the target's DbgPrint output and stops as they happen.
pub(super) fn watch_events(host: &live::Session, printer: PrinterSlot, moving: Arc<AtomicBool>) {
    let mut events = host.events();
    tokio::spawn(async move {
        while let Some(ev) = events.next().await {
            let text = match ev {
                Event::Print(text) => text,
                // A `g` of the engine reports the stop that ends it; the hits it judged and
                // went on from are its own.
                Event::Stopped(_) if moving.load(Ordering::SeqCst) => continue,
                Event::Stopped(stop) => stop.description,
                Event::WrongKey { from } => {
                    format!("kdnet: datagrams from {from} do not authenticate (wrong key?)")
                }
                Event::Connected { peer, rebooted } => format!(
                    "Connected to target {peer}{}",
                    if rebooted { " (a new boot)" } else { "" }
                ),
                Event::Silent { after } => format!(
                    "kdnet: the target stopped answering (nothing heard for {:.1} s)",
                    after.as_secs_f64()
                ),
                Event::Heard { after } => format!(
                    "kdnet: the target answers again (after {:.1} s of silence)",
                    after.as_secs_f64()
                ),
            };
            emit(&printer, text);
        }
    });
}
