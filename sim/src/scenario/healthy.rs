//! Healthy: busy but fine.

use crate::SimError;
use crate::system::{System, ThreadState};

use super::base::Base;
use super::stacks::stack;

pub(super) fn healthy(sys: &mut System, base: &Base) -> Result<(), SimError> {
    // Busy: a worker running on processor 1, a short shared hold with no waiters.
    if sys.cpus.len() > 1 {
        let calls = stack(&[
            "Ntfs!NtfsCommonRead+0x1d4",
            "Ntfs!NtfsFsdRead+0x1dc",
            "nt!IofCallDriver+0x55",
            "nt!ExpWorkerThread+0x105",
            "nt!PspSystemThreadStartup+0x55",
            "nt!KiStartSystemThread+0x28",
        ]);
        let t = sys.new_thread(
            base.system,
            "nt!ExpWorkerThread",
            &calls,
            ThreadState::Running,
            1,
        )?;
        sys.set_running(t)?;
        let r = sys.resource()?;
        sys.own_shared(r, &[t])?;
    }
    Ok(())
}
