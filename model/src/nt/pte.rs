//! A virtual address's page-table entries as Windows keeps them: the hardware walk from the
//! root (each level's entry, where it is in physical memory and, through the page tables'
//! self-map, in virtual memory), and each entry that is not valid decoded as the memory manager
//! writes it (`_MMPTE_SOFTWARE`, `_MMPTE_TRANSITION`, `_MMPTE_PROTOTYPE`): a page-file page, a
//! transition page, a prototype, demand zero.
//!
//! Kernels with the L1 Terminal Fault mitigation store an invalid entry "swizzled": XORed with
//! the memory manager's invalid-PTE mask (`nt!MiInvalidPteMask` on 7601/9600,
//! `nt!MiState.Hardware.InvalidPteMask` later) so that its frame bits never name real memory;
//! an entry whose `SwizzleBit` is clear is one of those and is XORed back before it is read. A
//! kernel whose entries have a `SwizzleBit` but whose mask cannot be read gets its entries shown
//! as stored and the result says so: a page-file offset or transition frame is then not known.

use kdnet_symbols::TypeTable;

use super::{Kernel, ModelError};
use crate::mem::{LevelEntry, PageWalk, Space, WalkEnd};

/// The page tables' self-map base of every x64 kernel before it was randomized (1607): PML4
/// slot 0x1ED.
pub const FIXED_PTE_BASE: u64 = 0xffff_f680_0000_0000;

/// A bit range (first bit, bits).
type Bits = (u32, u32);

fn take(v: u64, (pos, len): Bits) -> u64 {
    let v = v >> pos;
    if len >= 64 {
        v
    } else {
        v & ((1u64 << len) - 1)
    }
}

/// Where the memory manager keeps the parts of an entry that is not valid, from the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoftwareLayout {
    /// `SwizzleBit`, on kernels with the L1TF mitigation.
    pub swizzle: Option<u32>,
    /// `Protection`.
    pub protection: Bits,
    /// `Prototype`.
    pub prototype: u32,
    /// `Transition`.
    pub transition: u32,
    /// `PageFileLow` (the page file's number).
    pub file_low: Bits,
    /// `PageFileHigh` (the page's offset in it, in pages).
    pub file_high: Bits,
    /// `_MMPTE_TRANSITION.PageFrameNumber`.
    pub transition_pfn: Bits,
    /// `_MMPTE_PROTOTYPE.ProtoAddress`.
    pub proto_address: Bits,
}

impl SoftwareLayout {
    /// The layout the table gives.
    pub fn from_table(nt: &TypeTable) -> Result<SoftwareLayout, ModelError> {
        let bits = |ty: &str, f: &str| -> Result<Bits, ModelError> {
            nt.field(ty, f)?.bits().ok_or_else(|| {
                ModelError::Corrupt(format!("{ty}.{f} is not a bitfield in the symbol table"))
            })
        };
        let sw = "_MMPTE_SOFTWARE";
        Ok(SoftwareLayout {
            swizzle: nt
                .has_field(sw, "SwizzleBit")
                .then(|| bits(sw, "SwizzleBit").map(|b| b.0))
                .transpose()?,
            protection: bits(sw, "Protection")?,
            prototype: bits(sw, "Prototype")?.0,
            transition: bits(sw, "Transition")?.0,
            file_low: bits(sw, "PageFileLow")?,
            file_high: bits(sw, "PageFileHigh")?,
            transition_pfn: bits("_MMPTE_TRANSITION", "PageFrameNumber")?,
            proto_address: bits("_MMPTE_PROTOTYPE", "ProtoAddress")?,
        })
    }

    /// Whether a stored entry that is not valid is swizzled (its `SwizzleBit` clear). A zero
    /// entry never is.
    pub fn swizzled(&self, raw: u64) -> bool {
        raw != 0 && raw & 1 == 0 && self.swizzle.is_some_and(|b| raw >> b & 1 == 0)
    }

    /// What an entry that is not valid says, from its value as the memory manager wrote it
    /// (swizzling undone).
    pub fn decode(&self, v: u64) -> EntryState {
        if v == 0 {
            return EntryState::Zero;
        }
        let protection = take(v, self.protection) as u8;
        if v >> self.prototype & 1 == 1 {
            // ProtoAddress holds a kernel address's low bits; the rest are its sign.
            let len = self.proto_address.1;
            let a = take(v, self.proto_address);
            let address = if (1..64).contains(&len) && a >> (len - 1) & 1 == 1 {
                a | !((1u64 << len) - 1)
            } else {
                a
            };
            return EntryState::Prototype {
                address,
                protection,
            };
        }
        if v >> self.transition & 1 == 1 {
            return EntryState::Transition {
                pfn: take(v, self.transition_pfn),
                protection,
            };
        }
        let offset = take(v, self.file_high);
        if offset == 0 {
            return EntryState::DemandZero { protection };
        }
        EntryState::PageFile {
            file: take(v, self.file_low) as u8,
            offset,
            protection,
        }
    }
}

/// What one entry says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    /// Valid: the frame it maps (the page, or for a large page its first frame), `large` for a
    /// PDE or PDPTE that maps a page itself.
    Valid {
        /// The frame.
        pfn: u64,
        /// A 2 MB or 1 GB page.
        large: bool,
    },
    /// Zero: nothing there.
    Zero,
    /// A page to be made of zeros when first touched.
    DemandZero {
        /// Its protection (`MM_*`).
        protection: u8,
    },
    /// A page in a page file.
    PageFile {
        /// The page file's number.
        file: u8,
        /// The page's offset in it, in pages.
        offset: u64,
        /// Its protection.
        protection: u8,
    },
    /// A page still in memory, on a standby or modified list.
    Transition {
        /// Its frame.
        pfn: u64,
        /// Its protection.
        protection: u8,
    },
    /// An entry that refers to a prototype PTE (shared memory, a mapped file).
    Prototype {
        /// The prototype PTE's address.
        address: u64,
        /// Its protection.
        protection: u8,
    },
    /// Not valid, and the table gives no layout to read it with.
    Undecoded,
}

/// One level's entry on the way to the address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PteLevel {
    /// The level: 0 the PTE, 1 the PDE, 2 the PPE, 3 the PXE, 4 the PML5 entry.
    pub level: u8,
    /// Where it is in virtual memory (the self-map), when the self-map is known.
    pub entry_va: Option<u64>,
    /// Where it is in physical memory.
    pub entry_pa: u64,
    /// What it holds, as stored.
    pub raw: u64,
    /// Whether it was stored swizzled; `value` is then `raw` with the mask undone.
    pub swizzled: bool,
    /// What it holds once unswizzled (`raw` when it was not swizzled, or the mask is unknown).
    pub value: u64,
    /// What it says.
    pub state: EntryState,
}

/// `!pte`'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PteReport {
    /// The virtual address whose entries these are.
    pub va: u64,
    /// When the address asked for is itself a paging-structure entry in the self-map: that
    /// address (whose entry is the last one read).
    pub entry_asked: Option<u64>,
    /// The root of the walk.
    pub dtb: u64,
    /// Paging levels.
    pub levels: u32,
    /// The self-map's base (`nt!MmPteBase`, or the fixed one), when known.
    pub pte_base: Option<u64>,
    /// Every level's entry address in the self-map, top level first (empty when the base is
    /// not known).
    pub entry_vas: Vec<u64>,
    /// The entries read, top level first.
    pub entries: Vec<PteLevel>,
    /// Where the walk ended.
    pub end: WalkEnd,
    /// The invalid-PTE mask, when one was needed and read.
    pub invalid_pte_mask: Option<u64>,
    /// What could not be read or decoded.
    pub notes: Vec<String>,
}

/// The address of `va`'s entry at `level` (0 the PTE) in a self-map at `base`.
pub fn entry_address(base: u64, levels: u32, va: u64, level: u8) -> u64 {
    let index_bits = 9 * levels;
    let mut a = va;
    for _ in 0..=level {
        let index = (a >> 12) & ((1u64 << index_bits) - 1);
        a = base.wrapping_add(index * 8);
    }
    a
}

/// When `addr` lies in the self-map at `base`: the virtual address whose entry it is.
pub fn mapped_by_entry(base: u64, levels: u32, addr: u64) -> Option<u64> {
    let span = 1u64 << (9 * levels + 3);
    let off = addr.checked_sub(base).filter(|&o| o < span)?;
    let bits = 12 + 9 * levels;
    let va = (off >> 3) << 12;
    let shift = 64 - bits;
    Some((((va << shift) as i64) >> shift) as u64)
}

impl Kernel {
    /// The page tables' self-map base: `nt!MmPteBase` where the kernel has it, the fixed base
    /// on 4-level kernels that do not; checked against the root, whose entry at the base's
    /// slot must point back at the root itself.
    pub fn pte_base(&mut self, space: Space) -> Result<u64, ModelError> {
        let levels = self.mem.paging_levels();
        let base = match self.sym("MmPteBase") {
            Ok(a) => self.mem.u64(a)?,
            Err(_) if levels == 4 => FIXED_PTE_BASE,
            Err(_) => {
                return Err(ModelError::Corrupt(
                    "the kernel has no nt!MmPteBase and pages with 5 levels: the self-map is not known"
                        .into(),
                ));
            }
        };
        let top_shift = 12 + 9 * (levels - 1);
        let slot = (base >> top_shift) & 0x1ff;
        let low = base & ((1u64 << top_shift) - 1);
        let b = self.mem.read_physical((space.dtb & !0xfff) + 8 * slot, 8)?;
        let e = u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
        if low != 0 || e & 1 == 0 || e & 0x000f_ffff_ffff_f000 != space.dtb & !0xfff {
            return Err(ModelError::Corrupt(format!(
                "the self-map base {base:#x} is not a self-map: the root's entry {slot:#x} holds {e:#x}, not the root {:#x}",
                space.dtb & !0xfff
            )));
        }
        Ok(base)
    }

    /// The memory manager's invalid-PTE mask: `Ok(None)` when the kernel keeps none (its
    /// entries have no `SwizzleBit`), an error when it has one that cannot be read.
    pub fn invalid_pte_mask(&mut self) -> Result<Option<u64>, ModelError> {
        let nt = self.nt()?;
        if let Ok(a) = self.sym("MiInvalidPteMask") {
            return Ok(Some(self.mem.u64(a)?));
        }
        if let (Ok(state), Ok(off)) = (
            self.sym("MiState"),
            nt.offset("_MI_SYSTEM_INFORMATION", "Hardware.InvalidPteMask"),
        ) {
            return Ok(Some(self.mem.u64(state.wrapping_add(off))?));
        }
        if nt.has_field("_MMPTE_SOFTWARE", "SwizzleBit") {
            return Err(ModelError::Corrupt(
                "the kernel swizzles invalid PTEs, but neither nt!MiInvalidPteMask nor nt!MiState.Hardware.InvalidPteMask is in its symbol table".into(),
            ));
        }
        Ok(None)
    }

    /// `addr`'s page-table entries in the kernel's address space (the one every read uses),
    /// each decoded; an address in the self-map is taken as an entry, and the address it maps
    /// is walked.
    pub fn pte(&mut self, addr: u64) -> Result<PteReport, ModelError> {
        let space = self.mem.kernel_space()?;
        let levels = self.mem.paging_levels();
        let mut notes = Vec::new();
        let pte_base = match self.pte_base(space) {
            Ok(b) => Some(b),
            Err(e) => {
                notes.push(format!("the entries' virtual addresses are not shown: {e}"));
                None
            }
        };
        let entry_asked = pte_base.and_then(|b| mapped_by_entry(b, levels, addr).map(|_| addr));
        let va = match (entry_asked, pte_base) {
            (Some(a), Some(b)) => mapped_by_entry(b, levels, a).unwrap_or(addr),
            _ => addr,
        };
        let walk: PageWalk = self.mem.page_walk(space, va)?;
        let layout = match SoftwareLayout::from_table(&*self.nt()?) {
            Ok(l) => Some(l),
            Err(e) => {
                notes.push(format!("entries that are not valid are not decoded: {e}"));
                None
            }
        };
        let needs_mask = walk
            .entries
            .iter()
            .any(|e| layout.is_some_and(|l| l.swizzled(e.value)));
        let mut mask = None;
        if needs_mask {
            match self.invalid_pte_mask() {
                Ok(m) => mask = m,
                Err(e) => notes.push(format!(
                    "an entry is swizzled and the invalid-PTE mask is unknown ({e}): its page-file offset or frame is shown as stored, not as the memory manager means it"
                )),
            }
        }
        let entry_vas = pte_base
            .map(|b| {
                (0..levels as u8)
                    .rev()
                    .map(|l| entry_address(b, levels, va, l))
                    .collect()
            })
            .unwrap_or_default();
        let entries = walk
            .entries
            .iter()
            .map(|e: &LevelEntry| {
                let swizzled = layout.is_some_and(|l| l.swizzled(e.value));
                let value = match mask {
                    Some(m) if swizzled => e.value ^ m,
                    _ => e.value,
                };
                let state = if e.value & 1 == 1 {
                    EntryState::Valid {
                        pfn: (e.value & 0x000f_ffff_ffff_f000) >> 12,
                        large: (e.level == 1 || e.level == 2) && e.value & 0x80 != 0,
                    }
                } else {
                    layout.map_or(EntryState::Undecoded, |l| l.decode(value))
                };
                PteLevel {
                    level: e.level,
                    entry_va: pte_base.map(|b| entry_address(b, levels, va, e.level)),
                    entry_pa: e.entry_pa,
                    raw: e.value,
                    swizzled,
                    value,
                    state,
                }
            })
            .collect();
        if !notes.is_empty() {
            for n in &notes {
                self.note_incomplete(format!("!pte {addr:#x}: {n}"));
            }
        }
        Ok(PteReport {
            va,
            entry_asked,
            dtb: walk.dtb,
            levels,
            pte_base,
            entry_vas,
            entries,
            end: walk.end,
            invalid_pte_mask: mask,
            notes,
        })
    }
}

/// How `!vtop`'s first argument was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryBase {
    /// The root of the address space.
    pub dtb: u64,
    /// How the argument led to it.
    pub how: String,
    /// Whether the root was seen to be one (its self-map entry points back at it).
    pub checked: bool,
}

impl Kernel {
    /// The page-table root `!vtop`'s first argument names: 0 the address space every read
    /// uses; otherwise the frame of a directory base, or (as the debugger has always taken a
    /// number too large for that) a directory base itself. Each reading is tried as a root
    /// (its self-map entry must point back at it); the first that is one is taken, and when
    /// neither is, the frame reading is taken and said to be unchecked.
    pub fn directory_base(&mut self, arg: u64) -> Result<DirectoryBase, ModelError> {
        let kernel = self.mem.kernel_space()?;
        if arg == 0 {
            return Ok(DirectoryBase {
                dtb: kernel.dtb,
                how: "the current address space".into(),
                checked: true,
            });
        }
        let mut candidates = Vec::new();
        if arg < MAX_FRAME {
            candidates.push((arg << 12, format!("frame {arg:#x}")));
        }
        if arg & 0xfff == 0 {
            candidates.push((arg, format!("directory base {arg:#x}")));
        }
        if candidates.is_empty() {
            return Err(ModelError::Corrupt(format!(
                "{arg:#x} is neither a page frame number nor a page-aligned directory base"
            )));
        }
        let levels = self.mem.paging_levels();
        let base = match self.sym("MmPteBase") {
            Ok(a) => self.mem.u64(a).ok(),
            Err(_) if levels == 4 => Some(FIXED_PTE_BASE),
            Err(_) => None,
        };
        if let Some(base) = base {
            let slot = (base >> (12 + 9 * (levels - 1))) & 0x1ff;
            for (dtb, how) in &candidates {
                let Ok(b) = self.mem.read_physical(dtb + 8 * slot, 8) else {
                    continue;
                };
                let e = u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
                if e & 1 == 1 && e & 0x000f_ffff_ffff_f000 == *dtb {
                    return Ok(DirectoryBase {
                        dtb: *dtb,
                        how: how.clone(),
                        checked: true,
                    });
                }
            }
        }
        let (dtb, how) = candidates.swap_remove(0);
        Ok(DirectoryBase {
            dtb,
            how,
            checked: false,
        })
    }
}

/// Frames of x64 physical memory (52-bit addresses) are below this.
const MAX_FRAME: u64 = 1 << 40;

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout every shared x64 table gives (read from them; the tests below check the
    /// decoding, not the tables).
    fn layout() -> SoftwareLayout {
        SoftwareLayout {
            swizzle: Some(4),
            protection: (5, 5),
            prototype: 10,
            transition: 11,
            file_low: (12, 4),
            file_high: (32, 32),
            transition_pfn: (12, 36),
            proto_address: (16, 48),
        }
    }

    #[test]
    fn software_entries_decode_to_known_answers() {
        let l = layout();
        // Page file 2, page 0x1b4e8, ReadWrite (4): 4 << 5 = 0x80.
        assert_eq!(
            l.decode(0x0001_b4e8_0000_2080),
            EntryState::PageFile {
                file: 2,
                offset: 0x1b4e8,
                protection: 4
            }
        );
        // Transition, frame 0x3c4f0, ReadWrite.
        assert_eq!(
            l.decode(0x3c4f_0880),
            EntryState::Transition {
                pfn: 0x3c4f0,
                protection: 4
            }
        );
        // A prototype at 0xffffc001_23456780 (its low 48 bits kept from bit 16), ReadOnly (1).
        let proto = 0xc001_2345_6780_0000u64 | 0x400 | (1 << 5);
        assert_eq!(
            l.decode(proto),
            EntryState::Prototype {
                address: 0xffffc001_23456780,
                protection: 1
            }
        );
        assert_eq!(l.decode(0x80), EntryState::DemandZero { protection: 4 });
        assert_eq!(l.decode(0), EntryState::Zero);
    }

    #[test]
    fn swizzled_entries_are_those_with_the_bit_clear() {
        let l = layout();
        let mask = 1u64 << 45;
        // Stored swizzled: the page-file entry above with the mask's bit set in its offset.
        let stored = 0x0001_b4e8_0000_2080 ^ mask;
        assert!(l.swizzled(stored));
        assert_eq!(
            l.decode(stored ^ mask),
            EntryState::PageFile {
                file: 2,
                offset: 0x1b4e8,
                protection: 4
            }
        );
        // SwizzleBit set: stored as meant. Zero and valid entries are never swizzled.
        assert!(!l.swizzled(stored | 0x10));
        assert!(!l.swizzled(0));
        assert!(!l.swizzled(0x1234_5063));
        // A kernel without the bit never swizzles.
        let old = SoftwareLayout {
            swizzle: None,
            ..layout()
        };
        assert!(!old.swizzled(stored));
    }

    #[test]
    fn self_map_addresses() {
        // The fixed self-map: the well-known addresses of KUSER_SHARED_DATA's entries.
        let va = 0xfffff780_00000000u64;
        let b = FIXED_PTE_BASE;
        assert_eq!(entry_address(b, 4, va, 0), 0xfffff6fb_c0000000);
        assert_eq!(entry_address(b, 4, va, 1), 0xfffff6fb_7de00000);
        assert_eq!(entry_address(b, 4, va, 2), 0xfffff6fb_7dbef000);
        assert_eq!(entry_address(b, 4, va, 3), 0xfffff6fb_7dbedf78);
        // An entry's address leads back to the address it maps.
        assert_eq!(mapped_by_entry(b, 4, 0xfffff6fb_c0000000), Some(va));
        assert_eq!(
            mapped_by_entry(b, 4, 0xfffff6fb_c0000008),
            Some(va + 0x1000)
        );
        // A user address's PTE.
        assert_eq!(
            entry_address(b, 4, 0x7ff6_1234_5000, 0),
            0xfffff6bf_fb091a28
        );
        assert_eq!(
            mapped_by_entry(b, 4, 0xfffff6bf_fb091a28),
            Some(0x7ff6_1234_5000)
        );
        // Outside the self-map.
        assert_eq!(mapped_by_entry(b, 4, va), None);
        assert_eq!(mapped_by_entry(b, 4, b - 8), None);
    }
}
