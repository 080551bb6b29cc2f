//! Run control: the session's breakpoints and letting the target go on until something stops
//! it.
//!
//! Breakpoints live in the debugger and are written into the target only while it runs, as
//! WinDbg does: each `g`, `p` or `t` writes them (`int 3` through the kernel's breakpoint table)
//! just before the continue and takes them out the moment the target stops. So memory read
//! while stopped shows the real instructions, and a session that ends while the target is
//! stopped leaves nothing patched. A breakpoint at the instruction the processor stands on is
//! stepped over first (one single step without it, then the others written), so going on from
//! a hit runs the instruction and keeps the breakpoint.
//!
//! A hit is judged on the host: the thread and process filters, the pass count and the
//! condition (`/w "expr"`); a hit that does not stop (a condition false) costs the stop, the
//! registers, what the condition reads, the step over and the continue.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

use kdnet_model::target::{
    DBG_CONTINUE, Go, STATUS_BREAKPOINT, STATUS_SINGLE_STEP, StopEvent, StopKind, TargetError,
};

use crate::engine::{CmdError, Engine};

/// DR7 with nothing enabled.
pub const DR7_NONE: u64 = 0x400;
/// DR6.BS: a single step.
pub const DR6_BS: u64 = 0x4000;
/// The most breakpoints the kernel's table holds.
pub const MAX_SOFTWARE: usize = 32;
/// Hit outputs a `g` keeps (a breakpoint whose commands go on by themselves could fill memory).
pub const MAX_HIT_OUTPUTS: usize = 100;

/// How a breakpoint stops the processor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakKind {
    /// `int 3` written over the instruction (`bp`, `bu`).
    Software,
    /// A debug register (`ba`): e execute, w write, r read or write, i I/O.
    Hardware {
        /// `e`, `w`, `r` or `i`.
        access: char,
        /// Bytes watched: 1, 2, 4 or 8.
        size: u8,
    },
}

/// One breakpoint of the session.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct Breakpoint {
    /// Its number (`bl`, `bc 0`).
    pub id: u32,
    /// Where, as typed (`nt!IofCompleteRequest`, `fffff805`5c6a3b80`).
    pub spec: String,
    /// The address it resolved to; null for a `bu` whose module is not loaded yet.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub address: Option<u64>,
    /// Software or hardware.
    pub kind: BreakKind,
    /// Enabled (`be`) or disabled (`bd`).
    pub enabled: bool,
    /// Deferred (`bu`): resolved again when its module loads.
    pub deferred: bool,
    /// Deleted after its first hit (`/1`).
    pub one_shot: bool,
    /// The pass count: it stops on the Nth pass (0 or 1: every pass).
    pub pass_count: u64,
    /// Passes left before it stops.
    pub passes_left: u64,
    /// Only in this process (`/p EPROCESS`).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub process: Option<u64>,
    /// Only in this thread (`/t ETHREAD`).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub thread: Option<u64>,
    /// Stops only when this expression is not zero (`/w "expr"`).
    pub condition: Option<String>,
    /// Commands run when it stops (`"kb; g"`).
    pub command: Option<String>,
    /// Times the processor reached it.
    pub hits: u64,
    /// Times it stopped the target.
    pub stops: u64,
}

/// What to do with an exception or event (`sxe`, `sxd`, `sxn`, `sxi`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Filter {
    /// Stop (`sxe`).
    Break,
    /// Stop on the second chance only (`sxd`).
    SecondChance,
    /// Say so and go on (`sxn`).
    Output,
    /// Go on without a word (`sxi`).
    Ignore,
}

impl Filter {
    /// The command that sets it.
    pub fn verb(self) -> &'static str {
        match self {
            Filter::Break => "sxe",
            Filter::SecondChance => "sxd",
            Filter::Output => "sxn",
            Filter::Ignore => "sxi",
        }
    }
}

/// A breakpoint written into the target for this run: (id, address, handle).
#[derive(Debug, Clone, Copy)]
struct Written {
    address: u64,
    handle: u32,
}

/// The session's run control: breakpoints and event filters.
#[derive(Debug, Default)]
pub struct RunControl {
    /// The breakpoints, by number.
    pub breakpoints: BTreeMap<u32, Breakpoint>,
    /// Exception filters by code (`sxe 0xc0000005`, `sxe av`); codes not named follow
    /// WinDbg's defaults for a kernel target (second chance).
    pub exceptions: BTreeMap<u32, Filter>,
    /// Module loads that stop (`sxe ld:NAME`; `*` all).
    pub module_loads: Vec<String>,
    /// Module unloads that stop (`sxe ud`).
    pub module_unloads: Vec<String>,
    written: Vec<Written>,
    /// What the record holds now (addresses), so that it is written only when that changes.
    recorded: Vec<u64>,
    /// Where the written breakpoints are recorded, so that a session killed while the target
    /// runs can be undone by the next one.
    pub record: Option<Box<dyn Record>>,
    /// Set while a motion (`g`, `p`, `t`, `gu`) is under way: an ending that comes then lets
    /// it finish (the cancel it sets makes it stop the target and take its breakpoints out)
    /// before the target is let go.
    pub moving: Option<std::sync::Arc<AtomicBool>>,
    /// What the motions cost, read from another thread while one runs (the watcher keeps
    /// breakpoint hits from stopping the target too much of the time).
    pub meter: Option<std::sync::Arc<Meter>>,
}

/// What a motion's stops cost, counted as it goes: the stops it went on from and how long
/// the target was held in them, from the stop reaching the debugger to the continue leaving.
#[derive(Debug, Default)]
pub struct Meter {
    /// Stops a motion judged and went on from (conditions false, pass counts, filters,
    /// commands ending in `g`, exceptions passed on).
    pub went_on: std::sync::atomic::AtomicU64,
    /// Nanoseconds the target was held in them.
    pub held_nanos: std::sync::atomic::AtomicU64,
    /// Hits that went on (condition, pass count, filters), by breakpoint number.
    pub passed: std::sync::Mutex<BTreeMap<u32, u64>>,
}

impl Meter {
    /// Adds a stop held `d` and gone on from.
    pub fn add(&self, d: std::time::Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        self.went_on.fetch_add(1, Relaxed);
        self.held_nanos
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    /// A hit of breakpoint `id` went on.
    pub fn pass(&self, id: u32) {
        if let Ok(mut p) = self.passed.lock() {
            *p.entry(id).or_insert(0) += 1;
        }
    }

    /// Hits gone on so far, by breakpoint number.
    pub fn passes(&self) -> BTreeMap<u32, u64> {
        self.passed.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// (stops gone on from, time held) so far.
    pub fn read(&self) -> (u64, std::time::Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.went_on.load(Relaxed),
            std::time::Duration::from_nanos(self.held_nanos.load(Relaxed)),
        )
    }
}

impl std::fmt::Debug for dyn Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Record")
    }
}

/// Keeps the list of breakpoints written into the target outside the process (a file), so
/// that the next session can take them out if this one is killed while they are in.
pub trait Record: Send {
    /// The breakpoints now in the target: (address, handle). Empty: none.
    fn written(&mut self, now: &[(u64, u32)]) -> Result<(), String>;
}

/// How the target is let go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Motion {
    /// `g`, `gh`, `gn`: until something stops it (or `until`, a one-time breakpoint).
    Go {
        /// The continue status.
        status: u32,
        /// `g ADDR`.
        until: Option<u64>,
    },
    /// `t` (into calls) or `p` (over them): one instruction.
    Step {
        /// Over calls.
        over: bool,
    },
    /// `gu`: to the return address of the current function, in this frame.
    Return,
}

/// Why the target stopped, for the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// One of the session's breakpoints.
    Breakpoint,
    /// A single step ended (`p`, `t`).
    Step,
    /// The address `g ADDR` or `gu` ran to.
    Reached,
    /// An exception the filters stop on.
    Exception,
    /// A module load or unload asked for with `sxe ld` / `sxe ud`.
    Module,
    /// Broken into: the time budget ran out or the run was interrupted.
    BreakIn,
    /// Something else the target reported.
    Other,
}

/// What one motion ended with.
#[derive(Debug, Clone)]
pub struct Ended {
    /// Why.
    pub reason: Reason,
    /// The stop.
    pub stop: StopEvent,
    /// The breakpoint, for [`Reason::Breakpoint`].
    pub breakpoint: Option<u32>,
    /// Breakpoint hits judged on the way that did not stop (filter, pass count, condition).
    pub passed: u64,
    /// Output of breakpoint commands run on the way (hits whose commands went on).
    pub outputs: Vec<String>,
    /// Hit outputs left out (more than [`MAX_HIT_OUTPUTS`]).
    pub outputs_dropped: u64,
    /// The commands the breakpoint asks to run now that it stopped (the part before a final
    /// `g`, or all of them).
    pub commands: Vec<String>,
}

fn target_err(e: TargetError) -> CmdError {
    CmdError::from(e)
}

impl RunControl {
    /// The next free breakpoint number.
    pub fn next_id(&self) -> u32 {
        (0..)
            .find(|i| !self.breakpoints.contains_key(i))
            .unwrap_or(0)
    }

    /// Dr7 and DR0–DR3 for the enabled hardware breakpoints.
    pub fn debug_registers(&self) -> (u64, [u64; 4]) {
        let mut dr7 = DR7_NONE;
        let mut dr = [0u64; 4];
        for (i, b) in self
            .breakpoints
            .values()
            .filter(|b| b.enabled && matches!(b.kind, BreakKind::Hardware { .. }))
            .filter_map(|b| b.address.map(|a| (a, b.kind)))
            .take(4)
            .enumerate()
        {
            let (a, BreakKind::Hardware { access, size }) = b else {
                continue;
            };
            let rw: u64 = match access {
                'e' => 0,
                'w' => 1,
                'i' => 2,
                _ => 3,
            };
            let len: u64 = match size {
                1 => 0,
                2 => 1,
                8 => 2,
                _ => 3,
            };
            dr[i] = a;
            dr7 |= 1 << (2 * i);
            dr7 |= (rw | (len << 2)) << (16 + 4 * i);
        }
        (dr7, dr)
    }

    fn software_at(&self, address: u64) -> Option<u32> {
        self.breakpoints
            .values()
            .find(|b| b.enabled && b.kind == BreakKind::Software && b.address == Some(address))
            .map(|b| b.id)
    }

    /// Writes the enabled software breakpoints (and `extra`), except at `skip`.
    fn insert(
        &mut self,
        e_target: &mut dyn kdnet_model::target::Target,
        skip: Option<u64>,
        extra: Option<u64>,
    ) -> Result<(), CmdError> {
        let mut at: Vec<u64> = self
            .breakpoints
            .values()
            .filter(|b| b.enabled && b.kind == BreakKind::Software)
            .filter_map(|b| b.address)
            .collect();
        at.extend(extra);
        at.sort_unstable();
        at.dedup();
        at.retain(|a| Some(*a) != skip);
        if at.len() > MAX_SOFTWARE {
            return Err(CmdError::Usage(format!(
                "{} breakpoints are enabled; the kernel's table holds {MAX_SOFTWARE}",
                at.len()
            )));
        }
        // Recorded before they are written (a kill between the two leaves a record of
        // breakpoints that are not there, which the next session finds harmless), and kept
        // while the motion goes on: a record that says more than is written costs nothing.
        if at.iter().any(|a| !self.recorded.contains(a)) {
            let mut all = self.recorded.clone();
            all.extend(at.iter().copied());
            all.sort_unstable();
            all.dedup();
            let planned: Vec<(u64, u32)> = all.iter().map(|a| (*a, 0)).collect();
            self.note(&planned)?;
            self.recorded = all;
        }
        for a in at.iter() {
            match e_target.write_breakpoint(*a) {
                Ok(handle) => {
                    self.written.push(Written {
                        address: *a,
                        handle,
                    });
                }
                Err(err) => {
                    let _ = self.remove(e_target);
                    let sym = format!("{a:#x}");
                    return Err(CmdError::Failed(format!(
                        "the breakpoint at {sym} could not be written ({err}); the target was not let go"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The motion is over and nothing is written: the record goes.
    fn forget_record(&mut self) -> Result<(), CmdError> {
        if self.written.is_empty() && !self.recorded.is_empty() {
            self.note(&[])?;
            self.recorded.clear();
        }
        Ok(())
    }

    fn note(&mut self, now: &[(u64, u32)]) -> Result<(), CmdError> {
        if let Some(r) = &mut self.record {
            r.written(now).map_err(|e| {
                CmdError::Failed(format!(
                    "the breakpoints could not be recorded ({e}); they were not written"
                ))
            })?;
        }
        Ok(())
    }

    /// Takes every written breakpoint out. The kernel has already taken out those in the
    /// instructions it reported a stop at (their handles are gone); that is not an error.
    pub fn remove(&mut self, t: &mut dyn kdnet_model::target::Target) -> Result<(), CmdError> {
        let mut first_error = None;
        let mut left = Vec::new();
        for w in std::mem::take(&mut self.written) {
            match t.restore_breakpoint(w.handle) {
                Ok(_) => {}
                Err(e) => {
                    left.push(w);
                    first_error.get_or_insert(e);
                }
            }
        }
        self.written = left;
        match first_error {
            Some(e) => Err(CmdError::Failed(format!(
                "{} breakpoint(s) could not be taken out of the target: {e}",
                self.written.len()
            ))),
            None => Ok(()),
        }
    }

    /// Forgets the written breakpoints the kernel took out itself when it reported `stop`
    /// (those in the instructions it reported): nothing to restore, no round trip.
    fn taken_out_by(&mut self, stop: &StopEvent) {
        let (pc, n) = (stop.pc, u64::from(stop.reported));
        self.written
            .retain(|w| !(w.address >= pc && w.address - pc < n));
    }

    /// Whether breakpoints are written in the target now.
    pub fn any_written(&self) -> bool {
        !self.written.is_empty()
    }
}

/// The processor and instruction pointer of the stop the target is in.
fn here(e: &mut Engine) -> Result<(u32, u64), CmdError> {
    let stop = e.kernel.mem.target().stop_event();
    let processor = stop.as_ref().map_or(e.processor, |s| s.processor);
    let c = e.kernel.context(processor)?;
    Ok((processor, c.reg(kdnet_arch::Reg::Rip)))
}

/// Lets the target go once (over a breakpoint at the current instruction first) and waits for
/// it to stop; every breakpoint is out again when this returns.
fn go_once(
    e: &mut Engine,
    status: u32,
    trace: bool,
    extra: Option<u64>,
    deadline: Option<std::time::Instant>,
    cancel: Option<&AtomicBool>,
) -> Result<(StopEvent, bool), CmdError> {
    if cancel.is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst)) {
        return Err(target_err(TargetError::Cancelled));
    }
    let (_, pc) = here(e)?;
    let (dr7, dr) = e.control.debug_registers();
    if dr7 != DR7_NONE {
        set_debug_registers(e, dr)?;
    }
    let on_breakpoint = e.control.software_at(pc).is_some() || extra == Some(pc);
    let mut status = status;
    if on_breakpoint {
        // Step over the instruction the breakpoint is on without it.
        let how = Go {
            status,
            trace: true,
            dr7,
        };
        let (stop, interrupted) = run_once(e, Some(pc), None, how, deadline, cancel)?;
        let stepped = !interrupted
            && matches!(&stop.kind, StopKind::Exception { code, dr6, .. }
                if *code == STATUS_SINGLE_STEP && dr6 & DR6_BS != 0);
        if trace || !stepped {
            return Ok((stop, interrupted));
        }
        status = DBG_CONTINUE;
    }
    run_once(e, None, extra, Go { status, trace, dr7 }, deadline, cancel)
}

/// Writes the breakpoints (all but one at `skip`, and `extra`), lets the target go as `how`
/// says and waits for it to stop. Every breakpoint is out again when this returns, whatever
/// went wrong on the way.
fn run_once(
    e: &mut Engine,
    skip: Option<u64>,
    extra: Option<u64>,
    how: Go,
    deadline: Option<std::time::Instant>,
    cancel: Option<&AtomicBool>,
) -> Result<(StopEvent, bool), CmdError> {
    let mut control = std::mem::take(&mut e.control);
    let t = e.kernel.mem.target();
    let r = (|| {
        control.insert(t, skip, extra)?;
        t.go(how).map_err(target_err)?;
        t.wait_stop(deadline, cancel).map_err(target_err)
    })();
    if let Ok((stop, _)) = &r {
        control.taken_out_by(stop);
    }
    let removed = control.remove(t);
    e.control = control;
    let got = r?;
    removed?;
    Ok(got)
}

/// Writes DR0–DR3 into every processor's context (the kernel takes Dr7 from the continue).
fn set_debug_registers(e: &mut Engine, dr: [u64; 4]) -> Result<(), CmdError> {
    let n = e.kernel.mem.info().processors.max(1);
    for p in 0..n {
        let mut c = e.kernel.context(p)?;
        let mut bytes = c.as_bytes().to_vec();
        for (i, d) in dr.iter().enumerate() {
            let o = 0x48 + 8 * i;
            bytes[o..o + 8].copy_from_slice(&d.to_le_bytes());
        }
        c = kdnet_arch::Context::from_bytes(&bytes)
            .map_err(|_| CmdError::Internal("a context of the wrong size".into()))?;
        e.kernel
            .mem
            .target()
            .set_context(p, &c)
            .map_err(target_err)?;
    }
    e.kernel.invalidate();
    Ok(())
}

/// The breakpoint a stop is a hit of.
fn hit_of(e: &Engine, stop: &StopEvent) -> Option<u32> {
    let StopKind::Exception {
        code, address, dr6, ..
    } = &stop.kind
    else {
        return None;
    };
    if *code == STATUS_BREAKPOINT {
        return e.control.software_at(*address);
    }
    if *code == STATUS_SINGLE_STEP && dr6 & 0xf != 0 {
        let hw: Vec<u32> = e
            .control
            .breakpoints
            .values()
            .filter(|b| b.enabled && matches!(b.kind, BreakKind::Hardware { .. }))
            .filter(|b| b.address.is_some())
            .take(4)
            .map(|b| b.id)
            .collect();
        let i = (0..4).find(|i| dr6 & (1 << i) != 0)?;
        return hw.get(i).copied();
    }
    None
}

/// What a stop that came when the debugger broke in really is, when it is not the break-in:
/// a hit of one of the session's breakpoints whose condition holds, the address a `p` or `gu`
/// ran to, or a stop of the target's own (a bugcheck, an exception, a driver's break). None:
/// the break-in (or a hit judged not to stop, which the break-in ends the motion on anyway).
/// What cannot be read to tell (a cancel stops reads) leaves it the break-in that was asked,
/// and the result says it is incomplete.
fn came_first(e: &mut Engine, stop: &StopEvent, until: Option<u64>) -> Option<Reason> {
    let untold = |e: &mut Engine, err: &dyn std::fmt::Display| {
        e.kernel.note_incomplete(format!(
            "whether the stop the break-in brought is the target's own could not be told: {err}"
        ));
    };
    if let Some(id) = hit_of(e, stop) {
        return match judge(e, id, stop) {
            Ok(stops) => stops.then_some(Reason::Breakpoint),
            Err(err) => {
                untold(e, &err);
                None
            }
        };
    }
    let rcx = match &stop.kind {
        StopKind::Exception { code, address, .. } if *code == STATUS_BREAKPOINT => {
            if until == Some(*address) {
                return Some(Reason::Reached);
            }
            match e.kernel.context(stop.processor) {
                Ok(c) => c.reg(kdnet_arch::Reg::Rcx),
                Err(err) => {
                    untold(e, &err);
                    return None;
                }
            }
        }
        _ => 0,
    };
    (!stop.is_break_in(rcx)).then_some(Reason::Exception)
}

/// A hit of `id` stops the target: a one-shot breakpoint goes; its command string, if any.
fn stopping_hit(e: &mut Engine, id: u32) -> Option<String> {
    let b = e.control.breakpoints.get(&id)?;
    let command = b.command.clone();
    if b.one_shot {
        e.control.breakpoints.remove(&id);
    }
    command
}

/// Whether a hit of breakpoint `id` stops the target: the filters, the pass count, the
/// condition. Counts it.
fn judge(e: &mut Engine, id: u32, stop: &StopEvent) -> Result<bool, CmdError> {
    let Some(b) = e.control.breakpoints.get_mut(&id) else {
        return Ok(false);
    };
    b.hits += 1;
    if b.thread.is_some_and(|t| t != stop.thread) {
        return Ok(false);
    }
    let (process, condition) = (b.process, b.condition.clone());
    if let Some(p) = process {
        e.processor = stop.processor;
        let current = e.eval("@$proc")?;
        if current != p {
            return Ok(false);
        }
    }
    if let Some(c) = condition {
        e.processor = stop.processor;
        // Values read the short way: one round trip each.
        e.kernel.mem.set_quick(true);
        let v = e.eval(&c);
        e.kernel.mem.set_quick(false);
        let v = v.map_err(|err| {
            CmdError::Failed(format!(
                "breakpoint {id}'s condition `{c}` could not be evaluated: {err}"
            ))
        })?;
        if v == 0 {
            return Ok(false);
        }
    }
    let Some(b) = e.control.breakpoints.get_mut(&id) else {
        return Ok(false);
    };
    if b.passes_left > 1 {
        b.passes_left -= 1;
        return Ok(false);
    }
    b.passes_left = b.pass_count;
    b.stops += 1;
    Ok(true)
}

/// Splits a breakpoint's command string into commands, and says whether it ends by going on
/// (`g`, `gc`, `gh`, `gn`). WinDbg's `j COND 'A' ; 'B'` is decided here.
fn plan(e: &mut Engine, command: &str) -> Result<(Vec<String>, bool), CmdError> {
    let mut out = Vec::new();
    for c in split_top(command) {
        let c = c.trim().trim_matches('"').trim().to_string();
        if let Some(rest) = c.strip_prefix(".if") {
            let chosen =
                choose_if(e, rest).map_err(|why| CmdError::Usage(format!("`{c}`: {why}")))?;
            let (inner, go) = plan(e, &chosen?)?;
            out.extend(inner);
            if go {
                return Ok((out, true));
            }
            continue;
        }
        if let Some(rest) = c.strip_prefix("j ").or_else(|| c.strip_prefix("j(")) {
            let rest = if c.starts_with("j(") {
                format!("({rest}")
            } else {
                rest.to_string()
            };
            let (cond, branches) = split_j(&rest).ok_or_else(|| {
                CmdError::Usage(format!(
                    "`{c}`: j takes a condition and two quoted branches"
                ))
            })?;
            let chosen = if e.eval(&cond)? != 0 {
                branches.0
            } else {
                branches.1
            };
            let (inner, go) = plan(e, &chosen)?;
            out.extend(inner);
            if go {
                return Ok((out, true));
            }
            continue;
        }
        match c.as_str() {
            "g" | "gc" | "gh" | "gn" => return Ok((out, true)),
            "" => {}
            _ => out.push(c),
        }
    }
    Ok((out, false))
}

/// A breakpoint's command string split at the `;` that separate its commands: not those
/// inside quotes (`j`'s branches) or braces (`.if`'s blocks).
fn split_top(s: &str) -> Vec<String> {
    let (mut out, mut cur) = (Vec::new(), String::new());
    let (mut single, mut double, mut depth) = (false, false, 0usize);
    for ch in s.chars() {
        match ch {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '{' if !single && !double => depth += 1,
            '}' if !single && !double => depth = depth.saturating_sub(1),
            ';' if !single && !double && depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    out.push(cur);
    let mut pieces: Vec<String> = Vec::new();
    for c in out.into_iter().map(|c| c.trim().to_string()) {
        if c.is_empty() {
            continue;
        }
        // `j COND 'A' ; 'B'`: the `;` before the second branch is j's own.
        if c.starts_with('\'')
            && let Some(last) = pieces.last_mut()
            && (last.starts_with("j ") || last.starts_with("j("))
            && last.matches('\'').count() == 2
        {
            last.push_str(" ; ");
            last.push_str(&c);
            continue;
        }
        pieces.push(c);
    }
    pieces
}

/// The text of a balanced `open`…`close` group at the start of `s` (after blanks), and what
/// follows it.
fn group(s: &str, open: char, close: char) -> Result<(&str, &str), String> {
    let s = s.trim_start();
    if !s.starts_with(open) {
        return Err(format!("expected `{open}`"));
    }
    let mut depth = 0usize;
    for (i, ch) in s.char_indices() {
        if ch == open {
            depth += 1;
        } else if ch == close {
            depth -= 1;
            if depth == 0 {
                return Ok((&s[1..i], &s[i + 1..]));
            }
        }
    }
    Err(format!("`{open}` is not closed"))
}

/// `.if (COND) { A } [.elsif (COND) { B }]… [.else { C }]` (what follows `.if`): the block the
/// conditions choose (empty when none does). The outer error is the syntax's; the inner the
/// evaluation's.
fn choose_if(e: &mut Engine, rest: &str) -> Result<Result<String, CmdError>, String> {
    let mut rest = rest;
    let mut chosen: Option<String> = None;
    let mut first = true;
    loop {
        let r = rest.trim_start();
        let (cond, after) = if first {
            first = false;
            let (c, a) = group(r, '(', ')')?;
            (Some(c), a)
        } else if let Some(a) = r.strip_prefix(".elsif") {
            let (c, a) = group(a, '(', ')')?;
            (Some(c), a)
        } else if let Some(a) = r.strip_prefix(".else") {
            (None, a)
        } else if r.is_empty() {
            break;
        } else {
            return Err(format!("`{r}` after a block is not .elsif or .else"));
        };
        let (block, after) = group(after, '{', '}')?;
        rest = after;
        if chosen.is_some() {
            continue;
        }
        match cond {
            Some(c) => match e.eval(c) {
                Ok(0) => {}
                Ok(_) => chosen = Some(block.to_string()),
                Err(err) => return Ok(Err(err)),
            },
            None => chosen = Some(block.to_string()),
        }
    }
    Ok(Ok(chosen.unwrap_or_default()))
}

/// `j COND 'A' ; 'B'` → (COND, (A, B)).
fn split_j(s: &str) -> Option<(String, (String, String))> {
    let first = s.find('\'')?;
    let cond = s[..first].trim().to_string();
    let rest = &s[first + 1..];
    let end_a = rest.find('\'')?;
    let a = rest[..end_a].to_string();
    let rest = rest[end_a + 1..]
        .trim_start()
        .trim_start_matches(';')
        .trim_start();
    let b = match rest.strip_prefix('\'') {
        Some(r) => r[..r.find('\'')?].to_string(),
        None => String::new(),
    };
    Some((cond, (a, b)))
}

/// Lets the target go as `m` says until something stops it for the user: a breakpoint that
/// stops, the step's end, the address run to, an exception the filters stop on, or the
/// budget (then it is broken into).
pub fn resume(e: &mut Engine, m: Motion) -> Result<Ended, CmdError> {
    let moving = e.control.moving.clone();
    if let Some(f) = &moving {
        f.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    let r = motion(e, m);
    let forgotten = e.control.forget_record();
    if let Some(f) = &moving {
        f.store(false, std::sync::atomic::Ordering::SeqCst);
    }
    let ended = r?;
    forgotten?;
    Ok(ended)
}

fn motion(e: &mut Engine, m: Motion) -> Result<Ended, CmdError> {
    // The session's module stops are this engine's (another engine on the same session may
    // have set its own since).
    crate::cmds::run::sync_module_breaks(e)?;
    let deadline = e.kernel.mem.deadline();
    let cancel = e.kernel.mem.cancel_flag();
    let cancel = cancel.as_deref();
    let mut passed = 0u64;
    let mut outputs: Vec<String> = Vec::new();
    let mut dropped = 0u64;
    // `gu`: the return address and the stack pointer the frame returns with.
    let (status, trace, until, frame_rsp) = match m {
        Motion::Go { status, until } => (status, false, until, None),
        Motion::Step { over: false } => (DBG_CONTINUE, true, None, None),
        Motion::Step { over: true } => {
            let (_, pc) = here(e)?;
            match crate::cmds::disasm::instruction_at(e, pc) {
                Some(i) if i.mnemonic == "call" => {
                    let len = (i.bytes.len() / 2) as u64;
                    (DBG_CONTINUE, false, Some(pc + len), None)
                }
                _ => (DBG_CONTINUE, true, None, None),
            }
        }
        Motion::Return => {
            let (processor, _) = here(e)?;
            let (ret, rsp) = return_of(e, processor)?;
            (DBG_CONTINUE, false, Some(ret), Some(rsp))
        }
    };
    let mut status = status;
    // When the stop being gone on from reached the debugger.
    let mut held_since: Option<std::time::Instant> = None;
    loop {
        if let (Some(since), Some(m)) = (held_since.take(), &e.control.meter) {
            m.add(since.elapsed());
        }
        let (stop, interrupted) = go_once(e, status, trace, until, deadline, cancel)?;
        held_since = Some(std::time::Instant::now());
        status = DBG_CONTINUE;
        if interrupted {
            // The budget bounded how long the target ran; what is read to report the stop
            // is not held to it.
            e.kernel.mem.set_deadline(None);
        }
        e.kernel.invalidate();
        e.processor = stop.processor;
        let ended = |reason, breakpoint, commands| Ended {
            reason,
            stop: stop.clone(),
            breakpoint,
            passed,
            outputs: outputs.clone(),
            outputs_dropped: dropped,
            commands,
        };
        if interrupted {
            // The stop a break-in brings may be one the target made itself in that instant:
            // a breakpoint's hit, an exception, a bugcheck. It is reported as what it is;
            // otherwise the motion ends here, as asked.
            match came_first(e, &stop, until) {
                Some(Reason::Breakpoint) => {
                    // Its commands run at the stop; the motion does not go on (the break-in
                    // ends it), whatever they end with.
                    let id = hit_of(e, &stop);
                    let commands = match id.and_then(|id| stopping_hit(e, id)) {
                        Some(c) => plan(e, &c)?.0,
                        None => vec![],
                    };
                    return Ok(ended(Reason::Breakpoint, id, commands));
                }
                Some(reason) => return Ok(ended(reason, None, vec![])),
                None => return Ok(ended(Reason::BreakIn, None, vec![])),
            }
        }
        if let Some(id) = hit_of(e, &stop) {
            if !judge(e, id, &stop)? {
                passed += 1;
                if let Some(m) = &e.control.meter {
                    m.pass(id);
                }
                continue;
            }
            let Some(command) = stopping_hit(e, id) else {
                return Ok(ended(Reason::Breakpoint, Some(id), vec![]));
            };
            let (commands, go_on) = plan(e, &command)?;
            if !go_on {
                return Ok(ended(Reason::Breakpoint, Some(id), commands));
            }
            // The commands run now, and the target goes on.
            let mut text = format!("Breakpoint {id} hit\n");
            for c in &commands {
                let o = e.run(c);
                text.push_str(&o.text);
                if let Some(err) = o.error {
                    text.push_str(&format!("error: {err}\n"));
                }
            }
            keep(&mut outputs, &mut dropped, text);
            continue;
        }
        if let StopKind::Exception {
            code,
            address,
            dr6,
            first_chance,
            ..
        } = &stop.kind
        {
            if until == Some(*address) && *code == STATUS_BREAKPOINT {
                // `gu` returns to its caller's frame only: a recursive call hitting the same
                // return address deeper down goes on.
                if let Some(rsp) = frame_rsp {
                    let c = e.kernel.context(stop.processor)?;
                    if c.reg(kdnet_arch::Reg::Rsp) < rsp {
                        continue;
                    }
                }
                return Ok(ended(Reason::Reached, None, vec![]));
            }
            if *code == STATUS_SINGLE_STEP && dr6 & DR6_BS != 0 && trace {
                return Ok(ended(Reason::Step, None, vec![]));
            }
            let filter = e.control.exceptions.get(code).copied().unwrap_or(
                if *code == STATUS_BREAKPOINT || *code == STATUS_SINGLE_STEP {
                    Filter::Break
                } else {
                    Filter::SecondChance
                },
            );
            let stops = match filter {
                Filter::Break => true,
                Filter::SecondChance => !first_chance,
                Filter::Output | Filter::Ignore => false,
            };
            if !stops {
                if filter == Filter::Output {
                    let text = format!(
                        "First chance exception {code:08x} at {}\n",
                        crate::engine::addr(*address)
                    );
                    keep(&mut outputs, &mut dropped, text);
                }
                // Passed on to the kernel's own handlers.
                status = kdnet_model::target::DBG_EXCEPTION_NOT_HANDLED;
                continue;
            }
            return Ok(ended(Reason::Exception, None, vec![]));
        }
        if let StopKind::Module {
            unload,
            base,
            size,
            path,
        } = &stop.kind
        {
            let file = path.rsplit(['\\', '/']).next().unwrap_or("").to_string();
            let changed = if *unload {
                unresolve(e, *base, u64::from(*size))
            } else {
                resolve_deferred(e, &file)
            };
            if changed {
                crate::cmds::run::sync_module_breaks(e)?;
            }
            let asked = if *unload {
                &e.control.module_unloads
            } else {
                &e.control.module_loads
            };
            if module_named(asked, &file) {
                return Ok(ended(Reason::Module, None, vec![]));
            }
            // A load only a deferred breakpoint waited for (or an unload that took one's
            // module away): the target goes on with the breakpoints as they are now.
            continue;
        }
        return Ok(ended(Reason::Other, None, vec![]));
    }
}

/// Whether `file` (`CimFS.sys`) is one of `names` (`*`, `cimfs.sys`, `cimfs`).
pub fn module_named(names: &[String], file: &str) -> bool {
    let file = file.to_ascii_lowercase();
    let stem = file.rsplit_once('.').map_or(file.as_str(), |(s, _)| s);
    names.iter().any(|n| {
        let n = n.to_ascii_lowercase();
        n == "*" || n == file || n == stem
    })
}

/// The module `file` loaded: the deferred breakpoints waiting for it are resolved (the module
/// list is read again, the target having run). Whether any was.
fn resolve_deferred(e: &mut Engine, file: &str) -> bool {
    let waiting: Vec<(u32, String)> = e
        .control
        .breakpoints
        .values()
        .filter(|b| b.deferred && b.address.is_none())
        .filter(|b| {
            b.spec
                .split_once('!')
                .is_some_and(|(m, _)| module_named(&[m.to_string()], file))
        })
        .map(|b| (b.id, b.spec.clone()))
        .collect();
    let mut any = false;
    for (id, spec) in waiting {
        if let Ok(a) = e.eval(&spec)
            && let Some(b) = e.control.breakpoints.get_mut(&id)
        {
            b.address = Some(a);
            any = true;
        }
    }
    any
}

/// A module at `[base, base + size)` unloaded: the breakpoints in it wait for it to load again
/// (a deferred one, or one set by a name) or are disabled (one set by an address: nothing says
/// where that code will be). Whether any changed.
fn unresolve(e: &mut Engine, base: u64, size: u64) -> bool {
    let mut any = false;
    for b in e.control.breakpoints.values_mut() {
        if b.kind != BreakKind::Software || !b.address.is_some_and(|a| a >= base && a - base < size)
        {
            continue;
        }
        any = true;
        if b.spec.contains('!') {
            b.address = None;
            b.deferred = true;
        } else {
            b.enabled = false;
        }
    }
    any
}

/// Keeps the output of a hit that went on, the last [`MAX_HIT_OUTPUTS`] of them.
fn keep(outputs: &mut Vec<String>, dropped: &mut u64, text: String) {
    if outputs.len() >= MAX_HIT_OUTPUTS {
        outputs.remove(0);
        *dropped += 1;
    }
    outputs.push(text);
}

/// The return address of the current function on `processor`, and the stack pointer after
/// the return: from the first frame the unwinder gives.
fn return_of(e: &mut Engine, processor: u32) -> Result<(u64, u64), CmdError> {
    let c = e.kernel.context(processor)?;
    let stack = e
        .kernel
        .unwind(kdnet_model::nt::unwind::Regs::from_context(&c), None, true);
    match (stack.frames.first(), stack.frames.get(1)) {
        (Some(f), Some(caller)) if f.return_address != 0 => Ok((f.return_address, caller.child_sp)),
        _ => Err(CmdError::Failed(format!(
            "the current function's caller could not be found on the stack{}",
            stack.note.map(|n| format!(" ({n})")).unwrap_or_default()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::split_top;

    #[test]
    fn command_strings_split_where_windbg_splits_them() {
        assert_eq!(split_top("r rcx; g"), ["r rcx", "g"]);
        assert_eq!(
            split_top("j (@rax == 0) 'r rcx; gc' ; 'kb'; r"),
            ["j (@rax == 0) 'r rcx; gc' ; 'kb'", "r"]
        );
        assert_eq!(
            split_top(".if (1) { r rcx; gc } .else { kb }; dd 0"),
            [".if (1) { r rcx; gc } .else { kb }", "dd 0"]
        );
        assert!(split_top("  ;; ").is_empty());
    }
}
