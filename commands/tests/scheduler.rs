//! The scheduler's queues on every shared build: `!ready` and `!dpcs` list what the simulated
//! machine queued and nothing else, `!pcr`/`!prcb` show each processor's block, and broken
//! queues are walked with a bound and said to be broken.

mod common;

use common::{BUILDS, sim_kernel, sim_kernel_with};
use kdnet_commands::engine::Engine;
use kdnet_sim::Scenario;
use serde_json::Value;

fn run(e: &mut Engine, c: &str) -> Value {
    let o = e.run(c);
    assert!(o.ok(), "{c}: {:?}\n{}", o.error, o.text);
    assert!(o.complete, "{c}: {:?}", o.incomplete);
    common::numbers(o.result)
}

/// (processor or None, priority, thread) of every thread `!ready` lists, in its order.
fn listed(r: &Value) -> Vec<(Option<u64>, u64, u64)> {
    let mut out = Vec::new();
    for q in r["queues"].as_array().unwrap() {
        for p in q["priorities"].as_array().unwrap() {
            for t in p["threads"].as_array().unwrap() {
                out.push((
                    q["processor"].as_u64(),
                    p["priority"].as_u64().unwrap(),
                    t["thread"].as_u64().unwrap(),
                ));
            }
        }
    }
    out
}

#[test]
fn the_queues_hold_what_was_queued_on_every_build() {
    for build in BUILDS {
        for scenario in [Scenario::Deadlock, Scenario::ServiceException] {
            let Some((k, p)) = sim_kernel(build, scenario) else {
                return;
            };
            let mut e = Engine::new(k);
            let f = &p.facts;
            assert!(!f.ready.is_empty() && !f.dpcs.is_empty());
            // !ready: the planted threads, each on its queue at its priority, in order.
            let r = run(&mut e, "!ready");
            let mut want: Vec<(Option<u64>, u64, u64)> = f
                .ready
                .iter()
                .map(|(t, cpu, prio)| (cpu.map(u64::from), u64::from(*prio), *t))
                .collect();
            // The listing's order: processors in turn, then the shared queue; priorities
            // highest first; queue order within one.
            want.sort_by_key(|(cpu, prio, _)| (cpu.unwrap_or(u64::MAX), u64::MAX - prio));
            assert_eq!(listed(&r), want, "{build} {scenario}");
            assert_eq!(r["total"].as_u64(), Some(f.ready.len() as u64));
            for q in r["queues"].as_array().unwrap() {
                assert!(q["notes"].as_array().unwrap().is_empty(), "{build}: {q}");
                for p in q["priorities"].as_array().unwrap() {
                    for t in p["threads"].as_array().unwrap() {
                        assert_eq!(t["state"], "Ready", "{build}");
                    }
                }
            }
            let shared = r["queues"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|q| q["processor"].is_null())
                .count();
            assert_eq!(
                shared,
                usize::from(build >= 9600 && f.ready.iter().any(|r| r.1.is_none())),
                "{build}: the shared queue is listed where the build has one"
            );
            let text = e.run("!ready").text;
            assert!(
                text.contains("Processor 0: No threads in READY state"),
                "{text}"
            );
            assert!(
                text.contains("Processor 1: Ready Threads at priority 9"),
                "{text}"
            );

            // !dpcs: the planted DPCs, by processor, normal before threaded, queue order.
            let d = run(&mut e, "!dpcs");
            let got: Vec<(u64, bool, u64, String)> = d["dpcs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| {
                    (
                        x["processor"].as_u64().unwrap(),
                        x["queue"] == "Threaded",
                        x["dpc"].as_u64().unwrap(),
                        x["routine_symbol"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            let mut want: Vec<(u64, bool, u64, String)> = f
                .dpcs
                .iter()
                .map(|(cpu, threaded, dpc, routine)| {
                    (u64::from(*cpu), *threaded, *dpc, routine.clone())
                })
                .collect();
            want.sort_by_key(|(cpu, threaded, _, _)| (*cpu, *threaded));
            assert_eq!(got, want, "{build} {scenario}");
            for c in d["processors"].as_array().unwrap() {
                let n = c["processor"].as_u64().unwrap();
                let normal = want.iter().filter(|x| x.0 == n && !x.1).count() as i64;
                let threaded = want.iter().filter(|x| x.0 == n && x.1).count() as i64;
                assert_eq!(c["depth"], serde_json::json!([normal, threaded]), "{build}");
            }
            let text = e.run("!dpcs").text;
            assert!(text.contains(" 3: Threaded: 0x"), "{text}");

            // !pcr and !prcb: the processor's block and threads.
            for n in 0..p.cpus.len() {
                let b = run(&mut e, &format!("!pcr {n}"));
                let (prcb, current) = p.cpus[n];
                assert_eq!(b["prcb"].as_u64(), Some(prcb), "{build}");
                assert_eq!(b["current_thread"].as_u64(), Some(current), "{build}");
                assert_ne!(b["kpcr"], b["prcb"]);
                let queued = want.iter().filter(|x| x.0 == n as u64).count();
                assert_eq!(b["dpcs"].as_array().unwrap().len(), queued);
                let c = run(&mut e, &format!("!prcb {n}"));
                assert_eq!(c["current_thread"], b["current_thread"]);
                assert_ne!(c["idle_thread"].as_u64(), Some(0));
            }
            let bad = e.run("!pcr 99");
            let err = bad.error.unwrap();
            assert!(err.contains("there is no processor 153"), "{err}");
        }
    }
}

/// A ready list that loops and a DPC queue that loops: each walk stops, says where, and the
/// result is incomplete.
#[test]
fn broken_queues_are_bounded_and_said() {
    let build = 20348;
    let Some((k, _)) = sim_kernel_with(build, Scenario::Deadlock, |m| {
        use kdnet::machine::target::TargetHandler;
        let f = m.facts().clone();
        let k = &m.system().k;
        // The second ready thread's link points back at itself; the last DPC's at the first.
        let link = k.off("_ETHREAD", "Tcb.WaitListEntry").unwrap();
        let second = f.ready[1].0 + link;
        let first_dpc = f.dpcs[0].2 + k.off("_KDPC", "DpcListEntry").unwrap();
        let second_dpc = f.dpcs[1].2 + k.off("_KDPC", "DpcListEntry").unwrap();
        m.write_virtual(0, second, &second.to_le_bytes());
        m.write_virtual(0, second_dpc, &first_dpc.to_le_bytes());
    }) else {
        return;
    };
    let mut e = Engine::new(k);
    let o = e.run("!ready");
    assert!(o.ok(), "{:?}", o.error);
    assert!(!o.complete);
    assert!(
        o.incomplete
            .iter()
            .any(|w| w.contains("ready queue (processor 1)")),
        "{:?}",
        o.incomplete
    );
    let o = e.run("!dpcs");
    assert!(o.ok(), "{:?}", o.error);
    assert!(!o.complete);
    assert!(o.text.contains("loops back"), "{}", o.text);

    // A queue cut short (the first DPC's link emptied): it ends before its LastEntry.
    let Some((k, _)) = sim_kernel_with(build, Scenario::Deadlock, |m| {
        use kdnet::machine::target::TargetHandler;
        let f = m.facts().clone();
        let k = &m.system().k;
        let first = f.dpcs[0].2 + k.off("_KDPC", "DpcListEntry").unwrap();
        m.write_virtual(0, first, &0u64.to_le_bytes());
    }) else {
        return;
    };
    let mut e = Engine::new(k);
    let o = e.run("!dpcs");
    assert!(o.ok(), "{:?}", o.error);
    assert!(!o.complete, "a short queue is not whole");
    assert!(o.text.contains("LastEntry"), "{}", o.text);
}

/// 0x133 on every build: the analysis names the DPC routine (from the processor's active DPC
/// where the build keeps it, else from the stack), where the clock interrupt found it spinning,
/// the time count against the allotment, and lists the queued DPCs; the clock interrupt's trap
/// frame is where `kv` says and `.trap` shows the spin.
#[test]
fn the_dpc_watchdog_on_every_build() {
    for build in BUILDS {
        let Some((k, p)) = sim_kernel(build, Scenario::DpcWatchdog) else {
            return;
        };
        let d = p.facts.stuck_dpc.clone().unwrap();
        let mut e = Engine::new(k);
        let a = run(&mut e, "!analyze -v");
        assert_eq!(a["bugcheck_code"], 0x133, "{build}");
        let t = &a["dpc_timeout"];
        assert_eq!(t["kind"], "single");
        assert_eq!(t["routine_symbol"], d.routine, "{build}");
        assert_eq!(t["time_count"], 0x501);
        assert_eq!(t["time_limit"], 0x500);
        let from = t["routine_from"].as_str().unwrap();
        if build == 7601 {
            assert_eq!(from, "stack", "7601 keeps no active DPC");
        } else {
            assert_eq!(from, "active DPC", "{build}");
            assert_eq!(t["dpc"].as_u64(), Some(d.dpc));
        }
        assert!(
            t["interrupted"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{}+", d.spinning)),
            "{build}: {t}"
        );
        assert_eq!(a["module"], "stornvme", "{build}");
        assert_eq!(a["parameters"][1].as_u64(), Some(0x501));
        let queued = a["dpcs"]["dpcs"].as_array().unwrap().len();
        assert_eq!(queued, p.facts.dpcs.len(), "{build}");
        let text = e.run("!analyze -v").text;
        for needle in [
            "DPC_TIMEOUT_TYPE:  SINGLE_DPC_TIMEOUT_EXCEEDED",
            "DPC_ROUTINE:  storport!RaidpAdapterDpcRoutine",
            "QUEUED_DPCS:",
        ] {
            assert!(text.contains(needle), "{build}: {needle}\n{text}");
        }
        // The interrupt's trap frame, and the loop it interrupted.
        let kv = run(&mut e, "kv");
        let traps: Vec<u64> = kv["frames"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f["trap_frame"].as_u64())
            .collect();
        assert_eq!(traps, [d.trap_frame], "{build}");
        let tr = run(&mut e, &format!(".trap {:x}", d.trap_frame));
        assert_eq!(tr["registers"]["rip"].as_u64(), Some(d.spin_ip));
        let u = run(&mut e, &format!("u {:x} L2", d.spin_ip));
        assert_eq!(u["instructions"][0]["mnemonic"], "pause", "{build}");
        assert_eq!(u["instructions"][1]["mnemonic"], "jmp");
        assert_eq!(u["instructions"][1]["target"].as_u64(), Some(d.spin_ip));
        // Processor 0 is in a DPC at DISPATCH_LEVEL.
        assert_eq!(run(&mut e, "!pcr 0")["irql"], 2);
        // The analysis works from the processor's own registers whatever `.trap` set.
        let again = run(&mut e, "!analyze -v");
        assert!(
            again["frames"][0]["call_site"]
                .as_str()
                .unwrap()
                .starts_with("nt!KeBugCheckEx"),
            "{build}"
        );
        assert_eq!(again["stack_from"], "processor");
    }
}

/// 0x1CA on every build: `!analyze -v` explains the parameters, finds the clock processor
/// (the kernel's clock owner agrees where the build has one) spinning with its interrupts off
/// in CimFS, the published interrupt time 42.6 s behind the bugcheck's, the lock's holder on
/// processor 3, and every other processor idle.
#[test]
fn the_synthetic_watchdog_on_every_build() {
    for build in BUILDS {
        let Some((k, p)) = sim_kernel(build, Scenario::Watchdog1ca) else {
            return;
        };
        let w = p.facts.watchdog.clone().unwrap();
        let mut e = Engine::new(k);
        let a = run(&mut e, "!analyze -v");
        assert_eq!(a["bugcheck_code"], 0x1ca, "{build}");
        assert_eq!(
            a["parameter_names"][3], "index of the clock processor",
            "{build}"
        );
        let d = &a["watchdog"];
        assert_eq!(d["clock_processor"], 8);
        // What kept the clock from ticking is the faulting place.
        assert!(
            d["clock_processor_in"]
                .as_str()
                .unwrap()
                .starts_with("CimFS!CimFsPurgeRegionCache+"),
            "{build}: {d}"
        );
        assert_eq!(a["module"], "CimFS", "{build}");
        assert!(
            a["failure_bucket"]
                .as_str()
                .unwrap()
                .starts_with("0x1CA_CimFS!CimFsPurgeRegionCache"),
            "{build}: {}",
            a["failure_bucket"]
        );
        assert_eq!(
            d["clock_owner"].as_u64(),
            (build != 7601).then_some(8),
            "{build}: nt!KiClockTimerOwner where the build has it"
        );
        let since = d["since_reset_seconds"].as_f64().unwrap();
        assert!((since - 42.5889667).abs() < 1e-6, "{since}");
        let stopped = d["clock_stopped_seconds"].as_f64().unwrap();
        let want = (0x1_bf79_9269u64 - w.published) as f64 / 1e7;
        assert!(
            (stopped - want).abs() < 1e-6,
            "{build}: {stopped} vs {want}"
        );
        assert!(
            (stopped - since).abs() < 0.02,
            "{build}: the clock stopped at the reset"
        );
        let cpus = d["processors"].as_array().unwrap();
        assert_eq!(cpus.len(), 12, "{build}");
        for c in cpus {
            let n = c["processor"].as_u64().unwrap();
            match n {
                8 => {
                    assert_eq!(c["interrupts_enabled"], false, "{build}");
                    assert_eq!(c["irql"], 2);
                    assert_eq!(c["thread"].as_u64(), Some(w.spinner));
                    assert_eq!(c["process"], "containerd.exe");
                    let frames: Vec<&str> = c["frames"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|f| f.as_str().unwrap())
                        .collect();
                    assert!(
                        frames[0].starts_with("nt!KxWaitForSpinLockAndAcquire+"),
                        "{build}: {frames:?}"
                    );
                    assert!(
                        frames
                            .iter()
                            .any(|f| f.starts_with("CimFS!CimFsPurgeRegionCache+")),
                        "{build}: {frames:?}"
                    );
                }
                3 => {
                    assert_eq!(c["interrupts_enabled"], true);
                    assert_eq!(c["thread"].as_u64(), Some(w.holder.1));
                    assert!(
                        c["at"]
                            .as_str()
                            .unwrap()
                            .starts_with("CimFS!CimFsDecompressChunk+"),
                        "{build}: {c}"
                    );
                }
                0 => {
                    // The NMI's processor, stopped in the bugcheck.
                    assert!(
                        c["at"].as_str().unwrap().starts_with("nt!KeBugCheckEx"),
                        "{build}: {c}"
                    );
                }
                _ => assert_eq!(c["idle"], true, "{build}: processor {n}"),
            }
        }
        let text = e.run("!analyze -v").text;
        assert!(text.contains("INTERRUPTS DISABLED"), "{text}");
        assert!(text.contains("<-- clock processor"), "{text}");
        assert!(text.contains("the clock last ticked"), "{text}");
        // The clock processor's spin: `pause`, then a jump back to it.
        let o = e.run("~8s");
        assert!(o.ok(), "{:?}", o.error);
        let u = run(&mut e, "u @rip L2");
        let insns = u["instructions"].as_array().unwrap();
        assert_eq!(insns[0]["mnemonic"], "pause", "{build}: {u}");
        assert_eq!(insns[1]["mnemonic"], "jmp", "{build}");
    }
}

/// `!running -ti` on the 0x133 machine: processor 0 runs its idle thread but a DPC is active,
/// and -i shows its stack, where the spinning DPC is; run-together flags are WinDbg's.
#[test]
fn running_shows_a_dpc_on_an_idle_thread() {
    for build in [7601, 20348] {
        let Some((k, p)) = sim_kernel(build, Scenario::DpcWatchdog) else {
            return;
        };
        let d = p.facts.stuck_dpc.clone().unwrap();
        let mut e = Engine::new(k);
        let r = run(&mut e, "!running -ti");
        let cpu0 = &r["processors"][0];
        assert_eq!(cpu0["idle"], true, "{build}");
        assert_eq!(cpu0["in_dpc"], true, "{build}");
        assert!(
            cpu0["frames"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f.as_str().unwrap().starts_with(&format!("{}+", d.routine))),
            "{build}: {cpu0}"
        );
        assert_eq!(r["processors"][1]["in_dpc"], false);
        // Without -i an idle processor's stack is not walked.
        let r = run(&mut e, "!running -t");
        assert!(r["processors"][0]["frames"].as_array().unwrap().is_empty());
        assert!(e.run("!running -t").text.contains("(DPC active)"));
        assert!(!e.run("!running -tx").ok(), "an unknown letter is refused");
    }
}

/// `!idt` on every build: the architectural gates with their handlers, privileges and
/// interrupt stacks, device vectors with the interrupt objects connected to them; a vector
/// that is not present, or past 0xff, is refused; an interrupt object that is not one is said.
#[test]
fn the_idt_on_every_build() {
    for build in BUILDS {
        let Some((k, _)) = sim_kernel(build, Scenario::Deadlock) else {
            return;
        };
        let mut e = Engine::new(k);
        let r = run(&mut e, "!idt");
        let gate = |v: u64| {
            r["gates"]
                .as_array()
                .unwrap()
                .iter()
                .find(|g| g["vector"].as_u64() == Some(v))
                .unwrap_or_else(|| panic!("{build}: no gate {v:#x}"))
                .clone()
        };
        assert!(
            gate(0xe)["handler_symbol"]
                .as_str()
                .unwrap()
                .starts_with("nt!KiPageFault"),
            "{build}"
        );
        let nmi = gate(2);
        assert_eq!(nmi["ist"], 3);
        assert!(nmi["ist_stack"].as_u64().unwrap() > 0xffff_8000_0000_0000);
        assert_eq!(gate(3)["dpl"], 3);
        assert_eq!(gate(0xe)["dpl"], 0);
        assert_eq!(gate(0xe)["kind"], "interrupt");
        assert!(gate(0xe)["ist_stack"].is_null());
        assert_eq!(
            gate(0x80)["interrupts"][0]["service_routine_symbol"],
            "myeth1g!MyEthIsr"
        );
        assert_eq!(
            gate(0xd1)["interrupts"][0]["service_routine_symbol"],
            "hal!HalpTimerClockInterrupt"
        );
        assert_eq!(gate(0xd1)["interrupts"][0]["irql"], 0xd);
        let text = e.run("!idt").text;
        assert!(text.starts_with("Dumping IDT: "), "{text}");
        assert!(text.contains("myeth1g!MyEthIsr (KINTERRUPT "), "{text}");
        assert!(text.contains("\tStack = 0x"), "{text}");
        // Processor 1: the clock's object, not the NIC's.
        assert!(e.run("~1s").ok());
        let r1 = run(&mut e, "!idt 80");
        assert_eq!(r1["processor"], 1);
        assert_eq!(r1["gates"].as_array().unwrap().len(), 1);
        assert!(r1["gates"][0]["interrupts"].as_array().unwrap().is_empty());
        assert!(!e.run("!idt 30").ok(), "an absent vector is refused");
        assert!(!e.run("!idt 100").ok(), "no vector past 0xff");
    }
    // The NIC's interrupt object replaced by something that is not one.
    let Some((k, _)) = sim_kernel_with(20348, Scenario::Deadlock, |m| {
        use kdnet::machine::target::TargetHandler;
        let s = m.system();
        let k = &s.k;
        let slot = s.cpus[0].prcb + k.off("_KPRCB", "InterruptObject").unwrap() + 8 * 0x80;
        let obj = k.r64(slot);
        m.write_virtual(0, obj, &[0x13]);
    }) else {
        return;
    };
    let mut e = Engine::new(k);
    let o = e.run("!idt");
    assert!(o.ok(), "{:?}", o.error);
    assert!(!o.complete);
    assert!(o.text.contains("not an interrupt object"), "{}", o.text);
}

/// `!analyze -hang`: on the NBL hang, the PnP worker that waits longest holds PiEngineLock
/// with a waiter queued behind it; on the double-completion machine, the threads with IRPs
/// pending are exactly those the I/O layer planted; every processor is there.
#[test]
fn the_hang_analysis() {
    for build in [7601, 20348] {
        let Some((k, p)) = sim_kernel(build, Scenario::NblHang) else {
            return;
        };
        let f = &p.facts;
        let (hung, waited) = f.hung_thread.unwrap();
        let mut e = Engine::new(k);
        let a = run(&mut e, "!analyze -hang");
        assert_eq!(a["hang"], true);
        assert!(a["bugcheck"].is_null());
        assert_eq!(
            a["processors"].as_array().unwrap().len(),
            f.processors,
            "{build}"
        );
        let waits = a["longest_waits"].as_array().unwrap();
        let secs: Vec<f64> = waits
            .iter()
            .map(|w| w["wait_seconds"].as_f64().unwrap())
            .collect();
        assert!(secs.windows(2).all(|x| x[0] >= x[1]), "{build}: {secs:?}");
        let w = waits
            .iter()
            .find(|w| w["thread"].as_u64() == Some(hung))
            .unwrap_or_else(|| panic!("{build}: the hung worker is not among the longest"));
        assert!((w["wait_seconds"].as_f64().unwrap() - waited as f64).abs() < 2.0);
        assert!(
            w["blocked_in"]
                .as_str()
                .unwrap()
                .contains("ExWaitForRundownProtectionReleaseCacheAware"),
            "{build}: {w}"
        );
        let engine = a["held_locks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["symbol"] == "nt!PiEngineLock")
            .unwrap_or_else(|| panic!("{build}: {}", a["held_locks"]))
            .clone();
        assert_eq!(engine["owners"][0].as_u64(), Some(hung));
        assert_eq!(engine["exclusive_waiters"], 1);
        let text = e.run("!analyze -hang").text;
        assert!(text.contains("Hang Analysis"), "{text}");
        assert!(text.contains("LONGEST_WAITS"), "{text}");
        assert!(text.contains("nt!PiEngineLock"), "{text}");
    }
    let Some((k, p)) = sim_kernel(20348, Scenario::IrpDoubleComplete) else {
        return;
    };
    let mut e = Engine::new(k);
    let a = run(&mut e, "!analyze -hang");
    assert_eq!(a["bugcheck"], 0x44);
    // Each thread's count is the IRPs planted on its list, most first.
    let mut planted: std::collections::BTreeMap<u64, u64> = Default::default();
    for i in &p.facts.io.irps {
        *planted.entry(i.thread).or_default() += 1;
    }
    let listed: Vec<(u64, u64)> = a["most_irps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["thread"].as_u64().unwrap(),
                w["pending_irps"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(!listed.is_empty());
    assert_eq!(listed.len(), planted.len().min(20));
    assert!(listed.windows(2).all(|x| x[0].1 >= x[1].1), "{listed:?}");
    for (t, n) in &listed {
        assert_eq!(planted.get(t), Some(n), "thread {t:x}");
    }
}
