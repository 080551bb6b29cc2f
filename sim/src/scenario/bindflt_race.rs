//! BindfltRace: a process-isolated container's threads open files relative to their current
//! directory (`NtCreateFile` with RootDirectory the cwd handle) on a bind-mounted directory,
//! through bindflt over wcifs; a few of those opens fail with STATUS_INVALID_PARAMETER. At the
//! moment captured, one create is pended in bindflt's pre-create callback: its IRP_CTRL and
//! callback data in place, its thread waiting for the filter manager to resume it.

use crate::SimError;
use crate::fltmgr::CREATE_INDEX;
use crate::pool::{PoolKind, tag};
use crate::system::{HandleRec, IrpLocation, IrpSpec, System, ThreadState};

use super::base::Base;
use super::facts::{Facts, PendedCreate};
use super::io_base::{Io, mj};
use super::stacks::{stack, user_tail, waiting};

/// Threads of the container process opening files.
const OPENERS: usize = 8;
/// The container volume the bind mount lies on (index into the filter manager's volumes).
const VOLUME: usize = 3;
/// FLTFL_CALLBACK_DATA_IRP_OPERATION.
const CBD_IRP_OPERATION: u64 = 0x1;
/// IRP_CTRL flags: Synchronize.
const IRPCTRL_SYNCHRONIZE: u64 = 0x8;
/// IRP_CREATE_OPERATION | IRP_SYNCHRONOUS_API | IRP_DEFER_IO_COMPLETION.
const CREATE_FLAGS: u32 = 0x884;

pub(super) fn bindflt_race(
    sys: &mut System,
    base: &Base,
    io: &mut Io,
    facts: &mut Facts,
) -> Result<(), SimError> {
    let _ = facts;
    let t = crate::fltmgr::table(sys)?;
    let app = sys.new_process("dotnet.exe", None, sys.processes[base.containerd].pid)?;
    let vol = io.facts.flt.volumes[VOLUME].clone();
    // Its current directory, opened through the bind mount.
    let cwd_name = "\\app\\data";
    let cwd = sys.file_object(
        vol.fs_device,
        cwd_name,
        0x4_0002,
        (0xffff_c000_5a10_0170, 0),
        0,
    )?;
    let handle = sys.add_handle(
        app,
        HandleRec {
            object: cwd,
            access: 0x10_0020,
            attributes: 0,
        },
    );
    let bindflt = io
        .facts
        .flt
        .filters
        .iter()
        .position(|f| f.name == "bindflt")
        .ok_or_else(|| SimError::Config("no bindflt".into()))?;
    let instance = io.facts.flt.filters[bindflt].instances[VOLUME];
    let node = io.facts.flt.create_nodes[bindflt][VOLUME];
    let mut pended = None;
    let mut openers = Vec::new();
    for i in 0..OPENERS {
        let mut calls = waiting(&[
            "nt!KeWaitForSingleObject+0x233",
            "FLTMGR!FltpCreate+0x34e",
            "nt!IofCallDriver+0x55",
            "nt!IopParseDevice+0x8ad",
            "nt!ObpLookupObjectName+0x78f",
            "nt!IopCreateFile+0x404",
            "nt!NtCreateFile+0x79",
        ]);
        calls.extend(stack(&user_tail()));
        let th = sys.new_thread(
            app,
            "nt!KiStartSystemThread",
            &calls,
            ThreadState::Waiting,
            (i % 2) as u16,
        )?;
        openers.push(th);
        // The file being opened, relative to the current directory.
        let name = format!("config\\settings{i}.json");
        let fo = sys.file_object(vol.fs_device, &name, 0x2, (0, 0), cwd)?;
        let irp = sys.irp(&IrpSpec {
            locations: vec![
                IrpLocation {
                    major: mj::CREATE,
                    device: vol.fs_device,
                    file: fo,
                    ..IrpLocation::default()
                },
                IrpLocation {
                    major: mj::CREATE,
                    device: vol.flt_device,
                    file: fo,
                    ..IrpLocation::default()
                },
            ],
            current: 2,
            thread: Some(th),
            flags: CREATE_FLAGS,
            status: (0x103, 0),
            original_file: fo,
            requestor_mode: 1,
            ..IrpSpec::default()
        })?;
        // The filter manager's control block for it, the callback data inside, and two
        // completion nodes after it.
        let ctrl_size = t.size_of("_IRP_CTRL")?;
        let node_size = t.size_of("_COMPLETION_NODE")?;
        let ctrl = sys.pool.alloc(
            &mut sys.k,
            PoolKind::NonPaged,
            ctrl_size + 2 * node_size,
            tag("FMic"),
        )?;
        let o = |p: &str| t.offset("_IRP_CTRL", p);
        let k = &mut sys.k;
        let set = |k: &mut crate::kernel::Kernel, at: u64, ty: &str, p: &str, v: u64| {
            k.set_in(&t, at, ty, p, v)
        };
        set(k, ctrl, "_IRP_CTRL", "Flags", IRPCTRL_SYNCHRONIZE)?;
        set(k, ctrl, "_IRP_CTRL", "MajorFunction", u64::from(mj::CREATE))?;
        set(k, ctrl, "_IRP_CTRL", "CompletionStackLength", 2)?;
        set(k, ctrl, "_IRP_CTRL", "NextCompletion", 0)?;
        set(k, ctrl, "_IRP_CTRL", "CompletionStack", ctrl + ctrl_size)?;
        set(k, ctrl, "_IRP_CTRL", "Irp", irp)?;
        set(k, ctrl, "_IRP_CTRL", "DeviceObject", vol.flt_device)?;
        set(k, ctrl, "_IRP_CTRL", "FileObject", fo)?;
        let cbd = ctrl + o("Data")?;
        let iopb = ctrl + o("WorkingParameters")?;
        let et = sys.threads[th].ethread;
        let k = &mut sys.k;
        set(k, cbd, "_FLT_CALLBACK_DATA", "Flags", CBD_IRP_OPERATION)?;
        set(k, cbd, "_FLT_CALLBACK_DATA", "Thread", et)?;
        set(k, cbd, "_FLT_CALLBACK_DATA", "Iopb", iopb)?;
        set(k, cbd, "_FLT_CALLBACK_DATA", "IoStatus.Status", 0x103)?;
        set(k, cbd, "_FLT_CALLBACK_DATA", "RequestorMode", 1)?;
        set(
            k,
            iopb,
            "_FLT_IO_PARAMETER_BLOCK",
            "IrpFlags",
            u64::from(CREATE_FLAGS),
        )?;
        set(k, iopb, "_FLT_IO_PARAMETER_BLOCK", "MajorFunction", 0)?;
        set(k, iopb, "_FLT_IO_PARAMETER_BLOCK", "TargetFileObject", fo)?;
        set(
            k,
            iopb,
            "_FLT_IO_PARAMETER_BLOCK",
            "TargetInstance",
            instance,
        )?;
        // The first one is held by bindflt's pre-create; the others are on their way down.
        if i == 0 {
            set(k, ctrl, "_IRP_CTRL", "PendingCallbackNode", node)?;
            pended = Some(PendedCreate {
                irp_ctrl: ctrl,
                cbd,
                irp,
                filter: "bindflt".into(),
                instance,
                thread: et,
                file: fo,
                related: cwd,
                cwd: (sys.processes[app].pid, handle, cwd_name.into()),
            });
        }
        let sync = ctrl + o("SyncEvent")?;
        sys.event_at(sync, "EventNotificationObject")?;
        sys.wait(th, &[sync], "Executive", 2 + i as u64)?;
    }
    let _ = CREATE_INDEX;
    io.facts.pended_create = pended;
    // While the machine runs, another opener's creates go through bindflt, one after another.
    sys.activity = Some(crate::activity::Activity::bindflt(sys, openers[2])?);
    Ok(())
}
