//! Faults of the target, end to end: `kdnet run` and `kdnet watch` against a simulated machine
//! that is killed, frozen (SIGSTOP) for 3, 6 and 12 s, restarted, rebooted, or behind a link
//! that loses 30 % of the datagrams. Each ends with the right answer or says it could not, with
//! the exit code to match, within a bounded time, and never leaves a target stopped that can be
//! let go.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Sim, free_udp_port, json_lines, kdnet, temp_dir};

/// A process's stderr, collected line by line as it comes.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<String>>);

impl Lines {
    fn follow(r: impl Read + Send + 'static) -> Lines {
        let l = Lines::default();
        let t = l.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                let mut s = t.0.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        l
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    fn wait_for(&self, what: &str, within: Duration) {
        let start = Instant::now();
        while !self.text().contains(what) {
            assert!(
                start.elapsed() < within,
                "no {what:?} within {within:?} in:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `kdnet run` on `port` with `commands`, its stdout and stderr followed.
struct Run {
    child: Child,
    out: Lines,
    err: Lines,
}

impl Run {
    fn start(port: u16, key: &str, commands: &str, extra: &[&str]) -> Run {
        let mut child = kdnet()
            .args(["run", "--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--key-env", "KDNET_FAULT_KEY", "--connect-timeout", "60s"])
            .args(["--json", "-c", commands])
            .args(extra)
            .env("KDNET_FAULT_KEY", key)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Lines::follow(child.stdout.take().unwrap());
        let err = Lines::follow(child.stderr.take().unwrap());
        Run { child, out, err }
    }

    /// Waits for the exit (at most `within`); the exit code, stdout and stderr.
    fn finish(mut self, within: Duration) -> (i32, String, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                start.elapsed() < within,
                "kdnet run still running after {within:?}:\n{}",
                self.err.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // The followers drain the pipes.
        std::thread::sleep(Duration::from_millis(200));
        (
            status.code().unwrap_or(-1),
            self.out.text(),
            self.err.text(),
        )
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on a child process of ours.
    let r = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(r, 0, "kill({sig})");
}

/// The result lines of `--json` output, by command, without costs.
fn results(stdout: &str) -> Vec<serde_json::Value> {
    json_lines(stdout)
        .into_iter()
        .filter(|v| v["type"] == "command")
        .map(|mut v| {
            v.as_object_mut().unwrap().remove("cost");
            v
        })
        .collect()
}

/// A slow enough `!locks` (thousands of resources over a 1 ms link) to be hit mid-way.
const SLOW: &[&str] = &["--resources", "20000", "--latency", "1ms", "--seed", "3"];

/// `!locks` of an undisturbed run on the SLOW machine.
fn undisturbed_locks(key: &str) -> serde_json::Value {
    let port = free_udp_port();
    let _sim = Sim::start(port, key, SLOW);
    let run = Run::start(port, key, "!locks", &[]);
    let (code, out, err) = run.finish(Duration::from_secs(120));
    assert_eq!(code, 0, "{out}{err}");
    let r = results(&out);
    assert_eq!(r.len(), 1, "{out}");
    assert_eq!(r[0]["complete"], true, "{out}");
    r[0].clone()
}

#[test]
fn a_target_killed_mid_command_ends_the_run_with_no_target_in_bounded_time() {
    let port = free_udp_port();
    let mut sim = Sim::start(port, "5.1.5.1", SLOW);
    let run = Run::start(port, "5.1.5.1", "!locks; lm", &["--wait-return", "2s"]);
    run.err
        .wait_for("stopped on processor", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(800));
    sim.0.kill().unwrap();
    sim.0.wait().unwrap();
    let killed = Instant::now();
    let (code, out, err) = run.finish(Duration::from_secs(60));
    let took = killed.elapsed();
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("no answer from the target: nothing heard from it for 1"),
        "{err}"
    );
    assert!(!err.contains("the target continues"), "{err}");
    // Declared within the silence limit (10 s), and the 2 s it waits for the target to come
    // back, not minutes.
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert!(err.contains("did not come back"), "{err}");
    // The result says it could not, never a plausible whole answer.
    let r = results(&out);
    assert!(!r.is_empty(), "{out}");
    for v in &r {
        assert_ne!(v["complete"], true, "{v}");
    }
}

#[test]
fn short_freezes_are_waited_out_with_the_right_answer() {
    let key = "5.2.5.2";
    let expected = undisturbed_locks(key);
    for secs in [3u64, 6] {
        let port = free_udp_port();
        let sim = Sim::start(port, key, SLOW);
        let run = Run::start(port, key, "!locks", &[]);
        run.err
            .wait_for("stopped on processor", Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(500));
        signal(&sim.0, libc::SIGSTOP);
        std::thread::sleep(Duration::from_secs(secs));
        signal(&sim.0, libc::SIGCONT);
        let (code, out, err) = run.finish(Duration::from_secs(120));
        assert_eq!(code, 0, "frozen {secs} s: {out}{err}");
        assert!(err.contains("the target continues"), "{err}");
        assert_eq!(results(&out), vec![expected.clone()], "frozen {secs} s");
    }
}

#[test]
fn a_long_freeze_is_reported_and_the_target_is_let_go_when_it_returns() {
    let key = "5.3.5.3";
    let port = free_udp_port();
    let sim = Sim::start(port, key, SLOW);
    let run = Run::start(port, key, "!locks", &[]);
    run.err
        .wait_for("stopped on processor", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    signal(&sim.0, libc::SIGSTOP);
    run.err
        .wait_for("no answer from the target", Duration::from_secs(30));
    signal(&sim.0, libc::SIGCONT);
    let (code, out, err) = run.finish(Duration::from_secs(60));
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("nothing heard from it for 1"), "{err}");
    // It came back stopped in the debugger: the run let it go before exiting.
    assert!(
        err.contains("the target answers again and continues"),
        "{err}"
    );
    let r = results(&out);
    assert_ne!(r[0]["complete"], true, "{out}");
    // A fresh session finds it running: no break-in needed to see it run.
    assert!(target_runs(port, key), "the target was left stopped");
}

/// Whether a fresh debugger on `port` finds the target running (it prints, or a RESET finds
/// no stop).
fn target_runs(port: u16, key: &str) -> bool {
    let o = kdnet()
        .args(["repl", "--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--key", key, "--connect-timeout", "30s", "--no-break"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            drop(c.stdin.take());
            c.wait_with_output()
        })
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("Connected to target"), "{err}");
    err.contains("the target runs")
}

#[test]
fn a_restarted_or_rebooted_target_ends_the_run_and_is_left_running() {
    let key = "5.4.5.4";
    // Restarted: the machine is gone and a new boot of it (a new process on the same port)
    // offers mid-command.
    let port = free_udp_port();
    let sim = Sim::start(port, key, SLOW);
    let run = Run::start(port, key, "!locks", &[]);
    run.err
        .wait_for("stopped on processor", Duration::from_secs(60));
    drop(sim);
    std::thread::sleep(Duration::from_millis(300));
    let _again = Sim::start(port, key, &["--resources", "200"]);
    let (code, out, err) = run.finish(Duration::from_secs(60));
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("no answer from the target"), "{err}");
    assert!(target_runs(port, key));

    // Rebooted in place mid-command (SIGUSR1 reboots the simulated machine).
    let port = free_udp_port();
    let sim = Sim::start(port, key, SLOW);
    let run = Run::start(port, key, "!locks", &[]);
    run.err
        .wait_for("stopped on processor", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    signal(&sim.0, libc::SIGUSR1);
    let (code, out, err) = run.finish(Duration::from_secs(60));
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("rebooted"), "{err}");
    assert!(target_runs(port, key));
}

#[test]
fn thirty_percent_loss_gives_the_right_answer_or_says_it_is_incomplete() {
    let key = "5.5.5.5";
    let args = ["--resources", "3000", "--seed", "3"];
    let port = free_udp_port();
    let expected = {
        let _sim = Sim::start(port, key, &args);
        let (code, out, err) =
            Run::start(port, key, "!locks", &[]).finish(Duration::from_secs(120));
        assert_eq!(code, 0, "{out}{err}");
        results(&out)
    };
    let port = free_udp_port();
    let mut lossy = args.to_vec();
    lossy.extend(["--loss", "0.3"]);
    let _sim = Sim::start(port, key, &lossy);
    let (code, out, err) =
        Run::start(port, key, "!locks", &["--max-seconds", "60"]).finish(Duration::from_secs(180));
    match code {
        0 => assert_eq!(results(&out), expected, "exit 0 must mean the whole answer"),
        4 => assert_eq!(results(&out)[0]["complete"], false, "{out}"),
        other => panic!("exit {other}: {out}{err}"),
    }
}

#[test]
fn a_watched_target_that_vanishes_goes_offline_and_comes_back() {
    let key = "5.6.5.6";
    let dir = temp_dir("vanish");
    let port = free_udp_port();
    let events = dir.join("events.jsonl");
    let sim = Sim::start(port, key, &["--resources", "200", "--scenario", "healthy"]);
    let mut watch = kdnet()
        .args(["watch", "--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--key", key, "--name", "v", "--duration", "120s"])
        .arg("--events")
        .arg(&events)
        .arg("--out")
        .arg(dir.join("b"))
        .arg("--control")
        .arg(dir.join("s.sock"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let states = |events: &std::path::Path| -> Vec<(String, String)> {
        std::fs::read_to_string(events)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| {
                Some((
                    v["state"].as_str()?.to_string(),
                    v["detail"].as_str().unwrap_or("").to_string(),
                ))
            })
            .collect()
    };
    let wait = |what: &str, detail: &str, after: usize, within: Duration| -> usize {
        let start = Instant::now();
        loop {
            let s = states(&events);
            if let Some(i) = s
                .iter()
                .enumerate()
                .skip(after)
                .position(|(_, (st, d))| st == what && d.contains(detail))
            {
                return after + i + 1;
            }
            assert!(start.elapsed() < within, "no {what} {detail:?} in {s:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let n = wait("running", "", 0, Duration::from_secs(60));
    drop(sim);
    let gone = Instant::now();
    let n = wait("offline", "stopped answering", n, Duration::from_secs(30));
    assert!(
        gone.elapsed() < Duration::from_secs(25),
        "{:?}",
        gone.elapsed()
    );
    let _sim = Sim::start(port, key, &["--resources", "200", "--scenario", "healthy"]);
    let n = wait("connected", "", n, Duration::from_secs(30));
    wait("running", "", n, Duration::from_secs(30));
    watch.kill().ok();
    watch.wait().ok();
    std::fs::remove_dir_all(dir).ok();
}
