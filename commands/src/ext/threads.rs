//! Hang helpers over threads and processes: `!thread`, `!process`, `!stacks`, `!running`.
//! What they read is the model's ([`kdnet_model::nt::threads`]); here the arguments, the
//! results and their text.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;

use crate::args::{Args, Syntax, flag, opt_expr, opt_word};
use crate::engine::{CmdError, Engine, addr};
use crate::registry::Render;
use kdnet_model::nt::Kernel;
use kdnet_model::nt::procs::{Process, Thread};
use kdnet_model::nt::threads::blocker;

/// `Ticks: N (d:hh:mm:ss.mmm)`.
pub fn ticks_text(ticks: u64, increment: u64) -> String {
    let ms = ticks.saturating_mul(increment) / 10_000;
    let (s, ms) = (ms / 1000, ms % 1000);
    format!(
        "{}:{:02}:{:02}:{:02}.{:03}",
        s / 86_400,
        s / 3600 % 24,
        s / 60 % 60,
        s % 60,
        ms
    )
}

fn hex_addr(a: u64) -> String {
    format!("{a:016x}")
}

/// The process name for an EPROCESS, for `Image:` lines (`?` when it cannot be read, and the
/// result says so).
fn process_name(k: &mut Kernel, eprocess: u64) -> String {
    match k.process(eprocess) {
        Ok(p) => p.name,
        Err(e) => {
            k.note_incomplete(format!("process {eprocess:x} is unreadable: {e}"));
            "?".into()
        }
    }
}

// ---- !thread ----

/// `!thread [ADDR|-1] [FLAGS]`.
pub const THREAD: Syntax = Syntax::params(&[opt_expr("ADDR"), opt_expr("FLAGS")]);

/// An object a thread waits on.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Waited {
    /// Its address.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub object: u64,
    /// Its type name.
    #[serde(rename = "type")]
    pub type_name: String,
    /// DISPATCHER_HEADER.Type.
    pub type_code: u8,
    /// The owner, for a mutant.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub owner: Option<u64>,
    /// What the line adds after the type (a mutant's owner, a semaphore's limit).
    #[serde(skip)]
    pub extra: String,
}

/// One frame of a thread's stack.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ThreadFrame {
    /// RSP in this frame.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub child_sp: u64,
    /// Where it returns to.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub return_address: u64,
    /// `module!symbol+offset`.
    pub call_site: String,
}

/// An IRP on a thread's list, as its line shows it.
#[derive(Debug, Clone)]
pub struct IrpLine {
    /// Its address.
    pub irp: u64,
    /// Type, size, flags and MDL, or why it could not be read.
    pub fields: Result<(u16, u16, u32, u64), String>,
}

/// A kernel-mode APC queued to a thread.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct QueuedApc {
    /// The KAPC.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub apc: u64,
    /// Its KernelRoutine.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub kernel_routine: u64,
    /// It symbolised.
    pub symbol: String,
}

/// A thread (`!thread`, and each thread of `!process` with thread flags).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ThreadInfo {
    /// ETHREAD.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub thread: u64,
    /// The owning EPROCESS.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub process: u64,
    /// The owning process's image name.
    pub image: String,
    /// Process id.
    pub pid: u64,
    /// Thread id.
    pub tid: u64,
    /// Its state's name.
    pub state: String,
    /// The processor it last ran on.
    pub processor: u64,
    /// Why it waits (null when it does not).
    pub wait_reason: Option<String>,
    /// `KernelMode` or `UserMode` (null when it does not wait).
    pub wait_mode: Option<String>,
    /// Whether the wait is alertable.
    pub alertable: bool,
    /// The tick count its wait began at.
    pub wait_start_tick: u64,
    /// How many ticks it has waited.
    pub wait_ticks: Option<u64>,
    /// How long it has waited (seconds).
    pub wait_seconds: Option<f64>,
    /// What it waits on.
    pub waits: Vec<Waited>,
    /// Its IRPs.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Vec<crate::hex::Hex>")]
    pub irps: Vec<u64>,
    /// KernelApcDisable (negative: normal kernel APCs disabled).
    pub kernel_apc_disable: i64,
    /// SpecialApcDisable (negative: special kernel APCs, I/O completion among them, disabled).
    pub special_apc_disable: i64,
    /// Kernel-mode APCs queued to it, each with its kernel routine symbolised.
    pub kernel_apcs: Vec<QueuedApc>,
    /// The process it is attached to.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub attached_process: Option<u64>,
    /// Its start address.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub start_address: u64,
    /// Its Win32 start address.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub win32_start_address: u64,
    /// Priority.
    pub priority: i64,
    /// BasePriority.
    pub base_priority: i64,
    /// Context switches.
    pub context_switches: u64,
    /// Whether its kernel stack is resident.
    pub stack_resident: bool,
    /// Its stack (empty when not asked for).
    pub frames: Vec<ThreadFrame>,
    /// Why the stack walk stopped early, or what it is.
    pub stack_note: Option<String>,
    /// The frame it is blocked in.
    pub blocker: Option<String>,
    /// The client token it impersonates (null: not impersonating).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub impersonation: Option<Impersonation>,
    /// The rest of what its text shows.
    #[serde(skip)]
    pub shown: ThreadShown,
}

/// A thread's impersonation of a client.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Impersonation {
    /// The client's token.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub token: u64,
    /// `Anonymous`, `Identification`, `Impersonation` or `Delegation`.
    pub level: String,
}

/// What `!thread`'s text shows beyond the data.
#[derive(Debug, Clone, Default)]
pub struct ThreadShown {
    state_code: u8,
    teb: u64,
    win32_thread: u64,
    irps: Vec<IrpLine>,
    attached_image: String,
    increment: u64,
    user_time: u64,
    kernel_time: u64,
    win32_start: String,
    start: String,
    initial_stack: u64,
    kernel_stack: u64,
    stack_base: u64,
    stack_limit: u64,
    with_stack: bool,
}

/// Reads what `!thread` shows of `t`.
pub fn thread_info(e: &mut Engine, t: &Thread, with_stack: bool) -> Result<ThreadInfo, CmdError> {
    let k = &mut e.kernel;
    let (_, increment) = k.clock().unwrap_or((0, 156_250));
    let mut waits = Vec::new();
    for w in &t.waits {
        let extra = match (w.type_code, w.owner) {
            (2, Some(o)) => format!("-owning thread {}", hex_addr(o)),
            (5, _) => {
                let limit = k
                    .nt()
                    .ok()
                    .and_then(|nt| nt.offset("_KSEMAPHORE", "Limit").ok())
                    .map(|o| k.mem.u32(w.object + o));
                match limit {
                    Some(Ok(l)) => format!(" Limit {l:#x}"),
                    Some(Err(e)) => {
                        k.note_incomplete(format!(
                            "the limit of semaphore {:x} is unreadable: {e}",
                            w.object
                        ));
                        " Limit ?".into()
                    }
                    None => String::new(),
                }
            }
            _ => String::new(),
        };
        waits.push(Waited {
            object: w.object,
            type_name: w.type_name.clone(),
            type_code: w.type_code,
            owner: w.owner,
            extra,
        });
    }
    let mut irps = Vec::new();
    for irp in &t.irps {
        let fields = match k.mem.kread(*irp, 0x18) {
            Ok(b) => {
                let g16 = |o: usize| {
                    b.get(o..o + 2)
                        .map_or(0, |x| u16::from_le_bytes([x[0], x[1]]))
                };
                let g32 = |o: usize| {
                    b.get(o..o + 4)
                        .map_or(0, |x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]))
                };
                let g64 = |o: usize| {
                    b.get(o..o + 8)
                        .map_or(0, |x| u64::from_le_bytes(x.try_into().unwrap_or([0; 8])))
                };
                Ok((g16(0), g16(2), g32(0x10), g64(8)))
            }
            Err(e) => {
                k.note_incomplete(format!("IRP {irp:x} is unreadable: {e}"));
                Err(e.to_string())
            }
        };
        irps.push(IrpLine { irp: *irp, fields });
    }
    let image = process_name(k, t.process);
    let attached_image = match t.attached_process {
        Some(p) => process_name(k, p),
        None => String::new(),
    };
    let win32_start = k.symbolize(t.win32_start_address);
    let start = k.symbolize(t.start_address);
    let mut frames = Vec::new();
    let mut stack_note = None;
    let mut blocked_in = None;
    if with_stack {
        let st = e.kernel.stack_of(t)?;
        frames = st
            .frames
            .iter()
            .map(|f| ThreadFrame {
                child_sp: f.child_sp,
                return_address: f.return_address,
                call_site: f.call_site.clone(),
            })
            .collect();
        e.kernel.note_stack(t, &st);
        blocked_in = blocker(&st);
        stack_note = st.note;
    }
    let waiting = t.state == 5;
    Ok(ThreadInfo {
        thread: t.ethread,
        process: t.process,
        image,
        pid: t.pid,
        tid: t.tid,
        state: t.state_name.clone(),
        processor: t.processor,
        wait_reason: waiting.then(|| t.wait_reason_name.clone()),
        wait_mode: waiting.then(|| {
            if t.wait_mode == 0 {
                "KernelMode"
            } else {
                "UserMode"
            }
            .to_string()
        }),
        alertable: t.alertable,
        wait_start_tick: t.wait_tick,
        wait_ticks: t.wait_ticks,
        wait_seconds: t.wait_seconds,
        waits,
        irps: t.irps.clone(),
        kernel_apc_disable: t.kernel_apc_disable,
        special_apc_disable: t.special_apc_disable,
        kernel_apcs: t
            .kernel_apcs
            .iter()
            .map(|(apc, r)| QueuedApc {
                apc: *apc,
                kernel_routine: *r,
                symbol: e.kernel.symbolize(*r),
            })
            .collect(),
        attached_process: t.attached_process,
        start_address: t.start_address,
        win32_start_address: t.win32_start_address,
        priority: t.priority,
        base_priority: t.base_priority,
        context_switches: t.context_switches,
        stack_resident: t.stack_resident,
        frames,
        stack_note,
        blocker: blocked_in,
        impersonation: t.impersonation.map(|(token, level)| Impersonation {
            token,
            level: ["Anonymous", "Identification", "Impersonation", "Delegation"]
                [(level & 3) as usize]
                .to_string(),
        }),
        shown: ThreadShown {
            state_code: t.state,
            teb: t.teb,
            win32_thread: t.win32_thread,
            irps,
            attached_image,
            increment,
            user_time: t.user_time,
            kernel_time: t.kernel_time,
            win32_start,
            start,
            initial_stack: t.initial_stack,
            kernel_stack: t.kernel_stack,
            stack_base: t.stack_base,
            stack_limit: t.stack_limit,
            with_stack,
        },
    })
}

impl Render for ThreadInfo {
    fn render(&self, s: &mut String) {
        let x = &self.shown;
        s.push_str(&format!(
            "THREAD {}  Cid {:04x}.{:04x}  Teb: {} Win32Thread: {} ",
            hex_addr(self.thread),
            self.pid,
            self.tid,
            hex_addr(x.teb),
            hex_addr(x.win32_thread)
        ));
        match x.state_code {
            2 => s.push_str(&format!("RUNNING on processor {}\n", self.processor)),
            5 => s.push_str(&format!(
                "WAIT: ({}) {} {}\n",
                self.wait_reason.as_deref().unwrap_or(""),
                self.wait_mode.as_deref().unwrap_or(""),
                if self.alertable {
                    "Alertable"
                } else {
                    "Non-Alertable"
                }
            )),
            _ => s.push_str(&format!(
                "{} on processor {}\n",
                self.state.to_ascii_uppercase(),
                self.processor
            )),
        }
        for w in &self.waits {
            s.push_str(&format!(
                "    {}  {}{}\n",
                hex_addr(w.object),
                w.type_name,
                w.extra
            ));
        }
        if !x.irps.is_empty() {
            s.push_str("IRP List:\n");
            for i in &x.irps {
                match &i.fields {
                    Ok((ty, size, flags, mdl)) => s.push_str(&format!(
                        "    {}: ({:04x},{:04x}) Flags: {:08x}  Mdl: {}\n",
                        hex_addr(i.irp),
                        ty,
                        size,
                        flags,
                        hex_addr(*mdl)
                    )),
                    Err(e) => s.push_str(&format!("    {}: (unreadable: {e})\n", hex_addr(i.irp))),
                }
            }
        }
        if self.special_apc_disable < 0 || self.kernel_apc_disable < 0 {
            s.push_str(&format!(
                "    APCs disabled: KernelApcDisable {} SpecialApcDisable {}{}\n",
                self.kernel_apc_disable,
                self.special_apc_disable,
                if self.special_apc_disable < 0 {
                    " (special kernel APCs, I/O completion among them, cannot run)"
                } else {
                    ""
                }
            ));
        }
        if !self.kernel_apcs.is_empty() {
            s.push_str("Kernel APCs queued:\n");
            for a in &self.kernel_apcs {
                s.push_str(&format!("    {}  {}\n", hex_addr(a.apc), a.symbol));
            }
        }
        match &self.impersonation {
            Some(i) => s.push_str(&format!(
                "Impersonation token:  {} (Level {})\n",
                hex_addr(i.token),
                i.level
            )),
            None => s.push_str("Not impersonating\n"),
        }
        s.push_str(&format!(
            "Owning Process            {}       Image:         {}\n",
            hex_addr(self.process),
            self.image
        ));
        match self.attached_process {
            Some(p) => s.push_str(&format!(
                "Attached Process          {}       Image:         {}\n",
                hex_addr(p),
                x.attached_image
            )),
            None => s.push_str("Attached Process          N/A            Image:         N/A\n"),
        }
        match self.wait_ticks {
            Some(ticks) => s.push_str(&format!(
                "Wait Start TickCount      {}           Ticks: {} ({})\n",
                self.wait_start_tick,
                ticks,
                ticks_text(ticks, x.increment)
            )),
            None => s.push_str(&format!(
                "Wait Start TickCount      {}\n",
                self.wait_start_tick
            )),
        }
        s.push_str(&format!(
            "Context Switch Count      {}\n",
            self.context_switches
        ));
        s.push_str(&format!(
            "UserTime                  {}\nKernelTime                {}\n",
            ticks_text(x.user_time, x.increment),
            ticks_text(x.kernel_time, x.increment)
        ));
        s.push_str(&format!(
            "Win32 Start Address {} (0x{:x})\nStart Address {} (0x{:x})\n",
            x.win32_start, self.win32_start_address, x.start, self.start_address
        ));
        s.push_str(&format!(
            "Stack Init {:x} Current {:x}\nBase {:x} Limit {:x} Call 0000000000000000\n",
            x.initial_stack, x.kernel_stack, x.stack_base, x.stack_limit
        ));
        s.push_str(&format!(
            "Priority {} BasePriority {}\n",
            self.priority, self.base_priority
        ));
        if x.with_stack {
            s.push_str("Child-SP          RetAddr               Call Site\n");
            for f in &self.frames {
                s.push_str(&format!(
                    "{} {}     {}\n",
                    addr(f.child_sp),
                    addr(f.return_address),
                    f.call_site
                ));
            }
            if let Some(n) = &self.stack_note {
                s.push_str(&format!("({n})\n"));
            }
        }
        s.push('\n');
    }
}

/// The current thread of the engine's processor.
fn current_thread(e: &mut Engine) -> Result<u64, CmdError> {
    let n = e.processor;
    e.kernel
        .current_thread(n)?
        .ok_or_else(|| CmdError::Usage(format!("processor {n} has no current thread")))
}

/// `!thread [ADDR|-1] [FLAGS]`.
pub fn thread_command(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<ThreadInfo, CmdError> {
    let et = match a.text("ADDR") {
        Some(t) if t != "-1" => e.eval(t)?,
        _ => current_thread(e)?,
    };
    let flags = a.expr(e, "FLAGS")?.unwrap_or(0x1f);
    let t = e.kernel.thread(et)?;
    thread_info(e, &t, flags & 0x6 != 0 || flags == 0x1f)
}

// ---- !process ----

/// `!process [ADDR|0] [FLAGS] [IMAGE]`.
pub const PROCESS: Syntax =
    Syntax::params(&[opt_expr("ADDR"), opt_expr("FLAGS"), opt_word("IMAGE")]);

/// A process of `!process`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ProcessInfo {
    /// EPROCESS.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub process: u64,
    /// Process id.
    pub pid: u64,
    /// The parent's process id.
    pub parent_pid: u64,
    /// ImageFileName.
    pub image: String,
    /// DirectoryTableBase.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub dir_base: u64,
    /// Peb.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub peb: u64,
    /// ObjectTable.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub object_table: u64,
    /// Handles in use (null: no handle table, or it could not be read).
    pub handle_count: Option<u64>,
    /// With flag 1: what WinDbg shows of the process beyond its identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<ProcessDetailsShown>,
    /// Its threads (with thread flags 2 or 4 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<Vec<ThreadInfo>>,
    /// Its session id as shown (`none`, `?` when unreadable).
    #[serde(skip)]
    pub session: String,
    /// Why its thread list is not whole.
    #[serde(skip)]
    pub threads_note: Option<String>,
}

/// What `!process` with flag 1 shows of a process beyond its identity (null where the build's
/// EPROCESS lacks the field).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ProcessDetailsShown {
    /// The root node of its VAD tree.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub vad_root: Option<u64>,
    /// VADs in the tree.
    pub vads: Option<u64>,
    /// CloneRoot.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub clone_root: Option<u64>,
    /// Private pages.
    pub private_pages: Option<u64>,
    /// Modified pages.
    pub modified_pages: Option<u64>,
    /// Locked pages.
    pub locked_pages: Option<u64>,
    /// DeviceMap.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub device_map: Option<u64>,
    /// The primary token.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub token: Option<u64>,
    /// Seconds since it was created (by the target's clock).
    pub elapsed_seconds: Option<f64>,
    /// User-mode time, seconds.
    pub user_seconds: Option<f64>,
    /// Kernel-mode time, seconds.
    pub kernel_seconds: Option<f64>,
    /// Working-set pages now.
    pub working_set: Option<u64>,
    /// Minimum working set, pages.
    pub working_set_min: Option<u64>,
    /// Maximum working set, pages.
    pub working_set_max: Option<u64>,
    /// Peak working set, pages.
    pub peak_working_set: Option<u64>,
    /// Virtual size, bytes.
    pub virtual_size: Option<u64>,
    /// Peak virtual size, bytes.
    pub peak_virtual_size: Option<u64>,
    /// Page faults.
    pub page_faults: Option<u64>,
    /// Base priority.
    pub base_priority: Option<i64>,
    /// CommitCharge, pages.
    pub commit_charge: u64,
    /// Its job (null: none).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub job: Option<u64>,
}

/// `hh:mm:ss.mmm` from seconds, as `!process` shows times.
fn clock_text(seconds: f64) -> String {
    let ms = (seconds * 1000.0).round() as u64;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

impl ProcessDetailsShown {
    fn render(&self, text: &mut String) {
        let n = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
        let a = |v: Option<u64>| v.map_or("?".to_string(), hex_addr);
        text.push_str(&format!(
            "    VadRoot {} Vads {} Clone {} Private {}. Modified {}. Locked {}.\n",
            a(self.vad_root),
            n(self.vads),
            self.clone_root
                .map_or("?".to_string(), |c| format!("{c:x}")),
            n(self.private_pages),
            n(self.modified_pages),
            n(self.locked_pages)
        ));
        text.push_str(&format!("    DeviceMap {}\n", a(self.device_map)));
        let row = |text: &mut String, label: &str, value: String| {
            text.push_str(&format!("    {label:<34}{value}\n"));
        };
        row(text, "Token", a(self.token));
        let t = |v: Option<f64>| v.map_or("?".to_string(), clock_text);
        row(text, "ElapsedTime", t(self.elapsed_seconds));
        row(text, "UserTime", t(self.user_seconds));
        row(text, "KernelTime", t(self.kernel_seconds));
        if let (Some(now), Some(min), Some(max)) =
            (self.working_set, self.working_set_min, self.working_set_max)
        {
            text.push_str(&format!(
                "    Working Set Sizes (now,min,max)  ({now}, {min}, {max}) ({}KB, {}KB, {}KB)\n",
                now * 4,
                min * 4,
                max * 4
            ));
        }
        row(text, "PeakWorkingSetSize", n(self.peak_working_set));
        let mb = |v: Option<u64>| v.map_or("?".to_string(), |v| format!("{} Mb", v >> 20));
        row(text, "VirtualSize", mb(self.virtual_size));
        row(text, "PeakVirtualSize", mb(self.peak_virtual_size));
        row(text, "PageFaultCount", n(self.page_faults));
        row(
            text,
            "BasePriority",
            self.base_priority
                .map_or("?".to_string(), |p| p.to_string()),
        );
        row(text, "CommitCharge", self.commit_charge.to_string());
        if let Some(j) = self.job.filter(|j| *j != 0) {
            row(text, "Job", hex_addr(j));
        }
    }
}

/// What `!process` found.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Processes {
    /// The processes.
    pub processes: Vec<ProcessInfo>,
    /// Whether every process was asked for (the text's banner).
    #[serde(skip)]
    pub all: bool,
    /// Why the process list is not whole.
    #[serde(skip)]
    pub list_note: Option<String>,
}

fn session_text(k: &mut Kernel, p: &Process) -> String {
    if p.session == 0 {
        "none".to_string()
    } else {
        match k.mem.u32(p.session + 8) {
            Ok(s) => format!("{s}"),
            Err(e) => {
                k.note_incomplete(format!(
                    "the session of process {:x} is unreadable: {e}",
                    p.eprocess
                ));
                "?".into()
            }
        }
    }
}

/// `!process [0|ADDR] [FLAGS] [IMAGE]`: 0 0 lists processes; flags with bit 1/2 add threads
/// (and their stacks).
pub fn process_command(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<Processes, CmdError> {
    let which = a.expr(e, "ADDR")?.unwrap_or(0);
    let flags = a.expr(e, "FLAGS")?.unwrap_or(0);
    let image = a.text("IMAGE").map(str::to_ascii_lowercase);
    let mut list_note = None;
    let procs: Vec<Process> = if which == 0 {
        let (p, note) = e.kernel.processes()?;
        if let Some(n) = note {
            e.kernel.note_incomplete(format!("process list: {n}"));
            list_note = Some(n);
        }
        p
    } else {
        vec![e.kernel.process(which)?]
    };
    let mut list = Vec::new();
    for p in procs {
        if let Some(img) = &image
            && !p.name.to_ascii_lowercase().starts_with(img.as_str())
        {
            continue;
        }
        let session = session_text(&mut e.kernel, &p);
        let handle_count = match e.kernel.handle_count(p.object_table) {
            Ok(n) => n,
            Err(err) => {
                e.kernel.note_incomplete(format!(
                    "the handle table of {} ({:x}) is unreadable: {err}",
                    p.name, p.eprocess
                ));
                None
            }
        };
        let details = if flags & 1 != 0 {
            Some(process_details(e, &p)?)
        } else {
            None
        };
        let mut threads = None;
        let mut threads_note = None;
        if flags & 0x6 != 0 {
            let (ts, note) = e.kernel.threads_of(p.eprocess)?;
            let mut tj = Vec::new();
            for t in ts {
                tj.push(thread_info(e, &t, flags & 0x4 != 0)?);
            }
            if let Some(n) = note {
                e.kernel
                    .note_incomplete(format!("threads of {} ({:x}): {n}", p.name, p.eprocess));
                threads_note = Some(n);
            }
            threads = Some(tj);
        }
        list.push(ProcessInfo {
            process: p.eprocess,
            pid: p.pid,
            parent_pid: p.parent,
            image: p.name,
            dir_base: p.dtb,
            peb: p.peb,
            object_table: p.object_table,
            handle_count,
            details,
            threads,
            session,
            threads_note,
        });
    }
    Ok(Processes {
        processes: list,
        all: which == 0,
        list_note,
    })
}

impl Render for Processes {
    fn render(&self, text: &mut String) {
        if self.all {
            text.push_str("**** NT ACTIVE PROCESS DUMP ****\n");
            if let Some(n) = &self.list_note {
                text.push_str(&format!("NOTE: {n}\n"));
            }
        }
        for p in &self.processes {
            text.push_str(&format!(
                "PROCESS {}\n    SessionId: {}  Cid: {:04x}    Peb: {:08x}  ParentCid: {:04x}\n    DirBase: {:08x}  ObjectTable: {}  HandleCount: {}\n    Image: {}\n",
                hex_addr(p.process),
                p.session,
                p.pid,
                p.peb,
                p.parent_pid,
                p.dir_base,
                hex_addr(p.object_table),
                p.handle_count
                    .map_or("<Data Not Accessible>".to_string(), |n| format!("{n}.")),
                p.image
            ));
            if let Some(d) = &p.details {
                d.render(text);
            }
            if let Some(threads) = &p.threads {
                text.push('\n');
                for t in threads {
                    let mut tt = String::new();
                    t.render(&mut tt);
                    for line in tt.lines() {
                        text.push_str("        ");
                        text.push_str(line);
                        text.push('\n');
                    }
                }
                if let Some(n) = &p.threads_note {
                    text.push_str(&format!("        NOTE: {n}\n"));
                }
            }
            text.push('\n');
        }
    }
}

/// Reads what flag 1 of `!process` shows of `p`.
fn process_details(e: &mut Engine, p: &Process) -> Result<ProcessDetailsShown, CmdError> {
    let d = e.kernel.process_details(p.eprocess)?;
    let (_, increment) = e.kernel.clock().unwrap_or((0, 156_250));
    let now = e.kernel.clocks().ok().map(|(system, _, _)| system);
    let seconds = |ticks: Option<u64>| ticks.map(|t| t as f64 * increment as f64 / 1e7);
    Ok(ProcessDetailsShown {
        vad_root: d.vad_root,
        vads: d.vad_count,
        clone_root: d.clone_root,
        private_pages: d.private_pages,
        modified_pages: d.modified_pages,
        locked_pages: d.locked_pages,
        device_map: d.device_map,
        token: d.token,
        elapsed_seconds: match (now, d.create_time) {
            (Some(now), Some(created)) if created != 0 && now >= created => {
                Some((now - created) as f64 / 1e7)
            }
            _ => None,
        },
        user_seconds: seconds(d.user_ticks),
        kernel_seconds: seconds(d.kernel_ticks),
        working_set: d.working_set.map(|w| w.0),
        working_set_min: d.working_set.map(|w| w.1),
        working_set_max: d.working_set.map(|w| w.2),
        peak_working_set: d.peak_working_set,
        virtual_size: d.virtual_size,
        peak_virtual_size: d.peak_virtual_size,
        page_faults: d.page_faults,
        base_priority: d.base_priority,
        commit_charge: p.commit,
        job: d.job,
    })
}

// ---- !stacks ----

/// `!stacks [0|1|2] [FILTER]`.
pub const STACKS: Syntax = Syntax::params(&[opt_word("DETAIL"), opt_word("FILTER")]);

/// A thread of `!stacks`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StackThread {
    /// Process id.
    pub pid: u64,
    /// Thread id.
    pub tid: u64,
    /// ETHREAD.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub thread: u64,
    /// EPROCESS.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub process: u64,
    /// The process's image name.
    pub image: String,
    /// Its state's name.
    pub state: String,
    /// Why it waits (null when it does not).
    pub wait_reason: Option<String>,
    /// How many ticks it has waited.
    pub wait_ticks: Option<u64>,
    /// The frame it is blocked in.
    pub blocker: Option<String>,
    /// Its stack's call sites.
    pub frames: Vec<String>,
    /// Whether its kernel stack is resident.
    pub stack_resident: bool,
    /// Whether the stack walk reached its end.
    pub stack_complete: bool,
    /// Why the walk stopped early, or what the stack is.
    pub stack_note: Option<String>,
    /// Its state's number.
    #[serde(skip)]
    pub state_code: u8,
}

/// Threads with one stack.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StackGroup {
    /// How many.
    pub count: usize,
    /// Their ETHREADs.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Vec<crate::hex::Hex>")]
    pub threads: Vec<u64>,
    /// The stack's call sites.
    pub frames: Vec<String>,
    /// Their (pid, tid).
    #[serde(skip)]
    pub ids: Vec<(u64, u64)>,
}

/// What `!stacks` found.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Stacks {
    /// The threads shown.
    pub threads: Vec<StackThread>,
    /// Identical stacks, most common first.
    pub groups: Vec<StackGroup>,
    /// Threads whose stack is paged out.
    pub paged_out: usize,
    /// What could not be read.
    pub notes: Vec<String>,
    /// 0, 1 or 2.
    #[serde(skip)]
    pub detail: u64,
}

/// `!stacks [0|1|2] [FILTER]`: every thread with what it is blocked in, then the threads
/// grouped by identical stacks.
pub fn stacks_command(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<Stacks, CmdError> {
    let mut detail = 0u64;
    let mut filter: Option<String> = None;
    for w in [a.text("DETAIL"), a.text("FILTER")].into_iter().flatten() {
        match w {
            "0" | "1" | "2" => detail = w.parse().unwrap_or(0),
            f => filter = Some(f.to_ascii_lowercase()),
        }
    }
    let (all, mut notes) = e.kernel.all_threads()?;
    let mut threads = Vec::new();
    let mut groups: BTreeMap<Vec<String>, Vec<(u64, u64, u64)>> = BTreeMap::new();
    let mut paged_out = 0usize;
    // Threads whose stacks stop early: (pid, tid, why) of the first, and how many.
    let mut partial: Option<(u64, u64, String)> = None;
    let mut partial_count = 0usize;
    for (p, ts) in &all {
        for t in ts {
            let st = match e.kernel.stack_of(t) {
                Ok(st) => st,
                Err(err) => {
                    notes.push(format!(
                        "thread {:x} ({:x}.{:x}): stack unreadable: {err}",
                        t.ethread, t.pid, t.tid
                    ));
                    e.kernel.note_incomplete(format!(
                        "the stack of thread {:x} is unreadable: {err}",
                        t.ethread
                    ));
                    continue;
                }
            };
            if !st.complete {
                partial_count += 1;
                if partial.is_none() {
                    partial = Some((
                        t.pid,
                        t.tid,
                        st.note.clone().unwrap_or_else(|| "the walk ended".into()),
                    ));
                }
            }
            let sites: Vec<String> = st.frames.iter().map(|f| f.call_site.clone()).collect();
            if let Some(f) = &filter
                && !sites
                    .iter()
                    .any(|s| s.to_ascii_lowercase().contains(f.as_str()))
            {
                continue;
            }
            if !t.stack_resident {
                paged_out += 1;
                if detail == 0 {
                    continue;
                }
            }
            groups
                .entry(sites.clone())
                .or_default()
                .push((t.pid, t.tid, t.ethread));
            threads.push(StackThread {
                pid: t.pid,
                tid: t.tid,
                thread: t.ethread,
                process: p.eprocess,
                image: p.name.clone(),
                state: t.state_name.clone(),
                wait_reason: (t.state == 5).then(|| t.wait_reason_name.clone()),
                wait_ticks: t.wait_ticks,
                blocker: blocker(&st),
                frames: sites,
                stack_resident: t.stack_resident,
                stack_complete: st.complete,
                stack_note: st.note,
                state_code: t.state,
            });
        }
    }
    // Identical stacks, most common first.
    let mut ordered: Vec<Group> = groups.into_iter().collect();
    ordered.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
    let groups = ordered
        .into_iter()
        .map(|(frames, members)| StackGroup {
            count: members.len(),
            threads: members.iter().map(|m| m.2).collect(),
            ids: members.iter().map(|m| (m.0, m.1)).collect(),
            frames,
        })
        .collect();
    if let Some((pid, tid, why)) = &partial {
        let n = format!(
            "{partial_count} thread stack(s) stop early (the first, {pid:x}.{tid:x}: {why})"
        );
        e.kernel.note_incomplete(n.clone());
        notes.push(n);
    }
    Ok(Stacks {
        threads,
        groups,
        paged_out,
        notes,
        detail,
    })
}

impl Render for Stacks {
    fn render(&self, text: &mut String) {
        text.push_str("Proc.Thread  .Thread  Ticks   ThreadState Blocker\n");
        let mut last_process = None;
        for t in &self.threads {
            if last_process != Some(t.process) {
                text.push_str(&format!(
                    "                            [{} {}]\n",
                    hex_addr(t.process),
                    t.image
                ));
                last_process = Some(t.process);
            }
            let state = match t.state_code {
                5 => "Blocked",
                2 => "RUNNING",
                1 => "READY",
                _ => t.state.as_str(),
            };
            let block = if t.stack_resident {
                t.blocker.clone().unwrap_or_default()
            } else {
                "Stack paged out".into()
            };
            text.push_str(&format!(
                "{:4x}.{:06x}  {} {:07x} {:<11} {}\n",
                t.pid,
                t.tid,
                hex_addr(t.thread),
                t.wait_ticks.unwrap_or(0),
                state,
                block
            ));
            if self.detail == 2 {
                for s in &t.frames {
                    text.push_str(&format!("                                        {s}\n"));
                }
            }
        }
        text.push_str(&format!(
            "\nThreads Processed: {}\n\n{} distinct stacks:\n",
            self.threads.len(),
            self.groups.len()
        ));
        for g in &self.groups {
            let ids: Vec<String> = g
                .ids
                .iter()
                .map(|(pid, tid)| format!("{pid:x}.{tid:x}"))
                .collect();
            text.push_str(&format!("\n{} thread(s): {}\n", g.count, ids.join(" ")));
            for s in &g.frames {
                text.push_str(&format!("    {s}\n"));
            }
        }
        for n in &self.notes {
            text.push_str(&format!("NOTE: {n}\n"));
        }
    }
}

/// Threads (pid, tid, ETHREAD) that share one stack.
type Group = (Vec<String>, Vec<(u64, u64, u64)>);

// ---- !running ----

/// `!running [-i] [-t]`.
pub const RUNNING: Syntax = Syntax {
    flags: &[
        flag(
            "-i",
            "with -t, idle processors' stacks too (a DPC or interrupt runs on the idle \
             thread); idle processors are always listed",
        ),
        flag("-t", "each running thread's stack"),
    ],
    params: &[],
    length: false,
};

/// A processor of `!running`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RunningProcessor {
    /// Its number.
    pub processor: u32,
    /// KPRCB.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub prcb: u64,
    /// The thread it runs.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub current: u64,
    /// The thread it runs next (null when none).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub next: Option<u64>,
    /// Its idle thread.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub idle_thread: u64,
    /// Whether it runs its idle thread.
    pub idle: bool,
    /// Whether it is running a DPC routine (KPRCB.DpcRoutineActive; null when unreadable):
    /// a processor retiring DPCs on its idle thread is busy, not idle.
    pub in_dpc: Option<bool>,
    /// The running thread's call sites (with -t; idle processors' too with -i).
    pub frames: Vec<String>,
    /// What the text shows beyond the data.
    #[serde(skip)]
    pub shown: RunningShown,
}

/// What `!running`'s text shows of a processor beyond the data.
#[derive(Debug, Clone, Default)]
pub struct RunningShown {
    current_priority: Option<i64>,
    next_priority: Option<i64>,
    /// The stack was asked for.
    with_stack: bool,
    /// Why the running thread could not be read.
    unreadable: Option<String>,
    /// (Child-SP, return address) of each frame.
    frames: Vec<(u64, u64)>,
    note: Option<String>,
}

/// What `!running` found.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Running {
    /// A mask of the processors.
    pub system_processors: u64,
    /// A mask of the idle processors.
    pub idle_processors: u64,
    /// Each processor.
    pub processors: Vec<RunningProcessor>,
}

/// `!running [-i] [-t]`: what every processor runs.
pub fn running_command(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<Running, CmdError> {
    let with_stacks = a.flag("-t");
    let idle_stacks = a.flag("-i");
    let cpus = e.kernel.processors()?;
    let mut system = 0u64;
    let mut idle = 0u64;
    for c in &cpus {
        if c.number < 64 {
            system |= 1 << c.number;
            if c.current == c.idle {
                idle |= 1 << c.number;
            }
        }
    }
    let mut list = Vec::new();
    for c in &cpus {
        // Only the priority byte of each thread.
        let pri = |k: &mut Kernel, t: u64| -> Option<i64> {
            let off = k.nt().ok()?.offset("_KTHREAD", "Priority").ok()?;
            (t != 0)
                .then(|| k.mem.u8(t + off).ok().map(|p| i64::from(p as i8)))
                .flatten()
        };
        let mut shown = RunningShown {
            current_priority: pri(&mut e.kernel, c.current),
            next_priority: pri(&mut e.kernel, c.next),
            ..RunningShown::default()
        };
        let mut frames = Vec::new();
        // What the processor is doing at DISPATCH_LEVEL: a DPC routine active.
        let in_dpc = match e.kernel.nt()?.offset("_KPRCB", "DpcRoutineActive") {
            Ok(o) => match e.kernel.mem.u8(c.prcb.wrapping_add(o)) {
                Ok(v) => Some(v != 0),
                Err(err) => {
                    e.kernel.note_incomplete(format!(
                        "whether processor {} runs a DPC is unknown: its KPRCB is unreadable: \
                         {err}",
                        c.number
                    ));
                    None
                }
            },
            Err(_) => None,
        };
        if with_stacks && (c.current != c.idle || idle_stacks) {
            shown.with_stack = true;
            match e.kernel.thread(c.current) {
                Err(err) => {
                    e.kernel.note_incomplete(format!(
                        "the thread running on processor {} ({:x}) is unreadable: {err}",
                        c.number, c.current
                    ));
                    shown.unreadable = Some(err.to_string());
                }
                Ok(t) => {
                    let st = e.kernel.stack_of(&t)?;
                    e.kernel.note_stack(&t, &st);
                    for f in &st.frames {
                        shown.frames.push((f.child_sp, f.return_address));
                        frames.push(f.call_site.clone());
                    }
                    shown.note = st.note;
                }
            }
        }
        list.push(RunningProcessor {
            processor: c.number,
            prcb: c.prcb,
            current: c.current,
            next: (c.next != 0).then_some(c.next),
            idle_thread: c.idle,
            idle: c.current == c.idle,
            in_dpc,
            frames,
            shown,
        });
    }
    Ok(Running {
        system_processors: system,
        idle_processors: idle,
        processors: list,
    })
}

impl Render for Running {
    fn render(&self, text: &mut String) {
        text.push_str(&format!(
            "System Processors:  ({:016x})\n  Idle Processors:  ({:016x})\n\n       Prcbs             Current         (pri) Next            (pri) Idle\n",
            self.system_processors, self.idle_processors
        ));
        for c in &self.processors {
            let x = &c.shown;
            text.push_str(&format!(
                "  {:<3}  {}  {} ({:>2}) {} {} {}\n",
                c.processor,
                hex_addr(c.prcb),
                hex_addr(c.current),
                x.current_priority.unwrap_or(0),
                match c.next {
                    None => "                ".to_string(),
                    Some(n) => hex_addr(n),
                },
                match c.next {
                    None => "    ".to_string(),
                    Some(_) => format!("({:>2})", x.next_priority.unwrap_or(0)),
                },
                hex_addr(c.idle_thread)
            ));
            if c.in_dpc == Some(true) {
                text.pop();
                text.push_str("  (DPC active)\n");
            }
            if x.with_stack {
                if let Some(err) = &x.unreadable {
                    text.push_str(&format!("       (thread unreadable: {err})\n"));
                }
                for ((sp, ret), site) in x.frames.iter().zip(&c.frames) {
                    text.push_str(&format!(
                        "       {} {}     {}\n",
                        addr(*sp),
                        addr(*ret),
                        site
                    ));
                }
                if let Some(n) = &x.note {
                    text.push_str(&format!("       ({n})\n"));
                }
                text.push('\n');
            }
        }
    }
}
