//! `kdnet watch`: watch one target or many, notice when one hangs or crashes, break in,
//! capture what matters into a bundle, and let it go on.
//!
//! Triggers: the target stops by itself (bugcheck, exception); periodic sampling finds a hang
//! (`!hangcheck`); a health probe fails for a while; a DbgPrint line matches; a person asks
//! (`kdnet capture NAME`, or SIGUSR1 for every target). Each target is a task of its own
//! (target.rs) that does one thing at a time; the bundle writer is bundle.rs, the page
//! html.rs, the control socket control.rs.

pub mod after;
pub mod bundle;
pub mod config;
pub mod control;
pub mod html;
pub mod hub;
pub mod metrics;
pub mod policy;
pub mod probe;
pub mod target;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::Instrument;

use anyhow::Context as _;
use kdnet_live::Session;
use tokio::sync::mpsc;

use crate::connect::ConnectArgs;
use crate::exit;
use config::{Common, TargetSpec};
use hub::Hub;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Watch the targets a file lists (targets.toml): name, port, key_file or key_env, target,
    /// tags and per-target settings.
    #[arg(long, conflicts_with_all = ["port", "kernel"])]
    config: Option<PathBuf>,
    /// Where bundles go [default: kdnet-captures].
    #[arg(long)]
    out: Option<PathBuf>,
    /// The capture script (default: the built-in bugcheck.kds after a bugcheck, hang.kds
    /// otherwise).
    #[arg(long)]
    script: Option<PathBuf>,
    /// Break in this often to look for a hang (`!hangcheck`), then let it go on: 5m, 30s.
    #[arg(long)]
    sample_every: Option<String>,
    /// A wait on a resource, mutant or PnP lock longer than this is a hang [default: 60s].
    #[arg(long)]
    wait_threshold: Option<String>,
    /// A health probe: tcp:HOST:PORT, http:URL or cmd:COMMAND (exit code 0 is healthy).
    #[arg(long)]
    probe: Option<String>,
    /// How often the probe runs [default: 5s].
    #[arg(long)]
    probe_every: Option<String>,
    /// The probe failing this long triggers a capture [default: 30s].
    #[arg(long)]
    probe_fail_after: Option<String>,
    /// Capture when a DbgPrint line matches (`*` and `?` wildcards, anywhere in the line);
    /// may be given more than once.
    #[arg(long)]
    dbgprint: Vec<String>,
    /// Keep this breakpoint in the target and capture when it is hit: a `bp`, `bu` or `ba`
    /// command as WinDbg takes it, with a condition (`bp /w "EXPR" nt!IofCompleteRequest`);
    /// may be given more than once. Rate limits and the stop ceiling apply to its captures.
    #[arg(long, value_name = "COMMAND")]
    breakpoint: Vec<String>,
    /// Keep this breakpoint in the target and only count its hits (metrics, a note every
    /// 5 s): as --breakpoint.
    #[arg(long, value_name = "COMMAND")]
    count_breakpoint: Vec<String>,
    /// The share of time breakpoint hits (conditions judged, counts, captures skipped) may
    /// keep the target stopped over the last 10 s; past it the breakpoints are taken out for
    /// a minute and a note says so [default: 10%].
    #[arg(long, value_name = "SHARE")]
    max_hit_stop: Option<String>,
    /// Stop ceilings: how long one break-in may keep the target stopped, `DURATION` for every
    /// break-in or `sample=DURATION,capture=DURATION` [default: sample=500ms,capture=120s]. At
    /// the ceiling the target is let go on whatever is being read; the sample or capture keeps
    /// what it has and says so (a capture cut short is finished by the next capture of the same
    /// hang).
    #[arg(long, value_name = "CEILINGS")]
    max_stop: Option<String>,
    /// The older name of --max-stop capture=DURATION.
    #[arg(long, hide = true)]
    budget: Option<String>,
    /// The longest any one capture command may run, in seconds [default: 60].
    #[arg(long)]
    max_seconds: Option<f64>,
    /// Captures per hour per target, at most [default: 4].
    #[arg(long)]
    max_per_hour: Option<u32>,
    /// After a capture, no other on that target for this long [default: 10m].
    #[arg(long)]
    cooldown: Option<String>,
    /// Leave the target stopped after a capture instead of letting it go on.
    #[arg(long)]
    leave_stopped: bool,
    /// After each capture, run this command (through the shell) with the bundle's path as its
    /// argument and the findings JSON on its standard input; its failure is logged, never
    /// fatal.
    #[arg(long)]
    on_capture: Option<String>,
    /// How long --on-capture's command may run before it is killed [default: 60s].
    #[arg(long)]
    on_capture_timeout: Option<String>,
    /// Copy each bundle into this directory too (a mounted share), atomically: it appears
    /// there whole or not at all.
    #[arg(long)]
    copy_to: Option<PathBuf>,
    /// Exit after this many captures (all targets together).
    #[arg(long)]
    max_captures: Option<u32>,
    /// Stop watching after this long.
    #[arg(long, value_parser = crate::duration::parse)]
    duration: Option<Duration>,
    /// Append each state change as a JSON line to this file (owner-only: it is made 0600).
    #[arg(long)]
    events: Option<PathBuf>,
    /// How long a target a control client broke into stays stopped after that client
    /// disconnected (a client that stays connected keeps it; any client's next request takes
    /// it over): then it continues.
    #[arg(long, default_value = "60s", value_parser = crate::duration::parse)]
    control_lease: Duration,
    /// The control socket (default: $XDG_RUNTIME_DIR/kdnet/watch.sock or
    /// /tmp/kdnet-UID/watch.sock).
    #[arg(long)]
    control: Option<PathBuf>,
    /// Symbol path in WinDbg's syntax (`srv*CACHE*URL;DIR`); _NT_SYMBOL_PATH is added.
    #[arg(long)]
    symbols: Option<String>,
    /// The target's name in events and bundle names (one target).
    #[arg(long, default_value = "target")]
    name: String,
    /// A label for the target (one target); may be given more than once.
    #[arg(long)]
    tag: Vec<String>,
    /// Serve the watcher's metrics for Prometheus at http://ADDRESS/metrics (OpenMetrics
    /// text): 127.0.0.1:9464. A loopback address unless --metrics-listen-any.
    #[arg(long, value_name = "ADDRESS")]
    metrics: Option<std::net::SocketAddr>,
    /// Allow --metrics on an address that is not loopback (anyone who reaches it reads the
    /// targets' names, tags, states and traffic).
    #[arg(long)]
    metrics_listen_any: bool,
}

impl Args {
    fn common(&self) -> Result<Common, String> {
        let command_budget = match self.max_seconds {
            Some(s) if !(s.is_finite() && s > 0.0) => {
                return Err("--max-seconds must be a positive number of seconds".into());
            }
            Some(s) => Some(format!("{}s", s.min(1e6))),
            None => None,
        };
        Ok(Common {
            out: self.out.clone(),
            script: self.script.clone(),
            symbols: self.symbols.clone(),
            sample_every: self.sample_every.clone(),
            wait_threshold: self.wait_threshold.clone(),
            held_threshold: self.wait_threshold.clone(),
            probe: self.probe.clone(),
            probe_every: self.probe_every.clone(),
            probe_fail_after: self.probe_fail_after.clone(),
            dbgprint: (!self.dbgprint.is_empty()).then(|| self.dbgprint.clone()),
            breakpoints: (!self.breakpoint.is_empty()).then(|| self.breakpoint.clone()),
            count_breakpoints: (!self.count_breakpoint.is_empty())
                .then(|| self.count_breakpoint.clone()),
            max_hit_stop: self.max_hit_stop.clone(),
            budget: self.budget.clone(),
            max_stop: self.max_stop.clone(),
            command_budget,
            leave_stopped: self.leave_stopped.then_some(true),
            max_per_hour: self.max_per_hour,
            cooldown: self.cooldown.clone(),
            on_capture: self.on_capture.clone(),
            on_capture_timeout: self.on_capture_timeout.clone(),
            copy_to: self.copy_to.clone(),
        })
    }
}

/// What the watcher was given: its targets and where it reports.
struct Plan {
    targets: Vec<TargetSpec>,
    events: Option<PathBuf>,
    control: Option<PathBuf>,
    max_captures: Option<u32>,
    /// Where the metrics are served.
    metrics: Option<std::net::SocketAddr>,
}

fn plan(a: &Args) -> Result<Plan, String> {
    let cli = a.common()?;
    match &a.config {
        Some(path) => {
            let l = config::load(path, &cli)?;
            let metrics = a.metrics.or(l.metrics);
            if let Some(addr) = metrics {
                metrics::check_address(addr, a.metrics_listen_any || l.metrics_listen_any)?;
            }
            Ok(Plan {
                targets: l.targets,
                events: a.events.clone().or(l.events),
                control: a.control.clone().or(l.control),
                max_captures: a.max_captures.or(l.max_captures),
                metrics,
            })
        }
        None => {
            if let Some(addr) = a.metrics {
                metrics::check_address(addr, a.metrics_listen_any)?;
            }
            let host = a.connect.resolve()?;
            let spec = config::spec(&a.name, host, a.tag.clone(), &cli)?;
            Ok(Plan {
                targets: vec![spec],
                events: a.events.clone(),
                control: a.control.clone(),
                max_captures: a.max_captures,
                metrics: a.metrics,
            })
        }
    }
}

/// Where the control socket goes.
pub enum Control {
    /// The default path.
    Default,
    /// This path.
    At(PathBuf),
    /// None.
    Off,
}

/// Listens for each target; Err holds the exit code (the reason is printed).
/// The span every log line about one watched target carries (`target{name=…}`). At the
/// highest level, so that whatever level the log is filtered to, its lines keep it.
fn target_span(name: &str) -> tracing::Span {
    tracing::error_span!("target", name = %name)
}

pub async fn bind_all(targets: &[TargetSpec]) -> Result<Vec<Session>, u8> {
    let mut hosts = Vec::new();
    for t in targets {
        // The session's own task logs under the target's span.
        let span = target_span(&t.name);
        match Session::listen(t.host.clone()).instrument(span).await {
            Ok(h) => hosts.push(h),
            Err(e) => {
                eprintln!(
                    "kdnet: {}: cannot listen on UDP {}: {e}",
                    t.name, t.host.bind
                );
                return Err(exit::NO_CONNECTION);
            }
        }
    }
    Ok(hosts)
}

/// How a watch ends and what its control socket allows.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Captures in all (all targets together), then the watch ends.
    pub max_captures: Option<u32>,
    /// The watch ends after this long.
    pub duration: Option<Duration>,
    /// How long a target a control client broke into stays stopped after it disconnected.
    pub lease: Duration,
}

/// Removes, from the bundle directories of `targets`, partial bundles no capture is writing
/// (left by a watcher that was killed), and says so.
fn clean_out_dirs(targets: &[(TargetSpec, Session)], hub: &Hub) {
    let mut seen = std::collections::BTreeSet::new();
    for (spec, _) in targets {
        if !seen.insert(spec.out.clone()) {
            continue;
        }
        for (dir, r) in bundle::remove_abandoned(&spec.out) {
            match r {
                Ok(()) => hub.note(
                    &spec.name,
                    &format!(
                        "removed {}: a capture an earlier watcher did not finish",
                        dir.display()
                    ),
                ),
                Err(e) => hub.note(
                    &spec.name,
                    &format!(
                        "cannot remove {} (a capture an earlier watcher did not finish): {e}",
                        dir.display()
                    ),
                ),
            }
        }
    }
}

/// Watches the targets (each with its session) until told to stop; the exit code.
pub async fn watch(
    targets: Vec<(TargetSpec, Session)>,
    hub: Arc<Hub>,
    control: Control,
    limits: Limits,
) -> anyhow::Result<u8> {
    watch_until(targets, hub, control, limits, std::future::pending()).await
}

/// [`watch`], which also ends (as at a signal: every target let go on) when `until` is done.
pub async fn watch_until(
    targets: Vec<(TargetSpec, Session)>,
    hub: Arc<Hub>,
    control: Control,
    limits: Limits,
    until: impl std::future::Future<Output = ()>,
) -> anyhow::Result<u8> {
    let mut until = std::pin::pin!(until);
    let Limits {
        max_captures,
        duration,
        lease,
    } = limits;
    let mut ending = crate::signals::Ending::catch().context("catching signals")?;
    #[cfg(unix)]
    let listener = {
        let path = match control {
            Control::Default => Some(control::default_path()),
            Control::At(p) => Some(p),
            Control::Off => None,
        };
        match path {
            Some(path) => match control::listen(&path).await {
                Ok(l) => {
                    eprintln!("kdnet watch: control socket {}", path.display());
                    Some(l)
                }
                Err(e) => {
                    eprintln!("kdnet: {e}");
                    return Ok(exit::BAD_ARGUMENTS);
                }
            },
            None => None,
        }
    };
    #[cfg(not(unix))]
    let _ = control;
    clean_out_dirs(&targets, &hub);
    let quota = Arc::new(target::Quota::new(max_captures));
    let (captured_tx, mut captured_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // How long a target's task may take to finish what it is doing when the watch ends.
    let finish = targets
        .iter()
        .map(|(t, _)| t.policy.budget)
        .max()
        .unwrap_or_default()
        + Duration::from_secs(30);
    let mut queues = BTreeMap::new();
    let mut tasks = Vec::new();
    for (spec, host) in targets {
        hub.add(&spec.name, &spec.tags, host.local_addr().to_string());
        hub.metrics().link(&spec.name, host.clone());
        let (tx, rx) = mpsc::channel(16);
        queues.insert(spec.name.clone(), tx);
        let span = target_span(&spec.name);
        let actor = target::Actor::new(
            spec,
            host,
            hub.clone(),
            rx,
            captured_tx.clone(),
            quota.clone(),
            lease,
            stop_rx.clone(),
        );
        tasks.push(tokio::spawn(actor.run().instrument(span)));
    }
    let queues: control::Targets = Arc::new(queues);
    #[cfg(unix)]
    let server = listener.map(|l| tokio::spawn(control::serve(l, hub.clone(), queues.clone())));
    #[cfg(not(unix))]
    let server: Option<tokio::task::JoinHandle<()>> = None;
    let mut usr1 = user_signal();
    let deadline = duration.map(|d| tokio::time::Instant::now() + d);
    let mut captures = 0u32;
    loop {
        tokio::select! {
            Some(()) = captured_rx.recv() => {
                captures += 1;
                if max_captures.is_some_and(|m| captures >= m) {
                    break;
                }
            }
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                break;
            }
            _ = next_signal(&mut usr1) => {
                // A capture by hand on every target.
                for (name, q) in queues.iter() {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    if q.try_send(target::Request::Capture(control::NO_CLIENT, tx)).is_ok() {
                        let hub = hub.clone();
                        let name = name.clone();
                        tokio::spawn(async move {
                            if let Ok(Err(e)) = rx.await {
                                hub.note(&name, &format!("capture asked by signal failed: {e}"));
                            }
                        });
                    }
                }
            }
            s = ending.next() => {
                eprintln!(
                    "kdnet watch: {}: ending the watch once what is under way is done (a third signal ends it at once)",
                    s.name()
                );
                break;
            }
            () = &mut until => {
                break;
            }
        }
    }
    // The targets' tasks end with the watch, each after what it is doing (a target held
    // stopped is let go on, breakpoints are taken out); a second signal is said, a third ends
    // the watch at once.
    let _ = stop_tx.send(true);
    let finishing = async {
        for t in tasks {
            let _ = tokio::time::timeout(finish, t).await;
        }
    };
    tokio::select! {
        () = finishing => {}
        s = ending.give_up("ending the watch") => {
            eprintln!(
                "kdnet watch: {} again: ending at once; a target being captured may stay stopped (the next session takes out the breakpoints left in it)",
                s.name()
            );
            std::process::exit(i32::from(s.exit_code()));
        }
    }
    if let Some(s) = server {
        s.abort();
    }
    Ok(exit::OK)
}

#[cfg(unix)]
type UserSignal = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type UserSignal = Option<()>;

#[cfg(unix)]
fn user_signal() -> UserSignal {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()).ok()
}

#[cfg(not(unix))]
fn user_signal() -> UserSignal {
    None
}

#[cfg(unix)]
async fn next_signal(s: &mut UserSignal) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn next_signal(_: &mut UserSignal) {
    std::future::pending().await
}

/// `kdnet watch`.
pub async fn run(a: Args) -> anyhow::Result<u8> {
    let p = match plan(&a) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("kdnet: {e}");
            return Ok(exit::BAD_ARGUMENTS);
        }
    };
    let file = match &p.events {
        Some(path) => Some(
            open_events(path)
                .with_context(|| format!("opening the events file {}", path.display()))?,
        ),
        None => None,
    };
    let hub = Arc::new(Hub::new(file));
    let hosts = match bind_all(&p.targets).await {
        Ok(h) => h,
        Err(code) => return Ok(code),
    };
    let metrics = match p.metrics {
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                let at = l.local_addr().unwrap_or(addr);
                eprintln!("kdnet watch: metrics at http://{at}/metrics");
                Some(tokio::spawn(metrics::serve(l, hub.metrics().clone())))
            }
            Err(e) => {
                eprintln!("kdnet: cannot serve the metrics on TCP {addr}: {e}");
                return Ok(exit::NO_CONNECTION);
            }
        },
        None => None,
    };
    let control = p.control.map_or(Control::Default, Control::At);
    let targets = p.targets.into_iter().zip(hosts).collect();
    let limits = Limits {
        max_captures: p.max_captures,
        duration: a.duration,
        lease: a.control_lease,
    };
    let code = watch(targets, hub, control, limits).await;
    if let Some(m) = metrics {
        m.abort();
    }
    code
}

/// Opens the events file for appending, owner-only (an existing one is made so): the events
/// say what the targets did and what was found in their memory.
fn open_events(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let mut open = std::fs::OpenOptions::new();
    open.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    let f = open.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(f)
}

/// Seconds since 1970 as `YYYYMMDDTHHMMSSZ`.
pub fn utc_stamp(secs: u64) -> String {
    let rem = secs % 86_400;
    let (y, m, d) = kdnet_commands::calendar::civil((secs / 86_400) as i64);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_utc_calendar_times() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
        assert_eq!(utc_stamp(1_795_305_599), "20261121T235959Z");
    }

    #[test]
    fn the_built_in_scripts_parse() {
        assert!(kdnet_commands::script::parse(bundle::HANG_SCRIPT).is_ok());
        assert!(kdnet_commands::script::parse(bundle::BUGCHECK_SCRIPT).is_ok());
    }
}
