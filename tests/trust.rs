//! The debugger process against another machine on the network that sees the traffic but does
//! not hold the key (127.0.0.2 plays it), over real UDP on loopback. A relay between the
//! simulated target and the debugger records every datagram, so the attacker can replay them,
//! and injects from the target's own address. Nothing it sends may steer the session: the
//! answers are those of an undisturbed run, and the drops are counted by cause.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Sim, free_udp_port, json_lines, kdnet, temp_dir};
use kdnet::wire::{Key, TargetWire, TargetWireConfig};

const KEY: &str = "3.1.4.1";
const WORK: &str = "lm; vertarget; !locks; !process 0 0";

/// Forwards between a simulated target and the debugger, recording what the target sends.
struct Relay {
    socket: UdpSocket,
    /// Where the target's datagrams go.
    debugger: SocketAddr,
    /// Datagrams the target sent, in order.
    from_target: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    /// A relay that forwards the target's datagrams to `debugger`.
    fn start(debugger: SocketAddr) -> Relay {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let from_target = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, rec, st) = (
            socket.try_clone().unwrap(),
            from_target.clone(),
            stop.clone(),
        );
        let thread = std::thread::spawn(move || {
            let mut target: Option<SocketAddr> = None;
            let mut buf = vec![0u8; 65536];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, from)) = s.recv_from(&mut buf) else {
                    continue;
                };
                if from == debugger {
                    if let Some(t) = target {
                        let _ = s.send_to(&buf[..n], t);
                    }
                } else {
                    target = Some(from);
                    rec.lock().unwrap().push(buf[..n].to_vec());
                    let _ = s.send_to(&buf[..n], debugger);
                }
            }
        });
        Relay {
            socket,
            debugger,
            from_target,
            stop,
            thread: Some(thread),
        }
    }

    fn port(&self) -> u16 {
        self.socket.local_addr().unwrap().port()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Offers a target with this key sent in an earlier boot.
fn recorded_offers(to: SocketAddr, n: usize) -> Vec<Vec<u8>> {
    let now = Instant::now();
    let mut old = TargetWire::new(
        TargetWireConfig {
            key: Key::parse(KEY).unwrap(),
            version: 4,
            local: "127.0.0.1:50000".parse().unwrap(),
            host: to,
        },
        now,
        [0x5a; 32],
    );
    (0..n)
        .map(|i| {
            old.offer(now + Duration::from_secs(3 * i as u64), to)
                .datagram
        })
        .collect()
}

/// The attacker: sockets on another machine (127.0.0.2) and on another port of the target's.
struct Attacker {
    far: UdpSocket,
    near: UdpSocket,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Attacker {
    fn new() -> Attacker {
        let far = UdpSocket::bind("127.0.0.2:0").expect("127.0.0.2 is on loopback");
        let near = UdpSocket::bind("127.0.0.1:0").unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        // Keep what the debugger sends to the attacker's sockets.
        for s in [&far, &near] {
            let s = s.try_clone().unwrap();
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let (rec, st) = (received.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !st.load(Ordering::Relaxed) {
                    if let Ok((n, _)) = s.recv_from(&mut buf) {
                        rec.lock().unwrap().push(buf[..n].to_vec());
                    }
                }
            }));
        }
        Attacker {
            far,
            near,
            received,
            stop,
            threads,
        }
    }

    /// What the debugger sent the attacker: (control datagrams, data datagrams).
    fn got(&self) -> (usize, usize) {
        let r = self.received.lock().unwrap();
        let control = r.iter().filter(|d| d.get(5) == Some(&1)).count();
        (control, r.len() - control)
    }
}

impl Drop for Attacker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// `kdnet run` on `port`, its stderr read line by line as it comes.
fn start_run(port: u16, extra: &[&str]) -> (Child, Arc<Mutex<String>>) {
    let mut child = kdnet()
        .args(["run", "--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--key-env", "KDNET_TRUST_KEY", "--connect-timeout", "60s"])
        .args(["--json", "-v", "--max-seconds", "120", "-c", WORK])
        .args(extra)
        .env("KDNET_TRUST_KEY", KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().unwrap();
    let e = err.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut s = e.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    (child, err)
}

fn wait_for(text: &Arc<Mutex<String>>, what: &str, within: Duration) {
    let start = Instant::now();
    while !text.lock().unwrap().contains(what) {
        assert!(
            start.elapsed() < within,
            "no {what:?} in:\n{}",
            text.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The results of the work, without their costs (retransmissions change those) and with the
/// target's port (each run has its own) as `PORT`.
fn results(stdout: &str, port: u16) -> Vec<serde_json::Value> {
    let stdout = stdout.replace(&format!("127.0.0.1:{port}"), "127.0.0.1:PORT");
    json_lines(&stdout)
        .into_iter()
        .map(|mut v| {
            if let Some(o) = v.as_object_mut() {
                o.remove("cost");
            }
            v
        })
        .collect()
}

/// One run of the work against a fresh simulated target behind a relay; `attack` is called
/// with the relay before the target starts (`None`) and then repeatedly while the work runs.
fn session(
    attack: &mut dyn FnMut(&Relay, Option<&Attacker>, bool),
    attacker: Option<&Attacker>,
) -> (Vec<serde_json::Value>, String) {
    let port = free_udp_port();
    let debugger: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let relay = Relay::start(debugger);
    let (mut run, err) = start_run(port, &[]);
    wait_for(&err, "Waiting to reconnect", Duration::from_secs(60));
    attack(&relay, attacker, true);
    let _sim = Sim::start(
        relay.port(),
        KEY,
        &[
            "--resources",
            "300",
            "--seed",
            "5",
            "--scenario",
            "deadlock",
        ],
    );
    let mut stdout = String::new();
    let status = loop {
        if let Some(s) = run.try_wait().unwrap() {
            break s;
        }
        attack(&relay, attacker, false);
        std::thread::sleep(Duration::from_millis(30));
    };
    use std::io::Read;
    run.stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    // Let the stderr reader finish.
    std::thread::sleep(Duration::from_millis(100));
    let err = err.lock().unwrap().clone();
    assert!(status.success(), "exit {status:?}\n{stdout}\n{err}");
    (results(&stdout, relay.port()), err)
}

#[test]
fn an_attacker_without_the_key_cannot_steer_the_session() {
    let dir = temp_dir("trust");
    // The undisturbed run.
    let (quiet, quiet_err) = session(&mut |_, _, _| {}, None);
    assert!(
        quiet_err.contains("Connected to target 127.0.0.1 on port"),
        "{quiet_err}"
    );
    assert!(quiet.len() >= 5, "{quiet:?}");

    // The same with an attacker.
    let attacker = Attacker::new();
    let mut rounds = 0u32;
    let mut attack = |relay: &Relay, a: Option<&Attacker>, before: bool| {
        let a = a.expect("an attacker");
        let to = relay.debugger;
        let old = recorded_offers(to, 3);
        if before {
            // Offers of an earlier boot, from another machine, before the target's first.
            for o in &old {
                a.far.send_to(o, to).unwrap();
            }
            std::thread::sleep(Duration::from_millis(200));
            return;
        }
        rounds += 1;
        let seen = relay.from_target.lock().unwrap().clone();
        if seen.is_empty() {
            return;
        }
        // Everything the target sent lately, replayed from another machine and from another
        // port of the target's own machine.
        // The target's first offer (its current boot) and what it sent lately.
        for d in seen.iter().take(1).chain(seen.iter().rev().take(8)) {
            a.far.send_to(d, to).unwrap();
            a.near.send_to(d, to).unwrap();
            // And from the target's own address: replays.
            relay.socket.send_to(d, to).unwrap();
        }
        // Old-boot offers and junk with bad tags from the target's own address.
        relay.socket.send_to(&old[rounds as usize % 3], to).unwrap();
        let mut junk = seen.last().unwrap().clone();
        let n = junk.len();
        junk[n - 1] ^= 0x41;
        relay.socket.send_to(&junk, to).unwrap();
    };
    let (attacked, err) = session(&mut attack, Some(&attacker));
    assert!(
        err.contains("Connected to target 127.0.0.1 on port"),
        "{err}"
    );
    assert!(!err.contains("127.0.0.2"), "{err}");
    assert_eq!(
        attacked, quiet,
        "the answers differ from the undisturbed run"
    );
    // The drops are counted and shown, by cause.
    let summary = err
        .lines()
        .find(|l| l.contains("dropped"))
        .unwrap_or_else(|| panic!("no traffic summary in:\n{err}"));
    for cause in [
        "replayed data",
        "from another address",
        "unauthenticated data",
        "stale offers",
    ] {
        assert!(summary.contains(cause), "{cause}: {summary}");
    }
    // The attacker got answers to its offers (which proved nothing) and no data at all.
    let (control, data) = attacker.got();
    assert!(control >= 1, "the replayed offers were answered");
    assert_eq!(data, 0, "no data went to the attacker");
    assert!(
        rounds > 3,
        "the attack ran during the session ({rounds} rounds)"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_watcher_stays_with_the_real_target_and_shows_the_drops() {
    let dir = temp_dir("trust-watch");
    let port = free_udp_port();
    let debugger: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let relay = Relay::start(debugger);
    let attacker = Attacker::new();
    let events = dir.join("events.jsonl");
    let sock = dir.join("s.sock");
    let mut watch = kdnet()
        .args(["watch", "--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--key-env",
            "KDNET_TRUST_KEY",
            "--name",
            "t",
            "--duration",
            "120s",
        ])
        .arg("--events")
        .arg(&events)
        .arg("--out")
        .arg(dir.join("b"))
        .arg("--control")
        .arg(&sock)
        .env("KDNET_TRUST_KEY", KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&events)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let wait = |f: &dyn Fn(&serde_json::Value) -> bool, what: &str| {
        let start = Instant::now();
        while !lines().iter().any(f) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no {what}: {:#?}",
                lines()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait(&|e| e["state"] == "offline", "listening");
    // Offers of an earlier boot from another machine, before the target's first.
    for o in recorded_offers(debugger, 3) {
        attacker.far.send_to(&o, debugger).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let _sim = Sim::start(
        relay.port(),
        KEY,
        &["--resources", "300", "--scenario", "deadlock"],
    );
    wait(&|e| e["state"] == "running", "running");
    // Replays from another machine and from the target's own address.
    for _ in 0..5 {
        let seen = relay.from_target.lock().unwrap().clone();
        for d in seen.iter().take(1).chain(seen.iter().rev().take(8)) {
            attacker.far.send_to(d, debugger).unwrap();
            relay.socket.send_to(d, debugger).unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    wait(
        &|e| {
            e["note"]
                .as_str()
                .is_some_and(|n| n.starts_with("dropped "))
        },
        "note of the drops",
    );
    let o = kdnet()
        .args(["capture", "t", "--json", "--control"])
        .arg(&sock)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let bundle = std::path::PathBuf::from(v["bundle"].as_str().unwrap());
    let all = lines();
    let connected: Vec<&serde_json::Value> =
        all.iter().filter(|e| e["state"] == "connected").collect();
    assert_eq!(connected.len(), 1, "{all:#?}");
    assert_eq!(
        connected[0]["detail"],
        format!("127.0.0.1:{}", relay.port()),
        "{all:#?}"
    );
    // The bundle's header and report.json carry the session's drops.
    let txt = std::fs::read_to_string(bundle.join("report.txt")).unwrap();
    let session = txt
        .lines()
        .find(|l| l.starts_with("Session:"))
        .unwrap_or_else(|| panic!("{txt}"));
    assert!(session.contains("replayed data"), "{session}");
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("report.json")).unwrap()).unwrap();
    assert!(
        j["link"]["drops"]["replayed_data"].as_u64().unwrap() > 0,
        "{}",
        j["link"]
    );
    // And `list` shows the counters.
    let o = kdnet()
        .args(["ctl", "--json", "--control"])
        .arg(&sock)
        .arg("list")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["targets"][0]["link"]["drops"]["stale_offers"]
            .as_u64()
            .unwrap()
            > 0,
        "{v}"
    );
    watch.kill().ok();
    watch.wait().ok();
    std::fs::remove_dir_all(dir).ok();
}
