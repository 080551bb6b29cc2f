//! `!poolused [FLAGS] [PATTERN]`: outstanding allocations and bytes per pool tag, from the
//! tracker tables.

use schemars::JsonSchema;
use serde::Serialize;

use crate::args::{Args, Syntax, opt_word};
use crate::engine::{CmdError, Engine};
use crate::registry::Render;
use kdnet_model::nt::pool::{self, TagUse};

/// `!poolused [FLAGS] [PATTERN]` (a first word that is not a small hex number is the pattern).
pub const SYNTAX: Syntax = Syntax::params(&[opt_word("FLAGS"), opt_word("PATTERN")]);

/// What `!poolused` shows.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PoolUsed {
    /// The order of `tags`.
    pub sorted_by: SortedBy,
    /// Each tag with outstanding allocations (those matching the pattern).
    pub tags: Vec<TagRow>,
    /// The sums over `tags`.
    pub total: Usage,
}

/// The order of the tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SortedBy {
    /// By tag.
    Tag,
    /// By non-paged bytes, the most first (flag 2).
    NonPaged,
    /// By paged bytes, the most first (flag 4).
    Paged,
}

impl SortedBy {
    fn title(self) -> &'static str {
        match self {
            SortedBy::Tag => "Tag",
            SortedBy::NonPaged => "NonPaged",
            SortedBy::Paged => "Paged",
        }
    }
}

/// One tag's counters.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TagRow {
    /// The tag (four characters, the protected bit cleared).
    pub tag: String,
    /// Non-paged allocations outstanding.
    pub nonpaged_allocs: i64,
    /// Non-paged bytes outstanding.
    pub nonpaged_bytes: i64,
    /// Paged allocations outstanding.
    pub paged_allocs: i64,
    /// Paged bytes outstanding.
    pub paged_bytes: i64,
}

/// Counters summed over tags.
#[derive(Debug, Clone, Copy, Default, Serialize, JsonSchema)]
pub struct Usage {
    /// Non-paged allocations outstanding.
    pub nonpaged_allocs: i64,
    /// Non-paged bytes outstanding.
    pub nonpaged_bytes: i64,
    /// Paged allocations outstanding.
    pub paged_allocs: i64,
    /// Paged bytes outstanding.
    pub paged_bytes: i64,
}

fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi].eq_ignore_ascii_case(&t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// `!poolused [FLAGS] [PATTERN]`: 2 sorts by non-paged bytes, 4 by paged bytes.
pub fn run(e: &mut Engine, _verb: &str, args: &Args<'_>) -> Result<PoolUsed, CmdError> {
    let mut flags = 0u64;
    let mut pattern = args.text("PATTERN");
    // The first word is the flags when it is a small hex number, else the pattern.
    if let Some(a) = args.text("FLAGS") {
        match u64::from_str_radix(a.trim_start_matches("0x"), 16) {
            Ok(f) if a.len() <= 3 => flags = f,
            _ => pattern = Some(pattern.unwrap_or(a)),
        }
    }
    let usage = pool::pool_usage(&mut e.kernel)?;
    let mut rows: Vec<(String, TagUse)> = usage
        .into_iter()
        .map(|(k, v)| (pool::tag_text(k), v))
        .filter(|(t, _)| pattern.is_none_or(|p| glob(p, t.trim_end())))
        .collect();
    let by = if flags & 2 != 0 {
        SortedBy::NonPaged
    } else if flags & 4 != 0 {
        SortedBy::Paged
    } else {
        SortedBy::Tag
    };
    match by {
        SortedBy::NonPaged => rows.sort_by_key(|r| std::cmp::Reverse(r.1.nonpaged_bytes)),
        SortedBy::Paged => rows.sort_by_key(|r| std::cmp::Reverse(r.1.paged_bytes)),
        SortedBy::Tag => rows.sort_by(|a, b| a.0.cmp(&b.0)),
    }
    let mut total = Usage::default();
    for (_, u) in &rows {
        total.nonpaged_allocs = total.nonpaged_allocs.wrapping_add(u.nonpaged_allocs);
        total.nonpaged_bytes = total.nonpaged_bytes.wrapping_add(u.nonpaged_bytes);
        total.paged_allocs = total.paged_allocs.wrapping_add(u.paged_allocs);
        total.paged_bytes = total.paged_bytes.wrapping_add(u.paged_bytes);
    }
    Ok(PoolUsed {
        sorted_by: by,
        tags: rows
            .into_iter()
            .map(|(tag, u)| TagRow {
                tag,
                nonpaged_allocs: u.nonpaged_allocs,
                nonpaged_bytes: u.nonpaged_bytes,
                paged_allocs: u.paged_allocs,
                paged_bytes: u.paged_bytes,
            })
            .collect(),
        total,
    })
}

impl Render for PoolUsed {
    fn render(&self, out: &mut String) {
        out.push_str(&format!(
            "   Sorting by {}\n\n               NonPaged                  Paged\n Tag     Allocs         Used     Allocs         Used\n\n",
            self.sorted_by.title()
        ));
        for t in &self.tags {
            out.push_str(&format!(
                " {:<4} {:>10} {:>12} {:>10} {:>12}\n",
                t.tag, t.nonpaged_allocs, t.nonpaged_bytes, t.paged_allocs, t.paged_bytes
            ));
        }
        let total = &self.total;
        out.push_str(&format!(
            "\n TOTAL {:>9} {:>12} {:>10} {:>12}\n",
            total.nonpaged_allocs, total.nonpaged_bytes, total.paged_allocs, total.paged_bytes
        ));
    }
}
