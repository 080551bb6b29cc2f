//! The pool tracker tables: outstanding allocations and bytes per tag, summed over the global
//! table and every processor's.

use std::collections::BTreeMap;

use crate::nt::view::View;
use crate::nt::{Kernel, ModelError};

/// Counters of one tag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TagUse {
    /// Non-paged allocations outstanding.
    pub nonpaged_allocs: i64,
    /// Non-paged bytes outstanding.
    pub nonpaged_bytes: i64,
    /// Paged allocations outstanding.
    pub paged_allocs: i64,
    /// Paged bytes outstanding.
    pub paged_bytes: i64,
}

/// Sums the tracker tables: the global one and every processor's (each table once).
pub fn pool_usage(k: &mut Kernel) -> Result<BTreeMap<u32, TagUse>, ModelError> {
    let nt = k.nt()?;
    let esize = nt.size_of("_POOL_TRACKER_TABLE")?;
    let size = k.mem.u64(k.sym("PoolTrackTableSize")?)?;
    if size == 0 || size > 1 << 20 {
        return Err(ModelError::Corrupt(format!(
            "PoolTrackTableSize is {size}: not plausible"
        )));
    }
    let mut tables = vec![k.mem.u64(k.sym("PoolTrackTable")?)?];
    if let Ok(per_cpu) = k.sym("ExPoolTagTables") {
        let cpus = match k.processors() {
            Ok(c) => c.len(),
            Err(e) => {
                k.note_incomplete(format!(
                    "the processors are unreadable ({e}): only the first processor's tag table is counted"
                ));
                1
            }
        }
        .clamp(1, 2048);
        let ptrs = k.mem.kread(per_cpu, cpus * 8)?;
        for c in ptrs.chunks_exact(8) {
            tables.push(u64::from_le_bytes(c.try_into().unwrap_or([0; 8])));
        }
    }
    tables.retain(|t| *t != 0);
    tables.sort();
    tables.dedup();
    let mut out: BTreeMap<u32, TagUse> = BTreeMap::new();
    for t in tables {
        let bytes = k.mem.kread(t, (size * esize) as usize)?;
        for i in 0..size as usize {
            let v = View::new(
                nt.clone(),
                "_POOL_TRACKER_TABLE",
                t + i as u64 * esize,
                bytes[i * esize as usize..(i + 1) * esize as usize].to_vec(),
            );
            let key = v.get("Key")? as u32;
            if key == 0 {
                continue;
            }
            // Counters can be anything in a damaged table: the sums wrap rather than fail.
            let g = |p: &str| v.get(p).unwrap_or(0) as i64;
            let u = out.entry(key).or_default();
            u.nonpaged_allocs = u
                .nonpaged_allocs
                .wrapping_add(g("NonPagedAllocs").wrapping_sub(g("NonPagedFrees")));
            u.nonpaged_bytes = u.nonpaged_bytes.wrapping_add(g("NonPagedBytes"));
            u.paged_allocs = u
                .paged_allocs
                .wrapping_add(g("PagedAllocs").wrapping_sub(g("PagedFrees")));
            u.paged_bytes = u.paged_bytes.wrapping_add(g("PagedBytes"));
        }
    }
    out.retain(|_, u| *u != TagUse::default());
    Ok(out)
}
