//! Bundles that tell the truth, end to end: a watcher whose files cannot be written (a file
//! size limit set on it, so writes past it fail with EFBIG as on a full disk) publishes a
//! bundle without its snapshot only as `-incomplete`, saying what it could not write, and
//! publishes nothing when not even its reports can be written; partial bundles left by a
//! killed watcher are removed at the next start (one being written is not); `--max-captures`
//! makes exactly that many; bundles, their directories and the events file are owner-only.

#![cfg(unix)]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{Sim, free_udp_port, kdnet, temp_dir};
use serde_json::Value;

const KEY: &str = "7.7.7.7";

/// A machine that bugchecks a second after it starts (one capture, then it runs on).
fn bugchecking(port: u16) -> Sim {
    Sim::start(
        port,
        KEY,
        &[
            "--scenario",
            "bugcheck",
            "--after",
            "1s",
            "--resources",
            "500",
        ],
    )
}

/// `kdnet watch` on `port` until its first capture, writing no file larger than `fsize` bytes
/// (None: no limit); its output.
fn watch_once(port: u16, dir: &Path, fsize: Option<u64>, extra: &[&str]) -> Output {
    let script = dir.join("lm.kds");
    std::fs::write(&script, "lm\n.snapshot early\n").unwrap();
    let mut c = kdnet();
    c.args(["watch", "--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--key-env",
            "KDNET_TEST_KEY",
            "--name",
            "n",
            "--duration",
            "90s",
        ])
        .args(["--max-captures", "1", "--script"])
        .arg(&script)
        .arg("--out")
        .arg(dir.join("b"))
        .arg("--control")
        .arg(dir.join("s.sock"))
        .args(extra)
        .env("KDNET_TEST_KEY", KEY);
    if let Some(limit) = fsize {
        // SAFETY: between fork and exec only async-signal-safe calls: setrlimit and signal.
        unsafe {
            c.pre_exec(move || {
                let l = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &l) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // A write past the limit then fails with EFBIG instead of killing the process.
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                Ok(())
            });
        }
    }
    c.output().unwrap()
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn a_bundle_whose_snapshot_cannot_be_written_is_published_incomplete_and_says_why() {
    let dir = temp_dir("bundle-fsize");
    let port = free_udp_port();
    let _sim = bugchecking(port);
    // Room for the reports (a few KB), not for the snapshot (over 100 KB).
    let o = watch_once(port, &dir, Some(32 * 1024), &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let all = entries(&dir.join("b"));
    assert_eq!(all.len(), 1, "no partial bundle is left: {all:?}");
    let b = &all[0];
    assert!(name(b).ends_with("-bugcheck-44-incomplete"), "{b:?}");
    assert!(!b.join("snapshot.dmp").exists());
    let j: Value =
        serde_json::from_str(&std::fs::read_to_string(b.join("report.json")).unwrap()).unwrap();
    assert_eq!(j["complete"], false);
    let missing = j["not_written"][0].as_str().unwrap();
    assert!(
        missing.starts_with("snapshot.dmp: cannot write ") && missing.contains("large"),
        "{missing}"
    );
    assert!(!missing.contains("cannot read"), "{missing}");
    assert!(
        j["incomplete"]
            .as_str()
            .unwrap()
            .contains("not written: snapshot.dmp: cannot write"),
        "{}",
        j["incomplete"]
    );
    let txt = std::fs::read_to_string(b.join("report.txt")).unwrap();
    assert!(
        txt.contains("Complete: NO: not written: snapshot.dmp"),
        "{txt}"
    );
    assert!(txt.contains("Snapshot: not written: cannot write"), "{txt}");
    assert!(b.join("report.html").is_file());
    assert!(err.contains("(incomplete)"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_bundle_whose_report_cannot_be_written_is_not_published() {
    let dir = temp_dir("bundle-noreport");
    let port = free_udp_port();
    let _sim = bugchecking(port);
    let o = watch_once(port, &dir, Some(1024), &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    // Nothing under a final name, and nothing half-written.
    assert_eq!(entries(&dir.join("b")), Vec::<PathBuf>::new(), "{err}");
    let failed = err
        .lines()
        .find(|l| l.contains("capture-failed"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        failed.contains("cannot write the bundle's report") && failed.contains("report.txt"),
        "{failed}"
    );
    // The target was let go on.
    assert!(err.contains("n: resuming"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn partial_bundles_of_a_killed_watcher_are_removed_at_start_and_a_live_one_is_kept() {
    let dir = temp_dir("bundle-stale");
    let out = dir.join("b");
    std::fs::create_dir_all(&out).unwrap();
    // Left by a watcher killed with -9: its lock is held by nobody.
    let stale = out.join(".partial-n-20200101T000000Z-999-0");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("snapshot.dmp"), vec![0u8; 4096]).unwrap();
    std::fs::write(stale.join(".lock"), b"").unwrap();
    // One without a lock file (killed before it made it) goes too.
    let bare = out.join(".partial-n-20200101T000001Z-999-1");
    std::fs::create_dir(&bare).unwrap();
    // Being written by another watcher now: its lock is held.
    let live = out.join(".partial-other-20200101T000002Z-1-0");
    std::fs::create_dir(&live).unwrap();
    let lock = std::fs::File::create(live.join(".lock")).unwrap();
    use std::os::fd::AsRawFd as _;
    // SAFETY: flock on a file this test owns.
    assert_eq!(
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    let port = free_udp_port();
    let _sim = bugchecking(port);
    let o = watch_once(port, &dir, None, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(!stale.exists() && !bare.exists(), "{err}");
    assert!(live.is_dir(), "a bundle being written is left alone");
    for p in [&stale, &bare] {
        assert!(
            err.contains(&format!(
                "removed {}: a capture an earlier watcher did not finish",
                p.display()
            )),
            "{err}"
        );
    }
    let names: Vec<String> = entries(&out).iter().map(|p| name(p)).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let b = out.join(names.iter().find(|n| n.ends_with("-bugcheck-44")).unwrap());
    // The reports name the script's own snapshot as it is in the bundle, not where it was
    // written before the bundle was published.
    let json = std::fs::read_to_string(b.join("report.json")).unwrap();
    let txt = std::fs::read_to_string(b.join("report.txt")).unwrap();
    assert!(json.contains("\"path\": \"early.dmp\""), "{json}");
    assert!(txt.contains("snapshot written: early.dmp"), "{txt}");
    assert!(!json.contains(".partial") && !txt.contains(".partial"));
    assert!(b.join("early.dmp").is_file());
    drop(lock);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn max_captures_makes_exactly_that_many_and_bundles_are_private() {
    let dir = temp_dir("bundle-max");
    let port = free_udp_port();
    // A line every 10 ms, each one a trigger: more wait while a capture is written (without a
    // count taken before each capture starts, a third one began now and then).
    let _sim = Sim::start(
        port,
        KEY,
        &[
            "--scenario",
            "deadlock",
            "--resources",
            "500",
            "--print-every",
            "10ms",
        ],
    );
    // An events file that exists, readable by all: the watcher makes it owner-only.
    let events = dir.join("events.jsonl");
    std::fs::write(&events, b"").unwrap();
    std::fs::set_permissions(&events, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = kdnet()
        .args(["watch", "--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--key-env",
            "KDNET_TEST_KEY",
            "--name",
            "m",
            "--duration",
            "120s",
        ])
        .args(["--dbgprint", "*vmcompute*", "--cooldown", "0s"])
        .args(["--max-per-hour", "1000", "--max-captures", "2", "--script"])
        .arg({
            let s = dir.join("lm.kds");
            std::fs::write(&s, "lm\n").unwrap();
            s
        })
        .arg("--out")
        .arg(dir.join("out/b"))
        .arg("--events")
        .arg(&events)
        .arg("--control")
        .arg(dir.join("s.sock"))
        .env("KDNET_TEST_KEY", KEY)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let all = entries(&dir.join("out/b"));
    assert_eq!(all.len(), 2, "{all:?}\n{err}");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&events), 0o600);
    assert_eq!(
        mode(&dir.join("out/b")),
        0o700,
        "the bundle directory it made"
    );
    for b in &all {
        assert!(!name(b).starts_with('.'), "{b:?}");
        assert_eq!(mode(b), 0o700, "{b:?}");
        for f in ["report.txt", "report.json", "report.html", "snapshot.dmp"] {
            assert_eq!(mode(&b.join(f)), 0o600, "{b:?}/{f}");
        }
    }
    let captured = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"state\":\"captured\""))
        .count();
    assert_eq!(captured, 2);
    std::fs::remove_dir_all(dir).ok();
}
