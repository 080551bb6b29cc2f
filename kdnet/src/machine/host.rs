//! The debugger's session as a sans-IO state machine.
//!
//! [`HostMachine`] takes datagrams (with their source address) and the current time, and gives
//! back datagrams to send, events, completed operations and the next instant it wants to be
//! woken. Every decision of the session lives here: which peer to bind (and when to move or
//! re-key, only on proof), the KD layer's retransmission, RESEND and re-issue, the memory
//! transfer size and its step-down, the confirmation of a continue, the running-state rules and
//! the detection of a target that stopped answering. The tokio driver in [`crate::host`] only
//! moves bytes and sleeps; tests drive the machine with a virtual clock.
//!
//! Operations ([`Op`]) run one at a time in the order submitted, as the protocol requires; each
//! completes exactly once with a [`Done`] or a [`HostError`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::api::{
    Api, ApiBody, DebugIo, FileIo, FileOp, LoadSymbols64, MAX_TRANSFER, Manipulate, StateChange64,
    StateEvent, status,
};
use crate::kd::{HostKd, HostKdConfig, HostKdEvent, Packet, PacketType};
use crate::wire::{
    Channel, Dropped, Drops, HandshakeReason, HostWire, HostWireEvent, Key, Transmit,
};

/// Memory transfer sizes tried, largest first: the protocol's maximum, 0x800 as other debuggers
/// use, and the largest reply that fits one Ethernet frame.
pub const TRANSFER_STEPS: [u32; 3] = [MAX_TRANSFER, 0x800, 1360];

/// How often the break-in byte is sent while waiting for the target to stop (it is not
/// acknowledged).
pub const BREAK_IN_INTERVAL: Duration = Duration::from_millis(250);

/// How long a request that needs no reply (continue, reboot) waits for its acknowledgement.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// How often `target=` asks the target for an offer until it connects.
const POKE_INTERVAL: Duration = Duration::from_millis(500);

/// Settings of a host session.
#[derive(Debug, Clone)]
pub struct HostMachineConfig {
    /// The key.
    pub key: Key,
    /// Accept only this target address (WinDbg's `target=`); pokes it until it answers.
    pub target: Option<SocketAddr>,
    /// KD timing.
    pub kd: HostKdConfig,
    /// Longest wait for one request's reply, retries included.
    pub request_timeout: Duration,
    /// Longest wait when probing whether the target serves a transfer size, or whether a
    /// target whose continue went unacknowledged still answers.
    pub probe_timeout: Duration,
    /// A connected target from which nothing authenticated has been heard for this long is
    /// declared gone: what is outstanding fails at once, and so does every request until it
    /// is heard again. A target sends an offer every 3 s even while stopped, so this is a few
    /// missed offers.
    pub silence_limit: Duration,
}

impl HostMachineConfig {
    /// Defaults for `key`.
    pub fn new(key: Key) -> HostMachineConfig {
        HostMachineConfig {
            key,
            target: None,
            kd: HostKdConfig::default(),
            request_timeout: Duration::from_secs(10),
            probe_timeout: Duration::from_millis(1500),
            silence_limit: Duration::from_secs(10),
        }
    }
}

/// Errors of the host session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// The socket could not be bound or used.
    #[error("network error: {0}")]
    Io(String),
    /// No target connected within the wait.
    #[error("{0}")]
    NotConnected(String),
    /// The operation needs a stopped target.
    #[error("the target is running; break in first")]
    TargetRunning,
    /// The target did not answer in time (it is still heard from: offers arrive).
    #[error("no answer from the target to {what} within {:.1} s", after.as_secs_f64())]
    Timeout {
        /// What was asked.
        what: String,
        /// How long we waited.
        after: Duration,
    },
    /// Nothing authenticated has come from the target for the silence limit: it is gone (off,
    /// frozen, unplugged, or the network between is down).
    #[error("the target stopped answering: nothing heard from it for {:.1} s", silent.as_secs_f64())]
    TargetGone {
        /// How long it had been silent.
        silent: Duration,
    },
    /// The target rebooted while the request was outstanding.
    #[error("the target rebooted while {0} was outstanding")]
    TargetRebooted(String),
    /// The target answered with a failure status.
    #[error("the target answered {api} with status {status:#010x}")]
    Status {
        /// The API.
        api: String,
        /// The NTSTATUS.
        status: u32,
    },
    /// Memory could not be read at `address`; `read` holds the bytes before it.
    #[error("memory at {address:#x} could not be read (status {status:#010x})")]
    Memory {
        /// First address that failed.
        address: u64,
        /// The bytes read before it.
        read: Vec<u8>,
        /// The target's status.
        status: u32,
    },
    /// The target's answer did not make sense.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The operation was cancelled: the session was told to let the target go at once.
    #[error("cancelled: {0}")]
    Preempted(String),
    /// The session ended.
    #[error("the session is closed")]
    Closed,
}

/// Something that happened on the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    /// A handshake was proven: the session runs with `target`.
    Connected {
        /// The target's address.
        target: SocketAddr,
        /// First contact, reboot or re-key.
        reason: HandshakeReason,
    },
    /// Control datagrams arrive that do not authenticate: the key is probably wrong.
    KeyMismatch {
        /// Their sender.
        from: SocketAddr,
    },
    /// The target stopped and reported why.
    StateChange(StateChange64),
    /// The target resumed.
    Resumed,
    /// A module was loaded or unloaded and the target was continued at once (no module
    /// event stop asked for it; see [`HostMachine::set_module_breaks`]).
    Module(LoadSymbols64),
    /// DbgPrint output.
    DebugPrint {
        /// The processor that printed.
        processor: u16,
        /// The text.
        text: String,
    },
    /// The target asked for a file (refused: no file mapping).
    FileRequest {
        /// The file name.
        name: String,
    },
    /// Nothing has been heard from the target for the silence limit: it is gone.
    Silent {
        /// How long it has been silent.
        after: Duration,
    },
    /// A target declared gone is heard again (same session).
    Heard {
        /// How long it had been silent.
        after: Duration,
    },
}

/// Where the session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Bound; nothing heard yet.
    Waiting,
    /// Offers arrive but do not authenticate.
    WrongKey,
    /// Handshake done.
    Connected,
    /// A connected target stopped answering (nothing heard for the silence limit).
    Silent,
}

/// Whether the target runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Not known yet (just connected).
    Unknown,
    /// Running.
    Running,
    /// Stopped in the debugger.
    Stopped,
}

/// The observable session state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    /// Phase.
    pub phase: Phase,
    /// The target's address once connected.
    pub target: Option<SocketAddr>,
    /// Run state.
    pub run: RunState,
    /// The last state change (while stopped).
    pub stop: Option<StateChange64>,
    /// State changes received so far: a new one means the target ran in between, and what was
    /// read before may have changed.
    pub stops: u64,
    /// KDNET datagrams received that did not authenticate.
    pub unauthenticated: u64,
    /// Breakpoints this session wrote into the kernel's table and that are still there, as
    /// the kernel keeps them: (handle, address). Taken off when restored, when the kernel
    /// reports a stop in the instructions they lie in (it takes them out itself), and by a
    /// new boot.
    pub breakpoints: Vec<(u32, u64)>,
    /// The stop is a module event nobody asked to stop on, being continued at once: the
    /// target is stopped in the protocol's sense, not for anyone reading it.
    pub passing: bool,
    /// Moments after which the loaded modules may differ from before: module loads and unloads
    /// reported, handshakes (a new boot, a session that began anew) and silences (what
    /// happened while nothing was heard is not known). A reader's module list is good while
    /// this stays the same.
    pub module_events: u64,
}

impl LinkState {
    fn new() -> LinkState {
        LinkState {
            phase: Phase::Waiting,
            target: None,
            run: RunState::Unknown,
            stop: None,
            stops: 0,
            unauthenticated: 0,
            breakpoints: Vec::new(),
            passing: false,
            module_events: 0,
        }
    }
}

/// Counters of a session. A round trip is one request answered by one reply (or acknowledged,
/// for requests without a reply).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct HostStats {
    /// Requests completed.
    pub round_trips: u64,
    /// Requests that failed (timeout, gone).
    pub failed: u64,
    /// Datagrams sent.
    pub datagrams_sent: u64,
    /// Datagrams received.
    pub datagrams_received: u64,
    /// UDP payload bytes sent.
    pub bytes_sent: u64,
    /// UDP payload bytes received.
    pub bytes_received: u64,
    /// Memory bytes delivered by reads.
    pub memory_bytes: u64,
    /// KD retransmissions (same id or new id).
    pub retransmits: u64,
    /// Duplicate KD packets received.
    pub duplicates: u64,
    /// Offers answered (handshakes begun).
    pub handshakes_answered: u64,
    /// Handshakes the target proved (sessions begun, moved or re-keyed).
    pub handshakes_proven: u64,
    /// Times the target was declared gone.
    pub silences: u64,
    /// Datagrams dropped, by cause.
    pub drops: Drops,
}

/// Identifies a submitted operation.
pub type OpId = u64;

/// The id of operations the machine starts by itself (continuing after a module event); their
/// completions are not reported.
const INTERNAL: OpId = 0;

/// Which module events stop the target (WinDbg's `sxe ld:NAME` and `sxe ud`). Names are
/// image file names, matched without case and with or without the extension; `*` matches
/// every module.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleBreaks {
    /// Loads that stop.
    pub load: Vec<String>,
    /// Unloads that stop.
    pub unload: Vec<String>,
}

impl ModuleBreaks {
    /// Whether this event stops the target.
    pub fn stops_on(&self, l: &LoadSymbols64) -> bool {
        let names = if l.unload { &self.unload } else { &self.load };
        let file = l
            .path
            .rsplit(['\\', '/'])
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        let stem = file.rsplit_once('.').map_or(file.as_str(), |(s, _)| s);
        names.iter().any(|n| {
            let n = n.to_ascii_lowercase();
            n == "*" || n == file || n == stem
        })
    }
}

/// An operation on the session.
#[derive(Debug, Clone)]
pub enum Op {
    /// A manipulate request; completes with the reply, whatever its status.
    Request {
        /// The request.
        m: Manipulate,
        /// Its deadline (default: the request timeout).
        timeout: Option<Duration>,
    },
    /// Reads memory, split into the largest transfers the target serves (stepping down when it
    /// does not serve one); completes with the bytes, or [`HostError::Memory`] with those
    /// before the first that failed.
    ReadMemory {
        /// Physical rather than virtual.
        physical: bool,
        /// Start.
        address: u64,
        /// Bytes.
        len: usize,
    },
    /// Writes memory in transfers; each must succeed.
    WriteMemory {
        /// Physical rather than virtual.
        physical: bool,
        /// Start.
        address: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Lets the target go on (Continue2 with this status, trace flag and Dr7). A running
    /// kernel acknowledges nothing, so an unacknowledged continue is confirmed by asking for
    /// the version: a stopped target that reported nothing since answers (the continue is sent
    /// again), a running one does not, and one that stopped again after a single step has sent
    /// a new state change.
    Resume {
        /// DBG_CONTINUE normally; DBG_EXCEPTION_NOT_HANDLED passes an exception on.
        status: u32,
        /// Single-step: the target sets EFLAGS.TF and stops after one instruction.
        trace: bool,
        /// Copied to every processor's KernelDr7 (hardware breakpoints); 0x400 for none.
        dr7: u64,
    },
    /// Takes every breakpoint the session wrote out of the kernel's table (RestoreBreakPoint
    /// for each); one that cannot be taken out fails the operation after the others were
    /// tried. For letting a target go at the end of a session.
    TakeOut,
    /// Reboots the target.
    Reboot,
    /// Sends the break-in byte every 250 ms (RESET now and then while the run state is not
    /// known) until the target reports a state change; at once if it is stopped.
    BreakIn {
        /// How long to try.
        timeout: Duration,
    },
    /// Asks a newly connected target whether it is stopped with a RESET, which a stopped
    /// target answers with its state change; does not break in.
    ProbeStopped {
        /// How long to wait for the answer.
        wait: Duration,
    },
}

impl Op {
    /// A plain continue: no single step, no hardware breakpoint.
    pub fn resume(status: u32) -> Op {
        Op::Resume {
            status,
            trace: false,
            dr7: DR7_NONE,
        }
    }
}

/// Dr7 with no breakpoint enabled (bit 10 is always set), as debuggers send it.
pub const DR7_NONE: u64 = 0x400;

/// What a completed operation gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// The reply to a request.
    Reply(Manipulate),
    /// Memory read.
    Memory(Vec<u8>),
    /// It was done.
    Unit,
    /// The target is stopped.
    Stopped(StateChange64),
    /// Whether the target turned out to be stopped.
    Probed(Option<StateChange64>),
}

/// What the machine reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Something happened on the session.
    Event(HostEvent),
    /// An operation finished.
    Completed {
        /// Which.
        id: OpId,
        /// How.
        result: Result<Done, HostError>,
    },
}

/// What happened to the KD packet an operation sent.
enum KdOutcome {
    Reply(Manipulate),
    Delivered,
    TimedOut(Duration),
}

/// What an operation does next.
enum Step {
    /// Send this request (expecting a reply or not) with this deadline, then call back.
    Issue(Manipulate, bool, Duration),
    /// Finished.
    Finish(Result<Done, HostError>),
    /// Nothing to send; wait for time or events.
    Wait,
}

#[derive(Debug)]
struct ReadRun {
    physical: bool,
    address: u64,
    len: usize,
    out: Vec<u8>,
    /// The size of the request in flight, and whether it is a probe of an unconfirmed size.
    asked: u32,
    probing: bool,
    /// A read failed at a size that may be the cause: a smaller read is being tried.
    retry_smaller: Option<(u32, u32)>,
}

#[derive(Debug)]
struct WriteRun {
    physical: bool,
    address: u64,
    data: Vec<u8>,
    done: usize,
    chunk: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResumePhase {
    Continue,
    Probe,
    /// A single step was sent: waiting for its stop, asking a stopped target for its state
    /// change with RESET now and then (a repeated continue can make the target take our packet
    /// for the acknowledgement of its report and drop it, as Windows does). A step is never
    /// sent twice: two steps would leave the processor somewhere else than asked.
    AwaitStop {
        next: Instant,
        until: Instant,
    },
}

#[derive(Debug)]
enum Run {
    Request {
        m: Manipulate,
        timeout: Duration,
    },
    Read(ReadRun),
    Write(WriteRun),
    Resume {
        status: u32,
        trace: bool,
        dr7: u64,
        tries: u32,
        phase: ResumePhase,
        /// State changes seen when it started: one more means the target ran.
        stops: u64,
    },
    TakeOut {
        left: Vec<u32>,
        failed: Vec<u32>,
    },
    Reboot,
    BreakIn {
        started: Instant,
        deadline: Instant,
        next: Instant,
        tries: u32,
    },
    Probe {
        until: Instant,
    },
}

struct Active {
    id: OpId,
    run: Run,
}

/// A KD data packet of ours in flight.
enum InFlight {
    /// The active operation's request.
    Op {
        m: Manipulate,
        expect_reply: bool,
        sent: Instant,
        timeout: Duration,
    },
    /// A packet the host owes the target (file-I/O refusal, prompt answer).
    Auto { sent: Instant },
}

/// The debugger's session, sans-IO.
pub struct HostMachine {
    cfg: HostMachineConfig,
    wire: HostWire,
    kd: HostKd,
    nonce: Box<dyn FnMut() -> [u8; 32] + Send>,
    state: LinkState,
    stats: HostStats,
    max_transfer: u32,
    transfer_confirmed: u32,
    queue: VecDeque<(OpId, Op)>,
    next_id: OpId,
    active: Option<Active>,
    /// The active operation's packet waiting for the KD slot.
    want: Option<(Manipulate, bool, Duration)>,
    inflight: Option<InFlight>,
    auto: VecDeque<(PacketType, Vec<u8>)>,
    transmit: VecDeque<Transmit>,
    output: VecDeque<Output>,
    last_heard: Instant,
    last_mismatch: Option<Instant>,
    last_poke: Option<Instant>,
    /// Which module loads and unloads stop the target; the others are continued at once.
    module_breaks: ModuleBreaks,
    /// The Dr7 of the last continue the session's user sent: a module event continued at once
    /// keeps the hardware breakpoints it enabled (the kernel loads every processor's Dr7 from
    /// the continue).
    last_dr7: u64,
}

impl std::fmt::Debug for HostMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostMachine")
            .field("state", &self.state)
            .field("stats", &self.stats)
            .finish()
    }
}

impl HostMachine {
    /// A session for `cfg` started at `now`; `nonce` gives 32 fresh random bytes for each offer
    /// answered (the OS's random source in production, a seeded one in tests).
    pub fn new(
        cfg: HostMachineConfig,
        now: Instant,
        nonce: Box<dyn FnMut() -> [u8; 32] + Send>,
    ) -> HostMachine {
        HostMachine {
            wire: HostWire::new(cfg.key.clone(), cfg.target.map(|a| a.ip())),
            kd: HostKd::new(cfg.kd),
            cfg,
            nonce,
            state: LinkState::new(),
            stats: HostStats::default(),
            max_transfer: TRANSFER_STEPS[0],
            transfer_confirmed: 0,
            queue: VecDeque::new(),
            next_id: 1,
            active: None,
            want: None,
            inflight: None,
            auto: VecDeque::new(),
            transmit: VecDeque::new(),
            output: VecDeque::new(),
            last_heard: now,
            last_mismatch: None,
            last_poke: None,
            module_breaks: ModuleBreaks::default(),
            last_dr7: DR7_NONE,
        }
    }

    /// The session's state.
    pub fn state(&self) -> &LinkState {
        &self.state
    }

    /// Counters so far.
    pub fn stats(&self) -> HostStats {
        let mut s = self.stats;
        let k = self.kd.stats();
        s.retransmits = k.retransmits;
        s.duplicates = k.duplicates;
        s.drops = self.wire.drops();
        let (answered, proven) = self.wire.handshakes();
        s.handshakes_answered = answered;
        s.handshakes_proven = proven;
        s
    }

    /// The memory transfer size used for this target.
    pub fn max_transfer(&self) -> u32 {
        self.max_transfer
    }

    /// Fixes the memory transfer size (for comparisons; normally it adapts by itself). Sizes
    /// above the protocol's 3,944 bytes are cut to it.
    pub fn set_max_transfer(&mut self, size: u32) {
        let size = size.clamp(1, MAX_TRANSFER);
        self.max_transfer = size;
        self.transfer_confirmed = size;
    }

    /// The smoothed round trip, once measured.
    pub fn srtt(&self) -> Option<Duration> {
        self.kd.srtt()
    }

    /// Queues an operation; it completes through [`HostMachine::poll_output`].
    pub fn submit(&mut self, op: Op, now: Instant) -> OpId {
        let id = self.next_id;
        self.next_id += 1;
        self.queue.push_back((id, op));
        self.pump(now);
        id
    }

    /// Runs `op` now: what is running and queued fails with [`HostError::Preempted`] (`why`),
    /// the request in flight is abandoned (a late reply to it is ignored), and `op` starts.
    /// For letting a target go at a budget or on a signal whatever is being read.
    pub fn preempt(&mut self, op: Op, why: &str, now: Instant) -> OpId {
        if let Some(InFlight::Op { .. }) = self.inflight {
            self.kd.abort();
            self.inflight = None;
        }
        self.want = None;
        let e = HostError::Preempted(why.to_string());
        if let Some(a) = self.active.take() {
            self.finish(a.id, Err(e.clone()));
        }
        while let Some((id, _)) = self.queue.pop_front() {
            self.finish(id, Err(e.clone()));
        }
        self.submit(op, now)
    }

    /// Which module loads and unloads stop the target (`sxe ld:NAME`, `sxe ud`); the others are
    /// reported as [`HostEvent::Module`] and continued at once, as WinDbg does by default.
    pub fn set_module_breaks(&mut self, breaks: ModuleBreaks) {
        self.module_breaks = breaks;
    }

    /// The module events that stop the target.
    pub fn module_breaks(&self) -> &ModuleBreaks {
        &self.module_breaks
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let t = self.transmit.pop_front()?;
        self.stats.datagrams_sent += 1;
        self.stats.bytes_sent += t.datagram.len() as u64;
        Some(t)
    }

    /// The next event or completion.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.output.pop_front()
    }

    /// When [`HostMachine::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = self.kd.poll_timeout();
        let mut at = |x: Instant| t = Some(t.map_or(x, |y| y.min(x)));
        match &self.inflight {
            Some(InFlight::Op { sent, timeout, .. }) => at(*sent + *timeout),
            Some(InFlight::Auto { sent }) => at(*sent + SEND_TIMEOUT),
            None => {}
        }
        match self.active.as_ref().map(|a| &a.run) {
            Some(Run::BreakIn { deadline, next, .. }) => at((*deadline).min(*next)),
            Some(Run::Probe { until }) => at(*until),
            Some(Run::Resume {
                phase: ResumePhase::AwaitStop { next, until },
                ..
            }) => at((*next).min(*until)),
            _ => {}
        }
        if self.state.phase == Phase::Connected {
            at(self.last_heard + self.cfg.silence_limit);
        }
        if self.cfg.target.is_some() && self.wire.peer().is_none() {
            at(self
                .last_poke
                .map_or(self.last_heard, |p| p + POKE_INTERVAL));
        }
        t
    }

    /// Acts on timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.kd.handle_timeout(now);
        self.drain_kd(now);
        // The packet in flight ran out of time.
        match &self.inflight {
            Some(InFlight::Op { sent, timeout, .. }) if now >= *sent + *timeout => {
                let elapsed = now.saturating_duration_since(*sent);
                self.inflight = None;
                self.kd.abort();
                self.stats.failed += 1;
                self.feed(now, KdOutcome::TimedOut(elapsed));
            }
            Some(InFlight::Auto { sent }) if now >= *sent + SEND_TIMEOUT => {
                self.inflight = None;
                self.kd.abort();
            }
            _ => {}
        }
        // Silence.
        if self.state.phase == Phase::Connected {
            let silent = now.saturating_duration_since(self.last_heard);
            if silent >= self.cfg.silence_limit {
                self.declare_gone(silent);
            }
        }
        // Break-in and probes tick.
        self.tick_active(now);
        // WinDbg's target=: ask the target for an offer twice a second until connected.
        if let Some(t) = self.cfg.target
            && self.wire.peer().is_none()
            && self
                .last_poke
                .is_none_or(|p| now.saturating_duration_since(p) >= POKE_INTERVAL)
        {
            self.last_poke = Some(now);
            self.transmit.push_back(self.wire.poke(t, 4));
        }
        self.pump(now);
    }

    /// Handles one received datagram.
    pub fn handle_datagram(&mut self, from: SocketAddr, d: &[u8], now: Instant) {
        self.stats.datagrams_received += 1;
        self.stats.bytes_received += d.len() as u64;
        let ev = self.wire.handle(from, d, now, &mut *self.nonce);
        match ev {
            HostWireEvent::Answered { reply, .. } => {
                tracing::debug!(%from, "answered an offer; waiting for its proof");
                self.transmit.push_back(reply);
            }
            HostWireEvent::Connected {
                peer,
                reason,
                moved_from,
                payload,
            } => {
                self.on_connected(peer, reason, moved_from, now);
                self.kd.handle(&payload, now);
                self.drain_kd(now);
            }
            HostWireEvent::KeepAlive => self.heard(now),
            HostWireEvent::Data(payload) => {
                self.heard(now);
                self.kd.handle(&payload, now);
                self.drain_kd(now);
            }
            HostWireEvent::NotAuthenticated { channel } => {
                self.state.unauthenticated += 1;
                if channel == Channel::Control {
                    if self.state.phase == Phase::Waiting {
                        self.state.phase = Phase::WrongKey;
                    }
                    if self
                        .last_mismatch
                        .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(3))
                    {
                        self.last_mismatch = Some(now);
                        tracing::warn!(%from, "KDNET offer does not authenticate: wrong key?");
                        self.output
                            .push_back(Output::Event(HostEvent::KeyMismatch { from }));
                    }
                }
            }
            HostWireEvent::Dropped(Dropped::NoSession) => {
                // Data and no session (this host started after the target took a debugger):
                // ask that sender for an offer, at most once a second.
                if self
                    .last_poke
                    .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1))
                {
                    self.last_poke = Some(now);
                    let version = d.get(4).copied().unwrap_or(4);
                    self.transmit.push_back(self.wire.poke(from, version));
                }
            }
            HostWireEvent::Dropped(_) | HostWireEvent::Malformed(_) => {}
        }
        self.pump(now);
    }

    fn heard(&mut self, now: Instant) {
        let silent = now.saturating_duration_since(self.last_heard);
        self.last_heard = now;
        if self.state.phase == Phase::Silent {
            tracing::info!(after = ?silent, "the target is heard again");
            self.state.phase = Phase::Connected;
            self.output
                .push_back(Output::Event(HostEvent::Heard { after: silent }));
        }
    }

    fn declare_gone(&mut self, silent: Duration) {
        tracing::warn!(after = ?silent, "the target stopped answering");
        self.state.phase = Phase::Silent;
        self.state.module_events += 1;
        self.stats.silences += 1;
        self.output
            .push_back(Output::Event(HostEvent::Silent { after: silent }));
        // What is outstanding and queued cannot be answered: fail it now rather than let each
        // wait out its own deadline.
        if let Some(InFlight::Op { .. }) = self.inflight {
            self.kd.abort();
            self.inflight = None;
        }
        self.want = None;
        let e = HostError::TargetGone { silent };
        if let Some(a) = self.active.take() {
            self.finish(a.id, Err(e.clone()));
        }
        while let Some((id, _)) = self.queue.pop_front() {
            self.finish(id, Err(e.clone()));
        }
    }

    fn on_connected(
        &mut self,
        peer: SocketAddr,
        reason: HandshakeReason,
        moved_from: Option<SocketAddr>,
        now: Instant,
    ) {
        tracing::info!(%peer, ?reason, ?moved_from, "KDNET handshake proven");
        self.state.module_events += 1;
        self.heard(now);
        self.kd.new_session();
        if reason == HandshakeReason::Rebooted {
            // A new boot's kernel has an empty breakpoint table.
            self.state.breakpoints.clear();
            self.last_dr7 = DR7_NONE;
            self.kd.abort();
            self.inflight = None;
            self.want = None;
            self.auto.clear();
            // A new boot starts with the largest transfer again.
            self.max_transfer = TRANSFER_STEPS[0];
            self.transfer_confirmed = 0;
            if let Some(a) = self.active.take() {
                let result = match a.run {
                    // A reboot we asked for whose ACK was lost has done its job.
                    Run::Reboot => Ok(Done::Unit),
                    Run::BreakIn { .. } | Run::Probe { .. } => {
                        // Still wanted on the new boot.
                        self.active = Some(a);
                        self.state.phase = Phase::Connected;
                        self.state.target = Some(peer);
                        self.state.run = RunState::Unknown;
                        self.state.stop = None;
                        self.output.push_back(Output::Event(HostEvent::Connected {
                            target: peer,
                            reason,
                        }));
                        return;
                    }
                    r => Err(HostError::TargetRebooted(run_name(&r))),
                };
                self.finish(a.id, result);
            }
        }
        self.state.phase = Phase::Connected;
        self.state.target = Some(peer);
        if reason != HandshakeReason::Rekeyed {
            self.state.run = RunState::Unknown;
            self.state.stop = None;
        }
        self.output.push_back(Output::Event(HostEvent::Connected {
            target: peer,
            reason,
        }));
    }

    fn drain_kd(&mut self, now: Instant) {
        while let Some(ev) = self.kd.poll_event() {
            match ev {
                HostKdEvent::Packet(p) => self.on_packet(p, now),
                HostKdEvent::Delivered { .. } => match self.inflight.take() {
                    Some(InFlight::Op {
                        m,
                        expect_reply: false,
                        ..
                    }) => {
                        self.stats.round_trips += 1;
                        if matches!(m.api(), Some(Api::Continue | Api::Continue2 | Api::Reboot)) {
                            self.set_running();
                        }
                        self.feed(now, KdOutcome::Delivered);
                    }
                    Some(InFlight::Auto { .. }) => {}
                    other => self.inflight = other,
                },
                HostKdEvent::GaveUp { .. } => match self.inflight.take() {
                    // The KD layer's sends are spent but the request's time is not: the deadline
                    // decides, so send it again (a new id). A target that lost both the ACK and
                    // the reply drops its reply when the request comes again, so a bad run of
                    // losses can spend the sends of a request the target is still serving.
                    Some(InFlight::Op {
                        m,
                        expect_reply,
                        sent,
                        timeout,
                    }) if now < sent + timeout => {
                        if self
                            .kd
                            .send(PacketType::StateManipulate, m.encode(), expect_reply, now)
                            .is_ok()
                        {
                            self.inflight = Some(InFlight::Op {
                                m,
                                expect_reply,
                                sent,
                                timeout,
                            });
                        }
                    }
                    Some(InFlight::Op { sent, .. }) => {
                        self.stats.failed += 1;
                        self.feed(
                            now,
                            KdOutcome::TimedOut(now.saturating_duration_since(sent)),
                        );
                    }
                    Some(InFlight::Auto { .. }) | None => {}
                },
                HostKdEvent::Hello { .. } | HostKdEvent::TargetReset { .. } => {}
                HostKdEvent::Malformed(e) => {
                    tracing::debug!("malformed KD packet: {e}");
                    self.wire.count_malformed_kd();
                }
            }
        }
        self.kd_pump(now);
    }

    fn on_packet(&mut self, p: Packet, now: Instant) {
        match p.kind {
            PacketType::StateManipulate => {
                let Ok(m) = Manipulate::decode(&p.data) else {
                    self.wire.count_malformed_kd();
                    return;
                };
                let answers = matches!(
                    &self.inflight,
                    Some(InFlight::Op { m: req, expect_reply: true, .. }) if m.answers(req)
                );
                if !answers {
                    tracing::debug!("stale or unexpected reply {m:?}");
                    return;
                }
                self.kd.reply_received();
                self.inflight = None;
                self.stats.round_trips += 1;
                self.mirror_breakpoints(&m);
                self.feed(now, KdOutcome::Reply(m));
            }
            PacketType::StateChange64 => {
                let Ok(sc) = StateChange64::decode(&p.data) else {
                    self.wire.count_malformed_kd();
                    return;
                };
                // The same report again while stopped: the target repeated it after a RESET,
                // as Windows does; it did not run in between, and what was read still holds.
                if self.state.run == RunState::Stopped && self.state.stop.as_ref() == Some(&sc) {
                    self.on_stopped(now);
                    return;
                }
                self.state.run = RunState::Stopped;
                self.state.stop = Some(sc.clone());
                self.state.stops += 1;
                self.state.passing = false;
                if matches!(sc.event, StateEvent::LoadSymbols(_)) {
                    self.state.module_events += 1;
                }
                // The kernel took the breakpoints in the reported instructions out.
                let (pc, n) = (
                    sc.program_counter,
                    u64::from(sc.control.instruction_count.min(16)),
                );
                self.state
                    .breakpoints
                    .retain(|(_, a)| !(*a >= pc && *a - pc < n));
                if let StateEvent::LoadSymbols(l) = &sc.event
                    && !self.module_breaks.stops_on(l)
                    && !matches!(
                        self.active.as_ref().map(|a| &a.run),
                        Some(Run::BreakIn { .. })
                    )
                {
                    // Reported and continued at once: the target is not left waiting for a
                    // load nobody asked to stop on.
                    self.state.passing = true;
                    self.output
                        .push_back(Output::Event(HostEvent::Module(l.clone())));
                    self.on_stopped(now);
                    self.queue.push_front((
                        INTERNAL,
                        Op::Resume {
                            status: status::DBG_CONTINUE,
                            trace: false,
                            dr7: self.last_dr7,
                        },
                    ));
                    self.pump(now);
                    return;
                }
                self.output
                    .push_back(Output::Event(HostEvent::StateChange(sc)));
                self.on_stopped(now);
            }
            PacketType::DebugIo => match DebugIo::decode(&p.data) {
                Ok(DebugIo::PrintString { processor, text }) => {
                    // Only a running kernel prints.
                    if self.state.run == RunState::Unknown {
                        self.state.run = RunState::Running;
                    }
                    self.output
                        .push_back(Output::Event(HostEvent::DebugPrint { processor, text }));
                }
                Ok(DebugIo::GetString { .. }) => {
                    // Answer a prompt with an empty line so the target is not left waiting.
                    self.auto
                        .push_back((PacketType::DebugIo, DebugIo::get_string_reply(&p.data, b"")));
                }
                _ => {}
            },
            PacketType::FileIo => {
                if let Ok(f) = FileIo::decode(&p.data)
                    && let FileOp::CreateFile { name, .. } = f.op
                {
                    self.output
                        .push_back(Output::Event(HostEvent::FileRequest { name }));
                }
                self.auto
                    .push_back((PacketType::FileIo, FileIo::no_such_file_reply(&p.data)));
            }
            _ => {}
        }
    }

    /// Follows the kernel's breakpoint table from the replies it gives.
    fn mirror_breakpoints(&mut self, r: &Manipulate) {
        match r.api() {
            Some(Api::WriteBreakPoint) if status::is_success(r.return_status()) => {
                let (handle, address) = (r.u32(0x18), r.u64(0x10));
                self.state.breakpoints.retain(|(h, _)| *h != handle);
                self.state.breakpoints.push((handle, address));
            }
            Some(Api::RestoreBreakPoint) => {
                let handle = r.u32(0x10);
                self.state.breakpoints.retain(|(h, _)| *h != handle);
            }
            _ => {}
        }
    }

    fn set_running(&mut self) {
        self.state.passing = false;
        if self.state.run != RunState::Running {
            self.state.run = RunState::Running;
            self.state.stop = None;
            self.output.push_back(Output::Event(HostEvent::Resumed));
        }
    }

    /// A state change arrived: a break-in or a probe waiting for it is done.
    fn on_stopped(&mut self, _now: Instant) {
        let Some(stop) = self.state.stop.clone() else {
            return;
        };
        let done = match self.active.as_ref().map(|a| &a.run) {
            Some(Run::BreakIn { .. }) => Some(Done::Stopped(stop)),
            // A module event being continued at once is not a stop the probe reports: the
            // target is about to run (the probe ends when its wait does, and the continue
            // follows).
            Some(Run::Probe { .. }) if !self.state.passing => Some(Done::Probed(Some(stop))),
            // A continue whose acknowledgement was lost, and the target stopped again after
            // it (a single step): it ran. What is still in flight for it is moot.
            Some(Run::Resume { stops, .. }) if self.state.stops > *stops => {
                if let Some(InFlight::Op { .. }) = self.inflight {
                    self.kd.abort();
                    self.inflight = None;
                }
                self.want = None;
                Some(Done::Unit)
            }
            _ => None,
        };
        if let Some(d) = done {
            let a = self.active.take().expect("checked");
            self.finish(a.id, Ok(d));
        }
    }

    fn finish(&mut self, id: OpId, result: Result<Done, HostError>) {
        if id == INTERNAL {
            if let Err(e) = result {
                tracing::warn!("continuing after a module event failed: {e}");
                // Still stopped there: a stop like any other now, for whoever reads it.
                self.state.passing = false;
            }
            return;
        }
        self.output.push_back(Output::Completed { id, result });
    }

    /// Sends what the KD slot allows: packets owed to the target first, then the active
    /// operation's request.
    fn kd_pump(&mut self, now: Instant) {
        while self.inflight.is_none() && self.wire.peer().is_some() && !self.kd.busy() {
            if let Some((kind, data)) = self.auto.pop_front() {
                if self.kd.send(kind, data, false, now).is_ok() {
                    self.inflight = Some(InFlight::Auto { sent: now });
                }
                continue;
            }
            let Some((m, expect_reply, timeout)) = self.want.take() else {
                break;
            };
            match self
                .kd
                .send(PacketType::StateManipulate, m.encode(), expect_reply, now)
            {
                Ok(_) => {
                    self.inflight = Some(InFlight::Op {
                        m,
                        expect_reply,
                        sent: now,
                        timeout,
                    })
                }
                Err(_) => {
                    self.want = Some((m, expect_reply, timeout));
                    break;
                }
            }
        }
        self.seal_kd();
    }

    fn seal_kd(&mut self) {
        while let Some(payload) = self.kd.poll_transmit() {
            if let Some(t) = self.wire.seal_data(&payload) {
                self.transmit.push_back(t);
            }
        }
    }

    /// Starts queued operations while nothing is active.
    fn pump(&mut self, now: Instant) {
        while self.active.is_none() {
            let Some((id, op)) = self.queue.pop_front() else {
                break;
            };
            if let Err(e) = self.admit(&op, now) {
                self.finish(id, Err(e));
                continue;
            }
            if id != INTERNAL
                && let Op::Resume { dr7, .. } = &op
            {
                self.last_dr7 = *dr7;
            }
            let run = self.start_run(op, now);
            self.active = Some(Active { id, run });
            self.advance(now, None);
        }
        self.kd_pump(now);
    }

    /// Whether an operation can start now.
    fn admit(&self, op: &Op, now: Instant) -> Result<(), HostError> {
        if self.state.phase == Phase::Silent {
            return Err(HostError::TargetGone {
                silent: now.saturating_duration_since(self.last_heard),
            });
        }
        let needs_stopped = !matches!(op, Op::BreakIn { .. } | Op::ProbeStopped { .. });
        if needs_stopped && self.wire.peer().is_none() {
            return Err(HostError::NotConnected("no target is connected".into()));
        }
        if needs_stopped && !matches!(op, Op::Reboot) && self.state.run == RunState::Running {
            return Err(HostError::TargetRunning);
        }
        Ok(())
    }

    fn start_run(&mut self, op: Op, now: Instant) -> Run {
        match op {
            Op::Request { m, timeout } => Run::Request {
                m,
                timeout: timeout.unwrap_or(self.cfg.request_timeout),
            },
            Op::ReadMemory {
                physical,
                address,
                len,
            } => Run::Read(ReadRun {
                physical,
                address,
                len,
                out: Vec::with_capacity(len.min(1 << 24)),
                asked: 0,
                probing: false,
                retry_smaller: None,
            }),
            Op::WriteMemory {
                physical,
                address,
                data,
            } => Run::Write(WriteRun {
                physical,
                address,
                data,
                done: 0,
                chunk: 0,
            }),
            Op::Resume { status, trace, dr7 } => Run::Resume {
                status,
                trace,
                dr7,
                tries: 0,
                phase: ResumePhase::Continue,
                stops: self.state.stops,
            },
            Op::TakeOut => Run::TakeOut {
                left: self.state.breakpoints.iter().map(|(h, _)| *h).collect(),
                failed: Vec::new(),
            },
            Op::Reboot => Run::Reboot,
            Op::BreakIn { timeout } => Run::BreakIn {
                started: now,
                deadline: now + timeout,
                next: now,
                tries: 0,
            },
            Op::ProbeStopped { wait } => Run::Probe { until: now + wait },
        }
    }

    /// Gives the KD outcome of the active operation's request to it.
    fn feed(&mut self, now: Instant, outcome: KdOutcome) {
        self.advance(now, Some(outcome));
    }

    fn advance(&mut self, now: Instant, outcome: Option<KdOutcome>) {
        let Some(mut a) = self.active.take() else {
            return;
        };
        let step = self.step(&mut a.run, now, outcome);
        match step {
            Step::Issue(m, expect_reply, timeout) => {
                self.want = Some((m, expect_reply, timeout));
                self.active = Some(a);
                self.kd_pump(now);
            }
            Step::Finish(result) => {
                self.finish(a.id, result);
                self.pump(now);
            }
            Step::Wait => self.active = Some(a),
        }
    }

    fn tick_active(&mut self, now: Instant) {
        let Some(mut a) = self.active.take() else {
            return;
        };
        let result = match &mut a.run {
            Run::BreakIn {
                started,
                deadline,
                next,
                tries,
            } => {
                if let Some(stop) = self.stopped() {
                    Some(Ok(Done::Stopped(stop)))
                } else if now >= *deadline {
                    Some(Err(HostError::Timeout {
                        what: "break-in".into(),
                        after: now.saturating_duration_since(*started),
                    }))
                } else {
                    if now >= *next {
                        *next = now + BREAK_IN_INTERVAL;
                        *tries += 1;
                        self.send_break_in(*tries);
                    }
                    None
                }
            }
            Run::Probe { until } if now >= *until => Some(Ok(Done::Probed(self.stopped()))),
            Run::Resume {
                phase: ResumePhase::AwaitStop { next, until },
                ..
            } => {
                if now >= *until {
                    Some(Err(HostError::Timeout {
                        what: "the single step's stop".into(),
                        after: self.cfg.request_timeout,
                    }))
                } else {
                    if now >= *next {
                        *next = now + BREAK_IN_INTERVAL;
                        self.kd.announce_reset();
                        self.seal_kd();
                    }
                    None
                }
            }
            _ => None,
        };
        match result {
            Some(r) => {
                self.finish(a.id, r);
            }
            None => self.active = Some(a),
        }
    }

    /// The stop the target is in, unless it is a module event being continued at once.
    fn stopped(&self) -> Option<StateChange64> {
        (self.state.run == RunState::Stopped && !self.state.passing)
            .then(|| self.state.stop.clone())
            .flatten()
    }

    fn next_step(size: u32) -> Option<u32> {
        TRANSFER_STEPS.iter().copied().find(|&s| s < size)
    }

    fn step_down(&mut self, size: u32) {
        if let Some(s) = Self::next_step(size) {
            tracing::info!(
                from = size,
                to = s,
                "target does not serve this transfer size; stepping down"
            );
            self.max_transfer = self.max_transfer.min(s);
        }
    }

    /// One step of an operation, given what happened to its last request.
    fn step(&mut self, run: &mut Run, now: Instant, outcome: Option<KdOutcome>) -> Step {
        match run {
            Run::Request { m, timeout } => match outcome {
                None => Step::Issue(m.clone(), m.api().is_none_or(Api::has_reply), *timeout),
                Some(KdOutcome::Reply(r)) => Step::Finish(Ok(Done::Reply(r))),
                Some(KdOutcome::Delivered) => Step::Finish(Ok(Done::Unit)),
                Some(KdOutcome::TimedOut(after)) => Step::Finish(Err(HostError::Timeout {
                    what: api_name(m),
                    after,
                })),
            },
            Run::Read(r) => self.step_read(r, outcome),
            Run::Write(w) => self.step_write(w, outcome),
            Run::Resume {
                status: st,
                trace,
                dr7,
                tries,
                phase,
                stops,
            } => {
                if self.state.stops > *stops {
                    // A new state change: it ran (a single step, or a stop right after).
                    return Step::Finish(Ok(Done::Unit));
                }
                match (outcome, *phase) {
                    (None, ResumePhase::AwaitStop { .. }) => return Step::Wait,
                    (None, _) => {}
                    (
                        Some(KdOutcome::Delivered | KdOutcome::TimedOut(_)),
                        ResumePhase::Continue,
                    ) if *trace => {
                        *phase = ResumePhase::AwaitStop {
                            next: now + BREAK_IN_INTERVAL,
                            until: now + self.cfg.request_timeout,
                        };
                        return Step::Wait;
                    }
                    (Some(KdOutcome::Delivered), ResumePhase::Continue) => {
                        return Step::Finish(Ok(Done::Unit));
                    }
                    (Some(KdOutcome::TimedOut(_)), ResumePhase::Continue) => {
                        // Unacknowledged: ask whether it still answers.
                        *phase = ResumePhase::Probe;
                        return Step::Issue(
                            Manipulate::get_version(),
                            true,
                            self.cfg.probe_timeout,
                        );
                    }
                    (Some(KdOutcome::Reply(_)), ResumePhase::Probe) => {
                        // Still stopped: the continue was lost. Again.
                        *phase = ResumePhase::Continue;
                    }
                    (Some(KdOutcome::TimedOut(_)), ResumePhase::Probe) => {
                        tracing::debug!("continue unacknowledged and the target silent: it runs");
                        self.set_running();
                        return Step::Finish(Ok(Done::Unit));
                    }
                    (Some(_), _) => {
                        return Step::Finish(Err(HostError::Protocol(
                            "unexpected answer while continuing".into(),
                        )));
                    }
                }
                if *tries >= 3 {
                    return Step::Finish(Err(HostError::Timeout {
                        what: "DbgKdContinueApi2".into(),
                        after: SEND_TIMEOUT * 3,
                    }));
                }
                *tries += 1;
                Step::Issue(
                    Manipulate::continue2(*st, *trace, *dr7),
                    false,
                    SEND_TIMEOUT,
                )
            }
            Run::TakeOut { left, failed } => {
                let answered = outcome.is_some();
                // A reply either way: taken out, or not in the table (the kernel took it out
                // already).
                if let Some(KdOutcome::TimedOut(_)) = outcome {
                    failed.extend(left.first().copied());
                }
                if answered && !left.is_empty() {
                    left.remove(0);
                }
                match left.first() {
                    Some(h) => Step::Issue(
                        Manipulate::restore_breakpoint(*h),
                        true,
                        self.cfg.request_timeout,
                    ),
                    None if failed.is_empty() => Step::Finish(Ok(Done::Unit)),
                    None => Step::Finish(Err(HostError::Timeout {
                        what: format!("taking out breakpoint(s) {failed:?}"),
                        after: self.cfg.request_timeout,
                    })),
                }
            }
            Run::Reboot => match outcome {
                None => Step::Issue(Manipulate::reboot(), false, SEND_TIMEOUT),
                Some(KdOutcome::TimedOut(after)) => Step::Finish(Err(HostError::Timeout {
                    what: "DbgKdRebootApi".into(),
                    after,
                })),
                Some(_) => Step::Finish(Ok(Done::Unit)),
            },
            Run::BreakIn { next, tries, .. } => match self.stopped() {
                Some(stop) => Step::Finish(Ok(Done::Stopped(stop))),
                None => {
                    *next = now + BREAK_IN_INTERVAL;
                    *tries += 1;
                    self.send_break_in(*tries);
                    Step::Wait
                }
            },
            Run::Probe { .. } => {
                if let Some(stop) = self.stopped() {
                    return Step::Finish(Ok(Done::Probed(Some(stop))));
                }
                if self.state.run == RunState::Running {
                    return Step::Finish(Ok(Done::Probed(None)));
                }
                self.kd.announce_reset();
                self.seal_kd();
                Step::Wait
            }
        }
    }

    /// The break-in byte (the `tries`-th). A target that is already stopped (another debugger
    /// left it so) ignores it; when the run state is not known, every fourth is followed by a
    /// RESET, which a stopped target answers with its state change.
    fn send_break_in(&mut self, tries: u32) {
        self.kd.break_in();
        if tries.is_multiple_of(4) && self.state.run == RunState::Unknown {
            self.kd.announce_reset();
        }
        self.seal_kd();
    }

    fn read_request(r: &ReadRun, at: u64, size: u32) -> Manipulate {
        if r.physical {
            Manipulate::read_physical(at, size)
        } else {
            Manipulate::read_virtual(at, size)
        }
    }

    /// The next transfer of a read, or its end.
    fn next_read(&mut self, r: &mut ReadRun) -> Step {
        if r.out.len() >= r.len {
            self.stats.memory_bytes += r.out.len() as u64;
            return Step::Finish(Ok(Done::Memory(std::mem::take(&mut r.out))));
        }
        let at = r.address.wrapping_add(r.out.len() as u64);
        let size = self.max_transfer;
        let want = ((r.len - r.out.len()) as u64).min(u64::from(size)) as u32;
        // An unconfirmed size larger than one frame is probed with a short deadline.
        r.probing = self.transfer_confirmed < size && want > TRANSFER_STEPS[2];
        r.asked = want;
        let timeout = if r.probing {
            self.cfg.probe_timeout
        } else {
            self.cfg.request_timeout
        };
        Step::Issue(Self::read_request(r, at, want), true, timeout)
    }

    fn step_read(&mut self, r: &mut ReadRun, outcome: Option<KdOutcome>) -> Step {
        let reply = match outcome {
            None => return self.next_read(r),
            Some(KdOutcome::Reply(m)) => m,
            Some(KdOutcome::TimedOut(after)) => {
                if r.retry_smaller.is_none() && r.probing {
                    self.step_down(self.max_transfer);
                    return self.next_read(r);
                }
                return Step::Finish(Err(HostError::Timeout {
                    what: if r.physical {
                        "DbgKdReadPhysicalMemoryApi".into()
                    } else {
                        "DbgKdReadVirtualMemoryApi".into()
                    },
                    after,
                }));
            }
            Some(KdOutcome::Delivered) => {
                return Step::Finish(Err(HostError::Protocol("a read got no reply".into())));
            }
        };
        let at = r.address.wrapping_add(r.out.len() as u64);
        if let Some((size, failed_status)) = r.retry_smaller.take() {
            // The smaller read decides whether the size or the memory was at fault.
            if status::is_success(reply.return_status()) && !reply.data.is_empty() {
                self.step_down(size);
                return self.next_read(r);
            }
            return Step::Finish(Err(HostError::Memory {
                address: at,
                read: std::mem::take(&mut r.out),
                status: failed_status,
            }));
        }
        let actual = match reply.body() {
            ApiBody::Memory { actual, .. } => actual,
            _ => 0,
        };
        let want = r.asked;
        let got = (actual as usize).min(reply.data.len()).min(want as usize);
        let ok = status::is_success(reply.return_status());
        if got == 0 {
            if r.probing && !ok {
                // Maybe the size, maybe the memory: try the next size once before deciding.
                let size = self.max_transfer;
                if let Some(s) = Self::next_step(size) {
                    r.retry_smaller = Some((size, reply.return_status()));
                    return Step::Issue(
                        Self::read_request(r, at, s.min(want)),
                        true,
                        self.cfg.request_timeout,
                    );
                }
            }
            return Step::Finish(Err(HostError::Memory {
                address: at,
                read: std::mem::take(&mut r.out),
                status: reply.return_status(),
            }));
        }
        self.transfer_confirmed = self.transfer_confirmed.max(got as u32);
        r.out.extend_from_slice(&reply.data[..got]);
        if ok && got < want as usize && got >= 1024 {
            // The target clamps: remember its limit.
            self.max_transfer = self.max_transfer.min(got as u32);
        }
        if !ok {
            // A partial read: the next address is the one that failed.
            let next = r.address.wrapping_add(r.out.len() as u64);
            return Step::Finish(Err(HostError::Memory {
                address: next,
                read: std::mem::take(&mut r.out),
                status: reply.return_status(),
            }));
        }
        self.next_read(r)
    }

    fn step_write(&mut self, w: &mut WriteRun, outcome: Option<KdOutcome>) -> Step {
        let api = if w.physical {
            "DbgKdWritePhysicalMemoryApi"
        } else {
            "DbgKdWriteVirtualMemoryApi"
        };
        match outcome {
            None => {}
            Some(KdOutcome::Reply(r)) => {
                if !status::is_success(r.return_status()) {
                    return Step::Finish(Err(HostError::Status {
                        api: api.into(),
                        status: r.return_status(),
                    }));
                }
                w.done += w.chunk;
            }
            Some(KdOutcome::TimedOut(after)) => {
                return Step::Finish(Err(HostError::Timeout {
                    what: api.into(),
                    after,
                }));
            }
            Some(KdOutcome::Delivered) => {
                return Step::Finish(Err(HostError::Protocol("a write got no reply".into())));
            }
        }
        if w.done >= w.data.len() {
            return Step::Finish(Ok(Done::Unit));
        }
        let n = (w.data.len() - w.done).min(self.max_transfer as usize);
        w.chunk = n;
        let at = w.address.wrapping_add(w.done as u64);
        let bytes = w.data[w.done..w.done + n].to_vec();
        let m = if w.physical {
            Manipulate::write_physical(at, bytes)
        } else {
            Manipulate::write_virtual(at, bytes)
        };
        Step::Issue(m, true, self.cfg.request_timeout)
    }
}

fn api_name(m: &Manipulate) -> String {
    m.api().map_or_else(
        || format!("api {:#x}", m.api_number()),
        |a| a.name().to_string(),
    )
}

fn run_name(r: &Run) -> String {
    match r {
        Run::Request { m, .. } => api_name(m),
        Run::Read(r) if r.physical => "DbgKdReadPhysicalMemoryApi".into(),
        Run::Read(_) => "DbgKdReadVirtualMemoryApi".into(),
        Run::Write(w) if w.physical => "DbgKdWritePhysicalMemoryApi".into(),
        Run::Write(_) => "DbgKdWriteVirtualMemoryApi".into(),
        Run::Resume { .. } => "DbgKdContinueApi2".into(),
        Run::TakeOut { .. } => "taking out breakpoints".into(),
        Run::Reboot => "DbgKdRebootApi".into(),
        Run::BreakIn { .. } => "break-in".into(),
        Run::Probe { .. } => "a probe".into(),
    }
}
