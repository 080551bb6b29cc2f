//! Kernel pool as each build lays it out.
//!
//! - Classic pool (builds before 18362): 4 KB pages of blocks, each with a `_POOL_HEADER`
//!   (PreviousSize, BlockSize in 16-byte units, PoolType with the in-use bit 0x2 and bit 0 for
//!   paged, PoolTag) chained so that each header's PreviousSize equals the previous BlockSize.
//! - Segment heap (18362 and later): `nt!ExPoolState` → pool node → `_SEGMENT_HEAP` per pool
//!   kind → 1 MB segments (`_HEAP_PAGE_SEGMENT`, signature encoded with the segment address, the
//!   heap key and the owning context) whose page-range descriptors mark LFH (0x0B) and VS (0x0F)
//!   subsegments. LFH blocks begin with a `_POOL_HEADER`; VS chunks begin with a chunk header
//!   encoded with its own address and the heap key, then a `_POOL_HEADER`.
//! - All builds: allocations of a page or more are whole pages tracked in `PoolBigPageTable`;
//!   per-tag counters in `PoolTrackTable` and the per-processor `ExPoolTagTables`; special pool
//!   pages with a no-access guard page after them.
//!
//! Facts: extensions.md §3. The `AllocTracker` bitmap of the segment heap is not written (a
//! debugger finds segments by their signatures instead).

use std::collections::BTreeMap;

use crate::SimError;
use crate::families::PoolFamily;
use crate::kernel::{Kernel, Region};
use crate::mem::PAGE;

/// Non-paged or paged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PoolKind {
    /// NonPagedPool(Nx).
    NonPaged,
    /// PagedPool.
    Paged,
}

impl PoolKind {
    /// The POOL_TYPE base value.
    pub fn base_type(self) -> u64 {
        match self {
            PoolKind::NonPaged => 0,
            PoolKind::Paged => 1,
        }
    }
}

/// A tag's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TagCounts {
    /// Non-paged allocations.
    pub np_allocs: u64,
    /// Non-paged frees.
    pub np_frees: u64,
    /// Non-paged bytes outstanding.
    pub np_bytes: u64,
    /// Paged allocations.
    pub p_allocs: u64,
    /// Paged frees.
    pub p_frees: u64,
    /// Paged bytes outstanding.
    pub p_bytes: u64,
}

/// One allocation, as the simulator remembers it (tests and scenarios use this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    /// Address of the caller's data.
    pub data: u64,
    /// Address of its POOL_HEADER (the page for big allocations).
    pub header: u64,
    /// Bytes asked for.
    pub size: u64,
    /// Bytes of the block (header included), as the tracker counts them.
    pub block: u64,
    /// Tag.
    pub tag: u32,
    /// Pool.
    pub kind: PoolKind,
    /// How it was placed.
    pub how: Placement,
}

/// Where an allocation landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A classic pool page.
    Classic,
    /// A segment-heap LFH block.
    Lfh,
    /// A segment-heap VS chunk.
    Vs,
    /// Whole pages, in the big-page table.
    Big,
    /// A special-pool page.
    Special,
}

/// A tag from four ASCII characters.
pub fn tag(s: &str) -> u32 {
    let mut b = [b' '; 4];
    for (i, c) in s.bytes().take(4).enumerate() {
        b[i] = c;
    }
    u32::from_le_bytes(b)
}

#[derive(Debug, Default)]
struct ClassicPage {
    va: u64,
    used: u64,
    prev: u64,
}

#[derive(Debug)]
struct SegHeap {
    heap: u64,
    segments: Vec<u64>,
    /// Next free unit in the newest segment.
    next_unit: u64,
    lfh: BTreeMap<u64, LfhSub>,
    vs: Option<VsSub>,
}

#[derive(Debug, Clone, Copy)]
struct LfhSub {
    va: u64,
    block: u64,
    first: u64,
    count: u64,
    /// Next index to try.
    used: u64,
    allocated: u64,
}

#[derive(Debug, Clone, Copy)]
struct VsSub {
    va: u64,
    size: u64,
    /// Offset of the next chunk.
    next: u64,
    prev_units: u64,
}

/// Units per segment (1 MB of 4 KB units).
const SEG_UNITS: u64 = 256;
const SEG_SIZE: u64 = SEG_UNITS * PAGE;
/// First unit after the segment's own metadata (0x2000 bytes).
const FIRST_DESCRIPTOR: u64 = 2;
/// Units per LFH subsegment.
const LFH_UNITS: u64 = 16;
/// Units per VS subsegment.
const VS_UNITS: u64 = 32;
/// Largest LFH request (user bytes).
pub const LFH_MAX: u64 = 0x200;
/// Requests of this many bytes or more are whole pages in the big-page table.
pub const BIG_MIN: u64 = 0xFE0;
/// The constant mixed into segment signatures.
pub const SEGMENT_SIGNATURE_XOR: u64 = 0xA2E6_4EAD_A2E6_4EAD;
/// Signature of a segment heap.
pub const SEGMENT_HEAP_SIGNATURE: u32 = 0xDDEE_DDEE;
/// Marks the first descriptor of an allocated range.
pub const TREE_SIGNATURE: u32 = 0xCCDD_CCDD;
/// RangeFlags of an LFH subsegment.
pub const RANGE_LFH: u8 = 0x0B;
/// RangeFlags of a VS subsegment.
pub const RANGE_VS: u8 = 0x0F;
/// XOR constant of the VS subsegment signature.
pub const VS_SIGNATURE_XOR: u16 = 0x2BED;

/// The pool of the machine being built.
#[derive(Debug)]
pub struct Pool {
    segment_heap: bool,
    classic: BTreeMap<PoolKind, ClassicPage>,
    heaps: BTreeMap<PoolKind, SegHeap>,
    /// Heap key and LFH key (random per boot).
    pub heap_key: u64,
    /// LFH key.
    pub lfh_key: u64,
    /// Per-tag counters, split by processor table.
    pub tags: BTreeMap<u32, Vec<TagCounts>>,
    /// Everything allocated.
    pub allocations: Vec<Allocation>,
    cpus: usize,
    rr: usize,
}

impl Pool {
    /// Pool for the build.
    pub fn new(k: &Kernel, cpus: usize, seed: u64) -> Pool {
        let mut r = kdnet::rng::SplitMix64::new(seed ^ 0x9001);
        Pool {
            segment_heap: k.families.pool == PoolFamily::SegmentHeap,
            classic: BTreeMap::new(),
            heaps: BTreeMap::new(),
            heap_key: r.next_u64(),
            lfh_key: r.next_u64(),
            tags: BTreeMap::new(),
            allocations: Vec::new(),
            cpus: cpus.max(1),
            rr: 0,
        }
    }

    /// Whether this build uses the segment heap.
    pub fn segment_heap(&self) -> bool {
        self.segment_heap
    }

    fn account(&mut self, tag: u32, kind: PoolKind, bytes: u64) {
        let cpu = self.rr % self.cpus;
        self.rr += 1;
        let v = self
            .tags
            .entry(tag)
            .or_insert_with(|| vec![TagCounts::default(); self.cpus]);
        let c = &mut v[cpu];
        match kind {
            PoolKind::NonPaged => {
                c.np_allocs += 1;
                c.np_bytes += bytes;
            }
            PoolKind::Paged => {
                c.p_allocs += 1;
                c.p_bytes += bytes;
            }
        }
    }

    /// Counts a free (the block stays in memory marked free where the layout allows).
    pub fn account_free(&mut self, tag: u32, kind: PoolKind, bytes: u64) {
        let cpu = self.rr % self.cpus;
        self.rr += 1;
        let v = self
            .tags
            .entry(tag)
            .or_insert_with(|| vec![TagCounts::default(); self.cpus]);
        let c = &mut v[cpu];
        match kind {
            PoolKind::NonPaged => {
                c.np_frees += 1;
                c.np_bytes = c.np_bytes.saturating_sub(bytes);
            }
            PoolKind::Paged => {
                c.p_frees += 1;
                c.p_bytes = c.p_bytes.saturating_sub(bytes);
            }
        }
    }

    /// Allocates `size` bytes with `tag`; returns the data address (zero-filled).
    pub fn alloc(
        &mut self,
        k: &mut Kernel,
        kind: PoolKind,
        size: u64,
        tag: u32,
    ) -> Result<u64, SimError> {
        let size = size.max(1);
        let a = if size >= BIG_MIN {
            self.alloc_big(k, kind, size, tag)?
        } else if self.segment_heap {
            if size <= LFH_MAX {
                self.alloc_lfh(k, kind, size, tag)?
            } else {
                self.alloc_vs(k, kind, size, tag)?
            }
        } else {
            self.alloc_classic(k, kind, size, tag)?
        };
        self.account(tag, kind, a.block);
        self.allocations.push(a);
        Ok(a.data)
    }

    fn region(kind: PoolKind) -> Region {
        match kind {
            PoolKind::NonPaged => Region::NonPagedPool,
            PoolKind::Paged => Region::PagedPool,
        }
    }

    /// Writes a POOL_HEADER at `at`.
    pub fn write_header(
        k: &mut Kernel,
        at: u64,
        prev_units: u64,
        units: u64,
        pool_type: u64,
        tag: u32,
    ) -> Result<(), SimError> {
        k.set(at, "_POOL_HEADER", "PreviousSize", prev_units)?;
        k.set(at, "_POOL_HEADER", "PoolIndex", 0)?;
        k.set(at, "_POOL_HEADER", "BlockSize", units)?;
        k.set(at, "_POOL_HEADER", "PoolType", pool_type)?;
        k.set(at, "_POOL_HEADER", "PoolTag", u64::from(tag))?;
        Ok(())
    }

    fn in_use_type(kind: PoolKind) -> u64 {
        kind.base_type() | 2
    }

    fn alloc_classic(
        &mut self,
        k: &mut Kernel,
        kind: PoolKind,
        size: u64,
        tag: u32,
    ) -> Result<Allocation, SimError> {
        let units = (size + 16).div_ceil(16);
        let page_units = PAGE / 16;
        let cur = self.classic.entry(kind).or_default();
        if cur.va == 0 || cur.used + units > page_units {
            if cur.va != 0 && cur.used < page_units {
                // Close the page with a free block.
                let (va, used, prev) = (cur.va, cur.used, cur.prev);
                Self::write_header(k, va + used * 16, prev, page_units - used, 0, tag_free())?;
            }
            let va = k.alloc_region(Self::region(kind), PAGE, PAGE)?;
            let cur = self.classic.entry(kind).or_default();
            *cur = ClassicPage {
                va,
                used: 0,
                prev: 0,
            };
        }
        let cur = self.classic.entry(kind).or_default();
        let at = cur.va + cur.used * 16;
        let prev = cur.prev;
        cur.used += units;
        cur.prev = units;
        Self::write_header(k, at, prev, units, Self::in_use_type(kind), tag)?;
        Ok(Allocation {
            data: at + 16,
            header: at,
            size,
            block: units * 16,
            tag,
            kind,
            how: Placement::Classic,
        })
    }

    /// Closes the open classic pages (their tails become free blocks).
    fn close_classic(&mut self, k: &mut Kernel) -> Result<(), SimError> {
        let page_units = PAGE / 16;
        for cur in self.classic.values_mut() {
            if cur.va != 0 && cur.used < page_units {
                Self::write_header(
                    k,
                    cur.va + cur.used * 16,
                    cur.prev,
                    page_units - cur.used,
                    0,
                    tag_free(),
                )?;
                cur.prev = page_units - cur.used;
                cur.used = page_units;
            }
        }
        Ok(())
    }

    fn alloc_big(
        &mut self,
        k: &mut Kernel,
        kind: PoolKind,
        size: u64,
        tag: u32,
    ) -> Result<Allocation, SimError> {
        let pages = size.div_ceil(PAGE);
        let va = k.alloc_region(Self::region(kind), pages * PAGE, PAGE)?;
        Ok(Allocation {
            data: va,
            header: va,
            size,
            block: pages * PAGE,
            tag,
            kind,
            how: Placement::Big,
        })
    }

    /// A special-pool allocation: the data at the end of its page, the header-shaped record at
    /// the page start, a no-access guard page after it.
    pub fn alloc_special(
        &mut self,
        k: &mut Kernel,
        kind: PoolKind,
        size: u64,
        tag: u32,
    ) -> Result<u64, SimError> {
        let size = size.clamp(1, PAGE - 16);
        let page = k.alloc_region(Region::SpecialPool, PAGE, PAGE)?;
        // Guard page: reserved, never mapped.
        k.reserve_region(Region::SpecialPool, PAGE, PAGE);
        let data = page + PAGE - size.div_ceil(16) * 16;
        let pattern = 0x5d_u8;
        let fill = vec![pattern; (data - page - 16) as usize];
        k.write(page + 16, &fill);
        let flags = match kind {
            PoolKind::Paged => 0x8000,
            PoolKind::NonPaged => 0,
        };
        // Ulong1 holds the requested size and flags; BlockSize the fill pattern.
        k.w32(page, (size as u32) | flags);
        k.set(page, "_POOL_HEADER", "BlockSize", u64::from(pattern))?;
        k.set(page, "_POOL_HEADER", "PoolTag", u64::from(tag))?;
        self.account(tag, kind, PAGE);
        self.allocations.push(Allocation {
            data,
            header: page,
            size,
            block: PAGE,
            tag,
            kind,
            how: Placement::Special,
        });
        Ok(data)
    }

    // ---- segment heap ----

    fn heap(&mut self, k: &mut Kernel, kind: PoolKind) -> Result<&mut SegHeap, SimError> {
        if let std::collections::btree_map::Entry::Vacant(e) = self.heaps.entry(kind) {
            let size = k.size("_SEGMENT_HEAP")?;
            let heap = k.alloc_region(Region::NonPagedPool, size, PAGE)?;
            k.w32(
                heap + k.off("_SEGMENT_HEAP", "Signature")?,
                SEGMENT_HEAP_SIGNATURE,
            );
            let ctx = heap + k.off("_SEGMENT_HEAP", "SegContexts")?;
            k.set(ctx, "_HEAP_SEG_CONTEXT", "SegmentMask", !(SEG_SIZE - 1))?;
            k.set(ctx, "_HEAP_SEG_CONTEXT", "UnitShift", 12)?;
            k.set(ctx, "_HEAP_SEG_CONTEXT", "PagesPerUnitShift", 0)?;
            k.set(
                ctx,
                "_HEAP_SEG_CONTEXT",
                "FirstDescriptorIndex",
                FIRST_DESCRIPTOR,
            )?;
            let head = ctx + k.off("_HEAP_SEG_CONTEXT", "SegmentListHead")?;
            k.list_init(head);
            // The 64 KB-unit context exists but holds no segments here.
            let ctx1 = ctx + k.size("_HEAP_SEG_CONTEXT")?;
            k.set(
                ctx1,
                "_HEAP_SEG_CONTEXT",
                "SegmentMask",
                !((SEG_SIZE << 4) - 1),
            )?;
            k.set(ctx1, "_HEAP_SEG_CONTEXT", "UnitShift", 16)?;
            k.set(ctx1, "_HEAP_SEG_CONTEXT", "PagesPerUnitShift", 4)?;
            k.set(ctx1, "_HEAP_SEG_CONTEXT", "FirstDescriptorIndex", 1)?;
            let head1 = ctx1 + k.off("_HEAP_SEG_CONTEXT", "SegmentListHead")?;
            k.list_init(head1);
            e.insert(SegHeap {
                heap,
                segments: Vec::new(),
                next_unit: SEG_UNITS,
                lfh: BTreeMap::new(),
                vs: None,
            });
        }
        Ok(self.heaps.get_mut(&kind).expect("inserted above"))
    }

    /// Takes `units` units from the heap's segments; returns the range address.
    fn take_units(
        &mut self,
        k: &mut Kernel,
        kind: PoolKind,
        units: u64,
        flags: u8,
    ) -> Result<u64, SimError> {
        let key = self.heap_key;
        let need_new = {
            let h = self.heap(k, kind)?;
            h.next_unit + units > SEG_UNITS
        };
        if need_new {
            let seg = {
                // 1 MB-aligned segment.
                let va = k.reserve_region(Self::region(kind), SEG_SIZE, SEG_SIZE);
                k.map(va, FIRST_DESCRIPTOR * PAGE, true);
                va
            };
            let h = self.heaps.get_mut(&kind).expect("created");
            let ctx = h.heap + k.off("_SEGMENT_HEAP", "SegContexts")?;
            let head = ctx + k.off("_HEAP_SEG_CONTEXT", "SegmentListHead")?;
            k.list_append(head, seg + k.off("_HEAP_PAGE_SEGMENT", "ListEntry")?);
            k.w64(
                seg + k.off("_HEAP_PAGE_SEGMENT", "Signature")?,
                seg ^ ctx ^ key ^ SEGMENT_SIGNATURE_XOR,
            );
            h.segments.push(seg);
            h.next_unit = FIRST_DESCRIPTOR;
            let count = h.segments.len() as u64;
            k.set(ctx, "_HEAP_SEG_CONTEXT", "SegmentCount", count)?;
        }
        let h = self.heaps.get_mut(&kind).expect("created");
        let seg = *h.segments.last().expect("a segment");
        let first = h.next_unit;
        h.next_unit += units;
        let va = seg + first * PAGE;
        k.map(va, units * PAGE, true);
        let dsize = k.size("_HEAP_PAGE_RANGE_DESCRIPTOR")?;
        for u in 0..units {
            let d = seg + (first + u) * dsize;
            if u == 0 {
                k.w32(
                    d + k.off("_HEAP_PAGE_RANGE_DESCRIPTOR", "TreeSignature")?,
                    TREE_SIGNATURE,
                );
                k.set(
                    d,
                    "_HEAP_PAGE_RANGE_DESCRIPTOR",
                    "RangeFlags",
                    u64::from(flags),
                )?;
                k.set(
                    d,
                    "_HEAP_PAGE_RANGE_DESCRIPTOR",
                    "CommittedPageCount",
                    units,
                )?;
                k.set(d, "_HEAP_PAGE_RANGE_DESCRIPTOR", "UnitSize", units)?;
            } else {
                k.set(d, "_HEAP_PAGE_RANGE_DESCRIPTOR", "RangeFlags", 1)?;
                k.set(d, "_HEAP_PAGE_RANGE_DESCRIPTOR", "UnitOffset", u)?;
            }
        }
        Ok(va)
    }

    fn alloc_lfh(
        &mut self,
        k: &mut Kernel,
        kind: PoolKind,
        size: u64,
        tag: u32,
    ) -> Result<Allocation, SimError> {
        let block = (size + 16).div_ceil(16) * 16;
        let lfh_key = self.lfh_key;
        let bitmap_off = k.off("_HEAP_LFH_SUBSEGMENT", "BlockBitmap")?;
        let sub = loop {
            let next = self.heap(k, kind)?.lfh.get(&block).and_then(|s| {
                (s.used..s.count)
                    .find(|&i| !straddles(lfh_block_address(s.va, s.first, s.block, i), s.block))
                    .map(|i| (*s, i))
            });
            if let Some((s, i)) = next {
                let h = self.heaps.get_mut(&kind).expect("created");
                let e = h.lfh.get_mut(&block).expect("present");
                e.used = i + 1;
                e.allocated += 1;
                break (LfhSub { used: i, ..s }, e.allocated);
            }
            let va = self.take_units(k, kind, LFH_UNITS, RANGE_LFH)?;
            let sub_size = LFH_UNITS * PAGE;
            // Bitmap: 2 bits per block, after the subsegment header.
            let approx = (sub_size - bitmap_off) / block;
            let bitmap_bytes = (approx * 2).div_ceil(64) * 8;
            let first = (bitmap_off + bitmap_bytes).div_ceil(16) * 16;
            let count = (sub_size - first) / block;
            let encoded =
                ((block as u32) | ((first as u32) << 16)) ^ (lfh_key as u32) ^ ((va as u32) >> 12);
            k.w32(va + k.off("_HEAP_LFH_SUBSEGMENT", "BlockOffsets")?, encoded);
            k.set(va, "_HEAP_LFH_SUBSEGMENT", "BlockCount", count)?;
            k.set(va, "_HEAP_LFH_SUBSEGMENT", "FreeCount", count)?;
            let h = self.heaps.get_mut(&kind).expect("created");
            h.lfh.insert(
                block,
                LfhSub {
                    va,
                    block,
                    first,
                    count,
                    used: 0,
                    allocated: 0,
                },
            );
        };
        let (s, allocated) = sub;
        let i = s.used;
        let at = lfh_block_address(s.va, s.first, s.block, i);
        let word = s.va + bitmap_off + (2 * i / 64) * 8;
        let old = k.r64(word);
        k.w64(word, old | (1u64 << ((2 * i) % 64)));
        k.set(
            s.va,
            "_HEAP_LFH_SUBSEGMENT",
            "FreeCount",
            s.count.saturating_sub(allocated),
        )?;
        Self::write_header(k, at, 0, block / 16, Self::in_use_type(kind), tag)?;
        Ok(Allocation {
            data: at + 16,
            header: at,
            size,
            block,
            tag,
            kind,
            how: Placement::Lfh,
        })
    }

    fn alloc_vs(
        &mut self,
        k: &mut Kernel,
        kind: PoolKind,
        size: u64,
        tag: u32,
    ) -> Result<Allocation, SimError> {
        let chunk = (size + 32).div_ceil(16) * 16;
        let key = self.heap_key;
        let fits = self
            .heap(k, kind)?
            .vs
            .is_some_and(|v| v.next + chunk <= v.size);
        if !fits {
            let va = self.take_units(k, kind, VS_UNITS, RANGE_VS)?;
            let size_units = (VS_UNITS * PAGE / 16) as u16;
            k.set(va, "_HEAP_VS_SUBSEGMENT", "Size", u64::from(size_units))?;
            k.set(
                va,
                "_HEAP_VS_SUBSEGMENT",
                "Signature",
                u64::from(size_units ^ VS_SIGNATURE_XOR),
            )?;
            let h = self.heaps.get_mut(&kind).expect("created");
            h.vs = Some(VsSub {
                va,
                size: VS_UNITS * PAGE,
                next: 0x30,
                prev_units: 0,
            });
        }
        let h = self.heaps.get_mut(&kind).expect("created");
        let v = h.vs.as_mut().expect("present");
        let mut at = v.va + v.next;
        // A chunk header never ends exactly at a page end (the pool header would move to the
        // next page); step over such positions with a small free chunk.
        if (at + 16).is_multiple_of(PAGE) {
            write_vs_chunk(k, at, key, 1, v.prev_units, false)?;
            v.prev_units = 1;
            v.next += 16;
            at += 16;
        }
        let units = chunk / 16;
        write_vs_chunk(k, at, key, units, v.prev_units, true)?;
        v.prev_units = units;
        v.next += chunk;
        Self::write_header(k, at + 16, 0, units, Self::in_use_type(kind), tag)?;
        Ok(Allocation {
            data: at + 32,
            header: at + 16,
            size,
            block: chunk,
            tag,
            kind,
            how: Placement::Vs,
        })
    }

    /// Writes the pool's global structures: tracker tables, big-page table, and (segment heap)
    /// `ExPoolState`, `RtlpHpHeapGlobals`. Call once, after every allocation.
    pub fn finish(&mut self, k: &mut Kernel, cpus: usize) -> Result<(), SimError> {
        self.close_classic(k)?;
        // Close the VS subsegments with one free chunk each so a walk ends cleanly.
        let key = self.heap_key;
        for h in self.heaps.values_mut() {
            if let Some(v) = h.vs.as_mut()
                && v.next + 16 <= v.size
            {
                let rest = (v.size - v.next) / 16;
                write_vs_chunk(k, v.va + v.next, key, rest, v.prev_units, false)?;
                v.next = v.size;
            }
        }
        self.write_tracker(k, cpus)?;
        self.write_big_pages(k)?;
        if self.segment_heap {
            self.write_pool_state(k)?;
        }
        Ok(())
    }

    fn write_tracker(&self, k: &mut Kernel, cpus: usize) -> Result<(), SimError> {
        let entries: u64 = 0x800;
        let esize = k.size("_POOL_TRACKER_TABLE")?;
        let mask = entries - 1;
        let mut tables = Vec::new();
        for _ in 0..cpus.max(1) {
            tables.push(k.alloc_region(Region::NonPagedPool, entries * esize, PAGE)?);
        }
        k.w64(k.sym("PoolTrackTable")?, tables[0]);
        k.w64(k.sym("PoolTrackTableSize")?, entries);
        k.w64(k.sym("PoolTrackTableMask")?, mask);
        let per_cpu = k.sym("ExPoolTagTables")?;
        for (i, t) in tables.iter().enumerate() {
            k.w64(per_cpu + 8 * i as u64, *t);
        }
        let mut used = vec![false; entries as usize];
        for (tag, counts) in &self.tags {
            let mut idx = tag_hash(*tag) & mask;
            let mut probes = 0;
            while used[idx as usize] && probes < entries {
                idx = (idx + 1) & mask;
                probes += 1;
            }
            used[idx as usize] = true;
            for (cpu, c) in counts.iter().enumerate() {
                let Some(t) = tables.get(cpu) else { continue };
                let e = t + idx * esize;
                k.set(e, "_POOL_TRACKER_TABLE", "Key", u64::from(*tag))?;
                k.set(e, "_POOL_TRACKER_TABLE", "NonPagedAllocs", c.np_allocs)?;
                k.set(e, "_POOL_TRACKER_TABLE", "NonPagedFrees", c.np_frees)?;
                k.set(e, "_POOL_TRACKER_TABLE", "NonPagedBytes", c.np_bytes)?;
                k.set(e, "_POOL_TRACKER_TABLE", "PagedAllocs", c.p_allocs)?;
                k.set(e, "_POOL_TRACKER_TABLE", "PagedFrees", c.p_frees)?;
                k.set(e, "_POOL_TRACKER_TABLE", "PagedBytes", c.p_bytes)?;
            }
            // Every processor's table carries the key at the same index.
            for t in &tables {
                k.set(
                    t + idx * esize,
                    "_POOL_TRACKER_TABLE",
                    "Key",
                    u64::from(*tag),
                )?;
            }
        }
        Ok(())
    }

    fn write_big_pages(&self, k: &mut Kernel) -> Result<(), SimError> {
        let bigs: Vec<&Allocation> = self
            .allocations
            .iter()
            .filter(|a| a.how == Placement::Big)
            .collect();
        let mut entries: u64 = 0x400;
        while entries < 2 * bigs.len() as u64 {
            entries *= 2;
        }
        let esize = k.size("_POOL_TRACKER_BIG_PAGES")?;
        let table = k.alloc_region(Region::NonPagedPool, entries * esize, PAGE)?;
        k.w64(k.sym("PoolBigPageTable")?, table);
        k.w64(k.sym("PoolBigPageTableSize")?, entries);
        k.w64(k.sym("ExpPoolBigEntriesInUse")?, bigs.len() as u64);
        let mut used = vec![false; entries as usize];
        for a in bigs {
            let mut idx = big_hash(a.data) & (entries - 1);
            while used[idx as usize] {
                idx = (idx + 1) & (entries - 1);
            }
            used[idx as usize] = true;
            let e = table + idx * esize;
            k.set(e, "_POOL_TRACKER_BIG_PAGES", "Va", a.data)?;
            k.set(e, "_POOL_TRACKER_BIG_PAGES", "Key", u64::from(a.tag))?;
            k.set(e, "_POOL_TRACKER_BIG_PAGES", "PoolType", a.kind.base_type())?;
            k.set(e, "_POOL_TRACKER_BIG_PAGES", "NumberOfBytes", a.block)?;
        }
        Ok(())
    }

    fn write_pool_state(&self, k: &mut Kernel) -> Result<(), SimError> {
        let state = k.sym("ExPoolState")?;
        let globals = k.sym("RtlpHpHeapGlobals")?;
        k.set(globals, "_RTLP_HP_HEAP_GLOBALS", "HeapKey", self.heap_key)?;
        k.set(globals, "_RTLP_HP_HEAP_GLOBALS", "LfhKey", self.lfh_key)?;
        k.set(
            state,
            "_EX_POOL_HEAP_MANAGER_STATE",
            "HeapManager.Globals",
            globals,
        )?;
        k.set(state, "_EX_POOL_HEAP_MANAGER_STATE", "NumberOfPools", 1)?;
        let node = state + k.off("_EX_POOL_HEAP_MANAGER_STATE", "PoolNode")?;
        let heaps = node + k.off("_EX_HEAP_POOL_NODE", "Heaps")?;
        for (kind, slots) in [(PoolKind::NonPaged, [0u64, 1]), (PoolKind::Paged, [2, 3])] {
            if let Some(h) = self.heaps.get(&kind) {
                for s in slots {
                    k.w64(heaps + 8 * s, h.heap);
                }
            }
        }
        Ok(())
    }
}

/// The VS chunk header: sizes encoded with the header's address and the heap key, then the
/// segment page offset.
pub fn write_vs_chunk(
    k: &mut Kernel,
    at: u64,
    heap_key: u64,
    units: u64,
    prev_units: u64,
    allocated: bool,
) -> Result<(), SimError> {
    let raw = (units & 0xffff) << 16 | (prev_units & 0xffff) << 32 | u64::from(allocated) << 48 | 1;
    k.w64(at, raw ^ at ^ heap_key);
    let page_in_segment = (at >> 12) & 0xff;
    k.w64(at + 8, page_in_segment);
    Ok(())
}

/// Address of LFH block `i`.
pub fn lfh_block_address(sub: u64, first: u64, block: u64, i: u64) -> u64 {
    sub + first + i * block
}

/// Whether a block crosses a page boundary (such LFH blocks are never handed out).
pub fn straddles(at: u64, block: u64) -> bool {
    at / PAGE != (at + block - 1) / PAGE
}

/// Hash of a tag into the tracker table.
pub fn tag_hash(tag: u32) -> u64 {
    let h = u64::from(tag).wrapping_mul(0x9E5F);
    h ^ (h >> 32)
}

/// Hash of a big allocation's address into the big-page table.
pub fn big_hash(va: u64) -> u64 {
    let h = u64::from((va >> 12) as u32).wrapping_mul(0x9E5F);
    h ^ (h >> 32)
}

fn tag_free() -> u32 {
    tag("Free")
}
