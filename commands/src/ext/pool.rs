//! `!pool`, `!poolused`, `!poolfind`: kernel pool as each build keeps it: classic pages of
//! `_POOL_HEADER` chains (before 18362), the segment heap (LFH and VS subsegments in 1 MB
//! segments, 18362 and later), the big-page table, special-pool pages, and the per-tag tracker
//! tables. A header chain that does not add up is reported at the exact address with what was
//! expected and what is there.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

use crate::engine::{CmdError, Engine, Output};
use kdnet_model::nt::{Kernel, ModelError};
use kdnet_model::target::TargetError;

const PAGE: u64 = 0x1000;
/// Mixed into segment signatures (facts: extensions.md §3.3).
const SEGMENT_SIGNATURE_XOR: u64 = 0xA2E6_4EAD_A2E6_4EAD;
/// First descriptor of an allocated page range.
const TREE_SIGNATURE: u32 = 0xCCDD_CCDD;
const RANGE_CONTINUATION: u8 = 1;
const RANGE_LFH: u8 = 0x0B;
const RANGE_VS: u8 = 0x0F;
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
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
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
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
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

/// What `!pool` found for an address.
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
        /// How the page is organised (`classic`, `lfh`, `vs`).
        kind: &'static str,
        /// Its blocks.
        blocks: Vec<Block>,
        /// A break in the chain.
        corruption: Option<Corruption>,
    },
}

fn hex16(b: &[u8]) -> (String, String) {
    let hex: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    let text: String = b
        .iter()
        .map(|&c| {
            if (0x20..0x7f).contains(&c) {
                c as char
            } else {
                '.'
            }
        })
        .collect();
    (hex.join(" "), text)
}

fn header_fields(k: &Kernel, b: &[u8]) -> Result<(u64, u64, u64, u32), ModelError> {
    let nt = k.nt()?;
    let v = kdnet_model::nt::view::View::new(nt, "_POOL_HEADER", 0, b.to_vec());
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
        let e = kdnet_model::nt::view::View::new(
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
            e.get_or("PoolType", 0),
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

/// A special-pool page: the header-shaped record at the page start, the data at the end, the
/// fill pattern between them and a guard page after it. `None` when the page is not one.
fn special(k: &mut Kernel, a: u64, region: &str) -> Option<PoolAt> {
    let page = a & !(PAGE - 1);
    let b = k.mem.kread(page, PAGE as usize).ok()?;
    let ulong1 = u32::from_le_bytes(b[0..4].try_into().ok()?);
    let size = u64::from(ulong1 & 0x1fff);
    let pattern = b[2];
    let tag = u32::from_le_bytes(b[4..8].try_into().ok()?);
    if size == 0 || size > PAGE - 16 {
        return None;
    }
    let data = page + PAGE - size.div_ceil(16) * 16;
    let filler_ok = b[16..(data - page) as usize].iter().all(|&x| x == pattern);
    let guard = k.mem.kread(page + PAGE, 1).is_err();
    if region != "Special pool" && !(filler_ok && guard) {
        return None;
    }
    Some(PoolAt::Special {
        data,
        size,
        tag: tag_text(tag),
        paged: ulong1 & 0x8000 != 0,
    })
}

/// Walks a classic page.
fn classic_page(k: &mut Kernel, a: u64) -> Result<PoolAt, ModelError> {
    let page = a & !(PAGE - 1);
    let bytes = k.mem.kread(page, PAGE as usize)?;
    let mut blocks: Vec<Block> = Vec::new();
    let mut corruption = None;
    let mut off = 0u64;
    let mut prev_units = 0u64;
    while off < PAGE {
        let h = &bytes[off as usize..off as usize + 16];
        let (prev, units, ty, tag) = header_fields(k, h)?;
        let bad = if units == 0 {
            Some("a BlockSize of at least 1".to_string())
        } else if prev != prev_units {
            Some(format!(
                "PreviousSize {prev_units:#x} (the block before is {:#x} bytes)",
                prev_units * 16
            ))
        } else if off + units * 16 > PAGE {
            Some(format!(
                "a BlockSize of at most {:#x} (the page ends)",
                (PAGE - off) / 16
            ))
        } else {
            None
        };
        if let Some(expected) = bad {
            let (found, found_text) = hex16(h);
            corruption = Some(Corruption {
                address: page + off,
                page_offset: off,
                expected,
                found,
                found_text,
                previous_block: blocks.last().cloned(),
            });
            break;
        }
        let size = units * 16;
        blocks.push(Block {
            address: page + off,
            size,
            previous_size: prev * 16,
            allocated: ty & 0x2 != 0,
            tag: tag_text(tag),
            contains: a >= page + off && a < page + off + size,
        });
        prev_units = units;
        off += size;
    }
    Ok(PoolAt::Page {
        kind: "classic",
        blocks,
        corruption,
    })
}

/// The segment-heap keys: (HeapKey, LfhKey).
fn heap_keys(k: &mut Kernel) -> Result<(u64, u64), ModelError> {
    let nt = k.nt()?;
    let globals = match k.sym("ExPoolState").ok().and_then(|s| {
        nt.offset("_EX_POOL_HEAP_MANAGER_STATE", "HeapManager.Globals")
            .ok()
            .and_then(|o| k.mem.u64(s + o).ok())
    }) {
        Some(g) if g != 0 => g,
        _ => k.sym("RtlpHpHeapGlobals")?,
    };
    let hk = k
        .mem
        .u64(globals + nt.offset("_RTLP_HP_HEAP_GLOBALS", "HeapKey")?)?;
    let lk = k
        .mem
        .u64(globals + nt.offset("_RTLP_HP_HEAP_GLOBALS", "LfhKey")?)?;
    Ok((hk, lk))
}

/// The segment holding `a`, its unit shift, by the segment signature (1 MB and 16 MB segments).
fn find_segment(k: &mut Kernel, a: u64, heap_key: u64) -> Result<Option<(u64, u32)>, ModelError> {
    let nt = k.nt()?;
    let sig_off = nt.offset("_HEAP_PAGE_SEGMENT", "Signature")?;
    let mask_off = nt.offset("_HEAP_SEG_CONTEXT", "SegmentMask")?;
    let shift_off = nt.offset("_HEAP_SEG_CONTEXT", "UnitShift")?;
    for size in [1u64 << 20, 1 << 24] {
        let seg = a & !(size - 1);
        let Ok(sig) = k.mem.u64(seg + sig_off) else {
            continue;
        };
        let ctx = sig ^ seg ^ heap_key ^ SEGMENT_SIGNATURE_XOR;
        if ctx >> 47 != 0x1ffff {
            continue;
        }
        if k.mem
            .u64(ctx.wrapping_add(mask_off))
            .is_ok_and(|m| m == !(size - 1))
        {
            let shift = u32::from(k.mem.u8(ctx.wrapping_add(shift_off))?);
            // Pages are 4 KB and segments at most 16 MB: any other unit is a lie.
            if !(12..=20).contains(&shift) {
                return Err(ModelError::Corrupt(format!(
                    "heap segment {seg:x}: unit shift {shift}"
                )));
            }
            return Ok(Some((seg, shift)));
        }
    }
    Ok(None)
}

/// A page of the segment heap.
fn heap_page(k: &mut Kernel, a: u64) -> Result<Option<PoolAt>, ModelError> {
    let (heap_key, lfh_key) = heap_keys(k)?;
    let Some((seg, shift)) = find_segment(k, a, heap_key)? else {
        return Ok(None);
    };
    let nt = k.nt()?;
    let dsize = nt.size_of("_HEAP_PAGE_RANGE_DESCRIPTOR")?;
    let flags_off = nt.offset("_HEAP_PAGE_RANGE_DESCRIPTOR", "RangeFlags")?;
    let unit_off = nt.offset("_HEAP_PAGE_RANGE_DESCRIPTOR", "UnitOffset")?;
    let sig_off = nt.offset("_HEAP_PAGE_RANGE_DESCRIPTOR", "TreeSignature")?;
    let mut index = (a - seg) >> shift;
    let mut flags = k.mem.u8(seg + index * dsize + flags_off)?;
    if flags == RANGE_CONTINUATION {
        let back = u64::from(k.mem.u8(seg + index * dsize + unit_off)?);
        index = index.saturating_sub(back);
        flags = k.mem.u8(seg + index * dsize + flags_off)?;
    }
    if k.mem.u32(seg + index * dsize + sig_off)? != TREE_SIGNATURE {
        return Ok(Some(PoolAt::Page {
            kind: "segment",
            blocks: Vec::new(),
            corruption: Some(Corruption {
                address: seg + index * dsize,
                page_offset: (seg + index * dsize) & (PAGE - 1),
                expected: format!("a page-range descriptor with signature {TREE_SIGNATURE:#x}"),
                found: String::new(),
                found_text: String::new(),
                previous_block: None,
            }),
        }));
    }
    let range = seg + (index << shift);
    let page = a & !(PAGE - 1);
    match flags {
        RANGE_LFH => lfh_page(k, range, page, a, lfh_key).map(Some),
        RANGE_VS => vs_page(k, range, page, a, heap_key).map(Some),
        _ => Ok(None),
    }
}

fn lfh_page(
    k: &mut Kernel,
    sub: u64,
    page: u64,
    a: u64,
    lfh_key: u64,
) -> Result<PoolAt, ModelError> {
    let nt = k.nt()?;
    let enc = k
        .mem
        .u32(sub + nt.offset("_HEAP_LFH_SUBSEGMENT", "BlockOffsets")?)?;
    let dec = enc ^ (lfh_key as u32) ^ ((sub as u32) >> 12);
    let (block, first) = (u64::from(dec & 0xffff), u64::from(dec >> 16));
    let count = u64::from(
        k.mem
            .u16(sub + nt.offset("_HEAP_LFH_SUBSEGMENT", "BlockCount")?)?,
    );
    if !(16..=PAGE).contains(&block) || first == 0 || count == 0 || count > 0x10000 {
        return Err(ModelError::Corrupt(format!(
            "LFH subsegment {sub:x}: block size {block:#x}, first {first:#x}, {count} blocks"
        )));
    }
    let bitmap_at = sub + nt.offset("_HEAP_LFH_SUBSEGMENT", "BlockBitmap")?;
    let bitmap = k.mem.kread(bitmap_at, (count * 2).div_ceil(8) as usize)?;
    let bytes = k.mem.kread(page, PAGE as usize)?;
    let mut blocks: Vec<Block> = Vec::new();
    let mut corruption = None;
    let start = sub + first;
    let lo = if page > start {
        (page - start).div_ceil(block)
    } else {
        0
    };
    let mut i = lo;
    while i < count {
        let at = start + i * block;
        if at >= page + PAGE {
            break;
        }
        if at / PAGE != (at + block - 1) / PAGE {
            i += 1;
            continue;
        }
        let bit = (2 * i) as usize;
        let state = (bitmap[bit / 8] >> (bit % 8)) & 3;
        let allocated = state == 1;
        let h = &bytes[(at - page) as usize..(at - page) as usize + 16];
        let (_, units, ty, tag) = header_fields(k, h)?;
        if allocated && (units * 16 != block || ty & 0x2 == 0) {
            let (found, found_text) = hex16(h);
            corruption = Some(Corruption {
                address: at,
                page_offset: at - page,
                expected: format!(
                    "an in-use header with BlockSize {:#x} (LFH blocks of {block:#x} bytes)",
                    block / 16
                ),
                found,
                found_text,
                previous_block: blocks.last().cloned(),
            });
        }
        blocks.push(Block {
            address: at,
            size: block,
            previous_size: 0,
            allocated,
            tag: if allocated {
                tag_text(tag)
            } else {
                "Free".into()
            },
            contains: a >= at && a < at + block,
        });
        if corruption.is_some() {
            break;
        }
        i += 1;
    }
    Ok(PoolAt::Page {
        kind: "lfh",
        blocks,
        corruption,
    })
}

fn vs_page(
    k: &mut Kernel,
    sub: u64,
    page: u64,
    a: u64,
    heap_key: u64,
) -> Result<PoolAt, ModelError> {
    let nt = k.nt()?;
    let units = u64::from(k.mem.u16(sub + nt.offset("_HEAP_VS_SUBSEGMENT", "Size")?)?);
    let end = sub.saturating_add(units * 16);
    let mut at = sub.saturating_add(0x30);
    let mut blocks: Vec<Block> = Vec::new();
    let mut corruption = None;
    let mut steps = 0;
    while at.saturating_add(16) <= end && at < page + PAGE {
        steps += 1;
        if steps > 0x10000 {
            break;
        }
        let raw = k.mem.kread_ahead(at, 16)?;
        let decoded = u64::from_le_bytes(raw[..8].try_into().unwrap_or([0; 8])) ^ at ^ heap_key;
        let size = ((decoded >> 16) & 0xffff) * 16;
        let prev = ((decoded >> 32) & 0xffff) * 16;
        let allocated = (decoded >> 48) & 0xff != 0;
        if size < 16 || at.checked_add(size).is_none_or(|e| e > end) {
            let (found, found_text) = hex16(&raw);
            corruption = Some(Corruption {
                address: at,
                page_offset: at & (PAGE - 1),
                expected: "a VS chunk header that decodes to a size inside the subsegment".into(),
                found,
                found_text,
                previous_block: blocks.last().cloned(),
            });
            break;
        }
        let header = at + 16;
        if header >= page && header < page + PAGE {
            let (tag, ok) = if allocated {
                let h = k.mem.kread(header, 16)?;
                let (_, bs, ty, tag) = header_fields(k, &h)?;
                if bs * 16 != size || ty & 0x2 == 0 {
                    let (found, found_text) = hex16(&h);
                    corruption = Some(Corruption {
                        address: header,
                        page_offset: header & (PAGE - 1),
                        expected: format!(
                            "an in-use header with BlockSize {:#x} (the chunk is {size:#x} bytes)",
                            size / 16
                        ),
                        found,
                        found_text,
                        previous_block: blocks.last().cloned(),
                    });
                    (tag_text(tag), false)
                } else {
                    (tag_text(tag), true)
                }
            } else {
                ("Free".to_string(), true)
            };
            blocks.push(Block {
                address: header,
                size,
                previous_size: prev,
                allocated,
                tag,
                contains: a >= at && a < at + size,
            });
            if !ok {
                break;
            }
        }
        at += size;
    }
    Ok(PoolAt::Page {
        kind: "vs",
        blocks,
        corruption,
    })
}

/// What the pool holds at `a`.
pub fn pool_at(k: &mut Kernel, a: u64) -> Result<(String, PoolAt), ModelError> {
    let region = region_name(k, a);
    for (va, tag, size, _ty, free) in big_pages(k)? {
        if a >= va && a - va < size.max(1) {
            return Ok((
                region,
                PoolAt::Big {
                    va,
                    size,
                    tag: tag_text(tag),
                    free,
                },
            ));
        }
    }
    if let Some(s) = special(k, a, &region) {
        return Ok((region, s));
    }
    let segment_heap = k.build >= 18362 && k.has_sym("ExPoolState");
    if segment_heap && let Some(p) = heap_page(k, a)? {
        return Ok((region, p));
    }
    Ok((region, classic_page(k, a)?))
}

fn block_json(b: &Block) -> Value {
    json!({
        "address": b.address,
        "size": b.size,
        "previous_size": b.previous_size,
        "allocated": b.allocated,
        "tag": b.tag,
        "contains": b.contains,
    })
}

/// `!pool ADDR [FLAGS]`.
pub fn pool_command(e: &mut Engine, args: &str) -> Result<Output, CmdError> {
    let mut parts = args.split_whitespace();
    let a = match parts.next() {
        Some(x) => e.eval(x)?,
        None => return Err(CmdError::Usage("!pool ADDRESS [FLAGS]".into())),
    };
    let flags = match parts.next() {
        Some(f) => e.eval(f)?,
        None => 0,
    };
    let (region, at) = pool_at(&mut e.kernel, a)?;
    let mut text = format!("Pool page {a:x} region is {region}\n");
    let json = match &at {
        PoolAt::Big {
            va,
            size,
            tag,
            free,
        } => {
            text.push_str(&format!(
                "*{va:x} : {}large page allocation, tag is {tag}, size is {size:#x} bytes\n",
                if *free { "free " } else { "" }
            ));
            json!({ "region": region, "kind": "big", "chunks": [{ "address": va, "size": size, "allocated": !free, "tag": tag, "contains": true }], "corruption": Value::Null })
        }
        PoolAt::Special {
            data,
            size,
            tag,
            paged,
        } => {
            text.push_str(&format!(
                "*{data:x} size: {size:x} {} special pool, Tag is {tag}\n",
                if *paged { "pagable" } else { "non-paged" }
            ));
            json!({ "region": region, "kind": "special", "chunks": [{ "address": data, "size": size, "allocated": true, "tag": tag, "contains": true }], "corruption": Value::Null })
        }
        PoolAt::Page {
            kind,
            blocks,
            corruption,
        } => {
            for b in blocks {
                if flags & 2 != 0 && !b.contains {
                    continue;
                }
                text.push_str(&format!(
                    "{}{:x} size: {:4x} previous size: {:4x}  ({}) {}{}\n",
                    if b.contains { '*' } else { ' ' },
                    b.address,
                    b.size,
                    b.previous_size,
                    if b.allocated { "Allocated" } else { "Free" },
                    if b.contains { "*" } else { " " },
                    b.tag
                ));
            }
            if let Some(c) = corruption {
                text.push_str(&format!(
                    "\n*** Pool corruption at {:x} (offset {:#x} in the page): expected {}; found {} \"{}\"\n",
                    c.address, c.page_offset, c.expected, c.found, c.found_text
                ));
                if let Some(p) = &c.previous_block {
                    text.push_str(&format!(
                        "*** The block before it: {:x}, {:#x} bytes, {}, tag {}\n",
                        p.address,
                        p.size,
                        if p.allocated { "allocated" } else { "free" },
                        p.tag
                    ));
                }
            }
            json!({
                "region": region,
                "kind": kind,
                "chunks": blocks.iter().map(block_json).collect::<Vec<_>>(),
                "corruption": corruption.as_ref().map(|c| json!({
                    "address": c.address,
                    "page_offset": c.page_offset,
                    "expected": c.expected,
                    "found": c.found,
                    "found_text": c.found_text,
                    "previous_block": c.previous_block.as_ref().map(block_json),
                })),
            })
        }
    };
    Ok(Output { text, json })
}

/// Counters of one tag.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
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
            let v = kdnet_model::nt::view::View::new(
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

/// `!poolused [FLAGS] [TAG]`: 2 sorts by non-paged bytes, 4 by paged bytes.
pub fn poolused_command(e: &mut Engine, args: &str) -> Result<Output, CmdError> {
    let mut flags = 0u64;
    let mut pattern: Option<String> = None;
    for (i, a) in args.split_whitespace().enumerate() {
        if i == 0
            && let Ok(f) = u64::from_str_radix(a.trim_start_matches("0x"), 16)
            && a.len() <= 3
        {
            flags = f;
            continue;
        }
        pattern = Some(a.to_string());
    }
    let usage = pool_usage(&mut e.kernel)?;
    let mut rows: Vec<(String, TagUse)> = usage
        .into_iter()
        .map(|(k, v)| (tag_text(k), v))
        .filter(|(t, _)| pattern.as_ref().is_none_or(|p| glob(p, t.trim_end())))
        .collect();
    let by = if flags & 2 != 0 {
        "NonPaged"
    } else if flags & 4 != 0 {
        "Paged"
    } else {
        "Tag"
    };
    match by {
        "NonPaged" => rows.sort_by_key(|r| std::cmp::Reverse(r.1.nonpaged_bytes)),
        "Paged" => rows.sort_by_key(|r| std::cmp::Reverse(r.1.paged_bytes)),
        _ => rows.sort_by(|a, b| a.0.cmp(&b.0)),
    }
    let mut text = format!(
        "   Sorting by {by}\n\n               NonPaged                  Paged\n Tag     Allocs         Used     Allocs         Used\n\n"
    );
    let mut total = TagUse::default();
    for (t, u) in &rows {
        text.push_str(&format!(
            " {:<4} {:>10} {:>12} {:>10} {:>12}\n",
            t, u.nonpaged_allocs, u.nonpaged_bytes, u.paged_allocs, u.paged_bytes
        ));
        total.nonpaged_allocs = total.nonpaged_allocs.wrapping_add(u.nonpaged_allocs);
        total.nonpaged_bytes = total.nonpaged_bytes.wrapping_add(u.nonpaged_bytes);
        total.paged_allocs = total.paged_allocs.wrapping_add(u.paged_allocs);
        total.paged_bytes = total.paged_bytes.wrapping_add(u.paged_bytes);
    }
    text.push_str(&format!(
        "\n TOTAL {:>9} {:>12} {:>10} {:>12}\n",
        total.nonpaged_allocs, total.nonpaged_bytes, total.paged_allocs, total.paged_bytes
    ));
    Ok(Output {
        text,
        json: json!({
            "sorted_by": by.to_ascii_lowercase(),
            "tags": rows.iter().map(|(t, u)| json!({
                "tag": t,
                "nonpaged_allocs": u.nonpaged_allocs,
                "nonpaged_bytes": u.nonpaged_bytes,
                "paged_allocs": u.paged_allocs,
                "paged_bytes": u.paged_bytes,
            })).collect::<Vec<_>>(),
            "total": total,
        }),
    })
}

/// Pool ranges to search: (start, end, paged).
fn pool_ranges(k: &mut Kernel) -> Vec<(u64, u64, bool)> {
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

/// A block found by tag: (header, bytes, paged, allocated).
pub type Found = (u64, u64, bool, bool);

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
                hits.push((va, size, paged, true));
            }
        }
    }
    let space = k.mem.kernel_space()?;
    let pattern = tag.to_le_bytes();
    // Classic blocks never cross a page; segment-heap VS chunks may.
    let classic = k.build < 18362;
    for (start, end, paged) in pool_ranges(k) {
        if want_paged.is_some_and(|p| p != paged) {
            continue;
        }
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
            let mut from = page;
            while from < run_end && hits.len() < limit {
                let found = match k.mem.search(from, run_end - from, &pattern) {
                    Some(r) => r?,
                    None => scan(k, from, run_end, &pattern)?,
                };
                let Some(hit) = found else { break };
                // The tag is at +4 of a 16-byte aligned header.
                let header = hit.wrapping_sub(4);
                if header % 16 == 0
                    && let Ok(h) = k.mem.kread(header, 16)
                    && let Ok((_, units, ty, _)) = header_fields(k, &h)
                    && units != 0
                    && ty & 0x2 != 0
                    && (!classic || (header & (PAGE - 1)) + units * 16 <= PAGE)
                {
                    hits.push((header, units * 16, paged, true));
                }
                from = hit + 1;
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

/// `!poolfind TAG [0|1]` (0 non-paged, 1 paged).
pub fn poolfind_command(e: &mut Engine, args: &str) -> Result<Output, CmdError> {
    let mut parts = args.split_whitespace();
    let t = parts
        .next()
        .ok_or_else(|| CmdError::Usage("!poolfind TAG [0|1]".into()))?;
    let tag = tag_value(t.trim_matches('\''))
        .ok_or_else(|| CmdError::Usage(format!("{t:?} is not a pool tag (1 to 4 characters)")))?;
    let want = match parts.next() {
        Some("0") => Some(false),
        Some("1") => Some(true),
        Some(other) => return Err(CmdError::Usage(format!("pool type {other}: use 0 or 1"))),
        None => None,
    };
    let (hits, notes) = find_tag(&mut e.kernel, tag, want, 10_000)?;
    let mut text = format!(
        "Scanning large pool allocation table and pool ranges for tag {} ({tag:08x})\n\n",
        tag_text(tag)
    );
    for (a, size, paged, _) in &hits {
        text.push_str(&format!(
            "{a:x} : tag {}, size {size:#7x}, {}\n",
            tag_text(tag),
            if *paged {
                "Paged pool"
            } else {
                "Nonpaged pool"
            }
        ));
    }
    text.push_str(&format!("\n{} allocation(s) found\n", hits.len()));
    for n in &notes {
        text.push_str(&format!("NOTE: {n}\n"));
    }
    Ok(Output {
        text,
        json: json!({
            "tag": tag_text(tag),
            "matches": hits.iter().map(|(a, s, p, _)| json!({ "address": a, "size": s, "paged": p })).collect::<Vec<_>>(),
            "notes": notes,
        }),
    })
}
