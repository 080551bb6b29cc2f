//! One capture: run the capture script on the stopped target and write the bundle
//! `OUT/NAME-YYYYMMDDTHHMMSSZ-REASON/` with `report.txt` (the script's output as at the prompt,
//! under a header), `report.json` (the same as data, with the trigger and the findings),
//! `report.html` (one page for people) and `snapshot.dmp` (every page the capture read). It is
//! written under a hidden name (`.partial-…`, locked while it is written) and renamed when
//! written: under its final name only when every file in it was written and the script ran to
//! its end; otherwise under the name ending `-incomplete`, its reports naming what is missing
//! and why (the target rebooting or vanishing, the stop budget, a file that could not be
//! written). When not even the reports can be written, nothing is published.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kdnet_commands::engine::{Engine, addr};
use kdnet_commands::script::{self, Runner};
use kdnet_model::dump::{self, DumpHeader};
use serde_json::{Value, json};

use super::html::{self, addr_of};
use crate::analysis::{self, Style};
use kdnet_commands::ext::hangcheck::Severity;

/// The capture scripts built into the binary.
pub const HANG_SCRIPT: &str = include_str!("../../scripts/hang.kds");
pub const BUGCHECK_SCRIPT: &str = include_str!("../../scripts/bugcheck.kds");

/// Why a capture happened.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Trigger {
    /// `stopped` (bugcheck or exception), `sample`, `probe`, `dbgprint`, `breakpoint`,
    /// `manual`.
    pub kind: String,
    /// What exactly.
    pub detail: String,
    /// For a sample: what it found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample: Option<Value>,
    /// For a breakpoint: which one, where, and the registers and stack at the hit
    /// (`breakpoint`, `processor`, `thread`, `pc`, `registers`, `stack`, `text`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hit: Option<Value>,
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
    /// When the capture began (the break-in): the stop budget counts from here.
    pub started: Instant,
    /// Stop budget for the whole capture.
    pub budget: Duration,
    /// Budget per command.
    pub command_budget: Duration,
    /// A capture of the same hang cut short by its stop ceiling: this one runs only what that
    /// one did not, and its bundle holds both.
    pub continues: Option<Continuation>,
}

/// What a capture cut short by its stop ceiling leaves for the next capture of the same hang:
/// the script's top-level statements it ran to their end, their events and named results,
/// and the pages it read.
#[derive(Debug, Clone)]
pub struct Continuation {
    /// The bundle it wrote (incomplete).
    pub bundle: PathBuf,
    /// When it began (UTC stamp).
    pub stamp: String,
    /// When it was made.
    pub made: Instant,
    /// Its trigger's kind.
    pub trigger_kind: String,
    /// The script it ran (its origin).
    pub origin: String,
    /// The machine it ran on: kernel base and build (a reboot ends the continuation).
    pub kernel_base: u64,
    /// The build.
    pub build: u32,
    /// The first top-level statement not run to its end.
    pub next: usize,
    /// The named results so far.
    pub vars: std::collections::HashMap<String, Value>,
    /// The engine state the statements run so far left (`.timeout`, `~N`, `r $tN`, `rm`):
    /// the statements after them expect it.
    pub engine: EngineState,
    /// The events of the statements run to their end: JSON, text, command (of a result).
    pub events: Vec<Event>,
    /// The pages read so far (the earliest first part's beneath the later).
    pub pages: BTreeMap<u64, Vec<u8>>,
    /// How many captures made it so far.
    pub parts: u32,
}

/// What a script's statements may have set in the engine and the statements after them
/// rely on.
#[derive(Debug, Clone, Copy)]
pub struct EngineState {
    /// The per-command budget (`.timeout`).
    pub budget: Option<Duration>,
    /// The processor `r` and `k` show (`~N`).
    pub processor: u32,
    /// `$t0`–`$t19`.
    pub user_registers: [u64; 20],
    /// `rm`.
    pub register_mask: u32,
}

impl EngineState {
    fn of(e: &Engine) -> EngineState {
        EngineState {
            budget: e.budget,
            processor: e.processor,
            user_registers: e.user_registers,
            register_mask: e.register_mask,
        }
    }

    fn restore(&self, e: &mut Engine) {
        e.budget = self.budget;
        e.processor = self.processor;
        e.user_registers = self.user_registers;
        e.register_mask = self.register_mask;
    }
}

/// The most page bytes a continuation keeps (the earlier parts' reads): past it the next
/// capture starts over.
const MAX_CONTINUATION_PAGES: usize = 512 << 20;

/// One event of a capture: its JSON step, its text, and the command when it is a result.
pub type Event = (Value, String, Option<String>);

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
    /// The earlier bundle this one completes, when it went on where that one stopped.
    pub continues: Option<PathBuf>,
    /// When the stop ceiling cut it short: what the next capture of the same hang goes on
    /// with.
    pub unfinished: Option<Continuation>,
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
        "wait_ends": Value::Null,
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
                // `!locks -v` lists every resource: the held ones are the findings.
                let held: Vec<Value> = r["held"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|h| h["state"] != "available")
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
    f["wait_ends"] = wait_ends(&f, steps);
    f
}

/// The call sites of each thread's stack that a `!thread` or `!stacks` step showed.
fn stacks_of(steps: &[Value]) -> BTreeMap<u64, Vec<String>> {
    let mut out: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for s in steps {
        let (Some(cmd), Some(r)) = (s.get("command").and_then(Value::as_str), s.get("result"))
        else {
            continue;
        };
        match first_word(cmd).as_str() {
            "!thread" => {
                if let Some(t) = addr_of(&r["thread"]) {
                    let frames: Vec<String> = r["frames"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|f| f["call_site"].as_str().map(str::to_string))
                        .collect();
                    out.entry(t).or_insert(frames);
                }
            }
            "!stacks" => {
                for x in r["threads"].as_array().into_iter().flatten() {
                    if let Some(t) = addr_of(&x["thread"]) {
                        let frames: Vec<String> = x["frames"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|f| f.as_str().map(str::to_string))
                            .collect();
                        out.entry(t).or_insert(frames);
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Where the wait chains go on past the last thread with a known owner: each waiting thread
/// on the graph that waits for no owner, the objects it waits on, and who holds them when the
/// results tell. A wait for rundown protection in a stack through NDIS (a binding being closed)
/// ends when the pending NBLs come back: their holders (`!ndiskd.pendingnbls`) hold it.
fn wait_ends(f: &Value, steps: &[Value]) -> Value {
    let Some(threads) = f["wait_threads"].as_array() else {
        return Value::Null;
    };
    let waiters: std::collections::BTreeSet<u64> = f["wait_edges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| addr_of(&x["waiter"]))
        .collect();
    let stacks = stacks_of(steps);
    let holders: Vec<Value> = f["nbl_holders"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|h| h["count"].as_u64().is_some_and(|n| n > 0) && addr_of(&h["handle"]).is_some())
        .map(|h| h["handle"].clone())
        .collect();
    let mut out = Vec::new();
    for t in threads {
        let Some(a) = addr_of(&t["thread"]) else {
            continue;
        };
        if waiters.contains(&a) || t["wait_reason"].is_null() {
            continue;
        }
        let frames = stacks.get(&a).map_or(&[][..], Vec::as_slice);
        let blocker = t["blocker"].as_str().unwrap_or("");
        let rundown = std::iter::once(blocker)
            .chain(frames.iter().map(String::as_str))
            .any(|f| f.contains("!ExWaitForRundownProtectionRelease"));
        // `ndis!ndisPnPRemoveDevice+0x27f`, or `ndis+0x2abf` without its symbols.
        let in_ndis = frames.iter().any(|f| {
            f.split(['!', '+'])
                .next()
                .is_some_and(|m| m.eq_ignore_ascii_case("ndis"))
        });
        for w in t["waits"].as_array().into_iter().flatten() {
            if addr_of(&w["object"]).is_none() {
                continue;
            }
            let event = matches!(
                w["type_name"].as_str(),
                Some("NotificationEvent" | "SynchronizationEvent")
            );
            let via = (rundown && event).then_some("rundown protection");
            let held_by = if via.is_some() && in_ndis {
                holders.clone()
            } else {
                Vec::new()
            };
            out.push(json!({
                "thread": t["thread"],
                "object": w["object"],
                "type_name": w["type_name"],
                "symbol": w["symbol"],
                "via": via,
                "held_by": held_by,
            }));
        }
    }
    Value::Array(out)
}

/// The most held locks the summary names one by one.
const MAX_LOCK_LINES: usize = 20;

/// One line per finding with its severity (held locks: the first 20, then how many more): a
/// bugcheck or a deadlock is an error; a lock held with waiters, failing commits and pending
/// packets are warnings; a lock held without waiters and the top pool tag are information.
pub fn summary(f: &Value) -> Vec<(Severity, String)> {
    let mut out = Vec::new();
    if let Some(b) = f["bugcheck"].as_object() {
        let name = f["analysis"]["bugcheck_name"].as_str().unwrap_or("");
        let module = f["analysis"]["module"].as_str().unwrap_or("");
        out.push((
            Severity::Error,
            format!(
                "bugcheck {:#x}{}{}",
                b["code"].as_u64().unwrap_or(0),
                if name.is_empty() {
                    String::new()
                } else {
                    format!(" {name}")
                },
                if module.is_empty() {
                    String::new()
                } else {
                    format!(" in {module}")
                }
            ),
        ));
    }
    for c in f["deadlock_cycles"].as_array().into_iter().flatten() {
        let threads: Vec<String> = c["threads"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(addr_of)
            .map(|t| format!("{t:x}"))
            .collect();
        out.push((
            Severity::Error,
            format!(
                "deadlock: {} threads wait for each other ({})",
                threads.len(),
                threads.join(", ")
            ),
        ));
    }
    let held = f["locks_held"].as_array().map_or(&[][..], Vec::as_slice);
    for h in held.iter().take(MAX_LOCK_LINES) {
        let waiters = h["exclusive_waiters"].as_u64().unwrap_or(0)
            + h["shared_waiters"].as_u64().unwrap_or(0);
        let name = h["symbol"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| addr(addr_of(&h["address"]).unwrap_or(0)));
        let owner = addr_of(&h["exclusive_owner"])
            .map(|o| format!(" by thread {o:x}"))
            .unwrap_or_default();
        let severity = if waiters > 0 {
            Severity::Warning
        } else {
            Severity::Information
        };
        out.push((
            severity,
            format!(
                "lock {name} held {}{owner}, {waiters} waiter(s)",
                h["state"].as_str().unwrap_or("")
            ),
        ));
    }
    if held.len() > MAX_LOCK_LINES {
        out.push((
            Severity::Information,
            format!(
                "and {} more held locks (report.json: findings.locks_held)",
                held.len() - MAX_LOCK_LINES
            ),
        ));
    }
    if let Some(n) = f["commit_failures"].as_u64().filter(|n| *n > 0) {
        out.push((
            Severity::Warning,
            format!("{n} commit requests have failed"),
        ));
    }
    if let Some(n) = f["pending_nbls"].as_u64().filter(|n| *n > 0) {
        let who: Vec<String> = f["nbl_holders"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| {
                // A holder whose name could not be read is said to be so, not left blank.
                let name = match (h["name"].as_str().map(str::trim), h["name_error"].as_str()) {
                    (Some(n), _) if !n.is_empty() => n.to_string(),
                    (_, Some(e)) => format!(
                        "holder {:x} (its name could not be read: {e})",
                        addr_of(&h["handle"]).unwrap_or(0)
                    ),
                    _ => match addr_of(&h["handle"]) {
                        Some(a) => format!("holder {a:x} (its name could not be read)"),
                        None => "an unknown holder (its name could not be read)".to_string(),
                    },
                };
                format!("{name} holds {}", h["count"].as_u64().unwrap_or(0))
            })
            .collect();
        out.push((
            Severity::Warning,
            format!("{n} NBLs pending: {}", who.join("; ")),
        ));
    }
    if let Some(t) = f["top_pool_tags"].as_array().and_then(|t| t.first()) {
        let tag = t["tag"].as_str().unwrap_or("?").trim_end();
        out.push((
            Severity::Information,
            format!(
                "top pool tag {tag} ({} nonpaged bytes){}",
                t["nonpaged_bytes"].as_u64().unwrap_or(0),
                pool_tag_meaning(tag).map_or(String::new(), |m| format!(": {m}"))
            ),
        ));
    }
    out
}

/// What a few well-known kernel pool tags hold (the tag is the allocator's four characters).
fn pool_tag_meaning(tag: &str) -> Option<&'static str> {
    Some(match tag.trim_end() {
        "Res" => "executive resources (ERESOURCE locks)",
        "Thre" => "thread objects (ETHREAD)",
        "Proc" => "process objects (EPROCESS)",
        "File" => "file objects",
        "Irp" => "I/O request packets",
        "Muta" => "mutant objects",
        "Even" => "event objects",
        "MmSt" => "memory manager section tables",
        "NDnb" | "NDnd" => "NDIS net buffer lists",
        _ => return None,
    })
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

/// The most output (text and JSON of every result) one capture keeps; past it the script
/// stops, says what it did not run, and the bundle is incomplete.
pub const MAX_CAPTURE_OUTPUT: usize = 64 << 20;

/// Writes `bytes` to a new owner-only file; a file cut short by a failed write is removed.
fn private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    let r = open
        .open(path)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()));
    if r.is_err() {
        let _ = std::fs::remove_file(path);
    }
    r
}

/// The prefix of a bundle being written.
const PARTIAL: &str = ".partial-";
/// The lock a capture holds on its partial bundle while it writes it.
const LOCK: &str = ".lock";

/// A bundle being written under a hidden name, locked while this exists; removed on drop
/// unless published.
struct Partial {
    dir: PathBuf,
    #[cfg_attr(not(unix), allow(dead_code))]
    lock: Option<std::fs::File>,
    published: bool,
}

impl Partial {
    fn create(out: &Path, name: &str, stamp: &str) -> anyhow::Result<Partial> {
        // Unique to this capture: two captures of one target within a second do not meet.
        static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = out.join(format!(
            "{PARTIAL}{name}-{stamp}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let mut b = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let mut p = Partial {
            dir,
            lock: None,
            published: false,
        };
        p.lock = Some(lock_file(&p.dir.join(LOCK))?);
        Ok(p)
    }

    /// Renames it to `to`, or to `to-2`, `to-3` … when a bundle of that name exists (two
    /// captures within one second); the name it got. Its lock file goes first.
    fn publish(mut self, to: &Path) -> anyhow::Result<PathBuf> {
        let _ = std::fs::remove_file(self.dir.join(LOCK));
        let mut name = to.to_path_buf();
        for n in 2..1000 {
            if !name.exists() {
                break;
            }
            name = PathBuf::from(format!("{}-{n}", to.display()));
        }
        std::fs::rename(&self.dir, &name)
            .with_context(|| format!("cannot move the bundle to {}", name.display()))?;
        self.published = true;
        Ok(name)
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Creates and locks `path` (an advisory lock held as long as the file is open).
fn lock_file(path: &Path) -> anyhow::Result<std::fs::File> {
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    let f = open
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    #[cfg(unix)]
    match crate::sys::try_lock(&f) {
        Ok(true) => {}
        Ok(false) => anyhow::bail!("cannot lock {}: another process holds it", path.display()),
        Err(e) => anyhow::bail!("cannot lock {}: {e}", path.display()),
    }
    Ok(f)
}

/// Whether a partial bundle's writer is gone: its lock file is missing or nobody holds it.
fn abandoned(dir: &Path) -> bool {
    #[cfg(unix)]
    {
        let Ok(f) = std::fs::OpenOptions::new().read(true).open(dir.join(LOCK)) else {
            return true;
        };
        // Nobody holds it if we can take it (the lock goes with the file).
        crate::sys::try_lock(&f).unwrap_or(false)
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        true
    }
}

/// Removes the partial bundles in `out` that no running capture is writing (left by a watcher
/// that was killed): what was removed, or could not be.
pub fn remove_abandoned(out: &Path) -> Vec<(PathBuf, Result<(), String>)> {
    let Ok(entries) = std::fs::read_dir(out) else {
        return Vec::new();
    };
    let mut done = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        let is_partial = e.file_name().to_string_lossy().starts_with(PARTIAL)
            && e.file_type().is_ok_and(|t| t.is_dir());
        if is_partial && abandoned(&path) {
            let r = std::fs::remove_dir_all(&path).map_err(|e| e.to_string());
            done.push((path, r));
        }
    }
    done
}

/// What a capture gathered while the target was stopped, ready to be written.
pub struct Gathered {
    partial: Partial,
    stamp: String,
    reason: String,
    origin: String,
    bugcheck: Option<(u32, [u64; 4])>,
    description: String,
    build: u32,
    kernel_base: u64,
    round_trips: u64,
    bytes: u64,
    seconds: f64,
    /// Every event, those of an earlier part first.
    events: Vec<Event>,
    /// How many of `events` an earlier part gathered, and that part's bundle, start and
    /// number of parts.
    earlier: Option<(usize, PathBuf, String, u32)>,
    /// What the next capture goes on with, when this one was cut short.
    unfinished: Option<Continuation>,
    /// The dump's header and pages, or why there is no dump.
    snapshot: Result<(DumpHeader, BTreeMap<u64, Vec<u8>>), String>,
    /// Files the script wrote that could not be written.
    write_failures: Vec<String>,
    /// Why what was gathered is not everything the script asked for.
    short: Vec<String>,
}

/// Runs the capture script on the stopped target `e`: every result, the snapshot's pages, and
/// the files the script writes itself, in a new partial bundle. Nothing it gathers needs the
/// target afterwards; [`write`] makes the bundle while the target runs.
pub fn gather(e: &mut Engine, job: &Job, lost: &Lost, stamp: &str) -> anyhow::Result<Gathered> {
    let start = job.started;
    let deadline = start + job.budget;
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
    // Going on where a cut capture stopped: the same script on the same boot only.
    let earlier = job.continues.as_ref().filter(|c| {
        c.origin == origin
            && c.kernel_base == e.kernel.base
            && c.build == e.kernel.build
            && c.next < stmts.len()
    });
    script::private_dir(&job.out)
        .with_context(|| format!("cannot create {}", job.out.display()))?;
    let partial = Partial::create(&job.out, &job.name, stamp)?;
    // The snapshot's header first, within the budget: what it reads is in the snapshot too.
    e.kernel.mem.set_deadline(Some(deadline));
    let header = e
        .kernel
        .dump_header(&format!("kdnet capture of {}", job.name))
        .map_err(|err| format!("cannot read what its header needs: {err}"));
    e.kernel.mem.set_deadline(None);
    e.budget = Some(job.command_budget);
    e.deadline = Some(deadline);
    let text_style = Style {
        json: false,
        verbose: false,
        echo: true,
    };
    let first = earlier.map_or(0, |c| c.next);
    let mut events: Vec<Event> = earlier.map(|c| c.events.clone()).unwrap_or_default();
    let carried = events.len();
    let mut short = Vec::new();
    let write_failures;
    let halted;
    let (tops, finished, vars);
    {
        let mut runner = Runner::new(e, partial.dir.clone());
        runner.output_limit = Some(MAX_CAPTURE_OUTPUT);
        if let Some(c) = earlier {
            runner.vars = c.vars.clone();
            runner.earlier_pages = c.pages.clone();
            c.engine.restore(runner.engine);
        }
        runner.run(&stmts[first..], &mut |ev| {
            // Files the script wrote are named as they are in the published bundle.
            let ev = match ev {
                script::Event::Snapshot(p) => {
                    script::Event::Snapshot(p.file_name().map_or(p.clone(), PathBuf::from))
                }
                other => other,
            };
            let t = analysis::format_event(&ev, text_style);
            let command = match &ev {
                script::Event::Outcome(o, _) => Some(o.command.clone()),
                _ => None,
            };
            events.push((analysis::event_json(&ev), t, command));
        });
        runner.engine.deadline = None;
        halted = runner.halted().map(str::to_string);
        if let Some(why) = &halted {
            short.push(format!("the script stopped before its end: {why}"));
        }
        write_failures = std::mem::take(&mut runner.write_failures);
        tops = std::mem::take(&mut runner.tops);
        finished = runner.finished;
        vars = std::mem::take(&mut runner.vars);
    }
    let engine_state = EngineState::of(e);
    // Files an earlier part's statements wrote (`.snapshot NAME`) belong in this bundle too.
    let mut write_failures = write_failures;
    if let Some(c) = earlier {
        for (v, _, _) in &events[..carried] {
            if v["type"] != "snapshot" {
                continue;
            }
            let Some(name) = v["result"]["path"]
                .as_str()
                .and_then(|p| Path::new(p).file_name())
            else {
                continue;
            };
            if let Err(err) = std::fs::copy(c.bundle.join(name), partial.dir.join(name)) {
                write_failures.push(format!(
                    "{}: not copied from {}: {err}",
                    Path::new(name).display(),
                    c.bundle.display()
                ));
            }
        }
    }
    if let Some(why) = lost.lock().ok().and_then(|l| l.clone()) {
        short.insert(0, why);
    }
    let out_of_time = Instant::now() >= deadline;
    if out_of_time {
        short.push(format!(
            "the stop budget of {} s ran out; what was gathered is kept",
            job.budget.as_secs_f64()
        ));
    }
    let new_pages = e.kernel.mem.snapshot_pages();
    // Cut short by the stop ceiling (not by a target gone): the next capture of this hang
    // goes on from the first statement not run to its end.
    let gone = lost.lock().ok().is_some_and(|l| l.is_some()) || e.target_gone().is_some();
    // Not after a stop of the machine's own (its state is that moment's), nor when this part
    // made no progress (the next would only do the same), nor past the memory it may keep.
    let progressed = earlier.is_none() || finished > 0;
    let kept_bytes: usize = earlier.map_or(0, |c| c.pages.values().map(Vec::len).sum::<usize>())
        + new_pages.values().map(Vec::len).sum::<usize>();
    let unfinished = (out_of_time
        && !gone
        && progressed
        && job.trigger.kind != "stopped"
        && kept_bytes <= MAX_CONTINUATION_PAGES
        && first + finished < stmts.len())
    .then(|| {
        // The events of the statements run to their end (not those of the one cut, nor the
        // run's closing error).
        let new_events = events.len() - carried - usize::from(halted.is_some());
        let keep = carried
            + tops
                .get(finished)
                .copied()
                .unwrap_or(new_events)
                .min(new_events);
        let mut pages = earlier.map(|c| c.pages.clone()).unwrap_or_default();
        pages.extend(new_pages.iter().map(|(k, v)| (*k, v.clone())));
        Continuation {
            bundle: PathBuf::new(),
            stamp: earlier.map_or_else(|| stamp.to_string(), |c| c.stamp.clone()),
            made: Instant::now(),
            trigger_kind: job.trigger.kind.clone(),
            origin: origin.clone(),
            kernel_base: e.kernel.base,
            build: e.kernel.build,
            next: first + finished,
            vars: vars.clone(),
            engine: engine_state,
            events: events[..keep].to_vec(),
            pages,
            parts: earlier.map_or(1, |c| c.parts + 1),
        }
    });
    let cost = e.kernel.mem.stats().since(&before);
    Ok(Gathered {
        partial,
        stamp: stamp.to_string(),
        reason,
        origin,
        bugcheck,
        description: e.kernel.mem.info().description.clone(),
        build: e.kernel.build,
        kernel_base: e.kernel.base,
        round_trips: cost.transport.round_trips,
        bytes: cost.transport.bytes,
        seconds: start.elapsed().as_secs_f64(),
        events,
        earlier: earlier.map(|c| (carried, c.bundle.clone(), c.stamp.clone(), c.parts)),
        unfinished,
        snapshot: header.map(|h| {
            // Beneath what this part read, what the earlier parts read.
            let mut pages = earlier.map(|c| c.pages.clone()).unwrap_or_default();
            pages.extend(new_pages);
            (h, pages)
        }),
        write_failures,
        short,
    })
}

/// Writes the bundle of `g` and publishes it: under its final name when every file was
/// written and everything was gathered, else under the name ending `-incomplete`, with
/// report.txt and report.json saying what is missing and why. When even those two cannot be
/// written nothing is published and the error says what could not be written. `stopped` is
/// how long the target was kept stopped for the capture (None: it stays stopped).
pub fn write(
    g: Gathered,
    job: &Job,
    stopped: Option<f64>,
    link: Option<&kdnet_live::Traffic>,
) -> anyhow::Result<Captured> {
    let Gathered {
        partial,
        stamp,
        reason,
        origin,
        bugcheck,
        description,
        build,
        kernel_base,
        round_trips,
        bytes,
        seconds,
        events,
        earlier,
        mut unfinished,
        snapshot,
        write_failures,
        short,
    } = g;
    let dir = partial.dir.clone();
    let carried = earlier.as_ref().map_or(0, |e| e.0);
    let mut body = String::new();
    let mut steps = Vec::with_capacity(events.len());
    let mut texts = Vec::new();
    for (i, (v, t, command)) in events.into_iter().enumerate() {
        if i == carried
            && let Some((_, bundle, started, parts)) = &earlier
        {
            body.push_str(&format!(
                "\n=== the capture went on here, at {stamp}: what is above was gathered by {} begun {started}, cut short by the stop ceiling (the last: {})\n\n",
                if *parts == 1 { "the capture".to_string() } else { format!("{parts} captures") },
                bundle.display()
            ));
        }
        body.push_str(&t);
        if let Some(c) = command {
            texts.push((c, t));
        }
        steps.push(v);
    }
    let failed_steps = steps
        .iter()
        .filter(|v| v.get("error").is_some_and(|e| !e.is_null()))
        .count();
    let mut missing = write_failures;
    let snapshot_error = match snapshot {
        Ok((header, pages)) => {
            match dump::write_dump(
                &dir.join("snapshot.dmp"),
                &header,
                dump::WriteKind::Bitmap,
                &pages,
            ) {
                Ok(_) => None,
                Err(e) => Some(e.to_string()),
            }
        }
        Err(e) => Some(e),
    };
    if let Some(e) = &snapshot_error {
        missing.insert(0, format!("snapshot.dmp: {e}"));
    }
    let found = findings(&steps, bugcheck, &job.trigger);
    let graded = summary(&found);
    let lines: Vec<String> = graded.iter().map(|(_, l)| l.clone()).collect();
    let severities: Vec<&str> = graded.iter().map(|(s, _)| s.name()).collect();
    let finished = super::utc_stamp(super::now_secs());
    let stopped_seconds = stopped.unwrap_or(seconds);
    let incomplete = |missing: &[String]| -> Option<String> {
        let mut why = short.clone();
        if !missing.is_empty() {
            why.push(format!("not written: {}", missing.join("; ")));
        }
        (!why.is_empty()).then(|| why.join("; "))
    };
    let info = |missing: &[String]| {
        let incomplete = incomplete(missing);
        json!({
            "schema": kdnet_commands::registry::SCHEMA_VERSION,
            "target": job.name,
            "tags": job.tags,
            "description": description,
            "build": build,
            "kernel_base": kdnet_commands::hex::Hex(kernel_base),
            "trigger": job.trigger,
            "bugcheck": bugcheck.map(|(c, p)| json!({
                "code": c,
                "parameters": p.map(kdnet_commands::hex::Hex),
            })),
            "started": stamp,
            "finished": finished,
            "stopped_seconds": stopped_seconds,
            "left_stopped": stopped.is_none(),
            "round_trips": round_trips,
            "bytes": bytes,
            "link": link,
            "script": origin,
            "complete": incomplete.is_none(),
            "incomplete": incomplete,
            "not_written": missing,
            "snapshot": snapshot_error.as_ref().map_or(json!("snapshot.dmp"), |e| json!({ "error": e })),
            "findings": found,
            "summary": lines,
            "summary_severity": severities,
            "continues": earlier.as_ref().map(|(n, bundle, started, parts)| json!({
                "bundle": bundle,
                "started": started,
                "steps": n,
                "parts": parts,
            })),
            "steps": steps,
        })
    };
    // The page first: if it cannot be written, the reports say so.
    if let Err(e) = private_file(
        &dir.join("report.html"),
        html::page(&info(&missing), &texts).as_bytes(),
    ) {
        missing.push(format!("report.html: cannot write: {e}"));
    }
    let info = info(&missing);
    let incomplete = incomplete(&missing);
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
    if let Some(text) = job.trigger.hit.as_ref().and_then(|h| h["text"].as_str()) {
        header.push_str("Hit:\n");
        for l in text.lines() {
            header.push_str(&format!("  {l}\n"));
        }
    }
    header.push_str(&format!(
        "Target:   {description}; build {build}; kernel base {}\n",
        addr(kernel_base)
    ));
    header.push_str(&format!(
        "Time:     {stamp} to {finished}; target stopped {stopped_seconds:.1} s for the capture{}\n",
        if stopped.is_none() {
            " and left stopped"
        } else {
            ""
        }
    ));
    header.push_str(&format!(
        "Cost:     {round_trips} round trips, {bytes} bytes; script {origin}\n"
    ));
    if let Some(l) = link {
        header.push_str(&format!("Session:  {}\n", l.summary()));
    }
    if let Some((n, bundle, started, parts)) = &earlier {
        header.push_str(&format!(
            "Continues: {} of this hang begun {started}, cut short by the stop ceiling (the last: {}): the first {n} steps below are theirs, then what they did not run\n",
            if *parts == 1 { "the capture".to_string() } else { format!("{parts} captures") },
            bundle.display()
        ));
    }
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
    // Without these two nothing tells what the bundle holds: no bundle then.
    let reports = private_file(&dir.join("report.txt"), header.as_bytes())
        .map_err(|e| format!("report.txt: {e}"))
        .and_then(|()| {
            private_file(&dir.join("report.json"), format!("{info:#}\n").as_bytes())
                .map_err(|e| format!("report.json: {e}"))
        });
    if let Err(e) = reports {
        anyhow::bail!(
            "cannot write the bundle's report in {}: {e}{}",
            job.out.display(),
            if missing.is_empty() {
                String::new()
            } else {
                format!(" (nor {})", missing.join("; "))
            }
        );
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
    let final_dir = partial.publish(&final_dir)?;
    if let Some(u) = &mut unfinished {
        u.bundle = final_dir.clone();
    }
    Ok(Captured {
        dir: final_dir,
        complete: incomplete.is_none(),
        failed_steps,
        summary: lines,
        round_trips,
        bytes,
        seconds: stopped_seconds,
        continues: earlier.map(|e| e.1),
        unfinished,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The summary's lines without their severities.
    fn texts(s: Vec<(Severity, String)>) -> Vec<String> {
        s.into_iter().map(|(_, l)| l).collect()
    }

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
            hit: None,
        };
        let f = findings(&steps, None, &t);
        assert_eq!(f["commit_failures"], 48440);
        assert!(
            f["deadlock_cycles"].is_null(),
            "a failed step gives nothing"
        );
        let graded = summary(&f);
        assert!(
            graded.contains(&(
                Severity::Warning,
                "1854 NBLs pending: My Ethernet holds 1854".to_string()
            )),
            "{graded:?}"
        );
        let s = texts(graded);
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
            texts(summary(&unread)),
            [
                "9 NBLs pending: holder ffff1234 (its name could not be read: read of 0x10 bytes at 0x5 failed: target: no reply) holds 9"
            ]
        );
        // `!locks -v` lists every resource; only held ones are findings, the first 20 by name.
        let many: Vec<Value> = (0..30u64)
            .map(|i| json!({ "address": 0x1000 + i, "state": "exclusive", "exclusive_owner": 1 }))
            .chain((0..1000u64).map(|i| json!({ "address": 0x9000 + i, "state": "available" })))
            .collect();
        let f = findings(
            &[json!({ "command": "!locks -v", "result": { "held": many } })],
            None,
            &t,
        );
        assert_eq!(f["locks_held"].as_array().unwrap().len(), 30);
        let graded = summary(&f);
        assert!(
            graded.iter().all(|(sev, _)| *sev == Severity::Information),
            "held without waiters: {graded:?}"
        );
        let s = texts(graded);
        assert_eq!(s.len(), 21, "{s:?}");
        assert_eq!(
            s[20],
            "and 10 more held locks (report.json: findings.locks_held)"
        );
        // After failed reads the holder's name is empty: it is said to be unreadable.
        let steps = vec![
            json!({ "command": "!ndiskd.pendingnbls", "result": { "pending": 1854,
            "holders": [ { "handle": 0xffffa001u64, "name": "", "count": 1854 },
                         { "name": null, "count": 2 } ] } }),
        ];
        let s = texts(summary(&findings(&steps, None, &t)));
        assert_eq!(
            s,
            vec![
                "1854 NBLs pending: holder ffffa001 (its name could not be read) holds 1854; \
an unknown holder (its name could not be read) holds 2"
                    .to_string()
            ]
        );
    }

    #[test]
    fn severities_and_addresses_as_strings() {
        // Addresses may come as numbers or as "0x" strings of 16 digits; both read alike.
        let f = json!({
            "bugcheck": { "code": 0x44, "parameters": [0, 0, 0, 0] },
            "deadlock_cycles": [ { "threads": ["0xffffc18a00120638", 0xffffc18a00130638u64] } ],
            "locks_held": [ { "address": "0xfffff80012345678", "state": "exclusive",
                "exclusive_owner": "0xffffc18a00120638", "exclusive_waiters": 1, "shared_waiters": 0 } ],
            "top_pool_tags": [ { "tag": "Muta", "nonpaged_bytes": 4096 } ],
        });
        assert_eq!(
            summary(&f),
            [
                (Severity::Error, "bugcheck 0x44".to_string()),
                (
                    Severity::Error,
                    "deadlock: 2 threads wait for each other (ffffc18a00120638, ffffc18a00130638)"
                        .to_string()
                ),
                (
                    Severity::Warning,
                    "lock fffff800`12345678 held exclusive by thread ffffc18a00120638, 1 waiter(s)"
                        .to_string()
                ),
                (
                    Severity::Information,
                    "top pool tag Muta (4096 nonpaged bytes): mutant objects".to_string()
                ),
            ]
        );
    }

    #[test]
    fn the_chain_goes_on_past_the_last_owner() {
        // A thread owning a lock others wait for waits itself for a rundown in NDIS: the
        // packets' holder is where the chain ends.
        let t = Trigger {
            kind: "manual".into(),
            detail: String::new(),
            sample: None,
            hit: None,
        };
        let steps = vec![
            json!({ "command": "!deadlock", "result": {
                "cycles": [], "chains": [], "notes": [],
                "edges": [ { "waiter": 1, "object": 10, "symbol": "nt!PiEngineLock",
                             "kind": "ERESOURCE (exclusive wait)", "owner": "0x0000000000000002" } ],
                "threads": [
                    { "thread": 1, "image": "System", "wait_reason": "WrResource", "waits": [] },
                    { "thread": 2, "image": "System", "wait_reason": "Executive",
                      "blocker": "nt!ExWaitForRundownProtectionReleaseCacheAware+0xd6",
                      "waits": [ { "object": "0xffff800000001020", "type_name": "NotificationEvent", "symbol": null } ] },
                ] } }),
            json!({ "command": "!thread 2", "result": { "thread": 2, "frames": [
                { "call_site": "nt!ExWaitForRundownProtectionReleaseCacheAware+0xd6" },
                { "call_site": "tcpip!FlPnpEvent+0x1c2" },
                { "call_site": "ndis+0x2abf" } ] } }),
            json!({ "command": "!ndiskd.pendingnbls", "result": { "pending": 1854,
                "holders": [ { "handle": "0xffff900000002000", "name": "My Ethernet", "kind": "NetAdapter", "count": 1854 } ] } }),
        ];
        let f = findings(&steps, None, &t);
        assert_eq!(
            f["wait_ends"],
            json!([ { "thread": 2, "object": "0xffff800000001020", "type_name": "NotificationEvent",
                      "symbol": null, "via": "rundown protection", "held_by": ["0xffff900000002000"] } ])
        );
        // Without a stack through NDIS the holder is not guessed.
        let f = findings(&[steps[0].clone(), steps[2].clone()], None, &t);
        assert_eq!(f["wait_ends"][0]["held_by"], json!([]));
        assert_eq!(f["wait_ends"][0]["via"], "rundown protection");
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
