//! `.dump` on the simulated machine (the built-in 20348 layout), counted, not timed: a complete
//! dump holds the machine's RAM byte for byte and answers the commands as the machine does; a
//! kernel dump holds the kernel's pages and not the user ones, `/ka` adds the current
//! process's; a link lost halfway leaves no file, and the same `.dump` then goes on (with fewer
//! requests than a fresh dump) to the same file a fresh dump writes, saying it resumed; a
//! dump begun on another machine is not resumed; unreadable pages are left out and named; bad
//! options and paths are refused.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kdnet_commands::engine::{Engine, Progress};
use kdnet_model::dump::DumpFile;
use kdnet_model::mem::Space;
use kdnet_model::nt::Kernel;
use kdnet_model::target::{Target, TargetError};
use kdnet_sim::scenario::Facts;
use kdnet_sim::{Machine, Scenario, SimConfig, TableSource};
use kdnet_testkit::faulty::{Faults, FaultyTarget};
use kdnet_testkit::local::LocalTarget;
use serde_json::Value;

mod common;

/// The KDNET transfer limit.
const LIMIT: usize = 3944;
const PAGE: u64 = 0x1000;

fn config(scenario: Scenario, cpus: u16) -> SimConfig {
    SimConfig {
        build: 20348,
        table: TableSource::Builtin,
        scenario,
        cpus,
        resources: 300,
        hang_after: None,
        bugcheck_after: None,
        seed: 11,
        print_every: std::time::Duration::from_secs(3600),
        booted_nodebug: false,
        irps: 0,
        bugcheck_at_break_in: None,
    }
}

/// An engine on the machine of `config` behind a target that cuts requests at [`LIMIT`] and
/// fails what the faults say; the machine itself (built again: it is the same) to compare
/// with, and what it planted.
fn engine(config: SimConfig) -> (Engine, Faults, Machine, Facts) {
    let machine = Machine::build(config.clone()).unwrap();
    let facts = machine.facts().clone();
    let cpus = machine.system().cpus.len() as u32;
    let mut local = LocalTarget::new(machine, cpus);
    local.set_max_transfer(LIMIT);
    let faults = Faults::new();
    let target = FaultyTarget::new(Box::new(local), faults.clone());
    let kernel = Kernel::open(Box::new(target), kdnet_sim::symbols::symbol_path("")).unwrap();
    let reference = Machine::build(config).unwrap();
    (Engine::new(kernel), faults, reference, facts)
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kdnet-dump-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The simulated machine's RAM: (first frame, count) of each run, as it describes it.
fn ram(m: &Machine) -> Vec<(u64, u64)> {
    let mem = &m.system().k.mem;
    vec![(1, 0x9e), (0x1000, mem.allocated_up_to() - 0x1000)]
}

fn machine_page(m: &Machine, pfn: u64) -> Vec<u8> {
    let mut b = vec![0u8; PAGE as usize];
    m.system().k.mem.read(pfn * PAGE, &mut b);
    b
}

fn dump_page(d: &mut DumpFile, pfn: u64) -> Option<Vec<u8>> {
    let mut b = vec![0u8; PAGE as usize];
    let n = d.read_physical(pfn * PAGE, &mut b).unwrap();
    (n == PAGE as usize).then_some(b)
}

/// An engine over a dump file.
fn open(path: &Path) -> Engine {
    let d = DumpFile::open(path).unwrap();
    Engine::new(Kernel::open(Box::new(d), kdnet_sim::symbols::symbol_path("")).unwrap())
}

#[test]
fn a_complete_dump_holds_the_machines_ram_and_answers_as_it_does() {
    let (mut e, _, machine, facts) = engine(config(Scenario::Deadlock, 4));
    let dir = scratch("complete");
    let file = dir.join("full.dmp");
    let events: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let seen = events.clone();
    e.progress = Some(Box::new(move |what, p| {
        assert_eq!(what, ".dump");
        seen.lock().unwrap().push(*p);
    }));
    let o = e.run(&format!(".dump /f {}", file.display()));
    assert!(o.ok() && o.complete, "{:?} {:?}", o.error, o.incomplete);
    let runs = ram(&machine);
    let pages: u64 = runs.iter().map(|r| r.1).sum();
    let r = &o.result;
    assert_eq!(r["dump_type"], 1);
    assert_eq!(r["pages"], pages);
    assert_eq!(r["memory_pages"], pages);
    assert_eq!(
        (r["memory_runs"].clone(), r["runs"].clone()),
        (2.into(), 2.into())
    );
    assert_eq!(r["resumed"], false);
    assert_eq!(r["left_out"], 0);
    assert_eq!(r["bytes"], 0x2000 + pages * PAGE);
    assert!(o.text.starts_with(&format!(
        "Creating {} - complete memory dump\n",
        file.display()
    )));
    assert!(o.text.contains("Dump successfully written"), "{}", o.text);
    // Read in full requests: every page once, at 3,944 bytes a request (the kernel's records,
    // read first, cost a few more).
    let least = (pages * PAGE).div_ceil(LIMIT as u64);
    eprintln!(
        ".dump /f of {pages} pages: {} round trips, {:.0} bytes each (least {least})",
        o.cost.round_trips,
        (pages * PAGE) as f64 / o.cost.round_trips as f64
    );
    assert!(
        o.cost.round_trips <= least + least / 50 + 64,
        "{}",
        o.cost.round_trips
    );
    // Progress: in order, up to the whole, then the end.
    let ev = events.lock().unwrap().clone();
    assert!(ev.len() >= 3, "{} reports", ev.len());
    assert!(ev.windows(2).all(|w| w[0].done <= w[1].done));
    let last = ev.last().unwrap();
    assert!(last.finished && last.done == pages && last.total == pages);
    // The file: whole, owner-only, alone.
    assert_eq!(names(&dir), ["full.dmp"]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Every page is the machine's.
    let mut d = DumpFile::open(&file).unwrap();
    assert_eq!(d.page_count(), pages);
    for &(base, count) in &runs {
        for pfn in base..base + count {
            assert_eq!(
                dump_page(&mut d, pfn),
                Some(machine_page(&machine, pfn)),
                "frame {pfn:#x}"
            );
        }
    }
    // Not RAM: not in it.
    assert_eq!(dump_page(&mut d, 0), None);
    assert_eq!(dump_page(&mut d, 0xa0), None);
    // Offline, it answers as the machine: the kernel's image, the planted threads.
    let mut offline = open(&file);
    let base = e.kernel.mem.info().kernel_base.unwrap();
    assert_eq!(offline.kernel.mem.kread(base, 2).unwrap(), b"MZ");
    let dl = facts.deadlock.clone().unwrap();
    for t in dl.threads {
        let live = e.run(&format!("!thread {t:x}"));
        let off = offline.run(&format!("!thread {t:x}"));
        assert!(live.ok() && off.ok(), "{:?} {:?}", live.error, off.error);
        assert_eq!(off.result, live.result, "!thread {t:x}");
    }
    for c in ["!process 0 0", "lm", "!locks"] {
        assert_eq!(offline.run(c).result, e.run(c).result, "{c}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The PEB of the process the bugchecked processor runs (the scenario's vmcompute.exe), its
/// page-table root and the frame it is on.
fn current_peb(e: &mut Engine, m: &Machine) -> (u64, u64, u64) {
    let ep = e.register("$proc").unwrap();
    let p = e.kernel.process(ep).unwrap();
    assert_ne!(p.peb, 0);
    let space = m
        .system()
        .processes
        .iter()
        .find(|r| r.eprocess == ep)
        .unwrap()
        .space;
    let pa = space.translate(&m.system().k.mem, p.peb).unwrap();
    (p.peb, p.dtb, pa / PAGE)
}

#[test]
fn a_kernel_dump_holds_the_kernel_and_ka_the_current_process_too() {
    let (mut e, _, machine, _) = engine(config(Scenario::Bugcheck, 4));
    let dir = scratch("kernel");
    let (peb, dtb, peb_pfn) = current_peb(&mut e, &machine);
    let k = dir.join("kernel.dmp");
    let o = e.run(&format!(".dump /k {}", k.display()));
    assert!(o.ok() && o.complete, "{:?} {:?}", o.error, o.incomplete);
    assert_eq!(o.result["dump_type"], 5);
    assert_eq!(o.result["not_ram"], 0);
    let ka = dir.join("kernel-user.dmp");
    let o2 = e.run(&format!(".dump /c \"with vmcompute\" /ka {}", ka.display()));
    assert!(o2.ok() && o2.complete, "{:?} {:?}", o2.error, o2.incomplete);
    assert!(
        o2.result["comment"]
            .as_str()
            .unwrap()
            .contains("with vmcompute")
    );
    let (kp, kap) = (
        o.result["pages"].as_u64().unwrap(),
        o2.result["pages"].as_u64().unwrap(),
    );
    // The PEB's page and the tables that map it (four levels below the root, the root too).
    assert!(kap > kp && kap <= kp + 5, "/k {kp} pages, /ka {kap}");
    let all: u64 = ram(&machine).iter().map(|r| r.1).sum();
    // Not the whole RAM (the kernel's image, mapped with 2 MB pages, is most of the
    // simulator's).
    assert!(kp < all - 1000, "{kp} of {all}");
    // The kernel reads the same offline from both: its image, its process list, a stack.
    let base = e.kernel.mem.info().kernel_base.unwrap();
    for f in [&k, &ka] {
        let mut off = open(f);
        assert_eq!(off.kernel.mem.kread(base, 2).unwrap(), b"MZ");
        for c in ["!process 0 0", "k"] {
            assert_eq!(
                off.run(c).result,
                e.run(c).result,
                "{c} from {}",
                f.display()
            );
        }
        // The same modules (what of their symbols is loaded yet may differ).
        let bases = |e: &mut Engine| -> Vec<Value> {
            e.run("lm").result["modules"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["base"].clone())
                .collect()
        };
        assert_eq!(bases(&mut off), bases(&mut e));
    }
    // The user page is in /ka, as the machine has it, and not in /k.
    let want = {
        let mut b = vec![0u8; 8];
        machine
            .system()
            .k
            .mem
            .read(peb_pfn * PAGE + (peb & 0xfff) + 0x10, &mut b);
        b
    };
    assert_ne!(want, vec![0; 8], "the PEB holds its image's base");
    let mut kd = DumpFile::open(&k).unwrap();
    assert_eq!(dump_page(&mut kd, peb_pfn), None);
    let mut ku = open(&ka);
    let space = Space { dtb };
    assert_eq!(ku.kernel.mem.read(space, peb + 0x10, 8).unwrap(), want);
    let mut kd = open(&k);
    assert!(kd.kernel.mem.read(space, peb + 0x10, 8).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The dump's pages, past its header.
fn body(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()[0x2000..].to_vec()
}

#[test]
fn a_lost_link_leaves_no_file_and_the_same_dump_goes_on() {
    let dir = scratch("resume");
    // A fresh dump, for comparison.
    let (mut e, _, _, _) = engine(config(Scenario::Healthy, 2));
    let fresh = dir.join("fresh.dmp");
    let o = e.run(&format!(".dump /f {}", fresh.display()));
    assert!(o.ok(), "{:?}", o.error);
    let fresh_cost = o.cost.round_trips;
    // The link is lost halfway: the target stops answering.
    let (mut e, faults, _, _) = engine(config(Scenario::Healthy, 2));
    let file = dir.join("full.dmp");
    faults.fail_after(
        fresh_cost / 2,
        TargetError::Gone("nothing heard from it for 10 s".into()),
    );
    let line = format!(".dump /f {}", file.display());
    let o = e.run(&line);
    let err = o.error.unwrap();
    assert!(
        err.contains("no answer from the target") && err.contains("run the same .dump again"),
        "{err}"
    );
    assert_eq!(
        names(&dir),
        ["fresh.dmp", "full.dmp.partial", "full.dmp.partial.state"]
    );
    // As a process killed between two records leaves it: the record 100 pages behind what
    // was written, and a write cut short.
    let state = dir.join("full.dmp.partial.state");
    let mut s: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let written = s["written"].as_u64().unwrap();
    s["written"] = (written - 100).into();
    std::fs::write(&state, s.to_string()).unwrap();
    {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("full.dmp.partial"))
            .unwrap();
        f.write_all(&[0xa5; 5000]).unwrap();
    }
    // It answers again: the same command goes on from where it stopped.
    faults.heal();
    e.retry_target();
    let o = e.run(&line);
    assert!(o.ok() && o.complete, "{:?} {:?}", o.error, o.incomplete);
    let r = &o.result;
    assert_eq!(r["resumed"], true);
    assert_eq!(r["target_ran"], false, "the target did not run");
    assert_eq!(r["parts"], 2);
    let at = r["resumed_at"].as_u64().unwrap();
    let pages = r["pages"].as_u64().unwrap();
    assert_eq!(at, written - 100);
    assert!(at > pages / 4 && at < pages, "resumed at {at} of {pages}");
    assert_eq!(r["pages_read"].as_u64().unwrap(), pages - at);
    assert!(
        o.cost.round_trips < fresh_cost * 3 / 4,
        "{} round trips resumed, {fresh_cost} fresh",
        o.cost.round_trips
    );
    assert!(r["round_trips_all_parts"].as_u64().unwrap() > o.cost.round_trips);
    assert!(o.text.contains("one snapshot"), "{}", o.text);
    let comment = r["comment"].as_str().unwrap();
    assert!(comment.starts_with("2 parts, resumed at page"), "{comment}");
    // The same pages as a fresh dump; the comment says it was resumed.
    assert_eq!(body(&file), body(&fresh));
    let raw = std::fs::read(&file).unwrap();
    assert_eq!(&raw[0xFB0..0xFB0 + 7], b"2 parts");
    assert_eq!(names(&dir), ["fresh.dmp", "full.dmp"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A dump of `config` begun and stopped halfway by a lost link (requests failing, not the
/// target given up).
fn begin(config: SimConfig, file: &Path) -> Engine {
    let (mut e, faults, _, _) = engine(config);
    let before = faults.requests();
    faults.fail_after(3000, TargetError::Transport("a reply was lost".into()));
    let o = e.run(&format!(".dump /f {}", file.display()));
    let err = o.error.unwrap();
    assert!(err.contains("run the same .dump again"), "{err}");
    assert!(faults.requests() > before);
    faults.heal();
    e
}

#[test]
fn a_resumed_dump_says_the_target_ran_and_another_machine_is_refused() {
    let dir = scratch("refuse");
    let file = dir.join("full.dmp");
    let state = dir.join("full.dmp.partial.state");
    let mut e = begin(config(Scenario::Healthy, 2), &file);
    // Another machine (more processors: another layout of memory) does not go on with it.
    let (mut other, _, _, _) = engine(config(Scenario::Healthy, 4));
    let line = format!(".dump /f {}", file.display());
    let before = std::fs::read(dir.join("full.dmp.partial")).unwrap();
    let err = other.run(&line).error.unwrap();
    assert!(
        err.contains("another machine") && err.contains("processors"),
        "{err}"
    );
    assert_eq!(std::fs::read(dir.join("full.dmp.partial")).unwrap(), before);
    // Another kind of dump neither.
    let err = e
        .run(&format!(".dump /k {}", file.display()))
        .error
        .unwrap();
    assert!(err.contains("is a .dump /f begun earlier"), "{err}");
    // A clock behind the one recorded: another boot.
    let text = std::fs::read_to_string(&state).unwrap();
    let mut s: Value = serde_json::from_str(&text).unwrap();
    let t = s["interrupt_time"].as_u64().unwrap();
    s["interrupt_time"] = (t + 1).into();
    std::fs::write(&state, s.to_string()).unwrap();
    let err = e.run(&line).error.unwrap();
    assert!(err.contains("earlier boot"), "{err}");
    // The target ran since the first part (its clock moved on): the dump says so.
    s["interrupt_time"] = (t - 10_000_000).into();
    std::fs::write(&state, s.to_string()).unwrap();
    let o = e.run(&line);
    assert!(o.ok(), "{:?}", o.error);
    assert_eq!(o.result["target_ran"], true);
    assert!(!o.complete);
    assert!(
        o.incomplete.iter().any(|i| i.contains("two stops")),
        "{:?}",
        o.incomplete
    );
    assert!(o.text.contains("pages from two moments"), "{}", o.text);
    let raw = std::fs::read(&file).unwrap();
    let comment = String::from_utf8_lossy(&raw[0xFB0..0x1030]).to_string();
    assert!(comment.contains("the target ran between them"), "{comment}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unreadable_pages_are_left_out_and_named() {
    let (mut e, faults, machine, _) = engine(config(Scenario::Healthy, 2));
    let dir = scratch("holes");
    let file = dir.join("holes.dmp");
    let (base, count) = ram(&machine)[1];
    let bad = [base + count / 3, base + count / 3 + 1, base + 2 * count / 3];
    for pfn in bad {
        faults.fail_physical(
            pfn * PAGE,
            pfn * PAGE + PAGE,
            TargetError::Unavailable {
                address: pfn * PAGE,
            },
        );
    }
    let o = e.run(&format!(".dump /f {}", file.display()));
    assert!(o.ok(), "{:?}", o.error);
    assert!(!o.complete);
    assert!(
        o.incomplete[0].contains("3 pages could not be read"),
        "{:?}",
        o.incomplete
    );
    let r = &o.result;
    assert_eq!(r["left_out"], 3);
    let named: Vec<u64> = r["left_out_pages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| kdnet_commands::hex::parse(v).unwrap())
        .collect();
    assert_eq!(named, bad.map(|p| p * PAGE));
    assert_eq!(r["dump_type"], 1, "four runs still fit the header");
    assert_eq!(r["runs"], 4);
    assert_eq!(
        r["pages"].as_u64().unwrap() + 3,
        r["planned"].as_u64().unwrap()
    );
    assert!(
        o.text
            .contains("3 pages could not be read and are left out"),
        "{}",
        o.text
    );
    let mut d = DumpFile::open(&file).unwrap();
    for pfn in bad {
        assert_eq!(
            dump_page(&mut d, pfn),
            None,
            "{pfn:#x} is not passed off as memory"
        );
    }
    assert_eq!(
        dump_page(&mut d, bad[0] - 1),
        Some(machine_page(&machine, bad[0] - 1))
    );
    assert_eq!(
        dump_page(&mut d, bad[2] + 1),
        Some(machine_page(&machine, bad[2] + 1))
    );
    let raw = std::fs::read(&file).unwrap();
    assert!(String::from_utf8_lossy(&raw[0xFB0..0x1030]).starts_with("3 unreadable pages"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_options_and_paths_are_refused_before_anything_is_read() {
    let (mut e, faults, _, _) = engine(config(Scenario::Healthy, 2));
    let dir = scratch("bad");
    let existing = dir.join("there.dmp");
    std::fs::write(&existing, b"before").unwrap();
    let before = faults.requests();
    for (line, says) in [
        (".dump".to_string(), "a file name is needed"),
        (format!(".dump {}", dir.join("x.dmp").display()), "give /f"),
        (
            format!(".dump /m {}", dir.join("x.dmp").display()),
            "small memory dumps",
        ),
        (
            format!(".dump /q /f {}", dir.join("x.dmp").display()),
            "unknown option /q",
        ),
        (
            format!(".dump /f {}", dir.join("no/such/dir/x.dmp").display()),
            "is not a directory",
        ),
        (format!(".dump /f {}", dir.display()), "is a directory"),
        (
            format!(".dump /k {}", existing.display()),
            "exists; /o overwrites it",
        ),
    ] {
        let err = e.run(&line).error.unwrap_or_default();
        assert!(err.contains(says), "{line}: {err}");
    }
    assert_eq!(faults.requests(), before, "nothing was asked of the target");
    assert_eq!(std::fs::read(&existing).unwrap(), b"before");
    assert_eq!(names(&dir), ["there.dmp"]);
    // With /o it is replaced.
    let o = e.run(&format!(".dump /o /k {}", existing.display()));
    assert!(o.ok(), "{:?}", o.error);
    assert!(std::fs::metadata(&existing).unwrap().len() > 0x10000);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn help_describes_dump() {
    let mut e = engine(config(Scenario::Healthy, 1)).0;
    let o = e.run(".help .dump");
    assert!(o.ok(), "{:?}", o.error);
    for want in [
        ".dump /f|/k|/ka [/o] [/c COMMENT] FILE",
        "complete",
        "goes on where it stopped",
        "0600",
    ] {
        assert!(o.text.contains(want), "{want}: {}", o.text);
    }
}
