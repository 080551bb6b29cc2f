//! The simulated machine as a KD target: memory through its page tables, control space,
//! contexts, and the stops and prints of a running kernel.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kdnet::api::{
    Context, ControlReport, Exception64, GetVersion64, Reg, StateChange64, StateEvent, status,
};
use kdnet::target::{Activity, Resume, StopReason, TargetHandler};

use crate::cpu::{Cpu, Step, TF};

use crate::scenario::{self, Facts};
use crate::system::{System, TICKS_PER_SECOND};
use crate::{SimConfig, SimError};

/// The most activity calls one poll runs (a poll comes every 20 ms: 40 calls at the
/// bindflt-race machine's 2,000 a second).
const MAX_CALLS_PER_POLL: u64 = 64;

/// What the machine does on its own over time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Running normally (before a delayed hang).
    Healthy,
    /// The scenario's condition is in place.
    Hung,
}

/// What a delayed scenario builds when its time comes.
type Built = Result<(System, Facts, GetVersion64), SimError>;
/// The builder of a delayed scenario.
type Later = Box<dyn FnOnce() -> Built + Send>;

/// A built machine, shareable between the KD target and whoever inspects it.
pub struct Machine {
    sys: System,
    /// The healthy variant, kept while a delayed hang has not begun.
    pending_hang: Option<(Instant, Later)>,
    version: GetVersion64,
    facts: Facts,
    config: SimConfig,
    /// Wall-clock time the machine (re)started running, and the tick it had then.
    running_since: Option<(Instant, u64)>,
    tick: u64,
    bugcheck_at: Option<Instant>,
    bugchecked: bool,
    prints: Vec<(Instant, String)>,
    next_heartbeat: Instant,
    phase: Phase,
    contexts: Vec<Context>,
    /// The machine's tick when its activity began (the scenario's phase started).
    activity_tick0: u64,
    /// Stopped inside an activity call: its processor, and the thread and context that
    /// processor had before, given back when the call goes on.
    in_call: Option<(usize, usize, Context)>,
    /// Dr7 the debugger last gave (Continue2).
    dr7: u64,
    /// DR0–DR3 of each processor, as the debugger last set them in its context.
    drs: Vec<[u64; 4]>,
    /// A single step asked for outside an activity call (after a break-in): reported at
    /// once, where the processor went back to.
    step_pending: bool,
    /// Processor 0's rcx before a break put DbgBreakPointWithStatus's status there.
    break_rcx: Option<u64>,
    /// Break-ins so far.
    break_ins: u64,
}

/// DbgBreakPointWithStatus's status for a break-in, and for a bugcheck's first break.
const DBG_STATUS_CONTROL_C: u64 = 1;
const DBG_STATUS_BUGCHECK_FIRST: u64 = 3;

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("build", &self.config.build)
            .field("scenario", &self.config.scenario)
            .finish()
    }
}

impl Machine {
    /// Builds the machine for `config`.
    pub fn build(config: SimConfig) -> Result<Machine, SimError> {
        let nt = crate::layout::load(config.build, &config.table)?;
        Machine::build_with_table(config, nt)
    }

    /// Builds the machine for `config` with an already loaded nt table (`config.table` is not
    /// read).
    pub fn build_with_table(
        config: SimConfig,
        nt: kdnet_symbols::TypeTable,
    ) -> Result<Machine, SimError> {
        let (sys, facts, version, pending_hang, phase) = match config.hang_after {
            Some(after) if config.scenario.can_delay() => {
                let mut healthy = config.clone();
                healthy.scenario = crate::Scenario::Healthy;
                let (sys, facts, version) = scenario::build_with_table(&healthy, nt.clone())?;
                let hung = config.clone();
                let build_hung: Later = Box::new(move || scenario::build_with_table(&hung, nt));
                // The healthy period starts once the machine is built, however long that took.
                (
                    sys,
                    facts,
                    version,
                    Some((Instant::now() + after, build_hung)),
                    Phase::Healthy,
                )
            }
            _ => {
                let (sys, facts, version) = scenario::build_with_table(&config, nt)?;
                (sys, facts, version, None, Phase::Hung)
            }
        };
        // The machine's clock (and the bugcheck's delay) start once it is built.
        let now = Instant::now();
        let contexts = (0..sys.cpus.len())
            .map(|c| sys.threads[sys.cpus[c].current].context.clone())
            .collect();
        let tick = sys.now_tick;
        let cpus_count = sys.cpus.len();
        let bugcheck_at = if config.scenario.bugchecks() {
            Some(now + config.bugcheck_after.unwrap_or(Duration::ZERO))
        } else {
            None
        };
        Ok(Machine {
            sys,
            pending_hang,
            version,
            facts,
            config,
            running_since: Some((now, tick)),
            tick,
            bugcheck_at,
            bugchecked: false,
            prints: Vec::new(),
            next_heartbeat: now + Duration::from_secs(1),
            phase,
            contexts,
            activity_tick0: tick,
            in_call: None,
            dr7: 0x400,
            drs: vec![[0; 4]; cpus_count],
            step_pending: false,
            break_rcx: None,
            break_ins: 0,
        })
    }

    /// What the scenario planted (for tests and benchmarks).
    pub fn facts(&self) -> &Facts {
        &self.facts
    }

    /// The system (memory, tables, records).
    pub fn system(&self) -> &System {
        &self.sys
    }

    /// The version block.
    pub fn version_block(&self) -> GetVersion64 {
        self.version
    }

    /// The phase.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// Stored memory, for the scale checks: (frames stored, bytes).
    pub fn memory_footprint(&self) -> (usize, u64) {
        let f = self.sys.k.mem.stored_frames();
        (f, f as u64 * 4096)
    }

    fn current_tick(&self) -> u64 {
        match self.running_since {
            Some((t, tick)) => tick + (t.elapsed().as_millis() as u64 * TICKS_PER_SECOND / 1000),
            None => self.tick,
        }
    }

    fn freeze_clock(&mut self) {
        self.tick = self.current_tick();
        self.running_since = None;
        let tick = self.tick;
        let _ = System::set_tick(&mut self.sys.k, tick);
    }

    fn maybe_start_hang(&mut self, now: Instant) {
        let due = self.pending_hang.as_ref().is_some_and(|(at, _)| now >= *at);
        if !due {
            return;
        }
        let Some((_, make)) = self.pending_hang.take() else {
            return;
        };
        match make() {
            Ok((sys, facts, version)) => {
                let tick = self.current_tick();
                self.sys = sys;
                self.facts = facts;
                self.version = version;
                self.contexts = (0..self.sys.cpus.len())
                    .map(|c| self.sys.threads[self.sys.cpus[c].current].context.clone())
                    .collect();
                self.running_since = Some((now, tick));
                self.activity_tick0 = tick;
                self.phase = Phase::Hung;
                for line in self.facts.prints_when_hung.clone() {
                    self.prints.push((now, line));
                }
            }
            Err(e) => tracing::warn!("the delayed scenario could not be built: {e}"),
        }
    }

    /// A break-in stops the processor in `DbgBreakPointWithStatus`, called from where it was
    /// interrupted, as Windows does (the clock interrupt polls for the break-in byte and calls
    /// it): the context's RIP is the break instruction the state change reports, and its
    /// return address on the stack is where the processor was. A processor already there (a
    /// debugger set it so) is left as it is.
    /// `status` is DbgBreakPointWithStatus's argument, in rcx at its int 3 (DBG_STATUS_CONTROL_C
    /// for a break-in, DBG_STATUS_BUGCHECK_FIRST for a bugcheck); the processor's own rcx
    /// comes back when it goes on.
    fn enter_break(&mut self, cpu: usize, status: u64) {
        let Ok(brk) = self.sys.k.sym("RtlpBreakWithStatusInstruction") else {
            return;
        };
        let Some(c) = self.contexts.get_mut(cpu) else {
            return;
        };
        let rip = c.reg(Reg::Rip);
        if rip == brk {
            return;
        }
        let rsp = c.reg(Reg::Rsp) - 8;
        self.sys.k.w64(rsp, rip);
        c.set_reg(Reg::Rsp, rsp);
        c.set_reg(Reg::Rip, brk);
        self.break_rcx = Some(c.reg(Reg::Rcx));
        c.set_reg(Reg::Rcx, status);
    }

    fn break_state(&self, cpu: u16, code: u32) -> StateChange64 {
        let pc = self
            .sys
            .k
            .sym("RtlpBreakWithStatusInstruction")
            .unwrap_or(self.version.kern_base);
        let thread = self
            .sys
            .cpus
            .get(usize::from(cpu))
            .map_or(0, |c| self.sys.threads[c.current].ethread);
        StateChange64 {
            new_state: 0x3030,
            processor_level: 6,
            processor: cpu,
            number_processors: self.sys.cpus.len() as u32,
            thread,
            program_counter: pc,
            event: StateEvent::Exception(Exception64 {
                code,
                flags: 0,
                record: 0,
                address: pc,
                parameters: vec![0],
                first_chance: true,
            }),
            control: ControlReport {
                dr6: 0xffff0ff0,
                dr7: 0x400,
                eflags: 0x202,
                instruction_count: 16,
                report_flags: 3,
                instruction_stream: [
                    0xcc, 0xc3, 0x0f, 0x1f, 0x40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ],
                seg_cs: 0x10,
                seg_ds: 0x2b,
                seg_es: 0x2b,
                seg_fs: 0x53,
            },
        }
    }

    fn space_for(&self, cpu: u16) -> crate::mem::Space {
        let Some(c) = self.sys.cpus.get(usize::from(cpu)) else {
            return self.sys.k.space;
        };
        let p = self.sys.threads[c.current].process;
        self.sys.processes[p].space
    }
}

/// DR0–DR3 of a CONTEXT.
fn debug_registers(c: &Context) -> [u64; 4] {
    let b = c.as_bytes();
    let mut dr = [0u64; 4];
    for (i, d) in dr.iter_mut().enumerate() {
        let o = 0x48 + 8 * i;
        *d = u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    }
    dr
}

fn context_of(cpu: &Cpu, like: &Context) -> Context {
    let mut c = like.clone();
    for (i, r) in Reg::ALL.iter().take(16).enumerate() {
        c.set_reg(*r, cpu.regs[i]);
    }
    c.set_reg(Reg::Rip, cpu.rip);
    // The trap flag is the debugger's, set for one instruction; the context shows the
    // program's flags.
    c.set_eflags((cpu.rflags & !TF) as u32);
    c
}

impl Machine {
    /// The activity's processor stopped inside a call: the opener thread becomes the one
    /// running on it, its registers the processor's context, and the report says why.
    fn call_stop(&mut self, step: Step) -> Option<StateChange64> {
        let a = self.sys.activity.as_ref()?;
        let cpu_state = a.cpu()?.clone();
        let (thread, cpu) = (a.thread(), usize::from(a.planted.cpu));
        let (code, dr6, params) = match step {
            Step::Breakpoint => (status::BREAKPOINT, 0xffff_0ff0, vec![0]),
            Step::Debug { dr6 } => (status::SINGLE_STEP, 0xffff_0ff0 | dr6, vec![]),
            Step::Ran => return None,
            Step::Fault(e) => {
                tracing::warn!("the simulated machine's activity stopped: {e}");
                return None;
            }
        };
        self.freeze_clock();
        if self.in_call.is_none() {
            let prev = (self.sys.cpus[cpu].current, self.contexts[cpu].clone());
            self.in_call = Some((cpu, prev.0, prev.1));
        }
        let _ = self.sys.set_running(thread);
        let ctx = context_of(&cpu_state, &self.contexts[cpu]);
        self.contexts[cpu] = ctx;
        let rip = cpu_state.rip;
        let mut stream = [0u8; 16];
        let n = self.sys.k.read(rip, &mut stream);
        let mut sc = self.break_state(cpu as u16, code);
        sc.program_counter = rip;
        sc.thread = self.sys.threads[thread].ethread;
        if let StateEvent::Exception(x) = &mut sc.event {
            x.address = rip;
            x.parameters = params;
        }
        sc.control.dr6 = dr6;
        sc.control.dr7 = cpu_state.dr7;
        sc.control.eflags = cpu_state.rflags as u32;
        sc.control.instruction_stream = stream;
        sc.control.instruction_count = n as u16;
        Some(sc)
    }

    /// Runs the activity that is due; a stop it met, if any.
    fn run_activity(&mut self) -> Option<StateChange64> {
        if self.phase != Phase::Hung {
            return None;
        }
        let now = self.current_tick();
        let elapsed = now.saturating_sub(self.activity_tick0);
        let a = self.sys.activity.as_ref()?;
        let rate = u64::from(a.planted.rate).max(1);
        let mut due = elapsed.saturating_mul(rate) / TICKS_PER_SECOND;
        // A machine that fell behind (a busy host) does not catch up: what is overdue beyond
        // one poll's worth is dropped, and each poll does a bounded amount.
        if due > a.started + MAX_CALLS_PER_POLL {
            let behind = due - a.started - MAX_CALLS_PER_POLL;
            self.activity_tick0 += behind * TICKS_PER_SECOND / rate;
            due = a.started + MAX_CALLS_PER_POLL;
        }
        self.run_activity_to(due)
    }

    fn run_activity_to(&mut self, due: u64) -> Option<StateChange64> {
        let cpu = usize::from(self.sys.activity.as_ref()?.planted.cpu);
        let dr = self.drs.get(cpu).copied().unwrap_or_default();
        let dr7 = self.dr7;
        let System { k, activity, .. } = &mut self.sys;
        match activity.as_mut()?.run(k, due, dr7, dr)? {
            crate::activity::Met::Step(step) => self.call_stop(step),
            crate::activity::Met::Module(load) => self.module_stop(load),
        }
    }

    /// The container driver loaded or unloaded: the loader's list says so, and the debugger is told as
    /// Windows tells it (a load-symbols state change from the processor that loaded it).
    fn module_stop(&mut self, load: bool) -> Option<StateChange64> {
        let a = self.sys.activity.as_ref()?;
        let (module, cpu, thread) = (a.planted.module, a.planted.cpu, a.thread());
        let (base, size, path) = match self.sys.set_module_loaded(module, load) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(
                    "the simulated module could not be {}: {e}",
                    if load { "loaded" } else { "unloaded" }
                );
                return None;
            }
        };
        self.freeze_clock();
        let mut sc = self.break_state(cpu, status::BREAKPOINT);
        sc.new_state = kdnet::api::state_change::STATE_LOAD_SYMBOLS;
        sc.thread = self.sys.threads[thread].ethread;
        let checksum = 0;
        sc.event = StateEvent::LoadSymbols(kdnet::api::LoadSymbols64 {
            base,
            process_id: 0,
            checksum,
            size,
            unload: !load,
            path,
        });
        Some(sc)
    }

    /// Runs `creates` more of the activity's calls now, whatever the clock says (tests): the
    /// stop met on the way, if any (the machine is then stopped in the debugger's sense; go on
    /// with [`TargetHandler::resumed_with`]).
    pub fn drive(&mut self, creates: u64) -> Option<StateChange64> {
        let started = self.sys.activity.as_ref()?.started;
        let sc = self.run_activity_to(started.saturating_add(creates));
        self.tick = self.current_tick();
        sc
    }

    /// The machine's activity (what its threads call while it runs).
    pub fn activity(&self) -> Option<&crate::activity::Activity> {
        self.sys.activity.as_ref()
    }
}

impl TargetHandler for Machine {
    fn version(&mut self) -> GetVersion64 {
        self.version
    }

    fn read_virtual(&mut self, processor: u16, address: u64, buf: &mut [u8]) -> usize {
        let space = self.space_for(processor);
        let mut done = 0;
        while done < buf.len() {
            let a = address.wrapping_add(done as u64);
            let n = (buf.len() - done).min((0x1000 - (a & 0xfff)) as usize);
            match space.translate(&self.sys.k.mem, a) {
                Ok(pa) => {
                    self.sys.k.mem.read(pa, &mut buf[done..done + n]);
                }
                Err(_) => break,
            }
            done += n;
        }
        done
    }

    fn write_virtual(&mut self, processor: u16, address: u64, data: &[u8]) -> usize {
        let space = self.space_for(processor);
        let mut done = 0;
        while done < data.len() {
            let a = address.wrapping_add(done as u64);
            let n = (data.len() - done).min((0x1000 - (a & 0xfff)) as usize);
            match space.translate(&self.sys.k.mem, a) {
                Ok(pa) => self.sys.k.mem.write(pa, &data[done..done + n]),
                Err(_) => break,
            }
            done += n;
        }
        done
    }

    fn read_physical(&mut self, address: u64, buf: &mut [u8]) -> usize {
        self.sys.k.mem.read(address, buf)
    }

    fn write_physical(&mut self, address: u64, data: &[u8]) -> usize {
        let end = self.sys.k.mem.ram_pages() * 0x1000;
        let n = (end.saturating_sub(address) as usize).min(data.len());
        self.sys.k.mem.write(address, &data[..n]);
        n
    }

    fn read_control_space(&mut self, processor: u16, index: u64, buf: &mut [u8]) -> Option<usize> {
        let c = self.sys.cpus.get(usize::from(processor))?;
        let bytes = match index {
            0 => c.kpcr.to_le_bytes().to_vec(),
            1 => c.prcb.to_le_bytes().to_vec(),
            2 => self.sys.special_registers(usize::from(processor)),
            3 => self.sys.threads[c.current].ethread.to_le_bytes().to_vec(),
            _ => return None,
        };
        let n = buf.len().min(bytes.len());
        buf[..n].copy_from_slice(&bytes[..n]);
        Some(n)
    }

    fn context(&mut self, processor: u16) -> Option<Context> {
        self.contexts.get(usize::from(processor)).cloned()
    }

    fn set_context(&mut self, processor: u16, context: &Context) -> bool {
        let p = usize::from(processor);
        match self.contexts.get_mut(p) {
            Some(c) => {
                *c = context.clone();
                if let Some(d) = self.drs.get_mut(p) {
                    *d = debug_registers(context);
                }
                true
            }
            None => false,
        }
    }

    fn read_msr(&mut self, processor: u16, msr: u32) -> Option<u64> {
        let c = self.sys.cpus.get(usize::from(processor))?;
        // What a running x64 Windows kernel leaves in the registers debuggers read.
        match msr {
            // EFER: SCE, LME, LMA, NXE.
            0xC000_0080 => Some(0xD01),
            // STAR: the kernel's and user mode's code selectors.
            0xC000_0081 => Some(0x0023_0010_0000_0000),
            0xC000_0082 => self.sys.syscall_entries.0,
            0xC000_0083 => self.sys.syscall_entries.1,
            // SFMASK: TF, IF, DF, IOPL, NT, AC cleared on a system call.
            0xC000_0084 => Some(0x4700),
            // FS base (user mode's; none in the kernel's view), GS base (the KPCR), and the
            // GS base swapped in on return to user mode (the current thread's TEB).
            0xC000_0100 => Some(0),
            0xC000_0101 => Some(c.kpcr),
            0xC000_0102 => {
                let t = self.sys.threads.get(c.current)?;
                self.sys.k.get(t.ethread, "_ETHREAD", "Tcb.Teb").ok()
            }
            0x1B => Some(0xFEE0_0900),
            _ => None,
        }
    }

    fn stop_report(&mut self, reason: StopReason) -> StateChange64 {
        self.freeze_clock();
        match reason {
            StopReason::BreakIn => {
                self.break_ins += 1;
                if let Some((code, _)) = self
                    .config
                    .bugcheck_at_break_in
                    .filter(|(_, n)| *n == self.break_ins && !self.bugchecked)
                {
                    // The bugcheck came in the instant the debugger broke in: its report is
                    // the one the debugger gets.
                    self.bugchecked = true;
                    let _ = scenario::write_bugcheck(&mut self.sys, code, [0, 0, 0, 0]);
                    self.enter_break(0, DBG_STATUS_BUGCHECK_FIRST);
                    return self.break_state(0, status::BREAKPOINT);
                }
                self.enter_break(0, DBG_STATUS_CONTROL_C);
                self.break_state(0, status::BREAKPOINT)
            }
            StopReason::SwitchProcessor(cpu) => self.break_state(cpu, status::WAKE_SYSTEM_DEBUGGER),
            StopReason::BugCheck(code) => {
                let _ = scenario::write_bugcheck(&mut self.sys, code, [0, 0, 0, 0]);
                self.break_state(0, status::BREAKPOINT)
            }
        }
    }

    fn resumed_with(&mut self, how: Resume) {
        if let Some(d) = how.dr7 {
            self.dr7 = d;
        }
        let Some((cpu, thread, ctx)) = self.in_call.take() else {
            self.resumed();
            self.step_pending = how.trace;
            return;
        };
        // The call goes on with the registers the debugger left, the trap flag as asked.
        self.running_since = Some((Instant::now(), self.tick));
        let c = self.contexts[cpu].clone();
        if let Some(a) = self.sys.activity.as_mut()
            && let Some(now) = a.cpu()
        {
            let mut next = now.clone();
            for (i, r) in Reg::ALL.iter().take(16).enumerate() {
                next.regs[i] = c.reg(*r);
            }
            next.rip = c.reg(Reg::Rip);
            next.rflags = u64::from(c.eflags()) & !TF;
            if how.trace {
                next.rflags |= TF;
            }
            next.dr7 = self.dr7;
            next.dr = self.drs.get(cpu).copied().unwrap_or_default();
            // Going on from a debug-register stop does not fire it again.
            next.resume = true;
            a.pending = Some(next);
        }
        let _ = self.sys.set_running(thread);
        self.sys.cpus[cpu].current = thread;
        self.contexts[cpu] = ctx;
    }

    fn resumed(&mut self) {
        self.running_since = Some((Instant::now(), self.tick));
        // Continuing past the break runs the int3's `ret`: back to where the processor was
        // interrupted, its stack as it was.
        let brk = self
            .sys
            .k
            .sym("RtlpBreakWithStatusInstruction")
            .unwrap_or(0);
        if let Some(c) = self.contexts.first_mut()
            && brk != 0
            && c.reg(Reg::Rip) == brk
        {
            let rsp = c.reg(Reg::Rsp);
            c.set_reg(Reg::Rip, self.sys.k.r64(rsp));
            c.set_reg(Reg::Rsp, rsp + 8);
            if let Some(rcx) = self.break_rcx.take() {
                c.set_reg(Reg::Rcx, rcx);
            }
        }
    }

    fn rebooted(&mut self) {
        match Machine::build(self.config.clone()) {
            Ok(m) => *self = m,
            Err(e) => tracing::warn!("the simulated machine could not be rebuilt: {e}"),
        }
    }

    fn poll(&mut self, now: Instant) -> Option<Activity> {
        self.maybe_start_hang(now);
        if std::mem::take(&mut self.step_pending) {
            self.freeze_clock();
            let mut sc = self.break_state(0, status::SINGLE_STEP);
            let rip = self.contexts.first().map_or(0, |c| c.reg(Reg::Rip));
            sc.program_counter = rip;
            if let StateEvent::Exception(x) = &mut sc.event {
                x.address = rip;
                x.parameters = vec![];
            }
            let mut stream = [0u8; 16];
            sc.control.instruction_count = self.sys.k.read(rip, &mut stream) as u16;
            sc.control.instruction_stream = stream;
            sc.control.dr6 = 0xffff_0ff0 | crate::cpu::DR6_BS;
            return Some(Activity::Stop(sc));
        }
        if let Some(sc) = self.run_activity() {
            return Some(Activity::Stop(sc));
        }
        if let Some(at) = self.bugcheck_at
            && !self.bugchecked
            && now >= at
        {
            self.bugchecked = true;
            self.freeze_clock();
            return Some(Activity::Stop(self.break_state(0, status::BREAKPOINT)));
        }
        if let Some(i) = self.prints.iter().position(|(t, _)| *t <= now) {
            let (_, line) = self.prints.remove(i);
            return Some(Activity::Print(line));
        }
        // A line now and then while running, as a busy kernel's drivers print: a second after
        // start, then every ten seconds.
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + self.config.print_every.max(Duration::from_millis(10));
            let line = self.facts.heartbeat.clone();
            if !line.is_empty() {
                return Some(Activity::Print(line));
            }
        }
        None
    }

    fn processors(&self) -> u16 {
        self.sys.cpus.len() as u16
    }
}

/// A machine shared between its KD target and inspectors (tests read facts while it serves).
pub type SharedMachine = Arc<Mutex<Machine>>;
