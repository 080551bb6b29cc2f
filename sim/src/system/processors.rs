//! Processors: KPCR/KPRCB, idle threads, special registers and the saved state at a break-in.

use kdnet::api::context::{
    CONTEXT_LEN, SPECIAL_CR0, SPECIAL_CR3, SPECIAL_CR4, SPECIAL_GDTR_BASE, SPECIAL_GDTR_LIMIT,
    SPECIAL_IDTR_BASE, SPECIAL_IDTR_LIMIT,
};

use crate::SimError;
use crate::kernel::Region;
use crate::mem::PAGE;

use super::{CpuRec, System, ThreadState, call};

impl System {
    /// Creates the processors with their idle threads (in the Idle process).
    pub fn processors(&mut self, count: u16) -> Result<(), SimError> {
        let idle_proc = self
            .processes
            .iter()
            .position(|p| p.pid == 0)
            .ok_or_else(|| SimError::Config("no Idle process".into()))?;
        let block = self.k.sym("KiProcessorBlock")?;
        for i in 0..count {
            let size = self.k.size("_KPCR")?;
            let kpcr = self.k.alloc_region(Region::Pcr, size, PAGE)?;
            let prcb = kpcr + self.k.off("_KPCR", "Prcb")?;
            let idle = self.new_thread(
                idle_proc,
                "nt!KiIdleLoop",
                &[call("nt!PoIdle+0x33a"), call("nt!KiIdleLoop+0x9e")],
                ThreadState::Running,
                i,
            )?;
            let k = &mut self.k;
            k.set(kpcr, "_KPCR", "Self", kpcr)?;
            k.set(kpcr, "_KPCR", "CurrentPrcb", prcb)?;
            k.set(prcb, "_KPRCB", "Number", u64::from(i))?;
            k.set(prcb, "_KPRCB", "IdleThread", self.threads[idle].ethread)?;
            k.set(prcb, "_KPRCB", "CurrentThread", self.threads[idle].ethread)?;
            k.w64(block + 8 * u64::from(i), prcb);
            self.cpus.push(CpuRec {
                kpcr,
                prcb,
                idle,
                current: idle,
            });
        }
        Ok(())
    }

    /// Makes `thread` the one running on its processor.
    pub fn set_running(&mut self, thread: usize) -> Result<(), SimError> {
        let cpu = usize::from(self.threads[thread].cpu);
        let prcb = self.cpus[cpu].prcb;
        let et = self.threads[thread].ethread;
        self.k.set(prcb, "_KPRCB", "CurrentThread", et)?;
        self.cpus[cpu].current = thread;
        Ok(())
    }

    /// The special registers of a processor (KSPECIAL_REGISTERS bytes).
    pub fn special_registers(&self, cpu: usize) -> Vec<u8> {
        let mut s = vec![0u8; 0xF0];
        let put = |s: &mut Vec<u8>, o: usize, v: u64| s[o..o + 8].copy_from_slice(&v.to_le_bytes());
        put(&mut s, SPECIAL_CR0, 0x8005_0033);
        put(&mut s, SPECIAL_CR3, self.k.space.cr3);
        put(&mut s, SPECIAL_CR4, 0x0035_06f8);
        let gdt = self.cpus.get(cpu).map_or(0, |c| c.kpcr + 0x1000);
        put(&mut s, SPECIAL_GDTR_BASE, gdt);
        s[SPECIAL_GDTR_LIMIT..SPECIAL_GDTR_LIMIT + 2].copy_from_slice(&0x57u16.to_le_bytes());
        put(&mut s, SPECIAL_IDTR_BASE, gdt + 0x1000);
        s[SPECIAL_IDTR_LIMIT..SPECIAL_IDTR_LIMIT + 2].copy_from_slice(&0xfffu16.to_le_bytes());
        if let Some(c) = self.cpus.get(cpu) {
            put(&mut s, 0xA8, c.kpcr);
        }
        put(&mut s, 0xD8, 7);
        s
    }

    /// Writes each processor's saved state into its KPRCB (as at a break-in).
    pub(super) fn write_processor_state(&mut self) -> Result<(), SimError> {
        for cpu in 0..self.cpus.len() {
            let prcb = self.cpus[cpu].prcb;
            let special = self.special_registers(cpu);
            let sr = prcb + self.k.off("_KPRCB", "ProcessorState.SpecialRegisters")?;
            let sr_size = self.k.size("_KSPECIAL_REGISTERS")? as usize;
            self.k.write(sr, &special[..sr_size.min(special.len())]);
            let ctx = prcb + self.k.off("_KPRCB", "ProcessorState.ContextFrame")?;
            let cur = self.cpus[cpu].current;
            let bytes = self.threads[cur].context.as_bytes().to_vec();
            self.k.write(ctx, &bytes[..CONTEXT_LEN]);
        }
        Ok(())
    }
}
