//! Reads that fail: on the simulated machine (the built-in 20348 layout, so no reference
//! material is needed) behind a target whose requests fail on purpose. A failure is a fact
//! about its moment: no command presents what it could not read as a whole answer, nothing that
//! failed is remembered as absent, and the same command after the failure gives the right
//! answer. A target that stops answering ends the run at once.

use kdnet_commands::engine::{Engine, Outcome};
use kdnet_commands::script::{self, Event, Runner};
use kdnet_model::nt::Kernel;
use kdnet_model::target::TargetError;
use kdnet_sim::scenario::Facts;
use kdnet_sim::{Machine, Scenario, SimConfig, TableSource};
use kdnet_testkit::faulty::{Faults, FaultyTarget};
use kdnet_testkit::local::LocalTarget;
use serde_json::Value;

fn lost() -> TargetError {
    TargetError::Transport("no reply within 2 s (injected)".into())
}

/// A fresh simulated machine behind a faulty target; `before_open` may plan failures that hit
/// the opening of the model itself.
fn engine_with(scenario: Scenario, before_open: impl FnOnce(&Faults)) -> (Engine, Faults, Facts) {
    let config = SimConfig {
        build: 20348,
        table: TableSource::Builtin,
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
    let machine = Machine::build(config).unwrap();
    let facts = machine.facts().clone();
    let cpus = machine.system().cpus.len() as u32;
    let faults = Faults::new();
    before_open(&faults);
    let target = FaultyTarget::new(Box::new(LocalTarget::new(machine, cpus)), faults.clone());
    let kernel = Kernel::open(Box::new(target), kdnet_sim::symbols::symbol_path("")).unwrap();
    (Engine::new(kernel), faults, facts)
}

fn engine(scenario: Scenario) -> (Engine, Faults, Facts) {
    engine_with(scenario, |_| {})
}

/// What of a result must be the same on every run of the machine (wait times move with the
/// clock).
fn stable(command: &str, v: &Value) -> Value {
    match command {
        "!stacks" => {
            let threads: Vec<Value> = v["threads"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| serde_json::json!([t["thread"], t["frames"], t["blocker"]]))
                .collect();
            serde_json::json!({ "threads": threads, "groups": v["groups"] })
        }
        _ => v.clone(),
    }
}

/// Answers that only a read that failed would give, presented as facts.
const FALSE_ABSENCES: [&str; 4] = [
    "ndis.sys is not loaded",
    "has no ChargeCommitmentFailures",
    "give a symbol path",
    "no symbols for ndis.sys",
];

/// A result taken under failures: whole and right, or saying it is not whole, or an error that
/// is not a false absence.
fn judge(o: &Outcome, clean: &Outcome, why: &str) {
    match &o.error {
        None if o.complete => assert_eq!(
            stable(&o.command, &o.result),
            stable(&clean.command, &clean.result),
            "{why}: a whole result that is not the right one\n{}",
            o.text
        ),
        None => {
            assert!(
                !o.incomplete.is_empty(),
                "{why}: incomplete without a reason"
            );
            assert!(o.text.contains("INCOMPLETE: "), "{why}: {}", o.text);
        }
        Some(e) => {
            for a in FALSE_ABSENCES {
                assert!(!e.contains(a), "{why}: a failed read taken for a fact: {e}");
            }
        }
    }
}

/// For `command`: a clean run, then fresh machines each with a window of `width` failed
/// requests starting at spread-out points of the command's own requests. Under the failure
/// the result is judged; once the failure is over, the same command (on the same model, nothing
/// invalidated) must give the clean answer, whole.
fn sweep(scenario: Scenario, prepare: &str, command: &str, width: u64, trials: u64) {
    let (mut e, f, _) = engine(scenario);
    if !prepare.is_empty() {
        assert!(e.run(prepare).ok());
    }
    let start = f.requests();
    let clean = e.run(command);
    assert!(clean.ok() && clean.complete, "{command}: {:?}", clean);
    let total = f.requests() - start;
    assert!(total > 0);
    let mut points: Vec<u64> = (0..trials).map(|i| i * total / trials).collect();
    // The first requests (the module list, the first structures) densely.
    points.extend(0..total.min(12));
    points.sort();
    points.dedup();
    let mut flagged = 0;
    for at in points {
        let (mut e, f, _) = engine(scenario);
        if !prepare.is_empty() {
            assert!(e.run(prepare).ok());
        }
        f.fail_window(at, width, lost());
        let o = e.run(command);
        let why = format!("{command} with requests {at}..{} failing", at + width);
        assert!(f.failed() > 0, "{why}: nothing failed");
        judge(&o, &clean, &why);
        if !(o.ok() && o.complete) {
            flagged += 1;
        }
        f.heal();
        let again = e.run(command);
        assert!(
            again.ok() && again.complete,
            "{why}, then again: {:?}\n{}",
            again.error,
            again.text
        );
        assert_eq!(
            stable(command, &again.result),
            stable(command, &clean.result),
            "{why}, then again: not the clean answer\n{}",
            again.text
        );
    }
    assert!(flagged > 0, "{command}: no failure ever showed");
}

#[test]
fn pending_nbls_never_says_ndis_is_missing_after_a_failed_read() {
    sweep(Scenario::NblHang, "", "!ndiskd.pendingnbls", 4, 30);
}

#[test]
fn stacks_after_failed_reads_are_whole_again() {
    sweep(Scenario::NblHang, "", "!stacks", 3, 30);
}

#[test]
fn vm_never_reports_a_missing_page_file_it_could_not_read() {
    sweep(Scenario::CommitFailures, "", "!vm", 2, 12);
}

#[test]
fn locks_walk_that_loses_reads_says_so() {
    sweep(Scenario::Deadlock, "", "!locks", 3, 20);
}

#[test]
fn the_module_list_read_again_after_a_failure_finds_ndis() {
    let (mut e, f, facts) = engine(Scenario::NblHang);
    // The loader list's entries fail part-way: lm says the list is incomplete.
    f.fail_window(3, 2, lost());
    let lm = e.run("lm");
    assert!(lm.ok(), "{:?}", lm.error);
    assert!(!lm.complete, "{}", lm.text);
    assert!(
        lm.incomplete
            .iter()
            .any(|r| r.contains("the module list is incomplete")),
        "{:?}",
        lm.incomplete
    );
    f.heal();
    // The next command reads the list again rather than believing the short one.
    let o = e.run("!ndiskd.pendingnbls");
    assert!(o.ok() && o.complete, "{:?}\n{}", o.error, o.text);
    assert!(o.cost.round_trips > 0);
    assert_eq!(
        o.result["pending"].as_u64(),
        Some(u64::from(facts.ndis.pending))
    );
    assert_eq!(
        o.result["holders"][0]["name"],
        facts.ndis.holder_name.as_str()
    );
    let lm = e.run("lm");
    assert!(lm.complete && lm.ok());
    assert!(
        lm.result["modules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "ndis")
    );
    // Whole now: kept while the target stays stopped.
    assert_eq!(e.run("lm").cost.round_trips, 0);

    // With the list unreadable past its first entries, ndis is not declared absent.
    let (mut e, f, _) = engine(Scenario::NblHang);
    f.fail_window(3, 1_000, lost());
    let o = e.run("!ndiskd.pendingnbls");
    let err = o.error.clone().unwrap_or_default();
    assert!(!err.contains("ndis.sys is not loaded"), "{err}");
    assert!(
        err.contains("incomplete") || err.contains("failed") || err.contains("target:"),
        "{err}"
    );
}

#[test]
fn kernel_symbols_missed_while_opening_are_read_at_the_next_command() {
    // The target did not answer while the model opened (a freeze of some seconds).
    let (mut e, f, _) = engine_with(Scenario::NblHang, |f| f.fail_next(40, lost()));
    assert!(e.kernel.nt.is_none());
    // Still failing: the command says the read failed, not that symbols are missing.
    f.fail_next(1_000, lost());
    let o = e.run("!stacks");
    let err = o.error.clone().unwrap();
    assert!(!err.contains("give a symbol path"), "{err}");
    assert!(err.contains("reading its image failed"), "{err}");
    f.heal();
    let o = e.run("!stacks");
    assert!(o.ok() && o.complete, "{:?}", o.error);
    assert!(e.kernel.nt.is_some());
    let (mut clean, _, _) = engine(Scenario::NblHang);
    let want = clean.run("!stacks");
    assert_eq!(
        stable("!stacks", &o.result),
        stable("!stacks", &want.result)
    );
    // And the thread stacks have their frames, not one each.
    let frames: usize = o.result["threads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["frames"].as_array().unwrap().len())
        .sum();
    assert!(frames > 3 * o.result["threads"].as_array().unwrap().len());
}

#[test]
fn a_stack_walk_without_unwind_data_is_incomplete_and_recovers() {
    let (mut e, f, _) = engine(Scenario::NblHang);
    let clean = {
        let (mut c, _, _) = engine(Scenario::NblHang);
        c.run("k")
    };
    assert!(clean.complete && clean.ok());
    // Find the window where the kernel image's exception table is read: fail every request
    // after the registers and module list, so the walk has no unwind data.
    assert!(e.run("lm").ok());
    f.fail_after(2, lost());
    let o = e.run("k");
    judge(&o, &clean, "k without unwind data");
    assert!(!(o.ok() && o.complete));
    f.heal();
    let o = e.run("k");
    assert!(o.ok() && o.complete, "{:?}\n{}", o.error, o.text);
    assert_eq!(o.result["frames"], clean.result["frames"]);
}

#[test]
fn locks_under_a_budget_that_runs_out_say_incomplete() {
    let (mut e, f, facts) = engine(Scenario::Deadlock);
    assert!(e.run("lm").ok());
    // The time budget runs out part-way through the resource list (as the memory layer says
    // when the deadline passes).
    f.fail_after(20, TargetError::OutOfTime);
    let o = e.run("!locks");
    assert!(o.ok(), "{:?}", o.error);
    let total = o.result["total_locks"].as_u64().unwrap();
    assert!(total < u64::from(facts.total_resources), "{total}");
    assert!(!o.complete);
    assert_eq!(o.result["complete"], false);
    assert!(o.text.contains("INCOMPLETE: "), "{}", o.text);
    assert!(
        o.incomplete.iter().any(|r| r.contains("time budget")),
        "{:?}",
        o.incomplete
    );
    f.heal();
    let o = e.run("!locks");
    assert!(o.ok() && o.complete, "{:?}", o.error);
    assert_eq!(
        o.result["total_locks"].as_u64(),
        Some(u64::from(facts.total_resources))
    );
    assert_eq!(
        o.result["held_locks"].as_u64(),
        Some(facts.held.len() as u64)
    );
}

#[test]
fn thirty_percent_loss_gives_the_right_answer_or_says_it_is_incomplete() {
    for command in ["!locks", "!ndiskd.pendingnbls", "!vm", "!deadlock"] {
        let (mut c, _, _) = engine(Scenario::Deadlock);
        let clean = c.run(command);
        assert!(clean.ok() && clean.complete, "{command}");
        for seed in 1..=4 {
            let (mut e, f, _) = engine(Scenario::Deadlock);
            f.lossy(30.0, seed, lost());
            let o = e.run(command);
            let why = format!("{command} at 30 % loss, seed {seed}");
            judge(&o, &clean, &why);
            f.heal();
            let again = e.run(command);
            assert!(
                again.ok() && again.complete,
                "{why}, healed: {:?}",
                again.error
            );
            assert_eq!(
                stable(command, &again.result),
                stable(command, &clean.result),
                "{why}, healed"
            );
        }
    }
}

#[test]
fn a_target_that_stops_answering_ends_the_script() {
    let (mut e, f, _) = engine(Scenario::Deadlock);
    assert!(e.run("lm").ok());
    f.fail_after(
        10,
        TargetError::Gone("it stopped answering (injected)".into()),
    );
    let stmts = script::parse("!locks\n!vm\n$t = !thread\nk\n").unwrap();
    let mut events = Vec::new();
    let (gone, failed) = {
        let mut runner = Runner::new(&mut e, std::env::temp_dir());
        runner.run(&stmts, &mut |ev| events.push(ev));
        (runner.target_gone().map(str::to_string), runner.failed())
    };
    assert!(gone.unwrap().contains("stopped answering"));
    assert!(failed);
    // !locks met the silence: its error says so; then one error names where the run stopped.
    assert_eq!(events.len(), 2, "{events:?}");
    match &events[0] {
        Event::Outcome(o, _) => {
            assert_eq!(o.command, "!locks");
            let err = o.error.as_deref().unwrap();
            assert!(err.starts_with("no answer from the target"), "{err}");
            assert!(o.result.is_null());
            assert!(!o.complete);
        }
        other => panic!("{other:?}"),
    }
    match &events[1] {
        Event::Error { pos, message, .. } => {
            assert_eq!((pos.line, pos.column), (2, 1));
            assert!(message.contains("no answer from the target"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // No further request: a command now fails at once, without asking the target.
    let asked = f.requests();
    let o = e.run("k");
    assert!(o.error.unwrap().contains("no answer from the target"));
    assert_eq!(f.requests(), asked);
    assert_eq!(o.cost.round_trips, 0);
    assert!(e.target_gone().is_some());
}

#[test]
fn a_gone_target_fails_reads_at_once_until_it_runs_again() {
    let (mut e, f, _) = engine(Scenario::Healthy);
    let nt = e.kernel.base;
    f.fail_next(1, TargetError::Gone("killed (injected)".into()));
    assert!(matches!(
        e.kernel.mem.u64(nt + 0x2000),
        Err(TargetError::Gone(_))
    ));
    let asked = f.requests();
    for i in 0..10u64 {
        assert!(matches!(
            e.kernel.mem.u64(nt + 0x3000 + 8 * i),
            Err(TargetError::Gone(_))
        ));
    }
    assert_eq!(f.requests(), asked, "a gone target is not asked again");
    // It ran and stopped again (the session found it): it is asked again.
    e.invalidate();
    assert!(e.kernel.mem.gone().is_none());
    assert!(e.kernel.mem.u64(nt).is_ok());
}

#[test]
fn a_script_stopped_by_the_step_limit_names_the_statement() {
    let (mut e, _, _) = engine(Scenario::Healthy);
    let stmts = script::parse(
        "$$ a loop of a million and more\n.foreach (a in $xs) {\n  .foreach (b in $xs) {\n    .echo $b\n  }\n}\n",
    )
    .unwrap();
    let mut runner = Runner::new(&mut e, std::env::temp_dir());
    runner
        .vars
        .insert("xs".into(), serde_json::json!(vec![1; 1001]));
    let mut errors = Vec::new();
    let mut echoes = 0u64;
    runner.run(&stmts, &mut |ev| match ev {
        Event::Error { pos, message, .. } => errors.push((pos, message)),
        Event::Echo(_) => echoes += 1,
        _ => {}
    });
    assert_eq!(errors.len(), 1, "{errors:?}");
    let (pos, message) = &errors[0];
    assert!(message.contains("steps"), "{message}");
    assert_eq!((pos.line, pos.column), (4, 5));
    assert!(echoes > 990_000 && echoes < 1_000_000, "{echoes}");
}

#[test]
fn memory_unreadable_because_a_read_failed_is_not_a_whole_answer() {
    let (mut e, f, _) = engine(Scenario::Healthy);
    // Kernel data the opening of the model did not read.
    let dq = format!("dq {:#x} L4", e.kernel.sym("KiProcessorBlock").unwrap());
    let clean = e.run(&dq);
    assert!(clean.ok() && clean.complete);
    assert!(clean.result["values"][0].is_string());

    let (mut e, f2, _) = engine(Scenario::Healthy);
    drop(f);
    f2.fail_next(1_000, lost());
    let o = e.run(&dq);
    assert!(o.ok(), "{:?}", o.error);
    assert!(o.result["values"][0].is_null());
    // The command shows ?? as it does for memory that is not there, but says why here.
    assert!(!o.complete);
    assert!(
        o.incomplete
            .iter()
            .any(|r| r.contains("read of") && r.contains("failed: target: no reply")),
        "{:?}",
        o.incomplete
    );
    f2.heal();
    let o = e.run(&dq);
    assert!(o.ok() && o.complete);
    assert_eq!(o.result, clean.result);
    // A page that is not present is a fact about the target, not a gap.
    let o = e.run("dq 0 L2");
    assert!(o.ok() && o.complete, "{:?}", o.incomplete);
    assert!(o.result["values"][0].is_null());
    // A command that fails while reads fail says which read failed.
    f2.fail_next(1_000, lost());
    let o = e.run("? poi(nt)");
    let err = o.error.unwrap();
    assert!(err.contains("failed: target: no reply"), "{err}");
}

#[test]
fn a_holder_whose_name_could_not_be_read_says_so() {
    let (mut e, f, facts) = engine(Scenario::NblHang);
    let clean = e.run("!ndiskd.pendingnbls");
    assert_eq!(
        clean.result["holders"][0]["name"],
        facts.ndis.holder_name.as_str()
    );
    // The holder is named by its NBL tracker's Name; the name sits on a page whose reads keep
    // getting lost.
    fn member(e: &mut Engine, ty: &str, at: u64, field: &str) -> u64 {
        let r = e.run(&format!("dt ndis!{ty} {at:#x} {field}")).result;
        assert!(r["fields"].is_array(), "{r}");
        kdnet_commands::hex::parse(&r["address"]).unwrap()
            + r["fields"][0]["offset"].as_u64().unwrap()
    }
    let tracker_at = member(
        &mut e,
        "_NDIS_MINIPORT_BLOCK",
        facts.ndis.holder,
        "NblTracker",
    );
    let tracker = e.kernel.mem.u64(tracker_at).unwrap();
    let name_at = member(&mut e, "_NDIS_NBL_TRACKER", tracker, "Name");
    let string_at = e.kernel.mem.u64(name_at).unwrap();
    let buffer = e.kernel.mem.u64(string_at + 8).unwrap();
    let space = e.kernel.mem.kernel_space().unwrap();
    let pa = e.kernel.mem.translate(space, buffer).unwrap() & !0xfff;
    e.invalidate();
    f.fail_physical(pa, pa + 0x1000, lost());
    let o = e.run("!ndiskd.pendingnbls");
    assert!(o.ok(), "{:?}", o.error);
    assert!(!o.complete);
    let h = &o.result["holders"][0];
    assert!(h["name"].is_null(), "{h}");
    assert!(h["name_error"].as_str().unwrap().contains("failed"), "{h}");
    assert_eq!(h["count"], clean.result["holders"][0]["count"]);
    assert!(o.text.contains("(name unreadable: "), "{}", o.text);
    assert!(
        o.incomplete.iter().any(|r| r.contains("NBL holder")),
        "{:?}",
        o.incomplete
    );
    f.heal();
    let o = e.run("!ndiskd.pendingnbls");
    assert!(o.ok() && o.complete);
    assert_eq!(o.result, clean.result);
}

#[test]
fn vm_says_the_page_files_are_unknown_when_their_reads_fail() {
    let (mut e, f, _) = engine(Scenario::CommitFailures);
    let clean = e.run("!vm");
    assert_eq!(clean.result["paging_files"].as_array().unwrap().len(), 1);
    let nt = e.kernel.nt().unwrap();
    let at = e.kernel.sym("MiSystemPartition").unwrap()
        + nt.offset("_MI_PARTITION", "Vp.PagingFile[0]").unwrap();
    let pf = e.kernel.mem.u64(at).unwrap();
    let space = e.kernel.mem.kernel_space().unwrap();
    let pa = e.kernel.mem.translate(space, pf).unwrap() & !0xfff;
    e.invalidate();
    f.fail_physical(pa, pa + 0x1000, lost());
    let o = e.run("!vm");
    assert!(o.ok(), "{:?}", o.error);
    assert!(!o.complete);
    // Not known, rather than none.
    assert!(o.result["paging_files"].is_null(), "{}", o.result);
    assert!(
        o.text.contains("Page File: ? (page file 0 is unreadable"),
        "{}",
        o.text
    );
    // The rest is there.
    assert_eq!(o.result["commit_failures"], clean.result["commit_failures"]);
    f.heal();
    let o = e.run("!vm");
    assert!(o.ok() && o.complete);
    assert_eq!(o.result["paging_files"], clean.result["paging_files"]);
    // The commit-failure counters unreadable: the read failed, the partition has them.
    let at = e.kernel.sym("MiSystemPartition").unwrap()
        + nt.offset("_MI_PARTITION", "Vp.ChargeCommitmentFailures[0]")
            .unwrap();
    let pa = e.kernel.mem.translate(space, at).unwrap() & !0xfff;
    e.invalidate();
    f.fail_physical(pa, pa + 0x1000, lost());
    let o = e.run("!vm");
    let err = o.error.unwrap();
    assert!(!err.contains("has no ChargeCommitmentFailures"), "{err}");
    assert!(err.contains("no reply"), "{err}");
    f.heal();
    assert!(e.run("!vm").complete);
}
