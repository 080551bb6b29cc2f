//! KUSER_SHARED_DATA: the tick count, interrupt time and version the kernel publishes.

use crate::SimError;
use crate::kernel::{KUSER_SHARED_DATA, Kernel};

use super::{MAXIMUM_INCREMENT, System};

impl System {
    pub(super) fn write_kuser(&mut self) -> Result<(), SimError> {
        let k = &mut self.k;
        let u = KUSER_SHARED_DATA;
        let t = "_KUSER_SHARED_DATA";
        k.set(u, t, "TickCountMultiplier", 0x0fa0_0000)?;
        let tick = self.now_tick;
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
        k.set(u, t, "NtMajorVersion", if k.build < 9200 { 6 } else { 10 })?;
        k.set(u, t, "NtMinorVersion", if k.build < 9200 { 1 } else { 0 })?;
        if k.has(t, "NtBuildNumber") {
            let b = u64::from(k.build);
            k.set(u, t, "NtBuildNumber", b)?;
        }
        k.set(u, t, "NtProductType", 3)?;
        k.set(u, t, "KdDebuggerEnabled", 3)?;
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
        Ok(())
    }
}
