//! However a session with breakpoints ends — SIGTERM, SIGHUP, Ctrl-C twice, the end of a script,
//! Ctrl-C then `q` in the prompt, a closed terminal, or `kill -9` — the simulated target is left running
//! with none of the session's `int 3`s in it, as a fresh session reads it back. The session
//! ends in the middle of a `g` whose breakpoint is reached thousands of times a second (its
//! condition is never true), so the ending falls in any phase: running with the breakpoint
//! written, stopped at a hit, stepping over it.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Lines, Sim, assert_target_runs, free_udp_port, kdnet, temp_dir};

const KEY: &str = "7.7.7.7";
/// What the bindflt-race machine prints while it runs.
const HEARTBEAT: &str = "relative to the current directory failed";
/// A breakpoint every create reaches, whose condition never holds.
const NEVER: &str = "bp /w \"0\" nt!IofCompleteRequest";

fn sim(port: u16) -> Sim {
    Sim::start_for(
        port,
        KEY,
        "300s",
        &["--scenario", "bindflt-race", "--print-every", "1s"],
    )
}

/// The record of the target at 127.0.0.1 sending to the port the test's session listens on.
fn record(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .ok()
        .and_then(|mut d| {
            d.find_map(|e| {
                let p = e.ok()?.path();
                let name = p.file_name()?.to_str()?;
                (name.starts_with("breakpoints-127_0_0_1-") && name.ends_with(".json"))
                    .then_some(p.clone())
            })
        })
        .unwrap_or_else(|| dir.join("breakpoints-127_0_0_1-none.json"))
}

fn session<'a>(cmd: &'a mut Command, port: u16, state: &Path) -> &'a mut Command {
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--key-env", "KDNET_TEST_KEY", "--connect-timeout", "60s"])
        .env("KDNET_TEST_KEY", KEY)
        .env("KDNET_STATE_DIR", state)
}

/// Waits until the session has recorded breakpoints it writes (it is inside `g`).
fn wait_armed(state: &Path, l: &mut Lines) {
    let end = Instant::now() + Duration::from_secs(90);
    while !record(state).exists() {
        assert!(
            Instant::now() < end,
            "the session never wrote its breakpoints: {:#?}",
            l.seen
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let it go round a few hits.
    std::thread::sleep(Duration::from_millis(300));
}

/// `kdnet repl` with the never-stopping breakpoint, inside its `g`.
fn prompt_in_g(port: u16, state: &Path) -> Lines {
    let mut repl = Lines::spawn(session(kdnet().args(["repl"]), port, state));
    let stdin = repl.child.stdin.as_mut().unwrap();
    writeln!(stdin, "{NEVER}").unwrap();
    writeln!(stdin, "g").unwrap();
    stdin.flush().unwrap();
    wait_armed(state, &mut repl);
    repl
}

/// A fresh session: no breakpoint of ours is in the target (the byte where it was is the
/// instruction's), nothing was left to recover unless `recovered`, and the target runs on.
fn assert_clean(port: u16, state: &Path, recovered: bool) {
    let out = session(
        kdnet().args([
            "run",
            "--json",
            "-c",
            "db nt!IofCompleteRequest L1; db nt!KeBugCheckEx L1",
        ]),
        port,
        state,
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines = common::json_lines(&String::from_utf8_lossy(&out.stdout));
    let db = lines
        .iter()
        .find(|l| l["command"] == "db nt!IofCompleteRequest L1")
        .unwrap();
    let byte = u64::from_str_radix(
        db["result"]["values"][0]
            .as_str()
            .unwrap()
            .trim_start_matches("0x"),
        16,
    )
    .unwrap();
    assert_eq!(byte, 0xEB, "the stub's jmp, no int 3: {db}");
    let other = lines
        .iter()
        .find(|l| l["command"] == "db nt!KeBugCheckEx L1")
        .unwrap();
    assert!(
        !other["result"]["values"][0]
            .as_str()
            .unwrap()
            .ends_with("cc"),
        "{other}"
    );
    assert_eq!(
        stderr.contains("left breakpoints in this target"),
        recovered,
        "{stderr}"
    );
    assert!(!record(state).exists());
    assert_target_runs(port, KEY, HEARTBEAT);
}

/// The session inside `g` gets `signals`, 20 ms apart (a second while the first is dealt with,
/// not taken for one): it takes its breakpoints out and lets the target go, wherever they fall.
#[cfg(unix)]
fn ended_by_signals(signals: &[i32], name: &str) {
    let port = free_udp_port();
    let _sim = sim(port);
    let state = temp_dir(&format!("endings-{name}"));
    let mut run = Lines::spawn(session(
        kdnet().args(["run", "-c", &format!("{NEVER}; g")]),
        port,
        &state,
    ));
    wait_armed(&state, &mut run);
    for (i, sig) in signals.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        common::signal(&run.child, *sig);
    }
    let status = run.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "{status:?}");
    assert!(
        run.stderr().contains("the target continues"),
        "{:#?}",
        run.seen
    );
    assert!(!record(&state).exists(), "{:#?}", run.seen);
    assert_clean(port, &state, false);
    std::fs::remove_dir_all(&state).ok();
}

/// Ctrl-C twice (an impatient user): the second is said and changes nothing, the target is
/// left running with its original bytes and nothing for the next session to take out.
#[cfg(unix)]
#[test]
fn ctrl_c_twice_in_the_middle_of_g_still_leaves_the_target_clean() {
    ended_by_signals(&[libc::SIGINT, libc::SIGINT], "twice");
}

#[cfg(unix)]
#[test]
fn sigterm_in_the_middle_of_g_takes_the_breakpoints_out_and_lets_the_target_go() {
    ended_by_signals(&[libc::SIGTERM], "term");
}

#[cfg(unix)]
#[test]
fn sighup_in_the_middle_of_g_takes_the_breakpoints_out_and_lets_the_target_go() {
    ended_by_signals(&[libc::SIGHUP], "hup");
}

#[test]
fn the_end_of_a_script_leaves_nothing_written() {
    let port = free_udp_port();
    let _sim = sim(port);
    let state = temp_dir("endings-script");
    let out = session(
        kdnet().args([
            "run",
            "--json",
            "-c",
            &format!("{NEVER}; g --max-seconds 1"),
        ]),
        port,
        &state,
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines = common::json_lines(&String::from_utf8_lossy(&out.stdout));
    let g = lines
        .iter()
        .find(|l| l["result"]["stops"].is_array())
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(g["result"]["stops"][0]["reason"], "break_in", "{g}");
    assert!(g["result"]["passed"].as_u64().unwrap() > 0, "{g}");
    assert_clean(port, &state, false);
    std::fs::remove_dir_all(&state).ok();
}

#[cfg(unix)]
#[test]
fn ctrl_c_in_the_prompt_stops_g_and_q_lets_the_target_go() {
    let port = free_udp_port();
    let _sim = sim(port);
    let state = temp_dir("endings-prompt");
    let mut repl = prompt_in_g(port, &state);
    common::signal(&repl.child, libc::SIGINT);
    repl.wait_for(Duration::from_secs(60), |_, l| {
        l.contains("Break instruction exception")
    });
    // The command ends once its breakpoints are out, and the record with them.
    let end = Instant::now() + Duration::from_secs(30);
    while record(&state).exists() {
        assert!(Instant::now() < end, "{:#?}", repl.seen);
        std::thread::sleep(Duration::from_millis(20));
    }
    let stdin = repl.child.stdin.as_mut().unwrap();
    writeln!(stdin, "q").unwrap();
    stdin.flush().unwrap();
    let status = repl.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{:#?}", repl.seen);
    assert_clean(port, &state, false);
    std::fs::remove_dir_all(&state).ok();
}

#[cfg(unix)]
#[test]
fn a_closed_terminal_in_the_middle_of_g_leaves_the_target_clean() {
    // The terminal or ssh session of the prompt goes away while `g` runs: the process gets
    // SIGHUP and its input ends.
    let port = free_udp_port();
    let _sim = sim(port);
    let state = temp_dir("endings-closed");
    let mut repl = prompt_in_g(port, &state);
    drop(repl.child.stdin.take());
    common::signal(&repl.child, libc::SIGHUP);
    repl.wait_exit(Duration::from_secs(60));
    assert!(
        repl.stderr().contains("the target continues"),
        "{:#?}",
        repl.seen
    );
    assert!(!record(&state).exists(), "{:#?}", repl.seen);
    assert_clean(port, &state, false);
    std::fs::remove_dir_all(&state).ok();
}

#[cfg(unix)]
#[test]
fn after_kill_9_the_next_session_takes_the_breakpoints_out_first() {
    let port = free_udp_port();
    let _sim = sim(port);
    let state = temp_dir("endings-kill");
    // A breakpoint nothing reaches: killed, the session leaves it in the running target.
    let mut run = Lines::spawn(session(
        kdnet().args(["run", "-c", "bp nt!KeBugCheckEx; g"]),
        port,
        &state,
    ));
    wait_armed(&state, &mut run);
    common::signal(&run.child, libc::SIGKILL);
    run.wait_exit(Duration::from_secs(30));
    // The record stays: the killed session could not take its breakpoints out.
    assert!(record(&state).exists());
    assert_clean(port, &state, true);
    std::fs::remove_dir_all(&state).ok();
}
