//! The processors' side of the scheduler: `!ready` (each processor's ready threads by
//! priority, and the queue processors share), `!dpcs` (each processor's queued DPCs, normal
//! and threaded), `!pcr [N]` and `!prcb [N]` (a processor's control region and block).

use schemars::JsonSchema;
use serde::Serialize;

use crate::args::{Args, Syntax, opt_expr};
use crate::engine::{CmdError, Engine};
use crate::registry::Render;
use kdnet_model::nt::sched::QueuedDpc;

/// One ready thread.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ReadyThread {
    /// The ETHREAD.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub thread: u64,
    /// Its process id (null when the thread could not be read).
    pub pid: Option<u64>,
    /// Its thread id.
    pub tid: Option<u64>,
    /// Its process's image name.
    pub process: Option<String>,
    /// Its state as the thread says it (`Ready`; another state is a queue out of step).
    pub state: Option<String>,
}

/// Threads of one priority.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PriorityList {
    /// The priority.
    pub priority: u8,
    /// Its threads, in queue order (the next to run first).
    pub threads: Vec<ReadyThread>,
}

/// One ready queue.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ReadyQueueShown {
    /// The processor it belongs to (null: the queue processors share).
    pub processor: Option<u32>,
    /// The processors that share it (empty for a processor's own).
    pub shared_by: Vec<u32>,
    /// The KPRCB or `_KSHARED_READY_QUEUE`.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub address: u64,
    /// ReadySummary (bit N: priority N has ready threads).
    pub summary: u32,
    /// Its priorities with threads, highest first.
    pub priorities: Vec<PriorityList>,
    /// Where it was not read whole, or disagrees with itself.
    pub notes: Vec<String>,
}

/// `!ready`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Ready {
    /// The queues: each processor's, then the shared ones.
    pub queues: Vec<ReadyQueueShown>,
    /// Ready threads in all.
    pub total: usize,
}

/// `!ready`.
pub(crate) fn ready(e: &mut Engine, _verb: &str, _a: &Args<'_>) -> Result<Ready, CmdError> {
    let queues = e.kernel.ready_queues()?;
    let mut out = Vec::new();
    let mut total = 0;
    for q in queues {
        if !q.complete {
            e.kernel.note_incomplete(format!(
                "a ready queue ({}) was not read whole: {}",
                match q.processor {
                    Some(n) => format!("processor {n}"),
                    None => format!("shared {:#x}", q.address),
                },
                q.notes.join("; ")
            ));
        }
        let mut priorities = Vec::new();
        for (priority, threads) in q.priorities {
            let mut shown = Vec::new();
            for t in threads {
                shown.push(ready_thread(e, t));
            }
            total += shown.len();
            priorities.push(PriorityList {
                priority,
                threads: shown,
            });
        }
        out.push(ReadyQueueShown {
            processor: q.processor,
            shared_by: q.shared_by,
            address: q.address,
            summary: q.summary,
            priorities,
            notes: q.notes,
        });
    }
    Ok(Ready { queues: out, total })
}

fn ready_thread(e: &mut Engine, t: u64) -> ReadyThread {
    match e.kernel.thread(t) {
        Ok(th) => {
            let process = match e.kernel.process(th.process) {
                Ok(p) => Some(p.name),
                Err(err) => {
                    e.kernel.note_incomplete(format!(
                        "the process of ready thread {t:#x} ({:#x}) is unreadable: {err}",
                        th.process
                    ));
                    None
                }
            };
            ReadyThread {
                thread: t,
                pid: Some(th.pid),
                tid: Some(th.tid),
                process,
                state: Some(th.state_name),
            }
        }
        Err(err) => {
            e.kernel
                .note_incomplete(format!("ready thread {t:#x} is unreadable: {err}"));
            ReadyThread {
                thread: t,
                pid: None,
                tid: None,
                process: None,
                state: None,
            }
        }
    }
}

impl Render for Ready {
    fn render(&self, out: &mut String) {
        for q in &self.queues {
            let name = match q.processor {
                Some(n) => format!("Processor {n}"),
                None => format!("SharedReadyQueue {:x}", q.address),
            };
            if q.priorities.is_empty() {
                out.push_str(&format!("{name}: No threads in READY state\n"));
            }
            for p in &q.priorities {
                out.push_str(&format!(
                    "{name}: Ready Threads at priority {}\n",
                    p.priority
                ));
                for t in &p.threads {
                    let cid = match (t.pid, t.tid) {
                        (Some(p), Some(i)) => format!("Cid {p:04x}.{i:04x}"),
                        _ => "Cid ????.????".into(),
                    };
                    out.push_str(&format!(
                        "    THREAD {:x}  {cid}  {}  {}\n",
                        t.thread,
                        t.process.as_deref().unwrap_or("?"),
                        t.state.as_deref().unwrap_or("(unreadable)").to_uppercase()
                    ));
                }
            }
            for n in &q.notes {
                out.push_str(&format!("    NOTE: {n}\n"));
            }
        }
    }
}

/// One queued DPC as shown.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DpcShown {
    /// The processor whose queue holds it.
    pub processor: u32,
    /// `Normal` or `Threaded`.
    pub queue: String,
    /// The KDPC.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub dpc: u64,
    /// DeferredRoutine.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub routine: u64,
    /// It as `module!function` (the address where no module holds it).
    pub routine_symbol: String,
    /// DeferredContext.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub context: u64,
    /// Importance (0 low, 1 medium, 2 high, 3 medium-high).
    pub importance: u8,
}

/// A processor's DPC queue counters.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DpcCounters {
    /// The processor.
    pub processor: u32,
    /// DpcQueueDepth of the normal and threaded queues.
    pub depth: [i64; 2],
    /// DpcCount of each: DPCs run since boot.
    pub count: [u64; 2],
    /// Where the queues were not read whole or disagree with their depth.
    pub notes: Vec<String>,
}

/// `!dpcs`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Dpcs {
    /// Every queued DPC, by processor, normal before threaded, in queue order.
    pub dpcs: Vec<DpcShown>,
    /// Each processor's counters.
    pub processors: Vec<DpcCounters>,
}

fn shown(e: &mut Engine, processor: u32, threaded: bool, d: &QueuedDpc) -> DpcShown {
    DpcShown {
        processor,
        queue: if threaded { "Threaded" } else { "Normal" }.into(),
        dpc: d.dpc,
        routine: d.routine,
        routine_symbol: e.kernel.symbolize(d.routine),
        context: d.context,
        importance: d.importance,
    }
}

/// `!dpcs`.
pub(crate) fn dpcs(e: &mut Engine, _verb: &str, _a: &Args<'_>) -> Result<Dpcs, CmdError> {
    dpc_list(e)
}

/// Every processor's queued DPCs (what `!dpcs` shows).
pub(crate) fn dpc_list(e: &mut Engine) -> Result<Dpcs, CmdError> {
    let all = e.kernel.dpc_queues()?;
    let mut dpcs = Vec::new();
    let mut processors = Vec::new();
    for q in all {
        if !q.complete {
            e.kernel.note_incomplete(format!(
                "processor {}'s DPC queues were not read whole: {}",
                q.processor,
                q.notes.join("; ")
            ));
        }
        for (i, queue) in q.queues.iter().enumerate() {
            for d in queue {
                dpcs.push(shown(e, q.processor, i == 1, d));
            }
        }
        processors.push(DpcCounters {
            processor: q.processor,
            depth: q.depth,
            count: q.count,
            notes: q.notes,
        });
    }
    Ok(Dpcs { dpcs, processors })
}

impl Render for Dpcs {
    fn render(&self, out: &mut String) {
        if self.dpcs.is_empty() {
            out.push_str("No DPCs are queued on any processor\n");
        } else {
            out.push_str("CPU Type      KDPC       Function\n");
        }
        for d in &self.dpcs {
            out.push_str(&format!(
                "{:2}: {:<8}: {:#018x} {:#018x} {}\n",
                d.processor, d.queue, d.dpc, d.routine, d.routine_symbol
            ));
        }
        for p in &self.processors {
            for n in &p.notes {
                out.push_str(&format!("NOTE: processor {}: {n}\n", p.processor));
            }
        }
    }
}

/// `!pcr [N]`, `!prcb [N]`.
pub(crate) const SYNTAX: Syntax = Syntax::params(&[opt_expr("N")]);

/// A processor's control region and block.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ProcessorBlock {
    /// The processor.
    pub processor: u32,
    /// Its KPCR.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub kpcr: u64,
    /// Its KPRCB.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub prcb: u64,
    /// KPCR.Irql.
    pub irql: u8,
    /// KPCR.IdtBase.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub idt: u64,
    /// KPCR.GdtBase.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub gdt: u64,
    /// KPCR.TssBase.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub tss: u64,
    /// CurrentThread.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub current_thread: u64,
    /// NextThread (0: none chosen).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub next_thread: u64,
    /// IdleThread.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub idle_thread: u64,
    /// InterruptCount, where the build's KPRCB has it.
    pub interrupt_count: Option<u64>,
    /// DpcTime, InterruptTime, KernelTime, UserTime (ticks), where it has them.
    pub times: Option<[u64; 4]>,
    /// Its queued DPCs (normal, then threaded).
    pub dpcs: Vec<DpcShown>,
    /// Which command it is for (`pcr` or `prcb`): the text's layout.
    #[serde(skip)]
    pub layout: &'static str,
}

fn block(e: &mut Engine, verb: &str, a: &Args<'_>) -> Result<ProcessorBlock, CmdError> {
    let n = match a.expr(e, "N")? {
        Some(n) => u32::try_from(n)
            .map_err(|_| CmdError::Usage(format!("processor {n:#x} is out of range")))?,
        None => e.processor,
    };
    let cpus = e.kernel.processors()?;
    let Some(c) = cpus.iter().find(|c| c.number == n).cloned() else {
        return Err(CmdError::Usage(format!(
            "{verb}: there is no processor {n} (the target has {})",
            cpus.len()
        )));
    };
    let pcr = e.kernel.view_prefix("_KPCR", c.kpcr, 0x80)?;
    let prcb = e.kernel.view("_KPRCB", c.prcb)?;
    let times = ["DpcTime", "InterruptTime", "KernelTime", "UserTime"]
        .iter()
        .map(|f| prcb.get(f).ok())
        .collect::<Option<Vec<u64>>>()
        .map(|v| [v[0], v[1], v[2], v[3]]);
    let interrupt_count = prcb.get("InterruptCount").ok();
    let queues = e.kernel.dpc_queues()?;
    let mut dpcs = Vec::new();
    if let Some(q) = queues.iter().find(|q| q.processor == n) {
        if !q.complete {
            e.kernel.note_incomplete(format!(
                "processor {n}'s DPC queues were not read whole: {}",
                q.notes.join("; ")
            ));
        }
        for (i, queue) in q.queues.iter().enumerate() {
            for d in queue {
                dpcs.push(shown(e, n, i == 1, d));
            }
        }
    }
    Ok(ProcessorBlock {
        processor: n,
        kpcr: c.kpcr,
        prcb: c.prcb,
        irql: pcr.get("Irql")? as u8,
        idt: pcr.get("IdtBase")?,
        gdt: pcr.get("GdtBase")?,
        tss: pcr.get("TssBase")?,
        current_thread: c.current,
        next_thread: c.next,
        idle_thread: c.idle,
        interrupt_count,
        times,
        dpcs,
        layout: if verb.eq_ignore_ascii_case("!prcb") {
            "prcb"
        } else {
            "pcr"
        },
    })
}

/// `!pcr [N]`.
pub(crate) fn pcr(e: &mut Engine, verb: &str, a: &Args<'_>) -> Result<ProcessorBlock, CmdError> {
    block(e, verb, a)
}

/// `!prcb [N]`.
pub(crate) fn prcb(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<ProcessorBlock, CmdError> {
    block(e, "!prcb", a)
}

impl Render for ProcessorBlock {
    fn render(&self, out: &mut String) {
        if self.layout == "prcb" {
            out.push_str(&format!(
                "PRCB for Processor {} at {:x}:\nCurrent IRQL -- {}\nThreads--  Current {:x} Next {:x} Idle {:x}\n",
                self.processor,
                self.prcb,
                self.irql,
                self.current_thread,
                self.next_thread,
                self.idle_thread
            ));
            if let Some(c) = self.interrupt_count {
                out.push_str(&format!("Interrupt Count -- {c:08x}\n"));
            }
            if let Some([dpc, int, kernel, user]) = self.times {
                out.push_str(&format!(
                    "Times -- Dpc    {dpc:08x} Interrupt {int:08x} \n         Kernel {kernel:08x} User      {user:08x} \n"
                ));
            }
            return;
        }
        out.push_str(&format!(
            "KPCR for Processor {} at {:x}:\n",
            self.processor, self.kpcr
        ));
        for (name, v) in [
            ("Prcb", self.prcb),
            ("Irql", u64::from(self.irql)),
            ("IDT", self.idt),
            ("GDT", self.gdt),
            ("TSS", self.tss),
        ] {
            out.push_str(&format!("\t{name:>19}: {v:016x}\n"));
        }
        out.push('\n');
        for (name, v) in [
            ("CurrentThread", self.current_thread),
            ("NextThread", self.next_thread),
            ("IdleThread", self.idle_thread),
        ] {
            out.push_str(&format!("\t{name:>19}: {v:016x}\n"));
        }
        out.push('\n');
        out.push_str("\t           DpcQueue:");
        if self.dpcs.is_empty() {
            out.push('\n');
        }
        for (i, d) in self.dpcs.iter().enumerate() {
            let lead = if i == 0 {
                " "
            } else {
                "\t                     "
            };
            out.push_str(&format!(
                "{lead}{:#018x} {:#018x} {}\n",
                d.dpc, d.routine, d.routine_symbol
            ));
        }
    }
}

/// `!idt [Vector]`.
pub(crate) const IDT_SYNTAX: Syntax = Syntax::params(&[opt_expr("Vector")]);

/// A connected interrupt object as shown.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct InterruptShown {
    /// The KINTERRUPT.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub address: u64,
    /// Its service routine.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub service_routine: u64,
    /// It as `module!function`.
    pub service_routine_symbol: String,
    /// Its context.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub service_context: u64,
    /// Its IRQL.
    pub irql: u8,
}

/// One IDT gate.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct GateShown {
    /// The vector.
    pub vector: u8,
    /// Its handler.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub handler: u64,
    /// It as `module!function+offset`.
    pub handler_symbol: String,
    /// `interrupt` or `trap` gate.
    pub kind: String,
    /// The lowest privilege that may raise it with `int`.
    pub dpl: u8,
    /// Its interrupt stack table index (0: none).
    pub ist: u8,
    /// The stack that index selects.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub ist_stack: Option<u64>,
    /// The interrupt objects connected to it (a device's ISR, the clock's).
    pub interrupts: Vec<InterruptShown>,
}

/// `!idt`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct IdtShown {
    /// The processor.
    pub processor: u32,
    /// The IDT's base.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub base: u64,
    /// Its present gates (the one asked for, with a vector).
    pub gates: Vec<GateShown>,
    /// What could not be read.
    pub notes: Vec<String>,
}

/// `!idt [Vector]`: the current processor's IDT.
pub(crate) fn idt(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<IdtShown, CmdError> {
    let only = match a.expr(e, "Vector")? {
        Some(v) if v > 0xff => {
            return Err(CmdError::Usage(format!("!idt: vector {v:#x} is past 0xff")));
        }
        v => v.map(|v| v as u8),
    };
    let t = e.kernel.idt(e.processor)?;
    if !t.complete {
        e.kernel.note_incomplete(format!(
            "processor {}'s IDT was not read whole: {}",
            t.processor,
            t.notes.join("; ")
        ));
    }
    let mut gates = Vec::new();
    for g in t.gates {
        if only.is_some_and(|v| v != g.vector) {
            continue;
        }
        let interrupts = g
            .interrupts
            .iter()
            .map(|i| InterruptShown {
                address: i.address,
                service_routine: i.service_routine,
                service_routine_symbol: e.kernel.symbolize(i.service_routine),
                service_context: i.service_context,
                irql: i.irql,
            })
            .collect();
        gates.push(GateShown {
            vector: g.vector,
            handler: g.handler,
            handler_symbol: e.kernel.symbolize(g.handler),
            kind: g.kind,
            dpl: g.dpl,
            ist: g.ist,
            ist_stack: g.ist_stack,
            interrupts,
        });
    }
    if let Some(v) = only
        && gates.is_empty()
    {
        return Err(CmdError::Usage(format!(
            "!idt: vector {v:#x} is not present in processor {}'s IDT",
            t.processor
        )));
    }
    Ok(IdtShown {
        processor: t.processor,
        base: t.base,
        gates,
        notes: t.notes,
    })
}

impl Render for IdtShown {
    fn render(&self, out: &mut String) {
        out.push_str(&format!(
            "Dumping IDT: {:016x} (processor {})\n\n",
            self.base, self.processor
        ));
        for g in &self.gates {
            let what = if g.interrupts.is_empty() {
                g.handler_symbol.clone()
            } else {
                g.interrupts
                    .iter()
                    .map(|i| {
                        format!(
                            "{} (KINTERRUPT {:016x})",
                            i.service_routine_symbol, i.address
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n\t\t\t\t")
            };
            let stack = g
                .ist_stack
                .map(|s| format!("\tStack = 0x{s:016X}"))
                .unwrap_or_default();
            out.push_str(&format!(
                "{:02x}:\t{:016x} {what}{stack}\n",
                g.vector, g.handler
            ));
        }
        for n in &self.notes {
            out.push_str(&format!("NOTE: {n}\n"));
        }
    }
}
