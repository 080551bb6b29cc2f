//! The debugger's side of the KD packet layer, sans-IO.
//!
//! Rules (from the captures, see protocol.md §7):
//! - every target data packet is acknowledged with its exact id, duplicates included, and a
//!   duplicate (an id seen among the last few) is dropped;
//! - the host's ids start at 0x80000000 and grow by 2; a RESET announcing the next id goes out
//!   before the first data packet of each session, so a target that saw earlier ids accepts it;
//! - one data packet is outstanding at a time: retransmitted with the same id until acknowledged
//!   (RTO from measured round trips), retransmitted at once on RESEND;
//! - when a reply is expected and does not come, the host first asks the target to resend its
//!   last packet (RESEND), then sends the request again under a new id, as WinDbg does;
//! - the target's hello is answered with RESEND id 0, which makes it resend what it has pending.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::packet::{HOST_INITIAL_ID, KdError, Packet, PacketType};
use crate::wire::DataPayload;
use crate::wire::data::BREAK_IN;

/// Timing of the host KD layer.
#[derive(Debug, Clone, Copy)]
pub struct HostKdConfig {
    /// RTO before any round trip was measured.
    pub initial_rto: Duration,
    /// Lower bound of the RTO.
    pub min_rto: Duration,
    /// Upper bound of the RTO.
    pub max_rto: Duration,
    /// Transmissions of one request (first send included) before giving up.
    pub max_sends: u32,
    /// RESEND nudges while waiting for a reply before the request is sent again under a new id.
    pub reply_nudges: u32,
}

impl Default for HostKdConfig {
    fn default() -> Self {
        HostKdConfig {
            initial_rto: Duration::from_millis(500),
            min_rto: Duration::from_millis(40),
            max_rto: Duration::from_secs(2),
            max_sends: 12,
            reply_nudges: 2,
        }
    }
}

/// Counters of the KD layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KdStats {
    /// Data packets sent for the first time.
    pub data_sent: u64,
    /// Retransmissions (same id, or new id after a lost reply).
    pub retransmits: u64,
    /// Control packets sent (ACK, RESEND, RESET).
    pub control_sent: u64,
    /// New data packets received.
    pub data_received: u64,
    /// Duplicate data packets received (acknowledged, dropped).
    pub duplicates: u64,
    /// Packets that did not parse.
    pub malformed: u64,
}

/// What the host KD layer reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKdEvent {
    /// The target's hello after a handshake.
    Hello {
        /// The host address the target saw.
        host: Ipv4Addr,
    },
    /// A new data packet from the target (already acknowledged).
    Packet(Packet),
    /// An outstanding packet that needed no reply was acknowledged.
    Delivered {
        /// Its id.
        id: u32,
    },
    /// The outstanding packet got neither acknowledgement nor reply after every retry.
    GaveUp {
        /// Its id.
        id: u32,
    },
    /// The target sent RESET.
    TargetReset {
        /// The id it carried.
        id: u32,
    },
    /// A payload that was not a KD packet.
    Malformed(KdError),
}

/// The outstanding packet could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a KD packet is already outstanding")]
pub struct Busy;

#[derive(Debug)]
struct Outstanding {
    packet: Packet,
    last_sent: Instant,
    sends: u32,
    acked: bool,
    expect_reply: bool,
    nudges: u32,
    /// Only a packet acknowledged on its first send gives a clean RTT sample.
    clean_sample: bool,
}

/// RFC 6298-style round-trip estimate.
#[derive(Debug, Clone, Copy)]
struct Rtt {
    srtt: Option<Duration>,
    rttvar: Duration,
}

impl Rtt {
    fn sample(&mut self, r: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(s) => {
                let diff = s.abs_diff(r);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((s * 7 + r) / 8);
            }
        }
    }
}

const RECENT_IDS: usize = 16;

/// The host KD state machine.
#[derive(Debug)]
pub struct HostKd {
    cfg: HostKdConfig,
    pub(super) next_id: u32,
    pub(super) reset_needed: bool,
    recent: VecDeque<u32>,
    outstanding: Option<Outstanding>,
    rtt: Rtt,
    backoff: u32,
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<HostKdEvent>,
    stats: KdStats,
}

impl HostKd {
    /// A fresh host KD layer.
    pub fn new(cfg: HostKdConfig) -> HostKd {
        HostKd {
            cfg,
            next_id: HOST_INITIAL_ID,
            reset_needed: true,
            recent: VecDeque::with_capacity(RECENT_IDS),
            outstanding: None,
            rtt: Rtt {
                srtt: None,
                rttvar: Duration::ZERO,
            },
            backoff: 0,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            stats: KdStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> KdStats {
        self.stats
    }

    /// The smoothed round trip, once measured.
    pub fn srtt(&self) -> Option<Duration> {
        self.rtt.srtt
    }

    /// The current retransmission timeout.
    pub fn rto(&self) -> Duration {
        let base = match self.rtt.srtt {
            None => self.cfg.initial_rto,
            Some(s) => s + (self.rtt.rttvar * 4).max(Duration::from_millis(1)),
        };
        let backed = base.saturating_mul(1 << self.backoff.min(6));
        backed.clamp(self.cfg.min_rto, self.cfg.max_rto)
    }

    /// Whether a packet is outstanding.
    pub fn busy(&self) -> bool {
        self.outstanding.is_some()
    }

    /// A new handshake happened: forget the target's ids and announce ours again with RESET.
    pub fn new_session(&mut self) {
        self.recent.clear();
        self.reset_needed = true;
    }

    /// Drops the outstanding packet (e.g. the target rebooted); returns its id.
    pub fn abort(&mut self) -> Option<u32> {
        self.outstanding.take().map(|o| o.packet.id)
    }

    /// Sends a data packet. With `expect_reply`, the packet stays outstanding after its
    /// acknowledgement until [`HostKd::reply_received`] is called.
    pub fn send(
        &mut self,
        kind: PacketType,
        data: Vec<u8>,
        expect_reply: bool,
        now: Instant,
    ) -> Result<u32, Busy> {
        if self.outstanding.is_some() {
            return Err(Busy);
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(2);
        if self.reset_needed {
            self.reset_needed = false;
            self.push_control(PacketType::Reset, id);
        }
        let packet = Packet::data(kind, id, data);
        self.transmit.push_back(packet.encode());
        self.stats.data_sent += 1;
        self.outstanding = Some(Outstanding {
            packet,
            last_sent: now,
            sends: 1,
            acked: false,
            expect_reply,
            nudges: 0,
            clean_sample: true,
        });
        Ok(id)
    }

    /// The session matched the reply to the outstanding request.
    pub fn reply_received(&mut self) {
        self.outstanding = None;
        self.backoff = 0;
    }

    /// Queues a break-in byte.
    pub fn break_in(&mut self) {
        self.transmit.push_back(vec![BREAK_IN]);
    }

    /// Queues a RESET announcing our next id, unless a packet is outstanding. A target stopped
    /// in its debugger loop answers by sending its state change again: that is how a debugger
    /// attaching to a machine another debugger left stopped learns that it is stopped.
    pub fn announce_reset(&mut self) {
        if self.outstanding.is_none() {
            self.reset_needed = false;
            let id = self.next_id;
            self.push_control(PacketType::Reset, id);
        }
    }

    fn push_control(&mut self, kind: PacketType, id: u32) {
        self.transmit.push_back(Packet::control(kind, id).encode());
        self.stats.control_sent += 1;
    }

    /// Handles an authenticated data-channel payload from the target.
    pub fn handle(&mut self, payload: &[u8], now: Instant) {
        let bytes = match DataPayload::classify(payload) {
            DataPayload::Hello { host } => {
                self.new_session();
                self.push_control(PacketType::Resend, 0);
                self.events.push_back(HostKdEvent::Hello { host });
                return;
            }
            DataPayload::BreakIn => return,
            DataPayload::Kd(b) => b,
        };
        let packet = match Packet::decode(bytes) {
            Ok(p) => p,
            Err(e) => {
                self.stats.malformed += 1;
                if matches!(e, KdError::Checksum { .. }) {
                    self.push_control(PacketType::Resend, 0);
                }
                self.events.push_back(HostKdEvent::Malformed(e));
                return;
            }
        };
        if !packet.is_data() {
            self.handle_control(&packet, now);
            return;
        }
        self.push_control(PacketType::Acknowledge, packet.id);
        if self.recent.contains(&packet.id) {
            self.stats.duplicates += 1;
            return;
        }
        if self.recent.len() == RECENT_IDS {
            self.recent.pop_front();
        }
        self.recent.push_back(packet.id);
        self.stats.data_received += 1;
        // A reply that answers the outstanding request ends it (the session matches it and
        // calls `reply_received`), whether or not its ACK arrived. One that does not answer it
        // (the late reply to a request given up on, such as a read a resume pre-empted) says
        // nothing of it: taken as its acknowledgement, it would leave a request the target
        // dropped (asking for it again with RESEND) unsent until the retransmission timer.
        self.events.push_back(HostKdEvent::Packet(packet));
    }

    fn handle_control(&mut self, packet: &Packet, now: Instant) {
        match packet.kind {
            PacketType::Acknowledge => {
                let Some(o) = self.outstanding.as_mut() else {
                    return;
                };
                if o.packet.id != packet.id || o.acked {
                    return;
                }
                o.acked = true;
                if o.clean_sample {
                    self.rtt.sample(now.saturating_duration_since(o.last_sent));
                }
                self.backoff = 0;
                if o.expect_reply {
                    // The reply timer starts now.
                    o.last_sent = now;
                } else {
                    let id = o.packet.id;
                    self.outstanding = None;
                    self.events.push_back(HostKdEvent::Delivered { id });
                }
            }
            PacketType::Resend => {
                // The target dropped our packet (it was waiting for its own ACK): send again.
                if let Some(o) = self.outstanding.as_mut()
                    && !o.acked
                {
                    o.sends += 1;
                    o.clean_sample = false;
                    o.last_sent = now;
                    self.transmit.push_back(o.packet.encode());
                    self.stats.retransmits += 1;
                }
            }
            PacketType::Reset => {
                // Whatever id comes next is accepted.
                self.recent.clear();
                self.events
                    .push_back(HostKdEvent::TargetReset { id: packet.id });
            }
            _ => {}
        }
    }

    /// When [`HostKd::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.outstanding.as_ref().map(|o| o.last_sent + self.rto())
    }

    /// Acts on timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        let rto = self.rto();
        let cfg = self.cfg;
        let Some(o) = self.outstanding.as_mut() else {
            return;
        };
        if now < o.last_sent + rto {
            return;
        }
        if o.sends >= cfg.max_sends {
            let id = o.packet.id;
            self.outstanding = None;
            self.backoff = 0;
            self.events.push_back(HostKdEvent::GaveUp { id });
            return;
        }
        o.last_sent = now;
        o.clean_sample = false;
        if !o.acked {
            o.sends += 1;
            self.transmit.push_back(o.packet.encode());
            self.stats.retransmits += 1;
            self.backoff += 1;
        } else if o.nudges < cfg.reply_nudges {
            // Acknowledged but no reply yet: the reply may have been lost; ask for it again.
            o.nudges += 1;
            self.transmit
                .push_back(Packet::control(PacketType::Resend, 0).encode());
            self.stats.control_sent += 1;
            self.backoff += 1;
        } else {
            // Send the request again under a new id (the target treats its lost reply as done).
            o.packet.id = self.next_id;
            self.next_id = self.next_id.wrapping_add(2);
            o.acked = false;
            o.nudges = 0;
            o.sends += 1;
            self.transmit.push_back(o.packet.encode());
            self.stats.retransmits += 1;
            self.backoff += 1;
        }
    }

    /// The next payload to seal and send (a KD packet or the break-in byte).
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<HostKdEvent> {
        self.events.pop_front()
    }
}
