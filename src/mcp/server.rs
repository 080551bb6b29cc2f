//! The MCP tools: each with its input schema, its output schema (the structured result is
//! exactly what the schema says), annotations, and a text alongside for people. Every call has
//! a deadline; control that changes a target or writes files on this host is refused without
//! `--allow-control`.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::ErrorData as McpError;
use rmcp::handler::server::ServerHandler;
use rmcp::handler::server::tool::{schema_for_input, schema_for_output};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, Resource, ResourceContents, ServerCapabilities,
    ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::{RequestContext, RoleServer};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::pages::{Page, Pages};
use super::sources::{ANSWER_WITHIN, CAPTURE_WITHIN, Dump, Events, Watcher};

/// A `run`'s time when not given.
pub const RUN_DEFAULT: Duration = Duration::from_secs(10);
/// The most a `run` may be given.
pub const RUN_MAX: Duration = Duration::from_secs(300);

/// What the server was started with.
pub struct Settings {
    /// Control allowed (breaking in and leaving a target stopped; commands that change a
    /// target or write files on this host).
    pub allow_control: bool,
    /// Results larger than this (bytes of JSON) are stored and summarised.
    pub max_result_bytes: usize,
    /// The symbol path for dumps.
    pub symbols: Option<String>,
    /// Directories bundles are looked for in (besides where the watchers' last bundles are).
    pub bundle_dirs: Vec<PathBuf>,
    /// Served to other machines (`--listen`): opening files on this host needs
    /// --allow-control too.
    pub remote: bool,
}

/// The server's state, shared by every session.
pub struct State {
    settings: Settings,
    watchers: Vec<Arc<Watcher>>,
    dumps: Mutex<BTreeMap<String, Arc<Dump>>>,
    events: Arc<Mutex<Events>>,
    pages: Mutex<Pages>,
    /// Targets this server broke into with `break_in` (by watcher socket and name): its `run`s
    /// on them go on its own connection, which holds them.
    held: Mutex<std::collections::BTreeSet<(PathBuf, String)>>,
}

/// How long the watcher may take to break in (its own bound is 10 s, and opening the kernel
/// model may fetch symbols).
const BREAK_WITHIN: Duration = Duration::from_secs(60);

/// The MCP server (cheap to clone: one per HTTP session, all sharing the state).
#[derive(Clone)]
pub struct Server {
    state: Arc<State>,
}

impl Server {
    /// A server over `watchers` and `dumps`, with the watchers' events in `events`.
    pub fn new(
        settings: Settings,
        watchers: Vec<Arc<Watcher>>,
        dumps: Vec<(String, Dump)>,
        events: Arc<Mutex<Events>>,
    ) -> Server {
        Server {
            state: Arc::new(State {
                settings,
                watchers,
                dumps: Mutex::new(dumps.into_iter().map(|(n, d)| (n, Arc::new(d))).collect()),
                events,
                pages: Mutex::new(Pages::default()),
                held: Mutex::new(Default::default()),
            }),
        }
    }
}

impl Server {
    /// Calls a tool as a client would, without the protocol's framing: its structured result,
    /// or its error's text (the benchmark's way in).
    pub async fn call_json(&self, name: &str, args: Value) -> Result<Value, String> {
        let mut req = CallToolRequestParams::new(name.to_string());
        if let Value::Object(m) = args {
            req = req.with_arguments(m);
        }
        match self.state.call(&req).await? {
            CallToolResponse::Complete(r) => {
                if r.is_error == Some(true) {
                    return Err(r
                        .content
                        .first()
                        .and_then(|c| c.as_text().map(|t| t.text.clone()))
                        .unwrap_or_default());
                }
                r.structured_content
                    .ok_or_else(|| "no structured result".into())
            }
            _ => Err("an answer that is not a result".into()),
        }
    }
}

// ----- inputs and outputs -----

/// `targets`: no arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

/// A target by name.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetArg {
    /// The target's name (as `targets` lists it).
    pub target: String,
}

/// `run`'s arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunArgs {
    /// The target's name (as `targets` lists it).
    pub target: String,
    /// One command line in WinDbg's syntax, `;`-separated commands (`!locks; !process 0 0`).
    pub command: String,
    /// How long the commands may take, in milliseconds (default 10000, at most 300000): past
    /// it the command under way stops with what it has and says so.
    pub timeout_ms: Option<u64>,
}

/// `output`'s arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputArgs {
    /// The stored result's id (`out-N`, as a `run` or `bundle` gave it).
    pub id: String,
    /// The first line (0-based).
    pub offset: Option<usize>,
    /// Lines to give (default 200, at most 2000).
    pub limit: Option<usize>,
    /// Only the lines containing this (case-insensitive).
    pub filter: Option<String>,
    /// Also the stored JSON, whole.
    pub json: Option<bool>,
}

/// `events`' arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsArgs {
    /// Events after this one (0: from the oldest kept); `next_cursor` of the last answer.
    pub cursor: Option<u64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// `bundles`' arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BundlesArgs {
    /// Only this target's bundles.
    pub target: Option<String>,
}

/// `bundle`'s arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BundleArgs {
    /// The bundle: its path, or its directory's name as `bundles` lists it.
    pub bundle: String,
}

/// `open_dump`'s arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenDumpArgs {
    /// The dump file on the server's host.
    pub path: String,
    /// The name to give it (default: the file's name without its extension).
    pub name: Option<String>,
}

/// A target's state.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TargetState {
    /// Its name.
    pub name: String,
    /// `watched` (a watcher's target) or `dump`.
    pub kind: String,
    /// `running`, `stopped`, `offline`, `wrong-key`, `sampling`, `capturing`, … (`dump` for a
    /// dump).
    pub state: String,
    /// What goes with the state (why it stopped, what it waits for).
    pub detail: String,
    /// The Windows build (a watched target's once it was first stopped).
    pub build: Option<u32>,
    /// Since when (seconds since 1970), for a watched target.
    pub since: Option<u64>,
    /// Its tags.
    pub tags: Vec<String>,
    /// Bundles written for it.
    pub captures: Option<u32>,
    /// The last bundle.
    pub last_bundle: Option<String>,
    /// The last event the watcher reported for it.
    pub last_event: Option<Value>,
    /// The watcher's control socket, or the dump's path.
    pub source: String,
}

/// `targets`' result.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TargetsOut {
    /// Every target.
    pub targets: Vec<TargetState>,
    /// Watchers that did not answer.
    pub unreachable: Vec<String>,
}

/// A result too long to give whole, stored.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Stored {
    /// Its id, for `output`.
    pub id: String,
    /// Bytes of its JSON.
    pub bytes: usize,
    /// Lines of its text.
    pub lines: usize,
    /// Its first lines.
    pub head: Vec<String>,
}

/// One command's result in a `run`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CommandResult {
    /// The command.
    pub command: String,
    /// Whether it worked.
    pub ok: bool,
    /// Whether its result is whole.
    pub complete: bool,
    /// Why not, when not.
    pub incomplete: Vec<String>,
    /// Its error, when it failed.
    pub error: Option<String>,
    /// Its typed result (the schema its command publishes), unless the run's output was
    /// stored.
    pub result: Option<Value>,
    /// Its text as WinDbg would print it, unless the run's output was stored.
    pub text: Option<String>,
    /// Round trips, bytes and time it cost.
    pub cost: Option<Value>,
}

/// `run`'s result.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RunOut {
    /// The target.
    pub target: String,
    /// Each command's result, in order.
    pub results: Vec<CommandResult>,
    /// Whether every command worked and every result is whole.
    pub complete: bool,
    /// When the output was too long: where it is stored (the results then carry no result
    /// or text).
    pub stored: Option<Stored>,
    /// Whether the server broke in for this run (and let the target go on after it).
    pub broke_in: bool,
    /// The target's state after the call.
    pub state: TargetState,
    /// How long the call took, in milliseconds.
    pub elapsed_ms: u64,
}

/// The answer of `break_in` and `continue`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct StateOut {
    /// The target's state after the call.
    pub state: TargetState,
    /// What the watcher answered.
    pub answer: Value,
}

/// `capture`'s result.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CaptureOut {
    /// The target.
    pub target: String,
    /// The bundle's directory.
    pub bundle: Option<String>,
    /// Whether the bundle is whole.
    pub complete: Option<bool>,
    /// Its findings (report.json's `findings`).
    pub findings: Value,
    /// Its summary lines.
    pub summary: Vec<String>,
    /// Why its report (findings, summary, completeness) is not here, when it is not.
    pub report_error: Option<String>,
    /// The target's state after the call.
    pub state: TargetState,
}

/// A bundle as listed.
#[derive(Debug, Serialize, JsonSchema)]
pub struct BundleInfo {
    /// Its directory.
    pub path: String,
    /// The directory's name.
    pub name: String,
    /// The target.
    pub target: Option<String>,
    /// When the capture started.
    pub started: Option<String>,
    /// What triggered it (`manual`, `sample`, `stopped`, `probe`, `dbgprint`).
    pub trigger: Option<String>,
    /// Whether it is whole.
    pub complete: bool,
}

/// `bundles`' result.
#[derive(Debug, Serialize, JsonSchema)]
pub struct BundlesOut {
    /// Bundles, newest first.
    pub bundles: Vec<BundleInfo>,
    /// The directories looked in.
    pub looked_in: Vec<String>,
}

/// `bundle`'s result.
#[derive(Debug, Serialize, JsonSchema)]
pub struct BundleOut {
    /// Its directory.
    pub path: String,
    /// report.json without the steps (target, trigger, bugcheck, completeness, findings,
    /// summary, cost).
    pub report: Value,
    /// report.txt, stored for `output`.
    pub text: Option<Stored>,
    /// The files in it.
    pub files: Vec<String>,
}

/// `events`' result.
#[derive(Debug, Serialize, JsonSchema)]
pub struct EventsOut {
    /// The events, oldest first: `[number, event]`.
    pub events: Vec<(u64, Value)>,
    /// The cursor to ask from next.
    pub next_cursor: u64,
    /// Events after the cursor that were dropped before they were read.
    pub lost: u64,
}

/// `close`'s result.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Closed {
    /// The dump closed.
    pub closed: String,
}

// ----- the tools -----

fn annotations(read_only: bool, destructive: bool, idempotent: bool) -> ToolAnnotations {
    ToolAnnotations::new()
        .read_only(read_only)
        .destructive(destructive)
        .idempotent(idempotent)
        .open_world(false)
}

fn tool<I: JsonSchema + 'static, O: JsonSchema + 'static>(
    name: &'static str,
    description: &'static str,
    a: ToolAnnotations,
) -> Tool {
    let input = schema_for_input::<I>().unwrap_or_else(|e| {
        // A programming error, caught by the tests that list the tools.
        panic!("the input schema of {name}: {e}")
    });
    Tool::new(name, description, input)
        .with_raw_output_schema(schema_for_output::<O>())
        .with_annotations(a)
}

/// Every tool.
pub fn tools() -> Vec<Tool> {
    vec![
        tool::<NoArgs, TargetsOut>(
            "targets",
            "Every target with its state (offline, wrong key, running, stopped and why, capturing), its last event and last bundle; and each dump opened.",
            annotations(true, false, true),
        ),
        tool::<RunArgs, RunOut>(
            "run",
            "Runs one command line (WinDbg syntax, `;`-separated: `!locks; !process 0 0`) on a target and returns each command's typed result, its text and its cost, then the target's state. A running target is broken into for the run and let go on after it; a stopped one stays stopped. Output over the size limit is stored: page it with `output`.",
            annotations(false, false, false),
        ),
        tool::<OutputArgs, Page>(
            "output",
            "Pages through a stored result (`out-N`): lines from an offset, optionally only those containing a string; `json` adds the stored JSON whole.",
            annotations(true, false, true),
        ),
        tool::<TargetArg, StateOut>(
            "break_in",
            "Breaks into a target and keeps it stopped until `continue` (or until this server goes away, when the watcher lets it go on after its lease). Needs --allow-control.",
            annotations(false, true, true),
        ),
        tool::<TargetArg, StateOut>(
            "continue",
            "Lets a stopped target run; the state after says whether it runs, or what stopped it again.",
            annotations(false, false, true),
        ),
        tool::<TargetArg, CaptureOut>(
            "capture",
            "Captures a bundle of a target now with the watcher's capture script (breaks in, gathers, lets it go on): the bundle's path, findings and summary.",
            annotations(false, false, false),
        ),
        tool::<BundlesArgs, BundlesOut>(
            "bundles",
            "Lists the bundles written (target, time, trigger, whole or not), newest first.",
            annotations(true, false, true),
        ),
        tool::<BundleArgs, BundleOut>(
            "bundle",
            "Reads one bundle: report.json's target, trigger, bugcheck, completeness, findings and summary; report.txt is stored for `output`.",
            annotations(true, false, true),
        ),
        tool::<EventsArgs, EventsOut>(
            "events",
            "The watchers' event stream since a cursor (state changes, samples, captures, notes).",
            annotations(true, false, false),
        ),
        tool::<OpenDumpArgs, TargetState>(
            "open_dump",
            "Opens a crash dump on the server's host as a target for `run`.",
            annotations(false, false, false),
        ),
        tool::<TargetArg, Closed>(
            "close",
            "Closes a dump opened with `open_dump` or --dump.",
            annotations(false, false, true),
        ),
    ]
}

/// Verbs that change a target or write files on this host: refused in `run` without
/// --allow-control.
const CONTROL_VERBS: &[&str] = &[
    ".writemem",
    ".dump",
    ".logopen",
    ".logappend",
    ".logclose",
    ".snapshot",
    ".reboot",
    ".crash",
    "eb",
    "ew",
    "ed",
    "eq",
    "ea",
    "eu",
    "e",
    "f",
    "bp",
    "bu",
    "bm",
    "ba",
    "bc",
    "bd",
    "be",
    "g",
    "gc",
    "gh",
    "gn",
    "gu",
    "p",
    "t",
    "pc",
    "tc",
    "wrmsr",
    "o",
    "ob",
    "ow",
    "od",
];

/// Verbs that change where symbols come from (and so write files in the directory given and
/// fetch what the path names) when given an argument.
const PATH_VERBS: &[&str] = &[".sympath", ".sympath+", ".symfix", ".symfix+"];

/// The control verb a command line uses, when it uses one: each piece between `;`, `{`, `}`
/// and line ends, an assignment's right-hand side (`$x = …`) taken as its command.
pub fn control_verb(line: &str) -> Option<String> {
    line.split([';', '{', '}', '\n', '\r'])
        .filter_map(|piece| {
            let piece = piece.trim();
            let piece = match piece.strip_prefix('$').and_then(|r| r.split_once('=')) {
                Some((_, rhs)) => rhs.trim(),
                None => piece,
            };
            let mut words = piece.split_whitespace();
            let verb = words.next()?.trim_start_matches('!').to_ascii_lowercase();
            let has_args = words.next().is_some();
            (CONTROL_VERBS.contains(&verb.as_str())
                || (has_args && PATH_VERBS.contains(&verb.as_str())))
            .then_some(verb)
        })
        .next()
}

fn structured<T: Serialize>(v: &T, text: String) -> CallToolResponse {
    let value = serde_json::to_value(v).unwrap_or_else(|e| json!({ "error": e.to_string() }));
    let mut r = CallToolResult::structured(value);
    r.content = vec![ContentBlock::text(text)];
    r.into()
}

fn failed(message: impl Into<String>) -> CallToolResponse {
    CallToolResult::error(vec![ContentBlock::text(message.into())]).into()
}

fn args<T: for<'de> Deserialize<'de>>(req: &CallToolRequestParams) -> Result<T, String> {
    let v = Value::Object(req.arguments.clone().unwrap_or_default());
    serde_json::from_value(v).map_err(|e| format!("{}: bad arguments: {e}", req.name))
}

/// Bounds a call: past `within` it is an error saying so.
async fn within<T>(
    d: Duration,
    what: &str,
    f: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    match tokio::time::timeout(d, f).await {
        Ok(r) => r,
        Err(_) => Err(format!("{what}: no answer within {} ms", d.as_millis())),
    }
}

impl State {
    /// The watched targets by name, with their watcher.
    async fn watched(&self) -> (Vec<(TargetState, Arc<Watcher>)>, Vec<String>) {
        let mut out = Vec::new();
        let mut unreachable = Vec::new();
        for w in &self.watchers {
            match w.targets().await {
                Ok(list) => {
                    for t in list {
                        let name = t["name"].as_str().unwrap_or("").to_string();
                        let last_event = self.last_event(&name);
                        out.push((
                            TargetState {
                                name,
                                kind: "watched".into(),
                                state: t["state"].as_str().unwrap_or("").into(),
                                detail: t["detail"].as_str().unwrap_or("").into(),
                                build: t["build"].as_u64().map(|b| b as u32),
                                since: t["since"].as_u64(),
                                tags: strings(&t["tags"]),
                                captures: t["captures"].as_u64().map(|c| c as u32),
                                last_bundle: t["last_bundle"].as_str().map(str::to_string),
                                last_event,
                                source: w.path.display().to_string(),
                            },
                            w.clone(),
                        ));
                    }
                }
                Err(e) => unreachable.push(format!("{}: {e}", w.path.display())),
            }
        }
        (out, unreachable)
    }

    fn last_event(&self, name: &str) -> Option<Value> {
        let ev = self.events.lock().ok()?;
        let (all, _, _) = ev.since(0, usize::MAX);
        all.into_iter()
            .rev()
            .find(|(_, v)| v["target"] == name)
            .map(|(_, v)| v)
    }

    fn dump_state(name: &str, d: &Dump) -> TargetState {
        TargetState {
            name: name.to_string(),
            kind: "dump".into(),
            state: "dump".into(),
            detail: d.description.clone(),
            build: Some(d.build),
            since: None,
            tags: Vec::new(),
            captures: None,
            last_bundle: None,
            last_event: None,
            source: d.path.display().to_string(),
        }
    }

    async fn target(&self, name: &str) -> Result<Found, String> {
        if let Some(d) = self.dumps.lock().ok().and_then(|m| m.get(name).cloned()) {
            return Ok(Found::Dump(Self::dump_state(name, &d), d));
        }
        let (watched, unreachable) = self.watched().await;
        if let Some((s, w)) = watched.iter().find(|(s, _)| s.name == name) {
            return Ok(Found::Watched(s.clone(), w.clone()));
        }
        let mut known: Vec<String> = watched.into_iter().map(|(s, _)| s.name).collect();
        if let Ok(m) = self.dumps.lock() {
            known.extend(m.keys().cloned());
        }
        let mut msg = format!("no target {name:?} (known: {})", known.join(", "));
        if !unreachable.is_empty() {
            msg.push_str(&format!(
                "; watchers not answering: {}",
                unreachable.join("; ")
            ));
        }
        Err(msg)
    }

    async fn state_of(&self, name: &str) -> TargetState {
        match self.target(name).await {
            Ok(Found::Dump(s, _)) | Ok(Found::Watched(s, _)) => s,
            Err(e) => TargetState {
                name: name.to_string(),
                kind: "unknown".into(),
                state: "unknown".into(),
                detail: e,
                build: None,
                since: None,
                tags: Vec::new(),
                captures: None,
                last_bundle: None,
                last_event: None,
                source: String::new(),
            },
        }
    }

    /// Whether this server broke into the target (and holds it).
    fn holds(&self, w: &Watcher, name: &str) -> bool {
        self.held
            .lock()
            .is_ok_and(|h| h.contains(&(w.path.clone(), name.to_string())))
    }

    fn set_held(&self, w: &Watcher, name: &str, on: bool) {
        if let Ok(mut h) = self.held.lock() {
            let k = (w.path.clone(), name.to_string());
            if on {
                h.insert(k);
            } else {
                h.remove(&k);
            }
        }
    }

    /// Waits (3 s at most) for a target let go on to be seen running, or stopped again.
    async fn settle(&self, w: &Watcher, name: &str) {
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            let resuming = w.targets().await.is_ok_and(|ts| {
                ts.iter()
                    .any(|t| t["name"] == name && t["state"] == "resuming")
            });
            if !resuming {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn targets(&self) -> Result<CallToolResponse, String> {
        let (watched, unreachable) = self.watched().await;
        let mut targets: Vec<TargetState> = watched.into_iter().map(|(s, _)| s).collect();
        if let Ok(m) = self.dumps.lock() {
            targets.extend(m.iter().map(|(n, d)| Self::dump_state(n, d)));
        }
        let text = targets
            .iter()
            .map(|t| format!("{}\t{}\t{}", t.name, t.state, t.detail))
            .collect::<Vec<_>>()
            .join("\n");
        Ok(structured(
            &TargetsOut {
                targets,
                unreachable,
            },
            text,
        ))
    }

    async fn run(&self, a: RunArgs) -> Result<CallToolResponse, String> {
        let started = Instant::now();
        if a.command.trim().is_empty() {
            return Err("run: give a command".into());
        }
        if !self.settings.allow_control
            && let Some(v) = control_verb(&a.command)
        {
            return Err(format!(
                "run: `{v}` changes the target or writes a file on the server's host: refused (the server was not started with --allow-control)"
            ));
        }
        let time = a
            .timeout_ms
            .map_or(RUN_DEFAULT, Duration::from_millis)
            .clamp(Duration::from_millis(1), RUN_MAX);
        let mut broke_in = false;
        let raw: Vec<Value> = match self.target(&a.target).await? {
            Found::Dump(_, d) => {
                within(time + ANSWER_WITHIN, "run", d.run(&a.command, time)).await?
            }
            Found::Watched(s, w) => {
                let req = json!({
                    "op": "run", "target": a.target, "command": a.command,
                    "max_seconds": time.as_secs_f64(),
                });
                if s.state == "stopped" && !self.holds(&w, &a.target) {
                    // Stopped by another client or by itself: run on a connection of its own,
                    // so that holding the target does not pass to this server for good.
                    w.once(&req, time + ANSWER_WITHIN).await?["results"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                } else {
                    // Nothing else may come between the break-in, the run and the going on.
                    let mut held = w.hold(ANSWER_WITHIN).await?;
                    if s.state != "stopped" {
                        let b = w
                            .ok_on(
                                &mut held,
                                &json!({ "op": "break", "target": a.target }),
                                BREAK_WITHIN,
                            )
                            .await?;
                        broke_in = b["already"] != true;
                    }
                    let r = w.ok_on(&mut held, &req, time + ANSWER_WITHIN).await;
                    if broke_in {
                        let c = w
                            .ok_on(
                                &mut held,
                                &json!({ "op": "continue", "target": a.target }),
                                ANSWER_WITHIN,
                            )
                            .await;
                        if let Err(e) = c {
                            // Without this connection the watcher lets it go on after its lease.
                            *held = None;
                            return Err(format!(
                                "run: the target could not be let go on after the run ({e}); the watcher lets it go on after its lease"
                            ));
                        }
                    }
                    drop(held);
                    let v = r?;
                    if broke_in {
                        self.settle(&w, &a.target).await;
                    }
                    v["results"].as_array().cloned().unwrap_or_default()
                }
            }
        };
        if raw.is_empty() {
            return Err(format!(
                "run: the watcher answered no result for {:?}",
                a.command
            ));
        }
        let mut results = Vec::new();
        let mut text = String::new();
        for v in &raw {
            let command = v["command"].as_str().unwrap_or("").to_string();
            let t = v["text"].as_str().unwrap_or("").to_string();
            let error = v["error"].as_str().map(str::to_string);
            if !command.is_empty() {
                text.push_str(&format!("kd> {command}\n"));
            }
            text.push_str(&t);
            if let Some(e) = &error {
                text.push_str(&format!("error: {e}\n"));
            }
            results.push(CommandResult {
                ok: error.is_none(),
                complete: v["complete"] != false,
                incomplete: strings(&v["incomplete"]),
                error,
                result: (!v["result"].is_null()).then(|| v["result"].clone()),
                text: Some(t),
                cost: (!v["cost"].is_null()).then(|| v["cost"].clone()),
                command,
            });
        }
        let complete = results.iter().all(|r| r.ok && r.complete);
        let bytes = serde_json::to_string(&results).map_or(0, |s| s.len());
        let mut stored = None;
        if bytes > self.settings.max_result_bytes {
            let json = serde_json::to_value(&results).unwrap_or(Value::Null);
            let line_count = text.lines().count();
            let head: Vec<String> = text.lines().take(40).map(str::to_string).collect();
            let id = self
                .pages
                .lock()
                .map_err(|_| "the output store failed earlier".to_string())?
                .put(format!("{} on {}", a.command, a.target), &text, json);
            for r in &mut results {
                r.result = None;
                r.text = None;
            }
            text = format!(
                "{}\n… {} lines, {bytes} bytes of JSON in all: stored as {id}; read it with `output` (id {id}, offset, limit, filter)\n",
                head.join("\n"),
                line_count
            );
            stored = Some(Stored {
                id,
                bytes,
                lines: line_count,
                head,
            });
        }
        let state = self.state_of(&a.target).await;
        text.push_str(&format!("[{}: {}]\n", state.name, state.state));
        Ok(structured(
            &RunOut {
                target: a.target,
                results,
                complete,
                stored,
                broke_in,
                state,
                elapsed_ms: started.elapsed().as_millis() as u64,
            },
            text,
        ))
    }

    async fn output(&self, a: OutputArgs) -> Result<CallToolResponse, String> {
        let p = self
            .pages
            .lock()
            .map_err(|_| "the output store failed earlier".to_string())?
            .page(
                &a.id,
                a.offset.unwrap_or(0),
                a.limit.unwrap_or(200),
                a.filter.as_deref(),
                a.json.unwrap_or(false),
            )?;
        let text = p.lines.join("\n");
        Ok(structured(&p, text))
    }

    async fn watched_only(&self, name: &str, what: &str) -> Result<Arc<Watcher>, String> {
        match self.target(name).await? {
            Found::Watched(_, w) => Ok(w),
            Found::Dump(..) => Err(format!("{what}: {name} is a dump")),
        }
    }

    async fn break_in(&self, a: TargetArg) -> Result<CallToolResponse, String> {
        if !self.settings.allow_control {
            return Err("break_in leaves the target stopped: refused (the server was not started with --allow-control); `run` breaks in for its commands and lets the target go on".into());
        }
        let w = self.watched_only(&a.target, "break_in").await?;
        let answer = w
            .ok(&json!({ "op": "break", "target": a.target }), BREAK_WITHIN)
            .await?;
        self.set_held(&w, &a.target, true);
        let state = self.state_of(&a.target).await;
        let text = format!("{}: {} ({})", state.name, state.state, state.detail);
        Ok(structured(&StateOut { state, answer }, text))
    }

    async fn resume(&self, a: TargetArg) -> Result<CallToolResponse, String> {
        let w = self.watched_only(&a.target, "continue").await?;
        let answer = w
            .ok(
                &json!({ "op": "continue", "target": a.target }),
                ANSWER_WITHIN,
            )
            .await?;
        self.set_held(&w, &a.target, false);
        self.settle(&w, &a.target).await;
        let state = self.state_of(&a.target).await;
        let text = if state.state == "stopped" {
            format!(
                "{}: stopped again: {} (something stopped it after it was let go on)",
                state.name, state.detail
            )
        } else {
            format!("{}: {} ({})", state.name, state.state, state.detail)
        };
        Ok(structured(&StateOut { state, answer }, text))
    }

    async fn capture(&self, a: TargetArg) -> Result<CallToolResponse, String> {
        let w = self.watched_only(&a.target, "capture").await?;
        let v = w
            .ok(
                &json!({ "op": "capture", "target": a.target }),
                CAPTURE_WITHIN,
            )
            .await?;
        let bundle = v["bundle"].as_str().map(str::to_string);
        let (report, report_error) = match bundle.as_deref().map(|b| read_report(Path::new(b))) {
            Some(Ok(r)) => (r, None),
            Some(Err(e)) => (
                Value::Null,
                Some(format!(
                    "the bundle's report could not be read here ({e}): a watcher started elsewhere names its bundles from its own working directory"
                )),
            ),
            None => (Value::Null, Some("the watcher named no bundle".to_string())),
        };
        let summary: Vec<String> = strings(&report["summary"]);
        let state = self.state_of(&a.target).await;
        let text = format!(
            "bundle: {}{}\n{}",
            bundle.as_deref().unwrap_or("(none)"),
            report_error
                .as_deref()
                .map_or(String::new(), |e| format!("\n{e}")),
            summary
                .iter()
                .map(|s| format!("  - {s}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        Ok(structured(
            &CaptureOut {
                target: a.target,
                report_error,
                complete: report["complete"].as_bool(),
                findings: report["findings"].clone(),
                summary,
                bundle,
                state,
            },
            text,
        ))
    }

    /// Where bundles may be: the directories given, and those of the watchers' last bundles.
    async fn bundle_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self.settings.bundle_dirs.clone();
        let (watched, _) = self.watched().await;
        for (s, _) in watched {
            if let Some(parent) = s.last_bundle.as_deref().and_then(|b| Path::new(b).parent()) {
                dirs.push(parent.to_path_buf());
            }
        }
        dirs.sort();
        dirs.dedup();
        dirs
    }

    async fn bundles(&self, a: BundlesArgs) -> Result<CallToolResponse, String> {
        let dirs = self.bundle_dirs().await;
        let mut bundles = Vec::new();
        for d in &dirs {
            let Ok(rd) = std::fs::read_dir(d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') || !p.join("report.json").is_file() {
                    continue;
                }
                let r = read_report(&p).unwrap_or(Value::Null);
                let target = r["target"].as_str().map(str::to_string);
                if a.target
                    .as_ref()
                    .is_some_and(|t| target.as_ref() != Some(t))
                {
                    continue;
                }
                bundles.push(BundleInfo {
                    path: p.display().to_string(),
                    name,
                    target,
                    started: r["started"].as_str().map(str::to_string),
                    trigger: r["trigger"]["kind"].as_str().map(str::to_string),
                    complete: r["complete"] == true,
                });
            }
        }
        bundles.sort_by(|a, b| b.started.cmp(&a.started).then(b.name.cmp(&a.name)));
        let text = bundles
            .iter()
            .map(|b| {
                format!(
                    "{}\t{}\t{}{}",
                    b.started.as_deref().unwrap_or("?"),
                    b.trigger.as_deref().unwrap_or("?"),
                    b.path,
                    if b.complete { "" } else { "\t(incomplete)" }
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        Ok(structured(
            &BundlesOut {
                bundles,
                looked_in: dirs.iter().map(|d| d.display().to_string()).collect(),
            },
            text,
        ))
    }

    /// A bundle named by path or directory name, among the known directories only.
    async fn find_bundle(&self, b: &str) -> Result<PathBuf, String> {
        let dirs = self.bundle_dirs().await;
        let p = Path::new(b);
        let candidates: Vec<PathBuf> = if p.is_absolute() || b.contains('/') {
            vec![p.to_path_buf()]
        } else {
            dirs.iter().map(|d| d.join(b)).collect()
        };
        for c in candidates {
            let Ok(real) = c.canonicalize() else {
                continue;
            };
            // Only a bundle in a directory the server knows (no reading elsewhere).
            let inside = dirs.iter().any(|d| {
                d.canonicalize()
                    .is_ok_and(|d| real.parent() == Some(d.as_path()))
            });
            if inside && real.join("report.json").is_file() {
                return Ok(real);
            }
        }
        Err(format!(
            "no bundle {b:?} in {}",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }

    async fn bundle(&self, a: BundleArgs) -> Result<CallToolResponse, String> {
        let dir = self.find_bundle(&a.bundle).await?;
        let mut report = read_report(&dir)?;
        if let Some(m) = report.as_object_mut() {
            m.remove("steps");
        }
        let text = std::fs::read_to_string(dir.join("report.txt")).ok();
        let stored = match &text {
            Some(t) => {
                let id = self
                    .pages
                    .lock()
                    .map_err(|_| "the output store failed earlier".to_string())?
                    .put(format!("report.txt of {}", dir.display()), t, Value::Null);
                Some(Stored {
                    id,
                    bytes: t.len(),
                    lines: t.lines().count(),
                    head: t.lines().take(40).map(str::to_string).collect(),
                })
            }
            None => None,
        };
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        let summary = strings(&report["summary"])
            .iter()
            .map(|s| format!("  - {s}"))
            .collect::<Vec<_>>()
            .join("\n");
        let text = format!("{}\n{summary}", dir.display());
        Ok(structured(
            &BundleOut {
                path: dir.display().to_string(),
                report,
                text: stored,
                files,
            },
            text,
        ))
    }

    async fn events(&self, a: EventsArgs) -> Result<CallToolResponse, String> {
        let (events, next_cursor, lost) = self
            .events
            .lock()
            .map_err(|_| "the event buffer failed earlier".to_string())?
            .since(a.cursor.unwrap_or(0), a.limit.unwrap_or(100).clamp(1, 1000));
        let text = events
            .iter()
            .map(|(n, v)| format!("{n}\t{v}"))
            .collect::<Vec<_>>()
            .join("\n");
        Ok(structured(
            &EventsOut {
                events,
                next_cursor,
                lost,
            },
            text,
        ))
    }

    async fn open_dump(&self, a: OpenDumpArgs) -> Result<CallToolResponse, String> {
        if self.settings.remote && !self.settings.allow_control {
            return Err("open_dump reads a file on the server's host: refused to clients of --listen unless the server was started with --allow-control".into());
        }
        let path = PathBuf::from(&a.path);
        let name = match a.name {
            Some(n) => n,
            None => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .ok_or_else(|| format!("open_dump: {} has no file name", a.path))?,
        };
        if self.target(&name).await.is_ok() {
            return Err(format!(
                "open_dump: a target {name:?} exists: give another name"
            ));
        }
        let symbols = self.settings.symbols.clone();
        let opening = async move {
            tokio::task::spawn_blocking(move || Dump::open(&path, symbols.as_deref()))
                .await
                .map_err(|e| format!("the dump thread failed: {e}"))?
        };
        let d = within(Duration::from_secs(180), "open_dump", opening).await?;
        let s = Self::dump_state(&name, &d);
        self.dumps
            .lock()
            .map_err(|_| "the dump list failed earlier".to_string())?
            .insert(name, Arc::new(d));
        let text = format!("{}: {}", s.name, s.detail);
        Ok(structured(&s, text))
    }

    async fn close(&self, a: TargetArg) -> Result<CallToolResponse, String> {
        let removed = self
            .dumps
            .lock()
            .map_err(|_| "the dump list failed earlier".to_string())?
            .remove(&a.target);
        match removed {
            Some(_) => Ok(structured(
                &Closed {
                    closed: a.target.clone(),
                },
                format!("closed {}", a.target),
            )),
            None => Err(format!(
                "close: {:?} is not an open dump (watched targets are not closed here)",
                a.target
            )),
        }
    }

    async fn call(&self, req: &CallToolRequestParams) -> Result<CallToolResponse, String> {
        match req.name.as_ref() {
            "targets" => {
                args::<NoArgs>(req)?;
                self.targets().await
            }
            "run" => self.run(args(req)?).await,
            "output" => self.output(args(req)?).await,
            "break_in" => self.break_in(args(req)?).await,
            "continue" => self.resume(args(req)?).await,
            "capture" => self.capture(args(req)?).await,
            "bundles" => self.bundles(args(req)?).await,
            "bundle" => self.bundle(args(req)?).await,
            "events" => self.events(args(req)?).await,
            "open_dump" => self.open_dump(args(req)?).await,
            "close" => self.close(args(req)?).await,
            other => Err(format!("no tool {other:?}")),
        }
    }
}

/// What a lookup found.
enum Found {
    Dump(TargetState, Arc<Dump>),
    Watched(TargetState, Arc<Watcher>),
}

/// The strings of a JSON array (none when it is not one).
fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A bundle's report.json.
fn read_report(dir: &Path) -> Result<Value, String> {
    let p = dir.join("report.json");
    let meta = std::fs::metadata(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    // A report is megabytes at most; a file far past that is not one.
    if meta.len() > 256 << 20 {
        return Err(format!(
            "{} is {} bytes: not a report",
            p.display(),
            meta.len()
        ));
    }
    let t = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    serde_json::from_str(&t).map_err(|e| format!("{}: {e}", p.display()))
}

/// A bundle's resource address.
fn resource_uri(path: &str) -> String {
    format!("kdnet-bundle://{path}/report.json")
}

impl ServerHandler for Server {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
        .with_server_info(Implementation::new("kdnet", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Windows kernel debugging over KDNET: `targets` lists the watched machines and open dumps; `run` runs WinDbg commands (`!analyze -v`, `!locks`, `!process 0 7`) and returns typed results; long output is paged with `output`; `capture` writes a bundle; `events` follows the watchers.",
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        tools().into_iter().find(|t| t.name == name)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        if tools().iter().all(|t| t.name != request.name) {
            return Err(McpError::invalid_params(
                format!("no tool {:?}", request.name),
                None,
            ));
        }
        let state = self.state.clone();
        // The call goes on by itself: a client that cancels (or goes away) ends only the wait,
        // never a run half-way between breaking in and letting the target go on.
        let work = tokio::spawn(async move { state.call(&request).await });
        tokio::select! {
            r = work => Ok(match r {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => failed(e),
                Err(e) => failed(format!("the tool failed: {e}")),
            }),
            () = context.ct.cancelled() => Ok(failed(
                "cancelled by the client: what was under way finishes by itself, and a target it broke into is let go on",
            )),
        }
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let dirs = self.state.bundle_dirs().await;
        let mut out = Vec::new();
        for d in dirs {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') || !p.join("report.json").is_file() {
                    continue;
                }
                out.push(
                    Resource::new(resource_uri(&p.display().to_string()), name)
                        .with_description("a capture bundle's report.json")
                        .with_mime_type("application/json"),
                );
            }
        }
        Ok(ListResourcesResult::with_all_items(out))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let Some(path) = request
            .uri
            .strip_prefix("kdnet-bundle://")
            .and_then(|r| r.strip_suffix("/report.json"))
        else {
            return Err(McpError::resource_not_found(
                format!("{} is not a bundle's report", request.uri),
                None,
            ));
        };
        let dir = self
            .state
            .find_bundle(path)
            .await
            .map_err(|e| McpError::resource_not_found(e, None))?;
        let text = std::fs::read_to_string(dir.join("report.json"))
            .map_err(|e| McpError::resource_not_found(e.to_string(), None))?;
        Ok(ReadResourceResult::new(vec![
            ResourceContents::text(text, request.uri.clone()).with_mime_type("application/json"),
        ])
        .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_has_object_schemas() {
        let t = tools();
        assert_eq!(t.len(), 11);
        for tool in &t {
            assert_eq!(tool.input_schema["type"], "object", "{}", tool.name);
            let out = tool.output_schema.as_ref().unwrap();
            assert_eq!(out["type"], "object", "{}", tool.name);
            assert!(tool.annotations.is_some());
        }
        let names: Vec<&str> = t.iter().map(|t| t.name.as_ref()).collect();
        for n in [
            "targets",
            "run",
            "output",
            "break_in",
            "continue",
            "capture",
            "bundles",
            "bundle",
            "events",
            "open_dump",
            "close",
        ] {
            assert!(names.contains(&n), "{n}");
        }
    }

    /// docs/schema/mcp-tools.json is what `tools/list` answers (rewritten with KDNET_BLESS=1).
    #[test]
    fn the_published_tools_are_the_tools() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/schema/mcp-tools.json");
        let now = serde_json::to_string_pretty(&tools()).unwrap() + "\n";
        if std::env::var_os("KDNET_BLESS").is_some() {
            let tmp = path.with_extension("json.tmp");
            std::fs::write(&tmp, &now).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
            return;
        }
        let published = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            published == now,
            "docs/schema/mcp-tools.json is not what the server lists: rerun with KDNET_BLESS=1"
        );
    }

    #[test]
    fn control_verbs_are_found_wherever_they_are() {
        assert_eq!(
            control_verb("!locks; .writemem x 0 L10"),
            Some(".writemem".into())
        );
        assert_eq!(control_verb(".if (1) { bp nt!Foo }"), Some("bp".into()));
        // Every verb that lets the target go on.
        for v in ["g", "gc", "gh", "gn", "gu", "p", "t", "pc", "tc"] {
            assert_eq!(control_verb(&format!("r; {v}")), Some(v.into()), "{v}");
        }
        assert_eq!(control_verb("eb fffff800`00000000 90"), Some("eb".into()));
        assert_eq!(control_verb("!locks; !process 0 0; dt nt!_EPROCESS"), None);
        // A word that only starts like one is not one.
        assert_eq!(control_verb("dps nt!KiProcessorBlock L4; gdt"), None);
        // Lines, assignments, aliases, symbol paths.
        assert_eq!(
            control_verb("!locks\n.writemem /x 0 L1"),
            Some(".writemem".into())
        );
        assert_eq!(
            control_verb("$x = .logappend /x"),
            Some(".logappend".into())
        );
        assert_eq!(
            control_verb(".sympath srv*/tmp/x*http://h"),
            Some(".sympath".into())
        );
        assert_eq!(control_verb(".sympath"), None);
    }
}
