//! Threads: ETHREAD objects, their unwindable kernel stacks and their waits.

use kdnet::api::{Context, Reg};

use crate::SimError;
use crate::image::{Frame, Gpr};
use crate::kernel::Region;
use crate::mem::PAGE;
use crate::pool::{PoolKind, tag};

use super::{Call, Interrupted, System, TICKS_PER_SECOND, ThreadRec, ThreadState, call};

/// A frame as laid out: the call, its function's address, its unwind data, its body RSP.
type LaidFrame = (Call, u64, Frame, u64);

impl System {
    /// Creates a thread in `process` whose stack holds `calls` (innermost first; a waiting or
    /// ready thread's first frame must be `nt!KiSwapContext`). `start` is its start routine.
    pub fn new_thread(
        &mut self,
        process: usize,
        start: &str,
        calls: &[Call],
        state: ThreadState,
        cpu: u16,
    ) -> Result<usize, SimError> {
        let tid = self.next_tid;
        self.next_tid += 4 * (1 + self.rng.below(3));
        let size = self.k.size("_ETHREAD")?;
        let header = self.k.off("_OBJECT_HEADER", "Body")?;
        let obj = self
            .pool
            .alloc(&mut self.k, PoolKind::NonPaged, header + size, tag("Thre"))?;
        let et = obj + header;
        self.stamp(et, "Thread")?;
        self.k.set(obj, "_OBJECT_HEADER", "PointerCount", 3)?;
        // A 24 KB kernel stack with a guard page below it.
        self.k.reserve_region(Region::Stacks, PAGE, PAGE);
        let limit = self.k.alloc_region(Region::Stacks, 6 * PAGE, PAGE)?;
        let base = limit + 6 * PAGE;
        let initial = base - 0x1d0;
        let (ep, pid) = (
            self.processes[process].eprocess,
            self.processes[process].pid,
        );
        let start_va = {
            let c = call(start);
            self.function(&c.module, &c.function)?.0
        };
        // Lay the frames out from the top of the stack down.
        let (frames, ret_value) = self.lay_out_frames(et, initial, calls)?;
        let rsp0 = frames.first().map_or(initial - 0x40, |f| f.3);
        let (context, kernel_stack) = self.initial_context(et, rsp0, ret_value, state)?;
        let k = &mut self.k;
        k.set(et, "_ETHREAD", "Tcb.Header.Type", 6)?;
        k.set(
            et,
            "_ETHREAD",
            "Tcb.Header.Size",
            (k.size("_KTHREAD")? / 4).min(0xff),
        )?;
        k.list_init(et + k.off("_ETHREAD", "Tcb.Header.WaitListHead")?);
        // The kernel-mode and user-mode APC lists, empty.
        let apcs = et + k.off("_ETHREAD", "Tcb.ApcState.ApcListHead")?;
        k.list_init(apcs);
        k.list_init(apcs + 0x10);
        k.set(et, "_ETHREAD", "Tcb.State", state.value())?;
        k.set(et, "_ETHREAD", "Tcb.InitialStack", initial)?;
        k.set(et, "_ETHREAD", "Tcb.StackLimit", limit)?;
        k.set(et, "_ETHREAD", "Tcb.StackBase", base)?;
        k.set(et, "_ETHREAD", "Tcb.KernelStack", kernel_stack)?;
        k.set(et, "_ETHREAD", "Tcb.KernelStackResident", 1)?;
        k.set(et, "_ETHREAD", "Tcb.Process", ep)?;
        k.set(et, "_ETHREAD", "Tcb.ApcState.Process", ep)?;
        k.set(et, "_ETHREAD", "Tcb.NextProcessor", u64::from(cpu))?;
        k.set(et, "_ETHREAD", "Tcb.Priority", 12)?;
        k.set(et, "_ETHREAD", "Tcb.BasePriority", 12)?;
        k.set(
            et,
            "_ETHREAD",
            "Tcb.ContextSwitches",
            1000 + (tid * 37) % 90_000,
        )?;
        k.set(et, "_ETHREAD", "Tcb.KernelTime", 20 + tid % 500)?;
        if k.has("_ETHREAD", "Tcb.Running") && state == ThreadState::Running {
            k.set(et, "_ETHREAD", "Tcb.Running", 1)?;
        }
        k.set(et, "_ETHREAD", "Cid.UniqueProcess", pid)?;
        k.set(et, "_ETHREAD", "Cid.UniqueThread", tid)?;
        k.set(et, "_ETHREAD", "StartAddress", start_va)?;
        k.set(et, "_ETHREAD", "Win32StartAddress", start_va)?;
        k.list_init(et + k.off("_ETHREAD", "IrpList")?);
        let kp = ep + k.off("_EPROCESS", "Pcb.ThreadListHead")?;
        k.list_append(kp, et + k.off("_ETHREAD", "Tcb.ThreadListEntry")?);
        let eh = ep + k.off("_EPROCESS", "ThreadListHead")?;
        k.list_append(eh, et + k.off("_ETHREAD", "ThreadListEntry")?);
        let active = k.get(ep, "_EPROCESS", "ActiveThreads")?;
        k.set(ep, "_EPROCESS", "ActiveThreads", active + 1)?;
        self.threads.push(ThreadRec {
            ethread: et,
            process,
            tid,
            state,
            cpu,
            stack_base: base,
            stack_limit: limit,
            kernel_stack,
            frames: frames
                .iter()
                .map(|(c, va, _, rsp)| (c.clone(), *va, *rsp))
                .collect(),
            waits: Vec::new(),
            wait_tick: 0,
            context,
        });
        let idx = self.threads.len() - 1;
        self.processes[process].threads.push(idx);
        Ok(idx)
    }

    /// Lays out the frames of `calls` (innermost first) from `initial` down, writing return
    /// addresses and saved registers; returns each frame with its body RSP, and the return
    /// address (or current instruction) of the innermost one.
    fn lay_out_frames(
        &mut self,
        et: u64,
        initial: u64,
        calls: &[Call],
    ) -> Result<(Vec<LaidFrame>, u64), SimError> {
        let mut frames: Vec<LaidFrame> = Vec::new();
        for c in calls {
            let (va, f) = self.function(&c.module, &c.function)?;
            frames.push((c.clone(), va, f, 0));
        }
        let mut ret_slot = initial - 8;
        let mut ret_value = 0u64;
        let n = frames.len();
        for i in (0..n).rev() {
            let (c, va, f, _) = frames[i].clone();
            let rsp = if f.machine_frame {
                // An exception entry: the processor interrupted the frame above at
                // `ret_value`, aligned its stack pointer down to 16 bytes and pushed the
                // machine frame and an error code; RBP pushed and the allocation below make
                // the KTRAP_FRAME, whose address is this frame's body RSP.
                let interrupted = frames.get(i + 1).map(|x| x.3).ok_or_else(|| {
                    SimError::Config(format!("{} interrupts nothing", c.function))
                })?;
                let aligned = interrupted & !0xf;
                let trap = aligned - 0x30 - f.size_to_return();
                let machine = trap + f.size_to_return() + 8;
                self.k.w64(trap + f.size_to_return(), 0); // the error code
                self.k.w64(machine, ret_value);
                self.k.w64(machine + 8, 0x10);
                self.k.w64(machine + 0x10, 0x286);
                self.k.w64(machine + 0x18, interrupted);
                self.k.w64(machine + 0x20, 0x18);
                trap
            } else {
                self.k.w64(ret_slot, ret_value);
                ret_slot - f.size_to_return()
            };
            // Saved registers: recognisable values derived from the frame.
            for (j, r) in f.pushes.iter().enumerate() {
                let at = rsp + u64::from(f.alloc) + 8 * (f.pushes.len() - 1 - j) as u64;
                self.k.w64(at, saved_value(*r, et, rsp));
            }
            for (r, disp) in &f.saves {
                self.k.w64(rsp + u64::from(*disp), saved_value(*r, et, rsp));
            }
            let off = Self::clamp_offset(&f, c.offset);
            let (callva, module_index) = (va, self.module(&c.module).unwrap_or(0));
            frames[i].3 = rsp;
            ret_value = callva + u64::from(off);
            let rva = (ret_value - self.modules[module_index].image.base) as u32;
            if i > 0 && frames[i - 1].2.machine_frame {
                // Interrupted here: the faulting instruction, not a call.
                let image = &mut self.modules[module_index].image;
                match c.interrupted {
                    Some(Interrupted::Load(base, disp)) => image.add_load(rva, base, disp),
                    Some(Interrupted::Spin) => image.add_spin(rva),
                    None => image.add_instruction(rva),
                }
            } else if i > 0 {
                // The frame below returns here, from a call to the function of that frame.
                let callee = frames[i - 1].1;
                self.modules[module_index].image.add_call(rva, Some(callee));
                ret_slot = rsp - 8;
            } else {
                // Where the thread is: an instruction starts here (a spin loop where the
                // scenario says the running thread spins).
                let image = &mut self.modules[module_index].image;
                match c.interrupted {
                    Some(Interrupted::Spin) => image.add_spin(rva),
                    _ => image.add_instruction(rva),
                }
            }
        }
        Ok((frames, ret_value))
    }

    /// The thread's context and saved kernel stack pointer: a running thread's innermost
    /// frame, or the switch frame a waiting or ready thread left below it.
    fn initial_context(
        &mut self,
        et: u64,
        rsp0: u64,
        ret_value: u64,
        state: ThreadState,
    ) -> Result<(Context, u64), SimError> {
        let mut context = Context::new();
        context.set_reg(Reg::Rsp, rsp0);
        context.set_reg(Reg::Rip, ret_value);
        context.set_reg(Reg::Rbp, saved_value(Gpr::Rbp, et, rsp0));
        context.set_reg(Reg::Rbx, saved_value(Gpr::Rbx, et, rsp0));
        let kernel_stack = if state == ThreadState::Running {
            rsp0
        } else {
            // KSWITCH_FRAME: Rbp at +0x30, the return into KiSwapContext at +0x38, from its
            // call to the routine that switched stacks.
            let switcher = if self.k.has_sym("SwapContext") {
                Some(self.function("nt", "SwapContext")?.0)
            } else {
                None
            };
            if let Some(m) = self.modules.iter_mut().find(|m| {
                (m.image.base..m.image.base + u64::from(m.image.size)).contains(&ret_value)
            }) {
                let rva = (ret_value - m.image.base) as u32;
                m.image.add_call(rva, switcher);
            }
            let ks = rsp0 - 0x40;
            self.k.w64(
                ks + self.k.off("_KSWITCH_FRAME", "Rbp")?,
                saved_value(Gpr::Rbp, et, rsp0),
            );
            self.k
                .w64(ks + self.k.off("_KSWITCH_FRAME", "Return")?, ret_value);
            ks
        };
        Ok((context, kernel_stack))
    }

    /// The body RSP of a thread's frame in `function`.
    pub fn frame_rsp(&self, thread: usize, function: &str) -> Option<u64> {
        self.threads[thread]
            .frames
            .iter()
            .find(|(c, _, _)| c.function == function)
            .map(|(_, _, rsp)| *rsp)
    }

    /// Makes `value` what register `reg` holds in the thread's frame in `function` (while it
    /// calls the frame inside it), as a waiting thread's stack keeps it: in the save slot of the
    /// nearest frame inside that saves `reg` (the switch frame saves all of them). A running
    /// thread's innermost frame takes it from its context.
    pub fn set_frame_register(
        &mut self,
        thread: usize,
        function: &str,
        reg: Gpr,
        value: u64,
    ) -> Result<(), SimError> {
        let frames = self.threads[thread].frames.clone();
        let i = frames
            .iter()
            .position(|(c, _, _)| c.function == function)
            .ok_or_else(|| SimError::Config(format!("no frame in {function}")))?;
        for (c, _, rsp) in frames[..i].iter().rev() {
            let (_, f) = self.function(&c.module, &c.function)?;
            if let Some(j) = f.pushes.iter().position(|r| *r == reg) {
                let at = rsp + u64::from(f.alloc) + 8 * (f.pushes.len() - 1 - j) as u64;
                self.k.w64(at, value);
                return Ok(());
            }
            if let Some((_, disp)) = f.saves.iter().find(|(r, _)| *r == reg) {
                self.k.w64(rsp + u64::from(*disp), value);
                return Ok(());
            }
        }
        if self.threads[thread].state == ThreadState::Running && i == 0 {
            let r = Reg::from_number(reg as u8)
                .ok_or_else(|| SimError::Config(format!("no register {reg:?}")))?;
            self.threads[thread].context.set_reg(r, value);
            return Ok(());
        }
        Err(SimError::Config(format!(
            "no frame inside {function} saves {reg:?}"
        )))
    }

    /// Puts a thread into a wait on `objects` (WaitAny) for `reason` (a `_KWAIT_REASON`
    /// constant name), begun `seconds_ago`.
    pub fn wait(
        &mut self,
        thread: usize,
        objects: &[u64],
        reason: &str,
        seconds_ago: u64,
    ) -> Result<(), SimError> {
        let et = self.threads[thread].ethread;
        let reason_value = self.k.enum_value("_KWAIT_REASON", reason)? as u64;
        let active = self.k.enum_value("_KWAIT_BLOCK_STATE", "WaitBlockActive")? as u64;
        let wait_any = self
            .k
            .nt
            .enum_value("_WAIT_TYPE", "WaitAny")
            .map(|v| v as u64)
            .unwrap_or(1);
        let tick = self.now_tick.saturating_sub(seconds_ago * TICKS_PER_SECOND);
        let k = &mut self.k;
        k.set(et, "_ETHREAD", "Tcb.WaitReason", reason_value)?;
        k.set(et, "_ETHREAD", "Tcb.WaitMode", 0)?;
        k.set(et, "_ETHREAD", "Tcb.WaitIrql", 0)?;
        k.set(et, "_ETHREAD", "Tcb.WaitTime", tick)?;
        let wbsize = k.size("_KWAIT_BLOCK")?;
        let first = et + k.off("_ETHREAD", "Tcb.WaitBlock")?;
        k.set(et, "_ETHREAD", "Tcb.WaitBlockList", first)?;
        if k.has("_KTHREAD", "WaitBlockCount") {
            k.set(et, "_ETHREAD", "Tcb.WaitBlockCount", objects.len() as u64)?;
        }
        for (i, obj) in objects.iter().enumerate().take(3) {
            let wb = first + i as u64 * wbsize;
            k.set(wb, "_KWAIT_BLOCK", "Thread", et)?;
            k.set(wb, "_KWAIT_BLOCK", "Object", *obj)?;
            k.set(wb, "_KWAIT_BLOCK", "WaitKey", i as u64)?;
            k.set(wb, "_KWAIT_BLOCK", "WaitType", wait_any)?;
            k.set(wb, "_KWAIT_BLOCK", "BlockState", active)?;
            if k.has("_KWAIT_BLOCK", "NextWaitBlock") {
                let next = if i + 1 < objects.len().min(3) {
                    wb + wbsize
                } else {
                    first
                };
                k.set(wb, "_KWAIT_BLOCK", "NextWaitBlock", next)?;
            }
            let head = obj + k.off("_DISPATCHER_HEADER", "WaitListHead")?;
            k.list_append(head, wb + k.off("_KWAIT_BLOCK", "WaitListEntry")?);
        }
        let t = &mut self.threads[thread];
        t.waits = objects.to_vec();
        t.wait_tick = tick;
        Ok(())
    }

    fn clamp_offset(f: &Frame, offset: u32) -> u32 {
        let size = f.end - f.rva;
        // Past the prolog and room for a call through an import slot.
        let min = f.prolog_len() + 6;
        offset.clamp(
            min.min(size.saturating_sub(1)),
            size.saturating_sub(1).max(1),
        )
    }
}

/// A recognisable value for a saved register.
fn saved_value(r: Gpr, thread: u64, rsp: u64) -> u64 {
    match r {
        Gpr::Rbp => rsp + 0x80,
        Gpr::Rbx | Gpr::Rdi => thread,
        Gpr::Rsi => thread + 0x10,
        other => 0xffff_f000_0000_0000 | (other as u64) << 8 | (rsp & 0xfff),
    }
}
