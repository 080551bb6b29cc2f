//! `report.html`: one self-contained page (no network) for the person who opens the bundle:
//! the findings first, the wait-for graph as SVG (threads, the objects they wait on, wait
//! times; cycles in red), tables that sort when a heading is clicked, then each command's text.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::Value;

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// An address in a result's JSON: a number, or a string `0x` and hex digits (the form
/// 64-bit values may take). Every address the page shows is read through here.
pub fn addr_of(v: &Value) -> Option<u64> {
    kdnet_commands::hex::parse(v)
}

/// An address as WinDbg writes it: `ffffc18a`00120638`.
fn windbg(a: u64) -> String {
    format!("{:08x}`{:08x}", a >> 32, a as u32)
}

/// The address at `v` in WinDbg's form, or nothing.
fn windbg_at(v: &Value) -> String {
    addr_of(v).map(windbg).unwrap_or_default()
}

/// The color of cycle edges (tests look for it in a screenshot).
pub const CYCLE_COLOR: &str = "#d0021b";
/// The color of a "waits for" edge.
pub const WAIT_COLOR: &str = "#0a7d5a";
/// The color of a "held by" edge.
pub const HELD_COLOR: &str = "#7b3fa0";
/// The color of an edge past the threads (an object released when its holder lets go).
pub const BEYOND_COLOR: &str = "#c25e00";

/// The font size of the graph's labels (monospace).
const FONT: f64 = 11.0;
/// A generous advance of one monospace character at [`FONT`] (0.6 em and a margin).
const CHAR_W: f64 = 7.0;
/// Line height of labels.
const LINE_H: f64 = 15.0;
/// Padding inside a box.
const PAD_X: f64 = 10.0;
const PAD_Y: f64 = 5.0;
/// Space between boxes in a layer, and between layers.
const GAP_X: f64 = 40.0;
const GAP_Y: f64 = 64.0;
/// Length of an arrowhead: lines stop this much before the border they point to.
const ARROW: f64 = 10.0;
/// The widest row of boxes; a wider layer goes on in the next row.
const MAX_ROW: f64 = 1200.0;
/// Margin around the graph.
const MARGIN: f64 = 20.0;

/// What an edge means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rel {
    /// A thread waits for an object.
    Wait,
    /// An object is held by a thread.
    Held,
    /// An object is held by something that is not a thread (NBLs a miniport holds).
    Beyond,
}

/// A node of the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Thread(u64),
    /// Threads that wait alike, shown as one box (index into the groups).
    Group(usize),
    Object(u64),
    /// An NBL holder (miniport, filter, open), by handle.
    Holder(u64),
}

struct Node {
    key: Key,
    class: &'static str,
    lines: Vec<String>,
    stroke: &'static str,
    fill: &'static str,
    title: String,
    w: f64,
    h: f64,
    x: f64,
    y: f64,
}

/// How an edge is drawn.
struct Shape {
    /// The path, ending [`ARROW`] before the tip.
    d: String,
    /// Where the arrow's tip touches the border of the box it points to.
    tip: (f64, f64),
    /// The direction of the arrow there (unit).
    dir: (f64, f64),
    /// The rightmost point the edge reaches.
    far: f64,
    /// Whether it bows out.
    curved: bool,
}

struct GEdge {
    from: usize,
    to: usize,
    rel: Rel,
    hot: bool,
    title: String,
}

/// The width a line of monospace text takes, generously.
fn text_width(s: &str) -> f64 {
    s.chars()
        .map(|c| if c.is_ascii() { 1.0 } else { 2.0 })
        .sum::<f64>()
        * CHAR_W
}

fn node(
    key: Key,
    class: &'static str,
    lines: Vec<String>,
    stroke: &'static str,
    fill: &'static str,
    title: String,
) -> Node {
    let widest = lines.iter().map(|l| text_width(l)).fold(0.0, f64::max);
    Node {
        key,
        class,
        w: (widest + 2.0 * PAD_X).ceil(),
        h: lines.len() as f64 * LINE_H + 2.0 * PAD_Y,
        lines,
        stroke,
        fill,
        title,
        x: 0.0,
        y: 0.0,
    }
}

/// The structure WinDbg names an object by, from the wait graph's kind or the dispatcher
/// type (`ERESOURCE (shared wait)` → `ERESOURCE`, `NotificationEvent` → `KEVENT`).
fn structure(kind: &str) -> String {
    let head = kind.split(" (").next().unwrap_or(kind);
    match head {
        "Mutant" => "KMUTANT",
        "NotificationEvent" | "SynchronizationEvent" => "KEVENT",
        "Semaphore" => "KSEMAPHORE",
        "Thread" => "ETHREAD",
        "ProcessObject" => "EPROCESS",
        "QueueObject" | "PriQueueObject" => "KQUEUE",
        "Gate" => "KGATE",
        "NotificationTimer" | "SynchronizationTimer" => "KTIMER",
        other => other,
    }
    .to_string()
}

/// `WrResource 95 s`, or the thread's state.
fn wait_of(t: &Value) -> String {
    match (t["wait_reason"].as_str(), t["wait_seconds"].as_f64()) {
        (Some(r), Some(sec)) => format!("{r} {sec:.0} s"),
        (Some(r), None) => r.to_string(),
        _ => t["state"].as_str().unwrap_or("").to_string(),
    }
}

/// The point where the ray from the center of `n` in direction `d` (unit) leaves its box.
fn border(n: &Node, d: (f64, f64)) -> (f64, f64) {
    let tx = if d.0.abs() > 1e-9 {
        (n.w / 2.0) / d.0.abs()
    } else {
        f64::INFINITY
    };
    let ty = if d.1.abs() > 1e-9 {
        (n.h / 2.0) / d.1.abs()
    } else {
        f64::INFINITY
    };
    let t = tx.min(ty);
    (n.x + d.0 * t, n.y + d.1 * t)
}

fn unit(from: (f64, f64), to: (f64, f64)) -> (f64, f64) {
    let (dx, dy) = (to.0 - from.0, to.1 - from.1);
    let l = (dx * dx + dy * dy).sqrt();
    if l < 1e-9 {
        (0.0, 1.0)
    } else {
        (dx / l, dy / l)
    }
}

/// The graph of the findings: threads and the groups of threads that wait alike, the
/// objects they wait on (named as WinDbg names them), who holds them, and past the last
/// thread what it waits for and who holds that (`findings.wait_ends`).
struct Graph {
    nodes: Vec<Node>,
    edges: Vec<GEdge>,
}

impl Graph {
    fn index(&self, k: Key) -> Option<usize> {
        self.nodes.iter().position(|n| n.key == k)
    }

    fn edge(&mut self, from: Key, to: Key, rel: Rel, hot: bool, title: String) {
        let (Some(a), Some(b)) = (self.index(from), self.index(to)) else {
            return;
        };
        if let Some(e) = self.edges.iter_mut().find(|e| e.from == a && e.to == b) {
            e.hot |= hot;
            return;
        }
        self.edges.push(GEdge {
            from: a,
            to: b,
            rel,
            hot,
            title,
        });
    }

    fn of(f: &Value) -> Option<Graph> {
        let edges: Vec<(u64, u64, u64, &Value)> = f["wait_edges"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                Some((
                    addr_of(&e["waiter"])?,
                    addr_of(&e["object"])?,
                    addr_of(&e["owner"])?,
                    e,
                ))
            })
            .collect();
        let ends: Vec<&Value> = f["wait_ends"].as_array().into_iter().flatten().collect();
        if edges.is_empty() {
            return None;
        }
        let cycles: Vec<BTreeSet<u64>> = f["deadlock_cycles"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                c["threads"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(addr_of)
                    .collect()
            })
            .collect();
        let hot = |a: u64, b: u64| cycles.iter().any(|c| c.contains(&a) && c.contains(&b));
        let in_cycle = |a: u64| cycles.iter().any(|c| c.contains(&a));
        let info: BTreeMap<u64, &Value> = f["wait_threads"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| addr_of(&t["thread"]).map(|a| (a, t)))
            .collect();
        let held: BTreeMap<u64, &Value> = f["locks_held"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| addr_of(&h["address"]).map(|a| (a, h)))
            .collect();
        // Threads that wait alike (same objects, same kind of wait), outside cycles, that
        // nobody waits for: one box for each such crowd.
        let owners: BTreeSet<u64> = edges.iter().map(|e| e.2).collect();
        let end_threads: BTreeSet<u64> =
            ends.iter().filter_map(|e| addr_of(&e["thread"])).collect();
        let mut waits: BTreeMap<u64, BTreeSet<(u64, String)>> = BTreeMap::new();
        for (w, o, _, e) in &edges {
            waits
                .entry(*w)
                .or_default()
                .insert((*o, e["kind"].as_str().unwrap_or("").to_string()));
        }
        let mut crowds: BTreeMap<Vec<(u64, String)>, Vec<u64>> = BTreeMap::new();
        for (t, objs) in &waits {
            if !in_cycle(*t) && !owners.contains(t) && !end_threads.contains(t) {
                crowds
                    .entry(objs.iter().cloned().collect())
                    .or_default()
                    .push(*t);
            }
        }
        let groups: Vec<Vec<u64>> = crowds.into_values().filter(|v| v.len() > 1).collect();
        let group_of: BTreeMap<u64, usize> = groups
            .iter()
            .enumerate()
            .flat_map(|(i, g)| g.iter().map(move |t| (*t, i)))
            .collect();
        let key_of = |t: u64| match group_of.get(&t) {
            Some(i) => Key::Group(*i),
            None => Key::Thread(t),
        };
        let mut g = Graph {
            nodes: Vec::new(),
            edges: Vec::new(),
        };
        // Threads: cycle members first, then in the order they appear.
        let mut threads: Vec<u64> = Vec::new();
        for (w, _, o, _) in &edges {
            for t in [*w, *o] {
                if !group_of.contains_key(&t) && !threads.contains(&t) {
                    threads.push(t);
                }
            }
        }
        threads.sort_by_key(|t| !in_cycle(*t));
        for t in threads {
            let stroke = if in_cycle(t) { CYCLE_COLOR } else { "#3465a4" };
            let mut lines = vec![format!("thread {}", windbg(t))];
            match info.get(&t) {
                Some(i) if i.get("image").is_some() => {
                    let ids = match (addr_of(&i["pid"]), addr_of(&i["tid"])) {
                        (Some(p), Some(t)) => format!(" {p:x}.{t:x}"),
                        _ => String::new(),
                    };
                    lines.push(format!("{}{ids}", i["image"].as_str().unwrap_or("")));
                    lines.push(wait_of(i));
                    if let Some(b) = i["blocker"].as_str() {
                        lines.push(format!("in {b}"));
                    }
                }
                _ => lines.push("(not readable)".into()),
            }
            let title = format!("thread {}", windbg(t));
            g.nodes.push(node(
                Key::Thread(t),
                "thread",
                lines,
                stroke,
                "#eef3fb",
                title,
            ));
        }
        for (i, members) in groups.iter().enumerate() {
            let mut images: BTreeMap<&str, usize> = BTreeMap::new();
            let mut secs: Vec<f64> = Vec::new();
            let mut reasons: BTreeSet<&str> = BTreeSet::new();
            for t in members {
                if let Some(v) = info.get(t) {
                    *images
                        .entry(v["image"].as_str().unwrap_or("?"))
                        .or_default() += 1;
                    if let Some(s) = v["wait_seconds"].as_f64() {
                        secs.push(s);
                    }
                    if let Some(r) = v["wait_reason"].as_str() {
                        reasons.insert(r);
                    }
                }
            }
            let mut lines = vec![format!("{} threads", members.len())];
            for (img, n) in &images {
                lines.push(format!("{img} x{n}"));
            }
            let reasons: Vec<&str> = reasons.into_iter().collect();
            let lo = secs.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = secs.iter().copied().fold(0.0, f64::max);
            lines.push(match secs.len() {
                0 => reasons.join(", "),
                _ if (hi - lo) < 0.5 => format!("{} {hi:.0} s", reasons.join(", ")),
                _ => format!("{} {lo:.0}-{hi:.0} s", reasons.join(", ")),
            });
            let title = members
                .iter()
                .map(|t| format!("thread {}", windbg(*t)))
                .collect::<Vec<_>>()
                .join("\n");
            g.nodes.push(node(
                Key::Group(i),
                "group",
                lines,
                "#3465a4",
                "#e4ecf7",
                title,
            ));
        }
        // The objects threads wait on, named as WinDbg names them.
        let mut objects: Vec<(u64, &Value)> = Vec::new();
        for (_, o, _, e) in &edges {
            if !objects.iter().any(|x| x.0 == *o) {
                objects.push((*o, e));
            }
        }
        for (o, e) in objects {
            let kind = e["kind"].as_str().unwrap_or("");
            let symbol = e["symbol"]
                .as_str()
                .or_else(|| held.get(&o).and_then(|h| h["symbol"].as_str()));
            let mut lines = vec![structure(kind)];
            if let Some(s) = symbol {
                lines.push(s.to_string());
            }
            lines.push(windbg(o));
            if let Some(state) = held.get(&o).and_then(|h| h["state"].as_str()) {
                lines.push(format!("held {state}"));
            }
            let title = format!("{kind} {}", windbg(o));
            g.nodes.push(node(
                Key::Object(o),
                "object",
                lines,
                "#b08900",
                "#fff7d6",
                title,
            ));
        }
        // Past the last owner: what it waits on, and who holds that.
        let holders: BTreeMap<u64, &Value> = f["nbl_holders"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| addr_of(&h["handle"]).map(|a| (a, h)))
            .collect();
        for e in &ends {
            let Some(o) = addr_of(&e["object"]) else {
                continue;
            };
            if g.index(Key::Object(o)).is_none() {
                let ty = e["type_name"].as_str().unwrap_or("");
                let mut lines = vec![structure(ty)];
                if let Some(s) = e["symbol"].as_str() {
                    lines.push(s.to_string());
                }
                lines.push(windbg(o));
                if let Some(via) = e["via"].as_str() {
                    lines.push(via.to_string());
                } else if !ty.is_empty() {
                    lines.push(format!("({ty})"));
                }
                g.nodes.push(node(
                    Key::Object(o),
                    "object",
                    lines,
                    "#b08900",
                    "#fff7d6",
                    format!("{ty} {}", windbg(o)),
                ));
            }
            for h in e["held_by"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(addr_of)
            {
                if g.index(Key::Holder(h)).is_none() {
                    let v = holders.get(&h);
                    let what = match v.and_then(|v| v["kind"].as_str()) {
                        Some("NetAdapter") => "NDIS miniport",
                        Some("Filter") => "NDIS filter",
                        Some("Protocol") => "NDIS protocol open",
                        _ => "NBL holder",
                    };
                    let mut lines = vec![what.to_string()];
                    if let Some(n) = v.and_then(|v| v["name"].as_str()).filter(|n| !n.is_empty()) {
                        lines.push(n.to_string());
                    }
                    lines.push(windbg(h));
                    if let Some(n) = v.and_then(|v| v["count"].as_u64()) {
                        lines.push(format!("holds {n} pending NBLs"));
                    }
                    g.nodes.push(node(
                        Key::Holder(h),
                        "holder",
                        lines,
                        "#555555",
                        "#f1f1f1",
                        format!("{what} {}", windbg(h)),
                    ));
                }
            }
        }
        for (w, o, ow, e) in &edges {
            let kind = e["kind"].as_str().unwrap_or("");
            let hot = hot(*w, *ow);
            g.edge(
                key_of(*w),
                Key::Object(*o),
                Rel::Wait,
                hot,
                format!("thread {} waits for {kind} {}", windbg(*w), windbg(*o)),
            );
            g.edge(
                Key::Object(*o),
                key_of(*ow),
                Rel::Held,
                hot,
                format!("{kind} {} held by thread {}", windbg(*o), windbg(*ow)),
            );
        }
        for e in &ends {
            let (Some(t), Some(o)) = (addr_of(&e["thread"]), addr_of(&e["object"])) else {
                continue;
            };
            g.edge(
                key_of(t),
                Key::Object(o),
                Rel::Wait,
                false,
                format!("thread {} waits for {}", windbg(t), windbg(o)),
            );
            for h in e["held_by"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(addr_of)
            {
                g.edge(
                    Key::Object(o),
                    Key::Holder(h),
                    Rel::Beyond,
                    false,
                    format!(
                        "{} is released when {} returns its NBLs",
                        windbg(o),
                        windbg(h)
                    ),
                );
            }
        }
        Some(g)
    }

    /// Lays the graph out: each connected part in layers from top to bottom (waiters above
    /// what they wait for, a layer wider than a row over several rows), the parts side by side
    /// in rows of at most [`MAX_ROW`]. Returns the size of the picture, which edges close a
    /// cycle (drawn upward), and the part of each node.
    fn layout(&mut self) -> (f64, f64, Vec<bool>, Vec<usize>) {
        let n = self.nodes.len();
        let mut indeg = vec![0usize; n];
        for e in &self.edges {
            indeg[e.to] += 1;
        }
        // Back edges: found by a depth-first walk from the nodes nobody points at.
        let mut back = vec![false; self.edges.len()];
        let mut state = vec![0u8; n]; // 0 new, 1 on the stack, 2 done
        let roots: Vec<usize> = (0..n).filter(|i| indeg[*i] == 0).chain(0..n).collect();
        for r in roots {
            if state[r] != 0 {
                continue;
            }
            let mut stack: Vec<(usize, usize)> = vec![(r, 0)];
            state[r] = 1;
            while let Some((v, i)) = stack.pop() {
                let outs: Vec<usize> = (0..self.edges.len())
                    .filter(|j| self.edges[*j].from == v)
                    .collect();
                if i < outs.len() {
                    stack.push((v, i + 1));
                    let j = outs[i];
                    let w = self.edges[j].to;
                    match state[w] {
                        0 => {
                            state[w] = 1;
                            stack.push((w, 0));
                        }
                        1 => back[j] = true,
                        _ => {}
                    }
                } else {
                    state[v] = 2;
                }
            }
        }
        // Ranks: the longest path over forward edges (relaxed n times: the graph is small).
        let mut rank = vec![0usize; n];
        for _ in 0..n {
            let mut changed = false;
            for (j, e) in self.edges.iter().enumerate() {
                if !back[j] && rank[e.to] < rank[e.from] + 1 {
                    rank[e.to] = rank[e.from] + 1;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        // Nodes nobody points at sit just above what they point at.
        for v in 0..n {
            let has_in = self
                .edges
                .iter()
                .enumerate()
                .any(|(j, e)| e.to == v && !back[j]);
            let succ = self
                .edges
                .iter()
                .enumerate()
                .filter(|(j, e)| e.from == v && !back[*j])
                .map(|(_, e)| rank[e.to])
                .min();
            if let (false, Some(s)) = (has_in, succ) {
                rank[v] = rank[v].max(s.saturating_sub(1));
            }
        }
        // The connected parts, in the order of their first node.
        let mut part: Vec<usize> = (0..n).collect();
        fn root(part: &mut [usize], mut v: usize) -> usize {
            while part[v] != v {
                part[v] = part[part[v]];
                v = part[v];
            }
            v
        }
        for e in &self.edges {
            let (a, b) = (root(&mut part, e.from), root(&mut part, e.to));
            part[a.max(b)] = a.min(b);
        }
        let part: Vec<usize> = (0..n).map(|v| root(&mut part, v)).collect();
        let mut parts: Vec<usize> = part.clone();
        parts.sort_unstable();
        parts.dedup();
        let mut pos = vec![0.0f64; n];
        let (mut x0, mut y0, mut shelf, mut right) = (MARGIN, MARGIN, 0.0f64, 0.0f64);
        for p in parts {
            let members: Vec<usize> = (0..n).filter(|v| part[*v] == p).collect();
            let lo = members.iter().map(|v| rank[*v]).min().unwrap_or(0);
            let depth = members.iter().map(|v| rank[*v] - lo).max().unwrap_or(0) + 1;
            let mut layers: Vec<Vec<usize>> = vec![Vec::new(); depth];
            for v in &members {
                layers[rank[*v] - lo].push(*v);
            }
            // Order each layer by where its predecessors are (a few sweeps).
            for l in &layers {
                for (i, v) in l.iter().enumerate() {
                    pos[*v] = i as f64;
                }
            }
            for _ in 0..4 {
                for (li, layer) in layers.iter_mut().enumerate().skip(1) {
                    let mut keyed: Vec<(f64, usize)> = layer
                        .iter()
                        .map(|v| {
                            let p: Vec<f64> = self
                                .edges
                                .iter()
                                .filter(|e| e.to == *v && rank[e.from] - lo + 1 == li)
                                .map(|e| pos[e.from])
                                .collect();
                            let b = if p.is_empty() {
                                pos[*v]
                            } else {
                                p.iter().sum::<f64>() / p.len() as f64
                            };
                            (b, *v)
                        })
                        .collect();
                    keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
                    *layer = keyed.into_iter().map(|(_, v)| v).collect();
                    for (i, v) in layer.iter().enumerate() {
                        pos[*v] = i as f64;
                    }
                }
            }
            // A layer wider than a row goes on over several rows.
            let mut rows: Vec<Vec<usize>> = Vec::new();
            for l in &layers {
                let mut row: Vec<usize> = Vec::new();
                let mut width = 0.0;
                for v in l {
                    let w = self.nodes[*v].w;
                    if !row.is_empty() && width + GAP_X + w > MAX_ROW {
                        rows.push(std::mem::take(&mut row));
                        width = 0.0;
                    }
                    width += if row.is_empty() { w } else { GAP_X + w };
                    row.push(*v);
                }
                rows.push(row);
            }
            // Rows centered under each other, from (0, 0).
            let widths: Vec<f64> = rows
                .iter()
                .map(|l| {
                    l.iter().map(|v| self.nodes[*v].w).sum::<f64>()
                        + GAP_X * l.len().saturating_sub(1) as f64
                })
                .collect();
            let inner = widths.iter().copied().fold(0.0, f64::max);
            let mut y = 0.0;
            for (ri, l) in rows.iter().enumerate() {
                let h = l.iter().map(|v| self.nodes[*v].h).fold(0.0, f64::max);
                let mut x = (inner - widths[ri]) / 2.0;
                for v in l {
                    let nd = &mut self.nodes[*v];
                    nd.x = x + nd.w / 2.0;
                    nd.y = y + h / 2.0;
                    x += nd.w + GAP_X;
                }
                y += h + GAP_Y;
            }
            let height = y - GAP_Y;
            // As wide as its curves reach.
            let mut bows = 0;
            let mut width = inner;
            for j in 0..self.edges.len() {
                if part[self.edges[j].from] == p {
                    let s = self.shape(j, back[j], &members, bows);
                    if s.curved {
                        bows += 1;
                    }
                    width = width.max(s.far + 4.0);
                }
            }
            if x0 > MARGIN && x0 + width > MARGIN + MAX_ROW {
                x0 = MARGIN;
                y0 += shelf + GAP_Y;
                shelf = 0.0;
            }
            for v in &members {
                self.nodes[*v].x += x0;
                self.nodes[*v].y += y0;
            }
            right = right.max(x0 + width);
            shelf = shelf.max(height);
            x0 += width + 2.0 * GAP_X;
        }
        (right + MARGIN, y0 + shelf + MARGIN, back, part)
    }

    /// How edge `j` is drawn: straight from border to border, unless it closes a cycle or
    /// would cross a box of its part (`members`); then it bows out to the right, `bows`
    /// curves farther than the ones before.
    fn shape(&self, j: usize, back: bool, members: &[usize], bows: usize) -> Shape {
        let e = &self.edges[j];
        let (a, b) = (&self.nodes[e.from], &self.nodes[e.to]);
        let crosses = members.iter().any(|v| {
            let m = &self.nodes[*v];
            *v != e.from
                && *v != e.to
                && (1..64).any(|i| {
                    let t = f64::from(i) / 64.0;
                    let (x, y) = (a.x + (b.x - a.x) * t, a.y + (b.y - a.y) * t);
                    (x - m.x).abs() < m.w / 2.0 + 4.0 && (y - m.y).abs() < m.h / 2.0 + 4.0
                })
        });
        if !back && !crosses {
            let dir = unit((a.x, a.y), (b.x, b.y));
            let start = border(a, dir);
            let tip = border(b, (-dir.0, -dir.1));
            let end = (tip.0 - dir.0 * ARROW, tip.1 - dir.1 * ARROW);
            return Shape {
                d: format!("M{:.1},{:.1} L{:.1},{:.1}", start.0, start.1, end.0, end.1),
                tip,
                dir,
                far: start.0.max(tip.0),
                curved: false,
            };
        }
        let (lo, hi) = (a.y.min(b.y), a.y.max(b.y));
        let clear = members
            .iter()
            .map(|v| &self.nodes[*v])
            .filter(|m| m.y + m.h / 2.0 >= lo && m.y - m.h / 2.0 <= hi)
            .map(|m| m.x + m.w / 2.0)
            .fold(0.0, f64::max)
            + 30.0
            + 24.0 * bows as f64;
        // A quadratic curve reaches halfway to its control point.
        let c = (2.0 * clear - (a.x + b.x) / 2.0, (a.y + b.y) / 2.0);
        let start = border(a, unit((a.x, a.y), c));
        let tip = border(b, unit((b.x, b.y), c));
        let far = (0..=32)
            .map(|i| {
                let t = f64::from(i) / 32.0;
                (1.0 - t) * (1.0 - t) * start.0 + 2.0 * t * (1.0 - t) * c.0 + t * t * tip.0
            })
            .fold(0.0, f64::max);
        let dir = unit(c, tip);
        let end = (tip.0 - dir.0 * ARROW, tip.1 - dir.1 * ARROW);
        Shape {
            d: format!(
                "M{:.1},{:.1} Q{:.1},{:.1} {:.1},{:.1}",
                start.0, start.1, c.0, c.1, end.0, end.1
            ),
            tip,
            dir,
            far,
            curved: true,
        }
    }

    fn svg(mut self) -> String {
        let (w, h, back, part) = self.layout();
        let mut drawn: Vec<String> = Vec::new();
        let mut bows: BTreeMap<usize, usize> = BTreeMap::new();
        for (j, e) in self.edges.iter().enumerate() {
            let p = part[e.from];
            let members: Vec<usize> = (0..self.nodes.len()).filter(|v| part[*v] == p).collect();
            let bow = bows.entry(p).or_default();
            let Shape {
                d,
                tip,
                dir,
                curved,
                ..
            } = self.shape(j, back[j], &members, *bow);
            if curved {
                *bow += 1;
            }
            let (color, marker, width, class) = match (e.hot, e.rel) {
                (true, _) => (CYCLE_COLOR, "arrow-cycle", 3.0, "cycle"),
                (false, Rel::Wait) => (WAIT_COLOR, "arrow-wait", 1.6, "wait"),
                (false, Rel::Held) => (HELD_COLOR, "arrow-held", 1.6, "held"),
                (false, Rel::Beyond) => (BEYOND_COLOR, "arrow-beyond", 1.6, "beyond"),
            };
            let kind = match e.rel {
                Rel::Wait => "wait",
                Rel::Held => "held",
                Rel::Beyond => "beyond",
            };
            let dash = if e.rel == Rel::Wait {
                r#" stroke-dasharray="6,3""#
            } else {
                ""
            };
            drawn.push(format!(
                r#"<path class="edge {kind}{}" d="{d}" fill="none" stroke="{color}" stroke-width="{width}"{dash} marker-end="url(#{marker})" data-x2="{:.1}" data-y2="{:.1}" data-dx="{:.3}" data-dy="{:.3}" data-color="{color}"><title>{}</title></path>"#,
                if class == "cycle" { " cycle" } else { "" },
                tip.0,
                tip.1,
                dir.0,
                dir.1,
                esc(&e.title)
            ));
        }
        let (w, h) = (w.ceil(), h.ceil());
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg id="waitgraph" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w:.0} {h:.0}" width="100%" style="max-width:{w:.0}px;height:auto;display:block" preserveAspectRatio="xMinYMin meet" font-family="monospace" font-size="{FONT}" data-vw="{w:.0}" data-vh="{h:.0}">"#
        );
        s.push_str("<defs>");
        for (id, color) in [
            ("arrow-wait", WAIT_COLOR),
            ("arrow-held", HELD_COLOR),
            ("arrow-cycle", CYCLE_COLOR),
            ("arrow-beyond", BEYOND_COLOR),
        ] {
            // The tip is ARROW past the line's end: it touches the border the line points to.
            let _ = write!(
                s,
                r#"<marker id="{id}" viewBox="0 0 10 8" refX="0" refY="4" markerUnits="userSpaceOnUse" markerWidth="{ARROW}" markerHeight="8" orient="auto"><path d="M0,0 L10,4 L0,8 z" fill="{color}"/></marker>"#
            );
        }
        s.push_str("</defs>\n");
        for d in drawn {
            s.push_str(&d);
            s.push('\n');
        }
        for n in &self.nodes {
            let (x0, y0) = (n.x - n.w / 2.0, n.y - n.h / 2.0);
            let width = if n.stroke == CYCLE_COLOR { 2.5 } else { 1.5 };
            let _ = write!(
                s,
                r#"<g class="node {}"><rect x="{x0:.1}" y="{y0:.1}" width="{:.1}" height="{:.1}" rx="5" fill="{}" stroke="{}" stroke-width="{width}"/>"#,
                n.class, n.w, n.h, n.fill, n.stroke
            );
            for (i, l) in n.lines.iter().enumerate() {
                let base = y0 + PAD_Y + (i + 1) as f64 * LINE_H - 4.0;
                let _ = write!(
                    s,
                    r#"<text x="{:.1}" y="{base:.1}" text-anchor="middle"{}>{}</text>"#,
                    n.x,
                    if i == 0 { r#" font-weight="bold""# } else { "" },
                    esc(l)
                );
            }
            let _ = writeln!(s, "<title>{}</title></g>", esc(&n.title));
        }
        s.push_str("</svg>\n");
        s
    }
}

/// The wait-for graph of the findings as SVG, or nothing when no thread waits for another.
pub fn graph_svg(f: &Value) -> Option<String> {
    Graph::of(f).map(Graph::svg)
}

/// A table of the findings: title, id, the list, the columns (heading, cell).
type Section<'a> = (&'a str, &'a str, &'a Value, &'a [(&'a str, Cell)]);

/// How a table cell comes from an object.
enum Cell {
    /// A string field.
    Text(&'static str),
    /// A number field.
    Num(&'static str),
    /// An address field, as WinDbg writes it.
    Addr(&'static str),
    /// A symbol field, or else an address field in hex.
    SymbolOr(&'static str, &'static str),
}

impl Cell {
    fn of(&self, v: &Value) -> String {
        match self {
            Cell::Text(k) => v[*k].as_str().unwrap_or("").to_string(),
            Cell::Num(k) => v[*k]
                .as_i64()
                .map(|n| n.to_string())
                .or_else(|| v[*k].as_u64().map(|n| n.to_string()))
                .unwrap_or_default(),
            Cell::Addr(k) => windbg_at(&v[*k]),
            Cell::SymbolOr(sym, a) => v[*sym]
                .as_str()
                .map_or_else(|| Cell::Addr(a).of(v), str::to_string),
        }
    }
}

fn table(id: &str, heads: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!("<table class=\"sortable\" id=\"{id}\"><thead><tr>");
    for h in heads {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    s.push_str("</tr></thead><tbody>\n");
    for r in rows {
        s.push_str("<tr>");
        for c in r {
            let _ = write!(s, "<td>{}</td>", esc(c));
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</tbody></table>\n");
    s
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}\
.bad{color:#b00020;font-weight:bold}.ok{color:#2e7d32}ul.findings{list-style:none;padding-left:0}ul.findings li{margin:.3em 0;font-size:1.05em}\
.finding .sev{display:inline-block;min-width:5.5em;font-size:.8em;text-transform:uppercase;letter-spacing:.04em}\
.finding.error{color:#b00020;font-weight:bold}.finding.warning{color:#8a4b00}.finding.info{color:#37474f}\
.graph{max-width:100%}.legend{font-size:.9em;color:#444}\
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:3px 8px;font-family:monospace;font-size:12px}\
th{background:#f0f0f0;cursor:pointer;user-select:none}th:after{content:' \\2195';color:#999}\
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:12px}details{margin:.3em 0}\
summary{font-family:monospace;cursor:pointer}dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px}dt{font-weight:bold}";

const SCRIPT: &str = "document.querySelectorAll('table.sortable th').forEach(function(th,i){\
th.addEventListener('click',function(){var tb=th.closest('table').tBodies[0];\
var rows=Array.prototype.slice.call(tb.rows);var asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';\
rows.sort(function(a,b){var x=a.cells[i].textContent,y=b.cells[i].textContent;\
var nx=parseFloat(x.replace(/,/g,'')),ny=parseFloat(y.replace(/,/g,''));\
var c=(!isNaN(nx)&&!isNaN(ny)&&/^[-0-9.,]+$/.test(x)&&/^[-0-9.,]+$/.test(y))?nx-ny:x.localeCompare(y);\
return asc?c:-c;});rows.forEach(function(r){tb.appendChild(r);});});});\
(function(){var g=document.getElementById('waitgraph');if(!g)return;var over=0,n=0;\
g.querySelectorAll('g.node').forEach(function(nd){var r=nd.querySelector('rect').getBBox();\
nd.querySelectorAll('text').forEach(function(t){n++;var b=t.getBBox();\
if(b.x<r.x||b.y<r.y||b.x+b.width>r.x+r.width||b.y+b.height>r.y+r.height)over++;});});\
var rc=g.getBoundingClientRect();g.dataset.labels=n;g.dataset.overflow=over;\
g.dataset.left=rc.left+window.scrollX;g.dataset.top=rc.top+window.scrollY;\
g.dataset.renderedWidth=rc.width;g.dataset.columnWidth=g.parentNode.parentNode.clientWidth;\
g.dataset.scale=rc.width/g.viewBox.baseVal.width;})();\
document.body.dataset.ready='1';";

/// One finding of the list, in its severity's class and colour (only errors in bold red).
fn finding(severity: &str, text: &str) -> String {
    let (class, label) = match severity {
        "error" => ("error", "error"),
        "information" | "info" => ("info", "info"),
        _ => ("warning", "warning"),
    };
    format!(
        "<li class=\"finding {class}\"><span class=\"sev\">{label}</span> {}</li>",
        esc(text)
    )
}

/// The page for a bundle's `report.json` and each command's text.
pub fn page(info: &Value, texts: &[(String, String)]) -> String {
    let f = &info["findings"];
    let name = info["target"].as_str().unwrap_or("target");
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>kdnet capture: {}</title><style>{STYLE}</style></head><body>\n",
        esc(name)
    );
    let _ = writeln!(s, "<h1>kdnet capture of {}</h1>", esc(name));
    s.push_str("<dl>");
    let trig = format!(
        "{}: {}",
        info["trigger"]["kind"].as_str().unwrap_or(""),
        info["trigger"]["detail"].as_str().unwrap_or("")
    );
    let rows = [
        ("Trigger", trig),
        (
            "Target",
            info["description"].as_str().unwrap_or("").to_string(),
        ),
        ("Build", info["build"].to_string()),
        (
            "Time",
            format!(
                "{} to {}",
                info["started"].as_str().unwrap_or(""),
                info["finished"].as_str().unwrap_or("")
            ),
        ),
        (
            "Stopped",
            format!("{:.1} s", info["stopped_seconds"].as_f64().unwrap_or(0.0)),
        ),
        (
            "Cost",
            format!(
                "{} round trips, {} bytes",
                info["round_trips"], info["bytes"]
            ),
        ),
    ];
    for (k, v) in rows {
        let _ = write!(s, "<dt>{k}</dt><dd>{}</dd>", esc(&v));
    }
    if let Some(hit) = info["trigger"]["hit"]["text"].as_str() {
        let _ = write!(s, "<dt>Hit</dt><dd><pre>{}</pre></dd>", esc(hit));
    }
    if let Some(c) = info["continues"].as_object() {
        let _ = write!(
            s,
            "<dt>Continues</dt><dd>{} earlier capture(s) of this hang begun {}, cut short by the stop ceiling (the last: {}): the first {} steps are theirs, then what they did not run</dd>",
            c.get("parts").and_then(Value::as_u64).unwrap_or(1),
            esc(c.get("started").and_then(Value::as_str).unwrap_or("")),
            esc(c.get("bundle").and_then(Value::as_str).unwrap_or("")),
            c.get("steps").and_then(Value::as_u64).unwrap_or(0)
        );
    }
    match info["incomplete"].as_str() {
        Some(why) => {
            let _ = write!(
                s,
                "<dt>Complete</dt><dd class=\"bad\">NO: {}</dd>",
                esc(why)
            );
        }
        None => s.push_str("<dt>Complete</dt><dd class=\"ok\">yes</dd>"),
    }
    s.push_str("</dl>\n<h2>Findings</h2>\n<ul class=\"findings\">\n");
    let lines: Vec<&str> = info["summary"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if lines.is_empty() {
        s.push_str("<li>Nothing stood out in what the script gathered.</li>\n");
    }
    for (i, l) in lines.iter().enumerate() {
        let severity = info["summary_severity"][i].as_str().unwrap_or("warning");
        let _ = writeln!(s, "{}", finding(severity, l));
    }
    let sampled = info["trigger"]["sample"]["findings"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    for x in sampled.iter().take(8) {
        let severity = x["severity"].as_str().unwrap_or("warning");
        let line = format!("sample: {}", x["summary"].as_str().unwrap_or(""));
        let _ = writeln!(s, "{}", finding(severity, &line));
    }
    if sampled.len() > 8 {
        let _ = writeln!(
            s,
            "<li>sample: … and {} more (report.json has them all)</li>",
            sampled.len() - 8
        );
    }
    s.push_str("</ul>\n");
    if let Some(svg) = graph_svg(f) {
        let _ = writeln!(
            s,
            "<h2>Wait-for graph</h2>\n<p class=\"legend\">Blue boxes are threads (process, wait reason and time, the frame they are blocked in), yellow ones what they wait on, grey ones what holds that beyond the threads. <span style=\"color:{WAIT_COLOR}\">dashed: waits for</span>; <span style=\"color:{HELD_COLOR}\">solid: held by</span>; <span style=\"color:{BEYOND_COLOR}\">released when the holder lets go</span>; <span style=\"color:{CYCLE_COLOR}\">red: a deadlock</span>.</p>\n<div class=\"graph\">"
        );
        s.push_str(&svg);
        s.push_str("</div>\n");
    }
    use Cell::{Addr, Num, Text};
    let sections: [Section; 3] = [
        (
            "Locks held",
            "locks",
            &f["locks_held"],
            &[
                ("resource", Cell::SymbolOr("symbol", "address")),
                ("state", Text("state")),
                ("exclusive owner", Addr("exclusive_owner")),
                ("contention", Num("contention_count")),
                ("exclusive waiters", Num("exclusive_waiters")),
                ("shared waiters", Num("shared_waiters")),
            ],
        ),
        (
            "Top pool tags",
            "pooltags",
            &f["top_pool_tags"],
            &[
                ("tag", Text("tag")),
                ("nonpaged allocs", Num("nonpaged_allocs")),
                ("nonpaged bytes", Num("nonpaged_bytes")),
                ("paged allocs", Num("paged_allocs")),
                ("paged bytes", Num("paged_bytes")),
            ],
        ),
        (
            "Pending NBLs by holder",
            "nbls",
            &f["nbl_holders"],
            &[
                ("holder", Text("name")),
                ("kind", Text("kind")),
                ("handle", Addr("handle")),
                ("pending", Num("count")),
            ],
        ),
    ];
    for (title, id, items, cols) in sections {
        let Some(items) = items.as_array().filter(|i| !i.is_empty()) else {
            continue;
        };
        let _ = writeln!(s, "<h2>{}</h2>", esc(title));
        let rows: Vec<Vec<String>> = items
            .iter()
            .map(|x| cols.iter().map(|(_, c)| c.of(x)).collect())
            .collect();
        let heads: Vec<&str> = cols.iter().map(|(h, _)| *h).collect();
        s.push_str(&table(id, &heads, &rows));
    }
    s.push_str("<h2>Commands</h2>\n");
    let rows: Vec<Vec<String>> = info["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|st| st.get("command").is_some())
        .map(|st| {
            vec![
                st["command"].as_str().unwrap_or("").to_string(),
                st["cost"]["round_trips"].to_string(),
                st["cost"]["bytes"].to_string(),
                st["error"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    s.push_str(&table(
        "commands",
        &["command", "round trips", "bytes", "error"],
        &rows,
    ));
    for (cmd, text) in texts {
        let _ = writeln!(
            s,
            "<details><summary>{}</summary><pre>{}</pre></details>",
            esc(cmd),
            esc(text)
        );
    }
    let _ = write!(s, "<script>{SCRIPT}</script>\n</body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn addresses_read_from_numbers_and_strings() {
        assert_eq!(
            addr_of(&json!(0xffffc18a00120638u64)),
            Some(0xffffc18a00120638)
        );
        assert_eq!(
            addr_of(&json!("0xffffc18a00120638")),
            Some(0xffffc18a00120638)
        );
        assert_eq!(addr_of(&json!("0x0000000000000010")), Some(0x10));
        for bad in [
            json!("ffffc18a00120638"),
            json!("0x"),
            json!(null),
            json!(-1),
            json!("0xg"),
        ] {
            assert_eq!(addr_of(&bad), None, "{bad}");
        }
        assert_eq!(windbg(0xffffc18a00120638), "ffffc18a`00120638");
    }

    /// The deadlock of the simulator, with addresses as numbers or as strings.
    fn deadlock(as_strings: bool) -> Value {
        let a = |x: u64| {
            if as_strings {
                json!(format!("0x{x:016x}"))
            } else {
                json!(x)
            }
        };
        let (t1, t2, t3) = (
            0xffffc18a00120638u64,
            0xffffc18a00140638u64,
            0xffffc18a00160638u64,
        );
        let (r1, r2, m) = (
            0xffffc18a5d0500a0u64,
            0xffffc18a5d050100u64,
            0xffffc18a5d050200u64,
        );
        let queued: Vec<u64> = (0..6).map(|i| 0xffffc18a00200000 + i * 0x1000).collect();
        let mut edges = vec![
            json!({ "waiter": a(t1), "object": a(r2), "symbol": null, "kind": "ERESOURCE (exclusive wait)", "owner": a(t2) }),
            json!({ "waiter": a(t2), "object": a(r1), "symbol": "nt!PiEngineLock", "kind": "ERESOURCE (exclusive wait)", "owner": a(t1) }),
            json!({ "waiter": a(t3), "object": a(m), "symbol": null, "kind": "Mutant", "owner": a(t1) }),
        ];
        let mut threads = vec![
            json!({ "thread": a(t1), "image": "vmcompute.exe", "pid": 0x2a0, "tid": 0x1c8, "state": "Waiting", "wait_reason": "WrResource", "wait_seconds": 95.0, "blocker": "CimFS!CimFsMountImage+0x2d4", "waits": [] }),
            json!({ "thread": a(t2), "image": "containerd.exe", "pid": 0x3a0, "tid": 0x1d8, "state": "Waiting", "wait_reason": "WrResource", "wait_seconds": 94.0, "blocker": "CimFS!CimFsMountImage+0x2d4", "waits": [] }),
            json!({ "thread": a(t3), "image": "containerd.exe", "pid": 0x3a0, "tid": 0x1e8, "state": "Waiting", "wait_reason": "Executive", "wait_seconds": 88.0, "blocker": "wcifs!WcSetupLayerMapping+0x81", "waits": [] }),
        ];
        for (i, q) in queued.iter().enumerate() {
            edges.push(json!({ "waiter": a(*q), "object": a(r1), "symbol": "nt!PiEngineLock", "kind": "ERESOURCE (shared wait)", "owner": a(t1) }));
            threads.push(json!({ "thread": a(*q), "image": if i % 2 == 0 { "vmcompute.exe" } else { "containerd.exe" }, "pid": 1, "tid": 2, "state": "Waiting", "wait_reason": "WrResource", "wait_seconds": 60.0, "waits": [] }));
        }
        json!({
            "target": "<b>x</b>",
            "trigger": { "kind": "manual", "detail": "a & b", "sample": { "findings": [
                { "kind": "deadlock", "severity": "error", "summary": "wait-for cycle of 2 threads" },
                { "kind": "long-wait", "severity": "warning", "summary": "thread waited 95 s" } ] } },
            "summary": ["deadlock: 2 threads", "lock nt!PiEngineLock held exclusive", "top pool tag Muta (4096 nonpaged bytes)"],
            "summary_severity": ["error", "warning", "information"],
            "findings": {
                "wait_edges": edges,
                "wait_threads": threads,
                "deadlock_cycles": [ { "threads": [a(t1), a(t2)] } ],
                "locks_held": [
                    { "address": a(r1), "symbol": "nt!PiEngineLock", "state": "exclusive",
                      "exclusive_owner": a(0xabc), "contention_count": 6, "exclusive_waiters": 1, "shared_waiters": 0 },
                    { "address": a(0xfff8), "symbol": null, "state": "shared",
                      "exclusive_owner": null, "contention_count": 0, "exclusive_waiters": 0, "shared_waiters": 2 },
                ],
            },
            "steps": [ { "command": "!locks", "cost": { "round_trips": 3, "bytes": 9 } } ],
        })
    }

    #[test]
    fn the_page_names_objects_and_grades_findings() {
        for as_strings in [false, true] {
            let info = deadlock(as_strings);
            let p = page(
                &info,
                &[("!locks".into(), "<script>alert(1)</script>".into())],
            );
            assert!(p.contains("&lt;b&gt;x&lt;/b&gt;") && !p.contains("<b>x</b>"));
            assert!(p.contains("&lt;script&gt;alert(1)"));
            // Objects by symbol and type, addresses whole in WinDbg's form, threads with
            // their process and wait.
            assert!(p.contains(">nt!PiEngineLock</text>"), "{p}");
            assert!(
                p.contains(">ERESOURCE</text>") && p.contains(">KMUTANT</text>"),
                "{p}"
            );
            assert!(p.contains(">thread ffffc18a`00120638</text>"), "{p}");
            assert!(p.contains(">ffffc18a`5d050100</text>"), "{p}");
            assert!(p.contains(">vmcompute.exe 2a0.1c8</text>"), "{p}");
            assert!(p.contains(">WrResource 95 s</text>"), "{p}");
            assert!(!p.contains('…'), "nothing is cut short: {p}");
            // Three threads, and the six alike waiters as one box.
            assert_eq!(p.matches("class=\"node thread\"").count(), 3, "{p}");
            assert_eq!(p.matches("class=\"node group\"").count(), 1, "{p}");
            assert!(p.contains(">6 threads</text>") && p.contains(">vmcompute.exe x3</text>"));
            assert_eq!(p.matches("class=\"node object\"").count(), 3);
            // The cycle's four edges are red, the rest in their colours, each with its marker.
            assert_eq!(p.matches("class=\"edge wait cycle\"").count(), 2, "{p}");
            assert_eq!(p.matches("class=\"edge held cycle\"").count(), 2, "{p}");
            assert_eq!(p.matches("class=\"edge wait\"").count(), 2, "{p}");
            assert_eq!(p.matches("class=\"edge held\"").count(), 1, "{p}");
            assert!(p.contains(&format!("stroke=\"{WAIT_COLOR}\"")));
            assert!(p.contains("marker-end=\"url(#arrow-cycle)\""));
            // A graph that scales to its column.
            assert!(p.contains("width=\"100%\"") && p.contains("viewBox=\"0 0 "));
            // Findings by severity: only errors are errors.
            assert!(p.contains("<li class=\"finding error\"><span class=\"sev\">error</span> deadlock: 2 threads</li>"), "{p}");
            assert!(p.contains("<li class=\"finding warning\"><span class=\"sev\">warning</span> lock nt!PiEngineLock held exclusive</li>"));
            assert!(p.contains(
                "<li class=\"finding info\"><span class=\"sev\">info</span> top pool tag Muta"
            ));
            assert!(p.contains("<li class=\"finding error\"><span class=\"sev\">error</span> sample: wait-for cycle"));
            assert!(p.contains("<li class=\"finding warning\"><span class=\"sev\">warning</span> sample: thread waited"));
            // The held locks' table: a symbol or the address, an owner or nothing.
            assert!(p.contains("<table class=\"sortable\" id=\"locks\">"));
            assert!(p.contains("<tr><td>nt!PiEngineLock</td><td>exclusive</td><td>00000000`00000abc</td><td>6</td><td>1</td><td>0</td></tr>"), "{p}");
            assert!(
                p.contains("<tr><td>00000000`0000fff8</td><td>shared</td><td></td><td>0</td><td>0</td><td>2</td></tr>"),
                "{p}"
            );
            assert!(!p.contains("id=\"pooltags\""), "no table without rows");
            assert!(
                !p.contains("src=") && !p.contains("href=\"http") && !p.contains("url(http"),
                "nothing loads from the network"
            );
        }
        assert!(STYLE.contains(".finding.error{color:#b00020;font-weight:bold}"));
        assert!(
            !STYLE.contains(".finding.info{color:#b00020")
                && !STYLE.contains(".finding.warning{color:#b00020")
        );
    }

    fn num_attr(s: &str, k: &str) -> f64 {
        let i = s.find(&format!(" {k}=\"")).unwrap() + k.len() + 3;
        s[i..].split('"').next().unwrap().parse().unwrap()
    }

    /// The (x2, y2, dx, dy) of each edge and the boxes (x, y, w, h) of the picture.
    fn geometry(svg: &str) -> (Vec<[f64; 4]>, Vec<[f64; 4]>) {
        let num = num_attr;
        let edges = svg
            .split("<path class=\"edge")
            .skip(1)
            .map(|e| {
                [
                    num(e, "data-x2"),
                    num(e, "data-y2"),
                    num(e, "data-dx"),
                    num(e, "data-dy"),
                ]
            })
            .collect();
        let boxes = svg
            .split("<rect ")
            .skip(1)
            .map(|r| {
                let r = format!(" {r}");
                [
                    num(&r, "x"),
                    num(&r, "y"),
                    num(&r, "width"),
                    num(&r, "height"),
                ]
            })
            .collect();
        (edges, boxes)
    }

    #[test]
    fn every_arrow_ends_on_the_border_of_its_box() {
        let svg = graph_svg(&deadlock(false)["findings"]).unwrap();
        let (edges, boxes) = geometry(&svg);
        assert_eq!(edges.len(), 7);
        let on_border = |x: f64, y: f64, b: &[f64; 4]| {
            let inside = |v: f64, lo: f64, len: f64| v >= lo - 0.2 && v <= lo + len + 0.2;
            let near = |v: f64, e: f64| (v - e).abs() < 0.2;
            inside(x, b[0], b[2])
                && inside(y, b[1], b[3])
                && (near(x, b[0]) || near(x, b[0] + b[2]) || near(y, b[1]) || near(y, b[1] + b[3]))
        };
        for [x, y, dx, dy] in &edges {
            assert!(
                boxes.iter().any(|b| on_border(*x, *y, b)),
                "edge tip ({x}, {y}) on no border: {svg}"
            );
            // Going on past the tip enters the box; the arrowhead before it is outside every box.
            let (bx, by) = (x - dx * ARROW / 2.0, y - dy * ARROW / 2.0);
            assert!(
                !boxes
                    .iter()
                    .any(|b| bx > b[0] && bx < b[0] + b[2] && by > b[1] && by < b[1] + b[3]),
                "the arrowhead ending at ({x}, {y}) is under a box"
            );
        }
        // Curves (the edge closing the cycle) stay inside the picture.
        let vw = num_attr(&svg, "data-vw");
        for d in svg
            .split(" d=\"M")
            .skip(1)
            .filter_map(|d| d.split('"').next())
        {
            let n: Vec<f64> = d
                .split([',', ' ', 'Q', 'L'])
                .filter_map(|x| x.parse().ok())
                .collect();
            if let [x0, _, cx, _, x1, _] = n[..] {
                for i in 0..=32 {
                    let t = f64::from(i) / 32.0;
                    let x = (1.0 - t) * (1.0 - t) * x0 + 2.0 * t * (1.0 - t) * cx + t * t * x1;
                    assert!(
                        x >= 0.0 && x <= vw,
                        "the curve {d} leaves the picture ({vw} wide)"
                    );
                }
            }
        }
        // Boxes do not overlap.
        for (i, a) in boxes.iter().enumerate() {
            for b in &boxes[i + 1..] {
                let apart = a[0] + a[2] <= b[0]
                    || b[0] + b[2] <= a[0]
                    || a[1] + a[3] <= b[1]
                    || b[1] + b[3] <= a[1];
                assert!(apart, "{a:?} overlaps {b:?}");
            }
        }
    }

    #[test]
    fn a_wide_graph_goes_on_over_rows() {
        // Forty threads, each waiting on its own mutant held by its own owner.
        let edges: Vec<Value> = (0..40u64)
            .map(|i| {
                json!({ "waiter": 0x1000 + i, "object": 0x9000 + i, "kind": "Mutant",
                        "owner": format!("0x{:016x}", 0x5000 + i) })
            })
            .collect();
        let svg = graph_svg(&json!({ "wait_edges": edges })).unwrap();
        let vw = num_attr(&svg, "data-vw");
        assert!(vw <= MAX_ROW + 2.0 * MARGIN, "{vw} wide");
        assert_eq!(svg.matches("class=\"node thread\"").count(), 80);
        let (edges, boxes) = geometry(&svg);
        assert_eq!(edges.len(), 80);
        for (i, a) in boxes.iter().enumerate() {
            assert!(a[0] >= 0.0 && a[0] + a[2] <= vw);
            for b in &boxes[i + 1..] {
                let apart = a[0] + a[2] <= b[0]
                    || b[0] + b[2] <= a[0]
                    || a[1] + a[3] <= b[1]
                    || b[1] + b[3] <= a[1];
                assert!(apart, "{a:?} overlaps {b:?}");
            }
        }
    }

    #[test]
    fn the_chain_goes_on_to_the_miniport_holding_the_packets() {
        let f = json!({
            "wait_edges": [ { "waiter": 1, "object": "0xfffff8005d0500a0", "symbol": "nt!PiEngineLock",
                              "kind": "ERESOURCE (exclusive wait)", "owner": 2 } ],
            "wait_threads": [
                { "thread": 1, "image": "System", "wait_reason": "WrResource", "wait_seconds": 182.0 },
                { "thread": 2, "image": "System", "wait_reason": "Executive", "wait_seconds": 257.0,
                  "blocker": "nt!ExWaitForRundownProtectionReleaseCacheAware+0xd6" } ],
            "wait_ends": [ { "thread": 2, "object": "0xffff800000001020", "type_name": "NotificationEvent",
                             "symbol": null, "via": "rundown protection", "held_by": ["0xffff900000002000"] } ],
            "nbl_holders": [ { "handle": "0xffff900000002000", "name": "My Ethernet 1Gb 4-port Adapter",
                               "kind": "NetAdapter", "count": 1854 } ],
        });
        let svg = graph_svg(&f).unwrap();
        for label in [
            ">nt!PiEngineLock</text>",
            ">KEVENT</text>",
            ">rundown protection</text>",
            ">NDIS miniport</text>",
            ">My Ethernet 1Gb 4-port Adapter</text>",
            ">ffff9000`00002000</text>",
            ">holds 1854 pending NBLs</text>",
            ">in nt!ExWaitForRundownProtectionReleaseCacheAware+0xd6</text>",
        ] {
            assert!(svg.contains(label), "{label}: {svg}");
        }
        assert_eq!(svg.matches("class=\"edge beyond\"").count(), 1, "{svg}");
        // thread → lock → owner → event → miniport: one layer below the other.
        let (edges, _) = geometry(&svg);
        assert_eq!(edges.len(), 4);
        assert!(
            edges.iter().all(|e| e[3] > 0.99),
            "straight down: {edges:?}"
        );
    }
}
