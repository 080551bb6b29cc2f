//! The `kdnet` binary end to end: the demo, `decode` on the real capture, and its errors.

mod common;

use std::path::PathBuf;

use common::{free_udp_port, json_lines, kdnet};

fn shared() -> Option<PathBuf> {
    kdnet_testkit::shared("captures")
}

#[test]
fn demo_catches_the_hang_and_leaves_a_bundle() {
    let dir = common::temp_dir("demo");
    let out = kdnet()
        .arg("demo")
        .arg("--out")
        .arg(&dir)
        .args(["--hang-after", "8s"])
        // A test build on a busy machine samples far slower than the demo's ceiling allows.
        .args(["--max-stop", "sample=60s"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Healthy samples first, then the hang is noticed and captured, and the machine goes on.
    let sampled = text.find("demo: sampled: nothing found").expect(&text);
    let capturing = text.find("demo: capturing: sample-").expect(&text);
    assert!(sampled < capturing, "{text}");
    assert!(text.contains("nt!PiEngineLock"), "{text}");
    assert!(
        text.contains("finding: 1854 NBLs pending: My Ethernet 1Gb 4-port Adapter holds 1854"),
        "{text}"
    );
    assert!(text.contains("the machine runs again"), "{text}");
    // Each finding explained in a line; the protocol's counters only with -v.
    assert!(
        text.contains("top pool tag Res (") && text.contains(": executive resources (ERESOURCE"),
        "{text}"
    );
    assert!(text.contains("what the findings mean:"), "{text}");
    assert!(!text.contains("target counters"), "{text}");
    let bundle = text
        .lines()
        .find_map(|l| l.strip_prefix("bundle: "))
        .expect(&text);
    let bundle = PathBuf::from(bundle);
    assert!(bundle.starts_with(&dir));
    for f in ["report.txt", "report.json", "report.html", "snapshot.dmp"] {
        assert!(bundle.join(f).is_file(), "{f} missing in {bundle:?}");
    }
    let report = std::fs::read_to_string(bundle.join("report.txt")).unwrap();
    assert!(report.contains("Complete: yes"), "{report}");
    assert!(report.contains("0: kd> !locks"), "{report}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn decode_json_has_the_documented_fields() {
    let Some(dir) = shared() else { return };
    let out = kdnet()
        .args(["decode", "--json", "--key", "8.8.8.8"])
        .arg(dir.join("captures/windbg-uncut.pcapng.gz"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines = json_lines(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(lines.len(), 955);
    for (i, v) in lines.iter().enumerate() {
        assert_eq!(v["n"], i + 1);
        assert_eq!(v["authenticated"], true);
        assert!(v["channel"] == "control" || v["channel"] == "data");
    }
    // The GetVersion reply.
    let gv = &lines[11];
    assert_eq!(gv["kd_type"], 2);
    assert_eq!(gv["kd_id"], 4);
    assert_eq!(gv["kd_leader"], 0x30303030u32);
    assert_eq!(gv["api"], 0x3146);
    assert_eq!(gv["status"], 0);
    assert_eq!(gv["body"]["minor_version"], 10586);
    // A read: address and transfer count.
    let read = lines
        .iter()
        .find(|v| v["api"] == 0x3130 && v["address"] == 0xAD5E60u64)
        .unwrap();
    assert_eq!(read["transfer_count"], 16);
    // DbgPrint text and a state change.
    assert_eq!(lines[3]["text"], "BD: Boot Debugger Initialized\n");
    assert_eq!(lines[7]["new_state"], 0x3031);
    // File I/O names.
    assert!(lines.iter().any(|v| {
        v["file_io"]["op"]["name"]
            .as_str()
            .is_some_and(|n| n.ends_with("kdnet.dll"))
    }));
}

#[test]
fn decode_with_the_wrong_key_hints_at_the_key() {
    let Some(dir) = shared() else { return };
    let out = kdnet()
        .args(["decode", "--key", "1.2.3.4"])
        .arg(dir.join("captures/windbg-uncut.pcapng.gz"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 955);
    assert!(text.lines().all(|l| l.contains("NOT AUTHENTICATED")));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the key is probably wrong"), "{err}");
}

#[test]
fn decode_errors_are_messages_with_exit_codes() {
    let dir = std::env::temp_dir().join(format!("kdnet-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A pcap whose only record runs past the end.
    let mut pcap = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    pcap.extend_from_slice(&65535u32.to_le_bytes());
    pcap.extend_from_slice(&1u32.to_le_bytes());
    pcap.extend_from_slice(&[0; 8]);
    pcap.extend_from_slice(&100u32.to_le_bytes());
    pcap.extend_from_slice(&100u32.to_le_bytes());
    pcap.extend_from_slice(&[0; 10]);
    let f = dir.join("cut.pcap");
    std::fs::write(&f, &pcap).unwrap();
    let out = kdnet()
        .args(["decode", "--key", "1.1.1.1"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("byte offset 24"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // A bad key is a bad argument.
    let out = kdnet()
        .args(["decode", "--key", "1.2.x!.4"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("group 3"));
    // An unknown subcommand too.
    assert_eq!(
        kdnet().arg("frobnicate").output().unwrap().status.code(),
        Some(3)
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// An Ethernet frame of a UDP datagram from 10.0.0.1:51111 to 10.0.0.2:51111.
fn eth_udp(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0x08, 0x00]);
    let total = 20 + 8 + payload.len();
    f.extend_from_slice(&[
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        0,
        0,
        64,
        17,
        0,
        0,
    ]);
    f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
    let ulen = 8 + payload.len();
    f.extend_from_slice(&[0xc7, 0xa7, 0xc7, 0xa7, (ulen >> 8) as u8, ulen as u8, 0, 0]);
    f.extend_from_slice(payload);
    f
}

/// A pcap of `frames`.
fn pcap(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut d = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
    d.extend_from_slice(&[0; 8]);
    d.extend_from_slice(&65535u32.to_le_bytes());
    d.extend_from_slice(&1u32.to_le_bytes());
    for (i, f) in frames.iter().enumerate() {
        d.extend_from_slice(&(i as u32).to_le_bytes());
        d.extend_from_slice(&0u32.to_le_bytes());
        d.extend_from_slice(&(f.len() as u32).to_le_bytes());
        d.extend_from_slice(&(f.len() as u32).to_le_bytes());
        d.extend_from_slice(f);
    }
    d
}

#[test]
fn decode_prints_every_datagram_before_the_damage_then_fails() {
    let dir = common::temp_dir("decode-cut");
    // Three KDNET control datagrams (their tags do not authenticate: printed as such).
    let frames: Vec<Vec<u8>> = (0..3u8)
        .map(|i| {
            let mut p = b"MDBG\x02\x00".to_vec();
            p.extend_from_slice(&[i; 60]);
            eth_udp(&p)
        })
        .collect();
    let whole = pcap(&frames);
    let cut = &whole[..whole.len() - 10];
    let f = dir.join("cut.pcap");
    std::fs::write(&f, cut).unwrap();
    let run = |file: &std::path::Path| {
        kdnet()
            .args(["decode", "--key-env", "KDNET_TEST_KEY"])
            .arg(file)
            .env("KDNET_TEST_KEY", "1.2.3.4")
            .output()
            .unwrap()
    };
    let out = run(&f);
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.lines().all(|l| l.contains("NOT AUTHENTICATED")),
        "{text}"
    );
    let third = 24 + 2 * (16 + frames[0].len());
    assert!(err.contains(&format!("byte offset {third}")), "{err}");
    assert!(
        err.contains("(the 2 UDP datagrams before it are decoded above)"),
        "{err}"
    );
    assert!(!err.contains("shows in the process list"), "{err}");
    // The same capture whole decodes all three and succeeds.
    std::fs::write(&f, &whole).unwrap();
    let out = run(&f);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    // Compressed and cut short in the gzip stream: what decompressed is decoded.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
    std::io::Write::write_all(&mut gz, &whole).unwrap();
    let gz = gz.finish().unwrap();
    let g = dir.join("cut.pcap.gz");
    std::fs::write(&g, &gz[..gz.len() - 40]).unwrap();
    let out = run(&g);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    assert!(err.contains("gzip stream is damaged"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn decode_of_the_real_capture_cut_short_prints_the_same_first_datagrams() {
    let Some(dir) = shared() else { return };
    let tmp = common::temp_dir("decode-real-cut");
    let mut raw = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(
            std::fs::File::open(dir.join("captures/windbg-uncut.pcapng.gz")).unwrap(),
        ),
        &mut raw,
    )
    .unwrap();
    let f = tmp.join("half.pcapng");
    std::fs::write(&f, &raw[..raw.len() / 2]).unwrap();
    let decode = |file: &std::path::Path| {
        kdnet()
            .args(["decode", "--key-env", "KDNET_TEST_KEY"])
            .arg(file)
            .env("KDNET_TEST_KEY", "8.8.8.8")
            .output()
            .unwrap()
    };
    let half = decode(&f);
    assert_eq!(half.status.code(), Some(1));
    let full = decode(&dir.join("captures/windbg-uncut.pcapng.gz"));
    let (h, w) = (
        String::from_utf8_lossy(&half.stdout).into_owned(),
        String::from_utf8_lossy(&full.stdout).into_owned(),
    );
    let n = h.lines().count();
    assert!(n > 100 && n < 955, "{n}");
    assert!(
        w.starts_with(&h),
        "the datagrams before the cut decode as in the whole capture"
    );
    std::fs::remove_dir_all(tmp).ok();
}

#[test]
fn decode_and_sim_take_the_key_from_a_file_or_the_environment_and_warn_on_the_command_line() {
    let dir = common::temp_dir("keys");
    let f = dir.join("one.pcap");
    std::fs::write(&f, pcap(&[eth_udp(b"MDBG\x02\x00 hello")])).unwrap();
    let key_file = dir.join("k.txt");
    std::fs::write(&key_file, "1.2.3.4\n").unwrap();
    let decode = |args: &[&str]| {
        kdnet()
            .arg("decode")
            .args(args)
            .arg(&f)
            .env("KDNET_TEST_KEY", "1.2.3.4")
            .output()
            .unwrap()
    };
    let k = key_file.to_str().unwrap();
    for args in [&["--key-file", k][..], &["--key-env", "KDNET_TEST_KEY"]] {
        let o = decode(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{args:?}: {err}");
        assert!(!err.contains("process list"), "{args:?}: {err}");
    }
    let o = decode(&["--key", "1.2.3.4"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("shows in the process list"));
    let o = decode(&["--key", "1.2.3.4", "--key-file", k]);
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("give the key once"));
    let o = decode(&["--key-env", "KDNET_NO_SUCH_VARIABLE"]);
    assert_eq!(o.status.code(), Some(3));
    // The simulator likewise: the key it is given is not printed, one on the command line warns.
    let sim = |args: &[&str]| {
        kdnet()
            .args([
                "sim",
                "--host",
                "127.0.0.1:9",
                "--resources",
                "500",
                "--duration",
                "1s",
            ])
            .args(args)
            .env("KDNET_TEST_KEY", "1.2.3.4")
            .output()
            .unwrap()
    };
    for args in [&["--key-file", k][..], &["--key-env", "KDNET_TEST_KEY"]] {
        let o = sim(args);
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        assert!(o.status.success(), "{args:?}: {err}");
        assert!(
            !out.contains("made for this run") && !err.contains("process list"),
            "{out}{err}"
        );
    }
    let o = sim(&["--key", "1.2.3.4"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("shows in the process list"));
    let o = sim(&["--key-env", "KDNET_NO_SUCH_VARIABLE"]);
    assert_eq!(o.status.code(), Some(3));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn sim_runs_and_prints_its_counters() {
    let out = kdnet()
        .args([
            "sim",
            "--host",
            "127.0.0.1:9",
            "--key",
            "1.2.3.4",
            "--scenario",
            "deadlock",
            "--resources",
            "500",
            "--duration",
            "1s",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("scenario deadlock"), "{text}");
    assert!(text.contains("500 executive resources"), "{text}");
    // The built-in table is 20348's: the banner says what it found there.
    assert!(
        text.contains("families, from the table: pool: segment heap (ExPoolState"),
        "{text}"
    );
    assert!(text.contains("offers to 127.0.0.1:9"), "{text}");
    assert!(
        text.contains("target counters:") && text.contains("offers 1"),
        "{text}"
    );
}

#[test]
fn sim_refuses_bad_arguments() {
    let out = kdnet()
        .args(["sim", "--scenario", "meltdown"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown scenario"));
    // Build 7601 needs its table; the built-in one is 20348.
    let out = kdnet()
        .args(["sim", "--build", "7601", "--key", "1.1.1.1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("covers build 20348 only"));
    let out = kdnet()
        .args(["sim", "--loss", "2", "--key", "1.1.1.1"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
}

#[test]
fn open_runs_commands_on_the_triage_dump() {
    let Some(dir) = shared() else { return };
    let dump = dir.join("dumps/triage_x64.dmp");
    let pdbs = dir.join("pdbs");
    let out = kdnet()
        .args([
            "open",
            dump.to_str().unwrap(),
            "--symbols",
            pdbs.to_str().unwrap(),
        ])
        .args(["-c", "k; lm m amdppm; r rip"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // Every command works, but the stack stops where the kernel's image (not in a triage
    // dump) would be needed to go on: the result is incomplete, and says so.
    assert_eq!(
        out.status.code(),
        Some(4),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("INCOMPLETE: the stack walk stopped early: no unwind data for ntoskrnl.exe"),
        "{text}"
    );
    assert!(
        text.contains("Bugcheck 1000007E (ffffffffc0000005, fffff8048b58334c"),
        "{text}"
    );
    assert!(text.contains("0: kd> k\n"), "{text}");
    assert!(
        text.contains("03 ffff8504`298921b0 fffff804`8b5a83f6     amdppm!InitAcpiCpc+0x317"),
        "{text}"
    );
    assert!(text.contains("amdppm     (pdb symbols)"), "{text}");
    assert!(text.contains("rip=fffff8048b58334c"), "{text}");

    // JSON lines: the target, then one object per command with its cost.
    let out = kdnet()
        .args([
            "open",
            dump.to_str().unwrap(),
            "--json",
            "-c",
            "lm; frobnicate",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "a failed command fails the run");
    let lines = json_lines(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["type"], "target");
    assert_eq!(lines[0]["result"]["build"], 19041);
    assert_eq!(lines[0]["result"]["bugcheck"]["code"], 0x1000_007e);
    assert_eq!(lines[1]["command"], "lm");
    assert_eq!(lines[1]["result"]["modules"].as_array().unwrap().len(), 151);
    assert!(lines[1]["cost"]["round_trips"].is_u64());
    assert_eq!(lines[2]["error"], "no such command: frobnicate");

    let out = kdnet()
        .args(["open", "/nonexistent.dmp", "-c", "k"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent.dmp"));
}

#[test]
fn run_attaches_to_a_live_target_runs_commands_and_lets_it_go() {
    let port = free_udp_port();
    let dir = std::env::temp_dir().join(format!("kdnet-cli-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("key.txt");
    std::fs::write(&key_file, "9.8.7.6\n").unwrap();
    let mut sim = kdnet()
        .args(["sim", "--host", &format!("127.0.0.1:{port}"), "--key-file"])
        .arg(&key_file)
        .args(["--resources", "500", "--duration", "60s"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = kdnet()
        .args(["run", "--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--key-file",
            key_file.to_str().unwrap(),
            "--connect-timeout",
            "30s",
        ])
        .args([
            "-c",
            "lm; k; ? nt; dt nt!_KPRCB poi(nt!KiProcessorBlock) Number; .snapshot first",
        ])
        .arg("--out")
        .arg(dir.join("dumps/here"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}{err}");
    // Kernel memory is the owner's only: the dump, and the directories made for it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join("dumps")), 0o700);
        assert_eq!(mode(&dir.join("dumps/here")), 0o700);
        assert_eq!(mode(&dir.join("dumps/here/first.dmp")), 0o600);
    }
    assert!(!err.contains("shows in the process list"), "{err}");
    assert!(
        err.contains("Connected to target 127.0.0.1 on port"),
        "{err}"
    );
    assert!(err.contains("the target continues"), "{err}");
    assert!(text.contains("Kernel symbols: built-in"), "{text}");
    assert!(text.contains("nt         (pdb symbols)"), "{text}");
    assert!(text.contains("ndis       (deferred)"), "{text}");
    assert!(
        text.contains(" # Child-SP          RetAddr               Call Site"),
        "{text}"
    );
    assert!(text.contains("Evaluate expression: "), "{text}");
    assert!(text.contains("   +0x024 Number           : 0"), "{text}");
    sim.kill().ok();
    sim.wait().ok();

    // Nobody there: exit code 2 within the timeout, saying what was tried.
    let started = std::time::Instant::now();
    let out = kdnet()
        .args([
            "run",
            "--port",
            &free_udp_port().to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args(["--key", "1.2.3.4", "--connect-timeout", "1s", "-c", "k"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no target connected"), "{err}");
    assert!(err.contains("shows in the process list"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));

    // No key, or two keys: bad arguments.
    let out = kdnet()
        .args(["run", "--port", "1", "-c", "k"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn run_answers_the_hang_commands_as_json() {
    let port = free_udp_port();
    let mut sim = kdnet()
        .args([
            "sim",
            "--host",
            &format!("127.0.0.1:{port}"),
            "--key",
            "7.7.7.7",
        ])
        .args(["--resources", "3000", "--duration", "60s"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = kdnet()
        .args(["run", "--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--key-env",
            "KDNET_TEST_KEY",
            "--connect-timeout",
            "30s",
            "--json",
        ])
        .args([
            "--max-seconds",
            "60",
            "-c",
            "!locks; !ndiskd.pendingnbls; !vm 1",
        ])
        .env("KDNET_TEST_KEY", "7.7.7.7")
        .output()
        .unwrap();
    sim.kill().ok();
    sim.wait().ok();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&text);
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[1]["result"]["total_locks"], 3000);
    assert_eq!(lines[1]["result"]["held"][0]["symbol"], "nt!PiEngineLock");
    assert_eq!(lines[2]["result"]["pending"], 1854);
    assert_eq!(
        lines[2]["result"]["holders"][0]["name"],
        "My Ethernet 1Gb 4-port Adapter"
    );
    assert_eq!(lines[3]["result"]["commit_failures"], 0);
    assert!(lines[1]["cost"]["round_trips"].as_u64().unwrap() > 0);
}

/// The simulated deadlock (a small one) for a minute, on loopback at `port` (killed on drop).
fn deadlock_sim(port: u16, key: &str) -> common::Sim {
    common::Sim::start_for(
        port,
        key,
        "60s",
        &[
            "--scenario",
            "deadlock",
            "--resources",
            "300",
            "--print-every",
            "1s",
        ],
    )
}

/// jq, or None (with a note) when it is absent and not required (CI installs Debian's and sets
/// KDNET_REQUIRE_JQ).
fn jq() -> Option<PathBuf> {
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let p = dir.join("jq");
        if p.is_file() {
            return Some(p);
        }
    }
    assert!(
        std::env::var_os("KDNET_REQUIRE_JQ").is_none(),
        "KDNET_REQUIRE_JQ is set but no jq was found"
    );
    eprintln!("skipping: no jq on PATH");
    None
}

/// An address survives jq (1.6 rounds JSON numbers past 2^53): the lock owner `!locks --json`
/// names, taken out with `jq -r` and handed to `!thread`, is the same thread.
#[test]
fn a_lock_owner_through_jq_is_the_same_thread() {
    let Some(jq) = jq() else { return };
    let port = free_udp_port();
    let _sim = deadlock_sim(port, "7.7.7.8");
    let run = |command: &str| -> Vec<u8> {
        let out = kdnet()
            .args(["run", "--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--key", "7.7.7.8", "--connect-timeout", "30s", "--json"])
            .args(["--max-seconds", "60", "-c", command])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{command}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let jq_r = |input: &[u8], filter: &str| -> String {
        use std::io::Write;
        let mut c = std::process::Command::new(&jq)
            .args(["-r", filter])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(input).unwrap();
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let locks = run("!locks");
    let owner = jq_r(
        &locks,
        r#"select(.type == "command") | .result.held[] | select(.exclusive_owner != null) | .exclusive_owner"#,
    );
    let owner = owner.lines().next().unwrap().to_string();
    // A full 64-bit kernel address, exactly as the result holds it.
    assert!(owner.starts_with("0xffff") && owner.len() == 18, "{owner}");
    let thread = run(&format!("!thread {owner}"));
    let again = jq_r(&thread, r#"select(.type == "command") | .result.thread"#);
    assert_eq!(again, owner);
    // The line names the command as it ran.
    let text = jq_r(&thread, r#"select(.type == "command") | .command"#);
    assert_eq!(text, format!("!thread {owner}"));
}

/// `kdnet run --bundle DIR` writes the bundle a watcher writes, from a headless run.
#[test]
fn run_writes_a_watchers_bundle() {
    let port = free_udp_port();
    let dir = common::temp_dir("run-bundle");
    let _sim = deadlock_sim(port, "7.7.7.9");
    let out = kdnet()
        .args(["run", "--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--key",
            "7.7.7.9",
            "--connect-timeout",
            "30s",
            "--max-seconds",
            "60",
        ])
        .arg("--bundle")
        .arg(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}{err}");
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("bundle: "))
        .expect(&text);
    let b = PathBuf::from(path);
    assert!(b.starts_with(&dir), "{path}");
    for f in ["report.txt", "report.json", "report.html", "snapshot.dmp"] {
        assert!(b.join(f).is_file(), "{f} missing in {b:?}");
    }
    // The built-in hang.kds ran: the deadlock's cycle is a finding, and the target went on.
    assert!(
        text.contains("deadlock: 2 threads wait for each other"),
        "{text}"
    );
    assert!(err.contains("the target continues"), "{err}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["trigger"]["kind"], "manual");
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(report["left_stopped"], false);
    std::fs::remove_dir_all(dir).ok();
}

/// A bundle that cannot be made (its directory cannot be created) is an error, and the target
/// the run stopped goes on all the same.
#[test]
fn run_whose_bundle_cannot_be_made_lets_the_target_go_on() {
    let port = free_udp_port();
    let dir = common::temp_dir("run-bundle-bad");
    let blocker = dir.join("a-file");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let _sim = deadlock_sim(port, "7.7.7.10");
    let out = kdnet()
        .args(["run", "--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--key",
            "7.7.7.10",
            "--connect-timeout",
            "30s",
            "--max-seconds",
            "60",
        ])
        .arg("--bundle")
        .arg(blocker.join("under"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("the target continues"), "{err}");
    common::assert_target_runs(port, "7.7.7.10", "vmcompute: container");
    std::fs::remove_dir_all(dir).ok();
}
