//! Results too long for an agent's context: stored whole, summarised in the answer, and read
//! a page at a time (`output`), optionally only the lines that contain a string.

use std::collections::{BTreeMap, VecDeque};

/// Results kept (the oldest are forgotten past this).
pub const KEPT: usize = 64;
/// Most lines one page gives.
pub const MAX_PAGE_LINES: usize = 2000;

/// A stored result: its text as lines, and its JSON.
struct Stored {
    lines: Vec<String>,
    json: serde_json::Value,
    what: String,
}

/// The stored results by id.
#[derive(Default)]
pub struct Pages {
    next: u64,
    order: VecDeque<String>,
    by_id: BTreeMap<String, Stored>,
}

/// One page of a stored result.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct Page {
    /// The stored result.
    pub id: String,
    /// What it is (`!process 0 7 on web-01`).
    pub what: String,
    /// Lines in the whole text (those containing the filter, with one).
    pub total_lines: usize,
    /// The first line given (0-based, among those counted in `total_lines`).
    pub offset: usize,
    /// The lines.
    pub lines: Vec<String>,
    /// Where the next page starts, when there is one.
    pub next_offset: Option<usize>,
    /// With `json`: the stored JSON whole (only asked for on purpose: it may be long).
    pub json: Option<serde_json::Value>,
}

impl Pages {
    /// Stores a result; its id.
    pub fn put(&mut self, what: String, text: &str, json: serde_json::Value) -> String {
        self.next += 1;
        let id = format!("out-{}", self.next);
        self.by_id.insert(
            id.clone(),
            Stored {
                lines: text.lines().map(str::to_string).collect(),
                json,
                what,
            },
        );
        self.order.push_back(id.clone());
        while self.order.len() > KEPT {
            if let Some(old) = self.order.pop_front() {
                self.by_id.remove(&old);
            }
        }
        id
    }

    /// A page of the stored result `id`: `limit` lines from `offset`, of the lines containing
    /// `filter` when one is given (case-insensitively).
    pub fn page(
        &self,
        id: &str,
        offset: usize,
        limit: usize,
        filter: Option<&str>,
        json: bool,
    ) -> Result<Page, String> {
        let s = self.by_id.get(id).ok_or_else(|| {
            format!(
                "no stored output {id:?} (the last {KEPT} are kept: {})",
                self.order.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
        let needle = filter.map(str::to_lowercase);
        let chosen: Vec<&String> = s
            .lines
            .iter()
            .filter(|l| {
                needle
                    .as_deref()
                    .is_none_or(|n| l.to_lowercase().contains(n))
            })
            .collect();
        let limit = limit.clamp(1, MAX_PAGE_LINES);
        let lines: Vec<String> = chosen
            .iter()
            .skip(offset)
            .take(limit)
            .map(|l| (*l).clone())
            .collect();
        let end = offset.saturating_add(lines.len());
        Ok(Page {
            id: id.to_string(),
            what: s.what.clone(),
            total_lines: chosen.len(),
            offset,
            lines,
            next_offset: (end < chosen.len()).then_some(end),
            json: json.then(|| s.json.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_filters_and_forgetting() {
        let mut p = Pages::default();
        let text: String = (0..250).map(|i| format!("line {i}\n")).collect();
        let id = p.put("x".into(), &text, serde_json::json!({ "n": 250 }));
        let a = p.page(&id, 0, 100, None, false).unwrap();
        assert_eq!(
            (a.total_lines, a.lines.len(), a.next_offset),
            (250, 100, Some(100))
        );
        assert_eq!(a.lines[0], "line 0");
        let b = p.page(&id, 200, 100, None, true).unwrap();
        assert_eq!((b.lines.len(), b.next_offset), (50, None));
        assert_eq!(b.json.unwrap()["n"], 250);
        // Lines with "7": 7, 17, 27, … 247 and 70–79, 170–179.
        let f = p.page(&id, 0, 1000, Some("7"), false).unwrap();
        assert!(f.lines.iter().all(|l| l.contains('7')));
        assert_eq!(f.total_lines, f.lines.len());
        assert_eq!(f.total_lines, 25 + 20 - 2);
        // The oldest are forgotten past KEPT, and the error says which are kept.
        for i in 0..KEPT {
            p.put(format!("{i}"), "a", serde_json::Value::Null);
        }
        assert!(p.page(&id, 0, 1, None, false).unwrap_err().contains("kept"));
    }
}
