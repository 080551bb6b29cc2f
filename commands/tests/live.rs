//! The kernel model over a real KDNET session with the simulated machine (built-in layout, so
//! this runs without ../shared): what it reads matches what was planted, commands run, and the
//! cache is dropped once the target has run.

use std::time::Duration;

use kdnet::api::status;
use kdnet::host::{Host, HostConfig};
use kdnet::link::LinkConfig;
use kdnet::target::TargetConfig;
use kdnet::wire::Key;
use kdnet_commands::engine::Engine;
use kdnet_live::LiveTarget;
use kdnet_model::nt::Kernel;
use kdnet_sim::{Scenario, SimConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_over_kdnet() {
    let key = Key::parse("5.6.7.8").unwrap();
    let host = Host::bind(HostConfig::new("127.0.0.1:0".parse().unwrap(), key.clone()))
        .await
        .unwrap();
    let mut config = SimConfig::demo();
    config.scenario = Scenario::Deadlock;
    config.resources = 500;
    let mut tc = TargetConfig::new("127.0.0.1:0".parse().unwrap(), host.local_addr(), key);
    tc.offer_interval = Duration::from_millis(200);
    // A link with some delay, loss and reordering: the model must not care.
    let link = LinkConfig {
        latency: Duration::from_micros(200),
        loss: 0.02,
        reorder: 0.02,
        seed: 3,
        ..LinkConfig::default()
    };
    let sim = kdnet_sim::start(config, tc, Some(link)).await.unwrap();
    let facts = sim.facts.clone();
    host.wait_connected(Duration::from_secs(10)).await.unwrap();
    host.break_in(Duration::from_secs(10)).await.unwrap();

    let rt = tokio::runtime::Handle::current();
    let h = host.clone();
    let (mut engine, first_cost) = tokio::task::spawn_blocking(move || {
        let target = LiveTarget::new(h, rt).unwrap();
        let mut k = Kernel::open(Box::new(target), kdnet_sim::symbols::symbol_path("")).unwrap();
        assert_eq!(k.nt_source, "built-in");
        assert_eq!(k.build, 20348);
        let kdbg = k.kdbg().unwrap();
        // A KDNET target booted with the debugger: the block is plain.
        assert!(!kdbg.was_encoded);
        assert_eq!(kdbg.field("KernBase"), Some(k.base));
        let (procs, note) = k.processes().unwrap();
        assert_eq!(note, None);
        let want: Vec<(u64, u64, String)> = facts
            .processes
            .iter()
            .filter(|p| p.1 != 0)
            .cloned()
            .collect();
        let got: Vec<(u64, u64, String)> = procs
            .iter()
            .map(|p| (p.eprocess, p.pid, p.name.clone()))
            .collect();
        assert_eq!(got, want);
        // The deadlock's mutant waiter: its wait, the owner, and a stack through nt.
        let d = facts.deadlock.clone().unwrap();
        let t = k.thread(d.mutant_waiter).unwrap();
        assert_eq!(t.state_name, "Waiting");
        let w = t.waits.iter().find(|w| w.object == d.mutant).unwrap();
        assert_eq!(w.owner, Some(d.threads[0]));
        let stack = k.thread_stack(&t, None).unwrap();
        assert!(stack.frames[0].call_site.starts_with("nt!KiSwapContext+0x"));
        assert!(stack.frames.len() >= 3, "{:?}", stack);
        let cost = k.mem.stats();
        let mut e = Engine::new(k);
        assert!(e.run("r rip").ok());
        assert_eq!(
            e.run("r rip").cost.round_trips,
            0,
            "registers are cached while stopped"
        );
        (e, cost)
    })
    .await
    .unwrap();
    assert!(first_cost.transport.round_trips > 10);

    // The target runs and stops again: the next read goes to the target, not the cache.
    host.resume(status::DBG_CONTINUE).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    host.break_in(Duration::from_secs(10)).await.unwrap();
    let engine = tokio::task::spawn_blocking(move || {
        let warm = engine.run("? poi(nt!PsLoadedModuleList)");
        assert!(warm.ok(), "{:?}", warm.error);
        assert!(
            warm.cost.round_trips > 0,
            "the cache was dropped after the target ran"
        );
        let again = engine.run("? poi(nt!PsLoadedModuleList)");
        assert_eq!(again.cost.round_trips, 0, "and filled again");
        assert_eq!(again.result, warm.result);
        let lm = engine.run("lm");
        assert_eq!(
            lm.result["modules"].as_array().unwrap().len(),
            kdnet_sim::scenario::MODULES.len() + 1
        );
        // The registers are the new stop's, not the first one's.
        let r = engine.run("r rip");
        assert!(r.ok());
        assert!(
            r.cost.round_trips > 0,
            "contexts are read again after the target ran"
        );
        engine
    })
    .await
    .unwrap();
    drop(engine);
    host.resume(status::DBG_CONTINUE).await.unwrap();
    sim.target.shutdown().await;
}
