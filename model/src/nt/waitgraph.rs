//! The wait-for graph of threads. A waiting thread points at the owners of what it waits for:
//! mutant owners (from the mutant), executive resources (owners from the resource walk, or
//! from the resources reached from their waiters; waiters from its wait lists or chains), fast and guarded mutexes (the owner beside the
//! event they wait on), and threads waited for by their handle (termination). Cycles are
//! deadlocks; threads whose waits lead on into a cycle, or pile up behind one thread, are
//! reported with where they end.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::procs::Thread;
use super::threads::blocker;
use super::{Kernel, ModelError};

/// Why one thread waits for another.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Edge {
    /// The waiting thread.
    pub waiter: u64,
    /// What it waits on.
    pub object: u64,
    /// Its kind (`Mutant`, `ERESOURCE exclusive`, …).
    pub kind: String,
    /// Who holds it.
    pub owner: u64,
}

/// A thread on the graph.
#[derive(Debug, Clone)]
pub struct Node {
    /// The thread.
    pub thread: Thread,
    /// Its process's image name.
    pub image: String,
    /// The frame it is blocked in.
    pub blocker: Option<String>,
}

/// The graph and what it finds.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    /// Who waits for whom.
    pub edges: Vec<Edge>,
    /// The threads on edges.
    pub nodes: BTreeMap<u64, Node>,
    /// The held executive resources: every one when the resource list was walked, the ones
    /// the waiting threads wait for when they were reached from the threads.
    pub held: Vec<super::locks::Held>,
    /// What could not be examined.
    pub notes: Vec<String>,
    /// Whether the resource list was walked.
    pub resource_list_walked: bool,
    /// Values looked at as resources while reaching them from their waiters.
    pub resources_tried: usize,
}

/// How to build the graph.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Reach the resources waiting threads wait for from the threads (their wait blocks and
    /// stacks; the resource list only for a waiter that leads to none) instead of walking
    /// every resource on the list.
    pub thread_first: bool,
    /// Walk the stacks of the threads on edges, to name the frame each is blocked in.
    pub blockers: bool,
    /// Resources at known addresses (globals) that waiters are matched against first.
    pub globals: Vec<u64>,
}

impl Options {
    /// Every resource from the list, and what each thread is blocked in.
    pub fn full() -> Options {
        Options {
            thread_first: false,
            blockers: true,
            globals: Vec::new(),
        }
    }
}

/// The wait-for cycles among `edges` (strongly connected components of two or more threads,
/// or a thread waiting for itself).
pub fn find_cycles(edges: &[Edge]) -> Vec<Vec<u64>> {
    // Tarjan's strongly connected components, iteratively.
    let mut adj: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for e in edges {
        adj.entry(e.waiter).or_default().push(e.owner);
        adj.entry(e.owner).or_default();
    }
    let nodes: Vec<u64> = adj.keys().copied().collect();
    let mut index: BTreeMap<u64, usize> = BTreeMap::new();
    let mut low: BTreeMap<u64, usize> = BTreeMap::new();
    let mut on_stack = BTreeSet::new();
    let mut stack = Vec::new();
    let mut next = 0usize;
    let mut out = Vec::new();
    for &start in &nodes {
        if index.contains_key(&start) {
            continue;
        }
        let mut work: Vec<(u64, usize)> = vec![(start, 0)];
        while let Some((v, i)) = work.pop() {
            if i == 0 {
                index.insert(v, next);
                low.insert(v, next);
                next += 1;
                stack.push(v);
                on_stack.insert(v);
            }
            let succ = &adj[&v];
            if i < succ.len() {
                work.push((v, i + 1));
                let w = succ[i];
                if !index.contains_key(&w) {
                    work.push((w, 0));
                } else if on_stack.contains(&w) {
                    let lw = index[&w].min(low[&v]);
                    low.insert(v, lw);
                }
                continue;
            }
            // All successors done: fold their low-links, then maybe pop a component.
            for &w in succ {
                if on_stack.contains(&w) {
                    let lw = low[&w].min(low[&v]);
                    low.insert(v, lw);
                }
            }
            if low[&v] == index[&v] {
                let mut comp = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack.remove(&w);
                    comp.push(w);
                    if w == v {
                        break;
                    }
                }
                let self_loop = comp.len() == 1 && adj[&v].contains(&v);
                if comp.len() > 1 || self_loop {
                    comp.reverse();
                    out.push(comp);
                }
            }
        }
    }
    out
}

/// Builds the graph of every waiting thread, from the whole resource list, with what each
/// thread on it is blocked in.
pub fn build(k: &mut Kernel) -> Result<Graph, ModelError> {
    build_with(k, &Options::full())
}

/// Adds the edges of the held resources `held` (their waiters wait for their current owners).
fn resource_edges(g: &mut Graph, held: &[super::locks::Held]) {
    for h in held {
        for (list, kind) in [
            (&h.exclusive_waiters, "ERESOURCE (exclusive wait)"),
            (&h.shared_waiters, "ERESOURCE (shared wait)"),
        ] {
            for w in list {
                for o in h.owners.iter().filter(|o| o.current && o.thread != 0) {
                    g.edges.push(Edge {
                        waiter: *w,
                        object: h.address,
                        kind: kind.into(),
                        owner: o.thread,
                    });
                }
            }
        }
    }
}

/// Walks the resource list for the graph.
fn walk_resources(k: &mut Kernel, g: &mut Graph) {
    g.resource_list_walked = true;
    match super::locks::walk(k, false, None) {
        Ok(l) => {
            if let Some(n) = l.note {
                g.notes.push(format!("resource walk: {n}"));
            }
            resource_edges(g, &l.held);
            g.held = l.held;
        }
        Err(err) => {
            let n = format!("resources not examined: {err}");
            k.note_incomplete(n.clone());
            g.notes.push(n);
        }
    }
}

/// Builds the graph of every waiting thread as `o` says.
pub fn build_with(k: &mut Kernel, o: &Options) -> Result<Graph, ModelError> {
    let mut g = Graph::default();
    let (all, notes) = k.all_threads()?;
    g.notes.extend(notes);
    // What a value on a waiter's stack that is a thread, a stack or a process cannot be.
    let resource_waits = all
        .iter()
        .flat_map(|(_, ts)| ts)
        .any(|t| t.state == 5 && t.wait_reason_name == "WrResource");
    let not = (o.thread_first && resource_waits).then(|| {
        let threads: Vec<&Thread> = all.iter().flat_map(|(_, ts)| ts).collect();
        let processes: Vec<u64> = all.iter().map(|(p, _)| p.eprocess).collect();
        super::locks::NotResources::new(k, &threads, &processes)
    });
    let mut waiting = Vec::new();
    for (p, threads) in all {
        for t in threads {
            if t.state == 5 {
                waiting.push((t, p.name.clone()));
            }
        }
    }
    // Executive resources: waiters → owners.
    let resource_waiters: Vec<&Thread> = waiting
        .iter()
        .map(|(t, _)| t)
        .filter(|t| t.wait_reason_name == "WrResource")
        .collect();
    if !resource_waiters.is_empty() {
        if let Some(not) = &not {
            match super::locks::from_waiters(k, &resource_waiters, &o.globals, not) {
                Ok(f) if f.unresolved.is_empty() => {
                    g.resources_tried = f.tried;
                    resource_edges(&mut g, &f.held);
                    g.held = f.held;
                }
                Ok(f) => {
                    g.resources_tried = f.tried;
                    let (t, why) = &f.unresolved[0];
                    g.notes.push(format!(
                        "thread {t:x} waits for a resource it does not lead to ({why}){}: the resource list was walked",
                        match f.unresolved.len() {
                            1 => String::new(),
                            n => format!(", and {} more such waiters", n - 1),
                        }
                    ));
                    walk_resources(k, &mut g);
                }
                // The link failed, the time ran out: walking the list would fare no better.
                Err(ModelError::Target(e)) if e.is_transient() => {
                    let n = format!("resources not examined: {e}");
                    k.note_incomplete(n.clone());
                    g.notes.push(n);
                }
                Err(err) => {
                    g.notes.push(format!(
                        "the resources waited for could not be reached from their waiters ({err}): the resource list was walked"
                    ));
                    walk_resources(k, &mut g);
                }
            }
        } else {
            walk_resources(k, &mut g);
        }
    }
    for (t, _) in &waiting {
        for w in &t.waits {
            match w.type_code {
                2 => {
                    if let Some(o) = w.owner {
                        g.edges.push(Edge {
                            waiter: t.ethread,
                            object: w.object,
                            kind: "Mutant".into(),
                            owner: o,
                        });
                    }
                }
                6 if w.object != t.ethread => g.edges.push(Edge {
                    waiter: t.ethread,
                    object: w.object,
                    kind: "Thread (termination)".into(),
                    owner: w.object,
                }),
                0 | 1
                    if matches!(
                        t.wait_reason_name.as_str(),
                        "WrFastMutex" | "WrGuardedMutex"
                    ) =>
                {
                    // The event sits at +0x18 of a FAST_MUTEX / KGUARDED_MUTEX; Owner at +8.
                    match k.mem.u64(w.object - 0x18 + 8) {
                        Ok(owner) => {
                            let owner = owner & !0xf;
                            if owner != 0 && k.mem.u8(owner).is_ok_and(|ty| ty == 6) {
                                g.edges.push(Edge {
                                    waiter: t.ethread,
                                    object: w.object - 0x18,
                                    kind: "FAST_MUTEX".into(),
                                    owner,
                                });
                            }
                        }
                        Err(err) => {
                            let n = format!(
                                "the owner of the mutex {:x} that thread {:x} waits for is unreadable: {err}",
                                w.object - 0x18,
                                t.ethread
                            );
                            k.note_incomplete(n.clone());
                            g.notes.push(n);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    g.edges.sort_by_key(|x| (x.waiter, x.owner, x.object));
    g.edges.dedup();
    // The threads on edges, with what they are blocked in.
    let mut involved: BTreeSet<u64> = BTreeSet::new();
    for x in &g.edges {
        involved.insert(x.waiter);
        involved.insert(x.owner);
    }
    let by_addr: BTreeMap<u64, (Thread, String)> = waiting
        .into_iter()
        .map(|(t, img)| (t.ethread, (t, img)))
        .collect();
    for a in involved {
        let (t, image) = match by_addr.get(&a) {
            Some((t, i)) => (t.clone(), i.clone()),
            None => match k.thread(a) {
                Ok(t) => {
                    let img = k.process(t.process).map(|p| p.name).unwrap_or_default();
                    (t, img)
                }
                Err(err) => {
                    let n = format!("thread {a:x} unreadable: {err}");
                    k.note_incomplete(n.clone());
                    g.notes.push(n);
                    continue;
                }
            },
        };
        let b = if !o.blockers {
            None
        } else {
            match k.stack_of(&t) {
                Ok(s) => {
                    let b = blocker(&s);
                    // A stack that stops early may stop before the frame the thread is blocked in.
                    if b.is_none() && !s.complete {
                        k.note_stack(&t, &s);
                    }
                    b
                }
                Err(err) => {
                    k.note_incomplete(format!("the stack of thread {a:x} is unreadable: {err}"));
                    None
                }
            }
        };
        g.nodes.insert(
            a,
            Node {
                thread: t,
                image,
                blocker: b,
            },
        );
    }
    Ok(g)
}

/// A wait-for cycle: its threads, and for each the wait that keeps the cycle (to the next
/// member), where one is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle {
    /// The threads, in the order found.
    pub threads: Vec<u64>,
    /// The edge out of each thread that stays in the cycle.
    pub steps: Vec<Edge>,
}

/// The cycles of a graph, with the waits that keep each.
pub fn cycles(g: &Graph) -> Vec<Cycle> {
    find_cycles(&g.edges)
        .into_iter()
        .map(|c| {
            let steps = c
                .iter()
                .filter_map(|t| {
                    g.edges
                        .iter()
                        .find(|x| x.waiter == *t && c.contains(&x.owner))
                        .cloned()
                })
                .collect();
            Cycle { threads: c, steps }
        })
        .collect()
}

/// Threads waiting behind one thread: their waits lead on through owners and end there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PileUp {
    /// Where the waits end: a thread that is not waiting for an owner, or one in a cycle.
    pub end: u64,
    /// Whether `end` is deadlocked (in a cycle).
    pub ends_in_deadlock: bool,
    /// The threads that wait behind it.
    pub waiters: Vec<u64>,
    /// The longest path of waits that ends there.
    pub longest: Vec<u64>,
}

/// Every waiter outside a cycle whose waits lead on through owners, grouped by where they end
/// (a deadlock, or a thread that is not waiting). A single wait on a thread that is not
/// deadlocked is ordinary and left out: what is kept piles up (two waiters or more, or a path
/// of three threads) or ends in a deadlock.
pub fn pile_ups(g: &Graph, cycles: &[Cycle]) -> Vec<PileUp> {
    let in_cycle: BTreeSet<u64> = cycles.iter().flat_map(|c| c.threads.clone()).collect();
    let starts: BTreeSet<u64> = g
        .edges
        .iter()
        .map(|x| x.waiter)
        .filter(|w| !in_cycle.contains(w))
        .collect();
    // (end thread, ends in a deadlock) → the waiters behind it and the longest path.
    let mut behind: BTreeMap<(u64, bool), (Vec<u64>, Vec<u64>)> = BTreeMap::new();
    for s in starts {
        let mut path = vec![s];
        let mut cur = s;
        let mut deadlocked = false;
        while let Some(x) = g.edges.iter().find(|x| x.waiter == cur) {
            if in_cycle.contains(&x.owner) {
                deadlocked = true;
                cur = x.owner;
                break;
            }
            if path.contains(&x.owner) || path.len() > 64 {
                break;
            }
            path.push(x.owner);
            cur = x.owner;
        }
        let entry = behind.entry((cur, deadlocked)).or_default();
        if s != cur {
            entry.0.push(s);
        }
        if path.len() > entry.1.len() {
            entry.1 = path;
        }
    }
    behind
        .into_iter()
        .filter(|((_, deadlocked), (waiters, longest))| {
            !(waiters.is_empty() || (!deadlocked && waiters.len() < 2 && longest.len() < 3))
        })
        .map(|((end, ends_in_deadlock), (waiters, longest))| PileUp {
            end,
            ends_in_deadlock,
            waiters,
            longest,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(w: u64, o: u64) -> Edge {
        Edge {
            waiter: w,
            object: 0,
            kind: String::new(),
            owner: o,
        }
    }

    #[test]
    fn cycles_are_found_and_chains_are_not_cycles() {
        // 1 → 2 → 1 is a cycle; 3 → 1 leads into it; 4 → 5 → 6 is a chain.
        let edges = vec![e(1, 2), e(2, 1), e(3, 1), e(4, 5), e(5, 6), e(7, 7)];
        let mut c = find_cycles(&edges);
        c.sort();
        assert_eq!(c, vec![vec![1, 2], vec![7]]);
        assert!(find_cycles(&[e(1, 2), e(2, 3)]).is_empty());
        // A long cycle.
        let ring: Vec<Edge> = (0..1000).map(|i| e(i, (i + 1) % 1000)).collect();
        assert_eq!(find_cycles(&ring)[0].len(), 1000);
    }
}
