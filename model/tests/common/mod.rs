//! Helpers shared by the tests of the model and of the crates above it (the commands crate
//! includes this file): the simulated machine on every shared build.
#![allow(dead_code)]

use std::path::PathBuf;

use kdnet_model::nt::Kernel;
use kdnet_sim::scenario::Facts;
use kdnet_sim::system::{ModuleRec, ThreadRec};
use kdnet_sim::{Machine, Scenario, SimConfig, TableSource};
use kdnet_testkit::local::LocalTarget;

/// ../shared, or None (with a note) when it is absent and not required.
pub fn shared() -> Option<PathBuf> {
    kdnet_testkit::shared("symbols")
}

pub const BUILDS: [u32; 7] = [7601, 9600, 14393, 17763, 19041, 20348, 22000];

/// What the simulator planted, kept before the machine is handed to the model.
pub struct Planted {
    pub facts: Facts,
    pub threads: Vec<ThreadRec>,
    pub modules: Vec<(String, u64, u32, Vec<String>)>,
    pub cpus: Vec<(u64, u64)>,
    pub kernel_base: u64,
}

/// A simulated machine of `build` running `scenario`, opened as a kernel model in process,
/// with the real symbol tables on the symbol path.
pub fn sim_kernel(build: u32, scenario: Scenario) -> Option<(Kernel, Planted)> {
    sim_kernel_with(build, scenario, |_| {})
}

/// As [`sim_kernel`], after `change` has had its way with the machine (to corrupt it).
pub fn sim_kernel_with(
    build: u32,
    scenario: Scenario,
    change: impl FnOnce(&mut Machine),
) -> Option<(Kernel, Planted)> {
    sim_kernel_at(build, scenario, change, "")
}

/// As [`sim_kernel_with`], with `more` (`;`-separated) on the symbol path after the tables.
pub fn sim_kernel_at(
    build: u32,
    scenario: Scenario,
    change: impl FnOnce(&mut Machine),
    more: &str,
) -> Option<(Kernel, Planted)> {
    sim_kernel_configured(build, scenario, |_| {}, change, more)
}

/// As [`sim_kernel_at`], with `configure` changing the machine's configuration first.
pub fn sim_kernel_configured(
    build: u32,
    scenario: Scenario,
    configure: impl FnOnce(&mut SimConfig),
    change: impl FnOnce(&mut Machine),
    more: &str,
) -> Option<(Kernel, Planted)> {
    let dir = shared()?;
    let mut config = SimConfig {
        build,
        table: TableSource::Dir(dir.join("symbols")),
        scenario,
        cpus: 4,
        resources: 2000,
        hang_after: None,
        bugcheck_after: None,
        seed: 11,
        print_every: std::time::Duration::from_secs(10),
        // Its memory is read as a raw image's is: a machine booted without the debugger, whose
        // debugger data block the kernel encoded.
        booted_nodebug: true,
        irps: 0,
        bugcheck_at_break_in: None,
    };
    configure(&mut config);
    let mut machine = Machine::build(config).unwrap();
    change(&mut machine);
    let sys = machine.system();
    let planted = Planted {
        facts: machine.facts().clone(),
        threads: sys.threads.clone(),
        modules: sys.modules.iter().map(module_of).collect(),
        cpus: sys
            .cpus
            .iter()
            .map(|c| (c.prcb, sys.threads[c.current].ethread))
            .collect(),
        kernel_base: sys.modules[0].image.base,
    };
    let cpus = sys.cpus.len() as u32;
    let target = LocalTarget::new(machine, cpus);
    let path =
        kdnet_sim::symbols::symbol_path(&format!("{};{more}", dir.join("symbols").display()));
    let k = Kernel::open(Box::new(target), path).unwrap();
    Some((k, planted))
}

fn module_of(m: &ModuleRec) -> (String, u64, u32, Vec<String>) {
    (
        m.image.name.clone(),
        m.image.base,
        m.image.size,
        m.image.exports.iter().map(|e| e.0.clone()).collect(),
    )
}
