//! The base system every scenario starts from: modules, processes, idle threads, background
//! pool use, memory that is not resident and the global resources.

use crate::SimConfig;
use crate::SimError;
use crate::pool::{PoolKind, tag};
use crate::system::{System, ThreadState, WorkQueueRec};

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
    /// The executive's work queues.
    pub(super) work_queues: Vec<WorkQueueRec>,
    /// Pending work items: (queue, priority, item, routine).
    pub(super) work_items: Vec<(u64, u8, u64, String)>,
    pub(super) user_procs: Vec<usize>,
    pub(super) vmcompute: usize,
    pub(super) containerd: usize,
    /// Threads on ready queues: (ETHREAD, processor or None for the shared queue, priority).
    pub(super) ready: Vec<(u64, Option<u32>, u8)>,
    /// Queued DPCs: (processor, threaded, KDPC, routine).
    pub(super) dpcs: Vec<(u32, bool, u64, String)>,
    /// Timers set.
    pub(super) timers: Vec<super::facts::PlantedTimer>,
}

/// The base system: every module, the Idle, System and user processes, processors, idle
/// threads, background pool use, memory that is not resident and the global resources.
pub(super) fn base_system(
    config: &SimConfig,
    nt: kdnet_symbols::TypeTable,
) -> Result<(System, Base), SimError> {
    let mut cpus = config.cpus.max(1);
    if config.scenario == super::Scenario::Watchdog1ca {
        // Its clock processor is number 8; its clock stopped when the watchdog was last reset.
        cpus = cpus.max(super::watchdog_1ca::MIN_CPUS);
    }
    let mut sys = System::new(nt, config.build, cpus, config.seed)?;
    if config.scenario == super::Scenario::Watchdog1ca {
        sys.now_tick = super::watchdog_1ca::PUBLISHED_TICK;
    }
    for (file, short) in MODULES {
        sys.add_module(file, short);
    }
    let idle = sys.new_process("Idle", Some(0), 0)?;
    let _ = idle;
    let system = sys.new_process("System", Some(4), 0)?;
    sys.processors(cpus)?;
    let (user_procs, vmcompute, containerd) = user_processes(&mut sys)?;
    let queue = system_threads(&mut sys, system, cpus)?;
    let work_items = pending_work(&mut sys, &queue)?;
    user_threads(&mut sys, &user_procs, cpus)?;
    let (ready, dpcs) = scheduler_queues(&mut sys, &user_procs, cpus)?;
    let timers = timer_tables(&mut sys, &user_procs, cpus)?;
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
            work_queues: queue,
            work_items,
            user_procs,
            vmcompute,
            containerd,
            ready,
            dpcs,
            timers,
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

/// Timers in the processors' timer tables: periodic and one-shot DPC timers (one due before
/// the machine stopped, still in its list), two user threads' waits with timeouts (each
/// thread's own KTIMER, its timer wait block on the timer's wait list) and, where the table
/// has two sets of lists, one timer in the second. Due times are hours away (or already
/// past), so that a running simulator does not turn them into expired ones.
fn timer_tables(
    sys: &mut System,
    user_procs: &[usize],
    cpus: u16,
) -> Result<Vec<super::facts::PlantedTimer>, SimError> {
    const HOUR: i64 = 3_600_000;
    let last = usize::from(cpus.saturating_sub(1));
    let mut out = Vec::new();
    // (processor, set, due in ms, period ms, routine)
    let dpc_timers: [(usize, u64, i64, u32, &str); 5] = [
        (
            0,
            0,
            6 * HOUR + 1_234,
            86_400_000,
            "nt!ExpTimeRefreshDpcRoutine",
        ),
        (0, 0, 2 * HOUR + 577, 0, "nt!CmpLazyFlushDpcRoutine"),
        (
            1.min(last),
            0,
            3 * HOUR,
            60_000,
            "myeth1g!MyEthWatchdogTimer",
        ),
        (last, 0, -40, 0, "tcpip!TcpPeriodicTimeoutHandler"),
        (last, 1, 5 * HOUR + 31_337, 0, "nt!ExpTimeZoneDpcRoutine"),
    ];
    let two_sets = sys.k.size("_KTIMER_TABLE")?
        >= sys.k.off("_KTIMER_TABLE", "TimerEntries")? + 512 * sys.k.size("_KTIMER_TABLE_ENTRY")?;
    for (cpu, set, due_ms, period, routine) in dpc_timers {
        if set == 1 && !two_sets {
            continue;
        }
        let size = sys.k.size("_KTIMER")?;
        let timer = sys
            .pool
            .alloc(&mut sys.k, PoolKind::NonPaged, size, tag("Time"))?;
        let context = sys
            .pool
            .alloc(&mut sys.k, PoolKind::NonPaged, 0x40, tag("TmrC"))?;
        let dpc = sys.timer_dpc(routine, context)?;
        let due = sys.set_timer(timer, cpu, set, due_ms, period, dpc, true)?;
        out.push(super::facts::PlantedTimer {
            processor: cpu as u32,
            set: set as u8,
            timer,
            due,
            period_ms: period,
            dpc,
            routine: Some(routine.to_string()),
            waiter: None,
            expired: due_ms < 0,
        });
    }
    // Threads waiting with a timeout: the thread's own timer, its fourth wait block (the
    // timer's) on the timer's wait list.
    for (p, j, cpu, due_ms) in [
        (5usize, 0usize, 0usize, 2 * HOUR + 17),
        (6, 1, last, 4 * HOUR + 2_222),
    ] {
        let Some(&process) = user_procs.get(p) else {
            continue;
        };
        let t = sys.processes[process].threads[j];
        let et = sys.threads[t].ethread;
        let k = &mut sys.k;
        let timer = et + k.off("_ETHREAD", "Tcb.Timer")?;
        let wb = et + k.off("_ETHREAD", "Tcb.WaitBlock")? + 3 * k.size("_KWAIT_BLOCK")?;
        k.set(wb, "_KWAIT_BLOCK", "Thread", et)?;
        k.set(wb, "_KWAIT_BLOCK", "Object", timer)?;
        // STATUS_TIMEOUT is what the wait returns when the timer fires.
        k.set(wb, "_KWAIT_BLOCK", "WaitKey", 0x102)?;
        let wait_any =
            k.nt.enum_value("_WAIT_TYPE", "WaitAny")
                .map_or(1, |v| v as u64);
        k.set(wb, "_KWAIT_BLOCK", "WaitType", wait_any)?;
        let active = k.enum_value("_KWAIT_BLOCK_STATE", "WaitBlockActive")? as u64;
        k.set(wb, "_KWAIT_BLOCK", "BlockState", active)?;
        let head = timer + k.off("_KTIMER", "Header.WaitListHead")?;
        k.list_init(head);
        k.list_append(head, wb + k.off("_KWAIT_BLOCK", "WaitListEntry")?);
        let due = sys.set_timer(timer, cpu, 0, due_ms, 0, 0, true)?;
        out.push(super::facts::PlantedTimer {
            processor: cpu as u32,
            set: 0,
            timer,
            due,
            period_ms: 0,
            dpc: 0,
            routine: None,
            waiter: Some(et),
            expired: false,
        });
    }
    Ok(out)
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

/// Work items pending on the last queue, which has no threads yet (a burst the balance
/// manager has not yet made threads for): two at the delayed priority, one critical.
fn pending_work(
    sys: &mut System,
    queues: &[WorkQueueRec],
) -> Result<Vec<(u64, u8, u64, String)>, SimError> {
    let q = queues
        .last()
        .ok_or_else(|| SimError::Config("no work queues".into()))?
        .clone();
    let mut out = Vec::new();
    for (priority, routine) in [
        (12u8, "CimFS!CimFsDeferredCloseWorker"),
        (13, "Ntfs!NtfsCheckpointWorker"),
        (12, "CimFS!CimFsDeferredCloseWorker"),
    ] {
        let parameter = sys
            .pool
            .alloc(&mut sys.k, PoolKind::NonPaged, 0x60, tag("WkIt"))?;
        let item = sys.queue_work_item(&q, priority, routine, parameter)?;
        // A KQUEUE has one list: its items in queue order at priority 0.
        let priority = if q.priority { priority } else { 0 };
        out.push((q.address, priority, item, routine.to_string()));
    }
    Ok(out)
}

/// The System process's idle threads: workers on the executive's work queues (returned), the balance set
/// manager and the modified page writer.
fn system_threads(
    sys: &mut System,
    system: usize,
    cpus: u16,
) -> Result<Vec<WorkQueueRec>, SimError> {
    // The executive's work queues, and system worker threads idle on the first (7601: four
    // on the critical queue, six on the delayed one).
    let queues = sys.work_queues()?;
    let remove = if sys.k.has_sym("KeRemovePriQueue") && queues[0].priority {
        "nt!KeRemovePriQueue+0x21a"
    } else {
        "nt!KeRemoveQueueEx+0x263"
    };
    for i in 0..10u64 {
        let mut calls = waiting(&[remove]);
        calls.extend(stack(&system_tail()));
        let t = sys.new_thread(
            system,
            "nt!ExpWorkerThread",
            &calls,
            ThreadState::Waiting,
            (i % u64::from(cpus)) as u16,
        )?;
        let q = if queues.len() >= 2 && !queues[0].priority && i >= 4 {
            queues[1].clone()
        } else {
            queues[0].clone()
        };
        let object = q.address
            + sys.k.off(
                "_EX_WORK_QUEUE",
                if q.priority {
                    "WorkPriQueue"
                } else {
                    "WorkerQueue"
                },
            )?;
        sys.wait(t, &[object], "WrQueue", 2 + i)?;
        sys.attach_worker(t, &q, false)?;
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
    Ok(queues)
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
    sys.k.page_out(paged_out[0], false)?;
    sys.k.page_out(transition[0], true)?;
    let swapped = {
        let idle_user = sys.processes[user_procs[0]].threads[0];
        let t = &sys.threads[idle_user];
        let (et, limit, base_) = (t.ethread, t.stack_limit, t.stack_base);
        sys.k.set(et, "_ETHREAD", "Tcb.KernelStackResident", 0)?;
        let mut p = limit;
        while p < base_ {
            sys.k.page_out(p, false)?;
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
