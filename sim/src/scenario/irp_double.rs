//! IrpDoubleComplete: a Server 2022 container host pulling twenty images at once stops with
//! 0x44 MULTIPLE_IRP_COMPLETE_REQUESTS (parameters: the IRP, 0x125a, 0, 0). The IRP went
//! down through the filter manager to a CimFS volume; CimFS completed it a second time on the
//! crashing thread. Twenty reads of the image pulls are pending in CimFS below the filters.

use crate::SimError;
use crate::system::{DeviceSpec, IrpLocation, IrpSpec, System, ThreadState};

use super::base::Base;
use super::facts::{NamedDevice, PlantedIrp};
use super::io_base::{Io, filter_above, mj};
use super::stacks::{stack, user_tail, waiting};
use super::write_bugcheck;

/// CimFS volumes mounted (one per image layer being merged).
const VOLUMES: usize = 5;
/// Reads in flight.
pub const PULLS: usize = 20;
/// SL_PENDING_RETURNED | SL_INVOKE_ON_SUCCESS | SL_INVOKE_ON_ERROR | SL_INVOKE_ON_CANCEL.
const INVOKE_ALL_PENDING: u8 = 0xe1;
/// IRP_READ_OPERATION | IRP_DEFER_IO_COMPLETION.
const READ_FLAGS: u32 = 0x900;
/// STATUS_PENDING.
const STATUS_PENDING: u32 = 0x103;

fn read_stack(
    sys: &System,
    cim_dev: u64,
    flt_dev: u64,
    file: u64,
    offset: u64,
    context: u64,
) -> Vec<IrpLocation> {
    let _ = sys;
    vec![
        IrpLocation {
            major: mj::READ,
            control: INVOKE_ALL_PENDING,
            device: cim_dev,
            file,
            completion: Some(("FLTMGR!FltpPassThroughCompletion".into(), context)),
            args: [0x10000, 0, offset, 0],
            ..IrpLocation::default()
        },
        IrpLocation {
            major: mj::READ,
            control: 0x01,
            device: flt_dev,
            file,
            args: [0x10000, 0, offset, 0],
            ..IrpLocation::default()
        },
    ]
}

fn planted(irp: u64, thread: u64, current: u8, file: u64, cim: u64, flt: u64) -> PlantedIrp {
    PlantedIrp {
        irp,
        thread,
        stack: vec![
            (
                mj::READ,
                cim,
                "\\Driver\\cimfs".into(),
                Some("FLTMGR!FltpPassThroughCompletion".into()),
            ),
            (mj::READ, flt, "\\FileSystem\\FltMgr".into(), None),
        ],
        current,
        file,
    }
}

pub(super) fn irp_double_complete(
    sys: &mut System,
    base: &Base,
    io: &mut Io,
) -> Result<(u32, [u64; 4]), SimError> {
    // The mounted layers: a CimFS volume each, the filter manager's device on top.
    let mut volumes = Vec::new();
    for v in 1..=VOLUMES {
        let name = format!("CimfsVolume{v}");
        let cim = sys.device(&DeviceSpec {
            driver: io.cimfs,
            name: Some(&name),
            device_type: 0x08,
            extension: 0x180,
            flags: 0x10,
            characteristics: 0x100,
        })?;
        let flt = filter_above(sys, io, cim)?;
        io.facts.named_devices.push(NamedDevice {
            path: format!("\\Device\\{name}"),
            device: cim,
            driver: "\\Driver\\cimfs".into(),
        });
        volumes.push((cim, flt));
    }
    // Twenty reads of the image pulls, pending in CimFS.
    for i in 0..PULLS {
        let (cim, flt) = volumes[i % VOLUMES];
        let mut calls = waiting(&["nt!KeWaitForSingleObject+0x233", "nt!NtReadFile+0x61a"]);
        calls.extend(stack(&user_tail()));
        let t = sys.new_thread(
            base.containerd,
            "nt!KiStartSystemThread",
            &calls,
            ThreadState::Waiting,
            (i % 2) as u16,
        )?;
        let name = format!("\\Files\\Windows\\System32\\DriverStore\\layer{i:02}.dat");
        let fcb = 0xffff_c000_0000_0000 | (0x3a1b_0000 + (i as u64) * 0x400);
        let fo = sys.file_object(cim, &name, 0x4_0002, (fcb, fcb + 0x260), 0)?;
        let ev = fo + sys.k.off("_FILE_OBJECT", "Event")?;
        sys.wait(t, &[ev], "Executive", 40 + i as u64)?;
        let ctx = sys.event_object(None)?;
        let irp = sys.irp(&IrpSpec {
            locations: read_stack(sys, cim, flt, fo, (i as u64) << 20, ctx),
            current: 1,
            thread: Some(t),
            flags: READ_FLAGS,
            pending_returned: true,
            status: (STATUS_PENDING, 0),
            original_file: fo,
            requestor_mode: 1,
            ..IrpSpec::default()
        })?;
        let et = sys.threads[t].ethread;
        io.facts.irps.push(planted(irp, et, 1, fo, cim, flt));
    }
    // The crashing thread: CimFS completing the IRP a second time.
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
    let (cim, flt) = volumes[0];
    let fo = sys.file_object(
        cim,
        "\\Files\\Windows\\System32\\config\\SOFTWARE",
        0x4_0002,
        (0xffff_c000_3a2c_1170, 0xffff_c000_3a2c_13d0),
        0,
    )?;
    let ctx = sys.event_object(None)?;
    // Completed once already: CurrentLocation is past StackCount + 1.
    let irp = sys.irp(&IrpSpec {
        locations: read_stack(sys, cim, flt, fo, 0x20_0000, ctx),
        current: 4,
        thread: Some(t),
        flags: READ_FLAGS,
        pending_returned: true,
        status: (0, 0x10000),
        original_file: fo,
        requestor_mode: 1,
        ..IrpSpec::default()
    })?;
    let et = sys.threads[t].ethread;
    io.facts.double_irp = Some(planted(irp, et, 4, fo, cim, flt));
    let code = 0x44;
    let params = [irp, 0x125a, 0, 0];
    write_bugcheck(sys, code, params)?;
    Ok((code, params))
}
