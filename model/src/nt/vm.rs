//! The memory manager's counters: page files, physical and available pages, pool usage, the
//! commit counters and failures, and each process's commit. On 7601/9600 the counters are
//! plain globals; from 1607 they live in the system partition (`MiSystemPartition.Vp`,
//! `.Commit`) and `MiState` (`.Vs`, `.Pools`). A counter the build does not keep is left out,
//! never guessed.

use crate::nt::{Kernel, ModelError};

/// A page file: name, current, free, minimum, maximum (pages).
pub type PagingFile = (String, u64, u64, u64, u64);

/// The counters read, in pages (`None` when the build does not keep one).
#[derive(Debug, Clone, Default)]
pub struct Vm {
    /// Page files: name, current, free, minimum, maximum (pages).
    pub paging_files: Vec<PagingFile>,
    /// Why the list of page files is not whole, when it is not (a read failed).
    pub paging_files_unreadable: Option<String>,
    /// Named counters in display order.
    pub lines: Vec<(&'static str, Option<u64>)>,
    /// Commit charged and the limit.
    pub committed: u64,
    /// Commit limit.
    pub limit: u64,
    /// Maximum the limit can grow to.
    pub limit_maximum: Option<u64>,
    /// Peak commit.
    pub peak: Option<u64>,
    /// ChargeCommitmentFailures[0..4].
    pub failures: [u32; 4],
    /// Pool allocation failures, where kept.
    pub pool_failures: Option<u64>,
    /// Per process (pid, image, commit pages), by commit, descending.
    pub processes: Vec<(u64, String, u64)>,
}

/// A global of `size` bytes: `Ok(None)` when the build has no such symbol, `Err` when it could
/// not be read. Globals lie together in the kernel's data: a miss reads on to the end of the
/// page.
fn global_value(k: &mut Kernel, name: &str, size: usize) -> Result<Option<u64>, ModelError> {
    let Ok(a) = k.sym(name) else {
        return Ok(None);
    };
    let b = k.mem.kread_ahead(a, size)?;
    let mut v = [0u8; 8];
    v[..size].copy_from_slice(&b[..size]);
    Ok(Some(u64::from_le_bytes(v)))
}

/// A counter for display: one the build does not keep is `None`; one that could not be read
/// is `None` too, and the result says it is incomplete.
fn counter(k: &mut Kernel, what: &str, r: Result<Option<u64>, ModelError>) -> Option<u64> {
    match r {
        Ok(v) => v,
        Err(e) => {
            k.note_incomplete(format!("{what} is unreadable: {e}"));
            None
        }
    }
}

fn global(k: &mut Kernel, name: &str) -> Option<u64> {
    let r = global_value(k, name, 8);
    counter(k, name, r)
}

fn global32(k: &mut Kernel, name: &str) -> Option<u64> {
    let r = global_value(k, name, 4);
    counter(k, name, r)
}

/// A field of a structure at a global, read with the table's layout and size: `Ok(None)`
/// when the build has no such symbol or field, `Err` when it could not be read.
fn field_value(k: &mut Kernel, sym: &str, ty: &str, path: &str) -> Result<Option<u64>, ModelError> {
    let nt = k.nt()?;
    let Ok(f) = nt.field(ty, path) else {
        return Ok(None);
    };
    let Ok(size) = nt.ty_size(&f.ty) else {
        return Ok(None);
    };
    let size = size.clamp(1, 8) as usize;
    let Ok(base) = k.sym(sym) else {
        return Ok(None);
    };
    let b = k.mem.kread_ahead(base + f.offset, size)?;
    let mut v = [0u8; 8];
    v[..size].copy_from_slice(&b[..size]);
    let mut x = u64::from_le_bytes(v);
    if let Some((pos, len)) = f.bits() {
        x = (x >> pos) & if len >= 64 { u64::MAX } else { (1 << len) - 1 };
    }
    Ok(Some(x))
}

fn field(k: &mut Kernel, sym: &str, ty: &str, path: &str) -> Option<u64> {
    let r = field_value(k, sym, ty, path);
    counter(k, &format!("{sym}.{path}"), r)
}

fn paging_file(k: &mut Kernel, pf: u64) -> Result<Option<PagingFile>, ModelError> {
    if pf == 0 {
        return Ok(None);
    }
    let v = k.view("_MMPAGING_FILE", pf)?;
    let name = match v.addr_of("PageFileName").map(|a| k.unicode_string(a)) {
        Ok(Ok(n)) => n,
        Ok(Err(ModelError::Target(e))) if !e.is_transient() => "(name paged out)".into(),
        Ok(Err(e)) => {
            k.note_incomplete(format!("the name of page file {pf:#x} is unreadable: {e}"));
            "(name unreadable)".into()
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Some((
        name,
        v.get("Size")?,
        v.get("FreeSpace")?,
        v.get("MinimumSize")?,
        v.get("MaximumSize")?,
    )))
}

/// The page files from their count and pointers (`pointer(k, i)` reads the i-th), noting in
/// `vm` when the list could not be read whole.
fn paging_files(
    k: &mut Kernel,
    vm: &mut Vm,
    count: Result<Option<u64>, ModelError>,
    pointer: impl Fn(&mut Kernel, u64) -> Result<Option<u64>, ModelError>,
) {
    let n = match count {
        Ok(n) => n.unwrap_or(0).min(16),
        Err(e) => {
            vm.paging_files_unreadable =
                Some(format!("the number of page files is unreadable: {e}"));
            return;
        }
    };
    for i in 0..n {
        let pf = pointer(k, i).and_then(|pf| match pf {
            Some(pf) => paging_file(k, pf),
            None => Ok(None),
        });
        match pf {
            Ok(p) => vm.paging_files.extend(p),
            Err(e) => {
                vm.paging_files_unreadable = Some(format!("page file {i} is unreadable: {e}"));
            }
        }
    }
}

/// The four ChargeCommitmentFailures counters: a global array on 7601/9600, the system
/// partition's after.
pub fn failure_counts(k: &mut Kernel) -> Result<[u32; 4], ModelError> {
    let mut out = [0u32; 4];
    if k.has_sym("MiChargeCommitmentFailures") {
        let a = k.sym("MiChargeCommitmentFailures")?;
        for (i, v) in out.iter_mut().enumerate() {
            *v = k.mem.u32(a + 4 * i as u64)?;
        }
    } else {
        for (i, v) in out.iter_mut().enumerate() {
            // A read that fails is that error, never "the partition has none".
            *v = field_value(
                k,
                "MiSystemPartition",
                "_MI_PARTITION",
                &format!("Vp.ChargeCommitmentFailures[{i}]"),
            )?
            .ok_or_else(|| {
                ModelError::Corrupt("the partition has no ChargeCommitmentFailures".into())
            })? as u32;
        }
    }
    Ok(out)
}

/// The commit failures WinDbg's banner counts (members 0 and 1).
pub fn banner_failures(f: &[u32; 4]) -> u64 {
    u64::from(f[0]) + u64::from(f[1])
}

/// Reads every counter the build keeps.
pub fn read(k: &mut Kernel) -> Result<Vm, ModelError> {
    let mut vm = Vm::default();
    let classic = k.has_sym("MiChargeCommitmentFailures");
    if classic {
        let n = global_value(k, "MmNumberOfPagingFiles", 4);
        if let Ok(base) = k.sym("MmPagingFile") {
            paging_files(k, &mut vm, n, |k, i| Ok(Some(k.mem.u64(base + 8 * i)?)));
        }
        vm.failures = failure_counts(k)?;
        vm.committed = global(k, "MmTotalCommittedPages").unwrap_or(0);
        vm.limit = global(k, "MmTotalCommitLimit").unwrap_or(0);
        vm.limit_maximum = global(k, "MmTotalCommitLimitMaximum");
        vm.peak = global(k, "MmPeakCommitment");
        let bytes_pages = |v: Option<u64>| v.map(|b| b / 4096);
        let modified = field(k, "MmModifiedPageListHead", "_MMPFNLIST", "Total");
        let no_write = field(k, "MmModifiedNoWritePageListHead", "_MMPFNLIST", "Total");
        let ptes = field(
            k,
            "MiSystemPteInfo",
            "_MI_SYSTEM_PTE_TYPE",
            "TotalFreeSystemPtes",
        );
        let paged = field(
            k,
            "MmPagedPoolInfo",
            "_MM_PAGED_POOL_INFO",
            "AllocatedPagedPool",
        );
        let kernel_stacks =
            global(k, "MmKernelStackPages").or_else(|| global(k, "MiKernelStackPages"));
        vm.lines = vec![
            ("Physical Memory", global(k, "MmNumberOfPhysicalPages")),
            ("Available Pages", global(k, "MmAvailablePages")),
            ("ResAvail Pages", global(k, "MmResidentAvailablePages")),
            ("Free System PTEs", ptes),
            ("Modified Pages", modified),
            ("Modified PF Pages", global(k, "MmTotalPagesForPagingFile")),
            ("Modified No Write Pages", no_write),
            ("NonPagedPool Usage", global(k, "MmAllocatedNonPagedPool")),
            (
                "NonPagedPool Max",
                bytes_pages(global(k, "MmMaximumNonPagedPoolInBytes")),
            ),
            ("PagedPool Usage", paged),
            (
                "PagedPool Maximum",
                bytes_pages(global(k, "MmSizeOfPagedPoolInBytes")),
            ),
            ("Shared Commit", global(k, "MmSharedCommit")),
            ("Special Pool", global(k, "MmSpecialPagesInUse")),
            ("Kernel Stacks", kernel_stacks),
            ("Pages For MDLs", global(k, "MmMdlPagesAllocated")),
            ("PagedPool Commit", global(k, "MmPagedPoolCommit")),
            ("Driver Commit", global(k, "MmDriverCommit")),
            ("Process Commit", global(k, "MmProcessCommit")),
        ];
        vm.pool_failures = global32(k, "ExPoolFailures");
    } else {
        let part = "MiSystemPartition";
        let pt = "_MI_PARTITION";
        let st = "MiState";
        let stt = "_MI_SYSTEM_INFORMATION";
        let n = field_value(k, part, pt, "Vp.NumberOfPagingFiles");
        paging_files(k, &mut vm, n, |k, i| {
            field_value(k, part, pt, &format!("Vp.PagingFile[{i}]"))
        });
        vm.failures = failure_counts(k)?;
        vm.committed = field(k, part, pt, "Vp.TotalCommittedPages").unwrap_or(0);
        vm.limit = field(k, part, pt, "Vp.TotalCommitLimit").unwrap_or(0);
        vm.limit_maximum = field(k, part, pt, "Commit.TotalCommitLimitMaximum");
        vm.peak = field(k, part, pt, "Commit.PeakCommitment");
        let shared =
            field(k, part, pt, "Vp.SharedCommit").or_else(|| field(k, st, stt, "Vs.SharedCommit"));
        vm.lines = vec![
            (
                "Physical Memory",
                field(k, part, pt, "Vp.NumberOfPhysicalPages"),
            ),
            ("Available Pages", field(k, part, pt, "Vp.AvailablePages")),
            (
                "ResAvail Pages",
                field(k, part, pt, "Vp.ResidentAvailablePages"),
            ),
            (
                "Free System PTEs",
                field(k, st, stt, "Vs.SystemPteInfo.TotalFreeSystemPtes"),
            ),
            (
                "Modified Pages",
                field(k, part, pt, "Vp.ModifiedPageListHead.Total"),
            ),
            (
                "Modified PF Pages",
                field(k, part, pt, "Vp.TotalPagesForPagingFile"),
            ),
            (
                "Modified No Write Pages",
                field(k, part, pt, "Vp.ModifiedNoWritePageListHead.Total"),
            ),
            (
                "NonPagedPool Usage",
                field(k, st, stt, "Pools.AllocatedNonPagedPool"),
            ),
            (
                "NonPagedPool Max",
                field(k, st, stt, "Vs.MaximumNonPagedPoolInPages"),
            ),
            (
                "PagedPool Usage",
                field(k, st, stt, "Vs.PagedPoolInfo.AllocatedPagedPool"),
            ),
            (
                "PagedPool Maximum",
                field(k, st, stt, "Vs.SizeOfPagedPoolInPages"),
            ),
            ("Shared Commit", shared),
            ("Special Pool", field(k, st, stt, "Vs.SpecialPagesInUse")),
            ("Pages For MDLs", field(k, st, stt, "Vs.MdlPagesAllocated")),
            (
                "NonPagedPool Commit",
                field(k, st, stt, "Vs.NonPagedPoolCommit"),
            ),
            ("Driver Commit", field(k, st, stt, "Vs.DriverCommit")),
            ("Boot Commit", field(k, st, stt, "Vs.BootCommit")),
            (
                "PFN Array Commit",
                field(k, st, stt, "Vs.PfnDatabaseCommit"),
            ),
            (
                "System PageTables",
                field(k, st, stt, "Vs.SystemPageTableCommit"),
            ),
            (
                "ProcessLockedFilePages",
                field(k, part, pt, "Vp.ProcessLockedFilePages"),
            ),
            (
                "Pagefile Hash Pages",
                field(k, st, stt, "Vs.PagefileHashPages"),
            ),
            ("Process Commit", field(k, st, stt, "Vs.ProcessCommit")),
        ];
    }
    let (procs, note) = k.processes()?;
    if let Some(n) = note {
        k.note_incomplete(format!("process list (the commit table): {n}"));
    }
    if let Some(why) = &vm.paging_files_unreadable {
        k.note_incomplete(why.clone());
    }
    let mut list: Vec<(u64, String, u64)> = procs
        .into_iter()
        .map(|p| (p.pid, p.name, p.commit))
        .collect();
    list.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    vm.processes = list;
    Ok(vm)
}
