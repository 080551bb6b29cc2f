//! Driver Verifier as the kernel keeps it: its level (`MmVerifyDriverLevel`), the drivers it
//! verifies (`MmVerifyDriverBuffer`), and its IRP log (`IovIrpTraces`: each IRP a verified
//! driver issued, with the issuing thread's APC-disable counts, IRQL and stack).

use kdnet_arch::le::Le;

use super::{Kernel, ModelError};

/// Most bytes of the verified-driver list read.
const MAX_DRIVER_LIST: u32 = 8192;
/// Most IRP log entries read.
const MAX_LOG: u32 = 1 << 16;

/// One entry of verifier's IRP log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IrpTrace {
    /// Its slot.
    pub slot: u32,
    /// The IRP.
    pub irp: u64,
    /// The thread that issued it.
    pub thread: u64,
    /// KernelApcDisable then.
    pub kernel_apc_disable: i16,
    /// SpecialApcDisable then.
    pub special_apc_disable: i16,
    /// IRQL then.
    pub irql: u8,
    /// Return addresses, innermost first.
    pub stack: Vec<u64>,
}

/// Verifier's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verifier {
    /// MmVerifyDriverLevel.
    pub level: u32,
    /// The drivers named in MmVerifyDriverBuffer.
    pub drivers: Vec<String>,
    /// The IRP log, oldest first (`None` where the build keeps none: no `_IOV_IRP_TRACE`).
    pub log: Option<Vec<IrpTrace>>,
    /// The log's length and next index.
    pub log_slots: (u32, u32),
}

impl Kernel {
    /// Verifier's level and verified drivers, and with `log` its IRP log.
    pub fn verifier(&mut self, log: bool) -> Result<Verifier, ModelError> {
        let level = self.mem.u32(self.sym("MmVerifyDriverLevel")?)?;
        let buf = self.mem.u64(self.sym("MmVerifyDriverBuffer")?)?;
        let len = self.mem.u32(self.sym("MmVerifyDriverBufferLength")?)?;
        let drivers = if buf != 0 && len != 0 {
            if len > MAX_DRIVER_LIST {
                return Err(ModelError::Corrupt(format!(
                    "nt!MmVerifyDriverBufferLength is {len} bytes (at most {MAX_DRIVER_LIST})"
                )));
            }
            let raw = self.mem.kread(buf, (len & !1) as usize)?;
            kdnet_arch::le::utf16(&raw)
                .split([' ', '\0'])
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        } else {
            Vec::new()
        };
        let mut v = Verifier {
            level,
            drivers,
            ..Verifier::default()
        };
        let nt = self.nt()?;
        if !log || !nt.has_type("_IOV_IRP_TRACE") {
            return Ok(v);
        }
        let array = self.mem.u64(self.sym("IovIrpTraces")?)?;
        let length = self.mem.u32(self.sym("IovIrpTracesLength")?)?;
        let index = self.mem.u32(self.sym("IovIrpTracesIndex")?)?;
        v.log_slots = (length, index);
        if array == 0 || length == 0 {
            v.log = Some(Vec::new());
            return Ok(v);
        }
        if length > MAX_LOG {
            return Err(ModelError::Corrupt(format!(
                "nt!IovIrpTracesLength is {length} (at most {MAX_LOG})"
            )));
        }
        let size = nt.size_of("_IOV_IRP_TRACE")? as usize;
        let o = |f: &str| nt.offset("_IOV_IRP_TRACE", f).map(|x| x as usize);
        let (irp, thread, kad, sad, irql, frames) = (
            o("Irp")?,
            o("Thread")?,
            o("KernelApcDisable")?,
            o("SpecialApcDisable")?,
            o("Irql")?,
            o("StackTrace")?,
        );
        let depth = (size.saturating_sub(frames)) / 8;
        let used = index.min(length);
        let bytes = self.mem.kread(array, size * length as usize)?;
        // Oldest first: once the log has wrapped, the slot after the newest.
        let first = if index > length { index % length } else { 0 };
        let mut out = Vec::new();
        for n in 0..used {
            let slot = (first + n) % length;
            let e = &bytes[slot as usize * size..(slot as usize + 1) * size];
            let l = Le(e);
            let stack = (0..depth)
                .map(|j| l.u64(frames + 8 * j))
                .take_while(|a| *a != 0)
                .collect();
            out.push(IrpTrace {
                slot,
                irp: l.u64(irp),
                thread: l.u64(thread),
                kernel_apc_disable: l.u16(kad) as i16,
                special_apc_disable: l.u16(sad) as i16,
                irql: e[irql],
                stack,
            });
        }
        v.log = Some(out);
        Ok(v)
    }
}
