//! ServiceException: 0x3B SYSTEM_SERVICE_EXCEPTION in a third-party file system's close path.
//! robocopy.exe closes its last handle to a file on a WinFsp volume; the IRP_MJ_CLOSE goes
//! down through the filter manager to WinFsp, whose close dispatch `FspClose` calls
//! `FspPropagateTopFlags` with a context it had already freed: the read through it faults
//! (0xC0000005 reading `[rcx+18h]`, the page gone), `KiPageFault` builds a trap frame and
//! dispatches the exception, no handler takes it, and the system service's handler stops the
//! machine with the code, the faulting instruction's address and the context record.

use crate::SimError;
use crate::image::Gpr;
use crate::kernel::Region;
use crate::mem::PAGE;
use crate::system::{
    Call, DeviceSpec, Interrupted, IrpLocation, IrpSpec, System, ThreadState, call,
};

use super::base::Base;
use super::facts::{NamedDevice, PlantedException, PlantedIrp};
use super::io_base::{Io, filter_above, mj};
use super::write_bugcheck;

/// The file system's image and the short name its module goes by.
pub const WINFSP: (&str, &str) = ("winfsp-x64.sys", "winfsp_x64");
/// STATUS_ACCESS_VIOLATION.
const ACCESS_VIOLATION: u32 = 0xc000_0005;
/// Where in the freed context the faulting read is.
const READ_AT: i32 = 0x18;
/// The flags at the fault (IF, SF, PF set).
const EFLAGS: u64 = 0x286;

/// The crashing thread's frames, innermost first: the bugcheck, the exception dispatch, the
/// page fault's entry, then the close path it interrupted.
fn crash_stack(sys: &System) -> Vec<Call> {
    let close_entry = if sys.k.has_sym("ObCloseHandleTableEntry") {
        "nt!ObCloseHandleTableEntry+0x29c"
    } else {
        "nt!ObpCloseHandleTableEntry+0x29c"
    };
    let mut faulting = call("winfsp_x64!FspPropagateTopFlags+0x1a");
    faulting.interrupted = Some(Interrupted::Load(Gpr::Rcx, READ_AT));
    let mut calls: Vec<Call> = [
        "nt!KeBugCheckEx+0x0",
        "nt!KiBugCheckDispatch+0x69",
        "nt!KiSystemServiceHandler+0x7c",
        "nt!RtlpExecuteHandlerForException+0xd",
        "nt!RtlDispatchException+0x297",
        "nt!KiDispatchException+0x186",
        "nt!KiExceptionDispatch+0x12c",
        "nt!KiPageFault+0x443",
    ]
    .iter()
    .map(|s| call(s))
    .collect();
    calls.push(faulting);
    calls.extend(
        [
            "winfsp_x64!FspClose+0x6c",
            "nt!IofCallDriver+0x55",
            "FLTMGR!FltpLegacyProcessingAfterPreCallbacksCompleted+0x1a3",
            "FLTMGR!FltpDispatch+0xb6",
            "nt!IofCallDriver+0x55",
            "nt!IopDeleteFile+0x13c",
            "nt!ObpRemoveObjectRoutine+0x80",
            "nt!ObfDereferenceObjectWithTag+0xc7",
            close_entry,
            "nt!ObpCloseHandle+0x8a",
            "nt!NtClose+0x3d",
            "nt!KiSystemServiceCopyEnd+0x25",
        ]
        .iter()
        .map(|s| call(s)),
    );
    calls
}

pub(super) fn service_exception(
    sys: &mut System,
    base: &Base,
    io: &mut Io,
) -> Result<(PlantedException, u32, [u64; 4]), SimError> {
    sys.add_module(WINFSP.0, WINFSP.1);
    let winfsp = sys.driver(
        "WinFsp",
        true,
        WINFSP.1,
        &[
            (mj::CREATE, "FspCreate"),
            (mj::CLOSE, "FspClose"),
            (mj::READ, "FspRead"),
            (mj::WRITE, "FspWrite"),
            (mj::QUERY_INFORMATION, "FspQueryInformation"),
            (mj::DIRECTORY_CONTROL, "FspDirectoryControl"),
            (mj::FILE_SYSTEM_CONTROL, "FspFileSystemControl"),
            (mj::CLEANUP, "FspCleanup"),
        ],
        None,
        None,
        &[],
    )?;
    io.facts
        .drivers
        .push(("\\FileSystem\\WinFsp".into(), winfsp));
    // The mounted volume, the filter manager above it.
    let volume = sys.device(&DeviceSpec {
        driver: winfsp,
        name: Some("Volume{6b2d0c1e-5f0a-4e8b-9d1c-3a7f21c04d55}"),
        device_type: 0x08,
        extension: 0x100,
        flags: 0x10,
        characteristics: 0,
    })?;
    let flt = filter_above(sys, io, volume)?;
    io.facts.named_devices.push(NamedDevice {
        path: "\\Device\\Volume{6b2d0c1e-5f0a-4e8b-9d1c-3a7f21c04d55}".into(),
        device: volume,
        driver: "\\FileSystem\\WinFsp".into(),
    });
    // The file's contexts: the stream context is live; the per-open context was freed (its
    // page is gone, as a freed large allocation's is).
    let fcb = sys.event_object(None)?;
    let freed = sys.k.reserve_region(Region::NonPagedPool, PAGE, PAGE) + 0x2a0;
    let file = sys.file_object(
        volume,
        "\\Cloud\\Projects\\build-cache\\obj\\x64\\Release\\core.pdb",
        0x4_0042,
        (fcb, freed),
        0,
    )?;
    // The thread that closed it.
    let app = sys.new_process("robocopy.exe", None, sys.processes[base.user_procs[0]].pid)?;
    let calls = crash_stack(sys);
    let t = sys.new_thread(
        app,
        "nt!KiStartSystemThread",
        &calls,
        ThreadState::Running,
        0,
    )?;
    sys.set_running(t)?;
    let et = sys.threads[t].ethread;
    let irp = sys.irp(&IrpSpec {
        locations: vec![
            IrpLocation {
                major: mj::CLOSE,
                device: volume,
                file,
                ..IrpLocation::default()
            },
            IrpLocation {
                major: mj::CLOSE,
                device: flt,
                file,
                ..IrpLocation::default()
            },
        ],
        current: 1,
        thread: Some(t),
        flags: 0x404, // IRP_CLOSE_OPERATION | IRP_SYNCHRONOUS_API
        original_file: file,
        ..IrpSpec::default()
    })?;
    io.facts.irps.push(PlantedIrp {
        irp,
        thread: et,
        stack: vec![
            (mj::CLOSE, volume, "\\FileSystem\\WinFsp".into(), None),
            (mj::CLOSE, flt, "\\FileSystem\\FltMgr".into(), None),
        ],
        current: 1,
        file,
    });
    // The trap frame KiPageFault built (the machine frame is in place): the volatile
    // registers at the fault, the faulting address.
    let trap = sys
        .frame_rsp(t, "KiPageFault")
        .ok_or_else(|| SimError::Config("no KiPageFault frame".into()))?;
    let fault_ip = sys.k.get(trap, "_KTRAP_FRAME", "Rip")?;
    let fault_rsp = sys.k.get(trap, "_KTRAP_FRAME", "Rsp")?;
    let read = freed.wrapping_add(READ_AT as u64);
    let volatile = [
        ("Rax", file),
        ("Rcx", freed),
        ("Rdx", irp),
        ("R8", 0),
        ("R9", 0x10),
        ("R10", sys.routine("winfsp_x64!FspPropagateTopFlags")?),
        ("R11", fault_rsp - 0x40),
    ];
    for (name, v) in volatile {
        sys.k.set(trap, "_KTRAP_FRAME", name, v)?;
    }
    sys.k.set(trap, "_KTRAP_FRAME", "FaultAddress", read)?;
    sys.k.set(trap, "_KTRAP_FRAME", "PreviousMode", 1)?;
    sys.k.set(trap, "_KTRAP_FRAME", "MxCsr", 0x1f80)?;
    sys.k.set(trap, "_KTRAP_FRAME", "SegCs", 0x10)?;
    sys.k.set(trap, "_KTRAP_FRAME", "SegSs", 0x18)?;
    sys.k.set(trap, "_KTRAP_FRAME", "EFlags", EFLAGS)?;
    let rbp = sys.k.get(trap, "_KTRAP_FRAME", "Rbp")?;
    // The exception record KiExceptionDispatch built in its frame.
    let record = sys
        .frame_rsp(t, "KiExceptionDispatch")
        .ok_or_else(|| SimError::Config("no KiExceptionDispatch frame".into()))?
        + 0x100;
    // ExceptionCode, ExceptionFlags, ExceptionRecord, ExceptionAddress, NumberParameters,
    // ExceptionInformation: a read (0) of `read`.
    let mut exception = vec![0u8; 0x98];
    exception[0..4].copy_from_slice(&ACCESS_VIOLATION.to_le_bytes());
    exception[0x10..0x18].copy_from_slice(&fault_ip.to_le_bytes());
    exception[0x18..0x1c].copy_from_slice(&2u32.to_le_bytes());
    exception[0x28..0x30].copy_from_slice(&read.to_le_bytes());
    sys.k.write(record, &exception);
    // The context record KiDispatchException made of the trap and exception frames.
    let context = sys
        .frame_rsp(t, "KiDispatchException")
        .ok_or_else(|| SimError::Config("no KiDispatchException frame".into()))?
        + 0x60;
    let mut c = kdnet::api::Context::new();
    use kdnet::api::Reg;
    for (r, v) in [
        (Reg::Rax, file),
        (Reg::Rcx, freed),
        (Reg::Rdx, irp),
        (Reg::R8, 0),
        (Reg::R9, 0x10),
        (Reg::Rbx, irp),
        (Reg::Rsi, file),
        (Reg::Rdi, et),
        (Reg::Rbp, rbp),
        (Reg::R12, 0),
        (Reg::R13, 1),
        (Reg::R14, fcb),
        (Reg::R15, volume),
        (Reg::Rsp, fault_rsp),
        (Reg::Rip, fault_ip),
    ] {
        c.set_reg(r, v);
    }
    c.set_eflags(EFLAGS as u32);
    let mut bytes = c.as_bytes().to_vec();
    bytes[0x30..0x34].copy_from_slice(&0x0010_001fu32.to_le_bytes());
    bytes[0x34..0x38].copy_from_slice(&0x1f80u32.to_le_bytes());
    for (off, sel) in [
        (0x38, 0x10u16),
        (0x3a, 0x2b),
        (0x3c, 0x2b),
        (0x3e, 0x53),
        (0x40, 0x2b),
        (0x42, 0x18),
    ] {
        bytes[off..off + 2].copy_from_slice(&sel.to_le_bytes());
    }
    sys.k.write(context, &bytes);
    let code = 0x3b;
    let params = [u64::from(ACCESS_VIOLATION), fault_ip, context, 0];
    write_bugcheck(sys, code, params)?;
    Ok((
        PlantedException {
            thread: et,
            context_record: context,
            exception_record: record,
            trap_frame: trap,
            faulting_ip: fault_ip,
            faulting_rsp: fault_rsp,
            read,
            irp,
            file,
        },
        code,
        params,
    ))
}
