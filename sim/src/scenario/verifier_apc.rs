//! VerifierApc: Driver Verifier on with I/O verification (level 0x410) for a third-party
//! driver, whose image-load notification routine issues a read with special kernel APCs
//! disabled (SpecialApcDisable = -1). NTFS completed the read; the completion APC
//! (`nt!IopCompleteRequest`, the IRP's own `Tail.Apc`) is queued to the thread but cannot run,
//! so the thread waits forever for the event the APC would set.

use crate::SimError;
use crate::system::{IrpLocation, IrpSpec, System, ThreadState};

use super::base::Base;
use super::io_base::{Io, mj};
use super::stacks::{stack, user_tail, waiting};

/// The verifier level: I/O verification (0x10) and IRP logging (0x400).
pub const VERIFIER_LEVEL: u64 = 0x410;
/// The verified driver.
pub const VERIFIED_DRIVER: &str = "acmeav.sys";

/// What the scenario planted: the thread, its IRP, the queued APC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifierFacts {
    /// MmVerifyDriverLevel.
    pub level: u64,
    /// The driver verified.
    pub driver: String,
    /// The thread in the image-load notification routine.
    pub thread: u64,
    /// Its read IRP, completed by NTFS.
    pub irp: u64,
    /// The completion APC queued to the thread (the IRP's Tail.Apc).
    pub apc: u64,
    /// The IRPs in verifier's IRP log (`IovIrpTraces`), oldest first: (IRP, thread,
    /// SpecialApcDisable); empty where the build's table has no `_IOV_IRP_TRACE`.
    pub log: Vec<(u64, u64, i16)>,
    /// What the build's table has no place for.
    pub left_out: Vec<String>,
}

/// Entries of verifier's IRP log.
const LOG_ENTRIES: u64 = 64;

/// Writes verifier's IRP log (`IovIrpTraces`, `IovIrpTracesLength`, `IovIrpTracesIndex`) with
/// `entries` = (IRP, thread, KernelApcDisable, SpecialApcDisable, return addresses).
fn write_irp_log(
    sys: &mut System,
    entries: &[(u64, u64, i16, i16, Vec<u64>)],
) -> Result<(), SimError> {
    let size = sys.k.size("_IOV_IRP_TRACE")?;
    let log = sys.pool.alloc(
        &mut sys.k,
        crate::pool::PoolKind::NonPaged,
        size * LOG_ENTRIES,
        crate::pool::tag("VfIt"),
    )?;
    let frames = sys.k.off("_IOV_IRP_TRACE", "StackTrace")?;
    for (i, (irp, thread, kad, sad, stack)) in entries.iter().enumerate() {
        let e = log + size * i as u64;
        let k = &mut sys.k;
        k.set(e, "_IOV_IRP_TRACE", "Irp", *irp)?;
        k.set(e, "_IOV_IRP_TRACE", "Thread", *thread)?;
        k.set(
            e,
            "_IOV_IRP_TRACE",
            "KernelApcDisable",
            u64::from(*kad as u16),
        )?;
        k.set(
            e,
            "_IOV_IRP_TRACE",
            "SpecialApcDisable",
            u64::from(*sad as u16),
        )?;
        k.set(e, "_IOV_IRP_TRACE", "Irql", 0)?;
        for (j, r) in stack.iter().take(13).enumerate() {
            k.w64(e + frames + 8 * j as u64, *r);
        }
    }
    let k = &mut sys.k;
    k.w64(k.sym("IovIrpTraces")?, log);
    k.w32(k.sym("IovIrpTracesLength")?, LOG_ENTRIES as u32);
    k.w32(k.sym("IovIrpTracesIndex")?, entries.len() as u32);
    Ok(())
}

/// Turns Driver Verifier on at `level` for `driver`, where the kernel keeps its settings
/// (`MmVerifyDriverLevel`, `MmVerifierData.Level`, the driver list `MmVerifyDriverBuffer`).
pub(super) fn verify(sys: &mut System, level_value: u64, driver: &str) -> Result<(), SimError> {
    // Verifier's settings, where the kernel keeps them.
    let level = sys.k.sym("MmVerifyDriverLevel")?;
    sys.k.w32(level, level_value as u32);
    let data = sys.k.sym("MmVerifierData")?;
    sys.k
        .set(data, "_MM_DRIVER_VERIFIER_DATA", "Level", level_value)?;
    let units: Vec<u8> = driver
        .encode_utf16()
        .chain([0])
        .flat_map(u16::to_le_bytes)
        .collect();
    let buf = sys.pool.alloc(
        &mut sys.k,
        crate::pool::PoolKind::Paged,
        units.len() as u64,
        crate::pool::tag("MmVd"),
    )?;
    sys.k.write(buf, &units);
    let at = sys.k.sym("MmVerifyDriverBuffer")?;
    sys.k.w64(at, buf);
    let at = sys.k.sym("MmVerifyDriverBufferLength")?;
    sys.k.w32(at, (units.len() - 2) as u32);
    Ok(())
}

pub(super) fn verifier_apc(
    sys: &mut System,
    base: &Base,
    io: &Io,
) -> Result<VerifierFacts, SimError> {
    verify(sys, VERIFIER_LEVEL, VERIFIED_DRIVER)?;
    // A process starting: the loader maps an image, the notification routine reads it.
    let setup = sys.new_process("setup.exe", None, sys.processes[base.user_procs[3]].pid)?;
    let mut calls = waiting(&[
        "nt!KeWaitForSingleObject+0x233",
        "acmeav!AvReadImageHeader+0x9c",
        "acmeav!AvImageLoadNotify+0x1d2",
        "nt!PsCallImageNotifyRoutines+0x1b1",
        "nt!MiMapViewOfImageSection+0x7a4",
        "nt!MiMapViewOfSection+0x3bd",
        "nt!NtMapViewOfSection+0x156",
    ]);
    calls.extend(stack(&user_tail()));
    let t = sys.new_thread(
        setup,
        "nt!KiStartSystemThread",
        &calls,
        ThreadState::Waiting,
        1,
    )?;
    let et = sys.threads[t].ethread;
    // Special kernel APCs disabled (a guarded region the driver entered).
    sys.k.set(et, "_ETHREAD", "Tcb.SpecialApcDisable", 0xffff)?;
    let ev = sys.event("EventNotificationObject", "AvEv")?;
    sys.wait(t, &[ev], "Executive", 95)?;
    let (flt, ntfs) = io.volume_devices;
    let fo = sys.file_object(
        io.volume,
        "\\Program Files\\Setup\\payload.dll",
        0x4_0042,
        (0xffff_c000_7a31_0170, 0xffff_c000_7a31_03d0),
        0,
    )?;
    // NTFS completed the read: no location is current.
    let irp = sys.irp(&IrpSpec {
        locations: vec![
            IrpLocation {
                major: mj::READ,
                device: ntfs,
                file: fo,
                args: [0x1000, 0, 0, 0],
                ..IrpLocation::default()
            },
            IrpLocation {
                major: mj::READ,
                device: flt,
                file: fo,
                args: [0x1000, 0, 0, 0],
                ..IrpLocation::default()
            },
        ],
        current: 3,
        thread: Some(t),
        flags: 0x900,
        pending_returned: true,
        status: (0, 0x1000),
        original_file: fo,
        user_event: ev,
        ..IrpSpec::default()
    })?;
    // Its completion APC, queued to the thread's kernel-mode list.
    let apc = irp + sys.k.off("_IRP", "Tail.Apc")?;
    let complete = sys.k.sym("IopCompleteRequest")?;
    let apc_type = sys.k.enum_value("_KOBJECTS", "ApcObject")? as u64;
    let apc_size = sys.k.size("_KAPC")?;
    let k = &mut sys.k;
    k.set(apc, "_KAPC", "Type", apc_type)?;
    k.set(apc, "_KAPC", "Size", apc_size)?;
    k.set(apc, "_KAPC", "Thread", et)?;
    k.set(apc, "_KAPC", "KernelRoutine", complete)?;
    k.set(apc, "_KAPC", "ApcMode", 0)?;
    k.set(apc, "_KAPC", "Inserted", 1)?;
    let head = et + k.off("_ETHREAD", "Tcb.ApcState.ApcListHead")?;
    k.list_init(head);
    k.list_append(head, apc + k.off("_KAPC", "ApcListEntry")?);
    k.set(et, "_ETHREAD", "Tcb.ApcState.KernelApcPending", 1)?;
    // Verifier logged the driver's IRPs as they were issued: earlier reads of the same image
    // header (completed) and the one that hangs, each with the issuing thread's APC state.
    let mut log = Vec::new();
    let left_out = if sys.k.has_type("_IOV_IRP_TRACE") {
        let mut stack_of = Vec::new();
        for c in [
            "acmeav!AvReadImageHeader+0x97",
            "acmeav!AvImageLoadNotify+0x1d2",
            "nt!PsCallImageNotifyRoutines+0x1b1",
            "nt!MiMapViewOfImageSection+0x7a4",
            "nt!MiMapViewOfSection+0x3bd",
            "nt!NtMapViewOfSection+0x156",
        ] {
            let (m, rest) = c.split_once('!').unwrap_or(("nt", c));
            let (f, off) = rest.split_once("+0x").unwrap_or((rest, "0"));
            let at = sys.function(m, f)?.0 + u64::from_str_radix(off, 16).unwrap_or(0);
            stack_of.push(at);
        }
        let mut entries = Vec::new();
        for n in 0..3u64 {
            let earlier = sys.pool.alloc(
                &mut sys.k,
                crate::pool::PoolKind::NonPaged,
                0x1f0,
                crate::pool::tag("AvBf"),
            )?;
            let _ = n;
            // Completed and freed since: its block now holds the driver's buffer.
            entries.push((earlier, et, 0i16, -1i16, stack_of.clone()));
        }
        entries.push((irp, et, 0, -1, stack_of));
        write_irp_log(sys, &entries)?;
        log = entries.iter().map(|e| (e.0, e.1, e.3)).collect();
        None
    } else {
        Some(
            "_IOV_IRP_TRACE (verifier's IRP log): not in this build's table, so no log is kept"
                .to_string(),
        )
    };
    Ok(VerifierFacts {
        left_out: left_out.into_iter().collect(),
        level: VERIFIER_LEVEL,
        driver: VERIFIED_DRIVER.into(),
        thread: et,
        irp,
        apc,
        log,
    })
}
