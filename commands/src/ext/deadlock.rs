//! `!deadlock`: the wait-for graph of threads ([`kdnet_model::nt::waitgraph`]): each cycle
//! with its threads, objects and wait times, and the threads waiting behind a cycle or piling
//! up behind one thread.

use serde_json::json;

use crate::engine::{CmdError, Engine, Output};
use kdnet_model::nt::waitgraph::{self, Graph};

fn describe(g: &Graph, t: u64) -> String {
    match g.nodes.get(&t) {
        Some(n) => {
            let wait = match n.thread.wait_seconds {
                Some(s) if n.thread.state == 5 => {
                    format!("{} {:.0} s", n.thread.wait_reason_name, s)
                }
                _ => n.thread.state_name.clone(),
            };
            format!(
                "thread {:x} ({} {:x}.{:x}, {wait}){}",
                t,
                n.image,
                n.thread.pid,
                n.thread.tid,
                n.blocker
                    .as_ref()
                    .map(|b| format!(" in {b}"))
                    .unwrap_or_default()
            )
        }
        None => format!("thread {t:x}"),
    }
}

fn thread_json(g: &Graph, t: u64) -> serde_json::Value {
    match g.nodes.get(&t) {
        Some(n) => json!({
            "thread": t,
            "image": n.image,
            "pid": n.thread.pid,
            "tid": n.thread.tid,
            "state": n.thread.state_name,
            "wait_reason": (n.thread.state == 5).then_some(n.thread.wait_reason_name.clone()),
            "wait_seconds": n.thread.wait_seconds,
            "blocker": n.blocker,
        }),
        None => json!({ "thread": t }),
    }
}

/// `!deadlock`.
pub fn command(e: &mut Engine, _args: &str) -> Result<Output, CmdError> {
    let g = waitgraph::build(&mut e.kernel)?;
    let cycles = waitgraph::cycles(&g);
    let pile_ups = waitgraph::pile_ups(&g, &cycles);
    let mut text = String::new();
    let mut cycles_json = Vec::new();
    if cycles.is_empty() {
        text.push_str("No deadlock: the wait-for graph has no cycle.\n");
    }
    for (i, c) in cycles.iter().enumerate() {
        text.push_str(&format!(
            "DEADLOCK {}: {} threads wait for each other\n",
            i + 1,
            c.threads.len()
        ));
        let mut steps = Vec::new();
        for t in &c.threads {
            text.push_str(&format!("    {}\n", describe(&g, *t)));
            if let Some(x) = c.steps.iter().find(|x| x.waiter == *t) {
                text.push_str(&format!(
                    "        waits for {} {:x}, held by thread {:x}\n",
                    x.kind, x.object, x.owner
                ));
                steps.push(json!({ "thread": thread_json(&g, *t), "object": x.object, "kind": x.kind, "owner": x.owner }));
            }
        }
        let objects: Vec<u64> = c.steps.iter().map(|x| x.object).collect();
        cycles_json.push(json!({ "threads": c.threads, "objects": objects, "steps": steps }));
        text.push('\n');
    }
    let mut chains_json = Vec::new();
    let mut chain_text = String::new();
    for p in &pile_ups {
        chain_text.push_str(&format!(
            "    {} thread(s) wait behind {}{}\n",
            p.waiters.len(),
            describe(&g, p.end),
            if p.ends_in_deadlock {
                ", which is deadlocked"
            } else {
                ""
            }
        ));
        for w in p.waiters.iter().take(16) {
            chain_text.push_str(&format!("        {}\n", describe(&g, *w)));
        }
        if p.waiters.len() > 16 {
            chain_text.push_str(&format!("        … and {} more\n", p.waiters.len() - 16));
        }
        chains_json.push(json!({
            "end": thread_json(&g, p.end),
            "ends_in_deadlock": p.ends_in_deadlock,
            "waiters": p.waiters,
            "longest": p.longest,
        }));
    }
    if !chain_text.is_empty() {
        text.push_str("Wait chains:\n");
        text.push_str(&chain_text);
    }
    text.push_str(&format!(
        "\n{} waits with a known owner examined, {} cycle(s), {} chain(s)\n",
        g.edges.len(),
        cycles.len(),
        chains_json.len()
    ));
    for n in &g.notes {
        text.push_str(&format!("NOTE: {n}\n"));
    }
    Ok(Output {
        text,
        json: json!({
            "cycles": cycles_json,
            "chains": chains_json,
            "edges": g.edges,
            "threads": g.nodes.keys().map(|t| thread_json(&g, *t)).collect::<Vec<_>>(),
            "notes": g.notes,
        }),
    })
}
