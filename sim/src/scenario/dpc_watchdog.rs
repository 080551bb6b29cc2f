//! DpcWatchdog: 0x133 DPC_WATCHDOG_VIOLATION, a single DPC past its time allotment. Processor
//! 0 retires its DPC list at DISPATCH_LEVEL; storport's adapter DPC calls the NVMe miniport's
//! completion routine, which spins waiting for a completion-queue entry that never comes. The
//! clock interrupt lands in the loop (a machine frame without an error code, a KTRAP_FRAME),
//! the tick accounting finds the DPC has run 0x501 ticks against an allotment of 0x500, and
//! stops the machine with those numbers. The processor block says so too: the DPC active, the
//! DPC time count and limit; the other processors' queues hold what every scenario queues.

use crate::SimError;
use crate::pool::{PoolKind, tag};
use crate::system::{Call, Interrupted, System, call};

use super::base::Base;
use super::facts::StuckDpc;
use super::write_bugcheck;

/// The storage port driver and the miniport (image, short name).
pub const STORPORT: (&str, &str) = ("storport.sys", "storport");
/// The NVMe miniport.
pub const STORNVME: (&str, &str) = ("stornvme.sys", "stornvme");
/// Ticks the DPC ran.
pub const TIME_COUNT: u64 = 0x501;
/// Ticks a DPC may run.
pub const TIME_LIMIT: u64 = 0x500;

/// The first of `names` the kernel has, as `nt!name+offset`.
fn first_of(sys: &System, names: &[&str], offset: u32) -> Option<Call> {
    names
        .iter()
        .find(|n| sys.k.has_sym(n))
        .map(|n| call(&format!("nt!{n}+{offset:#x}")))
}

/// The stopped processor's frames, innermost first: the bugcheck from the tick accounting,
/// the clock interrupt (what each build has of its path), its entry, then the DPC it
/// interrupted and the DPC retirement below it.
fn stuck_stack(sys: &System) -> Result<Vec<Call>, SimError> {
    let mut calls = vec![
        call("nt!KeBugCheckEx+0x0"),
        call("nt!KeAccumulateTicks+0x1f3"),
    ];
    for (names, off) in [
        (&["KiUpdateRunTime", "KeUpdateRunTime"][..], 0x5d),
        (&["KiUpdateTime", "KeUpdateSystemTime"][..], 0x4a1),
        (&["KeClockInterruptNotify"][..], 0x2e3),
    ] {
        calls.extend(first_of(sys, names, off));
    }
    calls.push(call("hal!HalpTimerClockInterrupt+0xf2"));
    calls.extend(first_of(sys, &["KiCallInterruptServiceRoutine"], 0xa5));
    calls.extend(first_of(
        sys,
        &[
            "KiInterruptSubDispatchNoLockNoEtw",
            "KiInterruptSubDispatchNoLock",
        ],
        0xfa,
    ));
    let entry = first_of(
        sys,
        &[
            "KiInterruptDispatchNoLockNoEtw",
            "KiInterruptDispatchNoLock",
        ],
        0x37,
    )
    .ok_or_else(|| SimError::Config("the kernel has no interrupt entry to use".into()))?;
    calls.push(entry);
    let mut spinning = call("stornvme!NVMeCompletionDpcRoutine+0x5a");
    spinning.interrupted = Some(Interrupted::Spin);
    calls.push(spinning);
    calls.extend(
        [
            "storport!RaidpAdapterDpcRoutine+0x8c",
            "nt!KiExecuteAllDpcs+0x30e",
            "nt!KiRetireDpcList+0x1ef",
            "nt!KiIdleLoop+0x9e",
        ]
        .iter()
        .map(|s| call(s)),
    );
    Ok(calls)
}

pub(super) fn dpc_watchdog(
    sys: &mut System,
    base: &Base,
) -> Result<(StuckDpc, u32, [u64; 4]), SimError> {
    sys.add_module(STORPORT.0, STORPORT.1);
    sys.add_module(STORNVME.0, STORNVME.1);
    let _ = base;
    let calls = stuck_stack(sys)?;
    // Processor 0's idle thread retires the DPCs: it takes the place of the one the base made
    // (which leaves the Idle process's lists).
    let t = super::watchdog_1ca::replace_idle(sys, 0, &calls)?;
    // The DPC being run: storport's adapter DPC, dequeued and active.
    let size = sys.k.size("_KDPC")?;
    let dpc = sys
        .pool
        .alloc(&mut sys.k, PoolKind::NonPaged, size, tag("RaDp"))?;
    let routine = sys.routine("storport!RaidpAdapterDpcRoutine")?;
    let extension = sys
        .pool
        .alloc(&mut sys.k, PoolKind::NonPaged, 0x200, tag("RaAE"))?;
    let prcb = sys.cpus[0].prcb;
    let data = prcb + sys.k.off("_KPRCB", "DpcData")?;
    let k = &mut sys.k;
    k.set(dpc, "_KDPC", "Type", 0x13)?;
    k.set(dpc, "_KDPC", "Importance", 1)?;
    k.set(dpc, "_KDPC", "DeferredRoutine", routine)?;
    k.set(dpc, "_KDPC", "DeferredContext", extension)?;
    k.set(dpc, "_KDPC", "DpcData", 0)?;
    if k.has("_KDPC_DATA", "ActiveDpc") {
        k.set(data, "_KDPC_DATA", "ActiveDpc", dpc)?;
    }
    if k.has("_KPRCB", "CurrentDpcRoutine") {
        k.set(prcb, "_KPRCB", "CurrentDpcRoutine", routine)?;
    }
    k.set(prcb, "_KPRCB", "DpcRoutineActive", 1)?;
    k.set(prcb, "_KPRCB", "DpcTimeCount", TIME_COUNT)?;
    if k.has("_KPRCB", "DpcTimeLimitTicks") {
        k.set(prcb, "_KPRCB", "DpcTimeLimitTicks", TIME_LIMIT)?;
    } else {
        k.set(prcb, "_KPRCB", "DpcTimeLimit", TIME_LIMIT)?;
    }
    let kpcr = sys.cpus[0].kpcr;
    sys.k.set(kpcr, "_KPCR", "Irql", 2)?;
    // What the fourth parameter points at: the watchdog's triage block (its layout is not in
    // the symbols; the analysis does not read it).
    let triage = sys
        .pool
        .alloc(&mut sys.k, PoolKind::NonPaged, 0x40, tag("DpcW"))?;
    let entry = sys.threads[t]
        .frames
        .iter()
        .find(|(c, _, _)| c.function.starts_with("KiInterruptDispatch"))
        .map(|(_, _, rsp)| *rsp)
        .ok_or_else(|| SimError::Config("no interrupt entry frame".into()))?;
    let spin_ip = sys.k.get(entry, "_KTRAP_FRAME", "Rip")?;
    sys.k.set(entry, "_KTRAP_FRAME", "SegCs", 0x10)?;
    sys.k.set(entry, "_KTRAP_FRAME", "SegSs", 0x18)?;
    sys.k.set(entry, "_KTRAP_FRAME", "EFlags", 0x282)?;
    sys.k.set(entry, "_KTRAP_FRAME", "Rcx", extension)?;
    let code = 0x133;
    let params = [0, TIME_COUNT, TIME_LIMIT, triage];
    write_bugcheck(sys, code, params)?;
    Ok((
        StuckDpc {
            processor: 0,
            dpc,
            routine: "storport!RaidpAdapterDpcRoutine".into(),
            spinning: "stornvme!NVMeCompletionDpcRoutine".into(),
            spin_ip,
            trap_frame: entry,
        },
        code,
        params,
    ))
}
