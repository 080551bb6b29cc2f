//! Deadlock: two workers each own a resource the other waits for.

use crate::SimError;
use crate::system::{Call, System, ThreadState};

use super::base::Base;
use super::facts::{Deadlock, Facts, HeldLock};
use super::stacks::{stack, user_tail, waiting};

pub(super) fn deadlock(
    sys: &mut System,
    base: &Base,
    facts: &mut Facts,
) -> Result<Deadlock, SimError> {
    let r1 = sys.resource()?;
    let r2 = sys.resource()?;
    let proc_ = base.vmcompute;
    let a = sys.new_thread(
        proc_,
        "nt!KiStartSystemThread",
        &mount_stack("nt!ExAcquireResourceExclusiveLite+0x1e8"),
        ThreadState::Waiting,
        0,
    )?;
    let b = sys.new_thread(
        base.containerd,
        "nt!KiStartSystemThread",
        &mount_stack("nt!ExAcquireResourceExclusiveLite+0x1e8"),
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
    let queued = queue_shared_waiters(sys, base)?;
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

/// A CimFS mount request in a user thread, waiting for a resource it acquires with `first`.
fn mount_stack(first: &str) -> Vec<Call> {
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
}

/// Twenty threads that will queue as shared waiters behind the cycle.
fn queue_shared_waiters(sys: &mut System, base: &Base) -> Result<Vec<usize>, SimError> {
    // Twenty more queue as shared waiters.
    let mut queued = Vec::new();
    for i in 0..20usize {
        let p = if i % 2 == 0 {
            base.vmcompute
        } else {
            base.containerd
        };
        let calls = mount_stack("nt!ExAcquireResourceSharedLite+0x15c");
        let t = sys.new_thread(
            p,
            "nt!KiStartSystemThread",
            &calls,
            ThreadState::Waiting,
            (i % 4) as u16,
        )?;
        queued.push(t);
    }
    Ok(queued)
}
