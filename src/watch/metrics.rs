//! The watcher's metrics, for Prometheus: `--metrics ADDRESS` serves `/metrics` in the
//! OpenMetrics text format (prometheus-client), every metric named `kdnet_…`.
//!
//! Fed from the hub (hub.rs), the one place every state change passes through: a target's
//! state, its samples and captures by trigger and outcome, how long each kept the target
//! stopped. What the session counts (round trips, bytes, datagrams dropped) and the seconds
//! since the last sample and capture are read when Prometheus scrapes.
//!
//! The server is a small HTTP/1.1 responder: `GET /metrics` answers the page, anything else 404;
//! one request per connection, its head at most [`MAX_REQUEST`] bytes, read within
//! [`DEADLINE`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kdnet_live::{Session, Traffic};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The states a target is reported in (`kdnet_target_state{state=…}`); a target is in exactly
/// one (1), the others are 0.
pub const STATES: &[&str] = &[
    "offline",
    "wrong-key",
    "connected",
    "running",
    "sampling",
    "sampled",
    "sample-failed",
    "sample-cut",
    "stopped",
    "capturing",
    "captured",
    "capture-skipped",
    "capture-failed",
    "resuming",
    "resume-failed",
];

/// The outcomes of a sample (`kdnet_samples_total{outcome=…}`).
pub const SAMPLE_OUTCOMES: &[&str] = &["nothing-found", "found", "cut", "failed"];

/// Upper bounds of the stop-seconds histogram's buckets: a sample should stay in the first few,
/// a capture may reach the budget (120 s by default).
const STOP_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// The longest request head the responder reads.
pub const MAX_REQUEST: usize = 8 << 10;

/// How long a connection has to send its request.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 32;

/// What `/metrics` is answered as.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    target: String,
    tags: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SampleLabels {
    target: String,
    tags: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CaptureLabels {
    target: String,
    tags: String,
    trigger: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HitLabels {
    target: String,
    tags: String,
    breakpoint: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StopLabels {
    target: String,
    tags: String,
    kind: String,
}

type HistogramFamily = Family<StopLabels, Histogram, fn() -> Histogram>;

fn stop_histogram() -> Histogram {
    Histogram::new(STOP_BUCKETS.iter().copied())
}

/// One watched target as the metrics know it.
#[derive(Debug)]
struct Watched {
    tags: String,
    state: String,
    /// Its session, read at each scrape.
    session: Option<Session>,
    /// The counters last published (when no session is linked).
    traffic: Option<Traffic>,
    /// When the sample under way began (its `sampling` state).
    sampling_since: Option<Instant>,
    /// The trigger of the capture under way (from its `capturing` state).
    capture_trigger: Option<String>,
    last_sample: Option<Instant>,
    last_capture: Option<Instant>,
}

/// What is read at scrape time.
#[derive(Debug, Default)]
struct Live {
    targets: Mutex<BTreeMap<String, Watched>>,
    clients: AtomicI64,
}

/// The watcher's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    state: Family<StateLabels, Gauge>,
    samples: Family<SampleLabels, Counter>,
    captures: Family<CaptureLabels, Counter>,
    hits: Family<HitLabels, Counter>,
    stops: HistogramFamily,
    live: Arc<Live>,
    /// Held while a state change updates several series and while the page is written: a
    /// scrape sees a target in exactly one state.
    page: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

/// A control client counted in `kdnet_control_clients` while this lives.
#[derive(Debug)]
pub struct ClientGuard(Arc<Live>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// Metrics of no target yet.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kdnet");
        let state = Family::<StateLabels, Gauge>::default();
        let samples = Family::<SampleLabels, Counter>::default();
        let captures = Family::<CaptureLabels, Counter>::default();
        let hits = Family::<HitLabels, Counter>::default();
        let stops: HistogramFamily = Family::new_with_constructor(stop_histogram);
        let live = Arc::new(Live::default());
        registry.register(
            "target_state",
            "1 for the state the target is in, 0 for the others",
            state.clone(),
        );
        registry.register(
            "samples",
            "Samples taken (break in, look for a hang, go on), by outcome: nothing-found, found (a capture follows unless held back), cut (the stop ceiling ran out), failed",
            samples.clone(),
        );
        registry.register(
            "captures",
            "Captures by trigger (stopped, probe, dbgprint, manual, sample-KIND) and outcome: complete, incomplete, failed, skipped (held back by the rate limit, cool-down or --max-captures)",
            captures.clone(),
        );
        registry.register(
            "breakpoint_hits",
            "Hits of the watcher's breakpoints (breakpoint: the command that set it) by outcome: captured, counted, skipped (a capture held back by the policy), passed (the condition, pass count or thread filter let it go on)",
            hits.clone(),
        );
        registry.register(
            "stop_seconds",
            "How long a sample (kind=sample) or a capture (kind=capture) kept the target stopped",
            stops.clone(),
        );
        registry.register_collector(Box::new(live.clone()));
        Metrics {
            registry,
            state,
            samples,
            captures,
            hits,
            stops,
            live,
            page: Mutex::new(()),
        }
    }

    /// Registers a target, offline, its samples and stops at zero.
    pub fn add(&self, name: &str, tags: &[String]) {
        let tags = tags.join(",");
        let _page = self.page.lock();
        for s in STATES {
            self.state
                .get_or_create(&StateLabels {
                    target: name.to_string(),
                    tags: tags.clone(),
                    state: (*s).to_string(),
                })
                .set(i64::from(*s == "offline"));
        }
        for o in SAMPLE_OUTCOMES {
            let _ = self.samples.get_or_create_owned(&SampleLabels {
                target: name.to_string(),
                tags: tags.clone(),
                outcome: (*o).to_string(),
            });
        }
        for kind in ["sample", "capture"] {
            let _ = self.stops.get_or_create_owned(&StopLabels {
                target: name.to_string(),
                tags: tags.clone(),
                kind: kind.to_string(),
            });
        }
        if let Ok(mut all) = self.live.targets.lock() {
            all.insert(
                name.to_string(),
                Watched {
                    tags,
                    state: "offline".into(),
                    session: None,
                    traffic: None,
                    sampling_since: None,
                    capture_trigger: None,
                    last_sample: None,
                    last_capture: None,
                },
            );
        }
    }

    /// `n` more hits of `name`'s breakpoint `breakpoint` with `outcome`.
    pub fn hits(&self, name: &str, breakpoint: &str, outcome: &str, n: u64) {
        let tags = match self.live.targets.lock() {
            Ok(all) => all.get(name).map(|w| w.tags.clone()).unwrap_or_default(),
            Err(_) => return,
        };
        let _page = self.page.lock();
        self.hits
            .get_or_create(&HitLabels {
                target: name.to_string(),
                tags,
                breakpoint: breakpoint.to_string(),
                outcome: outcome.to_string(),
            })
            .inc_by(n);
    }

    /// Reads `name`'s session counters from `session` at each scrape.
    pub fn link(&self, name: &str, session: Session) {
        if let Ok(mut all) = self.live.targets.lock()
            && let Some(w) = all.get_mut(name)
        {
            w.session = Some(session);
        }
    }

    /// `name`'s session counters as last published (used when no session is linked).
    pub fn traffic(&self, name: &str, t: Traffic) {
        if let Ok(mut all) = self.live.targets.lock()
            && let Some(w) = all.get_mut(name)
        {
            w.traffic = Some(t);
        }
    }

    /// A control client connected; counted until the guard is dropped.
    pub fn client(&self) -> ClientGuard {
        self.live.clients.fetch_add(1, Ordering::Relaxed);
        ClientGuard(self.live.clone())
    }

    /// A state change of `name` as the hub reports it (`extra` is what its JSON line carries).
    pub fn state(&self, name: &str, state: &str, detail: &str, extra: &Value) {
        let now = Instant::now();
        let _page = self.page.lock();
        let Ok(mut all) = self.live.targets.lock() else {
            return;
        };
        let Some(w) = all.get_mut(name) else {
            return;
        };
        let (target, tags) = (name.to_string(), w.tags.clone());
        if w.state != state {
            let was = std::mem::replace(&mut w.state, state.to_string());
            self.state
                .get_or_create(&StateLabels {
                    target: target.clone(),
                    tags: tags.clone(),
                    state: was,
                })
                .set(0);
            self.state
                .get_or_create(&StateLabels {
                    target: target.clone(),
                    tags: tags.clone(),
                    state: state.to_string(),
                })
                .set(1);
        }
        let sample = |w: &mut Watched, outcome: &str, cost: &Value| {
            self.samples
                .get_or_create(&SampleLabels {
                    target: target.clone(),
                    tags: tags.clone(),
                    outcome: outcome.to_string(),
                })
                .inc();
            let since = w.sampling_since.take();
            if outcome == "failed" {
                return;
            }
            w.last_sample = Some(now);
            // The sample says what it cost; else the time since it began.
            let stopped = cost["stopped_seconds"]
                .as_f64()
                .or_else(|| since.map(|t| now.duration_since(t).as_secs_f64()));
            if let Some(s) = stopped {
                self.stops
                    .get_or_create(&StopLabels {
                        target: target.clone(),
                        tags: tags.clone(),
                        kind: "sample".into(),
                    })
                    .observe(s);
            }
        };
        let capture = |trigger: &str, outcome: &str| {
            self.captures
                .get_or_create(&CaptureLabels {
                    target: target.clone(),
                    tags: tags.clone(),
                    trigger: trigger.to_string(),
                    outcome: outcome.to_string(),
                })
                .inc();
        };
        match state {
            "sampling" => w.sampling_since = Some(now),
            "sampled" => sample(w, "nothing-found", &extra["sample"]),
            "sample-failed" => sample(w, "failed", &Value::Null),
            "sample-cut" => sample(w, "cut", &extra["sample"]),
            "capturing" | "capture-skipped" => {
                let trigger = trigger_of(detail, extra);
                // A sample that found something goes on into a capture (or is held back).
                if trigger.starts_with("sample-")
                    && (w.sampling_since.is_some() || extra["sample"].is_object())
                {
                    sample(w, "found", &extra["sample"]);
                }
                if state == "capturing" {
                    w.capture_trigger = Some(trigger);
                } else {
                    capture(&trigger, "skipped");
                }
            }
            "captured" => {
                let trigger = w.capture_trigger.take().unwrap_or_else(|| "unknown".into());
                let outcome = if extra["complete"] == Value::Bool(false) {
                    "incomplete"
                } else {
                    "complete"
                };
                capture(&trigger, outcome);
                w.last_capture = Some(now);
                if let Some(s) = extra["stopped_seconds"].as_f64() {
                    self.stops
                        .get_or_create(&StopLabels {
                            target: target.clone(),
                            tags: tags.clone(),
                            kind: "capture".into(),
                        })
                        .observe(s);
                }
            }
            "capture-failed" => {
                let trigger = w.capture_trigger.take().unwrap_or_else(|| "unknown".into());
                capture(&trigger, "failed");
            }
            _ => {}
        }
    }

    /// The page Prometheus scrapes.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _page = self.page.lock();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            // Writing to a String does not fail; a collector that did leaves the page whole.
            out.clear();
            out.push_str("# EOF\n");
        }
        out
    }
}

/// The trigger kind of a capture: the event's `trigger` member when it has one (a string, or
/// an object with `kind`), else the kind its detail begins with (`KIND: what`).
fn trigger_of(detail: &str, extra: &Value) -> String {
    let t = &extra["trigger"];
    if let Some(k) = t.as_str().or_else(|| t["kind"].as_str()) {
        return k.to_string();
    }
    match detail.split_once(": ") {
        Some((k, _)) if !k.is_empty() && !k.contains(' ') => k.to_string(),
        _ => "unknown".into(),
    }
}

/// One target's figures, read for a scrape.
struct Row {
    target: String,
    tags: String,
    traffic: Option<Traffic>,
    since_sample: Option<f64>,
    since_capture: Option<f64>,
}

/// How old something of a target is, in seconds.
type Age = fn(&Row) -> Option<f64>;

/// A counter the session keeps: its name, help, the label that tells its series apart (none:
/// ""), and each series' label value and reader.
type Counted = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, fn(&Traffic) -> u64)],
);

/// What each target's session counted, written at scrape time.
impl Collector for Live {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = Instant::now();
        // Read everything first: a scrape never holds the lock while it writes.
        let rows: Vec<Row> = match self.targets.lock() {
            Ok(all) => all
                .iter()
                .map(|(name, w)| Row {
                    target: name.clone(),
                    tags: w.tags.clone(),
                    traffic: w.session.as_ref().map(Session::traffic).or(w.traffic),
                    since_sample: w.last_sample.map(|t| now.duration_since(t).as_secs_f64()),
                    since_capture: w.last_capture.map(|t| now.duration_since(t).as_secs_f64()),
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        let g = ConstGauge::new(rows.len() as i64);
        g.encode(enc.encode_descriptor(
            "targets",
            "Targets this watcher watches",
            None,
            g.metric_type(),
        )?)?;
        let g = ConstGauge::new(self.clients.load(Ordering::Relaxed).max(0));
        g.encode(enc.encode_descriptor(
            "control_clients",
            "Control clients connected to the control socket",
            None,
            g.metric_type(),
        )?)?;
        let counters: &[Counted] = &[
            (
                "round_trips",
                "Requests the target answered",
                "",
                &[("", |t| t.round_trips)],
            ),
            (
                "failed_requests",
                "Requests that failed (no answer in time, or refused)",
                "",
                &[("", |t| t.failed)],
            ),
            (
                "bytes",
                "Bytes of KDNET datagrams, by direction",
                "direction",
                &[
                    ("sent", |t| t.bytes_sent),
                    ("received", |t| t.bytes_received),
                ],
            ),
            (
                "datagrams",
                "KDNET datagrams, by direction",
                "direction",
                &[
                    ("sent", |t| t.datagrams_sent),
                    ("received", |t| t.datagrams_received),
                ],
            ),
            (
                "retransmits",
                "Requests sent again",
                "",
                &[("", |t| t.retransmits)],
            ),
            (
                "silences",
                "Times the target was declared gone (nothing heard)",
                "",
                &[("", |t| t.silences)],
            ),
            (
                "handshakes",
                "Handshakes proven (a session began, moved, re-keyed or followed a reboot)",
                "",
                &[("", |t| t.handshakes)],
            ),
            (
                "wrong_key_offers",
                "Connection offers whose tag does not verify under the key: a wrong key, or forged",
                "",
                &[("", |t| t.drops.unauthenticated_control)],
            ),
            (
                "dropped_datagrams",
                "Datagrams dropped, by cause: forged (data that opens under no key held), unauthenticated-control (offers and control messages that do not verify: a wrong key, or forged), replayed (data), stale-offer (a replayed offer), malformed (KDNET framing), malformed-kd (a KD packet inside), not-kdnet, other-address, unexpected, no-session",
                "cause",
                &[
                    ("forged", |t| t.drops.unauthenticated_data),
                    ("unauthenticated-control", |t| {
                        t.drops.unauthenticated_control
                    }),
                    ("replayed", |t| t.drops.replayed_data),
                    ("stale-offer", |t| t.drops.stale_offers),
                    ("malformed", |t| t.drops.malformed),
                    ("malformed-kd", |t| t.drops.malformed_kd),
                    ("not-kdnet", |t| t.drops.not_kdnet),
                    ("other-address", |t| t.drops.other_address),
                    ("unexpected", |t| t.drops.unexpected),
                    ("no-session", |t| t.drops.no_session),
                ],
            ),
        ];
        for (name, help, key, picks) in counters {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for r in &rows {
                let Some(t) = &r.traffic else { continue };
                for (value, pick) in *picks {
                    let mut labels = vec![("target", r.target.as_str()), ("tags", r.tags.as_str())];
                    if !key.is_empty() {
                        labels.push((key, value));
                    }
                    let c = ConstCounter::new(pick(t));
                    c.encode(m.encode_family(&labels)?)?;
                }
            }
        }
        let ages: [(&str, &str, Age); 2] = [
            (
                "seconds_since_last_sample",
                "Seconds since the target's last sample (absent before the first)",
                |r| r.since_sample,
            ),
            (
                "seconds_since_last_capture",
                "Seconds since the target's last capture (absent before the first)",
                |r| r.since_capture,
            ),
        ];
        for (name, help, age) in ages {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for r in &rows {
                let Some(s) = age(r) else { continue };
                let labels = [("target", r.target.as_str()), ("tags", r.tags.as_str())];
                ConstGauge::new(s).encode(m.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// Whether the metrics may be served on `addr`: loopback always, another address only when
/// asked (`--metrics-listen-any`).
pub fn check_address(addr: SocketAddr, listen_any: bool) -> Result<(), String> {
    if addr.ip().is_loopback() || listen_any {
        return Ok(());
    }
    Err(format!(
        "--metrics {addr}: not a loopback address; anyone who reaches it reads the targets' names, tags, states and traffic. Serve it on 127.0.0.1 (behind a proxy), or add --metrics-listen-any (metrics_listen_any = true in targets.toml) to serve it there"
    ))
}

/// Serves `/metrics` on `l` until the task is aborted.
pub async fn serve(l: tokio::net::TcpListener, m: Arc<Metrics>) {
    serve_with(l, m, DEADLINE).await;
}

/// [`serve`] with the deadline of each connection.
pub async fn serve_with(l: tokio::net::TcpListener, m: Arc<Metrics>, deadline: Duration) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match l.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("metrics: accept failed: {e}");
                // Out of descriptors, say: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let m = m.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(deadline, answer(stream, &m)).await;
            drop(permit);
        });
    }
}

/// Reads one request and answers it.
async fn answer(mut s: tokio::net::TcpStream, m: &Metrics) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break &buf[..end];
        }
        if buf.len() > MAX_REQUEST {
            return respond(
                &mut s,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"request too large\n",
            )
            .await;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.trim_end_matches('\r').split(' ');
    let (method, target, version) = (words.next(), words.next(), words.next());
    if !version.is_some_and(|v| v.starts_with("HTTP/1.")) || words.next().is_some() {
        return respond(&mut s, "400 Bad Request", "text/plain", b"bad request\n").await;
    }
    let path = target
        .unwrap_or_default()
        .split('?')
        .next()
        .unwrap_or_default();
    if method == Some("GET") && path == "/metrics" {
        let page = m.render();
        respond(&mut s, "200 OK", CONTENT_TYPE, page.as_bytes()).await
    } else {
        respond(
            &mut s,
            "404 Not Found",
            "text/plain",
            b"not found: the metrics are at GET /metrics\n",
        )
        .await
    }
}

async fn respond(
    s: &mut tokio::net::TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    s.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The value of the sample `series` (name and labels as written) on the page.
    fn value(page: &str, series: &str) -> Option<f64> {
        page.lines().find_map(|l| {
            let (s, v) = l.rsplit_once(' ')?;
            (s == series).then(|| v.parse().ok())?
        })
    }

    fn web() -> Metrics {
        let m = Metrics::new();
        m.add("web-01", &["web".into(), "eu".into()]);
        m
    }

    const L: &str = r#"target="web-01",tags="web,eu""#;

    #[test]
    fn a_target_is_in_exactly_one_state() {
        let m = web();
        let p = m.render();
        assert_eq!(
            value(&p, &format!("kdnet_target_state{{{L},state=\"offline\"}}")),
            Some(1.0)
        );
        assert_eq!(
            value(&p, &format!("kdnet_target_state{{{L},state=\"running\"}}")),
            Some(0.0)
        );
        m.state("web-01", "connected", "10.0.0.5", &Value::Null);
        m.state("web-01", "running", "", &Value::Null);
        let p = m.render();
        for s in STATES {
            let want = if *s == "running" { 1.0 } else { 0.0 };
            assert_eq!(
                value(&p, &format!("kdnet_target_state{{{L},state=\"{s}\"}}")),
                Some(want),
                "{s}\n{p}"
            );
        }
        assert_eq!(value(&p, "kdnet_targets"), Some(1.0), "{p}");
        assert!(p.ends_with("# EOF\n"), "{p}");
    }

    #[test]
    fn samples_count_by_outcome_and_their_stops_go_in_the_histogram() {
        let m = web();
        m.state("web-01", "sampling", "", &Value::Null);
        m.state(
            "web-01",
            "sampled",
            "nothing found",
            &json!({ "sample": { "round_trips": 92, "stopped_seconds": 0.2 } }),
        );
        m.state("web-01", "sampling", "", &Value::Null);
        m.state("web-01", "sample-failed", "break-in failed", &Value::Null);
        // One the stop ceiling cut: its stop is in the histogram too.
        m.state("web-01", "sampling", "", &Value::Null);
        m.state(
            "web-01",
            "sample-cut",
            "the sample's stop ceiling of 0.5 s ran out",
            &json!({ "sample": { "cut": true, "stopped_seconds": 0.5 } }),
        );
        // A sample that finds a hang goes on into a capture.
        m.state("web-01", "sampling", "", &Value::Null);
        m.state(
            "web-01",
            "capturing",
            "sample-deadlock: two threads wait on each other",
            &Value::Null,
        );
        let p = m.render();
        let s = |o: &str| value(&p, &format!("kdnet_samples_total{{{L},outcome=\"{o}\"}}"));
        assert_eq!(s("nothing-found"), Some(1.0), "{p}");
        assert_eq!(s("failed"), Some(1.0), "{p}");
        assert_eq!(s("found"), Some(1.0), "{p}");
        assert_eq!(s("cut"), Some(1.0), "{p}");
        let h = format!("{L},kind=\"sample\"");
        assert_eq!(
            value(&p, &format!("kdnet_stop_seconds_count{{{h}}}")),
            Some(3.0),
            "{p}"
        );
        let sum = value(&p, &format!("kdnet_stop_seconds_sum{{{h}}}")).unwrap();
        assert!((0.2..10.0).contains(&sum), "{p}");
        assert_eq!(
            value(&p, &format!("kdnet_stop_seconds_bucket{{le=\"0.25\",{h}}}")),
            Some(2.0),
            "{p}"
        );
        assert!(value(&p, &format!("kdnet_seconds_since_last_sample{{{L}}}")).is_some());
    }

    #[test]
    fn captures_count_by_trigger_and_outcome() {
        let m = web();
        let c = |t: &str, o: &str, p: &str| {
            value(
                p,
                &format!("kdnet_captures_total{{{L},trigger=\"{t}\",outcome=\"{o}\"}}"),
            )
        };
        let p = m.render();
        assert_eq!(
            value(&p, &format!("kdnet_seconds_since_last_capture{{{L}}}")),
            None
        );
        m.state(
            "web-01",
            "capturing",
            "probe: failing for 30 s: refused",
            &Value::Null,
        );
        m.state(
            "web-01",
            "captured",
            "/b/x",
            &json!({ "complete": true, "stopped_seconds": 3.5, "round_trips": 700 }),
        );
        m.state(
            "web-01",
            "capturing",
            "stopped: bugcheck 0x9f",
            &Value::Null,
        );
        m.state(
            "web-01",
            "captured",
            "/b/y (incomplete)",
            &json!({ "complete": false, "stopped_seconds": 120.0 }),
        );
        m.state(
            "web-01",
            "capture-skipped",
            "dbgprint: \"x\" matched \"x\" (cool-down)",
            &Value::Null,
        );
        m.state(
            "web-01",
            "capturing",
            "",
            &json!({ "trigger": { "kind": "manual" } }),
        );
        m.state(
            "web-01",
            "capture-failed",
            "the capture thread failed",
            &Value::Null,
        );
        let p = m.render();
        assert_eq!(c("probe", "complete", &p), Some(1.0), "{p}");
        assert_eq!(c("stopped", "incomplete", &p), Some(1.0), "{p}");
        assert_eq!(c("dbgprint", "skipped", &p), Some(1.0), "{p}");
        assert_eq!(c("manual", "failed", &p), Some(1.0), "{p}");
        let h = format!("{L},kind=\"capture\"");
        assert_eq!(
            value(&p, &format!("kdnet_stop_seconds_count{{{h}}}")),
            Some(2.0),
            "{p}"
        );
        assert_eq!(
            value(&p, &format!("kdnet_stop_seconds_sum{{{h}}}")),
            Some(123.5),
            "{p}"
        );
        assert_eq!(
            value(&p, &format!("kdnet_stop_seconds_bucket{{le=\"5.0\",{h}}}")),
            Some(1.0),
            "{p}"
        );
        // No sample was counted for captures of other triggers.
        assert_eq!(
            value(&p, &format!("kdnet_samples_total{{{L},outcome=\"found\"}}")),
            Some(0.0),
            "{p}"
        );
        let since = value(&p, &format!("kdnet_seconds_since_last_capture{{{L}}}")).unwrap();
        assert!((0.0..60.0).contains(&since), "{p}");
    }

    #[test]
    fn the_sessions_counters_and_the_clients_are_read_at_scrape_time() {
        let m = web();
        let mut t = Traffic {
            round_trips: 92,
            bytes_sent: 4000,
            bytes_received: 39000,
            ..Traffic::default()
        };
        t.drops.unauthenticated_control = 3;
        t.drops.replayed_data = 2;
        t.drops.unauthenticated_data = 1;
        t.drops.malformed = 4;
        m.traffic("web-01", t);
        let a = m.client();
        let b = m.client();
        drop(a);
        let p = m.render();
        assert_eq!(
            value(&p, &format!("kdnet_round_trips_total{{{L}}}")),
            Some(92.0),
            "{p}"
        );
        assert_eq!(
            value(
                &p,
                &format!("kdnet_bytes_total{{{L},direction=\"received\"}}")
            ),
            Some(39000.0),
            "{p}"
        );
        assert_eq!(
            value(&p, &format!("kdnet_wrong_key_offers_total{{{L}}}")),
            Some(3.0)
        );
        for (cause, n) in [("forged", 1.0), ("replayed", 2.0), ("malformed", 4.0)] {
            assert_eq!(
                value(
                    &p,
                    &format!("kdnet_dropped_datagrams_total{{{L},cause=\"{cause}\"}}")
                ),
                Some(n),
                "{cause}\n{p}"
            );
        }
        assert_eq!(value(&p, "kdnet_control_clients"), Some(1.0), "{p}");
        drop(b);
        assert_eq!(value(&m.render(), "kdnet_control_clients"), Some(0.0));
    }

    #[test]
    fn only_loopback_unless_asked() {
        assert!(check_address("127.0.0.1:9464".parse().unwrap(), false).is_ok());
        assert!(check_address("[::1]:9464".parse().unwrap(), false).is_ok());
        let e = check_address("0.0.0.0:9464".parse().unwrap(), false).unwrap_err();
        assert!(e.contains("--metrics-listen-any"), "{e}");
        assert!(check_address("10.1.2.3:9464".parse().unwrap(), false).is_err());
        assert!(check_address("0.0.0.0:9464".parse().unwrap(), true).is_ok());
    }

    /// Sends `request` to the responder and reads the whole answer.
    async fn ask(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The responder may answer (and close) before a long request is all written.
        let _ = s.write_all(request).await;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    async fn server(deadline: Duration) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve_with(l, Arc::new(web()), deadline));
        addr
    }

    #[tokio::test]
    async fn the_responder_serves_metrics_and_nothing_else() {
        let addr = server(DEADLINE).await;
        let r = ask(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n",
        )
        .await;
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")),
            "{head}"
        );
        assert!(
            head.contains(&format!("Content-Length: {}\r\n", body.len())),
            "{head}"
        );
        assert!(body.contains("kdnet_target_state{"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
        // A query string is allowed.
        let r = ask(addr, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        for req in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"GET /metricsx HTTP/1.1\r\n\r\n",
            b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        ] {
            let r = ask(addr, req).await;
            assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");
        }
        let r = ask(addr, b"hello\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{r}");
    }

    #[tokio::test]
    async fn a_request_too_large_or_too_slow_is_cut_off() {
        let addr = server(Duration::from_millis(300)).await;
        let mut big = b"GET /metrics HTTP/1.1\r\n".to_vec();
        while big.len() <= MAX_REQUEST + 100 {
            big.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        let r = ask(addr, &big).await;
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
        // A client that never finishes its request is closed at the deadline.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "the connection was not closed");
        assert!(out.is_empty(), "{out:?}");
        // The server still answers.
        let r = ask(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
    }
}
