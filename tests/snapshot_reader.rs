//! A watcher's `snapshot.dmp` read by an independent reader (the kdmp-parser crate): it parses
//! as a bitmap kernel dump, its header names the bugcheck, the kernel's lists and page tables,
//! the module list walks through the pages it holds, and the kernel image reads back through
//! its page tables.

mod common;

use kdmp_parser::gxa::Gva;
use kdmp_parser::parse::KernelDumpParser;
use kdmp_parser::structs::DumpType;
use serde_json::Value;

#[test]
fn the_snapshot_parses_with_an_independent_reader() {
    let (dir, bundle) = common::first_capture(
        "kdmp",
        &[
            "--scenario",
            "bugcheck",
            "--after",
            "1s",
            "--resources",
            "500",
        ],
        &[],
        "!analyze -v\n!locks\n",
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("report.json")).unwrap())
            .unwrap();
    let dump = KernelDumpParser::new(bundle.join("snapshot.dmp")).unwrap();
    assert_eq!(dump.dump_type(), DumpType::Bmp);
    let h = dump.headers();
    assert_eq!(u64::from(h.bug_check_code), 0x44);
    let params: Vec<u64> = report["bugcheck"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| kdnet_commands::hex::parse(p).unwrap())
        .collect();
    assert_eq!(h.bug_check_code_parameters.to_vec(), params);
    assert_eq!(h.number_processors, 4);
    assert_ne!(h.kd_debugger_data_block, 0);
    assert!(dump.physmem().len() > 20, "{} pages", dump.physmem().len());
    // It walked PsLoadedModuleList through the dump's own pages.
    let kernel_base = kdnet_commands::hex::parse(&report["kernel_base"]).unwrap();
    let nt = dump
        .kernel_modules()
        .find(|(_, name)| name.to_ascii_lowercase().ends_with("\\ntoskrnl.exe"))
        .map(|(r, _)| u64::from(r.start));
    let names: Vec<String> = dump.kernel_modules().map(|(_, n)| n.to_string()).collect();
    assert_eq!(nt, Some(kernel_base), "{names:?}");
    assert!(dump.kernel_modules().len() >= 10);
    // The kernel image's header reads back through the dump's page tables.
    let mut mz = [0u8; 2];
    kdmp_parser::virt::Reader::new(&dump)
        .read_exact(Gva::new(kernel_base), &mut mz)
        .unwrap();
    assert_eq!(&mz, b"MZ");
    std::fs::remove_dir_all(dir).ok();
}
