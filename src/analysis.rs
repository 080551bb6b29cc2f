//! What `kdnet open` and `kdnet run` share: the symbol path, the connection banner, running a
//! command line on an engine and printing each result as text or as JSON lines.

use std::collections::HashMap;
use std::path::Path;

use kdnet_commands::engine::{Engine, Outcome, addr};
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
            "schema": 1,
            "target": {
                "description": info.description,
                "live": info.live,
                "build": e.kernel.build,
                "kernel_base": e.kernel.base,
                "processors": info.processors,
                "symbols": e.kernel.nt_source,
                "bugcheck": bugcheck.map(|(c, p)| json!({ "code": c, "parameters": p })),
            },
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

/// One event of a script run as JSON (what `--json` prints for it).
pub fn event_json(ev: &Event) -> Value {
    match ev {
        Event::Outcome(o, _) => serde_json::to_value(o)
            .unwrap_or_else(|e| json!({ "command": o.command, "error": e.to_string() })),
        Event::Echo(t) => json!({ "echo": t }),
        Event::Snapshot(p) => json!({ "snapshot": p }),
        Event::Error { pos, message } => {
            json!({ "error": message, "line": pos.line, "column": pos.column })
        }
    }
}

/// One event of a script run as it is printed.
pub fn format_event(ev: &Event, style: Style) -> String {
    if style.json {
        return format!("{}\n", event_json(ev));
    }
    match ev {
        Event::Outcome(o, processor) => format_outcome(o, *processor, style),
        Event::Echo(t) => format!("{t}\n"),
        Event::Snapshot(p) => format!("snapshot written: {}\n", p.display()),
        Event::Error { pos, message } => {
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
/// in `vars` across calls. The exit code says whether every step worked; a syntax error runs
/// nothing and is a bad argument.
pub fn run_script(
    e: &mut Engine,
    vars: &mut HashMap<String, serde_json::Value>,
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
    let failed = runner.failed();
    *vars = std::mem::take(&mut runner.vars);
    if failed { exit::FAILED } else { exit::OK }
}

/// Runs each piece of work (the -c line, then the script file) on `e`, sharing named results;
/// the worst exit code.
pub fn run_work(e: &mut Engine, work: &[(String, String)], style: Style, out: &Path) -> u8 {
    let mut vars = HashMap::new();
    work.iter()
        .map(|(origin, text)| run_script(e, &mut vars, text, origin, style, out))
        .max()
        .unwrap_or(exit::OK)
}
