mod common;

use std::time::Instant;

use kdnet_sim::{Machine, Scenario};

/// The reported nbl-hang: 84,372 resources. Time is measured, not asserted here: the sim
/// benchmark reports it; this checks the memory footprint, which is deterministic.
#[test]
fn nbl_hang_at_full_scale() {
    let Some(cfg) = common::config(
        20348,
        Scenario::NblHang,
        kdnet_sim::scenario::NBL_HANG_RESOURCES,
    ) else {
        return;
    };
    let t = Instant::now();
    let m = Machine::build(cfg).unwrap();
    let took = t.elapsed();
    let (frames, bytes) = m.memory_footprint();
    eprintln!("built in {took:?}: {frames} frames, {} MB", bytes >> 20);
    assert_eq!(m.facts().total_resources, 84_372);
    assert!(bytes < 200 << 20, "{} MB", bytes >> 20);
}
