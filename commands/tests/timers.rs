//! The timer tables on every shared build: `!timer` lists exactly the timers the simulated
//! machine set (DPC timers with their routines decoded from the encoded Dpc pointer, threads'
//! waits with timeouts, one already due), and broken tables are walked with a bound and said.

mod common;

use common::{BUILDS, sim_kernel, sim_kernel_with};
use kdnet_commands::engine::Engine;
use kdnet_sim::Scenario;
use serde_json::Value;

/// (processor, timer, due, period, dpc, routine, thread, expired) of each listed timer.
type Row = (u64, u64, u64, u64, u64, String, u64, bool);

fn rows(r: &Value) -> Vec<Row> {
    let mut out: Vec<Row> = r["timers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["processor"].as_u64().unwrap(),
                t["timer"].as_u64().unwrap(),
                t["due_time"].as_u64().unwrap(),
                t["period_ms"].as_u64().unwrap(),
                t["dpc"].as_u64().unwrap_or(0),
                t["routine_symbol"].as_str().unwrap_or("").to_string(),
                t["thread"].as_u64().unwrap_or(0),
                t["expired"].as_bool().unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn the_timer_tables_hold_what_was_set_on_every_build() {
    for build in BUILDS {
        for scenario in [Scenario::Deadlock, Scenario::DpcWatchdog] {
            let Some((k, p)) = sim_kernel(build, scenario) else {
                return;
            };
            let mut e = Engine::new(k);
            let f = &p.facts;
            assert!(f.timers.len() >= 6, "{build}: {:?}", f.timers);
            let o = e.run("!timer");
            assert!(o.ok(), "{build}: {:?}\n{}", o.error, o.text);
            assert!(o.complete, "{build}: {:?}", o.incomplete);
            let r = common::numbers(o.result.clone());
            let mut want: Vec<Row> = f
                .timers
                .iter()
                .map(|t| {
                    (
                        u64::from(t.processor),
                        t.timer,
                        t.due,
                        u64::from(t.period_ms),
                        t.dpc,
                        t.routine.clone().unwrap_or_default(),
                        t.waiter.unwrap_or(0),
                        t.expired,
                    )
                })
                .collect();
            want.sort();
            assert_eq!(rows(&r), want, "{build} {scenario}");
            assert_eq!(
                r["expired"].as_u64(),
                Some(f.timers.iter().filter(|t| t.expired).count() as u64)
            );
            // The second set of lists exists where the build's table has one, and holds
            // the timer set there.
            let two = f.timers.iter().any(|t| t.set == 1);
            assert_eq!(two, build >= 19041, "{build}: [2][256] from 19041 on");
            for t in r["timers"].as_array().unwrap() {
                let planted = f
                    .timers
                    .iter()
                    .find(|x| x.timer == t["timer"].as_u64().unwrap())
                    .unwrap();
                assert_eq!(t["set"].as_u64(), Some(u64::from(planted.set)));
                // The list its due time selects.
                assert_eq!(
                    t["list"].as_u64(),
                    Some(planted.due / 156_250 % 256),
                    "{build}"
                );
            }
            // WinDbg's layout: the header, a table per processor, P and X flags, the DPC
            // routine or the thread.
            let text = &o.text;
            assert!(text.starts_with("Dump system timers"), "{text}");
            assert!(text.contains("PROCESSOR 0 (nt!_KTIMER_TABLE "), "{text}");
            let expired = f.timers.iter().find(|t| t.expired).unwrap();
            let line = text
                .lines()
                .find(|l| l.contains(&format!("{:016x}", expired.timer)))
                .unwrap();
            assert!(
                line.contains(" X ") && line.contains("tcpip!TcpPeriodicTimeoutHandler (DPC @")
            );
            let periodic = f.timers.iter().find(|t| t.period_ms != 0).unwrap();
            let line = text
                .lines()
                .find(|l| l.contains(&format!("{:016x}", periodic.timer)))
                .unwrap();
            assert!(line.contains(" P "), "{line}");
            let waited = f.timers.iter().find_map(|t| t.waiter).unwrap();
            assert!(text.contains(&format!("thread {waited:016x}")), "{text}");
            assert!(
                text.contains(&format!("Total Timers: {}", f.timers.len())),
                "{text}"
            );
        }
    }
}

/// A timer list that loops, one that holds something that is not a timer, and a Dpc that
/// decodes to nothing: each is said, the walk stops, the result is incomplete.
#[test]
fn broken_timer_tables_are_bounded_and_said() {
    let build = 20348;
    // Two timers on processor 0 (the DPC timers set first): the first's Flink made to point
    // at itself.
    let Some((k, p)) = sim_kernel_with(build, Scenario::Deadlock, |m| {
        use kdnet::machine::target::TargetHandler;
        let f = m.facts().clone();
        let k = &m.system().k;
        let link = k.off("_KTIMER", "TimerListEntry").unwrap();
        let t = f.timers[0].timer + link;
        m.write_virtual(0, t, &t.to_le_bytes());
    }) else {
        return;
    };
    let mut e = Engine::new(k);
    let o = e.run("!timer");
    assert!(o.ok(), "{:?}", o.error);
    assert!(!o.complete);
    assert!(
        o.incomplete
            .iter()
            .any(|w| w.contains("processor 0's timer table")),
        "{:?}",
        o.incomplete
    );
    assert!(o.text.contains("NOTE: processor 0"), "{}", o.text);
    // The other processors' timers are all there.
    let r = common::numbers(o.result);
    for t in p.facts.timers.iter().filter(|t| t.processor != 0) {
        assert!(
            r["timers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["timer"].as_u64() == Some(t.timer)),
            "{t:?}"
        );
    }

    // A timer whose type is not a timer's, and one whose Dpc is noise.
    let Some((k, _)) = sim_kernel_with(build, Scenario::Deadlock, |m| {
        use kdnet::machine::target::TargetHandler;
        let f = m.facts().clone();
        let k = &m.system().k;
        let dpc_at = k.off("_KTIMER", "Dpc").unwrap();
        m.write_virtual(0, f.timers[0].timer, &[0x13]);
        m.write_virtual(
            0,
            f.timers[2].timer + dpc_at,
            &0x4141_4141_4141_4141u64.to_le_bytes(),
        );
    }) else {
        return;
    };
    let mut e = Engine::new(k);
    let o = e.run("!timer");
    assert!(o.ok(), "{:?}", o.error);
    assert!(!o.complete);
    assert!(o.text.contains("is not a timer"), "{}", o.text);
    assert!(
        o.text.contains("not a DPC") || o.text.contains("not an address"),
        "{}",
        o.text
    );
}
