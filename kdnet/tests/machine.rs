//! The two session machines (host and target end) over a simulated network with a virtual
//! clock: deterministic, fast, and able to play an attacker who sees the traffic but does not
//! hold the key. Every run is repeatable from its seed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use std::sync::{Arc, Mutex};

use kdnet::api::{LoadSymbols64, Manipulate, StateChange64, StateEvent, status};
use kdnet::machine::{
    Done, HostError, HostEvent, HostMachine, HostMachineConfig, ModuleBreaks, Op, OpId, Output,
    Phase, RunState, TargetConfig, TargetHandler, TargetMachine,
};
use kdnet::rng::SplitMix64;
use kdnet::target::{Activity, Resume, StopReason};
use kdnet::wire::{Channel, HandshakeReason, Key, TargetWire, TargetWireConfig};

mod common;
use common::{BASE, PatternTarget, SIZE, breakpoint, pattern};

const KEY: &str = "9.8.7.6";

/// The shared pattern target, as the machines' handler.
fn handler() -> Box<dyn TargetHandler> {
    Box::new(PatternTarget {
        prints: Default::default(),
        rip: BASE + 0x1234,
    })
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const HOST: &str = "10.0.0.1:50000";
const TARGET: &str = "10.0.0.2:50000";
/// Another machine on the network: it sees every datagram, holds no key.
const EVIL: &str = "10.0.0.66:50000";

/// Link impairments.
#[derive(Clone, Copy)]
struct Link {
    loss: f64,
    duplicate: f64,
    /// Extra delay up to this, per datagram: reorders.
    jitter: Duration,
    delay: Duration,
}

impl Link {
    fn clean() -> Link {
        Link {
            loss: 0.0,
            duplicate: 0.0,
            jitter: Duration::ZERO,
            delay: Duration::from_micros(200),
        }
    }
}

type InFlight = Reverse<(Instant, u64, SocketAddr, SocketAddr, Vec<u8>)>;

/// A host machine and a target machine on a simulated network.
struct World {
    now: Instant,
    start: Instant,
    host: HostMachine,
    target: TargetMachine,
    link: Link,
    rng: SplitMix64,
    queue: BinaryHeap<InFlight>,
    seq: u64,
    /// Every datagram either end sent, with sender and destination (what an eavesdropper sees).
    seen: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    /// Datagrams the host sent anywhere but the target.
    host_to_elsewhere: Vec<(SocketAddr, Vec<u8>)>,
    outputs: Vec<Output>,
    /// The target does nothing and receives nothing until then (a paused machine); what is sent
    /// to it meanwhile waits in its NIC's queue.
    frozen_until: Option<Instant>,
    /// The target is gone for good.
    dead: bool,
}

fn seeded(seed: u64) -> Box<dyn FnMut() -> [u8; 32] + Send> {
    let mut r = SplitMix64::new(seed);
    Box::new(move || {
        let mut b = [0u8; 32];
        for c in b.chunks_mut(8) {
            c.copy_from_slice(&r.next_u64().to_le_bytes());
        }
        b
    })
}

fn host_config() -> HostMachineConfig {
    HostMachineConfig::new(Key::parse(KEY).unwrap())
}

fn target_config() -> TargetConfig {
    let mut c = TargetConfig::new(addr(TARGET), addr(HOST), Key::parse(KEY).unwrap());
    c.offer_interval = Duration::from_secs(3);
    c
}

impl World {
    fn new(seed: u64, link: Link) -> World {
        World::with(seed, link, host_config(), target_config())
    }

    fn with(seed: u64, link: Link, hc: HostMachineConfig, tc: TargetConfig) -> World {
        World::with_handler(seed, link, hc, tc, handler())
    }

    fn with_handler(
        seed: u64,
        link: Link,
        hc: HostMachineConfig,
        tc: TargetConfig,
        handler: Box<dyn TargetHandler>,
    ) -> World {
        let start = Instant::now();
        World {
            now: start,
            start,
            host: HostMachine::new(hc, start, seeded(seed ^ 0x1111)),
            target: TargetMachine::new(tc, addr(TARGET), handler, start, seeded(seed)),
            link,
            rng: SplitMix64::new(seed),
            queue: BinaryHeap::new(),
            seq: 0,
            seen: Vec::new(),
            host_to_elsewhere: Vec::new(),
            outputs: Vec::new(),
            frozen_until: None,
            dead: false,
        }
    }

    fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Puts a datagram on the wire from `from` to `to`, through the link's impairments.
    fn send(&mut self, from: SocketAddr, to: SocketAddr, d: Vec<u8>) {
        self.seen.push((from, to, d.clone()));
        if self.rng.chance(self.link.loss) {
            return;
        }
        let copies = if self.rng.chance(self.link.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let j = self.rng.below(self.link.jitter.as_micros() as u64 + 1);
            let at = self.now + self.link.delay + Duration::from_micros(j);
            self.seq += 1;
            self.queue
                .push(Reverse((at, self.seq, from, to, d.clone())));
        }
    }

    /// An attacker's datagram: delivered as sent, no impairment.
    fn inject(&mut self, from: &str, to: &str, d: Vec<u8>) {
        self.seq += 1;
        self.queue.push(Reverse((
            self.now + self.link.delay,
            self.seq,
            addr(from),
            addr(to),
            d,
        )));
    }

    fn target_awake(&self) -> bool {
        !self.dead && self.frozen_until.is_none_or(|t| self.now >= t)
    }

    fn flush(&mut self) {
        while let Some(t) = self.host.poll_transmit() {
            if t.to != addr(TARGET) {
                self.host_to_elsewhere.push((t.to, t.datagram.clone()));
            }
            self.send(addr(HOST), t.to, t.datagram);
        }
        if self.target_awake() {
            while let Some(t) = self.target.poll_transmit() {
                self.send(addr(TARGET), t.to, t.datagram);
            }
        }
        while let Some(o) = self.host.poll_output() {
            self.outputs.push(o);
        }
    }

    /// Advances to the next thing that happens (at most to `limit`).
    fn step(&mut self, limit: Instant) {
        self.flush();
        let mut next = limit;
        if let Some(Reverse((at, ..))) = self.queue.peek() {
            next = next.min(*at);
        }
        if let Some(t) = self.host.poll_timeout() {
            next = next.min(t);
        }
        if self.target_awake() {
            next = next.min(self.target.poll_timeout());
        } else if let Some(t) = self.frozen_until
            && !self.dead
        {
            next = next.min(t);
        }
        self.now = self.now.max(next);
        let now = self.now;
        let mut held = Vec::new();
        while self
            .queue
            .peek()
            .is_some_and(|Reverse((at, ..))| *at <= now)
        {
            let Reverse((at, seq, from, to, d)) = self.queue.pop().unwrap();
            if to == addr(HOST) {
                self.host.handle_datagram(from, &d, now);
            } else if to == addr(TARGET) {
                if self.dead {
                    continue;
                }
                if !self.target_awake() {
                    held.push(Reverse((at, seq, from, to, d)));
                    continue;
                }
                self.target.handle_datagram(from, &d, now);
            }
            self.flush();
        }
        for h in held {
            let Reverse((_, seq, from, to, d)) = h;
            let when = self.frozen_until.unwrap_or(now);
            self.queue.push(Reverse((when, seq, from, to, d)));
        }
        if self.host.poll_timeout().is_some_and(|t| t <= now) {
            self.host.handle_timeout(now);
        }
        if self.target_awake() && self.target.poll_timeout() <= now {
            self.target.handle_timeout(now);
        }
        self.flush();
    }

    /// Runs until `done` holds or `limit` of virtual time passes; whether it held.
    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&mut World) -> bool) -> bool {
        let end = self.now + limit;
        loop {
            if done(self) {
                return true;
            }
            if self.now >= end {
                return false;
            }
            self.step(end);
        }
    }

    fn completed(&mut self, id: OpId) -> Option<Result<Done, HostError>> {
        self.flush();
        let i = self
            .outputs
            .iter()
            .position(|o| matches!(o, Output::Completed { id: x, .. } if *x == id))?;
        match self.outputs.remove(i) {
            Output::Completed { result, .. } => Some(result),
            Output::Event(_) => unreachable!(),
        }
    }

    /// Submits an operation and runs until it completes (within `limit` of virtual time).
    fn op(&mut self, op: Op, limit: Duration) -> Result<Done, HostError> {
        let id = self.host.submit(op, self.now);
        let mut result = None;
        let finished = self.run_until(limit, |w| {
            result = w.completed(id);
            result.is_some()
        });
        assert!(finished, "operation {id} did not complete within {limit:?}");
        result.expect("checked")
    }

    fn connect(&mut self) {
        assert!(
            self.run_until(Duration::from_secs(30), |w| w.host.state().phase
                == Phase::Connected),
            "no connection: {:?}",
            self.host.stats()
        );
    }

    fn break_in(&mut self) {
        let r = self.op(
            Op::BreakIn {
                timeout: Duration::from_secs(30),
            },
            Duration::from_secs(60),
        );
        assert!(matches!(r, Ok(Done::Stopped(_))), "{r:?}");
    }

    fn read(&mut self, address: u64, len: usize) -> Result<Vec<u8>, HostError> {
        match self.op(
            Op::ReadMemory {
                physical: false,
                address,
                len,
            },
            Duration::from_secs(120),
        )? {
            Done::Memory(b) => Ok(b),
            other => panic!("{other:?}"),
        }
    }

    fn events(&self) -> Vec<HostEvent> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                Output::Event(e) => Some(e.clone()),
                Output::Completed { .. } => None,
            })
            .collect()
    }

    /// The target's datagrams seen so far on `channel`.
    fn target_datagrams(&self, channel: Channel) -> Vec<Vec<u8>> {
        self.seen
            .iter()
            .filter(|(from, _, d)| *from == addr(TARGET) && d.get(5) == Some(&channel.byte()))
            .map(|(_, _, d)| d.clone())
            .collect()
    }
}

fn check(address: u64, data: &[u8]) -> bool {
    data.iter()
        .enumerate()
        .all(|(k, b)| *b == pattern(address + k as u64))
}

/// A fixed workload: reads at seeded addresses; returns what each read gave.
fn workload(w: &mut World, seed: u64, count: usize) -> Vec<Result<Vec<u8>, String>> {
    let mut rng = SplitMix64::new(seed);
    (0..count)
        .map(|_| {
            let a = BASE + rng.below(SIZE - 8192);
            let n = 1 + rng.below(6000) as usize;
            w.read(a, n).map_err(|e| e.to_string())
        })
        .collect()
}

#[test]
fn a_hundred_thousand_reads_through_loss_duplication_and_reordering() {
    let mut w = World::new(
        7,
        Link {
            loss: 0.10,
            duplicate: 0.05,
            jitter: Duration::from_micros(400),
            delay: Duration::from_micros(100),
        },
    );
    w.connect();
    w.break_in();
    let cpu = Instant::now();
    let mut rng = SplitMix64::new(42);
    let mut bytes = 0u64;
    for i in 0..100_000u32 {
        let a = BASE + rng.below(SIZE - 256);
        let n = 1 + rng.below(200) as usize;
        let data = w
            .read(a, n)
            .unwrap_or_else(|e| panic!("read {i} at {a:#x}: {e}"));
        assert_eq!(data.len(), n);
        assert!(check(a, &data), "read {i} at {a:#x} returned wrong bytes");
        bytes += n as u64;
    }
    let s = w.host.stats();
    println!(
        "100000 reads ({bytes} bytes) in {:?} of virtual time, {:?} of CPU: {} round trips, {} KD retransmits, {} duplicates, drops {}",
        w.elapsed(),
        cpu.elapsed(),
        s.round_trips,
        s.retransmits,
        s.duplicates,
        s.drops.summary()
    );
    assert!(s.round_trips >= 100_000);
    assert_eq!(s.failed, 0);
    assert!(s.retransmits > 10_000, "the loss was exercised");
    assert!(
        s.duplicates > 1_000 || s.drops.replayed_data > 1_000,
        "duplication exercised"
    );
    assert_eq!(s.handshakes_proven, 1, "one session throughout");
    assert_eq!(s.silences, 0);
}

#[test]
fn large_reads_step_down_for_a_target_limited_to_one_frame() {
    let mut tc = target_config();
    tc.max_datagram = Some(1472);
    let mut w = World::with(3, Link::clean(), host_config(), tc);
    w.connect();
    w.break_in();
    let data = w.read(BASE, 20_000).unwrap();
    assert!(check(BASE, &data));
    assert_eq!(w.host.max_transfer(), 1360, "remembered for this target");
    let before = w.host.stats().round_trips;
    w.read(BASE, 20_000).unwrap();
    assert_eq!(
        w.host.stats().round_trips - before,
        20_000u64.div_ceil(1360)
    );
    assert!(w.target.stats().oversize_dropped > 0);
}

#[test]
fn a_read_off_the_end_returns_what_was_read_and_where_it_failed() {
    let mut w = World::new(4, Link::clean());
    w.connect();
    w.break_in();
    match w.read(BASE + SIZE - 10, 100) {
        Err(HostError::Memory { address, read, .. }) => {
            assert_eq!(address, BASE + SIZE);
            assert!(check(BASE + SIZE - 10, &read) && read.len() == 10);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn continue_is_confirmed_even_when_its_acknowledgements_are_lost() {
    let mut w = World::new(
        77,
        Link {
            loss: 0.3,
            ..Link::clean()
        },
    );
    w.connect();
    let mut lost = 0;
    for round in 0..30 {
        w.break_in();
        assert!(!w.target.is_running());
        let before = w.host.stats().failed;
        let r = w.op(Op::resume(status::DBG_CONTINUE), Duration::from_secs(60));
        assert_eq!(r, Ok(Done::Unit), "round {round}");
        assert_eq!(w.host.state().run, RunState::Running);
        assert!(
            w.target.is_running(),
            "round {round}: the target really runs"
        );
        lost += w.host.stats().failed - before;
    }
    assert!(
        lost > 0,
        "no acknowledgement was lost: the case was not exercised"
    );
}

#[test]
fn requests_are_refused_while_the_target_runs() {
    let mut w = World::new(5, Link::clean());
    w.connect();
    w.break_in();
    let r = w.op(Op::resume(status::DBG_CONTINUE), Duration::from_secs(10));
    assert_eq!(r, Ok(Done::Unit));
    let at = w.now;
    let r = w.op(
        Op::ReadMemory {
            physical: false,
            address: BASE,
            len: 8,
        },
        Duration::from_secs(1),
    );
    assert_eq!(r, Err(HostError::TargetRunning));
    assert_eq!(w.now, at, "at once");
}

#[test]
fn a_reboot_is_recognised_within_one_offer() {
    let mut w = World::new(8, Link::clean());
    w.connect();
    w.break_in();
    w.read(BASE, 64).unwrap();
    let rebooted_at = w.now;
    w.target.reboot(w.now);
    assert!(
        w.run_until(Duration::from_secs(10), |w| w.events().iter().any(
            |e| matches!(
                e,
                HostEvent::Connected {
                    reason: HandshakeReason::Rebooted,
                    ..
                }
            )
        ))
    );
    assert!(
        w.now - rebooted_at < Duration::from_millis(100),
        "a new boot offers at once: {:?}",
        w.now - rebooted_at
    );
    w.break_in();
    assert!(check(BASE, &w.read(BASE, 64).unwrap()));
}

/// Runs the same workload with and without an attacker's traffic and compares: same answers,
/// one session with the real target, nothing sent to the attacker but answers to its offers.
fn undisturbed(seed: u64, attack: impl FnMut(&mut World, usize)) -> World {
    let mut quiet = World::new(seed, Link::clean());
    quiet.connect();
    quiet.break_in();
    let expected = workload(&mut quiet, 99, 40);
    let mut w = World::new(seed, Link::clean());
    let mut attack = attack;
    attack(&mut w, usize::MAX);
    w.connect();
    assert_eq!(w.host.state().target, Some(addr(TARGET)));
    w.break_in();
    let mut rng = SplitMix64::new(99);
    for (i, want) in expected.iter().enumerate() {
        attack(&mut w, i);
        let a = BASE + rng.below(SIZE - 8192);
        let n = 1 + rng.below(6000) as usize;
        let got = w.read(a, n).map_err(|e| e.to_string());
        assert_eq!(&got, want, "read {i} differs from the undisturbed run");
    }
    assert_eq!(w.host.state().target, Some(addr(TARGET)));
    assert_eq!(w.host.stats().handshakes_proven, 1, "{:?}", w.host.stats());
    assert_eq!(
        w.target.stats().handshakes,
        1,
        "the target was not re-keyed"
    );
    assert_eq!(w.host.stats().silences, 0);
    for (to, d) in &w.host_to_elsewhere {
        assert_eq!(to.ip(), addr(EVIL).ip());
        assert_eq!(
            d[5],
            Channel::Control.byte(),
            "only answers to offers go elsewhere"
        );
    }
    w
}

/// Offers a target sent in an earlier boot (a recording).
fn recorded_offers(n: usize) -> Vec<Vec<u8>> {
    let now = Instant::now();
    let mut old = TargetWire::new(
        TargetWireConfig {
            key: Key::parse(KEY).unwrap(),
            version: 4,
            local: addr(TARGET),
            host: addr(HOST),
        },
        now,
        [0x5a; 32],
    );
    (0..n)
        .map(|i| {
            old.offer(now + Duration::from_secs(3 * i as u64), addr(HOST))
                .datagram
        })
        .collect()
}

#[test]
fn a_replayed_offer_before_the_first_handshake_does_not_take_the_session() {
    let offers = recorded_offers(3);
    let w = undisturbed(11, |w, i| {
        if i == usize::MAX {
            for o in &offers {
                w.inject(EVIL, HOST, o.clone());
            }
        }
    });
    let s = w.host.stats();
    assert!(
        s.handshakes_answered >= 2,
        "the replay was answered, and proved nothing"
    );
    assert!(
        w.events()
            .iter()
            .all(|e| !matches!(e, HostEvent::Connected { target, .. } if *target != addr(TARGET)))
    );
}

#[test]
fn old_boot_offers_from_the_targets_address_are_not_a_reboot() {
    let offers = recorded_offers(40);
    let w = undisturbed(12, |w, i| {
        if i != usize::MAX {
            w.inject(TARGET, HOST, offers[i % offers.len()].clone());
        }
    });
    assert!(w.events().iter().all(|e| !matches!(
        e,
        HostEvent::Connected {
            reason: HandshakeReason::Rebooted,
            ..
        }
    )));
    assert!(w.target.stats().malformed + w.target.stats().unauthenticated < 1000);
}

#[test]
fn the_targets_current_offer_from_another_port_does_not_move_the_session() {
    let w = undisturbed(13, |w, i| {
        if i != usize::MAX
            && let Some(o) = w.target_datagrams(Channel::Control).last().cloned()
        {
            w.inject("10.0.0.2:50001", HOST, o.clone());
            w.inject(EVIL, HOST, o);
        }
    });
    assert!(
        w.host.stats().drops.stale_offers > 0,
        "{:?}",
        w.host.stats().drops
    );
}

#[test]
fn replayed_data_from_another_port_is_dropped_and_nothing_goes_there() {
    let w = undisturbed(14, |w, i| {
        if i != usize::MAX {
            for d in w
                .target_datagrams(Channel::Data)
                .iter()
                .rev()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
            {
                w.inject("10.0.0.2:50001", HOST, d.clone());
                w.inject(TARGET, HOST, d);
            }
        }
    });
    let d = w.host.stats().drops;
    assert!(d.other_address >= 100 && d.replayed_data >= 100, "{d:?}");
    assert!(
        w.host_to_elsewhere.iter().all(|(to, _)| to.port() != 50001),
        "nothing was sent to the other port"
    );
}

#[test]
fn junk_with_bad_tags_from_the_targets_address_forces_no_rekey() {
    let w = undisturbed(15, |w, i| {
        if i != usize::MAX
            && let Some(mut d) = w.target_datagrams(Channel::Data).last().cloned()
        {
            for k in 0..10u8 {
                let n = d.len();
                d[n - 1 - usize::from(k)] ^= 0x5a;
                w.inject(TARGET, HOST, d.clone());
            }
        }
    });
    assert!(w.host.stats().drops.unauthenticated_data >= 400);
}

#[test]
fn a_flood_leaves_the_session_with_the_real_target() {
    let offers = recorded_offers(8);
    let mut rng = SplitMix64::new(5);
    let w = undisturbed(16, |w, i| {
        let mut seen: Vec<Vec<u8>> = w.seen.iter().rev().take(50).map(|x| x.2.clone()).collect();
        seen.extend(offers.iter().cloned());
        let n = if i == usize::MAX { 500 } else { 200 };
        for k in 0..n {
            let port = 40000 + rng.below(2000) as u16;
            let from = if k % 3 == 0 {
                TARGET.to_string()
            } else {
                format!("10.0.0.66:{port}")
            };
            let mut d = seen[rng.below(seen.len() as u64) as usize].clone();
            if k % 2 == 0 {
                let j = rng.below(d.len() as u64) as usize;
                d[j] ^= 1 << rng.below(8);
            }
            w.inject(&from, HOST, d);
        }
    });
    assert!(
        w.host.stats().drops.total() > 5000,
        "{}",
        w.host.stats().drops.summary()
    );
}

#[test]
fn freezes_shorter_than_the_silence_limit_are_waited_out() {
    for secs in [3u64, 6] {
        let mut w = World::new(20 + secs, Link::clean());
        w.connect();
        w.break_in();
        w.frozen_until = Some(w.now + Duration::from_secs(secs));
        let started = w.now;
        let data = w.read(BASE + 4096, 3000).unwrap();
        assert!(check(BASE + 4096, &data));
        assert!(w.now - started >= Duration::from_secs(secs));
        assert_eq!(w.host.state().phase, Phase::Connected);
        assert_eq!(w.host.stats().silences, 0, "{secs} s");
    }
}

#[test]
fn a_long_freeze_is_declared_and_the_target_recovers() {
    let mut w = World::new(30, Link::clean());
    w.connect();
    w.break_in();
    w.frozen_until = Some(w.now + Duration::from_secs(12));
    let started = w.now;
    let r = w.read(BASE, 3000);
    let HostError::TargetGone { silent } = r.clone().unwrap_err() else {
        panic!("{r:?}")
    };
    let limit = host_config().silence_limit;
    assert!(
        silent >= limit && silent < limit + Duration::from_secs(1),
        "{silent:?}"
    );
    assert!(w.now - started <= limit + Duration::from_secs(1));
    assert!(
        r.unwrap_err()
            .to_string()
            .starts_with("the target stopped answering: nothing heard from it for 1")
    );
    assert_eq!(w.host.state().phase, Phase::Silent);
    // Refused at once while silent.
    let at = w.now;
    let r = w.read(BASE, 8);
    assert!(matches!(r, Err(HostError::TargetGone { .. })) && w.now == at);
    // It comes back: heard, same session, still stopped, reads work.
    assert!(
        w.run_until(Duration::from_secs(10), |w| w.host.state().phase
            == Phase::Connected)
    );
    assert!(
        w.events()
            .iter()
            .any(|e| matches!(e, HostEvent::Heard { .. }))
    );
    assert_eq!(w.host.state().run, RunState::Stopped);
    assert!(check(BASE, &w.read(BASE, 3000).unwrap()));
    assert_eq!(w.host.stats().handshakes_proven, 1);
}

#[test]
fn a_killed_target_is_declared_gone_within_the_bound() {
    let mut w = World::new(31, Link::clean());
    w.connect();
    w.break_in();
    w.dead = true;
    let started = w.now;
    let r = w.read(BASE, 100_000);
    assert!(matches!(r, Err(HostError::TargetGone { .. })), "{r:?}");
    assert!(w.now - started <= host_config().silence_limit + Duration::from_secs(1));
    // Queued work fails at once too.
    let a = w.host.submit(
        Op::Request {
            m: Manipulate::get_version(),
            timeout: None,
        },
        w.now,
    );
    assert!(matches!(
        w.completed(a),
        Some(Err(HostError::TargetGone { .. }))
    ));
}

#[test]
fn a_timeout_reports_the_real_time_waited() {
    let mut hc = host_config();
    hc.request_timeout = Duration::from_secs(2);
    hc.silence_limit = Duration::from_secs(60);
    let mut w = World::with(32, Link::clean(), hc, target_config());
    w.connect();
    w.break_in();
    w.frozen_until = Some(w.now + Duration::from_secs(5));
    let r = w.op(
        Op::Request {
            m: Manipulate::get_version(),
            timeout: None,
        },
        Duration::from_secs(10),
    );
    assert_eq!(
        r.unwrap_err().to_string(),
        "no answer from the target to DbgKdGetVersionApi within 2.0 s"
    );
}

#[test]
fn a_resume_preempts_a_read_in_flight() {
    let mut w = World::new(40, Link::clean());
    w.connect();
    w.break_in();
    // The target is paused: the read cannot be answered now.
    w.frozen_until = Some(w.now + Duration::from_secs(4));
    let read = w.host.submit(
        Op::ReadMemory {
            physical: false,
            address: BASE,
            len: 3000,
        },
        w.now,
    );
    let queued = w.host.submit(
        Op::Request {
            m: Manipulate::get_version(),
            timeout: None,
        },
        w.now,
    );
    w.run_until(Duration::from_millis(500), |_| false);
    let resume = w.host.preempt(
        Op::resume(status::DBG_CONTINUE),
        "the stop budget ran out",
        w.now,
    );
    assert!(matches!(
        w.completed(read),
        Some(Err(HostError::Preempted(ref why))) if why == "the stop budget ran out"
    ));
    assert!(matches!(
        w.completed(queued),
        Some(Err(HostError::Preempted(_)))
    ));
    // When the target answers again, the continue is what it gets.
    let mut r = None;
    assert!(w.run_until(Duration::from_secs(20), |w| {
        r = w.completed(resume);
        r.is_some()
    }));
    assert_eq!(r, Some(Ok(Done::Unit)));
    assert!(w.target.is_running());
    assert_eq!(w.host.state().run, RunState::Running);
}

/// A resume that pre-empts a read, at any moment of the read's exchange: the target runs
/// within one and a half round trips of it and the resume is told done within two (no
/// retransmission timeout, no probe), however the continue crosses the read's reply on the
/// wire. (A target waiting for the acknowledgement of its reply drops the continue and asks
/// for it again: half a round trip to it, one back and forth. As the stop ceiling counts from
/// the break-in sent, half a round trip before the target stopped, the target runs again
/// within the ceiling plus one round trip.)
#[test]
fn a_resume_preempting_a_read_lets_the_target_go_within_a_round_trip() {
    let mut link = Link::clean();
    link.delay = Duration::from_millis(50);
    let rtt = link.delay * 2;
    let mut failures = Vec::new();
    for offset_ms in (0..=120).step_by(5) {
        let mut w = World::new(41, link);
        w.connect();
        w.break_in();
        // A warm-up exchange so the host's retransmission timer has a measured round trip.
        let warm = w.host.submit(
            Op::ReadMemory {
                physical: false,
                address: BASE,
                len: 64,
            },
            w.now,
        );
        assert!(w.run_until(Duration::from_secs(5), |w| w.completed(warm).is_some()));
        let read = w.host.submit(
            Op::ReadMemory {
                physical: false,
                address: BASE,
                len: 3000,
            },
            w.now,
        );
        w.run_until(Duration::from_millis(offset_ms), |_| false);
        if w.completed(read).is_some() {
            continue;
        }
        let at = w.now;
        let resume = w.host.preempt(
            Op::resume(status::DBG_CONTINUE),
            "the stop ceiling ran out",
            w.now,
        );
        let mut ran = None;
        let mut done = None;
        w.run_until(Duration::from_secs(20), |w| {
            if ran.is_none() && w.target.is_running() {
                ran = Some(w.now - at);
            }
            if done.is_none() && w.completed(resume).is_some() {
                done = Some(w.now - at);
            }
            ran.is_some() && done.is_some()
        });
        if ran.is_none_or(|r| r > rtt * 3 / 2) || done.is_none_or(|d| d > rtt * 2) {
            failures.push(format!(
                "{offset_ms} ms: ran after {ran:?}, done after {done:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A target with a page of writable code that it runs: each poll while running it executes the
/// instruction at `HOT` (stopping there if it is `int 3`), a single step advances one byte and
/// stops, and module loads queued by the test stop it with a load-symbols report.
struct CodeTarget {
    code: Arc<Mutex<Vec<u8>>>,
    rip: u64,
    trace: bool,
    loads: Arc<Mutex<Vec<String>>>,
}

const CODE: u64 = BASE + 0x40_0000;
/// The code page and the module loads to report, shared with the test.
type Shared = (Arc<Mutex<Vec<u8>>>, Arc<Mutex<Vec<String>>>);
const HOT: u64 = CODE + 0x80;

impl CodeTarget {
    fn new() -> (CodeTarget, Shared) {
        let code = Arc::new(Mutex::new(
            (0..0x1000u64).map(|a| pattern(CODE + a) | 1).collect(),
        ));
        let loads = Arc::new(Mutex::new(Vec::new()));
        (
            CodeTarget {
                code: code.clone(),
                rip: CODE,
                trace: false,
                loads: loads.clone(),
            },
            (code, loads),
        )
    }

    fn at(&self, address: u64) -> Option<usize> {
        address
            .checked_sub(CODE)
            .filter(|o| *o < 0x1000)
            .map(|o| o as usize)
    }
}

impl TargetHandler for CodeTarget {
    fn version(&mut self) -> kdnet::api::GetVersion64 {
        kdnet::api::GetVersion64::windows_kernel(20348, BASE, BASE + 0x1000, 0)
    }
    fn read_virtual(&mut self, _cpu: u16, address: u64, buf: &mut [u8]) -> usize {
        let code = self.code.lock().unwrap();
        let mut n = 0;
        for (i, b) in buf.iter_mut().enumerate() {
            match self.at(address + i as u64) {
                Some(o) => *b = code[o],
                None => break,
            }
            n += 1;
        }
        n
    }
    fn write_virtual(&mut self, _cpu: u16, address: u64, data: &[u8]) -> usize {
        let mut code = self.code.lock().unwrap();
        let mut n = 0;
        for (i, b) in data.iter().enumerate() {
            match self.at(address + i as u64) {
                Some(o) => code[o] = *b,
                None => break,
            }
            n += 1;
        }
        n
    }
    fn read_physical(&mut self, _address: u64, _buf: &mut [u8]) -> usize {
        0
    }
    fn read_control_space(&mut self, _cpu: u16, _index: u64, _buf: &mut [u8]) -> Option<usize> {
        None
    }
    fn context(&mut self, _cpu: u16) -> Option<kdnet::api::Context> {
        let mut c = kdnet::api::Context::new();
        c.set_reg(kdnet::api::Reg::Rip, self.rip);
        Some(c)
    }
    fn stop_report(&mut self, _reason: StopReason) -> StateChange64 {
        let mut sc = breakpoint(self.rip);
        sc.control.instruction_count = 16;
        sc
    }
    fn resumed_with(&mut self, how: Resume) {
        self.trace = how.trace;
    }
    fn poll(&mut self, _now: Instant) -> Option<Activity> {
        if std::mem::take(&mut self.trace) {
            self.rip += 1;
            let mut sc = breakpoint(self.rip);
            if let StateEvent::Exception(x) = &mut sc.event {
                x.code = status::SINGLE_STEP;
            }
            return Some(Activity::Stop(sc));
        }
        if let Some(path) = self.loads.lock().unwrap().pop() {
            let mut sc = breakpoint(0);
            sc.new_state = 0x3031;
            sc.event = StateEvent::LoadSymbols(LoadSymbols64 {
                base: BASE + 0x80_0000,
                process_id: 0,
                checksum: 0,
                size: 0x1000,
                unload: false,
                path,
            });
            return Some(Activity::Stop(sc));
        }
        let o = self.at(HOT)?;
        if self.code.lock().unwrap()[o] == 0xCC {
            self.rip = HOT;
            let mut sc = breakpoint(HOT);
            sc.control.instruction_count = 16;
            return Some(Activity::Stop(sc));
        }
        None
    }
}

fn code_world(seed: u64, link: Link) -> (World, Shared) {
    let (t, (code, loads)) = CodeTarget::new();
    let w = World::with_handler(seed, link, host_config(), target_config(), Box::new(t));
    (w, (code, loads))
}

fn request(w: &mut World, m: Manipulate) -> Manipulate {
    match w.op(Op::Request { m, timeout: None }, Duration::from_secs(60)) {
        Ok(Done::Reply(r)) => r,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_breakpoint_is_an_int3_in_memory_and_the_kernel_removes_it_when_it_reports_there() {
    let (mut w, (code, _)) = code_world(21, Link::clean());
    w.connect();
    w.break_in();
    let original = code.lock().unwrap()[0x80];
    assert_ne!(original, 0xCC);
    // Written: memory holds int 3, which a read shows, as Windows' does.
    let r = request(&mut w, Manipulate::write_breakpoint(HOT));
    assert_eq!(r.return_status(), status::SUCCESS);
    let handle = r.u32(0x18);
    assert!(handle >= 1);
    assert_eq!(w.read(HOT, 1).unwrap(), vec![0xCC]);
    // The same address again, and an address that cannot be read, are refused.
    let again = request(&mut w, Manipulate::write_breakpoint(HOT));
    assert_eq!(again.return_status(), status::UNSUCCESSFUL);
    let nowhere = request(&mut w, Manipulate::write_breakpoint(BASE + 0x7000_0000));
    assert_eq!(nowhere.return_status(), status::UNSUCCESSFUL);
    // Restored: the byte is back.
    let r = request(&mut w, Manipulate::restore_breakpoint(handle));
    assert_eq!(r.return_status(), status::SUCCESS);
    assert_eq!(w.read(HOT, 1).unwrap(), vec![original]);
    // Written again and run into: the report's instruction stream shows the original byte,
    // the kernel took the breakpoint out of its table, memory is whole again.
    let handle = request(&mut w, Manipulate::write_breakpoint(HOT)).u32(0x18);
    assert_eq!(
        w.op(Op::resume(status::DBG_CONTINUE), Duration::from_secs(10)),
        Ok(Done::Unit)
    );
    assert!(w.run_until(Duration::from_secs(5), |w| w.host.state().run
        == RunState::Stopped));
    let stop = w.host.state().stop.clone().unwrap();
    assert_eq!(stop.program_counter, HOT);
    assert_eq!(stop.control.instruction_stream[0], original);
    assert_eq!(code.lock().unwrap()[0x80], original);
    assert!(w.target.breakpoints().is_empty());
    let r = request(&mut w, Manipulate::restore_breakpoint(handle));
    assert_eq!(r.return_status(), status::UNSUCCESSFUL);
}

#[test]
fn breakpoints_survive_a_rekey_in_the_kernel_and_in_the_session() {
    let (mut w, (code, _)) = code_world(26, Link::clean());
    w.connect();
    w.break_in();
    let original = code.lock().unwrap()[0x80];
    let handle = request(&mut w, Manipulate::write_breakpoint(HOT)).u32(0x18);
    assert_eq!(w.host.state().breakpoints, vec![(handle, HOT)]);
    // The target's debugger transport starts over (same boot): a new handshake, new keys.
    w.target.disconnect();
    assert!(
        w.run_until(Duration::from_secs(10), |w| w.events().iter().any(
            |e| matches!(
                e,
                HostEvent::Connected {
                    reason: HandshakeReason::Rekeyed,
                    ..
                }
            )
        ))
    );
    // The kernel keeps its table and the session its list: the breakpoint is still there,
    // still hit, and still taken out by its handle.
    assert_eq!(w.host.state().breakpoints, vec![(handle, HOT)]);
    w.break_in();
    assert_eq!(w.read(HOT, 1).unwrap(), vec![0xCC]);
    let r = request(&mut w, Manipulate::restore_breakpoint(handle));
    assert_eq!(r.return_status(), status::SUCCESS);
    assert_eq!(w.read(HOT, 1).unwrap(), vec![original]);
    assert!(w.host.state().breakpoints.is_empty());
    let handle = request(&mut w, Manipulate::write_breakpoint(HOT)).u32(0x18);
    w.target.disconnect();
    assert!(w.run_until(Duration::from_secs(10), |w| {
        w.events()
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    HostEvent::Connected {
                        reason: HandshakeReason::Rekeyed,
                        ..
                    }
                )
            })
            .count()
            >= 2
    }));
    w.break_in();
    assert_eq!(
        w.op(Op::resume(status::DBG_CONTINUE), Duration::from_secs(10)),
        Ok(Done::Unit)
    );
    assert!(w.run_until(Duration::from_secs(5), |w| w.host.state().run
        == RunState::Stopped));
    assert_eq!(w.host.state().stop.clone().unwrap().program_counter, HOT);
    // The kernel took it out where it reported: the session's list says so.
    assert!(w.host.state().breakpoints.iter().all(|(h, _)| *h != handle));
}

#[test]
fn single_steps_advance_once_each_even_when_acknowledgements_are_lost() {
    for seed in [22, 23, 24, 25] {
        steps_through_loss(seed);
    }
}

fn steps_through_loss(seed: u64) {
    let mut link = Link::clean();
    link.loss = 0.15;
    let (mut w, _) = code_world(seed, link);
    w.connect();
    w.break_in();
    let start = w.host.state().stop.clone().unwrap().program_counter;
    for n in 1..=40u64 {
        let stops = w.host.state().stops;
        let r = w.op(
            Op::Resume {
                status: status::DBG_CONTINUE,
                trace: true,
                dr7: 0x400,
            },
            Duration::from_secs(60),
        );
        assert_eq!(r, Ok(Done::Unit), "step {n}");
        assert!(
            w.run_until(Duration::from_secs(30), |w| w.host.state().stops > stops
                && w.host.state().run == RunState::Stopped),
            "step {n} never stopped: host {:?} outputs {:?} target running {} {:?}",
            w.host.state(),
            &w.outputs[w.outputs.len().saturating_sub(6)..],
            w.target.is_running(),
            w.target.stats()
        );
        let pc = w.host.state().stop.clone().unwrap().program_counter;
        assert_eq!(pc, start + n, "step {n} moved once");
    }
    assert!(w.host.stats().failed > 0 || w.host.stats().retransmits > 0);
}

#[test]
fn module_loads_are_reported_and_continued_unless_asked_to_stop() {
    let (mut w, (_, loads)) = code_world(23, Link::clean());
    w.connect();
    w.run_until(Duration::from_secs(1), |_| false);
    loads
        .lock()
        .unwrap()
        .push("\\SystemRoot\\System32\\drivers\\bindflt.sys".into());
    assert!(
        w.run_until(Duration::from_secs(5), |w| w.events().iter().any(
            |e| matches!(e, HostEvent::Module(l) if l.path.ends_with("bindflt.sys"))
        ))
    );
    assert!(w.run_until(Duration::from_secs(5), |w| w.target.is_running()));
    assert!(
        !w.events()
            .iter()
            .any(|e| matches!(e, HostEvent::StateChange(_))),
        "a load nobody asked to stop on is not a stop"
    );
    w.host.set_module_breaks(ModuleBreaks {
        load: vec!["CimFS".into()],
        unload: vec![],
    });
    loads
        .lock()
        .unwrap()
        .push("\\SystemRoot\\System32\\drivers\\CimFS.SYS".into());
    assert!(w.run_until(Duration::from_secs(5), |w| {
        w.events()
            .iter()
            .any(|e| matches!(e, HostEvent::StateChange(_)))
    }));
    assert!(!w.target.is_running());
    assert_eq!(w.host.state().run, RunState::Stopped);
    let stop = w.host.state().stop.clone().unwrap();
    assert!(matches!(&stop.event, StateEvent::LoadSymbols(l) if l.path.ends_with("CimFS.SYS")));
    assert!(
        w.events()
            .iter()
            .any(|e| matches!(e, HostEvent::StateChange(_)))
    );
}
