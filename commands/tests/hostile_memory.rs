//! Every command over memory that lies: the simulated machine's reads come back with random
//! bytes changed (pointers into nowhere, loops, absurd counts, broken headers, garbage page
//! tables). No command may panic, and each must finish within its time budget.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kdnet_commands::engine::Engine;
use kdnet_model::nt::Kernel;
use kdnet_sim::{Machine, Scenario, SimConfig};
use kdnet_testkit::local::LocalTarget;
use proptest::prelude::*;

/// Bytes per million a seeded rule corrupts in every read.
struct Liar {
    seed: u64,
    /// Corrupted bytes per million.
    rate: u64,
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

impl Liar {
    /// The machine `m` served with its reads corrupted.
    fn over(
        self,
        m: Arc<Mutex<Machine>>,
    ) -> common::Tampered<impl FnMut(bool, u64, &mut [u8], usize) -> usize + Send + 'static> {
        common::Tampered {
            machine: m,
            tamper: move |_physical: bool, address: u64, buf: &mut [u8], n: usize| {
                self.lie(address, &mut buf[..n]);
                n
            },
        }
    }

    fn lie(&self, address: u64, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            let a = address.wrapping_add(i as u64);
            let h = mix(a ^ self.seed);
            if h % 1_000_000 < self.rate {
                *b = (h >> 24) as u8;
            }
        }
    }
}

fn machine(scenario: Scenario) -> Arc<Mutex<Machine>> {
    let mut config = SimConfig::demo();
    config.scenario = scenario;
    config.resources = 600;
    Arc::new(Mutex::new(Machine::build(config).unwrap()))
}

const COMMANDS: &[&str] = &[
    "lm",
    "k",
    "r",
    "!locks",
    "!thread",
    "!process 0 0",
    "!stacks",
    "!running",
    "!analyze -v",
    "!deadlock",
    "!vm",
    "!poolused 2",
    "!poolfind AcBf",
    "!ndiskd.pendingnbls",
    "!ndiskd.miniport",
    "dt nt!_EPROCESS poi(nt!PsActiveProcessHead)-0x448",
    "dps nt!KiProcessorBlock L4",
    "!irpfind",
    "!object \\",
    "!object \\Driver",
    "!drvobj \\Driver\\cimfs 7",
    "!devobj \\Device\\HarddiskVolume3",
    "!devstack \\Device\\HarddiskVolume3",
    "!devnode 0 1",
    "!handle 0 f 4",
    "!fltkd.filters",
    "!fltkd.volumes",
    "u @rip L40",
    "ub nt!KiSwapThread+0x40 L20",
    "uf nt!KiSwapContext",
    "kv",
    ".cxr @rsp",
    "k",
    ".trap @rsp",
    ".exr @rsp",
    ".frame /r 3",
    ".cxr",
    "!ready",
    "!dpcs",
    "!timer",
    "!running -ti",
    "!idt",
    "!exqueue",
    "!pcr 1",
    "!pte @rsp",
    "!pte nt",
    "!vtop 0 @rsp",
    "!prcb 2",
];

/// Runs every command; returns how many answered (None when the kernel could not be opened).
fn work_over(m: &Arc<Mutex<Machine>>, seed: u64, rate: u64, pool_at: u64) -> Option<usize> {
    let liar = Liar { seed, rate }.over(m.clone());
    let target = LocalTarget::new(liar, 4);
    // The kernel may not even be found in memory this damaged: that is an error, not a panic.
    let k = match Kernel::open(Box::new(target), kdnet_sim::symbols::symbol_path("")) {
        Ok(k) => k,
        Err(err) => {
            eprintln!("rate {rate}: open failed: {err}");
            return None;
        }
    };
    let mut worked = 0;
    let mut e = Engine::new(k);
    e.budget = Some(Duration::from_secs(3));
    for c in COMMANDS
        .iter()
        .copied()
        .chain([format!("!pool {pool_at:x}").as_str()])
    {
        let t = Instant::now();
        let o = e.run(c);
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{c} ran {:?} past its budget",
            t.elapsed()
        );
        if let Some(err) = &o.error {
            assert!(!err.contains("internal error"), "{c}: {err}");
        }
        if o.ok() {
            assert!(o.result.is_object(), "{c}: {}", o.result);
            worked += 1;
        }
    }
    Some(worked)
}

/// Twelve cases from a fixed seed, so a red run is a regression and not a roll of the dice;
/// explore with `PROPTEST_RNG_SEED=<n> PROPTEST_CASES=<n>`.
fn config() -> ProptestConfig {
    let mut c = ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = 12;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        c.rng_seed = proptest::test_runner::RngSeed::Fixed(0x6b64_6e65_7400);
    }
    c
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn commands_survive_lying_memory(seed in any::<u64>(), rate in prop::sample::select(vec![50u64, 500, 5_000, 50_000])) {
        static M: std::sync::OnceLock<(Arc<Mutex<Machine>>, u64)> = std::sync::OnceLock::new();
        let (m, at) = M.get_or_init(|| {
            let m = machine(Scenario::PoolCorruption);
            let at = m.lock().unwrap().facts().corruption.as_ref().map_or(0, |c| c.victim_of_overrun);
            (m, at)
        });
        let _ = work_over(m, seed, rate, *at);
    }
}

#[test]
fn lightly_damaged_memory_still_answers_most_commands() {
    // The property above would prove little if every case failed at the start.
    let m = machine(Scenario::PoolCorruption);
    let at = m
        .lock()
        .unwrap()
        .facts()
        .corruption
        .as_ref()
        .map_or(0, |c| c.victim_of_overrun);
    for seed in 0..3 {
        let worked = work_over(&m, seed, 20, at).expect("the kernel opens");
        assert!(
            worked >= COMMANDS.len() / 2,
            "seed {seed}: {worked} answered"
        );
    }
}

#[test]
fn a_budget_stops_a_long_walk_with_a_note() {
    let m = machine(Scenario::NblHang);
    let liar = Liar { seed: 0, rate: 0 }.over(m);
    let k = Kernel::open(
        Box::new(LocalTarget::new(liar, 4)),
        kdnet_sim::symbols::symbol_path(""),
    )
    .unwrap();
    let mut e = Engine::new(k);
    let o = e.run("!locks --max-seconds 0.000001");
    // Either the walk stopped with its note, or the command stopped saying the budget ran out.
    match &o.error {
        None => {
            assert_eq!(o.result["complete"], false);
            assert!(o.result["note"].as_str().unwrap().contains("time budget"));
        }
        Some(err) => assert!(err.contains("time budget"), "{err}"),
    }
    // Without the budget it completes.
    let o = e.run("!locks");
    assert_eq!(o.result["complete"], true);
    assert!(e.run("!locks --max-seconds nope").error.is_some());
}
