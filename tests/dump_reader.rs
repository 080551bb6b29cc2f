//! `.dump` files read by an independent reader (the kdmp-parser crate): the complete dump of
//! the simulated machine parses as a full dump whose pages are the machine's RAM byte for
//! byte, the kernel's image and a planted thread read back through its page tables, and its
//! module list walks; the kernel dump parses as a bitmap dump holding the kernel's pages and
//! not a user process's, which `/ka` adds.

use kdmp_parser::gxa::{Gpa, Gva};
use kdmp_parser::parse::KernelDumpParser;
use kdmp_parser::structs::DumpType;
use kdnet_commands::engine::Engine;
use kdnet_model::nt::Kernel;
use kdnet_sim::{Machine, Scenario, SimConfig, TableSource};
use kdnet_testkit::local::LocalTarget;

const PAGE: u64 = 0x1000;

fn config(scenario: Scenario) -> SimConfig {
    SimConfig {
        build: 20348,
        table: TableSource::Builtin,
        scenario,
        cpus: 2,
        resources: 300,
        hang_after: None,
        bugcheck_after: None,
        seed: 5,
        print_every: std::time::Duration::from_secs(3600),
        booted_nodebug: false,
        irps: 0,
        bugcheck_at_break_in: None,
    }
}

/// An engine on the simulated machine, and the same machine to compare with.
fn engine(scenario: Scenario) -> (Engine, Machine) {
    let machine = Machine::build(config(scenario)).unwrap();
    let cpus = machine.system().cpus.len() as u32;
    let mut local = LocalTarget::new(machine, cpus);
    local.set_max_transfer(3944);
    let kernel = Kernel::open(Box::new(local), kdnet_sim::symbols::symbol_path("")).unwrap();
    (
        Engine::new(kernel),
        Machine::build(config(scenario)).unwrap(),
    )
}

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("kdnet-dump-reader-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn machine_bytes(m: &Machine, pa: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    m.system().k.mem.read(pa, &mut b);
    b
}

#[test]
fn a_complete_dump_parses_with_an_independent_reader() {
    let (mut e, machine) = engine(Scenario::Deadlock);
    let dir = scratch("complete");
    let file = dir.join("complete.dmp");
    let o = e.run(&format!(".dump /f {}", file.display()));
    assert!(o.ok() && o.complete, "{:?} {:?}", o.error, o.incomplete);
    let dump = KernelDumpParser::new(&file).unwrap();
    assert_eq!(dump.dump_type(), DumpType::Full);
    let pages = o.result["pages"].as_u64().unwrap();
    assert_eq!(dump.physmem().len() as u64, pages);
    let h = dump.headers();
    assert_eq!(h.number_processors, 2);
    assert_ne!(h.kd_debugger_data_block, 0);
    assert_eq!(
        h.directory_table_base,
        e.kernel.mem.kernel_space().unwrap().dtb
    );
    // Every page is the machine's.
    let phys = kdmp_parser::phys::Reader::new(&dump);
    let mut buf = vec![0u8; PAGE as usize];
    for (gpa, _) in dump.physmem() {
        phys.read_exact(gpa, &mut buf).unwrap();
        assert!(
            buf == machine_bytes(&machine, u64::from(gpa), PAGE as usize),
            "page {:#x}",
            u64::from(gpa)
        );
    }
    // Not RAM: not in it.
    assert!(phys.read_exact(Gpa::new(0), &mut buf).is_err());
    // Through its page tables: the kernel's image, a planted thread, the module list.
    let virt = kdmp_parser::virt::Reader::new(&dump);
    let base = e.kernel.mem.info().kernel_base.unwrap();
    let mut mz = [0u8; 2];
    virt.read_exact(Gva::new(base), &mut mz).unwrap();
    assert_eq!(&mz, b"MZ");
    let thread = machine.facts().deadlock.as_ref().unwrap().threads[0];
    let size = 0x400usize;
    let mut t = vec![0u8; size];
    virt.read_exact(Gva::new(thread), &mut t).unwrap();
    assert_eq!(t, e.kernel.mem.kread(thread, size).unwrap());
    let nt = dump
        .kernel_modules()
        .find(|(_, name)| name.to_ascii_lowercase().ends_with("\\ntoskrnl.exe"))
        .map(|(r, _)| u64::from(r.start));
    assert_eq!(nt, Some(base));
    assert!(dump.kernel_modules().len() >= 10);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kernel_dumps_parse_with_an_independent_reader() {
    let (mut e, machine) = engine(Scenario::Bugcheck);
    let dir = scratch("kernel");
    // The process processor 0 runs (vmcompute.exe) and its PEB.
    let ep = e.register("$proc").unwrap();
    let p = e.kernel.process(ep).unwrap();
    let rec = machine
        .system()
        .processes
        .iter()
        .find(|r| r.eprocess == ep)
        .unwrap();
    let peb_pa = rec.space.translate(&machine.system().k.mem, p.peb).unwrap();
    let base = e.kernel.mem.info().kernel_base.unwrap();
    for (option, user) in [("/k", false), ("/ka", true)] {
        let file = dir.join(format!("{}.dmp", &option[1..]));
        let o = e.run(&format!(".dump {option} {}", file.display()));
        assert!(o.ok() && o.complete, "{:?} {:?}", o.error, o.incomplete);
        let dump = KernelDumpParser::new(&file).unwrap();
        assert_eq!(dump.dump_type(), DumpType::Bmp);
        assert_eq!(
            dump.physmem().len() as u64,
            o.result["pages"].as_u64().unwrap()
        );
        assert_eq!(u64::from(dump.headers().bug_check_code), 0x44);
        let virt = kdmp_parser::virt::Reader::new(&dump);
        let mut mz = [0u8; 2];
        virt.read_exact(Gva::new(base), &mut mz).unwrap();
        assert_eq!(&mz, b"MZ");
        // The user page, through the process's own page tables.
        let mut got = [0u8; 8];
        let r = kdmp_parser::virt::Reader::with_dtb(&dump, Gpa::new(p.dtb & !0xfff))
            .read_exact(Gva::new(p.peb + 0x10), &mut got);
        if user {
            r.unwrap();
            assert_eq!(got.to_vec(), machine_bytes(&machine, peb_pa + 0x10, 8));
        } else {
            assert!(r.is_err(), "a user page in a /k dump");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
