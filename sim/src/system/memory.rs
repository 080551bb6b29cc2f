//! The memory manager's record of where the system regions live.

use crate::SimError;
use crate::kernel::{FIRST_PFN, Region};
use crate::pool::{PoolKind, tag};

use super::System;

impl System {
    /// Records where the pools live, as the memory manager does: the per-PML4-slot system VA
    /// types and the assigned regions (1607+), or the pool bounds globals (7601).
    pub(super) fn write_va_regions(&mut self) -> Result<(), SimError> {
        const SLOT: u64 = 1 << 39;
        let regions = [
            (
                Region::NonPagedPool,
                "MiVaNonPagedPool",
                "AssignedRegionNonPagedPool",
            ),
            (
                Region::PagedPool,
                "MiVaPagedPool",
                "AssignedRegionPagedPool",
            ),
            (
                Region::Stacks,
                "MiVaKernelStacks",
                "AssignedRegionKernelStacks",
            ),
            (
                Region::SpecialPool,
                "MiVaSpecialPoolNonPaged",
                "AssignedRegionSpecialPoolNonPaged",
            ),
        ];
        let k = &mut self.k;
        // The regions' types (a PML4 slot's type, where the build keeps that array) and
        // bounds (where it keeps those: 14393 has the bounds only).
        let typed = k.has("_MI_SYSTEM_INFORMATION", "Vs.SystemVaType");
        let bounded = k.has("_MI_SYSTEM_INFORMATION", "Vs.SystemVaRegions");
        if typed || bounded {
            let st = k.sym("MiState")?;
            for (region, va_type, assigned) in regions {
                let base = k.region_start(region);
                // Special pool is typed paged where the build has no non-paged kind.
                let ty = k
                    .enum_value("_MI_SYSTEM_VA_TYPE", va_type)
                    .or_else(|_| k.enum_value("_MI_SYSTEM_VA_TYPE", "MiVaSpecialPoolPaged"));
                if typed && let Ok(ty) = ty {
                    // One entry per kernel-half PML4 slot.
                    let slot = ((base >> 39) & 0x1ff) - 256;
                    k.set(
                        st,
                        "_MI_SYSTEM_INFORMATION",
                        &format!("Vs.SystemVaType[{slot}]"),
                        ty as u64,
                    )?;
                }
                if bounded && let Ok(i) = k.enum_value("_MI_ASSIGNED_REGION_TYPES", assigned) {
                    let path = format!("Vs.SystemVaRegions[{i}]");
                    k.set(
                        st,
                        "_MI_SYSTEM_INFORMATION",
                        &format!("{path}.BaseAddress"),
                        base,
                    )?;
                    k.set(
                        st,
                        "_MI_SYSTEM_INFORMATION",
                        &format!("{path}.NumberOfBytes"),
                        SLOT,
                    )?;
                }
            }
        } else if k.has_sym("MmNonPagedPoolStart") {
            let np = k.region_start(Region::NonPagedPool);
            let a = k.sym("MmNonPagedPoolStart")?;
            k.w64(a, np);
            if k.has_sym("MmPagedPoolEnd") {
                let end = k.region_start(Region::PagedPool) + SLOT / 16 - 1;
                let a = k.sym("MmPagedPoolEnd")?;
                k.w64(a, end);
            }
        }
        Ok(())
    }

    /// The RAM the memory manager describes (`MmPhysicalMemoryBlock`, a
    /// `_PHYSICAL_MEMORY_DESCRIPTOR` in non-paged pool): conventional memory below 640 KB
    /// without the first page, as PC firmware reports it, then from 16 MB every frame the
    /// machine has handed out. (Its RAM is sparse and small; the memory manager's counters
    /// that `!vm` shows describe the server the scenarios come from.) Written last, so that it
    /// covers every frame.
    pub(super) fn write_physical_memory_block(&mut self) -> Result<(), SimError> {
        let (d, r) = ("_PHYSICAL_MEMORY_DESCRIPTOR", "_PHYSICAL_MEMORY_RUN");
        let run = self.k.off(d, "Run")?;
        let run_size = self.k.size(r)?;
        let desc = self.pool.alloc(
            &mut self.k,
            PoolKind::NonPaged,
            run + 2 * run_size,
            tag("MmPm"),
        )?;
        let k = &mut self.k;
        let runs = [(1, 0x9e), (FIRST_PFN, k.mem.allocated_up_to() - FIRST_PFN)];
        k.set(desc, d, "NumberOfRuns", runs.len() as u64)?;
        k.set(desc, d, "NumberOfPages", runs.iter().map(|x| x.1).sum())?;
        for (i, (base, count)) in runs.iter().enumerate() {
            let at = desc + run + i as u64 * run_size;
            k.set(at, r, "BasePage", *base)?;
            k.set(at, r, "PageCount", *count)?;
        }
        let v = k.sym("MmPhysicalMemoryBlock")?;
        k.w64(v, desc);
        Ok(())
    }
}
