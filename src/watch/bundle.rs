//! One capture: run the capture script on the stopped target and write the bundle
//! `OUT/NAME-YYYYMMDDTHHMMSSZ-REASON/` with `report.txt` (the script's output as at the prompt,
//! under a header), `report.json` (the same as data, with the trigger and the findings),
//! `report.html` (one page for people) and `snapshot.dmp` (every page the capture read). It is
//! written under a hidden temporary name and renamed when whole, so a bundle under its final
//! name is complete as far as the target allowed; one cut short by the target rebooting or
//! vanishing, or by the stop budget, says so and keeps what was gathered.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kdnet_commands::engine::{Engine, addr};
use kdnet_commands::script::{self, Runner};
use serde_json::{Value, json};

use super::html;
use crate::analysis::{self, Style};

/// The capture scripts built into the binary.
pub const HANG_SCRIPT: &str = include_str!("../../scripts/hang.kds");
pub const BUGCHECK_SCRIPT: &str = include_str!("../../scripts/bugcheck.kds");

/// Why a capture happened.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Trigger {
    /// `stopped` (bugcheck or exception), `sample`, `probe`, `dbgprint`, `manual`.
    pub kind: String,
    /// What exactly.
    pub detail: String,
    /// For a sample: what it found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample: Option<Value>,
}

/// What to capture and where.
#[derive(Debug, Clone)]
pub struct Job {
    /// The target's name.
    pub name: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// Where bundles go.
    pub out: PathBuf,
    /// Why.
    pub trigger: Trigger,
    /// The capture script (origin, text); None: the built-in one.
    pub script: Option<(String, String)>,
    /// Stop budget for the whole capture.
    pub budget: Duration,
    /// Budget per command.
    pub command_budget: Duration,
}

/// What a capture produced.
#[derive(Debug, Clone)]
pub struct Captured {
    /// The bundle.
    pub dir: PathBuf,
    /// Whether everything was gathered.
    pub complete: bool,
    /// Steps that failed.
    pub failed_steps: usize,
    /// One line per finding, for people.
    pub summary: Vec<String>,
    /// Round trips the capture cost.
    pub round_trips: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// How long it kept the target stopped (from the start of the capture).
    pub seconds: f64,
}

/// Set when the target goes away during a capture; the capture stops reading and the bundle
/// is marked incomplete with this reason.
pub type Lost = Arc<Mutex<Option<String>>>;

fn first_word(command: &str) -> String {
    command
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// The findings a person wants first, from whatever the script ran.
pub fn findings(steps: &[Value], bugcheck: Option<(u32, [u64; 4])>, trigger: &Trigger) -> Value {
    let mut f = json!({
        "bugcheck": bugcheck.map(|(c, p)| json!({ "code": c, "parameters": p })),
        "locks_held": Value::Null,
        "deadlock_cycles": Value::Null,
        "wait_edges": Value::Null,
        "wait_threads": Value::Null,
        "top_pool_tags": Value::Null,
        "commit_failures": Value::Null,
        "pending_nbls": Value::Null,
        "nbl_holders": Value::Null,
        "analysis": Value::Null,
        "sample": trigger.sample.clone(),
    });
    for s in steps {
        let (Some(cmd), Some(r)) = (s.get("command").and_then(Value::as_str), s.get("result"))
        else {
            continue;
        };
        if r.is_null() {
            continue;
        }
        match first_word(cmd).as_str() {
            "!locks" if f["locks_held"].is_null() => {
                let held: Vec<Value> = r["held"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|h| {
                        json!({
                            "address": h["address"],
                            "symbol": h["symbol"],
                            "state": h["state"],
                            "exclusive_owner": h["exclusive_owner"],
                            "shared_owners": h["shared_owners"],
                            "contention_count": h["contention_count"],
                            "exclusive_waiters": h["exclusive_waiters"].as_array().map_or(0, Vec::len),
                            "shared_waiters": h["shared_waiters"].as_array().map_or(0, Vec::len),
                        })
                    })
                    .collect();
                f["locks_held"] = Value::Array(held);
            }
            "!deadlock" if f["deadlock_cycles"].is_null() => {
                f["deadlock_cycles"] = r["cycles"].clone();
                f["wait_edges"] = r["edges"].clone();
                f["wait_threads"] = r["threads"].clone();
            }
            "!poolused" if f["top_pool_tags"].is_null() => {
                let tags: Vec<Value> = r["tags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .take(10)
                    .cloned()
                    .collect();
                f["top_pool_tags"] = Value::Array(tags);
            }
            "!vm" if f["commit_failures"].is_null() => {
                f["commit_failures"] = r["commit_failures"].clone();
            }
            "!ndiskd.pendingnbls" if f["pending_nbls"].is_null() => {
                f["pending_nbls"] = r["pending"].clone();
                f["nbl_holders"] = r["holders"].clone();
            }
            "!analyze" if f["analysis"].is_null() && !r["bugcheck_code"].is_null() => {
                f["analysis"] = json!({
                    "bugcheck_name": r["bugcheck_name"],
                    "module": r["module"],
                    "symbol": r["symbol"],
                    "process_name": r["process_name"],
                    "failure_bucket": r["failure_bucket"],
                });
            }
            _ => {}
        }
    }
    f
}

/// One line per finding.
pub fn summary(f: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(b) = f["bugcheck"].as_object() {
        let name = f["analysis"]["bugcheck_name"].as_str().unwrap_or("");
        let module = f["analysis"]["module"].as_str().unwrap_or("");
        out.push(format!(
            "bugcheck {:#x} {name}{}",
            b["code"].as_u64().unwrap_or(0),
            if module.is_empty() {
                String::new()
            } else {
                format!(" in {module}")
            }
        ));
    }
    for c in f["deadlock_cycles"].as_array().into_iter().flatten() {
        let threads: Vec<String> = c["threads"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .map(|t| format!("{t:x}"))
            .collect();
        out.push(format!(
            "deadlock: {} threads wait for each other ({})",
            threads.len(),
            threads.join(", ")
        ));
    }
    for h in f["locks_held"].as_array().into_iter().flatten() {
        let waiters = h["exclusive_waiters"].as_u64().unwrap_or(0)
            + h["shared_waiters"].as_u64().unwrap_or(0);
        let name = h["symbol"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| addr(h["address"].as_u64().unwrap_or(0)));
        let owner = h["exclusive_owner"]
            .as_u64()
            .map(|o| format!(" by thread {o:x}"))
            .unwrap_or_default();
        out.push(format!(
            "lock {name} held {}{owner}, {waiters} waiter(s)",
            h["state"].as_str().unwrap_or("")
        ));
    }
    if let Some(n) = f["commit_failures"].as_u64().filter(|n| *n > 0) {
        out.push(format!("{n} commit requests have failed"));
    }
    if let Some(n) = f["pending_nbls"].as_u64().filter(|n| *n > 0) {
        let who: Vec<String> = f["nbl_holders"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| {
                // A holder whose name could not be read says so.
                let name = match (h["name"].as_str(), h["name_error"].as_str()) {
                    (Some(n), _) => n.to_string(),
                    (None, Some(e)) => format!(
                        "{:x} (name unreadable: {e})",
                        h["handle"].as_u64().unwrap_or(0)
                    ),
                    (None, None) => "?".into(),
                };
                format!("{name} holds {}", h["count"].as_u64().unwrap_or(0))
            })
            .collect();
        out.push(format!("{n} NBLs pending: {}", who.join("; ")));
    }
    if let Some(t) = f["top_pool_tags"].as_array().and_then(|t| t.first()) {
        out.push(format!(
            "top pool tag {} ({} nonpaged bytes)",
            t["tag"].as_str().unwrap_or("?"),
            t["nonpaged_bytes"].as_u64().unwrap_or(0)
        ));
    }
    out
}

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-")
        .chars()
        .take(40)
        .collect()
}

#[cfg(unix)]
fn private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

#[cfg(unix)]
fn make_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

#[cfg(not(unix))]
fn make_private(_: &Path) {}

/// Runs the capture on the stopped target `e` and writes the bundle.
pub fn capture(e: &mut Engine, job: &Job, lost: &Lost, stamp: &str) -> anyhow::Result<Captured> {
    let start = Instant::now();
    let before = e.kernel.mem.stats();
    let bugcheck = e.kernel.bugcheck().ok().flatten();
    let reason = match (&bugcheck, job.trigger.kind.as_str()) {
        (Some((code, _)), "stopped") => format!("bugcheck-{code:x}"),
        (_, k) => Some(slug(k))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "capture".into()),
    };
    let (origin, text) = match &job.script {
        Some((o, t)) => (o.clone(), t.clone()),
        None if bugcheck.is_some() => ("bugcheck.kds (built in)".into(), BUGCHECK_SCRIPT.into()),
        None => ("hang.kds (built in)".into(), HANG_SCRIPT.into()),
    };
    let stmts = script::parse(&text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    std::fs::create_dir_all(&job.out).with_context(|| format!("creating {}", job.out.display()))?;
    let tmp = job.out.join(format!(".partial-{}-{stamp}", job.name));
    let _ = std::fs::remove_dir_all(&tmp);
    create_private_dir(&tmp)?;
    e.budget = Some(job.command_budget);
    e.deadline = Some(start + job.budget);
    let text_style = Style {
        json: false,
        verbose: false,
        echo: true,
    };
    let mut body = String::new();
    let mut steps: Vec<Value> = Vec::new();
    let mut texts: Vec<(String, String)> = Vec::new();
    let mut failed_steps = 0;
    let mut snapshot_error = None;
    {
        let mut runner = Runner::new(e, tmp.clone());
        runner.run(&stmts, &mut |ev| {
            let t = analysis::format_event(&ev, text_style);
            body.push_str(&t);
            if let script::Event::Outcome(o, _) = &ev {
                texts.push((o.command.clone(), t));
            }
            let v = analysis::event_json(&ev);
            if v.get("error").is_some_and(|e| !e.is_null()) {
                failed_steps += 1;
            }
            steps.push(v);
        });
        runner.engine.deadline = None;
        // Every page read, whatever the script asked for.
        if let Err(err) = runner.snapshot("snapshot") {
            snapshot_error = Some(err);
        }
    }
    let info_desc = e.kernel.mem.info().description.clone();
    let cost = e.kernel.mem.stats().since(&before);
    let seconds = start.elapsed().as_secs_f64();
    let out_of_time = start.elapsed() >= job.budget;
    let lost_reason = lost.lock().ok().and_then(|l| l.clone());
    let incomplete = lost_reason.clone().or_else(|| {
        out_of_time.then(|| {
            format!(
                "the stop budget of {:.0} s ran out; what was gathered is kept",
                job.budget.as_secs_f64()
            )
        })
    });
    let found = findings(&steps, bugcheck, &job.trigger);
    let lines = summary(&found);
    let finished = super::utc_stamp(super::now_secs());
    let info = json!({
        "schema": 1,
        "target": job.name,
        "tags": job.tags,
        "description": info_desc,
        "build": e.kernel.build,
        "kernel_base": e.kernel.base,
        "trigger": job.trigger,
        "bugcheck": bugcheck.map(|(c, p)| json!({ "code": c, "parameters": p })),
        "started": stamp,
        "finished": finished,
        "stopped_seconds": seconds,
        "round_trips": cost.transport.round_trips,
        "bytes": cost.transport.bytes,
        "script": origin,
        "complete": incomplete.is_none(),
        "incomplete": incomplete,
        "snapshot": snapshot_error.as_ref().map_or(json!("snapshot.dmp"), |e| json!({ "error": e })),
        "findings": found,
        "summary": lines,
        "steps": steps,
    });
    let mut header = format!(
        "kdnet capture of {}{}\n",
        job.name,
        if job.tags.is_empty() {
            String::new()
        } else {
            format!(" (tags: {})", job.tags.join(", "))
        }
    );
    header.push_str(&format!(
        "Trigger:  {}: {}\n",
        job.trigger.kind, job.trigger.detail
    ));
    header.push_str(&format!(
        "Target:   {info_desc}; build {}; kernel base {}\n",
        e.kernel.build,
        addr(e.kernel.base)
    ));
    header.push_str(&format!(
        "Time:     {stamp} to {finished}; target stopped {seconds:.1} s for the capture\n"
    ));
    header.push_str(&format!(
        "Cost:     {} round trips, {} bytes; script {origin}\n",
        cost.transport.round_trips, cost.transport.bytes
    ));
    match &incomplete {
        None => header.push_str("Complete: yes\n"),
        Some(why) => header.push_str(&format!("Complete: NO: {why}\n")),
    }
    if let Some(err) = &snapshot_error {
        header.push_str(&format!("Snapshot: not written: {err}\n"));
    }
    if !lines.is_empty() {
        header.push_str("Findings:\n");
        for l in &lines {
            header.push_str(&format!("  - {l}\n"));
        }
    }
    header.push('\n');
    header.push_str(&body);
    private_file(&tmp.join("report.txt"), header.as_bytes()).context("writing report.txt")?;
    private_file(&tmp.join("report.json"), format!("{info:#}\n").as_bytes())
        .context("writing report.json")?;
    private_file(
        &tmp.join("report.html"),
        html::page(&info, &texts).as_bytes(),
    )
    .context("writing report.html")?;
    // Files the script wrote itself (`.snapshot NAME`) are private too.
    if let Ok(dir) = std::fs::read_dir(&tmp) {
        for f in dir.flatten() {
            make_private(&f.path());
        }
    }
    let final_dir = job.out.join(format!(
        "{}-{stamp}-{reason}{}",
        job.name,
        if incomplete.is_some() {
            "-incomplete"
        } else {
            ""
        }
    ));
    std::fs::rename(&tmp, &final_dir)
        .with_context(|| format!("moving the bundle to {}", final_dir.display()))?;
    Ok(Captured {
        dir: final_dir,
        complete: incomplete.is_none(),
        failed_steps,
        summary: lines,
        round_trips: cost.transport.round_trips,
        bytes: cost.transport.bytes,
        seconds,
    })
}

#[cfg(unix)]
fn create_private_dir(p: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(p)
        .with_context(|| format!("creating {}", p.display()))
}

#[cfg(not(unix))]
fn create_private_dir(p: &Path) -> anyhow::Result<()> {
    std::fs::create_dir(p).with_context(|| format!("creating {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_come_from_whatever_ran() {
        let steps = vec![
            json!({ "command": "!locks", "result": { "held": [
                { "address": 1, "symbol": "nt!PiEngineLock", "state": "exclusive",
                  "exclusive_owner": 0xabc, "exclusive_waiters": [5, 6], "shared_waiters": [] } ] } }),
            json!({ "command": "!vm", "result": { "commit_failures": 48440 } }),
            json!({ "command": "!ndiskd.pendingnbls", "result": { "pending": 1854,
                "holders": [ { "name": "My Ethernet", "count": 1854 } ] } }),
            json!({ "command": "!deadlock", "result": null, "error": "cancelled" }),
        ];
        let t = Trigger {
            kind: "manual".into(),
            detail: String::new(),
            sample: None,
        };
        let f = findings(&steps, None, &t);
        assert_eq!(f["commit_failures"], 48440);
        assert!(
            f["deadlock_cycles"].is_null(),
            "a failed step gives nothing"
        );
        let s = summary(&f);
        assert!(
            s.contains(
                &"lock nt!PiEngineLock held exclusive by thread abc, 2 waiter(s)".to_string()
            ),
            "{s:?}"
        );
        assert!(s.contains(&"48440 commit requests have failed".to_string()));
        assert!(s.contains(&"1854 NBLs pending: My Ethernet holds 1854".to_string()));
        let unread = json!({ "pending_nbls": 9, "nbl_holders": [
            { "handle": 0xffff_1234u64, "name": null, "name_error": "read of 0x10 bytes at 0x5 failed: target: no reply", "count": 9 } ] });
        assert_eq!(
            summary(&unread),
            [
                "9 NBLs pending: ffff1234 (name unreadable: read of 0x10 bytes at 0x5 failed: target: no reply) holds 9"
            ]
        );
    }

    #[test]
    fn reasons_are_safe_names() {
        assert_eq!(
            slug("sample: deadlock/long wait"),
            "sample-deadlock-long-wait"
        );
        assert_eq!(slug("../.."), "");
    }
}
