//! The debuggee's side of the KD packet layer, sans-IO, as the captures show Windows behave:
//! - its data packet ids start at 0 and grow by 2; one packet is in flight at a time and later
//!   ones queue behind it;
//! - a packet is retransmitted (same id) until acknowledged, at once on RESEND;
//! - a data packet arriving while it waits for an ACK is answered with RESEND id 0, and its own
//!   pending packet is treated as delivered;
//! - RESET from the host: adopt the host's id, answer RESET with the pending id, resend pending;
//! - every host data packet is acknowledged; duplicates (recently seen ids) are dropped.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::packet::{KdError, Packet, PacketType};
use crate::wire::DataPayload;

/// Timing of the target KD layer.
#[derive(Debug, Clone, Copy)]
pub struct TargetKdConfig {
    /// Time before a packet is sent again.
    pub rto: Duration,
    /// Longest interval between retransmissions of a persistent packet (backoff cap).
    pub max_rto: Duration,
    /// Sends of a non-persistent packet before it is dropped.
    pub max_sends: u32,
}

impl Default for TargetKdConfig {
    fn default() -> Self {
        TargetKdConfig {
            rto: Duration::from_millis(250),
            max_rto: Duration::from_secs(2),
            max_sends: 16,
        }
    }
}

/// What the target KD layer reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetKdEvent {
    /// The host sent the break-in byte.
    BreakIn,
    /// A new data packet from the host (already acknowledged).
    Packet(Packet),
    /// Our packet was acknowledged (or, per the protocol, given up for a newer host packet).
    Delivered {
        /// Its id.
        id: u32,
    },
    /// Our non-persistent packet got no acknowledgement after every retry.
    Dropped {
        /// Its id.
        id: u32,
    },
    /// The host sent RESET.
    HostReset {
        /// The id the host will use next.
        id: u32,
    },
    /// A payload that was not a KD packet.
    Malformed(KdError),
}

/// Counters of the target KD layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TargetKdStats {
    /// Data packets sent the first time.
    pub data_sent: u64,
    /// Retransmissions.
    pub retransmits: u64,
    /// New host data packets.
    pub data_received: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Host packets dropped because we were waiting for an ACK (answered with RESEND).
    pub dropped_while_waiting: u64,
    /// Unparseable payloads.
    pub malformed: u64,
    /// Host data packets ignored because the target was running.
    pub ignored_while_running: u64,
}

#[derive(Debug)]
struct Pending {
    packet: Packet,
    last_sent: Instant,
    sends: u32,
    persistent: bool,
}

const RECENT_IDS: usize = 16;

/// The target KD state machine.
#[derive(Debug)]
pub struct TargetKd {
    cfg: TargetKdConfig,
    pub(super) next_id: u32,
    recent: VecDeque<u32>,
    pending: Option<Pending>,
    queue: VecDeque<(Packet, bool)>,
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<TargetKdEvent>,
    stats: TargetKdStats,
    accept_data: bool,
}

impl TargetKd {
    /// A fresh layer (ids from 0, as after boot).
    pub fn new(cfg: TargetKdConfig) -> TargetKd {
        TargetKd {
            cfg,
            next_id: 0,
            recent: VecDeque::with_capacity(RECENT_IDS),
            pending: None,
            queue: VecDeque::new(),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            stats: TargetKdStats::default(),
            accept_data: true,
        }
    }

    /// Whether host data packets are taken in. A running kernel only polls for the break-in
    /// byte (and the ACKs of its own prints); it neither acknowledges nor keeps data packets.
    pub fn set_accept_data(&mut self, accept: bool) {
        self.accept_data = accept;
    }

    /// Counters.
    pub fn stats(&self) -> TargetKdStats {
        self.stats
    }

    /// Whether nothing is pending or queued.
    pub fn idle(&self) -> bool {
        self.pending.is_none() && self.queue.is_empty()
    }

    /// A new handshake: forget the host's ids (a new debugger starts its own).
    pub fn new_session(&mut self) {
        self.recent.clear();
    }

    /// Back to the state after boot: ids from 0, nothing pending.
    pub fn reboot(&mut self) {
        let accept = self.accept_data;
        *self = TargetKd::new(self.cfg);
        self.accept_data = accept;
    }

    /// Drops everything pending and queued (the target resumed or reset its conversation).
    pub fn clear(&mut self) {
        self.pending = None;
        self.queue.clear();
    }

    /// Queues a data packet; returns its id. A persistent packet (a state change) is
    /// retransmitted until acknowledged; others are dropped after `max_sends`.
    pub fn send(&mut self, kind: PacketType, data: Vec<u8>, persistent: bool, now: Instant) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(2);
        self.queue
            .push_back((Packet::data(kind, id, data), persistent));
        self.stats.data_sent += 1;
        self.pump(now);
        id
    }

    fn pump(&mut self, now: Instant) {
        if self.pending.is_some() {
            return;
        }
        if let Some((packet, persistent)) = self.queue.pop_front() {
            self.transmit.push_back(packet.encode());
            self.pending = Some(Pending {
                packet,
                last_sent: now,
                sends: 1,
                persistent,
            });
        }
    }

    fn delivered(&mut self, now: Instant) {
        if let Some(p) = self.pending.take() {
            self.events
                .push_back(TargetKdEvent::Delivered { id: p.packet.id });
        }
        self.pump(now);
    }

    fn resend_pending(&mut self, now: Instant) {
        if let Some(p) = self.pending.as_mut() {
            p.sends += 1;
            p.last_sent = now;
            self.transmit.push_back(p.packet.encode());
            self.stats.retransmits += 1;
        }
    }

    /// Handles an authenticated data-channel payload from the host.
    pub fn handle(&mut self, payload: &[u8], now: Instant) {
        let bytes = match DataPayload::classify(payload) {
            DataPayload::BreakIn => {
                self.events.push_back(TargetKdEvent::BreakIn);
                return;
            }
            DataPayload::Hello { .. } => return,
            DataPayload::Kd(b) => b,
        };
        let packet = match Packet::decode(bytes) {
            Ok(p) => p,
            Err(e) => {
                self.stats.malformed += 1;
                if matches!(e, KdError::Checksum { .. }) {
                    self.transmit
                        .push_back(Packet::control(PacketType::Resend, 0).encode());
                }
                self.events.push_back(TargetKdEvent::Malformed(e));
                return;
            }
        };
        match packet.kind {
            PacketType::Acknowledge
                if !packet.is_data()
                    && self.pending.as_ref().map(|p| p.packet.id) == Some(packet.id) =>
            {
                self.delivered(now);
            }
            PacketType::Resend if !packet.is_data() => self.resend_pending(now),
            // A running kernel is not in its debugger loop: it only polls for the break-in
            // byte, unless it is sending (a DbgPrint waiting for its acknowledgement).
            PacketType::Reset
                if !packet.is_data() && !self.accept_data && self.pending.is_none() =>
            {
                self.stats.ignored_while_running += 1;
            }
            PacketType::Reset if !packet.is_data() => {
                self.recent.clear();
                self.events
                    .push_back(TargetKdEvent::HostReset { id: packet.id });
                let ours = self
                    .pending
                    .as_ref()
                    .map(|p| p.packet.id)
                    .unwrap_or(self.next_id);
                self.transmit
                    .push_back(Packet::control(PacketType::Reset, ours).encode());
                self.resend_pending(now);
            }
            _ if packet.is_data() && !self.accept_data => {
                self.stats.ignored_while_running += 1;
            }
            _ if packet.is_data() => {
                if self.pending.is_some() {
                    // Waiting for an ACK and a data packet came: ask for it again and count our
                    // own packet as delivered.
                    self.stats.dropped_while_waiting += 1;
                    self.transmit
                        .push_back(Packet::control(PacketType::Resend, 0).encode());
                    self.delivered(now);
                    return;
                }
                self.transmit
                    .push_back(Packet::control(PacketType::Acknowledge, packet.id).encode());
                if self.recent.contains(&packet.id) {
                    self.stats.duplicates += 1;
                    return;
                }
                if self.recent.len() == RECENT_IDS {
                    self.recent.pop_front();
                }
                self.recent.push_back(packet.id);
                self.stats.data_received += 1;
                self.events.push_back(TargetKdEvent::Packet(packet));
            }
            _ => {}
        }
    }

    fn interval(&self, p: &Pending) -> Duration {
        let exp = p.sends.saturating_sub(1).min(8);
        self.cfg
            .rto
            .saturating_mul(1 << exp)
            .min(self.cfg.max_rto.max(self.cfg.rto))
    }

    /// When [`TargetKd::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending
            .as_ref()
            .map(|p| p.last_sent + self.interval(p))
    }

    /// Acts on timers: retransmits the pending packet or gives it up.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(p) = self.pending.as_ref() else {
            return;
        };
        if now < p.last_sent + self.interval(p) {
            return;
        }
        if !p.persistent && p.sends >= self.cfg.max_sends {
            let id = p.packet.id;
            self.pending = None;
            self.events.push_back(TargetKdEvent::Dropped { id });
            self.pump(now);
            return;
        }
        self.resend_pending(now);
    }

    /// The next payload to seal and send.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<TargetKdEvent> {
        self.events.pop_front()
    }
}
