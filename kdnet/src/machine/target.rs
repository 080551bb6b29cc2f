//! The debuggee's end of KDNET as a sans-IO state machine, as a Windows machine booted with
//! `bcdedit /dbgsettings net hostip:H port:P key:K` behaves: offers to H:P every 3 s, the
//! handshake, the hello, then the KD protocol with the manipulate APIs answered from a
//! [`TargetHandler`] (memory, registers, control space). While running it polls for the
//! break-in byte and can print (DbgPrint) or stop by itself (a bugcheck).
//!
//! [`TargetMachine`] takes datagrams and the time and gives datagrams to send; the tokio driver
//! in [`crate::target`] moves them, and tests drive it with a virtual clock.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::api::context::CONTEXT_LEN;
use crate::api::{
    Api, ApiBody, Context, DebugIo, GetVersion64, MAX_TRANSFER, Manipulate, StateChange64, status,
};
use crate::kd::{PacketType, TargetKd, TargetKdConfig, TargetKdEvent};
use crate::wire::{Key, TargetWire, TargetWireConfig, TargetWireEvent, Transmit};

/// Why the target stopped, for [`TargetHandler::stop_report`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The debugger sent the break-in byte.
    BreakIn,
    /// The debugger asked for a bugcheck (DbgKdCauseBugCheckApi).
    BugCheck(u32),
    /// The debugger switched to another processor.
    SwitchProcessor(u16),
}

/// What a running target does by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Activity {
    /// DbgPrint a line.
    Print(String),
    /// Stop and report (a bugcheck, an assertion).
    Stop(StateChange64),
}

/// How the debugger let the target go on (Continue or Continue2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// The continue status: DBG_CONTINUE, DBG_EXCEPTION_HANDLED, or a failure
    /// (DBG_EXCEPTION_NOT_HANDLED) that passes the exception on. The target runs either way.
    pub status: u32,
    /// Single step: EFLAGS.TF set, a single-step exception after one instruction.
    pub trace: bool,
    /// Dr7 for every processor (hardware breakpoints); None when the request had none
    /// (Continue, not Continue2).
    pub dr7: Option<u64>,
}

/// Answers the debugger's requests for a target. Memory reads return how many bytes were read
/// from the start of the range (the rest is unreadable).
pub trait TargetHandler: Send + 'static {
    /// The version block.
    fn version(&mut self) -> GetVersion64;
    /// Reads virtual memory.
    fn read_virtual(&mut self, processor: u16, address: u64, buf: &mut [u8]) -> usize;
    /// Writes virtual memory; returns bytes written.
    fn write_virtual(&mut self, _processor: u16, _address: u64, _data: &[u8]) -> usize {
        0
    }
    /// Reads physical memory.
    fn read_physical(&mut self, address: u64, buf: &mut [u8]) -> usize;
    /// Writes physical memory.
    fn write_physical(&mut self, _address: u64, _data: &[u8]) -> usize {
        0
    }
    /// Reads a processor's control space (0 KPCR pointer, 1 KPRCB pointer, 2 special registers,
    /// 3 current thread pointer); `None` for an invalid processor or index.
    fn read_control_space(&mut self, processor: u16, index: u64, buf: &mut [u8]) -> Option<usize>;
    /// Writes control space (index 2); whether it worked.
    fn write_control_space(&mut self, _processor: u16, _index: u64, _data: &[u8]) -> bool {
        true
    }
    /// A processor's CONTEXT.
    fn context(&mut self, processor: u16) -> Option<Context>;
    /// Sets a processor's CONTEXT.
    fn set_context(&mut self, _processor: u16, _context: &Context) -> bool {
        true
    }
    /// Reads an MSR.
    fn read_msr(&mut self, _processor: u16, _msr: u32) -> Option<u64> {
        None
    }
    /// The first match of `pattern` in `[address, address+length)`, if any. The default reads
    /// through [`TargetHandler::read_virtual`], a page at a time.
    fn search(&mut self, address: u64, length: u64, pattern: &[u8]) -> Option<u64> {
        if pattern.is_empty() {
            return None;
        }
        let mut at = address;
        let end = address.saturating_add(length);
        let mut carry: Vec<u8> = Vec::new();
        let mut carry_at = at;
        let mut page = vec![0u8; 0x1000];
        while at < end {
            let n = ((end - at) as usize).min(0x1000 - (at & 0xfff) as usize);
            let got = self.read_virtual(0, at, &mut page[..n]);
            if got == 0 {
                carry.clear();
                at += n as u64;
                carry_at = at;
                continue;
            }
            carry.extend_from_slice(&page[..got]);
            if let Some(i) = carry.windows(pattern.len()).position(|w| w == pattern) {
                return Some(carry_at + i as u64);
            }
            let keep = pattern.len() - 1;
            if carry.len() > keep {
                let drop = carry.len() - keep;
                carry.drain(..drop);
                carry_at += drop as u64;
            }
            at += n as u64;
        }
        None
    }
    /// The state change to report when stopping for `reason`.
    fn stop_report(&mut self, reason: StopReason) -> StateChange64;
    /// The debugger resumed the target.
    fn resumed(&mut self) {}
    /// The debugger resumed the target this way (the default forgets how).
    fn resumed_with(&mut self, how: Resume) {
        let _ = how;
        self.resumed();
    }
    /// The target rebooted (by request or by the harness); the handler starts over.
    fn rebooted(&mut self) {}
    /// Called regularly while running: something the target does by itself.
    fn poll(&mut self, _now: Instant) -> Option<Activity> {
        None
    }
    /// Number of processors.
    fn processors(&self) -> u16 {
        1
    }
}

/// The kernel's breakpoint table (32 entries, KdpAddBreakpoint / KdpDeleteBreakpoint): an
/// `int 3` written over the byte it keeps, removed on request or when a state change reports
/// the instructions it lies in (KdpSetCommonState). Shared by the KDNET target end and
/// in-process targets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Breakpoints {
    /// handle → (address, the byte the `int 3` replaced).
    table: BTreeMap<u32, (u64, u8)>,
}

impl Breakpoints {
    /// Writes a breakpoint at `address`: its handle, or None (table full, address already in
    /// it, or memory that cannot be read or written).
    pub fn write(
        &mut self,
        handler: &mut dyn TargetHandler,
        processor: u16,
        address: u64,
    ) -> Option<u32> {
        let handle = (1..=32u32).find(|h| !self.table.contains_key(h))?;
        if self.table.values().any(|(a, _)| *a == address) {
            return None;
        }
        let mut original = [0u8; 1];
        if handler.read_virtual(processor, address, &mut original) != 1
            || handler.write_virtual(processor, address, &[0xCC]) != 1
        {
            return None;
        }
        self.table.insert(handle, (address, original[0]));
        Some(handle)
    }

    /// Removes a breakpoint and puts its byte back; whether there was one.
    pub fn restore(&mut self, handler: &mut dyn TargetHandler, handle: u32) -> bool {
        let Some((address, original)) = self.table.remove(&handle) else {
            return false;
        };
        handler.write_virtual(0, address, &[original]) == 1
    }

    /// What a state change does to the table: breakpoints in its instruction stream are
    /// removed and the stream read again without them.
    pub fn report(&mut self, handler: &mut dyn TargetHandler, sc: &mut StateChange64) {
        let pc = sc.program_counter;
        let count = u64::from(sc.control.instruction_count.clamp(1, 16));
        let inside: Vec<u32> = self
            .table
            .iter()
            .filter(|(_, (a, _))| *a >= pc && *a - pc < count)
            .map(|(h, _)| *h)
            .collect();
        if inside.is_empty() {
            return;
        }
        for h in inside {
            self.restore(handler, h);
        }
        let mut stream = [0u8; 16];
        let n = handler.read_virtual(sc.processor, pc, &mut stream[..count as usize]);
        sc.control.instruction_stream = stream;
        sc.control.instruction_count = n as u16;
    }

    /// The breakpoints written and not removed: (address, original byte).
    pub fn list(&self) -> Vec<(u64, u8)> {
        self.table.values().copied().collect()
    }

    /// Forgets them all (a reboot: memory is new).
    pub fn clear(&mut self) {
        self.table.clear();
    }
}

/// Settings of a target end.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// Local address to send from and listen on.
    pub bind: SocketAddr,
    /// The debugger's address (bcdedit `hostip:` and `port:`).
    pub host: SocketAddr,
    /// The key.
    pub key: Key,
    /// KDNET version byte.
    pub version: u8,
    /// KD timing.
    pub kd: TargetKdConfig,
    /// Interval between offers.
    pub offer_interval: Duration,
    /// How often a running target polls its handler.
    pub poll_interval: Duration,
    /// Datagrams larger than this are dropped instead of sent (a NIC stack that cannot send
    /// more than one frame).
    pub max_datagram: Option<usize>,
    /// Start stopped (as if at an initial breakpoint) rather than running.
    pub start_stopped: bool,
}

impl TargetConfig {
    /// Defaults: version 4, offers every 3 s.
    pub fn new(bind: SocketAddr, host: SocketAddr, key: Key) -> TargetConfig {
        TargetConfig {
            bind,
            host,
            key,
            version: 4,
            kd: TargetKdConfig::default(),
            offer_interval: TargetWire::OFFER_INTERVAL,
            poll_interval: Duration::from_millis(20),
            max_datagram: None,
            start_stopped: false,
        }
    }
}

/// Counters the target keeps (tests and benchmarks read them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetStats {
    /// Manipulate requests served, by ApiNumber.
    pub requests: BTreeMap<u32, u64>,
    /// Datagrams sent.
    pub datagrams_sent: u64,
    /// Datagrams received.
    pub datagrams_received: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Memory bytes served by reads.
    pub memory_bytes: u64,
    /// Offers sent.
    pub offers: u64,
    /// Handshakes accepted.
    pub handshakes: u64,
    /// Break-ins honoured.
    pub break_ins: u64,
    /// Datagrams that did not authenticate.
    pub unauthenticated: u64,
    /// Replayed or duplicate datagrams dropped.
    pub replays: u64,
    /// Datagrams that were not KDNET or were malformed (garbage, truncated KD packets).
    pub malformed: u64,
    /// Replies dropped for exceeding the datagram limit.
    pub oversize_dropped: u64,
    /// Requests answered with a failure status.
    pub failed_requests: u64,
    /// KD retransmissions.
    pub retransmits: u64,
    /// Reboots.
    pub reboots: u64,
    /// Stops that ended (the target ran again after a continue or a reboot).
    pub stops_ended: u64,
    /// How long the last stop that ended lasted, on the target's clock.
    pub last_stop: Duration,
    /// The longest stop that ended.
    pub longest_stop: Duration,
}

impl TargetStats {
    /// Total manipulate requests served.
    pub fn round_trips(&self) -> u64 {
        self.requests.values().sum()
    }

    /// A readable summary, one line per figure.
    pub fn report(&self) -> String {
        let mut s = format!(
            "requests {} (round trips), datagrams sent {} received {}, bytes sent {} received {}, memory bytes served {}\n",
            self.round_trips(),
            self.datagrams_sent,
            self.datagrams_received,
            self.bytes_sent,
            self.bytes_received,
            self.memory_bytes
        );
        for (api, n) in &self.requests {
            let name = Api::from_number(*api).map_or("unknown", Api::name);
            s.push_str(&format!("  {name:<40} {n}\n"));
        }
        s.push_str(&format!(
            "offers {}, handshakes {}, break-ins {}, reboots {}, retransmits {}\n\
             dropped: unauthenticated {}, replayed {}, malformed {}, oversize {}; failed requests {}\n",
            self.offers,
            self.handshakes,
            self.break_ins,
            self.reboots,
            self.retransmits,
            self.unauthenticated,
            self.replays,
            self.malformed,
            self.oversize_dropped,
            self.failed_requests
        ));
        s
    }
}

/// The debuggee's end, sans-IO.
pub struct TargetMachine {
    config: TargetConfig,
    wire: TargetWire,
    kd: TargetKd,
    handler: Box<dyn TargetHandler>,
    nonce: Box<dyn FnMut() -> [u8; 32] + Send>,
    stats: TargetStats,
    running: bool,
    /// When the current stop began.
    stopped_at: Option<Instant>,
    next_offer: Instant,
    next_poll: Instant,
    /// Breakpoints written by the debugger.
    breakpoints: Breakpoints,
    /// A reboot asked for by the debugger, done once its ACK is on the wire.
    reboot_pending: bool,
    /// The last state change reported, sent again when a debugger RESETs a stopped target.
    last_stop: Option<Vec<u8>>,
    transmit: VecDeque<Transmit>,
}

impl std::fmt::Debug for TargetMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetMachine")
            .field("running", &self.running)
            .field("debugger", &self.wire.debugger())
            .finish()
    }
}

impl TargetMachine {
    /// A target that booted at `now`, sending from `local`. `nonce` gives 32 random bytes for
    /// each boot's nonce.
    pub fn new(
        config: TargetConfig,
        local: SocketAddr,
        handler: Box<dyn TargetHandler>,
        now: Instant,
        mut nonce: Box<dyn FnMut() -> [u8; 32] + Send>,
    ) -> TargetMachine {
        let wire = TargetWire::new(
            TargetWireConfig {
                key: config.key.clone(),
                version: config.version,
                local,
                host: config.host,
            },
            now,
            nonce(),
        );
        let mut kd = TargetKd::new(config.kd);
        kd.set_accept_data(config.start_stopped);
        let mut m = TargetMachine {
            running: !config.start_stopped,
            stopped_at: config.start_stopped.then_some(now),
            config,
            wire,
            kd,
            handler,
            nonce,
            stats: TargetStats::default(),
            next_offer: now,
            next_poll: now,
            breakpoints: Breakpoints::default(),
            reboot_pending: false,
            last_stop: None,
            transmit: VecDeque::new(),
        };
        if m.config.start_stopped {
            let sc = m.handler.stop_report(StopReason::BreakIn);
            m.report(sc, now);
        }
        m
    }

    /// The counters so far.
    pub fn stats(&self) -> &TargetStats {
        &self.stats
    }

    /// Whether the target runs (not stopped in the debugger).
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// The debugger whose response it accepted.
    pub fn debugger(&self) -> Option<SocketAddr> {
        self.wire.debugger()
    }

    fn set_running(&mut self, running: bool, now: Instant) {
        self.kd.set_accept_data(!running);
        self.running = running;
        if !running {
            self.stopped_at.get_or_insert(now);
        } else if let Some(at) = self.stopped_at.take() {
            // A kernel let go runs at once: what it does by itself starts now.
            self.next_poll = now;
            let d = now.saturating_duration_since(at);
            self.stats.stops_ended += 1;
            self.stats.last_stop = d;
            self.stats.longest_stop = self.stats.longest_stop.max(d);
        }
    }

    /// When [`TargetMachine::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Instant {
        let mut wake = self.next_offer;
        if let Some(t) = self.kd.poll_timeout() {
            wake = wake.min(t);
        }
        if self.running {
            wake = wake.min(self.next_poll);
        }
        wake
    }

    /// Acts on timers: offers, KD retransmission, the handler's own activity while running.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_offer {
            self.next_offer = now + self.config.offer_interval;
            let host = self.config.host;
            let t = self.wire.offer(now, host);
            self.stats.offers += 1;
            self.queue(t);
        }
        if self.running && now >= self.next_poll {
            self.next_poll = now + self.config.poll_interval;
            if let Some(a) = self.handler.poll(now) {
                self.act(a, now);
            }
        }
        self.kd.handle_timeout(now);
        self.drain_kd(now);
        self.flush(now);
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmit.pop_front()
    }

    fn queue(&mut self, t: Transmit) {
        if let Some(max) = self.config.max_datagram
            && t.datagram.len() > max
        {
            self.stats.oversize_dropped += 1;
            return;
        }
        self.stats.datagrams_sent += 1;
        self.stats.bytes_sent += t.datagram.len() as u64;
        self.transmit.push_back(t);
    }

    fn flush(&mut self, now: Instant) {
        while let Some(p) = self.kd.poll_transmit() {
            if let Some(t) = self.wire.seal_data(&p) {
                self.queue(t);
            }
        }
        self.stats.retransmits = self.kd.stats().retransmits;
        if self.reboot_pending {
            self.reboot_pending = false;
            self.reboot(now);
        }
    }

    /// Makes the running target print or stop.
    pub fn act(&mut self, a: Activity, now: Instant) {
        match a {
            Activity::Print(text) => {
                // Prints go to a connected debugger only; without one they are lost.
                if self.running && self.wire.debugger().is_some() {
                    self.kd.send(
                        PacketType::DebugIo,
                        DebugIo::print(0, text.as_bytes()),
                        false,
                        now,
                    );
                }
            }
            Activity::Stop(sc) => {
                if self.running {
                    self.set_running(false, now);
                    self.report(sc, now);
                }
            }
        }
        self.flush(now);
    }

    /// Reboots: new boot nonce, new session needed, running; offers at once.
    pub fn reboot(&mut self, now: Instant) {
        let nonce = (self.nonce)();
        self.wire.reboot(now, nonce);
        self.kd.reboot();
        self.handler.rebooted();
        self.breakpoints.clear();
        self.set_running(true, now);
        self.stats.reboots += 1;
        self.next_offer = now;
    }

    /// Forgets the debugger (as a target whose debugger transport restarted).
    pub fn disconnect(&mut self) {
        self.wire.disconnect();
    }

    /// Handles one received datagram.
    pub fn handle_datagram(&mut self, from: SocketAddr, d: &[u8], now: Instant) {
        self.stats.datagrams_received += 1;
        self.stats.bytes_received += d.len() as u64;
        match self.wire.handle(from, d) {
            TargetWireEvent::Connected { hello, .. } => {
                self.stats.handshakes += 1;
                self.kd.new_session();
                self.queue(hello);
            }
            TargetWireEvent::Poked { from } => {
                let t = self.wire.offer(now, from);
                self.stats.offers += 1;
                self.queue(t);
            }
            TargetWireEvent::Data(p) => {
                self.kd.handle(&p, now);
                self.drain_kd(now);
            }
            TargetWireEvent::NotAuthenticated { .. } => self.stats.unauthenticated += 1,
            TargetWireEvent::Dropped(crate::wire::Dropped::Replay) => self.stats.replays += 1,
            TargetWireEvent::Dropped(_) | TargetWireEvent::Malformed(_) => {
                self.stats.malformed += 1
            }
        }
        self.flush(now);
    }

    fn drain_kd(&mut self, now: Instant) {
        while let Some(ev) = self.kd.poll_event() {
            match ev {
                TargetKdEvent::BreakIn if self.running => {
                    self.stats.break_ins += 1;
                    self.set_running(false, now);
                    let sc = self.handler.stop_report(StopReason::BreakIn);
                    self.report(sc, now);
                }
                TargetKdEvent::HostReset { .. } if !self.running && self.kd.idle() => {
                    // Stopped in the debugger loop with nothing in flight: a (new) debugger
                    // is told again why the machine stopped, as Windows does.
                    if let Some(sc) = self.last_stop.clone() {
                        self.kd.send(PacketType::StateChange64, sc, true, now);
                    }
                }
                TargetKdEvent::Packet(p) if p.kind == PacketType::StateManipulate => {
                    if self.running {
                        // A running kernel is not in its debugger loop; the request goes
                        // unanswered.
                        continue;
                    }
                    match Manipulate::decode(&p.data) {
                        Ok(m) => self.serve(m, now),
                        Err(_) => self.stats.malformed += 1,
                    }
                }
                TargetKdEvent::Malformed(_) => self.stats.malformed += 1,
                _ => {}
            }
        }
    }

    fn reply(&mut self, r: Manipulate, now: Instant) {
        if !status::is_success(r.return_status()) {
            self.stats.failed_requests += 1;
        }
        self.kd
            .send(PacketType::StateManipulate, r.encode(), false, now);
    }

    fn resume(&mut self, how: Resume, now: Instant) {
        self.kd.clear();
        self.handler.resumed_with(how);
        self.set_running(true, now);
    }

    fn stop(&mut self, reason: StopReason, now: Instant) {
        let sc = self.handler.stop_report(reason);
        self.report(sc, now);
    }

    /// Sends a state change the way the kernel's KdpSetCommonState makes it: breakpoints in
    /// the reported instruction stream are removed from the table (their bytes restored) and
    /// the stream is read again without them.
    fn report(&mut self, mut sc: StateChange64, now: Instant) {
        self.breakpoints.report(self.handler.as_mut(), &mut sc);
        self.last_stop = Some(sc.encode());
        self.kd
            .send(PacketType::StateChange64, sc.encode(), true, now);
    }

    /// The breakpoints written and not removed: (address, original byte), for inspection.
    pub fn breakpoints(&self) -> Vec<(u64, u8)> {
        self.breakpoints.list()
    }

    /// Serves one manipulate request the way the Windows kernel does: the reply copies the
    /// request header and fills in the status and result fields.
    fn serve(&mut self, m: Manipulate, now: Instant) {
        *self.stats.requests.entry(m.api_number()).or_default() += 1;
        let mut r = m.reply();
        let cpu = m.processor();
        let ncpu = self.handler.processors();
        let Some(api) = m.api() else {
            r.set_return_status(status::UNSUCCESSFUL);
            return self.reply(r, now);
        };
        match api {
            Api::GetVersion => {
                let v = self.handler.version();
                r.set_version(&v);
                r.set_return_status(status::SUCCESS);
            }
            Api::ReadVirtualMemory | Api::ReadPhysicalMemory | Api::ReadControlSpace => {
                let ApiBody::Memory {
                    address,
                    transfer_count,
                    ..
                } = m.body()
                else {
                    return;
                };
                let count = transfer_count.min(MAX_TRANSFER) as usize;
                let mut buf = vec![0u8; count];
                let n = match api {
                    Api::ReadVirtualMemory => self.handler.read_virtual(cpu, address, &mut buf),
                    Api::ReadPhysicalMemory => self.handler.read_physical(address, &mut buf),
                    _ if cpu >= ncpu => 0,
                    _ => self
                        .handler
                        .read_control_space(cpu, address, &mut buf)
                        .unwrap_or(0),
                }
                .min(count);
                buf.truncate(n);
                r.set_u32(0x1C, n as u32);
                r.set_return_status(if n == count && n > 0 || count == 0 {
                    status::SUCCESS
                } else {
                    status::UNSUCCESSFUL
                });
                self.stats.memory_bytes += n as u64;
                r.data = buf;
            }
            Api::WriteVirtualMemory | Api::WritePhysicalMemory | Api::WriteControlSpace => {
                let ApiBody::Memory {
                    address,
                    transfer_count,
                    ..
                } = m.body()
                else {
                    return;
                };
                let count = (transfer_count as usize).min(m.data.len());
                let data = &m.data[..count];
                let n = match api {
                    Api::WriteVirtualMemory => self.handler.write_virtual(cpu, address, data),
                    Api::WritePhysicalMemory => self.handler.write_physical(address, data),
                    _ if cpu < ncpu && self.handler.write_control_space(cpu, address, data) => {
                        count
                    }
                    _ => 0,
                };
                r.set_u32(0x1C, n as u32);
                r.set_return_status(if n == count {
                    status::SUCCESS
                } else {
                    status::UNSUCCESSFUL
                });
            }
            Api::GetContext => match (cpu < ncpu).then(|| self.handler.context(cpu)).flatten() {
                Some(c) => {
                    r.data = c.as_bytes().to_vec();
                    r.set_return_status(status::SUCCESS);
                }
                None => r.set_return_status(status::UNSUCCESSFUL),
            },
            Api::GetContextEx => {
                let (offset, count) = (m.u32(0x10) as usize, m.u32(0x14) as usize);
                let ctx = (cpu < ncpu).then(|| self.handler.context(cpu)).flatten();
                match ctx {
                    Some(c) if offset.checked_add(count).is_some_and(|e| e <= CONTEXT_LEN) => {
                        r.data = c.as_bytes()[offset..offset + count].to_vec();
                        r.set_u32(0x18, count as u32);
                        r.set_return_status(status::SUCCESS);
                    }
                    _ => r.set_return_status(status::UNSUCCESSFUL),
                }
            }
            Api::SetContext => {
                let ok = cpu < ncpu
                    && Context::from_bytes(&m.data)
                        .is_ok_and(|c| self.handler.set_context(cpu, &c));
                r.set_return_status(if ok {
                    status::SUCCESS
                } else {
                    status::UNSUCCESSFUL
                });
            }
            Api::SetContextEx => {
                let (offset, count) = (m.u32(0x10) as usize, m.u32(0x14) as usize);
                let ctx = (cpu < ncpu).then(|| self.handler.context(cpu)).flatten();
                let ok = match ctx {
                    Some(c)
                        if offset.checked_add(count).is_some_and(|e| e <= CONTEXT_LEN)
                            && m.data.len() >= count =>
                    {
                        let mut bytes = c.as_bytes().to_vec();
                        bytes[offset..offset + count].copy_from_slice(&m.data[..count]);
                        Context::from_bytes(&bytes).is_ok_and(|c| self.handler.set_context(cpu, &c))
                    }
                    _ => false,
                };
                r.set_u32(0x18, if ok { count as u32 } else { 0 });
                r.set_return_status(if ok {
                    status::SUCCESS
                } else {
                    status::UNSUCCESSFUL
                });
            }
            Api::WriteBreakPoint => {
                // KdpAddBreakpoint: a free slot of 32, an address not already in the table,
                // readable and writable; the byte it replaces is kept, `int 3` written.
                match self
                    .breakpoints
                    .write(self.handler.as_mut(), cpu, m.u64(0x10))
                {
                    Some(h) => {
                        r.set_u32(0x18, h);
                        r.set_return_status(status::SUCCESS);
                    }
                    None => r.set_return_status(status::UNSUCCESSFUL),
                }
            }
            Api::RestoreBreakPoint => {
                let ok = self.breakpoints.restore(self.handler.as_mut(), m.u32(0x10));
                r.set_return_status(if ok {
                    status::SUCCESS
                } else {
                    status::UNSUCCESSFUL
                });
            }
            Api::Continue | Api::Continue2 => {
                // The kernel leaves its debugger loop whatever the status: a failure only
                // tells it the exception was not handled and is to be dispatched on.
                let how = Resume {
                    status: m.u32(0x10),
                    trace: api == Api::Continue2 && m.u32(0x14) != 0,
                    dr7: (api == Api::Continue2).then(|| m.u64(0x18)),
                };
                self.resume(how, now);
                return;
            }
            Api::Reboot => {
                self.reboot_pending = true;
                return;
            }
            Api::CauseBugCheck => {
                self.stop(StopReason::BugCheck(m.u32(0x10)), now);
                return;
            }
            Api::SwitchProcessor => {
                if cpu < ncpu {
                    self.stop(StopReason::SwitchProcessor(cpu), now);
                }
                return;
            }
            Api::ClearAllInternalBreakpoints
            | Api::SetSpecialCall
            | Api::ClearSpecialCalls
            | Api::SetInternalBreakPoint => return,
            Api::ReadMachineSpecificRegister => {
                match (cpu < ncpu)
                    .then(|| self.handler.read_msr(cpu, m.u32(0x10)))
                    .flatten()
                {
                    Some(v) => {
                        r.set_u32(0x14, v as u32);
                        r.set_u32(0x18, (v >> 32) as u32);
                        r.set_return_status(status::SUCCESS);
                    }
                    None => r.set_return_status(status::NO_SUCH_DEVICE),
                }
            }
            Api::SearchMemory => {
                let (addr, len, plen) = (m.u64(0x10), m.u64(0x18), m.u32(0x20) as usize);
                let pattern = &m.data[..plen.min(m.data.len())];
                match self.handler.search(addr, len, pattern) {
                    Some(found) => {
                        r.set_u64(0x10, found);
                        r.set_return_status(status::SUCCESS);
                    }
                    None => r.set_return_status(status::UNSUCCESSFUL),
                }
            }
            Api::QueryMemory => {
                if m.u32(0x20) != 0 {
                    r.set_return_status(status::INVALID_PARAMETER);
                } else {
                    let a = m.u64(0x10);
                    r.set_u32(0x20, if a >= 0xffff_8000_0000_0000 { 2 } else { 0 });
                    r.set_u32(0x24, 1 | 2 | 4);
                    r.set_return_status(status::SUCCESS);
                }
            }
            Api::CheckLowMemory => r.set_return_status(status::SUCCESS),
            _ => r.set_return_status(status::UNSUCCESSFUL),
        }
        self.reply(r, now);
    }
}
