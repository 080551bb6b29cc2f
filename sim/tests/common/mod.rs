//! Helpers shared by the simulator's tests.
#![allow(dead_code)]

use std::path::PathBuf;

use kdnet_sim::{Scenario, SimConfig, TableSource};

/// ../shared, or None (with a note) when it is absent and not required.
pub fn shared() -> Option<PathBuf> {
    kdnet_testkit::shared("symbols")
}

/// A configuration for a build and scenario using the real tables.
pub fn config(build: u32, scenario: Scenario, resources: u32) -> Option<SimConfig> {
    let dir = shared()?;
    Some(SimConfig {
        build,
        table: TableSource::Dir(dir.join("symbols")),
        scenario,
        cpus: 4,
        resources,
        hang_after: None,
        bugcheck_after: None,
        seed: 7,
        print_every: std::time::Duration::from_secs(10),
        booted_nodebug: false,
        irps: 0,
        bugcheck_at_break_in: None,
    })
}

pub const BUILDS: [u32; 7] = [7601, 9600, 14393, 17763, 19041, 20348, 22000];
