//! `!analyze`: the bugcheck code and parameters with their names, the process and stack of the
//! processor that stopped, and the faulting module as the data shows it: the module holding the
//! exception address when the bugcheck carries one, otherwise the first frame outside the
//! kernel and HAL. No guesses beyond that.

use schemars::JsonSchema;
use serde::Serialize;

use crate::args::{Args, Syntax, flag};
use crate::cmds::disasm::{Insn, instruction_at, memory_access};
use crate::cmds::registers::{AllRegisters, general};
use crate::cmds::scope::{Exception, exception};
use crate::engine::{CmdError, Engine};
use crate::registry::Render;
use kdnet_model::nt::records::ExceptionRecord;
use kdnet_model::nt::unwind::Regs;

/// Bugcheck names and what their parameters are (public bugcheck code reference).
const BUGCHECKS: &[(u32, &str, [&str; 4])] = &[
    (
        0x0A,
        "IRQL_NOT_LESS_OR_EQUAL",
        [
            "memory referenced",
            "IRQL",
            "bitfield: bit 0 write, bit 3 execute",
            "address which referenced memory",
        ],
    ),
    (0x19, "BAD_POOL_HEADER", ["subcode", "", "", ""]),
    (0x1A, "MEMORY_MANAGEMENT", ["subcode", "", "", ""]),
    (
        0x1E,
        "KMODE_EXCEPTION_NOT_HANDLED",
        [
            "exception code",
            "address of the exception",
            "parameter 0 of the exception",
            "parameter 1 of the exception",
        ],
    ),
    (
        0x3B,
        "SYSTEM_SERVICE_EXCEPTION",
        [
            "exception code",
            "address of the instruction that caused the exception",
            "address of the context record",
            "",
        ],
    ),
    (
        0x44,
        "MULTIPLE_IRP_COMPLETE_REQUESTS",
        ["address of the IRP", "", "", ""],
    ),
    (
        0x50,
        "PAGE_FAULT_IN_NONPAGED_AREA",
        [
            "memory referenced",
            "access type (0 read, 1 write, 10 execute)",
            "address which referenced memory",
            "",
        ],
    ),
    (
        0x7E,
        "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED",
        [
            "exception code",
            "address of the exception",
            "exception record address",
            "context record address",
        ],
    ),
    (
        0x7F,
        "UNEXPECTED_KERNEL_MODE_TRAP",
        ["trap number", "", "", ""],
    ),
    (
        0x8E,
        "KERNEL_MODE_EXCEPTION_NOT_HANDLED",
        [
            "exception code",
            "address of the exception",
            "trap frame",
            "",
        ],
    ),
    (0x9F, "DRIVER_POWER_STATE_FAILURE", ["subcode", "", "", ""]),
    (0xC2, "BAD_POOL_CALLER", ["subcode", "", "", ""]),
    (
        0xC4,
        "DRIVER_VERIFIER_DETECTED_VIOLATION",
        ["subcode", "", "", ""],
    ),
    (
        0xD1,
        "DRIVER_IRQL_NOT_LESS_OR_EQUAL",
        [
            "memory referenced",
            "IRQL",
            "0 read, 1 write, 8 execute",
            "address which referenced memory",
        ],
    ),
    (
        0xEF,
        "CRITICAL_PROCESS_DIED",
        ["process object", "", "", ""],
    ),
    (0x133, "DPC_WATCHDOG_VIOLATION", ["subcode", "", "", ""]),
    (
        0x139,
        "KERNEL_SECURITY_CHECK_FAILURE",
        [
            "type of corruption",
            "address of the trap frame",
            "address of the exception record",
            "",
        ],
    ),
    (
        0x13A,
        "KERNEL_MODE_HEAP_CORRUPTION",
        ["type of corruption", "", "", ""],
    ),
    (
        0x1CA,
        "SYNTHETIC_WATCHDOG_TIMEOUT",
        [
            "time since the watchdog was last reset (interrupt time)",
            "current interrupt time",
            "current QPC timestamp",
            "index of the clock processor",
        ],
    ),
    (0xE2, "MANUALLY_INITIATED_CRASH", ["", "", "", ""]),
    (0xDEADDEAD, "MANUALLY_INITIATED_CRASH1", ["", "", "", ""]),
];

/// The name and parameter names of a code (the 0x10000000 "M" variants share them).
pub fn describe(code: u32) -> (String, [&'static str; 4]) {
    let base = code & !0x1000_0000;
    match BUGCHECKS.iter().find(|b| b.0 == base) {
        Some((_, name, params)) if base != code => (format!("{name}_M"), *params),
        Some((_, name, params)) => (name.to_string(), *params),
        None => (format!("BUGCHECK_{code:X}"), ["", "", "", ""]),
    }
}

/// Codes whose second parameter is the faulting instruction's address.
fn exception_address(code: u32, p: &[u64; 4]) -> Option<u64> {
    match code & !0x1000_0000 {
        0x1E | 0x3B | 0x7E | 0x8E => Some(p[1]),
        0x0A | 0xD1 | 0x50 => Some(p[3]).filter(|a| *a != 0 && p[0] != 0),
        _ => None,
    }
}

/// `!analyze [-v]` (the analysis is always the verbose one).
pub const SYNTAX: Syntax = Syntax {
    flags: &[
        flag("-v", "verbose: the analysis in full (it always is)"),
        flag(
            "-hang",
            "a hang: every processor's stack, the longest waits and the threads with the \
             most pending IRPs, the held locks with waiters",
        ),
    ],
    params: &[],
    length: false,
};

/// What `!analyze` found.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Analysis {
    /// The machine did not crash (or the dump holds no code).
    NoBugcheck(NoBugcheck),
    /// The bugcheck and what it points at.
    Bugcheck(Box<Bugcheck>),
    /// `-hang`: what the processors run, who waits longest, the locks held.
    Hang(Box<HangAnalysis>),
}

/// `!analyze -hang`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct HangAnalysis {
    /// Marks the hang analysis.
    pub hang: bool,
    /// The bugcheck code, when the machine crashed (null: it did not).
    pub bugcheck: Option<u32>,
    /// Every processor's state and stack.
    pub processors: Vec<ProcessorState>,
    /// The waiting threads that have waited longest, longest first.
    pub longest_waits: Vec<WaitingThread>,
    /// The threads with the most IRPs pending on their lists, most first.
    pub most_irps: Vec<WaitingThread>,
    /// The executive resources held that others wait for, most waiters first.
    pub held_locks: Vec<HeldLockShown>,
    /// Threads looked at.
    pub threads: usize,
    /// Of those, waiting.
    pub waiting: usize,
}

/// A thread in a hang analysis.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct WaitingThread {
    /// The ETHREAD.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub thread: u64,
    /// Its process id.
    pub pid: u64,
    /// Its thread id.
    pub tid: u64,
    /// Its process's image name.
    pub process: String,
    /// Its state.
    pub state: String,
    /// Its wait reason, when waiting.
    pub wait_reason: Option<String>,
    /// How long it has waited (seconds), when waiting.
    pub wait_seconds: Option<f64>,
    /// IRPs on its IRP list.
    pub pending_irps: usize,
    /// The frame it is blocked in (the first outside the wait path), for the longest waits.
    pub blocked_in: Option<String>,
}

/// A held lock in a hang analysis.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct HeldLockShown {
    /// The ERESOURCE.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub address: u64,
    /// Its symbol, for a global.
    pub symbol: Option<String>,
    /// Held exclusively.
    pub exclusive: bool,
    /// The threads that own it.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Vec<crate::hex::Hex>")]
    pub owners: Vec<u64>,
    /// Threads waiting to own it exclusively.
    pub exclusive_waiters: u64,
    /// Threads waiting to share it.
    pub shared_waiters: u64,
    /// ContentionCount.
    pub contention: u64,
}

/// Most threads in each ranking of a hang analysis.
const HANG_TOP: usize = 20;

/// No bugcheck.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct NoBugcheck {
    /// No code (null).
    pub bugcheck_code: (),
    /// No parameters (null).
    pub parameters: (),
    /// A live target (stopped by the debugger) rather than a dump.
    #[serde(skip)]
    pub live: bool,
}

/// A bugcheck analysed.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Bugcheck {
    /// The bugcheck code.
    pub bugcheck_code: u32,
    /// Its name (`BUGCHECK_<code>` when not known).
    pub bugcheck_name: String,
    /// Its four parameters.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "[crate::hex::Hex; 4]")]
    pub parameters: [u64; 4],
    /// What each parameter is (empty when not known).
    pub parameter_names: [String; 4],
    /// The processor that stopped.
    pub processor: u32,
    /// The thread running on it (null when it could not be read).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub thread: Option<u64>,
    /// Its process's image name (null when it could not be read).
    pub process_name: Option<String>,
    /// Its stack.
    pub frames: Vec<Frame>,
    /// Why the stack walk ended where it did (null when it ended normally).
    pub stack_note: Option<String>,
    /// The faulting instruction: the exception address when the code carries one in a module,
    /// else the first frame outside nt and hal (null when neither).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub faulting_ip: Option<u64>,
    /// The symbol there.
    pub symbol: Option<String>,
    /// Its module's short name.
    pub module: Option<String>,
    /// Its module's file name.
    pub image: Option<String>,
    /// The failure bucket: `0x<code>_<symbol without offset>`, or `0x<code>_nt`.
    pub failure_bucket: String,
    /// The exception the bugcheck reports, decoded: from its exception record (0x7E), or from
    /// the parameters that are the record's (0x1E); null for codes that carry none.
    pub exception: Option<Exception>,
    /// The registers at the fault, from the context record or trap frame the bugcheck names
    /// (0x3B, 0x7E, 0x8E): what `.cxr`/`.trap` of it loads. Null when the code names none or
    /// it could not be read (the result then says so).
    pub fault_context: Option<FaultContext>,
    /// The faulting instruction, as `u` shows it (null when its bytes cannot be read or the
    /// code gives no exception address).
    pub faulting_instruction: Option<Insn>,
    /// The memory that instruction read or wrote, from its operands and the registers at the
    /// fault (null when it accesses none or they are not known).
    pub memory_accessed: Option<MemoryAccess>,
    /// Whose registers the stack was walked from: `context_record`, `trap_frame` or
    /// `processor` (the stopped processor's own).
    pub stack_from: String,
    /// For 0x133: what the processor's block and stack say of the DPC that ran too long.
    pub dpc_timeout: Option<DpcTimeout>,
    /// For 0x133: every processor's queued DPCs, as `!dpcs` shows them.
    pub dpcs: Option<crate::ext::sched::Dpcs>,
    /// For 0x1CA: the watchdog's times and every processor's state.
    pub watchdog: Option<SyntheticWatchdog>,
}

/// A system-wide watchdog timeout (0x1CA): the timer ticks stopped being processed.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SyntheticWatchdog {
    /// Seconds since the watchdog was last reset (parameter 1 in 100 ns units).
    pub since_reset_seconds: f64,
    /// The interrupt time at the bugcheck, seconds since boot (parameter 2).
    pub interrupt_time_seconds: f64,
    /// When the watchdog was last reset, seconds since boot (parameter 2 less parameter 1).
    pub last_reset_seconds: f64,
    /// The QPC timestamp at the bugcheck (parameter 3).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub qpc: u64,
    /// The clock processor (parameter 4).
    pub clock_processor: u64,
    /// `nt!KiClockTimerOwner`, where the build has it (it should be parameter 4).
    pub clock_owner: Option<u32>,
    /// The interrupt time KUSER_SHARED_DATA last published (the clock processor publishes it
    /// on each tick), seconds since boot.
    pub published_seconds: Option<f64>,
    /// How far the published interrupt time is behind parameter 2: how long the clock has not
    /// been ticking.
    pub clock_stopped_seconds: Option<f64>,
    /// Where the clock processor is outside nt and hal: what kept the clock from ticking.
    pub clock_processor_in: Option<String>,
    /// Every processor's state.
    pub processors: Vec<ProcessorState>,
}

/// What a processor was doing when the machine stopped.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ProcessorState {
    /// Its number.
    pub processor: u32,
    /// Its IRQL (KPCR.Irql).
    pub irql: Option<u8>,
    /// Whether its interrupts were enabled (RFLAGS.IF in its saved registers).
    pub interrupts_enabled: Option<bool>,
    /// The thread it runs.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub thread: u64,
    /// Whether that is its idle thread.
    pub idle: bool,
    /// That thread's process's image name.
    pub process: Option<String>,
    /// Where it is (RIP symbolised).
    pub at: Option<String>,
    /// Its stack's call sites, innermost first (the first few).
    pub frames: Vec<String>,
    /// The first of its frames outside nt and hal (the driver it is in).
    pub driver_frame: Option<String>,
    /// That frame's instruction pointer.
    #[serde(skip)]
    #[schemars(skip)]
    pub driver_ip: Option<u64>,
    /// Why some of this is missing.
    pub note: Option<String>,
}

/// Most frames shown of each processor's stack in a 0x1CA analysis.
const STATE_FRAMES: usize = 8;

/// The 0x1CA parameters explained, checked against the kernel's own clock, and every
/// processor's state.
fn synthetic_watchdog(e: &mut Engine, p: &[u64; 4]) -> SyntheticWatchdog {
    let owner = e
        .kernel
        .sym("KiClockTimerOwner")
        .ok()
        .and_then(|a| e.kernel.mem.u32(a).ok());
    let published = match e.kernel.clocks() {
        Ok((_, interrupt, _)) => Some(interrupt),
        Err(err) => {
            e.kernel.note_incomplete(format!(
                "KUSER_SHARED_DATA's interrupt time is unreadable: {err}"
            ));
            None
        }
    };
    let mut processors = Vec::new();
    match e.kernel.processors() {
        Ok(cpus) => {
            for c in cpus {
                processors.push(processor_state(e, &c));
            }
        }
        Err(err) => e
            .kernel
            .note_incomplete(format!("the processors are unreadable: {err}")),
    }
    if p[0] > p[1] {
        e.kernel.note_incomplete(format!(
            "the parameters do not fit together: the time since the watchdog's reset \
             ({:#x}) is more than the interrupt time ({:#x})",
            p[0], p[1]
        ));
    }
    SyntheticWatchdog {
        since_reset_seconds: p[0] as f64 / 1e7,
        interrupt_time_seconds: p[1] as f64 / 1e7,
        last_reset_seconds: p[1].saturating_sub(p[0]) as f64 / 1e7,
        qpc: p[2],
        clock_processor: p[3],
        clock_owner: owner,
        published_seconds: published.map(|x| x as f64 / 1e7),
        clock_stopped_seconds: published.map(|x| (p[1] as f64 - x as f64) / 1e7),
        clock_processor_in: processors
            .iter()
            .find(|c| u64::from(c.processor) == p[3])
            .and_then(|c| c.driver_frame.clone()),
        processors,
    }
}

fn processor_state(e: &mut Engine, c: &kdnet_model::nt::procs::Processor) -> ProcessorState {
    let mut notes = Vec::new();
    let irql = match e
        .kernel
        .nt()
        .and_then(|nt| Ok(nt.offset("_KPCR", "Irql")?))
        .and_then(|o| Ok(e.kernel.mem.u8(c.kpcr.wrapping_add(o))?))
    {
        Ok(i) => Some(i),
        Err(err) => {
            notes.push(format!("its IRQL is unreadable: {err}"));
            None
        }
    };
    let ctx = match e.kernel.context(c.number) {
        Ok(x) => Some(x),
        Err(err) => {
            notes.push(format!("its registers are unreadable: {err}"));
            None
        }
    };
    let thread = match e.kernel.thread(c.current) {
        Ok(t) => Some(t),
        Err(err) => {
            notes.push(format!("its thread {:x} is unreadable: {err}", c.current));
            None
        }
    };
    let process = match &thread {
        Some(t) => match e.kernel.process(t.process) {
            Ok(p) => Some(p.name),
            Err(err) => {
                notes.push(format!("its thread's process is unreadable: {err}"));
                None
            }
        },
        None => None,
    };
    let mut frames = Vec::new();
    let mut driver = None;
    if let Some(x) = &ctx {
        let bounds = thread
            .as_ref()
            .map(|t| (t.stack_limit, t.stack_base))
            .filter(|(lo, hi)| lo < hi && (*lo..=*hi).contains(&x.reg(kdnet_arch::Reg::Rsp)));
        let st = e.kernel.unwind(Regs::from_context(x), bounds, true);
        frames = st
            .frames
            .iter()
            .take(STATE_FRAMES)
            .map(|f| f.call_site.clone())
            .collect();
        driver = st
            .frames
            .iter()
            .find(|f| {
                f.module
                    .as_deref()
                    .is_some_and(|m| !matches!(m, "nt" | "hal"))
            })
            .map(|f| (f.call_site.clone(), f.ip));
        if let Some(n) = st.note.filter(|_| !st.complete) {
            notes.push(format!("its stack walk stopped early: {n}"));
        }
    }
    if !notes.is_empty() {
        e.kernel
            .note_incomplete(format!("processor {}: {}", c.number, notes.join("; ")));
    }
    ProcessorState {
        processor: c.number,
        irql,
        interrupts_enabled: ctx.as_ref().map(|x| x.eflags() & 0x200 != 0),
        thread: c.current,
        idle: c.current == c.idle,
        process,
        at: ctx
            .as_ref()
            .map(|x| e.kernel.symbolize(x.reg(kdnet_arch::Reg::Rip))),
        frames,
        driver_frame: driver.as_ref().map(|d| d.0.clone()),
        driver_ip: driver.map(|d| d.1),
        note: (!notes.is_empty()).then(|| notes.join("; ")),
    }
}

/// A DPC watchdog timeout (0x133), as the stopped processor shows it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DpcTimeout {
    /// `single` (one DPC or ISR past its allotment: subcode 0) or `cumulative` (DPCs at
    /// DISPATCH_LEVEL or above past the watchdog period in all: subcode 1), or `unknown
    /// subcode`.
    pub kind: String,
    /// Ticks run: the DPC's (parameter 2) for `single`, the processor's DpcWatchdogCount for
    /// `cumulative`.
    pub time_count: Option<u64>,
    /// Ticks allowed: the DPC time allotment (parameter 3) for `single`, the watchdog period
    /// (parameter 2) for `cumulative`.
    pub time_limit: Option<u64>,
    /// The KDPC that was running, where the build keeps it (`DpcData[0].ActiveDpc`).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub dpc: Option<u64>,
    /// The DPC routine running when the watchdog fired (for `single`, the one that ran too
    /// long).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub routine: Option<u64>,
    /// It as `module!function`.
    pub routine_symbol: Option<String>,
    /// Where the routine was learned: `active DPC`, `CurrentDpcRoutine` or `stack` (the frame
    /// KiExecuteAllDpcs called); null when none says.
    pub routine_from: Option<String>,
    /// The frame the clock interrupt found running (the one above the interrupt's trap
    /// frame): where the DPC was spending its time.
    pub interrupted: Option<String>,
}

/// Registers at a fault.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FaultContext {
    /// `context_record` or `trap_frame`.
    pub kind: String,
    /// Its address.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub address: u64,
    /// The registers it holds.
    pub registers: AllRegisters,
}

/// A memory access by the faulting instruction.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct MemoryAccess {
    /// The address.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub address: u64,
    /// `read`, `write` or `execute`.
    pub access: String,
    /// Where it was learned: `exception record` (its parameters), or `instruction` (the
    /// faulting instruction's operand with the registers at the fault, where the record has
    /// no address: a general-protection fault reports all ones).
    pub from: String,
}

/// Where a bugcheck's exception record is.
enum RecordAt {
    /// In memory, at this address.
    Memory(u64),
    /// In the parameters themselves.
    Parameters(ExceptionRecord),
}

/// Where a bugcheck's parameters put its exception record, and its registers' (kind, address).
fn exception_sources(code: u32, p: &[u64; 4]) -> (Option<RecordAt>, Option<(&'static str, u64)>) {
    match code & !0x1000_0000 {
        0x3B => (None, Some(("context_record", p[2]))),
        0x7E => (Some(RecordAt::Memory(p[2])), Some(("context_record", p[3]))),
        0x1E => (
            Some(RecordAt::Parameters(ExceptionRecord {
                code: p[0] as u32,
                flags: 0,
                chained: 0,
                address: p[1],
                parameters: vec![p[2], p[3]],
            })),
            None,
        ),
        0x8E => (None, Some(("trap_frame", p[2]))),
        _ => (None, None),
    }
}

/// One stack frame.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Frame {
    /// The stack pointer in it.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub child_sp: u64,
    /// Where it returns to.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub return_address: u64,
    /// Where it is (`module!symbol+offset`).
    pub call_site: String,
    /// Its module (null outside any).
    pub module: Option<String>,
    /// The four home-slot arguments (the text's middle columns).
    #[serde(skip)]
    pub args: [u64; 4],
}

/// `!analyze [-v]`.
pub fn run(e: &mut Engine, _verb: &str, args: &Args<'_>) -> Result<Analysis, CmdError> {
    let bug = e.kernel.bugcheck()?;
    if args.flag("-hang") {
        return Ok(Analysis::Hang(Box::new(hang(e, bug.map(|b| b.0))?)));
    }
    let Some((code, p)) = bug else {
        return Ok(Analysis::NoBugcheck(NoBugcheck {
            bugcheck_code: (),
            parameters: (),
            live: e.kernel.mem.info().live,
        }));
    };
    let (name, mut names) = describe(code);
    if code & !0x1000_0000 == 0x133
        && let Some(n) = dpc_watchdog_names(p[0])
    {
        names = n;
    }
    // The processor that stopped: its thread, process and stack.
    let n = e.processor;
    // The processor's own registers: the analysis works from the default scope, whatever
    // `.cxr`/`.trap` set.
    let ctx = e.kernel.context(n)?;
    let thread = match e.kernel.processors() {
        Ok(cpus) => match cpus.into_iter().find(|c| c.number == n) {
            Some(c) => match e.kernel.thread(c.current) {
                Ok(t) => Some(t),
                Err(err) => {
                    e.kernel.note_incomplete(format!(
                        "the thread running on processor {n} ({:x}) is unreadable: {err}",
                        c.current
                    ));
                    None
                }
            },
            None => None,
        },
        // Dumps without the kernel's processor block (triage) have no thread to name.
        Err(err) => {
            if matches!(&err, kdnet_model::nt::ModelError::Target(t) if t.is_transient()) {
                e.kernel
                    .note_incomplete(format!("the processors are unreadable: {err}"));
            }
            None
        }
    };
    let process = match &thread {
        Some(t) => {
            let a = t.attached_process.unwrap_or(t.process);
            match e.kernel.process(a) {
                Ok(p) => Some(p),
                Err(err) => {
                    e.kernel
                        .note_incomplete(format!("process {a:x} is unreadable: {err}"));
                    None
                }
            }
        }
        None => None,
    };
    let bounds = thread
        .as_ref()
        .map(|t| (t.stack_limit, t.stack_base))
        .filter(|(lo, hi)| lo < hi);
    // The exception and the registers at the fault, where the code names them.
    let (record, registers_at) = exception_sources(code, &p);
    let exception = match record {
        Some(RecordAt::Memory(0)) | None => None,
        Some(RecordAt::Memory(at)) => match e.kernel.exception_record(at) {
            Ok(r) => Some(exception(e, Some(at), &r)),
            Err(err) => {
                e.kernel
                    .note_incomplete(format!("the exception record at {at:#x}: {err}"));
                None
            }
        },
        Some(RecordAt::Parameters(r)) => Some(exception(e, None, &r)),
    };
    let fault = match registers_at {
        Some((_, 0)) | None => None,
        Some((kind, at)) => {
            let read = if kind == "trap_frame" {
                e.kernel.trap_frame(at).map(|t| t.context)
            } else {
                e.kernel.context_record(at)
            };
            match read {
                Ok(c) => Some((kind, at, c)),
                Err(err) => {
                    e.kernel.note_incomplete(format!(
                        "the registers at the fault ({} at {at:#x}) could not be read, so the \
                         stack is the stopped processor's: {err}",
                        kind.replace('_', " ")
                    ));
                    None
                }
            }
        }
    };
    let (regs, stack_from) = match &fault {
        Some((kind, _, c)) => (Regs::from_context(c), kind.to_string()),
        None => (Regs::from_context(&ctx), "processor".to_string()),
    };
    let bounds = bounds.filter(|(lo, hi)| (*lo..=*hi).contains(&regs.rsp()));
    let stack = e.kernel.unwind(regs, bounds, true);
    if !stack.complete {
        e.kernel.note_incomplete(format!(
            "the stack walk stopped early: {}",
            stack.note.as_deref().unwrap_or("the walk ended")
        ));
    }
    // For 0x1CA, what the clock processor was doing decides the faulting place.
    let watchdog = (code == 0x1CA).then(|| synthetic_watchdog(e, &p));
    let clock_driver_ip = watchdog.as_ref().and_then(|w| {
        w.processors
            .iter()
            .find(|c| u64::from(c.processor) == p[3])
            .and_then(|c| c.driver_ip)
    });
    // The faulting place.
    let faulting_ip = exception_address(code, &p)
        .filter(|a| e.kernel.module_index(*a).is_some())
        .or(clock_driver_ip)
        .or_else(|| {
            stack
                .frames
                .iter()
                .find(|f| {
                    f.module
                        .as_deref()
                        .is_some_and(|m| !matches!(m, "nt" | "hal"))
                })
                .map(|f| f.ip)
        });
    let (symbol, module) = match faulting_ip {
        Some(ip) => {
            let m = e.kernel.module_at(ip);
            (Some(e.kernel.symbolize(ip)), m)
        }
        None => (None, None),
    };
    let faulting_instruction = exception_address(code, &p)
        .filter(|a| Some(*a) == faulting_ip)
        .and_then(|a| instruction_at(e, a));
    let recorded = exception.as_ref().and_then(|x| {
        let (kind, at) = (*x.parameters.first()?, *x.parameters.get(1)?);
        let access = match kind {
            0 => "read",
            1 => "write",
            8 => "execute",
            _ => return None,
        };
        (x.code == 0xc000_0005 && at != u64::MAX).then(|| MemoryAccess {
            address: at,
            access: access.into(),
            from: "exception record".into(),
        })
    });
    let touches_memory = matches!(p[0] as u32, 0xc000_0005 | 0xc000_0006);
    let memory_accessed = recorded.or_else(|| match (&fault, faulting_ip) {
        _ if !touches_memory => None,
        (Some((_, _, c)), Some(ip)) if c.reg(kdnet_arch::Reg::Rip) == ip => memory_access(e, ip, c)
            .map(|(address, write)| MemoryAccess {
                address,
                access: if write { "write" } else { "read" }.into(),
                from: "instruction".into(),
            }),
        _ => None,
    });
    let processor = n;
    let (dpc_timeout, dpcs) = if code & !0x1000_0000 == 0x133 {
        let t = dpc_timeout(e, n, &p, &stack.frames);
        let d = match crate::ext::sched::dpc_list(e) {
            Ok(d) => Some(d),
            Err(err) => {
                e.kernel
                    .note_incomplete(format!("the DPC queues could not be read: {err}"));
                None
            }
        };
        (Some(t), d)
    } else {
        (None, None)
    };
    let fault_context = fault.map(|(kind, address, c)| FaultContext {
        kind: kind.to_string(),
        address,
        registers: general(e, &c, processor),
    });
    let bucket = match (&symbol, &module) {
        (Some(s), _) => format!("0x{code:X}_{}", s.split('+').next().unwrap_or(s.as_str())),
        (None, _) => format!("0x{code:X}_nt"),
    };
    Ok(Analysis::Bugcheck(Box::new(Bugcheck {
        bugcheck_code: code,
        bugcheck_name: name,
        parameters: p,
        parameter_names: names.map(str::to_string),
        processor: n,
        thread: thread.as_ref().map(|t| t.ethread),
        process_name: process.map(|p| p.name),
        frames: stack
            .frames
            .iter()
            .map(|f| Frame {
                child_sp: f.child_sp,
                return_address: f.return_address,
                call_site: f.call_site.clone(),
                module: f.module.clone(),
                args: f.args,
            })
            .collect(),
        stack_note: stack.note,
        faulting_ip,
        symbol,
        module: module.as_ref().map(|m| m.short.clone()),
        image: module.map(|m| m.name),
        failure_bucket: bucket,
        exception,
        fault_context,
        faulting_instruction,
        memory_accessed,
        stack_from,
        dpc_timeout,
        dpcs,
        watchdog,
    })))
}

/// What the stopped processor says of the DPC that ran too long.
fn dpc_timeout(
    e: &mut Engine,
    n: u32,
    p: &[u64; 4],
    frames: &[kdnet_model::nt::unwind::Frame],
) -> DpcTimeout {
    let prcb = match e.kernel.processors() {
        Ok(c) => c.into_iter().find(|c| c.number == n).map(|c| c.prcb),
        Err(err) => {
            if !err.is_layout() {
                e.kernel
                    .note_incomplete(format!("the processors are unreadable: {err}"));
            }
            None
        }
    };
    let view = match prcb.map(|a| e.kernel.view("_KPRCB", a)) {
        Some(Ok(v)) => Some(v),
        Some(Err(err)) => {
            if !err.is_layout() {
                e.kernel
                    .note_incomplete(format!("processor {n}'s KPRCB is unreadable: {err}"));
            }
            None
        }
        None => None,
    };
    let field = |name: &str| view.as_ref().and_then(|v| v.get(name).ok());
    // What the kernel compared: the parameters (the block's own counters are only what they
    // are now).
    let (time_count, time_limit) = match p[0] {
        0 => (Some(p[1]), Some(p[2])),
        1 => (field("DpcWatchdogCount"), Some(p[1])),
        _ => (None, None),
    };
    let current = field("CurrentDpcRoutine").filter(|r| *r != 0);
    let active = field("DpcData[0].ActiveDpc").filter(|d| *d != 0);
    let mut from = None;
    let mut routine = None;
    if let Some(d) = active {
        match e
            .kernel
            .view("_KDPC", d)
            .and_then(|v| Ok(v.get("DeferredRoutine")?))
        {
            Ok(r) => {
                routine = Some(r);
                from = Some("active DPC");
            }
            Err(err) => e
                .kernel
                .note_incomplete(format!("the active DPC {d:#x} is unreadable: {err}")),
        }
    }
    if routine.is_none()
        && let Some(r) = current
    {
        routine = Some(r);
        from = Some("CurrentDpcRoutine");
    }
    if routine.is_none()
        && let Some(i) = frames
            .iter()
            .position(|f| f.call_site.starts_with("nt!KiExecuteAllDpcs+"))
        && i > 0
    {
        // The frame KiExecuteAllDpcs called is the routine (its start: the function holding
        // the instruction before the return address there).
        let f = &frames[i - 1];
        let exact = i == 1 || frames[i - 2].trap_frame.is_some();
        let at = if exact { f.ip } else { f.ip.wrapping_sub(1) };
        match e.kernel.function_extent(at) {
            Ok(Some(x)) => {
                routine = Some(x.base + u64::from(x.primary.begin));
                from = Some("stack");
            }
            Ok(None) => {}
            Err(why) => e
                .kernel
                .note_incomplete(format!("the DPC routine's unwind data: {why}")),
        }
    }
    let interrupted = frames
        .iter()
        .position(|f| f.trap_frame.is_some())
        .and_then(|i| frames.get(i + 1))
        .map(|f| f.call_site.clone());
    DpcTimeout {
        kind: match p[0] {
            0 => "single",
            1 => "cumulative",
            _ => "unknown subcode",
        }
        .into(),
        time_count,
        time_limit,
        dpc: active,
        routine,
        routine_symbol: routine.map(|r| e.kernel.symbolize(r)),
        routine_from: from.map(str::to_string),
        interrupted,
    }
}

/// The parameter names of a 0x133, which depend on its subcode.
fn dpc_watchdog_names(subcode: u64) -> Option<[&'static str; 4]> {
    match subcode {
        0 => Some([
            "a single DPC or ISR exceeded its time allotment",
            "the DPC time count (in ticks)",
            "the DPC time allotment (in ticks)",
            "cast to nt!DPC_WATCHDOG_GLOBAL_TRIAGE_BLOCK",
        ]),
        1 => Some([
            "DPCs and ISRs at DISPATCH_LEVEL or above exceeded the watchdog period in all",
            "the watchdog period (in ticks)",
            "cast to nt!DPC_WATCHDOG_GLOBAL_TRIAGE_BLOCK",
            "",
        ]),
        _ => None,
    }
}

impl Render for Analysis {
    fn render(&self, out: &mut String) {
        let b = match self {
            Analysis::NoBugcheck(n) => {
                out.push_str(if n.live {
                    "No bugcheck: KiBugCheckData holds no code. The target was stopped by the \
debugger, not by a crash; use !analyze -hang, !locks, !deadlock, !stacks and !vm for a hang.\n"
                } else {
                    "No bugcheck code in this dump.\n"
                });
                return;
            }
            Analysis::Bugcheck(b) => b,
            Analysis::Hang(h) => {
                render_hang(h, out);
                return;
            }
        };
        let stars = "*".repeat(79);
        out.push_str(&format!(
            "{stars}\n*{:^77}*\n*{:^77}*\n*{:^77}*\n{stars}\n\n",
            "", "Bugcheck Analysis", ""
        ));
        out.push_str(&format!(
            "{} ({:x})\nArguments:\n",
            b.bugcheck_name, b.bugcheck_code
        ));
        for (i, v) in b.parameters.iter().enumerate() {
            if b.parameter_names[i].is_empty() {
                out.push_str(&format!("Arg{}: {:016x}\n", i + 1, v));
            } else {
                out.push_str(&format!(
                    "Arg{}: {:016x}, {}\n",
                    i + 1,
                    v,
                    b.parameter_names[i]
                ));
            }
        }
        out.push_str(&format!("\nBUGCHECK_CODE:  {:x}\n", b.bugcheck_code));
        for (i, v) in b.parameters.iter().enumerate() {
            out.push_str(&format!("\nBUGCHECK_P{}: {:x}\n", i + 1, v));
        }
        if let Some(f) = &b.fault_context {
            let command = if f.kind == "trap_frame" {
                ".trap"
            } else {
                ".cxr"
            };
            out.push_str(&format!(
                "\n{}:  {:x} -- ({command} {:#x})\n",
                if f.kind == "trap_frame" {
                    "TRAP_FRAME"
                } else {
                    "CONTEXT"
                },
                f.address,
                f.address
            ));
            f.registers.render(out);
            if let Some(i) = &b.faulting_instruction {
                out.push_str(&i.line());
                out.push('\n');
            }
            out.push_str("Resetting default scope\n");
        }
        if let Some(x) = &b.exception {
            match x.record {
                Some(at) => {
                    out.push_str(&format!("\nEXCEPTION_RECORD:  {at:x} -- (.exr {at:#x})\n"))
                }
                None => {
                    for (i, v) in x.parameters.iter().enumerate() {
                        out.push_str(&format!("\nEXCEPTION_PARAMETER{}:  {v:016x}\n", i + 1));
                    }
                }
            }
            if x.record.is_some() {
                x.render_record(out);
            }
        }
        if let Some(name) = &b.process_name {
            out.push_str(&format!("\nPROCESS_NAME:  {name}\n"));
        }
        if let Some(m) = &b.memory_accessed {
            out.push_str(&format!(
                "\n{}_ADDRESS:  {:016x}{}\n",
                m.access.to_ascii_uppercase(),
                m.address,
                if m.from == "instruction" {
                    " (from the faulting instruction and the registers at the fault)"
                } else {
                    ""
                }
            ));
        }
        if matches!(b.bugcheck_code & !0x1000_0000, 0x1E | 0x3B | 0x7E | 0x8E) {
            let exc = b.parameters[0] as u32;
            let name = crate::cmds::scope::exception_name(exc);
            out.push_str(&format!("\nEXCEPTION_CODE_STR:  {exc:x}\n"));
            if !name.is_empty() {
                out.push_str(&format!("\nEXCEPTION_NAME:  {name}\n"));
            }
        }
        if b.stack_from != "processor" {
            out.push_str(&format!(
                "\nSTACK_COMMAND:  {} ; kb\n",
                match &b.fault_context {
                    Some(f) if f.kind == "trap_frame" => format!(".trap {:#x}", f.address),
                    Some(f) => format!(".cxr {:#x}", f.address),
                    None => String::new(),
                }
            ));
        }
        if let Some(t) = &b.dpc_timeout {
            let single = t.kind == "single";
            out.push_str(&format!(
                "\nDPC_TIMEOUT_TYPE:  {}\n",
                match t.kind.as_str() {
                    "single" => "SINGLE_DPC_TIMEOUT_EXCEEDED",
                    "cumulative" => "DPC_QUEUE_EXECUTION_TIMEOUT_EXCEEDED",
                    other => other,
                }
            ));
            if let (Some(c), Some(l)) = (t.time_count, t.time_limit) {
                out.push_str(&format!(
                    "\n{}:  {c:x} ticks of {l:x} allowed\n",
                    if single {
                        "DPC_TIME_COUNT"
                    } else {
                        "DPC_WATCHDOG_COUNT"
                    }
                ));
            }
            if let Some(s) = &t.routine_symbol {
                let dpc = t.dpc.map_or(String::new(), |d| format!("KDPC {d:x}; "));
                out.push_str(&format!(
                    "\n{}:  {s} ({dpc}from the {})\n",
                    if single { "DPC_ROUTINE" } else { "DPC_RUNNING" },
                    t.routine_from.as_deref().unwrap_or("?")
                ));
            }
            if let Some(i) = &t.interrupted {
                out.push_str(&format!("\nINTERRUPTED_AT:  {i}\n"));
            }
        }
        out.push_str("\nSTACK_TEXT:  \n");
        for f in &b.frames {
            out.push_str(&crate::engine::frame_with_args(
                f.child_sp,
                f.return_address,
                &f.args,
                " ",
                &f.call_site,
            ));
            out.push('\n');
        }
        if let Some(note) = &b.stack_note {
            out.push_str(&format!("({note})\n"));
        }
        if let (Some(s), Some(i)) = (&b.symbol, &b.faulting_instruction) {
            out.push_str(&format!(
                "\nFAULTING_IP: \n{}\n{}\n",
                s.replace("+0x", "+"),
                i.line()
            ));
        }
        if let Some(s) = &b.symbol {
            out.push_str(&format!("\nSYMBOL_NAME:  {}\n", s.replace("+0x", "+")));
        }
        if let (Some(m), Some(i)) = (&b.module, &b.image) {
            out.push_str(&format!("\nMODULE_NAME: {m}\n\nIMAGE_NAME:  {i}\n"));
        }
        out.push_str(&format!("\nFAILURE_BUCKET_ID:  {}\n", b.failure_bucket));
        if let Some(d) = &b.dpcs {
            out.push_str("\nQUEUED_DPCS:\n");
            d.render(out);
        }
        if let Some(w) = &b.watchdog {
            render_watchdog(w, out);
        }
    }
}

fn render_watchdog(w: &SyntheticWatchdog, out: &mut String) {
    out.push_str(&format!(
        "\nWATCHDOG:  last reset {:.3} s after boot, {:.3} s before the bugcheck (at {:.3} s, \
         QPC {:x}); clock processor {}",
        w.last_reset_seconds,
        w.since_reset_seconds,
        w.interrupt_time_seconds,
        w.qpc,
        w.clock_processor
    ));
    match w.clock_owner {
        Some(o) if u64::from(o) == w.clock_processor => {
            out.push_str(" (nt!KiClockTimerOwner agrees)\n")
        }
        Some(o) => out.push_str(&format!(" (but nt!KiClockTimerOwner says processor {o})\n")),
        None => out.push('\n'),
    }
    if let Some(f) = &w.clock_processor_in {
        out.push_str(&format!("CLOCK_PROCESSOR_IN:  {f}\n"));
    }
    if let (Some(p), Some(d)) = (w.published_seconds, w.clock_stopped_seconds) {
        out.push_str(&format!(
            "CLOCK:  KUSER_SHARED_DATA's interrupt time is {p:.3} s: the clock last ticked \
             {d:.3} s before the bugcheck\n"
        ));
    }
    out.push('\n');
    render_processors(&w.processors, Some(w.clock_processor), out);
}

/// `!analyze -hang`: every processor's stack, the waiting threads ranked by wait time and by
/// pending IRPs, and the held locks others wait for.
fn hang(e: &mut Engine, bugcheck: Option<u32>) -> Result<HangAnalysis, CmdError> {
    let cpus = e.kernel.processors()?;
    let processors = cpus.iter().map(|c| processor_state(e, c)).collect();
    // IRPs pending per thread.
    let mut irps: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    match kdnet_model::nt::io::thread_irps(&mut e.kernel) {
        Ok((pairs, _, _)) => {
            for (_, t) in pairs {
                *irps.entry(t).or_default() += 1;
            }
        }
        Err(err) => e
            .kernel
            .note_incomplete(format!("the threads' IRP lists are unreadable: {err}")),
    }
    let (procs, note) = e.kernel.processes()?;
    if let Some(n) = note {
        e.kernel
            .note_incomplete(format!("the process list was not read whole: {n}"));
    }
    let mut all = Vec::new();
    for p in &procs {
        let (threads, note) = match e.kernel.threads_of(p.eprocess) {
            Ok(x) => x,
            Err(err) if err.is_layout() => return Err(err.into()),
            Err(err) => {
                e.kernel
                    .note_incomplete(format!("the threads of {} are unreadable: {err}", p.name));
                continue;
            }
        };
        if let Some(n) = note {
            e.kernel
                .note_incomplete(format!("the thread list of {}: {n}", p.name));
        }
        for t in threads {
            all.push((t, p.name.clone()));
        }
    }
    let shown = |t: &kdnet_model::nt::procs::Thread, process: &str, irps: usize| WaitingThread {
        thread: t.ethread,
        pid: t.pid,
        tid: t.tid,
        process: process.to_string(),
        state: t.state_name.clone(),
        wait_reason: (t.state == 5).then(|| t.wait_reason_name.clone()),
        wait_seconds: (t.state == 5).then_some(t.wait_seconds).flatten(),
        pending_irps: irps,
        blocked_in: None,
    };
    let threads = all.len();
    let mut waiting: Vec<&(kdnet_model::nt::procs::Thread, String)> =
        all.iter().filter(|(t, _)| t.state == 5).collect();
    let n_waiting = waiting.len();
    let unknown = waiting
        .iter()
        .filter(|(t, _)| t.wait_seconds.is_none())
        .count();
    if unknown > 0 {
        e.kernel.note_incomplete(format!(
            "{unknown} waiting threads' wait times are unknown (the clock is unreadable), so \
             the ranking by wait time is not whole"
        ));
    }
    waiting.sort_by(|a, b| {
        b.0.wait_seconds
            .unwrap_or(0.0)
            .total_cmp(&a.0.wait_seconds.unwrap_or(0.0))
            .then(a.0.ethread.cmp(&b.0.ethread))
    });
    let mut longest_waits = Vec::new();
    for (t, process) in waiting.iter().take(HANG_TOP) {
        let mut w = shown(t, process, irps.get(&t.ethread).copied().unwrap_or(0));
        match e.kernel.stack_of(t) {
            Ok(st) => w.blocked_in = kdnet_model::nt::threads::blocker(&st),
            Err(err) => e.kernel.note_incomplete(format!(
                "the stack of thread {:x} is unreadable: {err}",
                t.ethread
            )),
        }
        longest_waits.push(w);
    }
    let mut by_irps: Vec<&(kdnet_model::nt::procs::Thread, String)> = all
        .iter()
        .filter(|(t, _)| irps.get(&t.ethread).copied().unwrap_or(0) > 0)
        .collect();
    by_irps.sort_by(|a, b| {
        irps[&b.0.ethread]
            .cmp(&irps[&a.0.ethread])
            .then(a.0.ethread.cmp(&b.0.ethread))
    });
    let most_irps = by_irps
        .iter()
        .take(HANG_TOP)
        .map(|(t, process)| shown(t, process, irps[&t.ethread]))
        .collect();
    // The held locks others wait for, from the waiters.
    let opts = kdnet_model::nt::waitgraph::Options {
        thread_first: true,
        ..Default::default()
    };
    let mut held_locks: Vec<HeldLockShown> =
        match kdnet_model::nt::waitgraph::build_with(&mut e.kernel, &opts) {
            Ok(g) => g
                .held
                .iter()
                .filter(|h| h.exclusive_waiter_count + h.shared_waiter_count > 0)
                .map(|h| HeldLockShown {
                    address: h.address,
                    symbol: h.symbol.clone(),
                    exclusive: h.exclusive,
                    owners: h.owners.iter().map(|o| o.thread).collect(),
                    exclusive_waiters: h.exclusive_waiter_count,
                    shared_waiters: h.shared_waiter_count,
                    contention: h.contention_count,
                })
                .collect(),
            Err(err) if err.is_layout() => return Err(err.into()),
            Err(err) => {
                e.kernel
                    .note_incomplete(format!("the held locks could not be found: {err}"));
                Vec::new()
            }
        };
    held_locks.sort_by_key(|h| {
        (
            std::cmp::Reverse(h.exclusive_waiters + h.shared_waiters),
            h.address,
        )
    });
    Ok(HangAnalysis {
        hang: true,
        bugcheck,
        processors,
        longest_waits,
        most_irps,
        held_locks,
        threads,
        waiting: n_waiting,
    })
}

fn render_hang(h: &HangAnalysis, out: &mut String) {
    out.push_str(
        "*******************************************************************************\n\
         *                                                                             *\n\
         *                                Hang Analysis                                *\n\
         *                                                                             *\n\
         *******************************************************************************\n\n",
    );
    if let Some(c) = h.bugcheck {
        out.push_str(&format!(
            "The machine stopped with bugcheck {c:x}; `!analyze -v` analyses it.\n\n"
        ));
    }
    render_processors(&h.processors, None, out);
    out.push_str(&format!(
        "\nLONGEST_WAITS: ({} of {} threads waiting)\n",
        h.longest_waits.len(),
        h.waiting
    ));
    for w in &h.longest_waits {
        out.push_str(&format!(
            "  {:>9}  THREAD {:016x}  Cid {:04x}.{:04x}  {:<16} {:<14} IRPs {:<3} {}\n",
            w.wait_seconds
                .map_or("?".to_string(), |s| format!("{s:.1} s")),
            w.thread,
            w.pid,
            w.tid,
            w.process,
            w.wait_reason.as_deref().unwrap_or(""),
            w.pending_irps,
            w.blocked_in.as_deref().unwrap_or("")
        ));
    }
    if !h.most_irps.is_empty() {
        out.push_str("\nMOST_PENDING_IRPS:\n");
        for w in &h.most_irps {
            out.push_str(&format!(
                "  {:>4} IRPs  THREAD {:016x}  Cid {:04x}.{:04x}  {:<16} {}\n",
                w.pending_irps, w.thread, w.pid, w.tid, w.process, w.state
            ));
        }
    }
    out.push_str("\nHELD_LOCKS:\n");
    if h.held_locks.is_empty() {
        out.push_str("  none held with waiters\n");
    }
    for l in &h.held_locks {
        out.push_str(&format!(
            "  {:016x} {:<28} {} owned by {}  waiters: {} exclusive, {} shared (contention {})\n",
            l.address,
            l.symbol.as_deref().unwrap_or(""),
            if l.exclusive { "exclusively" } else { "shared" },
            l.owners
                .iter()
                .map(|o| format!("{o:x}"))
                .collect::<Vec<_>>()
                .join(", "),
            l.exclusive_waiters,
            l.shared_waiters,
            l.contention
        ));
    }
}

/// Every processor's state as `!analyze` shows it (0x1CA and -hang): IRQL, interrupt flag,
/// thread, where it is, its stack unless idle, and why any of that is missing; `clock` marks
/// the clock processor.
fn render_processors(processors: &[ProcessorState], clock: Option<u64>, out: &mut String) {
    out.push_str("PROCESSORS:\n");
    for c in processors {
        let irql = c.irql.map_or("?".to_string(), |i| format!("{i:x}"));
        let iflag = match c.interrupts_enabled {
            Some(true) => "interrupts enabled",
            Some(false) => "INTERRUPTS DISABLED",
            None => "interrupts ?",
        };
        let mark = if clock == Some(u64::from(c.processor)) {
            "  <-- clock processor"
        } else {
            ""
        };
        out.push_str(&format!(
            "  {:2}  IRQL {irql}  {iflag}  thread {:016x} ({}){}  at {}{mark}\n",
            c.processor,
            c.thread,
            c.process.as_deref().unwrap_or("?"),
            if c.idle { " idle" } else { "" },
            c.at.as_deref().unwrap_or("?")
        ));
        if !c.idle {
            for f in &c.frames {
                out.push_str(&format!("        {f}\n"));
            }
        }
        if let Some(n) = &c.note {
            out.push_str(&format!("        NOTE: {n}\n"));
        }
    }
}
