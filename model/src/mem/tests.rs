//! Tests of the memory layer over a flat simulated physical memory.

use super::*;
use crate::target::NotPresent;
use kdnet_arch::Context;

/// A flat physical memory with a page table mapping a few pages, counting requests.
struct Flat {
    mem: HashMap<u64, u8>,
    requests: u64,
    bytes: u64,
    /// CR3 and CR4 given by control space (no directory table base in the target facts).
    cr: Option<(u64, u64)>,
}

impl Flat {
    fn w64(&mut self, a: u64, v: u64) {
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            self.mem.insert(a + i as u64, *b);
        }
    }
}

impl Target for Flat {
    fn info(&self) -> TargetInfo {
        TargetInfo {
            directory_table_base: self.cr.is_none().then_some(0x1000),
            ..TargetInfo::default()
        }
    }
    fn read_physical(&mut self, address: u64, buf: &mut [u8]) -> Result<usize, TargetError> {
        self.requests += 1;
        self.bytes += buf.len() as u64;
        for (i, b) in buf.iter_mut().enumerate() {
            let a = address + i as u64;
            // Page-table pages are zero where unset; data pages hold their address's low byte.
            let filler = if a < 0x10_0000 { 0 } else { a as u8 };
            *b = self.mem.get(&a).copied().unwrap_or(filler);
        }
        Ok(buf.len())
    }
    fn max_transfer(&self) -> usize {
        3944
    }
    fn context(&mut self, _p: u32) -> Result<Context, TargetError> {
        Ok(Context::new())
    }
    fn special_registers(&mut self, _p: u32) -> Result<Vec<u8>, TargetError> {
        let mut v = vec![0; 0xe0];
        if let Some((cr3, cr4)) = self.cr {
            v[0x10..0x18].copy_from_slice(&cr3.to_le_bytes());
            v[0x18..0x20].copy_from_slice(&cr4.to_le_bytes());
        }
        Ok(v)
    }
    fn control_pointer(&mut self, _p: u32, _i: u64) -> Result<u64, TargetError> {
        Ok(0)
    }
    fn stats(&self) -> TransportStats {
        TransportStats {
            round_trips: self.requests,
            bytes: self.bytes,
        }
    }
}

fn flat() -> Flat {
    let mut f = Flat {
        mem: HashMap::new(),
        requests: 0,
        bytes: 0,
        cr: None,
    };
    // PML4 0x1000 → PDPT 0x2000 → PD 0x3000 → PT 0x4000, all for VA 0xffff800000000000+.
    let va: u64 = 0xffff_8000_0010_0000;
    f.w64(0x1000 + 8 * ((va >> 39) & 0x1ff), 0x2000 | 3);
    f.w64(0x2000 + 8 * ((va >> 30) & 0x1ff), 0x3000 | 3);
    f.w64(0x3000 + 8 * ((va >> 21) & 0x1ff), 0x4000 | 3);
    // Four contiguous pages at 0x100000, then one elsewhere, then a paged-out one.
    for i in 0..4u64 {
        f.w64(
            0x4000 + 8 * (((va >> 12) & 0x1ff) + i),
            (0x10_0000 + i * PAGE) | 3,
        );
    }
    f.w64(0x4000 + 8 * (((va >> 12) & 0x1ff) + 4), 0x20_0000 | 3);
    f.w64(0x4000 + 8 * (((va >> 12) & 0x1ff) + 5), 0x0123_0000_0080);
    // A 2 MB page one PDE up.
    f.w64(0x3000 + 8 * (((va >> 21) & 0x1ff) + 1), 0x4000_0000 | 0x83);
    f
}

const VA: u64 = 0xffff_8000_0010_0000;

#[test]
fn translation_large_pages_and_not_present_reasons() {
    let mut m = Memory::new(Box::new(flat()));
    let s = m.kernel_space().unwrap();
    assert_eq!(m.translate(s, VA + 0x10).unwrap(), 0x10_0010);
    assert_eq!(m.translate(s, VA + 4 * PAGE).unwrap(), 0x20_0000);
    assert_eq!(
        m.translate(s, VA + 0x20_0000 + 0x1234).unwrap(),
        0x4010_1234
    );
    let e = m.translate(s, VA + 5 * PAGE).unwrap_err();
    assert!(
        matches!(
            e,
            TargetError::NotPresent {
                reason: NotPresent::PagedOut { .. },
                ..
            }
        ),
        "{e:?}"
    );
    let e = m.translate(s, VA + 6 * PAGE).unwrap_err();
    assert!(
        matches!(
            e,
            TargetError::NotPresent {
                reason: NotPresent::NotMapped { level: 0 },
                ..
            }
        ),
        "{e:?}"
    );
    assert!(matches!(
        m.translate(s, 0x0000_8000_0000_0000),
        Err(TargetError::NonCanonical(_))
    ));
}

#[test]
fn a_page_walk_shows_every_level() {
    let mut m = Memory::new(Box::new(flat()));
    let s = m.kernel_space().unwrap();
    let idx = |va: u64, level: u64| (va >> (12 + 9 * level)) & 0x1ff;
    // A 4 KB page: four entries, each where the level's table and index put it.
    let w = m.page_walk(s, VA + 0x123).unwrap();
    assert_eq!(w.dtb, 0x1000);
    let got: Vec<(u8, u64, u64)> = w
        .entries
        .iter()
        .map(|e| (e.level, e.entry_pa, e.value))
        .collect();
    assert_eq!(
        got,
        vec![
            (3, 0x1000 + 8 * idx(VA, 3), 0x2003),
            (2, 0x2000 + 8 * idx(VA, 2), 0x3003),
            (1, 0x3000 + 8 * idx(VA, 1), 0x4003),
            (0, 0x4000 + 8 * idx(VA, 0), 0x10_0003),
        ]
    );
    assert_eq!(
        w.end,
        WalkEnd::Mapped {
            pa: 0x10_0123,
            page_size: PAGE
        }
    );
    // A 2 MB page ends at the PDE.
    let w = m.page_walk(s, VA + 0x20_0000 + 0x1234).unwrap();
    assert_eq!(w.entries.len(), 3);
    assert_eq!(w.entries[2].value, 0x4000_0083);
    assert_eq!(
        w.end,
        WalkEnd::Mapped {
            pa: 0x4010_1234,
            page_size: 0x20_0000
        }
    );
    // A paged-out PTE ends the walk at level 0 with the entry as it is.
    let w = m.page_walk(s, VA + 5 * PAGE).unwrap();
    assert_eq!(w.end, WalkEnd::NotPresent { level: 0 });
    assert_eq!(w.entries[3].value, 0x0123_0000_0080);
    // An empty PML4 slot ends it at the top.
    let w = m.page_walk(s, 0xffff_9000_0000_0000).unwrap();
    assert_eq!(w.entries.len(), 1);
    assert_eq!(w.end, WalkEnd::NotPresent { level: 3 });
    assert!(matches!(
        m.page_walk(s, 0x0000_8000_0000_0000),
        Err(TargetError::NonCanonical(_))
    ));
}

#[test]
fn five_level_paging_and_huge_pages() {
    // CR4.LA57 set: a PML5 at 0x9000 above the same PML4.
    let mut f = flat();
    f.cr = Some((0x9000, 1 << 12));
    let va5: u64 = 0xff91_2345_6780_0000;
    let idx = |va: u64, level: u32| (va >> (12 + 9 * level)) & 0x1ff;
    f.w64(0x9000 + 8 * idx(va5, 4), 0xa000 | 3);
    f.w64(0xa000 + 8 * idx(va5, 3), 0xb000 | 3);
    // A 1 GB page at the PDPT level.
    f.w64(0xb000 + 8 * idx(va5, 2), 0x1_c000_0000 | 0x83);
    // The 4-level kernel mapping, reached through PML5 entry 0x1ff.
    f.w64(0x9000 + 8 * 0x1ff, 0x1000 | 3);
    let mut m = Memory::new(Box::new(f));
    let s = m.kernel_space().unwrap();
    assert_eq!(m.paging_levels(), 5);
    assert_eq!(s.dtb, 0x9000);
    assert_eq!(
        m.translate(s, va5 + 0x1234_5678).unwrap(),
        0x1_c000_0000 + ((va5 + 0x1234_5678) & 0x3fff_ffff)
    );
    // A 57-bit canonical address that a 4-level walk would refuse.
    assert!(canonical(va5, 5) && !canonical(va5, 4));
    let kva = 0xffff_8000_0010_0000u64 | (0x1ff << 48);
    assert_eq!(m.translate(s, kva + 8).unwrap(), 0x10_0008);
    assert!(matches!(
        m.translate(s, 0x0100_0000_0000_0000),
        Err(TargetError::NonCanonical(_))
    ));
}

#[test]
fn cache_coalescing_and_read_ahead() {
    let mut m = Memory::new(Box::new(flat()));
    let s = m.kernel_space().unwrap();
    // A read across three physically contiguous pages is one request (plus page tables).
    m.read(s, VA + 0x800, 2 * PAGE as usize).unwrap();
    let before = m.stats().transport.round_trips;
    // Cached now.
    let b = m.read(s, VA + 0x900, 0x100).unwrap();
    assert_eq!(b[0], 0x00, "byte at pa 0x100900 is its low address byte");
    assert_eq!(m.stats().transport.round_trips, before);
    // Read-ahead: one small read fetches a whole transfer's worth of what follows.
    let mut m = Memory::new(Box::new(flat()));
    let s = m.kernel_space().unwrap();
    m.read_ahead(s, VA + 0x10, 0x68).unwrap();
    let rt = m.stats().transport.round_trips;
    for i in 1..30u64 {
        m.read_ahead(s, VA + 0x10 + i * 0x80, 0x68).unwrap();
    }
    assert_eq!(
        m.stats().transport.round_trips,
        rt,
        "served from the read-ahead"
    );
    // Reads that straddle a physical discontinuity still come back right.
    let b = m.read(s, VA + 4 * PAGE - 8, 16).unwrap();
    assert_eq!(b[8], 0x00);
    assert_eq!(b[7], 0xff);
    // Paged-out pages fail with the reason; absurd sizes are refused.
    assert!(m.read(s, VA + 5 * PAGE, 8).is_err());
    assert!(matches!(
        m.read(s, VA, MAX_READ + 1),
        Err(TargetError::TooLarge { .. })
    ));
    assert!(m.touched_pages().contains(&0x100));
}

#[test]
fn long_reads_in_pieces_with_unreadable_pages_in_place() {
    let mut m = Memory::new(Box::new(flat()));
    let s = m.kernel_space().unwrap();
    // Pages 0-3 contiguous, 4 elsewhere, 5 paged out, 6 not mapped.
    let mut got: Vec<(u64, Result<Vec<u8>, u64>)> = Vec::new();
    m.read_range(s, VA + 0x800, 7 * PAGE - 0x800, |at, p| {
        got.push((
            at,
            match p {
                Piece::Read(b) => Ok(b.to_vec()),
                Piece::Unreadable { len, .. } => Err(len),
            },
        ));
        std::ops::ControlFlow::Continue(())
    });
    let mut at = VA + 0x800;
    let mut holes = Vec::new();
    for (a, r) in &got {
        assert_eq!(*a, at, "pieces in address order, without gaps");
        match r {
            Ok(b) => {
                for (i, x) in b.iter().enumerate() {
                    let va = at + i as u64;
                    let pa = if va < VA + 4 * PAGE {
                        0x10_0000 + (va - VA)
                    } else {
                        0x20_0000 + (va - VA - 4 * PAGE)
                    };
                    assert_eq!(*x, pa as u8, "{va:#x}");
                }
                at += b.len() as u64;
            }
            Err(len) => {
                holes.push((*a, *len));
                at += len;
            }
        }
    }
    assert_eq!(at, VA + 7 * PAGE);
    assert_eq!(holes, vec![(VA + 5 * PAGE, PAGE), (VA + 6 * PAGE, PAGE)]);
    // The contiguous part came in full requests: 0x3800 bytes over 3,944-byte transfers.
    let mut m = Memory::new(Box::new(flat()));
    let s = m.kernel_space().unwrap();
    m.read(s, VA, 8).unwrap();
    let before = m.stats().transport.round_trips;
    m.read_range(s, VA + 0x800, 4 * PAGE - 0x800, |_, p| {
        assert!(matches!(p, Piece::Read(_)));
        std::ops::ControlFlow::Continue(())
    });
    assert_eq!(
        m.stats().transport.round_trips - before,
        (4 * PAGE - 0x800).div_ceil(3944)
    );
    // The caller may stop the read.
    let mut calls = 0;
    m.read_range(s, VA + 5 * PAGE, 2 * PAGE, |_, _| {
        calls += 1;
        std::ops::ControlFlow::Break(())
    });
    assert_eq!(calls, 1);
}

/// A live target's own virtual reads (the quick path): each byte holds its address's low
/// byte; the page at [`Live::HOLE`] is not mapped. Counts the reads and can be let run.
struct Live {
    reads: Vec<(u64, usize)>,
    ran: Arc<AtomicBool>,
}

impl Live {
    const HOLE: u64 = VA + 0x3000;
}

impl Target for Live {
    fn info(&self) -> TargetInfo {
        TargetInfo {
            directory_table_base: Some(0x1000),
            ..TargetInfo::default()
        }
    }
    fn read_physical(&mut self, _a: u64, _buf: &mut [u8]) -> Result<usize, TargetError> {
        Ok(0)
    }
    fn max_transfer(&self) -> usize {
        3944
    }
    fn context(&mut self, _p: u32) -> Result<Context, TargetError> {
        Ok(Context::new())
    }
    fn special_registers(&mut self, _p: u32) -> Result<Vec<u8>, TargetError> {
        Ok(vec![0; 0xe0])
    }
    fn control_pointer(&mut self, _p: u32, _i: u64) -> Result<u64, TargetError> {
        Ok(0)
    }
    fn stats(&self) -> TransportStats {
        TransportStats {
            round_trips: self.reads.len() as u64,
            bytes: 0,
        }
    }
    fn take_invalidation(&mut self) -> bool {
        self.ran.swap(false, Ordering::SeqCst)
    }
    fn read_virtual_live(
        &mut self,
        address: u64,
        buf: &mut [u8],
    ) -> Option<Result<usize, TargetError>> {
        self.reads.push((address, buf.len()));
        let mut n = 0;
        for (i, b) in buf.iter_mut().enumerate() {
            let a = address + i as u64;
            if a & !(PAGE - 1) == Live::HOLE {
                break;
            }
            *b = a as u8;
            n += 1;
        }
        Some(Ok(n))
    }
}

#[test]
fn quick_reads_fetch_the_bytes_around_a_value_once_per_stop() {
    let ran = Arc::new(AtomicBool::new(false));
    let live = Live {
        reads: Vec::new(),
        ran: ran.clone(),
    };
    let mut m = Memory::new(Box::new(live));
    let s = Space { dtb: 0x1000 };
    m.set_quick(true);
    // An IRP's status and its stack count and location: one window, one read.
    let irp = VA + 0x1010;
    assert_eq!(
        m.read(s, irp + 0x30, 4).unwrap(),
        vec![0x40, 0x41, 0x42, 0x43]
    );
    assert_eq!(m.read(s, irp + 0x42, 1).unwrap(), vec![0x52]);
    assert_eq!(m.read(s, irp + 0x43, 1).unwrap(), vec![0x53]);
    assert_eq!(m.stats().transport.round_trips, 1);
    // Fields before the first one read, and a long value at the window's far end.
    assert_eq!(m.read(s, irp + 0x8, 1).unwrap(), vec![0x18]);
    assert_eq!(m.stats().transport.round_trips, 1);
    let far = m.read(s, VA + 0x1064, 64).unwrap();
    assert_eq!((far[0], far[63]), (0x64, 0xa3));
    assert_eq!(m.stats().transport.round_trips, 2);
    // Across two pages: read as it is (the window around it could hold an unmapped page).
    assert_eq!(m.read(s, VA + 0x1ffc, 8).unwrap()[7], 0x03);
    assert_eq!(m.read(s, VA + 0x1ffe, 2).unwrap(), vec![0xfe, 0xff]);
    assert_eq!(m.stats().transport.round_trips, 3);
    // The target ran: read again.
    ran.store(true, Ordering::SeqCst);
    assert_eq!(m.read(s, irp + 0x42, 1).unwrap(), vec![0x52]);
    assert_eq!(m.stats().transport.round_trips, 4);
    // A value in an unmapped page fails where it starts; the window before it is fine.
    assert!(matches!(
        m.read(s, Live::HOLE + 8, 4),
        Err(TargetError::Unavailable { address }) if address == Live::HOLE + 8
    ));
    assert_eq!(
        m.read(s, Live::HOLE - 4, 4).unwrap(),
        vec![0xfc, 0xfd, 0xfe, 0xff]
    );
}
