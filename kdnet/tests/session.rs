//! Host and target sessions over real UDP on loopback, directly and through an impaired link.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kdnet::api::{Reg, status};
use kdnet::host::{Host, HostConfig, HostError, HostEvent, RunState};
use kdnet::kd::{HostKdConfig, TargetKdConfig};
use kdnet::link::{LinkConfig, Relay};
use kdnet::target::{TargetConfig, TargetHandle};
use kdnet::wire::{HandshakeReason, Key};

mod common;
use common::{BASE, PatternTarget, SIZE, pattern};

fn fast_host(bind: SocketAddr, key: &str) -> HostConfig {
    let mut c = HostConfig::new(bind, Key::parse(key).unwrap());
    c.kd = HostKdConfig {
        initial_rto: Duration::from_millis(20),
        min_rto: Duration::from_millis(2),
        max_rto: Duration::from_millis(200),
        max_sends: 40,
        reply_nudges: 2,
    };
    c.request_timeout = Duration::from_secs(20);
    c
}

async fn target_to(host: SocketAddr, key: &str, prints: Arc<Mutex<Vec<String>>>) -> TargetHandle {
    let mut c = TargetConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        host,
        Key::parse(key).unwrap(),
    );
    c.kd = TargetKdConfig {
        rto: Duration::from_millis(10),
        max_rto: Duration::from_millis(200),
        max_sends: 40,
    };
    c.offer_interval = Duration::from_millis(300);
    TargetHandle::spawn(
        c,
        Box::new(PatternTarget {
            prints,
            rip: BASE + 0x1234,
        }),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_break_in_read_continue() {
    let host = Host::bind(fast_host("127.0.0.1:0".parse().unwrap(), "1.2.3.4"))
        .await
        .unwrap();
    let mut events = host.subscribe();
    let prints = Arc::new(Mutex::new(Vec::new()));
    let target = target_to(host.local_addr(), "1.2.3.4", prints.clone()).await;
    let peer = host.wait_connected(Duration::from_secs(5)).await.unwrap();
    assert_eq!(peer, target.local_addr());
    // DbgPrint while running reaches the host. A print made before the target has taken the
    // host's answer to its offer is dropped (no debugger yet), so it prints until one arrives.
    let mut text = None;
    for _ in 0..10 {
        prints
            .lock()
            .unwrap()
            .push("hello from the target\n".to_string());
        let got = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                if let Ok(HostEvent::DebugPrint { text, .. }) = events.recv().await {
                    return text;
                }
            }
        })
        .await;
        if let Ok(t) = got {
            text = Some(t);
            break;
        }
    }
    let text = text.expect("no print arrived");
    assert_eq!(text, "hello from the target\n");
    // Requests are refused while it runs.
    assert_eq!(host.get_version().await, Err(HostError::TargetRunning));
    let sc = host.break_in(Duration::from_secs(5)).await.unwrap();
    assert_eq!(sc.exception().unwrap().code, status::BREAKPOINT);
    assert!(!target.is_running());
    let v = host.get_version().await.unwrap();
    assert_eq!((v.minor_version, v.kern_base), (20348, BASE));
    // A read larger than one transfer is split and reassembled.
    let data = host.read_virtual(BASE + 100, 10_000).await.unwrap();
    assert!(
        data.iter()
            .enumerate()
            .all(|(i, b)| *b == pattern(BASE + 100 + i as u64))
    );
    // A read running off the end of memory returns what was readable and where it failed.
    let err = host.read_virtual(BASE + SIZE - 10, 100).await.unwrap_err();
    let HostError::Memory { address, read, .. } = err else {
        panic!("{err:?}")
    };
    assert_eq!(address, BASE + SIZE);
    assert_eq!(read.len(), 10);
    let kpcr = host.read_control_space(0, 0, 8).await.unwrap();
    assert_eq!(
        u64::from_le_bytes(kpcr.try_into().unwrap()),
        BASE + 0x10_0000
    );
    // Step over the breakpoint: SetContext with Rip + 1, read back.
    let mut ctx = host.get_context(0).await.unwrap();
    assert_eq!(ctx.reg(Reg::Rip), BASE + 0x1234);
    ctx.set_reg(Reg::Rip, ctx.reg(Reg::Rip) + 1);
    host.set_context(0, &ctx).await.unwrap();
    assert_eq!(
        host.get_context(0).await.unwrap().reg(Reg::Rip),
        BASE + 0x1235
    );
    assert_eq!(
        host.get_context_ex(0, 0xF8, 8).await.unwrap(),
        (BASE + 0x1235).to_le_bytes()
    );
    // Search finds a pattern placed at a known address.
    let needle: Vec<u8> = (0..6).map(|i| pattern(BASE + 5000 + i)).collect();
    assert_eq!(
        host.search_memory(BASE + 4000, 4096, &needle)
            .await
            .unwrap(),
        Some(BASE + 5000)
    );
    host.resume(status::DBG_CONTINUE).await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), async {
        while !target.is_running() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(host.state().run, RunState::Running);
    let stats = target.shutdown().await;
    assert_eq!(stats.handshakes, 1);
    assert!(stats.round_trips() >= 10);
    assert_eq!(
        host.stats().round_trips,
        stats.round_trips(),
        "the continue included"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_reads_through_a_lossy_link() {
    let host = Host::bind(fast_host("127.0.0.1:0".parse().unwrap(), "9.8.7.6"))
        .await
        .unwrap();
    let relay = Relay::start(
        LinkConfig {
            latency: Duration::from_micros(50),
            jitter: Duration::from_micros(300),
            loss: std::env::var("LOSS")
                .map(|v| v.parse().unwrap())
                .unwrap_or(0.10),
            duplicate: 0.05,
            reorder: 0.05,
            corrupt: 0.0,
            seed: 7,
        },
        host.local_addr(),
    )
    .await
    .unwrap();
    let target = target_to(
        relay.target_side(),
        "9.8.7.6",
        Arc::new(Mutex::new(Vec::new())),
    )
    .await;
    host.wait_connected(Duration::from_secs(10)).await.unwrap();
    if let Err(e) = host.break_in(Duration::from_secs(10)).await {
        panic!(
            "break-in: {e}\nhost {:?}\n{:?}\nlink {:?}\ntarget {}",
            host.stats(),
            host.state(),
            relay.stats(),
            target.stats().report()
        );
    }
    let mut rng = kdnet::rng::SplitMix64::new(42);
    let started = Instant::now();
    for i in 0..10_000 {
        let a = BASE + rng.below(SIZE - 256);
        let n = 1 + rng.below(200) as usize;
        let data = tokio::time::timeout(Duration::from_secs(30), host.read_virtual(a, n))
            .await
            .unwrap_or_else(|_| panic!("read {i} hung"))
            .unwrap_or_else(|e| panic!("read {i}: {e}"));
        assert_eq!(data.len(), n);
        assert!(
            data.iter()
                .enumerate()
                .all(|(k, b)| *b == pattern(a + k as u64)),
            "read {i} at {a:#x} returned wrong bytes"
        );
    }
    let hs = host.stats();
    let ls = relay.stats();
    let ts = target.shutdown().await;
    println!(
        "10000 reads in {:?}: {} round trips, {} KD retransmits, {} duplicates; link lost {} duplicated {} reordered {} of {}; target served {} requests",
        started.elapsed(),
        hs.round_trips,
        hs.retransmits,
        hs.duplicates,
        ls.lost,
        ls.duplicated,
        ls.reordered,
        ls.received,
        ts.round_trips()
    );
    assert!(hs.round_trips >= 10_000);
    assert!(ls.lost > 1000 && ls.duplicated > 500);
    assert_eq!(hs.failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_is_reported_within_one_offer_interval() {
    let host = Host::bind(HostConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        Key::parse("1.1.1.1").unwrap(),
    ))
    .await
    .unwrap();
    let mut events = host.subscribe();
    // A target with the real 3-second offer interval and another key.
    let c = TargetConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        host.local_addr(),
        Key::parse("2.2.2.2").unwrap(),
    );
    let target = TargetHandle::spawn(
        c,
        Box::new(PatternTarget {
            prints: Arc::new(Mutex::new(Vec::new())),
            rip: 0,
        }),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let ev = tokio::time::timeout(Duration::from_secs(3), events.recv())
        .await
        .expect("reported within 3 s")
        .unwrap();
    assert_eq!(
        ev,
        HostEvent::KeyMismatch {
            from: target.local_addr()
        }
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    let err = host
        .wait_connected(Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("key is probably wrong"), "{err}");
    target.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_says_what_was_tried() {
    let host = Host::bind(HostConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        Key::parse("1.1.1.1").unwrap(),
    ))
    .await
    .unwrap();
    let err = host
        .wait_connected(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no KDNET offer arrived"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_replaces_the_session() {
    let host = Host::bind(fast_host("127.0.0.1:0".parse().unwrap(), "5.5.5.5"))
        .await
        .unwrap();
    let mut events = host.subscribe();
    let target = target_to(
        host.local_addr(),
        "5.5.5.5",
        Arc::new(Mutex::new(Vec::new())),
    )
    .await;
    host.wait_connected(Duration::from_secs(5)).await.unwrap();
    host.break_in(Duration::from_secs(5)).await.unwrap();
    host.get_version().await.unwrap();
    // The debugger asks for a reboot; the target comes back with a new boot nonce.
    host.reboot().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(HostEvent::Connected {
                reason: HandshakeReason::Rebooted,
                ..
            }) = events.recv().await
            {
                return;
            }
        }
    })
    .await
    .expect("a handshake for the new boot");
    // The new session works: break in and read.
    host.break_in(Duration::from_secs(5)).await.unwrap();
    let d = host.read_virtual(BASE, 16).await.unwrap();
    assert_eq!(d[0], pattern(BASE));
    let s = target.shutdown().await;
    assert_eq!((s.reboots, s.handshakes), (1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_replies_make_the_host_step_down() {
    let host = Host::bind({
        let mut c = fast_host("127.0.0.1:0".parse().unwrap(), "3.3.3.3");
        c.probe_timeout = Duration::from_millis(300);
        c
    })
    .await
    .unwrap();
    let mut c = TargetConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        host.local_addr(),
        Key::parse("3.3.3.3").unwrap(),
    );
    c.kd.rto = Duration::from_millis(10);
    c.offer_interval = Duration::from_millis(300);
    // One Ethernet frame's worth of UDP payload.
    c.max_datagram = Some(1472);
    let target = TargetHandle::spawn(
        c,
        Box::new(PatternTarget {
            prints: Arc::new(Mutex::new(Vec::new())),
            rip: 0,
        }),
    )
    .await
    .unwrap();
    host.wait_connected(Duration::from_secs(5)).await.unwrap();
    host.break_in(Duration::from_secs(5)).await.unwrap();
    let data = host.read_virtual(BASE, 20_000).await.unwrap();
    assert!(
        data.iter()
            .enumerate()
            .all(|(i, b)| *b == pattern(BASE + i as u64))
    );
    assert_eq!(host.max_transfer(), 1360, "remembered for this target");
    let before = host.stats().round_trips;
    host.read_virtual(BASE, 20_000).await.unwrap();
    assert_eq!(host.stats().round_trips - before, 20_000u64.div_ceil(1360));
    let s = target.shutdown().await;
    assert!(s.oversize_dropped > 0);
}

/// Connecting and breaking in across lossy, duplicating links, many seeds: a duplicated offer
/// once made the two ends hold different data keys for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_break_in_over_many_lossy_links() {
    for seed in 0..16 {
        let host = Host::bind(fast_host("127.0.0.1:0".parse().unwrap(), "9.8.7.6"))
            .await
            .unwrap();
        let relay = Relay::start(
            LinkConfig {
                latency: Duration::from_micros(50),
                jitter: Duration::from_micros(300),
                loss: 0.15,
                duplicate: 0.10,
                reorder: 0.05,
                corrupt: 0.02,
                seed: 1000 + seed,
            },
            host.local_addr(),
        )
        .await
        .unwrap();
        let target = target_to(
            relay.target_side(),
            "9.8.7.6",
            Arc::new(Mutex::new(Vec::new())),
        )
        .await;
        host.wait_connected(Duration::from_secs(10)).await.unwrap();
        if let Err(e) = host.break_in(Duration::from_secs(5)).await {
            panic!(
                "seed {seed} break-in: {e}\nhost {:?}\n{:?}\nlink {:?}\ntarget {}",
                host.stats(),
                host.state(),
                relay.stats(),
                target.stats().report()
            );
        }
        assert_eq!(
            host.read_virtual(BASE + 8, 8).await.unwrap()[0],
            pattern(BASE + 8)
        );
        target.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_survives_lost_acknowledgements() {
    // A running kernel acknowledges nothing: when the continue's ACK is lost, the host must
    // find out that the target runs rather than report a failure (or leave it stopped).
    let mut config = fast_host("127.0.0.1:0".parse().unwrap(), "4.3.2.1");
    config.kd.max_sends = 10;
    config.kd.max_rto = Duration::from_millis(50);
    config.probe_timeout = Duration::from_millis(300);
    let host = Host::bind(config).await.unwrap();
    let relay = Relay::start(
        LinkConfig {
            latency: Duration::from_micros(50),
            loss: 0.3,
            seed: 77,
            ..LinkConfig::default()
        },
        host.local_addr(),
    )
    .await
    .unwrap();
    let target = target_to(
        relay.target_side(),
        "4.3.2.1",
        Arc::new(Mutex::new(Vec::new())),
    )
    .await;
    host.wait_connected(Duration::from_secs(10)).await.unwrap();
    for round in 0..40 {
        if round >= 8 && host.stats().failed >= 2 {
            break;
        }
        host.break_in(Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("round {round} break-in: {e}"));
        assert!(!target.is_running());
        host.resume(status::DBG_CONTINUE)
            .await
            .unwrap_or_else(|e| panic!("round {round} continue: {e}"));
        assert_eq!(host.state().run, RunState::Running);
        assert!(target.is_running(), "round {round}: the target really runs");
    }
    assert!(
        host.stats().failed >= 1,
        "no acknowledgement was lost, so the case was not exercised"
    );
    target.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debugger_attaching_to_a_stopped_target_learns_it_is_stopped() {
    // One debugger breaks in and leaves without letting the target go on.
    let first = Host::bind(fast_host("127.0.0.1:0".parse().unwrap(), "1.2.3.4"))
        .await
        .unwrap();
    let bind = first.local_addr();
    let target = target_to(bind, "1.2.3.4", Arc::new(Mutex::new(Vec::new()))).await;
    first.wait_connected(Duration::from_secs(5)).await.unwrap();
    let stop = first.break_in(Duration::from_secs(5)).await.unwrap();
    first.get_version().await.unwrap();
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!target.is_running());
    // The next one does not know; a RESET makes the target repeat why it stopped, and the
    // repeat of the same report is not taken for a new stop.
    let second = Host::bind(fast_host(bind, "1.2.3.4")).await.unwrap();
    second.wait_connected(Duration::from_secs(5)).await.unwrap();
    let again = second
        .probe_stopped(Duration::from_secs(2))
        .await
        .expect("the stopped target answers the RESET");
    assert_eq!(again, stop);
    assert_eq!(second.state().stops, 1);
    second.get_version().await.unwrap();
    assert_eq!(
        second.state().stops,
        1,
        "a repeated report is not a new stop"
    );
    // break_in on it returns at once, and it still serves requests.
    assert_eq!(second.break_in(Duration::from_secs(1)).await.unwrap(), stop);
    second.resume(status::DBG_CONTINUE).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(target.is_running());
    // A running target does not answer the probe.
    let third = Host::bind(fast_host("127.0.0.1:0".parse().unwrap(), "1.2.3.4"))
        .await
        .unwrap();
    let t2 = target_to(
        third.local_addr(),
        "1.2.3.4",
        Arc::new(Mutex::new(Vec::new())),
    )
    .await;
    third.wait_connected(Duration::from_secs(5)).await.unwrap();
    assert!(
        third
            .probe_stopped(Duration::from_millis(500))
            .await
            .is_none()
    );
    assert!(t2.is_running());
}
