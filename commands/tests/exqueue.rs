//! The executive's worker queues on every shared build, found three ways (KQUEUE array,
//! node block, system partition): `!exqueue` lists exactly the queues, worker threads and
//! pending work items the simulated machine made, and broken queues are said.

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

#[test]
fn the_work_queues_hold_what_was_queued_on_every_build() {
    for build in BUILDS {
        for scenario in [Scenario::NblHang, Scenario::Deadlock] {
            let Some((k, p)) = sim_kernel(build, scenario) else {
                return;
            };
            let f = &p.facts;
            let mut e = Engine::new(k);
            let r = run(&mut e, "!exqueue");
            let queues = r["queues"].as_array().unwrap();
            let addrs: Vec<u64> = queues
                .iter()
                .map(|q| q["address"].as_u64().unwrap())
                .collect();
            assert_eq!(addrs, f.work_queues, "{build} {scenario}");
            let kind = if build == 7601 { "KQUEUE" } else { "KPRIQUEUE" };
            for q in queues {
                assert_eq!(q["kind"], kind, "{build}");
            }
            if build == 7601 {
                let names: Vec<&str> = queues.iter().map(|q| q["name"].as_str().unwrap()).collect();
                assert_eq!(
                    names,
                    [
                        "CriticalWorkQueue",
                        "DelayedWorkQueue",
                        "HyperCriticalWorkQueue"
                    ]
                );
            } else {
                assert_eq!(queues[0]["name"], "ExPoolUntrusted", "{build}");
            }
            // The base's ten idle workers wait for work; a scenario's workers are busy, on
            // the first queue.
            let mut idle = 0;
            let mut busy = Vec::new();
            for q in queues {
                for t in q["threads"].as_array().unwrap() {
                    if t["idle"].as_bool().unwrap() {
                        idle += 1;
                        assert_eq!(t["wait_reason"], "WrQueue", "{build}");
                    } else {
                        assert_eq!(q["address"].as_u64(), Some(f.work_queues[0]));
                        busy.push(t["thread"].as_u64().unwrap());
                    }
                }
            }
            assert_eq!(idle, 10, "{build} {scenario}");
            busy.sort();
            let mut want = f.busy_workers.clone();
            want.sort();
            assert_eq!(busy, want, "{build} {scenario}");
            assert_eq!(
                usize::from(scenario == Scenario::NblHang) * 2,
                busy.len(),
                "nbl-hang's two PnP workers"
            );
            assert_eq!(r["busy"].as_u64(), Some(busy.len() as u64));
            // The queues' own counts of their workers agree with their thread lists.
            let counted: i64 = queues
                .iter()
                .map(|q| q["thread_count"].as_i64().unwrap())
                .sum();
            assert_eq!(counted, 10 + busy.len() as i64, "{build} {scenario}");
            // The pending items: on the last queue, highest priority first, in queue order.
            let items: Vec<(u64, u64, u64, String)> = queues
                .iter()
                .flat_map(|q| {
                    let a = q["address"].as_u64().unwrap();
                    q["items"].as_array().unwrap().iter().map(move |i| {
                        (
                            a,
                            i["priority"].as_u64().unwrap(),
                            i["item"].as_u64().unwrap(),
                            i["routine_symbol"].as_str().unwrap().to_string(),
                        )
                    })
                })
                .collect();
            let mut want: Vec<(u64, u64, u64, String)> = f
                .work_items
                .iter()
                .map(|(q, p, i, r)| (*q, u64::from(*p), *i, r.clone()))
                .collect();
            want.sort_by_key(|w| std::cmp::Reverse(w.1));
            assert_eq!(items, want, "{build} {scenario}");
            assert_eq!(r["pending"].as_u64(), Some(f.work_items.len() as u64));
            // Flags: 4 shows only the items, 3 only the threads.
            let r4 = run(&mut e, "!exqueue 4");
            assert!(
                r4["queues"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|q| q["threads"].as_array().unwrap().is_empty())
            );
            assert_eq!(r4["pending"], r["pending"]);
            let r2 = run(&mut e, "!exqueue 2");
            let shown: usize = r2["queues"]
                .as_array()
                .unwrap()
                .iter()
                .map(|q| q["threads"].as_array().unwrap().len())
                .sum();
            assert_eq!(shown, 10);
            let text = e.run("!exqueue").text;
            assert!(text.starts_with("**** NUMA Node 0"), "{text}");
            assert!(
                text.contains("PENDING: PRIORITY")
                    && text.contains("CimFS!CimFsDeferredCloseWorker"),
                "{text}"
            );
            assert!(text.contains("waiting for work"), "{text}");
        }
    }
    let Some((k, _)) = sim_kernel(20348, Scenario::Deadlock) else {
        return;
    };
    let mut e = Engine::new(k);
    let o = e.run("!exqueue 8");
    assert!(!o.ok());
    assert!(format!("{:?}", o.error).contains("only 1"), "{:?}", o.error);
}

/// A pending-item list that loops is said and the result incomplete; a queue whose back
/// pointer does not lead to where the walk came from is refused, naming both.
#[test]
fn broken_work_queues_are_said() {
    for build in [7601, 14393, 20348] {
        let Some((k, _)) = sim_kernel_with(build, Scenario::Deadlock, |m| {
            use kdnet::machine::target::TargetHandler;
            let f = m.facts().clone();
            let k = &m.system().k;
            let link = k.off("_WORK_QUEUE_ITEM", "List").unwrap();
            let second = f.work_items[1].2 + link;
            m.write_virtual(0, second, &second.to_le_bytes());
        }) else {
            return;
        };
        let mut e = Engine::new(k);
        let o = e.run("!exqueue");
        assert!(o.ok(), "{build}: {:?}", o.error);
        assert!(!o.complete, "{build}");
        assert!(o.text.contains("loops back"), "{build}: {}", o.text);
    }
    for (build, field) in [(14393, "Node"), (20348, "Partition")] {
        let Some((k, _)) = sim_kernel_with(build, Scenario::Deadlock, |m| {
            use kdnet::machine::target::TargetHandler;
            let f = m.facts().clone();
            let k = &m.system().k;
            let at = f.work_queues[1] + k.off("_EX_WORK_QUEUE", field).unwrap();
            m.write_virtual(0, at, &0xffff_c000_1234_5000u64.to_le_bytes());
        }) else {
            return;
        };
        let mut e = Engine::new(k);
        let o = e.run("!exqueue");
        assert!(
            !o.ok(),
            "{build}: a queue that does not lead back is not shown"
        );
        let err = format!("{:?}", o.error);
        assert!(err.contains("ffffc00012345000"), "{build}: {err}");
    }
}
