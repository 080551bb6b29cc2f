//! KUSER_SHARED_DATA: the tick count, interrupt time and version the kernel publishes.

use crate::SimError;
use crate::kernel::{KUSER_SHARED_DATA, Kernel};

use super::{MAXIMUM_INCREMENT, System};

/// When the simulated machine booted, as a FILETIME (100 ns since 1601, UTC): 2025-11-30
/// 08:00:00 UTC.
pub const BOOT_TIME: u64 = (1_764_489_600 + 11_644_473_600) * 10_000_000;

impl System {
    pub(super) fn write_kuser(&mut self) -> Result<(), SimError> {
        let k = &mut self.k;
        let u = KUSER_SHARED_DATA;
        let t = "_KUSER_SHARED_DATA";
        k.set(u, t, "TickCountMultiplier", 0x0fa0_0000)?;
        Self::set_tick(k, self.now_tick)?;
        let (major, minor) = crate::layout::nt_version(k.build);
        k.set(u, t, "NtMajorVersion", u64::from(major))?;
        k.set(u, t, "NtMinorVersion", u64::from(minor))?;
        if k.has(t, "NtBuildNumber") {
            let b = u64::from(k.build);
            k.set(u, t, "NtBuildNumber", b)?;
        }
        k.set(u, t, "NtProductType", 3)?;
        k.set(u, t, "TimeZoneBias.LowPart", 0)?;
        k.set(u, t, "TimeZoneBias.High1Time", 0)?;
        k.set(u, t, "TimeZoneBias.High2Time", 0)?;
        // What `vertarget` shows as "Built by": the build lab string.
        if k.has_sym("NtBuildLab") {
            let lab = format!("{}.1.amd64fre.kdnet_sim.261130-0800\0", k.build);
            let at = k.sym("NtBuildLab")?;
            k.write(at, lab.as_bytes());
        }
        if k.has_sym("KeBootTime") {
            let at = k.sym("KeBootTime")?;
            k.w64(at, BOOT_TIME);
        }
        k.set(u, t, "KdDebuggerEnabled", 3)?;
        Ok(())
    }

    /// The kernel's own copies of what KUSER_SHARED_DATA publishes, where debuggers read them:
    /// nt!NtBuildNumber (the build, with 0xF in the top nibble of a free build, as Windows
    /// sets it), nt!NtBuildLabEx, and nt!PsInitialSystemProcess (the System process, where a
    /// process walk starts).
    pub(super) fn write_kernel_globals(&mut self) -> Result<(), SimError> {
        let k = &mut self.k;
        if k.has_sym("NtBuildNumber") {
            let at = k.sym("NtBuildNumber")?;
            k.w32(at, 0xF000_0000 | k.build);
        }
        if k.has_sym("NtBuildLabEx") {
            // The lab string with the revision, as the image's version resource has it.
            let rev = crate::layout::file_version(k.build)[3];
            let lab = format!("{}.{rev}.amd64fre.kdnet_sim.261130-0800\0", k.build);
            let at = k.sym("NtBuildLabEx")?;
            k.write(at, lab.as_bytes());
        }
        // The system-call entry points LSTAR and CSTAR hold.
        self.syscall_entries = (k.sym("KiSystemCall64").ok(), k.sym("KiSystemCall32").ok());
        if k.has_sym("PsInitialSystemProcess")
            && let Some(system) = self.processes.iter().find(|p| p.pid == 4)
        {
            let at = self.k.sym("PsInitialSystemProcess")?;
            self.k.w64(at, system.eprocess);
        }
        Ok(())
    }

    /// Advances KUSER_SHARED_DATA's tick count to `tick`.
    pub fn set_tick(k: &mut Kernel, tick: u64) -> Result<(), SimError> {
        let u = KUSER_SHARED_DATA;
        let t = "_KUSER_SHARED_DATA";
        if k.has(t, "TickCountQuad") {
            k.set(u, t, "TickCountQuad", tick)?;
        }
        k.set(u, t, "TickCount.LowPart", tick & 0xffff_ffff)?;
        k.set(u, t, "TickCount.High1Time", tick >> 32)?;
        k.set(u, t, "TickCount.High2Time", tick >> 32)?;
        let interrupt = tick * MAXIMUM_INCREMENT;
        k.set(u, t, "InterruptTime.LowPart", interrupt & 0xffff_ffff)?;
        k.set(u, t, "InterruptTime.High1Time", interrupt >> 32)?;
        k.set(u, t, "InterruptTime.High2Time", interrupt >> 32)?;
        // The wall clock: booted at BOOT_TIME, UTC (no time-zone bias).
        let system = BOOT_TIME + interrupt;
        k.set(u, t, "SystemTime.LowPart", system & 0xffff_ffff)?;
        k.set(u, t, "SystemTime.High1Time", system >> 32)?;
        k.set(u, t, "SystemTime.High2Time", system >> 32)?;
        Ok(())
    }
}
