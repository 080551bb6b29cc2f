//! The I/O path on the simulated machine for every shared build: `!irp` of bugcheck 0x44's
//! IRP, `!irpfind` finding every planted IRP and no other, drivers, devices, stacks, the
//! namespace, handles, file objects and the PnP tree as planted; and what a bad IRP, object
//! header, directory or handle table gives.

mod common;

use std::collections::BTreeSet;

use common::{BUILDS, Planted, sim_kernel, sim_kernel_with};
use kdnet_commands::engine::Engine;
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
    assert!(
        o.incomplete.is_empty(),
        "{cmd}: incomplete {:?}",
        o.incomplete
    );
    common::numbers(o.result)
}

#[test]
fn the_double_completed_irp_and_the_pending_reads_on_every_build() {
    for build in BUILDS {
        let Some((mut e, p)) = engine(build, Scenario::IrpDoubleComplete) else {
            return;
        };
        let io = &p.facts.io;
        let d = io.double_irp.clone().unwrap();
        let (code, params) = p.facts.bugcheck.unwrap();
        assert_eq!((code, params[0], params[1]), (0x44, d.irp, 0x125a));
        // !irp of the first parameter: every stack location as planted, and the diagnosis.
        let j = run(&mut e, &format!("!irp {:x}", d.irp));
        let stack = j["stack"].as_array().unwrap();
        assert_eq!(stack.len(), d.stack.len(), "{build}");
        for (s, (major, device, driver, completion)) in stack.iter().zip(&d.stack) {
            assert_eq!(s["major"].as_u64(), Some(u64::from(*major)));
            assert_eq!(s["major_name"], "IRP_MJ_READ");
            assert_eq!(s["device"].as_u64(), Some(*device));
            assert_eq!(s["driver"], driver.as_str());
            match completion {
                Some(c) => assert_eq!(s["completion_symbol"], c.as_str(), "{build}"),
                None => assert!(s["completion_symbol"].is_null()),
            }
            assert_eq!(s["file"].as_u64(), Some(d.file));
        }
        assert_eq!(j["thread"].as_u64(), Some(d.thread));
        assert_eq!(j["active"], false);
        assert!(
            j["problems"][0]
                .as_str()
                .unwrap()
                .contains("completed more than once"),
            "{j}"
        );
        let text = e.run(&format!("!irp {:x}", d.irp)).text;
        assert!(
            text.contains("Irp is active with 2 stacks 4 is current"),
            "{text}"
        );
        assert!(
            text.contains("\\Driver\\cimfs\tFLTMGR!FltpPassThroughCompletion"),
            "{text}"
        );
        // A pending read: its current location is CimFS's, marked.
        let r = &io.irps[0];
        let j = run(&mut e, &format!("!irp {:x} 1", r.irp));
        assert_eq!(j["active"], true);
        assert_eq!(j["stack"][0]["current"], true);
        assert_eq!(j["pending_returned"], true);
        assert!(j["problems"].as_array().unwrap().is_empty());
        // !irpfind: every planted IRP and no other. (9600's symbols do not bound the
        // non-paged pool: there the threads' lists find them, and the result says the pool
        // was not searched.)
        let o = e.run("!irpfind");
        assert!(o.ok(), "{:?}", o.error);
        let pool_searched = build != 9600;
        if pool_searched {
            assert!(o.incomplete.is_empty(), "{build}: {:?}", o.incomplete);
        } else {
            assert!(
                o.incomplete[0].contains("non-paged pool are not known"),
                "{:?}",
                o.incomplete
            );
        }
        let j = common::numbers(o.result);
        let got: BTreeSet<u64> = j["irps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["irp"].as_u64().unwrap())
            .collect();
        let mut want: BTreeSet<u64> = io.irps.iter().map(|i| i.irp).collect();
        want.insert(d.irp);
        assert_eq!(got, want, "{build}");
        assert_eq!(io.irps.len(), kdnet_sim::scenario::PULLS);
        for i in j["irps"].as_array().unwrap() {
            assert_eq!(
                i["found_in"].as_array().unwrap().len(),
                if pool_searched { 2 } else { 1 },
                "found both in pool and on its thread: {i}"
            );
        }
        // By file object: only the IRP issued on it.
        let j = common::numbers(
            e.run(&format!("!irpfind 0 0 fileobject {:x}", r.file))
                .result,
        );
        assert_eq!(j["irps"].as_array().unwrap().len(), 1);
        assert_eq!(j["irps"][0]["irp"].as_u64(), Some(r.irp));
        assert_eq!(j["irps"][0]["driver"], "\\Driver\\cimfs");
        // The CimFS driver: its volumes' devices, its dispatch table, what it does not handle.
        let j = run(&mut e, "!drvobj \\Driver\\cimfs 7");
        assert_eq!(j["name"], "\\Driver\\cimfs");
        let devices: BTreeSet<u64> = j["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        for nd in io
            .named_devices
            .iter()
            .filter(|n| n.driver == "\\Driver\\cimfs")
        {
            assert!(devices.contains(&nd.device), "{}", nd.path);
        }
        assert_eq!(j["dispatch"][3]["symbol"], "CimFS!CimFsDispatchRead");
        assert_eq!(j["dispatch"][1]["symbol"], "nt!IopInvalidDeviceRequest");
        assert_eq!(j["dispatch"][1]["invalid_request"], true);
        assert_eq!(j["dispatch"][3]["invalid_request"], false);
        let j = run(&mut e, "!drvobj \\FileSystem\\Ntfs 7");
        assert_eq!(j["fast_io"][1]["name"], "FastIoRead");
        assert_eq!(j["fast_io"][1]["symbol"], "Ntfs!NtfsCopyReadA");
        // The stack of a CimFS volume: the filter manager on top.
        let vol = io
            .named_devices
            .iter()
            .find(|n| n.path == "\\Device\\CimfsVolume1")
            .unwrap();
        let j = run(&mut e, "!devstack \\Device\\CimfsVolume1");
        let drivers: Vec<&str> = j["stack"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["driver"].as_str().unwrap())
            .collect();
        assert_eq!(drivers, ["\\FileSystem\\FltMgr", "\\Driver\\cimfs"]);
        assert_eq!(j["stack"][1]["device"].as_u64(), Some(vol.device));
        assert_eq!(j["stack"][1]["this"], true);
        let j = run(&mut e, &format!("!devobj {:x}", vol.device));
        assert_eq!(j["name"], "CimfsVolume1");
        assert_eq!(j["attached_driver"], "\\FileSystem\\FltMgr");
        // The namespace.
        let j = run(&mut e, "!object \\Driver");
        assert_eq!(j["type"], "Directory");
        let names: BTreeSet<String> = j["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["type"] == "Driver")
            .map(|x| x["name"].as_str().unwrap().to_string())
            .collect();
        for (path, _) in &io.drivers {
            if let Some(n) = path.strip_prefix("\\Driver\\") {
                assert!(names.contains(n), "{build}: {n} not in {names:?}");
            }
        }
        let j = run(&mut e, "!object \\Driver\\cimfs");
        assert_eq!(j["type"], "Driver");
        assert_eq!(j["path"], "\\Driver\\cimfs");
        let j = run(&mut e, "!object \\GLOBAL??\\C:");
        assert_eq!(j["link_target"], "\\Device\\HarddiskVolume3");
        let j = run(&mut e, "!object \\FileSystem\\Filters");
        assert_eq!(j["entries"].as_array().unwrap().len(), 2);
        // A process's handles: the file object behind its handle, with its name.
        let (pid, handle, fo, name) = io.handles.last().unwrap().clone();
        let j = run(&mut e, &format!("!handle 0 f {pid:x}"));
        let h = j["handles"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["handle"].as_u64() == Some(handle))
            .unwrap_or_else(|| panic!("{build}: handle {handle:x} missing"))
            .clone();
        assert_eq!(h["object_address"].as_u64(), Some(fo));
        assert_eq!(h["object"]["type"], "File");
        assert_eq!(h["object"]["file_name"], name.as_str());
        assert_eq!(
            j["in_use"].as_u64(),
            Some(j["handles"].as_array().unwrap().len() as u64)
        );
        let j = run(&mut e, &format!("!fileobj {fo:x}"));
        assert_eq!(j["name"], name.as_str());
        assert_eq!(j["driver"], "\\Driver\\volmgr");
        assert_eq!(j["device_name"], "HarddiskVolume3");
        // The PnP tree: the NIC started here.
        let j = run(&mut e, "!devnode 0 1 myeth1g");
        assert_eq!(j["nodes"].as_array().unwrap().len(), 1);
        assert_eq!(j["nodes"][0]["state"], "DeviceNodeStarted");
        let all = run(&mut e, "!devnode 0 1");
        assert_eq!(
            all["nodes"].as_array().unwrap().len(),
            io.devnodes.len(),
            "{build}"
        );
    }
}

#[test]
fn the_nic_being_removed_is_in_its_query_remove_state_on_every_build() {
    for build in BUILDS {
        let Some((mut e, p)) = engine(build, Scenario::NblHang) else {
            return;
        };
        let (pdo, fdo, node) = p.facts.io.nic.unwrap();
        let j = run(&mut e, &format!("!devnode {node:x}"));
        assert_eq!(j["nodes"][0]["state"], p.facts.io.nic_state.as_str());
        assert_eq!(j["nodes"][0]["state"], "DeviceNodeQueryRemoved");
        assert_eq!(j["nodes"][0]["previous_state"], "DeviceNodeStarted");
        assert_eq!(j["nodes"][0]["pdo"].as_u64(), Some(pdo));
        let j = run(&mut e, &format!("!devstack {pdo:x}"));
        assert_eq!(j["stack"][0]["device"].as_u64(), Some(fdo));
        assert_eq!(j["stack"][0]["driver"], "\\Driver\\myeth1g");
        assert_eq!(j["devnode"].as_u64(), Some(node));
        assert!(
            j["instance"]
                .as_str()
                .unwrap()
                .starts_with("PCI\\VEN_8086&DEV_1521")
        );
        let j = run(&mut e, "!drvobj \\Driver\\myeth1g 7");
        // In ndis.sys (whose simulated code the real ndis.pdb's publics do not name).
        assert!(
            j["dispatch"][0x1b]["symbol"]
                .as_str()
                .unwrap()
                .starts_with("ndis")
        );
        assert_eq!(j["dispatch"][0x1b]["invalid_request"], false);
    }
}

#[test]
fn bad_irps_objects_and_tables_are_said_to_be_bad() {
    let build = 20348;
    let mut irp = 0;
    let mut pid = 0;
    let mut fo = 0;
    let Some((k, p)) = sim_kernel_with(build, Scenario::IrpDoubleComplete, |m| {
        use kdnet::machine::target::TargetHandler;
        let f = m.facts().clone();
        irp = f.io.irps[1].irp;
        pid = f.io.handles[0].0;
        fo = f.io.handles[0].2;
        let k = &m.system().k;
        // An IRP with more stack locations than its size holds; another whose Type is wrong.
        let count = irp + k.off("_IRP", "StackCount").unwrap();
        let bad = f.io.irps[2].irp;
        // A file object whose header names no type.
        let h = fo - k.off("_OBJECT_HEADER", "Body").unwrap();
        let ti = h + k.off("_OBJECT_HEADER", "TypeIndex").unwrap();
        let old = k.r64(ti) as u8;
        // A directory whose bucket chain loops.
        let root = k.r64(k.sym("ObpRootDirectoryObject").unwrap());
        let looped = (0..37)
            .map(|b| k.r64(root + 8 * b))
            .find(|e| *e != 0)
            .unwrap();
        m.write_virtual(0, count, &[9]);
        m.write_virtual(0, bad, &[0x33]);
        m.write_virtual(0, ti, &[old ^ 0x7f]);
        m.write_virtual(0, looped, &looped.to_le_bytes());
    }) else {
        return;
    };
    let mut e = Engine::new(k);
    let o = e.run(&format!("!irp {irp:x}"));
    assert!(o.ok(), "{:?}", o.error);
    assert!(
        o.text.contains("holds 2 stack locations, not the 9"),
        "{}",
        o.text
    );
    assert_eq!(o.result["stack"].as_array().unwrap().len(), 2);
    let bad = p.facts.io.irps[2].irp;
    let o = e.run(&format!("!irp {bad:x}"));
    let err = o.error.unwrap();
    assert!(err.contains("is not an IRP: its Type is 0x33"), "{err}");
    // !irpfind still finds the IRP on its thread's list and says what is wrong with it.
    let o = e.run("!irpfind");
    assert!(o.ok(), "{:?}", o.error);
    assert!(
        o.incomplete.iter().any(|n| n.contains("is not an IRP")),
        "{:?}",
        o.incomplete
    );
    let o = e.run(&format!("!object {fo:x}"));
    let err = o.error.unwrap();
    assert!(
        err.contains("is not an object") && err.contains("bad type"),
        "{err}"
    );
    let o = e.run(&format!("!handle 0 f {pid:x}"));
    assert!(o.ok(), "{:?}", o.error);
    assert!(!o.incomplete.is_empty());
    let o = e.run("!object \\");
    assert!(o.ok(), "{:?}", o.error);
    assert!(
        o.incomplete.iter().any(|n| n.contains("loops")),
        "{:?}",
        o.incomplete
    );
    let o = e.run("!object \\NoSuchDirectory");
    assert!(o.error.unwrap().contains("no object named NoSuchDirectory"));
}

#[test]
fn irpfind_over_thousands_of_pool_irps_costs_about_the_pages_they_lie_on() {
    let irps = 3000;
    let Some((k, p)) = common::sim_kernel_configured(
        20348,
        Scenario::IrpDoubleComplete,
        |c| c.irps = irps,
        |_| {},
        "",
    ) else {
        return;
    };
    let mut e = Engine::new(k);
    // Symbols and module headers load once in a session; the measured run starts cold.
    assert!(e.run("!irpfind").ok());
    e.kernel.mem.invalidate();
    e.kernel.mem.reset_needed();
    let o = e.run("!irpfind");
    assert!(o.ok(), "{:?}", o.error);
    let found = o.result["irps"].as_array().unwrap().len();
    assert_eq!(found, p.facts.io.irps.len() + 1);
    assert_eq!(
        p.facts.io.irps.len(),
        kdnet_sim::scenario::PULLS + irps as usize
    );
    // The pages the IRPs lie on are read once each; the searches that find where they are
    // and the threads' lists add little: within 1.2× the least those pages need.
    let least = e.kernel.mem.least_round_trips();
    let rts = o.cost.round_trips;
    assert!(
        rts as f64 <= 1.2 * least as f64,
        "{rts} round trips for {least} least ({found} IRPs)"
    );
}

#[test]
fn the_filter_stack_and_the_pended_create_on_every_build() {
    for build in BUILDS {
        let Some((mut e, p)) = engine(build, Scenario::BindfltRace) else {
            return;
        };
        let io = &p.facts.io;
        // `fltmc filters` as the report gives it: five filters, their altitudes and instances.
        let j = run(&mut e, "!fltkd.filters");
        assert_eq!(j["symbols"], "built-in");
        let got: Vec<(String, String, u64)> = j["frames"][0]["filters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["name"].as_str().unwrap().to_string(),
                    f["altitude"].as_str().unwrap().to_string(),
                    f["instance_count"].as_u64().unwrap(),
                )
            })
            .collect();
        let want = [
            ("bindflt", "409800", 29),
            ("FsDepends", "407000", 35),
            ("WdFilter", "328010", 35),
            ("wcifs", "189900", 17),
            ("Wof", "40700", 1),
        ]
        .map(|(n, a, c)| (n.to_string(), a.to_string(), c));
        assert_eq!(got, want, "{build}");
        let text = e.run("!fltkd.filters").text;
        assert!(
            text.contains("bindflt                                    29        409800"),
            "{text}"
        );
        // The pended create: bindflt holds it; its thread, IRP and file are the planted ones.
        let pc = io.pended_create.clone().unwrap();
        let j = run(&mut e, &format!("!fltkd.cbd {:x}", pc.cbd));
        assert_eq!(j["pended"], true);
        assert_eq!(j["pended_by"], "bindflt");
        assert_eq!(j["seen_by"][0]["filter"], "bindflt");
        assert_eq!(j["seen_by"][0]["state"], "pended");
        assert_eq!(j["seen_by"][0]["routine_symbol"], "bindflt!BfPreCreate");
        assert_eq!(j["irp_ctrl"].as_u64(), Some(pc.irp_ctrl));
        assert_eq!(j["irp"].as_u64(), Some(pc.irp));
        assert_eq!(j["thread"].as_u64(), Some(pc.thread));
        assert_eq!(j["target_file"].as_u64(), Some(pc.file));
        assert_eq!(j["target_instance"].as_u64(), Some(pc.instance));
        assert_eq!(j["major_name"], "IRP_MJ_CREATE");
        assert_eq!(j["status"].as_u64(), Some(0x103));
        let j2 = run(&mut e, &format!("!fltkd.irpctrl {:x}", pc.irp_ctrl));
        assert_eq!(j2["cbd"].as_u64(), Some(pc.cbd));
        assert_eq!(j2["pended_by"], "bindflt");
        // The file opened is relative to the cwd, whose handle the container process holds.
        let j = run(&mut e, &format!("!fileobj {:x}", pc.file));
        assert_eq!(j["related"].as_u64(), Some(pc.related));
        let (pid, handle, name) = pc.cwd.clone();
        let j = run(&mut e, &format!("!handle {handle:x} f {pid:x}"));
        assert_eq!(j["handles"][0]["object_address"].as_u64(), Some(pc.related));
        assert_eq!(j["handles"][0]["object"]["file_name"], name.as_str());
        // The instance bindflt pended it in, and its create callbacks.
        let j = run(&mut e, &format!("!fltkd.instance {:x}", pc.instance));
        assert_eq!(j["filter"], "bindflt");
        assert_eq!(j["callbacks"][0]["major_name"], "IRP_MJ_CREATE");
        assert_eq!(j["callbacks"][0]["post_symbol"], "bindflt!BfPostCreate");
        // Volumes: every one attached, each with its instances by altitude.
        let j = run(&mut e, "!fltkd.volumes");
        let vols = j["frames"][0]["volumes"].as_array().unwrap();
        assert_eq!(vols.len(), io.flt.volumes.len());
        let first: Vec<&str> = vols[0]["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["filter"].as_str().unwrap())
            .collect();
        assert_eq!(first, ["bindflt", "FsDepends", "WdFilter", "wcifs", "Wof"]);
        let j = run(
            &mut e,
            &format!("!fltkd.filter {:x}", io.flt.filters[3].filter),
        );
        assert_eq!(j["name"], "wcifs");
        assert_eq!(j["instances"].as_array().unwrap().len(), 17);
        // Something that is no callback data is said to be none.
        let o = e.run(&format!("!fltkd.cbd {:x}", pc.irp));
        assert!(o.error.unwrap().contains("is not callback data"), "{build}");
        let o = e.run(&format!("!fltkd.filter {:x}", pc.instance));
        assert!(o.error.unwrap().contains("is not a filter manager filter"));
    }
}

#[test]
fn irpfind_verbose_shows_each_found_irps_stack() {
    let Some((mut e, p)) = engine(20348, Scenario::IrpDoubleComplete) else {
        return;
    };
    let d = p.facts.io.double_irp.clone().unwrap();
    let j = run(&mut e, "!irpfind -v");
    let i = j["irps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["irp"].as_u64() == Some(d.irp))
        .unwrap()
        .clone();
    let drivers: Vec<&str> = i["locations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["driver"].as_str().unwrap())
        .collect();
    assert_eq!(drivers, ["\\FileSystem\\FltMgr", "\\Driver\\cimfs"]);
    let j = run(&mut e, "!irpfind");
    assert!(j["irps"][0]["locations"].as_array().unwrap().is_empty());
}

#[test]
fn the_completion_apc_that_cannot_run_on_every_build() {
    for build in BUILDS {
        let Some((mut e, p)) = engine(build, Scenario::VerifierApc) else {
            return;
        };
        let v = p.facts.verifier.clone().unwrap();
        assert_eq!(v.level, 0x410);
        // The thread: special kernel APCs disabled, the IRP's completion APC queued to it.
        let j = run(&mut e, &format!("!thread {:x}", v.thread));
        assert_eq!(j["special_apc_disable"].as_i64(), Some(-1), "{build}");
        assert_eq!(j["kernel_apcs"][0]["apc"].as_u64(), Some(v.apc));
        assert_eq!(j["kernel_apcs"][0]["symbol"], "nt!IopCompleteRequest");
        assert!(
            j["irps"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i.as_u64() == Some(v.irp))
        );
        let text = e.run(&format!("!thread {:x}", v.thread)).text;
        assert!(text.contains("SpecialApcDisable -1"), "{text}");
        // Its read: completed below (no location current), success.
        let j = run(&mut e, &format!("!irp {:x} 1", v.irp));
        assert_eq!(j["active"], false);
        assert_eq!(j["status"].as_u64(), Some(0));
        assert!(j["problems"].as_array().unwrap().is_empty(), "{j}");
        // Verifier's level and the verified driver, where the kernel keeps them.
        let j = run(&mut e, "dd nt!MmVerifyDriverLevel L1");
        assert!(
            e.run("dd nt!MmVerifyDriverLevel L1")
                .text
                .contains("00000410"),
            "{j}"
        );
        // Other threads have no APCs queued and none disabled.
        let (hung, _) = (p.threads[0].ethread, 0);
        let j = run(&mut e, &format!("!thread {hung:x}"));
        assert!(j["kernel_apcs"].as_array().unwrap().is_empty());
        assert_eq!(j["special_apc_disable"].as_i64(), Some(0));
    }
}

#[test]
fn verifier_names_the_driver_that_overran_pool() {
    let Some((mut e, _)) = engine(20348, Scenario::PoolCorruption) else {
        return;
    };
    // "acme" in UTF-16.
    let o = e.run("dw poi(nt!MmVerifyDriverBuffer) L4");
    assert!(o.text.contains("0061 0063 006d 0065"), "{}", o.text);
    assert!(
        e.run("dd nt!MmVerifyDriverLevel L1")
            .text
            .contains("00000001")
    );
}

#[test]
fn verifiers_irp_log_shows_the_read_issued_with_special_apcs_disabled() {
    for build in BUILDS {
        let Some((mut e, p)) = engine(build, Scenario::VerifierApc) else {
            return;
        };
        let v = p.facts.verifier.clone().unwrap();
        let j = run(&mut e, "!verifier 100");
        assert_eq!(j["level"].as_u64(), Some(0x410));
        assert_eq!(j["level_names"][0], "I/O verification");
        assert_eq!(j["level_names"][1], "IRP logging");
        assert_eq!(j["drivers"][0], "acmeav.sys");
        if build == 7601 {
            // Its symbols describe no IRP log: said, not shown empty.
            assert!(j["irp_log"].is_null());
            assert!(j["note"].as_str().unwrap().contains("_IOV_IRP_TRACE"));
            assert!(v.log.is_empty());
            continue;
        }
        let log = j["irp_log"].as_array().unwrap();
        assert_eq!(log.len(), v.log.len(), "{build}");
        let last = log.last().unwrap();
        assert_eq!(last["irp"].as_u64(), Some(v.irp));
        assert_eq!(last["thread"].as_u64(), Some(v.thread));
        assert_eq!(last["special_apc_disable"].as_i64(), Some(-1));
        assert_eq!(last["stack"][0], "acmeav!AvReadImageHeader+0x97");
        assert_eq!(last["stack"][1], "acmeav!AvImageLoadNotify+0x1d2");
    }
}
