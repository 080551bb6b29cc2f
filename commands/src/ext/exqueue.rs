//! `!exqueue [Flags]`: the executive's worker queues, each with its threads (busy or waiting
//! for work) and its pending work items, routines symbolised.

use schemars::JsonSchema;
use serde::Serialize;

use crate::args::{Args, Syntax, opt_expr};
use crate::engine::{CmdError, Engine};
use crate::registry::Render;

/// `!exqueue [Flags]`.
pub(crate) const SYNTAX: Syntax = Syntax::params(&[opt_expr("Flags")]);

/// Flag: busy threads.
const BUSY: u64 = 1;
/// Flag: threads waiting for work.
const IDLE: u64 = 2;
/// Flag: pending work items.
const ITEMS: u64 = 4;

/// One worker thread.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Worker {
    /// The ETHREAD.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub thread: u64,
    /// Its process id (null when the thread could not be read).
    pub pid: Option<u64>,
    /// Its thread id.
    pub tid: Option<u64>,
    /// Its state (`Waiting`, `Running`, …).
    pub state: Option<String>,
    /// Its wait reason, when waiting.
    pub wait_reason: Option<String>,
    /// Waiting on its own queue for work (otherwise it is busy with an item).
    pub idle: bool,
}

/// A pending work item.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PendingItem {
    /// Its priority list (a KPRIQUEUE's; 0 for a KQUEUE).
    pub priority: u8,
    /// The WORK_QUEUE_ITEM.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub item: u64,
    /// WorkerRoutine.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub routine: u64,
    /// It as `module!function`.
    pub routine_symbol: String,
    /// Parameter.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub parameter: u64,
}

/// One queue.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct QueueShown {
    /// The NUMA node.
    pub node: u32,
    /// Its name (`DelayedWorkQueue`, `ExPoolUntrusted`, …).
    pub name: String,
    /// The `_EX_WORK_QUEUE`.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub address: u64,
    /// `KPRIQUEUE` or `KQUEUE`.
    pub kind: String,
    /// Threads the queue counts as its own.
    pub thread_count: i64,
    /// The most threads it may have, where the build says.
    pub max_threads: Option<i64>,
    /// Threads active on it.
    pub active: u64,
    /// The concurrency it allows (MaximumCount).
    pub concurrency: u64,
    /// Work items processed since boot.
    pub processed: u64,
    /// Its worker threads shown (by the flags), in list order.
    pub threads: Vec<Worker>,
    /// Threads on its list in all.
    pub threads_listed: usize,
    /// Of those, waiting for work.
    pub idle: usize,
    /// Its pending work items (by the flags), highest priority first.
    pub items: Vec<PendingItem>,
    /// Pending items in all.
    pub pending: usize,
    /// Where it was not read whole.
    pub notes: Vec<String>,
}

/// `!exqueue`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ExQueues {
    /// The flags it ran with (1 busy threads, 2 threads waiting for work, 4 pending items).
    pub flags: u64,
    /// Every queue.
    pub queues: Vec<QueueShown>,
    /// Pending work items in all queues.
    pub pending: usize,
    /// Busy worker threads in all queues.
    pub busy: usize,
}

/// `!exqueue [Flags]`.
pub(crate) fn exqueue(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<ExQueues, CmdError> {
    let flags = match a.expr(e, "Flags")? {
        Some(f) if f & !(BUSY | IDLE | ITEMS) != 0 => {
            return Err(CmdError::Usage(format!(
                "!exqueue: flags {f:#x}: only 1 (busy threads), 2 (threads waiting for work) \
                 and 4 (pending items) are defined"
            )));
        }
        Some(0) | None => BUSY | IDLE | ITEMS,
        Some(f) => f,
    };
    let nt = e.kernel.nt()?;
    let queues = e.kernel.work_queues()?;
    let mut out = Vec::new();
    let (mut pending, mut busy) = (0, 0);
    for q in queues {
        if !q.complete {
            e.kernel.note_incomplete(format!(
                "work queue {} ({:#x}) was not read whole: {}",
                q.name,
                q.address,
                q.notes.join("; ")
            ));
        }
        let object = q.address
            + nt.offset(
                "_EX_WORK_QUEUE",
                if q.priority_queue {
                    "WorkPriQueue"
                } else {
                    "WorkerQueue"
                },
            )?;
        let mut threads = Vec::new();
        let mut idle_n = 0;
        for t in &q.threads {
            let w = match e.kernel.thread(*t) {
                Ok(th) => {
                    let idle = th.state == 5 && th.waits.iter().any(|w| w.object == object);
                    Worker {
                        thread: *t,
                        pid: Some(th.pid),
                        tid: Some(th.tid),
                        state: Some(th.state_name.clone()),
                        wait_reason: (th.state == 5).then(|| th.wait_reason_name.clone()),
                        idle,
                    }
                }
                Err(err) => {
                    e.kernel
                        .note_incomplete(format!("worker thread {t:#x} is unreadable: {err}"));
                    Worker {
                        thread: *t,
                        pid: None,
                        tid: None,
                        state: None,
                        wait_reason: None,
                        idle: false,
                    }
                }
            };
            if w.idle {
                idle_n += 1;
            } else if w.state.is_some() {
                // An unreadable thread is neither: the result says it is incomplete.
                busy += 1;
            }
            let wanted = if w.idle { IDLE } else { BUSY };
            if flags & wanted != 0 {
                threads.push(w);
            }
        }
        pending += q.items.len();
        let items = if flags & ITEMS != 0 {
            q.items
                .iter()
                .map(|i| PendingItem {
                    priority: i.priority,
                    item: i.item,
                    routine: i.routine,
                    routine_symbol: e.kernel.symbolize(i.routine),
                    parameter: i.parameter,
                })
                .collect()
        } else {
            Vec::new()
        };
        out.push(QueueShown {
            node: q.node,
            name: q.name,
            address: q.address,
            kind: if q.priority_queue {
                "KPRIQUEUE"
            } else {
                "KQUEUE"
            }
            .into(),
            thread_count: q.thread_count,
            max_threads: q.max_threads,
            active: q.active,
            concurrency: q.maximum,
            processed: q.processed,
            threads_listed: q.threads.len(),
            idle: idle_n,
            threads,
            pending: q.items.len(),
            items,
            notes: q.notes,
        });
    }
    Ok(ExQueues {
        flags,
        queues: out,
        pending,
        busy,
    })
}

impl Render for ExQueues {
    fn render(&self, out: &mut String) {
        let mut node = None;
        for q in &self.queues {
            if node != Some(q.node) {
                out.push_str(&format!("**** NUMA Node {}\n", q.node));
                node = Some(q.node);
            }
            let max = q
                .max_threads
                .map(|m| format!(" (maximum {m})"))
                .unwrap_or_default();
            out.push_str(&format!(
                "** {} {:016x} ({}): {} threads{max}, {} active (concurrency {}), {} waiting \
                 for work; {} items processed, {} pending\n",
                q.name,
                q.address,
                q.kind,
                q.thread_count,
                q.active,
                q.concurrency,
                q.idle,
                q.processed,
                q.pending
            ));
            for i in &q.items {
                out.push_str(&format!(
                    "   PENDING: PRIORITY {:2}  WORK_QUEUE_ITEM {:016x}  Routine {} ({:016x})  \
                     Parameter {:016x}\n",
                    i.priority, i.item, i.routine_symbol, i.routine, i.parameter
                ));
            }
            for t in &q.threads {
                let cid = match (t.pid, t.tid) {
                    (Some(p), Some(i)) => format!("Cid {p:04x}.{i:04x}"),
                    _ => "Cid ????.????".into(),
                };
                let state = match (&t.state, &t.wait_reason) {
                    (Some(s), Some(r)) => format!("{}: ({r})", s.to_uppercase()),
                    (Some(s), None) => s.to_uppercase(),
                    _ => "(unreadable)".into(),
                };
                out.push_str(&format!(
                    "   THREAD {:016x}  {cid}  {state}{}\n",
                    t.thread,
                    if t.idle { "  waiting for work" } else { "" }
                ));
            }
            for n in &q.notes {
                out.push_str(&format!("   NOTE: {n}\n"));
            }
        }
        out.push_str(&format!(
            "\n{} busy worker threads, {} pending work items\n",
            self.busy, self.pending
        ));
    }
}
