//! The search for a tag: the big-page table, then the pool regions, searched on the target
//! (one request per run of present pages where the target can) and checked header by header.

use super::{PAGE, big_pages, header_fields};
use crate::nt::{Kernel, ModelError};
use crate::target::TargetError;

/// Pool ranges to search: (start, end, paged).
fn pool_ranges(
    k: &mut Kernel,
    want_paged: Option<bool>,
    notes: &mut Vec<String>,
) -> Vec<(u64, u64, bool)> {
    let mut out = known_pool_ranges(k);
    // A kind of pool asked for whose bounds are not known (not in this build's symbols, or
    // unreadable, as noted then) is not searched: say so rather than find nothing in it.
    for (paged, what) in [(false, "non-paged"), (true, "paged")] {
        if want_paged.is_none_or(|p| p == paged) && !out.iter().any(|r| r.2 == paged) {
            let n = format!("the bounds of the {what} pool are not known: it is not searched");
            k.note_incomplete(n.clone());
            notes.push(n);
        }
    }
    out.retain(|r| want_paged.is_none_or(|p| p == r.2));
    out
}

/// The pool ranges the build's symbols bound.
fn known_pool_ranges(k: &mut Kernel) -> Vec<(u64, u64, bool)> {
    let mut out = Vec::new();
    let Ok(nt) = k.nt() else { return out };
    if let Ok(st) = k.sym("MiState")
        && nt.has_field("_MI_SYSTEM_INFORMATION", "Vs.SystemVaRegions")
    {
        for (name, paged) in [
            ("AssignedRegionNonPagedPool", false),
            ("AssignedRegionPagedPool", true),
        ] {
            let Ok(i) = nt.enum_value("_MI_ASSIGNED_REGION_TYPES", name) else {
                continue;
            };
            let p = format!("Vs.SystemVaRegions[{i}]");
            let (Ok(b), Ok(n)) = (
                nt.offset("_MI_SYSTEM_INFORMATION", &format!("{p}.BaseAddress")),
                nt.offset("_MI_SYSTEM_INFORMATION", &format!("{p}.NumberOfBytes")),
            ) else {
                continue;
            };
            match (k.mem.u64(st + b), k.mem.u64(st + n)) {
                (Ok(base), Ok(len)) if base != 0 => {
                    out.push((base, base.saturating_add(len), paged));
                }
                (Ok(_), Ok(_)) => {}
                (Err(e), _) | (_, Err(e)) => k.note_incomplete(format!(
                    "the bounds of {name} are unreadable ({e}): it is not searched"
                )),
            }
        }
        return out;
    }
    let g = |k: &mut Kernel, s: &str| {
        let a = k.sym(s).ok()?;
        match k.mem.u64(a) {
            Ok(v) => Some(v),
            Err(e) => {
                k.note_incomplete(format!("{s} is unreadable ({e}): its pool is not searched"));
                None
            }
        }
    };
    if let (Some(s), Some(m)) = (
        g(k, "MmNonPagedPoolStart"),
        g(k, "MmMaximumNonPagedPoolInBytes"),
    ) {
        out.push((s, s.saturating_add(m), false));
    }
    if let (Some(e), Some(n)) = (g(k, "MmPagedPoolEnd"), g(k, "MmSizeOfPagedPoolInBytes")) {
        out.push((e.saturating_sub(n), e, true));
    }
    out
}

/// A block found by tag: (header, bytes, paged, allocated, data): a big allocation has no
/// header (its header is its data); a pool block's data follows its 16-byte header.
pub type Found = (u64, u64, bool, bool, u64);

/// Bytes of a pool header before a block's data (x64).
pub const POOL_HEADER_BYTES: u64 = 16;

/// Every block with `tag`, big allocations included.
pub fn find_tag(
    k: &mut Kernel,
    tag: u32,
    want_paged: Option<bool>,
    limit: usize,
) -> Result<(Vec<Found>, Vec<String>), ModelError> {
    let mut hits = Vec::new();
    let mut notes = Vec::new();
    for (va, key, size, ty, free) in big_pages(k)? {
        if key & 0x7fff_ffff == tag & 0x7fff_ffff && !free {
            let paged = ty & 1 == 1;
            if want_paged.is_none_or(|p| p == paged) {
                hits.push((va, size, paged, true, va));
            }
        }
    }
    let space = k.mem.kernel_space()?;
    let pattern = tag.to_le_bytes();
    // Classic blocks never cross a page; segment-heap VS chunks may.
    let classic = !k.pool_is_segment_heap();
    for (start, end, paged) in pool_ranges(k, want_paged, &mut notes) {
        let mut at = start;
        while at < end && hits.len() < limit {
            let Some(page) = k.mem.next_present(space, at, end)? else {
                break;
            };
            // A run of present pages, searched on the target in one request where it can.
            let mut run_end = page + PAGE;
            while run_end < end && run_end - page < 1 << 24 {
                match k.mem.translate(space, run_end) {
                    Ok(_) => run_end += PAGE,
                    Err(_) => break,
                }
            }
            // The target finds the next page with the tag; that page is read whole and every
            // header in it checked here. Where blocks with the tag lie close together (as a
            // busy allocator packs them), the page after one with a match is read straight
            // away rather than searched for: a search there would cost a request and find it.
            let mut from = page;
            let mut next_direct = false;
            while from < run_end && hits.len() < limit {
                let page_at = if std::mem::take(&mut next_direct) {
                    from
                } else {
                    let found = match k.mem.search(from, run_end - from, &pattern) {
                        Some(r) => r?,
                        None => scan(k, from, run_end, &pattern)?,
                    };
                    let Some(hit) = found else { break };
                    hit & !(PAGE - 1)
                };
                from = page_at + PAGE;
                let bytes = match k.mem.kread(page_at, PAGE as usize) {
                    Ok(b) => b,
                    Err(TargetError::NotPresent { .. }) => continue,
                    Err(e) => return Err(e.into()),
                };
                let mut matched = false;
                for o in (0..PAGE as usize).step_by(16) {
                    if bytes[o + 4..o + 8] != pattern {
                        continue;
                    }
                    let header = page_at + o as u64;
                    if let Ok((_, units, ty, _)) = header_fields(k, &bytes[o..o + 16])
                        && units != 0
                        && ty & 0x2 != 0
                        && (!classic || o as u64 + units * 16 <= PAGE)
                    {
                        hits.push((header, units * 16, paged, true, header + POOL_HEADER_BYTES));
                        matched = true;
                        if hits.len() >= limit {
                            break;
                        }
                    }
                }
                next_direct = matched;
            }
            at = run_end;
        }
    }
    if hits.len() >= limit {
        notes.push(format!("stopped after {limit} matches"));
        k.note_incomplete(format!("stopped after {limit} matches"));
    }
    hits.sort();
    hits.dedup();
    Ok((hits, notes))
}

/// Reads `[from, to)` page by page and returns the first match of `pattern`.
fn scan(k: &mut Kernel, from: u64, to: u64, pattern: &[u8]) -> Result<Option<u64>, ModelError> {
    let mut at = from;
    while at < to {
        let n = ((to - at).min(PAGE - (at & (PAGE - 1)))) as usize;
        match k.mem.kread(at, n) {
            Ok(b) => {
                if let Some(i) = b.windows(pattern.len()).position(|w| w == pattern) {
                    return Ok(Some(at + i as u64));
                }
            }
            Err(TargetError::NotPresent { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        // Overlap so a match across the page boundary is seen.
        at += (n as u64).saturating_sub(pattern.len() as u64 - 1).max(1);
    }
    Ok(None)
}
