//! The simulated machine's memory: sparse physical frames (never-written RAM reads as zeros) and
//! real x64 4-level page tables stored in those frames, so a debugger translating addresses
//! itself over physical reads sees exactly what a real target would show.

use std::collections::HashMap;

/// Bytes in a page.
pub const PAGE: u64 = 0x1000;
/// Bytes in a large page.
pub const LARGE: u64 = 0x20_0000;

/// Present.
pub const PTE_P: u64 = 1;
/// Writable.
pub const PTE_RW: u64 = 2;
/// Accessed.
pub const PTE_A: u64 = 0x20;
/// Dirty.
pub const PTE_D: u64 = 0x40;
/// User-mode access.
pub const PTE_US: u64 = 4;
/// Large page (in a PDE).
pub const PTE_PS: u64 = 0x80;
/// Global.
pub const PTE_G: u64 = 0x100;
/// No-execute.
pub const PTE_NX: u64 = 1 << 63;
/// Transition bit of a software PTE (bit 11).
pub const PTE_TRANSITION: u64 = 1 << 11;
/// Prototype bit of a software PTE (bit 10).
pub const PTE_PROTOTYPE: u64 = 1 << 10;

const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Physical memory: frames allocated from a bump cursor, stored only once written.
#[derive(Debug)]
pub struct PhysMem {
    frames: HashMap<u64, Box<[u8; PAGE as usize]>>,
    ram_pages: u64,
    next: u64,
}

/// Why a virtual address does not translate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// An entry on the way is zero.
    NotMapped,
    /// The final PTE is a software PTE (paged out, transition, prototype).
    NotPresent(u64),
    /// Not a canonical address.
    NonCanonical,
}

impl PhysMem {
    /// `ram_pages` pages of RAM; frames are handed out from `first_pfn` up.
    pub fn new(ram_pages: u64, first_pfn: u64) -> PhysMem {
        PhysMem {
            frames: HashMap::new(),
            ram_pages,
            next: first_pfn,
        }
    }

    /// Pages of RAM.
    pub fn ram_pages(&self) -> u64 {
        self.ram_pages
    }

    /// Frames actually stored (written at least once).
    pub fn stored_frames(&self) -> usize {
        self.frames.len()
    }

    /// Frames handed out so far (the highest PFN in use + 1).
    pub fn allocated_up_to(&self) -> u64 {
        self.next
    }

    /// Allocates `count` contiguous frames aligned to `align` frames; returns the first PFN.
    pub fn alloc(&mut self, count: u64, align: u64) -> u64 {
        let align = align.max(1);
        let pfn = self.next.div_ceil(align) * align;
        self.next = pfn + count;
        pfn
    }

    /// Reads from physical address `pa`; returns bytes read (stops at the end of RAM).
    pub fn read(&self, pa: u64, buf: &mut [u8]) -> usize {
        let end = self.ram_pages * PAGE;
        let mut done = 0;
        while done < buf.len() {
            let a = pa + done as u64;
            if a >= end {
                break;
            }
            let off = (a % PAGE) as usize;
            let n = (buf.len() - done).min(PAGE as usize - off);
            match self.frames.get(&(a / PAGE)) {
                Some(f) => buf[done..done + n].copy_from_slice(&f[off..off + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        done
    }

    /// Writes to physical memory (silently ignored past the end of RAM).
    pub fn write(&mut self, pa: u64, data: &[u8]) {
        let end = self.ram_pages * PAGE;
        let mut done = 0;
        while done < data.len() {
            let a = pa + done as u64;
            if a >= end {
                return;
            }
            let off = (a % PAGE) as usize;
            let n = (data.len() - done).min(PAGE as usize - off);
            let f = self
                .frames
                .entry(a / PAGE)
                .or_insert_with(|| Box::new([0; PAGE as usize]));
            f[off..off + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
    }

    /// A digest of every stored frame (for comparing two machines).
    pub fn digest(&self) -> u64 {
        let mut pfns: Vec<&u64> = self.frames.keys().collect();
        pfns.sort();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for p in pfns {
            let f = &self.frames[p];
            if f.iter().all(|&b| b == 0) {
                continue;
            }
            for b in p.to_le_bytes().iter().chain(f.iter()) {
                h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
            }
        }
        h
    }

    /// A u64 at `pa`.
    pub fn read_u64(&self, pa: u64) -> u64 {
        let mut b = [0u8; 8];
        self.read(pa, &mut b);
        u64::from_le_bytes(b)
    }

    /// Writes a u64.
    pub fn write_u64(&mut self, pa: u64, v: u64) {
        self.write(pa, &v.to_le_bytes());
    }
}

/// Whether `va` is canonical (48-bit).
pub fn canonical(va: u64) -> bool {
    let top = va >> 47;
    top == 0 || top == 0x1ffff
}

fn index(va: u64, level: u32) -> u64 {
    (va >> (12 + 9 * level)) & 0x1ff
}

/// An address space: a PML4 in physical memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Physical address of the PML4 (what CR3 holds).
    pub cr3: u64,
}

impl Space {
    /// A new, empty address space.
    pub fn new(mem: &mut PhysMem) -> Space {
        let pfn = mem.alloc(1, 1);
        mem.write(pfn * PAGE, &[0; PAGE as usize]);
        Space { cr3: pfn * PAGE }
    }

    /// The entry address for `va` at `level` (3 = PML4 … 0 = PT), creating tables on the way
    /// down to `stop` when `create`.
    fn walk(&self, mem: &mut PhysMem, va: u64, stop: u32, create: bool) -> Option<u64> {
        let mut table = self.cr3 & ADDR_MASK;
        let mut level = 3;
        loop {
            let entry = table + 8 * index(va, level);
            if level == stop {
                return Some(entry);
            }
            let e = mem.read_u64(entry);
            if e & PTE_P == 0 {
                if !create {
                    return None;
                }
                let pfn = mem.alloc(1, 1);
                mem.write(pfn * PAGE, &[0; PAGE as usize]);
                let user = if va >> 47 == 0 { 4 } else { 0 };
                mem.write_u64(entry, (pfn * PAGE) | PTE_P | PTE_RW | PTE_A | PTE_D | user);
                table = pfn * PAGE;
            } else if e & PTE_PS != 0 {
                return None;
            } else {
                table = e & ADDR_MASK;
            }
            level -= 1;
        }
    }

    /// Maps one 4 KB page.
    pub fn map_4k(&self, mem: &mut PhysMem, va: u64, pfn: u64, flags: u64) {
        if let Some(pte) = self.walk(mem, va, 0, true) {
            mem.write_u64(pte, (pfn * PAGE) | flags | PTE_P);
        }
    }

    /// Maps one 2 MB page (`pfn` 512-aligned).
    pub fn map_2m(&self, mem: &mut PhysMem, va: u64, pfn: u64, flags: u64) {
        if let Some(pde) = self.walk(mem, va, 1, true) {
            mem.write_u64(pde, (pfn * PAGE) | flags | PTE_P | PTE_PS);
        }
    }

    /// Writes a raw (normally non-present) PTE for `va`, e.g. a page-file reference.
    pub fn set_pte(&self, mem: &mut PhysMem, va: u64, raw: u64) {
        if let Some(pte) = self.walk(mem, va, 0, true) {
            mem.write_u64(pte, raw);
        }
    }

    /// Points PML4 slot `slot` at the PML4 itself (the Windows page-table self-map).
    pub fn self_map(&self, mem: &mut PhysMem, slot: u64) {
        mem.write_u64(
            (self.cr3 & ADDR_MASK) + 8 * (slot & 0x1ff),
            (self.cr3 & ADDR_MASK) | PTE_P | PTE_RW | PTE_A | PTE_D | PTE_NX,
        );
    }

    /// Copies the kernel half (PML4 slots 256..512) from another space.
    pub fn share_kernel_half(&self, mem: &mut PhysMem, from: &Space) {
        let mut half = vec![0u8; 256 * 8];
        mem.read((from.cr3 & ADDR_MASK) + 256 * 8, &mut half);
        mem.write((self.cr3 & ADDR_MASK) + 256 * 8, &half);
    }

    /// Translates `va`, or says why not.
    pub fn translate(&self, mem: &PhysMem, va: u64) -> Result<u64, Fault> {
        if !canonical(va) {
            return Err(Fault::NonCanonical);
        }
        let mut table = self.cr3 & ADDR_MASK;
        for level in (0..4).rev() {
            let e = mem.read_u64(table + 8 * index(va, level));
            if e & PTE_P == 0 {
                return Err(if level == 0 && e != 0 {
                    Fault::NotPresent(e)
                } else {
                    Fault::NotMapped
                });
            }
            if e & PTE_PS != 0 && (level == 1 || level == 2) {
                let size = 1u64 << (12 + 9 * level);
                return Ok((e & ADDR_MASK & !(size - 1)) | (va & (size - 1)));
            }
            table = e & ADDR_MASK;
        }
        Ok(table | (va & (PAGE - 1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_translate_large_and_paged_out() {
        let mut m = PhysMem::new(1 << 20, 0x100);
        let s = Space::new(&mut m);
        let va = 0xfffff805_5c400000u64;
        let big = m.alloc(512, 512);
        s.map_2m(&mut m, va, big, PTE_RW | PTE_G);
        assert_eq!(s.translate(&m, va + 0x1234).unwrap(), big * PAGE + 0x1234);
        let small = m.alloc(1, 1);
        let va2 = 0xffffc180_00003000u64;
        s.map_4k(&mut m, va2, small, PTE_RW | PTE_NX);
        m.write(small * PAGE + 8, b"kdnet");
        let pa = s.translate(&m, va2 + 8).unwrap();
        let mut b = [0u8; 5];
        m.read(pa, &mut b);
        assert_eq!(&b, b"kdnet");
        s.set_pte(&mut m, va2 + PAGE, 0x0000_0012_0000_0080);
        assert_eq!(
            s.translate(&m, va2 + PAGE),
            Err(Fault::NotPresent(0x0000_0012_0000_0080))
        );
        assert_eq!(s.translate(&m, va2 + 2 * PAGE), Err(Fault::NotMapped));
        assert_eq!(
            s.translate(&m, 0x0000_8000_0000_0000),
            Err(Fault::NonCanonical)
        );
        // Reads past the end of RAM stop there.
        let mut buf = [1u8; 16];
        assert_eq!(m.read(m.ram_pages() * PAGE - 8, &mut buf), 8);
    }

    #[test]
    fn self_map_points_at_the_pml4() {
        let mut m = PhysMem::new(1 << 20, 0x100);
        let s = Space::new(&mut m);
        s.self_map(&mut m, 0x1ed);
        // The PML4 is visible at the self-map's own address.
        let base = 0xffff_0000_0000_0000u64
            | (0x1ed << 39)
            | (0x1ed << 30)
            | (0x1ed << 21)
            | (0x1ed << 12);
        assert_eq!(s.translate(&m, base).unwrap(), s.cr3);
    }
}
