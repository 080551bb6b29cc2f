//! The command engine: one kernel model, the current processor, and a dispatcher that runs
//! WinDbg-style commands and gives each one's text (in WinDbg's layout), a JSON value with the
//! numbers, and what it cost in round trips and bytes.

use kdnet_arch::Context;
use serde::Serialize;
use serde_json::Value;

use crate::expr::{self, Env, ExprError};
use kdnet_model::mem::MemStats;
use kdnet_model::nt::{Kernel, ModelError};

/// Why a command failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdError {
    /// The command is not known.
    #[error("no such command: {0}")]
    Unknown(String),
    /// Its arguments are wrong.
    #[error("{0}")]
    Usage(String),
    /// An expression failed.
    #[error(transparent)]
    Expr(#[from] ExprError),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The command could not do what it was asked, for a reason it names (memory it must read
    /// whole that cannot be read, a file it cannot write).
    #[error("{0}")]
    Failed(String),
    /// The command itself went wrong (a bug in this tool); the session goes on.
    #[error("internal error in this command (please report it): {0}")]
    Internal(String),
}

impl From<kdnet_model::nt::view::ViewError> for CmdError {
    fn from(e: kdnet_model::nt::view::ViewError) -> CmdError {
        CmdError::Model(ModelError::View(e))
    }
}

impl From<kdnet_symbols::SymError> for CmdError {
    fn from(e: kdnet_symbols::SymError) -> CmdError {
        CmdError::Model(ModelError::Symbols(e))
    }
}

impl From<kdnet_model::target::TargetError> for CmdError {
    fn from(e: kdnet_model::target::TargetError) -> CmdError {
        CmdError::Model(ModelError::Target(e))
    }
}

/// What one command cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Cost {
    /// Requests to the target.
    pub round_trips: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Reads answered from the cache.
    pub cache_hits: u64,
}

impl Cost {
    fn from_stats(s: &MemStats) -> Cost {
        Cost {
            round_trips: s.transport.round_trips,
            bytes: s.transport.bytes,
            cache_hits: s.cache_hits,
        }
    }
}

/// One command's result.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Outcome {
    /// The command as given.
    pub command: String,
    /// Its output in WinDbg's layout.
    #[serde(skip)]
    pub text: String,
    /// Its output as data (null when it failed).
    pub result: Value,
    /// Why it failed.
    pub error: Option<String>,
    /// Whether the result is whole: false when the command failed, or when it could not read
    /// all it needed (a read failed, a walk stopped early at a limit, a broken list or the time
    /// budget); `incomplete` says why.
    pub complete: bool,
    /// Why the result is not whole (empty when it is, or when the command failed).
    pub incomplete: Vec<String>,
    /// What it cost.
    pub cost: Cost,
}

impl Outcome {
    /// Whether it worked.
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }

    /// A command that failed before it could run.
    fn failed(command: &str, error: String) -> Outcome {
        Outcome {
            command: command.trim().to_string(),
            text: String::new(),
            result: Value::Null,
            error: Some(error),
            complete: false,
            incomplete: Vec::new(),
            cost: Cost::default(),
        }
    }
}

/// How far a long command (`.dump`) has got, as it reports it through [`Engine::progress`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Pages done (read, or found unreadable), an earlier run's included when it goes on with
    /// one.
    pub done: u64,
    /// Pages in all.
    pub total: u64,
    /// Pages this run has done (the rate is theirs).
    pub done_now: u64,
    /// Bytes this run has written.
    pub bytes: u64,
    /// Time since this run began.
    pub elapsed: std::time::Duration,
    /// The command has ended (the last report; whoever draws progress clears it).
    pub finished: bool,
}

impl Progress {
    /// Bytes per second this run.
    pub fn rate(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-3)
    }

    /// Time left at this run's pace, once it has one.
    pub fn eta(&self) -> Option<std::time::Duration> {
        if self.done_now == 0 || self.done >= self.total {
            return None;
        }
        let per_page = self.elapsed.as_secs_f64() / self.done_now as f64;
        Some(std::time::Duration::from_secs_f64(
            per_page * (self.total - self.done) as f64,
        ))
    }
}

/// Where a long command's progress goes: the command's name and how far it has got. The
/// command line draws it on a terminal's standard error; elsewhere there is none, so that the
/// command's text and JSON stay as they are.
pub type ProgressSink = Box<dyn FnMut(&str, &Progress) + Send>;

/// Most failed reads named in one result (the rest are counted).
const FAILURES_SHOWN: usize = 3;

/// Text and data a command produces.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Lines for people.
    pub text: String,
    /// Numbers for programs.
    pub json: Value,
}

/// The command engine over one kernel.
pub struct Engine {
    /// The kernel model.
    pub kernel: Kernel,
    /// The processor `r` and `k` show.
    pub processor: u32,
    /// The longest a command may run (`--max-seconds N` on a command overrides it); a command
    /// that runs out stops with what it has and says so.
    pub budget: Option<std::time::Duration>,
    /// No command runs past this instant (a whole capture's stop budget); a command started
    /// after it fails at once.
    pub deadline: Option<std::time::Instant>,
    /// The user registers `$t0`–`$t19` (`r $t0 = …`).
    pub user_registers: [u64; 20],
    /// `$p`: the first value the last `d*` command showed.
    pub last_shown: Option<u64>,
    /// The register mask plain `r` shows (`rm`).
    pub register_mask: u32,
    /// The session log (`.logopen`): each command and its output as the prompt shows them.
    pub log: Option<crate::cmds::session::SessionLog>,
    /// Where long commands report how far they have got (none: they do not).
    pub progress: Option<ProgressSink>,
    /// Where a plain `u` goes on (after the last listing; none: at the current instruction).
    pub next_disassembly: Option<u64>,
    /// A register context other than the processor's own (`.cxr`, `.trap`): `r`, `k`, `u` and
    /// the registers in expressions use it until `.cxr` with no address, a processor switch or
    /// the target running.
    pub scope: Option<Scope>,
    /// The frame `.frame` chose (0: the innermost).
    pub frame: usize,
    /// Breakpoints and event filters of the session (`bp`, `sxe`), and what is written in
    /// the target while it runs.
    pub control: crate::control::RunControl,
}

/// A register context set by `.cxr` or `.trap`.
#[derive(Debug, Clone)]
pub struct Scope {
    /// The processor whose registers it stands for.
    pub processor: u32,
    /// The registers.
    pub context: Context,
    /// What it was read from.
    pub kind: ScopeKind,
    /// Where.
    pub address: u64,
}

/// What a scope's registers were read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeKind {
    /// A CONTEXT record (`.cxr`).
    ContextRecord,
    /// A KTRAP_FRAME (`.trap`).
    TrapFrame,
    /// A frame of the stack, its registers as the walk recovered them (`.frame /c`).
    Frame,
}

impl ScopeKind {
    /// Its name in results: `context_record`, `trap_frame` or `frame`.
    pub fn name(self) -> &'static str {
        match self {
            ScopeKind::ContextRecord => "context_record",
            ScopeKind::TrapFrame => "trap_frame",
            ScopeKind::Frame => "frame",
        }
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("kernel", &self.kernel)
            .field("processor", &self.processor)
            .finish()
    }
}

/// Takes `--max-seconds N` out of a command.
fn take_budget(command: &str) -> Result<(String, Option<std::time::Duration>), CmdError> {
    let words: Vec<&str> = command.split_whitespace().collect();
    let Some(i) = words.iter().position(|w| *w == "--max-seconds") else {
        return Ok((command.to_string(), None));
    };
    let secs: f64 = words
        .get(i + 1)
        .and_then(|v| v.parse().ok())
        .filter(|v: &f64| v.is_finite() && *v > 0.0 && *v < 1e7)
        .ok_or_else(|| CmdError::Usage("--max-seconds needs a number of seconds".into()))?;
    let rest: Vec<&str> = words
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i && *j != i + 1)
        .map(|(_, w)| *w)
        .collect();
    Ok((
        rest.join(" "),
        Some(std::time::Duration::from_secs_f64(secs)),
    ))
}

/// Splits a line into commands at `;` (not inside quotes).
pub fn split_commands(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ';' if !quoted => {
                out.push(std::mem::take(&mut cur));
            }
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

impl Engine {
    /// An engine over `kernel`, on the processor the target stopped on.
    pub fn new(kernel: Kernel) -> Engine {
        let processor = kernel.mem.info().current_processor;
        Engine {
            kernel,
            processor,
            budget: None,
            deadline: None,
            user_registers: [0; 20],
            last_shown: None,
            register_mask: crate::cmds::registers::DEFAULT_MASK,
            log: None,
            progress: None,
            next_disassembly: None,
            scope: None,
            frame: 0,
            control: crate::control::RunControl::default(),
        }
    }

    /// Reports how far the long command `what` has got (to the sink, when there is one).
    pub fn report_progress(&mut self, what: &str, p: &Progress) {
        if let Some(sink) = &mut self.progress {
            sink(what, p);
        }
    }

    /// Forgets cached state (the target ran).
    pub fn invalidate(&mut self) {
        self.kernel.invalidate();
        self.next_disassembly = None;
        self.reset_scope();
    }

    /// Back to the processors' own registers and the innermost frame.
    pub fn reset_scope(&mut self) {
        self.scope = None;
        self.frame = 0;
    }

    /// The registers of processor `n` (kept by the kernel model while the target stays
    /// stopped), or the context `.cxr`/`.trap` set for it.
    pub fn context(&mut self, n: u32) -> Result<Context, CmdError> {
        if let Some(s) = &self.scope
            && s.processor == n
        {
            return Ok(s.context.clone());
        }
        Ok(self.kernel.context(n)?)
    }

    /// Runs every command of a line.
    pub fn run_line(&mut self, line: &str) -> Vec<Outcome> {
        split_commands(line).iter().map(|c| self.run(c)).collect()
    }

    /// Runs one command (and writes it with its output to the session log, when one is open).
    pub fn run(&mut self, command: &str) -> Outcome {
        let processor = self.processor;
        let mut o = self.run_unlogged(command);
        if let Some(log) = &mut self.log {
            let mut t = format!("{processor}: kd> {}\n{}", o.command, o.text);
            if let Some(e) = &o.error {
                t.push_str(&format!("error: {e}\n"));
            }
            if let Err(why) = log.write(&t) {
                self.log = None;
                o.text.push_str(&format!(
                    "warning: the log file could not be written ({why}); it is closed\n"
                ));
            }
        }
        o
    }

    /// Writes text that is not a command's (a script's `.echo`) to the session log.
    pub fn log_text(&mut self, text: &str) {
        if let Some(log) = &mut self.log
            && log.write(text).is_err()
        {
            self.log = None;
        }
    }

    fn run_unlogged(&mut self, command: &str) -> Outcome {
        let before = self.kernel.mem.stats();
        let (command, budget) = match take_budget(command) {
            Ok(x) => x,
            Err(e) => return Outcome::failed(command, e.to_string()),
        };
        let command = command.as_str();
        let budget = budget.or(self.budget);
        // The target stopped answering: each command would only wait again.
        if let Some(why) = self.target_gone() {
            return Outcome::failed(
                command,
                format!("not run: no answer from the target ({why})"),
            );
        }
        if self
            .deadline
            .is_some_and(|d| std::time::Instant::now() >= d)
        {
            return Outcome::failed(
                command,
                "not run: the time budget for the whole run is spent".into(),
            );
        }
        self.kernel.mem.clear_failures();
        self.kernel.begin_command();
        let until = match (budget.map(|b| std::time::Instant::now() + b), self.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.kernel.mem.set_deadline(until);
        // A bug in one command must not end a session that holds a stopped machine.
        let r = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.dispatch(command.trim())
        })) {
            Ok(r) => r,
            Err(payload) => {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".to_string());
                Err(CmdError::Internal(message))
            }
        };
        self.kernel.mem.set_deadline(None);
        let r = match r {
            Err(CmdError::Model(ModelError::Target(
                kdnet_model::target::TargetError::OutOfTime,
            ))) => Err(CmdError::Usage(match budget {
                Some(b) if until != self.deadline => format!(
                    "stopped: the time budget of {:.1} s ran out before the command finished",
                    b.as_secs_f64()
                ),
                _ => "stopped: the time budget for the whole run ran out before the command \
finished"
                    .to_string(),
            })),
            other => other,
        };
        let cost = Cost::from_stats(&self.kernel.mem.stats().since(&before));
        // What the command could not read, whether or not it said so itself.
        let (gaps, dropped) = self.kernel.take_gaps();
        let (failures, described) = self.kernel.mem.failures();
        let failed_reads = (failures > 0).then(|| {
            let shown: Vec<&str> = described
                .iter()
                .take(FAILURES_SHOWN)
                .map(String::as_str)
                .collect();
            let more = failures.saturating_sub(shown.len() as u64);
            format!(
                "{}{}",
                shown.join("; "),
                if more > 0 {
                    format!(" (and {more} more failed reads)")
                } else {
                    String::new()
                }
            )
        });
        let r = match (r, self.target_gone()) {
            // Whatever the command made of it, it was made without the target (what it says
            // of its own work, a file it kept, is kept).
            (Err(CmdError::Failed(m)), Some(why)) => {
                Err(format!("no answer from the target: {why}; {m}"))
            }
            (_, Some(why)) => Err(format!("no answer from the target: {why}")),
            (Ok(o), None) => Ok(o),
            (Err(e), None) => Err(match &failed_reads {
                Some(f) if !matches!(e, CmdError::Model(ModelError::Target(_))) => {
                    format!("{e} (reads failed: {f})")
                }
                _ => e.to_string(),
            }),
        };
        match r {
            Ok(o) => {
                let mut incomplete = gaps;
                if dropped > 0 {
                    incomplete.push(format!("and {dropped} more reasons"));
                }
                if let Some(f) = failed_reads {
                    incomplete.push(format!("reads failed: {f}"));
                }
                let mut text = o.text;
                if !incomplete.is_empty() {
                    if !text.is_empty() && !text.ends_with('\n') {
                        text.push('\n');
                    }
                    for why in &incomplete {
                        text.push_str(&format!("INCOMPLETE: {why}\n"));
                    }
                }
                Outcome {
                    command: command.trim().to_string(),
                    text,
                    result: o.json,
                    error: None,
                    complete: incomplete.is_empty(),
                    incomplete,
                    cost,
                }
            }
            Err(e) => Outcome {
                cost,
                ..Outcome::failed(command, e)
            },
        }
    }

    /// Why the target is taken for gone (it stopped answering), once a command met it: no
    /// further command runs (each would only wait again) until [`Engine::retry_target`].
    pub fn target_gone(&self) -> Option<String> {
        self.kernel.mem.gone().map(str::to_string)
    }

    /// Asks the target again from the next command on, though a command found it gone: a
    /// person at the prompt types a new line (the session itself fails at once while the
    /// target is silent, and answers again once it is heard).
    pub fn retry_target(&mut self) {
        self.kernel.mem.clear_gone();
    }

    fn dispatch(&mut self, command: &str) -> Result<Output, CmdError> {
        let (verb, args) = match command.find(|c: char| c.is_whitespace()) {
            Some(i) => (&command[..i], command[i..].trim()),
            None => (command, ""),
        };
        // `?1+2` and `dq@rsp` are written without a space too.
        if let Some(rest) = verb.strip_prefix('?')
            && verb != "?"
        {
            return crate::registry::run(self, "?", &format!("{rest} {args}"));
        }
        // `rM MASK`: `r` with a register mask for once (`rm` sets the mask itself).
        if verb == "rM" {
            return crate::registry::run(self, "r", &format!("M {args}"));
        }
        // `k` with its option letters run together (`kbn`, `kpL`, `kfn`): `n` (frame numbers)
        // is always on and `L` (no source lines) has nothing to hide here, so the layout
        // letter decides.
        if verb.len() > 2
            && let Some(letters) = verb.strip_prefix('k')
            && letters.chars().all(|c| "bpcfvnL".contains(c))
        {
            let mut layout = ['b', 'p', 'c', 'f', 'v']
                .into_iter()
                .filter(|c| letters.contains(*c))
                .collect::<Vec<_>>();
            // `kbv`, `kpv`: `v` shows what `b` and `p` do and more.
            if layout.contains(&'v') {
                layout.retain(|c| !matches!(c, 'b' | 'p'));
            }
            if layout.len() <= 1 {
                let canonical = layout.first().map_or("k".to_string(), |c| format!("k{c}"));
                return crate::registry::run(self, &canonical, args);
            }
        }
        // `~Ns`: switch to processor N (decimal, as WinDbg takes it).
        if let Some(n) = verb
            .strip_prefix('~')
            .and_then(|r| r.strip_suffix('s').or(r.strip_suffix('S')))
        {
            return crate::registry::run(self, "~Ns", n);
        }
        crate::registry::run(self, verb, args)
    }

    /// Evaluates an expression against this target.
    pub fn eval(&mut self, text: &str) -> Result<u64, CmdError> {
        if text.trim().is_empty() {
            return Err(CmdError::Usage("an expression is needed".into()));
        }
        let mut env = EngineEnv { e: self };
        Ok(expr::evaluate(text, &mut env)?)
    }
}

impl Engine {
    /// A register of the current processor (`rax`, `eax`, `zf`, `cr3`, `dr7`, `gdtr`, …) or a
    /// pseudo-register (`$thread`, `$t0`, …), by name without `@`.
    pub fn register(&mut self, name: &str) -> Result<u64, ExprError> {
        let lower = name.to_ascii_lowercase();
        if let Some(p) = lower.strip_prefix('$') {
            return self.pseudo_register(p);
        }
        let def =
            crate::regs::lookup(&lower).ok_or_else(|| ExprError::BadRegister(lower.clone()))?;
        let n = self.processor;
        let unavailable = |why: String| ExprError::Unavailable {
            name: format!("@{lower}"),
            why,
        };
        let c = self.context(n).map_err(|e| unavailable(e.to_string()))?;
        let special = if def.special() {
            self.kernel
                .mem
                .target()
                .special_registers(n)
                .map_err(|e| unavailable(format!("the processor's control registers: {e}")))?
        } else {
            Vec::new()
        };
        def.value(&c, &special)
            .ok_or_else(|| unavailable("not in what the target reported".into()))
    }

    fn pseudo_register(&mut self, p: &str) -> Result<u64, ExprError> {
        let name = format!("${p}");
        let unavailable = |why: String| ExprError::Unavailable {
            name: format!("@{name}"),
            why,
        };
        if let Some(i) = expr::user_register(p) {
            return Ok(self.user_registers[i]);
        }
        let n = self.processor;
        let cpu = |e: &mut Engine| -> Result<kdnet_model::nt::procs::Processor, ExprError> {
            let cpus = e
                .kernel
                .processors()
                .map_err(|x| unavailable(x.to_string()))?;
            cpus.into_iter()
                .find(|c| c.number == n)
                .ok_or_else(|| unavailable(format!("processor {n} is not in the processor block")))
        };
        let thread = |e: &mut Engine| -> Result<kdnet_model::nt::procs::Thread, ExprError> {
            let c = cpu(e)?;
            e.kernel
                .thread(c.current)
                .map_err(|x| unavailable(x.to_string()))
        };
        let reg = |e: &mut Engine, r: &str| e.register(r);
        let bug = |e: &mut Engine, i: usize| -> Result<u64, ExprError> {
            match e
                .kernel
                .bugcheck()
                .map_err(|x| unavailable(x.to_string()))?
            {
                Some((code, params)) => Ok(if i == 0 {
                    u64::from(code)
                } else {
                    params[i - 1]
                }),
                None => Err(unavailable("the target has not bugchecked".into())),
            }
        };
        match p {
            "ip" => reg(self, "rip"),
            "csp" => reg(self, "rsp"),
            "retreg" | "retreg64" => reg(self, "rax"),
            "ptrsize" => Ok(8),
            "pagesize" => Ok(0x1000),
            "p" => self
                .last_shown
                .ok_or_else(|| unavailable("no d* command has shown a value yet".into())),
            "prcb" => Ok(cpu(self)?.prcb),
            "pcr" => Ok(cpu(self)?.kpcr),
            "thread" => Ok(cpu(self)?.current),
            "proc" => {
                let t = thread(self)?;
                Ok(t.attached_process.unwrap_or(t.process))
            }
            "teb" => Ok(thread(self)?.teb),
            "tid" => Ok(thread(self)?.tid),
            "tpid" => Ok(thread(self)?.pid),
            "peb" => {
                let t = thread(self)?;
                let p = self
                    .kernel
                    .process(t.attached_process.unwrap_or(t.process))
                    .map_err(|x| unavailable(x.to_string()))?;
                Ok(p.peb)
            }
            "ra" => {
                let c = self.context(n).map_err(|x| unavailable(x.to_string()))?;
                let s =
                    self.kernel
                        .unwind(kdnet_model::nt::unwind::Regs::from_context(&c), None, true);
                match s.frames.first() {
                    Some(f) if f.return_address != 0 => Ok(f.return_address),
                    _ => Err(unavailable(format!(
                        "the first frame has no return address ({})",
                        s.note.as_deref().unwrap_or("no unwind data")
                    ))),
                }
            }
            "exentry" => {
                let nt = self
                    .kernel
                    .modules()
                    .map_err(|x| unavailable(x.to_string()))?
                    .first()
                    .map(|m| m.base)
                    .ok_or_else(|| unavailable("no kernel module".into()))?;
                let h = self
                    .kernel
                    .mem
                    .kread(nt, 0x1000)
                    .map_err(|x| unavailable(x.to_string()))?;
                let rva = kdnet_model::pe::headers(&h)
                    .map_err(|x| unavailable(format!("the kernel's headers: {x}")))?
                    .entry_point;
                Ok(nt + u64::from(rva))
            }
            "bug_code" => bug(self, 0),
            "bug_param1" => bug(self, 1),
            "bug_param2" => bug(self, 2),
            "bug_param3" => bug(self, 3),
            "bug_param4" => bug(self, 4),
            _ => Err(ExprError::BadRegister(name)),
        }
    }
}

struct EngineEnv<'a> {
    e: &'a mut Engine,
}

impl Env for EngineEnv<'_> {
    fn symbol(&mut self, module: Option<&str>, name: &str) -> Option<u64> {
        let k = &mut self.e.kernel;
        if let Some(m) = module {
            if name.is_empty() {
                return k
                    .modules()
                    .ok()?
                    .iter()
                    .find(|x| x.short.eq_ignore_ascii_case(m) || x.name.eq_ignore_ascii_case(m))
                    .map(|x| x.base);
            }
            return k.resolve(m, name);
        }
        // A module name stands for its base; then nt's symbols; then every module's.
        let mods = k.modules().ok()?.to_vec();
        if let Some(m) = mods
            .iter()
            .find(|x| x.short.eq_ignore_ascii_case(name) || x.name.eq_ignore_ascii_case(name))
        {
            return Some(m.base);
        }
        if let Ok(a) = k.sym(name) {
            return Some(a);
        }
        mods.iter().find_map(|m| k.resolve(&m.short, name))
    }

    fn register(&mut self, name: &str) -> Result<u64, ExprError> {
        self.e.register(name)
    }

    fn read(&mut self, addr: u64, size: u8) -> Option<u64> {
        let b = self.e.kernel.mem.kread(addr, usize::from(size)).ok()?;
        let mut a = [0u8; 8];
        a[..b.len()].copy_from_slice(&b);
        Some(u64::from_le_bytes(a))
    }
}

/// `fffff805`5c400000`.
pub fn addr(a: u64) -> String {
    format!("{:08x}`{:08x}", a >> 32, a as u32)
}

/// A frame as `kb` and `!analyze`'s STACK_TEXT show it: Child-SP, return address, `gap`, the
/// four argument slots, then the call site.
pub fn frame_with_args(child_sp: u64, ret: u64, args: &[u64; 4], gap: &str, site: &str) -> String {
    format!(
        "{} {}{gap}: {} {} {} {} : {site}",
        addr(child_sp),
        addr(ret),
        addr(args[0]),
        addr(args[1]),
        addr(args[2]),
        addr(args[3]),
    )
}
