//! The debugger's session over tokio.
//!
//! A driver task owns the UDP socket and the sans-IO wire and KD state machines; [`Host`] is a
//! cloneable handle that queues requests to it. Requests are served one at a time, as the
//! protocol requires, so requests from several callers are serialised, never interleaved on the
//! wire. Every wait has a deadline. Events (state changes, DbgPrint, reboots, a wrong key) are
//! broadcast to subscribers; the connection state is observable through a watch channel.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::api::{
    Api, ApiBody, Context, DebugIo, FileIo, FileOp, GetVersion64, MAX_TRANSFER, Manipulate,
    StateChange64, status,
};
use crate::kd::{HostKd, HostKdConfig, HostKdEvent, Packet, PacketType};
use crate::rng::os_random_32;
use crate::wire::{Channel, Dropped, HandshakeReason, HostWire, HostWireEvent, Key};

/// Memory transfer sizes tried, largest first: the protocol's maximum, 0x800 as other debuggers
/// use, and the largest reply that fits one Ethernet frame.
pub const TRANSFER_STEPS: [u32; 3] = [MAX_TRANSFER, 0x800, 1360];

/// Settings of a host session.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Address and port to listen on (the `port:` given to bcdedit).
    pub bind: SocketAddr,
    /// The key.
    pub key: Key,
    /// Accept only this target address (WinDbg's `target=`); pokes it until it answers.
    pub target: Option<SocketAddr>,
    /// KD timing.
    pub kd: HostKdConfig,
    /// Longest wait for one request's reply, retries included.
    pub request_timeout: Duration,
    /// Longest wait when probing whether the target serves a transfer size.
    pub probe_timeout: Duration,
}

impl HostConfig {
    /// Defaults for a host listening on `bind` with `key`.
    pub fn new(bind: SocketAddr, key: Key) -> HostConfig {
        HostConfig {
            bind,
            key,
            target: None,
            kd: HostKdConfig::default(),
            request_timeout: Duration::from_secs(10),
            probe_timeout: Duration::from_millis(1500),
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
    /// The target did not answer in time.
    #[error("no answer from the target to {what} within {after:?}")]
    Timeout {
        /// What was asked.
        what: String,
        /// How long we waited.
        after: Duration,
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
    /// The session ended.
    #[error("the session is closed")]
    Closed,
}

/// Something that happened on the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    /// A handshake completed.
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
    /// KDNET datagrams received that authenticated.
    pub authenticated: u64,
    /// KDNET datagrams received that did not authenticate.
    pub unauthenticated: u64,
    /// Offers seen (authenticated).
    pub offers: u64,
}

/// Counters of a session. A round trip is one request answered by one reply (or acknowledged,
/// for requests without a reply).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostStats {
    /// Requests completed.
    pub round_trips: u64,
    /// Requests that failed (timeout, status).
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
    /// Datagrams dropped (replays, wrong key, malformed).
    pub dropped: u64,
}

enum Command {
    Request {
        m: Manipulate,
        timeout: Duration,
        reply: oneshot::Sender<Result<Manipulate, HostError>>,
    },
    Send {
        m: Manipulate,
        done: oneshot::Sender<Result<(), HostError>>,
    },
    BreakIn,
    /// RESET: a stopped target sends its state change again.
    Reset,
    /// A continue went unacknowledged and the target no longer answers: it runs.
    AssumeRunning(oneshot::Sender<()>),
}

struct Shared {
    stats: Mutex<HostStats>,
    max_transfer: AtomicU32,
    transfer_confirmed: AtomicU32,
}

/// A handle to a host session. Cloning it gives another handle to the same session.
#[derive(Clone)]
pub struct Host {
    tx: mpsc::Sender<Command>,
    events: broadcast::Sender<HostEvent>,
    state: watch::Receiver<LinkState>,
    shared: Arc<Shared>,
    local: SocketAddr,
    config: Arc<HostConfig>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").field("local", &self.local).finish()
    }
}

impl Host {
    /// Binds the UDP port and starts the session driver.
    pub async fn bind(config: HostConfig) -> Result<Host, HostError> {
        let socket = UdpSocket::bind(config.bind)
            .await
            .map_err(|e| HostError::Io(format!("cannot bind UDP {}: {e}", config.bind)))?;
        let local = socket
            .local_addr()
            .map_err(|e| HostError::Io(e.to_string()))?;
        let (tx, rx) = mpsc::channel(64);
        let (events, _) = broadcast::channel(4096);
        let (state_tx, state) = watch::channel(LinkState {
            phase: Phase::Waiting,
            target: None,
            run: RunState::Unknown,
            stop: None,
            stops: 0,
            authenticated: 0,
            unauthenticated: 0,
            offers: 0,
        });
        let shared = Arc::new(Shared {
            stats: Mutex::new(HostStats::default()),
            max_transfer: AtomicU32::new(TRANSFER_STEPS[0]),
            transfer_confirmed: AtomicU32::new(0),
        });
        let driver = Driver {
            socket,
            wire: HostWire::new(config.key.clone(), config.target.map(|a| a.ip())),
            kd: HostKd::new(config.kd),
            rx,
            events: events.clone(),
            state: state_tx,
            shared: shared.clone(),
            current: None,
            auto: std::collections::VecDeque::new(),
            last_mismatch: None,
            last_poke: None,
            poke_target: config.target,
            commands_open: true,
        };
        tokio::spawn(driver.run());
        Ok(Host {
            tx,
            events,
            state,
            shared,
            local,
            config: Arc::new(config),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// A receiver of session events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<HostEvent> {
        self.events.subscribe()
    }

    /// The current state.
    pub fn state(&self) -> LinkState {
        self.state.borrow().clone()
    }

    /// A receiver that sees every state change.
    pub fn watch_state(&self) -> watch::Receiver<LinkState> {
        self.state.clone()
    }

    /// Counters so far.
    pub fn stats(&self) -> HostStats {
        *self.shared.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The memory transfer size currently used for this target.
    pub fn max_transfer(&self) -> u32 {
        self.shared.max_transfer.load(Ordering::Relaxed)
    }

    /// Fixes the memory transfer size (for comparisons; normally it adapts by itself). Sizes
    /// above the protocol's 3,944 bytes are cut to it.
    pub fn set_max_transfer(&self, size: u32) {
        let size = size.clamp(1, MAX_TRANSFER);
        self.shared.max_transfer.store(size, Ordering::Relaxed);
        self.shared
            .transfer_confirmed
            .store(size, Ordering::Relaxed);
    }

    /// Waits until a target has completed the handshake. On timeout the error says what was
    /// seen: nothing, or offers that do not authenticate (a wrong key).
    pub async fn wait_connected(&self, timeout: Duration) -> Result<SocketAddr, HostError> {
        let mut rx = self.state.clone();
        let res = tokio::time::timeout(timeout, rx.wait_for(|s| s.phase == Phase::Connected)).await;
        match res {
            Ok(Ok(s)) => s.target.ok_or(HostError::Closed),
            Ok(Err(_)) => Err(HostError::Closed),
            Err(_) => {
                let s = self.state();
                Err(HostError::NotConnected(if s.unauthenticated > 0 {
                    format!(
                        "KDNET datagrams arrived on {} but none authenticated ({} seen): the key is probably wrong",
                        self.local, s.unauthenticated
                    )
                } else {
                    format!(
                        "no KDNET offer arrived on UDP {} within {:?}: is the target booted with bcdedit /dbgsettings net hostip:<this host> port:{}?",
                        self.local,
                        timeout,
                        self.local.port()
                    )
                }))
            }
        }
    }

    /// Waits until the target is stopped and returns its state change.
    pub async fn wait_stopped(&self, timeout: Duration) -> Result<StateChange64, HostError> {
        let mut rx = self.state.clone();
        match tokio::time::timeout(
            timeout,
            rx.wait_for(|s| s.run == RunState::Stopped && s.stop.is_some()),
        )
        .await
        {
            Ok(Ok(s)) => s.stop.clone().ok_or(HostError::Closed),
            Ok(Err(_)) => Err(HostError::Closed),
            Err(_) => Err(HostError::Timeout {
                what: "a state change".into(),
                after: timeout,
            }),
        }
    }

    /// Breaks in: sends the break-in byte (again every 250 ms, as it is not acknowledged) until
    /// the target reports a state change. Returns at once if it is already stopped.
    pub async fn break_in(&self, timeout: Duration) -> Result<StateChange64, HostError> {
        if let Some(stop) = self.stopped() {
            return Ok(stop);
        }
        let deadline = Instant::now() + timeout;
        let mut tries = 0u32;
        loop {
            self.tx
                .send(Command::BreakIn)
                .await
                .map_err(|_| HostError::Closed)?;
            tries += 1;
            // A target that is already stopped (another debugger left it so) ignores the
            // break-in byte; when it is not known to run, a RESET makes it say so.
            if tries.is_multiple_of(4) && self.state().run == RunState::Unknown {
                self.tx
                    .send(Command::Reset)
                    .await
                    .map_err(|_| HostError::Closed)?;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(HostError::Timeout {
                    what: "break-in".into(),
                    after: timeout,
                });
            }
            match self
                .wait_stopped(left.min(Duration::from_millis(250)))
                .await
            {
                Ok(s) => return Ok(s),
                Err(HostError::Timeout { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Asks a newly connected target whether it is stopped (another debugger may have left it
    /// so) with a RESET, which a stopped target answers with its state change. Does not break
    /// in: a running target ignores it.
    pub async fn probe_stopped(&self, wait: Duration) -> Option<StateChange64> {
        if let Some(stop) = self.stopped() {
            return Some(stop);
        }
        if self.state().run == RunState::Running {
            return None;
        }
        self.tx.send(Command::Reset).await.ok()?;
        self.wait_stopped(wait).await.ok()
    }

    fn stopped(&self) -> Option<StateChange64> {
        let s = self.state.borrow();
        (s.run == RunState::Stopped)
            .then(|| s.stop.clone())
            .flatten()
    }

    /// Sends a manipulate request and returns the target's reply (any status).
    pub async fn request(&self, m: Manipulate) -> Result<Manipulate, HostError> {
        self.request_within(m, self.config.request_timeout).await
    }

    async fn request_within(
        &self,
        m: Manipulate,
        timeout: Duration,
    ) -> Result<Manipulate, HostError> {
        if self.state.borrow().run == RunState::Running {
            return Err(HostError::TargetRunning);
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Request { m, timeout, reply })
            .await
            .map_err(|_| HostError::Closed)?;
        rx.await.map_err(|_| HostError::Closed)?
    }

    async fn checked(&self, m: Manipulate) -> Result<Manipulate, HostError> {
        let api = m
            .api()
            .map_or("request".to_string(), |a| a.name().to_string());
        let r = self.request(m).await?;
        if status::is_success(r.return_status()) {
            Ok(r)
        } else {
            Err(HostError::Status {
                api,
                status: r.return_status(),
            })
        }
    }

    /// Sends a request the target does not answer (continue, reboot); waits for its ACK.
    async fn send_only(&self, m: Manipulate) -> Result<(), HostError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Command::Send { m, done })
            .await
            .map_err(|_| HostError::Closed)?;
        rx.await.map_err(|_| HostError::Closed)?
    }

    /// GetVersion.
    pub async fn get_version(&self) -> Result<GetVersion64, HostError> {
        Ok(self.checked(Manipulate::get_version()).await?.version())
    }

    /// Reads virtual memory of the current address space, split into the largest transfers the
    /// target serves. A failure part-way returns [`HostError::Memory`] with the bytes before it.
    pub async fn read_virtual(&self, address: u64, len: usize) -> Result<Vec<u8>, HostError> {
        self.read_memory(false, address, len).await
    }

    /// Reads physical memory.
    pub async fn read_physical(&self, address: u64, len: usize) -> Result<Vec<u8>, HostError> {
        self.read_memory(true, address, len).await
    }

    async fn read_memory(
        &self,
        physical: bool,
        address: u64,
        len: usize,
    ) -> Result<Vec<u8>, HostError> {
        let mut out = Vec::with_capacity(len.min(1 << 24));
        while out.len() < len {
            let at = address.wrapping_add(out.len() as u64);
            let size = self.max_transfer();
            let confirmed = self.shared.transfer_confirmed.load(Ordering::Relaxed) >= size;
            let want = ((len - out.len()) as u64).min(u64::from(size)) as u32;
            let m = if physical {
                Manipulate::read_physical(at, want)
            } else {
                Manipulate::read_virtual(at, want)
            };
            // An unconfirmed size larger than one frame is probed with a short deadline.
            let probing = !confirmed && want > *TRANSFER_STEPS.last().unwrap_or(&1360);
            let timeout = if probing {
                self.config.probe_timeout
            } else {
                self.config.request_timeout
            };
            let reply = match self.request_within(m, timeout).await {
                Ok(r) => r,
                Err(HostError::Timeout { .. }) if probing => {
                    self.step_down(size);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let actual = match reply.body() {
                ApiBody::Memory { actual, .. } => actual,
                _ => 0,
            };
            let got = (actual as usize).min(reply.data.len()).min(want as usize);
            let ok = status::is_success(reply.return_status());
            if got == 0 {
                if probing && !ok {
                    // Maybe the size, maybe the memory: try the next size once before deciding.
                    let smaller = self.next_step(size);
                    if let Some(s) = smaller {
                        let probe = if physical {
                            Manipulate::read_physical(at, s.min(want))
                        } else {
                            Manipulate::read_virtual(at, s.min(want))
                        };
                        let r2 = self.request(probe).await?;
                        if status::is_success(r2.return_status()) && !r2.data.is_empty() {
                            self.step_down(size);
                            continue;
                        }
                    }
                }
                return Err(HostError::Memory {
                    address: at,
                    read: out,
                    status: reply.return_status(),
                });
            }
            self.shared
                .transfer_confirmed
                .fetch_max(got as u32, Ordering::Relaxed);
            out.extend_from_slice(&reply.data[..got]);
            if ok && got < want as usize && got >= 1024 && want > got as u32 {
                // The target clamps: remember its limit.
                self.shared
                    .max_transfer
                    .fetch_min(got as u32, Ordering::Relaxed);
            }
            if !ok {
                // A partial read: the next address is the one that failed.
                let next = address.wrapping_add(out.len() as u64);
                return Err(HostError::Memory {
                    address: next,
                    read: out,
                    status: reply.return_status(),
                });
            }
        }
        self.shared
            .stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .memory_bytes += out.len() as u64;
        Ok(out)
    }

    fn next_step(&self, size: u32) -> Option<u32> {
        TRANSFER_STEPS.iter().copied().find(|&s| s < size)
    }

    fn step_down(&self, size: u32) {
        if let Some(s) = self.next_step(size) {
            tracing::info!(
                from = size,
                to = s,
                "target does not serve this transfer size; stepping down"
            );
            self.shared.max_transfer.fetch_min(s, Ordering::Relaxed);
        }
    }

    /// Writes virtual memory.
    pub async fn write_virtual(&self, address: u64, data: &[u8]) -> Result<(), HostError> {
        for (i, chunk) in data.chunks(self.max_transfer() as usize).enumerate() {
            let at = address.wrapping_add((i * self.max_transfer() as usize) as u64);
            self.checked(Manipulate::write_virtual(at, chunk.to_vec()))
                .await?;
        }
        Ok(())
    }

    /// Writes physical memory.
    pub async fn write_physical(&self, address: u64, data: &[u8]) -> Result<(), HostError> {
        for (i, chunk) in data.chunks(self.max_transfer() as usize).enumerate() {
            let at = address.wrapping_add((i * self.max_transfer() as usize) as u64);
            self.checked(Manipulate::write_physical(at, chunk.to_vec()))
                .await?;
        }
        Ok(())
    }

    /// Reads a processor's control space (index 0 KPCR, 1 KPRCB, 2 special registers,
    /// 3 current thread).
    pub async fn read_control_space(
        &self,
        processor: u16,
        index: u64,
        len: u32,
    ) -> Result<Vec<u8>, HostError> {
        let r = self
            .checked(Manipulate::read_control_space(processor, index, len))
            .await?;
        let actual = match r.body() {
            ApiBody::Memory { actual, .. } => actual as usize,
            _ => 0,
        };
        Ok(r.data[..actual.min(r.data.len())].to_vec())
    }

    /// Writes a processor's control space (index 2 only).
    pub async fn write_control_space(
        &self,
        processor: u16,
        index: u64,
        data: &[u8],
    ) -> Result<(), HostError> {
        self.checked(Manipulate::write_control_space(
            processor,
            index,
            data.to_vec(),
        ))
        .await
        .map(|_| ())
    }

    /// A processor's CONTEXT (GetContext).
    pub async fn get_context(&self, processor: u16) -> Result<Context, HostError> {
        let r = self.checked(Manipulate::get_context(processor)).await?;
        Context::from_bytes(&r.data).map_err(|e| HostError::Protocol(e.to_string()))
    }

    /// Part of a processor's CONTEXT (GetContextEx).
    pub async fn get_context_ex(
        &self,
        processor: u16,
        offset: u32,
        len: u32,
    ) -> Result<Vec<u8>, HostError> {
        let r = self
            .checked(Manipulate::get_context_ex(processor, offset, len))
            .await?;
        let n = match r.body() {
            ApiBody::ContextEx { bytes_copied, .. } => bytes_copied as usize,
            _ => 0,
        };
        Ok(r.data[..n.min(r.data.len())].to_vec())
    }

    /// Sets a processor's CONTEXT.
    pub async fn set_context(&self, processor: u16, context: &Context) -> Result<(), HostError> {
        self.checked(Manipulate::set_context(
            processor,
            context.as_bytes().to_vec(),
            context.flags(),
        ))
        .await
        .map(|_| ())
    }

    /// Writes a breakpoint; returns its handle.
    pub async fn write_breakpoint(&self, address: u64) -> Result<u32, HostError> {
        let r = self.checked(Manipulate::write_breakpoint(address)).await?;
        Ok(r.u32(0x18))
    }

    /// Removes a breakpoint.
    pub async fn restore_breakpoint(&self, handle: u32) -> Result<(), HostError> {
        self.checked(Manipulate::restore_breakpoint(handle))
            .await
            .map(|_| ())
    }

    /// Reads an MSR.
    pub async fn read_msr(&self, processor: u16, msr: u32) -> Result<u64, HostError> {
        let r = self.checked(Manipulate::read_msr(processor, msr)).await?;
        Ok(u64::from(r.u32(0x14)) | (u64::from(r.u32(0x18)) << 32))
    }

    /// Searches target memory for `pattern`; the address of the first match, if any.
    pub async fn search_memory(
        &self,
        address: u64,
        length: u64,
        pattern: &[u8],
    ) -> Result<Option<u64>, HostError> {
        let r = self
            .request(Manipulate::search_memory(address, length, pattern.to_vec()))
            .await?;
        Ok(status::is_success(r.return_status()).then(|| r.u64(0x10)))
    }

    /// Resumes the target (Continue2 with `status`, DBG_CONTINUE normally).
    ///
    /// A running kernel acknowledges nothing, so a continue whose acknowledgement was lost
    /// looks like a continue that never arrived. The host tells them apart by asking for the
    /// version: a stopped target answers (the continue is sent again), a running one does not.
    pub async fn resume(&self, continue_status: u32) -> Result<(), HostError> {
        let m = Manipulate::continue2(continue_status, false, 0x400);
        for _ in 0..3 {
            match self.send_only(m.clone()).await {
                Err(HostError::Timeout { .. }) => {}
                other => return other,
            }
            match self
                .request_within(Manipulate::get_version(), self.config.probe_timeout)
                .await
            {
                Ok(_) => continue,
                Err(HostError::Timeout { .. }) => {
                    tracing::debug!("continue unacknowledged and the target silent: it runs");
                    let (done, rx) = oneshot::channel();
                    self.tx
                        .send(Command::AssumeRunning(done))
                        .await
                        .map_err(|_| HostError::Closed)?;
                    rx.await.map_err(|_| HostError::Closed)?;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        Err(HostError::Timeout {
            what: "DbgKdContinueApi2".into(),
            after: Duration::from_secs(5),
        })
    }

    /// Reboots the target.
    pub async fn reboot(&self) -> Result<(), HostError> {
        self.send_only(Manipulate::reboot()).await
    }

    /// The API named by a number, for messages.
    pub fn api_name(n: u32) -> String {
        Api::from_number(n).map_or(format!("api {n:#x}"), |a| a.name().to_string())
    }
}

struct Current {
    m: Manipulate,
    kind: CurrentKind,
    deadline: tokio::time::Instant,
    timeout: Duration,
    expect_reply: bool,
}

enum CurrentKind {
    Request(oneshot::Sender<Result<Manipulate, HostError>>),
    Send(oneshot::Sender<Result<(), HostError>>),
    Auto,
}

struct Driver {
    socket: UdpSocket,
    wire: HostWire,
    kd: HostKd,
    rx: mpsc::Receiver<Command>,
    events: broadcast::Sender<HostEvent>,
    state: watch::Sender<LinkState>,
    shared: Arc<Shared>,
    current: Option<Current>,
    /// Packets the host owes the target (file-I/O refusals, prompt answers), sent before user
    /// requests.
    auto: std::collections::VecDeque<(PacketType, Vec<u8>)>,
    last_mismatch: Option<Instant>,
    last_poke: Option<Instant>,
    poke_target: Option<SocketAddr>,
    commands_open: bool,
}

impl Driver {
    fn stats(&self) -> std::sync::MutexGuard<'_, HostStats> {
        self.shared.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn run(mut self) {
        let mut buf = vec![0u8; 65_536];
        loop {
            self.start_next_if_idle();
            self.flush().await;
            if !self.commands_open && self.current.is_none() && self.auto.is_empty() {
                // Every handle is gone and nothing is in flight.
                return;
            }
            let wake = self.next_wake();
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => self.on_datagram(from, &buf[..n]),
                    Err(e) => tracing::debug!("recv error: {e}"),
                },
                cmd = self.rx.recv(), if self.commands_open && self.ready_for_command() => match cmd {
                    Some(c) => self.on_command(c),
                    None => self.commands_open = false,
                },
                _ = tokio::time::sleep_until(wake) => self.on_timer(),
            }
        }
    }

    fn ready_for_command(&self) -> bool {
        self.current.is_none() && self.auto.is_empty()
    }

    fn next_wake(&self) -> tokio::time::Instant {
        let now = Instant::now();
        let mut wake = now + Duration::from_millis(500);
        if let Some(t) = self.kd.poll_timeout() {
            wake = wake.min(t);
        }
        let mut tw = tokio::time::Instant::from_std(wake);
        if let Some(c) = &self.current {
            tw = tw.min(c.deadline);
        }
        tw
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        self.kd.handle_timeout(now);
        self.drain_kd();
        if let Some(c) = &self.current
            && tokio::time::Instant::now() >= c.deadline
        {
            let c = self.current.take().expect("checked");
            self.kd.abort();
            self.stats().failed += 1;
            let what =
                c.m.api()
                    .map_or("a request".to_string(), |a| a.name().to_string());
            fail(
                c.kind,
                HostError::Timeout {
                    what,
                    after: c.timeout,
                },
            );
        }
        // WinDbg's target=: ask the target for an offer twice a second until connected.
        if let Some(t) = self.poke_target
            && self.wire.peer().is_none()
            && self
                .last_poke
                .is_none_or(|p| now - p >= Duration::from_millis(500))
        {
            self.last_poke = Some(now);
            let p = self.wire.poke(t, 4);
            let _ = self.socket.try_send_to(&p.datagram, p.to);
        }
    }

    fn on_command(&mut self, c: Command) {
        match c {
            Command::BreakIn => self.kd.break_in(),
            Command::Reset => self.kd.announce_reset(),
            Command::AssumeRunning(done) => {
                self.state.send_modify(|s| {
                    s.run = RunState::Running;
                    s.stop = None;
                });
                let _ = self.events.send(HostEvent::Resumed);
                let _ = done.send(());
            }
            Command::Request { m, timeout, reply } => {
                if self.wire.peer().is_none() {
                    let _ = reply.send(Err(HostError::NotConnected(
                        "no target is connected".into(),
                    )));
                    return;
                }
                self.start(m, CurrentKind::Request(reply), timeout, true);
            }
            Command::Send { m, done } => {
                if self.wire.peer().is_none() {
                    let _ = done.send(Err(HostError::NotConnected(
                        "no target is connected".into(),
                    )));
                    return;
                }
                self.start(m, CurrentKind::Send(done), Duration::from_secs(5), false);
            }
        }
    }

    fn start(&mut self, m: Manipulate, kind: CurrentKind, timeout: Duration, expect_reply: bool) {
        let now = Instant::now();
        if self
            .kd
            .send(PacketType::StateManipulate, m.encode(), expect_reply, now)
            .is_err()
        {
            fail(
                kind,
                HostError::Protocol("a packet is already outstanding".into()),
            );
            return;
        }
        self.current = Some(Current {
            m,
            kind,
            deadline: tokio::time::Instant::now() + timeout,
            timeout,
            expect_reply,
        });
    }

    fn start_next_if_idle(&mut self) {
        if self.current.is_some() || self.wire.peer().is_none() {
            return;
        }
        if let Some((kind, data)) = self.auto.pop_front()
            && self.kd.send(kind, data, false, Instant::now()).is_ok()
        {
            self.current = Some(Current {
                m: Manipulate::new(Api::GetVersion, 0),
                kind: CurrentKind::Auto,
                deadline: tokio::time::Instant::now() + Duration::from_secs(5),
                timeout: Duration::from_secs(5),
                expect_reply: false,
            });
        }
    }

    async fn flush(&mut self) {
        while let Some(payload) = self.kd.poll_transmit() {
            let Some(t) = self.wire.seal_data(&payload) else {
                continue;
            };
            self.send(t.to, &t.datagram).await;
        }
    }

    async fn send(&mut self, to: SocketAddr, d: &[u8]) {
        match self.socket.send_to(d, to).await {
            Ok(_) => {
                let mut s = self.stats();
                s.datagrams_sent += 1;
                s.bytes_sent += d.len() as u64;
            }
            Err(e) => tracing::debug!("send to {to} failed: {e}"),
        }
    }

    fn on_datagram(&mut self, from: SocketAddr, d: &[u8]) {
        {
            let mut s = self.stats();
            s.datagrams_received += 1;
            s.bytes_received += d.len() as u64;
        }
        let ev = self.wire.handle(from, d, &mut os_random_32);
        match ev {
            HostWireEvent::Handshake {
                peer,
                reason,
                reply,
                ..
            } => {
                let _ = self.socket.try_send_to(&reply.datagram, reply.to);
                {
                    let mut s = self.stats();
                    s.datagrams_sent += 1;
                    s.bytes_sent += reply.datagram.len() as u64;
                }
                self.kd.new_session();
                if reason == HandshakeReason::Rebooted {
                    self.kd.abort();
                    self.auto.clear();
                    if let Some(c) = self.current.take() {
                        // A reboot we asked for whose ACK was lost has done its job.
                        if c.m.api() == Some(Api::Reboot)
                            && let CurrentKind::Send(done) = c.kind
                        {
                            let _ = done.send(Ok(()));
                        } else {
                            let what =
                                c.m.api()
                                    .map_or("a request".into(), |a| a.name().to_string());
                            fail(c.kind, HostError::TargetRebooted(what));
                        }
                    }
                }
                tracing::info!(%peer, ?reason, "KDNET handshake");
                self.state.send_modify(|s| {
                    s.phase = Phase::Connected;
                    s.target = Some(peer);
                    s.authenticated += 1;
                    s.offers += 1;
                    if reason != HandshakeReason::Rekeyed {
                        s.run = RunState::Unknown;
                        s.stop = None;
                    }
                });
                let _ = self.events.send(HostEvent::Connected {
                    target: peer,
                    reason,
                });
            }
            HostWireEvent::KeepAlive { moved_from } => {
                if let Some(old) = moved_from {
                    tracing::info!(%old, new = %from, "target moved");
                    self.state.send_modify(|s| s.target = Some(from));
                }
                self.state.send_modify(|s| {
                    s.authenticated += 1;
                    s.offers += 1;
                });
            }
            HostWireEvent::Data(payload) => {
                self.state.send_modify(|s| s.authenticated += 1);
                self.kd.handle(&payload, Instant::now());
                self.drain_kd();
            }
            HostWireEvent::NotAuthenticated { channel } => {
                self.stats().dropped += 1;
                self.state.send_modify(|s| {
                    s.unauthenticated += 1;
                    if s.phase == Phase::Waiting && channel == Channel::Control {
                        s.phase = Phase::WrongKey;
                    }
                });
                let now = Instant::now();
                if channel == Channel::Control
                    && self
                        .last_mismatch
                        .is_none_or(|t| now - t >= Duration::from_secs(3))
                {
                    self.last_mismatch = Some(now);
                    tracing::warn!(%from, "KDNET offer does not authenticate: wrong key?");
                    let _ = self.events.send(HostEvent::KeyMismatch { from });
                }
            }
            HostWireEvent::Dropped(Dropped::NoSession) => {
                self.stats().dropped += 1;
                // Data without a session: ask that sender for an offer (at most once a second).
                let now = Instant::now();
                if self
                    .last_poke
                    .is_none_or(|t| now - t >= Duration::from_secs(1))
                {
                    self.last_poke = Some(now);
                    let version = d.get(4).copied().unwrap_or(4);
                    let p = self.wire.poke(from, version);
                    let _ = self.socket.try_send_to(&p.datagram, p.to);
                }
            }
            HostWireEvent::Dropped(_) | HostWireEvent::Malformed(_) => {
                self.stats().dropped += 1;
            }
        }
    }

    fn drain_kd(&mut self) {
        while let Some(ev) = self.kd.poll_event() {
            match ev {
                HostKdEvent::Packet(p) => self.on_packet(p),
                HostKdEvent::Delivered { .. } => {
                    if let Some(c) = self.current.take_if(|c| !c.expect_reply) {
                        self.stats().round_trips += 1;
                        if matches!(
                            c.m.api(),
                            Some(Api::Continue | Api::Continue2 | Api::Reboot)
                        ) && matches!(c.kind, CurrentKind::Send(_))
                        {
                            self.state.send_modify(|s| {
                                s.run = RunState::Running;
                                s.stop = None;
                            });
                            let _ = self.events.send(HostEvent::Resumed);
                        }
                        if let CurrentKind::Send(done) = c.kind {
                            let _ = done.send(Ok(()));
                        }
                    }
                }
                HostKdEvent::GaveUp { .. } => {
                    if let Some(c) = self.current.take() {
                        self.stats().failed += 1;
                        let what =
                            c.m.api()
                                .map_or("a packet".into(), |a| a.name().to_string());
                        fail(
                            c.kind,
                            HostError::Timeout {
                                what,
                                after: c.timeout,
                            },
                        );
                    }
                }
                HostKdEvent::Hello { .. } | HostKdEvent::TargetReset { .. } => {}
                HostKdEvent::Malformed(e) => {
                    tracing::debug!("malformed KD packet: {e}");
                    self.stats().dropped += 1;
                }
            }
        }
        let k = self.kd.stats();
        let mut s = self.stats();
        s.retransmits = k.retransmits;
        s.duplicates = k.duplicates;
    }

    fn on_packet(&mut self, p: Packet) {
        match p.kind {
            PacketType::StateManipulate => {
                let Ok(m) = Manipulate::decode(&p.data) else {
                    return;
                };
                let answers = self
                    .current
                    .as_ref()
                    .is_some_and(|c| c.expect_reply && m.answers(&c.m));
                if !answers {
                    tracing::debug!("stale or unexpected reply {m:?}");
                    return;
                }
                self.kd.reply_received();
                let c = self.current.take().expect("checked");
                self.stats().round_trips += 1;
                if let CurrentKind::Request(reply) = c.kind {
                    let _ = reply.send(Ok(m));
                }
            }
            PacketType::StateChange64 => {
                let Ok(sc) = StateChange64::decode(&p.data) else {
                    return;
                };
                // The same report again while stopped: the target repeated it after a RESET,
                // as Windows does; it did not run in between, and what was read still holds.
                let repeat = {
                    let s = self.state.borrow();
                    s.run == RunState::Stopped && s.stop.as_ref() == Some(&sc)
                };
                if repeat {
                    return;
                }
                self.state.send_modify(|s| {
                    s.run = RunState::Stopped;
                    s.stop = Some(sc.clone());
                    s.stops += 1;
                });
                let _ = self.events.send(HostEvent::StateChange(sc));
            }
            PacketType::DebugIo => match DebugIo::decode(&p.data) {
                Ok(DebugIo::PrintString { processor, text }) => {
                    // Only a running kernel prints.
                    self.state.send_modify(|s| {
                        if s.run == RunState::Unknown {
                            s.run = RunState::Running;
                        }
                    });
                    let _ = self.events.send(HostEvent::DebugPrint { processor, text });
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
                    let _ = self.events.send(HostEvent::FileRequest { name });
                }
                self.auto
                    .push_back((PacketType::FileIo, FileIo::no_such_file_reply(&p.data)));
            }
            _ => {}
        }
    }
}

fn fail(kind: CurrentKind, e: HostError) {
    match kind {
        CurrentKind::Request(tx) => {
            let _ = tx.send(Err(e));
        }
        CurrentKind::Send(tx) => {
            let _ = tx.send(Err(e));
        }
        CurrentKind::Auto => {}
    }
}
