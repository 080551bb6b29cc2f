//! An impaired link between a target and a host: a UDP relay on loopback with seeded latency,
//! jitter, loss, duplication, reordering and corruption. The target is configured to send to
//! [`Relay::target_side`]; the relay forwards to the host from [`Relay::host_side`], and the host's
//! answers travel back the same way.

//!
//! The relay runs on its own threads (not the async runtime) so that delays are kept to tens of
//! microseconds rather than the runtime timer's millisecond.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::rng::SplitMix64;

/// How the link misbehaves. Probabilities are per datagram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConfig {
    /// One-way delay.
    pub latency: Duration,
    /// Extra random delay, uniform in `0..=jitter`.
    pub jitter: Duration,
    /// Probability a datagram is lost.
    pub loss: f64,
    /// Probability a datagram arrives twice.
    pub duplicate: f64,
    /// Probability a datagram is held back (by up to 4 × latency + 2 ms) so later ones pass it.
    pub reorder: f64,
    /// Probability one byte of a datagram is flipped.
    pub corrupt: f64,
    /// Seed of the random choices.
    pub seed: u64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            corrupt: 0.0,
            seed: 1,
        }
    }
}

/// What the relay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Datagrams received from either side.
    pub received: u64,
    /// Datagrams delivered (duplicates count twice).
    pub delivered: u64,
    /// Lost on purpose.
    pub lost: u64,
    /// Duplicated.
    pub duplicated: u64,
    /// Held back to reorder.
    pub reordered: u64,
    /// Corrupted.
    pub corrupted: u64,
}

/// A running relay. Dropping it stops it.
#[derive(Debug)]
pub struct Relay {
    target_side: SocketAddr,
    host_side: SocketAddr,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    stop: AtomicBool,
}

#[derive(Debug)]
struct Queue {
    heap: BinaryHeap<Reverse<Pending>>,
    rng: SplitMix64,
    cfg: LinkConfig,
    seq: u64,
    target: Option<SocketAddr>,
    stats: LinkStats,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    at: Instant,
    seq: u64,
    to_host: bool,
    data: Vec<u8>,
}

impl Relay {
    /// Starts a relay to `host`, listening on the host's IP (loopback in tests).
    pub async fn start(config: LinkConfig, host: SocketAddr) -> std::io::Result<Relay> {
        Self::start_blocking(config, host)
    }

    /// The same, from non-async code.
    pub fn start_blocking(config: LinkConfig, host: SocketAddr) -> std::io::Result<Relay> {
        let ip = host.ip();
        let front = UdpSocket::bind(SocketAddr::new(ip, 0))?;
        let back = UdpSocket::bind(SocketAddr::new(ip, 0))?;
        // Receivers wake up regularly to notice a stop.
        front.set_read_timeout(Some(Duration::from_millis(50)))?;
        back.set_read_timeout(Some(Duration::from_millis(50)))?;
        let target_side = front.local_addr()?;
        let host_side = back.local_addr()?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                heap: BinaryHeap::new(),
                rng: SplitMix64::new(config.seed),
                cfg: config,
                seq: 0,
                target: None,
                stats: LinkStats::default(),
            }),
            ready: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let front_tx = front.try_clone()?;
        let back_tx = back.try_clone()?;
        for (sock, to_host) in [(front, true), (back, false)] {
            let sh = shared.clone();
            std::thread::Builder::new()
                .name("kdnet-link-rx".into())
                .spawn(move || receive(sock, to_host, &sh))?;
        }
        let sh = shared.clone();
        std::thread::Builder::new()
            .name("kdnet-link-tx".into())
            .spawn(move || deliver(front_tx, back_tx, host, &sh))?;
        Ok(Relay {
            target_side,
            host_side,
            shared,
        })
    }

    /// Where the target should send (its configured host address).
    pub fn target_side(&self) -> SocketAddr {
        self.target_side
    }

    /// The address the host sees the target at.
    pub fn host_side(&self) -> SocketAddr {
        self.host_side
    }

    /// Counters so far.
    pub fn stats(&self) -> LinkStats {
        self.shared.lock().stats
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.ready.notify_all();
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn receive(sock: UdpSocket, to_host: bool, shared: &Shared) {
    let mut buf = vec![0u8; 65_536];
    while !shared.stop.load(Ordering::Relaxed) {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(_) => continue,
        };
        let now = Instant::now();
        let mut q = shared.lock();
        if to_host {
            q.target = Some(from);
        }
        q.stats.received += 1;
        let cfg = q.cfg;
        if q.rng.chance(cfg.loss) {
            q.stats.lost += 1;
            continue;
        }
        let copies = if q.rng.chance(cfg.duplicate) {
            q.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut d = buf[..n].to_vec();
            if q.rng.chance(cfg.corrupt) && !d.is_empty() {
                let i = q.rng.below(d.len() as u64) as usize;
                d[i] ^= 1 << q.rng.below(8);
                q.stats.corrupted += 1;
            }
            let jitter = q.rng.below(cfg.jitter.as_micros() as u64 + 1);
            let mut delay = cfg.latency + Duration::from_micros(jitter);
            if q.rng.chance(cfg.reorder) {
                q.stats.reordered += 1;
                let hold = cfg.latency * 4 + Duration::from_millis(2);
                delay += Duration::from_micros(q.rng.below(hold.as_micros() as u64 + 1));
            }
            q.seq += 1;
            let seq = q.seq;
            q.heap.push(Reverse(Pending {
                at: now + delay,
                seq,
                to_host,
                data: d,
            }));
        }
        drop(q);
        shared.ready.notify_one();
    }
}

fn deliver(front: UdpSocket, back: UdpSocket, host: SocketAddr, shared: &Shared) {
    let mut q = shared.lock();
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let now = Instant::now();
        let due = q.heap.peek().map(|Reverse(p)| p.at);
        match due {
            Some(at) if at <= now => {
                let Some(Reverse(p)) = q.heap.pop() else {
                    continue;
                };
                let target = q.target;
                drop(q);
                let sent = if p.to_host {
                    back.send_to(&p.data, host).is_ok()
                } else if let Some(t) = target {
                    front.send_to(&p.data, t).is_ok()
                } else {
                    false
                };
                q = shared.lock();
                if sent {
                    q.stats.delivered += 1;
                }
            }
            Some(at) => {
                q = shared
                    .ready
                    .wait_timeout(q, at - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            None => {
                q = shared
                    .ready
                    .wait_timeout(q, Duration::from_millis(50))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
    }
}
