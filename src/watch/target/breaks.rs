//! The watcher's breakpoints in one target (`--breakpoint`, `--count-breakpoint`): kept in an
//! engine of their own, written into the target while it runs and taken out whenever it
//! stops, as a `g` does. The engine runs the motion on a blocking thread; the target's task
//! goes on with everything else, and when it needs the target (a sample, a control client, a
//! probe's capture, the end of the watch) it cancels the motion, which breaks in and takes the
//! breakpoints out first.
//!
//! A hit whose condition holds either captures (the policy's rate limit and cool-down apply;
//! a hit held back is counted as skipped and said once) or is counted. Hits keep the target
//! stopped while they are judged: over the last 10 s they may take at most the policy's share
//! of the time (`max_hit_stop`), past which the breakpoints are taken out for a minute. After
//! a reboot the breakpoints are set again in the new kernel (resolved afresh); a new key keeps
//! them.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kdnet_commands::control::{self, Ended, Meter, Motion, Reason};
use kdnet_commands::engine::{CmdError, Engine};
use kdnet_live::Link;
use kdnet_model::target::DBG_CONTINUE;
use serde_json::{Value, json};

use super::super::bundle::Trigger;
use super::super::config::WatchBreakpoint;
use super::Actor;

/// The window the share of time held by hits is measured over.
const HIT_WINDOW: Duration = Duration::from_secs(10);
/// How long the breakpoints stay out once the hits took more than their share.
const PAUSE: Duration = Duration::from_secs(60);
/// How long after a failure to set them they are tried again.
const RETRY: Duration = Duration::from_secs(30);

/// One watched breakpoint and what its hits did.
#[derive(Debug)]
pub(super) struct Mark {
    pub spec: WatchBreakpoint,
    /// Its number in the engine (None: not set, see `failed`).
    id: Option<u32>,
    /// Where it is (None: not set, or a `bu` waiting for its module).
    address: Option<u64>,
    /// Why it could not be set.
    failed: Option<String>,
    /// Hits that stopped (the condition held): captured, counted or skipped.
    captured: u64,
    counted: u64,
    skipped: u64,
    /// Hits the condition, pass count or filters let go on.
    passed: u64,
    /// A capture held back by the policy was said; the next ones are only counted.
    skip_told: bool,
}

impl Mark {
    fn json(&self) -> Value {
        let address = self.address;
        json!({
            "command": self.spec.command,
            "action": if self.spec.capture { "capture" } else { "count" },
            "id": self.id,
            "address": address.map(|a| format!("{a:#x}")),
            "error": self.failed,
            "captured": self.captured,
            "counted": self.counted,
            "skipped": self.skipped,
            "passed": self.passed,
        })
    }
}

/// The motion under way.
struct Running {
    task: tokio::task::JoinHandle<(Engine, Result<Ended, CmdError>)>,
    cancel: Arc<AtomicBool>,
}

/// A target's watched breakpoints.
pub(super) struct Armed {
    pub marks: Vec<Mark>,
    /// The engine holding them, between motions (a capture borrows it).
    pub engine: Option<Engine>,
    running: Option<Running>,
    meter: Arc<Meter>,
    /// Passes already counted, per engine breakpoint number.
    passes_seen: BTreeMap<u32, u64>,
    /// Time held by hits the task itself went on from (counted, skipped).
    held_here: Duration,
    /// (when, time held by hits so far), over the window.
    history: VecDeque<(Instant, Duration)>,
    /// Not set again before this (the share was passed, or setting them failed).
    pub not_before: Option<tokio::time::Instant>,
    /// Why they are out (said when they are set again).
    paused: Option<String>,
    /// Raised while a motion runs (an ending lets it finish).
    moving: Arc<AtomicBool>,
    /// The counts last reported.
    reported: Vec<(u64, u64, u64, u64)>,
    /// The reboots seen when the engine was made (see `Actor::reboots`).
    boot: u64,
    /// See [`Armed::judging_flag`].
    judging: Arc<AtomicBool>,
}

impl Armed {
    pub fn new(specs: &[WatchBreakpoint]) -> Option<Armed> {
        if specs.is_empty() {
            return None;
        }
        Some(Armed {
            marks: specs
                .iter()
                .map(|s| Mark {
                    spec: s.clone(),
                    id: None,
                    address: None,
                    failed: None,
                    captured: 0,
                    counted: 0,
                    skipped: 0,
                    passed: 0,
                    skip_told: false,
                })
                .collect(),
            engine: None,
            running: None,
            meter: Arc::new(Meter::default()),
            passes_seen: BTreeMap::new(),
            held_here: Duration::ZERO,
            history: VecDeque::new(),
            not_before: None,
            paused: None,
            moving: Arc::new(AtomicBool::new(false)),
            reported: Vec::new(),
            boot: 0,
            judging: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Raised while the breakpoints are kept in the running target, their hits judged (those
    /// stops are short, and bounded by `max_hit_stop`); lowered while they are out (a capture,
    /// a sample, a client, a pause).
    pub fn judging_flag(&self) -> Arc<AtomicBool> {
        self.judging.clone()
    }

    /// A motion runs.
    pub fn moving(&self) -> bool {
        self.running.is_some()
    }

    /// It should be set going now.
    pub fn wants_arming(&self) -> bool {
        self.running.is_none()
            && self
                .not_before
                .is_none_or(|t| tokio::time::Instant::now() >= t)
    }

    /// Counts the hits that went on since last seen (the motion counts them as it goes);
    /// (mark, new passes).
    fn passes(&mut self) -> Vec<(usize, u64)> {
        let now = self.meter.passes();
        let mut out = Vec::new();
        for (i, m) in self.marks.iter_mut().enumerate() {
            let Some(id) = m.id else { continue };
            let total = now.get(&id).copied().unwrap_or(0);
            let seen = self.passes_seen.entry(id).or_insert(0);
            if total > *seen {
                let n = total - *seen;
                *seen = total;
                m.passed += n;
                out.push((i, n));
            }
        }
        out
    }

    /// Publishes the passes since last seen.
    fn publish_passes(&mut self, name: &str, hub: &super::super::hub::Hub) {
        for (i, n) in self.passes() {
            hub.metrics()
                .hits(name, &self.marks[i].spec.command, "passed", n);
        }
    }
}

/// Waits for the motion under way to end (never, when none runs).
pub(super) async fn motion_end(
    a: &mut Option<Armed>,
) -> Result<(Engine, Result<Ended, CmdError>), String> {
    let Some(r) = a.as_mut().and_then(|a| a.running.as_mut()) else {
        return std::future::pending().await;
    };
    let out = (&mut r.task).await;
    if let Some(a) = a.as_mut() {
        a.running = None;
    }
    out.map_err(|e| format!("the breakpoints' thread failed: {e}"))
}

impl Actor {
    fn armed_note(&self, text: &str, extra: Value) {
        self.hub.note_with(&self.spec.name, text, extra);
    }

    /// Sets the breakpoints going: stops the target if it runs, opens their engine and sets
    /// them if it has none (the first time, after a reboot), and lets the target go with them
    /// written. Whatever fails is said and tried again later; the target is never left
    /// stopped by it.
    pub(super) async fn arm(&mut self) {
        let Some(a) = self.armed.as_mut() else { return };
        if !a.wants_arming() {
            return;
        }
        // An engine of a boot that is over (the reboot seen here first) is not used.
        if a.boot != self.reboots.load(Ordering::SeqCst) {
            self.forget_boot();
        }
        let was_running = !self.host.status().stopped;
        if let Err(e) = self.stop().await {
            self.arming_failed(&format!("the breakpoints could not be set: {e}"), false)
                .await;
            return;
        }
        let mut engine = match self.armed.as_mut().and_then(|a| a.engine.take()) {
            Some(e) => e,
            None => match self.open().await {
                Ok(e) => e,
                Err(err) => {
                    self.arming_failed(
                        &format!("the breakpoints could not be set: the kernel could not be opened: {err}"),
                        was_running,
                    )
                    .await;
                    return;
                }
            },
        };
        let Some(a) = self.armed.as_mut() else { return };
        if engine.control.breakpoints.is_empty() {
            // A fresh engine: set each breakpoint as its command says.
            crate::recovery::attach(&mut engine, &self.host, &a.moving);
            // The numbers start again in a new engine.
            a.publish_passes(&self.spec.name, &self.hub);
            a.meter = Arc::new(Meter::default());
            engine.control.meter = Some(a.meter.clone());
            a.passes_seen.clear();
            a.history.clear();
            a.held_here = Duration::ZERO;
            // The commands run off the runtime's threads (they read the target).
            let commands: Vec<String> = a.marks.iter().map(|m| m.spec.command.clone()).collect();
            let joined = tokio::task::spawn_blocking(move || {
                let mut set = Vec::new();
                for c in &commands {
                    let before: Vec<u32> = engine.control.breakpoints.keys().copied().collect();
                    let o = engine.run(c);
                    let id = engine
                        .control
                        .breakpoints
                        .keys()
                        .copied()
                        .find(|k| !before.contains(k));
                    let at = id
                        .and_then(|id| engine.control.breakpoints.get(&id))
                        .and_then(|b| b.address);
                    set.push((id, o.error, at));
                }
                (engine, set)
            })
            .await;
            let Ok((engine, set)) = joined else {
                self.arming_failed("the breakpoints' thread failed", true)
                    .await;
                return;
            };
            let Some(a) = self.armed.as_mut() else { return };
            let mut said = Vec::new();
            for (m, (id, error, at)) in a.marks.iter_mut().zip(set) {
                m.id = id;
                m.address = at;
                m.failed = match (error, id) {
                    (Some(err), _) => Some(err),
                    (None, None) => Some("it set no breakpoint".into()),
                    (None, Some(_)) => None,
                };
                said.push(m.json());
            }
            let set = a.marks.iter().filter(|m| m.id.is_some()).count();
            let text = format!(
                "breakpoints set: {set} of {}{}",
                a.marks.len(),
                a.marks
                    .iter()
                    .filter_map(|m| m
                        .failed
                        .as_ref()
                        .map(|f| format!("; `{}`: {f}", m.spec.command)))
                    .collect::<String>()
            );
            let none = set == 0;
            a.engine = Some(engine);
            self.armed_note(&text, json!({ "breakpoints": said }));
            if none {
                self.arming_failed("no breakpoint could be set", true).await;
                return;
            }
        } else {
            a.engine = Some(engine);
        }
        if let Some(a) = self.armed.as_mut()
            && let Some(why) = a.paused.take()
        {
            let text = format!("the breakpoints are written again ({why})");
            self.armed_note(&text, Value::Null);
        }
        self.start_motion();
    }

    /// Lets the target go with the breakpoints written, on the blocking pool.
    fn start_motion(&mut self) {
        let Some(a) = self.armed.as_mut() else { return };
        let Some(mut e) = a.engine.take() else { return };
        let cancel = Arc::new(AtomicBool::new(false));
        e.kernel.mem.set_cancel(Some(cancel.clone()));
        e.kernel.mem.set_deadline(None);
        e.deadline = None;
        let task = tokio::task::spawn_blocking(move || {
            let r = control::resume(
                &mut e,
                Motion::Go {
                    status: DBG_CONTINUE,
                    until: None,
                },
            );
            e.kernel.mem.set_cancel(None);
            (e, r)
        });
        a.running = Some(Running { task, cancel });
        a.judging.store(true, Ordering::SeqCst);
        self.state("running", "");
    }

    /// Setting the breakpoints failed: said, tried again later; a target stopped for it goes
    /// on.
    async fn arming_failed(&mut self, why: &str, resume: bool) {
        if let Some(a) = self.armed.as_mut() {
            a.judging.store(false, Ordering::SeqCst);
            a.not_before = Some(tokio::time::Instant::now() + RETRY);
        }
        self.armed_note(
            &format!("{why}; tried again in {} s", RETRY.as_secs()),
            Value::Null,
        );
        if resume && self.host.status().stopped {
            self.resume().await;
        }
    }

    /// Ends the motion under way (the target stops and the breakpoints come out) and deals
    /// with how it ended, without setting them going again. The target is stopped after,
    /// unless the link is gone.
    pub(super) async fn disarm(&mut self) {
        if let Some(a) = &self.armed {
            a.judging.store(false, Ordering::SeqCst);
        }
        let Some(r) = self.armed.as_mut().and_then(|a| a.running.take()) else {
            return;
        };
        r.cancel.store(true, Ordering::SeqCst);
        let out = r
            .task
            .await
            .map_err(|e| format!("the breakpoints' thread failed: {e}"));
        // Cancelled while a hit was being judged, the motion ends with the reads it could not
        // make: the target is stopped all the same, the breakpoints out.
        let out = out.map(|(e, r)| match r {
            Err(_) if self.host.status().stopped => (e, Ok(None)),
            r => (e, r.map(Some)),
        });
        self.after_motion_of(out, false).await;
    }

    /// The motion ended: a hit, a stop of the target's own, a break-in asked for, or a
    /// failure. With `rearm` the breakpoints are set going again when that is what comes next.
    pub(super) async fn after_motion(
        &mut self,
        out: Result<(Engine, Result<Ended, CmdError>), String>,
        rearm: bool,
    ) {
        self.after_motion_of(out.map(|(e, r)| (e, r.map(Some))), rearm)
            .await;
    }

    /// [`Actor::after_motion`], where `Ok(None)` is a motion cancelled on purpose.
    async fn after_motion_of(
        &mut self,
        out: Result<(Engine, Result<Option<Ended>, CmdError>), String>,
        rearm: bool,
    ) {
        let (engine, r) = match out {
            Ok(x) => x,
            Err(e) => {
                self.arming_failed(&e, true).await;
                return;
            }
        };
        let Some(a) = self.armed.as_mut() else { return };
        a.engine = Some(engine);
        a.publish_passes(&self.spec.name, &self.hub);
        let ended = match r {
            Ok(Some(x)) => x,
            Ok(None) => {
                if rearm {
                    self.start_motion();
                }
                return;
            }
            Err(e) => {
                // The breakpoints were taken out on the way (or the target went: the session
                // takes them out before it lets it go).
                self.arming_failed(&format!("the breakpoints' run failed: {e}"), true)
                    .await;
                return;
            }
        };
        match ended.reason {
            Reason::Breakpoint => self.on_hit(ended, rearm).await,
            Reason::BreakIn => {
                if rearm {
                    self.start_motion();
                }
            }
            _ => {
                // The target stopped by itself (an exception, a bugcheck): captured as such,
                // then the breakpoints go on.
                let t = self.stopped_by_itself();
                self.capture_for_breakpoints(t, rearm).await;
            }
        }
    }

    /// Captures while the breakpoints' engine holds the stop; the target is left stopped for
    /// the breakpoints to go on from (unless the capture let it go).
    async fn capture_for_breakpoints(&mut self, t: Trigger, rearm: bool) -> bool {
        if let Some(a) = &self.armed {
            a.judging.store(false, Ordering::SeqCst);
        }
        let engine = self.armed.as_mut().and_then(|a| a.engine.take());
        self.rearm_after_capture = rearm;
        let made = self.capture(t, engine, false).await.is_ok();
        self.rearm_after_capture = false;
        if rearm {
            self.rearm_or_resume().await;
        }
        made
    }

    /// After a hit dealt with: the breakpoints go on from the stop, or (the target was let go
    /// meanwhile) are set afresh.
    async fn rearm_or_resume(&mut self) {
        let s = self.host.status();
        if s.link != Link::Connected {
            // Stopped for the capture and gone silent: let go when heard again.
            if s.stopped || s.link == Link::Silent {
                self.owed = Some(s.stops);
            }
            return;
        }
        // Left stopped after the capture (--leave-stopped): the breakpoints wait for it to go
        // on.
        if self.held.is_some() {
            return;
        }
        let Some(a) = self.armed.as_mut() else { return };
        if s.stopped && a.engine.is_some() && a.wants_arming() {
            self.start_motion();
        } else {
            self.arm().await;
        }
    }

    /// A breakpoint whose condition held: captured (if the policy allows) or counted.
    async fn on_hit(&mut self, ended: Ended, rearm: bool) {
        let held_from = Instant::now();
        let Some(a) = self.armed.as_mut() else { return };
        let id = ended.breakpoint;
        let Some(i) = a.marks.iter().position(|m| m.id.is_some() && m.id == id) else {
            if rearm {
                self.start_motion();
            }
            return;
        };
        let cmd = a.marks[i].spec.command.clone();
        if !a.marks[i].spec.capture {
            a.marks[i].counted += 1;
            self.hub.metrics().hits(&self.spec.name, &cmd, "counted", 1);
            if rearm {
                self.start_motion();
            }
            if let Some(a) = self.armed.as_mut() {
                a.held_here += held_from.elapsed();
            }
            return;
        }
        if let Err(why) = self.limiter.check(held_from, &self.spec.policy) {
            let Some(a) = self.armed.as_mut() else { return };
            let m = &mut a.marks[i];
            m.skipped += 1;
            let tell = !m.skip_told;
            m.skip_told = true;
            self.hub.metrics().hits(&self.spec.name, &cmd, "skipped", 1);
            if tell {
                self.state(
                    "capture-skipped",
                    &format!(
                        "breakpoint: `{cmd}` hit ({why}); its hits are counted, not captured, until the policy allows a capture"
                    ),
                );
            }
            if rearm {
                self.start_motion();
            }
            if let Some(a) = self.armed.as_mut() {
                a.held_here += held_from.elapsed();
            }
            return;
        }
        a.marks[i].skip_told = false;
        let hit = self.hit_of(&ended, i).await;
        let detail = format!(
            "breakpoint {} `{cmd}` hit on processor {}, thread {:#x}, at {:#x}",
            id.unwrap_or(0),
            ended.stop.processor,
            ended.stop.thread,
            ended.stop.pc
        );
        let t = Trigger {
            kind: "breakpoint".into(),
            detail,
            sample: None,
            hit: Some(hit),
        };
        // Counted as captured when a bundle was made (the capture's events say how it went).
        let made = self.capture_for_breakpoints(t, rearm).await;
        if let Some(a) = self.armed.as_mut() {
            let outcome = if made { "captured" } else { "failed" };
            if made {
                a.marks[i].captured += 1;
            }
            self.hub.metrics().hits(&self.spec.name, &cmd, outcome, 1);
        }
    }

    /// The hit as its bundle tells it: which breakpoint, where, the registers and the stack.
    async fn hit_of(&mut self, ended: &Ended, i: usize) -> Value {
        let Some(a) = self.armed.as_mut() else {
            return Value::Null;
        };
        let mark = a.marks[i].json();
        let Some(mut e) = a.engine.take() else {
            return json!({ "breakpoint": mark });
        };
        let stop = ended.stop.clone();
        let id = ended.breakpoint.unwrap_or(0);
        let joined = tokio::task::spawn_blocking(move || {
            e.processor = stop.processor;
            let r = e.run("r");
            let k = e.run("k");
            let mut text = format!(
                "Breakpoint {id} hit on processor {}, thread {:#x}\n",
                stop.processor, stop.thread
            );
            for o in [&r, &k] {
                text.push_str(&format!("kd> {}\n{}", o.command, o.text));
                if let Some(err) = &o.error {
                    text.push_str(&format!("error: {err}\n"));
                }
            }
            let v = json!({
                "processor": stop.processor,
                "thread": format!("{:#x}", stop.thread),
                "pc": format!("{:#x}", stop.pc),
                // Whole only when both were read whole (their errors are in the text).
                "complete": r.complete && k.complete,
                "incomplete": r.incomplete.iter().chain(&k.incomplete).collect::<Vec<_>>(),
                "registers": r.result,
                "stack": k.result,
                "text": text,
            });
            (e, v)
        })
        .await;
        match joined {
            Ok((e, mut v)) => {
                if let Some(a) = self.armed.as_mut() {
                    a.engine = Some(e);
                }
                v["breakpoint"] = mark;
                v
            }
            Err(e) => json!({ "breakpoint": mark, "error": format!("the thread failed: {e}") }),
        }
    }

    /// Every second while they are set: the share of the last 10 s the hits kept the target
    /// stopped. Past the policy's share they are taken out for a minute and the target goes on.
    pub(super) async fn check_hit_share(&mut self) {
        let max = self.spec.policy.max_hit_stop;
        let Some(a) = self.armed.as_mut() else { return };
        let now = Instant::now();
        let held = a.meter.read().1 + a.held_here;
        a.history.push_back((now, held));
        while a
            .history
            .get(1)
            .is_some_and(|(t, _)| now.duration_since(*t) >= HIT_WINDOW)
        {
            a.history.pop_front();
        }
        let Some(&(_, first)) = a.history.front() else {
            return;
        };
        let share = held.saturating_sub(first).as_secs_f64() / HIT_WINDOW.as_secs_f64();
        if share <= max || !a.moving() {
            return;
        }
        a.history.clear();
        let why = format!(
            "breakpoint hits kept the target stopped {:.0}% of the last {} s, more than the {:.0}% allowed",
            share * 100.0,
            HIT_WINDOW.as_secs(),
            max * 100.0
        );
        a.paused = Some(format!("they were out for {} s: {why}", PAUSE.as_secs()));
        a.not_before = Some(tokio::time::Instant::now() + PAUSE);
        self.disarm().await;
        self.armed_note(
            &format!(
                "{why}: the breakpoints are taken out for {} s and the target goes on",
                PAUSE.as_secs()
            ),
            json!({ "hit_stop_share": share, "max_hit_stop": max }),
        );
        if self.host.status().stopped && self.held.is_none() {
            self.resume().await;
        }
    }

    /// Every 5 s: the hits since the last report, when there were any.
    pub(super) fn report_hits(&mut self) {
        let Some(a) = self.armed.as_mut() else { return };
        a.publish_passes(&self.spec.name, &self.hub);
        let now: Vec<(u64, u64, u64, u64)> = a
            .marks
            .iter()
            .map(|m| (m.captured, m.counted, m.skipped, m.passed))
            .collect();
        if now == a.reported {
            return;
        }
        a.reported = now;
        let (went_on, held) = a.meter.read();
        let parts: Vec<String> = a
            .marks
            .iter()
            .map(|m| {
                format!(
                    "`{}`: {} captured, {} counted, {} skipped, {} passed",
                    m.spec.command, m.captured, m.counted, m.skipped, m.passed
                )
            })
            .collect();
        let list: Vec<Value> = a.marks.iter().map(Mark::json).collect();
        let text = format!("breakpoint hits: {}", parts.join("; "));
        let held = held + a.held_here;
        self.armed_note(
            &text,
            json!({
                "breakpoints": list,
                "stops_gone_on_from": went_on,
                "held_seconds": held.as_secs_f64(),
            }),
        );
    }

    /// The target rebooted: the breakpoints are set again in the new kernel.
    pub(super) async fn rebooted(&mut self) {
        let boots = self.reboots.load(Ordering::SeqCst);
        match &self.armed {
            None => return,
            // Already set in the new kernel (arm() saw the reboot first).
            Some(a) if a.boot == boots => return,
            Some(_) => {}
        }
        let was_moving = self.armed.as_ref().is_some_and(Armed::moving);
        self.disarm().await;
        self.forget_boot();
        // The break-in that ended the motion stopped the new kernel: set them there now
        // (rather than leave a stop the loop would take for the target's own).
        if was_moving && self.held.is_none() && self.host.status().stopped {
            self.arm().await;
        }
    }

    /// The breakpoints' engine belongs to a boot that is over: they are set afresh.
    fn forget_boot(&mut self) {
        let boots = self.reboots.load(Ordering::SeqCst);
        if let Some(a) = self.armed.as_mut() {
            a.engine = None;
            a.boot = boots;
            for m in &mut a.marks {
                m.id = None;
                m.address = None;
            }
            a.not_before = None;
            a.paused = Some("the target rebooted: set again in its new kernel".into());
        }
    }
}
