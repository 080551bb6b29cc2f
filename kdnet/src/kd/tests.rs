//! Host and target KD state machines talking through a simulated link with an injected clock.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use super::*;
use crate::rng::SplitMix64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dir {
    ToTarget,
    ToHost,
}

/// A datagram in flight: when it lands, a tie-breaker, which way, the bytes.
type InFlight = Reverse<(Instant, u64, Dir, Vec<u8>)>;

struct Link {
    rng: SplitMix64,
    loss: f64,
    dup: f64,
    delay: Duration,
    jitter: Duration,
    seq: u64,
    queue: BinaryHeap<InFlight>,
    sent: u64,
}

impl Link {
    fn new(seed: u64, loss: f64, dup: f64, jitter: Duration) -> Link {
        Link {
            rng: SplitMix64::new(seed),
            loss,
            dup,
            delay: Duration::from_micros(500),
            jitter,
            seq: 0,
            queue: BinaryHeap::new(),
            sent: 0,
        }
    }

    fn send(&mut self, now: Instant, dir: Dir, payload: Vec<u8>) {
        self.sent += 1;
        if self.rng.chance(self.loss) {
            return;
        }
        let copies = if self.rng.chance(self.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let j = self.rng.below(self.jitter.as_micros() as u64 + 1);
            let at = now + self.delay + Duration::from_micros(j);
            self.seq += 1;
            self.queue
                .push(Reverse((at, self.seq, dir, payload.clone())));
        }
    }

    fn next_at(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse((at, ..))| *at)
    }
}

struct Run {
    completed: u32,
    gave_up: u32,
    elapsed: Duration,
    link_sends: u64,
    host: KdStats,
    target: TargetKdStats,
}

/// Runs `count` request/reply exchanges; each request carries its number, each reply echoes it.
fn exchange(count: u32, mut link: Link) -> Run {
    let start = Instant::now();
    let mut now = start;
    let mut host = HostKd::new(HostKdConfig {
        initial_rto: Duration::from_millis(20),
        min_rto: Duration::from_millis(5),
        max_rto: Duration::from_millis(200),
        max_sends: 30,
        reply_nudges: 2,
    });
    let mut target = TargetKd::new(TargetKdConfig {
        rto: Duration::from_millis(20),
        max_rto: Duration::from_millis(200),
        max_sends: 30,
    });
    let mut next = 0u32;
    let mut current: Option<u32> = None;
    let mut completed = 0;
    let mut gave_up = 0;
    for _ in 0..10_000_000u64 {
        if completed + gave_up == count {
            break;
        }
        if current.is_none() && next < count {
            let mut data = next.to_le_bytes().to_vec();
            data.extend_from_slice(&[0x5a; 52]);
            host.send(PacketType::StateManipulate, data, true, now)
                .unwrap();
            current = Some(next);
            next += 1;
        }
        while let Some(p) = host.poll_transmit() {
            link.send(now, Dir::ToTarget, p);
        }
        while let Some(p) = target.poll_transmit() {
            link.send(now, Dir::ToHost, p);
        }
        let wake = [link.next_at(), host.poll_timeout(), target.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .expect("something is always pending");
        now = now.max(wake);
        while link.next_at().is_some_and(|t| t <= now) {
            let Reverse((_, _, dir, p)) = link.queue.pop().unwrap();
            match dir {
                Dir::ToTarget => target.handle(&p, now),
                Dir::ToHost => host.handle(&p, now),
            }
        }
        host.handle_timeout(now);
        target.handle_timeout(now);
        while let Some(ev) = target.poll_event() {
            if let TargetKdEvent::Packet(req) = ev {
                let mut reply = req.data.clone();
                reply.push(0xab);
                target.send(PacketType::StateManipulate, reply, false, now);
            }
        }
        while let Some(ev) = host.poll_event() {
            match ev {
                HostKdEvent::Packet(p) => {
                    let n = u32::from_le_bytes(p.data[..4].try_into().unwrap());
                    if Some(n) == current {
                        assert_eq!(p.data.len(), 57, "reply {n} is whole");
                        assert_eq!(p.data[56], 0xab);
                        host.reply_received();
                        current = None;
                        completed += 1;
                    } else {
                        // A late copy of an earlier reply: the session ignores it.
                        assert!(n < current.unwrap_or(u32::MAX));
                    }
                }
                HostKdEvent::GaveUp { .. } => {
                    gave_up += 1;
                    current = None;
                }
                _ => {}
            }
        }
    }
    Run {
        completed,
        gave_up,
        elapsed: now - start,
        link_sends: link.sent,
        host: host.stats(),
        target: target.stats(),
    }
}

#[test]
fn clean_link_one_round_trip_each() {
    let r = exchange(100, Link::new(1, 0.0, 0.0, Duration::ZERO));
    assert_eq!(r.completed, 100);
    assert_eq!(r.host.retransmits, 0);
    assert_eq!(r.target.retransmits, 0);
    // request, ACK, reply, ACK — and one RESET before the first request.
    assert_eq!(r.link_sends, 100 * 4 + 1);
    assert_eq!(r.host.control_sent, 100 + 1);
}

#[test]
fn lossy_duplicating_reordering_link_delivers_everything() {
    for seed in 0..4 {
        let r = exchange(2_000, Link::new(seed, 0.10, 0.05, Duration::from_millis(3)));
        assert_eq!(r.gave_up, 0, "seed {seed}");
        assert_eq!(r.completed, 2_000, "seed {seed}");
        assert!(
            r.host.retransmits > 0 && r.host.duplicates > 0,
            "seed {seed}: {:?}",
            r.host
        );
        // Virtual time stays bounded: the retransmission timers do their job.
        assert!(
            r.elapsed < Duration::from_secs(120),
            "seed {seed}: {:?}",
            r.elapsed
        );
    }
}

#[test]
fn hello_is_answered_with_resend_and_target_resends_pending() {
    let now = Instant::now();
    let mut target = TargetKd::new(TargetKdConfig::default());
    let id = target.send(
        PacketType::DebugIo,
        b"BD: Boot Debugger Initialized\n".to_vec(),
        false,
        now,
    );
    assert_eq!(id, 0);
    let first = target.poll_transmit().unwrap();
    let mut host = HostKd::new(HostKdConfig::default());
    host.handle(
        &crate::wire::data::hello(std::net::Ipv4Addr::new(192, 168, 2, 1)),
        now,
    );
    assert!(matches!(host.poll_event(), Some(HostKdEvent::Hello { .. })));
    let resend = host.poll_transmit().unwrap();
    assert_eq!(
        Packet::decode(&resend).unwrap(),
        Packet::control(PacketType::Resend, 0)
    );
    target.handle(&resend, now);
    assert_eq!(
        target.poll_transmit().unwrap(),
        first,
        "same packet, same id"
    );
    host.handle(&first, now);
    let ack = host.poll_transmit().unwrap();
    assert_eq!(
        Packet::decode(&ack).unwrap(),
        Packet::control(PacketType::Acknowledge, 0)
    );
    target.handle(&ack, now);
    assert_eq!(
        target.poll_event(),
        Some(TargetKdEvent::Delivered { id: 0 })
    );
    // The copy that arrives again is acknowledged again but not delivered twice.
    host.handle(&first, now);
    assert!(matches!(host.poll_event(), Some(HostKdEvent::Packet(_))));
    assert_eq!(host.poll_event(), None);
    assert_eq!(host.stats().duplicates, 1);
}

/// The recovery captured in datagrams 194–206: a reply the host never acknowledged, a new
/// request answered with RESEND, then the target's next reply.
#[test]
fn capture_recovery_sequence() {
    let t0 = Instant::now();
    let mut target = TargetKd::new(TargetKdConfig::default());
    // Target ids advance to 0x60 as in the capture.
    target.next_id = 0x60;
    let mut host = HostKd::new(HostKdConfig::default());
    host.reset_needed = false;
    host.next_id = 0x8000_005e;
    // The target has sent a reply (0x60) the host never saw.
    target.send(PacketType::StateManipulate, vec![1; 56], false, t0);
    target.poll_transmit();
    // The host sends a new request 0x8000005e.
    host.send(PacketType::StateManipulate, vec![2; 56], true, t0)
        .unwrap();
    let req = host.poll_transmit().unwrap();
    target.handle(&req, t0);
    // The target answers RESEND and treats 0x60 as delivered.
    let resend = target.poll_transmit().unwrap();
    assert_eq!(
        Packet::decode(&resend).unwrap(),
        Packet::control(PacketType::Resend, 0)
    );
    assert_eq!(
        target.poll_event(),
        Some(TargetKdEvent::Delivered { id: 0x60 })
    );
    host.handle(&resend, t0);
    let again = host.poll_transmit().unwrap();
    assert_eq!(again, req, "same id, same bytes");
    target.handle(&again, t0);
    let ack = target.poll_transmit().unwrap();
    assert_eq!(
        Packet::decode(&ack).unwrap(),
        Packet::control(PacketType::Acknowledge, 0x8000_005e)
    );
    let TargetKdEvent::Packet(p) = target.poll_event().unwrap() else {
        panic!()
    };
    assert_eq!(p.id, 0x8000_005e);
    let id = target.send(PacketType::StateManipulate, vec![3; 56], false, t0);
    assert_eq!(id, 0x62);
}

#[test]
fn reset_adopts_host_id_and_resends_pending() {
    let now = Instant::now();
    let mut target = TargetKd::new(TargetKdConfig::default());
    target.send(PacketType::StateChange64, vec![7; 0xf0], true, now);
    let sc = target.poll_transmit().unwrap();
    let mut host = HostKd::new(HostKdConfig::default());
    host.send(PacketType::StateManipulate, vec![0; 56], true, now)
        .unwrap();
    let reset = host.poll_transmit().unwrap();
    assert_eq!(
        Packet::decode(&reset).unwrap(),
        Packet::control(PacketType::Reset, HOST_INITIAL_ID)
    );
    target.handle(&reset, now);
    assert_eq!(
        Packet::decode(&target.poll_transmit().unwrap()).unwrap(),
        Packet::control(PacketType::Reset, 0)
    );
    assert_eq!(target.poll_transmit().unwrap(), sc);
    assert_eq!(
        target.poll_event(),
        Some(TargetKdEvent::HostReset {
            id: HOST_INITIAL_ID
        })
    );
}

#[test]
fn a_running_kernel_answers_a_reset_only_while_it_is_sending() {
    let now = Instant::now();
    let mut target = TargetKd::new(TargetKdConfig::default());
    target.set_accept_data(false);
    let reset = Packet::control(PacketType::Reset, HOST_INITIAL_ID).encode();
    // Idle and running: not in its debugger loop, so the RESET goes unanswered (a debugger
    // that answers RESETs with RESETs would otherwise exchange them forever).
    target.handle(&reset, now);
    assert_eq!(target.poll_transmit(), None);
    assert_eq!(target.poll_event(), None);
    // A DbgPrint waiting for its acknowledgement is in the protocol: it resynchronises.
    target.send(PacketType::DebugIo, vec![1; 0x20], true, now);
    let print = target.poll_transmit().unwrap();
    target.handle(&reset, now);
    assert_eq!(
        Packet::decode(&target.poll_transmit().unwrap()).unwrap(),
        Packet::control(PacketType::Reset, 0)
    );
    assert_eq!(target.poll_transmit().unwrap(), print);
}

#[test]
fn persistent_state_change_is_resent_until_acknowledged() {
    let t0 = Instant::now();
    let mut target = TargetKd::new(TargetKdConfig {
        rto: Duration::from_millis(10),
        max_rto: Duration::from_millis(40),
        max_sends: 3,
    });
    target.send(PacketType::StateChange64, vec![0; 0xf0], true, t0);
    let mut now = t0;
    let mut sends = 0;
    for _ in 0..100 {
        while target.poll_transmit().is_some() {
            sends += 1;
        }
        now = target.poll_timeout().unwrap();
        target.handle_timeout(now);
    }
    assert!(sends > 50, "{sends}");
    // Backoff is capped: 100 retransmissions take at most 100 × 40 ms.
    assert!(now - t0 <= Duration::from_millis(4_000));
    // A non-persistent packet gives up after max_sends.
    let mut target = TargetKd::new(TargetKdConfig {
        rto: Duration::from_millis(10),
        max_rto: Duration::from_millis(40),
        max_sends: 3,
    });
    target.send(PacketType::DebugIo, vec![0; 20], false, t0);
    while let Some(t) = target.poll_timeout() {
        target.handle_timeout(t);
    }
    assert_eq!(target.stats().retransmits, 2);
    assert!(
        target
            .poll_event()
            .is_some_and(|e| matches!(e, TargetKdEvent::Dropped { id: 0 }))
    );
}
