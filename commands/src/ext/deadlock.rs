//! `!deadlock`: the wait-for graph of threads ([`kdnet_model::nt::waitgraph`]): each cycle
//! with its threads, objects and wait times, and the threads waiting behind a cycle or piling
//! up behind one thread.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;

use crate::args::Args;
use crate::engine::{CmdError, Engine};
use crate::registry::Render;
use kdnet_model::nt::waitgraph::{self, Edge, Graph};

/// A thread on the graph.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum GraphThread {
    /// A thread that was read.
    Known {
        /// ETHREAD.
        #[serde(serialize_with = "crate::hex::ser")]
        #[schemars(with = "crate::hex::Hex")]
        thread: u64,
        /// Its process's image name.
        image: String,
        /// Process id.
        pid: u64,
        /// Thread id.
        tid: u64,
        /// Its state's name.
        state: String,
        /// Why it waits (null when it does not).
        wait_reason: Option<String>,
        /// How long it has waited (seconds).
        wait_seconds: Option<f64>,
        /// The frame it is blocked in.
        blocker: Option<String>,
        /// The objects it waits on (as `!thread` lists them), whether or not their owner is
        /// known.
        waits: Vec<ThreadWait>,
    },
    /// A thread that could not be read.
    Unknown {
        /// ETHREAD.
        #[serde(serialize_with = "crate::hex::ser")]
        #[schemars(with = "crate::hex::Hex")]
        thread: u64,
    },
}

/// An object a thread on the graph waits on.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ThreadWait {
    /// Its address.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub object: u64,
    /// Its dispatcher type as WinDbg names it (`NotificationEvent`, `Mutant`, …).
    pub type_name: String,
    /// Its symbol, for globals (null otherwise).
    pub symbol: Option<String>,
}

impl GraphThread {
    fn of(g: &Graph, names: &BTreeMap<u64, String>, t: u64) -> GraphThread {
        match g.nodes.get(&t) {
            Some(n) => GraphThread::Known {
                thread: t,
                image: n.image.clone(),
                pid: n.thread.pid,
                tid: n.thread.tid,
                state: n.thread.state_name.clone(),
                wait_reason: (n.thread.state == 5).then(|| n.thread.wait_reason_name.clone()),
                wait_seconds: n.thread.wait_seconds,
                blocker: n.blocker.clone(),
                waits: n
                    .thread
                    .waits
                    .iter()
                    .map(|w| ThreadWait {
                        object: w.object,
                        type_name: w.type_name.clone(),
                        symbol: names.get(&w.object).cloned(),
                    })
                    .collect(),
            },
            None => GraphThread::Unknown { thread: t },
        }
    }

    fn id(&self) -> u64 {
        match self {
            GraphThread::Known { thread, .. } | GraphThread::Unknown { thread } => *thread,
        }
    }

    /// `thread ADDR (image pid.tid, WrResource 75 s) in BLOCKER`.
    fn describe(&self) -> String {
        match self {
            GraphThread::Known {
                thread,
                image,
                pid,
                tid,
                state,
                wait_reason,
                wait_seconds,
                blocker,
                ..
            } => {
                let wait = match (wait_reason, wait_seconds) {
                    (Some(r), Some(s)) => format!("{r} {s:.0} s"),
                    _ => state.clone(),
                };
                format!(
                    "thread {thread:x} ({image} {pid:x}.{tid:x}, {wait}){}",
                    blocker
                        .as_ref()
                        .map(|b| format!(" in {b}"))
                        .unwrap_or_default()
                )
            }
            GraphThread::Unknown { thread } => format!("thread {thread:x}"),
        }
    }
}

/// One wait: who waits for whom, on what.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct GraphEdge {
    /// The waiting thread.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub waiter: u64,
    /// What it waits on.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub object: u64,
    /// Its symbol, for globals (`nt!PiEngineLock`; null otherwise).
    pub symbol: Option<String>,
    /// Its kind (`Mutant`, `ERESOURCE (exclusive wait)`, `FAST_MUTEX`, …).
    pub kind: String,
    /// Who holds it.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub owner: u64,
}

impl GraphEdge {
    fn of(x: &Edge, names: &BTreeMap<u64, String>) -> GraphEdge {
        GraphEdge {
            waiter: x.waiter,
            object: x.object,
            symbol: names.get(&x.object).cloned(),
            kind: x.kind.clone(),
            owner: x.owner,
        }
    }
}

/// The symbols of the objects on the graph that are globals (`nt!PiEngineLock`): from the
/// resource walk, else from the kernel's symbols.
fn global_names(e: &mut Engine, g: &Graph) -> BTreeMap<u64, String> {
    let mut names: BTreeMap<u64, String> = g
        .held
        .iter()
        .filter_map(|h| h.symbol.clone().map(|s| (h.address, s)))
        .collect();
    let objects: Vec<u64> = g
        .edges
        .iter()
        .map(|x| x.object)
        .chain(
            g.nodes
                .values()
                .flat_map(|n| n.thread.waits.iter().map(|w| w.object)),
        )
        .collect();
    for o in objects {
        if !names.contains_key(&o)
            && let Some(s) = e.kernel.global_name(o)
        {
            names.insert(o, s);
        }
    }
    names
}

/// A wait that keeps a cycle.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct CycleStep {
    /// The waiting thread.
    pub thread: GraphThread,
    /// What it waits on.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub object: u64,
    /// Its kind.
    pub kind: String,
    /// Who holds it (the next thread of the cycle).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub owner: u64,
}

/// A deadlock.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DeadlockCycle {
    /// The threads that wait for each other.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Vec<crate::hex::Hex>")]
    pub threads: Vec<u64>,
    /// The objects they wait on.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Vec<crate::hex::Hex>")]
    pub objects: Vec<u64>,
    /// Each thread's wait that keeps the cycle.
    pub steps: Vec<CycleStep>,
}

/// Threads waiting behind one thread.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct WaitChain {
    /// Where the waits end.
    pub end: GraphThread,
    /// Whether that thread is deadlocked.
    pub ends_in_deadlock: bool,
    /// The threads waiting behind it.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Vec<crate::hex::Hex>")]
    pub waiters: Vec<u64>,
    /// The longest path of waits that ends there.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Vec<crate::hex::Hex>")]
    pub longest: Vec<u64>,
}

/// What `!deadlock` found.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Deadlock {
    /// The wait-for cycles.
    pub cycles: Vec<DeadlockCycle>,
    /// Threads piling up behind one thread or a deadlock.
    pub chains: Vec<WaitChain>,
    /// Every wait with a known owner.
    pub edges: Vec<GraphEdge>,
    /// Every thread on an edge.
    pub threads: Vec<GraphThread>,
    /// What could not be examined.
    pub notes: Vec<String>,
}

/// `!deadlock`.
pub fn command(e: &mut Engine, _verb: &str, _a: &Args<'_>) -> Result<Deadlock, CmdError> {
    let g = waitgraph::build(&mut e.kernel)?;
    let cycles = waitgraph::cycles(&g);
    let pile_ups = waitgraph::pile_ups(&g, &cycles);
    let names = global_names(e, &g);
    Ok(Deadlock {
        cycles: cycles
            .iter()
            .map(|c| DeadlockCycle {
                threads: c.threads.clone(),
                objects: c.steps.iter().map(|x| x.object).collect(),
                steps: c
                    .steps
                    .iter()
                    .map(|x| CycleStep {
                        thread: GraphThread::of(&g, &names, x.waiter),
                        object: x.object,
                        kind: x.kind.clone(),
                        owner: x.owner,
                    })
                    .collect(),
            })
            .collect(),
        chains: pile_ups
            .iter()
            .map(|p| WaitChain {
                end: GraphThread::of(&g, &names, p.end),
                ends_in_deadlock: p.ends_in_deadlock,
                waiters: p.waiters.clone(),
                longest: p.longest.clone(),
            })
            .collect(),
        edges: g.edges.iter().map(|x| GraphEdge::of(x, &names)).collect(),
        threads: g
            .nodes
            .keys()
            .map(|t| GraphThread::of(&g, &names, *t))
            .collect(),
        notes: g.notes.clone(),
    })
}

impl Render for Deadlock {
    fn render(&self, text: &mut String) {
        let describe = |t: u64| {
            self.threads
                .iter()
                .find(|x| x.id() == t)
                .map(GraphThread::describe)
                .unwrap_or_else(|| format!("thread {t:x}"))
        };
        if self.cycles.is_empty() {
            text.push_str("No deadlock: the wait-for graph has no cycle.\n");
        }
        for (i, c) in self.cycles.iter().enumerate() {
            text.push_str(&format!(
                "DEADLOCK {}: {} threads wait for each other\n",
                i + 1,
                c.threads.len()
            ));
            for t in &c.threads {
                text.push_str(&format!("    {}\n", describe(*t)));
                if let Some(x) = c.steps.iter().find(|x| x.thread.id() == *t) {
                    text.push_str(&format!(
                        "        waits for {} {:x}, held by thread {:x}\n",
                        x.kind, x.object, x.owner
                    ));
                }
            }
            text.push('\n');
        }
        if !self.chains.is_empty() {
            text.push_str("Wait chains:\n");
        }
        for p in &self.chains {
            text.push_str(&format!(
                "    {} thread(s) wait behind {}{}\n",
                p.waiters.len(),
                p.end.describe(),
                if p.ends_in_deadlock {
                    ", which is deadlocked"
                } else {
                    ""
                }
            ));
            for w in p.waiters.iter().take(16) {
                text.push_str(&format!("        {}\n", describe(*w)));
            }
            if p.waiters.len() > 16 {
                text.push_str(&format!("        … and {} more\n", p.waiters.len() - 16));
            }
        }
        text.push_str(&format!(
            "\n{} waits with a known owner examined, {} cycle(s), {} chain(s)\n",
            self.edges.len(),
            self.cycles.len(),
            self.chains.len()
        ));
        for n in &self.notes {
            text.push_str(&format!("NOTE: {n}\n"));
        }
    }
}
