//! The debugger data block (`KdDebuggerDataBlock`) and its encoding.

use kdnet_symbols::builtin;

use crate::SimError;
use crate::kernel::Kernel;
use crate::mem::PAGE;

use super::System;

impl System {
    pub(super) fn write_kdbg(&mut self) -> Result<u64, SimError> {
        let k = &mut self.k;
        let kdbg = k.sym("KdDebuggerDataBlock")?;
        let size = k.families.kdbg_size;
        let list_head = k.sym("KdpDebuggerDataListHead")?;
        k.w64(list_head, kdbg);
        k.w64(list_head + 8, kdbg);
        k.w64(kdbg, list_head);
        k.w64(kdbg + 8, list_head);
        let t = "_KDDEBUGGER_DATA64";
        k.set(kdbg, t, "Header.OwnerTag", u64::from(builtin::KDBG_TAG))?;
        k.set(kdbg, t, "Header.Size", size)?;
        let base = k.base();
        k.set(kdbg, t, "KernBase", base)?;
        for (field, symbol) in [
            ("BreakpointWithStatus", "RtlpBreakWithStatusInstruction"),
            ("PsLoadedModuleList", "PsLoadedModuleList"),
            ("PsActiveProcessHead", "PsActiveProcessHead"),
            ("PspCidTable", "PspCidTable"),
            ("ExpSystemResourcesList", "ExpSystemResourcesList"),
            ("KeTimeIncrement", "KeTimeIncrement"),
            ("KeBugCheckCallbackListHead", "KeBugCheckCallbackListHead"),
            ("KiBugcheckData", "KiBugCheckData"),
            ("MmPfnDatabase", "MmPfnDatabase"),
            ("KiProcessorBlock", "KiProcessorBlock"),
            ("MmUnloadedDrivers", "MmUnloadedDrivers"),
            ("MmLastUnloadedDriver", "MmLastUnloadedDriver"),
            ("PoolTrackTable", "PoolTrackTable"),
            ("MmSystemRangeStart", "MmSystemRangeStart"),
            ("MmHighestUserAddress", "MmHighestUserAddress"),
            ("MmPhysicalMemoryBlock", "MmPhysicalMemoryBlock"),
            ("MmSizeOfPagedPoolInBytes", "MmSizeOfPagedPoolInBytes"),
        ] {
            if k.has_sym(symbol) {
                let a = k.sym(symbol)?;
                k.set(kdbg, t, field, a)?;
            }
        }
        write_kdbg_layout(k, kdbg, size)?;
        Ok(size)
    }

    /// Encodes the debugger data block in place, as a Windows 8+ kernel booted without a
    /// debugger leaves it, and sets `KdpDataBlockEncoded`.
    pub(super) fn encode_kdbg(&mut self, size: u64) -> Result<(), SimError> {
        let kdbg = self.k.sym("KdDebuggerDataBlock")?;
        let flag = self.k.sym("KdpDataBlockEncoded")?;
        for i in 0..size / 8 {
            let at = kdbg + 8 * i;
            let p = self.k.r64(at);
            let c = encode_kdbg_word(p, self.wait_never, self.wait_always, flag);
            self.k.w64(at, c);
        }
        self.k.w8(flag, 1);
        Ok(())
    }
}

/// The page size, the structure offsets and sizes, and the selectors a debugger takes from the
/// data block (`size` bytes of it exist on this build).
fn write_kdbg_layout(k: &mut Kernel, kdbg: u64, size: u64) -> Result<(), SimError> {
    let t = "_KDDEBUGGER_DATA64";
    k.set(kdbg, t, "MmPageSize", PAGE)?;
    let offsets: [(&str, &str, &str); 16] = [
        ("OffsetKThreadNextProcessor", "_KTHREAD", "NextProcessor"),
        ("OffsetKThreadTeb", "_KTHREAD", "Teb"),
        ("OffsetKThreadKernelStack", "_KTHREAD", "KernelStack"),
        ("OffsetKThreadInitialStack", "_KTHREAD", "InitialStack"),
        ("OffsetKThreadApcProcess", "_KTHREAD", "ApcState.Process"),
        ("OffsetKThreadState", "_KTHREAD", "State"),
        ("OffsetEprocessPeb", "_EPROCESS", "Peb"),
        (
            "OffsetEprocessParentCID",
            "_EPROCESS",
            "InheritedFromUniqueProcessId",
        ),
        (
            "OffsetEprocessDirectoryTableBase",
            "_EPROCESS",
            "Pcb.DirectoryTableBase",
        ),
        ("OffsetPrcbCurrentThread", "_KPRCB", "CurrentThread"),
        ("OffsetPrcbNumber", "_KPRCB", "Number"),
        (
            "OffsetPrcbProcStateContext",
            "_KPRCB",
            "ProcessorState.ContextFrame",
        ),
        (
            "OffsetPrcbProcStateSpecialReg",
            "_KPRCB",
            "ProcessorState.SpecialRegisters",
        ),
        ("OffsetPcrSelfPcr", "_KPCR", "Self"),
        ("OffsetPcrCurrentPrcb", "_KPCR", "CurrentPrcb"),
        ("OffsetPrcbIdleThread", "_KPRCB", "IdleThread"),
    ];
    for (field, ty, path) in offsets {
        if let Ok(o) = k.off(ty, path) {
            k.set(kdbg, t, field, o)?;
        }
    }
    for (field, ty) in [
        ("SizeEProcess", "_EPROCESS"),
        ("SizePrcb", "_KPRCB"),
        ("SizeEThread", "_ETHREAD"),
        ("SizePcr", "_KPCR"),
    ] {
        let s = k.size(ty)?;
        k.set(kdbg, t, field, s)?;
    }
    for (field, ty, path) in [
        ("OffsetKThreadStackLimit", "_KTHREAD", "StackLimit"),
        ("OffsetKThreadStackBase", "_KTHREAD", "StackBase"),
        ("OffsetEThreadIrpList", "_ETHREAD", "IrpList"),
        ("OffsetKThreadWaitReason", "_KTHREAD", "WaitReason"),
    ] {
        if size > k.off(t, field)? {
            let o = k.off(ty, path)?;
            k.set(kdbg, t, field, o)?;
        }
    }
    if k.has_sym("MmPteBase") && size > 0x360 {
        let pte = k.va.pte_base();
        k.set(kdbg, t, "PteBase", pte)?;
    }
    k.set(kdbg, t, "GdtR0Code", 0x10)?;
    k.set(kdbg, t, "GdtR0Data", 0x18)?;
    k.set(kdbg, t, "GdtR0Pcr", 0x53)?;
    k.set(kdbg, t, "GdtR3Code", 0x33)?;
    k.set(kdbg, t, "GdtR3Data", 0x2b)?;
    k.set(kdbg, t, "GdtR3Teb", 0x53)?;
    k.set(kdbg, t, "GdtTss", 0x40)?;
    Ok(())
}

/// The debugger data block encoding of one 8-byte word: `c = N ^ rotr(A ^ bswap(p ^ W), N)`,
/// with N = KiWaitNever, W = KiWaitAlways and A the address of `KdpDataBlockEncoded`.
pub fn encode_kdbg_word(p: u64, never: u64, always: u64, flag_address: u64) -> u64 {
    never ^ (flag_address ^ (p ^ always).swap_bytes()).rotate_right((never & 63) as u32)
}

/// The inverse: `p = W ^ bswap(A ^ rotl(c ^ N, N))`.
pub fn decode_kdbg_word(c: u64, never: u64, always: u64, flag_address: u64) -> u64 {
    always ^ (flag_address ^ (c ^ never).rotate_left((never & 63) as u32)).swap_bytes()
}
#[cfg(test)]
mod tests {
    use kdnet::rng::SplitMix64;

    use super::*;

    #[test]
    fn kdbg_encoding_round_trips() {
        let mut r = SplitMix64::new(3);
        for _ in 0..1000 {
            let (p, n, w, a) = (r.next_u64(), r.next_u64(), r.next_u64(), r.next_u64());
            let c = encode_kdbg_word(p, n, w, a);
            assert_eq!(decode_kdbg_word(c, n, w, a), p);
        }
    }
}
