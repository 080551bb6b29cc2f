//! `s [-[1]TYPE] RANGE PATTERN`: search kernel memory for bytes, words, dwords, qwords, an
//! ASCII or a UTF-16 string. On a live target each run of mapped pages is searched on the
//! target's side (one request per match, whatever the run's length); elsewhere the run is read
//! through the long reads. Unmapped pages cannot hold a match: they are counted, not read.

use std::ops::ControlFlow;

use kdnet_model::mem::Piece;
use schemars::JsonSchema;
use serde::Serialize;

use super::display::{lines, read};
use crate::args::{Args, Kind, Param, Syntax, tokens};
use crate::engine::{CmdError, Engine, addr};
use crate::registry::Render;

/// `s` takes its own option spelling (`-[1]d`): the rest of the line, as written.
pub(crate) const SYNTAX: Syntax = Syntax::params(&[Param {
    name: "ARGS",
    kind: Kind::Rest,
    optional: false,
}]);

/// The usage line.
pub(crate) const USAGE: &str = "s [-[1]b|w|d|q|a|u] ADDR (END | L[?]BYTES) PATTERN";

/// Longest range searched without `L?`.
const MAX_RANGE: u64 = 256 << 20;
/// Longest range searched with `L?`.
const MAX_RANGE_FORCED: u64 = 1 << 40;
/// Most matches reported.
const MAX_HITS: usize = 4096;
/// Longest pattern.
const MAX_PATTERN: usize = 512;
/// Longest run of mapped pages searched in one request.
const MAX_RUN: u64 = 16 << 20;
const PAGE: u64 = 0x1000;

/// What `s` found.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Found {
    /// Where the search began.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub start: u64,
    /// How many bytes it covered.
    pub length: u64,
    /// The element type: `b`, `w`, `d`, `q`, `a` or `u`.
    pub kind: String,
    /// The bytes searched for, as hex (`"48656c6c6f"`).
    pub pattern: String,
    /// The addresses of the matches, in order (aligned to the element for `w`, `d`, `q`).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Vec<crate::hex::Hex>")]
    pub hits: Vec<u64>,
    /// Bytes of the range in pages that are not mapped (nothing there to search).
    pub unmapped_bytes: u64,
    /// The memory each match's line shows (absent with `-[1]`).
    #[serde(skip)]
    pub lines: Vec<Vec<Option<u64>>>,
    /// `-[1]`: addresses only.
    #[serde(skip)]
    pub addresses_only: bool,
}

/// `s`'s arguments, sorted out.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Request<'a> {
    kind: char,
    addresses_only: bool,
    start: &'a str,
    /// `L` count (with `?` when forced) or END.
    extent: Extent<'a>,
    pattern: Vec<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Extent<'a> {
    Length(&'a str, bool),
    End(&'a str),
}

fn usage(why: impl std::fmt::Display) -> CmdError {
    CmdError::Usage(format!("s: {why}; usage: {USAGE}"))
}

fn request(text: &str) -> Result<Request<'_>, CmdError> {
    let mut it = tokens(text).map_err(usage)?.into_iter().peekable();
    let (mut kind, mut addresses_only) = ('b', false);
    if let Some(t) = it.peek().copied()
        && t.starts_with('-')
        && t[1..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '[')
    {
        it.next();
        let mut spec = &t[1..];
        if let Some(inner) = spec.strip_prefix('[') {
            let (flags, after) = inner
                .split_once(']')
                .ok_or_else(|| usage("an unclosed [ in the options"))?;
            for f in flags.chars() {
                match f {
                    '1' => addresses_only = true,
                    other => return Err(usage(format!("the flag {other} is not supported"))),
                }
            }
            spec = after;
        }
        kind = match spec {
            "b" | "w" | "d" | "q" | "a" | "u" => spec.chars().next().unwrap_or('b'),
            "" if !addresses_only => 'b',
            _ => return Err(usage(format!("unknown type {t}"))),
        };
    }
    let start = it.next().ok_or_else(|| usage("an address is needed"))?;
    let extent = match it.next() {
        Some(t) if t.starts_with(['L', 'l']) => {
            let spec = &t[1..];
            let (forced, spec) = match spec.strip_prefix('?') {
                Some(s) => (true, s),
                None => (false, spec),
            };
            let count = if spec.is_empty() {
                it.next().ok_or_else(|| usage("L needs a count"))?
            } else {
                spec
            };
            Extent::Length(count, forced)
        }
        Some(t) => Extent::End(t),
        None => return Err(usage("a range is needed")),
    };
    let pattern: Vec<&str> = it.collect();
    if pattern.is_empty() {
        return Err(usage("a pattern is needed"));
    }
    Ok(Request {
        kind,
        addresses_only,
        start,
        extent,
        pattern,
    })
}

/// A value written `'ABCD'`: its characters, first the most significant.
fn quoted(t: &str) -> Option<u64> {
    let inner = t.strip_prefix('\'')?.strip_suffix('\'')?;
    if inner.is_empty() || inner.len() > 8 || !inner.is_ascii() {
        return None;
    }
    Some(inner.bytes().fold(0u64, |v, b| (v << 8) | u64::from(b)))
}

/// The bytes to search for.
fn pattern_bytes(e: &mut Engine, kind: char, words: &[&str]) -> Result<Vec<u8>, CmdError> {
    let mut out = Vec::new();
    match kind {
        'a' | 'u' => {
            let text = words.join(" ");
            let text = text
                .strip_prefix('\'')
                .and_then(|t| t.strip_suffix('\''))
                .unwrap_or(&text);
            if kind == 'a' {
                out.extend_from_slice(text.as_bytes());
            } else {
                out.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
            }
        }
        _ => {
            let size = match kind {
                'w' => 2,
                'd' => 4,
                'q' => 8,
                _ => 1,
            };
            for w in words {
                let v = match quoted(w) {
                    Some(v) => v,
                    None => e.eval(w)?,
                };
                if size < 8 && v >> (8 * size) != 0 {
                    return Err(usage(format!("{w} does not fit in {size} byte(s)")));
                }
                out.extend_from_slice(&v.to_le_bytes()[..size]);
            }
        }
    }
    if out.is_empty() || out.len() > MAX_PATTERN {
        return Err(usage(format!(
            "the pattern is {} bytes (1 to {MAX_PATTERN})",
            out.len()
        )));
    }
    Ok(out)
}

/// Every match of `pattern` in `[from, to)` found by reading it (targets that cannot search).
fn scan(e: &mut Engine, from: u64, to: u64, pattern: &[u8], hits: &mut Vec<u64>) -> u64 {
    let mut unreadable = 0u64;
    // Keep the tail of each piece so a match across pieces is seen.
    let mut carry: Vec<u8> = Vec::new();
    let mut carry_at = from;
    e.kernel.mem.kread_range(from, to - from, |at, piece| {
        match piece {
            Piece::Read(b) => {
                let mut buf = std::mem::take(&mut carry);
                if buf.is_empty() || carry_at + buf.len() as u64 != at {
                    buf.clear();
                    carry_at = at;
                }
                buf.extend_from_slice(b);
                for (i, w) in buf.windows(pattern.len()).enumerate() {
                    if w == pattern {
                        let hit = carry_at + i as u64;
                        if hits.last() != Some(&hit) {
                            hits.push(hit);
                        }
                        if hits.len() > MAX_HITS {
                            return ControlFlow::Break(());
                        }
                    }
                }
                let keep = (pattern.len() - 1).min(buf.len());
                carry_at += (buf.len() - keep) as u64;
                carry = buf[buf.len() - keep..].to_vec();
            }
            Piece::Unreadable { len, .. } => {
                unreadable += len;
                carry.clear();
            }
        }
        ControlFlow::Continue(())
    });
    unreadable
}

/// Bytes the search should have covered but could not read: the result is not whole.
fn note_unread(e: &mut Engine, bytes: u64) {
    if bytes > 0 {
        e.kernel.note_incomplete(format!(
            "s: {bytes:#x} bytes of the range could not be read and were not searched"
        ));
    }
}

/// Searches `[start, end)`: the hits (unaligned ones included) and the bytes not mapped.
fn search(
    e: &mut Engine,
    start: u64,
    end: u64,
    pattern: &[u8],
) -> Result<(Vec<u64>, u64), CmdError> {
    let mut hits = Vec::new();
    if e.kernel.mem.virtual_only() {
        // A dump that keeps memory by virtual address: what it lacks was not searched.
        let missing = scan(e, start, end, pattern, &mut hits);
        note_unread(e, missing);
        return Ok((hits, 0));
    }
    let space = e.kernel.mem.kernel_space().map_err(CmdError::from)?;
    let mut unmapped = 0u64;
    let mut at = start;
    while at < end && hits.len() <= MAX_HITS {
        let Some(page) = e
            .kernel
            .mem
            .next_present(space, at, end)
            .map_err(CmdError::from)?
        else {
            unmapped += end - at;
            break;
        };
        let first = page.max(at);
        unmapped += first - at;
        let mut run_end = (page + PAGE).min(end);
        while run_end < end && run_end - first < MAX_RUN {
            match e.kernel.mem.translate(space, run_end) {
                Ok(_) => run_end = (run_end + PAGE).min(end),
                Err(_) => break,
            }
        }
        let mut from = first;
        while from < run_end && hits.len() <= MAX_HITS {
            match e.kernel.mem.search(from, run_end - from, pattern) {
                Some(r) => match r.map_err(CmdError::from)? {
                    Some(hit) if hit >= from && hit < run_end => {
                        hits.push(hit);
                        from = hit + 1;
                    }
                    _ => break,
                },
                None => {
                    // Mapped pages that could not be read were not searched.
                    let unread = scan(e, from, run_end, pattern, &mut hits);
                    note_unread(e, unread);
                    break;
                }
            }
        }
        at = run_end;
    }
    Ok((hits, unmapped))
}

pub(crate) fn run(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<Found, CmdError> {
    let r = request(a.text("ARGS").unwrap_or(""))?;
    let start = e.eval(r.start)?;
    let length = match r.extent {
        Extent::Length(n, forced) => {
            let n = e.eval(n)?;
            let limit = if forced { MAX_RANGE_FORCED } else { MAX_RANGE };
            if n == 0 || n > limit {
                return Err(usage(format!(
                    "a length of {n:#x} is out of range (1 to {limit:#x}{})",
                    if forced { "" } else { "; L? for more" }
                )));
            }
            n
        }
        Extent::End(t) => {
            let end = e.eval(t)?;
            if end < start {
                return Err(usage("the end is before the start"));
            }
            let n = end - start + 1;
            if n > MAX_RANGE {
                return Err(usage(format!(
                    "the range is {n:#x} bytes, more than {MAX_RANGE:#x}; use L? for more"
                )));
            }
            n
        }
    };
    let end = start
        .checked_add(length)
        .ok_or_else(|| usage("the range wraps past the top of the address space"))?;
    let pattern = pattern_bytes(e, r.kind, &r.pattern)?;
    let align = match r.kind {
        'w' => 2,
        'd' => 4,
        'q' => 8,
        _ => 1,
    };
    let (mut hits, unmapped_bytes) = search(e, start, end, &pattern)?;
    hits.retain(|h| h % align == 0 && h + pattern.len() as u64 <= end);
    hits.dedup();
    if hits.len() > MAX_HITS {
        hits.truncate(MAX_HITS);
        e.kernel
            .note_incomplete(format!("s: stopped after {MAX_HITS} matches"));
    }
    let unit = match r.kind {
        'w' | 'u' => 2,
        'd' => 4,
        'q' => 8,
        _ => 1,
    };
    let lines = if r.addresses_only {
        Vec::new()
    } else {
        hits.iter().map(|h| read(e, *h, 16 / unit, unit)).collect()
    };
    Ok(Found {
        start,
        length,
        kind: r.kind.to_string(),
        pattern: pattern.iter().map(|b| format!("{b:02x}")).collect(),
        hits,
        unmapped_bytes,
        lines,
        addresses_only: r.addresses_only,
    })
}

impl Render for Found {
    fn render(&self, out: &mut String) {
        let unit = match self.kind.as_str() {
            "w" | "u" => 2,
            "d" => 4,
            "q" => 8,
            _ => 1,
        };
        for (i, hit) in self.hits.iter().enumerate() {
            match self.lines.get(i) {
                Some(values) if !self.addresses_only => {
                    lines(out, *hit, unit, values, (16 / unit) as usize);
                }
                _ => {
                    out.push_str(&addr(*hit));
                    out.push('\n');
                }
            }
        }
        if self.unmapped_bytes > 0 && !self.addresses_only {
            out.push_str(&format!(
                "({:#x} bytes of the range are not mapped: nothing there to search)\n",
                self.unmapped_bytes
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_s_syntax() {
        let r = request("-[1]d nt L?1000 'MZ' 0x10").unwrap();
        assert_eq!((r.kind, r.addresses_only), ('d', true));
        assert_eq!(r.start, "nt");
        assert_eq!(r.extent, Extent::Length("1000", true));
        assert_eq!(r.pattern, vec!["'MZ'", "0x10"]);
        let r = request("nt nt+0x1000 4d 5a").unwrap();
        assert_eq!(r.kind, 'b');
        assert_eq!(r.extent, Extent::End("nt+0x1000"));
        let r = request("-a nt L 2000 \"This program\"").unwrap();
        assert_eq!(r.extent, Extent::Length("2000", false));
        assert_eq!(r.pattern, vec!["This program"]);
        for bad in [
            "",
            "-x nt L10 1",
            "nt",
            "nt L10",
            "-[9]b nt L10 1",
            "-[1 nt L1 1",
        ] {
            assert!(request(bad).is_err(), "{bad}");
        }
        assert_eq!(quoted("'MZ'"), Some(0x4d5a));
        assert_eq!(quoted("'H'"), Some(0x48));
        assert_eq!(quoted("MZ"), None);
    }
}
