//! The page around an address: a big allocation, a special-pool page, a classic page of
//! `_POOL_HEADER` chains, or a segment-heap LFH or VS subsegment, walked block by block.

use super::{
    Block, Corruption, PAGE, PageKind, PoolAt, big_pages, header_fields, region_name, tag_text,
};
use crate::nt::{Kernel, ModelError};

/// Mixed into segment signatures (a constant of the segment heap, from public write-ups of it).
const SEGMENT_SIGNATURE_XOR: u64 = 0xA2E6_4EAD_A2E6_4EAD;
/// First descriptor of an allocated page range.
const TREE_SIGNATURE: u32 = 0xCCDD_CCDD;
const RANGE_CONTINUATION: u8 = 1;
const RANGE_LFH: u8 = 0x0B;
const RANGE_VS: u8 = 0x0F;

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
        kind: PageKind::Classic,
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
            kind: PageKind::Segment,
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
        kind: PageKind::Lfh,
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
        kind: PageKind::Vs,
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
    let segment_heap = k.pool_is_segment_heap();
    if segment_heap && let Some(p) = heap_page(k, a)? {
        return Ok((region, p));
    }
    Ok((region, classic_page(k, a)?))
}
