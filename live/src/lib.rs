//! A live KDNET session: as a [`Target`] for the target model (which is synchronous; it runs on
//! a blocking thread and waits here for the async session), and as a [`Session`] for the tools
//! above (listen, follow, stop, go on, open the kernel model).

use std::net::SocketAddr;
use std::time::Duration;

use kdnet::api::{Context, StateChange64, StateEvent, status};
use kdnet::host::{Host, HostConfig, HostError, HostEvent, LinkState, Phase, RunState};
use kdnet::wire::HandshakeReason;
use tokio::runtime::Handle;

use kdnet_model::nt::Kernel;
use kdnet_model::nt::records::ExceptionRecord;
use kdnet_model::target::{
    Go, StopEvent, StopKind, Target, TargetError, TargetInfo, TransportStats,
};

/// A stopped target on a KDNET session.
#[derive(Debug)]
pub struct LiveTarget {
    host: Host,
    rt: Handle,
    info: TargetInfo,
    ran: bool,
    /// The host's count of state changes when memory was last read.
    stops: u64,
    /// The host's count of state changes when the target was last let go.
    went_at: u64,
}

/// A state change in the model's terms; `serial` counts the session's state changes.
pub fn stop_event(sc: &StateChange64, serial: u64) -> StopEvent {
    let kind = match &sc.event {
        StateEvent::Exception(x) => StopKind::Exception {
            code: x.code,
            address: x.address,
            first_chance: x.first_chance,
            parameters: x.parameters.clone(),
            dr6: sc.control.dr6,
        },
        StateEvent::LoadSymbols(l) => StopKind::Module {
            unload: l.unload,
            base: l.base,
            size: l.size,
            path: l.path.clone(),
        },
        _ => StopKind::Other,
    };
    StopEvent {
        processor: u32::from(sc.processor),
        processors: sc.number_processors,
        thread: sc.thread,
        pc: sc.program_counter,
        kind,
        reported: u32::from(sc.control.instruction_count.min(16)),
        stream: sc.control.instruction_stream[..usize::from(sc.control.instruction_count.min(16))]
            .to_vec(),
        serial,
    }
}

fn map(e: HostError, address: u64) -> TargetError {
    match e {
        HostError::Memory { address, .. } => TargetError::Unavailable { address },
        HostError::Status { .. } => TargetError::Unavailable { address },
        // The stop the model reads is no more: the target is silent, or a new boot.
        HostError::TargetGone { silent } => TargetError::Gone(format!(
            "nothing heard from it for {:.1} s",
            silent.as_secs_f64()
        )),
        HostError::TargetRebooted(what) => {
            TargetError::Gone(format!("it rebooted while {what} was outstanding"))
        }
        // The target was let go (a budget, a signal) while this was being read.
        HostError::Preempted(_) => TargetError::Cancelled,
        other => TargetError::Transport(other.to_string()),
    }
}

impl LiveTarget {
    /// Wraps a session whose target is stopped. Call from a thread that is not running the
    /// runtime (e.g. inside `spawn_blocking`).
    pub fn new(host: Host, rt: Handle) -> Result<LiveTarget, TargetError> {
        let v = rt.block_on(host.get_version()).map_err(|e| map(e, 0))?;
        let stops = host_stops(&host);
        let stop = host.state().stop;
        let processors = stop.as_ref().map_or(1, |s| s.number_processors.max(1));
        let current_processor = stop.map_or(0, |s| u32::from(s.processor));
        let description = format!(
            "KDNET {}",
            host.state()
                .target
                .map_or("?".to_string(), |a| a.to_string())
        );
        Ok(LiveTarget {
            host,
            rt,
            info: TargetInfo {
                build: u32::from(v.minor_version),
                kernel_base: Some(v.kern_base),
                ps_loaded_module_list: Some(v.ps_loaded_module_list),
                debugger_data_list: (v.debugger_data_list != 0).then_some(v.debugger_data_list),
                processors,
                current_processor,
                live: true,
                description,
                ..TargetInfo::default()
            },
            ran: false,
            stops,
            went_at: stops,
        })
    }

    /// Marks that the target ran (the cache above must be dropped).
    pub fn ran(&mut self) {
        self.ran = true;
    }
}

/// A read's bytes into `buf`: all of them, or those before the first that failed.
fn copy_read(
    r: Result<Vec<u8>, HostError>,
    buf: &mut [u8],
    address: u64,
) -> Result<usize, TargetError> {
    match r {
        Ok(b) | Err(HostError::Memory { read: b, .. }) => {
            let n = b.len().min(buf.len());
            buf[..n].copy_from_slice(&b[..n]);
            Ok(n)
        }
        Err(e) => Err(map(e, address)),
    }
}

fn host_stops(host: &Host) -> u64 {
    host.state().stops
}

impl Target for LiveTarget {
    fn info(&self) -> TargetInfo {
        let mut i = self.info.clone();
        let state = self.host.state();
        i.last_event = state.stop.as_ref().map(describe);
        i.last_exception = state.stop.as_ref().and_then(|sc| sc.exception()).map(|x| {
            Ok(ExceptionRecord {
                code: x.code,
                flags: x.flags,
                chained: x.record,
                address: x.address,
                parameters: x.parameters.clone(),
            })
        });
        i
    }

    fn read_physical(&mut self, address: u64, buf: &mut [u8]) -> Result<usize, TargetError> {
        let r = self
            .rt
            .block_on(self.host.read_physical(address, buf.len()));
        copy_read(r, buf, address)
    }

    fn max_transfer(&self) -> usize {
        self.host.max_transfer() as usize
    }

    fn context(&mut self, processor: u32) -> Result<Context, TargetError> {
        self.rt
            .block_on(self.host.get_context(processor as u16))
            .map_err(|e| match e {
                HostError::Status { .. } => TargetError::NoSuchProcessor(processor),
                other => map(other, 0),
            })
    }

    fn special_registers(&mut self, processor: u32) -> Result<Vec<u8>, TargetError> {
        self.rt
            .block_on(self.host.read_control_space(processor as u16, 2, 0xe0))
            .map_err(|e| match e {
                HostError::Status { .. } => TargetError::NoSuchProcessor(processor),
                other => map(other, 0),
            })
    }

    fn control_pointer(&mut self, processor: u32, index: u64) -> Result<u64, TargetError> {
        let b = self
            .rt
            .block_on(self.host.read_control_space(processor as u16, index, 8))
            .map_err(|e| match e {
                HostError::Status { .. } => TargetError::NoSuchProcessor(processor),
                other => map(other, 0),
            })?;
        Ok(u64::from_le_bytes(
            b.get(..8).and_then(|x| x.try_into().ok()).unwrap_or([0; 8]),
        ))
    }

    fn stats(&self) -> TransportStats {
        let s = self.host.stats();
        TransportStats {
            round_trips: s.round_trips,
            bytes: s.bytes_sent + s.bytes_received,
        }
    }

    fn search(
        &mut self,
        address: u64,
        length: u64,
        pattern: &[u8],
    ) -> Option<Result<Option<u64>, TargetError>> {
        Some(
            self.rt
                .block_on(self.host.search_memory(address, length, pattern))
                .map_err(|e| map(e, address)),
        )
    }

    /// True once after the target ran: marked by the caller, or seen as a new state change
    /// (a break-in or a stop after `g`).
    fn take_invalidation(&mut self) -> bool {
        let now = host_stops(&self.host);
        let changed = now != self.stops;
        self.stops = now;
        std::mem::take(&mut self.ran) || changed
    }

    fn read_virtual_live(
        &mut self,
        address: u64,
        buf: &mut [u8],
    ) -> Option<Result<usize, TargetError>> {
        let r = self.rt.block_on(self.host.read_virtual(address, buf.len()));
        Some(copy_read(r, buf, address))
    }

    fn module_generation(&mut self) -> Option<u64> {
        Some(self.host.state().module_events)
    }

    fn stop_event(&mut self) -> Option<StopEvent> {
        let s = self.host.state();
        if s.run != RunState::Stopped || s.passing {
            return None;
        }
        s.stop.as_ref().map(|sc| stop_event(sc, s.stops))
    }

    fn write_breakpoint(&mut self, address: u64) -> Result<u32, TargetError> {
        self.rt
            .block_on(self.host.write_breakpoint(address))
            .map_err(|e| map(e, address))
    }

    fn restore_breakpoint(&mut self, handle: u32) -> Result<bool, TargetError> {
        let r = self
            .rt
            .block_on(
                self.host
                    .request(kdnet::api::Manipulate::restore_breakpoint(handle)),
            )
            .map_err(|e| map(e, 0))?;
        Ok(status::is_success(r.return_status()))
    }

    fn set_context(&mut self, processor: u32, context: &Context) -> Result<(), TargetError> {
        self.rt
            .block_on(self.host.set_context(processor as u16, context))
            .map_err(|e| match e {
                HostError::Status { .. } => TargetError::NoSuchProcessor(processor),
                other => map(other, 0),
            })
    }

    fn go(&mut self, how: Go) -> Result<(), TargetError> {
        self.went_at = host_stops(&self.host);
        self.ran = true;
        self.rt
            .block_on(self.host.resume_with(how.status, how.trace, how.dr7))
            .map_err(|e| map(e, 0))
    }

    fn wait_stop(
        &mut self,
        deadline: Option<std::time::Instant>,
        cancel: Option<&std::sync::atomic::AtomicBool>,
    ) -> Result<(StopEvent, bool), TargetError> {
        let went_at = self.went_at;
        let host = self.host.clone();
        let stopped = self.rt.block_on(async move {
            let mut w = host.watch_state();
            loop {
                {
                    let s = w.borrow_and_update();
                    if s.run == RunState::Stopped
                        && !s.passing
                        && s.stops > went_at
                        && let Some(sc) = s.stop.as_ref()
                    {
                        return Some(stop_event(sc, s.stops));
                    }
                }
                if cancel.is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst))
                    || deadline.is_some_and(|d| std::time::Instant::now() >= d)
                {
                    return None;
                }
                tokio::select! {
                    r = w.changed() => if r.is_err() { return None; },
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        });
        if let Some(stop) = stopped {
            return Ok((stop, false));
        }
        // Nothing stopped it in time, or the wait was cancelled: break in.
        let sc = self
            .rt
            .block_on(self.host.break_in(Duration::from_secs(10)))
            .map_err(|e| map(e, 0))?;
        Ok((stop_event(&sc, host_stops(&self.host)), true))
    }

    fn set_module_breaks(
        &mut self,
        load: Vec<String>,
        unload: Vec<String>,
    ) -> Result<(), TargetError> {
        self.rt.block_on(
            self.host
                .set_module_breaks(kdnet::host::ModuleBreaks { load, unload }),
        );
        Ok(())
    }
}

/// The session as debugging tools use it: listen for a target, follow its state and what it
/// does, stop it, let it go on, and open the kernel model over it while it is stopped. Tools
/// above this layer use this and not the KDNET session underneath.
#[derive(Debug, Clone)]
pub struct Session {
    host: Host,
}

/// What the stop a break-in brought is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokeIn {
    /// The break-in.
    Asked,
    /// A stop the target made itself in that instant (a bugcheck, an exception).
    Own,
    /// Not told: the stopped processor's rcx could not be read (why).
    Untold(String),
}

/// A target's key (`a.b.c.d`, as bcdedit prints it).
pub use kdnet::wire::Key;

/// Datagrams a session dropped, by cause.
pub use kdnet::wire::Drops;

/// A fresh random key (for a simulated target set up beside the debugger).
pub fn random_key() -> Key {
    Key::from_bytes(kdnet::rng::os_random_32())
}

/// Where and how to listen for a target.
#[derive(Debug, Clone)]
pub struct Listen {
    /// Address and port to listen on (the `port:` given to bcdedit).
    pub bind: SocketAddr,
    /// The key.
    pub key: Key,
    /// Accept only this machine.
    pub target: Option<SocketAddr>,
}

/// The link to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Nothing heard.
    Waiting,
    /// Offers arrive that do not authenticate.
    WrongKey,
    /// The handshake completed.
    Connected,
    /// A connected target stopped answering (nothing heard for the silence limit); it comes
    /// back to `Connected` when heard again.
    Silent,
}

/// A stop, as the target reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    /// The processor that reported it.
    pub processor: u32,
    /// Processors in the machine.
    pub processors: u32,
    /// What WinDbg prints for it, in substance.
    pub description: String,
}

/// What the session knows now.
#[derive(Debug, Clone)]
pub struct Status {
    /// The link.
    pub link: Link,
    /// The target's address once connected.
    pub peer: Option<SocketAddr>,
    /// Known to be stopped.
    pub stopped: bool,
    /// Known to run.
    pub running: bool,
    /// The stop, while stopped.
    pub stop: Option<Stop>,
    /// Stops so far: a new one means the target ran in between.
    pub stops: u64,
}

/// Something the target did.
#[derive(Debug, Clone)]
pub enum Event {
    /// DbgPrint output.
    Print(String),
    /// It stopped.
    Stopped(Stop),
    /// A handshake completed: first contact, a new boot, or a new key.
    Connected {
        /// Its address.
        peer: SocketAddr,
        /// It is a new boot of the target.
        rebooted: bool,
    },
    /// Datagrams arrive that do not authenticate.
    WrongKey {
        /// Their sender.
        from: SocketAddr,
    },
    /// Nothing has been heard from the target for the silence limit: it is gone (off,
    /// frozen, unplugged). Outstanding requests failed.
    Silent {
        /// How long it had been silent.
        after: Duration,
    },
    /// A target that had gone silent is heard again.
    Heard {
        /// How long it had been silent.
        after: Duration,
    },
}

/// Counters of the session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Traffic {
    /// Requests answered.
    pub round_trips: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Datagrams sent.
    pub datagrams_sent: u64,
    /// Datagrams received.
    pub datagrams_received: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Retransmissions.
    pub retransmits: u64,
    /// Times the target was declared gone.
    pub silences: u64,
    /// Handshakes proven (the session began, moved, re-keyed or followed a reboot).
    pub handshakes: u64,
    /// Datagrams dropped, by cause (forged, replayed, from elsewhere, malformed).
    pub drops: Drops,
}

impl Traffic {
    /// One line for people: `"92 round trips (3 failed), 14 retransmits, 1204 datagrams,
    /// 40311 bytes sent, 391120 received; dropped 7 (4 replayed data, 3 stale offers)"`.
    pub fn summary(&self) -> String {
        let failed = if self.failed > 0 {
            format!(" ({} failed)", self.failed)
        } else {
            String::new()
        };
        let silences = if self.silences > 0 {
            format!("; the target went silent {} time(s)", self.silences)
        } else {
            String::new()
        };
        format!(
            "{} round trips{failed}, {} retransmits, {} datagrams, {} bytes sent, {} received; dropped {}{silences}",
            self.round_trips,
            self.retransmits,
            self.datagrams_sent + self.datagrams_received,
            self.bytes_sent,
            self.bytes_received,
            self.drops.summary()
        )
    }
}

/// Why the session could not do something.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SessionError {
    /// The KDNET session failed (timeout, closed, refused).
    #[error("{0}")]
    Kdnet(String),
    /// The target's version could not be read.
    #[error("reading the target's version: {0}")]
    Version(TargetError),
    /// The kernel model could not be opened.
    #[error("reading the kernel: {0}")]
    Kernel(String),
}

impl From<HostError> for SessionError {
    fn from(e: HostError) -> SessionError {
        SessionError::Kdnet(e.to_string())
    }
}

/// What WinDbg prints when the target stops, in substance.
pub fn describe(sc: &StateChange64) -> String {
    match &sc.event {
        StateEvent::Exception(x) if x.code == 0x8000_0003 => format!(
            "Break instruction exception - code 80000003 ({} chance) on processor {}",
            if x.first_chance { "first" } else { "second" },
            sc.processor
        ),
        StateEvent::Exception(x) => format!(
            "Exception {:08x} at {:x} ({} chance) on processor {}",
            x.code,
            x.address,
            if x.first_chance { "first" } else { "second" },
            sc.processor
        ),
        StateEvent::LoadSymbols(l) => format!("Module load/unload at {:x}", l.base),
        StateEvent::CommandString { name, command } => format!("Command string {name}: {command}"),
        StateEvent::Other => format!("State change {:#x}", sc.new_state),
    }
}

fn stop_of(sc: &StateChange64) -> Stop {
    Stop {
        processor: u32::from(sc.processor),
        processors: sc.number_processors,
        description: describe(sc),
    }
}

fn status_of(s: &LinkState) -> Status {
    Status {
        link: match s.phase {
            Phase::Waiting => Link::Waiting,
            Phase::WrongKey => Link::WrongKey,
            Phase::Connected => Link::Connected,
            Phase::Silent => Link::Silent,
        },
        peer: s.target,
        // A module event being continued at once is not a stop anyone reads.
        stopped: s.run == RunState::Stopped && !s.passing,
        running: s.run == RunState::Running || (s.run == RunState::Stopped && s.passing),
        stop: s
            .stop
            .as_ref()
            .filter(|_| s.run == RunState::Stopped && !s.passing)
            .map(stop_of),
        stops: s.stops,
    }
}

/// Follows the session's status.
#[derive(Debug)]
pub struct StatusWatch(tokio::sync::watch::Receiver<LinkState>);

impl StatusWatch {
    /// The status now (and marks it seen).
    pub fn current(&mut self) -> Status {
        status_of(&self.0.borrow_and_update())
    }

    /// Waits for a change; false when the session has ended.
    pub async fn changed(&mut self) -> bool {
        self.0.changed().await.is_ok()
    }

    /// Waits until `f` holds; false when the session ended first.
    pub async fn wait_for(&mut self, mut f: impl FnMut(&Status) -> bool) -> bool {
        self.0.wait_for(|s| f(&status_of(s))).await.is_ok()
    }
}

/// What the target does, in order.
#[derive(Debug)]
pub struct Events(tokio::sync::broadcast::Receiver<HostEvent>);

impl Events {
    /// The next event; None when the session has ended. Events missed by a slow reader are
    /// skipped.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            match self.0.recv().await {
                Ok(HostEvent::DebugPrint { text, .. }) => return Some(Event::Print(text)),
                Ok(HostEvent::StateChange(sc)) => return Some(Event::Stopped(stop_of(&sc))),
                Ok(HostEvent::Connected { target, reason }) => {
                    return Some(Event::Connected {
                        peer: target,
                        rebooted: reason == HandshakeReason::Rebooted,
                    });
                }
                Ok(HostEvent::KeyMismatch { from }) => return Some(Event::WrongKey { from }),
                Ok(HostEvent::Silent { after }) => return Some(Event::Silent { after }),
                Ok(HostEvent::Heard { after }) => return Some(Event::Heard { after }),
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return None,
            }
        }
    }
}

impl Session {
    /// Listens for a target.
    pub async fn listen(l: Listen) -> Result<Session, SessionError> {
        let mut config = HostConfig::new(l.bind, l.key);
        config.target = l.target;
        Ok(Session {
            host: Host::bind(config).await?,
        })
    }

    /// The address listened on.
    pub fn local_addr(&self) -> SocketAddr {
        self.host.local_addr()
    }

    /// The status now.
    pub fn status(&self) -> Status {
        status_of(&self.host.state())
    }

    /// Follows the status.
    pub fn watch(&self) -> StatusWatch {
        StatusWatch(self.host.watch_state())
    }

    /// What the target does from now on.
    pub fn events(&self) -> Events {
        Events(self.host.subscribe())
    }

    /// Waits for the handshake.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<SocketAddr, SessionError> {
        Ok(self.host.wait_connected(timeout).await?)
    }

    /// Stops the target (at once if it is stopped).
    pub async fn break_in(&self, timeout: Duration) -> Result<Stop, SessionError> {
        Ok(stop_of(&self.host.break_in(timeout).await?))
    }

    /// Stops the target, and says whether what it reported is the break-in or a stop of its
    /// own that came in that instant (a bugcheck, an exception, a driver's break): reads the
    /// stopped processor's rcx when the report is a breakpoint's (one round trip).
    pub async fn break_in_checked(
        &self,
        timeout: Duration,
    ) -> Result<(Stop, BrokeIn), SessionError> {
        let sc = self.host.break_in(timeout).await?;
        let event = stop_event(&sc, 0);
        let rcx = match &event.kind {
            StopKind::Exception { code, .. } if *code == status::BREAKPOINT => {
                match self.rcx(sc.processor).await {
                    Ok(r) => r,
                    Err(e) => return Ok((stop_of(&sc), BrokeIn::Untold(e.to_string()))),
                }
            }
            _ => 0,
        };
        let what = if event.is_break_in(rcx) {
            BrokeIn::Asked
        } else {
            BrokeIn::Own
        };
        Ok((stop_of(&sc), what))
    }

    /// A stopped processor's rcx: the 8 bytes of its CONTEXT (GetContextEx), or the whole of it
    /// where the kernel does not give parts.
    async fn rcx(&self, processor: u16) -> Result<u64, SessionError> {
        const RCX: u32 = 0x80;
        match self.host.get_context_ex(processor, RCX, 8).await {
            Ok(b) if b.len() == 8 => Ok(u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))),
            Ok(_) | Err(HostError::Status { .. }) => Ok(self
                .host
                .get_context(processor)
                .await?
                .reg(kdnet::api::Reg::Rcx)),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether a newly connected target is stopped (another debugger may have left it so),
    /// without breaking in.
    pub async fn probe_stopped(&self, wait: Duration) -> Option<Stop> {
        self.host.probe_stopped(wait).await.map(|s| stop_of(&s))
    }

    /// Lets the target go on (`g`), every breakpoint the session wrote taken out first.
    pub async fn go(&self) -> Result<(), SessionError> {
        self.host.release(status::DBG_CONTINUE, None).await?;
        self.left_in()
    }

    /// Lets the target go on now, whatever is being read from it (a stop budget ran out, a
    /// signal): reads under way and queued fail as cancelled; every breakpoint the session
    /// wrote is taken out first.
    pub async fn go_now(&self, why: &str) -> Result<(), SessionError> {
        self.host.release(status::DBG_CONTINUE, Some(why)).await?;
        self.left_in()
    }

    fn left_in(&self) -> Result<(), SessionError> {
        let left = self.host.state().breakpoints;
        if left.is_empty() {
            return Ok(());
        }
        Err(SessionError::Kdnet(format!(
            "the target continues, but {} breakpoint(s) could not be taken out of it: {}",
            left.len(),
            left.iter()
                .map(|(_, a)| format!("{a:#x}"))
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }

    /// Breakpoints the session wrote into the target and that are still there: (handle,
    /// address). Normally none while the target is stopped (they are written only while it
    /// runs).
    pub fn breakpoints_written(&self) -> Vec<(u32, u64)> {
        self.host.state().breakpoints
    }

    /// Takes out of the target every breakpoint still written there by handle, whoever wrote
    /// it (the kernel's whole table, 1 to 32, as WinDbg does when it attaches): for a session
    /// that finds breakpoints a killed one left. The target must be stopped. How many the
    /// kernel had.
    pub async fn take_out_all(&self) -> Result<usize, SessionError> {
        let mut found = 0;
        for h in 1..=32u32 {
            let r = self
                .host
                .request(kdnet::api::Manipulate::restore_breakpoint(h))
                .await?;
            if status::is_success(r.return_status()) {
                found += 1;
            }
        }
        Ok(found)
    }

    /// Reboots the target.
    pub async fn reboot(&self) -> Result<(), SessionError> {
        Ok(self.host.reboot().await?)
    }

    /// The session's counters.
    pub fn traffic(&self) -> Traffic {
        let s = self.host.stats();
        Traffic {
            round_trips: s.round_trips,
            failed: s.failed,
            datagrams_sent: s.datagrams_sent,
            datagrams_received: s.datagrams_received,
            bytes_sent: s.bytes_sent,
            bytes_received: s.bytes_received,
            retransmits: s.retransmits,
            silences: s.silences,
            handshakes: s.handshakes_proven,
            drops: s.drops,
        }
    }

    /// The kernel model over the stopped target, its symbols found along `path`. It blocks on
    /// `rt`: call it from a thread that is not running the runtime (e.g. inside
    /// `spawn_blocking`).
    pub fn open(
        &self,
        rt: Handle,
        path: kdnet_symbols::path::SymbolPath,
    ) -> Result<Kernel, SessionError> {
        let target = LiveTarget::new(self.host.clone(), rt).map_err(SessionError::Version)?;
        Kernel::open(Box::new(target), path).map_err(|e| SessionError::Kernel(e.to_string()))
    }
}
