//! The I/O path over real KDNET on loopback, on every shared table: the simulated machine of
//! each build runs `irp-double-complete` and `bindflt-race`, and the commands a kernel engineer
//! types first find what was planted.

mod common;

use std::time::Duration;

use kdnet::host::{Host, HostConfig};
use kdnet::target::TargetConfig;
use kdnet::wire::Key;
use kdnet_commands::engine::Engine;
use kdnet_live::LiveTarget;
use kdnet_model::nt::Kernel;
use kdnet_sim::{Scenario, SimConfig, TableSource};
use serde_json::Value;

/// Runs `commands` on the machine of `build` running `scenario` over KDNET; returns the
/// planted facts and each command's JSON.
async fn over_kdnet(
    build: u32,
    scenario: Scenario,
    commands: fn(&kdnet_sim::scenario::Facts) -> Vec<String>,
) -> Option<(kdnet_sim::scenario::Facts, Vec<Value>)> {
    let dir = common::shared()?.join("symbols");
    let key = Key::parse("9.8.7.6").unwrap();
    let host = Host::bind(HostConfig::new("127.0.0.1:0".parse().unwrap(), key.clone()))
        .await
        .unwrap();
    let mut config = SimConfig::demo();
    config.build = build;
    config.table = TableSource::Dir(dir.clone());
    config.scenario = scenario;
    config.resources = 800;
    let mut tc = TargetConfig::new("127.0.0.1:0".parse().unwrap(), host.local_addr(), key);
    tc.offer_interval = Duration::from_millis(200);
    let sim = kdnet_sim::start(config, tc, None).await.unwrap();
    let facts = sim.facts.clone();
    host.wait_connected(Duration::from_secs(10)).await.unwrap();
    if scenario.bugchecks() {
        host.wait_stopped(Duration::from_secs(10)).await.unwrap();
    } else {
        host.break_in(Duration::from_secs(10)).await.unwrap();
    }
    let rt = tokio::runtime::Handle::current();
    let h = host.clone();
    let lines = commands(&facts);
    let results = tokio::task::spawn_blocking(move || {
        let target = LiveTarget::new(h, rt).unwrap();
        let path = kdnet_sim::symbols::symbol_path(&dir.display().to_string());
        let mut e = Engine::new(Kernel::open(Box::new(target), path).unwrap());
        lines
            .iter()
            .map(|c| {
                let o = e.run(c);
                assert!(o.ok(), "{build} {c}: {:?}", o.error);
                common::numbers(o.result)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    sim.target.shutdown().await;
    Some((facts, results))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_io_path_over_kdnet_on_every_build() {
    for build in common::BUILDS {
        let Some((f, r)) = over_kdnet(build, Scenario::IrpDoubleComplete, |f| {
            vec![
                format!("!irp {:x}", f.io.double_irp.as_ref().unwrap().irp),
                "!irpfind".into(),
                "!object \\Driver".into(),
            ]
        })
        .await
        else {
            return;
        };
        let d = f.io.double_irp.clone().unwrap();
        let drivers: Vec<&str> = r[0]["stack"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["driver"].as_str().unwrap())
            .collect();
        assert_eq!(
            drivers,
            ["\\Driver\\cimfs", "\\FileSystem\\FltMgr"],
            "{build}"
        );
        assert_eq!(
            r[0]["stack"][0]["completion_symbol"],
            "FLTMGR!FltpPassThroughCompletion"
        );
        assert_eq!(r[0]["thread"].as_u64(), Some(d.thread));
        // Every planted IRP in flight and the double-completed one, and nothing else.
        let mut found: Vec<u64> = r[1]["irps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["irp"].as_u64().unwrap())
            .collect();
        let mut planted: Vec<u64> = f.io.irps.iter().map(|p| p.irp).collect();
        planted.push(d.irp);
        found.sort_unstable();
        planted.sort_unstable();
        assert_eq!(found, planted, "{build}");
        assert!(
            r[2]["entries"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["name"] == "cimfs")
        );

        let Some((f, r)) = over_kdnet(build, Scenario::BindfltRace, |f| {
            let p = f.io.pended_create.as_ref().unwrap();
            vec![
                "!fltkd.filters".into(),
                format!("!fltkd.cbd {:x}", p.cbd),
                format!("!handle 0 f {:x}", p.cwd.0),
            ]
        })
        .await
        else {
            return;
        };
        // `fltmc filters` as the report gives it.
        let filters: Vec<(&str, &str, u64)> = r[0]["frames"][0]["filters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                (
                    x["name"].as_str().unwrap(),
                    x["altitude"].as_str().unwrap(),
                    x["instance_count"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            filters,
            [
                ("bindflt", "409800", 29),
                ("FsDepends", "407000", 35),
                ("WdFilter", "328010", 35),
                ("wcifs", "189900", 17),
                ("Wof", "40700", 1),
            ],
            "{build}"
        );
        assert_eq!(r[1]["pended_by"], "bindflt", "{build}");
        let p = f.io.pended_create.clone().unwrap();
        assert!(
            r[2]["handles"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["handle"].as_u64() == Some(p.cwd.1)
                    && h["object"]["file_name"] == p.cwd.2.as_str()),
            "{build}"
        );

        // The NIC the miniport holds every packet for is being removed; and the pages that
        // are not resident, each entry as the machine wrote it.
        let Some((f, r)) = over_kdnet(build, Scenario::NblHang, |f| {
            let mut c = vec![format!("!devnode {:x}", f.io.nic.unwrap().2)];
            c.extend(f.not_resident.iter().map(|(va, _)| format!("!pte {va:x}")));
            c.push("!vtop 0 nt".into());
            c
        })
        .await
        else {
            return;
        };
        assert_eq!(
            r[0]["nodes"][0]["state"], "DeviceNodeQueryRemoved",
            "{build}"
        );
        assert_eq!(r[0]["nodes"][0]["pdo"].as_u64(), Some(f.io.nic.unwrap().0));
        for (i, (_, how)) in f.not_resident.iter().enumerate() {
            let pte = &r[1 + i]["entries"][3];
            assert_eq!(pte["swizzled"], true, "{build}");
            match *how {
                kdnet_sim::kernel::NotResident::PageFile { offset, .. } => {
                    assert_eq!(pte["page_file_offset"].as_u64(), Some(offset), "{build}")
                }
                kdnet_sim::kernel::NotResident::Transition { pfn } => {
                    assert_eq!(pte["pfn"].as_u64(), Some(pfn), "{build}")
                }
            }
        }
        let vtop = r.last().unwrap();
        assert_eq!(vtop["page_size"].as_u64(), Some(0x20_0000), "{build}");
        assert_eq!(vtop["directory_base_checked"], true);
    }
}

/// The 0x3B of a file system's close path over KDNET on every build: `!analyze -v` names the
/// driver, the instruction and what it read, and walks from the context record through
/// FspPropagateTopFlags ← FspClose; `kv` shows the trap frame `.trap` then loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_exception_over_kdnet_on_every_build() {
    for build in common::BUILDS {
        let Some((f, r)) = over_kdnet(build, Scenario::ServiceException, |f| {
            let x = f.exception.as_ref().unwrap();
            vec![
                "!analyze -v".into(),
                "kv".into(),
                format!(".trap {:x}", x.trap_frame),
                "k 2".into(),
                format!(".exr {:x}", x.exception_record),
                "!ready".into(),
                "!dpcs".into(),
            ]
        })
        .await
        else {
            return;
        };
        let x = f.exception.clone().unwrap();
        let a = &r[0];
        assert_eq!(a["bugcheck_code"], 0x3b, "{build}");
        assert_eq!(a["module"], "winfsp_x64", "{build}");
        assert_eq!(a["faulting_ip"].as_u64(), Some(x.faulting_ip));
        assert_eq!(a["faulting_instruction"]["mnemonic"], "mov");
        assert_eq!(
            a["faulting_instruction"]["operands"],
            "rax,qword ptr [rcx+18h]"
        );
        assert_eq!(a["memory_accessed"]["address"].as_u64(), Some(x.read));
        let sites: Vec<&str> = a["frames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["call_site"].as_str().unwrap())
            .collect();
        assert!(
            sites[0].starts_with("winfsp_x64!FspPropagateTopFlags+"),
            "{build}: {sites:?}"
        );
        assert!(
            sites[1].starts_with("winfsp_x64!FspClose+"),
            "{build}: {sites:?}"
        );
        assert!(
            sites
                .last()
                .unwrap()
                .starts_with("nt!KiSystemServiceCopyEnd+")
        );
        let trap: Vec<u64> = r[1]["frames"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f["trap_frame"].as_u64())
            .collect();
        assert_eq!(trap, [x.trap_frame], "{build}");
        assert_eq!(r[2]["registers"]["rip"].as_u64(), Some(x.faulting_ip));
        assert_eq!(r[3]["scope"], "trap_frame");
        assert_eq!(
            r[3]["frames"][1]["call_site"]
                .as_str()
                .map(|s| s.starts_with("winfsp_x64!FspClose+")),
            Some(true)
        );
        assert_eq!(r[4]["parameters"], serde_json::json!([0, x.read]));
        // The scheduler's queues: what was queued, and nothing else.
        let mut ready: Vec<u64> = r[5]["queues"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|q| q["priorities"].as_array().unwrap().iter())
            .flat_map(|p| p["threads"].as_array().unwrap().iter())
            .map(|t| t["thread"].as_u64().unwrap())
            .collect();
        let mut planted: Vec<u64> = f.ready.iter().map(|r| r.0).collect();
        ready.sort_unstable();
        planted.sort_unstable();
        assert_eq!(ready, planted, "{build}");
        let mut dpcs: Vec<(u64, String)> = r[6]["dpcs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["dpc"].as_u64().unwrap(),
                    d["routine_symbol"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let mut planted: Vec<(u64, String)> = f.dpcs.iter().map(|d| (d.2, d.3.clone())).collect();
        dpcs.sort();
        planted.sort();
        assert_eq!(dpcs, planted, "{build}");
    }
}

/// 0x133 over KDNET on every build: `!analyze -v` names the DPC routine and where the clock
/// interrupt found it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dpc_watchdog_over_kdnet_on_every_build() {
    for build in common::BUILDS {
        let Some((f, r)) = over_kdnet(build, Scenario::DpcWatchdog, |_| {
            vec![
                "!analyze -v".into(),
                "!dpcs".into(),
                "!timer".into(),
                "!exqueue".into(),
            ]
        })
        .await
        else {
            return;
        };
        let d = f.stuck_dpc.clone().unwrap();
        let t = &r[0]["dpc_timeout"];
        assert_eq!(t["routine_symbol"], d.routine, "{build}");
        assert!(
            t["interrupted"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{}+", d.spinning)),
            "{build}: {t}"
        );
        assert_eq!(r[0]["module"], "stornvme", "{build}");
        let mut listed: Vec<u64> = r[1]["dpcs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["dpc"].as_u64().unwrap())
            .collect();
        let mut planted: Vec<u64> = f.dpcs.iter().map(|x| x.2).collect();
        listed.sort_unstable();
        planted.sort_unstable();
        assert_eq!(listed, planted, "{build}");
        // The timer tables: every timer set, each with its DPC routine or its thread.
        let mut timers: Vec<(u64, String, u64)> = r[2]["timers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["timer"].as_u64().unwrap(),
                    t["routine_symbol"].as_str().unwrap_or("").to_string(),
                    t["thread"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        let mut planted: Vec<(u64, String, u64)> = f
            .timers
            .iter()
            .map(|t| {
                (
                    t.timer,
                    t.routine.clone().unwrap_or_default(),
                    t.waiter.unwrap_or(0),
                )
            })
            .collect();
        timers.sort();
        planted.sort();
        assert_eq!(timers, planted, "{build}");
        // The work queues: their pending items, and no busy worker in this scenario.
        let mut items: Vec<u64> = r[3]["queues"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|q| q["items"].as_array().unwrap().iter())
            .map(|i| i["item"].as_u64().unwrap())
            .collect();
        let mut planted: Vec<u64> = f.work_items.iter().map(|i| i.2).collect();
        items.sort_unstable();
        planted.sort_unstable();
        assert_eq!(items, planted, "{build}");
        assert_eq!(r[3]["busy"], 0, "{build}");
    }
}

/// 0x1CA over KDNET on every build: `!analyze -v` finds the clock processor with its
/// interrupts off in CimFS (its registers fetched from that processor over the wire), and
/// `!running -ti` shows what every processor runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_synthetic_watchdog_over_kdnet_on_every_build() {
    for build in common::BUILDS {
        let Some((f, r)) = over_kdnet(build, Scenario::Watchdog1ca, |_| {
            vec!["!analyze -v".into(), "!running -ti".into()]
        })
        .await
        else {
            return;
        };
        let w = f.watchdog.clone().unwrap();
        let a = &r[0];
        assert_eq!(a["bugcheck_code"], 0x1ca, "{build}");
        assert_eq!(a["module"], "CimFS", "{build}");
        let cpus = a["watchdog"]["processors"].as_array().unwrap();
        let clock = &cpus[8];
        assert_eq!(clock["interrupts_enabled"], false, "{build}");
        assert_eq!(clock["thread"].as_u64(), Some(w.spinner));
        assert_eq!(cpus[3]["thread"].as_u64(), Some(w.holder.1));
        let running = r[1]["processors"].as_array().unwrap();
        assert_eq!(running.len(), 12);
        assert_eq!(running[8]["current"].as_u64(), Some(w.spinner));
        assert!(
            running[8]["frames"].as_array().unwrap().iter().any(|f| f
                .as_str()
                .unwrap()
                .starts_with("CimFS!CimFsPurgeRegionCache+")),
            "{build}"
        );
    }
}
