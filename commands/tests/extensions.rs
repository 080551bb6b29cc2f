//! Every extension command on the simulated machine for each shared build and each scenario it
//! concerns, asserting the answer the scenario planted; `healthy` raises no alarm; the real
//! triage dump gives its bugcheck and faulting module.

mod common;

use std::collections::BTreeSet;

use common::{BUILDS, Planted, sim_kernel};
use kdnet_commands::engine::Engine;
use kdnet_model::nt::Kernel;
use kdnet_sim::Scenario;
use serde_json::Value;

fn engine(build: u32, s: Scenario) -> Option<(Engine, Planted)> {
    let (k, p) = sim_kernel(build, s)?;
    Some((Engine::new(k), p))
}

fn run(e: &mut Engine, cmd: &str) -> Value {
    let o = e.run(cmd);
    assert!(o.ok(), "{cmd}: {:?}", o.error);
    assert!(!o.text.is_empty(), "{cmd} printed nothing");
    common::numbers(o.result)
}

fn set(v: &Value) -> BTreeSet<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

fn check_locks(e: &mut Engine, p: &Planted) {
    let o = e.run("!locks");
    assert!(o.ok(), "{:?}", o.error);
    let j = &common::numbers(o.result.clone());
    assert_eq!(
        j["total_locks"].as_u64(),
        Some(u64::from(p.facts.total_resources))
    );
    assert!(j["complete"].as_bool().unwrap());
    let held = j["held"].as_array().unwrap();
    for want in &p.facts.held {
        let h = held
            .iter()
            .find(|h| h["address"].as_u64() == Some(want.address))
            .unwrap_or_else(|| panic!("{:x} not reported held", want.address));
        assert_eq!(h["exclusive_owner"].as_u64(), want.exclusive_owner);
        assert_eq!(
            set(&h["shared_owners"]),
            want.shared_owners.iter().copied().collect()
        );
        assert_eq!(
            h["contention_count"].as_u64(),
            Some(u64::from(want.contention))
        );
        assert_eq!(
            set(&h["shared_waiters"]),
            want.shared_waiters.iter().copied().collect()
        );
        assert_eq!(
            set(&h["exclusive_waiters"]),
            want.exclusive_waiters.iter().copied().collect()
        );
        if let Some(s) = &want.symbol {
            assert_eq!(h["symbol"].as_str(), Some(s.as_str()));
            assert!(
                o.text
                    .contains(&format!("Resource @ {s} (0x{:x})", want.address))
            );
        }
        assert_eq!(h["warnings"].as_array().unwrap().len(), 0, "{h}");
    }
    assert!(o.text.contains(&format!(
        "{} total locks, {} locks currently held",
        p.facts.total_resources,
        held.len()
    )));
    // -v: every resource, and each owner thread in full with its stack, as !thread shows it.
    let o = e.run("!locks -v");
    assert!(o.ok() && o.complete, "{:?} {:?}", o.error, o.incomplete);
    let j = &common::numbers(o.result.clone());
    let all = j["held"].as_array().unwrap();
    assert_eq!(all.len() as u64, u64::from(p.facts.total_resources));
    for want in &p.facts.held {
        let h = all
            .iter()
            .find(|h| h["address"].as_u64() == Some(want.address))
            .unwrap();
        for owner in h["owners"].as_array().unwrap() {
            let thread = owner["thread"].as_u64().unwrap();
            let details = &owner["details"];
            assert_eq!(details["thread"].as_u64(), Some(thread), "{owner}");
            assert!(!details["frames"].as_array().unwrap().is_empty(), "{owner}");
            assert!(o.text.contains(&format!("\n     THREAD {thread:x}  Cid ")));
        }
    }
    assert!(
        all.iter()
            .filter(|h| h["active_count"] == 0)
            .flat_map(|h| h["owners"].as_array().unwrap())
            .all(|o| o.get("details").is_none())
    );
}

/// With the real ndis.pdb on the symbol path the commands read ndis.sys with it (and say so),
/// and find what the built-in copy of its layout finds: the 1,854 pending NBLs and the
/// miniport holding them.
#[test]
fn the_real_ndis_pdb_on_the_path_finds_the_pending_nbls() {
    let Some(pdbs) = kdnet_testkit::shared("pdbs/ndis.pdb") else {
        return;
    };
    let pdbs = pdbs.join("pdbs").display().to_string();
    let Some((k, p)) = common::sim_kernel_at(20348, Scenario::NblHang, |_| {}, &pdbs) else {
        return;
    };
    let mut e = Engine::new(k);
    let o = e.run("!ndiskd.pendingnbls");
    assert!(o.ok() && o.complete, "{:?} {:?}", o.error, o.incomplete);
    let j = common::numbers(o.result);
    assert!(
        j["symbols"].as_str().unwrap().ends_with("ndis.pdb"),
        "{}",
        j["symbols"]
    );
    assert!(o.text.starts_with("ndis.sys layout from: "), "{}", o.text);
    assert_eq!(j["pending"].as_u64(), Some(1854));
    assert_eq!(j["pending"].as_u64(), Some(u64::from(p.facts.ndis.pending)));
    assert_eq!(
        j["holders"][0]["handle"].as_u64(),
        Some(p.facts.ndis.holder)
    );
    assert_eq!(j["holders"][0]["name"], p.facts.ndis.holder_name.as_str());
    assert_eq!(j["holders"][0]["kind"], "NetAdapter");
    // Without it, the built-in copy.
    let Some((k, _)) = sim_kernel(20348, Scenario::NblHang) else {
        return;
    };
    let mut e = Engine::new(k);
    let j = run(&mut e, "!ndiskd.pendingnbls");
    assert_eq!(j["symbols"], "built-in");
    assert_eq!(j["pending"].as_u64(), Some(1854));
}

#[test]
fn nbl_hang_on_every_build() {
    for build in BUILDS {
        let Some((mut e, p)) = engine(build, Scenario::NblHang) else {
            return;
        };
        check_locks(&mut e, &p);
        // The pending NBLs and who holds them.
        let j = run(&mut e, "!ndiskd.pendingnbls");
        assert_eq!(j["pending"].as_u64(), Some(u64::from(p.facts.ndis.pending)));
        assert_eq!(j["total"].as_u64(), Some(u64::from(p.facts.ndis.total)));
        assert_eq!(j["freed"].as_u64(), Some(u64::from(p.facts.ndis.freed)));
        assert_eq!(j["pools"].as_u64(), Some(u64::from(p.facts.ndis.pools)));
        let holders = j["holders"].as_array().unwrap();
        assert_eq!(holders.len(), 1);
        assert_eq!(holders[0]["handle"].as_u64(), Some(p.facts.ndis.holder));
        assert_eq!(holders[0]["name"], p.facts.ndis.holder_name.as_str());
        assert_eq!(
            holders[0]["count"].as_u64(),
            Some(u64::from(p.facts.ndis.pending))
        );
        // The adapter's state block.
        let j = run(
            &mut e,
            &format!("!ndiskd.miniport {:x}", p.facts.ndis.holder),
        );
        assert_eq!(j["name"], p.facts.ndis.holder_name.as_str());
        // Read with the real ndis.pdb's members: the state (_NDIS_MINIPORT_BLOCK.State), the
        // address from the general attributes, the references from Ref.ReferenceCount.
        assert_eq!(j["miniport_state"], "NdisMiniportPausing");
        assert_eq!(j["pnp_state"], "NdisPnPDeviceQueryRemoved");
        assert_eq!(j["operational_status"], "NET_IF_OPER_STATUS_DOWN");
        assert_eq!(j["mac_address"], "00-15-5d-4c-21-10");
        assert_eq!(j["references"].as_u64(), Some(1858));
        // A handle that is no miniport is said to be none.
        let o = e.run(&format!("!ndiskd.miniport {:x}", p.facts.ndis.holder + 8));
        assert!(o.error.unwrap().contains("is not a miniport block"));
        let j = run(&mut e, "!ndiskd.miniport");
        let names: Vec<&str> = j["miniports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        let want: Vec<&str> = p
            .facts
            .ndis
            .miniports
            .iter()
            .map(|m| m.1.as_str())
            .collect();
        assert_eq!(names, want);
        // The hung thread: its wait, its age, and what it is blocked in.
        let (hung, seconds) = p.facts.hung_thread.unwrap();
        let j = run(&mut e, &format!("!thread {hung:x}"));
        assert_eq!(j["state"], "Waiting");
        assert_eq!(j["wait_reason"], "Executive");
        let age = j["wait_seconds"].as_f64().unwrap();
        assert!((age - seconds as f64).abs() < 1.0, "{age}");
        assert!(j["frames"].as_array().unwrap().len() > 3);
        // No cycle, but the device-install thread waits behind the hung one.
        let j = run(&mut e, "!deadlock");
        assert!(j["cycles"].as_array().unwrap().is_empty());
        assert!(
            j["edges"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["owner"].as_u64() == Some(hung))
        );
    }
}

#[test]
fn deadlock_cycle_on_every_build() {
    for build in BUILDS {
        let Some((mut e, p)) = engine(build, Scenario::Deadlock) else {
            return;
        };
        check_locks(&mut e, &p);
        let d = p.facts.deadlock.clone().unwrap();
        let j = run(&mut e, "!deadlock");
        let cycles = j["cycles"].as_array().unwrap();
        assert_eq!(cycles.len(), 1, "{j}");
        assert_eq!(
            set(&cycles[0]["threads"]),
            d.threads.iter().copied().collect()
        );
        assert_eq!(
            set(&cycles[0]["objects"]),
            d.resources.iter().copied().collect()
        );
        // Everyone queued behind it, and the mutant waiter, is reported waiting on the cycle.
        let behind: BTreeSet<u64> = j["chains"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["ends_in_deadlock"].as_bool() == Some(true))
            .flat_map(|c| set(&c["waiters"]))
            .collect();
        for q in d.queued.iter().chain([&d.mutant_waiter]) {
            assert!(behind.contains(q), "{q:x} not found behind the deadlock");
        }
    }
}

#[test]
fn commit_failures_on_every_build() {
    for build in BUILDS {
        let Some((mut e, p)) = engine(build, Scenario::CommitFailures) else {
            return;
        };
        let o = e.run("!vm");
        assert!(o.ok(), "{:?}", o.error);
        let j = &common::numbers(o.result.clone());
        assert_eq!(j["commit_failures"].as_u64(), Some(p.facts.commit_failures));
        assert_eq!(p.facts.commit_failures, 48_440);
        assert_eq!(j["committed_pages"].as_u64(), Some(p.facts.committed));
        assert_eq!(j["commit_limit_pages"].as_u64(), Some(p.facts.commit_limit));
        assert!(
            o.text
                .contains("********** 48440 commit requests have failed **********")
        );
        assert!(o.text.contains("Number of committed pages is near limit"));
        // The process table sums to Total Private.
        let private: u64 = j["processes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["commit_pages"].as_u64().unwrap())
            .sum();
        assert_eq!(j["total_private_pages"].as_u64(), Some(private));
    }
}

#[test]
fn pool_corruption_on_every_build() {
    for build in BUILDS {
        let Some((mut e, p)) = engine(build, Scenario::PoolCorruption) else {
            return;
        };
        let c = p.facts.corruption.clone().unwrap();
        let j = run(&mut e, &format!("!pool {:x}", c.victim_of_overrun));
        let corr = &j["corruption"];
        assert_eq!(corr["address"].as_u64(), Some(c.smashed_header), "{j}");
        assert_eq!(corr["page_offset"].as_u64(), Some(c.smashed_header & 0xfff));
        let found: Vec<String> = c.found.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(corr["found"], found.join(" "));
        assert_eq!(corr["previous_block"]["tag"], "AcBf");
        assert_eq!(
            corr["previous_block"]["address"].as_u64(),
            Some(c.victim_of_overrun - 16)
        );
        // The block asked about is marked.
        let marked: Vec<&Value> = j["chunks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["contains"].as_bool() == Some(true))
            .collect();
        assert_eq!(marked.len(), 1);
        assert_eq!(marked[0]["tag"], "AcBf");
        // Special pool.
        let j = run(&mut e, &format!("!pool {:x}", c.special));
        assert_eq!(j["kind"], "special");
        assert_eq!(j["chunks"][0]["tag"], "AcSp");
        assert_eq!(j["chunks"][0]["size"].as_u64(), Some(0x40));
        // Tag accounting and search.
        let j = run(&mut e, "!poolused 2 Ac*");
        let tags: Vec<&str> = j["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["tag"].as_str().unwrap())
            .collect();
        assert!(tags.contains(&"AcBf") && tags.contains(&"AcCt") && tags.contains(&"AcSp"));
        let acct = j["tags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tag"] == "AcCt")
            .unwrap();
        assert_eq!(acct["nonpaged_allocs"].as_i64(), Some(6));
        let j = run(&mut e, "!poolfind AcBf");
        let found: BTreeSet<u64> = j["matches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["address"].as_u64().unwrap())
            .collect();
        // Found, or (9600, whose symbols do not bound the non-paged pool) said not searched.
        let unsearched = j["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("non-paged pool are not known"));
        assert!(
            found.contains(&(c.victim_of_overrun - 16)) || (build == 9600 && unsearched),
            "{build}: {j}"
        );
    }
}

#[test]
fn bugcheck_and_healthy_on_every_build() {
    for build in BUILDS {
        let Some((mut e, p)) = engine(build, Scenario::Bugcheck) else {
            return;
        };
        let (code, params) = p.facts.bugcheck.unwrap();
        let j = run(&mut e, "!analyze -v");
        assert_eq!(j["bugcheck_code"].as_u64(), Some(u64::from(code)));
        let got: Vec<u64> = j["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert_eq!(got, params);
        assert_eq!(j["bugcheck_name"], "MULTIPLE_IRP_COMPLETE_REQUESTS");
        assert_eq!(j["module"], "CimFS");
        assert_eq!(j["process_name"], "vmcompute.exe");
        // The IRP of the first parameter is on the crashing thread's list.
        let t = j["thread"].as_u64().unwrap();
        let th = run(&mut e, &format!("!thread {t:x}"));
        assert!(set(&th["irps"]).contains(&params[0]));

        let Some((mut e, _)) = engine(build, Scenario::Healthy) else {
            return;
        };
        let j = run(&mut e, "!deadlock");
        assert!(j["cycles"].as_array().unwrap().is_empty(), "{j}");
        assert!(j["chains"].as_array().unwrap().is_empty(), "{j}");
        let j = run(&mut e, "!analyze");
        assert!(j["bugcheck_code"].is_null());
        let j = run(&mut e, "!vm");
        assert_eq!(j["commit_failures"].as_u64(), Some(0));
        assert!(j["warnings"].as_array().unwrap().is_empty(), "{j}");
        // Tracking off on a healthy server: the advice, not a count.
        let o = e.run("!ndiskd.pendingnbls");
        assert!(o.ok());
        assert_eq!(o.result["tracking"], false);
        assert!(o.text.contains("TrackNblOwner"));
    }
}

#[test]
fn hang_helpers_list_every_thread_and_processor() {
    let Some((mut e, p)) = engine(20348, Scenario::Deadlock) else {
        return;
    };
    let j = run(&mut e, "!process 0 0");
    let procs = j["processes"].as_array().unwrap();
    assert_eq!(
        procs.len(),
        p.facts.processes.iter().filter(|x| x.1 != 0).count()
    );
    let j = run(&mut e, "!stacks");
    let threads = j["threads"].as_array().unwrap().len();
    assert_eq!(
        threads,
        p.threads.len() - p.cpus.len() - 1,
        "all but idle and the swapped stack"
    );
    assert_eq!(j["paged_out"].as_u64(), Some(1));
    // Identical stacks are grouped: the 20 queued shared waiters share one stack shape per
    // process; the groups cover every thread once.
    let groups = j["groups"].as_array().unwrap();
    let covered: u64 = groups.iter().map(|g| g["count"].as_u64().unwrap()).sum();
    assert_eq!(covered as usize, threads);
    assert!(groups[0]["count"].as_u64().unwrap() >= 2);
    let j = run(&mut e, "!stacks 0 CimFsMountImage");
    assert!(j["threads"].as_array().unwrap().len() >= 22);
    let j = run(&mut e, "!running");
    assert_eq!(j["processors"].as_array().unwrap().len(), p.cpus.len());
    let j = run(&mut e, "!process 0 7 containerd.exe");
    assert_eq!(j["processes"].as_array().unwrap().len(), 1);
    assert!(!j["processes"][0]["threads"].as_array().unwrap().is_empty());
}

#[test]
fn the_triage_dump_analyzes() {
    let Some(k) = common::triage_kernel() else {
        return;
    };
    let mut e = Engine::new(k);
    let j = run(&mut e, "!analyze -v");
    assert_eq!(j["bugcheck_code"].as_u64(), Some(0x1000_007e));
    assert_eq!(j["bugcheck_name"], "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED_M");
    assert_eq!(j["parameters"][1].as_u64(), Some(0xffff_f804_8b58_334c));
    assert_eq!(j["module"], "amdppm");
    assert_eq!(j["symbol"], "amdppm!WriteIoMemRawEx+0x70");
    assert_eq!(j["failure_bucket"], "0x1000007E_amdppm!WriteIoMemRawEx");
    let j = run(&mut e, "lm");
    assert_eq!(j["modules"].as_array().unwrap().len(), 151);
}

#[test]
fn locks_total_of_the_reported_machine() {
    // The 84,372 resources of the reported nbl-hang, with the built-in layout.
    let mut config = kdnet_sim::SimConfig::demo();
    config.resources = kdnet_sim::scenario::NBL_HANG_RESOURCES;
    let machine = kdnet_sim::Machine::build(config).unwrap();
    let facts = machine.facts().clone();
    let cpus = machine.system().cpus.len() as u32;
    let target = kdnet_testkit::local::LocalTarget::new(machine, cpus);
    let k = Kernel::open(Box::new(target), kdnet_sim::symbols::symbol_path("")).unwrap();
    let mut e = Engine::new(k);
    let o = e.run("!locks");
    assert!(o.ok(), "{:?}", o.error);
    assert_eq!(o.result["total_locks"].as_u64(), Some(84_372));
    assert_eq!(
        o.result["held_locks"].as_u64(),
        Some(facts.held.len() as u64)
    );
    assert!(o.text.contains("84372 total locks, 2 locks currently held"));
    // One round trip per distinct page of resources, or close to it.
    assert!(
        o.cost.round_trips < 84_372 / 20,
        "{} round trips",
        o.cost.round_trips
    );
}

/// The watcher's sample: the planted hang of each scenario is found, the healthy machine
/// raises nothing, on every build.
#[test]
fn hangcheck_finds_each_planted_hang_and_nothing_on_healthy() {
    let kinds = |j: &Value| -> BTreeSet<String> {
        j["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["kind"].as_str().unwrap().to_string())
            .collect()
    };
    for build in BUILDS {
        let Some((mut e, p)) = engine(build, Scenario::Deadlock) else {
            return;
        };
        let d = p.facts.deadlock.clone().unwrap();
        let j = run(&mut e, "!hangcheck");
        let k = kinds(&j);
        assert!(
            k.contains("deadlock") && k.contains("long-wait") && k.contains("held-long"),
            "{build}: {j}"
        );
        assert_eq!(
            set(&j["cycles"][0]),
            d.threads.iter().copied().collect(),
            "{build}"
        );
        // With a short threshold every queued waiter and the mutant waiter is a long wait.
        let j = run(&mut e, "!hangcheck 1");
        let waiting: BTreeSet<u64> = j["long_waits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["thread"].as_u64().unwrap())
            .collect();
        for q in d.queued.iter().chain([&d.mutant_waiter]) {
            assert!(waiting.contains(q), "{build}: {q:x} not a long wait: {j}");
        }
        // A threshold past every planted wait finds only the cycle.
        let j = run(&mut e, "!hangcheck 100000");
        assert_eq!(
            kinds(&j),
            BTreeSet::from(["deadlock".to_string()]),
            "{build}: {j}"
        );

        let Some((mut e, p)) = engine(build, Scenario::NblHang) else {
            return;
        };
        let (hung, _) = p.facts.hung_thread.unwrap();
        let j = run(&mut e, "!hangcheck");
        let held = j["held_long"].as_array().unwrap();
        assert!(
            held.iter()
                .any(|h| h["symbol"] == "nt!PiEngineLock" && h["owners"][0].as_u64() == Some(hung)),
            "{build}: {j}"
        );
        assert_eq!(
            j["pending_nbls"].as_u64(),
            Some(u64::from(p.facts.ndis.pending))
        );

        let Some((mut e, p)) = engine(build, Scenario::CommitFailures) else {
            return;
        };
        let j = run(&mut e, "!hangcheck");
        assert_eq!(j["commit_failures"].as_u64(), Some(p.facts.commit_failures));

        let Some((mut e, _)) = engine(build, Scenario::Healthy) else {
            return;
        };
        let j = run(&mut e, "!hangcheck");
        assert!(kinds(&j).is_empty(), "{build}: {j}");
        assert_eq!(j["commit_failures"].as_u64(), Some(0));
        let j = run(&mut e, "!hangcheck 0");
        assert!(
            kinds(&j).is_empty(),
            "{build}: healthy has no lock waits at all: {j}"
        );
    }
}

/// Bad arguments to the commands added for the watcher are refused with the reason, and the
/// engine goes on.
#[test]
fn processor_switch_and_hangcheck_refuse_bad_arguments() {
    let Some((mut e, _)) = engine(20348, Scenario::Healthy) else {
        return;
    };
    for (cmd, says) in [
        ("!hangcheck soon", "not a number of seconds"),
        ("!hangcheck -5", "not a number of seconds"),
        ("~9s", "there are 4 processors (0 to 3)"),
        ("~xs", "not a processor number"),
    ] {
        let o = e.run(cmd);
        let err = o.error.unwrap_or_else(|| panic!("{cmd} was accepted"));
        assert!(err.contains(says), "{cmd}: {err}");
    }
    // A good switch changes what `r` shows.
    let o = e.run("~1s");
    assert!(o.ok(), "{:?}", o.error);
    assert_eq!(e.processor, 1);
    let r = run(&mut e, "r");
    assert_eq!(r["processor"], 1);
}

#[test]
fn process_details_and_impersonation_on_every_build() {
    for build in BUILDS {
        let Some((mut e, p)) = engine(build, Scenario::Deadlock) else {
            return;
        };
        // Every listed process's handle count, as its handle table keeps it (summed over the
        // free lists on the builds that have them).
        let o = e.run("!process 0 0");
        assert!(o.ok() && o.complete, "{build}: {:?}", o.incomplete);
        let j = common::numbers(o.result);
        let listed = j["processes"].as_array().unwrap();
        assert!(listed.len() > 5);
        for proc in listed {
            let at = proc["process"].as_u64().unwrap();
            let i = p.facts.processes.iter().position(|x| x.0 == at).unwrap();
            let planted = &p.facts.process_details[i];
            assert_eq!(proc["handle_count"].as_u64(), Some(planted.handle_count));
            assert!(
                o.text
                    .contains(&format!("HandleCount: {}.", planted.handle_count))
            );
        }
        // Flag 1: token, VAD root and count, working set, virtual size.
        let i = p
            .facts
            .processes
            .iter()
            .position(|x| x.2 == "lsass.exe")
            .unwrap();
        let (ep, planted) = (p.facts.processes[i].0, &p.facts.process_details[i]);
        let o = e.run(&format!("!process {ep:x} 1"));
        assert!(
            o.ok() && o.complete,
            "{build}: {:?} {:?}",
            o.error,
            o.incomplete
        );
        let j = common::numbers(o.result);
        let d = &j["processes"][0]["details"];
        assert_eq!(d["token"].as_u64(), Some(planted.token), "{build}");
        assert_eq!(planted.token & 0xf, 0);
        assert_eq!(d["vad_root"].as_u64(), Some(planted.vad_root));
        assert_eq!(d["vads"].as_u64(), Some(planted.vad_count));
        assert_eq!(d["working_set"].as_u64(), Some(planted.working_set.0));
        assert_eq!(d["working_set_max"].as_u64(), Some(planted.working_set.2));
        assert_eq!(d["virtual_size"].as_u64(), Some(planted.virtual_size));
        assert!(d["elapsed_seconds"].as_f64().unwrap() > 0.0);
        assert!(o.text.contains(&format!(
            "    Token                             {:016x}\n",
            planted.token
        )));
        assert!(o.text.contains(&format!(
            "    VadRoot {:016x} Vads {} ",
            planted.vad_root, planted.vad_count
        )));
        assert!(o.text.contains("Working Set Sizes (now,min,max)  ("));
        // The impersonating thread says whose token it holds; the others that they do not.
        let (thread, token, level) = p.facts.impersonating.unwrap();
        assert_eq!(token, planted.token);
        let o = e.run(&format!("!thread {thread:x}"));
        let j = common::numbers(o.result.clone());
        assert_eq!(j["impersonation"]["token"].as_u64(), Some(token), "{build}");
        assert_eq!(j["impersonation"]["level"], "Impersonation");
        assert_eq!(level, 2);
        assert!(o.text.contains(&format!(
            "Impersonation token:  {token:016x} (Level Impersonation)"
        )));
        let o = e.run("!thread");
        assert!(o.text.contains("Not impersonating") || o.text.contains("Impersonation token"));
        let j = common::numbers(o.result);
        assert!(j["thread"].as_u64() != Some(thread) || j.get("impersonation").is_some());
    }
}
