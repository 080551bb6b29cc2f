//! Address translation: the kernel address space, the x64 page walk (4 or 5 levels, large
//! pages) and the search for the next present page.

use std::ops::ControlFlow;

use super::{ADDR, Memory, PAGE, Space, TABLE_CHUNK};
use crate::target::{NotPresent, TargetError};

/// Where a page walk ended.
enum Walk {
    /// At this physical address.
    Mapped(u64),
    /// At an entry that is not present, at this level (0: the PTE).
    Absent { level: u8, entry: u64 },
}

/// One paging structure's entry read on a page walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LevelEntry {
    /// Its level: 0 the PTE, 1 the PDE, 2 the PDPTE, 3 the PML4E, 4 the PML5E.
    pub level: u8,
    /// Where the entry is in physical memory.
    pub entry_pa: u64,
    /// What it holds.
    pub value: u64,
}

/// Where a page walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkEnd {
    /// At a physical address, in a page of `page_size` bytes (4 KB, 2 MB or 1 GB).
    Mapped {
        /// The physical address.
        pa: u64,
        /// The size of the page it is in.
        page_size: u64,
    },
    /// At the entry of this level, which is not present.
    NotPresent {
        /// Its level (0 the PTE).
        level: u8,
    },
}

/// A page walk: each level's entry and where it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageWalk {
    /// The virtual address.
    pub va: u64,
    /// The root of the walk (CR3 without its flags).
    pub dtb: u64,
    /// Paging levels (4 or 5).
    pub levels: u32,
    /// The entries read, top level first; the last is where the walk ended.
    pub entries: Vec<LevelEntry>,
    /// Where it ended.
    pub end: WalkEnd,
}

/// Whether an address is canonical for 48-bit (or, with `la57`, 57-bit) virtual addresses.
pub fn canonical(va: u64, levels: u32) -> bool {
    let bits = if levels == 5 { 56 } else { 47 };
    let top = va >> bits;
    top == 0 || top == (1u64 << (64 - bits)) - 1
}

impl Memory {
    /// The kernel address space: the target's directory table base, or processor 0's CR3
    /// (whose CR4 also tells 4- or 5-level paging).
    pub fn kernel_space(&mut self) -> Result<Space, TargetError> {
        if let Some(s) = self.kernel {
            return Ok(s);
        }
        let dtb = match self.info.directory_table_base {
            Some(d) => d,
            None => {
                self.check_gone()?;
                let sr = match self.target.special_registers(0) {
                    Ok(sr) => sr,
                    Err(e) => {
                        self.record(&e, || "reading processor 0's special registers".into());
                        return Err(e);
                    }
                };
                let q = |o: usize| {
                    sr.get(o..o + 8)
                        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                };
                if q(0x18) & (1 << 12) != 0 {
                    self.levels = 5;
                }
                q(0x10)
            }
        };
        let s = Space { dtb: dtb & ADDR };
        self.kernel = Some(s);
        Ok(s)
    }

    /// Paging levels (4 or 5).
    pub fn paging_levels(&self) -> u32 {
        self.levels
    }

    fn table_entry(&mut self, entry_pa: u64) -> Result<u64, TargetError> {
        self.stats.translations += 1;
        self.note_needed(entry_pa, 8);
        if !self.cached(entry_pa, 8) {
            let chunk = entry_pa & !(TABLE_CHUNK - 1);
            self.fetch(chunk, TABLE_CHUNK)?;
        }
        let mut b = [0u8; 8];
        self.copy_out(entry_pa, &mut b);
        Ok(u64::from_le_bytes(b))
    }

    /// Translates `va` in `space`.
    pub fn translate(&mut self, space: Space, va: u64) -> Result<u64, TargetError> {
        let r = self.translate_inner(space, va);
        if let Err(e) = &r {
            self.record(e, || format!("translation of {va:#x}"));
        }
        r
    }

    pub(super) fn translate_inner(&mut self, space: Space, va: u64) -> Result<u64, TargetError> {
        if !canonical(va, self.levels) {
            return Err(TargetError::NonCanonical(va));
        }
        self.refresh();
        match self.walk(space, va)? {
            Walk::Mapped(pa) => Ok(pa),
            Walk::Absent { level, entry: e } => {
                let reason = if e == 0 {
                    NotPresent::NotMapped { level }
                } else if level > 0 {
                    NotPresent::Invalid { level, entry: e }
                } else if e & (1 << 10) != 0 {
                    NotPresent::Prototype { pte: e }
                } else if e & (1 << 11) != 0 {
                    NotPresent::Transition { pte: e }
                } else {
                    NotPresent::PagedOut { pte: e }
                };
                Err(TargetError::NotPresent {
                    address: va,
                    reason,
                })
            }
        }
    }

    /// The page walk of a canonical `va`: where it lands, or the level whose entry is not
    /// present (0 is the PTE) and that entry. Large pages (PDE, PDPTE) end the walk.
    fn walk(&mut self, space: Space, va: u64) -> Result<Walk, TargetError> {
        self.walk_entries(space, va, &mut |_| {})
    }

    /// [`Memory::walk`], handing each entry read to `each` on the way (top level first).
    fn walk_entries(
        &mut self,
        space: Space,
        va: u64,
        each: &mut dyn FnMut(LevelEntry),
    ) -> Result<Walk, TargetError> {
        let mut table = space.dtb & ADDR;
        for level in (0..self.levels).rev() {
            let idx = (va >> (12 + 9 * level)) & 0x1ff;
            let entry_pa = table + 8 * idx;
            let e = self.table_entry(entry_pa)?;
            each(LevelEntry {
                level: level as u8,
                entry_pa,
                value: e,
            });
            if e & 1 == 0 {
                return Ok(Walk::Absent {
                    level: level as u8,
                    entry: e,
                });
            }
            if (level == 1 || level == 2) && e & 0x80 != 0 {
                let size = 1u64 << (12 + 9 * level);
                return Ok(Walk::Mapped((e & ADDR & !(size - 1)) | (va & (size - 1))));
            }
            table = e & ADDR;
        }
        Ok(Walk::Mapped(table | (va & (PAGE - 1))))
    }

    /// Every paging level's entry on the way to `va` in `space`, as the processor reads them
    /// from the root down, and where the walk ends: at a physical address (the page's size
    /// said, so a large page shows as one) or at the first entry that is not present.
    pub fn page_walk(&mut self, space: Space, va: u64) -> Result<PageWalk, TargetError> {
        if !canonical(va, self.levels) {
            return Err(TargetError::NonCanonical(va));
        }
        self.refresh();
        let mut entries = Vec::with_capacity(self.levels as usize);
        let r = self.walk_entries(space, va, &mut |e| entries.push(e));
        let end = match r {
            Ok(Walk::Mapped(pa)) => {
                let last = entries.last().map_or(0, |e| e.level);
                WalkEnd::Mapped {
                    pa,
                    page_size: 1u64 << (12 + 9 * u32::from(last)),
                }
            }
            Ok(Walk::Absent { level, .. }) => WalkEnd::NotPresent { level },
            Err(e) => {
                self.record(&e, || format!("page walk of {va:#x}"));
                return Err(e);
            }
        };
        Ok(PageWalk {
            va,
            dtb: space.dtb & ADDR,
            levels: self.levels,
            entries,
            end,
        })
    }

    /// The first address at or after `va` (below `end`) whose page is present, skipping whole
    /// unmapped page-table ranges at once; `None` when there is none.
    pub fn next_present(
        &mut self,
        space: Space,
        va: u64,
        end: u64,
    ) -> Result<Option<u64>, TargetError> {
        let r = self.next_present_inner(space, va, end);
        if let Err(e) = &r {
            self.record(e, || format!("page-table walk from {va:#x}"));
        }
        r
    }

    fn next_present_inner(
        &mut self,
        space: Space,
        mut va: u64,
        end: u64,
    ) -> Result<Option<u64>, TargetError> {
        va &= !(PAGE - 1);
        let mut steps = 0u32;
        while va < end {
            steps += 1;
            if steps > 1 << 20 {
                return Err(TargetError::TooLarge {
                    what: "pages probed",
                    value: u64::from(steps),
                    limit: 1 << 20,
                });
            }
            if !canonical(va, self.levels) {
                // Jump to the start of the kernel half.
                let bits = if self.levels == 5 { 56 } else { 47 };
                let next = !((1u64 << bits) - 1);
                if next <= va {
                    return Ok(None);
                }
                va = next;
                continue;
            }
            match self.walk(space, va)? {
                Walk::Mapped(_) => return Ok(Some(va)),
                Walk::Absent { level, .. } => {
                    // Not present at this level: the whole span it maps is absent.
                    let span = 1u64 << (12 + 9 * u32::from(level));
                    match (va & !(span - 1)).checked_add(span) {
                        Some(n) => va = n,
                        None => return Ok(None),
                    }
                }
            }
        }
        Ok(None)
    }
}

/// What [`Memory::walk_mappings`] finds, in address order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped {
    /// A page-table page (the root included), by frame number.
    Table(u64),
    /// `count` pages mapped from `va` onto consecutive frames from `pfn` (one 4 KB page, or a
    /// whole 2 MB or 1 GB page).
    Pages {
        /// The first virtual address.
        va: u64,
        /// The first frame.
        pfn: u64,
        /// Pages.
        count: u64,
    },
    /// A page-table page the target could not read (what it maps is unknown).
    Unreadable {
        /// Its frame.
        pfn: u64,
        /// The first virtual address it maps.
        va: u64,
        /// Why.
        error: TargetError,
    },
}

/// Most page-table pages one walk visits (a loop in damaged tables ends there).
const MAX_TABLES: u64 = 1 << 22;

impl Memory {
    /// Walks the page tables of `space` over the canonical addresses `[first, last]` (both
    /// inclusive), in address order: each page-table page visited and each present mapping is
    /// handed to `each`. Table pages are read past the cache (two requests each at KDNET's
    /// limit). The top-level entry that points back at the root (Windows' self-map) is not
    /// followed: what it maps is the page tables themselves, visited anyway. A failure of the
    /// moment ends the walk with it; a table the target cannot read is handed over as
    /// [`Mapped::Unreadable`] and the walk goes on.
    pub fn walk_mappings(
        &mut self,
        space: Space,
        first: u64,
        last: u64,
        each: &mut dyn FnMut(Mapped) -> ControlFlow<()>,
    ) -> Result<(), TargetError> {
        let root = space.dtb & ADDR;
        let mut visited = 0u64;
        let top = self.levels - 1;
        let _ = self.walk_table(root, top, 0, (first, last), root, &mut visited, each)?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn walk_table(
        &mut self,
        table: u64,
        level: u32,
        base: u64,
        (first, last): (u64, u64),
        root: u64,
        visited: &mut u64,
        each: &mut dyn FnMut(Mapped) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, TargetError> {
        *visited += 1;
        if *visited > MAX_TABLES {
            return Err(TargetError::TooLarge {
                what: "page-table pages walked",
                value: *visited,
                limit: MAX_TABLES,
            });
        }
        let mut page = vec![0u8; PAGE as usize];
        let (got, error) = self.fetch_direct(table, &mut page);
        if let Some(error) = error {
            if error.is_transient() {
                return Err(error);
            }
            return Ok(each(Mapped::Unreadable {
                pfn: table / PAGE,
                va: base,
                error,
            }));
        }
        debug_assert_eq!(got, PAGE);
        if each(Mapped::Table(table / PAGE)).is_break() {
            return Ok(ControlFlow::Break(()));
        }
        let shift = 12 + 9 * level;
        let span = 1u64 << shift;
        let top = level == self.levels - 1;
        let sign = if self.levels == 5 { 56 } else { 47 };
        for idx in 0..512u64 {
            let mut va = base.wrapping_add(idx << shift);
            if top && (va >> sign) & 1 == 1 {
                va |= !((1u64 << sign) - 1);
            }
            let end = va.wrapping_add(span - 1);
            if end < first || va > last {
                continue;
            }
            let o = (idx * 8) as usize;
            let e = u64::from_le_bytes(page[o..o + 8].try_into().unwrap_or([0; 8]));
            if e & 1 == 0 {
                continue;
            }
            let frame = e & ADDR;
            if top && frame == root {
                continue;
            }
            let flow = if level == 0 {
                each(Mapped::Pages {
                    va,
                    pfn: frame / PAGE,
                    count: 1,
                })
            } else if (level == 1 || level == 2) && e & 0x80 != 0 {
                each(Mapped::Pages {
                    va,
                    pfn: (frame & !(span - 1)) / PAGE,
                    count: span / PAGE,
                })
            } else {
                self.walk_table(frame, level - 1, va, (first, last), root, visited, each)?
            };
            if flow.is_break() {
                return Ok(ControlFlow::Break(()));
            }
        }
        Ok(ControlFlow::Continue(()))
    }
}
