//! The script runner's limits on the built-in simulated machine (no ../shared needed): a run
//! past its deadline or its output limit stops between statements and inside loops, and ends
//! with one error saying where, why and what it did not run.

use std::time::{Duration, Instant};

use kdnet_commands::engine::Engine;
use kdnet_commands::script::{self, Event, Runner};
use kdnet_model::nt::Kernel;
use kdnet_sim::{Machine, SimConfig};
use kdnet_testkit::local::LocalTarget;

fn engine() -> Engine {
    let mut config = SimConfig::demo();
    config.resources = 500;
    let machine = Machine::build(config).unwrap();
    let cpus = machine.system().cpus.len() as u32;
    let k = Kernel::open(
        Box::new(LocalTarget::new(machine, cpus)),
        kdnet_sim::symbols::symbol_path(""),
    )
    .unwrap();
    Engine::new(k)
}

fn run(r: &mut Runner<'_>, text: &str) -> Vec<Event> {
    let stmts = script::parse(text).unwrap();
    let mut events = Vec::new();
    r.run(&stmts, &mut |ev| events.push(ev));
    events
}

fn errors(events: &[Event]) -> Vec<(usize, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Error { pos, message, .. } => Some((pos.line, message.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_spent_deadline_runs_nothing_and_says_what_was_skipped() {
    let mut e = engine();
    e.deadline = Some(Instant::now() - Duration::from_millis(1));
    let dir = std::env::temp_dir();
    let mut r = Runner::new(&mut e, dir);
    let ev = run(&mut r, "lm\n$m = lm\n.echo done");
    assert!(r.failed());
    let errs = errors(&ev);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(errs[0].0, 1);
    assert!(
        errs[0]
            .1
            .contains("the time budget for the whole run ran out; not run: 3 statements"),
        "{errs:?}"
    );
}

#[test]
fn the_output_limit_stops_a_loop_and_counts_what_it_did_not_run() {
    let mut e = engine();
    let dir = std::env::temp_dir();
    let mut r = Runner::new(&mut e, dir);
    let ev = run(&mut r, "$m = lm");
    assert!(!r.failed(), "{ev:?}");
    let modules = r.vars["m"]["modules"].as_array().unwrap().len();
    assert!(modules > 10, "{modules}");
    // Each echo is one module's name; the limit passes after a few of them.
    r.output_limit = Some(0);
    let ev = run(
        &mut r,
        ".foreach (x in $m.modules) {\n  .echo $x.name\n  .echo again\n}\n.echo after\n.echo end",
    );
    let echoes = ev.iter().filter(|e| matches!(e, Event::Echo(_))).count();
    assert_eq!(echoes, 1, "{ev:?}");
    let errs = errors(&ev);
    assert_eq!(errs.len(), 1, "{ev:?}");
    // It stopped at the second echo of the first iteration: that echo, the rest of the loop and
    // the two statements after it are not run.
    assert_eq!(errs[0].0, 3, "{errs:?}");
    assert!(
        errs[0].1.contains(&format!(
            "not run: 3 statements and {} loop iterations",
            modules - 1
        )),
        "{errs:?}"
    );
    assert!(r.failed());
}

#[test]
fn results_past_the_size_limit_are_cut_with_a_note() {
    let mut e = engine();
    let dir = std::env::temp_dir();
    let mut r = Runner::new(&mut e, dir);
    let ev = run(&mut r, "lm");
    let Event::Outcome(mut o, _) = ev[0].clone() else {
        panic!("{ev:?}")
    };
    let before = o.result["modules"].as_array().unwrap().len();
    // A result as large as a huge one would be, by repeating lm's text and list.
    o.text = o.text.repeat(script::MAX_RESULT_TEXT / o.text.len() + 2);
    let one = o.result["modules"][0].clone();
    let many = vec![one; script::MAX_RESULT_JSON / script::json_size(&o.result["modules"][0]) + 10];
    o.result["modules"] = serde_json::Value::Array(many);
    assert!(script::bound_outcome(&mut o));
    assert!(o.text.len() < script::MAX_RESULT_TEXT + 200);
    assert!(
        o.text.contains("[output truncated: "),
        "{}",
        &o.text[o.text.len() - 200..]
    );
    assert!(script::json_size(&o.result) <= script::MAX_RESULT_JSON);
    let cut = &o.result["truncated"]["lists"][0];
    assert_eq!(cut["list"], "/modules");
    assert!(cut["kept"].as_u64().unwrap() < cut["of"].as_u64().unwrap());
    assert!(before < cut["of"].as_u64().unwrap() as usize);
    // A result within the limits is left as it is.
    let Event::Outcome(mut small, _) = ev[0].clone() else {
        unreachable!()
    };
    let copy = small.result.clone();
    assert!(!script::bound_outcome(&mut small));
    assert_eq!(small.result, copy);
}

/// A run tells how many top-level statements ran to their end before a limit stopped it, and
/// where each top-level statement's events begin: what a capture cut short by its stop ceiling
/// keeps, and where the next capture goes on.
#[test]
fn a_run_tells_which_statements_it_ran_to_their_end() {
    let mut e = engine();
    let dir = std::env::temp_dir();
    let mut r = Runner::new(&mut e, dir);
    let ev = run(&mut r, "$m = lm\n.echo one\n.echo two");
    assert_eq!(ev.len(), 3);
    assert_eq!((r.finished, r.tops.clone()), (3, vec![0, 1, 2]));
    let modules = r.vars["m"]["modules"].as_array().unwrap().len();
    // A loop's events belong to its statement.
    let ev = run(
        &mut r,
        ".echo a\n.foreach (x in $m.modules) {\n  .echo $x.name\n  .echo again\n}\n.echo end",
    );
    assert_eq!(ev.len(), 2 + 2 * modules);
    assert_eq!(r.finished, 3);
    assert_eq!(r.tops, vec![0, 1, 1 + 2 * modules]);
    // The output limit passes during the first statement: it is not counted as run to its end
    // (a limit reached during a statement may have cut it short); the run stopped on reaching
    // the second.
    r.output_limit = Some(0);
    let ev = run(&mut r, ".echo one\n.echo two\n.echo three");
    assert_eq!(errors(&ev).len(), 1, "{ev:?}");
    assert_eq!((r.finished, r.tops.clone()), (0, vec![0, 1]));
    // With room for two echoes, two statements ran to their end.
    r.output_limit = Some(7);
    let ev = run(&mut r, ".echo one\n.echo two\n.echo three\n.echo four");
    assert_eq!(errors(&ev).len(), 1, "{ev:?}");
    assert_eq!((r.finished, r.tops.clone()), (2, vec![0, 1, 2, 3]));
}
