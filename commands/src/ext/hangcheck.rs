//! `!hangcheck`: the cheap look a watcher takes when it samples a running machine. It reads the
//! wait-for graph (threads, and the resource list only when some thread waits on a resource),
//! the PnP locks by their globals, the commit-failure counters and the NBL pools, and says what
//! looks hung: a thread waiting on a resource, mutant or PnP lock past a threshold, a resource
//! with exclusive waiters held past it, a PnP lock whose holder is itself stuck, a wait-for
//! cycle. Two samples tell more: commit failures rising, pending NBLs not draining.

use std::collections::BTreeSet;

use schemars::JsonSchema;
use serde::Serialize;

use super::{ndis, vm};
use crate::args::{Args, Kind, Param, Syntax};
use crate::engine::{CmdError, Engine, addr};
use crate::registry::Render;
use kdnet_model::nt::{locks, waitgraph};

/// The PnP manager's locks, by their globals.
pub const PNP_LOCKS: &[&str] = &[
    "PiEngineLock",
    "IopDeviceTreeLock",
    "PnpRegistryDeviceResource",
    "PiDependencyRelationsLock",
    "PiResourceListLock",
];

/// When a wait counts as hung.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
pub struct Thresholds {
    /// A wait on a resource, mutant or PnP lock longer than this (seconds).
    pub wait_seconds: f64,
    /// A resource with exclusive waiters (or a PnP lock whose holder waits) held longer than
    /// this (seconds; the longest waiter's wait is how long it has been held at least).
    pub held_seconds: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            wait_seconds: 60.0,
            held_seconds: 60.0,
        }
    }
}

/// A thread waiting too long.
#[derive(Debug, Clone, Serialize, PartialEq, JsonSchema)]
pub struct LongWait {
    /// The waiting thread.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub thread: u64,
    /// Its process's image.
    pub image: String,
    /// What it waits on.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub object: u64,
    /// The object's symbol, for globals.
    pub symbol: Option<String>,
    /// `ERESOURCE`, `Mutant`, `PnP lock`, …
    pub kind: String,
    /// How long (seconds).
    pub seconds: f64,
}

/// A lock held too long.
#[derive(Debug, Clone, Serialize, PartialEq, JsonSchema)]
pub struct HeldLong {
    /// The resource.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub resource: u64,
    /// Its symbol.
    pub symbol: Option<String>,
    /// The owning threads.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Vec<crate::hex::Hex>")]
    pub owners: Vec<u64>,
    /// Threads waiting for exclusive access.
    pub exclusive_waiters: u64,
    /// Held at least this long (seconds).
    pub seconds: f64,
    /// Why it counts: exclusive waiters, or a holder that is itself waiting.
    pub why: String,
}

/// One sample of a stopped machine.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// Threads waiting too long on a resource, mutant or PnP lock.
    pub long_waits: Vec<LongWait>,
    /// Locks held too long.
    pub held_long: Vec<HeldLong>,
    /// Wait-for cycles (threads).
    #[serde(serialize_with = "crate::hex::ser")]
    pub cycles: Vec<Vec<u64>>,
    /// Commit failures (banner count), when readable.
    pub commit_failures: Option<u64>,
    /// What the sample saw of the NBLs, when ndis.sys and its symbols are there and owner
    /// tracking is on.
    pub nbls: Option<NblLook>,
    /// What could not be examined.
    pub notes: Vec<String>,
    /// Something the sample needed could not be read (a read failed, a walk stopped early, a
    /// deadline ran out): the notes say what.
    pub incomplete: bool,
}

/// The pages of NBL owner slots a watcher's sample reads: one request a page, so a sample
/// costs a few dozen round trips however many NBLs the pools hold; the next sample goes on
/// where this one stopped.
pub const NBL_WINDOW_PAGES: usize = 12;

/// How many of the NBLs pending at the last sample the next one reads again (the ones seen
/// still held first): enough to tell draining from stuck, on a few pages.
pub const NBL_RECHECK: usize = 64;

/// What a sample saw of the NBLs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NblLook {
    /// NBLs held away from home that this sample saw, and their holders: those still held
    /// since the last sample first, then the ones this sample's look found.
    #[serde(serialize_with = "crate::hex::ser")]
    pub pending: Vec<[u64; 2]>,
    /// NBLs whose owner slots this sample read (besides those read again).
    pub examined: u64,
    /// Whether this sample looked at every NBL (a whole walk, or a look that went from the
    /// first pool to the end).
    pub whole: bool,
    /// NBLs pending at the last sample that this one read again.
    pub rechecked: u64,
    /// Of those, how many the same component still holds.
    pub still: u64,
    /// Where the next sample's look goes on.
    #[serde(skip)]
    pub next: Option<kdnet_model::nt::ndis::NblCursor>,
}

impl NblLook {
    /// Adds the pending NBLs a walk or window found after those already kept (the ones still
    /// held since the last sample), each once.
    fn add_found(&mut self, found: &[(u64, u64)]) {
        let kept: BTreeSet<u64> = self.pending.iter().map(|a| a[0]).collect();
        self.pending.extend(
            found
                .iter()
                .filter(|p| !kept.contains(&p.0))
                .map(|p| [p.0, p.1]),
        );
    }
}

/// How a sample looks at the NBLs.
enum NblMode<'a> {
    /// Every NBL, the pools' free lists followed (as `!ndiskd.pendingnbls` does), compared
    /// with the last sample's when there is one.
    Whole(Option<&'a NblLook>),
    /// A window of [`NBL_WINDOW_PAGES`] pages from where the last sample stopped, and the
    /// NBLs that were pending then read again.
    Window(Option<&'a NblLook>),
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The machine is broken: a deadlock, a bugcheck.
    Error,
    /// Something is stuck or draining badly: a long wait, a lock held long, packets held.
    Warning,
    /// Worth knowing: statistics such as the top pool tag.
    Information,
}

impl Severity {
    /// `error`, `warning`, `information`.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }
}

/// Something that looks hung.
#[derive(Debug, Clone, Serialize, PartialEq, JsonSchema)]
pub struct Finding {
    /// `deadlock`, `long-wait`, `held-long`, `commit-failures-rising`, `nbls-not-draining`.
    pub kind: &'static str,
    /// `error` (a deadlock), `warning` (a long wait, a lock held long, rising commit
    /// failures, packets not draining) or `information`.
    pub severity: Severity,
    /// One line for people.
    pub summary: String,
}

fn kind_of(edge_kind: &str) -> &'static str {
    if edge_kind.starts_with("ERESOURCE") {
        "ERESOURCE"
    } else if edge_kind == "Mutant" {
        "Mutant"
    } else if edge_kind == "FAST_MUTEX" {
        "FAST_MUTEX"
    } else {
        "Thread"
    }
}

/// Takes a sample of the stopped machine, starting from the threads: the resources waited for
/// are reached from their waiters (the resource list is read only for a waiter that leads to
/// none, and the notes say so).
pub fn sample(e: &mut Engine, th: &Thresholds) -> Result<Sample, CmdError> {
    sample_with(e, th, true, NblMode::Whole(None))
}

/// The watcher's sample: from the threads, and a window of the NBLs (see [`NblLook`]) that
/// goes on from the last sample's (`prev`) and reads again the NBLs pending then.
pub fn watch_sample(
    e: &mut Engine,
    th: &Thresholds,
    prev: Option<&NblLook>,
) -> Result<Sample, CmdError> {
    sample_with(e, th, true, NblMode::Window(prev))
}

/// Takes a sample the way the watcher's is checked against: every resource on the resource
/// list read, every NBL walked (and compared with `prev`'s, the last sample's).
pub fn sample_reference(
    e: &mut Engine,
    th: &Thresholds,
    prev: Option<&NblLook>,
) -> Result<Sample, CmdError> {
    sample_with(e, th, false, NblMode::Whole(prev))
}

fn sample_with(
    e: &mut Engine,
    th: &Thresholds,
    thread_first: bool,
    nbl_mode: NblMode<'_>,
) -> Result<Sample, CmdError> {
    // What the sample could not read is told apart from what was recorded before it; both stay
    // with the kernel for whatever command this sample is part of.
    let (earlier, _) = e.kernel.take_gaps();
    let r = sample_inner(e, th, thread_first, nbl_mode);
    let (gaps, dropped) = e.kernel.take_gaps();
    for g in earlier.iter().chain(&gaps) {
        e.kernel.note_incomplete(g.clone());
    }
    let mut s = r?;
    s.incomplete = !gaps.is_empty() || dropped > 0;
    for g in gaps {
        if !s.notes.contains(&g) {
            s.notes.push(g);
        }
    }
    Ok(s)
}

fn sample_inner(
    e: &mut Engine,
    th: &Thresholds,
    thread_first: bool,
    nbl_mode: NblMode<'_>,
) -> Result<Sample, CmdError> {
    let pnp: Vec<(u64, &str)> = PNP_LOCKS
        .iter()
        .filter_map(|n| e.kernel.sym(n).ok().map(|a| (a, *n)))
        .collect();
    let options = if thread_first {
        waitgraph::Options {
            thread_first: true,
            // What a thread is blocked in is not part of a sample.
            blockers: false,
            globals: pnp.iter().map(|p| p.0).collect(),
        }
    } else {
        waitgraph::Options::full()
    };
    let mut g = waitgraph::build_with(&mut e.kernel, &options)?;
    // In address order, however they were found.
    g.held.sort_by_key(|h| h.address);
    let mut s = Sample {
        notes: g.notes.clone(),
        ..Sample::default()
    };
    s.cycles = waitgraph::find_cycles(&g.edges);
    let pnp_name = |a: u64| pnp.iter().find(|p| p.0 == a).map(|p| format!("nt!{}", p.1));
    let wait_of = |t: u64| {
        g.nodes
            .get(&t)
            .filter(|n| n.thread.state == 5)
            .and_then(|n| n.thread.wait_seconds)
    };
    // Waits on what a hang is made of, past the threshold.
    let mut seen = BTreeSet::new();
    for x in &g.edges {
        let kind = kind_of(&x.kind);
        if kind == "Thread" || !seen.insert((x.waiter, x.object)) {
            continue;
        }
        let Some(secs) = wait_of(x.waiter) else {
            continue;
        };
        if secs < th.wait_seconds {
            continue;
        }
        let symbol = pnp_name(x.object).or_else(|| {
            g.held
                .iter()
                .find(|h| h.address == x.object)
                .and_then(|h| h.symbol.clone())
        });
        s.long_waits.push(LongWait {
            thread: x.waiter,
            image: g
                .nodes
                .get(&x.waiter)
                .map(|n| n.image.clone())
                .unwrap_or_default(),
            object: x.object,
            kind: if pnp_name(x.object).is_some() {
                "PnP lock".into()
            } else {
                kind.into()
            },
            symbol,
            seconds: secs,
        });
    }
    // Resources with exclusive waiters: held at least as long as the longest has waited.
    for h in &g.held {
        if h.exclusive_waiters.is_empty() {
            continue;
        }
        let longest = h
            .exclusive_waiters
            .iter()
            .filter_map(|w| wait_of(*w))
            .fold(0.0f64, f64::max);
        if longest >= th.held_seconds {
            s.held_long.push(HeldLong {
                resource: h.address,
                symbol: h.symbol.clone().or_else(|| pnp_name(h.address)),
                owners: h.owners.iter().map(|o| o.thread).collect(),
                exclusive_waiters: h.exclusive_waiter_count,
                seconds: longest,
                why: format!("{} exclusive waiter(s)", h.exclusive_waiters.len()),
            });
        }
    }
    // PnP locks, read by their globals: held, and the holder itself stuck in a wait.
    for (a, name) in &pnp {
        if s.held_long.iter().any(|h| h.resource == *a) {
            continue;
        }
        let l = match locks::walk(&mut e.kernel, false, Some(*a)) {
            Ok(l) => l,
            Err(err) => {
                let n = format!("nt!{name} unreadable: {err}");
                e.kernel.note_incomplete(n.clone());
                s.notes.push(n);
                continue;
            }
        };
        let Some(h) = l.held.into_iter().next().filter(|h| h.active_count != 0) else {
            continue;
        };
        for o in h.owners.iter().filter(|o| o.current && o.thread != 0) {
            let t = match e.kernel.thread(o.thread) {
                Ok(t) => t,
                Err(err) => {
                    let n = format!(
                        "thread {:x}, owner of nt!{name}, unreadable: {err}",
                        o.thread
                    );
                    e.kernel.note_incomplete(n.clone());
                    s.notes.push(n);
                    continue;
                }
            };
            let secs = t.wait_seconds.filter(|_| t.state == 5).unwrap_or(0.0);
            if secs >= th.held_seconds {
                s.held_long.push(HeldLong {
                    resource: *a,
                    symbol: Some(format!("nt!{name}")),
                    owners: vec![o.thread],
                    exclusive_waiters: h.exclusive_waiter_count,
                    seconds: secs,
                    why: format!(
                        "held {} by a thread waiting {:.0} s ({})",
                        if h.exclusive { "exclusively" } else { "shared" },
                        secs,
                        t.wait_reason_name
                    ),
                });
                break;
            }
        }
    }
    match vm::failure_counts(&mut e.kernel) {
        Ok(f) => s.commit_failures = Some(vm::banner_failures(&f)),
        Err(err) => {
            let n = format!("commit failures unreadable: {err}");
            e.kernel.note_incomplete(n.clone());
            s.notes.push(n);
        }
    }
    let has_ndis = e
        .kernel
        .modules()
        .map(|m| m.iter().any(|m| m.short.eq_ignore_ascii_case("ndis")));
    match has_ndis {
        Ok(true) => match look_at_nbls(&mut e.kernel, nbl_mode, &mut s.notes) {
            Ok(Some(look)) => s.nbls = Some(look),
            Ok(None) => s.notes.push("NBL owner tracking is off".into()),
            Err(err) => {
                let n = format!("NBLs not examined: {err}");
                e.kernel.note_incomplete(n.clone());
                s.notes.push(n);
            }
        },
        // Not in a list that is not whole: it may be loaded all the same.
        Ok(false) => {
            if let Some(why) = e.kernel.modules_incomplete() {
                s.notes.push(format!(
                    "NBLs not examined: ndis.sys is not in the module list, which is incomplete ({why})"
                ));
            }
        }
        Err(err) => {
            let n = format!("NBLs not examined: the module list is unreadable: {err}");
            e.kernel.note_incomplete(n.clone());
            s.notes.push(n);
        }
    }
    Ok(s)
}

/// The sample's look at the NBLs (`None`: owner tracking is off).
fn look_at_nbls(
    k: &mut kdnet_model::nt::Kernel,
    mode: NblMode<'_>,
    notes: &mut Vec<String>,
) -> Result<Option<NblLook>, CmdError> {
    let (base, t) = ndis::ndis(k)?;
    let prev = match mode {
        NblMode::Whole(prev) => {
            let w = ndis::walk_nbls(k, &t, base)?;
            if !w.tracking {
                return Ok(None);
            }
            let now: std::collections::BTreeMap<u64, u64> = w.pending.iter().copied().collect();
            let mut look = NblLook {
                examined: w.total,
                whole: w.notes.is_empty(),
                ..NblLook::default()
            };
            // Every NBL pending last time is read again here; the ones still held go first.
            // A walk that left NBLs out cannot tell a drained NBL from one it did not read: it
            // is not compared.
            if prev.is_some() && !look.whole {
                notes.push(
                    "the NBLs pending at the last sample are not compared: the walk left NBLs out"
                        .into(),
                );
            }
            if let Some(p) = prev.filter(|_| look.whole) {
                for a in &p.pending {
                    look.rechecked += 1;
                    if now.get(&a[0]) == Some(&a[1]) {
                        look.still += 1;
                        look.pending.push(*a);
                    }
                }
            }
            look.add_found(&w.pending);
            return Ok(Some(look));
        }
        NblMode::Window(prev) => prev,
    };
    let w =
        kdnet_model::nt::ndis::look_nbls(k, &t, base, prev.and_then(|p| p.next), NBL_WINDOW_PAGES)?;
    if !w.tracking {
        return Ok(None);
    }
    let mut look = NblLook {
        examined: w.examined,
        whole: w.from_start && w.next.is_none() && w.notes.is_empty(),
        next: w.next,
        ..NblLook::default()
    };
    notes.extend(w.notes.iter().map(|n| format!("NBLs: {n}")));
    // The NBLs pending last time: still held by the same component, or drained.
    if let Some(p) = prev {
        let again: Vec<[u64; 2]> = p.pending.iter().take(NBL_RECHECK).copied().collect();
        let nbls: Vec<u64> = again.iter().map(|a| a[0]).collect();
        for (a, now) in again
            .iter()
            .zip(kdnet_model::nt::ndis::holders(k, &t, &nbls)?)
        {
            match now {
                Ok(h) => {
                    look.rechecked += 1;
                    if h == Some(a[1]) {
                        look.still += 1;
                        look.pending.push(*a);
                    }
                }
                // Not read: neither still held nor drained, and kept to be read next time.
                Err(e) => {
                    let n = format!("NBL {:x} could not be read again: {e}", a[0]);
                    k.note_incomplete(n.clone());
                    notes.push(n);
                    look.pending.push(*a);
                }
            }
        }
    }
    look.add_found(&w.pending);
    Ok(Some(look))
}

/// What a sample (and the one before it, taken while the machine ran in between) says.
pub fn judge(prev: Option<&Sample>, cur: &Sample) -> Vec<Finding> {
    let mut out = Vec::new();
    for c in &cur.cycles {
        out.push(Finding {
            kind: "deadlock",
            severity: Severity::Error,
            summary: format!(
                "wait-for cycle of {} threads: {}",
                c.len(),
                c.iter()
                    .map(|t| format!("{t:x}"))
                    .collect::<Vec<_>>()
                    .join(" → ")
            ),
        });
    }
    for w in &cur.long_waits {
        out.push(Finding {
            kind: "long-wait",
            severity: Severity::Warning,
            summary: format!(
                "thread {:x} ({}) has waited {:.0} s on {} {}",
                w.thread,
                w.image,
                w.seconds,
                w.kind,
                w.symbol.clone().unwrap_or_else(|| addr(w.object))
            ),
        });
    }
    for h in &cur.held_long {
        out.push(Finding {
            kind: "held-long",
            severity: Severity::Warning,
            summary: format!(
                "{} held at least {:.0} s: {}",
                h.symbol.clone().unwrap_or_else(|| addr(h.resource)),
                h.seconds,
                h.why
            ),
        });
    }
    let Some(prev) = prev else {
        return out;
    };
    if let (Some(a), Some(b)) = (prev.commit_failures, cur.commit_failures)
        && b > a
    {
        out.push(Finding {
            kind: "commit-failures-rising",
            severity: Severity::Warning,
            summary: format!("commit failures rose from {a} to {b} since the last sample"),
        });
    }
    // Of the NBLs pending at the last sample and read again, at least half are still held by
    // the same component.
    if let Some(n) = &cur.nbls
        && n.still > 0
        && 2 * n.still >= n.rechecked
    {
        out.push(Finding {
            kind: "nbls-not-draining",
            severity: Severity::Warning,
            summary: format!(
                "{} of the {} NBLs pending at the last sample and read again are still held by the same component ({} seen pending now)",
                n.still,
                n.rechecked,
                n.pending.len()
            ),
        });
    }
    out
}

/// `!hangcheck [SECONDS]`.
pub const SYNTAX: Syntax = Syntax::params(&[Param {
    name: "SECONDS",
    kind: Kind::Seconds,
    optional: true,
}]);

/// What `!hangcheck` found.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct HangCheck {
    /// When a wait counts as hung.
    pub thresholds: Thresholds,
    /// What looks hung.
    pub findings: Vec<Finding>,
    /// Threads waiting too long on a resource, mutant or PnP lock.
    pub long_waits: Vec<LongWait>,
    /// Locks held too long.
    pub held_long: Vec<HeldLong>,
    /// Wait-for cycles (threads).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Vec<Vec<crate::hex::Hex>>")]
    pub cycles: Vec<Vec<u64>>,
    /// Commit failures (banner count), when readable.
    pub commit_failures: Option<u64>,
    /// How many NBLs are pending (null when not known).
    pub pending_nbls: Option<usize>,
    /// What could not be examined.
    pub notes: Vec<String>,
}

/// `!hangcheck [SECONDS]`: one sample and what it finds on its own.
pub fn command(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<HangCheck, CmdError> {
    let mut th = Thresholds::default();
    if let Some(secs) = a.seconds("SECONDS")? {
        th.wait_seconds = secs;
        th.held_seconds = secs;
    }
    let s = sample(e, &th)?;
    let findings = judge(None, &s);
    Ok(HangCheck {
        thresholds: th,
        findings,
        long_waits: s.long_waits,
        held_long: s.held_long,
        cycles: s.cycles,
        commit_failures: s.commit_failures,
        pending_nbls: s.nbls.as_ref().map(|n| n.pending.len()),
        notes: s.notes,
    })
}

impl Render for HangCheck {
    fn render(&self, text: &mut String) {
        if self.findings.is_empty() {
            text.push_str(&format!(
                "No hang found (waits over {:.0} s on resources, mutants and PnP locks; locks held that long; wait-for cycles).\n",
                self.thresholds.wait_seconds
            ));
        }
        for f in &self.findings {
            text.push_str(&format!("{}: {}\n", f.kind.to_uppercase(), f.summary));
        }
        if let Some(c) = self.commit_failures {
            text.push_str(&format!("Commit failures so far: {c}\n"));
        }
        if let Some(p) = self.pending_nbls {
            text.push_str(&format!("Pending NBLs: {p}\n"));
        }
        for n in &self.notes {
            text.push_str(&format!("NOTE: {n}\n"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample that read again `rechecked` NBLs pending last time, `still` of them still held.
    fn with(failures: u64, rechecked: u64, still: u64) -> Sample {
        Sample {
            commit_failures: Some(failures),
            nbls: Some(NblLook {
                pending: (0..still).map(|i| [0x1000 + i * 0x200, 0x77]).collect(),
                examined: 200,
                rechecked,
                still,
                ..NblLook::default()
            }),
            ..Sample::default()
        }
    }

    #[test]
    fn two_samples_tell_rising_failures_and_stuck_packets() {
        let a = with(10, 0, 0);
        assert!(judge(None, &a).is_empty(), "one sample has no trend");
        let kinds = |f: Vec<Finding>| f.into_iter().map(|f| f.kind).collect::<Vec<_>>();
        assert_eq!(
            kinds(judge(Some(&a), &with(12, 3, 3))),
            ["commit-failures-rising", "nbls-not-draining"]
        );
        // Half still held is not draining; fewer is, and none read again tells nothing.
        assert_eq!(
            kinds(judge(Some(&a), &with(10, 4, 2))),
            ["nbls-not-draining"]
        );
        assert!(judge(Some(&a), &with(10, 5, 2)).is_empty());
        assert!(judge(Some(&a), &with(10, 3, 0)).is_empty());
        assert!(judge(Some(&a), &with(10, 0, 0)).is_empty());
    }
}
