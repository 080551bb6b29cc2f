//! What the watcher watches and how: one target from the command line, or many from a
//! `targets.toml`. Settings come in layers: a target's own, then the command line's, then the
//! file's `[defaults]`, then the built-in ones.
//!
//! ```toml
//! events = "events.jsonl"        # optional; paths are relative to this file
//! control = "watch.sock"         # optional control socket
//! metrics = "127.0.0.1:9464"     # optional: /metrics for Prometheus (loopback unless
//!                                # metrics_listen_any = true)
//!
//! [defaults]
//! out = "captures"
//! sample_every = "5m"
//!
//! [[target]]
//! name = "web-01"
//! port = 50001
//! key_file = "web-01.key"        # or key_env = "WEB01_KEY"
//! target = "10.0.0.5"            # optional: accept only this machine
//! tags = ["containers"]
//! probe = "tcp:10.0.0.5:10250"
//! probe_fail_after = "30s"
//! dbgprint = ["*CimFS*error*"]
//! # capture on a hit (WinDbg's bp/bu/ba, a condition with /w); count only
//! breakpoints = ['bp /w "dwo(@rcx+0x30) == 0xc000000d" nt!IofCompleteRequest']
//! count_breakpoints = ["bp bindflt!BfPreCreate"]
//! max_hit_stop = "10%"           # the share of time judging hits may keep it stopped
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kdnet_commands::ext::hangcheck::Thresholds;
use kdnet_live::Listen;
use serde::Deserialize;

use crate::connect::ConnectArgs;
use crate::duration;

/// The settings any layer may give.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Common {
    /// Where bundles go.
    pub out: Option<PathBuf>,
    /// The capture script.
    pub script: Option<PathBuf>,
    /// Symbol path.
    pub symbols: Option<String>,
    /// Break in this often for a sample.
    pub sample_every: Option<String>,
    /// A wait on a resource, mutant or PnP lock longer than this is a hang.
    pub wait_threshold: Option<String>,
    /// A lock with exclusive waiters held longer than this is a hang.
    pub held_threshold: Option<String>,
    /// The health probe: `tcp:HOST:PORT`, `http:URL` or `cmd:COMMAND`.
    pub probe: Option<String>,
    /// How often the probe runs.
    pub probe_every: Option<String>,
    /// The probe failing this long triggers a capture.
    pub probe_fail_after: Option<String>,
    /// DbgPrint patterns (`*` and `?` wildcards, matched anywhere in a line).
    pub dbgprint: Option<Vec<String>>,
    /// Breakpoints whose hits capture (`bp`, `bu` or `ba` commands as WinDbg takes them).
    pub breakpoints: Option<Vec<String>>,
    /// Breakpoints whose hits are only counted.
    pub count_breakpoints: Option<Vec<String>>,
    /// The share of time the breakpoints' hits may keep the target stopped (`10%`), over
    /// the last 10 s; past it they are taken out for a minute.
    pub max_hit_stop: Option<String>,
    /// How long a capture may keep the target stopped (the older name of `max_stop`'s
    /// capture part).
    pub budget: Option<String>,
    /// The stop ceilings: `DURATION` (every break-in) or `sample=DURATION,capture=DURATION`
    /// (either part may be left out).
    pub max_stop: Option<String>,
    /// How long one capture command may run.
    pub command_budget: Option<String>,
    /// Leave the target stopped after a capture.
    pub leave_stopped: Option<bool>,
    /// Captures per hour per target, at most.
    pub max_per_hour: Option<u32>,
    /// After a capture, no other for this long (a capture asked for by hand is never held back).
    pub cooldown: Option<String>,
    /// A command run after each capture: the bundle's path as its argument, the findings on
    /// its standard input.
    pub on_capture: Option<String>,
    /// How long that command may run.
    pub on_capture_timeout: Option<String>,
    /// A second directory each bundle is copied into (a mounted share).
    pub copy_to: Option<PathBuf>,
}

macro_rules! first {
    ($layers:expr; $($f:ident),*) => {
        Common { $($f: $layers.iter().find_map(|l| l.$f.clone()),)* }
    };
}

impl Common {
    /// The first setting of each field, in layer order.
    pub fn merge(layers: &[&Common]) -> Common {
        first!(layers; out, script, symbols, sample_every, wait_threshold, held_threshold, probe,
            probe_every, probe_fail_after, dbgprint, breakpoints, count_breakpoints, max_hit_stop, budget, max_stop, command_budget, leave_stopped,
            max_per_hour, cooldown, on_capture, on_capture_timeout, copy_to)
    }

    fn resolve_paths(&mut self, dir: &Path) {
        for p in [&mut self.out, &mut self.script, &mut self.copy_to]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
    }
}

/// A health probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Connect to HOST:PORT.
    Tcp(String),
    /// GET the URL; 2xx and 3xx are healthy.
    Http(String),
    /// Run the command (through the shell); exit code 0 is healthy.
    Cmd(String),
}

impl Probe {
    /// Parses `tcp:HOST:PORT`, `http:URL` or `cmd:COMMAND`.
    pub fn parse(s: &str) -> Result<Probe, String> {
        let (kind, rest) = s
            .split_once(':')
            .ok_or_else(|| format!("probe {s:?}: give tcp:HOST:PORT, http:URL or cmd:COMMAND"))?;
        if rest.trim().is_empty() {
            return Err(format!("probe {s:?}: nothing after {kind}:"));
        }
        match kind {
            "tcp" => {
                let (_, port) = rest
                    .rsplit_once(':')
                    .ok_or_else(|| format!("probe {s:?}: tcp:HOST:PORT needs a port"))?;
                port.parse::<u16>()
                    .map_err(|_| format!("probe {s:?}: {port:?} is not a port"))?;
                Ok(Probe::Tcp(rest.to_string()))
            }
            "http" | "https" => {
                // `http:http://…`, or a bare `http://…` taken whole.
                let url = if rest.starts_with("//") {
                    s.to_string()
                } else {
                    rest.to_string()
                };
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(format!(
                        "probe {s:?}: the URL must start with http:// or https://"
                    ));
                }
                Ok(Probe::Http(url))
            }
            "cmd" => Ok(Probe::Cmd(rest.to_string())),
            other => Err(format!(
                "probe {s:?}: unknown kind {other:?} (tcp, http or cmd)"
            )),
        }
    }
}

/// What starts a capture, besides the target stopping by itself and a person asking.
#[derive(Debug, Clone)]
pub struct Triggers {
    /// Sample this often.
    pub sample_every: Option<Duration>,
    /// What a sample counts as hung.
    pub thresholds: Thresholds,
    /// The health probe.
    pub probe: Option<Probe>,
    /// How often it runs.
    pub probe_every: Duration,
    /// Failing this long triggers.
    pub probe_fail_after: Duration,
    /// DbgPrint patterns.
    pub dbgprint: Vec<String>,
    /// Breakpoints: a hit captures, or is counted.
    pub breakpoints: Vec<WatchBreakpoint>,
}

/// A breakpoint the watcher keeps in a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchBreakpoint {
    /// The command that sets it (`bp /w "…" nt!IofCompleteRequest`).
    pub command: String,
    /// A hit captures (else it is only counted).
    pub capture: bool,
}

/// Checks a breakpoint command the watcher is given: `bp`, `bu` or `ba`, and no command
/// string (a hit runs the capture script, or is counted).
pub fn watch_breakpoint(command: &str, capture: bool) -> Result<WatchBreakpoint, String> {
    let c = command.trim();
    let verb = c
        .split(|ch: char| ch.is_whitespace() || ch == '/')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    let verb = verb.trim_end_matches(|ch: char| ch.is_ascii_digit());
    if !matches!(verb, "bp" | "bu" | "ba") {
        return Err(format!(
            "breakpoint {c:?}: give a bp, bu or ba command (`bp nt!IofCompleteRequest`)"
        ));
    }
    // A quoted string is a condition only right after /w.
    let mut rest = c;
    while let Some(q) = rest.find('"') {
        let before = rest[..q].trim_end();
        let Some(end) = rest[q + 1..].find('"') else {
            return Err(format!("breakpoint {c:?}: a quote is not closed"));
        };
        if !before.to_ascii_lowercase().ends_with("/w") {
            return Err(format!(
                "breakpoint {c:?}: a watched breakpoint takes no command string: a hit runs the capture script (or is counted); give a condition with /w \"EXPR\""
            ));
        }
        rest = &rest[q + 1 + end + 1..];
    }
    if c.split_whitespace().count() < 2 {
        return Err(format!("breakpoint {c:?}: where?"));
    }
    Ok(WatchBreakpoint {
        command: c.to_string(),
        capture,
    })
}

/// Parses a share of time: `10%` or `0.1`.
pub fn share(name: &str, s: &str) -> Result<f64, String> {
    let t = s.trim();
    let v = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|_| format!("{name}: {s:?} is not a share of time (10% or 0.1)"))?;
    if !(v > 0.0 && v <= 1.0) {
        return Err(format!(
            "{name}: {s:?} must be more than 0 and at most 100%"
        ));
    }
    Ok(v)
}

/// How captures treat the target.
#[derive(Debug, Clone)]
pub struct Policy {
    /// How long a capture may keep the target stopped (its stop ceiling).
    pub budget: Duration,
    /// How long a sample may keep the target stopped (its stop ceiling).
    pub sample_max_stop: Duration,
    /// How long one command may run.
    pub command_budget: Duration,
    /// Leave it stopped afterwards.
    pub leave_stopped: bool,
    /// Captures per hour, at most.
    pub max_per_hour: u32,
    /// Quiet time after a capture.
    pub cooldown: Duration,
    /// The share of time breakpoint hits may keep the target stopped.
    pub max_hit_stop: f64,
}

/// What happens to a bundle once it is written.
#[derive(Debug, Clone, Default)]
pub struct AfterCapture {
    /// Run through the shell with the bundle's path as its argument and the findings JSON
    /// on its standard input.
    pub on_capture: Option<String>,
    /// How long it may run before it is killed.
    pub timeout: Duration,
    /// Copy each bundle here, atomically.
    pub copy_to: Option<PathBuf>,
}

/// One watched target.
#[derive(Debug, Clone)]
pub struct TargetSpec {
    /// Its name in events and bundle names.
    pub name: String,
    /// How to reach it.
    pub host: Listen,
    /// Labels for the operator.
    pub tags: Vec<String>,
    /// Triggers.
    pub triggers: Triggers,
    /// Policy.
    pub policy: Policy,
    /// The capture script (where from, text); None: the built-in one for the reason.
    pub script: Option<(String, String)>,
    /// Where bundles go.
    pub out: PathBuf,
    /// Symbol path.
    pub symbols: Option<String>,
    /// What happens to each bundle once written.
    pub after: AfterCapture,
}

fn dur(name: &str, v: &Option<String>, default: Duration) -> Result<Duration, String> {
    match v {
        Some(s) => duration::parse(s).map_err(|e| format!("{name}: {e}")),
        None => Ok(default),
    }
}

/// How long a sample may keep a target stopped unless told: well under a second at a LAN's
/// round trips (a sample costs about a hundred).
pub const DEFAULT_SAMPLE_MAX_STOP: Duration = Duration::from_millis(500);
/// The share of time breakpoint hits may keep a target stopped unless told.
pub const DEFAULT_MAX_HIT_STOP: f64 = 0.10;
/// How long a capture may keep a target stopped unless told.
pub const DEFAULT_CAPTURE_MAX_STOP: Duration = Duration::from_secs(120);

/// The stop ceilings `max_stop` sets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ceilings {
    /// A sample's.
    pub sample: Option<Duration>,
    /// A capture's.
    pub capture: Option<Duration>,
}

/// Parses `DURATION` (both ceilings) or `sample=DURATION,capture=DURATION` (either part).
pub fn ceilings(s: &str) -> Result<Ceilings, String> {
    let one = |name: &str, v: &str| {
        duration::parse(v.trim())
            .map_err(|e| format!("max_stop: {name}{e}"))
            .and_then(|d| positive("max_stop", d))
    };
    if !s.contains('=') {
        let d = one("", s)?;
        return Ok(Ceilings {
            sample: Some(d),
            capture: Some(d),
        });
    }
    let mut c = Ceilings::default();
    for part in s.split(',') {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            format!("max_stop: {part:?}: write DURATION or sample=DURATION,capture=DURATION")
        })?;
        let slot = match k.trim() {
            "sample" => &mut c.sample,
            "capture" => &mut c.capture,
            other => {
                return Err(format!(
                    "max_stop: {other:?} is neither `sample` nor `capture`"
                ));
            }
        };
        if slot.is_some() {
            return Err(format!("max_stop: {} is given twice", k.trim()));
        }
        *slot = Some(one(&format!("{}: ", k.trim()), v)?);
    }
    Ok(c)
}

fn positive(name: &str, d: Duration) -> Result<Duration, String> {
    if d.is_zero() {
        return Err(format!("{name} must be longer than zero"));
    }
    Ok(d)
}

/// Names a bundle directory may carry.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || name.starts_with('.')
    {
        return Err(format!(
            "target name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'"
        ));
    }
    Ok(())
}

/// Builds a target's settings from its connection and its merged settings.
pub fn spec(name: &str, host: Listen, tags: Vec<String>, c: &Common) -> Result<TargetSpec, String> {
    check_name(name)?;
    let sample_every = match &c.sample_every {
        Some(s) => Some(positive(
            "sample_every",
            duration::parse(s).map_err(|e| format!("sample_every: {e}"))?,
        )?),
        None => None,
    };
    let thresholds = Thresholds {
        wait_seconds: dur("wait_threshold", &c.wait_threshold, Duration::from_secs(60))?
            .as_secs_f64(),
        held_seconds: dur("held_threshold", &c.held_threshold, Duration::from_secs(60))?
            .as_secs_f64(),
    };
    let probe = c.probe.as_deref().map(Probe::parse).transpose()?;
    let ceilings = c
        .max_stop
        .as_deref()
        .map(ceilings)
        .transpose()?
        .unwrap_or_default();
    let script = match &c.script {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read the script {}: {e}", p.display()))?;
            kdnet_commands::script::parse(&text).map_err(|e| format!("{}: {e}", p.display()))?;
            Some((p.display().to_string(), text))
        }
        None => None,
    };
    for pat in c.dbgprint.iter().flatten() {
        if pat.is_empty() {
            return Err("dbgprint: an empty pattern would match every line".into());
        }
    }
    let mut breakpoints = Vec::new();
    for (list, capture) in [(&c.breakpoints, true), (&c.count_breakpoints, false)] {
        for b in list.iter().flatten() {
            breakpoints.push(watch_breakpoint(b, capture)?);
        }
    }
    if breakpoints.len() > kdnet_commands::control::MAX_SOFTWARE {
        return Err(format!(
            "{} breakpoints: the kernel's table holds {}",
            breakpoints.len(),
            kdnet_commands::control::MAX_SOFTWARE
        ));
    }
    Ok(TargetSpec {
        name: name.to_string(),
        host,
        tags,
        triggers: Triggers {
            sample_every,
            thresholds,
            probe,
            probe_every: positive(
                "probe_every",
                dur("probe_every", &c.probe_every, Duration::from_secs(5))?,
            )?,
            probe_fail_after: dur(
                "probe_fail_after",
                &c.probe_fail_after,
                Duration::from_secs(30),
            )?,
            dbgprint: c.dbgprint.clone().unwrap_or_default(),
            breakpoints,
        },
        policy: Policy {
            budget: match ceilings.capture {
                Some(d) => d,
                None => positive(
                    "budget",
                    dur("budget", &c.budget, DEFAULT_CAPTURE_MAX_STOP)?,
                )?,
            },
            sample_max_stop: ceilings.sample.unwrap_or(DEFAULT_SAMPLE_MAX_STOP),
            command_budget: positive(
                "command_budget",
                dur("command_budget", &c.command_budget, Duration::from_secs(60))?,
            )?,
            leave_stopped: c.leave_stopped.unwrap_or(false),
            max_per_hour: c.max_per_hour.unwrap_or(4),
            cooldown: dur("cooldown", &c.cooldown, Duration::from_secs(600))?,
            max_hit_stop: match &c.max_hit_stop {
                Some(s) => share("max_hit_stop", s)?,
                None => DEFAULT_MAX_HIT_STOP,
            },
        },
        script,
        out: c
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("kdnet-captures")),
        symbols: c.symbols.clone(),
        after: AfterCapture {
            on_capture: match &c.on_capture {
                Some(cmd) if cmd.trim().is_empty() => {
                    return Err("on_capture: the command is empty".into());
                }
                other => other.clone(),
            },
            timeout: positive(
                "on_capture_timeout",
                dur(
                    "on_capture_timeout",
                    &c.on_capture_timeout,
                    Duration::from_secs(60),
                )?,
            )?,
            copy_to: c.copy_to.clone(),
        },
    })
}

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    events: Option<PathBuf>,
    control: Option<PathBuf>,
    max_captures: Option<u32>,
    metrics: Option<std::net::SocketAddr>,
    #[serde(default)]
    metrics_listen_any: bool,
    #[serde(default)]
    defaults: Common,
    #[serde(default, rename = "target")]
    targets: Vec<toml::Table>,
}

/// A target's identity in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Identity {
    name: String,
    port: u16,
    bind: Option<IpAddr>,
    key_file: Option<PathBuf>,
    key_env: Option<String>,
    target: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
}

const IDENTITY: &[&str] = &[
    "name", "port", "bind", "key_file", "key_env", "target", "tags",
];

/// What a configuration file says.
#[derive(Debug)]
pub struct Loaded {
    /// The targets.
    pub targets: Vec<TargetSpec>,
    /// The events file.
    pub events: Option<PathBuf>,
    /// The control socket.
    pub control: Option<PathBuf>,
    /// Exit after this many captures.
    pub max_captures: Option<u32>,
    /// Where the metrics are served.
    pub metrics: Option<std::net::SocketAddr>,
    /// The metrics may be served on an address that is not loopback.
    pub metrics_listen_any: bool,
}

/// Reads `targets.toml`; `cli` holds the command line's settings (they win over `[defaults]`).
pub fn load(path: &Path, cli: &Common) -> Result<Loaded, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let f: File = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if f.targets.is_empty() {
        return Err(format!(
            "{}: no [[target]] tables: give each target a name, port and key_file or key_env",
            path.display()
        ));
    }
    let mut defaults = f.defaults;
    defaults.resolve_paths(dir);
    let mut targets = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    let mut ports = std::collections::BTreeSet::new();
    for (i, t) in f.targets.into_iter().enumerate() {
        let at = |e: String| format!("{}: target {}: {e}", path.display(), i + 1);
        let (id, rest): (toml::Table, toml::Table) = t
            .into_iter()
            .partition(|(k, _)| IDENTITY.contains(&k.as_str()));
        let id: Identity = toml::Value::Table(id)
            .try_into()
            .map_err(|e: toml::de::Error| at(e.message().to_string()))?;
        let mut own: Common = toml::Value::Table(rest)
            .try_into()
            .map_err(|e: toml::de::Error| at(format!("{}: {}", id.name, e.message())))?;
        own.resolve_paths(dir);
        let at = |e: String| format!("{}: target {:?}: {e}", path.display(), id.name);
        if !names.insert(id.name.clone()) {
            return Err(at("the name is used twice".into()));
        }
        let bind = id.bind.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        if !ports.insert((bind, id.port)) {
            return Err(at(format!("port {} is used twice", id.port)));
        }
        if id.key_file.is_none() && id.key_env.is_none() {
            return Err(at("give key_file or key_env".into()));
        }
        let connect = ConnectArgs {
            port: Some(id.port),
            bind,
            keys: crate::connect::KeyArgs {
                key_file: id
                    .key_file
                    .map(|k| if k.is_relative() { dir.join(k) } else { k }),
                key_env: id.key_env,
                key: None,
            },
            target: id.target,
            kernel: None,
            connect_timeout: Duration::from_secs(60),
        };
        let host = connect.resolve().map_err(at)?;
        let merged = Common::merge(&[&own, cli, &defaults]);
        targets.push(spec(&id.name, host, id.tags, &merged).map_err(at)?);
    }
    let rel = |p: PathBuf| if p.is_relative() { dir.join(p) } else { p };
    Ok(Loaded {
        targets,
        events: f.events.map(rel),
        control: f.control.map(rel),
        max_captures: f.max_captures,
        metrics: f.metrics,
        metrics_listen_any: f.metrics_listen_any,
    })
}

/// Whether `line` matches `pattern` anywhere (`*` any run of characters, `?` one).
pub fn matches(pattern: &str, line: &str) -> bool {
    // Anchored nowhere: as if the pattern began and ended with `*`.
    let p: Vec<char> = format!("*{pattern}*").chars().collect();
    let s: Vec<char> = line.chars().collect();
    let (mut pi, mut si) = (0usize, 0usize);
    let mut back: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == '*' {
            back = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if let Some((bp, bs)) = back {
            pi = bp + 1;
            si = bs + 1;
            back = Some((bp, bs + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_ceilings_parse_or_say_why() {
        let both = ceilings("2s").unwrap();
        assert_eq!(both.sample, Some(Duration::from_secs(2)));
        assert_eq!(both.capture, Some(Duration::from_secs(2)));
        let c = ceilings("sample=300ms, capture=45s").unwrap();
        assert_eq!(c.sample, Some(Duration::from_millis(300)));
        assert_eq!(c.capture, Some(Duration::from_secs(45)));
        let only = ceilings("capture=1m").unwrap();
        assert_eq!(
            (only.sample, only.capture),
            (None, Some(Duration::from_secs(60)))
        );
        assert!(ceilings("probe=1s").unwrap_err().contains("neither"));
        assert!(
            ceilings("sample=1s,sample=2s")
                .unwrap_err()
                .contains("twice")
        );
        assert!(ceilings("0s").unwrap_err().contains("longer than zero"));
        assert!(ceilings("sample=soon").unwrap_err().contains("sample"));
        assert!(ceilings("1s,2s").is_err());
    }

    #[test]
    fn probes_parse_or_say_why() {
        assert_eq!(
            Probe::parse("tcp:10.0.0.5:10250"),
            Ok(Probe::Tcp("10.0.0.5:10250".into()))
        );
        assert_eq!(
            Probe::parse("http:http://10.0.0.5:10248/healthz"),
            Ok(Probe::Http("http://10.0.0.5:10248/healthz".into()))
        );
        assert_eq!(
            Probe::parse("http://h/x"),
            Ok(Probe::Http("http://h/x".into()))
        );
        assert_eq!(
            Probe::parse("cmd:ctr version"),
            Ok(Probe::Cmd("ctr version".into()))
        );
        assert!(Probe::parse("tcp:host").unwrap_err().contains("port"));
        assert!(
            Probe::parse("udp:1.2.3.4:5")
                .unwrap_err()
                .contains("unknown")
        );
        assert!(Probe::parse("http:ftp://x").is_err());
        assert!(Probe::parse("cmd:").is_err());
    }

    #[test]
    fn watched_breakpoints_are_bp_bu_or_ba_without_a_command_string() {
        let b = watch_breakpoint(
            r#"bp /w "dwo(@rcx+0x30) == 0xc000000d" nt!IofCompleteRequest"#,
            true,
        )
        .unwrap();
        assert!(b.capture);
        assert!(watch_breakpoint("bu bindflt!BfPreCreate", false).is_ok());
        assert!(watch_breakpoint("ba w8 fffff800`12345678", true).is_ok());
        assert!(watch_breakpoint("bp1 nt!KeBugCheckEx", true).is_ok());
        for (bad, says) in [
            ("g", "bp, bu or ba"),
            ("bl", "bp, bu or ba"),
            ("bp", "where?"),
            (r#"bp nt!IofCompleteRequest "kb; g""#, "no command string"),
            (r#"bp /w "1 nt!X"#, "not closed"),
        ] {
            let e = watch_breakpoint(bad, true).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert_eq!(share("x", "10%").unwrap(), 0.1);
        assert_eq!(share("x", "0.25").unwrap(), 0.25);
        for bad in ["0%", "150%", "ten", "-1"] {
            assert!(share("x", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn patterns_match_anywhere_with_wildcards() {
        assert!(matches("CimFS", "CIMFS: CimFS mount failed"));
        assert!(matches(
            "*mount*failed",
            "CimFS: mount 7 failed: 0xc0000001"
        ));
        assert!(matches("mount ? failed", "mount 7 failed"));
        assert!(!matches("mount ? failed", "mount 17 failed"));
        assert!(!matches("NDIS", "ndis reset"));
        assert!(matches("a*b*c", "xxaybzc"));
        assert!(!matches("a*b*c", "xxaybz"));
        assert!(matches("*", ""));
    }

    #[test]
    fn layers_and_a_file() {
        let dir = std::env::temp_dir().join(format!("kdnet-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.key"), "1.2.3.4\n").unwrap();
        let file = dir.join("targets.toml");
        std::fs::write(
            &file,
            r#"
events = "ev.jsonl"
[defaults]
out = "caps"
sample_every = "5m"
max_per_hour = 2
copy_to = "share"
on_capture = "alert.sh"
max_stop = "capture=30s"

[[target]]
name = "web-01"
port = 50001
key_file = "a.key"
tags = ["prod"]
sample_every = "30s"
probe = "tcp:127.0.0.1:9"
on_capture_timeout = "5s"
max_stop = "sample=1s"

[[target]]
name = "web-02"
port = 50002
key_file = "a.key"
budget = "10s"
"#,
        )
        .unwrap();
        let cli = Common {
            max_per_hour: Some(3),
            ..Common::default()
        };
        let l = load(&file, &cli).unwrap();
        assert_eq!(l.targets.len(), 2);
        let (a, b) = (&l.targets[0], &l.targets[1]);
        assert_eq!(a.triggers.sample_every, Some(Duration::from_secs(30)));
        assert_eq!(b.triggers.sample_every, Some(Duration::from_secs(300)));
        assert_eq!(
            a.policy.max_per_hour, 3,
            "the command line beats [defaults]"
        );
        assert_eq!(a.out, dir.join("caps"));
        assert_eq!(a.after.copy_to, Some(dir.join("share")));
        assert_eq!(a.after.on_capture.as_deref(), Some("alert.sh"));
        assert_eq!(a.after.timeout, Duration::from_secs(5));
        assert_eq!(b.after.timeout, Duration::from_secs(60));
        assert_eq!(a.tags, ["prod"]);
        // `max_stop` is one setting: the target's replaces [defaults]' whole, so its capture
        // ceiling is the built-in one; a `max_stop` capture part from any layer outranks
        // `budget`.
        assert_eq!(a.policy.sample_max_stop, Duration::from_secs(1));
        assert_eq!(a.policy.budget, DEFAULT_CAPTURE_MAX_STOP);
        assert_eq!(b.policy.sample_max_stop, DEFAULT_SAMPLE_MAX_STOP);
        assert_eq!(b.policy.budget, Duration::from_secs(30));
        assert_eq!(a.host.bind.port(), 50001);
        assert_eq!(l.events, Some(dir.join("ev.jsonl")));
        // Mistakes are named.
        for (bad, says) in [
            (
                "[[target]]\nname = \"x\"\nport = 1\nkey_file = \"a.key\"\nsampel_every = \"1m\"\n",
                "sampel_every",
            ),
            (
                "[[target]]\nname = \"x\"\nport = 1\n",
                "key_file or key_env",
            ),
            (
                "[[target]]\nname = \"x y\"\nport = 1\nkey_file = \"a.key\"\n",
                "target name",
            ),
            (
                "[[target]]\nname = \"x\"\nport = 1\nkey_file = \"a.key\"\n[[target]]\nname = \"x\"\nport = 2\nkey_file = \"a.key\"\n",
                "twice",
            ),
            (
                "[[target]]\nname = \"x\"\nport = 1\nkey_file = \"a.key\"\nprobe = \"ping:x\"\n",
                "unknown kind",
            ),
            ("bogus = 1\n", "bogus"),
            (
                "[[target]]\nname = \"x\"\nport = 1\nkey_file = \"a.key\"\non_capture = \" \"\n",
                "on_capture: the command is empty",
            ),
            (
                "[[target]]\nname = \"x\"\nport = 1\nkey_file = \"a.key\"\nsample_every = \"0s\"\n",
                "sample_every must be longer than zero",
            ),
            (
                "[[target]]\nname = \"x\"\nport = 1\nkey_file = \"a.key\"\nbudget = \"soon\"\n",
                "budget",
            ),
            (
                "[[target]]\nname = \"x\"\nport = 1\nkey_file = \"a.key\"\ndbgprint = [\"\"]\n",
                "empty pattern",
            ),
            ("", "no [[target]]"),
        ] {
            std::fs::write(&file, bad).unwrap();
            let e = load(&file, &Common::default()).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
