//! The hang scenarios, each from a real report, on a common base system.

use kdnet::api::GetVersion64;

use crate::SimError;
use crate::kernel::Region;
use crate::ndis::{self, NdisFacts, NdisSetup};
use crate::pool::{Placement, PoolKind, tag};
use crate::system::{Call, System, ThreadState, call};
use crate::{SimConfig, layout};

/// ERESOURCEs in existence in the reported PnP/NBL hang.
pub const NBL_HANG_RESOURCES: u32 = 84_372;
/// Commit requests that failed in the reported commit exhaustion.
pub const COMMIT_FAILURES: u64 = 48_440;

/// The scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// A PnP remove blocked on a NIC miniport holding every NBL.
    NblHang,
    /// Commit exhausted: charges failing, page file at its maximum.
    CommitFailures,
    /// A driver overran a pool allocation into the next one's header.
    PoolCorruption,
    /// Two workers each own a resource the other waits for.
    Deadlock,
    /// A fatal error: 0x44 MULTIPLE_IRP_COMPLETE_REQUESTS.
    Bugcheck,
    /// Busy but fine.
    Healthy,
}

impl Scenario {
    /// All scenarios.
    pub const ALL: [Scenario; 6] = [
        Scenario::NblHang,
        Scenario::CommitFailures,
        Scenario::PoolCorruption,
        Scenario::Deadlock,
        Scenario::Bugcheck,
        Scenario::Healthy,
    ];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::NblHang => "nbl-hang",
            Scenario::CommitFailures => "commit-failures",
            Scenario::PoolCorruption => "pool-corruption",
            Scenario::Deadlock => "deadlock",
            Scenario::Bugcheck => "bugcheck",
            Scenario::Healthy => "healthy",
        }
    }

    /// By name.
    pub fn parse(s: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|x| x.name() == s)
    }

    /// Whether the scenario can begin after a healthy period.
    pub fn can_delay(self) -> bool {
        !matches!(self, Scenario::Healthy | Scenario::Bugcheck)
    }
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A held lock as planted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLock {
    /// ERESOURCE address.
    pub address: u64,
    /// Its symbol, for globals.
    pub symbol: Option<String>,
    /// Exclusive owner (ETHREAD).
    pub exclusive_owner: Option<u64>,
    /// Shared owners.
    pub shared_owners: Vec<u64>,
    /// ContentionCount.
    pub contention: u32,
    /// Threads waiting shared.
    pub shared_waiters: Vec<u64>,
    /// Threads waiting exclusive.
    pub exclusive_waiters: Vec<u64>,
}

/// Pool corruption as planted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    /// The overrun allocation (its data address).
    pub victim_of_overrun: u64,
    /// The header that was smashed.
    pub smashed_header: u64,
    /// Its page.
    pub page: u64,
    /// The BlockSize (16-byte units) that should be there.
    pub expected_block_units: u64,
    /// The bytes now there.
    pub found: [u8; 16],
    /// A special-pool allocation (data address) and its tag.
    pub special: u64,
    /// The driver that did it.
    pub driver: String,
}

/// The deadlock as planted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deadlock {
    /// The two threads of the cycle.
    pub threads: [u64; 2],
    /// The two resources: `resources[i]` is owned by `threads[i]` and waited for by the other.
    pub resources: [u64; 2],
    /// The thread waiting on the mutant, and the mutant (owned by `threads[0]`).
    pub mutant_waiter: u64,
    /// The mutant.
    pub mutant: u64,
    /// Threads queued as shared waiters behind them.
    pub queued: Vec<u64>,
}

/// What a scenario planted: the answers the commands must find.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Scenario name.
    pub scenario: String,
    /// Build.
    pub build: u32,
    /// ERESOURCEs on the list.
    pub total_resources: u32,
    /// The held ones.
    pub held: Vec<HeldLock>,
    /// The hung thread (ETHREAD) and how long it has waited (seconds).
    pub hung_thread: Option<(u64, u64)>,
    /// NDIS.
    pub ndis: NdisFacts,
    /// Whether NBL tracking is on.
    pub nbl_tracking: bool,
    /// `N commit requests have failed`.
    pub commit_failures: u64,
    /// Committed pages and the limit.
    pub committed: u64,
    /// Commit limit (pages).
    pub commit_limit: u64,
    /// Pool corruption.
    pub corruption: Option<Corruption>,
    /// Deadlock.
    pub deadlock: Option<Deadlock>,
    /// Bugcheck code and parameters.
    pub bugcheck: Option<(u32, [u64; 4])>,
    /// Lines the target prints once the hang begins.
    pub prints_when_hung: Vec<String>,
    /// A line it prints now and then.
    pub heartbeat: String,
    /// Processes (EPROCESS, pid, name).
    pub processes: Vec<(u64, u64, String)>,
    /// Pages whose PTE is a page-file reference (reads fail).
    pub paged_out: Vec<u64>,
    /// Pages whose PTE is in transition (resident, but not valid: reads fail on a live target).
    pub transition: Vec<u64>,
    /// A thread whose kernel stack is swapped out (KernelStackResident clear).
    pub swapped_stack_thread: Option<u64>,
    /// Thread count.
    pub threads: usize,
}

fn stack(specs: &[&str]) -> Vec<Call> {
    specs.iter().map(|s| call(s)).collect()
}

const WAIT_TAIL: [&str; 3] = [
    "nt!KiSwapContext+0x76",
    "nt!KiSwapThread+0x2fd",
    "nt!KiCommitThreadWait+0x137",
];

fn waiting(rest: &[&str]) -> Vec<Call> {
    let mut v = stack(&WAIT_TAIL);
    v.extend(stack(rest));
    v
}

fn system_tail() -> [&'static str; 3] {
    [
        "nt!ExpWorkerThread+0x105",
        "nt!PspSystemThreadStartup+0x55",
        "nt!KiStartSystemThread+0x28",
    ]
}

fn user_tail() -> [&'static str; 1] {
    ["nt!KiSystemServiceCopyEnd+0x25"]
}

/// The modules every scenario loads, in load order (file, short name).
pub const MODULES: &[(&str, &str)] = &[
    ("hal.dll", "hal"),
    ("kdnet.dll", "kdnet"),
    ("CLFS.SYS", "CLFS"),
    ("CI.dll", "CI"),
    ("FLTMGR.SYS", "FLTMGR"),
    ("Ntfs.sys", "Ntfs"),
    ("ndis.sys", "ndis"),
    ("NETIO.SYS", "NETIO"),
    ("tcpip.sys", "tcpip"),
    ("wfplwfs.sys", "wfplwfs"),
    ("CimFS.SYS", "CimFS"),
    ("wcifs.sys", "wcifs"),
    ("afd.sys", "afd"),
    ("netvsc.sys", "netvsc"),
    ("myeth1g.sys", "myeth1g"),
    ("acmeflt.sys", "acmeflt"),
];

struct Base {
    paged_out: Vec<u64>,
    transition: Vec<u64>,
    swapped: Option<u64>,
    system: usize,
    worker_queue: u64,
    user_procs: Vec<usize>,
    vmcompute: usize,
    containerd: usize,
}

fn base_system(
    config: &SimConfig,
    nt: kdnet_symbols::TypeTable,
) -> Result<(System, Base), SimError> {
    let mut sys = System::new(nt, config.build, config.cpus.max(1), config.seed)?;
    for (file, short) in MODULES {
        sys.add_module(file, short);
    }
    let idle = sys.new_process("Idle", Some(0), 0)?;
    let _ = idle;
    let system = sys.new_process("System", Some(4), 0)?;
    sys.processors(config.cpus.max(1))?;
    let smss = sys.new_process("smss.exe", None, 4)?;
    let csrss = sys.new_process("csrss.exe", None, sys.processes[smss].pid)?;
    let wininit = sys.new_process("wininit.exe", None, sys.processes[smss].pid)?;
    let services = sys.new_process("services.exe", None, sys.processes[wininit].pid)?;
    let lsass = sys.new_process("lsass.exe", None, sys.processes[wininit].pid)?;
    let mut user_procs = vec![smss, csrss, wininit, services, lsass];
    for _ in 0..3 {
        let p = sys.new_process("svchost.exe", None, sys.processes[services].pid)?;
        user_procs.push(p);
    }
    let vmcompute = sys.new_process("vmcompute.exe", None, sys.processes[services].pid)?;
    let containerd = sys.new_process("containerd.exe", None, sys.processes[services].pid)?;
    user_procs.push(vmcompute);
    user_procs.push(containerd);

    // System worker threads idle on the work queue.
    let queue = {
        let size = sys.k.size("_KQUEUE")?;
        let q = sys
            .pool
            .alloc(&mut sys.k, PoolKind::NonPaged, size, tag("ExWq"))?;
        let ty = sys.k.enum_value("_KOBJECTS", "QueueObject")? as u64;
        sys.k.set(q, "_DISPATCHER_HEADER", "Type", ty)?;
        let head = q + sys.k.off("_DISPATCHER_HEADER", "WaitListHead")?;
        sys.k.list_init(head);
        q
    };
    for i in 0..10u64 {
        let mut calls = waiting(&["nt!KeRemoveQueueEx+0x263"]);
        calls.extend(stack(&system_tail()));
        let t = sys.new_thread(
            system,
            "nt!ExpWorkerThread",
            &calls,
            ThreadState::Waiting,
            (i % u64::from(config.cpus.max(1))) as u16,
        )?;
        sys.wait(t, &[queue], "WrQueue", 2 + i)?;
    }
    // The balance set manager and the modified page writer, idle on their events.
    for (start, mid, reason, secs) in [
        (
            "nt!KeBalanceSetManager",
            "nt!KeBalanceSetManager+0xe3",
            "WrExecutive",
            1,
        ),
        (
            "nt!MiModifiedPageWriter",
            "nt!MiModifiedPageWriter+0x6a",
            "WrFreePage",
            5,
        ),
    ] {
        let ev = sys.event("EventSynchronizationObject", "Even")?;
        let mut calls = waiting(&["nt!KeWaitForSingleObject+0x233", mid]);
        calls.extend(stack(&[
            "nt!PspSystemThreadStartup+0x55",
            "nt!KiStartSystemThread+0x28",
        ]));
        let t = sys.new_thread(system, start, &calls, ThreadState::Waiting, 0)?;
        sys.wait(t, &[ev], reason, secs)?;
    }
    // User-mode processes: threads waiting in user requests.
    for (n, p) in user_procs.clone().into_iter().enumerate() {
        for j in 0..2u64 {
            let ev = sys.event("EventNotificationObject", "Even")?;
            let mut calls = waiting(&[
                "nt!KeWaitForSingleObject+0x233",
                "nt!NtWaitForSingleObject+0x118",
            ]);
            calls.extend(stack(&user_tail()));
            let t = sys.new_thread(
                p,
                "nt!KiStartSystemThread",
                &calls,
                ThreadState::Waiting,
                (j % u64::from(config.cpus.max(1))) as u16,
            )?;
            sys.wait(t, &[ev], "UserRequest", 30 + 17 * n as u64 + j)?;
            let et = sys.threads[t].ethread;
            sys.k.set(et, "_ETHREAD", "Tcb.WaitMode", 1)?;
            sys.k.set(
                et,
                "_ETHREAD",
                "Tcb.Teb",
                0x0000_00a1_0001_0000 + (sys.threads[t].tid << 13),
            )?;
        }
    }
    // Background pool use, so per-tag accounting looks like a server's.
    for (t, n, size, kind) in [
        ("File", 400, 0x120, PoolKind::NonPaged),
        ("MmSt", 250, 0x160, PoolKind::Paged),
        ("Ntfx", 200, 0x1a0, PoolKind::NonPaged),
        ("CM31", 300, 0x90, PoolKind::Paged),
        ("Irp ", 120, 0x118, PoolKind::NonPaged),
        ("Toke", 60, 0x7c0, PoolKind::Paged),
        ("ObNm", 150, 0x40, PoolKind::Paged),
        ("Vad ", 220, 0x58, PoolKind::NonPaged),
        ("NDnb", 40, 0x2400, PoolKind::NonPaged),
    ] {
        for _ in 0..n {
            sys.pool.alloc(&mut sys.k, kind, size, tag(t))?;
        }
    }
    // Memory that is not resident: a paged-pool page in the page file, one in transition, and
    // a long-idle user thread whose kernel stack was swapped out.
    let mut paged_out = Vec::new();
    let mut transition = Vec::new();
    for (t, out) in [("CMpo", &mut paged_out), ("CMtr", &mut transition)] {
        let a = sys
            .pool
            .alloc(&mut sys.k, PoolKind::Paged, 0x1800, tag(t))?;
        out.push(a & !0xfff);
    }
    sys.k.page_out(paged_out[0], false);
    sys.k.page_out(transition[0], true);
    let swapped = {
        let idle_user = sys.processes[user_procs[0]].threads[0];
        let t = &sys.threads[idle_user];
        let (et, limit, base_) = (t.ethread, t.stack_limit, t.stack_base);
        sys.k.set(et, "_ETHREAD", "Tcb.KernelStackResident", 0)?;
        let mut p = limit;
        while p < base_ {
            sys.k.page_out(p, false);
            p += 0x1000;
        }
        Some(et)
    };
    // Global executive resources that exist on every system.
    for g in [
        "PsLoadedModuleResource",
        "PiEngineLock",
        "IopDeviceTreeLock",
    ] {
        let r = sys.k.sym(g)?;
        sys.link_resource(r)?;
    }
    // Unloaded drivers: one record.
    let unloaded = sys
        .pool
        .alloc(&mut sys.k, PoolKind::NonPaged, 50 * 0x28, tag("MmDT"))?;
    let name = sys
        .pool
        .alloc(&mut sys.k, PoolKind::NonPaged, 0x40, tag("MmDT"))?;
    sys.k.unicode_string(unloaded, name, "oldflt.sys");
    sys.k.w64(unloaded + 0x10, 0xfffff805_7f000000);
    sys.k.w64(unloaded + 0x18, 0xfffff805_7f012000);
    let mud = sys.k.sym("MmUnloadedDrivers")?;
    sys.k.w64(mud, unloaded);
    let last = sys.k.sym("MmLastUnloadedDriver")?;
    sys.k.w32(last, 1);
    Ok((
        sys,
        Base {
            paged_out,
            transition,
            swapped,
            system,
            worker_queue: queue,
            user_procs,
            vmcompute,
            containerd,
        },
    ))
}

/// Fills the resource list to `total` with unheld pool resources.
fn fill_resources(sys: &mut System, total: u32) -> Result<(), SimError> {
    while (sys.resources.len() as u32) < total {
        sys.resource()?;
    }
    Ok(())
}

/// Memory-manager figures in pages.
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
    fn healthy() -> MmFigures {
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

    fn exhausted() -> MmFigures {
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

fn write_mm(sys: &mut System, m: &MmFigures, commits: &[(usize, u64)]) -> Result<(), SimError> {
    // Per-process commit.
    for (p, pages) in commits {
        let ep = sys.processes[*p].eprocess;
        sys.k.set(ep, "_EPROCESS", "CommitCharge", *pages)?;
    }
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
    let k = &mut sys.k;
    if k.has_sym("MiChargeCommitmentFailures") {
        // Plain globals (7601).
        let put64 = |k: &mut crate::kernel::Kernel, s: &str, v: u64| -> Result<(), SimError> {
            let a = k.sym(s)?;
            k.w64(a, v);
            Ok(())
        };
        put64(k, "MmNumberOfPhysicalPages", m.physical)?;
        put64(k, "MmAvailablePages", m.available)?;
        put64(k, "MmResidentAvailablePages", m.resident_available)?;
        put64(k, "MmTotalCommittedPages", m.committed)?;
        put64(k, "MmTotalCommitLimit", m.limit)?;
        put64(k, "MmTotalCommitLimitMaximum", m.limit_maximum)?;
        put64(k, "MmPeakCommitment", m.peak)?;
        put64(k, "MmSharedCommit", m.shared)?;
        put64(k, "MmProcessCommit", m.process)?;
        put64(k, "MmDriverCommit", m.driver)?;
        put64(k, "MmPagedPoolCommit", m.paged_pool_commit)?;
        put64(k, "MmAllocatedNonPagedPool", m.nonpaged_used)?;
        put64(k, "MmMdlPagesAllocated", m.mdl)?;
        put64(k, "MmKernelStackPages", m.kernel_stacks)?;
        put64(k, "MmSpecialPagesInUse", m.special_pool)?;
        put64(k, "MmTotalPagesForPagingFile", m.modified_pf)?;
        put64(k, "MmMaximumNonPagedPoolInBytes", m.nonpaged_max * 4096)?;
        put64(k, "MmSizeOfPagedPoolInBytes", m.paged_max * 4096)?;
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
        let a = k.sym("MmPagedPoolInfo")?;
        k.set(a, "_MM_PAGED_POOL_INFO", "AllocatedPagedPool", m.paged_used)?;
        k.set(
            a,
            "_MM_PAGED_POOL_INFO",
            "PagedPoolCommit",
            m.paged_pool_commit,
        )?;
    } else {
        // Partition and MiState (1607+).
        let part = k.sym("MiSystemPartition")?;
        let t = "_MI_PARTITION";
        k.set(part, t, "Vp.NumberOfPhysicalPages", m.physical)?;
        k.set(part, t, "Vp.AvailablePages", m.available)?;
        k.set(part, t, "Vp.ResidentAvailablePages", m.resident_available)?;
        k.set(part, t, "Vp.TotalCommittedPages", m.committed)?;
        k.set(part, t, "Vp.TotalCommitLimit", m.limit)?;
        k.set(part, t, "Vp.ModifiedPageListHead.Total", m.modified)?;
        k.set(
            part,
            t,
            "Vp.ModifiedNoWritePageListHead.Total",
            m.modified_no_write,
        )?;
        k.set(part, t, "Vp.TotalPagesForPagingFile", m.modified_pf)?;
        k.set(part, t, "Vp.SharedCommit", m.shared)?;
        k.set(part, t, "Vp.NumberOfPagingFiles", 1)?;
        k.set(part, t, "Vp.PagingFile[0]", pf)?;
        for (i, f) in m.failures.iter().enumerate() {
            k.set(
                part,
                t,
                &format!("Vp.ChargeCommitmentFailures[{i}]"),
                u64::from(*f),
            )?;
        }
        k.set(part, t, "Commit.PeakCommitment", m.peak)?;
        k.set(part, t, "Commit.TotalCommitLimitMaximum", m.limit_maximum)?;
        let st = k.sym("MiState")?;
        let t = "_MI_SYSTEM_INFORMATION";
        k.set(st, t, "Pools.AllocatedNonPagedPool", m.nonpaged_used)?;
        k.set(st, t, "Vs.PagedPoolInfo.AllocatedPagedPool", m.paged_used)?;
        k.set(st, t, "Vs.MaximumNonPagedPoolInPages", m.nonpaged_max)?;
        k.set(st, t, "Vs.SizeOfPagedPoolInPages", m.paged_max)?;
        k.set(
            st,
            t,
            "Vs.SystemPteInfo.TotalFreeSystemPtes",
            m.free_system_ptes,
        )?;
        k.set(st, t, "Vs.NonPagedPoolCommit", m.nonpaged_pool_commit)?;
        k.set(st, t, "Vs.BootCommit", m.boot)?;
        k.set(st, t, "Vs.MdlPagesAllocated", m.mdl)?;
        k.set(st, t, "Vs.SystemPageTableCommit", m.system_page_tables)?;
        k.set(st, t, "Vs.ProcessCommit", m.process)?;
        k.set(st, t, "Vs.DriverCommit", m.driver)?;
        k.set(st, t, "Vs.PfnDatabaseCommit", m.pfn_array)?;
        k.set(st, t, "Vs.PagefileHashPages", m.pagefile_hash)?;
        let vis = k.sym("MiVisibleState")?;
        let vs = st + k.off(t, "Vs")?;
        k.w64(vis, vs);
    }
    Ok(())
}

/// Writes KiBugCheckData.
pub fn write_bugcheck(sys: &mut System, code: u32, params: [u64; 4]) -> Result<(), SimError> {
    let a = sys.k.sym("KiBugCheckData")?;
    sys.k.w64(a, u64::from(code));
    for (i, p) in params.iter().enumerate() {
        sys.k.w64(a + 8 * (i as u64 + 1), *p);
    }
    Ok(())
}

/// Builds the machine for `config`: the system, what was planted, the GetVersion block.
pub fn build(config: &SimConfig) -> Result<(System, Facts, GetVersion64), SimError> {
    let nt = layout::load(config.build, &config.table)?;
    build_with_table(config, nt)
}

/// Builds the machine with an already loaded nt table.
pub fn build_with_table(
    config: &SimConfig,
    nt: kdnet_symbols::TypeTable,
) -> Result<(System, Facts, GetVersion64), SimError> {
    let (mut sys, base) = base_system(config, nt)?;
    let mut facts = Facts {
        scenario: config.scenario.name().into(),
        build: config.build,
        heartbeat: String::new(),
        ..Facts::default()
    };
    let mut mm = MmFigures::healthy();
    let mut commits: Vec<(usize, u64)> = base
        .user_procs
        .iter()
        .enumerate()
        .map(|(i, p)| (*p, 900 + 613 * i as u64))
        .collect();
    let mut ndis_setup = NdisSetup {
        tracking: false,
        hang: false,
    };
    let resources_wanted = config.resources.max(sys.resources.len() as u32 + 64);
    match config.scenario {
        Scenario::NblHang => {
            ndis_setup = NdisSetup {
                tracking: true,
                hang: true,
            };
            nbl_hang(&mut sys, &base, &mut facts)?;
            facts.heartbeat = "ndis: miniport \"My Ethernet 1Gb 4-port Adapter\" pause pending: waiting for 1854 outstanding send NBLs\n".into();
            facts.prints_when_hung = vec!["PnP: query-remove of PCI\\VEN_8086&DEV_1521 vetoed? no — removal in progress, waiting for NDIS bindings to close\n".into()];
        }
        Scenario::CommitFailures => {
            mm = MmFigures::exhausted();
            let hog =
                sys.new_process("leakyapp.exe", None, sys.processes[base.user_procs[3]].pid)?;
            let ev = sys.event("EventNotificationObject", "Even")?;
            let mut calls = waiting(&[
                "nt!KeWaitForSingleObject+0x233",
                "nt!NtWaitForSingleObject+0x118",
            ]);
            calls.extend(stack(&user_tail()));
            let t = sys.new_thread(
                hog,
                "nt!KiStartSystemThread",
                &calls,
                ThreadState::Waiting,
                0,
            )?;
            sys.wait(t, &[ev], "UserRequest", 12)?;
            commits.push((hog, 6_512_003));
            facts.heartbeat = "Memory: commit charge at limit (8175615 / 8175677 pages)\n".into();
        }
        Scenario::PoolCorruption => {
            facts.corruption = Some(pool_corruption(&mut sys)?);
            mm.special_pool = 2;
        }
        Scenario::Deadlock => {
            facts.deadlock = Some(deadlock(&mut sys, &base, &mut facts)?);
            facts.heartbeat =
                "vmcompute: container 5f1c0a: waiting for CimFS mount (retry 3)\n".into();
        }
        Scenario::Bugcheck => {
            let (code, params) = bugcheck(&mut sys, &base)?;
            facts.bugcheck = Some((code, params));
            facts.prints_when_hung = vec![format!(
                "\n*** Fatal System Error: 0x{code:08x}\n                       (0x{:016X},0x{:016X},0x{:016X},0x{:016X})\n\n",
                params[0], params[1], params[2], params[3]
            )];
        }
        Scenario::Healthy => {
            healthy(&mut sys, &base)?;
            facts.heartbeat = "svchost: periodic maintenance finished\n".into();
        }
    }
    let _ = base.worker_queue;
    facts.nbl_tracking = ndis_setup.tracking;
    facts.ndis = ndis::build(&mut sys, ndis_setup)?;
    fill_resources(&mut sys, resources_wanted)?;
    facts.total_resources = sys.resources.len() as u32;
    facts.commit_failures = u64::from(mm.failures[0]) + u64::from(mm.failures[1]);
    facts.committed = mm.committed;
    facts.commit_limit = mm.limit;
    write_mm(&mut sys, &mm, &commits)?;
    let version = sys.finish()?;
    facts.processes = sys
        .processes
        .iter()
        .map(|p| (p.eprocess, p.pid, p.name.clone()))
        .collect();
    facts.threads = sys.threads.len();
    facts.paged_out = base.paged_out.clone();
    facts.transition = base.transition.clone();
    facts.swapped_stack_thread = base.swapped;
    Ok((sys, facts, version))
}

fn nbl_hang(sys: &mut System, base: &Base, facts: &mut Facts) -> Result<(), SimError> {
    // The PnP worker: removing the NIC, waiting for TCP/IP's bindings to run down.
    let mut calls = waiting(&[
        "nt!KeWaitForSingleObject+0x233",
        "nt!ExWaitForRundownProtectionReleaseCacheAware+0xd6",
        "tcpip!FlPnpEvent+0x1c2",
        "tcpip!Fl48PnpEvent+0x10",
        "ndis!ndisInvokeNetPnPEvent+0x6a",
        "ndis!ndisPnPNotifyBinding+0x1b5",
        "ndis!ndisPnPNotifyAllTransports+0x19d",
        "ndis!ndisCloseMiniportBindings+0x1dd",
        "ndis!ndisPnPRemoveDevice+0x27f",
        "ndis!ndisPnPDispatch+0x3d4",
        "nt!IofCallDriver+0x55",
        "nt!IopSynchronousCall+0xf8",
        "nt!IopRemoveDevice+0x108",
        "nt!PnpRemoveLockedDeviceNode+0x1ab",
        "nt!PnpDeleteLockedDeviceNode+0x8d",
        "nt!PnpDeleteLockedDeviceNodes+0xf4",
        "nt!PnpProcessQueryRemoveAndEject+0x30e",
        "nt!PnpProcessTargetDeviceEvent+0x109",
        "nt!PnpDeviceEventWorker+0x2ca",
    ]);
    calls.extend(stack(&system_tail()));
    let w = sys.new_thread(
        base.system,
        "nt!ExpWorkerThread",
        &calls,
        ThreadState::Waiting,
        1,
    )?;
    let rsp = sys
        .frame_rsp(w, "ExWaitForRundownProtectionReleaseCacheAware")
        .ok_or_else(|| SimError::Config("rundown frame missing".into()))?;
    let ev = rsp + 0x20;
    sys.event_at(ev, "EventNotificationObject")?;
    let waited = 4 * 60 + 17;
    sys.wait(w, &[ev], "Executive", waited)?;
    let et = sys.threads[w].ethread;
    facts.hung_thread = Some((et, waited));
    // PiEngineLock exclusively (contention 6), IopDeviceTreeLock shared.
    let engine = sys.k.sym("PiEngineLock")?;
    sys.own_exclusive(engine, w, 1)?;
    // A device-install thread queued behind it.
    let mut calls = waiting(&[
        "nt!KeWaitForSingleObject+0x233",
        "nt!ExpWaitForResource+0x6d",
        "nt!ExAcquireResourceExclusiveLite+0x1e8",
        "nt!PnpDeviceEventWorker+0x88",
    ]);
    calls.extend(stack(&system_tail()));
    let waiter = sys.new_thread(
        base.system,
        "nt!ExpWorkerThread",
        &calls,
        ThreadState::Waiting,
        2,
    )?;
    sys.resource_waiters(engine, &[waiter], true, 3 * 60 + 2)?;
    sys.k.set(engine, "_ERESOURCE", "ContentionCount", 6)?;
    let tree = sys.k.sym("IopDeviceTreeLock")?;
    sys.own_shared(tree, &[w])?;
    facts.held = vec![
        HeldLock {
            address: engine,
            symbol: Some("nt!PiEngineLock".into()),
            exclusive_owner: Some(et),
            shared_owners: vec![],
            contention: 6,
            shared_waiters: vec![],
            exclusive_waiters: vec![sys.threads[waiter].ethread],
        },
        HeldLock {
            address: tree,
            symbol: Some("nt!IopDeviceTreeLock".into()),
            exclusive_owner: None,
            shared_owners: vec![et],
            contention: 0,
            shared_waiters: vec![],
            exclusive_waiters: vec![],
        },
    ];
    Ok(())
}

fn deadlock(sys: &mut System, base: &Base, facts: &mut Facts) -> Result<Deadlock, SimError> {
    let r1 = sys.resource()?;
    let r2 = sys.resource()?;
    let proc_ = base.vmcompute;
    let mount = |first: &str| -> Vec<Call> {
        let mut v = waiting(&[
            "nt!KeWaitForSingleObject+0x233",
            "nt!ExpWaitForResource+0x6d",
            first,
            "CimFS!CimFsMountImage+0x2d4",
            "CimFS!CimFsDispatchDeviceControl+0x11e",
            "nt!IofCallDriver+0x55",
            "nt!IopSynchronousServiceTail+0x1a8",
            "nt!IopXxxControlFile+0x5e5",
            "nt!NtDeviceIoControlFile+0x56",
        ]);
        v.extend(stack(&user_tail()));
        v
    };
    let a = sys.new_thread(
        proc_,
        "nt!KiStartSystemThread",
        &mount("nt!ExAcquireResourceExclusiveLite+0x1e8"),
        ThreadState::Waiting,
        0,
    )?;
    let b = sys.new_thread(
        base.containerd,
        "nt!KiStartSystemThread",
        &mount("nt!ExAcquireResourceExclusiveLite+0x1e8"),
        ThreadState::Waiting,
        1,
    )?;
    sys.own_exclusive(r1, a, 1)?;
    sys.own_exclusive(r2, b, 1)?;
    sys.resource_waiters(r2, &[a], true, 95)?;
    sys.resource_waiters(r1, &[b], true, 94)?;
    // A third thread waits on a mutant A owns.
    let m = sys.mutant(Some(a), "Muta")?;
    let mut calls = waiting(&[
        "nt!KeWaitForSingleObject+0x233",
        "wcifs!WcSetupLayerMapping+0x81",
        "wcifs!WcPreCreate+0x1f4",
        "FLTMGR!FltpPerformPreCallbacks+0x2f6",
        "nt!IofCallDriver+0x55",
        "nt!IopParseDevice+0x8c4",
        "nt!ObpLookupObjectName+0x77a",
        "nt!IopCreateFile+0x3ed",
        "nt!NtCreateFile+0x79",
    ]);
    calls.extend(stack(&user_tail()));
    let c = sys.new_thread(
        base.containerd,
        "nt!KiStartSystemThread",
        &calls,
        ThreadState::Waiting,
        2,
    )?;
    sys.wait(c, &[m], "Executive", 88)?;
    // Twenty more queue as shared waiters.
    let mut queued = Vec::new();
    for i in 0..20usize {
        let p = if i % 2 == 0 {
            base.vmcompute
        } else {
            base.containerd
        };
        let calls = mount("nt!ExAcquireResourceSharedLite+0x15c");
        let t = sys.new_thread(
            p,
            "nt!KiStartSystemThread",
            &calls,
            ThreadState::Waiting,
            (i % 4) as u16,
        )?;
        queued.push(t);
    }
    let (q1, q2) = queued.split_at(10);
    sys.resource_waiters(r1, q1, false, 60)?;
    sys.resource_waiters(r2, q2, false, 58)?;
    let ets = |v: &[usize], sys: &System| {
        v.iter()
            .map(|t| sys.threads[*t].ethread)
            .collect::<Vec<_>>()
    };
    let (ea, eb) = (sys.threads[a].ethread, sys.threads[b].ethread);
    facts.held = vec![
        HeldLock {
            address: r1,
            symbol: None,
            exclusive_owner: Some(ea),
            shared_owners: vec![],
            contention: 11,
            shared_waiters: ets(q1, sys),
            exclusive_waiters: vec![eb],
        },
        HeldLock {
            address: r2,
            symbol: None,
            exclusive_owner: Some(eb),
            shared_owners: vec![],
            contention: 11,
            shared_waiters: ets(q2, sys),
            exclusive_waiters: vec![ea],
        },
    ];
    Ok(Deadlock {
        threads: [ea, eb],
        resources: [r1, r2],
        mutant_waiter: sys.threads[c].ethread,
        mutant: m,
        queued: ets(&queued, sys),
    })
}

fn pool_corruption(sys: &mut System) -> Result<Corruption, SimError> {
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

fn bugcheck(sys: &mut System, base: &Base) -> Result<(u32, [u64; 4]), SimError> {
    // The IRP completed twice.
    let irp_size = sys.k.size("_IRP")? + 2 * sys.k.size("_IO_STACK_LOCATION")?;
    let irp = sys
        .pool
        .alloc(&mut sys.k, PoolKind::NonPaged, irp_size, tag("Irp "))?;
    sys.k.set(irp, "_IRP", "Type", 6)?;
    sys.k.set(irp, "_IRP", "Size", irp_size)?;
    sys.k.set(irp, "_IRP", "StackCount", 2)?;
    sys.k.set(irp, "_IRP", "CurrentLocation", 3)?;
    let calls = stack(&[
        "nt!KeBugCheckEx+0x0",
        "nt!IopfCompleteRequest+0x1c5",
        "CimFS!CimFsCompleteRead+0x7d",
        "CimFS!CimFsDispatchRead+0x18b",
        "nt!IofCallDriver+0x55",
        "FLTMGR!FltpLegacyProcessingAfterPreCallbacksCompleted+0x1a3",
        "FLTMGR!FltpDispatch+0xb6",
        "nt!IofCallDriver+0x55",
        "nt!IopSynchronousServiceTail+0x1a8",
        "nt!NtReadFile+0x59d",
        "nt!KiSystemServiceCopyEnd+0x25",
    ]);
    let t = sys.new_thread(
        base.vmcompute,
        "nt!KiStartSystemThread",
        &calls,
        ThreadState::Running,
        0,
    )?;
    sys.set_running(t)?;
    // The IRP is on the crashing thread's list.
    let et = sys.threads[t].ethread;
    let head = et + sys.k.off("_ETHREAD", "IrpList")?;
    let link = irp + sys.k.off("_IRP", "ThreadListEntry")?;
    sys.k.list_append(head, link);
    sys.k.set(irp, "_IRP", "Tail.Overlay.Thread", et)?;
    let code = 0x44;
    let params = [irp, 0x1232, 0, 0];
    write_bugcheck(sys, code, params)?;
    let _ = Region::Stacks;
    Ok((code, params))
}

fn healthy(sys: &mut System, base: &Base) -> Result<(), SimError> {
    // Busy: a worker running on processor 1, a short shared hold with no waiters.
    if sys.cpus.len() > 1 {
        let calls = stack(&[
            "Ntfs!NtfsCommonRead+0x1d4",
            "Ntfs!NtfsFsdRead+0x1dc",
            "nt!IofCallDriver+0x55",
            "nt!ExpWorkerThread+0x105",
            "nt!PspSystemThreadStartup+0x55",
            "nt!KiStartSystemThread+0x28",
        ]);
        let t = sys.new_thread(
            base.system,
            "nt!ExpWorkerThread",
            &calls,
            ThreadState::Running,
            1,
        )?;
        sys.set_running(t)?;
        let r = sys.resource()?;
        sys.own_shared(r, &[t])?;
    }
    Ok(())
}
