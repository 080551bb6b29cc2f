//! Bugcheck: a fatal error, 0x44 MULTIPLE_IRP_COMPLETE_REQUESTS.

use crate::SimError;
use crate::kernel::Region;
use crate::pool::{PoolKind, tag};
use crate::system::{System, ThreadState};

use super::base::Base;
use super::stacks::stack;

/// Writes KiBugCheckData.
pub fn write_bugcheck(sys: &mut System, code: u32, params: [u64; 4]) -> Result<(), SimError> {
    let a = sys.k.sym("KiBugCheckData")?;
    sys.k.w64(a, u64::from(code));
    for (i, p) in params.iter().enumerate() {
        sys.k.w64(a + 8 * (i as u64 + 1), *p);
    }
    Ok(())
}

pub(super) fn bugcheck(sys: &mut System, base: &Base) -> Result<(u32, [u64; 4]), SimError> {
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
