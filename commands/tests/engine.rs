//! The command engine's basic commands on the simulated machine and the real triage dump: the
//! text is WinDbg's layout and the JSON carries the numbers the scenario planted.

mod common;

use common::sim_kernel;
use kdnet_commands::engine::{Engine, split_commands};
use kdnet_sim::Scenario;
use serde_json::Value;

fn one(e: &mut Engine, cmd: &str) -> (String, Value) {
    let o = e.run(cmd);
    assert!(o.ok(), "{cmd}: {:?}", o.error);
    (o.text, common::numbers(o.result))
}

#[test]
fn commands_on_the_simulated_kernel() {
    let Some((k, p)) = sim_kernel(20348, Scenario::NblHang) else {
        return;
    };
    let base = p.kernel_base;
    let mut e = Engine::new(k);

    // lm: every module, sorted, nt with its symbol table.
    let (text, j) = one(&mut e, "lm");
    assert!(text.starts_with("start             end                 module name\n"));
    let mods = j["modules"].as_array().unwrap();
    assert_eq!(mods.len(), p.modules.len());
    let nt = mods.iter().find(|m| m["name"] == "nt").unwrap();
    assert_eq!(nt["base"].as_u64(), Some(base));
    assert_eq!(nt["symbols"], "pdb");
    assert!(text.contains(&format!("{:08x}`{:08x} ", base >> 32, base as u32)));
    // Cached: a second lm costs no round trip.
    let again = e.run("lm");
    assert_eq!(again.cost.round_trips, 0);
    let (_, j) = one(&mut e, "lm m nd*");
    assert_eq!(j["modules"].as_array().unwrap().len(), 1);

    // Expressions.
    let (text, j) = one(&mut e, "? nt");
    assert_eq!(j["value"].as_u64(), Some(base));
    assert!(text.starts_with("Evaluate expression: "));
    let head = e.kernel.sym("PsLoadedModuleList").unwrap();
    let (_, j) = one(&mut e, "? nt!PsLoadedModuleList");
    assert_eq!(j["value"].as_u64(), Some(head));
    let first = e.kernel.mem.u64(head).unwrap();
    let (_, j) = one(&mut e, "?poi(nt!PsLoadedModuleList)");
    assert_eq!(j["value"].as_u64(), Some(first));

    // dq / db.
    let (text, j) = one(&mut e, "dq nt!PsLoadedModuleList L2");
    let vals: Vec<u64> = j["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(vals[0], first);
    assert_eq!(text.lines().count(), 1);
    let (text, _) = one(&mut e, "db nt L10");
    assert!(text.contains("  4d 5a"), "{text}");
    assert!(text.trim_end().ends_with("  MZ.............."), "{text}");
    // Unreadable memory shows as question marks and null.
    let (text, j) = one(&mut e, "dq 0 L2");
    assert!(text.contains("????????`????????"));
    assert!(j["values"][0].is_null());
    // dps symbolises what it finds.
    let (text, j) = one(&mut e, "dps nt!KiProcessorBlock L1");
    assert!(j["symbols"].is_array());
    assert_eq!(text.lines().count(), 1);

    // dt: the loader entry of the kernel, a process name, a nested thread field.
    let (text, j) = one(
        &mut e,
        "dt nt!_KLDR_DATA_TABLE_ENTRY poi(nt!PsLoadedModuleList)",
    );
    assert!(text.starts_with("nt!_KLDR_DATA_TABLE_ENTRY\n"));
    assert!(text.contains("   +0x000 InLoadOrderLinks"));
    let dll = j["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "DllBase")
        .unwrap();
    assert_eq!(dll["value"].as_u64(), Some(base));
    assert_eq!(dll["type"], "Ptr64 Void");
    let system = p.facts.processes.iter().find(|x| x.1 == 4).unwrap().0;
    let (text, j) = one(&mut e, &format!("dt _EPROCESS {system:x} ImageFileName"));
    assert_eq!(j["fields"][0]["value"], "System");
    assert!(text.contains("\"System\""), "{text}");
    let (et, _) = p.facts.hung_thread.unwrap();
    let (text, j) = one(&mut e, &format!("dt nt!_ETHREAD {et:x} Tcb.State"));
    assert_eq!(j["fields"][0]["value"].as_u64(), Some(5));
    assert!(text.contains("Tcb.State        : 0x5 ''"), "{text}");
    let (text, _) = one(&mut e, "dt _KTHREAD");
    assert!(text.contains(": Pos "), "bitfields without an address");
    assert!(text.contains(": _DISPATCHER_HEADER"));
    assert!(!e.run("dt nt!_NO_SUCH_TYPE").ok());

    // k: the current thread of the stopped processor, as planted.
    let cpu = e.processor as usize;
    let current = p.cpus[cpu].1;
    let rec = p.threads.iter().find(|t| t.ethread == current).unwrap();
    let (text, j) = one(&mut e, "k");
    assert!(text.starts_with(" # Child-SP          RetAddr               Call Site\n"));
    let frames = j["frames"].as_array().unwrap();
    assert_eq!(frames.len(), rec.frames.len());
    for (f, (call, _, rsp)) in frames.iter().zip(&rec.frames) {
        assert!(
            f["call_site"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{}!", call.module))
        );
        assert_eq!(f["child_sp"].as_u64(), Some(*rsp));
    }
    let (text, _) = one(&mut e, "kb");
    assert!(text.contains(" # Child-SP          RetAddr               : Args to Child"));
    let second = &frames[1];
    assert!(
        text.contains(&format!(
            "01 {:08x}`{:08x} ",
            second["child_sp"].as_u64().unwrap() >> 32,
            second["child_sp"].as_u64().unwrap() as u32
        )),
        "{text}"
    );
    // kc: call sites only, one line per frame; kf: each frame's stack use.
    let (text, _) = one(&mut e, "kc");
    assert_eq!(text.lines().count(), frames.len() + 1, "{text}");
    assert!(text.lines().nth(1).unwrap().starts_with("00 nt!"), "{text}");
    let (text, _) = one(&mut e, "kf");
    let used = second["child_sp"].as_u64().unwrap() - frames[0]["child_sp"].as_u64().unwrap();
    assert!(
        text.lines()
            .nth(2)
            .unwrap()
            .starts_with(&format!("01 {used:>8x}  ")),
        "{text}"
    );
    // The letters run together as WinDbg takes them; `kbn 2` is `kb 2`.
    let (text, j) = one(&mut e, "kbn 2");
    assert_eq!(j["frames"].as_array().unwrap().len(), 2);
    assert!(text.contains(": Args to Child"), "{text}");
    let (_, j) = one(&mut e, "kpL");
    assert_eq!(j["frames"].as_array().unwrap().len(), frames.len());
    assert!(!e.run("kbc").ok(), "two layouts at once");
    // `k = BasePtr StackPtr InstructionPtr`: walking from frame 1's registers gives the rest
    // of the stack.
    let (_, j) = one(
        &mut e,
        &format!(
            "k = @rbp {:#x} {:#x}",
            second["child_sp"].as_u64().unwrap(),
            second["ip"].as_u64().unwrap()
        ),
    );
    let from_one = j["frames"].as_array().unwrap();
    assert_eq!(from_one.len(), frames.len() - 1);
    for (a, b) in from_one.iter().zip(&frames[1..]) {
        assert_eq!(a["call_site"], b["call_site"]);
        assert_eq!(a["child_sp"], b["child_sp"]);
    }
    let (_, j) = one(&mut e, "k =@rbp @rsp @rip 1");
    assert_eq!(j["frames"].as_array().unwrap().len(), 1);
    for bad in ["k = 1 2", "k 1 2", "k = 1 2 3 4 5"] {
        assert!(!e.run(bad).ok(), "{bad}");
    }

    // ln: an address inside a function, and an exact one.
    let f = e.kernel.sym("KeBugCheckEx").unwrap();
    let (text, j) = one(&mut e, &format!("ln {:x}", f + 0x10));
    assert!(text.contains("nt!KeBugCheckEx+0x10"), "{text}");
    assert_eq!(j["symbol_address"].as_u64(), Some(f));
    let (text, _) = one(&mut e, "ln nt!KeBugCheckEx");
    assert!(text.contains("Exact matches:\n    nt!KeBugCheckEx"));

    // r: the stopped processor's registers.
    let (text, j) = one(&mut e, "r");
    assert!(text.starts_with("rax="));
    assert!(text.contains("iopl="));
    let rip = j["rip"].as_u64().unwrap();
    assert_eq!(
        common::numbers(e.run("? @rip").result)["value"].as_u64(),
        Some(rip),
        "registers in expressions"
    );
    let (text, _) = one(&mut e, "r rip");
    assert_eq!(text, format!("rip={rip:016x}\n"));

    // Errors are per command, with a reason.
    let o = e.run("frobnicate");
    assert_eq!(o.error.as_deref(), Some("no such command: frobnicate"));
    let o = e.run("? 1 + + )");
    assert!(o.error.unwrap().contains("column"));
    let o = e.run("dq nt L0");
    assert!(!o.ok());
    let all = e.run_line("? 1; ? 2 ;; frobnicate");
    assert_eq!(all.len(), 3);
    assert_eq!(all[1].result["value"], "0x0000000000000002");
    assert!(!all[2].ok());
}

#[test]
fn commands_on_the_triage_dump() {
    let Some(k) = common::triage_kernel() else {
        return;
    };
    let mut e = Engine::new(k);
    let (_, j) = one(&mut e, "lm");
    assert_eq!(j["modules"].as_array().unwrap().len(), 151);
    let (text, j) = one(&mut e, "k");
    assert_eq!(j["frames"][0]["call_site"], "amdppm!WriteIoMemRawEx+0x70");
    assert!(text.contains("ffff8504`29892120 fffff804`8b58313f     amdppm!WriteIoMemRawEx+0x70"));
    let (_, j) = one(&mut e, "r");
    assert_eq!(j["rip"].as_u64(), Some(0xffff_f804_8b58_334c));
    let (text, _) = one(&mut e, "ln amdppm!InitAcpiCpc+0x317");
    assert!(text.contains("amdppm!InitAcpiCpc+0x317"), "{text}");
    // Memory of the saved stack is in the dump.
    let (_, j) = one(&mut e, "dq @rsp L1");
    assert!(j["values"][0].is_u64());
    // The kernel's own types are not here: dt says so.
    let o = e.run("dt nt!_KTHREAD");
    assert!(o.error.unwrap().contains("no symbols for the kernel"));
}

#[test]
fn command_lines_split_at_semicolons() {
    assert_eq!(split_commands("lm; k ;dq @rsp"), ["lm", "k", "dq @rsp"]);
    assert_eq!(split_commands(".echo \"a;b\"; k"), [".echo \"a;b\"", "k"]);
    assert!(split_commands(" ; ;").is_empty());
}

#[test]
fn pseudo_registers_and_every_register_name() {
    let mut cr3 = 0;
    let Some((k, p)) = common::sim_kernel_with(20348, Scenario::Deadlock, |m| {
        cr3 = m.system().k.space.cr3;
    }) else {
        return;
    };
    let mut e = Engine::new(k);
    let value = |e: &mut Engine, c: &str| -> u64 {
        let (_, j) = one(e, c);
        j["value"].as_u64().unwrap_or_else(|| panic!("{c}: {j}"))
    };
    let (prcb, current) = p.cpus[e.processor as usize];
    // The current thread, process and processor, with `@` and without.
    assert_eq!(value(&mut e, "? @$thread"), current);
    assert_eq!(value(&mut e, "? $thread"), current);
    assert_eq!(value(&mut e, "? @$prcb"), prcb);
    let t = p.threads.iter().find(|t| t.ethread == current).unwrap();
    let (eprocess, pid, _) = p.facts.processes[t.process].clone();
    assert_eq!(value(&mut e, "? @$proc"), eprocess);
    assert_eq!(value(&mut e, "? $tpid"), pid);
    assert_eq!(value(&mut e, "? $tid"), t.tid);
    // The first example of docs/commands.md.
    let (text, _) = one(&mut e, "dt nt!_KTHREAD @$thread State");
    assert!(text.contains("State"), "{text}");
    // $ip and $csp are rip and rsp; $ra is frame 0's return address.
    let (_, r) = one(&mut e, "r rip, rsp");
    assert_eq!(Some(value(&mut e, "? $ip")), r["rip"].as_u64());
    assert_eq!(Some(value(&mut e, "? @$csp")), r["rsp"].as_u64());
    let (_, k) = one(&mut e, "k 1");
    assert_eq!(
        Some(value(&mut e, "? @$ra")),
        k["frames"][0]["return_address"].as_u64()
    );
    // $p: the first value the last d* command showed.
    let (_, d) = one(&mut e, "dq @$prcb L2");
    assert_eq!(Some(value(&mut e, "? $p")), d["values"][0].as_u64());
    // User registers.
    one(&mut e, "r $t0 = @$prcb + 8");
    assert_eq!(value(&mut e, "? $t0 - 8"), prcb);
    assert_eq!(value(&mut e, "? @$t1"), 0);
    let o = e.run("r rax = 1");
    assert!(o.error.unwrap().contains("cannot set 'rax'"));
    // Control registers from the processor's special registers; parts of registers and flags.
    let (text, j) = one(&mut e, "r cr3");
    assert_eq!(j["cr3"].as_u64(), Some(cr3));
    assert_eq!(text, format!("cr3={cr3:016x}\n"));
    let (text, j) = one(&mut e, "r eax, al, zf, cs");
    let rax = value(&mut e, "? @rax");
    assert_eq!(j["eax"].as_u64(), Some(rax & 0xffff_ffff));
    assert_eq!(j["al"].as_u64(), Some(rax & 0xff));
    assert!(text.contains("cs=0010\n"), "{text}");
    assert!(text.starts_with(&format!("eax={:08x}\nal={:02x}\n", rax as u32, rax as u8)));
    // rM 0x80 adds the control registers to the usual rows.
    let (text, j) = one(&mut e, "rM 0x82");
    assert_eq!(j["other"]["cr3"].as_u64(), Some(cr3));
    assert!(text.contains(&format!("cr3={cr3:016x}")), "{text}");
    assert!(text.contains("rax="));
    // $exentry is in nt; an unknown pseudo-register is an error, not zero.
    let entry = value(&mut e, "? $exentry");
    assert!(entry > p.kernel_base && entry < p.kernel_base + u64::from(p.modules[0].2));
    assert!(e.run("? $nosuch").error.unwrap().contains("bad register"));
    let o = e.run("? $bug_code");
    assert!(o.error.unwrap().contains("not bugchecked"));
}

#[test]
fn lm_takes_windbg_options() {
    let Some((k, p)) = sim_kernel(20348, Scenario::Healthy) else {
        return;
    };
    let mut e = Engine::new(k);
    // `lm vm nt` and `lm v m nt`: only nt, with its details.
    for c in ["lm vm nt", "lm v m nt"] {
        let (text, j) = one(&mut e, c);
        let mods = j["modules"].as_array().unwrap();
        assert_eq!(mods.len(), 1, "{c}: {text}");
        assert_eq!(mods[0]["name"], "nt");
        assert_eq!(mods[0]["base"].as_u64(), Some(p.kernel_base));
        assert!(mods[0]["checksum"].is_u64(), "{c}: {j}");
        assert!(text.contains("    Image path: "), "{text}");
        assert!(text.contains("    ImageSize:        "), "{text}");
        assert!(text.contains("    CheckSum:         "), "{text}");
        assert_eq!(text.matches("    Image name: ").count(), 1, "{text}");
    }
    // f: the full path; n: the image name; a: the module holding an address.
    let (text, _) = one(&mut e, "lm f m nt");
    let (_, j) = one(&mut e, "lm m nt");
    let path = j["modules"][0]["path"].as_str().unwrap().to_string();
    assert!(text.lines().nth(1).unwrap().ends_with(&path), "{text}");
    let (text, _) = one(&mut e, "lm n");
    assert!(text.contains(&p.modules[0].0), "{text}");
    let (_, j) = one(&mut e, &format!("lm a {:#x}", p.kernel_base + 0x1234));
    assert_eq!(j["modules"].as_array().unwrap().len(), 1);
    assert_eq!(j["modules"][0]["name"], "nt");
    // u: a kernel target's loader list has no user modules; a bad option is an error.
    let (_, j) = one(&mut e, "lm u");
    assert!(j["modules"].as_array().unwrap().is_empty());
    assert!(e.run("lm q").error.unwrap().contains("unknown option"));
    assert_eq!(
        one(&mut e, "lm").1["modules"].as_array().unwrap().len(),
        p.modules.len()
    );
}

#[test]
fn session_commands() {
    let Some((k, p)) = sim_kernel(20348, Scenario::Bugcheck) else {
        return;
    };
    let mut e = Engine::new(k);
    // .bugcheck: the code and parameters the scenario planted.
    let (code, params) = p.facts.bugcheck.unwrap();
    let (text, j) = one(&mut e, ".bugcheck");
    assert_eq!(j["code"].as_u64(), Some(u64::from(code)));
    assert_eq!(j["parameters"][0].as_u64(), Some(params[0]));
    assert!(
        text.starts_with(&format!("Bugcheck code {code:08X}\nArguments ")),
        "{text}"
    );
    // .lastevent: an in-process simulator does not report its stop; the bugcheck stands in.
    let (text, _) = one(&mut e, ".lastevent");
    assert!(
        text.starts_with(&format!("Last event: Bugcheck {code:08X}")),
        "{text}"
    );
    // .time and vertarget: the clock the simulator keeps (booted 2025-11-30 08:00 UTC).
    let (text, j) = one(&mut e, ".time");
    let up = j["uptime_seconds"].as_f64().unwrap();
    assert!(up >= 4.0 * 3600.0, "{up}");
    assert!(
        j["system_time"]
            .as_str()
            .unwrap()
            .starts_with("2025-11-30T"),
        "{j}"
    );
    assert!(text.contains("System Uptime: 0 days "), "{text}");
    let (text, j) = one(&mut e, "vertarget");
    assert_eq!(
        j["build_lab"].as_str(),
        Some("20348.1.amd64fre.kdnet_sim.261130-0800")
    );
    assert!(text.contains("Built by: 20348.1.amd64fre"), "{text}");
    assert!(text.contains("System Uptime: 0 days "), "{text}");
    // .reload /f nt: nt's symbols again; .reload: every module listed again.
    let (_, j) = one(&mut e, ".reload /f nt");
    assert_eq!(j["loaded"], serde_json::json!(["nt"]));
    let (_, j) = one(&mut e, ".reload");
    assert_eq!(j["modules"].as_u64(), Some(p.modules.len() as u64));
    assert!(e.run(".reload nosuchdriver").error.is_some());
    assert!(
        e.run(".reload /x")
            .error
            .unwrap()
            .contains("unknown option")
    );
    assert!(e.run("rm 0x4000").error.unwrap().contains("does not show"));
    assert!(
        e.run(".logopen")
            .error
            .unwrap()
            .contains("needs a file name")
    );
    assert!(
        e.run(".logopen /nonexistent-dir/x.log")
            .error
            .unwrap()
            .contains("cannot open log file")
    );
    one(&mut e, "? nt!KiWaitNever");
    // .sympath shows the path; .sympath+ adds to it and looks again (nt stays found).
    let (text, _) = one(&mut e, ".sympath");
    assert!(text.starts_with("Symbol search path is: "), "{text}");
    let dir = std::env::temp_dir().join(format!("kdnet-sympath-{}", std::process::id()));
    let (_, j) = one(&mut e, &format!(".sympath+ {}", dir.display()));
    assert!(
        j["path"]
            .as_str()
            .unwrap()
            .ends_with(&dir.display().to_string())
    );
    assert!(
        !j["kernel_symbols"].as_str().unwrap().contains("not on"),
        "{j}"
    );
    one(&mut e, "? nt!KiWaitNever");
    // .logopen: every command and its output from there on, until .logclose.
    let log = std::env::temp_dir().join(format!("kdnet-log-{}.txt", std::process::id()));
    let (text, _) = one(&mut e, &format!(".logopen {}", log.display()));
    assert!(text.starts_with("Opened log file"), "{text}");
    let (lm, _) = one(&mut e, "lm m nt");
    one(&mut e, ".logclose");
    one(&mut e, "k");
    let written = std::fs::read_to_string(&log).unwrap();
    assert!(written.contains(&format!("kd> lm m nt\n{lm}")), "{written}");
    assert!(!written.contains("kd> k\n"), "{written}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&log).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }
    std::fs::remove_file(&log).ok();
    // .cls says nothing (the prompt clears its screen).
    let (text, _) = one(&mut e, ".cls");
    assert!(text.is_empty());
}

#[test]
fn vertarget_checks_the_build_against_the_kernels_own_copy() {
    // Every place a debugger reads the build agrees, on every build's table: the reply to
    // GetVersion, nt!NtBuildNumber, KUSER_SHARED_DATA and the image's version resource.
    for build in common::BUILDS {
        let Some((k, _)) = sim_kernel(build, Scenario::Healthy) else {
            return;
        };
        let mut e = Engine::new(k);
        let (text, j) = one(&mut e, "vertarget");
        assert_eq!(j["build"].as_u64(), Some(u64::from(build)));
        assert_eq!(
            j["nt_build_number"].as_u64(),
            Some(0xF000_0000 | u64::from(build))
        );
        // (Windows 7 and 8.1 publish no build there.)
        let published = e
            .kernel
            .nt()
            .unwrap()
            .has_field("_KUSER_SHARED_DATA", "NtBuildNumber");
        assert_eq!(
            j["shared_data_build"].as_u64(),
            published.then_some(u64::from(build))
        );
        assert_eq!(published, build >= 10240);
        let (major, minor) = kdnet_sim::layout::nt_version(build);
        let image = j["image_version"].as_str().unwrap();
        assert!(
            image.starts_with(&format!("{major}.{minor}.{build}.")),
            "{build}: {image}"
        );
        assert!(j["warnings"].as_array().unwrap().is_empty(), "{j}");
        assert!(text.contains("(4 procs) Free x64"), "{text}");
        assert!(text.contains(&format!("Kernel image version: {image}\n")));
    }
    let Some((k, p)) = sim_kernel(20348, Scenario::Healthy) else {
        return;
    };
    let e = Engine::new(k);
    // A kernel whose own copy disagrees with what the target reported: said, not hidden.
    let at = p.kernel_base + e.kernel.nt().unwrap().symbol("NtBuildNumber").unwrap();
    let Some((k, _)) = common::sim_kernel_with(20348, Scenario::Healthy, |m| {
        use kdnet::machine::target::TargetHandler;
        m.write_virtual(0, at, &(0xF000_0000u32 | 20036).to_le_bytes());
    }) else {
        return;
    };
    let mut e = Engine::new(k);
    let (text, j) = one(&mut e, "vertarget");
    assert!(
        j["warnings"][0]
            .as_str()
            .unwrap()
            .starts_with("nt!NtBuildNumber says build 20036 but the target reported 20348"),
        "{j}"
    );
    assert!(text.contains("WARNING: nt!NtBuildNumber says build 20036"));
    // So is a KUSER_SHARED_DATA that disagrees.
    let off = e
        .kernel
        .nt()
        .unwrap()
        .offset("_KUSER_SHARED_DATA", "NtBuildNumber")
        .unwrap();
    let Some((k, _)) = common::sim_kernel_with(20348, Scenario::Healthy, |m| {
        use kdnet::machine::target::TargetHandler;
        m.write_virtual(0, 0xFFFF_F780_0000_0000 + off, &20036u32.to_le_bytes());
    }) else {
        return;
    };
    let mut e = Engine::new(k);
    let (_, j) = one(&mut e, "vertarget");
    assert_eq!(
        j["warnings"][0].as_str().unwrap(),
        "KUSER_SHARED_DATA says build 20036 but the target reported 20348",
        "{j}"
    );
}

/// A kernel table the project has never seen, whose layout moved: each command that needs a
/// member the table lacks says which type and member, and the other commands go on working
/// (never a number read from a guessed offset).
#[test]
fn a_member_the_table_lacks_stops_only_the_commands_that_need_it() {
    use kdnet_sim::{Machine, SimConfig};
    use kdnet_symbols::{builtin, isf};
    // (type, member removed, a command that needs it)
    let cases = [
        ("_ERESOURCE", "ContentionCount", "!locks"),
        ("_EPROCESS", "Peb", "!process 0 0"),
        ("_KTHREAD", "Teb", "!thread"),
        ("_KTHREAD", "Alertable", "!thread"),
        ("_MMPAGING_FILE", "FreeSpace", "!vm"),
        ("_KWAIT_BLOCK", "WaitType", "!deadlock"),
    ];
    for (ty, member, needs) in cases {
        let mut table = builtin::nt_demo();
        let id = table.id.clone().unwrap();
        let mut udt = table.udt(ty).unwrap().clone();
        let before = udt.fields.len();
        udt.fields.retain(|f| f.name != member);
        assert_eq!(
            udt.fields.len() + 1,
            before,
            "{ty}.{member} is in the table"
        );
        table.insert_udt(udt);
        let dir =
            std::env::temp_dir().join(format!("kdnet-moved-{}-{ty}-{member}", std::process::id()));
        std::fs::create_dir_all(dir.join("ntkrnlmp.pdb")).unwrap();
        std::fs::write(
            dir.join(format!("ntkrnlmp.pdb/{}-{}.json", id.guid, id.age)),
            isf::to_json(&table),
        )
        .unwrap();
        let mut config = SimConfig::demo();
        config.scenario = Scenario::Deadlock;
        config.resources = 500;
        let machine = Machine::build(config).unwrap();
        let cpus = machine.system().cpus.len() as u32;
        let target = kdnet_testkit::local::LocalTarget::new(machine, cpus);
        let path = kdnet_sim::symbols::symbol_path(&dir.display().to_string());
        let k = kdnet_model::nt::Kernel::open(Box::new(target), path).unwrap();
        let mut e = Engine::new(k);
        // It fails, or (where the rest of its answer stands without it) answers incomplete;
        // either way it names what it could not find.
        let o = e.run(needs);
        let said = format!("{:?} {:?}", o.error, o.incomplete);
        assert!(
            !o.ok() || !o.complete,
            "{needs} without {ty}.{member}: {}",
            o.text
        );
        assert!(
            said.contains(&format!("{ty} has no"))
                && (said.contains(&format!("member {member}"))
                    || said.contains(&format!("field {member}"))),
            "{needs} without {ty}.{member}: {said}"
        );
        // The rest goes on.
        for other in ["lm", "vertarget", "dt nt!_KPRCB"] {
            let o = e.run(other);
            assert!(o.ok(), "{other} without {ty}.{member}: {:?}", o.error);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
