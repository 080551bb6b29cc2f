//! Every command the documentation shows in a `-c "…"` line runs on the simulated machine
//! without an error, so a documented example cannot fail again unnoticed. The command table's
//! examples are the registry's and are run by the registry test.

mod common;

use std::path::PathBuf;

use common::sim_kernel;
use kdnet_commands::engine::Engine;
use kdnet_commands::script::{self, Event, Runner};
use kdnet_sim::Scenario;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The text of each `-c "…"` and `-c '…'` in a document.
fn command_lines(doc: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in doc.match_indices("-c ") {
        let rest = &doc[i + 3..];
        let Some(q) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') else {
            continue;
        };
        if let Some(end) = rest[1..].find(q) {
            out.push(rest[1..1 + end].to_string());
        }
    }
    out
}

#[test]
fn every_documented_command_line_runs() {
    let Some((k, _)) = sim_kernel(20348, Scenario::Deadlock) else {
        return;
    };
    let mut e = Engine::new(k);
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|d| d.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.push(repo().join("README.md"));
    let mut ran = 0;
    let mut failures = Vec::new();
    for doc in &docs {
        let text = std::fs::read_to_string(doc).unwrap();
        for line in command_lines(&text) {
            let stmts = match script::parse(&line) {
                Ok(s) => s,
                Err(err) => {
                    failures.push(format!("{}: {line}: {err}", doc.display()));
                    continue;
                }
            };
            let dir = std::env::temp_dir().join(format!("kdnet-docs-{}", std::process::id()));
            let mut runner = Runner::new(&mut e, dir);
            let mut errors = Vec::new();
            runner.run(&stmts, &mut |ev| {
                if let Event::Outcome(o, _) = &ev
                    && let Some(err) = &o.error
                {
                    errors.push(format!("{}: {err}", o.command));
                }
                if let Event::Error { message, .. } = &ev {
                    errors.push(message.clone());
                }
            });
            ran += 1;
            for err in errors {
                failures.push(format!("{}: {line}: {err}", doc.display()));
            }
        }
    }
    assert!(ran >= 5, "only {ran} documented command lines found");
    assert!(
        failures.is_empty(),
        "documented examples that fail:\n{}",
        failures.join("\n")
    );
}

#[test]
fn command_lines_are_found() {
    assert_eq!(
        command_lines(r#"kdnet run -c "lm; k" and -c '!locks' but not -c x"#),
        ["lm; k", "!locks"]
    );
}
