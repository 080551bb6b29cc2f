//! Physical memory as the kernel describes it (`nt!MmPhysicalMemoryBlock`), and the frames a
//! kernel memory dump holds: those mapped in an address space, with its page tables.

use std::ops::ControlFlow;

use super::{Kernel, ModelError};
use crate::mem::{Mapped, Space};
use crate::target::TargetError;

/// Most runs a descriptor may have (real machines have a handful).
const MAX_RUNS: u32 = 4096;
/// Frames of x64 physical memory (52-bit addresses) are below this.
const MAX_PFN: u64 = 1 << 40;

/// `_PHYSICAL_MEMORY_DESCRIPTOR` as every kernel table of 7601 to 22000 lays it out (used where
/// the kernel's table is not at hand): NumberOfRuns (u32) at 0, NumberOfPages (u64) at 8, then
/// `_PHYSICAL_MEMORY_RUN`s {BasePage, PageCount} (two u64, 16 bytes) from 0x10.
const LAYOUT: DescriptorLayout = DescriptorLayout {
    runs: 0,
    pages: 8,
    run: 0x10,
    run_size: 16,
    base: 0,
    count: 8,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DescriptorLayout {
    runs: u64,
    pages: u64,
    run: u64,
    run_size: u64,
    base: u64,
    count: u64,
}

/// The RAM the kernel describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhysicalMemory {
    /// Where the descriptor is.
    pub descriptor: u64,
    /// Runs of consecutive frames: (first frame, count), in frame order.
    pub runs: Vec<(u64, u64)>,
    /// Pages in all (the descriptor's NumberOfPages, equal to the runs' sum).
    pub pages: u64,
}

impl PhysicalMemory {
    /// Whether frame `pfn` is RAM.
    pub fn contains(&self, pfn: u64) -> bool {
        let i = self.runs.partition_point(|(b, _)| *b <= pfn);
        i > 0 && pfn < self.runs[i - 1].0 + self.runs[i - 1].1
    }

    /// One past the highest frame.
    pub fn end(&self) -> u64 {
        self.runs.last().map_or(0, |(b, c)| b + c)
    }
}

/// The frames of a kernel memory dump, gathered from page-table walks: only RAM is taken (a
/// mapping of device memory is counted and left out, as Windows leaves it out of its dumps).
#[derive(Debug, Clone)]
pub struct FrameSet {
    ram: PhysicalMemory,
    words: Vec<u64>,
    /// Mapped frames that are not RAM (device memory), left out.
    pub not_ram: u64,
    /// Page-table pages the target could not read: (frame, first address it maps, why).
    pub unreadable_tables: Vec<(u64, u64, String)>,
}

impl FrameSet {
    /// An empty set over the RAM of `ram`.
    pub fn new(ram: PhysicalMemory) -> FrameSet {
        let words = vec![0u64; ram.end().div_ceil(64) as usize];
        FrameSet {
            ram,
            words,
            not_ram: 0,
            unreadable_tables: Vec::new(),
        }
    }

    /// Adds `count` frames from `pfn` (those that are RAM).
    pub fn insert(&mut self, pfn: u64, count: u64) {
        let end = pfn.saturating_add(count);
        let mut ram = 0u64;
        for &(b, c) in &self.ram.runs {
            let (lo, hi) = (b.max(pfn), (b + c).min(end));
            if lo >= hi {
                continue;
            }
            ram += hi - lo;
            for f in lo..hi {
                self.words[(f / 64) as usize] |= 1 << (f % 64);
            }
        }
        self.not_ram += count - ram;
    }

    /// The bitmap of frames taken (bit *n*: frame *n*).
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Frames taken.
    pub fn len(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Whether none is taken.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    /// Whether frame `pfn` is taken.
    pub fn contains(&self, pfn: u64) -> bool {
        self.words
            .get((pfn / 64) as usize)
            .is_some_and(|w| w & (1 << (pfn % 64)) != 0)
    }
}

impl Kernel {
    /// The RAM the kernel describes: `nt!MmPhysicalMemoryBlock` (found by its symbol, else
    /// through the debugger data block) points at a `_PHYSICAL_MEMORY_DESCRIPTOR`, laid out as
    /// the kernel's table says (or, without the table, as every kernel of 7601 to 22000 lays
    /// it out). The runs must be apart, within x64's physical addresses, and add up to the
    /// descriptor's page count.
    pub fn physical_memory(&mut self) -> Result<PhysicalMemory, ModelError> {
        let variable = if self.has_sym("MmPhysicalMemoryBlock") {
            self.sym("MmPhysicalMemoryBlock")?
        } else {
            match self.kdbg()?.field("MmPhysicalMemoryBlock") {
                Some(a) if a != 0 => a,
                _ => {
                    return Err(ModelError::Corrupt(
                        "neither the kernel's symbols nor its debugger data block give \
                         MmPhysicalMemoryBlock"
                            .into(),
                    ));
                }
            }
        };
        let l = self.descriptor_layout()?;
        let descriptor = self.mem.u64(variable)?;
        if descriptor == 0 {
            return Err(ModelError::Corrupt(
                "nt!MmPhysicalMemoryBlock is null: the kernel describes no physical memory".into(),
            ));
        }
        let n = self.mem.u32(descriptor + l.runs)?;
        let pages = self.mem.u64(descriptor + l.pages)?;
        if n == 0 || n > MAX_RUNS {
            return Err(ModelError::Corrupt(format!(
                "the physical memory descriptor at {descriptor:#x} has {n} runs"
            )));
        }
        let raw = self
            .mem
            .kread(descriptor + l.run, (u64::from(n) * l.run_size) as usize)?;
        let mut runs = Vec::with_capacity(n as usize);
        for i in 0..u64::from(n) {
            let at = (i * l.run_size) as usize;
            let q = |o: u64| {
                let o = at + o as usize;
                u64::from_le_bytes(raw[o..o + 8].try_into().unwrap_or([0; 8]))
            };
            let (base, count) = (q(l.base), q(l.count));
            if count == 0 || count > MAX_PFN || base > MAX_PFN - count {
                return Err(ModelError::Corrupt(format!(
                    "physical memory run {i} has {count:#x} pages from frame {base:#x}"
                )));
            }
            runs.push((base, count));
        }
        runs.sort_unstable();
        if let Some(w) = runs.windows(2).find(|w| w[0].0 + w[0].1 > w[1].0) {
            return Err(ModelError::Corrupt(format!(
                "physical memory runs from frames {:#x} and {:#x} overlap",
                w[0].0, w[1].0
            )));
        }
        let sum: u64 = runs.iter().map(|r| r.1).sum();
        if sum != pages {
            return Err(ModelError::Corrupt(format!(
                "the physical memory runs hold {sum:#x} pages, the descriptor says {pages:#x}"
            )));
        }
        Ok(PhysicalMemory {
            descriptor,
            runs,
            pages,
        })
    }

    fn descriptor_layout(&self) -> Result<DescriptorLayout, ModelError> {
        let Ok(nt) = self.nt() else {
            return Ok(LAYOUT);
        };
        let (d, r) = ("_PHYSICAL_MEMORY_DESCRIPTOR", "_PHYSICAL_MEMORY_RUN");
        if !nt.has_type(d) || !nt.has_type(r) {
            return Ok(LAYOUT);
        }
        Ok(DescriptorLayout {
            runs: nt.offset(d, "NumberOfRuns")?,
            pages: nt.offset(d, "NumberOfPages")?,
            run: nt.offset(d, "Run")?,
            run_size: nt.size_of(r)?,
            base: nt.offset(r, "BasePage")?,
            count: nt.offset(r, "PageCount")?,
        })
    }

    /// Adds to `set` the frames mapped in `space` over `[first, last]` and the page-table
    /// pages that map them (the root included). A failure of the moment ends it with that
    /// error; a page table that cannot be read is recorded in the set.
    pub fn gather_frames(
        &mut self,
        space: Space,
        first: u64,
        last: u64,
        set: &mut FrameSet,
    ) -> Result<(), ModelError> {
        let r = self.mem.walk_mappings(space, first, last, &mut |m| {
            match m {
                Mapped::Table(pfn) => set.insert(pfn, 1),
                Mapped::Pages { pfn, count, .. } => set.insert(pfn, count),
                Mapped::Unreadable { pfn, va, error } => {
                    set.unreadable_tables.push((pfn, va, error.to_string()))
                }
            }
            ControlFlow::Continue(())
        });
        r.map_err(|e: TargetError| ModelError::Target(e))
    }
}
