//! The kernel model against the simulated machine on every shared build: what the model reads
//! back (modules, the debugger data block, processes, threads, waits, stacks, processors,
//! bugcheck data) is what the simulator planted, and swapping the build — a different symbol
//! table, different offsets — gives the same answers.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{BUILDS, Planted, sim_kernel};
use kdnet_model::dump::{DumpFile, DumpKind, WriteKind, write_dump};
use kdnet_model::nt::Kernel;
use kdnet_model::target::Target;
use kdnet_model::target::{NotPresent, TargetError};
use kdnet_sim::Scenario;

fn check_modules(k: &mut Kernel, p: &Planted) {
    let mods = k.modules().unwrap().to_vec();
    let got: Vec<(String, u64, u32)> = mods
        .iter()
        .map(|m| (m.name.clone(), m.base, m.size))
        .collect();
    let want: Vec<(String, u64, u32)> = p.modules.iter().map(|m| (m.0.clone(), m.1, m.2)).collect();
    assert_eq!(got, want);
    assert_eq!(k.base, p.kernel_base);
    // A module without a symbol table is symbolised by its exports.
    let (i, m) = p
        .modules
        .iter()
        .enumerate()
        .find(|(i, m)| *i > 0 && !m.3.is_empty())
        .expect("a module with exports");
    let short = mods[i].short.clone();
    let first = &m.3[0];
    let addr = k.resolve(&short, first).expect("export resolves");
    assert!(mods[i].contains(addr));
    assert_eq!(k.symbolize(addr), format!("{short}!{first}"));
    assert_eq!(k.symbolize(addr + 3), format!("{short}!{first}+0x3"));
}

fn check_kdbg(k: &mut Kernel, build: u32) {
    let kdbg = k.kdbg().unwrap();
    // Encoded since Windows 8 (KdpDataBlockEncoded) by a kernel booted without the debugger,
    // plain on 7601.
    assert_eq!(kdbg.was_encoded, build >= 9200, "build {build}");
    assert_eq!(kdbg.field("KernBase"), Some(k.base));
    assert_eq!(
        kdbg.field("PsLoadedModuleList"),
        Some(k.sym("PsLoadedModuleList").unwrap())
    );
    assert_eq!(
        kdbg.field("PsActiveProcessHead"),
        Some(k.sym("PsActiveProcessHead").unwrap())
    );
}

fn check_processes_threads_stacks(k: &mut Kernel, p: &Planted) {
    let (procs, note) = k.processes().unwrap();
    assert_eq!(note, None);
    let got: Vec<(u64, u64, String)> = procs
        .iter()
        .map(|x| (x.eprocess, x.pid, x.name.clone()))
        .collect();
    // The Idle process is not on PsActiveProcessHead.
    let want: Vec<(u64, u64, String)> = p
        .facts
        .processes
        .iter()
        .filter(|x| x.1 != 0)
        .cloned()
        .collect();
    assert_eq!(got, want);

    let contexts: Vec<_> = (0..p.cpus.len() as u32)
        .map(|c| k.mem.target().context(c).unwrap())
        .collect();
    let mut seen = 0;
    for proc_ in &procs {
        let (threads, note) = k.threads_of(proc_.eprocess).unwrap();
        assert_eq!(note, None);
        for t in threads {
            seen += 1;
            let rec = p
                .threads
                .iter()
                .find(|r| r.ethread == t.ethread)
                .unwrap_or_else(|| panic!("thread {:#x} was not planted", t.ethread));
            assert_eq!(t.tid, rec.tid);
            assert_eq!(t.pid, proc_.pid);
            assert_eq!(
                t.state_name,
                match t.state {
                    1 => "Ready",
                    2 => "Running",
                    5 => "Waiting",
                    s => panic!("state {s}"),
                }
            );
            let objects: BTreeSet<u64> = t.waits.iter().map(|w| w.object).collect();
            let planted: BTreeSet<u64> = rec.waits.iter().copied().collect();
            assert_eq!(objects, planted, "wait objects of {:#x}", t.ethread);
            for w in &t.waits {
                assert!(
                    [
                        "NotificationEvent",
                        "SynchronizationEvent",
                        "Semaphore",
                        "Mutant",
                        "Thread",
                        "ProcessObject",
                        "NotificationTimer",
                        "SynchronizationTimer",
                        "QueueObject",
                        "PriQueueObject",
                    ]
                    .contains(&w.type_name.as_str()),
                    "{}",
                    w.type_name
                );
            }
            if Some(t.ethread) == p.facts.swapped_stack_thread {
                assert!(!t.stack_resident);
                let s = k.thread_stack(&t, None).unwrap();
                assert!(s.frames.is_empty());
                assert!(s.note.unwrap().contains("not resident"));
                continue;
            }
            let ctx = (t.state == 2).then(|| &contexts[t.processor as usize]);
            let stack = k.thread_stack(&t, ctx).unwrap();
            assert_eq!(
                stack.frames.len(),
                rec.frames.len(),
                "thread {:#x}: {:?} note {:?}",
                t.ethread,
                stack
                    .frames
                    .iter()
                    .map(|f| f.call_site.clone())
                    .collect::<Vec<_>>(),
                stack.note
            );
            for (f, (call, va, rsp)) in stack.frames.iter().zip(&rec.frames) {
                // `module!function+0xoff`, where function may be an alias at the same address.
                let (m, rest) = f.call_site.split_once('!').unwrap();
                let (name, off) = rest.split_once("+0x").unwrap();
                assert_eq!(m, call.module, "{}", f.call_site);
                assert_eq!(
                    k.resolve(m, name),
                    Some(*va),
                    "{} is not {}!{}",
                    f.call_site,
                    call.module,
                    call.function
                );
                assert_eq!(va + u64::from_str_radix(off, 16).unwrap(), f.ip);
                assert_eq!(f.child_sp, *rsp, "{}", f.call_site);
            }
        }
    }
    assert_eq!(seen, p.threads.len() - p.cpus.len(), "all but idle threads");
}

fn check_processors(k: &mut Kernel, p: &Planted) {
    let cpus = k.processors().unwrap();
    let got: Vec<(u64, u64)> = cpus.iter().map(|c| (c.prcb, c.current)).collect();
    assert_eq!(got, p.cpus);
    for (i, c) in cpus.iter().enumerate() {
        assert_eq!(c.number as usize, i);
        assert_eq!(k.mem.target().control_pointer(i as u32, 1).unwrap(), c.prcb);
    }
}

#[test]
fn the_model_reads_what_the_simulator_planted_on_every_build() {
    for build in BUILDS {
        let Some((mut k, p)) = sim_kernel(build, Scenario::Deadlock) else {
            return;
        };
        assert_eq!(k.build, build);
        assert!(k.nt_source.contains(".json"), "{}", k.nt_source);
        check_modules(&mut k, &p);
        check_kdbg(&mut k, build);
        check_processes_threads_stacks(&mut k, &p);
        check_processors(&mut k, &p);
        assert_eq!(k.bugcheck().unwrap(), None);

        // The deadlock: each thread waits on something; the mutant's owner is threads[0].
        let d = p.facts.deadlock.clone().unwrap();
        let w = k.thread(d.mutant_waiter).unwrap();
        let m = w.waits.iter().find(|o| o.object == d.mutant).unwrap();
        assert_eq!(m.type_name, "Mutant");
        assert_eq!(m.owner, Some(d.threads[0]));

        // The hung thread's wait age comes from KUSER_SHARED_DATA and the wait tick.
        let stats = k.mem.stats();
        assert!(stats.transport.round_trips > 0);
        assert!(stats.cache_hits > 0);
    }
}

#[test]
fn bugcheck_data_and_wait_age() {
    for build in BUILDS {
        let Some((mut k, p)) = sim_kernel(build, Scenario::Bugcheck) else {
            return;
        };
        assert_eq!(k.bugcheck().unwrap(), p.facts.bugcheck);
        assert!(p.facts.bugcheck.is_some());
    }
    let Some((mut k, p)) = sim_kernel(20348, Scenario::NblHang) else {
        return;
    };
    let (et, seconds) = p.facts.hung_thread.unwrap();
    let t = k.thread(et).unwrap();
    assert_eq!(t.state_name, "Waiting");
    let age = t.wait_seconds.unwrap();
    assert!((age - seconds as f64).abs() < 1.0, "{age} vs {seconds}");
}

#[test]
fn non_resident_pages_are_reported_with_their_reason() {
    let Some((mut k, p)) = sim_kernel(17763, Scenario::Healthy) else {
        return;
    };
    assert!(!p.facts.paged_out.is_empty() && !p.facts.transition.is_empty());
    for &va in &p.facts.paged_out {
        match k.mem.kread(va, 8) {
            Err(TargetError::NotPresent {
                address,
                reason: NotPresent::PagedOut { .. },
            }) => assert_eq!(address, va),
            other => panic!("{va:#x}: {other:?}"),
        }
    }
    for &va in &p.facts.transition {
        assert!(matches!(
            k.mem.kread(va, 8),
            Err(TargetError::NotPresent {
                reason: NotPresent::Transition { .. },
                ..
            })
        ));
    }
    assert!(matches!(
        k.mem.kread(0x0000_8000_0000_0000, 8),
        Err(TargetError::NonCanonical(_))
    ));
    // A thread that is not a thread is refused.
    let first = p.facts.processes[1].0;
    assert!(k.thread(first).is_err());
}

/// What the model says about a machine, with every address left out: the same scenario on
/// another build (another table, other offsets, other addresses) must say the same.
fn summary(k: &mut Kernel, p: &Planted) -> Vec<String> {
    let mut out = Vec::new();
    for m in k.modules().unwrap().to_vec() {
        out.push(format!("module {} {}", m.name, m.short));
    }
    let (procs, _) = k.processes().unwrap();
    let contexts: Vec<_> = (0..p.cpus.len() as u32)
        .map(|c| k.processor_context(c).unwrap())
        .collect();
    for pr in procs {
        out.push(format!("process {} {}", pr.pid, pr.name));
        let (threads, _) = k.threads_of(pr.eprocess).unwrap();
        for t in threads {
            // The executive's workers wait on a KQUEUE on 7601, a KPRIQUEUE later: a real
            // difference between builds, not one this comparison is about.
            let waits: Vec<String> = t
                .waits
                .iter()
                .map(|w| w.type_name.replace("PriQueueObject", "QueueObject"))
                .collect();
            out.push(format!(
                "  thread {} {} {} {:?} ticks {:?}",
                t.tid, t.state_name, t.wait_reason_name, waits, t.wait_ticks
            ));
            let ctx = (t.state == 2).then(|| &contexts[t.processor as usize]);
            let s = k.thread_stack(&t, ctx).unwrap();
            // Function names only: code sizes, and so return offsets, differ between builds.
            for f in s.frames {
                let name = f
                    .call_site
                    .split('+')
                    .next()
                    .unwrap_or_default()
                    // The workers' wait (the KPRIQUEUE's routine where the build has one).
                    .replace("KeRemovePriQueue", "KeRemoveQueueEx");
                out.push(format!("    {name}"));
            }
        }
    }
    out.push(format!("processors {}", k.processors().unwrap().len()));
    out.push(format!("bugcheck {:?}", k.bugcheck().unwrap().map(|b| b.0)));
    out
}

#[test]
fn another_build_of_the_same_scenario_gives_the_same_answers() {
    // On 7601 an ERESOURCE's exclusive waiters block on a semaphore, later on a wait-chain
    // event: a real difference, so the deadlock compares the two later builds only.
    let cases: [(Scenario, &[u32]); 2] = [
        (Scenario::NblHang, &BUILDS),
        (Scenario::Deadlock, &[17763, 20348]),
    ];
    for (scenario, builds) in cases {
        let mut summaries = Vec::new();
        for &build in builds {
            let Some((mut k, p)) = sim_kernel(build, scenario) else {
                return;
            };
            summaries.push(summary(&mut k, &p));
        }
        assert!(summaries[0].len() > 50, "{}", summaries[0].len());
        for other in &summaries[1..] {
            for (a, b) in summaries[0].iter().zip(other) {
                assert_eq!(a, b, "{scenario}");
            }
            assert_eq!(summaries[0].len(), other.len());
        }
    }
}

#[test]
fn a_dump_of_what_was_read_answers_the_same() {
    let Some((mut k, p)) = sim_kernel(20348, Scenario::NblHang) else {
        return;
    };
    let live = summary(&mut k, &p);
    // Each processor's KPRCB holds the CONTEXT the target reports for it.
    let cpus = k.processors().unwrap();
    for c in &cpus {
        let saved = k.saved_context(c.prcb).unwrap();
        let reported = k.mem.target().context(c.number).unwrap();
        assert_eq!(
            saved.as_bytes(),
            reported.as_bytes(),
            "processor {}",
            c.number
        );
    }
    let header = k.dump_header("kdnet test snapshot").unwrap();
    let pages = k.mem.snapshot_pages();
    let dir = std::env::temp_dir().join(format!("kdnet-snap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("snapshot.dmp");
    // A full dump needs few runs; what a command reads is scattered.
    let full = write_dump(&path, &header, WriteKind::Full, &pages);
    assert!(full.unwrap_err().to_string().contains("bitmap"));
    assert!(!path.exists());
    let size = write_dump(&path, &header, WriteKind::Bitmap, &pages).unwrap();
    assert_eq!(size, std::fs::metadata(&path).unwrap().len());
    assert!(size < 0x3000 + pages.len() as u64 * 0x1000 + (1 << 16));

    let d = DumpFile::open(&path).unwrap();
    assert_eq!(d.kind, DumpKind::Bitmap);
    assert_eq!(d.page_count(), pages.len() as u64);
    let sym = kdnet_sim::symbols::symbol_path(
        &common::shared()
            .unwrap()
            .join("symbols")
            .display()
            .to_string(),
    );
    let mut k2 = Kernel::open(Box::new(d), sym).unwrap();
    assert!(!k2.mem.info().live);
    assert_eq!(k2.base, k.base);
    let offline = summary(&mut k2, &p);
    assert_eq!(live, offline);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_full_dump_maps_runs_to_pages() {
    let mut pages = BTreeMap::new();
    for pfn in [0x10u64, 0x11, 0x12, 0x40, 0x1000, 0x1001] {
        pages.insert(pfn, vec![(pfn & 0xff) as u8; 0x1000]);
    }
    let header = kdnet_model::dump::DumpHeader {
        build: 20348,
        directory_table_base: 0x10_000,
        processors: 2,
        context: kdnet::api::Context::new().as_bytes().to_vec(),
        ..Default::default()
    };
    let dir = std::env::temp_dir().join(format!("kdnet-full-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for kind in [WriteKind::Full, WriteKind::Bitmap] {
        let path = dir.join(format!("{kind:?}.dmp"));
        write_dump(&path, &header, kind, &pages).unwrap();
        let mut d = DumpFile::open(&path).unwrap();
        assert_eq!(d.page_count(), 6);
        assert_eq!(d.info().processors, 2);
        assert_eq!(d.info().directory_table_base, Some(0x10_000));
        for (&pfn, data) in &pages {
            let mut b = vec![0u8; 0x1000];
            assert_eq!(d.read_physical(pfn * 0x1000, &mut b).unwrap(), 0x1000);
            assert_eq!(&b, data);
        }
        // A read across stored pages stops at the first missing one.
        let mut b = vec![0u8; 0x3000];
        assert_eq!(d.read_physical(0x11 * 0x1000, &mut b).unwrap(), 0x2000);
        assert_eq!(d.read_physical(0x13 * 0x1000, &mut b).unwrap(), 0);
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_list_walk_costs_about_one_round_trip_per_page() {
    let Some((mut k, p)) = sim_kernel(20348, Scenario::Healthy) else {
        return;
    };
    let nt = k.nt().unwrap();
    let head = k.sym("ExpSystemResourcesList").unwrap();
    let link = nt.offset("_ERESOURCE", "SystemResourcesList").unwrap();
    let node = nt.size_of("_ERESOURCE").unwrap();
    // Warm the translation of the head, then walk.
    k.mem.u64(head).unwrap();
    let before = k.mem.stats();
    let w = k
        .walk_list(head, Some((link, node as usize)), 100_000, true)
        .unwrap();
    let cost = k.mem.stats().since(&before);
    assert_eq!(w.note, None);
    assert_eq!(w.entries.len() as u32, p.facts.total_resources);
    // The least any reader needs: per page, the span of needed bytes over the largest transfer.
    let max = kdnet::api::MAX_TRANSFER as u64;
    let mut spans: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for e in &w.entries {
        let (mut a, end) = (e - link, e - link + node);
        while a < end {
            let b = end.min((a | 0xfff) + 1);
            let s = spans
                .entry(a >> 12)
                .or_insert((a & 0xfff, b - (a & !0xfff)));
            s.0 = s.0.min(a & 0xfff);
            s.1 = s.1.max(b - (a & !0xfff));
            a = b;
        }
    }
    let least: u64 = spans.values().map(|(lo, hi)| (hi - lo).div_ceil(max)).sum();
    assert!(
        cost.transport.round_trips as f64 <= least as f64 * 1.15,
        "{} round trips for a walk that needs {least}",
        cost.transport.round_trips
    );
    // Without read-ahead every node is a request of its own.
    let mut again = sim_kernel(20348, Scenario::Healthy).unwrap().0;
    again.mem.u64(head).unwrap();
    let before = again.mem.stats();
    again
        .walk_list(head, Some((link, node as usize)), 100_000, false)
        .unwrap();
    let plain = again.mem.stats().since(&before);
    assert!(plain.transport.round_trips > 10 * cost.transport.round_trips);
}

/// Writes a u64 into the simulated machine's kernel memory.
fn poke(m: &mut kdnet_sim::Machine, va: u64, v: u64) {
    use kdnet::target::TargetHandler;
    assert_eq!(m.write_virtual(0, va, &v.to_le_bytes()), 8);
}

#[test]
fn corrupted_lists_end_with_a_note() {
    let Some(dir) = common::shared() else { return };
    let table = kdnet_symbols::isf::load_file(
        &dir.join("symbols/ntkrnlmp.pdb/C2EADB24A615E9472CE47C8ADD31F130-1.json.xz"),
    )
    .unwrap();
    let links = table.offset("_EPROCESS", "ActiveProcessLinks").unwrap();
    // Each case breaks the process list after the third process in its own way.
    // (what the note says, the third process's new Flink from (first, third, fifth) links).
    type NewFlink = fn(u64, u64, u64) -> u64;
    let cases: [(&str, NewFlink); 5] = [
        ("unreadable", |_, _, _| 0xffff_8fff_dead_0000),
        ("not a valid address", |_, _, _| 0x0000_8000_0000_0000),
        ("loops back", |first, _, _| first),
        ("loops back", |_, me, _| me),
        // Skipping the fourth: the fifth's Blink names the fourth, not the third.
        ("its Blink is", |_, _, fifth| fifth),
    ];
    for (want, how) in cases {
        let Some((mut k, p)) = common::sim_kernel_with(20348, Scenario::Healthy, |m| {
            let procs = &m.facts().processes;
            let first = procs[1].0 + links;
            let third = procs[3].0 + links;
            let fifth = procs[5].0 + links;
            poke(m, third, how(first, third, fifth));
        }) else {
            return;
        };
        let (procs, note) = k.processes().unwrap();
        let note = note.unwrap_or_else(|| panic!("no note for {want}"));
        assert!(note.contains(want), "{want}: {note}");
        assert_eq!(procs.len(), 3, "{want}: the processes before the break");
        assert_eq!(procs[0].eprocess, p.facts.processes[1].0);
    }
    // A list far longer than allowed stops at the limit, with a note.
    let Some((mut k, _)) = sim_kernel(20348, Scenario::Healthy) else {
        return;
    };
    let head = k.sym("ExpSystemResourcesList").unwrap();
    let w = k.walk_list(head, None, 100, true).unwrap();
    assert_eq!(w.entries.len(), 100);
    assert!(w.note.unwrap().contains("limit"));
}

/// A debugger may unwind a waiting thread from inside `SwapContext`, where its saved state
/// stops (RIP there, RSP at its KSWITCH_FRAME), rather than from the return address the frame
/// holds. The simulated nt image has `SwapContext`'s unwind data for that: the unwind goes
/// through its frame into `KiSwapContext` and on exactly as the model's own walk from the
/// switch frame does. On every build.
#[test]
fn a_waiting_thread_unwinds_from_inside_swapcontext() {
    use kdnet_model::nt::unwind::Regs;
    for build in BUILDS {
        let Some((mut k, p)) = sim_kernel(build, Scenario::Deadlock) else {
            return;
        };
        let swap = k.sym("SwapContext").unwrap();
        let d = p.facts.deadlock.clone().unwrap();
        let t = k.thread(d.threads[0]).unwrap();
        assert_eq!(t.state, 5, "{build}: a waiting thread");
        let walked = k.thread_stack(&t, None).unwrap();
        let mut gpr = [0u64; 16];
        gpr[4] = t.kernel_stack;
        // Past the prolog, where the switch happens.
        let regs = Regs {
            gpr,
            rip: swap + 0x20,
        };
        let from_swap = k.unwind(regs, Some((t.stack_limit, t.stack_base)), true);
        assert!(from_swap.complete, "{build}: {:?}", from_swap.note);
        assert!(
            from_swap.frames[0].call_site.starts_with("nt!SwapContext"),
            "{build}: {}",
            from_swap.frames[0].call_site
        );
        let tail: Vec<(u64, u64)> = from_swap.frames[1..]
            .iter()
            .map(|f| (f.child_sp, f.return_address))
            .collect();
        let want: Vec<(u64, u64)> = walked
            .frames
            .iter()
            .map(|f| (f.child_sp, f.return_address))
            .collect();
        assert!(want.len() > 3, "{build}");
        assert_eq!(tail, want, "{build}");
    }
}
