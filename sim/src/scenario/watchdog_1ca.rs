//! Watchdog1ca: 0x1CA SYNTHETIC_WATCHDOG_TIMEOUT on a container host pulling twenty images,
//! with the parameters a user reported (0x19628f83, 0x1bf799269, 0x1bf7ca01d, 8): the clock
//! processor (8, `nt!KiClockTimerOwner` where the build has it) turned its interrupts off and
//! spins for a spin lock in CimFS's read path, so no clock tick has been processed for 42.6 s;
//! processor 3 holds that lock, decompressing a chunk at DISPATCH_LEVEL. The watchdog's NMI
//! reached processor 0 in its idle loop, whose NMI handling stopped the machine. The interrupt
//! time KUSER_SHARED_DATA holds is the one the clock processor last published, when the
//! watchdog was last reset.

use crate::SimError;
use crate::pool::{PoolKind, tag};
use crate::system::{Call, Interrupted, System, ThreadState, call};

use super::base::Base;
use super::stacks::{stack, user_tail};
use super::write_bugcheck;

/// The bugcheck's parameters, as reported.
pub const PARAMETERS: [u64; 4] = [0x1962_8f83, 0x1_bf79_9269, 0x1_bf7c_a01d, 0x8];
/// The clock processor.
pub const CLOCK_PROCESSOR: u16 = 8;
/// The processor holding the lock.
pub const HOLDER: u16 = 3;
/// Processors the scenario needs (the clock processor is number 8).
pub const MIN_CPUS: u16 = 12;
/// The tick the machine's clock last published: when the watchdog was last reset
/// (parameter 2 less parameter 1, in ticks of the clock increment).
pub const PUBLISHED_TICK: u64 = (PARAMETERS[1] - PARAMETERS[0]) / crate::system::MAXIMUM_INCREMENT;

/// What the scenario planted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchdogFacts {
    /// The clock processor.
    pub clock_processor: u32,
    /// The thread spinning on it with interrupts off (ETHREAD).
    pub spinner: u64,
    /// The processor holding the lock, and its thread.
    pub holder: (u32, u64),
    /// The spin lock.
    pub lock: u64,
    /// The interrupt time KUSER_SHARED_DATA holds (100 ns).
    pub published: u64,
}

/// Replaces processor `cpu`'s idle thread with one whose stack is `calls` (the processor runs
/// it); returns the new thread.
pub(super) fn replace_idle(sys: &mut System, cpu: u16, calls: &[Call]) -> Result<usize, SimError> {
    let idle = sys
        .processes
        .iter()
        .position(|p| p.pid == 0)
        .ok_or_else(|| SimError::Config("no Idle process".into()))?;
    let c = usize::from(cpu);
    let t = sys.new_thread(idle, "nt!KiIdleLoop", calls, ThreadState::Running, cpu)?;
    sys.set_running(t)?;
    let old = sys.threads[sys.cpus[c].idle].ethread;
    let et = sys.threads[t].ethread;
    sys.k.set(sys.cpus[c].prcb, "_KPRCB", "IdleThread", et)?;
    sys.cpus[c].idle = t;
    let links = [
        old + sys.k.off("_ETHREAD", "Tcb.ThreadListEntry")?,
        old + sys.k.off("_ETHREAD", "ThreadListEntry")?,
    ];
    for l in links {
        sys.k.list_remove(l);
    }
    let ep = sys.processes[idle].eprocess;
    let active = sys.k.get(ep, "_EPROCESS", "ActiveThreads")?;
    sys.k
        .set(ep, "_EPROCESS", "ActiveThreads", active.saturating_sub(1))?;
    sys.processes[idle]
        .threads
        .retain(|x| sys.threads[*x].ethread != old);
    Ok(t)
}

pub(super) fn watchdog_1ca(
    sys: &mut System,
    base: &Base,
) -> Result<(WatchdogFacts, u32, [u64; 4]), SimError> {
    if sys.cpus.len() < usize::from(CLOCK_PROCESSOR) + 1 {
        return Err(SimError::Config(format!(
            "watchdog-1ca needs at least {} processors",
            CLOCK_PROCESSOR + 1
        )));
    }
    if sys.k.has_sym("KiClockTimerOwner") {
        let at = sys.k.sym("KiClockTimerOwner")?;
        sys.k.w32(at, u32::from(CLOCK_PROCESSOR));
    }
    // The lock CimFS's region cache is guarded by, held by processor 3's thread.
    let lock = sys
        .pool
        .alloc(&mut sys.k, PoolKind::NonPaged, 0x80, tag("CimR"))?;
    let read_path = [
        "CimFS!CimFsCommonRead+0x2e1",
        "CimFS!CimFsDispatchRead+0x18b",
        "nt!IofCallDriver+0x55",
        "FLTMGR!FltpLegacyProcessingAfterPreCallbacksCompleted+0x1a3",
        "FLTMGR!FltpDispatch+0xb6",
        "nt!IofCallDriver+0x55",
        "nt!IopSynchronousServiceTail+0x1a8",
        "nt!NtReadFile+0x59d",
        "nt!KiSystemServiceCopyEnd+0x25",
    ];
    // Processor 3: the holder, decompressing under the lock at DISPATCH_LEVEL.
    let mut calls = stack(&[
        "CimFS!CimFsDecompressChunk+0x3c",
        "CimFS!CimFsReadRegion+0x10d",
    ]);
    calls.extend(stack(&read_path));
    calls.extend(stack(&user_tail()));
    let holder = sys.new_thread(
        base.containerd,
        "nt!KiStartSystemThread",
        &calls,
        ThreadState::Running,
        HOLDER,
    )?;
    sys.set_running(holder)?;
    let holder_et = sys.threads[holder].ethread;
    sys.k.w64(lock, holder_et | 1);
    let kpcr = sys.cpus[usize::from(HOLDER)].kpcr;
    sys.k.set(kpcr, "_KPCR", "Irql", 2)?;
    // Processor 8, the clock processor: interrupts off, spinning for the lock.
    let mut spin = call("nt!KxWaitForSpinLockAndAcquire+0x2f");
    spin.interrupted = Some(Interrupted::Spin);
    let mut calls = vec![spin];
    calls.extend(stack(&[
        "nt!KeAcquireSpinLockAtDpcLevel+0x5c",
        "CimFS!CimFsPurgeRegionCache+0x1b4",
    ]));
    calls.extend(stack(&read_path));
    calls.extend(stack(&user_tail()));
    let spinner = sys.new_thread(
        base.containerd,
        "nt!KiStartSystemThread",
        &calls,
        ThreadState::Running,
        CLOCK_PROCESSOR,
    )?;
    sys.set_running(spinner)?;
    // Interrupts disabled: RFLAGS.IF clear.
    let flags = sys.threads[spinner].context.eflags() & !0x200;
    sys.threads[spinner].context.set_eflags(flags);
    sys.threads[spinner]
        .context
        .set_reg(kdnet::api::Reg::Rcx, lock);
    let kpcr = sys.cpus[usize::from(CLOCK_PROCESSOR)].kpcr;
    sys.k.set(kpcr, "_KPCR", "Irql", 2)?;
    // Processor 0: the watchdog's NMI in the idle loop.
    let calls = [
        call("nt!KeBugCheckEx+0x0"),
        call("nt!KiProcessNMI+0x1f5"),
        call("nt!KiNmiInterrupt+0x2c2"),
        call("nt!PoIdle+0x33a"),
        call("nt!KiIdleLoop+0x9e"),
    ];
    replace_idle(sys, 0, &calls)?;
    let code = 0x1CA;
    write_bugcheck(sys, code, PARAMETERS)?;
    let published = sys.now_tick * crate::system::MAXIMUM_INCREMENT;
    Ok((
        WatchdogFacts {
            clock_processor: u32::from(CLOCK_PROCESSOR),
            spinner: sys.threads[spinner].ethread,
            holder: (u32::from(HOLDER), holder_et),
            lock,
            published,
        },
        code,
        PARAMETERS,
    ))
}
