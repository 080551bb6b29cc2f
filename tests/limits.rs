//! Limits that hold, end to end on loopback against simulated machines: Ctrl-C, SIGTERM and
//! SIGHUP during a long `kdnet run` let the target continue before the process exits (checked
//! from a fresh session); `--max-seconds` bounds the whole script; a control client that broke
//! in and went away has its target let go on after the lease, one that stays keeps it; a
//! watcher ended by SIGTERM or SIGHUP lets a target it holds go on.

#![cfg(unix)]

mod common;

use std::io::{BufRead as _, Write as _};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Lines, Sim, assert_target_runs, free_udp_port, kdnet, signal, temp_dir};

const KEY: &str = "6.6.6.6";
/// What the deadlock scenario's machine prints while it runs.
const HEARTBEAT: &str = "vmcompute: container 5f1c0a";

/// A script that keeps the target stopped for a long time: a walk of every resource, then a
/// loop over every pair of them (millions of `!locks`, far more than any test waits for).
const LONG: &str = "lm\n$l = !locks -v\n.foreach (a in $l.held) { .foreach (b in $l.held) { !locks } }\n.echo never\n";

fn run_script(port: u16, script: &Path, extra: &[&str]) -> Lines {
    Lines::spawn(
        kdnet()
            .args(["run", "--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--key-env", "KDNET_TEST_KEY", "--connect-timeout", "90s"])
            .arg("--script")
            .arg(script)
            .args(extra)
            .env("KDNET_TEST_KEY", KEY),
    )
}

#[test]
fn signals_during_a_long_run_let_the_target_continue() {
    let dir = temp_dir("signals");
    let script = dir.join("long.kds");
    std::fs::write(&script, LONG).unwrap();
    let port = free_udp_port();
    let _sim = Sim::start_for(
        port,
        KEY,
        "600s",
        &[
            "--scenario",
            "deadlock",
            "--resources",
            "20000",
            "--latency",
            "5ms",
            "--print-every",
            "1s",
        ],
    );
    for (sig, code) in [
        (libc::SIGINT, 130),
        (libc::SIGTERM, 143),
        (libc::SIGHUP, 129),
    ] {
        let mut run = run_script(port, &script, &[]);
        // lm has answered: the resource walk is under way, the target stopped.
        run.wait_for(Duration::from_secs(120), |t, l| {
            t == "out" && l == "0: kd> lm"
        });
        signal(&run.child, sig);
        let status = run.finish(Duration::from_secs(60));
        let err = run.stderr();
        assert_eq!(status.code(), Some(code), "{err}");
        assert!(
            err.contains("letting the target continue before exiting"),
            "{err}"
        );
        assert!(err.contains("kdnet: the target continues"), "{err}");
        assert!(
            !run.seen.iter().any(|(_, l)| l.contains("never")),
            "the script ran to its end: {err}"
        );
        assert_target_runs(port, KEY, HEARTBEAT);
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_third_signal_exits_at_once_when_the_target_does_not_answer() {
    let dir = temp_dir("signals-twice");
    let script = dir.join("long.kds");
    std::fs::write(&script, LONG).unwrap();
    let port = free_udp_port();
    let mut sim = Sim::start_for(
        port,
        KEY,
        "300s",
        &[
            "--scenario",
            "deadlock",
            "--resources",
            "20000",
            "--latency",
            "5ms",
        ],
    );
    let mut run = run_script(port, &script, &[]);
    run.wait_for(Duration::from_secs(120), |t, l| {
        t == "out" && l == "0: kd> lm"
    });
    // The target is gone: letting it continue cannot finish.
    sim.0.kill().unwrap();
    sim.0.wait().unwrap();
    signal(&run.child, libc::SIGINT);
    run.wait_for(Duration::from_secs(30), |t, l| {
        t == "err" && l.contains("letting the target continue before exiting")
    });
    // The second is said, and the ending goes on.
    signal(&run.child, libc::SIGINT);
    run.wait_for(Duration::from_secs(30), |t, l| {
        t == "err" && l.contains("again: still letting the target continue")
    });
    // The third gives up.
    signal(&run.child, libc::SIGINT);
    let status = run.finish(Duration::from_secs(30));
    let err = run.stderr();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(
        err.contains("interrupted (Ctrl-C) again: exiting at once; the target may stay stopped"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn the_prompt_lets_the_target_continue_on_sigterm() {
    let port = free_udp_port();
    let _sim = Sim::start_for(
        port,
        KEY,
        "300s",
        &[
            "--scenario",
            "deadlock",
            "--resources",
            "500",
            "--print-every",
            "1s",
        ],
    );
    let mut repl = Lines::spawn(
        kdnet()
            .args(["repl", "--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--key-env", "KDNET_TEST_KEY", "--connect-timeout", "90s"])
            .env("KDNET_TEST_KEY", KEY),
    );
    // Stopped, the model open: the banner.
    repl.wait_for(Duration::from_secs(120), |_, l| {
        l.starts_with("Kernel base = ")
    });
    signal(&repl.child, libc::SIGTERM);
    let status = repl.wait_exit(Duration::from_secs(60));
    let err = repl.stderr();
    assert_eq!(status.code(), Some(143), "{err}");
    assert!(err.contains("kdnet: the target continues"), "{err}");
    assert_target_runs(port, KEY, HEARTBEAT);
}

#[test]
fn max_seconds_bounds_the_whole_script_and_says_what_it_skipped() {
    let dir = temp_dir("maxsec");
    let script = dir.join("long.kds");
    std::fs::write(&script, LONG).unwrap();
    let port = free_udp_port();
    let _sim = Sim::start_for(
        port,
        KEY,
        "300s",
        &[
            "--scenario",
            "deadlock",
            "--resources",
            "2000",
            "--print-every",
            "1s",
        ],
    );
    let mut run = run_script(port, &script, &["--max-seconds", "8", "--json"]);
    let status = run.finish(Duration::from_secs(180));
    let err = run.stderr();
    // The walk finished; the loop was cut where the budget ran out.
    assert_eq!(status.code(), Some(1), "{err}");
    let lines: Vec<serde_json::Value> = run
        .seen
        .iter()
        .filter(|(t, _)| *t == "out")
        .map(|(_, l)| serde_json::from_str(l).unwrap())
        .collect();
    let locks = lines.iter().find(|v| v["command"] == "!locks -v").unwrap();
    assert!(locks["error"].is_null(), "{locks}");
    let held = locks["result"]["held"].as_array().unwrap().len() as u64;
    assert_eq!(held, 2000);
    // The first !locks of the loop and after; the one cut by the deadline failed.
    let done = lines
        .iter()
        .filter(|v| v["type"] == "command" && v["command"] == "!locks")
        .count() as u64;
    let last = lines.last().unwrap();
    let message = last["error"].as_str().unwrap();
    assert_eq!(last["type"], "error", "{last}");
    assert_eq!(last["position"]["line"], 3, "{last}");
    assert!(
        message.starts_with("stopped here: the time budget for the whole run ran out; not run: "),
        "{message}"
    );
    // What ran and what did not add up to the whole loop (the `.echo never` after it, too).
    let n = |word: &str| -> u64 {
        let at = message.find(word).unwrap();
        message[..at]
            .split_whitespace()
            .last()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (statements, iterations) = (n(" statement"), n(" loop iteration"));
    assert!(done > 0 && iterations > 0, "{message}");
    assert!(
        !lines.iter().any(|v| v["result"]["text"] == "never"),
        "the script ran to its end"
    );
    // It stopped at the inner loop's `!locks` (that one, and `.echo never`, not run), or at the
    // inner loop itself between two outer iterations; the iterations run and not run make up
    // the loop.
    let (outer, inner) = (done / held, done % held);
    assert_eq!(statements, 2, "{message}");
    assert!(
        iterations == (held - inner - 1) + (held - outer - 1)
            || (inner == 0 && iterations == held - outer - 1),
        "{done} run; {message}"
    );
    assert!(err.contains("kdnet: the target continues"), "{err}");
    assert_target_runs(port, KEY, HEARTBEAT);
    std::fs::remove_dir_all(dir).ok();
}

/// A raw control-socket client: one request, its answer; the connection stays open.
fn client(socket: &Path, request: &str) -> (std::os::unix::net::UnixStream, serde_json::Value) {
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.write_all(format!("{request}\n").as_bytes()).unwrap();
    let mut line = String::new();
    std::io::BufReader::new(s.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    (s, serde_json::from_str(&line).unwrap())
}

fn events(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn states(path: &Path) -> Vec<String> {
    events(path)
        .iter()
        .filter_map(|e| e["state"].as_str().map(str::to_string))
        .collect()
}

/// Waits until the states end with `tail`.
fn wait_states(path: &Path, tail: &[&str], limit: Duration) {
    let start = Instant::now();
    loop {
        let s = states(path);
        if s.ends_with(&tail.iter().map(|x| x.to_string()).collect::<Vec<_>>()) {
            return;
        }
        assert!(start.elapsed() < limit, "never {tail:?}: {s:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn watcher(port: u16, dir: &Path, extra: &[&str]) -> Lines {
    Lines::spawn(
        kdnet()
            .args(["watch", "--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--key-env", "KDNET_TEST_KEY", "--name", "t"])
            .arg("--out")
            .arg(dir.join("b"))
            .arg("--events")
            .arg(dir.join("events.jsonl"))
            .arg("--control")
            .arg(dir.join("s.sock"))
            .args(extra)
            .env("KDNET_TEST_KEY", KEY),
    )
}

#[test]
fn a_client_that_broke_in_and_left_has_its_target_go_on_after_the_lease() {
    let dir = temp_dir("lease");
    let port = free_udp_port();
    let _sim = Sim::start_for(
        port,
        KEY,
        "600s",
        &[
            "--scenario",
            "deadlock",
            "--resources",
            "500",
            "--print-every",
            "1s",
        ],
    );
    let ev = dir.join("events.jsonl");
    let sock = dir.join("s.sock");
    let mut w = watcher(port, &dir, &["--control-lease", "2s"]);
    wait_states(&ev, &["running"], Duration::from_secs(60));
    // A client that stays connected keeps the target stopped past the lease.
    let (conn, answer) = client(&sock, r#"{"op":"break","target":"t"}"#);
    assert_eq!(answer["ok"], true, "{answer}");
    wait_states(&ev, &["stopped"], Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(states(&ev).last().map(String::as_str), Some("stopped"));
    // Gone: after the lease, the target goes on.
    drop(conn);
    wait_states(
        &ev,
        &["stopped", "resuming", "running"],
        Duration::from_secs(60),
    );
    let notes: Vec<String> = events(&ev)
        .iter()
        .filter_map(|e| e["note"].as_str().map(str::to_string))
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("went away: the target continues in 2 s")),
        "{notes:?}"
    );
    // SIGTERM ends the watch: a target a client holds (here within its lease) goes on first.
    let o = kdnet()
        .args(["ctl", "--control"])
        .arg(&sock)
        .args(["break", "t"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    signal(&w.child, libc::SIGTERM);
    let status = w.finish(Duration::from_secs(60));
    assert!(status.success(), "{}", w.stderr());
    let s = states(&ev);
    assert_eq!(
        s[s.len() - 2..],
        ["stopped".to_string(), "resuming".to_string()],
        "{s:?}"
    );
    assert_target_runs(port, KEY, HEARTBEAT);
    // SIGHUP likewise, from a new watcher.
    let mut w = watcher(port, &dir, &[]);
    wait_states(&ev, &["running"], Duration::from_secs(60));
    let (conn, answer) = client(&sock, r#"{"op":"break","target":"t"}"#);
    assert_eq!(answer["ok"], true, "{answer}");
    signal(&w.child, libc::SIGHUP);
    let status = w.finish(Duration::from_secs(60));
    drop(conn);
    assert!(status.success(), "{}", w.stderr());
    assert!(w.stderr().contains("hung up (SIGHUP)"), "{}", w.stderr());
    let s = states(&ev);
    assert_eq!(s.last().map(String::as_str), Some("resuming"), "{s:?}");
    assert_target_runs(port, KEY, HEARTBEAT);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_control_socket_answer_is_bounded_and_says_what_it_did_not_run() {
    let dir = temp_dir("answer-bound");
    let port = free_udp_port();
    let _sim = Sim::start_for(
        port,
        KEY,
        "600s",
        &["--scenario", "deadlock", "--resources", "20000"],
    );
    let ev = dir.join("events.jsonl");
    let sock = dir.join("s.sock");
    let mut w = watcher(port, &dir, &[]);
    wait_states(&ev, &["running"], Duration::from_secs(60));
    // Every resource, then again for each of them: gigabytes of output were it not bounded.
    let (_conn, answer) = client(&sock, r#"{"op":"break","target":"t"}"#);
    assert_eq!(answer["ok"], true, "{answer}");
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.write_all(
        br#"{"op":"run","target":"t","command":"$l = !locks -v; .foreach (x in $l.held) { !locks -v }"}"#,
    )
    .unwrap();
    s.write_all(b"\n").unwrap();
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line).unwrap();
    assert!(line.len() < 40 << 20, "{} bytes", line.len());
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["ok"], true);
    let results = v["results"].as_array().unwrap();
    // Each result cut to its own limit, with a note.
    let first = &results[0];
    assert_eq!(first["command"], "!locks -v");
    assert_eq!(first["result"]["total_locks"], 20000);
    let cut = &first["result"]["truncated"]["lists"][0];
    assert_eq!(cut["list"], "/held");
    assert_eq!(cut["of"], 20000);
    // The run stopped at the answer's limit and said what it did not run.
    let last = results.last().unwrap();
    let message = last["error"].as_str().unwrap();
    assert!(
        message.starts_with("stopped here: the run's output passed 16777216 bytes"),
        "{message}"
    );
    assert!(message.contains("loop iterations"), "{message}");
    assert!(results.len() < 20, "{}", results.len());
    signal(&w.child, libc::SIGTERM);
    assert!(w.finish(Duration::from_secs(60)).success());
    std::fs::remove_dir_all(dir).ok();
}
