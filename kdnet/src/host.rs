//! The debugger's session over tokio.
//!
//! A driver task owns the UDP socket and a [`HostMachine`] (every decision of the session is
//! there); it moves datagrams, sleeps until the machine's next deadline and hands each
//! completed operation back to its caller. [`Host`] is a cloneable handle that queues
//! operations to it; they are served one at a time, as the protocol requires, so requests from
//! several callers are serialised, never interleaved on the wire. Events (state changes,
//! DbgPrint, reboots, a wrong key, a target gone silent) are broadcast to subscribers; the
//! connection state is observable through a watch channel.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::api::{Api, ApiBody, Context, GetVersion64, Manipulate, StateChange64, status};
use crate::kd::HostKdConfig;
pub use crate::machine::host::{
    Done, HostError, HostEvent, HostMachine, HostMachineConfig, HostStats, LinkState, ModuleBreaks,
    Op, OpId, Output, Phase, RunState, TRANSFER_STEPS,
};
use crate::rng::os_random_32;
use crate::wire::Key;

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
    /// Silence after which a connected target is declared gone.
    pub silence_limit: Duration,
}

impl HostConfig {
    /// Defaults for a host listening on `bind` with `key`.
    pub fn new(bind: SocketAddr, key: Key) -> HostConfig {
        let m = HostMachineConfig::new(key.clone());
        HostConfig {
            bind,
            key,
            target: None,
            kd: m.kd,
            request_timeout: m.request_timeout,
            probe_timeout: m.probe_timeout,
            silence_limit: m.silence_limit,
        }
    }

    fn machine(&self) -> HostMachineConfig {
        HostMachineConfig {
            key: self.key.clone(),
            target: self.target,
            kd: self.kd,
            request_timeout: self.request_timeout,
            probe_timeout: self.probe_timeout,
            silence_limit: self.silence_limit,
        }
    }
}

enum Command {
    Op(Op, oneshot::Sender<Result<Done, HostError>>),
    Preempt(Op, String, oneshot::Sender<Result<Done, HostError>>),
    SetMaxTransfer(u32),
    SetModuleBreaks(ModuleBreaks),
    Release(
        u32,
        Option<String>,
        oneshot::Sender<Result<Done, HostError>>,
    ),
}

/// What the driver publishes after every step.
#[derive(Debug, Clone, Copy, Default)]
struct Snapshot {
    stats: HostStats,
    max_transfer: u32,
}

/// A handle to a host session. Cloning it gives another handle to the same session.
#[derive(Clone)]
pub struct Host {
    tx: mpsc::Sender<Command>,
    events: broadcast::Sender<HostEvent>,
    state: watch::Receiver<LinkState>,
    snapshot: Arc<Mutex<Snapshot>>,
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
        let machine = HostMachine::new(config.machine(), Instant::now(), Box::new(os_random_32));
        let (tx, rx) = mpsc::channel(64);
        let (events, _) = broadcast::channel(4096);
        let (state_tx, state) = watch::channel(machine.state().clone());
        let snapshot = Arc::new(Mutex::new(Snapshot {
            stats: machine.stats(),
            max_transfer: machine.max_transfer(),
        }));
        let driver = Driver {
            socket,
            machine,
            rx,
            events: events.clone(),
            state: state_tx,
            snapshot: snapshot.clone(),
            waiting: HashMap::new(),
        };
        // The driver logs under the caller's span (a watcher's target, say).
        tokio::spawn(tracing::Instrument::in_current_span(driver.run()));
        Ok(Host {
            tx,
            events,
            state,
            snapshot,
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

    fn snapshot(&self) -> Snapshot {
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counters so far.
    pub fn stats(&self) -> HostStats {
        self.snapshot().stats
    }

    /// The memory transfer size currently used for this target.
    pub fn max_transfer(&self) -> u32 {
        self.snapshot().max_transfer
    }

    /// Fixes the memory transfer size (for comparisons; normally it adapts by itself). Sizes
    /// above the protocol's 3,944 bytes are cut to it.
    pub async fn set_max_transfer(&self, size: u32) {
        let _ = self.tx.send(Command::SetMaxTransfer(size)).await;
    }

    async fn op(&self, op: Op) -> Result<Done, HostError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Op(op, reply))
            .await
            .map_err(|_| HostError::Closed)?;
        rx.await.map_err(|_| HostError::Closed)?
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
        let started = Instant::now();
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
                after: started.elapsed(),
            }),
        }
    }

    /// Breaks in: sends the break-in byte (again every 250 ms, as it is not acknowledged) until
    /// the target reports a state change. Returns at once if it is already stopped.
    pub async fn break_in(&self, timeout: Duration) -> Result<StateChange64, HostError> {
        match self.op(Op::BreakIn { timeout }).await? {
            Done::Stopped(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// Asks a newly connected target whether it is stopped (another debugger may have left it
    /// so) with a RESET, which a stopped target answers with its state change. Does not break
    /// in: a running target ignores it.
    pub async fn probe_stopped(&self, wait: Duration) -> Option<StateChange64> {
        match self.op(Op::ProbeStopped { wait }).await {
            Ok(Done::Probed(s)) => s,
            _ => None,
        }
    }

    /// Sends a manipulate request and returns the target's reply (any status).
    pub async fn request(&self, m: Manipulate) -> Result<Manipulate, HostError> {
        if self.state.borrow().run == RunState::Running {
            return Err(HostError::TargetRunning);
        }
        match self.op(Op::Request { m, timeout: None }).await? {
            Done::Reply(r) => Ok(r),
            other => Err(unexpected(other)),
        }
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
        if self.state.borrow().run == RunState::Running {
            return Err(HostError::TargetRunning);
        }
        match self
            .op(Op::ReadMemory {
                physical,
                address,
                len,
            })
            .await?
        {
            Done::Memory(b) => Ok(b),
            other => Err(unexpected(other)),
        }
    }

    /// Writes virtual memory.
    pub async fn write_virtual(&self, address: u64, data: &[u8]) -> Result<(), HostError> {
        self.write_memory(false, address, data).await
    }

    /// Writes physical memory.
    pub async fn write_physical(&self, address: u64, data: &[u8]) -> Result<(), HostError> {
        self.write_memory(true, address, data).await
    }

    async fn write_memory(
        &self,
        physical: bool,
        address: u64,
        data: &[u8],
    ) -> Result<(), HostError> {
        self.op(Op::WriteMemory {
            physical,
            address,
            data: data.to_vec(),
        })
        .await
        .map(|_| ())
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
        self.op(Op::resume(continue_status)).await.map(|_| ())
    }

    /// Resumes the target with a trace flag (single step) and Dr7 (hardware breakpoints).
    pub async fn resume_with(
        &self,
        continue_status: u32,
        trace: bool,
        dr7: u64,
    ) -> Result<(), HostError> {
        self.op(Op::Resume {
            status: continue_status,
            trace,
            dr7,
        })
        .await
        .map(|_| ())
    }

    /// Which module loads and unloads stop the target; the others are continued at once.
    pub async fn set_module_breaks(&self, breaks: ModuleBreaks) {
        let _ = self.tx.send(Command::SetModuleBreaks(breaks)).await;
    }

    /// Resumes the target now, whatever is being asked of it: what is outstanding and queued
    /// fails with [`HostError::Preempted`] (`why`). For a stop budget or a signal.
    pub async fn resume_now(&self, continue_status: u32, why: &str) -> Result<(), HostError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Preempt(
                Op::resume(continue_status),
                why.to_string(),
                reply,
            ))
            .await
            .map_err(|_| HostError::Closed)?;
        rx.await.map_err(|_| HostError::Closed)?.map(|_| ())
    }

    /// Lets the target go on after taking out every breakpoint the session wrote into it (see
    /// [`LinkState::breakpoints`]), at once with `why` (pre-empting what is under way, as
    /// [`Host::resume_now`]) or after what is queued. The target continues even when a
    /// breakpoint could not be taken out; [`Host::state`] then still lists it.
    pub async fn release(&self, continue_status: u32, why: Option<&str>) -> Result<(), HostError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Release(
                continue_status,
                why.map(str::to_string),
                reply,
            ))
            .await
            .map_err(|_| HostError::Closed)?;
        rx.await.map_err(|_| HostError::Closed)?.map(|_| ())
    }

    /// Reboots the target.
    pub async fn reboot(&self) -> Result<(), HostError> {
        self.op(Op::Reboot).await.map(|_| ())
    }

    /// The API named by a number, for messages.
    pub fn api_name(n: u32) -> String {
        Api::from_number(n).map_or(format!("api {n:#x}"), |a| a.name().to_string())
    }

    /// The settings.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }
}

fn unexpected(d: Done) -> HostError {
    HostError::Protocol(format!("unexpected completion {d:?}"))
}

struct Driver {
    socket: UdpSocket,
    machine: HostMachine,
    rx: mpsc::Receiver<Command>,
    events: broadcast::Sender<HostEvent>,
    state: watch::Sender<LinkState>,
    snapshot: Arc<Mutex<Snapshot>>,
    waiting: HashMap<OpId, oneshot::Sender<Result<Done, HostError>>>,
}

impl Driver {
    async fn run(mut self) {
        let mut buf = vec![0u8; 65_536];
        loop {
            self.publish().await;
            let wake = self
                .machine
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => self.machine.handle_datagram(from, &buf[..n], Instant::now()),
                    Err(e) => tracing::debug!("receive failed: {e}"),
                },
                cmd = self.rx.recv() => match cmd {
                    Some(Command::Op(op, reply)) => {
                        let id = self.machine.submit(op, Instant::now());
                        self.waiting.insert(id, reply);
                    }
                    Some(Command::Preempt(op, why, reply)) => {
                        let id = self.machine.preempt(op, &why, Instant::now());
                        self.waiting.insert(id, reply);
                    }
                    Some(Command::SetMaxTransfer(n)) => self.machine.set_max_transfer(n),
                    Some(Command::SetModuleBreaks(b)) => self.machine.set_module_breaks(b),
                    Some(Command::Release(status, why, reply)) => {
                        let now = Instant::now();
                        if !self.machine.state().breakpoints.is_empty() {
                            match why {
                                Some(w) => self.machine.preempt(Op::TakeOut, &w, now),
                                None => self.machine.submit(Op::TakeOut, now),
                            };
                            let id = self.machine.submit(Op::resume(status), now);
                            self.waiting.insert(id, reply);
                        } else {
                            let id = match why {
                                Some(w) => self.machine.preempt(Op::resume(status), &w, now),
                                None => self.machine.submit(Op::resume(status), now),
                            };
                            self.waiting.insert(id, reply);
                        }
                    }
                    // Every handle is gone: nobody can ask anything any more.
                    None => return,
                },
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                    self.machine.handle_timeout(Instant::now());
                }
            }
        }
    }

    /// Sends what the machine wants sent and hands out what it reports.
    async fn publish(&mut self) {
        while let Some(t) = self.machine.poll_transmit() {
            if let Err(e) = self.socket.send_to(&t.datagram, t.to).await {
                tracing::debug!("send to {} failed: {e}", t.to);
            }
        }
        // State and counters first: a caller woken by its completion sees them as they are.
        let now = self.machine.state();
        self.state.send_if_modified(|s| {
            if s != now {
                *s = now.clone();
                true
            } else {
                false
            }
        });
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = Snapshot {
            stats: self.machine.stats(),
            max_transfer: self.machine.max_transfer(),
        };
        while let Some(out) = self.machine.poll_output() {
            match out {
                Output::Event(e) => {
                    let _ = self.events.send(e);
                }
                Output::Completed { id, result } => {
                    if let Some(tx) = self.waiting.remove(&id) {
                        let _ = tx.send(result);
                    }
                }
            }
        }
    }
}
