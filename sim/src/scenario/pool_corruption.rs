//! PoolCorruption: a driver overran a pool allocation into the next one's header.

use crate::SimError;
use crate::pool::{Placement, PoolKind, tag};
use crate::system::System;

use super::facts::Corruption;

pub(super) fn pool_corruption(sys: &mut System) -> Result<Corruption, SimError> {
    // Fill part of a page so the victim pair sits mid-page, then the 100-byte allocation and
    // its neighbour.
    for _ in 0..3 {
        sys.pool
            .alloc(&mut sys.k, PoolKind::NonPaged, 0x60, tag("AcCt"))?;
    }
    let a = sys
        .pool
        .alloc(&mut sys.k, PoolKind::NonPaged, 100, tag("AcBf"))?;
    let b = sys
        .pool
        .alloc(&mut sys.k, PoolKind::NonPaged, 100, tag("Irp "))?;
    for _ in 0..3 {
        sys.pool
            .alloc(&mut sys.k, PoolKind::NonPaged, 0x60, tag("AcCt"))?;
    }
    let info = |d: u64| sys.pool.allocations.iter().find(|x| x.data == d).copied();
    let (ia, ib) = (
        info(a).ok_or_else(|| SimError::Config("lost allocation".into()))?,
        info(b).ok_or_else(|| SimError::Config("lost allocation".into()))?,
    );
    if ia.header + ia.block != ib.header {
        return Err(SimError::Config(
            "the corruption pair is not adjacent".into(),
        ));
    }
    // The overrun: the driver wrote 100 + (slack + 16) bytes of its record.
    let overrun = (ib.header + 16 - a) as usize;
    let mut junk = vec![0u8; overrun];
    for (i, b) in junk.iter_mut().enumerate() {
        *b = b"ACMEFLT!"[i % 8];
    }
    sys.k.write(a, &junk);
    let mut found = [0u8; 16];
    sys.k.read(ib.header, &mut found);
    let special = sys
        .pool
        .alloc_special(&mut sys.k, PoolKind::NonPaged, 0x40, tag("AcSp"))?;
    let _ = Placement::Special;
    Ok(Corruption {
        victim_of_overrun: a,
        smashed_header: ib.header,
        page: ib.header & !0xfff,
        expected_block_units: ib.block / 16,
        found,
        special,
        driver: "acmeflt.sys".into(),
    })
}
