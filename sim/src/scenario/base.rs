//! The base system every scenario starts from: modules, processes, idle threads, background
//! pool use, memory that is not resident and the global resources.

use crate::SimConfig;
use crate::SimError;
use crate::pool::{PoolKind, tag};
use crate::system::{System, ThreadState};

use super::stacks::{stack, system_tail, user_tail, waiting};

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
    ("pci.sys", "pci"),
    ("volmgr.sys", "volmgr"),
    ("bindflt.sys", "bindflt"),
    ("FsDepends.sys", "FsDepends"),
    ("WdFilter.sys", "WdFilter"),
    ("Wof.sys", "Wof"),
    ("acmeav.sys", "acmeav"),
];

/// What the base system made that the scenarios build on.
pub(super) struct Base {
    pub(super) paged_out: Vec<u64>,
    pub(super) transition: Vec<u64>,
    pub(super) swapped: Option<u64>,
    pub(super) system: usize,
    pub(super) worker_queue: u64,
    pub(super) user_procs: Vec<usize>,
    pub(super) vmcompute: usize,
    pub(super) containerd: usize,
    /// Threads on ready queues: (ETHREAD, processor or None for the shared queue, priority).
    pub(super) ready: Vec<(u64, Option<u32>, u8)>,
    /// Queued DPCs: (processor, threaded, KDPC, routine).
    pub(super) dpcs: Vec<(u32, bool, u64, String)>,
}

/// The base system: every module, the Idle, System and user processes, processors, idle
/// threads, background pool use, memory that is not resident and the global resources.
pub(super) fn base_system(
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
    let (user_procs, vmcompute, containerd) = user_processes(&mut sys)?;
    let cpus = config.cpus.max(1);
    let queue = system_threads(&mut sys, system, cpus)?;
    user_threads(&mut sys, &user_procs, cpus)?;
    let (ready, dpcs) = scheduler_queues(&mut sys, &user_procs, cpus)?;
    background_pool(&mut sys)?;
    let (paged_out, transition, swapped) = not_resident(&mut sys, &user_procs)?;
    global_resources(&mut sys)?;
    unloaded_drivers(&mut sys)?;
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
            ready,
            dpcs,
        },
    ))
}

/// What is waiting for a processor: threads whose waits were satisfied, ready to run at their
/// priorities (two on processor 1 at one priority, one on processor 2, one in the shared queue
/// where the build has one), and DPCs queued (normal ones on processors 0 and 2, a threaded one
/// on processor 3).
#[allow(clippy::type_complexity)]
fn scheduler_queues(
    sys: &mut System,
    user_procs: &[usize],
    cpus: u16,
) -> Result<(Vec<(u64, Option<u32>, u8)>, Vec<(u32, bool, u64, String)>), SimError> {
    let last = cpus.saturating_sub(1);
    let svchost = user_procs[5];
    let containerd = *user_procs.last().unwrap_or(&svchost);
    let mut ready = Vec::new();
    let plan: [(usize, u16, u8, bool); 4] = [
        (svchost, 1, 9, false),
        (svchost, 1, 9, false),
        (containerd, 2, 13, false),
        (containerd, 3, 8, true),
    ];
    for (process, cpu, priority, shared) in plan {
        // Without a shared queue (7601), on the processor's own (the same threads on every
        // build, so that thread ids agree).
        let shared = shared && sys.shared_ready_queue.is_some();
        let cpu = cpu.min(last);
        let mut calls = waiting(&[
            "nt!KeWaitForSingleObject+0x233",
            "nt!NtWaitForSingleObject+0x118",
        ]);
        calls.extend(stack(&user_tail()));
        let t = sys.new_thread(
            process,
            "nt!KiStartSystemThread",
            &calls,
            ThreadState::Ready,
            cpu,
        )?;
        sys.make_ready(t, priority, shared)?;
        let et = sys.threads[t].ethread;
        ready.push((et, (!shared).then_some(u32::from(cpu)), priority));
    }
    let mut dpcs = Vec::new();
    for (cpu, threaded, routine) in [
        (0u16, false, "myeth1g!MyEthDpcForIsr"),
        (0, false, "nt!KiTimerExpirationDpc"),
        (2, false, "tcpip!TcpPeriodicTimeoutHandler"),
        (3, true, "netvsc!NvscThreadedDpc"),
    ] {
        let cpu = cpu.min(last);
        let context = sys
            .pool
            .alloc(&mut sys.k, PoolKind::NonPaged, 0x40, tag("DpcC"))?;
        let dpc = sys.queue_dpc(usize::from(cpu), threaded, routine, context)?;
        dpcs.push((u32::from(cpu), threaded, dpc, routine.to_string()));
    }
    Ok((ready, dpcs))
}

/// The user-mode processes (smss and its descendants); returns them all, and vmcompute and
/// containerd among them.
fn user_processes(sys: &mut System) -> Result<(Vec<usize>, usize, usize), SimError> {
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
    Ok((user_procs, vmcompute, containerd))
}

/// The System process's idle threads: workers on the work queue (returned), the balance set
/// manager and the modified page writer.
fn system_threads(sys: &mut System, system: usize, cpus: u16) -> Result<u64, SimError> {
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
            (i % u64::from(cpus)) as u16,
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
    Ok(queue)
}

/// Two threads per user process, waiting in user requests.
fn user_threads(sys: &mut System, user_procs: &[usize], cpus: u16) -> Result<(), SimError> {
    // User-mode processes: threads waiting in user requests.
    for (n, p) in user_procs.iter().copied().enumerate() {
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
                (j % u64::from(cpus)) as u16,
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
    Ok(())
}

/// Background pool use.
fn background_pool(sys: &mut System) -> Result<(), SimError> {
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
    Ok(())
}

/// Pages in the page file, pages in transition, and the thread whose kernel stack is swapped out.
type NotResident = (Vec<u64>, Vec<u64>, Option<u64>);

/// Paged-out and transition pages, and a swapped-out kernel stack.
fn not_resident(sys: &mut System, user_procs: &[usize]) -> Result<NotResident, SimError> {
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
    Ok((paged_out, transition, swapped))
}

/// Links the global resources.
fn global_resources(sys: &mut System) -> Result<(), SimError> {
    // Global executive resources that exist on every system.
    for g in [
        "PsLoadedModuleResource",
        "PiEngineLock",
        "IopDeviceTreeLock",
    ] {
        let r = sys.k.sym(g)?;
        sys.link_resource(r)?;
    }
    Ok(())
}

/// Records one unloaded driver.
fn unloaded_drivers(sys: &mut System) -> Result<(), SimError> {
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
    Ok(())
}
