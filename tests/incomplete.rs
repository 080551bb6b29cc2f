//! `kdnet open` on a dump whose pages are partly missing: a command whose walk meets a missing
//! page runs, says its result is incomplete, and the exit code is 4; a command that needs none
//! of the missing pages is whole (0); a failed command outweighs an incomplete result (1).
//! `kdnet run` whose time budget cuts a walk short never exits 0.

mod common;

use std::path::Path;

use common::{Sim, free_udp_port, json_lines, kdnet, temp_dir};
use kdnet_commands::engine::Engine;
use kdnet_model::dump::{WriteKind, write_dump};
use kdnet_model::nt::Kernel;
use kdnet_sim::{Machine, Scenario, SimConfig, TableSource};
use kdnet_testkit::local::LocalTarget;

/// Reads the simulated machine (built-in layout) in process, then writes a bitmap dump of what
/// was read without the page of the `missing`-th process on the list; the process names in
/// list order.
fn partial_dump(path: &Path, missing: usize) -> Vec<String> {
    let config = SimConfig {
        build: 20348,
        table: TableSource::Builtin,
        scenario: Scenario::Healthy,
        cpus: 2,
        resources: 100,
        hang_after: None,
        bugcheck_after: None,
        seed: 3,
        print_every: std::time::Duration::from_secs(3600),
        booted_nodebug: false,
        irps: 0,
        bugcheck_at_break_in: None,
    };
    let machine = Machine::build(config).unwrap();
    let cpus = machine.system().cpus.len() as u32;
    let kernel = Kernel::open(
        Box::new(LocalTarget::new(machine, cpus)),
        kdnet_sim::symbols::symbol_path(""),
    )
    .unwrap();
    let mut e = Engine::new(kernel);
    for c in ["lm", "!process 0 0"] {
        let o = e.run(c);
        assert!(o.ok() && o.complete, "{c}: {:?}", o.error);
    }
    let procs = e.run("!process 0 0").result["processes"]
        .as_array()
        .unwrap()
        .clone();
    assert!(procs.len() > missing + 1, "{} processes", procs.len());
    let header = e.kernel.dump_header("partial").unwrap();
    let mut pages = e.kernel.mem.snapshot_pages();
    let gone = kdnet_commands::hex::parse(&procs[missing]["process"]).unwrap();
    let space = e.kernel.mem.kernel_space().unwrap();
    let pa = e.kernel.mem.translate(space, gone).unwrap();
    assert!(pages.remove(&(pa / 0x1000)).is_some());
    write_dump(path, &header, WriteKind::Bitmap, &pages).unwrap();
    procs
        .iter()
        .map(|p| p["image"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn open_exits_4_when_a_result_is_incomplete() {
    let dir = temp_dir("incomplete");
    let dump = dir.join("partial.dmp");
    let names = partial_dump(&dump, 2);
    let open = |args: &[&str]| kdnet().arg("open").arg(&dump).args(args).output().unwrap();

    // What the dump holds whole: exit 0.
    let out = open(&["-c", "lm"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.contains("INCOMPLETE"), "{text}");

    // The process list stops at the missing page: the processes before it, then the reason.
    let out = open(&["-c", "!process 0 0"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("Image: {}\n", names[0])), "{text}");
    assert!(!text.contains(&format!("Image: {}\n", names[2])), "{text}");
    assert!(text.contains("INCOMPLETE: process list: "), "{text}");

    // The same as JSON: the result is there, marked incomplete with its reason.
    let out = open(&["--json", "-c", "!process 0 0"]);
    assert_eq!(out.status.code(), Some(4));
    let lines = json_lines(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(lines[1]["command"], "!process 0 0");
    assert_eq!(lines[1]["complete"], false);
    assert!(lines[1]["error"].is_null());
    // The processes before the missing page, in order, and none after it.
    let shown: Vec<&str> = lines[1]["result"]["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["image"].as_str().unwrap())
        .collect();
    assert!(!shown.is_empty() && shown.len() <= 2, "{shown:?}");
    assert_eq!(shown, names[..shown.len()]);
    let why = lines[1]["incomplete"][0].as_str().unwrap();
    assert!(why.contains("unreadable"), "{why}");
    // A whole result says so too.
    let out = open(&["--json", "-c", "lm"]);
    let lines = json_lines(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(lines[1]["complete"], true);
    assert_eq!(lines[1]["incomplete"].as_array().unwrap().len(), 0);

    // A failed command outweighs an incomplete result, whatever the order.
    for c in ["!process 0 0; frobnicate", "frobnicate; !process 0 0"] {
        let out = open(&["-c", c]);
        assert_eq!(out.status.code(), Some(1), "{c}");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn run_never_exits_0_when_the_time_budget_cuts_a_walk_short() {
    // 3,000 resources over a link with a 100 ms round trip: the walk needs far more than the
    // 2 s each command may take, however fast the machine.
    let port = free_udp_port();
    let _sim = Sim::start(
        port,
        "6.6.6.6",
        &["--resources", "3000", "--latency", "50ms"],
    );
    let out = kdnet()
        .args(["run", "--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--key", "6.6.6.6", "--connect-timeout", "60s", "--json"])
        .args(["--max-seconds", "2", "-c", "!locks"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    let lines = json_lines(&text);
    let locks = lines
        .iter()
        .find(|l| l["command"] == "!locks")
        .unwrap_or_else(|| panic!("{text}{err}"));
    match out.status.code() {
        // What the walk found, marked incomplete because the budget ran out.
        Some(4) => {
            assert_eq!(locks["complete"], false, "{locks}");
            assert_eq!(locks["result"]["complete"], false, "{locks}");
            assert!(locks["result"]["total_locks"].as_u64().unwrap() < 3000);
            let why = locks["incomplete"].to_string();
            assert!(why.contains("time budget"), "{why}");
        }
        // The budget ran out before the walk began.
        Some(1) => {
            let e = locks["error"].as_str().unwrap();
            assert!(e.contains("time budget"), "{e}");
        }
        other => panic!("exit code {other:?}: {text}{err}"),
    }
    assert!(err.contains("the target continues"), "{err}");
}
