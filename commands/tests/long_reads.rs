//! Long reads on the simulated machine (the built-in 20348 layout), counted, not timed:
//! `.writemem` writes exactly the target's bytes and fills requests to the transfer limit,
//! fails whole (no file) where a page cannot be read, and `dq` over a large range costs about
//! half the requests a read page by page did.

use kdnet_commands::engine::Engine;
use kdnet_model::nt::Kernel;
use kdnet_model::target::TargetError;
use kdnet_sim::{Machine, Scenario, SimConfig, TableSource};
use kdnet_testkit::faulty::{Faults, FaultyTarget};
use kdnet_testkit::local::LocalTarget;

/// The KDNET transfer limit.
const LIMIT: u64 = 3944;

/// A healthy simulated machine behind a target that cuts requests at [`LIMIT`] bytes and fails
/// what `faults` says.
fn engine() -> (Engine, Faults) {
    let config = SimConfig {
        build: 20348,
        table: TableSource::Builtin,
        scenario: Scenario::Healthy,
        cpus: 4,
        resources: 500,
        hang_after: None,
        bugcheck_after: None,
        seed: 11,
        print_every: std::time::Duration::from_secs(3600),
        booted_nodebug: false,
        irps: 0,
        bugcheck_at_break_in: None,
    };
    let machine = Machine::build(config).unwrap();
    let cpus = machine.system().cpus.len() as u32;
    let mut local = LocalTarget::new(machine, cpus);
    local.set_max_transfer(LIMIT as usize);
    let faults = Faults::new();
    let target = FaultyTarget::new(Box::new(local), faults.clone());
    let kernel = Kernel::open(Box::new(target), kdnet_sim::symbols::symbol_path("")).unwrap();
    (Engine::new(kernel), faults)
}

fn nt(e: &Engine) -> u64 {
    e.kernel.mem.info().kernel_base.unwrap()
}

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("kdnet-long-reads-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn writemem_of_8_mib_writes_the_targets_bytes_in_full_requests() {
    const LEN: u64 = 8 << 20;
    let (mut e, _) = engine();
    let base = nt(&e);
    let dir = scratch("8mib");
    let file = dir.join("nt.bin");
    e.kernel.mem.invalidate();
    let o = e.run(&format!(".writemem {} {base:x} L?{LEN:x}", file.display()));
    assert!(o.ok() && o.complete, "{:?} {:?}", o.error, o.incomplete);
    assert_eq!(o.text, "Writing 800000 bytes\n");
    assert_eq!(o.result["bytes"], LEN);
    assert_eq!(o.result["address"], format!("{base:#018x}"));
    // Full requests: at least 95 % of the limit on average, page tables included.
    eprintln!(
        ".writemem of 8 MiB: {} round trips, {:.0} bytes each ({:.3} of the limit)",
        o.cost.round_trips,
        LEN as f64 / o.cost.round_trips as f64,
        LEN as f64 / o.cost.round_trips as f64 / LIMIT as f64
    );
    let most = (LEN as f64 / (0.95 * LIMIT as f64)).ceil() as u64;
    assert!(
        o.cost.round_trips <= most,
        "{} round trips for 8 MiB (at most {most})",
        o.cost.round_trips
    );
    // The file holds what the model reads there.
    let written = std::fs::read(&file).unwrap();
    assert_eq!(written.len() as u64, LEN);
    let mut want = Vec::new();
    for at in (0..LEN).step_by(1 << 20) {
        want.extend(e.kernel.mem.kread(base + at, 1 << 20).unwrap());
    }
    assert!(written == want, "the file differs from the target's memory");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Only the file is left in the directory.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|d| d.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("nt.bin")]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn writemem_over_an_unreadable_page_fails_and_writes_nothing() {
    let (mut e, faults) = engine();
    let base = nt(&e);
    let dir = scratch("hole");
    let file = dir.join("nt.bin");
    // The 70th page of the range cannot be read.
    let bad = base + 70 * 0x1000;
    let space = e.kernel.mem.kernel_space().unwrap();
    let pa = e.kernel.mem.translate(space, bad).unwrap();
    faults.fail_physical(pa, pa + 0x1000, TargetError::Unavailable { address: pa });
    e.kernel.mem.invalidate();
    let o = e.run(&format!(".writemem {} {base:x} L?100000", file.display()));
    let err = o.error.unwrap();
    assert!(
        err.contains(&format!("{:08x}`{:08x}", bad >> 32, bad as u32)) && err.contains("nothing"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "no file, no leftover"
    );
    // An existing file is left as it was.
    std::fs::write(&file, b"before").unwrap();
    let o = e.run(&format!(".writemem {} {base:x} L?100000", file.display()));
    assert!(o.error.is_some());
    assert_eq!(std::fs::read(&file).unwrap(), b"before");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    // The same range shown: the page is ?? and the rest is there.
    let o = e.run(&format!("dq {base:x} L{:x}", 0x10_0000 / 8));
    assert!(o.ok(), "{:?}", o.error);
    let values = o.result["values"].as_array().unwrap();
    let first_bad = (70 * 0x1000 / 8) as usize;
    assert!(
        values[first_bad..first_bad + 512]
            .iter()
            .all(|v| v.is_null())
    );
    assert!(values[..first_bad].iter().all(|v| v.is_string()));
    assert!(values[first_bad + 512..].iter().all(|v| v.is_string()));
    // Bad ranges are refused before anything is read.
    for bad in [
        format!(".writemem {} {base:x}", file.display()),
        format!(".writemem {} {base:x} L?10000001", file.display()),
        format!(".writemem {} {base:x} {:x}", file.display(), base - 1),
    ] {
        assert!(e.run(&bad).error.is_some(), "{bad}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dq_over_a_large_range_costs_about_half_the_requests_of_page_by_page() {
    const LEN: u64 = 1 << 20;
    let (mut e, _) = engine();
    let base = nt(&e);
    // Page by page, as `d*` read before long reads.
    e.kernel.mem.invalidate();
    let before = e.kernel.mem.stats();
    for page in 0..LEN / 0x1000 {
        e.kernel.mem.kread(base + page * 0x1000, 0x1000).unwrap();
    }
    let by_page = e.kernel.mem.stats().since(&before).transport.round_trips;
    e.kernel.mem.invalidate();
    let o = e.run(&format!("dq {base:x} L{:x}", LEN / 8));
    assert!(o.ok() && o.complete, "{:?}", o.error);
    assert_eq!(o.result["values"].as_array().unwrap().len() as u64, LEN / 8);
    eprintln!(
        "1 MiB: dq {} round trips, page by page {by_page}",
        o.cost.round_trips
    );
    assert!(
        o.cost.round_trips as f64 <= 0.55 * by_page as f64,
        "dq: {} round trips, page by page: {by_page}",
        o.cost.round_trips
    );
}
