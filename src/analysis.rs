//! What `kdnet open` and `kdnet run` share: the symbol path, the connection banner, running a
//! command line on an engine and printing each result as text or as JSON lines.

use std::collections::HashMap;
use std::path::Path;

use kdnet_commands::engine::{Engine, Outcome, addr};
use kdnet_commands::hex::Hex;
use kdnet_commands::script::{self, Event, Runner};
use serde_json::{Value, json};

use crate::exit;

/// How results are printed.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    /// JSON lines instead of text.
    pub json: bool,
    /// Cost lines after each command.
    pub verbose: bool,
    /// Each command's text before its output (off at a terminal prompt, where it shows).
    pub echo: bool,
}

/// The banner for a newly opened target (WinDbg's in substance), or its JSON line.
pub fn banner(e: &mut Engine, style: Style) {
    let info = e.kernel.mem.info().clone();
    let bugcheck = e.kernel.bugcheck().ok().flatten();
    if style.json {
        let line = json!({
            "type": "target",
            "command": "",
            "result": {
                "schema": kdnet_commands::registry::SCHEMA_VERSION,
                "description": info.description,
                "live": info.live,
                "build": e.kernel.build,
                "kernel_base": Hex(e.kernel.base),
                "processors": info.processors,
                "symbols": e.kernel.nt_source,
                "bugcheck": bugcheck.map(|(c, p)| json!({
                    "code": c,
                    "parameters": p.map(Hex),
                })),
            },
            "error": null,
            "complete": true,
            "incomplete": [],
            "cost": kdnet_commands::engine::Cost::default(),
        });
        outln!("{line}");
        return;
    }
    let product = match e.kernel.build {
        0..=7601 => "Windows 7",
        7602..=9600 => "Windows 8.1",
        _ => "Windows 10",
    };
    outln!("Target: {}", info.description);
    outln!(
        "{product} Kernel Version {} MP ({} procs) Free x64",
        e.kernel.build,
        info.processors
    );
    let list = info
        .ps_loaded_module_list
        .or_else(|| e.kernel.sym("PsLoadedModuleList").ok());
    outln!(
        "Kernel base = 0x{} PsLoadedModuleList = 0x{}",
        addr(e.kernel.base),
        list.map_or("?".to_string(), addr)
    );
    if e.kernel.nt.is_some() {
        outln!("Kernel symbols: {}", e.kernel.nt_source);
    } else {
        outln!(
            "Kernel symbols: not found ({}); give --symbols or _NT_SYMBOL_PATH",
            e.kernel.nt_source
        );
    }
    if let Some((code, p)) = bugcheck {
        outln!(
            "Bugcheck {:X} ({:x}, {:x}, {:x}, {:x})",
            code,
            p[0],
            p[1],
            p[2],
            p[3]
        );
    }
    for n in &e.kernel.notes {
        outln!("note: {n}");
    }
}

/// One result as it is printed.
pub fn format_outcome(o: &Outcome, processor: u32, style: Style) -> String {
    if style.json {
        return format!("{}\n", event_json(&Event::Outcome(o.clone(), processor)));
    }
    let mut t = String::new();
    if style.echo {
        t.push_str(&format!("{processor}: kd> {}\n", o.command));
    }
    t.push_str(&o.text);
    if let Some(e) = &o.error {
        t.push_str(&format!("error: {e}\n"));
    }
    if style.verbose {
        t.push_str(&format!(
            "[{} round trips, {} bytes, {} cache hits]\n",
            o.cost.round_trips, o.cost.bytes, o.cost.cache_hits
        ));
    }
    t
}

/// One event of a script run as JSON (what `--json` prints for it): the same envelope for
/// every kind of line.
pub fn event_json(ev: &Event) -> Value {
    let line = ev.line();
    serde_json::to_value(&line).unwrap_or_else(|e| {
        json!({
            "type": "error", "command": line.command, "result": null,
            "error": format!("the result could not be written as JSON: {e}"),
            "complete": false, "incomplete": [], "cost": line.cost,
        })
    })
}

/// [`event_json`], with the text a person would read (WinDbg's layout) on a command's result:
/// what the control socket and the MCP server answer.
pub fn event_json_with_text(ev: &Event) -> Value {
    let mut v = event_json(ev);
    if let Event::Outcome(o, _) = ev
        && let Some(m) = v.as_object_mut()
    {
        m.insert("text".into(), Value::String(o.text.clone()));
    }
    v
}

/// One event of a script run as it is printed.
pub fn format_event(ev: &Event, style: Style) -> String {
    if style.json {
        return format!("{}\n", event_json(ev));
    }
    match ev {
        // `.cls` at a terminal prompt (which does not echo commands) clears the screen.
        Event::Outcome(o, _) if o.command == ".cls" && o.ok() && !style.echo => {
            "\x1b[H\x1b[2J".to_string()
        }
        Event::Outcome(o, processor) => format_outcome(o, *processor, style),
        Event::Echo(t) => format!("{t}\n"),
        Event::Snapshot(p) => format!("snapshot written: {}\n", p.display()),
        Event::Error { pos, message, .. } => {
            format!(
                "error: line {}, column {}: {message}\n",
                pos.line, pos.column
            )
        }
    }
}

/// Prints one event of a script run.
pub fn print_event(ev: &Event, style: Style) {
    out!("{}", format_event(ev, style));
}

/// Parses and runs script text (a `-c` line or a `.kds` file) on `e`, keeping named results
/// in `vars` across calls. The exit code says whether every step worked (and whether every
/// result was whole); a syntax error runs nothing and is a bad argument; a target that stopped
/// answering ends the run and is "no target".
pub fn run_script(
    e: &mut Engine,
    vars: &mut HashMap<String, Value>,
    text: &str,
    origin: &str,
    style: Style,
    snapshot_dir: &Path,
) -> u8 {
    let stmts = match script::parse(text) {
        Ok(s) => s,
        Err(err) => {
            eprintln!("kdnet: {origin}: {err}");
            return exit::BAD_ARGUMENTS;
        }
    };
    let mut runner = Runner::new(e, snapshot_dir.to_path_buf());
    runner.vars = std::mem::take(vars);
    runner.run(&stmts, &mut |ev| print_event(&ev, style));
    let code = if runner.target_gone().is_some() {
        exit::NO_CONNECTION
    } else if runner.failed() {
        exit::FAILED
    } else if runner.incomplete() {
        exit::INCOMPLETE
    } else {
        exit::OK
    };
    *vars = std::mem::take(&mut runner.vars);
    code
}

/// Runs each piece of work (the -c line, then the script file) on `e`, sharing named results;
/// the exit code that weighs most (see [`exit::worst`]). Once the target has stopped
/// answering, nothing more runs.
pub fn run_work(e: &mut Engine, work: &[(String, String)], style: Style, out: &Path) -> u8 {
    let mut vars = HashMap::new();
    let mut code = exit::OK;
    for (origin, text) in work {
        if e.target_gone().is_some() {
            break;
        }
        code = exit::worst(code, run_script(e, &mut vars, text, origin, style, out));
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdnet_model::nt::Kernel;
    use kdnet_model::target::TargetError;
    use kdnet_sim::{Machine, Scenario, SimConfig, TableSource};
    use kdnet_testkit::faulty::{Faults, FaultyTarget};
    use kdnet_testkit::local::LocalTarget;

    const QUIET: Style = Style {
        json: true,
        verbose: false,
        echo: false,
    };

    /// The simulated deadlock machine (built-in layout) behind a target whose requests fail as
    /// the returned plan says.
    fn engine() -> (Engine, Faults) {
        let config = SimConfig {
            build: 20348,
            table: TableSource::Builtin,
            scenario: Scenario::Deadlock,
            cpus: 4,
            resources: 2000,
            hang_after: None,
            bugcheck_after: None,
            seed: 5,
            print_every: std::time::Duration::from_secs(3600),
            booted_nodebug: false,
            irps: 0,
            bugcheck_at_break_in: None,
        };
        let machine = Machine::build(config).unwrap();
        let cpus = machine.system().cpus.len() as u32;
        let faults = Faults::new();
        let target = FaultyTarget::new(Box::new(LocalTarget::new(machine, cpus)), faults.clone());
        let kernel = Kernel::open(Box::new(target), kdnet_sim::symbols::symbol_path("")).unwrap();
        (Engine::new(kernel), faults)
    }

    fn work(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(o, t)| (o.to_string(), t.to_string()))
            .collect()
    }

    fn out_dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("kdnet-analysis-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_run_whose_results_are_whole_exits_0() {
        let (mut e, _) = engine();
        let dir = out_dir("whole");
        let w = work(&[("-c", "lm; !locks; !deadlock")]);
        assert_eq!(run_work(&mut e, &w, QUIET, &dir), exit::OK);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn the_hang_script_with_a_budget_that_runs_out_exits_4_never_0() {
        let (mut e, f) = engine();
        let dir = out_dir("hang");
        assert!(e.run("lm").ok());
        // The time budget runs out while !locks walks the resource list (what a 30 % loss did
        // to a real run): its result and everything built on it are incomplete.
        f.fail_window(20, 1_000_000, TargetError::OutOfTime);
        let w = work(&[("hang.kds", include_str!("../scripts/hang.kds"))]);
        let code = run_work(&mut e, &w, QUIET, &dir);
        assert!(
            code == exit::INCOMPLETE || code == exit::FAILED,
            "exit code {code}"
        );
        // The resource walk cut short, and nothing else to run: incomplete.
        let (mut e, f) = engine();
        assert!(e.run("lm").ok());
        f.fail_window(20, 1_000_000, TargetError::OutOfTime);
        let w = work(&[("-c", "!locks")]);
        assert_eq!(run_work(&mut e, &w, QUIET, &dir), exit::INCOMPLETE);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_failed_command_outweighs_an_incomplete_result() {
        let (mut e, f) = engine();
        let dir = out_dir("weights");
        assert!(e.run("lm").ok());
        f.fail_window(20, 1_000_000, TargetError::OutOfTime);
        // The incomplete result first, then a failure: 1, not the larger 4.
        let w = work(&[("-c", "!locks"), ("script", "frobnicate")]);
        assert_eq!(run_work(&mut e, &w, QUIET, &dir), exit::FAILED);
        // A syntax error outweighs a failure.
        let w = work(&[("-c", "frobnicate"), ("script", ".if (1 {")]);
        assert_eq!(run_work(&mut e, &w, QUIET, &dir), exit::BAD_ARGUMENTS);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_target_that_stops_answering_exits_2_and_runs_nothing_more() {
        let (mut e, f) = engine();
        let dir = out_dir("gone");
        assert!(e.run("lm").ok());
        f.fail_after(15, TargetError::Gone("no answer for 6 s (injected)".into()));
        let w = work(&[("-c", "!locks; !vm"), ("script", "!stacks\nk\n")]);
        let code = run_work(&mut e, &w, QUIET, &dir);
        assert_eq!(code, exit::NO_CONNECTION);
        assert!(e.target_gone().is_some());
        // The target was asked nothing after it went silent the first time.
        assert_eq!(f.failed(), 1, "{} requests failed", f.failed());
        std::fs::remove_dir_all(dir).ok();
    }
}
