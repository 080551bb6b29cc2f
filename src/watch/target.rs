//! One watched target: a task that owns its KDNET session and does one thing at a time —
//! notice it stop by itself, sample it, answer a trigger (probe, DbgPrint), or serve a control
//! request — so two clients' commands never interleave on the wire.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kdnet_commands::engine::Engine;
use kdnet_commands::ext::hangcheck::{self, Sample};
use kdnet_commands::script::{self, Runner};
use kdnet_live::{BrokeIn, Drops, Event, Link, Session};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

mod breaks;

use super::bundle::{self, Job, Lost, Trigger};
use super::config::{TargetSpec, matches};
use super::hub::Hub;
use super::policy::Limiter;
use super::probe::{self, Failing};
use crate::analysis;

/// A control client (one connection to the control socket).
pub type Client = u64;

/// What a control client asks of a target.
pub enum Request {
    /// Capture now (never held back by the rate limit or the cool-down).
    Capture(Client, oneshot::Sender<Result<Value, String>>),
    /// Break in and keep it stopped (for the client, while it is connected, and for the lease
    /// after it goes away).
    Break(Client, oneshot::Sender<Result<Value, String>>),
    /// Let it run.
    Continue(oneshot::Sender<Result<Value, String>>),
    /// Run a command line on the stopped target, within the time given; the answer is the
    /// results' JSON array, as text (it is kept as text from the start: a bounded line, not a
    /// tree many times its size).
    Run(
        Client,
        String,
        Option<Duration>,
        Arc<AtomicBool>,
        oneshot::Sender<Result<String, String>>,
    ),
    /// The client went away: a target it holds is let go on when the lease runs out.
    Release(Client),
}

/// How long a break-in may take.
const BREAK_IN: Duration = Duration::from_secs(10);

/// How often a target's session counters are published and new drops reported.
const LINK_REPORT_EVERY: Duration = Duration::from_secs(5);

/// The captures the whole watch may still make (`--max-captures`): a capture takes one before
/// it starts, so no more are made than allowed, however the targets' captures overlap.
#[derive(Debug)]
pub struct Quota {
    left: Option<std::sync::atomic::AtomicU32>,
}

impl Quota {
    /// At most `limit` captures (None: no limit).
    pub fn new(limit: Option<u32>) -> Quota {
        Quota {
            left: limit.map(std::sync::atomic::AtomicU32::new),
        }
    }

    /// Takes one; false when none is left.
    pub fn take(&self) -> bool {
        match &self.left {
            None => true,
            Some(n) => n
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
                .is_ok(),
        }
    }

    /// Gives back one taken by a capture that made nothing (it could not even stop the target).
    pub fn give_back(&self) {
        if let Some(n) = &self.left {
            n.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A target kept stopped: its engine, the stop it belongs to, the control client holding it
/// (None: the policy after a capture) and when that client's lease runs out once it has gone.
struct Held {
    engine: Engine,
    at: u64,
    owner: Option<Client>,
    lease: Option<tokio::time::Instant>,
}

/// A target's task.
pub struct Actor {
    spec: TargetSpec,
    host: Session,
    hub: Arc<Hub>,
    rx: mpsc::Receiver<Request>,
    limiter: Limiter,
    prev: Option<Sample>,
    /// The engine of a stop a control client (or the policy) keeps.
    held: Option<Held>,
    captured: mpsc::UnboundedSender<()>,
    quota: Arc<Quota>,
    /// How long a target a client broke into stays stopped after the client went away.
    lease: Duration,
    /// Set when the watch ends: the task finishes what it is doing, then ends.
    stop: tokio::sync::watch::Receiver<bool>,
    /// A stop of ours (its count) that could not be let go because the target stopped
    /// answering: when it is heard again, still in that stop, it is let go (not captured as a
    /// stop of its own).
    owed: Option<u64>,
    /// A capture cut short by its stop ceiling: the next capture of the same hang goes on
    /// where it stopped.
    unfinished: Option<bundle::Continuation>,
    /// The watcher's breakpoints in this target (None: it has none).
    armed: Option<breaks::Armed>,
    /// A capture for a breakpoint leaves the target stopped for the breakpoints to go on
    /// from (rather than letting it go without them).
    rearm_after_capture: bool,
    /// Records a killed watcher left in this target were looked for.
    recovered: bool,
    /// Raised while a control client's command lets the target run (a `g`).
    moving: Arc<AtomicBool>,
    /// Reboots of the target seen so far (counted as they are reported, before the task's
    /// loop gets to them).
    reboots: Arc<std::sync::atomic::AtomicU64>,
}

/// How long a capture cut short may be gone on with: past this the hang is another moment's
/// and a capture starts over.
const CONTINUE_WITHIN: Duration = Duration::from_secs(3600);

/// `0.5 s`, `2 s`: a ceiling as its events print it.
fn seconds_text(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// The sample to compare the next one with, after `new` was cut: what `new` did not reach
/// (commit failures, packets) is kept from `old`.
fn carry_over(old: Sample, mut new: Sample) -> Sample {
    if new.commit_failures.is_none() {
        new.commit_failures = old.commit_failures;
    }
    if new.nbls.is_none() {
        new.nbls = old.nbls;
    }
    new
}

fn stop_count(host: &Session) -> u64 {
    host.status().stops
}

impl Actor {
    /// A task for `spec` over `host`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        spec: TargetSpec,
        host: Session,
        hub: Arc<Hub>,
        rx: mpsc::Receiver<Request>,
        captured: mpsc::UnboundedSender<()>,
        quota: Arc<Quota>,
        lease: Duration,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Actor {
        let spec_breakpoints = spec.triggers.breakpoints.clone();
        Actor {
            spec,
            host,
            hub,
            rx,
            limiter: Limiter::default(),
            prev: None,
            held: None,
            captured,
            quota,
            lease,
            stop,
            owed: None,
            unfinished: None,
            armed: breaks::Armed::new(&spec_breakpoints),
            rearm_after_capture: false,
            recovered: false,
            moving: Arc::new(AtomicBool::new(false)),
            reboots: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        }
    }

    fn state(&self, state: &str, detail: &str) {
        self.hub.state(&self.spec.name, state, detail, Value::Null);
    }

    /// Runs until the watch ends (or the session does). Nothing under way is cut short, and a
    /// target a control client left stopped is let go on unless the policy keeps it stopped.
    pub async fn run(mut self) {
        self.state(
            "offline",
            &format!("listening on UDP {}", self.host.local_addr()),
        );
        let mut state_rx = self.host.watch();
        let (trig_tx, mut trig_rx) = mpsc::channel::<Trigger>(4);
        let mut helpers = Vec::new();
        if !self.spec.triggers.dbgprint.is_empty() {
            helpers.push(tokio::spawn(watch_prints(
                self.host.clone(),
                self.spec.triggers.dbgprint.clone(),
                trig_tx.clone(),
            )));
        }
        if let Some(p) = self.spec.triggers.probe.clone() {
            helpers.push(tokio::spawn(run_probe(
                self.host.clone(),
                p,
                self.spec.triggers.probe_every,
                self.spec.triggers.probe_fail_after,
                trig_tx.clone(),
                self.hub.clone(),
                self.spec.name.clone(),
                self.armed.as_ref().map(breaks::Armed::judging_flag),
            )));
        }
        let mut sampler = self.spec.triggers.sample_every.map(|d| {
            let mut i = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        let mut connected = false;
        let mut stop = self.stop.clone();
        // The session's counters are published for `list`, and drops reported as they come.
        let mut counters = tokio::time::interval(LINK_REPORT_EVERY);
        counters.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reported = Drops::default();
        // With breakpoints: reboots (they are set again in the new kernel), the share of
        // time their hits take (checked every second).
        let (reboot_tx, mut reboot_rx) = mpsc::channel::<()>(4);
        if self.armed.is_some() {
            helpers.push(tokio::spawn(watch_reboots(
                self.host.clone(),
                reboot_tx,
                self.reboots.clone(),
            )));
        }
        let mut hit_tick = tokio::time::interval(Duration::from_secs(1));
        hit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *stop.borrow_and_update() {
                break;
            }
            let s = state_rx.current();
            let stopped = s.stopped;
            if let Some(h) = &self.held
                && (!stopped || s.stops != h.at || s.link != Link::Connected)
            {
                self.held = None;
            }
            match s.link {
                Link::Waiting => {
                    connected = false;
                    self.state("offline", "");
                }
                Link::WrongKey => {
                    connected = false;
                    self.state("wrong-key", "offers arrive but do not authenticate");
                }
                Link::Silent => {
                    connected = false;
                    self.state("offline", "the target stopped answering");
                }
                Link::Connected => {
                    if !connected {
                        connected = true;
                        // A new handshake may be a new boot: a cut capture is not gone on with
                        // across it.
                        self.unfinished = None;
                        self.state(
                            "connected",
                            &s.peer.map_or_else(String::new, |p| p.to_string()),
                        );
                        // Breakpoints a killed session left in this target come out first.
                        if !self.recovered {
                            self.recovered = true;
                            if let Some(said) = crate::recovery::recover(&self.host).await {
                                self.hub
                                    .note(&self.spec.name, said.trim_start_matches("kdnet: "));
                                continue;
                            }
                        }
                    }
                    if !stopped {
                        self.state("running", "");
                    }
                }
            }
            if let Some(at) = self.owed
                && connected
            {
                self.owed = None;
                if stopped && s.stops == at {
                    self.hub.note(
                        &self.spec.name,
                        "the target answers again, still stopped where this watcher left it: it continues",
                    );
                    self.resume().await;
                    continue;
                }
            }
            let moving = self.armed.as_ref().is_some_and(|a| a.moving());
            if connected && stopped && self.held.is_none() && !moving {
                let t = self.stopped_by_itself();
                let _ = self.capture(t, None, false).await;
                continue;
            }
            if connected
                && self.held.is_none()
                && self.armed.as_ref().is_some_and(|a| a.wants_arming())
            {
                self.arm().await;
                continue;
            }
            let armed = self.armed.is_some();
            let running = connected && self.held.is_none() && (moving || !stopped);
            let lease_end = self.held.as_ref().and_then(|h| h.lease);
            let arm_at = self
                .armed
                .as_ref()
                .filter(|a| !a.moving() && connected && self.held.is_none())
                .and_then(|a| a.not_before);
            tokio::select! {
                biased;
                _ = stop.changed() => {}
                _ = async { match lease_end {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                } } => {
                    self.hub.note(
                        &self.spec.name,
                        &format!(
                            "the control client that broke in went away {} s ago: the target continues",
                            self.lease.as_secs()
                        ),
                    );
                    self.resume().await;
                }
                out = breaks::motion_end(&mut self.armed) => self.after_motion(out, true).await,
                _ = async { match arm_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                } } => {}
                _ = hit_tick.tick(), if armed => self.check_hit_share().await,
                Some(()) = reboot_rx.recv() => self.rebooted().await,
                _ = counters.tick() => {
                    self.report_link(&mut reported);
                    self.report_hits();
                }
                alive = state_rx.changed() => if !alive { break },
                req = self.rx.recv() => match req {
                    Some(r) => {
                        // Only what stops the target takes the breakpoints out (a `run`
                        // needs a target a client holds; none runs with them then).
                        if matches!(r, Request::Capture(..) | Request::Break(..)) {
                            self.disarm().await;
                        }
                        self.request(r).await
                    }
                    None => break,
                },
                _ = tick(&mut sampler) => if running {
                    self.disarm().await;
                    self.sample().await
                },
                Some(t) = trig_rx.recv() => if running {
                    self.disarm().await;
                    let _ = self.capture(t, None, false).await;
                },
            }
        }
        for h in helpers {
            h.abort();
        }
        // The breakpoints come out (the motion breaks in to take them out) and the target
        // goes on.
        let moving = self.armed.as_ref().is_some_and(|a| a.moving());
        if moving {
            self.disarm().await;
            self.report_hits();
            if self.held.is_none() && self.host.status().stopped {
                self.resume().await;
            }
        }
        if self.held.is_some() && !self.spec.policy.leave_stopped {
            self.resume().await;
        }
    }

    /// The target stopped by itself (a bugcheck, an exception): said, and the trigger of its
    /// capture.
    fn stopped_by_itself(&self) -> Trigger {
        let detail = self
            .host
            .status()
            .stop
            .map(|x| x.description)
            .unwrap_or_default();
        self.state(
            "stopped",
            &format!("the target stopped by itself: {detail}"),
        );
        Trigger {
            kind: "stopped".into(),
            detail,
            sample: None,
            hit: None,
        }
    }

    /// Breaks in (unless stopped); Err says why it could not. A stop the target made itself
    /// in the instant of the break-in (a bugcheck, an exception) is not the watcher's: Err,
    /// and the target is left stopped for the watch to capture as such.
    async fn stop(&mut self) -> Result<(), String> {
        if self.stop_checked().await? {
            return Err(
                "the target stopped by itself as the break-in was asked: it is captured as such"
                    .into(),
            );
        }
        Ok(())
    }

    /// Breaks in (unless stopped); Ok(true) when what stopped it is a stop of its own that
    /// came in that instant (a bugcheck, an exception, a driver's break), not the break-in.
    /// When that cannot be told, it is said, and taken for the break-in that was asked.
    async fn stop_checked(&mut self) -> Result<bool, String> {
        if self.host.status().stopped {
            return Ok(false);
        }
        let (_, what) = self
            .host
            .break_in_checked(BREAK_IN)
            .await
            .map_err(|e| format!("break-in failed: {e}"))?;
        Ok(match what {
            BrokeIn::Asked => false,
            BrokeIn::Own => true,
            BrokeIn::Untold(why) => {
                self.hub.note(
                    &self.spec.name,
                    &format!(
                        "whether the break-in's stop is the target's own (a bugcheck) could not be told: {why}"
                    ),
                );
                false
            }
        })
    }

    /// Publishes the session's counters and notes datagrams dropped since `reported`.
    fn report_link(&mut self, reported: &mut Drops) {
        let t = self.host.traffic();
        self.hub.traffic(&self.spec.name, t);
        if t.drops.total() > reported.total() {
            let new = t.drops.since(reported);
            self.hub.note_with(
                &self.spec.name,
                &format!(
                    "dropped {} datagram(s): {}",
                    new.total(),
                    new.causes()
                        .iter()
                        .map(|(cause, n)| format!("{n} {cause}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                json!({ "dropped": new, "drops": t.drops }),
            );
            *reported = t.drops;
        }
    }

    async fn resume(&mut self) {
        self.resume_with(None).await;
    }

    /// Lets the target go on now, whatever is being read from it.
    async fn resume_now(&mut self, why: &str) {
        self.resume_with(Some(why)).await;
    }

    async fn resume_with(&mut self, preempt: Option<&str>) {
        self.held = None;
        self.state("resuming", "");
        let at = stop_count(&self.host);
        let r = match preempt {
            Some(why) => self.host.go_now(why).await,
            None => self.host.go().await,
        };
        if let Err(e) = r {
            self.state("resume-failed", &e.to_string());
            if self.host.status().link == Link::Silent {
                // Let it go when it is heard again.
                self.owed = Some(at);
            }
        }
    }

    /// Lets the target go on now because a sample's stop ceiling ran out, whatever is being
    /// read, unless it is known to run; when it was let go (counted from `start`). A target
    /// that went silent is let go when it is heard again (see `resume_with`).
    async fn let_go_at_ceiling(&mut self, start: Instant) -> Option<Duration> {
        if self.host.status().running {
            return None;
        }
        self.resume_now("the sample's stop ceiling ran out").await;
        Some(start.elapsed())
    }

    /// Opens the kernel model over the stopped target (off the runtime's threads).
    async fn open(&mut self) -> Result<Engine, String> {
        let host = self.host.clone();
        let rt = tokio::runtime::Handle::current();
        let symbols = self.spec.symbols.clone();
        let session = self.host.clone();
        let moving = self.moving.clone();
        let e = tokio::task::spawn_blocking(move || {
            host.open(rt, crate::symbols::path(symbols.as_deref()))
                .map(|k| {
                    let mut e = Engine::new(k);
                    // Breakpoints a client's `g` writes are recorded, as `kdnet run` records
                    // them: a watcher killed meanwhile leaves what the next session undoes.
                    crate::recovery::attach(&mut e, &session, &moving);
                    e
                })
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("the model thread failed: {e}"))??;
        self.hub.build(&self.spec.name, e.kernel.mem.info().build);
        Ok(e)
    }

    /// Breaks in, takes a sample, and captures if it finds a hang; otherwise lets it go on.
    /// Every event of the sample says what it cost: its own round trips, those of the whole
    /// stop (break-in and kernel model included) and how long the target was stopped. At the
    /// sample's stop ceiling the target is let go on whatever is being read: the sample keeps
    /// what it found by then, and its event says it was cut (`cut`, `complete: false`).
    async fn sample(&mut self) {
        let start = Instant::now();
        let ceiling = self.spec.policy.sample_max_stop;
        let traffic_before = self.host.traffic().round_trips;
        let cost = |host: &Session, round_trips: Option<u64>, resumed: Option<Duration>| {
            json!({
                "round_trips": round_trips,
                "stop_round_trips": host.traffic().round_trips.saturating_sub(traffic_before),
                "stopped_seconds": resumed.unwrap_or_else(|| start.elapsed()).as_secs_f64(),
                "max_stop_seconds": ceiling.as_secs_f64(),
            })
        };
        if let Err(e) = self.stop().await {
            self.hub.state(
                &self.spec.name,
                "sample-failed",
                &e,
                json!({ "sample": cost(&self.host, None, None) }),
            );
            return;
        }
        self.state("sampling", "");
        // The ceiling counts from the break-in request: the target may have stopped on it.
        let deadline = start + ceiling;
        let th = self.spec.triggers.thresholds;
        let host = self.host.clone();
        let rt = tokio::runtime::Handle::current();
        let symbols = self.spec.symbols.clone();
        // The NBLs go on from where the last sample looked, and those pending then are read
        // again.
        let nbls = self.prev.as_ref().and_then(|p| p.nbls.clone());
        let mut task = tokio::task::spawn_blocking(move || {
            let k = host
                .open(rt, crate::symbols::path(symbols.as_deref()))
                .map_err(|e| e.to_string())?;
            let mut e = Engine::new(k);
            e.kernel.mem.set_deadline(Some(deadline));
            let before = e.kernel.mem.stats();
            let s = hangcheck::watch_sample(&mut e, &th, nbls.as_ref());
            e.kernel.mem.set_deadline(None);
            let cost = e.kernel.mem.stats().since(&before);
            Ok::<_, String>((e, s, cost.transport.round_trips))
        });
        let ceiling_at = tokio::time::Instant::from_std(deadline);
        let mut resumed_at = None;
        let joined = tokio::select! {
            r = &mut task => r,
            _ = tokio::time::sleep_until(ceiling_at) => {
                resumed_at = self.let_go_at_ceiling(start).await;
                task.await
            }
        };
        // The reads stop at the ceiling too: a sample that ended there (its last reads refused)
        // may finish before the timer above fires. It was cut all the same.
        let cut = resumed_at.is_some() || Instant::now() >= deadline;
        if cut && resumed_at.is_none() {
            resumed_at = self.let_go_at_ceiling(start).await;
        }
        // The target was let go on at the ceiling (or is let go on below): what the engine
        // read is of a stop that is over.
        let cut_note = cut.then(|| {
            format!(
                "the sample's stop ceiling of {} ran out: the target was let go on and the sample keeps what it found by then",
                seconds_text(ceiling)
            )
        });
        let outcome = match joined {
            Ok(Ok((engine, Ok(sample), round_trips))) => Ok((engine, sample, round_trips)),
            Ok(Ok((_, Err(e), round_trips))) => Err((e.to_string(), Some(round_trips))),
            Ok(Err(e)) => Err((e, None)),
            Err(_) => Err(("the sample thread failed".to_string(), None)),
        };
        let (engine, mut sample, round_trips) = match outcome {
            Ok(x) => x,
            Err((e, round_trips)) => {
                let mut sample = cost(&self.host, round_trips, resumed_at);
                sample["cut"] = json!(cut);
                sample["complete"] = json!(false);
                self.hub.state(
                    &self.spec.name,
                    if cut { "sample-cut" } else { "sample-failed" },
                    &match &cut_note {
                        Some(n) => format!("{n}: {e}"),
                        None => e,
                    },
                    json!({ "sample": sample }),
                );
                if !cut {
                    self.resume().await;
                }
                return;
            }
        };
        if let Some(n) = &cut_note {
            sample.notes.push(n.clone());
        }
        let found = hangcheck::judge(self.prev.as_ref(), &sample);
        let spent = cost(&self.host, Some(round_trips), resumed_at);
        let stopped = spent["stopped_seconds"].as_f64().unwrap_or(0.0);
        let sample_json = json!({
            "findings": found,
            "long_waits": sample.long_waits,
            "held_long": sample.held_long,
            "cycles": sample.cycles,
            "commit_failures": sample.commit_failures,
            "pending_nbls": sample.nbls.as_ref().map(|n| n.pending.len()),
            "nbls": sample.nbls.as_ref().map(|n| json!({
                "examined": n.examined,
                "whole": n.whole,
                "rechecked": n.rechecked,
                "still": n.still,
            })),
            "notes": sample.notes,
            "round_trips": round_trips,
            "stop_round_trips": spent["stop_round_trips"],
            "stopped_seconds": stopped,
            "max_stop_seconds": ceiling.as_secs_f64(),
            "cut": cut,
            "complete": !cut && !sample.incomplete,
        });
        // What a cut sample did not reach is compared next time against the last sample that
        // did reach it.
        self.prev = Some(match self.prev.take() {
            Some(old) if cut => carry_over(old, sample),
            _ => sample,
        });
        if found.is_empty() {
            let detail = format!(
                "nothing found ({round_trips} round trips, stopped {stopped:.2} s){}",
                cut_note.map(|n| format!("; {n}")).unwrap_or_default()
            );
            self.hub.state(
                &self.spec.name,
                if cut { "sample-cut" } else { "sampled" },
                &detail,
                json!({ "sample": sample_json }),
            );
            if !cut {
                self.resume().await;
            }
            return;
        }
        let t = Trigger {
            kind: format!("sample-{}", found[0].kind),
            detail: match found.len() {
                1 => found[0].summary.clone(),
                n => format!("{} (and {} more findings)", found[0].summary, n - 1),
            },
            sample: Some(sample_json),
            hit: None,
        };
        // A cut sample's engine read a stop that is over: the capture breaks in afresh.
        // A capture in the same stop counts its ceiling from the sample's break-in: one
        // break-in, one ceiling (the capture's).
        let stop_began = (!cut).then_some(start);
        let _ = self
            .capture_in(t, (!cut).then_some(engine), false, stop_began)
            .await;
    }

    /// Captures for `t`: checks the policy (unless asked by hand) and `--max-captures`, stops
    /// the target, runs the script, lets the target go on as soon as the script has run or the
    /// stop budget has run out (whichever is first; unless the policy keeps it stopped), then
    /// writes the bundle.
    async fn capture(
        &mut self,
        t: Trigger,
        engine: Option<Engine>,
        manual: bool,
    ) -> Result<Value, String> {
        self.capture_in(t, engine, manual, None).await
    }

    /// [`Actor::capture`] in a stop that began at `stop_began` (a sample's break-in): the
    /// stop ceiling counts from there.
    async fn capture_in(
        &mut self,
        t: Trigger,
        engine: Option<Engine>,
        manual: bool,
        stop_began: Option<Instant>,
    ) -> Result<Value, String> {
        let now = stop_began.unwrap_or_else(Instant::now);
        let refused = if !manual && let Err(why) = self.limiter.check(now, &self.spec.policy) {
            Some(why)
        } else if !self.quota.take() {
            Some("the watch has made the captures --max-captures allows".to_string())
        } else {
            None
        };
        if let Some(why) = refused {
            self.state(
                "capture-skipped",
                &format!("{}: {} ({why})", t.kind, t.detail),
            );
            if self.host.status().stopped && self.held.is_none() && !self.rearm_after_capture {
                self.resume().await;
            }
            return Err(why);
        }
        let t = match self.stop_checked().await {
            Ok(false) => t,
            // What the target did by itself in that instant is what is captured.
            Ok(true) => self.stopped_by_itself(),
            Err(e) => {
                self.quota.give_back();
                self.state("capture-failed", &e);
                return Err(e);
            }
        };
        // A capture a sample led to says what the sample cost (the target has been stopped
        // since the sample's break-in).
        self.hub.state(
            &self.spec.name,
            "capturing",
            &format!("{}: {}", t.kind, t.detail),
            match &t.sample {
                Some(s) => json!({ "sample": s }),
                None => Value::Null,
            },
        );
        let lost: Lost = Arc::new(Mutex::new(None));
        let cancel = Arc::new(AtomicBool::new(false));
        let monitor = tokio::spawn(watch_for_loss(
            self.host.clone(),
            lost.clone(),
            cancel.clone(),
        ));
        // The same hang still there (the same trigger, or an operator asking): go on where the
        // cut capture stopped. A stop of the machine's own (a bugcheck) starts over.
        let continues = self.unfinished.take().filter(|c| {
            t.kind != "stopped"
                && (c.trigger_kind == t.kind || manual)
                && c.made.elapsed() < CONTINUE_WITHIN
        });
        let job = Job {
            continues,
            name: self.spec.name.clone(),
            tags: self.spec.tags.clone(),
            out: self.spec.out.clone(),
            trigger: t,
            script: self.spec.script.clone(),
            started: now,
            budget: self.spec.policy.budget,
            command_budget: self.spec.policy.command_budget,
        };
        let engine = match engine {
            Some(e) => Some(e),
            None => self.held.take().map(|h| h.engine),
        };
        let host = self.host.clone();
        let session = self.host.clone();
        let rt = tokio::runtime::Handle::current();
        let symbols = self.spec.symbols.clone();
        let stamp = super::utc_stamp(super::now_secs());
        let (gathered_tx, gathered_rx) = oneshot::channel::<()>();
        let (stopped_tx, stopped_rx) = std::sync::mpsc::channel::<Option<f64>>();
        let task = tokio::task::spawn_blocking(move || {
            let mut e = match engine {
                Some(e) => e,
                None => host
                    .open(rt, crate::symbols::path(symbols.as_deref()))
                    .map(Engine::new)
                    .map_err(|e| e.to_string())?,
            };
            e.kernel.mem.set_cancel(Some(cancel));
            let g = bundle::gather(&mut e, &job, &lost, &stamp);
            e.kernel.mem.set_cancel(None);
            drop(gathered_tx);
            // The bundle says how long the target was kept stopped: the task knows.
            let stopped = stopped_rx.recv().unwrap_or(None);
            let link = session.traffic();
            let c = g
                .and_then(|g| bundle::write(g, &job, stopped, Some(&link)))
                .map_err(|e| format!("{e:#}"));
            c.map(|c| (e, c))
        });
        // The target goes on when the script is done or at the budget, whatever is running.
        let budget_end = tokio::time::Instant::from_std(now + self.spec.policy.budget);
        let cut = tokio::select! {
            _ = gathered_rx => tokio::time::Instant::now() >= budget_end,
            _ = tokio::time::sleep_until(budget_end) => true,
        };
        monitor.abort();
        let keep = self.spec.policy.leave_stopped;
        let mut resumed = false;
        if cut {
            self.hub.note(
                &self.spec.name,
                &format!(
                    "the stop budget of {} ran out during the capture{}",
                    seconds_text(self.spec.policy.budget),
                    if keep {
                        ""
                    } else {
                        ": the target continues; the bundle keeps what was read"
                    }
                ),
            );
        }
        // A target that went silent is still ours to let go: resume() remembers it and lets
        // it go when it is heard again.
        if !keep && self.host.status().stopped {
            if cut {
                // Whatever the script is reading: the read in flight is abandoned.
                self.resume_now("the stop budget ran out").await;
            } else {
                self.resume().await;
            }
            resumed = true;
        }
        let _ = stopped_tx.send((!keep).then(|| now.elapsed().as_secs_f64()));
        let result = task
            .await
            .unwrap_or_else(|e| Err(format!("the capture thread failed: {e}")));
        self.limiter.record(now);
        let out = match result {
            Ok((engine, mut c)) => {
                self.unfinished = c.unfinished.take();
                let v = json!({
                    "bundle": c.dir,
                    "complete": c.complete,
                    "cut": cut,
                    "max_stop_seconds": self.spec.policy.budget.as_secs_f64(),
                    "continues": c.continues,
                    "to_be_continued": self.unfinished.is_some(),
                    "failed_steps": c.failed_steps,
                    "findings": c.summary,
                    "round_trips": c.round_trips,
                    "bytes": c.bytes,
                    "stopped_seconds": c.seconds,
                });
                self.hub.state(
                    &self.spec.name,
                    "captured",
                    &format!(
                        "{}{}{}{}",
                        c.dir.display(),
                        if c.complete { "" } else { " (incomplete)" },
                        match &c.continues {
                            Some(b) => format!(" (goes on from {})", b.display()),
                            None => String::new(),
                        },
                        if c.failed_steps > 0 {
                            format!(" ({} steps failed)", c.failed_steps)
                        } else {
                            String::new()
                        }
                    ),
                    v.clone(),
                );
                for line in &c.summary {
                    self.hub.note(&self.spec.name, &format!("finding: {line}"));
                }
                // The copy and the operator's command run beside the watch, never in its way.
                let after = self.spec.after.clone();
                if after.copy_to.is_some() || after.on_capture.is_some() {
                    tokio::spawn(super::after::run(
                        self.hub.clone(),
                        self.spec.name.clone(),
                        after,
                        c.dir.clone(),
                    ));
                }
                if keep && c.complete {
                    let at = stop_count(&self.host);
                    self.held = Some(Held {
                        engine,
                        at,
                        owner: None,
                        lease: None,
                    });
                    self.state("stopped", "left stopped after the capture");
                } else {
                    if !resumed
                        && self.host.status().link == Link::Connected
                        && !self.rearm_after_capture
                    {
                        self.resume().await;
                    }
                    // The breakpoints' engine (the same boot) goes back to them.
                    if self.rearm_after_capture
                        && let Some(a) = self.armed.as_mut()
                        && a.engine.is_none()
                    {
                        a.engine = Some(engine);
                    }
                }
                Ok(v)
            }
            Err(e) => {
                self.state("capture-failed", &e);
                if !keep && !resumed && self.host.status().stopped && !self.rearm_after_capture {
                    self.resume().await;
                }
                Err(e)
            }
        };
        let _ = self.captured.send(());
        out
    }

    /// A client's request on a target it holds (or that a client it replaces held) makes it
    /// the holder, with no lease running.
    fn adopt(&mut self, client: Client) {
        if let Some(h) = &mut self.held
            && h.owner.is_some()
        {
            h.owner = Some(client);
            h.lease = None;
        }
    }

    async fn request(&mut self, r: Request) {
        match r {
            Request::Capture(client, reply) => {
                self.adopt(client);
                let t = Trigger {
                    kind: "manual".into(),
                    detail: "asked for by a control client".into(),
                    sample: None,
                    hit: None,
                };
                let r = if self.host.status().link != Link::Connected {
                    Err("the target is not connected".to_string())
                } else {
                    self.capture(t, None, true).await
                };
                let _ = reply.send(r);
            }
            Request::Break(client, reply) => {
                let r = self.break_and_hold(client).await;
                let _ = reply.send(r);
            }
            Request::Continue(reply) => {
                let r = if self.host.status().stopped {
                    self.resume().await;
                    Ok(json!({ "running": true }))
                } else {
                    Err("the target is not stopped".to_string())
                };
                let _ = reply.send(r);
            }
            Request::Run(client, line, within, gone, reply) => {
                self.adopt(client);
                let r = self.run_line(line, within, gone).await;
                let _ = reply.send(r);
            }
            Request::Release(client) => {
                if let Some(h) = &mut self.held
                    && h.owner == Some(client)
                    && h.lease.is_none()
                {
                    h.lease = Some(tokio::time::Instant::now() + self.lease);
                    self.hub.note(
                        &self.spec.name,
                        &format!(
                            "the control client that broke in went away: the target continues in {} s unless a client takes it",
                            self.lease.as_secs()
                        ),
                    );
                }
            }
        }
    }

    async fn break_and_hold(&mut self, client: Client) -> Result<Value, String> {
        if self.host.status().link != Link::Connected {
            return Err("the target is not connected".into());
        }
        if let Some(h) = &mut self.held {
            h.owner = Some(client);
            h.lease = None;
            return Ok(json!({ "stopped": true, "already": true }));
        }
        self.stop().await?;
        let e = self.open().await?;
        let at = stop_count(&self.host);
        self.held = Some(Held {
            engine: e,
            at,
            owner: Some(client),
            lease: None,
        });
        self.state("stopped", "broken in by a control client");
        Ok(json!({ "stopped": true }))
    }

    /// Runs a client's command line on the engine of the stop it holds. The client going away
    /// (`gone`) or the watch ending cancels it: a `g` under way stops the target and takes its
    /// breakpoints out, and the rest is not run.
    async fn run_line(
        &mut self,
        line: String,
        within: Option<Duration>,
        gone: Arc<AtomicBool>,
    ) -> Result<String, String> {
        let stmts = script::parse(&line).map_err(|e| e.to_string())?;
        let Some(held) = self.held.take() else {
            return Err("the target is running: break in first (op \"break\")".into());
        };
        let Held {
            engine,
            at,
            owner,
            lease,
        } = held;
        // `.snapshot NAME` from a client writes beside the bundles.
        let dir = self.spec.out.clone();
        let cancel = gone.clone();
        let mut task = tokio::task::spawn_blocking(move || {
            let mut e = engine;
            e.kernel.mem.set_cancel(Some(cancel));
            let mut outs = Vec::new();
            let before = e.deadline;
            if let Some(d) = within {
                let at = Instant::now() + d;
                e.deadline = Some(before.map_or(at, |b| b.min(at)));
            }
            {
                let mut runner = Runner::new(&mut e, dir);
                // The answer is one line a client reads whole: bounded.
                runner.output_limit = Some(MAX_RUN_OUTPUT);
                runner.run(&stmts, &mut |ev| {
                    outs.push(analysis::event_json_with_text(&ev).to_string());
                });
            }
            e.deadline = before;
            e.kernel.mem.set_cancel(None);
            (e, outs)
        });
        let mut stop = self.stop.clone();
        let joined = tokio::select! {
            r = &mut task => r,
            _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => {
                gone.store(true, Ordering::SeqCst);
                task.await
            }
        };
        let (engine, outs) = joined.map_err(|e| format!("the command thread failed: {e}"))?;
        // A `g` among the commands ran the target: the stop it ended in is the client's.
        let at = if self.host.status().stopped {
            stop_count(&self.host)
        } else {
            at
        };
        self.held = Some(Held {
            engine,
            at,
            owner,
            lease,
        });
        Ok(format!("[{}]", outs.join(",")))
    }
}

/// The most output (text and JSON of every result) one control-socket `run` answers with; past
/// it the line stops and says what it did not run.
pub const MAX_RUN_OUTPUT: usize = 16 << 20;

async fn tick(i: &mut Option<tokio::time::Interval>) {
    match i {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Sends a trigger for each DbgPrint line that matches a pattern.
async fn watch_prints(host: Session, patterns: Vec<String>, tx: mpsc::Sender<Trigger>) {
    let mut events = host.events();
    while let Some(ev) = events.next().await {
        let Event::Print(text) = ev else { continue };
        for line in text.lines() {
            if let Some(p) = patterns.iter().find(|p| matches(p, line)) {
                // A full queue means a capture is already on its way.
                let _ = tx.try_send(Trigger {
                    kind: "dbgprint".into(),
                    detail: format!("{line:?} matched {p:?}"),
                    sample: None,
                    hit: None,
                });
            }
        }
    }
}

/// Runs the health probe while the target runs; failing for `after` sends a trigger.
#[allow(clippy::too_many_arguments)]
async fn run_probe(
    host: Session,
    p: super::config::Probe,
    every: Duration,
    after: Duration,
    tx: mpsc::Sender<Trigger>,
    hub: Arc<Hub>,
    name: String,
    breakpoints: Option<Arc<AtomicBool>>,
) {
    let mut f = Failing::default();
    let mut last_stops = stop_count(&host);
    let mut was_ok = true;
    // The watcher's breakpoints stop the target for a moment at each hit (at most the share
    // `max_hit_stop` allows).
    let judging = || {
        breakpoints
            .as_ref()
            .is_some_and(|b| b.load(Ordering::SeqCst))
    };
    loop {
        tokio::time::sleep(every).await;
        let s = host.status();
        // Failures while the target was stopped (by anyone) say nothing about its health;
        // while the watcher's breakpoints are kept in it, their hits' stops are not that.
        let held = !s.running || s.stops != last_stops;
        if s.link != Link::Connected || (held && !judging()) {
            last_stops = s.stops;
            f.reset();
            continue;
        }
        last_stops = s.stops;
        let r = probe::check(&p, every.max(Duration::from_secs(2))).await;
        if host.status().stops != last_stops && !judging() {
            continue;
        }
        if r.is_ok() != was_ok {
            was_ok = r.is_ok();
            hub.note(
                &name,
                &match &r {
                    Ok(()) => "probe: healthy again".to_string(),
                    Err(e) => format!("probe failing: {e}"),
                },
            );
        }
        if f.record(r.is_ok(), Instant::now(), after) {
            let _ = tx
                .send(Trigger {
                    kind: "probe".into(),
                    detail: format!(
                        "failing for {:.0} s: {}",
                        after.as_secs_f64(),
                        r.err().unwrap_or_default()
                    ),
                    sample: None,
                    hit: None,
                })
                .await;
        }
    }
}

/// Tells the task of each reboot of the target.
async fn watch_reboots(
    host: Session,
    tx: mpsc::Sender<()>,
    count: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut events = host.events();
    while let Some(ev) = events.next().await {
        if let Event::Connected { rebooted: true, .. } = ev {
            count.fetch_add(1, Ordering::SeqCst);
            let _ = tx.send(()).await;
        }
    }
}

/// Marks the capture lost (and stops its reads) when the target reboots or stops answering.
async fn watch_for_loss(host: Session, lost: Lost, cancel: Arc<AtomicBool>) {
    let mut events = host.events();
    let why = loop {
        match events.next().await {
            Some(Event::Connected { .. }) => {
                break "the target rebooted during the capture".to_string();
            }
            Some(Event::Silent { after }) => {
                break format!(
                    "the target stopped answering during the capture (nothing heard for {:.1} s)",
                    after.as_secs_f64()
                );
            }
            None => break "the session ended".to_string(),
            Some(_) => {}
        }
    };
    if let Ok(mut l) = lost.lock() {
        *l = Some(why);
    }
    cancel.store(true, Ordering::SeqCst);
}
