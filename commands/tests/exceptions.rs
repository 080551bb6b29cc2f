//! The exception records and register contexts: `.cxr`, `.trap`, `.exr`, `.frame`, `kv` and
//! `!analyze -v` of an exception bugcheck, on the real triage dump and on the simulated 0x3B
//! (WinFsp's close path reading through a freed pointer) of every shared build.

mod common;

use kdnet_commands::engine::Engine;
use kdnet_sim::Scenario;
use serde_json::Value;

fn run(e: &mut Engine, c: &str) -> Value {
    let o = e.run(c);
    assert!(o.ok(), "{c}: {:?}\n{}", o.error, o.text);
    common::numbers(o.result)
}

fn call_sites(v: &Value) -> Vec<String> {
    v["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["call_site"].as_str().unwrap().to_string())
        .collect()
}

/// The triage dump's bugcheck (0x1000007E) names its exception record and context record:
/// `.exr` decodes the real record, `.cxr` loads the real registers and `k` from them gives the
/// stack the dump's own context gives.
#[test]
fn the_real_dump_s_records() {
    let Some(k) = common::triage_kernel() else {
        return;
    };
    let mut e = Engine::new(k);
    let own = run(&mut e, "k");
    let x = run(&mut e, ".exr ffff850429891ee8");
    assert_eq!(x["code"], 0xc000_0005u32);
    assert_eq!(x["code_name"], "Access violation");
    assert_eq!(x["address"].as_u64(), Some(0xfffff804_8b58334c));
    assert_eq!(x["symbol"], "amdppm!WriteIoMemRawEx+0x70");
    assert_eq!(x["parameters"], serde_json::json!([1u64, u64::MAX]));
    assert_eq!(x["meaning"], "Attempt to write to address ffffffffffffffff");
    // The dump header's record: the break the bugcheck made.
    let last = run(&mut e, ".exr -1");
    assert_eq!(last["code"], 0x8000_0003u32);
    assert!(last["record"].is_null());

    let c = run(&mut e, ".cxr ffff850429891720");
    assert_eq!(c["kind"], "context_record");
    assert_eq!(c["registers"]["rip"].as_u64(), Some(0xfffff804_8b58334c));
    assert_eq!(c["registers"]["rsp"].as_u64(), Some(0xffff8504_29892120));
    assert_eq!(c["instruction"]["mnemonic"], "mov");
    assert_eq!(c["instruction"]["operands"], "dword ptr [r9+r8],edx");
    let scoped = run(&mut e, "k");
    assert_eq!(scoped["scope"], "context_record");
    assert_eq!(call_sites(&scoped), call_sites(&own));
    assert!(
        e.run("k").text.contains("Stack trace for last set context"),
        "k says whose registers it walked from"
    );
    // A frame of that stack, with the registers the walk recovered there.
    let f = run(&mut e, ".frame /r 2");
    assert_eq!(
        f["frame"]["call_site"],
        "amdppm!WriteGenAddrMaybeHiddenEx+0x18"
    );
    assert_eq!(f["registers"]["rsp"], f["frame"]["child_sp"]);
    assert_eq!(f["registers"]["rip"], f["frame"]["ip"]);
    assert_eq!(run(&mut e, ".frame")["frame"]["number"], 2);
    let reset = run(&mut e, ".cxr");
    assert_eq!(reset["kind"], "reset");
    assert!(run(&mut e, "k")["scope"].is_null());

    // The analysis takes both records: the registers at the fault, the instruction, and the
    // address it wrote (the record says all ones: a general-protection fault's, so it is
    // computed from the operand, r9 + r8).
    let a = run(&mut e, "!analyze -v");
    assert_eq!(a["stack_from"], "context_record");
    assert_eq!(
        a["fault_context"]["address"].as_u64(),
        Some(0xffff8504_29891720)
    );
    assert_eq!(a["exception"]["record"].as_u64(), Some(0xffff8504_29891ee8));
    assert_eq!(
        a["faulting_instruction"]["operands"],
        "dword ptr [r9+r8],edx"
    );
    assert_eq!(
        a["memory_accessed"],
        serde_json::json!({"address": 0xffff9b00_0336004cu64, "access": "write", "from": "instruction"})
    );
    assert_eq!(call_sites(&a), call_sites(&own));

    // What is not a context record is refused, not shown as registers.
    let bad = e.run(".cxr ffff850429891ee8");
    assert!(
        bad.error
            .as_deref()
            .unwrap()
            .contains("does not hold an x64 context record"),
        "{:?}",
        bad.error
    );
    assert!(e.run(".exr 0").error.is_some(), "nothing is mapped at 0");
}

/// On every build, the simulated 0x3B: the records where the bugcheck says, the trap frame
/// where `kv` says, and the stack through the fault from each.
#[test]
fn the_service_exception_on_every_build() {
    for build in common::BUILDS {
        let Some((k, p)) = common::sim_kernel(build, Scenario::ServiceException) else {
            return;
        };
        let x = p.facts.exception.clone().unwrap();
        let mut e = Engine::new(k);
        // The stopped processor's stack: the bugcheck, the dispatch, the page fault's entry
        // (with its trap frame), then the close path.
        let own = run(&mut e, "kv");
        let sites = call_sites(&own);
        let entry = sites
            .iter()
            .position(|s| s.starts_with("nt!KiPageFault+"))
            .unwrap_or_else(|| panic!("{build}: {sites:?}"));
        assert!(
            sites[0].starts_with("nt!KeBugCheckEx"),
            "{build}: {sites:?}"
        );
        assert_eq!(
            own["frames"][entry]["trap_frame"].as_u64(),
            Some(x.trap_frame),
            "{build}"
        );
        let traps = own["frames"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| !f["trap_frame"].is_null())
            .count();
        assert_eq!(traps, 1, "{build}: only the entry built a trap frame");
        assert!(sites[entry + 1].starts_with("winfsp_x64!FspPropagateTopFlags+"));
        assert_eq!(own["frames"][entry + 1]["ip"].as_u64(), Some(x.faulting_ip));
        assert!(sites[entry + 2].starts_with("winfsp_x64!FspClose+"));
        assert!(e.run("kv").text.contains(&format!(
            "(TrapFrame @ {})",
            kdnet_commands::engine::addr(x.trap_frame)
        )));

        // The context record: the registers at the fault and the stack from there.
        let c = run(&mut e, &format!(".cxr {:x}", x.context_record));
        assert_eq!(
            c["registers"]["rip"].as_u64(),
            Some(x.faulting_ip),
            "{build}"
        );
        assert_eq!(c["registers"]["rsp"].as_u64(), Some(x.faulting_rsp));
        assert_eq!(c["instruction"]["mnemonic"], "mov");
        assert_eq!(c["instruction"]["operands"], "rax,qword ptr [rcx+18h]");
        let from_context = run(&mut e, "k");
        assert_eq!(
            call_sites(&from_context)[..],
            sites[entry + 1..],
            "{build}: the context's stack is the part above the trap"
        );
        let f = run(&mut e, ".frame /r 1");
        assert!(
            f["frame"]["call_site"]
                .as_str()
                .unwrap()
                .starts_with("winfsp_x64!FspClose+")
        );
        // `@rcx` is the context's: the freed pointer.
        assert_eq!(
            run(&mut e, "? @rcx+18")["value"].as_u64(),
            Some(x.read),
            "{build}"
        );
        run(&mut e, ".cxr");
        assert_eq!(
            call_sites(&run(&mut e, "k")),
            sites,
            "{build}: back to the processor"
        );
        // `.frame /c N`: frame N's registers become the context; `k` walks from there.
        let f = run(&mut e, &format!(".frame /c {:x}", entry + 1));
        let rip = f["registers"]["rip"].as_u64().unwrap();
        assert_eq!(
            run(&mut e, "? @rip")["value"].as_u64(),
            Some(rip),
            "{build}"
        );
        let k = run(&mut e, "k");
        assert_eq!(k["scope"], "frame", "{build}");
        assert_eq!(
            call_sites(&k)[..],
            sites[entry + 1..],
            "{build}: the frame's stack is the part from it up"
        );
        assert!(!e.run(".frame /x 1").ok(), "an unknown option is refused");
        run(&mut e, ".cxr");
        assert_eq!(call_sites(&run(&mut e, "k")), sites, "{build}");

        // The trap frame: the same place, with the non-volatile registers zero.
        let t = run(&mut e, &format!(".trap {:x}", x.trap_frame));
        assert_eq!(t["kind"], "trap_frame");
        assert_eq!(t["registers"]["rip"].as_u64(), Some(x.faulting_ip));
        assert_eq!(t["registers"]["rsp"].as_u64(), Some(x.faulting_rsp));
        assert_eq!(t["registers"]["rbx"].as_u64(), Some(0));
        assert_eq!(t["interrupted_mode"], "kernel");
        assert!(e.run(".trap").text.contains("Resetting default scope"));
        // A processor switch drops a context set on another processor.
        run(&mut e, &format!(".cxr {:x}", x.context_record));
        run(&mut e, "~1s");
        assert!(run(&mut e, "k")["scope"].is_null());
        run(&mut e, "~0s");

        // The exception record.
        let r = run(&mut e, &format!(".exr {:x}", x.exception_record));
        assert_eq!(r["code"], 0xc000_0005u32);
        assert_eq!(r["address"].as_u64(), Some(x.faulting_ip));
        assert_eq!(r["parameters"], serde_json::json!([0, x.read]));
        assert_eq!(
            r["meaning"],
            format!("Attempt to read from address {:016x}", x.read)
        );

        // !analyze: the driver, the instruction, the address it read, the stack from the
        // context record.
        let a = run(&mut e, "!analyze -v");
        assert_eq!(a["bugcheck_code"], 0x3b, "{build}");
        assert_eq!(a["module"], "winfsp_x64");
        assert_eq!(a["image"], "winfsp-x64.sys");
        assert!(
            a["symbol"]
                .as_str()
                .unwrap()
                .starts_with("winfsp_x64!FspPropagateTopFlags+")
        );
        assert_eq!(a["failure_bucket"], "0x3B_winfsp_x64!FspPropagateTopFlags");
        assert_eq!(a["stack_from"], "context_record");
        assert_eq!(call_sites(&a)[..], sites[entry + 1..]);
        assert_eq!(
            a["faulting_instruction"]["operands"],
            "rax,qword ptr [rcx+18h]"
        );
        assert_eq!(
            a["memory_accessed"],
            serde_json::json!({"address": x.read, "access": "read", "from": "instruction"})
        );
        assert_eq!(a["process_name"], "robocopy.exe");
        let text = e.run("!analyze -v").text;
        for needle in [
            format!(
                "CONTEXT:  {:x} -- (.cxr {:#x})",
                x.context_record, x.context_record
            ),
            format!("READ_ADDRESS:  {:016x}", x.read),
            "EXCEPTION_CODE_STR:  c0000005".to_string(),
            "FAULTING_IP: \nwinfsp_x64!FspPropagateTopFlags+".to_string(),
        ] {
            assert!(text.contains(&needle), "{build}: {needle}\n{text}");
        }
        // The close IRP is the thread's, through the filter manager to WinFsp.
        let irp = run(&mut e, &format!("!irp {:x}", x.irp));
        assert_eq!(irp["stack"][0]["driver"], "\\FileSystem\\WinFsp");

        // The entry's code: the unwind data begins with the machine frame, and the function
        // ends as an interrupt handler does.
        let uf = run(&mut e, "uf nt!KiPageFault");
        let last = uf["instructions"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        assert_eq!(last["mnemonic"], "iretq", "{build}");
    }
}

/// Garbage where a record should be: clear errors, never registers made of noise.
#[test]
fn garbage_records_are_refused() {
    let Some((k, p)) = common::sim_kernel(20348, Scenario::ServiceException) else {
        return;
    };
    let x = p.facts.exception.clone().unwrap();
    let mut e = Engine::new(k);
    // An ETHREAD is not a context record, a trap frame or an exception record.
    let t = x.thread;
    for (c, why) in [
        (format!(".cxr {t:x}"), "context record"),
        (
            format!(".trap {:x}", x.context_record),
            "does not hold a trap frame",
        ),
        (
            format!(".exr {:x}", x.file),
            "does not hold an exception record",
        ),
        (".cxr 0".to_string(), "0x0"),
        (".frame 0x200".to_string(), "no frame 0x200"),
        (".exr".to_string(), ".exr needs an address"),
    ] {
        let o = e.run(&c);
        let err = o.error.unwrap_or_else(|| panic!("{c} worked:\n{}", o.text));
        assert!(err.contains(why), "{c}: {err}");
    }
    // Nothing was set by the failures.
    assert!(run(&mut e, "k")["scope"].is_null());
}
