//! `!pte` and `!vtop` on every shared build: each level's entry where the self-map puts it
//! (read back through the self-map), large pages, the page-file and transition entries the
//! simulated machine wrote (swizzled as the kernel stores them, unswizzled with the mask the
//! kernel keeps), an address in the self-map taken as an entry, a root given three ways; and a
//! mask that cannot be read, said.

mod common;

use std::sync::{Arc, Mutex};

use common::{BUILDS, sim_kernel};
use kdnet_commands::engine::Engine;
use kdnet_model::nt::Kernel;
use kdnet_sim::kernel::NotResident;
use kdnet_sim::{Machine, Scenario, SimConfig};
use kdnet_testkit::local::LocalTarget;
use serde_json::Value;

fn run(e: &mut Engine, c: &str) -> (String, Value) {
    let o = e.run(c);
    assert!(o.ok(), "{c}: {:?}\n{}", o.error, o.text);
    (o.text.clone(), common::numbers(o.result.clone()))
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn every_level_on_every_build() {
    for build in BUILDS {
        let Some((k, p)) = sim_kernel(build, Scenario::Healthy) else {
            return;
        };
        let mut e = Engine::new(k);
        let f = &p.facts;

        // The kernel image: a large page, ending at the PDE.
        let (text, j) = run(&mut e, "!pte nt");
        let entries = j["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 3, "{build}: {text}");
        assert_eq!(entries[2]["level"], "PDE");
        assert_eq!(entries[2]["large_page"], true);
        assert_eq!(entries[2]["flags"].as_str().unwrap().as_bytes()[2], b'L');
        assert_eq!(u(&j["page_size"]), 0x20_0000);
        assert!(text.contains("LARGE PAGE pfn"), "{build}: {text}");
        let space = e.kernel.mem.kernel_space().unwrap();
        let pa = e.kernel.mem.translate(space, p.kernel_base).unwrap();
        assert_eq!(u(&j["physical"]), pa, "{build}");
        // Every entry read back through the self-map holds what the walk read, and the
        // addresses are those of all four levels.
        let addrs = j["entry_addresses"].as_array().unwrap();
        assert_eq!(addrs.len(), 4, "{build}");
        for (i, en) in entries.iter().enumerate() {
            let at = u(&en["address"]);
            assert_eq!(at, u(&addrs[i]));
            assert_eq!(e.kernel.mem.u64(at).unwrap(), u(&en["contains"]), "{build}");
        }
        // A root given as 0, as a frame and as a directory base: one translation.
        let dtb = u(&j["directory_base"]);
        for arg in [0, dtb >> 12, dtb] {
            let (vt, v) = run(&mut e, &format!("!vtop {arg:x} nt"));
            assert_eq!(u(&v["physical"]), pa, "{build} {arg:#x}: {vt}");
            assert_eq!(v["directory_base_checked"], true, "{build} {arg:#x}");
            assert_eq!(u(&v["directory_base"]), dtb);
            assert_eq!(v["steps"].as_array().unwrap().len(), 3);
            assert!(vt.contains("Large page mapped phys"), "{vt}");
        }

        // A 4 KB page of pool: four levels, valid, kernel, writable, not executable.
        let pool_page = f.processes[0].0 & !0xfff;
        let (text, j) = run(&mut e, &format!("!pte {pool_page:x}"));
        let entries = j["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 4, "{build}: {text}");
        let pte = &entries[3];
        assert_eq!(pte["state"], "valid");
        let flags = pte["flags"].as_str().unwrap();
        assert_eq!(&flags[7..], "KW-V", "{build}: {text}");
        let pa = e.kernel.mem.translate(space, pool_page).unwrap();
        assert_eq!(u(&pte["pfn"]), pa >> 12);
        assert_eq!(u(&j["page_size"]), 0x1000);
        // Its PTE's address taken as an entry: the same page is shown.
        let pte_at = u(&pte["address"]);
        let (text, j) = run(&mut e, &format!("!pte {pte_at:x}"));
        assert_eq!(u(&j["va"]), pool_page, "{build}: {text}");
        assert_eq!(u(&j["entry_asked"]), pte_at);
        assert!(text.contains("is the PTE of VA"), "{text}");

        // The pages the machine made not resident, each as it was written.
        let mask = f.invalid_pte_mask;
        assert_ne!(mask, 0, "{build}: every shared kernel swizzles");
        assert!(f.not_resident.len() >= 3, "{build}: {:?}", f.not_resident);
        for &(va, how) in &f.not_resident {
            let (text, j) = run(&mut e, &format!("!pte {va:x}"));
            let entries = j["entries"].as_array().unwrap();
            assert_eq!(entries.len(), 4, "{build}: {text}");
            let pte = &entries[3];
            assert_eq!(pte["swizzled"], true, "{build}: {text}");
            assert_eq!(u(&pte["contains"]) ^ u(&pte["value"]), mask);
            assert_eq!(u(&j["invalid_pte_mask"]), mask);
            assert_eq!(pte["protection"], 4);
            assert_eq!(pte["protection_name"], "ReadWrite");
            match how {
                NotResident::PageFile { file, offset } => {
                    assert_eq!(pte["state"], "page-file", "{build}: {text}");
                    assert_eq!(u(&pte["page_file"]), u64::from(file));
                    assert_eq!(u(&pte["page_file_offset"]), offset, "{build}: {text}");
                    assert!(text.contains(&format!(" Offset: {offset:x}\n")), "{text}");
                }
                NotResident::Transition { pfn } => {
                    assert_eq!(pte["state"], "transition", "{build}: {text}");
                    assert_eq!(u(&pte["pfn"]), pfn, "{build}: {text}");
                    assert!(text.contains(&format!(" Transition: {pfn:x}\n")), "{text}");
                }
            }
            assert!(j["physical"].is_null());
            let (vt, v) = run(&mut e, &format!("!vtop 0 {va:x}"));
            assert!(v["physical"].is_null(), "{vt}");
            assert!(vt.contains("PTE not present"), "{vt}");
        }
        assert!(
            f.not_resident
                .iter()
                .any(|(_, n)| matches!(n, NotResident::Transition { .. }))
        );

        // Nothing at all in an empty top-level slot: the walk ends at the PXE.
        let (text, j) = run(&mut e, "!pte ffff900000000000");
        let entries = j["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 1, "{build}: {text}");
        assert_eq!(entries[0]["state"], "zero");
        assert!(text.contains("not valid"), "{text}");
        let o = e.run("!vtop 0 0000800000000000");
        assert!(!o.ok(), "a non-canonical address is refused");
        // A frame of RAM that is not a root: walked as asked, and said.
        let not_root = e.kernel.mem.translate(space, pool_page).unwrap() >> 12;
        let o = e.run(&format!("!vtop {not_root:x} nt"));
        assert!(
            !o.complete && o.text.contains("was not seen to be a page-table root"),
            "{build}: {:?} {:?}\n{}",
            o.error,
            o.incomplete,
            o.text
        );
        // A frame past memory: an error that says so.
        let o = e.run("!vtop 1234567 nt");
        assert!(
            o.error
                .as_deref()
                .is_some_and(|m| m.contains("not available")),
            "{:?}",
            o.error
        );
    }
}

#[test]
fn a_mask_that_cannot_be_read_is_said() {
    // The built-in table: this runs without ../shared.
    let mut config = SimConfig::demo();
    config.scenario = Scenario::Healthy;
    config.resources = 600;
    let m = Machine::build(config).unwrap();
    let facts = m.facts().clone();
    let machine = Arc::new(Mutex::new(m));
    let blind: Arc<Mutex<Option<(u64, u64)>>> = Arc::new(Mutex::new(None));
    // Physical reads of the blind range fail (nothing read).
    let range = blind.clone();
    let target = LocalTarget::new(
        common::Tampered {
            machine: machine.clone(),
            tamper: move |physical: bool, address: u64, buf: &mut [u8], n: usize| match *range
                .lock()
                .unwrap()
            {
                Some((start, end))
                    if physical && address < end && address + buf.len() as u64 > start =>
                {
                    0
                }
                _ => n,
            },
        },
        4,
    );
    let k = Kernel::open(Box::new(target), kdnet_sim::symbols::symbol_path("")).unwrap();
    let mut e = Engine::new(k);
    let (va, offset) = facts
        .not_resident
        .iter()
        .find_map(|&(va, n)| match n {
            NotResident::PageFile { offset, .. } => Some((va, offset)),
            _ => None,
        })
        .unwrap();
    // With the mask: the offset written.
    let (_, j) = run(&mut e, &format!("!pte {va:x}"));
    assert_eq!(u(&j["entries"][3]["page_file_offset"]), offset);
    // The page holding the mask made unreadable.
    let nt = e.kernel.nt().unwrap();
    let at = e.kernel.sym("MiState").unwrap()
        + nt.offset("_MI_SYSTEM_INFORMATION", "Hardware.InvalidPteMask")
            .unwrap();
    let space = e.kernel.mem.kernel_space().unwrap();
    let pa = e.kernel.mem.translate(space, at).unwrap();
    *blind.lock().unwrap() = Some((pa & !0xfff, (pa & !0xfff) + 0x1000));
    e.kernel.invalidate();
    let o = e.run(&format!("!pte {va:x}"));
    assert!(o.ok(), "{:?}", o.error);
    assert!(!o.complete, "the result says it is not whole");
    let j = common::numbers(o.result.clone());
    let pte = &j["entries"][3];
    assert_eq!(pte["swizzled"], true);
    assert!(j["invalid_pte_mask"].is_null());
    // Shown as stored (not as meant), and said.
    assert_eq!(u(&pte["value"]), u(&pte["contains"]));
    assert_ne!(u(&pte["page_file_offset"]), offset);
    assert!(
        j["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("invalid-PTE mask is unknown")),
        "{j}"
    );
    assert!(o.text.contains("mask not known"), "{}", o.text);
}
