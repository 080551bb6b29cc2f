//! The watcher's sample starts from the threads: the resources waited for are reached from
//! their waiters, and the resource list is not read. Checked on every scenario over the real
//! table of every build of ../shared/symbols the simulator builds a machine for, against the
//! sample that walks the whole list (the reference): the same findings, every one; and on the
//! machines whose waits lead to resources (deadlock, nbl-hang) and the healthy one, not one
//! byte of the list — its head or any resource's link other than those waited for and the
//! PnP locks read by their globals — is read.

use std::collections::BTreeSet;
use std::path::PathBuf;

use kdnet_commands::engine::Engine;
use kdnet_commands::ext::hangcheck::{self, Sample, Thresholds};
use kdnet_model::nt::Kernel;
use kdnet_model::target::{Target, TargetError, TargetInfo, TransportStats};
use kdnet_sim::scenario::Facts;
use kdnet_sim::{Machine, Scenario, SimConfig, TableSource};
use kdnet_testkit::faulty::{Faults, FaultyTarget};
use kdnet_testkit::local::LocalTarget;

/// The builds of ../shared/symbols the simulator builds a machine for, by their tables.
const BUILDS: &[(u32, &str)] = &[
    (7601, "339E74133576439CBCDF7E0229DA3773-1.json.xz"),
    (9600, "22597D0B40394E23936F6A24C6C52D5B-1.json.xz"),
    (14393, "517E128F7B7C4EA79491DE6B9B9CE190-1.json.xz"),
    (17763, "A1E1C9A90091DA9805D0EBA0470BEC85-1.json.xz"),
    (19041, "BBED7C2955FBE4522AAA23F4B8677AD9-1.json.xz"),
    (20348, "C2EADB24A615E9472CE47C8ADD31F130-1.json.xz"),
    (22000, "32C1A669D5FFEFD41091F636CFDB6E99-1.json.xz"),
];

/// Every physical read a target was asked for: (address, length).
#[derive(Clone, Default)]
struct Reads(std::sync::Arc<std::sync::Mutex<Vec<(u64, usize)>>>);

impl Reads {
    fn take(&self) -> Vec<(u64, usize)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// A target that notes every physical read.
struct Recording {
    inner: Box<dyn Target>,
    reads: Reads,
}

impl Target for Recording {
    fn info(&self) -> TargetInfo {
        self.inner.info()
    }
    fn read_physical(&mut self, address: u64, buf: &mut [u8]) -> Result<usize, TargetError> {
        self.reads.0.lock().unwrap().push((address, buf.len()));
        self.inner.read_physical(address, buf)
    }
    fn max_transfer(&self) -> usize {
        self.inner.max_transfer()
    }
    fn context(&mut self, processor: u32) -> Result<kdnet_arch::Context, TargetError> {
        self.inner.context(processor)
    }
    fn special_registers(&mut self, processor: u32) -> Result<Vec<u8>, TargetError> {
        self.inner.special_registers(processor)
    }
    fn control_pointer(&mut self, processor: u32, index: u64) -> Result<u64, TargetError> {
        self.inner.control_pointer(processor, index)
    }
    fn stats(&self) -> TransportStats {
        self.inner.stats()
    }
}

/// A simulated machine.
struct Sim {
    kernel: Kernel,
    reads: Reads,
    faults: Faults,
    facts: Facts,
    /// Every resource on the list.
    resources: Vec<u64>,
}

fn sim(dir: &std::path::Path, build: u32, file: &str, scenario: Scenario) -> Sim {
    let config = SimConfig {
        build,
        table: TableSource::File(dir.join("ntkrnlmp.pdb").join(file)),
        scenario,
        cpus: 4,
        resources: 2000,
        hang_after: None,
        bugcheck_after: None,
        seed: 11,
        print_every: std::time::Duration::from_secs(3600),
        booted_nodebug: false,
        irps: 0,
        bugcheck_at_break_in: None,
    };
    let machine = Machine::build(config).unwrap_or_else(|e| panic!("{build} {scenario}: {e}"));
    let facts = machine.facts().clone();
    let resources = machine.system().resources.clone();
    let cpus = machine.system().cpus.len() as u32;
    let reads = Reads::default();
    let faults = Faults::new();
    let target = Recording {
        inner: Box::new(FaultyTarget::new(
            Box::new(LocalTarget::new(machine, cpus)),
            faults.clone(),
        )),
        reads: reads.clone(),
    };
    let path = kdnet_sim::symbols::symbol_path(&dir.display().to_string());
    let kernel = Kernel::open(Box::new(target), path).unwrap();
    Sim {
        kernel,
        reads,
        faults,
        facts,
        resources,
    }
}

fn shared() -> Option<PathBuf> {
    kdnet_testkit::shared("symbols").map(|d| d.join("symbols"))
}

/// What a sample says, without the notes and whether some read failed (which say how it was
/// taken: the reference reads what the thread-first sample need not).
fn said(s: &Sample) -> serde_json::Value {
    let mut v = serde_json::to_value(s).unwrap();
    v.as_object_mut().unwrap().remove("notes");
    v.as_object_mut().unwrap().remove("incomplete");
    v["findings"] = serde_json::to_value(hangcheck::judge(None, s)).unwrap();
    v
}

/// A sample from a cold cache, with its round trips.
fn sample(e: &mut Engine, th: &Thresholds, reference: bool) -> (Sample, u64) {
    e.kernel.mem.invalidate();
    let before = e.kernel.mem.stats();
    let s = if reference {
        hangcheck::sample_reference(e, th, None)
    } else {
        hangcheck::sample(e, th)
    }
    .unwrap();
    (s, e.kernel.mem.stats().since(&before).transport.round_trips)
}

#[test]
fn thread_first_samples_find_what_the_full_walk_finds() {
    let Some(dir) = shared() else {
        return;
    };
    for &(build, file) in BUILDS {
        for scenario in Scenario::ALL {
            let s = sim(&dir, build, file, scenario);
            let mut e = Engine::new(s.kernel);
            // What any first command loads (symbols, the module list) is not counted.
            sample(&mut e, &Thresholds::default(), true);
            for th in [
                Thresholds::default(),
                // Every wait on a lock is long.
                Thresholds {
                    wait_seconds: 0.0,
                    held_seconds: 0.0,
                },
            ] {
                let (fast, fast_rts) = sample(&mut e, &th, false);
                let (full, full_rts) = sample(&mut e, &th, true);
                assert_eq!(
                    said(&fast),
                    said(&full),
                    "{build} {scenario} at {} s: {:?} / {:?}",
                    th.wait_seconds,
                    fast.notes,
                    full.notes
                );
                assert!(
                    !fast.notes.iter().any(|n| n.contains("resource list")),
                    "{build} {scenario}: {:?}",
                    fast.notes
                );
                assert!(
                    fast_rts <= full_rts,
                    "{build} {scenario}: {fast_rts} > {full_rts}"
                );
                eprintln!(
                    "{build} {scenario:<16} wait>{:>2} s: {} findings; {fast_rts} round trips thread-first, {full_rts} with the walk",
                    th.wait_seconds,
                    hangcheck::judge(None, &fast).len(),
                );
            }
            // What was planted is what is found.
            if scenario == Scenario::Deadlock {
                let d = s.facts.deadlock.clone().unwrap();
                let (fast, _) = sample(&mut e, &Thresholds::default(), false);
                let mut cycle = fast.cycles[0].clone();
                cycle.sort();
                let mut planted = d.threads.to_vec();
                planted.sort();
                assert_eq!(cycle, planted, "{build}");
            }
        }
    }
}

#[test]
fn samples_do_not_read_the_resource_list() {
    let Some(dir) = shared() else {
        return;
    };
    for &(build, file) in BUILDS {
        for scenario in [Scenario::Healthy, Scenario::Deadlock, Scenario::NblHang] {
            let mut s = sim(&dir, build, file, scenario);
            let k = &mut s.kernel;
            // Resources a sample may read: those waited for and the PnP locks (by their
            // globals).
            let mut entitled: Vec<u64> = s.facts.held.iter().map(|h| h.address).collect();
            entitled.extend(hangcheck::PNP_LOCKS.iter().filter_map(|n| k.sym(n).ok()));
            let head = k.sym("ExpSystemResourcesList").unwrap();
            let link = k
                .nt()
                .unwrap()
                .offset("_ERESOURCE", "SystemResourcesList")
                .unwrap();
            let space = k.mem.kernel_space().unwrap();
            let mut guarded = vec![(head, "the list head".to_string())];
            guarded.extend(
                s.resources
                    .iter()
                    .filter(|r| !entitled.contains(r))
                    .map(|r| (r + link, format!("the link of resource {r:#x}"))),
            );
            let guarded: Vec<(u64, String)> = guarded
                .into_iter()
                .map(|(va, what)| (k.mem.translate(space, va).unwrap(), what))
                .collect();
            assert!(guarded.len() > 1900, "{build} {scenario}");
            let touched = |reads: &[(u64, usize)]| -> Vec<String> {
                guarded
                    .iter()
                    .filter(|(pa, _)| {
                        reads
                            .iter()
                            .any(|(a, n)| *a < pa + 16 && a + *n as u64 > *pa)
                    })
                    .map(|g| g.1.clone())
                    .collect()
            };
            k.mem.invalidate();
            k.mem.keep_asked(true);
            s.reads.take();
            let mut e = Engine::new(s.kernel);
            let sample = hangcheck::sample(&mut e, &Thresholds::default()).unwrap();
            // Nothing of the list asked for; of the head, not even a byte read along with
            // something else.
            let asked: Vec<(u64, usize)> = e
                .kernel
                .mem
                .take_asked()
                .into_iter()
                .map(|(a, n)| (a, n as usize))
                .collect();
            let read = touched(&asked);
            assert!(
                read.is_empty(),
                "{build} {scenario}: the sample read {read:?} ({:?})",
                sample.notes
            );
            let fetched = touched(&s.reads.take());
            assert!(
                !fetched.contains(&guarded[0].1),
                "{build} {scenario}: {fetched:?}"
            );
            eprintln!(
                "{build} {scenario}: fetched along with other reads (read-ahead): {} resource links",
                fetched.len()
            );
            if scenario != Scenario::Healthy {
                assert!(
                    !hangcheck::judge(None, &sample).is_empty(),
                    "{build} {scenario}"
                );
            }
            // The reference does read it: the check sees reads of the list.
            e.kernel.mem.invalidate();
            let _ = hangcheck::sample_reference(&mut e, &Thresholds::default(), None);
            if scenario != Scenario::Healthy {
                let asked: Vec<(u64, usize)> = e
                    .kernel
                    .mem
                    .take_asked()
                    .into_iter()
                    .map(|(a, n)| (a, n as usize))
                    .collect();
                assert!(touched(&asked).len() > 1900, "{build} {scenario}");
            }
        }
    }
}

/// A waiter whose stack does not lead to its resource (the word that holds it cannot be read)
/// is found all the same: the resource list is walked for it, the notes say so, and the
/// findings are those of the full walk.
#[test]
fn a_waiter_that_leads_nowhere_makes_the_sample_walk_the_list() {
    let Some(dir) = shared() else {
        return;
    };
    for &(build, file) in BUILDS {
        let mut s = sim(&dir, build, file, Scenario::Deadlock);
        let d = s.facts.deadlock.clone().unwrap();
        let k = &mut s.kernel;
        // Thread A and ten shared waiters wait for the second resource: hide every word of
        // their stacks that holds it.
        let space = k.mem.kernel_space().unwrap();
        let mut hidden = 0;
        for t in [d.threads[0]].iter().chain(&d.queued) {
            let t = k.thread(*t).unwrap();
            let mut at = t.kernel_stack;
            while at < t.stack_base {
                if k.mem.u64(at).unwrap() == d.resources[1] {
                    let pa = k.mem.translate(space, at).unwrap();
                    s.faults
                        .fail_physical(pa, pa + 8, TargetError::Unavailable { address: pa });
                    hidden += 1;
                }
                at += 8;
            }
        }
        assert!(
            hidden > 0,
            "{build}: the simulator keeps the resource on the stack"
        );
        let mut e = Engine::new(s.kernel);
        let (fast, _) = sample(&mut e, &Thresholds::default(), false);
        assert!(
            fast.notes
                .iter()
                .any(|n| n.contains("and 10 more such waiters")
                    && n.contains("the resource list was walked")),
            "{build}: {:?}",
            fast.notes
        );
        let (full, _) = sample(&mut e, &Thresholds::default(), true);
        assert_eq!(said(&fast), said(&full), "{build}");
        assert_eq!(fast.cycles.len(), 1, "{build}");
    }
}

/// The watcher's samples look at the NBLs a window at a time: each sample reads the owner
/// slots on a few pages from where the last one stopped and reads again the NBLs pending then.
/// Over a pass the windows see every NBL once and find exactly the pending NBLs (and holders)
/// the whole walk finds; the second sample of the hung machine tells that they do not drain;
/// no sample, cold, costs more than 150 round trips. Checked on every build's table.
#[test]
fn watch_samples_look_at_the_nbls_a_window_at_a_time() {
    let Some(dir) = shared() else {
        return;
    };
    for &(build, file) in BUILDS {
        let s = sim(&dir, build, file, Scenario::NblHang);
        let planted = s.facts.ndis.clone();
        let mut e = Engine::new(s.kernel);
        let th = Thresholds::default();
        // The reference: every NBL walked, the free lists followed.
        let (full, _) = sample(&mut e, &th, true);
        let full = full.nbls.expect("tracking is on");
        assert!(full.whole, "{build}");
        assert_eq!(full.examined, u64::from(planted.total), "{build}");
        assert_eq!(full.pending.len(), planted.pending as usize, "{build}");
        let reference: BTreeSet<[u64; 2]> = full.pending.iter().copied().collect();

        let mut prev: Option<Sample> = None;
        let mut examined = 0;
        let mut found = BTreeSet::new();
        let mut samples = 0;
        loop {
            e.kernel.mem.invalidate();
            let before = e.kernel.mem.stats();
            let cur =
                hangcheck::watch_sample(&mut e, &th, prev.as_ref().and_then(|p| p.nbls.as_ref()))
                    .unwrap();
            let rts = e.kernel.mem.stats().since(&before).transport.round_trips;
            assert!(
                rts <= 150,
                "{build}: sample {samples} took {rts} round trips"
            );
            assert!(!cur.incomplete, "{build}: {:?}", cur.notes);
            let look = cur.nbls.clone().expect("tracking is on");
            assert!(!look.whole, "{build}: one window is not every NBL");
            assert!(look.examined > 0, "{build}");
            examined += look.examined;
            found.extend(look.pending.iter().copied());
            let findings: Vec<&str> = hangcheck::judge(prev.as_ref(), &cur)
                .iter()
                .map(|f| f.kind)
                .collect();
            if prev.is_some() {
                // Every NBL read again is still held by the hung miniport.
                assert!(look.rechecked > 0, "{build}");
                assert_eq!(look.still, look.rechecked, "{build}");
                assert!(
                    findings.contains(&"nbls-not-draining"),
                    "{build}: {findings:?}"
                );
            } else {
                assert!(!findings.contains(&"nbls-not-draining"), "{build}");
            }
            samples += 1;
            let last = look.next.is_none();
            prev = Some(cur);
            if last {
                break;
            }
            assert!(
                samples < 200,
                "{build}: the windows never reach the end of the pools"
            );
        }
        assert!(
            samples > 2,
            "{build}: a pass takes several samples ({samples})"
        );
        assert_eq!(
            examined,
            u64::from(planted.total),
            "{build}: every NBL once"
        );
        assert_eq!(
            found, reference,
            "{build}: the pending NBLs of the whole walk"
        );
        assert!(
            found.iter().all(|p| p[1] == planted.holder),
            "{build}: held by the hung miniport"
        );
        // The next sample starts over at the first pool.
        let again =
            hangcheck::watch_sample(&mut e, &th, prev.as_ref().and_then(|p| p.nbls.as_ref()))
                .unwrap();
        assert!(again.nbls.unwrap().next.is_some(), "{build}");
        eprintln!("{build}: {samples} samples to look at all {examined} NBLs");
    }
}

/// Reading again: an NBL back home, or held by another component than before, is not
/// still held; one held by the same component is.
#[test]
fn nbls_read_again_count_as_still_held_only_with_the_same_holder() {
    let Some(dir) = shared() else {
        return;
    };
    let &(build, file) = BUILDS.last().unwrap();
    let s = sim(&dir, build, file, Scenario::NblHang);
    let holder = s.facts.ndis.holder;
    let s_home = s.facts.ndis.home[0];
    let mut e = Engine::new(s.kernel);
    let th = Thresholds::default();
    let (full, _) = sample(&mut e, &th, true);
    let pending = full.nbls.unwrap().pending;
    let nbl = pending[0][0];
    assert_eq!(pending[0][1], holder);
    // An NBL back home (freed), as if it had been pending and drained since.
    let home = s_home;
    assert!(!pending.iter().any(|p| p[0] == home));
    let prev = hangcheck::NblLook {
        pending: vec![[nbl, holder], [nbl, holder ^ 0x1000], [home, holder]],
        ..hangcheck::NblLook::default()
    };
    let cur = hangcheck::watch_sample(&mut e, &th, Some(&prev)).unwrap();
    let look = cur.nbls.clone().unwrap();
    assert_eq!((look.rechecked, look.still), (3, 1));
    assert!(look.pending.contains(&[nbl, holder]));
    assert!(!look.pending.contains(&[nbl, holder ^ 0x1000]));
    assert!(!look.pending.iter().any(|p| p[0] == home));
    // One of three still held is draining.
    assert!(
        !hangcheck::judge(None, &cur)
            .iter()
            .any(|f| f.kind == "nbls-not-draining")
    );
}

/// A watcher's sample that cannot read an NBL's slot says it is incomplete and what it missed;
/// the same sample with nothing failing is whole.
#[test]
fn a_sample_that_cannot_read_an_nbl_says_it_is_incomplete() {
    let Some(dir) = shared() else {
        return;
    };
    let &(build, file) = BUILDS.last().unwrap();
    let mut s = sim(&dir, build, file, Scenario::NblHang);
    let space = s.kernel.mem.kernel_space().unwrap();
    // (`s.kernel` moves into the engine below; the faults stay reachable.)
    let faults = s.faults.clone();
    let mut e = Engine::new(s.kernel);
    let th = Thresholds::default();
    let (full, _) = sample(&mut e, &th, true);
    let first = full.nbls.unwrap().pending[0][0];
    e.kernel.mem.invalidate();
    let whole = hangcheck::watch_sample(&mut e, &th, None).unwrap();
    assert!(!whole.incomplete, "{:?}", whole.notes);
    // The first window starts at the first pool, where the first pending NBL is.
    let pa = e.kernel.mem.translate(space, first).unwrap() & !0xfff;
    faults.fail_physical(pa, pa + 0x1000, TargetError::Unavailable { address: pa });
    e.kernel.mem.invalidate();
    let cut = hangcheck::watch_sample(&mut e, &th, None).unwrap();
    assert!(cut.incomplete, "{:?}", cut.notes);
    assert!(
        cut.notes.iter().any(|n| n.contains("NBL")),
        "{:?}",
        cut.notes
    );
}

/// The NBL entry a window stopped at cannot be read when the next sample goes on from it
/// (freed, or unreadable): that sample still looks at the NBLs it can reach, notes the entry it
/// could not read and says it is incomplete, rather than losing the NBL look.
#[test]
fn a_window_whose_block_is_gone_goes_on_and_says_so() {
    let Some(dir) = shared() else {
        return;
    };
    let &(build, file) = BUILDS.last().unwrap();
    let mut s = sim(&dir, build, file, Scenario::NblHang);
    let space = s.kernel.mem.kernel_space().unwrap();
    let faults = s.faults.clone();
    let mut e = Engine::new(s.kernel);
    let th = Thresholds::default();
    let first = hangcheck::watch_sample(&mut e, &th, None).unwrap();
    let look = first.nbls.clone().unwrap();
    let block = look.next.expect("a window is not every NBL").entry;
    let pa = e.kernel.mem.translate(space, block).unwrap() & !0xfff;
    faults.fail_physical(pa, pa + 0x1000, TargetError::Unavailable { address: pa });
    e.kernel.mem.invalidate();
    let second = hangcheck::watch_sample(&mut e, &th, Some(&look)).unwrap();
    let again = second.nbls.expect("the NBLs are still looked at");
    assert!(again.examined > 0, "{:?}", second.notes);
    assert!(second.incomplete, "{:?}", second.notes);
    assert!(
        second
            .notes
            .iter()
            .any(|n| n.contains(&format!("{block:x}"))),
        "{:?}",
        second.notes
    );
    // The NBLs read again still tell the hung miniport.
    assert!(again.still > 0);
}
