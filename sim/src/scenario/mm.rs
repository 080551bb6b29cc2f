//! The memory manager's figures: commit, available pages, pools and the page file.

use crate::SimError;
use crate::kernel::Kernel;
use crate::pool::{PoolKind, tag};
use crate::system::System;

#[derive(Debug, Clone)]
pub struct MmFigures {
    /// Physical pages.
    pub physical: u64,
    /// Available.
    pub available: u64,
    /// Resident available.
    pub resident_available: u64,
    /// Modified.
    pub modified: u64,
    /// Modified no-write.
    pub modified_no_write: u64,
    /// Modified for the page file.
    pub modified_pf: u64,
    /// Free system PTEs.
    pub free_system_ptes: u64,
    /// Committed.
    pub committed: u64,
    /// Limit.
    pub limit: u64,
    /// Limit maximum.
    pub limit_maximum: u64,
    /// Peak.
    pub peak: u64,
    /// Shared commit.
    pub shared: u64,
    /// Driver commit.
    pub driver: u64,
    /// Process-related commit.
    pub process: u64,
    /// Paged pool commit.
    pub paged_pool_commit: u64,
    /// Non-paged pool commit.
    pub nonpaged_pool_commit: u64,
    /// Boot commit.
    pub boot: u64,
    /// Pages for MDLs.
    pub mdl: u64,
    /// PFN array commit.
    pub pfn_array: u64,
    /// System page tables.
    pub system_page_tables: u64,
    /// Pagefile hash pages.
    pub pagefile_hash: u64,
    /// Kernel stacks.
    pub kernel_stacks: u64,
    /// Special pool.
    pub special_pool: u64,
    /// Non-paged pool in use / max.
    pub nonpaged_used: u64,
    /// Non-paged pool maximum.
    pub nonpaged_max: u64,
    /// Paged pool in use / max.
    pub paged_used: u64,
    /// Paged pool maximum.
    pub paged_max: u64,
    /// Page file (size, maximum, minimum, free) in pages.
    pub pagefile: (u64, u64, u64, u64),
    /// ChargeCommitmentFailures[4].
    pub failures: [u32; 4],
}

impl MmFigures {
    pub(super) fn healthy() -> MmFigures {
        MmFigures {
            physical: 4_193_977,
            available: 2_812_455,
            resident_available: 3_702_118,
            modified: 9_214,
            modified_no_write: 3,
            modified_pf: 9_100,
            free_system_ptes: 33_514_902,
            committed: 1_412_880,
            limit: 4_980_409,
            limit_maximum: 8_175_677,
            peak: 1_603_211,
            shared: 28_114,
            driver: 2_718,
            process: 41_337,
            paged_pool_commit: 96_512,
            nonpaged_pool_commit: 61_004,
            boot: 4_771,
            mdl: 1_186,
            pfn_array: 98_340,
            system_page_tables: 4_091,
            pagefile_hash: 12,
            kernel_stacks: 18_441,
            special_pool: 0,
            nonpaged_used: 61_004,
            nonpaged_max: 4_294_967_296 / 4096,
            paged_used: 96_512,
            paged_max: 34_359_738_368 / 4096,
            pagefile: (786_432, 3_195_268, 786_432, 702_119),
            failures: [0, 0, 0, 0],
        }
    }

    pub(super) fn exhausted() -> MmFigures {
        let mut m = MmFigures::healthy();
        m.available = 31_407;
        m.resident_available = 412_906;
        m.committed = 8_175_615;
        m.limit = 8_175_677;
        m.limit_maximum = 8_175_677;
        m.peak = 8_175_677;
        m.pagefile = (3_195_268, 3_195_268, 786_432, 214);
        // The banner adds [0] and [1]; [2] counts charges that never waited.
        m.failures = [1_440, 47_000, 93, 0];
        m
    }
}

/// Writes the figures, the page file and each process's commit charge, where the table has a
/// home for each (a build without one, such as 9600's `MmPagedPoolCommit` or 14393's
/// partition `SharedCommit`, keeps that figure nowhere); returns what it left out.
pub(super) fn write_mm(
    sys: &mut System,
    m: &MmFigures,
    commits: &[(usize, u64)],
) -> Result<Vec<String>, SimError> {
    // Per-process commit.
    for (p, pages) in commits {
        let ep = sys.processes[*p].eprocess;
        sys.k.set(ep, "_EPROCESS", "CommitCharge", *pages)?;
    }
    let pf = write_pagefile(sys, m)?;
    let k = &mut sys.k;
    let mut left = Vec::new();
    if k.has_sym("MiChargeCommitmentFailures") {
        write_mm_globals(k, m, pf, &mut left)?;
    } else {
        write_mm_partition(k, m, pf, &mut left)?;
    }
    Ok(left)
}

/// Where a figure lives: a global (written as 8 bytes), or a member of the structure a
/// global names.
#[derive(Clone, Copy)]
enum Place {
    Global(&'static str),
    Member(&'static str, &'static str, &'static str),
}

impl Place {
    fn name(self) -> String {
        match self {
            Place::Global(g) => format!("nt!{g}"),
            Place::Member(_, t, path) => format!("{t}.{path}"),
        }
    }
}

/// Writes each figure to the first of its places the table has; a figure with none is left
/// out (and named in `left`).
fn put_all(
    k: &mut Kernel,
    figures: &[(&[Place], u64)],
    left: &mut Vec<String>,
) -> Result<(), SimError> {
    for (places, v) in figures {
        let home = places.iter().find(|p| match p {
            Place::Global(g) => k.has_sym(g),
            Place::Member(g, t, path) => k.has_sym(g) && k.has(t, path),
        });
        match home {
            Some(Place::Global(g)) => {
                let a = k.sym(g)?;
                k.w64(a, *v);
            }
            Some(Place::Member(g, t, path)) => {
                let a = k.sym(g)?;
                k.set(a, t, path, *v)?;
            }
            None => left.push(
                places
                    .iter()
                    .map(|p| p.name())
                    .collect::<Vec<_>>()
                    .join(" or "),
            ),
        }
    }
    Ok(())
}

/// The page file; returns its `_MMPAGING_FILE`.
fn write_pagefile(sys: &mut System, m: &MmFigures) -> Result<u64, SimError> {
    // The page file.
    let pf_size = sys.k.size("_MMPAGING_FILE")?;
    let pf = sys
        .pool
        .alloc(&mut sys.k, PoolKind::NonPaged, pf_size, tag("MmPf"))?;
    let name = sys
        .pool
        .alloc(&mut sys.k, PoolKind::NonPaged, 0x60, tag("MmPf"))?;
    sys.k.set(pf, "_MMPAGING_FILE", "Size", m.pagefile.0)?;
    sys.k
        .set(pf, "_MMPAGING_FILE", "MaximumSize", m.pagefile.1)?;
    sys.k
        .set(pf, "_MMPAGING_FILE", "MinimumSize", m.pagefile.2)?;
    sys.k.set(pf, "_MMPAGING_FILE", "FreeSpace", m.pagefile.3)?;
    let pfn = pf + sys.k.off("_MMPAGING_FILE", "PageFileName")?;
    sys.k.unicode_string(pfn, name, "\\??\\C:\\pagefile.sys");
    Ok(pf)
}

/// The figures as plain globals (7601).
fn write_mm_globals(
    k: &mut Kernel,
    m: &MmFigures,
    pf: u64,
    left: &mut Vec<String>,
) -> Result<(), SimError> {
    use Place::Global as G;
    let info = |path| Place::Member("MmPagedPoolInfo", "_MM_PAGED_POOL_INFO", path);
    put_all(
        k,
        &[
            (&[G("MmNumberOfPhysicalPages")], m.physical),
            (&[G("MmAvailablePages")], m.available),
            (&[G("MmResidentAvailablePages")], m.resident_available),
            (&[G("MmTotalCommittedPages")], m.committed),
            (&[G("MmTotalCommitLimit")], m.limit),
            (&[G("MmTotalCommitLimitMaximum")], m.limit_maximum),
            (&[G("MmPeakCommitment")], m.peak),
            (&[G("MmSharedCommit")], m.shared),
            (&[G("MmProcessCommit")], m.process),
            (&[G("MmDriverCommit")], m.driver),
            // 9600 keeps no paged-pool commit.
            (
                &[G("MmPagedPoolCommit"), info("PagedPoolCommit")],
                m.paged_pool_commit,
            ),
            (&[info("AllocatedPagedPool")], m.paged_used),
            (&[G("MmAllocatedNonPagedPool")], m.nonpaged_used),
            (&[G("MmMdlPagesAllocated")], m.mdl),
            // 9600 keeps the kernel stacks' pages in MiKernelStackPages.
            (
                &[G("MmKernelStackPages"), G("MiKernelStackPages")],
                m.kernel_stacks,
            ),
            (&[G("MmSpecialPagesInUse")], m.special_pool),
            (&[G("MmTotalPagesForPagingFile")], m.modified_pf),
            (&[G("MmMaximumNonPagedPoolInBytes")], m.nonpaged_max * 4096),
            (&[G("MmSizeOfPagedPoolInBytes")], m.paged_max * 4096),
        ],
        left,
    )?;
    let a = k.sym("MmModifiedPageListHead")?;
    k.set(a, "_MMPFNLIST", "Total", m.modified)?;
    let a = k.sym("MmModifiedNoWritePageListHead")?;
    k.set(a, "_MMPFNLIST", "Total", m.modified_no_write)?;
    let a = k.sym("MiChargeCommitmentFailures")?;
    for (i, f) in m.failures.iter().enumerate() {
        k.w32(a + 4 * i as u64, *f);
    }
    let a = k.sym("MmNumberOfPagingFiles")?;
    k.w32(a, 1);
    let a = k.sym("MmPagingFile")?;
    k.w64(a, pf);
    let a = k.sym("MiSystemPteInfo")?;
    k.set(
        a,
        "_MI_SYSTEM_PTE_TYPE",
        "TotalFreeSystemPtes",
        m.free_system_ptes,
    )?;
    Ok(())
}

/// The figures in the system partition and MiState (1607+).
fn write_mm_partition(
    k: &mut Kernel,
    m: &MmFigures,
    pf: u64,
    left: &mut Vec<String>,
) -> Result<(), SimError> {
    // Partition and MiState (1607+).
    let p = |path| Place::Member("MiSystemPartition", "_MI_PARTITION", path);
    let st = |path| Place::Member("MiState", "_MI_SYSTEM_INFORMATION", path);
    put_all(
        k,
        &[
            (&[p("Vp.NumberOfPhysicalPages")], m.physical),
            (&[p("Vp.AvailablePages")], m.available),
            (&[p("Vp.ResidentAvailablePages")], m.resident_available),
            (&[p("Vp.TotalCommittedPages")], m.committed),
            (&[p("Vp.TotalCommitLimit")], m.limit),
            (&[p("Vp.ModifiedPageListHead.Total")], m.modified),
            (
                &[p("Vp.ModifiedNoWritePageListHead.Total")],
                m.modified_no_write,
            ),
            (&[p("Vp.TotalPagesForPagingFile")], m.modified_pf),
            // 14393 keeps the shared commit in MiState's visible state.
            (&[p("Vp.SharedCommit"), st("Vs.SharedCommit")], m.shared),
            (&[p("Vp.NumberOfPagingFiles")], 1),
            (&[p("Vp.PagingFile[0]")], pf),
            (&[p("Commit.PeakCommitment")], m.peak),
            (&[p("Commit.TotalCommitLimitMaximum")], m.limit_maximum),
            (&[st("Pools.AllocatedNonPagedPool")], m.nonpaged_used),
            (&[st("Vs.PagedPoolInfo.AllocatedPagedPool")], m.paged_used),
            (&[st("Vs.MaximumNonPagedPoolInPages")], m.nonpaged_max),
            (&[st("Vs.SizeOfPagedPoolInPages")], m.paged_max),
            (
                &[st("Vs.SystemPteInfo.TotalFreeSystemPtes")],
                m.free_system_ptes,
            ),
            (&[st("Vs.NonPagedPoolCommit")], m.nonpaged_pool_commit),
            (&[st("Vs.BootCommit")], m.boot),
            (&[st("Vs.MdlPagesAllocated")], m.mdl),
            (&[st("Vs.SystemPageTableCommit")], m.system_page_tables),
            (&[st("Vs.ProcessCommit")], m.process),
            (&[st("Vs.DriverCommit")], m.driver),
            (&[st("Vs.PfnDatabaseCommit")], m.pfn_array),
            (&[st("Vs.PagefileHashPages")], m.pagefile_hash),
        ],
        left,
    )?;
    // The commit failures the banner counts: the scenario is about them, so they must land.
    let part = k.sym("MiSystemPartition")?;
    for (i, f) in m.failures.iter().enumerate() {
        k.set(
            part,
            "_MI_PARTITION",
            &format!("Vp.ChargeCommitmentFailures[{i}]"),
            u64::from(*f),
        )?;
    }
    let st = k.sym("MiState")?;
    let t = "_MI_SYSTEM_INFORMATION";
    let vis = k.sym("MiVisibleState")?;
    let vs = st + k.off(t, "Vs")?;
    k.w64(vis, vs);
    Ok(())
}
