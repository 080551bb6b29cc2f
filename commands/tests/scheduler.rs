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
