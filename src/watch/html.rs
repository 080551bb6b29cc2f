//! `report.html`: one self-contained page (no network) for the person who opens the bundle:
//! the findings first, the wait-for graph as SVG (threads, the objects they wait on, wait
//! times; cycles in red), tables that sort when a heading is clicked, then each command's text.

use std::collections::BTreeMap;
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

fn hex(v: &Value) -> String {
    addr_of(v).map_or_else(|| "?".into(), |a| format!("{a:x}"))
}

/// An address from the JSON: a `"0x…"` string, or a number.
fn addr_of(v: &Value) -> Option<u64> {
    kdnet_commands::hex::parse(v)
}

fn short(a: u64) -> String {
    // The low half tells kernel addresses apart and fits in a box.
    format!("…{:08x}", a as u32)
}

/// The color of cycle edges (tests look for it in a screenshot).
pub const CYCLE_COLOR: &str = "#d0021b";

/// The wait-for graph: threads on a circle, each object between its waiters and its owner.
pub fn graph_svg(edges: &[Value], threads: &[Value], cycles: &[Value]) -> Option<String> {
    if edges.is_empty() {
        return None;
    }
    let in_cycle: std::collections::BTreeSet<u64> = cycles
        .iter()
        .flat_map(|c| c["threads"].as_array().into_iter().flatten())
        .filter_map(addr_of)
        .collect();
    let info: BTreeMap<u64, &Value> = threads
        .iter()
        .filter_map(|t| addr_of(&t["thread"]).map(|a| (a, t)))
        .collect();
    // Threads: cycle members first, then the rest in address order; bounded for the page.
    let mut ts: Vec<u64> = Vec::new();
    for e in edges {
        for k in ["waiter", "owner"] {
            if let Some(t) = addr_of(&e[k])
                && !ts.contains(&t)
            {
                ts.push(t);
            }
        }
    }
    ts.sort_by_key(|t| (!in_cycle.contains(t), *t));
    ts.truncate(64);
    let n = ts.len().max(1) as f64;
    let r = 120.0 + 22.0 * n;
    let (w, h) = (2.0 * r + 360.0, 2.0 * r + 120.0);
    let (cx, cy) = (w / 2.0, h / 2.0);
    let pos: BTreeMap<u64, (f64, f64)> = ts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let a = std::f64::consts::TAU * i as f64 / n - std::f64::consts::FRAC_PI_2;
            (*t, (cx + r * a.cos(), cy + r * a.sin()))
        })
        .collect();
    // Objects: pulled toward the middle from the mean of the threads on them.
    let mut objects: BTreeMap<u64, (String, Vec<u64>)> = BTreeMap::new();
    for e in edges {
        let (Some(o), Some(wt), Some(ow)) = (
            addr_of(&e["object"]),
            addr_of(&e["waiter"]),
            addr_of(&e["owner"]),
        ) else {
            continue;
        };
        let entry = objects
            .entry(o)
            .or_insert_with(|| (e["kind"].as_str().unwrap_or("").to_string(), Vec::new()));
        entry.1.push(wt);
        entry.1.push(ow);
    }
    let opos: BTreeMap<u64, (f64, f64)> = objects
        .iter()
        .map(|(o, (_, ts))| {
            let pts: Vec<(f64, f64)> = ts.iter().filter_map(|t| pos.get(t).copied()).collect();
            let k = pts.len().max(1) as f64;
            let (mx, my) = pts
                .iter()
                .fold((0.0, 0.0), |a, p| (a.0 + p.0 / k, a.1 + p.1 / k));
            let p = if pts.is_empty() {
                (cx, cy)
            } else {
                (cx + (mx - cx) * 0.55, cy + (my - cy) * 0.55)
            };
            (*o, p)
        })
        .collect();
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg id="waitgraph" xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{h:.0}" viewBox="0 0 {w:.0} {h:.0}" font-family="monospace" font-size="11">
<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker>
<marker id="arrowred" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{CYCLE_COLOR}"/></marker></defs>
"##
    );
    for e in edges {
        let (Some(o), Some(wt), Some(ow)) = (
            addr_of(&e["object"]),
            addr_of(&e["waiter"]),
            addr_of(&e["owner"]),
        ) else {
            continue;
        };
        let (Some(a), Some(b), Some(c)) = (pos.get(&wt), opos.get(&o), pos.get(&ow)) else {
            continue;
        };
        let hot = in_cycle.contains(&wt) && in_cycle.contains(&ow);
        let (color, marker, width) = if hot {
            (CYCLE_COLOR, "arrowred", 3)
        } else {
            ("#777", "arrow", 1)
        };
        let _ = writeln!(
            s,
            r#"<line class="wait{}" x1="{:.0}" y1="{:.0}" x2="{:.0}" y2="{:.0}" stroke="{color}" stroke-width="{width}" stroke-dasharray="5,3" marker-end="url(#{marker})"><title>{} waits for {}</title></line>"#,
            if hot { " cycle" } else { "" },
            a.0,
            a.1,
            b.0,
            b.1,
            hex(&e["waiter"]),
            hex(&e["object"])
        );
        let _ = writeln!(
            s,
            r#"<line class="held{}" x1="{:.0}" y1="{:.0}" x2="{:.0}" y2="{:.0}" stroke="{color}" stroke-width="{width}" marker-end="url(#{marker})"><title>{} held by {}</title></line>"#,
            if hot { " cycle" } else { "" },
            b.0,
            b.1,
            c.0,
            c.1,
            hex(&e["object"]),
            hex(&e["owner"])
        );
    }
    for (o, (kind, _)) in &objects {
        let Some(p) = opos.get(o) else { continue };
        let _ = writeln!(
            s,
            r##"<g class="object"><ellipse cx="{:.0}" cy="{:.0}" rx="72" ry="17" fill="#fff7d6" stroke="#b08900"/><text x="{:.0}" y="{:.0}" text-anchor="middle">{}</text><text x="{:.0}" y="{:.0}" text-anchor="middle" font-size="9">{}</text><title>{kind} {o:x}</title></g>"##,
            p.0,
            p.1,
            p.0,
            p.1 - 2.0,
            esc(&short(*o)),
            p.0,
            p.1 + 10.0,
            esc(&kind.chars().take(24).collect::<String>())
        );
    }
    for t in &ts {
        let Some(p) = pos.get(t) else { continue };
        let i = info.get(t);
        let image = i.and_then(|v| v["image"].as_str()).unwrap_or("");
        let wait = match (
            i.and_then(|v| v["wait_reason"].as_str()),
            i.and_then(|v| v["wait_seconds"].as_f64()),
        ) {
            (Some(r), Some(sec)) => format!("{r} {sec:.0} s"),
            (Some(r), None) => r.to_string(),
            _ => i
                .and_then(|v| v["state"].as_str())
                .unwrap_or("")
                .to_string(),
        };
        let stroke = if in_cycle.contains(t) {
            CYCLE_COLOR
        } else {
            "#3465a4"
        };
        let _ = writeln!(
            s,
            r##"<g class="thread"><rect x="{:.0}" y="{:.0}" width="150" height="44" rx="5" fill="#eef3fb" stroke="{stroke}" stroke-width="2"/><text x="{:.0}" y="{:.0}" text-anchor="middle">{}</text><text x="{:.0}" y="{:.0}" text-anchor="middle">{}</text><text x="{:.0}" y="{:.0}" text-anchor="middle">{}</text><title>thread {t:x}</title></g>"##,
            p.0 - 75.0,
            p.1 - 22.0,
            p.0,
            p.1 - 8.0,
            esc(&short(*t)),
            p.0,
            p.1 + 5.0,
            esc(image),
            p.0,
            p.1 + 18.0,
            esc(&wait)
        );
    }
    s.push_str("</svg>\n");
    Some(s)
}

/// A table of the findings: title, id, the list, the columns (heading, cell).
type Section<'a> = (&'a str, &'a str, &'a Value, &'a [(&'a str, Cell)]);

/// How a table cell comes from an object.
enum Cell {
    /// A string field.
    Text(&'static str),
    /// A number field.
    Num(&'static str),
    /// An address field, in hex.
    Hex(&'static str),
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
            Cell::Hex(k) => addr_of(&v[*k]).map_or(String::new(), |a| format!("{a:x}")),
            Cell::SymbolOr(sym, a) => v[*sym]
                .as_str()
                .map_or_else(|| Cell::Hex(a).of(v), str::to_string),
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
.bad{color:#b00020;font-weight:bold}.ok{color:#2e7d32}ul.findings li{margin:.3em 0;font-size:1.05em}\
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
document.body.dataset.ready='1';";

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
    for l in lines {
        let _ = writeln!(s, "<li class=\"bad\">{}</li>", esc(l));
    }
    let sampled = info["trigger"]["sample"]["findings"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    for x in sampled.iter().take(8) {
        let _ = writeln!(
            s,
            "<li>sample: {}</li>",
            esc(x["summary"].as_str().unwrap_or(""))
        );
    }
    if sampled.len() > 8 {
        let _ = writeln!(
            s,
            "<li>sample: … and {} more (report.json has them all)</li>",
            sampled.len() - 8
        );
    }
    s.push_str("</ul>\n");
    let empty = Vec::new();
    let edges = f["wait_edges"].as_array().unwrap_or(&empty);
    if let Some(svg) = graph_svg(
        edges,
        f["wait_threads"].as_array().unwrap_or(&empty),
        f["deadlock_cycles"].as_array().unwrap_or(&empty),
    ) {
        s.push_str("<h2>Wait-for graph</h2>\n<p>Boxes are threads (process, wait reason and time), ellipses what they wait on; a dashed arrow means “waits for”, a solid one “held by”; red is a cycle.</p>\n");
        s.push_str(&svg);
    }
    use Cell::{Hex, Num, Text};
    let sections: [Section; 3] = [
        (
            "Locks held",
            "locks",
            &f["locks_held"],
            &[
                ("resource", Cell::SymbolOr("symbol", "address")),
                ("state", Text("state")),
                ("exclusive owner", Hex("exclusive_owner")),
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
                ("handle", Hex("handle")),
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
    fn text_is_escaped_and_the_cycle_is_red() {
        let info = json!({
            "target": "<b>x</b>",
            "trigger": { "kind": "manual", "detail": "a & b" },
            "summary": ["deadlock: 2 threads"],
            "findings": {
                "wait_edges": [
                    { "waiter": 1, "object": 10, "kind": "ERESOURCE", "owner": 2 },
                    { "waiter": 2, "object": 11, "kind": "ERESOURCE", "owner": 1 },
                    { "waiter": 3, "object": 11, "kind": "Mutant", "owner": 1 },
                ],
                "wait_threads": [ { "thread": 1, "image": "a.exe", "wait_reason": "WrResource", "wait_seconds": 95.0 } ],
                "deadlock_cycles": [ { "threads": [1, 2] } ],
                "locks_held": [
                    { "address": 0xfff0, "symbol": "nt!PiEngineLock", "state": "exclusive",
                      "exclusive_owner": 0xabc, "contention_count": 6, "exclusive_waiters": 1, "shared_waiters": 0 },
                    { "address": 0xfff8, "symbol": null, "state": "shared",
                      "exclusive_owner": null, "contention_count": 0, "exclusive_waiters": 0, "shared_waiters": 2 },
                ],
            },
            "steps": [ { "command": "!locks", "cost": { "round_trips": 3, "bytes": 9 } } ],
        });
        let p = page(
            &info,
            &[("!locks".into(), "<script>alert(1)</script>".into())],
        );
        assert!(p.contains("&lt;b&gt;x&lt;/b&gt;") && !p.contains("<b>x</b>"));
        assert!(p.contains("&lt;script&gt;alert(1)"));
        assert!(p.contains("WrResource 95 s"));
        assert_eq!(p.matches("class=\"thread\"").count(), 3);
        assert_eq!(p.matches("class=\"object\"").count(), 2);
        // Both edges of the two cycle members' waits are red; the third waiter's are not.
        assert_eq!(p.matches("class=\"wait cycle\"").count(), 2);
        assert_eq!(p.matches("class=\"held cycle\"").count(), 2);
        assert_eq!(p.matches("class=\"wait\"").count(), 1);
        // The held locks' table: a symbol or the address, an owner or nothing.
        assert!(p.contains("<table class=\"sortable\" id=\"locks\">"));
        assert!(p.contains("<tr><td>nt!PiEngineLock</td><td>exclusive</td><td>abc</td><td>6</td><td>1</td><td>0</td></tr>"), "{p}");
        assert!(
            p.contains(
                "<tr><td>fff8</td><td>shared</td><td></td><td>0</td><td>0</td><td>2</td></tr>"
            ),
            "{p}"
        );
        assert!(!p.contains("id=\"pooltags\""), "no table without rows");
        assert!(
            !p.contains("src=") && !p.contains("href=\"http") && !p.contains("url(http"),
            "nothing loads from the network"
        );
    }
}
