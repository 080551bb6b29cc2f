//! Kernel pool as each build keeps it: classic pages of `_POOL_HEADER` chains (before 18362),
//! the segment heap (LFH and VS subsegments in 1 MB segments, 18362 and later), the big-page
//! table, special-pool pages ([`page`]), the per-tag tracker tables ([`tracker`]) and the
//! search for a tag ([`search`]). A header chain that does not add up is reported at the exact
//! address with what was expected and what is there.

pub mod page;
pub mod search;
pub mod tracker;

use crate::nt::view::View;
use crate::nt::{Kernel, ModelError};

pub use page::pool_at;
pub use search::{Found, find_tag};
pub use tracker::{TagUse, pool_usage};

pub(crate) const PAGE: u64 = 0x1000;
/// Largest big-page table read.
const MAX_BIG_ENTRIES: u64 = 1 << 22;

/// A tag as text: four characters, the protected bit cleared.
pub fn tag_text(tag: u32) -> String {
    (tag & 0x7fff_ffff)
        .to_le_bytes()
        .iter()
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '?'
            }
        })
        .collect()
}

/// A tag from text (`Irp` is `Irp ` padded).
pub fn tag_value(text: &str) -> Option<u32> {
    let b = text.as_bytes();
    if b.is_empty() || b.len() > 4 {
        return None;
    }
    let mut a = [b' '; 4];
    a[..b.len()].copy_from_slice(b);
    Some(u32::from_le_bytes(a))
}

/// One pool block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Address of its header.
    pub address: u64,
    /// Bytes, header included.
    pub size: u64,
    /// Previous block's bytes (classic pages; 0 where not kept).
    pub previous_size: u64,
    /// Allocated or free.
    pub allocated: bool,
    /// Tag.
    pub tag: String,
    /// Contains the address asked about.
    pub contains: bool,
}

/// Where a chain of headers breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    /// The header that does not fit.
    pub address: u64,
    /// Its offset in the page.
    pub page_offset: u64,
    /// What should be there.
    pub expected: String,
    /// The 16 bytes there.
    pub found: String,
    /// The same, as text.
    pub found_text: String,
    /// The block before it.
    pub previous_block: Option<Block>,
}

/// How a page of small blocks is organised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageKind {
    /// A chain of `_POOL_HEADER`s (before 18362).
    Classic,
    /// A segment-heap LFH subsegment: blocks of one size.
    Lfh,
    /// A segment-heap VS subsegment: chunks of varying size.
    Vs,
    /// A segment whose page-range descriptor is not one.
    Segment,
}

/// What the pool holds at an address.
#[derive(Debug, Clone)]
pub enum PoolAt {
    /// A big allocation.
    Big {
        /// Start.
        va: u64,
        /// Bytes.
        size: u64,
        /// Tag.
        tag: String,
        /// Marked free.
        free: bool,
    },
    /// A special-pool page.
    Special {
        /// The data.
        data: u64,
        /// Requested bytes.
        size: u64,
        /// Tag.
        tag: String,
        /// Pageable.
        paged: bool,
    },
    /// Small blocks of one page.
    Page {
        /// How the page is organised.
        kind: PageKind,
        /// Its blocks.
        blocks: Vec<Block>,
        /// A break in the chain.
        corruption: Option<Corruption>,
    },
}

/// The fields of a `_POOL_HEADER` in `b`: (PreviousSize, BlockSize, PoolType, PoolTag).
pub(crate) fn header_fields(k: &Kernel, b: &[u8]) -> Result<(u64, u64, u64, u32), ModelError> {
    let nt = k.nt()?;
    let v = View::new(nt, "_POOL_HEADER", 0, b.to_vec());
    Ok((
        v.get("PreviousSize")?,
        v.get("BlockSize")?,
        v.get("PoolType")?,
        v.get("PoolTag")? as u32,
    ))
}

/// A big-page table entry: (va, tag, bytes, pool type, free).
pub type BigPage = (u64, u32, u64, u64, bool);

/// The big-page table's entries in use.
pub fn big_pages(k: &mut Kernel) -> Result<Vec<BigPage>, ModelError> {
    let nt = k.nt()?;
    let table = k.mem.u64(k.sym("PoolBigPageTable")?)?;
    let size = k.mem.u64(k.sym("PoolBigPageTableSize")?)?;
    if table == 0 || size == 0 {
        return Ok(Vec::new());
    }
    if size > MAX_BIG_ENTRIES {
        return Err(ModelError::Corrupt(format!(
            "PoolBigPageTableSize is {size}: not plausible"
        )));
    }
    let esize = nt.size_of("_POOL_TRACKER_BIG_PAGES")?;
    let bytes = k.mem.kread(table, (size * esize) as usize)?;
    let mut out = Vec::new();
    for i in 0..size as usize {
        let e = View::new(
            nt.clone(),
            "_POOL_TRACKER_BIG_PAGES",
            table + i as u64 * esize,
            bytes[i * esize as usize..(i + 1) * esize as usize].to_vec(),
        );
        let va = e.get("Va")?;
        let key = e.get("Key")? as u32;
        if va == 0 || key == 0 {
            continue;
        }
        out.push((
            va & !1,
            key,
            e.get("NumberOfBytes")?,
            e.get("PoolType")?,
            va & 1 == 1,
        ));
    }
    Ok(out)
}

/// The region an address lies in, as the memory manager records it.
pub fn region_name(k: &mut Kernel, a: u64) -> String {
    let Ok(nt) = k.nt() else {
        return "Unknown".into();
    };
    if nt.has_field("_MI_SYSTEM_INFORMATION", "Vs.SystemVaType")
        && let Ok(st) = k.sym("MiState")
        && let Ok(off) = nt.offset("_MI_SYSTEM_INFORMATION", "Vs.SystemVaType")
        && (a >> 47) == 0x1ffff
        && let Ok(ty) = k.mem.u8(st + off + ((a >> 39) & 0x1ff) - 256)
    {
        let name = nt
            .enum_name("_MI_SYSTEM_VA_TYPE", i64::from(ty))
            .unwrap_or("MiVaUnused");
        return match name {
            "MiVaNonPagedPool" => "Nonpaged pool".into(),
            "MiVaPagedPool" => "Paged pool".into(),
            "MiVaSpecialPoolPaged" | "MiVaSpecialPoolNonPaged" => "Special pool".into(),
            "MiVaKernelStacks" => "Kernel stacks".into(),
            "MiVaDriverImages" | "MiVaBootLoaded" => "Loaded module".into(),
            "MiVaUnused" => "Unknown".into(),
            other => other.trim_start_matches("MiVa").to_string(),
        };
    }
    // 7601: the pool bounds globals.
    let g = |k: &mut Kernel, s: &str| k.sym(s).ok().and_then(|a| k.mem.u64(a).ok());
    if let (Some(start), Some(max)) = (
        g(k, "MmNonPagedPoolStart"),
        g(k, "MmMaximumNonPagedPoolInBytes"),
    ) && a >= start
        && a < start.saturating_add(max)
    {
        return "Nonpaged pool".into();
    }
    if let (Some(end), Some(size)) = (g(k, "MmPagedPoolEnd"), g(k, "MmSizeOfPagedPoolInBytes"))
        && a <= end
        && a >= end.saturating_sub(size)
    {
        return "Paged pool".into();
    }
    "Unknown".into()
}
