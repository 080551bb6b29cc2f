//! NblHang: a PnP remove blocked on a NIC miniport holding every NBL.

use crate::SimError;
use crate::system::{System, ThreadState};

use super::base::Base;
use super::facts::{Facts, HeldLock};
use super::stacks::{stack, system_tail, waiting};

pub(super) fn nbl_hang(sys: &mut System, base: &Base, facts: &mut Facts) -> Result<(), SimError> {
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
