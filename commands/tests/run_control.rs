//! Run control over real KDNET on loopback: breakpoints, single steps and `gu` on the
//! simulated machine of every shared build, whose opener thread runs bindflt's create path
//! instruction by instruction; a conditional breakpoint judged at every one of 10,000 creates
//! (the failed ones and the IRPs completed twice stop).

mod common;

use std::time::Duration;

use kdnet::host::{Host, HostConfig};
use kdnet::target::TargetConfig;
use kdnet::wire::Key;
use kdnet_commands::engine::Engine;
use kdnet_live::LiveTarget;
use kdnet_model::nt::Kernel;
use kdnet_sim::activity::Planted;
use kdnet_sim::{Scenario, SimConfig, TableSource};
use serde_json::Value;

/// Runs `work` on an engine over KDNET to the bindflt-race machine of `build`; the target is
/// let go at the end and must run, with no `int 3` left where the breakpoints were.
async fn session<T: Send + 'static>(
    build: u32,
    work: impl FnOnce(&mut Engine, &Planted) -> T + Send + 'static,
) -> Option<T> {
    session_of(build, |_| {}, work).await
}

/// [`session`] on a machine `adjust` configures further.
async fn session_of<T: Send + 'static>(
    build: u32,
    adjust: impl FnOnce(&mut SimConfig),
    work: impl FnOnce(&mut Engine, &Planted) -> T + Send + 'static,
) -> Option<T> {
    let dir = common::shared()?.join("symbols");
    let key = Key::parse("9.8.7.6").unwrap();
    let host = Host::bind(HostConfig::new("127.0.0.1:0".parse().unwrap(), key.clone()))
        .await
        .unwrap();
    let mut config = SimConfig::demo();
    config.build = build;
    config.table = TableSource::Dir(dir.clone());
    config.scenario = Scenario::BindfltRace;
    config.resources = 800;
    adjust(&mut config);
    let mut tc = TargetConfig::new("127.0.0.1:0".parse().unwrap(), host.local_addr(), key);
    tc.offer_interval = Duration::from_millis(200);
    // The machine runs its creates as soon as they are due (a poll every 20 ms would leave it
    // idle between the stops of a burst of judged hits).
    tc.poll_interval = Duration::from_millis(2);
    let sim = kdnet_sim::start(config, tc, None).await.unwrap();
    let planted = sim.facts.activity.clone().expect("the activity");
    host.wait_connected(Duration::from_secs(10)).await.unwrap();
    host.break_in(Duration::from_secs(10)).await.unwrap();
    let rt = tokio::runtime::Handle::current();
    let h = host.clone();
    let p = planted.clone();
    let out = tokio::task::spawn_blocking(move || {
        let target = LiveTarget::new(h, rt).unwrap();
        let path = kdnet_sim::symbols::symbol_path(&dir.display().to_string());
        let mut e = Engine::new(Kernel::open(Box::new(target), path).unwrap());
        let out = work(&mut e, &p);
        assert!(
            !e.control.any_written(),
            "{build}: breakpoints left written while stopped"
        );
        out
    })
    .await
    .unwrap();
    // Stopped, the target holds none of the session's int 3s.
    for a in [
        planted.complete,
        planted.complete_worker,
        planted.pre_create,
    ] {
        let b = host.read_virtual(a, 1).await.unwrap();
        assert_ne!(b[0], 0xCC, "{build}: an int 3 left at {a:#x}");
    }
    host.resume(kdnet::api::status::DBG_CONTINUE).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(sim.target.is_running(), "{build}: the target runs on");
    sim.target.shutdown().await;
    Some(out)
}

fn run(e: &mut Engine, build: u32, c: &str) -> Value {
    let o = e.run(c);
    assert!(o.ok(), "{build} {c}: {:?}", o.error);
    common::numbers(o.result)
}

#[track_caller]
fn u(v: &Value) -> u64 {
    match v.as_u64() {
        Some(x) => x,
        None => panic!("not a number: {v}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breakpoints_steps_and_gu_over_kdnet_on_every_build() {
    for build in common::BUILDS {
        let done = session(build, move |e, p| {
            // A breakpoint on the completion routine: the opener's thread, its processor, the
            // IRP in rcx, and the stack through bindflt into the filter manager.
            run(e, build, "bp nt!IofCompleteRequest");
            let g = run(e, build, "g --max-seconds 60");
            let s = &g["stops"][0];
            assert_eq!(s["reason"], "breakpoint", "{build}");
            assert_eq!(s["breakpoint"], 0);
            assert_eq!(u(&s["pc"]), p.complete, "{build}");
            assert_eq!(u(&s["thread"]), p.thread, "{build}");
            assert_eq!(u(&s["processor"]), u64::from(p.cpu), "{build}");
            assert_eq!(s["symbol"], "nt!IofCompleteRequest");
            let r = run(e, build, "r rcx");
            assert_eq!(u(&r["rcx"]), p.irp, "{build}: {r}");
            // The module list read at a stop is kept across runs while no module event came:
            // a stop shown costs the motion's round trips only (of three stops a create apart,
            // at most one comes after the container filter's load or unload).
            let least = (0..3)
                .map(|_| {
                    let o = e.run("g --max-seconds 60");
                    assert!(o.ok(), "{build}: {:?}", o.error);
                    assert_eq!(o.result["stops"][0]["reason"], "breakpoint", "{build}");
                    o.cost.round_trips
                })
                .min()
                .unwrap();
            assert!(least <= 4, "{build}: a shown stop read {least} round trips");
            let k = run(e, build, "k");
            let sites: Vec<&str> = k["frames"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["call_site"].as_str().unwrap())
                .collect();
            assert_eq!(sites[0], "nt!IofCompleteRequest", "{build}: {sites:?}");
            assert!(sites[1].starts_with("bindflt!BfPreCreate+0x"), "{sites:?}");
            assert_eq!(sites[2], "FLTMGR!FltpCreate+0x34e", "{build}: {sites:?}");
            let back = u(&k["frames"][0]["return_address"]);
            // Memory read while stopped shows the real instruction, not an int 3.
            let d = run(e, build, "db nt!IofCompleteRequest L1");
            assert_ne!(u(&d["values"][0]), 0xCC, "{build}: {d}");
            // t: the stub's jmp lands on the worker; p: one instruction of its real length.
            let t = run(e, build, "t");
            assert_eq!(t["stops"][0]["reason"], "step");
            assert_eq!(u(&t["stops"][0]["pc"]), p.complete_worker, "{build}");
            let len = run(e, build, "u @rip L1")["instructions"][0]["bytes"]
                .as_str()
                .unwrap()
                .len() as u64
                / 2;
            let s = run(e, build, "p");
            assert_eq!(u(&s["stops"][0]["pc"]), p.complete_worker + len, "{build}");
            assert_eq!(
                u(&s["stops"][0]["registers"]["rip"]),
                p.complete_worker + len,
                "{build}"
            );
            // gu: back in bindflt, where the call returns.
            let gu = run(e, build, "gu --max-seconds 60");
            assert_eq!(gu["stops"][0]["reason"], "reached", "{build}: {gu}");
            assert_eq!(u(&gu["stops"][0]["pc"]), back, "{build}");
            // bl lists it; bd keeps it from stopping: g runs to the time budget and breaks in.
            let bl = run(e, build, "bl");
            assert_eq!(bl["breakpoints"][0]["hits"], 4);
            run(e, build, "bd 0");
            let g = run(e, build, "g --max-seconds 0.3");
            assert_eq!(g["stops"][0]["reason"], "break_in", "{build}");
            // be, and a one-shot one with commands: it stops once and is gone.
            run(e, build, "bc *");
            run(e, build, "bp /1 nt!IopfCompleteRequest \"r rcx\"");
            let g = run(e, build, "g --max-seconds 60");
            assert_eq!(g["stops"][0]["reason"], "breakpoint");
            assert!(g["output"].as_str().unwrap().contains("rcx="), "{g}");
            assert_eq!(run(e, build, "bl")["breakpoints"], Value::Array(vec![]));
            // A breakpoint whose commands go on by themselves runs them at each hit.
            run(e, build, "bp nt!IofCompleteRequest 3 \"r rcx; g\"");
            run(e, build, "bp bindflt!BfPreCreate 5");
            let g = run(e, build, "g --max-seconds 60");
            // BfPreCreate's 5th pass comes before IofCompleteRequest's 3rd hit... (each create
            // reaches BfPreCreate first): 1 hit output for the 3rd pass of #0 within 5 creates.
            assert_eq!(g["stops"][0]["breakpoint"], 1, "{build}: {g}");
            assert_eq!(g["hits"].as_array().unwrap().len(), 1, "{build}: {g}");
            assert!(g["hits"][0].as_str().unwrap().contains("Breakpoint 0 hit"));
            run(e, build, "bc *");
            // `.if` and `j` in a command string decide at each hit: the odd creates (bindflt's
            // count, read at its entry) go on after their commands, an even one stops.
            for cmd in [
                format!(
                    "bp bindflt!BfPreCreate \".if (poi({:x}) & 1) {{ r rcx; gc }} .else {{ r rdx }}\"",
                    p.counters
                ),
                format!(
                    "bp bindflt!BfPreCreate \"j (poi({:x}) & 1) 'r rcx; gc' ; 'r rdx'\"",
                    p.counters
                ),
            ] {
                run(e, build, &cmd);
                let g = run(e, build, "g --max-seconds 60");
                assert_eq!(g["stops"][0]["reason"], "breakpoint", "{build} {cmd}: {g}");
                let n = u(&run(e, build, &format!("dq {:x} L1", p.counters))["values"][0]);
                assert_eq!(n % 2, 0, "{build} {cmd}");
                assert!(g["output"].as_str().unwrap().contains("rdx="), "{g}");
                for h in g["hits"].as_array().unwrap() {
                    assert!(h.as_str().unwrap().contains("rcx="), "{g}");
                }
                run(e, build, "bc *");
            }
            // pc, tc: from bindflt's entry, step to its call of nt!IofCompleteRequest (`call
            // rax`; pc over calls, tc into them: none comes before it); that stop only is shown.
            for verb in ["pc", "tc"] {
                run(e, build, "bp bindflt!BfPreCreate");
                let g = run(e, build, "g --max-seconds 60");
                assert_eq!(u(&g["stops"][0]["pc"]), p.pre_create, "{build}: {g}");
                run(e, build, "bc *");
                let o = run(e, build, verb);
                let stops = o["stops"].as_array().unwrap();
                assert_eq!(stops.len(), 1, "{build} {verb}: {o}");
                assert_eq!(stops[0]["reason"], "step", "{build} {verb}: {o}");
                let at = u(&stops[0]["pc"]);
                assert!(
                    (p.pre_create + 1..p.pre_create + 0x100).contains(&at),
                    "{build} {verb}: {o}"
                );
                let ins = stops[0]["instruction"].as_str().unwrap();
                assert!(ins.contains("call    rax"), "{build} {verb}: {ins}");
                assert_eq!(u(&stops[0]["registers"]["rax"]), p.complete, "{build} {verb}");
            }
            // Debug registers: a write of the create counter stops after the instruction that
            // wrote it, in bindflt; an execution breakpoint before the instruction.
            let before = u(&run(e, build, &format!("dq {:x} L1", p.counters))["values"][0]);
            run(e, build, &format!("ba w 8 {:x}", p.counters));
            let g = run(e, build, "g --max-seconds 60");
            let s = &g["stops"][0];
            assert_eq!(s["reason"], "breakpoint", "{build}: {g}");
            assert!(
                (p.pre_create..p.pre_create + 0x100).contains(&u(&s["pc"])),
                "{build}: {g}"
            );
            let after = u(&run(e, build, &format!("dq {:x} L1", p.counters))["values"][0]);
            assert_eq!(after, before + 1, "{build}: stopped right after the write");
            run(e, build, "bc *");
            run(e, build, "ba e 1 nt!IofCompleteRequest");
            // The same create goes on to its completion: stopped before the stub runs.
            let g = run(e, build, "g --max-seconds 60");
            assert_eq!(g["stops"][0]["reason"], "breakpoint", "{build}: {g}");
            assert_eq!(u(&g["stops"][0]["pc"]), p.complete, "{build}");
            let same = u(&run(e, build, &format!("dq {:x} L1", p.counters))["values"][0]);
            assert_eq!(same, after, "{build}");
            // Going on from it does not fire it again at once: the next stop is the next
            // create's (or, for one create in 2,500, the same create completing its IRP a
            // second time: the IRP then shows completed).
            let g = run(e, build, "g --max-seconds 60");
            assert_eq!(u(&g["stops"][0]["pc"]), p.complete, "{build}");
            let again = u(&run(e, build, &format!("dq {:x} L1", p.counters))["values"][0]);
            let irp = run(e, build, &format!("db {:x} L50", p.irp));
            let byte = |o: u64| u(&irp["values"][o as usize]);
            if byte(p.irp_current_location) == byte(p.irp_stack_count) + 1 {
                assert_eq!(again, after, "{build}: the second completion");
            } else {
                assert_eq!(again, after + 1, "{build}: the next create");
            }
            run(e, build, "bc *");
            // Module events: the container filter unloads (sxe ud stops there), so a `bu` on
            // it waits; its next load stops (sxe ld) with the breakpoint resolved, and the
            // next create hits it.
            run(e, build, "sxe ud:wcnfs.sys");
            let g = run(e, build, "g --max-seconds 60");
            let s = &g["stops"][0];
            assert_eq!(s["reason"], "module", "{build}: {g}");
            let m = s["module"].as_str().unwrap();
            assert!(
                m.contains("(unload)") && m.ends_with("\\wcnfs.sys"),
                "{build}: {m}"
            );
            assert_eq!(run(e, build, "lm m wcnfs")["modules"], Value::Array(vec![]));
            run(e, build, "sxd ud:wcnfs.sys");
            let set = run(e, build, "bu wcnfs!WcnPreCreate");
            assert_eq!(set["breakpoint"]["address"], Value::Null, "{build}: {set}");
            assert_eq!(set["breakpoint"]["deferred"], true);
            run(e, build, "sxe ld:wcnfs");
            let g = run(e, build, "g --max-seconds 60");
            let s = &g["stops"][0];
            assert_eq!(s["reason"], "module", "{build}: {g}");
            let m = s["module"].as_str().unwrap();
            assert!(
                !m.contains("(unload)") && m.ends_with("\\wcnfs.sys"),
                "{build}: {m}"
            );
            let bl = run(e, build, "bl");
            assert_eq!(
                u(&bl["breakpoints"][0]["address"]),
                p.module_routine,
                "{build}: {bl}"
            );
            run(e, build, "sxd ld:wcnfs");
            let g = run(e, build, "g --max-seconds 60");
            let s = &g["stops"][0];
            assert_eq!(s["reason"], "breakpoint", "{build}: {g}");
            assert_eq!(u(&s["pc"]), p.module_routine, "{build}");
            assert_eq!(s["symbol"], "wcnfs!WcnPreCreate", "{build}");
            let k = run(e, build, "k");
            assert_eq!(
                k["frames"][1]["call_site"], "FLTMGR!FltpCreate+0x34e",
                "{build}: {k}"
            );
            run(e, build, "bc *");
        })
        .await;
        if done.is_none() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conditional_breakpoint_stops_on_exactly_the_failed_creates_and_second_completions_of_ten_thousand()
 {
    for build in common::BUILDS {
        if !ten_thousand_creates(build).await {
            return;
        }
    }
}

/// On `build`'s machine: a condition on the IRP judged at each of 10,000 creates stops on the
/// failed ones and the second completions, and on nothing else. False without the tables.
async fn ten_thousand_creates(build: u32) -> bool {
    let Some((creates, failures, hits, passed)) = session(build, move |e, p| {
        let counters = |e: &mut Engine| {
            let q = run(e, build, &format!("dq {:x} L3", p.counters));
            let v = q["values"].clone();
            (u(&v[0]), u(&v[1]), u(&v[2]))
        };
        let (creates0, failures0, twice0) = counters(e);
        // A failed create, or an IRP completed already (CurrentLocation past its last stack
        // location: the second completion of one IRP).
        let (cl, sc) = (p.irp_current_location, p.irp_stack_count);
        run(
            e,
            build,
            &format!(
                "bp /w \"(dwo(@rcx+0x30) == 0xc000000d) | (by(@rcx+{cl:#x}) == by(@rcx+{sc:#x}) + 1)\" nt!IofCompleteRequest"
            ),
        );
        let (mut hits, mut passed, mut seconds, mut trips) = (0u64, 0u64, 0u64, 0u64);
        loop {
            let o = e.run("g --max-seconds 60");
            assert!(o.ok(), "{build}: {:?}", o.error);
            trips += o.cost.round_trips;
            let g = common::numbers(o.result);
            let s = &g["stops"][0];
            assert_eq!(s["reason"], "breakpoint", "{g}");
            hits += 1;
            passed += u(&g["passed"]);
            // The IRP it stopped for failed, or was completed before.
            let st = u(&run(e, build, "dd @rcx+0x30 L1")["values"][0]);
            let irp = run(e, build, &format!("db @rcx L{:x}", cl + 1));
            let done = u(&irp["values"][cl as usize]) == u(&irp["values"][sc as usize]) + 1;
            assert!(st == 0xC000_000D || done, "{build}: status {st:#x}: {irp}");
            if done {
                seconds += 1;
                // Completed twice from bindflt's routine, after its first completion.
                let k = run(e, build, "k");
                let site = k["frames"][1]["call_site"].as_str().unwrap();
                assert!(site.starts_with("bindflt!BfPreCreate+0x"), "{k}");
            }
            let (c, f, t) = counters(e);
            // Every completion so far reached the breakpoint: the failed creates and the
            // second completions stopped, the others were judged and went on.
            assert_eq!(c - creates0 + (t - twice0), hits + passed);
            assert_eq!(f - failures0 + (t - twice0), hits, "{build}");
            assert_eq!(t - twice0, seconds, "{build}");
            if c - creates0 >= 10_000 {
                // Judging a hit costs its stop's round trips: the registers, one read for
                // the IRP's fields, the step over the breakpoint and its writing back, the
                // continue (5).
                let per_hit = trips as f64 / (passed + hits) as f64;
                assert!(per_hit < 5.05, "{build}: {per_hit:.3} round trips a judged hit");
                run(e, build, "bc *");
                // Any 10,000 creates in a row hold four completed twice.
                assert!(seconds >= 4, "{build}: {seconds}");
                return (c - creates0, f - failures0, hits - seconds, passed);
            }
        }
    })
    .await
    else {
        return false;
    };
    assert!(creates >= 10_000, "{build}");
    assert_eq!(failures, hits, "{build}");
    assert!(hits >= 3, "{build}: {hits} failures in {creates} creates");
    assert_eq!(passed + hits, creates, "{build}");
    true
}

/// A bugcheck that comes in the instant the debugger breaks in (the deadline of a `g`) is
/// reported as the bugcheck, not as the break-in; a break-in after it is a break-in again,
/// though the kernel's bugcheck data stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bugcheck_in_the_instant_of_a_break_in_is_reported_as_what_it_is() {
    let build = 20348;
    session_of(
        build,
        // The session's first break-in opens the kernel; the g's is the second.
        |c| c.bugcheck_at_break_in = Some((0x44, 2)),
        move |e, _| {
            let g = run(e, build, "g --max-seconds 1");
            let s = &g["stops"][0];
            assert_eq!(s["reason"], "exception", "{g}");
            assert_eq!(s["symbol"], "nt!RtlpBreakWithStatusInstruction", "{g}");
            let b = run(e, build, ".bugcheck");
            assert_eq!(u(&b["code"]), 0x44, "{b}");
            let g = run(e, build, "g --max-seconds 1");
            assert_eq!(g["stops"][0]["reason"], "break_in", "{g}");
        },
    )
    .await;
}
