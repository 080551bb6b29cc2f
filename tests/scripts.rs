//! The shipped capture scripts (`scripts/*.kds`) run end to end against the simulated target,
//! headless, with JSON output; their snapshots open as dumps and give the same answers.

mod common;

use std::path::{Path, PathBuf};

use common::{Sim, free_udp_port, json_lines, kdnet, temp_dir};
use serde_json::Value;

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// Runs `script` against a fresh simulator in `scenario`; the JSON lines, stderr and exit code.
fn run_script(name: &str, scenario: &[&str], out: &Path) -> (Vec<Value>, String, Option<i32>) {
    let port = free_udp_port();
    let _sim = Sim::start(port, "3.1.4.1", scenario);
    let o = kdnet()
        .args([
            "run",
            "-k",
            &format!("net:port={port}"),
            "--bind",
            "127.0.0.1",
        ])
        .args(["--key-env", "KDNET_SCRIPT_KEY", "--connect-timeout", "30s"])
        .arg("--script")
        .arg(script(name))
        .arg("--out")
        .arg(out)
        .arg("--json")
        .env("KDNET_SCRIPT_KEY", "3.1.4.1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{err}")))
        .collect();
    (lines, err, o.status.code())
}

fn outcomes<'a>(lines: &'a [Value], command: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| {
            l["command"]
                .as_str()
                .is_some_and(|c| c.starts_with(command))
        })
        .collect()
}

fn echoes(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l["type"] == "echo")
        .filter_map(|l| l["result"]["text"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn hang_script_finds_the_deadlock_and_writes_a_snapshot() {
    let out = temp_dir("hang-kds");
    let (lines, err, code) = run_script("hang.kds", &["--scenario", "deadlock"], &out);
    assert_eq!(code, Some(0), "{err}\n{lines:?}");
    assert!(err.contains("the target continues"), "{err}");
    // Every command of the script answered.
    for c in [
        "!locks",
        "!thread",
        "!deadlock",
        "!vm",
        "!poolused",
        "!ndiskd.pendingnbls",
        "!stacks",
    ] {
        let o = outcomes(&lines, c);
        assert!(!o.is_empty(), "{c} did not run");
        for x in o {
            assert!(x["error"].is_null(), "{c}: {}", x["error"]);
        }
    }
    // The owners of the held resources were each looked at with !thread.
    let locks = outcomes(&lines, "!locks")[0];
    let mut owners: Vec<u64> = locks["result"]["held"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|h| h["owners"].as_array().unwrap().clone())
        .map(|o| kdnet_commands::hex::parse(&o["thread"]).unwrap())
        .collect();
    owners.sort();
    let mut looked: Vec<u64> = outcomes(&lines, "!thread")
        .iter()
        .map(|o| kdnet_commands::hex::parse(&o["result"]["thread"]).unwrap())
        .collect();
    looked.sort();
    assert_eq!(owners.len(), 2);
    assert_eq!(looked, owners);
    // The condition on the deadlock fired, the one on commit did not.
    let said = echoes(&lines);
    assert!(
        said.iter()
            .any(|e| e == "DEADLOCK: 1 wait-for cycle(s), see above"),
        "{said:?}"
    );
    assert!(!said.iter().any(|e| e.starts_with("COMMIT FAILING")));
    // The snapshot holds what was read: the same deadlock, offline.
    let snap = lines
        .iter()
        .filter(|l| l["type"] == "snapshot")
        .find_map(|l| l["result"]["path"].as_str())
        .expect("a snapshot line");
    assert!(snap.ends_with("hang.dmp"), "{snap}");
    let o = kdnet()
        .arg("open")
        .arg(snap)
        .args(["-c", "!deadlock; !locks", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let offline = json_lines(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(
        offline[1]["result"]["cycles"],
        outcomes(&lines, "!deadlock")[0]["result"]["cycles"]
    );
    assert_eq!(offline[2]["result"]["held"], locks["result"]["held"]);
    // Without -c the dump opens at the prompt: the same language, from a pipe here.
    let mut child = kdnet()
        .arg("open")
        .arg(snap)
        .arg("--history")
        .arg(out.join("history"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        b"$d = !deadlock\n.echo cycles $d.cycles\ng\nq\n",
    )
    .unwrap();
    let o = child.wait_with_output().unwrap();
    let (text, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert_eq!(o.status.code(), Some(0), "{text}{err}");
    assert!(text.contains("0: kd> !deadlock"), "{text}");
    assert!(text.contains("cycles 1"), "{text}");
    assert!(err.contains("a dump cannot run"), "{err}");
    let history = std::fs::read_to_string(out.join("history")).unwrap();
    assert_eq!(history.lines().next(), Some("$d = !deadlock"));
    std::fs::remove_dir_all(out).ok();
}

#[test]
fn network_hang_script_names_the_miniport_holding_the_packets() {
    let out = temp_dir("network-kds");
    let (lines, err, code) = run_script("network-hang.kds", &["--scenario", "nbl-hang"], &out);
    assert_eq!(code, Some(0), "{err}\n{lines:?}");
    let nbls = outcomes(&lines, "!ndiskd.pendingnbls")[0];
    assert_eq!(nbls["result"]["pending"], 1854);
    let holder = &nbls["result"]["holders"][0];
    let said = echoes(&lines);
    assert!(
        said.contains(&format!(
            "the largest holder: {}, {} NBLs",
            holder["name"].as_str().unwrap(),
            holder["count"]
        )),
        "{said:?}"
    );
    // The state block of that adapter, by the handle the first command found.
    let one = outcomes(&lines, "!ndiskd.miniport 0x");
    assert_eq!(one.len(), 1, "{lines:?}");
    assert_eq!(one[0]["result"]["miniport"], holder["handle"]);
    assert_eq!(one[0]["result"]["name"], holder["name"]);
    assert!(out.join("network-hang.dmp").is_file());
    std::fs::remove_dir_all(out).ok();
}

#[test]
fn bugcheck_script_analyzes_the_crash() {
    let out = temp_dir("bugcheck-kds");
    let (lines, err, code) = run_script(
        "bugcheck.kds",
        &["--scenario", "bugcheck", "--after", "0s"],
        &out,
    );
    assert_eq!(code, Some(0), "{err}\n{lines:?}");
    assert_eq!(lines[0]["result"]["bugcheck"]["code"], 0x44);
    let a = outcomes(&lines, "!analyze")[0];
    assert_eq!(a["result"]["bugcheck_code"], 0x44);
    assert!(
        a["result"]["failure_bucket"]
            .as_str()
            .unwrap()
            .starts_with("0x44_CimFS"),
        "{a}"
    );
    assert!(!echoes(&lines).iter().any(|e| e.starts_with("no bugcheck")));
    for c in ["k", "!thread", "!vm", "lm"] {
        let o = outcomes(&lines, c);
        assert!(!o.is_empty() && o[0]["error"].is_null(), "{c}: {o:?}");
    }
    assert!(out.join("bugcheck.dmp").is_file());
    std::fs::remove_dir_all(out).ok();
}

#[test]
fn a_script_with_a_syntax_error_runs_nothing_and_says_where() {
    let dir = temp_dir("bad-kds");
    let f = dir.join("bad.kds");
    std::fs::write(&f, "lm\n.foreach (t of $x) { k }\n").unwrap();
    // The script is checked before anything connects: no target is needed.
    let o = kdnet()
        .args([
            "run",
            "--port",
            &free_udp_port().to_string(),
            "--key",
            "1.2.3.4",
        ])
        .arg("--script")
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.kds: line 2, column 13"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn every_shipped_script_parses_and_says_what_it_does() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "kds") {
            let text = std::fs::read_to_string(&p).unwrap();
            kdnet_commands::script::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert!(text.starts_with("$$ "), "{} is not documented", p.display());
            n += 1;
        }
    }
    assert!(n >= 3);
}
