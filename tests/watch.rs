//! `kdnet watch` end to end: a simulated machine that bugchecks while watched is captured into a
//! bundle and let go on; a wrong key shows as its own state.

mod common;

use common::{Sim, free_udp_port, json_lines, kdnet, temp_dir};
use serde_json::Value;

#[test]
fn a_bugcheck_is_captured_into_a_bundle_and_the_target_goes_on() {
    let port = free_udp_port();
    let _sim = Sim::start(
        port,
        "4.4.4.4",
        &[
            "--scenario",
            "bugcheck",
            "--after",
            "2s",
            "--resources",
            "2000",
        ],
    );
    let dir = temp_dir("watch");
    let out = dir.join("bundles");
    let events = dir.join("events.jsonl");
    let o = kdnet()
        .args(["watch", "--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--key-env", "KDNET_WATCH_KEY", "--connect-timeout", "30s"])
        .args(["--max-captures", "1", "--name", "node7"])
        .arg("--out")
        .arg(&out)
        .arg("--events")
        .arg(&events)
        .arg("--control")
        .arg(dir.join("watch.sock"))
        .env("KDNET_WATCH_KEY", "4.4.4.4")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    // The states, in order.
    let all = json_lines(&std::fs::read_to_string(&events).unwrap());
    let states: Vec<Value> = all
        .iter()
        .filter(|s| s.get("state").is_some())
        .cloned()
        .collect();
    let names: Vec<&str> = states
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    // (The watcher may see the target run again before it exits.)
    let names = match names.split_last() {
        Some((&"running", rest)) if rest.len() == 7 => rest.to_vec(),
        _ => names,
    };
    assert_eq!(
        names,
        [
            "offline",
            "connected",
            "running",
            "stopped",
            "capturing",
            // The target goes on as soon as the script has run; the bundle is written after.
            "resuming",
            "captured"
        ],
        "{err}"
    );
    assert!(all.iter().all(|s| s["target"] == "node7"));
    // The findings are told as notes, the bugcheck first.
    let notes: Vec<&str> = all.iter().filter_map(|s| s["note"].as_str()).collect();
    assert!(
        notes.first().is_some_and(
            |n| n.starts_with("finding: bugcheck 0x44 MULTIPLE_IRP_COMPLETE_REQUESTS in CimFS")
        ),
        "{notes:?}"
    );
    // One whole bundle, named for the bugcheck; no partial one left.
    let bundles: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(bundles.len(), 1, "{bundles:?}");
    let b = &bundles[0];
    let name = b.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        name.starts_with("node7-") && name.ends_with("-bugcheck-44"),
        "{name}"
    );
    assert_eq!(states[6]["detail"].as_str().unwrap(), b.to_str().unwrap());
    let report = std::fs::read_to_string(b.join("report.txt")).unwrap();
    assert!(
        report.contains("MULTIPLE_IRP_COMPLETE_REQUESTS (44)"),
        "{report}"
    );
    assert!(report.contains("0: kd> lm"), "{report}");
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(b.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["bugcheck"]["code"], 0x44);
    assert_eq!(json["steps"][0]["result"]["bugcheck_code"], 0x44);
    // The snapshot answers offline as the machine did.
    let o = kdnet()
        .arg("open")
        .arg(b.join("snapshot.dmp"))
        .args(["-c", "!analyze", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines = json_lines(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(
        lines[1]["result"]["failure_bucket"],
        json["steps"][0]["result"]["failure_bucket"]
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_wrong_key_is_a_state_of_its_own() {
    let port = free_udp_port();
    let _sim = Sim::start(port, "4.4.4.4", &["--resources", "200"]);
    let (out, ctl) = (temp_dir("watch-key"), temp_dir("watch-key-ctl"));
    let mut child = kdnet()
        .args(["watch", "--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--key", "5.5.5.5", "--out"])
        .arg(&out)
        .arg("--control")
        .arg(ctl.join("watch.sock"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let seen = std::thread::spawn(move || {
        let mut all = String::new();
        let mut buf = [0u8; 1024];
        while let Ok(n) = std::io::Read::read(&mut stderr, &mut buf) {
            if n == 0 {
                break;
            }
            all.push_str(&String::from_utf8_lossy(&buf[..n]));
            // (A line may come in pieces: wait for all of it.)
            if all.contains("wrong-key: offers arrive but do not authenticate")
                && all.contains("does not authenticate: wrong key?")
            {
                break;
            }
        }
        all
    });
    let started = std::time::Instant::now();
    while !seen.is_finished() && started.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().ok();
    child.wait().ok();
    let all = seen.join().unwrap();
    assert!(
        all.contains("target: wrong-key: offers arrive but do not authenticate"),
        "{all}"
    );
    // The session's own log lines say which watched target they are about.
    let line = all
        .lines()
        .find(|l| l.contains("does not authenticate: wrong key?"))
        .unwrap_or_else(|| panic!("no log line from the session: {all}"));
    assert!(line.contains("target{name=target}"), "{line}");
    std::fs::remove_dir_all(out).ok();
    std::fs::remove_dir_all(ctl).ok();
}

#[test]
fn bad_watch_arguments_are_refused_before_listening() {
    let dir = temp_dir("watch-args");
    let bad = dir.join("bad.kds");
    std::fs::write(&bad, ".if ($x {\n").unwrap();
    let port = free_udp_port().to_string();
    let cases: [(&[&str], &str); 3] = [
        (&["--max-seconds", "0"], "--max-seconds"),
        (&["--script", bad.to_str().unwrap()], "bad.kds: line 1"),
        (&["-k", "net:port=1,key=1.2.3"], "the key"),
    ];
    for (extra, says) in cases {
        let mut c = kdnet();
        c.args(["watch", "--bind", "127.0.0.1"]).args(extra);
        if !extra.contains(&"-k") {
            c.args(["--port", &port, "--key-env", "KDNET_WATCH_KEY"]);
        }
        let o = c.env("KDNET_WATCH_KEY", "1.2.3.4").output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(3), "{extra:?}: {err}");
        assert!(err.contains(says), "{extra:?}: {err}");
        assert!(!err.contains("listening"), "{extra:?}: {err}");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[cfg(unix)]
#[test]
fn a_control_directory_others_could_write_to_or_own_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = temp_dir("watch-ctldir");
    let open = dir.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    // A directory of another user: made so when the test may (as root), else the root's own.
    // SAFETY: getuid has no preconditions.
    let root = unsafe { libc::getuid() } == 0;
    let theirs = if root {
        let d = dir.join("theirs");
        std::fs::create_dir(&d).unwrap();
        let c = std::ffi::CString::new(d.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string; the directory is this test's own.
        assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
        d
    } else {
        std::path::PathBuf::from("/")
    };
    let port = free_udp_port().to_string();
    for (control_dir, says) in [
        (&open, "can be written by others (mode 777)"),
        (&theirs, "belongs to user "),
    ] {
        let o = kdnet()
            .args(["watch", "--bind", "127.0.0.1", "--port", &port])
            .args(["--key-env", "KDNET_WATCH_KEY", "--duration", "30s"])
            .arg("--out")
            .arg(dir.join("b"))
            .arg("--control")
            .arg(control_dir.join("w.sock"))
            .env("KDNET_WATCH_KEY", "1.2.3.4")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(3), "{control_dir:?}: {err}");
        assert!(err.contains(says), "{control_dir:?}: {err}");
        assert!(!control_dir.join("w.sock").exists());
    }
    // Its own private directory is taken, and a new one is made owner-only.
    let fresh = dir.join("fresh/ctl");
    let o = kdnet()
        .args(["watch", "--bind", "127.0.0.1", "--port", &port])
        .args(["--key-env", "KDNET_WATCH_KEY", "--duration", "1s"])
        .arg("--out")
        .arg(dir.join("b"))
        .arg("--control")
        .arg(fresh.join("w.sock"))
        .env("KDNET_WATCH_KEY", "1.2.3.4")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    std::fs::remove_dir_all(dir).ok();
}
