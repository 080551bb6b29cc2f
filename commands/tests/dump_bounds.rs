//! Every number in a dump's headers is checked against the file (and against what x64 can
//! address) before it is used: run counts and their page numbers, the page bitmap's size and
//! its data offset, triage regions at the top of the address space. Crafted dumps give a clear
//! error, or read only what the file holds; none panics or asks for more memory than the file.

use std::collections::BTreeMap;

use kdnet_model::dump::{DumpError, DumpFile, DumpHeader, WriteKind, write_dump};
use kdnet_model::target::Target;

/// A dump the project writes: pages 0x10..0x13 filled with their page number.
fn written(kind: WriteKind) -> Vec<u8> {
    let mut pages = BTreeMap::new();
    for pfn in 0x10u64..0x13 {
        pages.insert(pfn, vec![pfn as u8; 0x1000]);
    }
    let header = DumpHeader {
        build: 20348,
        processors: 1,
        context: vec![0; 0x4d0],
        ..DumpHeader::default()
    };
    // A directory of its own: the cases run at once.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("kdnet-dump-bounds-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{kind:?}.dmp"));
    write_dump(&p, &header, kind, &pages).unwrap();
    let b = std::fs::read(&p).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    b
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn damaged(b: Vec<u8>) -> String {
    match DumpFile::from_bytes("crafted.dmp", b) {
        Err(DumpError::Damaged(m)) => m,
        Err(other) => panic!("expected a damaged-dump error, got {other}"),
        Ok(_) => panic!("a crafted dump opened"),
    }
}

#[test]
fn full_dump_runs_are_checked() {
    let good = written(WriteKind::Full);
    let mut d = DumpFile::from_bytes("full.dmp", good.clone()).unwrap();
    let mut page = [0u8; 16];
    assert_eq!(d.read_physical(0x12000, &mut page).unwrap(), 16);
    assert_eq!(page, [0x12; 16]);
    // A read at the very top of the physical space ends, it does not wrap.
    assert_eq!(d.read_physical(u64::MAX - 3, &mut page).unwrap(), 0);
    // A run whose page numbers pass the top of the address space.
    let mut b = good.clone();
    put64(&mut b, 0x98, u64::MAX - 1);
    assert!(damaged(b).contains("run 0 has 3 pages from page 0xfffffffffffffffe"));
    // A run of 2^40 pages, and more runs than the header holds.
    let mut b = good.clone();
    put64(&mut b, 0xA0, 1 << 41);
    assert!(damaged(b).contains("run 0 has"));
    let mut b = good.clone();
    put32(&mut b, 0x88, 1000);
    assert!(damaged(b).contains("physical memory runs"));
    // Runs claiming more pages than the file holds.
    let mut b = good;
    put64(&mut b, 0xA0, 1 << 30);
    assert!(damaged(b).contains("runs describe 1073741824 pages but the file holds 3"));
}

#[test]
fn bitmap_sizes_are_checked_against_the_file() {
    let good = written(WriteKind::Bitmap);
    let mut d = DumpFile::from_bytes("bitmap.dmp", good.clone()).unwrap();
    assert_eq!(d.page_count(), 3);
    let mut page = [0u8; 8];
    assert_eq!(d.read_physical(0x11ff8, &mut page).unwrap(), 8);
    assert_eq!(page, [0x11; 8]);
    // A bitmap of 2^40 pages (a 128 GB bitmap) in a small file.
    let mut b = good.clone();
    put64(&mut b, 0x2030, 1 << 40);
    assert!(damaged(b).contains("the page bitmap runs past the end of the file"));
    let mut b = good.clone();
    put64(&mut b, 0x2030, u64::MAX);
    assert!(damaged(b).contains("bitmap header"));
    // Page data starting past the end of the file, and a count that disagrees with the bits.
    let mut b = good.clone();
    put64(&mut b, 0x2020, 1 << 50);
    assert!(damaged(b).contains("bitmap header"));
    let mut b = good;
    put64(&mut b, 0x2028, 7);
    assert!(damaged(b).contains("bitmap has 3 pages set, header says 7"));
}

/// A minimal triage dump: header, triage header, an 8-byte stack and one data block.
fn triage(block_va: u64, block_len: u32) -> Vec<u8> {
    let mut b = vec![0u8; 0x3000];
    b[..4].copy_from_slice(b"PAGE");
    b[4..8].copy_from_slice(b"DU64");
    put32(&mut b, 0x30, 0x8664);
    put32(&mut b, 0xF98, 4);
    let t = 0x2000;
    put32(&mut b, t + 0x08, 0x2ffc);
    b[0x2ffc..0x3000].copy_from_slice(b"TRGD");
    put32(&mut b, t + 0x28, 0x2100);
    put32(&mut b, t + 0x2C, 8);
    put64(&mut b, t + 0x48, 0xffff_f000_0000_1000);
    put32(&mut b, t + 0x78, 0x2200);
    put32(&mut b, t + 0x7C, 1);
    put64(&mut b, 0x2200, block_va);
    put32(&mut b, 0x2208, 0x2400);
    put32(&mut b, 0x220C, block_len);
    b[0x2400..0x2400 + 0x100].fill(0xAB);
    b
}

#[test]
fn triage_regions_are_checked() {
    let mut d = DumpFile::from_bytes("triage.dmp", triage(0xffff_f000_0000_8000, 0x100)).unwrap();
    let mut buf = [0u8; 4];
    assert_eq!(
        d.read_virtual_direct(0xffff_f000_0000_80fc, &mut buf)
            .unwrap()
            .unwrap(),
        4
    );
    assert_eq!(buf, [0xAB; 4]);
    // A data block whose end would pass the top of the address space is not a region: reads
    // near the top find nothing instead of wrapping.
    let mut d = DumpFile::from_bytes("triage.dmp", triage(u64::MAX - 0x7f, 0x100)).unwrap();
    assert_eq!(
        d.read_virtual_direct(u64::MAX - 3, &mut buf)
            .unwrap()
            .unwrap(),
        0
    );
    // A data block outside the file.
    assert!(damaged(triage(0xffff_f000_0000_8000, 0x10_0000)).contains("data block 0"));
    // More data blocks than can be.
    let mut b = triage(0xffff_f000_0000_8000, 0x100);
    put32(&mut b, 0x2000 + 0x7C, 0x7fff_ffff);
    assert!(damaged(b).contains("data blocks"));
}
