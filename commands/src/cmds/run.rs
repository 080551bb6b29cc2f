//! Run control commands: `bp`/`bu`/`ba`, `bl`, `bc`/`bd`/`be`, `g`/`gh`/`gn`/`gc`, `p`/`t`,
//! `gu`, and the event filters `sxe`/`sxd`/`sxn`/`sxi`/`sx`. The work is in
//! [`crate::control`]; these parse WinDbg's syntax and render WinDbg's lines.

use schemars::JsonSchema;
use serde::Serialize;

use crate::args::{Args, Kind, Param, Syntax};
use crate::cmds::registers::AllRegisters;
use crate::control::{BreakKind, Breakpoint, Ended, Filter, Motion, Reason};
use crate::engine::{CmdError, Engine, addr};
use crate::registry::Render;
use kdnet_model::target::{
    DBG_CONTINUE, DBG_EXCEPTION_HANDLED, DBG_EXCEPTION_NOT_HANDLED, StopKind,
};

/// Everything after the verb, parsed here.
pub(crate) const SYNTAX: Syntax = Syntax::params(&[Param {
    name: "ARGS",
    kind: Kind::Rest,
    optional: true,
}]);

/// Most steps one `p N` / `t N` takes.
const MAX_STEPS: u64 = 10_000;

/// A breakpoint set.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Set {
    /// The breakpoint.
    pub breakpoint: Breakpoint,
    /// Something to know (a breakpoint redefined, deferred until its module loads).
    pub note: Option<String>,
}

impl Render for Set {
    fn render(&self, out: &mut String) {
        if let Some(n) = &self.note {
            out.push_str(n);
            out.push('\n');
        }
    }
}

/// The session's breakpoints (`bl`).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct List {
    /// In number order.
    pub breakpoints: Vec<Breakpoint>,
}

fn bl_line(b: &Breakpoint, out: &mut String) {
    let state = match (b.enabled, b.deferred && b.address.is_none()) {
        (true, false) => "e",
        (false, false) => "d",
        (true, true) => "eu",
        (false, true) => "du",
    };
    let at = b.address.map_or_else(|| "            ".to_string(), addr);
    let kind = match b.kind {
        BreakKind::Software => String::new(),
        BreakKind::Hardware { access, size } => format!("{access} {size} "),
    };
    let mut line = format!(
        "{:>2} {state:<2} {at} {kind}    {:04} ({:04}) {}",
        b.id,
        b.passes_left.max(1),
        b.pass_count.max(1),
        b.spec
    );
    if let Some(c) = &b.condition {
        line.push_str(&format!(" /w \"{c}\""));
    }
    if let Some(c) = &b.command {
        line.push_str(&format!(" \"{c}\""));
    }
    out.push_str(line.trim_end());
    out.push('\n');
}

impl Render for List {
    fn render(&self, out: &mut String) {
        for b in &self.breakpoints {
            bl_line(b, out);
        }
    }
}

/// Breakpoints cleared, disabled or enabled.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Changed {
    /// Their numbers.
    pub ids: Vec<u32>,
}

impl Render for Changed {
    fn render(&self, _out: &mut String) {}
}

/// Where the target stopped.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Stop {
    /// Why: breakpoint, step, reached (g ADDR, gu), exception, module, break_in, other.
    pub reason: Reason,
    /// The breakpoint that stopped it.
    pub breakpoint: Option<u32>,
    /// The processor.
    pub processor: u32,
    /// The current thread there.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub thread: u64,
    /// The instruction pointer.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub pc: u64,
    /// It as `module!symbol+0x…`.
    pub symbol: String,
    /// The instruction there, as `u` shows it (null when it cannot be read).
    pub instruction: Option<String>,
    /// The exception code, for an exception stop.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub code: Option<u64>,
    /// The module loaded or unloaded, for a module stop.
    pub module: Option<String>,
    /// The registers, after a step (as WinDbg shows them).
    pub registers: Option<AllRegisters>,
}

/// What `g`, `p`, `t` or `gu` ended with.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Ran {
    /// Each stop shown, in order (one, or one per step of `p N`).
    pub stops: Vec<Stop>,
    /// Breakpoint hits on the way that did not stop (a filter, a pass count, a condition).
    pub passed: u64,
    /// What the commands of breakpoints that went on by themselves printed, oldest first
    /// (the last 100).
    pub hits: Vec<String>,
    /// Hit outputs left out.
    pub hits_dropped: u64,
    /// What the stopping breakpoint's commands printed.
    pub output: String,
}

impl Render for Ran {
    fn render(&self, out: &mut String) {
        if self.hits_dropped > 0 {
            out.push_str(&format!(
                "({} earlier breakpoint hits' output left out)\n",
                self.hits_dropped
            ));
        }
        for h in &self.hits {
            out.push_str(h);
        }
        for s in &self.stops {
            match s.reason {
                Reason::Breakpoint => {
                    out.push_str(&format!("Breakpoint {} hit\n", s.breakpoint.unwrap_or(0)));
                }
                Reason::BreakIn => {
                    out.push_str("Break instruction exception - code 80000003 (first chance)\n")
                }
                Reason::Exception => out.push_str(&format!(
                    "Exception code {:08x} at {} on processor {}\n",
                    s.code.unwrap_or(0),
                    addr(s.pc),
                    s.processor
                )),
                Reason::Module => out.push_str(&format!(
                    "ModLoad: {}\n",
                    s.module.as_deref().unwrap_or("?")
                )),
                Reason::Other => out.push_str("State change\n"),
                Reason::Step | Reason::Reached => {}
            }
            // The register dump ends with the symbol line itself.
            match &s.registers {
                Some(r) => r.render(out),
                None => out.push_str(&format!("{}:\n", s.symbol)),
            }
            if let Some(i) = &s.instruction {
                out.push_str(i);
                out.push('\n');
            }
        }
        out.push_str(&self.output);
    }
}

/// The event filters (`sx`, or what `sxe`… changed).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Filters {
    /// Exceptions with a filter set: code and filter.
    pub exceptions: Vec<ExceptionFilter>,
    /// Module loads that stop (`*`: every one).
    pub module_loads: Vec<String>,
    /// Module unloads that stop.
    pub module_unloads: Vec<String>,
}

/// One exception filter.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct ExceptionFilter {
    /// The exception code.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub code: u64,
    /// Its name (`av`), when it has one.
    pub name: Option<String>,
    /// What is done.
    pub filter: Filter,
}

const NAMED: [(&str, u32, &str); 6] = [
    ("av", 0xC000_0005, "Access violation"),
    ("bpe", 0x8000_0003, "Break instruction exception"),
    ("sse", 0x8000_0004, "Single step exception"),
    ("dz", 0xC000_0094, "Integer divide-by-zero"),
    ("ii", 0xC000_001D, "Illegal instruction"),
    ("sov", 0xC000_00FD, "Stack overflow"),
];

impl Render for Filters {
    fn render(&self, out: &mut String) {
        let describe = |f: Filter| match f {
            Filter::Break => "break",
            Filter::SecondChance => "second-chance break",
            Filter::Output => "output",
            Filter::Ignore => "ignore",
        };
        let load = if self.module_loads.is_empty() {
            "output".to_string()
        } else {
            format!("break - {}", self.module_loads.join(", "))
        };
        let unload = if self.module_unloads.is_empty() {
            "output".to_string()
        } else {
            format!("break - {}", self.module_unloads.join(", "))
        };
        out.push_str(&format!("  ld - Load module - {load}\n"));
        out.push_str(&format!("  ud - Unload module - {unload}\n"));
        for (name, code, what) in NAMED {
            let f = self
                .exceptions
                .iter()
                .find(|x| x.code == u64::from(code))
                .map_or(
                    if name == "bpe" || name == "sse" {
                        Filter::Break
                    } else {
                        Filter::SecondChance
                    },
                    |x| x.filter,
                );
            out.push_str(&format!("{name:>4} - {what} - {}\n", describe(f)));
        }
        for x in &self.exceptions {
            if x.name.is_none() {
                out.push_str(&format!(
                    "{:08x} - Exception - {}\n",
                    x.code,
                    describe(x.filter)
                ));
            }
        }
    }
}

/// Splits WinDbg's argument text into words, keeping `"…"` strings whole (without quotes).
fn words(text: &str) -> Result<Vec<(String, bool)>, CmdError> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('"') {
            let end = r
                .find('"')
                .ok_or_else(|| CmdError::Usage("a quoted string is not closed".into()))?;
            out.push((r[..end].to_string(), true));
            rest = r[end + 1..].trim_start();
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            out.push((rest[..end].to_string(), false));
            rest = rest[end..].trim_start();
        }
    }
    Ok(out)
}

fn number(e: &mut Engine, w: &str, what: &str) -> Result<u64, CmdError> {
    e.eval(w)
        .map_err(|err| CmdError::Usage(format!("{what}: {err}")))
}

/// `bp`, `bu`, `ba`: `[/1] [/p EPROCESS] [/t ETHREAD] [/w "COND"] ADDR [PASSES] ["COMMANDS"]`,
/// `ba ACCESS SIZE [options] ADDR …`.
pub(crate) fn set(e: &mut Engine, verb: &str, a: &Args<'_>) -> Result<Set, CmdError> {
    let verb = verb.to_ascii_lowercase();
    let ws = words(a.text("ARGS").unwrap_or(""))?;
    let mut i = 0;
    let mut kind = BreakKind::Software;
    if verb == "ba" {
        let (Some((access, false)), Some((size, false))) = (ws.first(), ws.get(1)) else {
            return Err(CmdError::Usage(
                "usage: ba e|r|w|i 1|2|4|8 [options] ADDR [PASSES] [\"COMMANDS\"]".into(),
            ));
        };
        let access = access.to_ascii_lowercase();
        let access = match access.as_str() {
            "e" | "r" | "w" | "i" => access.chars().next().unwrap_or('e'),
            other => {
                return Err(CmdError::Usage(format!(
                    "ba: access `{other}` is not e, r, w or i"
                )));
            }
        };
        let size: u8 = size
            .parse()
            .ok()
            .filter(|s| [1u8, 2, 4, 8].contains(s))
            .ok_or_else(|| CmdError::Usage(format!("ba: size `{size}` is not 1, 2, 4 or 8")))?;
        if access == 'e' && size != 1 {
            return Err(CmdError::Usage("ba e takes size 1".into()));
        }
        kind = BreakKind::Hardware { access, size };
        i = 2;
    }
    let (mut one_shot, mut process, mut thread, mut condition) = (false, None, None, None);
    while let Some((w, false)) = ws.get(i) {
        match w.to_ascii_lowercase().as_str() {
            "/1" => one_shot = true,
            "/p" | "/t" | "/w" => {
                let (v, quoted) = ws
                    .get(i + 1)
                    .ok_or_else(|| CmdError::Usage(format!("{w} takes a value")))?;
                match w.as_str() {
                    "/w" | "/W" => condition = Some(v.clone()),
                    _ if *quoted => {
                        return Err(CmdError::Usage(format!("{w} takes an address")));
                    }
                    "/p" | "/P" => process = Some(number(e, v, "/p")?),
                    _ => thread = Some(number(e, v, "/t")?),
                }
                i += 1;
            }
            _ => break,
        }
        i += 1;
    }
    let Some((spec, false)) = ws.get(i).cloned() else {
        return Err(CmdError::Usage(format!(
            "usage: {verb} [/1] [/p EPROCESS] [/t ETHREAD] [/w \"COND\"] ADDR [PASSES] [\"COMMANDS\"]"
        )));
    };
    i += 1;
    let mut pass_count = 0;
    if let Some((w, false)) = ws.get(i) {
        pass_count = number(e, w, "the pass count")?;
        i += 1;
    }
    let command = match ws.get(i) {
        Some((c, true)) => {
            i += 1;
            Some(c.clone())
        }
        Some((c, false)) => {
            return Err(CmdError::Usage(format!(
                "`{c}`: breakpoint commands are given in double quotes"
            )));
        }
        None => None,
    };
    if let Some((extra, _)) = ws.get(i) {
        return Err(CmdError::Usage(format!("`{extra}` is not understood here")));
    }
    if let Some(c) = &condition {
        // Checked now, not at the first hit.
        crate::expr::parse(c).map_err(|err| CmdError::Usage(format!("/w \"{c}\": {err}")))?;
    }
    let (address, note) = match e.eval(&spec) {
        Ok(v) => (Some(v), None),
        Err(err) if verb == "bu" => (
            None,
            Some(format!(
                "breakpoint deferred until {spec} can be resolved ({err})"
            )),
        ),
        Err(err) => {
            return Err(CmdError::Usage(format!(
                "{spec} could not be resolved ({err}); `bu {spec}` sets it for when its module loads"
            )));
        }
    };
    let hardware = e
        .control
        .breakpoints
        .values()
        .filter(|b| matches!(b.kind, BreakKind::Hardware { .. }))
        .count();
    if matches!(kind, BreakKind::Hardware { .. }) && hardware >= 4 {
        return Err(CmdError::Usage(
            "the four debug registers are taken (bc one of the ba breakpoints first)".into(),
        ));
    }
    // The same place again redefines the breakpoint there.
    let same = e
        .control
        .breakpoints
        .values()
        .find(|b| b.kind == kind && ((address.is_some() && b.address == address) || b.spec == spec))
        .map(|b| b.id);
    let id = same.unwrap_or_else(|| e.control.next_id());
    let b = Breakpoint {
        id,
        spec: spec.clone(),
        address,
        kind,
        enabled: true,
        deferred: verb == "bu",
        one_shot,
        pass_count,
        passes_left: pass_count,
        process,
        thread,
        condition,
        command,
        hits: 0,
        stops: 0,
    };
    e.control.breakpoints.insert(id, b.clone());
    sync_module_breaks(e)?;
    let note = match (same, note) {
        (Some(_), None) => Some(format!("breakpoint {id} redefined")),
        (_, n) => n,
    };
    Ok(Set {
        breakpoint: b,
        note,
    })
}

/// Tells the target which module events stop it: the user's `sxe ld`/`sxe ud`, and the modules
/// deferred breakpoints wait for.
pub(crate) fn sync_module_breaks(e: &mut Engine) -> Result<(), CmdError> {
    let mut load = e.control.module_loads.clone();
    for b in e.control.breakpoints.values() {
        if b.deferred
            && b.address.is_none()
            && let Some((module, _)) = b.spec.split_once('!')
        {
            load.push(module.to_string());
        }
    }
    // The unloads of modules breakpoints are in, so that they are taken back to waiting.
    let mut unload = e.control.module_unloads.clone();
    for b in e.control.breakpoints.values() {
        if b.kind == BreakKind::Software
            && b.address.is_some()
            && let Some((module, _)) = b.spec.split_once('!')
            && module != "nt"
        {
            unload.push(module.to_string());
        }
    }
    unload.sort();
    unload.dedup();
    load.sort();
    load.dedup();
    match e.kernel.mem.target().set_module_breaks(load, unload) {
        Ok(()) => Ok(()),
        // A dump has no module events; its breakpoints are only listed.
        Err(kdnet_model::target::TargetError::Unsupported(_)) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

pub(crate) fn list(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<List, CmdError> {
    if let Some(t) = a.text("ARGS").filter(|t| !t.trim().is_empty()) {
        return Err(CmdError::Usage(format!("bl takes no arguments (`{t}`)")));
    }
    Ok(List {
        breakpoints: e.control.breakpoints.values().cloned().collect(),
    })
}

/// `*`, `0 2 5`, `1-3`, `0,2`.
fn ids(e: &Engine, text: &str) -> Result<Vec<u32>, CmdError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(CmdError::Usage(
            "which breakpoints? (`*`, numbers, ranges `1-3`)".into(),
        ));
    }
    if text == "*" {
        return Ok(e.control.breakpoints.keys().copied().collect());
    }
    let mut out = Vec::new();
    for part in text.split(|c: char| c == ',' || c.is_whitespace()) {
        if part.is_empty() {
            continue;
        }
        let parse = |s: &str| {
            s.parse::<u32>()
                .map_err(|_| CmdError::Usage(format!("`{s}` is not a breakpoint number")))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (parse(a)?, parse(b)?);
                if b < a || b - a > 1000 {
                    return Err(CmdError::Usage(format!("`{part}` is not a range")));
                }
                out.extend(a..=b);
            }
            None => out.push(parse(part)?),
        }
    }
    out.retain(|i| e.control.breakpoints.contains_key(i));
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

pub(crate) fn change(e: &mut Engine, verb: &str, a: &Args<'_>) -> Result<Changed, CmdError> {
    let which = ids(e, a.text("ARGS").unwrap_or(""))?;
    for id in &which {
        match verb.to_ascii_lowercase().as_str() {
            "bc" => {
                e.control.breakpoints.remove(id);
            }
            "bd" => {
                if let Some(b) = e.control.breakpoints.get_mut(id) {
                    b.enabled = false;
                }
            }
            _ => {
                if let Some(b) = e.control.breakpoints.get_mut(id) {
                    b.enabled = true;
                }
            }
        }
    }
    sync_module_breaks(e)?;
    Ok(Changed { ids: which })
}

/// A stop as the result shows it.
fn report(e: &mut Engine, ended: &Ended, registers: bool) -> Stop {
    let s = &ended.stop;
    // The instruction from the bytes the stop report carried: no read of the target.
    let instruction = crate::cmds::disasm::instruction_from(e, s.pc, &s.stream).map(|i| i.line());
    let registers = if registers {
        e.kernel
            .context(s.processor)
            .ok()
            .map(|c| crate::cmds::registers::general(e, &c, s.processor))
    } else {
        None
    };
    let (code, module) = match &s.kind {
        StopKind::Exception { code, .. } => (Some(u64::from(*code)), None),
        StopKind::Module {
            unload,
            base,
            size,
            path,
        } => (
            None,
            Some(format!(
                "{} {} {}{path}",
                addr(*base),
                addr(base + u64::from(*size)),
                if *unload { "(unload) " } else { "" }
            )),
        ),
        StopKind::Other => (None, None),
    };
    Stop {
        reason: ended.reason,
        breakpoint: ended.breakpoint,
        processor: s.processor,
        thread: s.thread,
        pc: s.pc,
        symbol: e.kernel.symbolize(s.pc),
        instruction,
        code,
        module,
        registers,
    }
}

pub(crate) fn go(e: &mut Engine, verb: &str, a: &Args<'_>) -> Result<Ran, CmdError> {
    let verb = verb.to_ascii_lowercase();
    let text = a.text("ARGS").unwrap_or("").trim().to_string();
    let mut ran = Ran {
        stops: Vec::new(),
        passed: 0,
        hits: Vec::new(),
        hits_dropped: 0,
        output: String::new(),
    };
    let (motion, count, registers) = match verb.as_str() {
        "g" | "gc" | "gh" | "gn" => {
            let status = match verb.as_str() {
                "gh" => DBG_EXCEPTION_HANDLED,
                "gn" => DBG_EXCEPTION_NOT_HANDLED,
                _ => DBG_CONTINUE,
            };
            let until = if text.is_empty() {
                None
            } else {
                Some(number(e, text.trim_start_matches('='), "g")?)
            };
            (Motion::Go { status, until }, 1, false)
        }
        "gu" => {
            if !text.is_empty() {
                return Err(CmdError::Usage("gu takes no arguments".into()));
            }
            (Motion::Return, 1, false)
        }
        "pc" | "tc" => {
            if !text.is_empty() {
                return Err(CmdError::Usage(format!("{verb} takes no arguments")));
            }
            (Motion::Step { over: verb == "pc" }, MAX_STEPS, true)
        }
        _ => {
            let n = if text.is_empty() {
                1
            } else {
                number(e, &text, verb.as_str())?
            };
            if n == 0 || n > MAX_STEPS {
                return Err(CmdError::Usage(format!(
                    "{verb} takes a count from 1 to {MAX_STEPS}"
                )));
            }
            (Motion::Step { over: verb == "p" }, n, true)
        }
    };
    // `pc`, `tc`: step until the next instruction is a call; only that stop is shown.
    let to_call = matches!(verb.as_str(), "pc" | "tc");
    for i in 0..count {
        let ended = crate::control::resume(e, motion)?;
        ran.passed += ended.passed;
        ran.hits.extend(ended.outputs.iter().cloned());
        ran.hits_dropped += ended.outputs_dropped;
        let mut done = !matches!(ended.reason, Reason::Step | Reason::Reached);
        if to_call && !done {
            let s = &ended.stop;
            let call = crate::cmds::disasm::instruction_from(e, s.pc, &s.stream)
                .is_some_and(|i| i.mnemonic == "call");
            if !call && i + 1 < count {
                continue;
            }
            if !call {
                e.kernel.note_incomplete(format!(
                    "no call within {count} instructions: {verb} stopped after the last"
                ));
            }
            done = true;
        }
        let stop = report(e, &ended, registers);
        ran.stops.push(stop);
        for c in &ended.commands {
            let o = e.run(c);
            ran.output.push_str(&o.text);
            if let Some(err) = o.error {
                ran.output.push_str(&format!("error: {err}\n"));
            }
        }
        if done {
            break;
        }
    }
    Ok(ran)
}

/// An event `sxe` and the others name.
enum Event {
    /// An exception code.
    Exception(u32),
    /// A module load or unload (`*`: any).
    Module { unload: bool, name: String },
}

fn event(word: &str) -> Result<Event, CmdError> {
    let w = word.to_ascii_lowercase();
    for (prefix, unload) in [("ld", false), ("ud", true)] {
        if let Some(m) = w.strip_prefix(prefix) {
            let name = m.strip_prefix(':').filter(|n| !n.is_empty()).unwrap_or("*");
            return Ok(Event::Module {
                unload,
                name: name.into(),
            });
        }
    }
    if let Some((_, code, _)) = NAMED.iter().find(|(n, _, _)| *n == w) {
        return Ok(Event::Exception(*code));
    }
    let hex = w.trim_start_matches("0x");
    u32::from_str_radix(hex, 16)
        .map(Event::Exception)
        .map_err(|_| {
            CmdError::Usage(format!(
                "`{word}` is not an event (ld[:module], ud[:module], av, bpe, sse, dz, ii, sov, or an exception code)"
            ))
        })
}

fn filters(e: &Engine) -> Filters {
    Filters {
        exceptions: e
            .control
            .exceptions
            .iter()
            .map(|(c, f)| ExceptionFilter {
                code: u64::from(*c),
                name: NAMED
                    .iter()
                    .find(|(_, x, _)| x == c)
                    .map(|(n, _, _)| n.to_string()),
                filter: *f,
            })
            .collect(),
        module_loads: e.control.module_loads.clone(),
        module_unloads: e.control.module_unloads.clone(),
    }
}

pub(crate) fn sx(e: &mut Engine, verb: &str, a: &Args<'_>) -> Result<Filters, CmdError> {
    let verb = verb.to_ascii_lowercase();
    let text = a.text("ARGS").unwrap_or("").trim().to_string();
    if verb == "sx" {
        if !text.is_empty() {
            return Err(CmdError::Usage("sx takes no arguments".into()));
        }
        return Ok(filters(e));
    }
    let f = match verb.as_str() {
        "sxe" => Filter::Break,
        "sxd" => Filter::SecondChance,
        "sxn" => Filter::Output,
        _ => Filter::Ignore,
    };
    if text.is_empty() {
        return Err(CmdError::Usage(format!(
            "usage: {verb} EVENT (ld[:module], ud[:module], av, bpe, sse, or a code)"
        )));
    }
    for w in text.split_whitespace() {
        match event(w)? {
            Event::Exception(code) => {
                e.control.exceptions.insert(code, f);
            }
            Event::Module { unload, name } => {
                let list = if unload {
                    &mut e.control.module_unloads
                } else {
                    &mut e.control.module_loads
                };
                list.retain(|n| !n.eq_ignore_ascii_case(&name));
                if f == Filter::Break {
                    list.push(name);
                }
            }
        }
    }
    sync_module_breaks(e)?;
    Ok(filters(e))
}
