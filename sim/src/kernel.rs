//! The kernel under construction: memory, the system address space, the symbol tables, and
//! typed writes that find every offset in the tables (never in constants).

use std::cell::RefCell;
use std::collections::HashMap;

use kdnet_symbols::{FieldRef, Ty, TypeTable};

use crate::SimError;
use crate::families::{Families, PoolFamily, VaFamily};
use crate::mem::{LARGE, PAGE, PTE_A, PTE_D, PTE_G, PTE_NX, PTE_RW, PhysMem, Space};

/// A virtual region the kernel allocates from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Region {
    /// Non-paged pool.
    NonPagedPool,
    /// Paged pool.
    PagedPool,
    /// Kernel stacks.
    Stacks,
    /// Processor control regions.
    Pcr,
    /// Driver images.
    Drivers,
    /// Special pool.
    SpecialPool,
}

/// Base addresses of the regions for one build (typical values of that era).
#[derive(Debug, Clone)]
pub struct VaLayout {
    /// Kernel image base.
    pub kernel_base: u64,
    /// Where each region starts.
    pub regions: Vec<(Region, u64)>,
    /// PML4 slot of the page-table self-map.
    pub self_map_slot: u64,
}

impl VaLayout {
    /// The layout of a kernel of these families (addresses typical of kernels that have them).
    pub fn for_families(va: VaFamily, pool: PoolFamily) -> VaLayout {
        if va == VaFamily::Fixed {
            VaLayout {
                kernel_base: 0xfffff800_02a1f000 & !(LARGE - 1),
                regions: vec![
                    (Region::NonPagedPool, 0xfffffa80_00000000),
                    (Region::PagedPool, 0xfffff8a0_00000000),
                    (Region::Stacks, 0xfffff880_02000000),
                    (Region::Pcr, 0xfffff880_00e00000),
                    (Region::Drivers, 0xfffff880_00f00000),
                    (Region::SpecialPool, 0xfffff8a8_00000000),
                ],
                self_map_slot: FIXED_SELF_MAP_SLOT,
            }
        } else if pool == PoolFamily::Classic || va == VaFamily::Dynamic {
            VaLayout {
                kernel_base: 0xfffff803_a9c00000,
                regions: vec![
                    (Region::NonPagedPool, 0xffffb30c_00000000),
                    (Region::PagedPool, 0xffffa884_00000000),
                    (Region::Stacks, 0xffff8a0f_00000000),
                    (Region::Pcr, 0xffffd500_00000000),
                    (Region::Drivers, 0xfffff803_ac000000),
                    (Region::SpecialPool, 0xffffc500_00000000),
                ],
                // Before the self-map was randomized it had one slot on every machine.
                self_map_slot: if va == VaFamily::Dynamic {
                    FIXED_SELF_MAP_SLOT
                } else {
                    0x1b7
                },
            }
        } else {
            VaLayout {
                kernel_base: 0xfffff805_5c400000,
                regions: vec![
                    (Region::NonPagedPool, 0xffffc18a_00000000),
                    (Region::PagedPool, 0xffffa60d_00000000),
                    (Region::Stacks, 0xffffe10f_00000000),
                    (Region::Pcr, 0xffffd701_00000000),
                    (Region::Drivers, 0xfffff805_60000000),
                    (Region::SpecialPool, 0xffffc900_00000000),
                ],
                self_map_slot: 0x1a3,
            }
        }
    }

    /// The PTE self-map base for the slot.
    pub fn pte_base(&self) -> u64 {
        0xffff_0000_0000_0000 | (self.self_map_slot << 39)
    }
}

/// The page tables' self-map slot of every kernel before the slot was randomized (1607).
pub const FIXED_SELF_MAP_SLOT: u64 = 0x1ed;

/// The kernel address of `KUSER_SHARED_DATA`.
pub const KUSER_SHARED_DATA: u64 = 0xfffff780_00000000;
/// The first frame the machine hands out (16 MB): frames below it are never written.
pub const FIRST_PFN: u64 = 0x1000;

/// Largest type the simulator lays out or field offset it writes at (the largest type it uses
/// on a real build, `_EX_POOL_HEAP_MANAGER_STATE`, is 538 KiB). A table giving more is refused,
/// so a damaged or hostile table cannot make the build map memory without end.
pub const MAX_TYPE_BYTES: u64 = 1 << 20;
/// Largest region mapped by one allocation (tables of entries sized by the symbol table).
pub const MAX_REGION_BYTES: u64 = 64 << 20;
/// Largest nt image mapped (the real ntoskrnl.exe is about 16 MB; the image reaches past the
/// table's highest symbol).
pub const MAX_IMAGE_BYTES: u64 = 256 << 20;

/// Memory, address space and tables of the machine being built.
pub struct Kernel {
    /// Physical memory.
    pub mem: PhysMem,
    /// The system address space (the System process's).
    pub space: Space,
    /// The kernel's symbol table.
    pub nt: TypeTable,
    /// The project's own layouts (KDDEBUGGER_DATA64 …).
    pub extra: TypeTable,
    /// Build number.
    pub build: u32,
    /// Virtual layout.
    pub va: VaLayout,
    /// The structure families the table says the kernel has.
    pub families: Families,
    cursors: HashMap<Region, u64>,
    tlb: HashMap<u64, u64>,
    fields: RefCell<HashMap<(String, String), FieldRef>>,
    used: RefCell<Usage>,
    /// The memory manager's invalid-PTE mask (zero on a kernel that does not swizzle): the
    /// frame bit past the machine's physical addresses, as on a machine with 46 address bits.
    pub invalid_pte_mask: u64,
    /// The pages [`Kernel::page_out`] made not resident, and how.
    pub not_resident: std::collections::BTreeMap<u64, NotResident>,
}

/// How a page was made not resident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotResident {
    /// In a page file.
    PageFile {
        /// The page file's number.
        file: u8,
        /// The page's offset in it, in pages.
        offset: u64,
    },
    /// In transition, still in this frame.
    Transition {
        /// The frame.
        pfn: u64,
    },
}

/// The page-file offset (in pages) of the first page the machine pages out.
pub const FIRST_PAGE_FILE_OFFSET: u64 = 0x1b4e8;

/// What of the nt table a build used: the compact built-in table is made of exactly this.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// (type, field path) pairs.
    pub fields: std::collections::BTreeSet<(String, String)>,
    /// Types whose size was asked.
    pub types: std::collections::BTreeSet<String>,
    /// Symbols.
    pub symbols: std::collections::BTreeSet<String>,
    /// Enums.
    pub enums: std::collections::BTreeSet<String>,
}

impl Usage {
    /// Adds another usage.
    pub fn merge(&mut self, other: &Usage) {
        self.fields.extend(other.fields.iter().cloned());
        self.types.extend(other.types.iter().cloned());
        self.symbols.extend(other.symbols.iter().cloned());
        self.enums.extend(other.enums.iter().cloned());
    }
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("build", &self.build)
            .field("cr3", &self.space.cr3)
            .finish()
    }
}

impl Kernel {
    /// A machine with `ram_pages` pages of RAM, laid out as the table's families say.
    pub fn new(
        nt: TypeTable,
        extra: TypeTable,
        build: u32,
        ram_pages: u64,
    ) -> Result<Kernel, SimError> {
        let mut mem = PhysMem::new(ram_pages, FIRST_PFN);
        let space = Space::new(&mut mem);
        let mut k = Kernel {
            mem,
            space,
            nt,
            extra,
            build,
            va: VaLayout {
                kernel_base: 0,
                regions: Vec::new(),
                self_map_slot: FIXED_SELF_MAP_SLOT,
            },
            families: Families::placeholder(),
            cursors: HashMap::new(),
            tlb: HashMap::new(),
            fields: RefCell::new(HashMap::new()),
            used: RefCell::new(Usage::default()),
            invalid_pte_mask: 0,
            not_resident: Default::default(),
        };
        k.families = Families::of(&k)?;
        if k.has("_MMPTE_SOFTWARE", "SwizzleBit") {
            k.invalid_pte_mask = 1 << 45;
        }
        k.va = VaLayout::for_families(k.families.va, k.families.pool);
        k.space.self_map(&mut k.mem, k.va.self_map_slot);
        k.cursors = k.va.regions.iter().copied().collect();
        Ok(k)
    }

    /// The kernel base.
    pub fn base(&self) -> u64 {
        self.va.kernel_base
    }

    /// The address of an nt symbol.
    pub fn sym(&self, name: &str) -> Result<u64, SimError> {
        let rva = self.nt.require_symbol(name)?;
        if rva >= MAX_IMAGE_BYTES {
            return Err(SimError::Config(format!(
                "the symbol table puts {name} at RVA {rva:#x}; the simulator maps an nt image of at most {MAX_IMAGE_BYTES:#x} bytes"
            )));
        }
        self.used.borrow_mut().symbols.insert(name.to_string());
        Ok(self.va.kernel_base + rva)
    }

    /// Whether nt has the symbol.
    pub fn has_sym(&self, name: &str) -> bool {
        let has = self.nt.symbol(name).is_some();
        if has {
            self.used.borrow_mut().symbols.insert(name.to_string());
        }
        has
    }

    /// The RVA of an nt function and of the next symbol after it (both recorded as used, so a
    /// compact table bounds the function the same way).
    pub fn function_rva(&self, name: &str) -> Result<(u64, Option<u64>), SimError> {
        let rva = self.nt.require_symbol(name)?;
        if rva >= MAX_IMAGE_BYTES {
            return Err(SimError::Config(format!(
                "the symbol table puts {name} at RVA {rva:#x}; the simulator maps an nt image of at most {MAX_IMAGE_BYTES:#x} bytes"
            )));
        }
        let mut used = self.used.borrow_mut();
        used.symbols.insert(name.to_string());
        let next = self.nt.next_symbol(rva).map(|(n, a)| {
            used.symbols.insert(n.to_string());
            a
        });
        Ok((rva, next))
    }

    /// The value of an nt enum constant (recorded as used).
    pub fn enum_value(&self, enum_name: &str, constant: &str) -> Result<i64, SimError> {
        let v = self.nt.enum_value(enum_name, constant)?;
        self.used.borrow_mut().enums.insert(enum_name.to_string());
        Ok(v)
    }

    /// What of the nt table has been used so far.
    pub fn usage(&self) -> Usage {
        self.used.borrow().clone()
    }

    // ---- mapping ----

    /// Maps `[va, va+size)` with fresh 4 KB frames.
    pub fn map(&mut self, va: u64, size: u64, nx: bool) {
        let first = va & !(PAGE - 1);
        let end = (va + size).div_ceil(PAGE) * PAGE;
        let mut p = first;
        while p < end {
            if !self.tlb.contains_key(&(p / PAGE)) {
                let pfn = self.mem.alloc(1, 1);
                let flags = PTE_RW | PTE_A | PTE_D | PTE_G | if nx { PTE_NX } else { 0 };
                self.space.map_4k(&mut self.mem, p, pfn, flags);
                self.tlb.insert(p / PAGE, pfn);
            }
            p += PAGE;
        }
    }

    /// Whether the page holding `va` is mapped.
    pub fn is_mapped(&self, va: u64) -> bool {
        self.tlb.contains_key(&(va / PAGE))
    }

    /// Maps `[va, va+size)` with 2 MB pages (va 2 MB aligned), as Windows maps its kernel image.
    pub fn map_large(&mut self, va: u64, size: u64) {
        let mut p = va & !(LARGE - 1);
        while p < va + size {
            let pfn = self.mem.alloc(512, 512);
            self.space
                .map_2m(&mut self.mem, p, pfn, PTE_RW | PTE_A | PTE_D | PTE_G);
            for i in 0..512 {
                self.tlb.insert(p / PAGE + i, pfn + i);
            }
            p += LARGE;
        }
    }

    /// Marks a mapped page paged out (a page-file software PTE: page file 0, the next free
    /// page in it) or, with `transition`, as a transition page (its frame kept), ReadWrite,
    /// written with the table's `_MMPTE_SOFTWARE` / `_MMPTE_TRANSITION` bits and, on kernels
    /// with the L1TF mitigation, swizzled with [`Kernel::invalid_pte_mask`] as Windows stores
    /// it. What was written is kept in [`Kernel::not_resident`].
    pub fn page_out(&mut self, va: u64, transition: bool) -> Result<(), SimError> {
        const READ_WRITE: u64 = 4;
        let page = va & !(PAGE - 1);
        let bits = |k: &Kernel, ty: &str, f: &str| -> Result<(u32, u32), SimError> {
            match k.field(ty, f)?.ty {
                Ty::Bitfield { pos, len, .. } => Ok((pos, len)),
                _ => Err(SimError::Config(format!("{ty}.{f} is not a bitfield"))),
            }
        };
        let put = |v: &mut u64, (pos, len): (u32, u32), x: u64| {
            let m = if len >= 64 {
                u64::MAX
            } else {
                (1u64 << len) - 1
            };
            *v |= (x & m) << pos;
        };
        let sw = "_MMPTE_SOFTWARE";
        let mut raw = 0u64;
        put(&mut raw, bits(self, sw, "Protection")?, READ_WRITE);
        let state = match self.tlb.remove(&(page / PAGE)) {
            Some(pfn) if transition => {
                put(&mut raw, bits(self, sw, "Transition")?, 1);
                put(
                    &mut raw,
                    bits(self, "_MMPTE_TRANSITION", "PageFrameNumber")?,
                    pfn,
                );
                NotResident::Transition { pfn }
            }
            _ => {
                let offset = FIRST_PAGE_FILE_OFFSET + self.not_resident.len() as u64;
                put(&mut raw, bits(self, sw, "PageFileLow")?, 0);
                put(&mut raw, bits(self, sw, "PageFileHigh")?, offset);
                NotResident::PageFile { file: 0, offset }
            }
        };
        let raw = raw ^ self.invalid_pte_mask;
        self.space.set_pte(&mut self.mem, page, raw);
        self.not_resident.insert(page, state);
        Ok(())
    }

    /// Reserves `size` bytes (page-granular, mapped) from a region; returns the address. A size
    /// past [`MAX_REGION_BYTES`] (which only a table with absurd type sizes can ask for) is an
    /// error.
    pub fn alloc_region(&mut self, region: Region, size: u64, align: u64) -> Result<u64, SimError> {
        if size > MAX_REGION_BYTES {
            return Err(SimError::Config(format!(
                "laying out {region:?} needs {size:#x} bytes at once from the symbol table's type sizes; the simulator maps at most {MAX_REGION_BYTES:#x}"
            )));
        }
        let cur = self.cursors.get(&region).copied().unwrap_or(0);
        let align = align.max(PAGE);
        let va = cur.div_ceil(align) * align;
        let size = size.div_ceil(PAGE) * PAGE;
        self.cursors.insert(region, va + size);
        self.map(va, size, region != Region::Drivers);
        Ok(va)
    }

    /// Reserves address space in a region without mapping it.
    pub fn reserve_region(&mut self, region: Region, size: u64, align: u64) -> u64 {
        let cur = self.cursors.get(&region).copied().unwrap_or(0);
        let align = align.max(PAGE);
        let va = cur.div_ceil(align) * align;
        self.cursors.insert(region, va + size.div_ceil(PAGE) * PAGE);
        va
    }

    /// The start of a region.
    pub fn region_start(&self, region: Region) -> u64 {
        self.va
            .regions
            .iter()
            .find(|(r, _)| *r == region)
            .map_or(0, |(_, a)| *a)
    }

    /// The current end of a region.
    pub fn region_end(&self, region: Region) -> u64 {
        self.cursors.get(&region).copied().unwrap_or(0)
    }

    // ---- raw access ----

    fn pa(&self, va: u64) -> Option<u64> {
        self.tlb
            .get(&(va / PAGE))
            .map(|pfn| pfn * PAGE + (va % PAGE))
    }

    /// Writes bytes at a mapped virtual address (unmapped parts are skipped).
    pub fn write(&mut self, va: u64, data: &[u8]) {
        let mut done = 0;
        while done < data.len() {
            let a = va + done as u64;
            let n = (data.len() - done).min((PAGE - a % PAGE) as usize);
            if let Some(pa) = self.pa(a) {
                self.mem.write(pa, &data[done..done + n]);
            }
            done += n;
        }
    }

    /// Reads bytes from a mapped virtual address; returns how many were readable from the start.
    pub fn read(&self, va: u64, buf: &mut [u8]) -> usize {
        let mut done = 0;
        while done < buf.len() {
            let a = va + done as u64;
            let n = (buf.len() - done).min((PAGE - a % PAGE) as usize);
            match self.space.translate(&self.mem, a) {
                Ok(pa) => {
                    self.mem.read(pa, &mut buf[done..done + n]);
                }
                Err(_) => return done,
            }
            done += n;
        }
        done
    }

    /// A u64 at `va` (0 if unmapped).
    pub fn r64(&self, va: u64) -> u64 {
        let mut b = [0u8; 8];
        self.read(va, &mut b);
        u64::from_le_bytes(b)
    }

    /// A u32 at `va`.
    pub fn r32(&self, va: u64) -> u32 {
        let mut b = [0u8; 4];
        self.read(va, &mut b);
        u32::from_le_bytes(b)
    }

    /// Writes a u64.
    pub fn w64(&mut self, va: u64, v: u64) {
        self.write(va, &v.to_le_bytes());
    }
    /// Writes a u32.
    pub fn w32(&mut self, va: u64, v: u32) {
        self.write(va, &v.to_le_bytes());
    }
    /// Writes a u16.
    pub fn w16(&mut self, va: u64, v: u16) {
        self.write(va, &v.to_le_bytes());
    }
    /// Writes a byte.
    pub fn w8(&mut self, va: u64, v: u8) {
        self.write(va, &[v]);
    }

    // ---- typed access ----

    /// Where `path` lands in `ty` (nt table first, then the project's own).
    pub fn field(&self, ty: &str, path: &str) -> Result<FieldRef, SimError> {
        let key = (ty.to_string(), path.to_string());
        if let Some(f) = self.fields.borrow().get(&key) {
            return Ok(f.clone());
        }
        let f = match self.nt.field(ty, path) {
            Ok(f) => {
                self.used.borrow_mut().fields.insert(key.clone());
                f
            }
            Err(e) => self.extra.field(ty, path).map_err(|_| e)?,
        };
        if f.offset > MAX_TYPE_BYTES {
            return Err(SimError::Config(format!(
                "the symbol table puts {ty}.{path} at offset {:#x}; the simulator lays out types of at most {MAX_TYPE_BYTES:#x} bytes",
                f.offset
            )));
        }
        if let Ty::Bitfield { base, pos, len } = &f.ty {
            let size = self.ty_size(base);
            if !(1..=8).contains(&size) || u64::from(*pos) + u64::from(*len) > 8 * size {
                return Err(SimError::Config(format!(
                    "the symbol table makes {ty}.{path} a bitfield of {len} bits at bit {pos} in {size} bytes"
                )));
            }
        }
        self.fields.borrow_mut().insert(key, f.clone());
        Ok(f)
    }

    /// Offset of a field.
    pub fn off(&self, ty: &str, path: &str) -> Result<u64, SimError> {
        Ok(self.field(ty, path)?.offset)
    }

    /// Whether the type has the field on this build.
    pub fn has(&self, ty: &str, path: &str) -> bool {
        self.field(ty, path).is_ok()
    }

    /// Size of a type.
    pub fn size(&self, ty: &str) -> Result<u64, SimError> {
        let s = match self.nt.size_of(ty) {
            Ok(s) => {
                self.used.borrow_mut().types.insert(ty.to_string());
                s
            }
            Err(e) => self.extra.size_of(ty).map_err(|_| e)?,
        };
        if s > MAX_TYPE_BYTES {
            return Err(SimError::Config(format!(
                "the symbol table makes {ty} {s:#x} bytes; the simulator lays out types of at most {MAX_TYPE_BYTES:#x}"
            )));
        }
        Ok(s)
    }

    fn ty_size(&self, t: &Ty) -> u64 {
        self.nt
            .ty_size(t)
            .or_else(|_| self.extra.ty_size(t))
            .unwrap_or(8)
    }

    /// Writes `value` into the field `path` of the `ty` at `addr`, with the field's width
    /// (bitfields are merged into their integer).
    pub fn set(&mut self, addr: u64, ty: &str, path: &str, value: u64) -> Result<(), SimError> {
        let f = self.field(ty, path)?;
        let at = addr + f.offset;
        match &f.ty {
            Ty::Bitfield { pos, len, base } => {
                let size = self.ty_size(base) as usize;
                let mut b = [0u8; 8];
                self.read(at, &mut b[..size]);
                let old = u64::from_le_bytes(b);
                let mask = if *len >= 64 {
                    u64::MAX
                } else {
                    (1u64 << len) - 1
                } << pos;
                let new = (old & !mask) | ((value << pos) & mask);
                self.write(at, &new.to_le_bytes()[..size]);
            }
            t => {
                let size = (self.ty_size(t) as usize).clamp(1, 8);
                self.write(at, &value.to_le_bytes()[..size]);
            }
        }
        Ok(())
    }

    /// Reads a field (integers and pointers).
    pub fn get(&self, addr: u64, ty: &str, path: &str) -> Result<u64, SimError> {
        let f = self.field(ty, path)?;
        let at = addr + f.offset;
        Ok(match &f.ty {
            Ty::Bitfield { pos, len, base } => {
                let size = self.ty_size(base) as usize;
                let mut b = [0u8; 8];
                self.read(at, &mut b[..size]);
                let v = u64::from_le_bytes(b) >> pos;
                if *len >= 64 {
                    v
                } else {
                    v & ((1u64 << len) - 1)
                }
            }
            t => {
                let size = (self.ty_size(t) as usize).clamp(1, 8);
                let mut b = [0u8; 8];
                self.read(at, &mut b[..size]);
                u64::from_le_bytes(b)
            }
        })
    }

    /// Writes a field using another module's table (e.g. the NDIS layout).
    pub fn set_in(
        &mut self,
        table: &TypeTable,
        addr: u64,
        ty: &str,
        path: &str,
        value: u64,
    ) -> Result<(), SimError> {
        let f = table.field(ty, path)?;
        let at = addr + f.offset;
        let size = match &f.ty {
            Ty::Bitfield { .. } => {
                return Err(SimError::Config(format!("{ty}.{path} is a bitfield")));
            }
            t => (table.ty_size(t).unwrap_or(8) as usize).clamp(1, 8),
        };
        self.write(at, &value.to_le_bytes()[..size]);
        Ok(())
    }

    /// Whether nt has the type.
    pub fn has_type(&self, ty: &str) -> bool {
        let has = self.nt.has_type(ty);
        if has {
            self.used.borrow_mut().types.insert(ty.to_string());
        }
        has
    }

    // ---- lists and strings ----

    /// An empty LIST_ENTRY at `head`.
    pub fn list_init(&mut self, head: u64) {
        self.w64(head, head);
        self.w64(head + 8, head);
    }

    /// Inserts `entry` at the tail of the list at `head`.
    pub fn list_append(&mut self, head: u64, entry: u64) {
        let last = self.r64(head + 8);
        self.w64(entry, head);
        self.w64(entry + 8, last);
        self.w64(last, entry);
        self.w64(head + 8, entry);
    }

    /// Unlinks `entry` from its list.
    pub fn list_remove(&mut self, entry: u64) {
        let (next, prev) = (self.r64(entry), self.r64(entry + 8));
        self.w64(prev, next);
        self.w64(next + 8, prev);
        self.list_init(entry);
    }

    /// Writes a UNICODE_STRING at `at` whose buffer is placed at `buf`.
    pub fn unicode_string(&mut self, at: u64, buf: u64, s: &str) {
        let units: Vec<u16> = s.encode_utf16().collect();
        let mut bytes = Vec::with_capacity(units.len() * 2 + 2);
        for u in &units {
            bytes.extend_from_slice(&u.to_le_bytes());
        }
        let len = bytes.len() as u16;
        bytes.extend_from_slice(&[0, 0]);
        self.write(buf, &bytes);
        self.w16(at, len);
        self.w16(at + 2, len + 2);
        self.w64(at + 8, buf);
    }
}
