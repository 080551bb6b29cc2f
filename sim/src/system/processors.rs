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
        // Where the builds have one, the ready queue the processors share.
        let shared = if self.k.has("_KPRCB", "SharedReadyQueue") {
            let size = self.k.size("_KSHARED_READY_QUEUE")?;
            let q = self.pool.alloc(
                &mut self.k,
                crate::pool::PoolKind::NonPaged,
                size,
                crate::pool::tag("KiSr"),
            )?;
            let heads = q + self.k.off("_KSHARED_READY_QUEUE", "ReadyListHead")?;
            for p in 0..32 {
                self.k.list_init(heads + 16 * p);
            }
            Some(q)
        } else {
            None
        };
        self.shared_ready_queue = shared;
        for i in 0..count {
            let size = self.k.size("_KPCR")?;
            let kpcr = self.k.alloc_region(Region::Pcr, size, PAGE)?;
            let prcb = kpcr + self.k.off("_KPCR", "Prcb")?;
            // The processor's descriptor tables and task state: the GDT, the IDT (a page: 256
            // 16-byte gates) and the TSS, each on its own page.
            let tables = self.k.alloc_region(Region::Pcr, 3 * PAGE, PAGE)?;
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
            k.set(kpcr, "_KPCR", "GdtBase", tables)?;
            k.set(kpcr, "_KPCR", "IdtBase", tables + PAGE)?;
            k.set(kpcr, "_KPCR", "TssBase", tables + 2 * PAGE)?;
            // What the processor has done since boot (ticks, interrupts).
            let n = u64::from(i);
            for (field, v) in [
                ("InterruptCount", 0x4_b3f1 + 0x1_1d3 * n),
                ("DpcTime", 0x79 + 7 * n),
                ("InterruptTime", 0x3e + 3 * n),
                ("KernelTime", 0x1_d4a2 + 0x2_03f * n),
                ("UserTime", 0x3a0f + 0x1_11 * n),
            ] {
                if k.has("_KPRCB", field) {
                    k.set(prcb, "_KPRCB", field, v)?;
                }
            }
            if let Some(q) = shared {
                k.set(prcb, "_KPRCB", "SharedReadyQueue", q)?;
            }
            k.set(prcb, "_KPRCB", "Number", u64::from(i))?;
            k.set(prcb, "_KPRCB", "IdleThread", self.threads[idle].ethread)?;
            k.set(prcb, "_KPRCB", "CurrentThread", self.threads[idle].ethread)?;
            k.w64(block + 8 * u64::from(i), prcb);
            // Empty ready lists at every priority; empty DPC queues.
            let ready = prcb + k.off("_KPRCB", "DispatcherReadyListHead")?;
            for p in 0..32 {
                k.list_init(ready + 16 * p);
            }
            if k.has("_KDPC_DATA", "DpcListHead") {
                let data = prcb + k.off("_KPRCB", "DpcData")?;
                let size = k.size("_KDPC_DATA")?;
                let head = k.off("_KDPC_DATA", "DpcListHead")?;
                for d in 0..2 {
                    k.list_init(data + d * size + head);
                }
            }
            self.cpus.push(CpuRec {
                kpcr,
                prcb,
                tables,
                idle,
                current: idle,
            });
        }
        Ok(())
    }

    /// Links a ready thread into the ready list of its priority: its processor's, or with
    /// `shared` the queue the processors share (where the build has one).
    pub fn make_ready(
        &mut self,
        thread: usize,
        priority: u8,
        shared: bool,
    ) -> Result<(), SimError> {
        let cpu = usize::from(self.threads[thread].cpu);
        let et = self.threads[thread].ethread;
        let (summary, heads) = match (shared, self.shared_ready_queue) {
            (true, Some(q)) => (
                q + self.k.off("_KSHARED_READY_QUEUE", "ReadySummary")?,
                q + self.k.off("_KSHARED_READY_QUEUE", "ReadyListHead")?,
            ),
            (true, None) => {
                return Err(SimError::Config(
                    "this build has no shared ready queue".into(),
                ));
            }
            (false, _) => {
                let prcb = self.cpus[cpu].prcb;
                (
                    prcb + self.k.off("_KPRCB", "ReadySummary")?,
                    prcb + self.k.off("_KPRCB", "DispatcherReadyListHead")?,
                )
            }
        };
        let p = u64::from(priority.min(31));
        self.k.set(et, "_ETHREAD", "Tcb.Priority", p)?;
        self.k
            .set(et, "_ETHREAD", "Tcb.State", ThreadState::Ready.value())?;
        let link = et + self.k.off("_ETHREAD", "Tcb.WaitListEntry")?;
        self.k.list_append(heads + 16 * p, link);
        let s = self.k.r32(summary);
        self.k.w32(summary, s | 1 << p);
        Ok(())
    }

    /// A DPC object (`_KDPC`) for `routine` with `context`, queued on processor `cpu`'s normal or
    /// threaded DPC queue (at its tail); returns it.
    pub fn queue_dpc(
        &mut self,
        cpu: usize,
        threaded: bool,
        routine: &str,
        context: u64,
    ) -> Result<u64, SimError> {
        let size = self.k.size("_KDPC")?;
        let dpc = self.pool.alloc(
            &mut self.k,
            crate::pool::PoolKind::NonPaged,
            size,
            crate::pool::tag("Dpc "),
        )?;
        let routine = self.routine(routine)?;
        let prcb = self.cpus[cpu].prcb;
        let data_size = self.k.size("_KDPC_DATA")?;
        let data = prcb + self.k.off("_KPRCB", "DpcData")? + u64::from(threaded) * data_size;
        let k = &mut self.k;
        // DpcObject 0x13, ThreadedDpcObject 0x1a; medium importance.
        k.set(dpc, "_KDPC", "Type", if threaded { 0x1a } else { 0x13 })?;
        k.set(dpc, "_KDPC", "Importance", 1)?;
        k.set(dpc, "_KDPC", "DeferredRoutine", routine)?;
        k.set(dpc, "_KDPC", "DeferredContext", context)?;
        k.set(dpc, "_KDPC", "DpcData", data)?;
        let link = dpc + k.off("_KDPC", "DpcListEntry")?;
        if k.has("_KDPC_DATA", "DpcListHead") {
            // A doubly linked list (7601).
            k.list_append(data + k.off("_KDPC_DATA", "DpcListHead")?, link);
        } else {
            // A singly linked list with a pointer to its last entry.
            let head = data + k.off("_KDPC_DATA", "DpcList.ListHead")?;
            let last_at = data + k.off("_KDPC_DATA", "DpcList.LastEntry")?;
            let last = k.r64(last_at);
            k.w64(link, 0);
            if last == 0 || k.r64(head) == 0 {
                k.w64(head, link);
            } else {
                k.w64(last, link);
            }
            k.w64(last_at, link);
        }
        let depth = k.get(data, "_KDPC_DATA", "DpcQueueDepth")?;
        k.set(data, "_KDPC_DATA", "DpcQueueDepth", depth + 1)?;
        let count = k.get(data, "_KDPC_DATA", "DpcCount")?;
        k.set(data, "_KDPC_DATA", "DpcCount", count + 1)?;
        Ok(dpc)
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
        let gdt = self.cpus.get(cpu).map_or(0, |c| c.tables);
        put(&mut s, SPECIAL_GDTR_BASE, gdt);
        s[SPECIAL_GDTR_LIMIT..SPECIAL_GDTR_LIMIT + 2].copy_from_slice(&0x57u16.to_le_bytes());
        put(&mut s, SPECIAL_IDTR_BASE, gdt + PAGE);
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
