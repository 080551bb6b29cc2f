//! The registry is the one list of commands: the published schemas and the command table in
//! `docs/commands.md` are generated from it (a test fails when either disagrees; run with
//! `KDNET_BLESS=1` to rewrite them), and every command's JSON, as it comes out on the simulated
//! machine in every scenario, is valid by its published schema.
//!
//! The validation uses the reference implementation of JSON Schema (Python's `jsonschema`);
//! without it the test says it skipped, and `KDNET_REQUIRE_JSONSCHEMA=1` (set by CI, which
//! installs it) makes that a failure.

use std::path::{Path, PathBuf};

use kdnet_commands::engine::Engine;
use kdnet_commands::registry::{COMMANDS, SCHEMA_VERSION, schemas};
use kdnet_commands::script::Event;
use kdnet_model::nt::Kernel;
use kdnet_sim::scenario::Facts;
use kdnet_sim::{Machine, Scenario, SimConfig, TableSource};
use kdnet_testkit::local::LocalTarget;
use serde_json::Value;

mod common;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bless() -> bool {
    std::env::var_os("KDNET_BLESS").is_some_and(|v| v == "1")
}

fn schema_dir() -> PathBuf {
    repo().join(format!("docs/schema/v{SCHEMA_VERSION}"))
}

#[test]
fn the_published_schemas_are_the_types() {
    let dir = schema_dir();
    let generated = schemas();
    if bless() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, s) in &generated {
            let text = serde_json::to_string_pretty(s).unwrap() + "\n";
            std::fs::write(dir.join(name), text).unwrap();
        }
    }
    let mut stale = Vec::new();
    for (name, s) in &generated {
        let path = dir.join(name);
        let on_disk: Value = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        if &on_disk != s {
            stale.push(name.clone());
        }
    }
    // No schema is left for a command that is gone.
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        if !generated.iter().any(|(n, _)| *n == name) {
            stale.push(format!("{name} (no such command)"));
        }
    }
    assert!(
        stale.is_empty(),
        "docs/schema/v{SCHEMA_VERSION} differs from the result types: {stale:?} (rerun with \
         KDNET_BLESS=1 to rewrite, and raise SCHEMA_VERSION when a result changed incompatibly)"
    );
    // One schema per command, each naming itself.
    assert_eq!(generated.len(), COMMANDS.len() + 1);
    for c in COMMANDS {
        let (_, s) = generated
            .iter()
            .find(|(n, _)| *n == format!("{}.json", c.id))
            .unwrap();
        assert_eq!(
            s["$id"],
            format!("urn:kdnet:schema:v{SCHEMA_VERSION}:{}", c.id)
        );
    }
}

const BEGIN: &str = "<!-- The table below is generated from the command registry \
(commands/src/registry.rs); a test fails when they disagree. -->";
const END: &str = "<!-- end of the generated table -->";

fn table() -> String {
    let mut t = String::from("| command | also | what |\n|---|---|---|\n");
    for c in COMMANDS {
        let esc = |s: &str| s.replace('|', "\\|");
        let aliases: Vec<String> = c.aliases.iter().map(|a| format!("`{a}`")).collect();
        t.push_str(&format!(
            "| `{}` | {} | {} |\n",
            esc(&c.usage()),
            aliases.join(", "),
            esc(c.doc)
        ));
    }
    t
}

#[test]
fn the_command_list_in_the_docs_is_the_registry() {
    let path = repo().join("docs/commands.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let (Some(b), Some(e)) = (doc.find(BEGIN), doc.find(END)) else {
        panic!("docs/commands.md lacks the generated table's markers");
    };
    let inside = &doc[b + BEGIN.len()..e];
    let want = format!("\n\n{}\n", table());
    if inside != want {
        if bless() {
            let new = format!("{}{want}{}", &doc[..b + BEGIN.len()], &doc[e..]);
            std::fs::write(&path, new).unwrap();
            return;
        }
        panic!(
            "the command table in docs/commands.md differs from the registry (rerun with \
             KDNET_BLESS=1 to rewrite it)"
        );
    }
    // Every name and alias is in the registry once.
    let mut seen = std::collections::HashSet::new();
    for c in COMMANDS {
        for n in std::iter::once(c.name).chain(c.aliases.iter().copied()) {
            assert!(
                seen.insert(n.to_ascii_lowercase()),
                "{n} is registered twice"
            );
        }
        assert!(!c.summary.is_empty() && !c.doc.is_empty(), "{}", c.name);
    }
}

/// A simulated machine of the built-in 20348 layout running `scenario`.
fn engine(scenario: Scenario) -> (Engine, Facts) {
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
    let target = LocalTarget::new(machine, cpus);
    let kernel = Kernel::open(Box::new(target), kdnet_sim::symbols::symbol_path("")).unwrap();
    (Engine::new(kernel), facts)
}

/// Each example of each command, on each scenario where what it names was planted:
/// (command id, command line, its result). Examples that write files write them in `dir`.
fn results(dir: &Path) -> Vec<(&'static str, String, Value)> {
    let mut out = Vec::new();
    for scenario in Scenario::ALL {
        let (mut e, facts) = engine(scenario);
        for (c, line) in common::example_lines(&facts, dir) {
            let o = e.run(&line);
            if let Some(err) = &o.error {
                // Some commands have nothing to say in some scenarios (no bugcheck, no
                // NDIS); that is an error by design, not a result to validate.
                assert!(
                    !err.contains("internal error"),
                    "{line} on {scenario}: {err}"
                );
                continue;
            }
            out.push((c.id, format!("{line} ({scenario})"), o.result));
        }
    }
    out
}

#[test]
fn every_command_emits_json_its_schema_accepts() {
    let dir = tempdir();
    let results = results(&dir);
    // The examples that write files wrote them there, whole.
    assert_eq!(
        std::fs::metadata(dir.join("nt.bin")).map(|m| m.len()).ok(),
        Some(0x1000)
    );
    // Every command produced a result somewhere, so every schema is exercised.
    for c in COMMANDS {
        assert!(
            results.iter().any(|(id, _, _)| *id == c.id),
            "{} gave no result on any scenario: its examples need fixing",
            c.name
        );
    }
    let python = std::env::var("KDNET_PYTHON").unwrap_or_else(|_| "python3".into());
    let have = std::process::Command::new(&python)
        .args(["-c", "import jsonschema"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        assert!(
            std::env::var_os("KDNET_REQUIRE_JSONSCHEMA").is_none(),
            "KDNET_REQUIRE_JSONSCHEMA is set but {python} cannot import jsonschema"
        );
        eprintln!(
            "NOTE: the results were not validated: {python} lacks the jsonschema module \
             (pip install jsonschema)"
        );
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let lines: Vec<String> = results
        .iter()
        .map(|(id, line, v)| serde_json::json!({"id": id, "line": line, "result": v}).to_string())
        .collect();
    std::fs::write(dir.join("results.jsonl"), lines.join("\n")).unwrap();
    // The line envelope of one command, too.
    let (mut e, _) = engine(Scenario::Healthy);
    let line = serde_json::to_string(&Event::Outcome(e.run("lm"), 0).line()).unwrap();
    std::fs::write(dir.join("line.json"), line).unwrap();
    let script = r#"
import json, sys, pathlib
from jsonschema import Draft202012Validator
schemas, work = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
def validator(name):
    s = json.loads((schemas / name).read_text())
    Draft202012Validator.check_schema(s)
    return Draft202012Validator(s)
bad = 0
count = 0
for l in (work / "results.jsonl").read_text().splitlines():
    r = json.loads(l)
    count += 1
    for err in validator(r["id"] + ".json").iter_errors(r["result"]):
        bad += 1
        print(f'{r["line"]}: {"/".join(map(str, err.absolute_path))}: {err.message}'[:400])
for err in validator("line.json").iter_errors(json.loads((work / "line.json").read_text())):
    bad += 1
    print(f'line: {err.message}'[:400])
print(f"validated {count} results, {bad} errors")
sys.exit(1 if bad else 0)
"#;
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(schema_dir())
        .arg(&dir)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "results that break their schemas:\n{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains(&format!("validated {} results", results.len())),
        "{report}"
    );
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "kdnet-schema-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}
