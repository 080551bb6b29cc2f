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
            let q = self.alloc_object("_KSHARED_READY_QUEUE", "KiSr")?;
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
            // Every list of the timer table empty.
            let (entries, entry_size, sets) = timer_lists(k, prcb)?;
            let list = k.off("_KTIMER_TABLE_ENTRY", "Entry")?;
            for e in 0..256 * sets {
                k.list_init(entries + e * entry_size + list);
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
        for cpu in 0..self.cpus.len() {
            self.fill_idt(cpu)?;
        }
        Ok(())
    }

    /// Processor `cpu`'s IDT: the architectural exceptions and the kernel's software
    /// interrupts (the routines each build has), device vectors through `KiIsrThunk`, the
    /// clock's interrupt object on every processor and the NIC's on processor 0, and the
    /// interrupt stacks the TSS holds for the NMI, the double fault and the machine check.
    fn fill_idt(&mut self, cpu: usize) -> Result<(), SimError> {
        // (vector, handler, IST index, DPL)
        const GATES: [(u8, &str, u8, u8); 26] = [
            (0x00, "KiDivideErrorFault", 0, 0),
            (0x01, "KiDebugTrapOrFault", 0, 0),
            (0x02, "KiNmiInterrupt", 3, 0),
            (0x03, "KiBreakpointTrap", 0, 3),
            (0x04, "KiOverflowTrap", 0, 3),
            (0x05, "KiBoundFault", 0, 0),
            (0x06, "KiInvalidOpcodeFault", 0, 0),
            (0x07, "KiNpxNotAvailableFault", 0, 0),
            (0x08, "KiDoubleFaultAbort", 1, 0),
            (0x09, "KiNpxSegmentOverrunAbort", 0, 0),
            (0x0a, "KiInvalidTssFault", 0, 0),
            (0x0b, "KiSegmentNotPresentFault", 0, 0),
            (0x0c, "KiStackFault", 0, 0),
            (0x0d, "KiGeneralProtectionFault", 0, 0),
            (0x0e, "KiPageFault", 0, 0),
            (0x10, "KiFloatingErrorFault", 0, 0),
            (0x11, "KiAlignmentFault", 0, 0),
            (0x12, "KiMcheckAbort", 2, 0),
            (0x13, "KiXmmException", 0, 0),
            (0x14, "KiVirtualizationException", 0, 0),
            (0x15, "KiControlProtectionFault", 0, 0),
            (0x1f, "KiApcInterrupt", 0, 0),
            (0x29, "KiRaiseSecurityCheckFailure", 0, 3),
            (0x2c, "KiRaiseAssertion", 0, 3),
            (0x2d, "KiDebugServiceTrap", 0, 3),
            (0x2f, "KiDpcInterrupt", 0, 0),
        ];
        let (idt, tss) = (
            self.cpus[cpu].tables + PAGE,
            self.cpus[cpu].tables + 2 * PAGE,
        );
        let gate = |k: &mut crate::kernel::Kernel, v: u8, handler: u64, ist: u8, dpl: u8| {
            let mut g = [0u8; 16];
            g[0..2].copy_from_slice(&(handler as u16).to_le_bytes());
            g[2..4].copy_from_slice(&0x10u16.to_le_bytes());
            g[4] = ist;
            // Present, the privilege, a 64-bit interrupt gate.
            g[5] = 0x80 | dpl << 5 | 0xe;
            g[6..8].copy_from_slice(&((handler >> 16) as u16).to_le_bytes());
            g[8..12].copy_from_slice(&((handler >> 32) as u32).to_le_bytes());
            k.write(idt + 16 * u64::from(v), &g);
        };
        for (v, name, ist, dpl) in GATES {
            if self.k.has_sym(name) {
                let (h, _) = self.function("nt", name)?;
                gate(&mut self.k, v, h, ist, dpl);
            }
        }
        let ipi = self.function("nt", "KiIpiInterrupt")?.0;
        gate(&mut self.k, 0xe1, ipi, 0, 0);
        // Device vectors: each through its stub in KiIsrThunk.
        let thunk = self.k.sym("KiIsrThunk")?;
        for v in [0x80u8, 0xd1] {
            gate(&mut self.k, v, thunk + 8 * u64::from(v - 0x30), 0, 0);
        }
        // The interrupt stacks (IST 1 double fault, 2 machine check, 3 NMI), a page each in
        // the processor's region.
        let ist_at = tss + self.k.off("_KTSS64", "Ist")?;
        for i in 1..=3u64 {
            let stack = self.k.alloc_region(Region::Pcr, PAGE, PAGE)? + PAGE;
            self.k.w64(ist_at + 8 * i, stack);
        }
        // Interrupt objects: the clock's on every processor, the NIC's on processor 0.
        let mut connect = vec![(0xd1u8, "hal!HalpTimerClockInterrupt", 0xdu64)];
        if cpu == 0 {
            connect.push((0x80, "myeth1g!MyEthIsr", 0x8));
        }
        for (v, routine, irql) in connect {
            let obj = self.alloc_object("_KINTERRUPT", "Intr")?;
            let routine = self.routine(routine)?;
            let k = &mut self.k;
            let ty = k.enum_value("_KOBJECTS", "InterruptObject")? as u64;
            k.set(obj, "_KINTERRUPT", "Type", ty)?;
            k.set(obj, "_KINTERRUPT", "ServiceRoutine", routine)?;
            k.set(obj, "_KINTERRUPT", "ServiceContext", obj)?;
            k.set(obj, "_KINTERRUPT", "Vector", u64::from(v))?;
            k.set(obj, "_KINTERRUPT", "Irql", irql)?;
            let link = obj + k.off("_KINTERRUPT", "InterruptListEntry")?;
            k.list_init(link);
            let slot = self.cpus[cpu].prcb + k.off("_KPRCB", "InterruptObject")? + 8 * u64::from(v);
            k.w64(slot, obj);
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
        let dpc = self.timer_dpc(routine, context)?;
        let prcb = self.cpus[cpu].prcb;
        let data_size = self.k.size("_KDPC_DATA")?;
        let data = prcb + self.k.off("_KPRCB", "DpcData")? + u64::from(threaded) * data_size;
        let k = &mut self.k;
        // DpcObject 0x13, ThreadedDpcObject 0x1a.
        if threaded {
            k.set(dpc, "_KDPC", "Type", 0x1a)?;
        }
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

    /// Sets the KTIMER at `timer` to fire `due_ms` milliseconds from the machine's build time
    /// (negative: already due, left in its list as a halted processor leaves it), every
    /// `period_ms` after that (0: once), queuing `dpc` (0: none, a timer a thread waits on),
    /// and inserts it in processor `cpu`'s timer table: the list its due time over the clock
    /// increment selects, in set `set` where the table has two. Its Dpc is stored encoded
    /// with KiWaitNever, KiWaitAlways and its own address, as the kernel stores it. Returns
    /// its due time (interrupt time, 100 ns).
    #[allow(clippy::too_many_arguments)]
    pub fn set_timer(
        &mut self,
        timer: u64,
        cpu: usize,
        set: u64,
        due_ms: i64,
        period_ms: u32,
        dpc: u64,
        notification: bool,
    ) -> Result<u64, SimError> {
        let now = self.now_tick * super::MAXIMUM_INCREMENT;
        let due = now.saturating_add_signed(due_ms * 10_000);
        let (never, always) = (self.wait_never, self.wait_always);
        let prcb = self.cpus[cpu].prcb;
        let k = &mut self.k;
        let kind = if notification {
            "TimerNotificationObject"
        } else {
            "TimerSynchronizationObject"
        };
        let ty = k.enum_value("_KOBJECTS", kind)? as u64;
        k.set(timer, "_KTIMER", "Header.Type", ty)?;
        let head = timer + k.off("_KTIMER", "Header.WaitListHead")?;
        if k.r64(head) == 0 {
            k.list_init(head);
        }
        k.set(timer, "_KTIMER", "DueTime.QuadPart", due)?;
        k.set(timer, "_KTIMER", "Period", u64::from(period_ms))?;
        if k.has("_KTIMER", "Processor") {
            k.set(timer, "_KTIMER", "Processor", cpu as u64)?;
        }
        let encoded = super::kdbg::encode_kdbg_word(dpc, never, always, timer);
        k.set(timer, "_KTIMER", "Dpc", encoded)?;
        let (entries, entry_size, sets) = timer_lists(k, prcb)?;
        let index = (due / super::MAXIMUM_INCREMENT) % 256 + 256 * set.min(sets - 1);
        let entry = entries + index * entry_size;
        let list = entry + k.off("_KTIMER_TABLE_ENTRY", "Entry")?;
        if k.r64(list) == 0 {
            k.list_init(list);
        }
        // The list's earliest due time.
        let time_at = entry + k.off("_KTIMER_TABLE_ENTRY", "Time")?;
        if k.r64(list) == list || due < k.r64(time_at) {
            k.w64(time_at, due);
        }
        k.list_append(list, timer + k.off("_KTIMER", "TimerListEntry")?);
        Ok(due)
    }

    /// A DPC (not queued; medium importance) for `routine` with `context`, for a timer or a
    /// queue; returns it.
    pub fn timer_dpc(&mut self, routine: &str, context: u64) -> Result<u64, SimError> {
        let dpc = self.alloc_object("_KDPC", "Dpc ")?;
        let routine = self.routine(routine)?;
        self.k.set(dpc, "_KDPC", "Type", 0x13)?;
        self.k.set(dpc, "_KDPC", "Importance", 1)?;
        self.k.set(dpc, "_KDPC", "DeferredRoutine", routine)?;
        self.k.set(dpc, "_KDPC", "DeferredContext", context)?;
        Ok(dpc)
    }

    /// A zeroed `ty` in nonpaged pool with pool tag `tag`; returns it.
    pub fn alloc_object(&mut self, ty: &str, tag: &str) -> Result<u64, SimError> {
        let size = self.k.size(ty)?;
        self.pool.alloc(
            &mut self.k,
            crate::pool::PoolKind::NonPaged,
            size,
            crate::pool::tag(tag),
        )
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

/// A processor's timer lists: (the first `_KTIMER_TABLE_ENTRY`, its size, sets of 256).
fn timer_lists(k: &crate::kernel::Kernel, prcb: u64) -> Result<(u64, u64, u64), SimError> {
    let table = prcb + k.off("_KPRCB", "TimerTable")?;
    let at = k.off("_KTIMER_TABLE", "TimerEntries")?;
    let entry_size = k.size("_KTIMER_TABLE_ENTRY")?;
    // TimerEntries is [256] or [2][256] (then followed by the table's state).
    let sets = if k.size("_KTIMER_TABLE")? >= at + 512 * entry_size {
        2
    } else {
        1
    };
    Ok((table + at, entry_size, sets))
}
