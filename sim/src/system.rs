//! Assembling the simulated system: the kernel image and driver images, processors, processes,
//! threads with unwindable stacks and wait blocks, dispatcher objects, executive resources, the
//! debugger data block and the other globals a debugger reads.

use kdnet::api::context::{
    CONTEXT_LEN, SPECIAL_CR0, SPECIAL_CR3, SPECIAL_CR4, SPECIAL_GDTR_BASE, SPECIAL_GDTR_LIMIT,
    SPECIAL_IDTR_BASE, SPECIAL_IDTR_LIMIT,
};
use kdnet::api::{Context, GetVersion64, Reg};
use kdnet::rng::SplitMix64;
use kdnet_symbols::{PdbId, TypeTable, builtin};

use crate::SimError;
use crate::image::{Frame, Gpr, Image, frame_for, switch_frame};
use crate::kernel::{KUSER_SHARED_DATA, Kernel, Region};
use crate::mem::{LARGE, PAGE, Space};
use crate::pool::{Pool, PoolKind, tag};

/// Ticks per second (a 15.625 ms clock tick).
pub const TICKS_PER_SECOND: u64 = 64;
/// 100 ns units per tick.
pub const MAXIMUM_INCREMENT: u64 = 156_250;

/// A frame on a simulated stack: module, function, offset of the return address (or of the
/// current instruction for the innermost frame of a running thread).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Module short name (`nt`, `tcpip`, …).
    pub module: String,
    /// Function name.
    pub function: String,
    /// Offset from the function start.
    pub offset: u32,
}

/// `module!function+offset`.
pub fn call(spec: &str) -> Call {
    let (module, rest) = spec.split_once('!').unwrap_or(("nt", spec));
    let (function, off) = match rest.split_once('+') {
        Some((f, o)) => (
            f,
            u32::from_str_radix(o.trim_start_matches("0x"), 16).unwrap_or(0),
        ),
        None => (rest, 0),
    };
    Call {
        module: module.to_string(),
        function: function.to_string(),
        offset: off,
    }
}

/// Thread states (the `_KTHREAD_STATE` values, stable across builds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadState {
    /// Ready (1).
    Ready,
    /// Running (2) on its processor.
    Running,
    /// Waiting (5).
    Waiting,
}

impl ThreadState {
    fn value(self) -> u64 {
        match self {
            ThreadState::Ready => 1,
            ThreadState::Running => 2,
            ThreadState::Waiting => 5,
        }
    }
}

/// A module the system has loaded.
#[derive(Debug)]
pub struct ModuleRec {
    /// The image.
    pub image: Image,
    /// Short name used in `module!symbol` (`nt`, `tcpip`).
    pub short: String,
    /// Its symbol table, when it has one (nt).
    pub has_table: bool,
}

/// A process.
#[derive(Debug, Clone)]
pub struct ProcessRec {
    /// EPROCESS address.
    pub eprocess: u64,
    /// Process id.
    pub pid: u64,
    /// Image name.
    pub name: String,
    /// Its address space.
    pub space: Space,
    /// Threads (indices into [`System::threads`]).
    pub threads: Vec<usize>,
}

/// A thread.
#[derive(Debug, Clone)]
pub struct ThreadRec {
    /// ETHREAD (= KTHREAD) address.
    pub ethread: u64,
    /// Owning process index.
    pub process: usize,
    /// Thread id.
    pub tid: u64,
    /// State.
    pub state: ThreadState,
    /// Processor it last ran on.
    pub cpu: u16,
    /// Kernel stack bounds.
    pub stack_base: u64,
    /// Lowest valid stack address.
    pub stack_limit: u64,
    /// Saved kernel RSP (waiting/ready threads).
    pub kernel_stack: u64,
    /// Body RSP of each frame, innermost first, with the frame's function.
    pub frames: Vec<(Call, u64, u64)>,
    /// Objects it waits on.
    pub waits: Vec<u64>,
    /// Wait start tick.
    pub wait_tick: u64,
    /// The context (for running threads: current registers).
    pub context: Context,
}

/// A processor.
#[derive(Debug, Clone)]
pub struct CpuRec {
    /// KPCR address.
    pub kpcr: u64,
    /// KPRCB address.
    pub prcb: u64,
    /// Its idle thread index.
    pub idle: usize,
    /// The thread running on it.
    pub current: usize,
}

/// The system being built.
#[derive(Debug)]
pub struct System {
    /// Memory and tables.
    pub k: Kernel,
    /// Pool.
    pub pool: Pool,
    /// Loaded modules; [0] is nt.
    pub modules: Vec<ModuleRec>,
    /// Processes; [0] is the Idle process, [1] System.
    pub processes: Vec<ProcessRec>,
    /// Threads.
    pub threads: Vec<ThreadRec>,
    /// Processors.
    pub cpus: Vec<CpuRec>,
    /// Every ERESOURCE, in list order.
    pub resources: Vec<u64>,
    /// KUSER_SHARED_DATA tick count at build time.
    pub now_tick: u64,
    /// KiWaitNever.
    pub wait_never: u64,
    /// KiWaitAlways.
    pub wait_always: u64,
    /// Random source for non-essential choices.
    pub rng: SplitMix64,
    next_tid: u64,
    next_pid: u64,
    cid_spacing: u64,
    /// Commit charge per process (pages), used by !vm's process table.
    pub commit: Vec<(usize, u64)>,
}

/// How long the simulated machine has been up at build time (4 h 12 min).
pub const UPTIME_SECONDS: u64 = 4 * 3600 + 12 * 60;

fn nt_pdb(nt: &TypeTable) -> PdbId {
    nt.id.clone().unwrap_or(PdbId {
        guid: "00000000000000000000000000000000".into(),
        age: 1,
        name: "ntkrnlmp.pdb".into(),
    })
}

/// A PDB identity for a module the simulator invents (its GUID is a hash of its name; no
/// symbol file exists for it except where the project provides one).
pub fn invented_pdb(name: &str) -> PdbId {
    let mut h: u64 = 0x1234_5678_9abc_def1;
    let mut g = String::new();
    for round in 0..2u64 {
        for b in name.bytes() {
            h = (h ^ u64::from(b) ^ round).wrapping_mul(0x100_0000_01b3);
        }
        g.push_str(&format!("{h:016X}"));
    }
    let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
    PdbId {
        guid: g,
        age: 1,
        name: format!("{stem}.pdb"),
    }
}

impl System {
    /// Starts a machine for `nt` (the kernel's table) on `build` with `cpus` processors.
    pub fn new(nt: TypeTable, build: u32, cpus: u16, seed: u64) -> Result<System, SimError> {
        let mut rng = SplitMix64::new(seed);
        // 16 GB of RAM.
        let mut k = Kernel::new(nt, builtin::extra(), build, 4 << 20);
        // The kernel image, mapped with large pages, sized past its highest symbol.
        // (The highest symbol is recorded as used, so the compact table keeps the same size.)
        let highest =
            k.nt.symbol_names()
                .filter_map(|n| k.nt.symbol(n).map(|a| (a, n.to_string())))
                .max();
        let max_rva = match highest {
            Some((_, name)) => k.sym(&name)? - k.base(),
            None => 0x100000,
        };
        let pdb = nt_pdb(&k.nt);
        let base = k.base();
        let nt_image = Image::new(
            "ntoskrnl.exe",
            "\\SystemRoot\\system32\\ntoskrnl.exe",
            base,
            max_rva as u32,
            pdb,
            0x5a3c_1f2e,
        );
        k.map_large(base, u64::from(nt_image.size) + 0x40000);
        // KUSER_SHARED_DATA.
        k.map(KUSER_SHARED_DATA, PAGE, true);
        let pool = Pool::new(&k, usize::from(cpus), seed);
        let wait_never = rng.next_u64();
        let wait_always = rng.next_u64();
        let mut s = System {
            k,
            pool,
            modules: vec![ModuleRec {
                image: nt_image,
                short: "nt".into(),
                has_table: true,
            }],
            processes: Vec::new(),
            threads: Vec::new(),
            cpus: Vec::new(),
            resources: Vec::new(),
            now_tick: UPTIME_SECONDS * TICKS_PER_SECOND,
            wait_never,
            wait_always,
            rng,
            next_tid: 0x1c,
            next_pid: 0x60,
            cid_spacing: 4,
            commit: Vec::new(),
        };
        s.init_globals(cpus)?;
        Ok(s)
    }

    fn init_globals(&mut self, cpus: u16) -> Result<(), SimError> {
        let k = &mut self.k;
        k.w32(k.sym("KeNumberProcessors")?, u32::from(cpus));
        k.w32(k.sym("KeMaximumIncrement")?, MAXIMUM_INCREMENT as u32);
        k.w32(k.sym("KeTimeIncrement")?, MAXIMUM_INCREMENT as u32);
        let wn = self.wait_never;
        let wa = self.wait_always;
        k.w64(k.sym("KiWaitNever")?, wn);
        k.w64(k.sym("KiWaitAlways")?, wa);
        k.w64(k.sym("MmSystemRangeStart")?, 0xffff_8000_0000_0000);
        k.w64(k.sym("MmHighestUserAddress")?, 0x0000_7fff_fffe_ffff);
        if k.has_sym("MmPteBase") {
            let pte = k.va.pte_base();
            k.w64(k.sym("MmPteBase")?, pte);
        }
        for head in [
            "PsActiveProcessHead",
            "ExpSystemResourcesList",
            "PsLoadedModuleList",
            "KeBugCheckCallbackListHead",
        ] {
            let h = k.sym(head)?;
            k.list_init(h);
        }
        Ok(())
    }

    /// Loads a driver module the simulator invents; returns its index.
    pub fn add_module(&mut self, file: &str, short: &str) -> usize {
        let prev = self
            .modules
            .last()
            .map_or(self.k.region_start(Region::Drivers), |m| {
                m.image.base + u64::from(m.image.size)
            });
        let base = if self.modules.len() == 1 {
            self.k.region_start(Region::Drivers)
        } else {
            (prev + 0x10000).div_ceil(0x10000) * 0x10000
        };
        let path = if file.ends_with(".dll") {
            format!("\\SystemRoot\\system32\\{file}")
        } else {
            format!("\\SystemRoot\\System32\\drivers\\{file}")
        };
        // ndis.sys carries the identity of the project's NDIS layout, so a debugger finds
        // its symbols; the other drivers have invented identities (exports only).
        let pdb = if file.eq_ignore_ascii_case("ndis.sys") {
            crate::ndis_layout::pdb(self.k.build)
        } else {
            invented_pdb(file)
        };
        let mut img = Image::new(
            file,
            &path,
            base,
            0x20000,
            pdb,
            0x6100_0000 + self.modules.len() as u32 * 0x1357,
        );
        img.size = 0x40000;
        self.modules.push(ModuleRec {
            image: img,
            short: short.to_string(),
            has_table: false,
        });
        self.modules.len() - 1
    }

    /// The module with a short name.
    pub fn module(&self, short: &str) -> Option<usize> {
        self.modules
            .iter()
            .position(|m| m.short.eq_ignore_ascii_case(short))
    }

    /// The address of `module!function` and its frame, registering the frame on first use.
    pub fn function(&mut self, module: &str, function: &str) -> Result<(u64, Frame), SimError> {
        let mi = self
            .module(module)
            .ok_or_else(|| SimError::Config(format!("no module {module}")))?;
        if self.modules[mi].has_table {
            let (rva, next) = self.k.function_rva(function)?;
            let rva = rva as u32;
            let next = next.unwrap_or(u64::from(rva) + 0x400) as u32;
            let end = next.min(rva + 0x800).max(rva + 0x10);
            let frame = match function {
                "KiSwapContext" => switch_frame(rva, end),
                _ => with_min_alloc(frame_for(function, rva, end), function),
            };
            let f = self.modules[mi].image.add_frame(frame).clone();
            Ok((self.modules[mi].image.base + u64::from(rva), f))
        } else {
            let img = &mut self.modules[mi].image;
            let rva = img.define_function(function, 0x600);
            let frame = with_min_alloc(frame_for(function, rva, rva + 0x600), function);
            let f = img.add_frame(frame).clone();
            Ok((img.base + u64::from(rva), f))
        }
    }

    fn clamp_offset(f: &Frame, offset: u32) -> u32 {
        let size = f.end - f.rva;
        let min = f.prolog_bytes().len() as u32 + 5;
        offset.clamp(
            min.min(size.saturating_sub(1)),
            size.saturating_sub(1).max(1),
        )
    }

    // ---- processes ----

    /// Creates a process. The System process (pid 4) shares the system address space.
    pub fn new_process(
        &mut self,
        name: &str,
        pid: Option<u64>,
        parent: u64,
    ) -> Result<usize, SimError> {
        let pid = pid.unwrap_or_else(|| {
            let p = self.next_pid;
            self.next_pid += self.cid_spacing * (1 + self.rng.below(8));
            p
        });
        let size = self.k.size("_EPROCESS")?;
        let header = self.k.size("_OBJECT_HEADER").unwrap_or(0x30);
        let obj = self
            .pool
            .alloc(&mut self.k, PoolKind::NonPaged, header + size, tag("Proc"))?;
        let ep = obj + header;
        let space = if pid == 4 || pid == 0 {
            self.k.space
        } else {
            Space::new(&mut self.k.mem)
        };
        let k = &mut self.k;
        k.set(obj, "_OBJECT_HEADER", "PointerCount", 0x1234)?;
        k.set(obj, "_OBJECT_HEADER", "HandleCount", 0x20)?;
        k.set(ep, "_EPROCESS", "Pcb.Header.Type", 3)?;
        k.set(
            ep,
            "_EPROCESS",
            "Pcb.Header.Size",
            (k.size("_KPROCESS")? / 4).min(0xff),
        )?;
        k.list_init(ep + k.off("_EPROCESS", "Pcb.Header.WaitListHead")?);
        k.set(ep, "_EPROCESS", "Pcb.DirectoryTableBase", space.cr3)?;
        k.list_init(ep + k.off("_EPROCESS", "Pcb.ThreadListHead")?);
        k.list_init(ep + k.off("_EPROCESS", "ThreadListHead")?);
        k.set(ep, "_EPROCESS", "UniqueProcessId", pid)?;
        k.set(ep, "_EPROCESS", "InheritedFromUniqueProcessId", parent)?;
        let mut image = [0u8; 15];
        for (i, b) in name.bytes().take(14).enumerate() {
            image[i] = b;
        }
        k.write(ep + k.off("_EPROCESS", "ImageFileName")?, &image);
        if pid > 4 {
            k.set(ep, "_EPROCESS", "Peb", 0x0000_00a1_0000_0000 + pid * 0x1000)?;
        }
        if pid != 0 {
            let head = k.sym("PsActiveProcessHead")?;
            k.list_append(head, ep + k.off("_EPROCESS", "ActiveProcessLinks")?);
        }
        self.processes.push(ProcessRec {
            eprocess: ep,
            pid,
            name: name.to_string(),
            space,
            threads: Vec::new(),
        });
        Ok(self.processes.len() - 1)
    }

    // ---- threads ----

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
        let header = self.k.size("_OBJECT_HEADER").unwrap_or(0x30);
        let obj = self
            .pool
            .alloc(&mut self.k, PoolKind::NonPaged, header + size, tag("Thre"))?;
        let et = obj + header;
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
        let mut frames: Vec<(Call, u64, Frame, u64)> = Vec::new();
        for c in calls {
            let (va, f) = self.function(&c.module, &c.function)?;
            frames.push((c.clone(), va, f, 0));
        }
        let mut ret_slot = initial - 8;
        let mut ret_value = 0u64;
        let n = frames.len();
        for i in (0..n).rev() {
            let (c, va, f, _) = &frames[i];
            let rsp = ret_slot - f.size_to_return();
            self.k.w64(ret_slot, ret_value);
            // Saved registers: recognisable values derived from the frame.
            for (j, r) in f.pushes.iter().enumerate() {
                let at = rsp + u64::from(f.alloc) + 8 * (f.pushes.len() - 1 - j) as u64;
                self.k.w64(at, saved_value(*r, et, rsp));
            }
            for (r, disp) in &f.saves {
                self.k.w64(rsp + u64::from(*disp), saved_value(*r, et, rsp));
            }
            let off = Self::clamp_offset(f, c.offset);
            let (callva, module_index) = (*va, self.module(&c.module).unwrap_or(0));
            frames[i].3 = rsp;
            if i > 0 {
                // The frame below returns here.
                ret_value = callva + u64::from(off);
                let rva = (ret_value - self.modules[module_index].image.base) as u32;
                self.modules[module_index].image.add_call(rva);
                ret_slot = rsp - 8;
            } else {
                ret_value = callva + u64::from(off);
            }
        }
        let rsp0 = frames.first().map_or(initial - 0x40, |f| f.3);
        let mut context = Context::new();
        context.set_reg(Reg::Rsp, rsp0);
        context.set_reg(Reg::Rip, ret_value);
        context.set_reg(Reg::Rbp, saved_value(Gpr::Rbp, et, rsp0));
        context.set_reg(Reg::Rbx, saved_value(Gpr::Rbx, et, rsp0));
        let kernel_stack = if state == ThreadState::Running {
            rsp0
        } else {
            // KSWITCH_FRAME: Rbp at +0x30, the return into KiSwapContext at +0x38.
            let ks = rsp0 - 0x40;
            self.k.w64(
                ks + self.k.off("_KSWITCH_FRAME", "Rbp")?,
                saved_value(Gpr::Rbp, et, rsp0),
            );
            self.k
                .w64(ks + self.k.off("_KSWITCH_FRAME", "Return")?, ret_value);
            ks
        };
        let k = &mut self.k;
        k.set(et, "_ETHREAD", "Tcb.Header.Type", 6)?;
        k.set(
            et,
            "_ETHREAD",
            "Tcb.Header.Size",
            (k.size("_KTHREAD")? / 4).min(0xff),
        )?;
        k.list_init(et + k.off("_ETHREAD", "Tcb.Header.WaitListHead")?);
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

    /// The body RSP of a thread's frame in `function`.
    pub fn frame_rsp(&self, thread: usize, function: &str) -> Option<u64> {
        self.threads[thread]
            .frames
            .iter()
            .find(|(c, _, _)| c.function == function)
            .map(|(_, _, rsp)| *rsp)
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
        let active = self
            .k
            .enum_value("_KWAIT_BLOCK_STATE", "WaitBlockActive")
            .map(|v| v as u64)
            .unwrap_or(if self.k.build < 9200 { 2 } else { 4 });
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

    // ---- dispatcher objects ----

    fn dispatcher(&mut self, at: u64, kind: &str, signal: u64) -> Result<(), SimError> {
        let ty = self.k.enum_value("_KOBJECTS", kind)? as u64;
        self.k.set(at, "_DISPATCHER_HEADER", "Type", ty)?;
        self.k
            .set(at, "_DISPATCHER_HEADER", "SignalState", signal)?;
        let head = at + self.k.off("_DISPATCHER_HEADER", "WaitListHead")?;
        self.k.list_init(head);
        Ok(())
    }

    /// A KEVENT (`EventNotificationObject` or `EventSynchronizationObject`) in pool with `tag`.
    pub fn event(&mut self, kind: &str, tag_name: &str) -> Result<u64, SimError> {
        let size = self.k.size("_KEVENT")?;
        let ev = self
            .pool
            .alloc(&mut self.k, PoolKind::NonPaged, size, tag(tag_name))?;
        self.dispatcher(ev, kind, 0)?;
        self.k.set(ev, "_DISPATCHER_HEADER", "Size", size / 4)?;
        Ok(ev)
    }

    /// Initialises a KEVENT in place (an event embedded in another structure).
    pub fn event_at(&mut self, at: u64, kind: &str) -> Result<(), SimError> {
        self.dispatcher(at, kind, 0)?;
        let size = self.k.size("_KEVENT")?;
        self.k.set(at, "_DISPATCHER_HEADER", "Size", size / 4)?;
        Ok(())
    }

    /// A KSEMAPHORE.
    pub fn semaphore(&mut self, limit: u64, tag_name: &str) -> Result<u64, SimError> {
        let size = self.k.size("_KSEMAPHORE")?;
        let s = self
            .pool
            .alloc(&mut self.k, PoolKind::NonPaged, size, tag(tag_name))?;
        self.dispatcher(s, "SemaphoreObject", 0)?;
        self.k.set(s, "_KSEMAPHORE", "Limit", limit)?;
        Ok(s)
    }

    /// A KMUTANT owned by `owner` (thread index).
    pub fn mutant(&mut self, owner: Option<usize>, tag_name: &str) -> Result<u64, SimError> {
        let size = self.k.size("_KMUTANT")?;
        let m = self
            .pool
            .alloc(&mut self.k, PoolKind::NonPaged, size, tag(tag_name))?;
        self.dispatcher(m, "MutantObject", if owner.is_some() { 0 } else { 1 })?;
        if let Some(o) = owner {
            let et = self.threads[o].ethread;
            self.k.set(m, "_KMUTANT", "OwnerThread", et)?;
        }
        Ok(m)
    }

    // ---- executive resources ----

    /// Creates an ERESOURCE in non-paged pool and links it on `ExpSystemResourcesList`.
    pub fn resource(&mut self) -> Result<u64, SimError> {
        let size = self.k.size("_ERESOURCE")?;
        let r = self
            .pool
            .alloc(&mut self.k, PoolKind::NonPaged, size, tag("Res "))?;
        self.link_resource(r)?;
        Ok(r)
    }

    /// Links an ERESOURCE that lives at `r` (a global or inside another structure).
    pub fn link_resource(&mut self, r: u64) -> Result<(), SimError> {
        let head = self.k.sym("ExpSystemResourcesList")?;
        let entry = r + self.k.off("_ERESOURCE", "SystemResourcesList")?;
        self.k.list_append(head, entry);
        self.resources.push(r);
        Ok(())
    }

    /// Marks `r` owned exclusively by `thread` (recursion `count`).
    pub fn own_exclusive(&mut self, r: u64, thread: usize, count: u64) -> Result<(), SimError> {
        let et = self.threads[thread].ethread;
        let k = &mut self.k;
        k.set(r, "_ERESOURCE", "OwnerEntry.OwnerThread", et)?;
        k.set(r, "_ERESOURCE", "OwnerEntry.OwnerCount", count)?;
        k.set(r, "_ERESOURCE", "ActiveCount", 1)?;
        k.set(r, "_ERESOURCE", "ActiveEntries", 1)?;
        let flag = k.get(r, "_ERESOURCE", "Flag")?;
        k.set(r, "_ERESOURCE", "Flag", flag | 0x80)?;
        Ok(())
    }

    /// Marks `r` owned shared by `threads`.
    pub fn own_shared(&mut self, r: u64, threads: &[usize]) -> Result<(), SimError> {
        let ets: Vec<u64> = threads.iter().map(|t| self.threads[*t].ethread).collect();
        let Some(first) = ets.first() else {
            return Ok(());
        };
        self.k
            .set(r, "_ERESOURCE", "OwnerEntry.OwnerThread", *first)?;
        self.k.set(r, "_ERESOURCE", "OwnerEntry.OwnerCount", 1)?;
        if ets.len() > 1 {
            let esize = self.k.size("_OWNER_ENTRY")?;
            let n = ets.len() as u64; // element 0 is the header, then n-1 owners, one spare
            let table = self.pool.alloc(
                &mut self.k,
                PoolKind::NonPaged,
                (n + 1) * esize,
                tag("ReTa"),
            )?;
            self.k.set(table, "_OWNER_ENTRY", "TableSize", n + 1)?;
            for (i, et) in ets[1..].iter().enumerate() {
                let e = table + (i as u64 + 1) * esize;
                self.k.set(e, "_OWNER_ENTRY", "OwnerThread", *et)?;
                self.k.set(e, "_OWNER_ENTRY", "OwnerCount", 1)?;
            }
            self.k.set(r, "_ERESOURCE", "OwnerTable", table)?;
        }
        self.k
            .set(r, "_ERESOURCE", "ActiveCount", ets.len() as u64)?;
        self.k
            .set(r, "_ERESOURCE", "ActiveEntries", ets.len() as u64)?;
        Ok(())
    }

    /// Makes `waiters` wait for `r`, exclusively or shared, for `seconds_ago`. On 7601 they
    /// wait on the resource's KEVENT/KSEMAPHORE; on later builds each waiter has a
    /// `_KWAIT_CHAIN_ENTRY` in its `ExpWaitForResource` frame, chained from the resource.
    pub fn resource_waiters(
        &mut self,
        r: u64,
        waiters: &[usize],
        exclusive: bool,
        seconds_ago: u64,
    ) -> Result<(), SimError> {
        if waiters.is_empty() {
            return Ok(());
        }
        let (field, count_field) = if exclusive {
            ("ExclusiveWaiters", "NumberOfExclusiveWaiters")
        } else {
            ("SharedWaiters", "NumberOfSharedWaiters")
        };
        let before = self.k.get(r, "_ERESOURCE", count_field)?;
        self.k
            .set(r, "_ERESOURCE", count_field, before + waiters.len() as u64)?;
        let contention = self.k.get(r, "_ERESOURCE", "ContentionCount")?;
        self.k.set(
            r,
            "_ERESOURCE",
            "ContentionCount",
            contention + waiters.len() as u64,
        )?;
        if self.k.has("_KWAIT_CHAIN_ENTRY", "Event") {
            let mut entries = Vec::new();
            for w in waiters {
                let rsp = self.frame_rsp(*w, "ExpWaitForResource").ok_or_else(|| {
                    SimError::Config(
                        "a resource waiter needs nt!ExpWaitForResource on its stack".into(),
                    )
                })?;
                let entry = rsp + 0x20;
                let et = self.threads[*w].ethread;
                self.k.set(entry, "_KWAIT_CHAIN_ENTRY", "Thread", et)?;
                let ev = entry + self.k.off("_KWAIT_CHAIN_ENTRY", "Event")?;
                self.event_at(ev, "EventSynchronizationObject")?;
                self.wait(*w, &[ev], "WrResource", seconds_ago)?;
                entries.push(entry);
            }
            // A circular list of the entries; the resource points at the first.
            for (i, e) in entries.iter().enumerate() {
                let next = entries[(i + 1) % entries.len()];
                let prev = entries[(i + entries.len() - 1) % entries.len()];
                self.k.w64(*e, next);
                self.k.w64(e + 8, prev);
            }
            let existing = self.k.get(r, "_ERESOURCE", field)?;
            if existing == 0 {
                self.k.set(r, "_ERESOURCE", field, entries[0])?;
            }
        } else {
            let obj = match self.k.get(r, "_ERESOURCE", field)? {
                0 if exclusive => self.event("EventSynchronizationObject", "ReEv")?,
                0 => self.semaphore(0x7fff_ffff, "ReSe")?,
                o => o,
            };
            self.k.set(r, "_ERESOURCE", field, obj)?;
            for w in waiters {
                self.wait(*w, &[obj], "WrResource", seconds_ago)?;
            }
        }
        Ok(())
    }

    // ---- processors ----

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
    fn write_processor_state(&mut self) -> Result<(), SimError> {
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

    // ---- modules, KDBG and the rest ----

    fn write_module_list(&mut self) -> Result<(), SimError> {
        let head = self.k.sym("PsLoadedModuleList")?;
        let ty = if self.k.has_type("_KLDR_DATA_TABLE_ENTRY") {
            "_KLDR_DATA_TABLE_ENTRY"
        } else {
            "_LDR_DATA_TABLE_ENTRY"
        };
        let size = self.k.size(ty)?;
        for i in 0..self.modules.len() {
            let (base, size_of_image, path, file) = {
                let m = &self.modules[i].image;
                (m.base, m.size, m.path.clone(), m.name.clone())
            };
            let e = self
                .pool
                .alloc(&mut self.k, PoolKind::NonPaged, size + 0x200, tag("MmLd"))?;
            let strings = e + size.div_ceil(16) * 16;
            let k = &mut self.k;
            k.list_append(head, e + k.off(ty, "InLoadOrderLinks")?);
            k.set(e, ty, "DllBase", base)?;
            k.set(e, ty, "EntryPoint", base + 0x1000)?;
            k.set(e, ty, "SizeOfImage", u64::from(size_of_image))?;
            k.unicode_string(e + k.off(ty, "FullDllName")?, strings, &path);
            let short_at = strings + (path.len() as u64 + 1) * 2;
            k.unicode_string(
                e + k.off(ty, "BaseDllName")?,
                short_at.div_ceil(8) * 8,
                &file,
            );
        }
        Ok(())
    }

    fn write_kdbg(&mut self) -> Result<u64, SimError> {
        let k = &mut self.k;
        let kdbg = k.sym("KdDebuggerDataBlock")?;
        let size: u64 = if k.build < 9200 {
            0x340
        } else if k.build < 20000 {
            0x380
        } else {
            0x3a0
        };
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
            ("MmSizeOfPagedPoolInBytes", "MmSizeOfPagedPoolInBytes"),
        ] {
            if k.has_sym(symbol) {
                let a = k.sym(symbol)?;
                k.set(kdbg, t, field, a)?;
            }
        }
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
        Ok(size)
    }

    /// Encodes the debugger data block in place, as a Windows 8+ kernel booted without a
    /// debugger leaves it, and sets `KdpDataBlockEncoded`.
    fn encode_kdbg(&mut self, size: u64) -> Result<(), SimError> {
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

    fn write_kuser(&mut self) -> Result<(), SimError> {
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

    /// Records where the pools live, as the memory manager does: the per-PML4-slot system VA
    /// types and the assigned regions (1607+), or the pool bounds globals (7601).
    fn write_va_regions(&mut self) -> Result<(), SimError> {
        const SLOT: u64 = 1 << 39;
        let regions = [
            (
                Region::NonPagedPool,
                "MiVaNonPagedPool",
                "AssignedRegionNonPagedPool",
            ),
            (
                Region::PagedPool,
                "MiVaPagedPool",
                "AssignedRegionPagedPool",
            ),
            (
                Region::Stacks,
                "MiVaKernelStacks",
                "AssignedRegionKernelStacks",
            ),
            (
                Region::SpecialPool,
                "MiVaSpecialPoolNonPaged",
                "AssignedRegionSpecialPoolNonPaged",
            ),
        ];
        let k = &mut self.k;
        if k.has("_MI_SYSTEM_INFORMATION", "Vs.SystemVaType") {
            let st = k.sym("MiState")?;
            for (region, va_type, assigned) in regions {
                let base = k.region_start(region);
                // Special pool is typed paged where the build has no non-paged kind.
                let ty = k
                    .enum_value("_MI_SYSTEM_VA_TYPE", va_type)
                    .or_else(|_| k.enum_value("_MI_SYSTEM_VA_TYPE", "MiVaSpecialPoolPaged"));
                if let Ok(ty) = ty {
                    // One entry per kernel-half PML4 slot.
                    let slot = ((base >> 39) & 0x1ff) - 256;
                    k.set(
                        st,
                        "_MI_SYSTEM_INFORMATION",
                        &format!("Vs.SystemVaType[{slot}]"),
                        ty as u64,
                    )?;
                }
                if let Ok(i) = k.enum_value("_MI_ASSIGNED_REGION_TYPES", assigned) {
                    let path = format!("Vs.SystemVaRegions[{i}]");
                    k.set(
                        st,
                        "_MI_SYSTEM_INFORMATION",
                        &format!("{path}.BaseAddress"),
                        base,
                    )?;
                    k.set(
                        st,
                        "_MI_SYSTEM_INFORMATION",
                        &format!("{path}.NumberOfBytes"),
                        SLOT,
                    )?;
                }
            }
        } else if k.has_sym("MmNonPagedPoolStart") {
            let np = k.region_start(Region::NonPagedPool);
            let a = k.sym("MmNonPagedPoolStart")?;
            k.w64(a, np);
            if k.has_sym("MmPagedPoolEnd") {
                let end = k.region_start(Region::PagedPool) + SLOT / 16 - 1;
                let a = k.sym("MmPagedPoolEnd")?;
                k.w64(a, end);
            }
        }
        Ok(())
    }

    /// Writes everything that depends on the whole system; returns the GetVersion block.
    pub fn finish(&mut self) -> Result<GetVersion64, SimError> {
        // Images first: their final SizeOfImage goes into the loader entries.
        for m in &mut self.modules {
            m.image.write(&mut self.k)?;
        }
        self.write_module_list()?;
        self.write_va_regions()?;
        let cpus = self.cpus.len();
        self.pool.finish(&mut self.k, cpus)?;
        self.write_processor_state()?;
        self.write_kuser()?;
        // The break instruction the state changes point at.
        let brk = self.k.sym("RtlpBreakWithStatusInstruction")?;
        self.k.write(brk, &[0xcc, 0xc3]);
        let size = self.write_kdbg()?;
        if self.k.build >= 9200 {
            self.encode_kdbg(size)?;
        }
        // Every process shares the kernel half of the system address space.
        let sys = self.k.space;
        for p in &self.processes {
            if p.space != sys {
                p.space.share_kernel_half(&mut self.k.mem, &sys);
            }
        }
        Ok(GetVersion64::windows_kernel(
            self.k.build as u16,
            self.k.base(),
            self.k.sym("PsLoadedModuleList")?,
            self.k.sym("KdpDebuggerDataListHead")?,
        ))
    }

    /// Rounds `size` up to 2 MB (for large mappings).
    pub fn large_round(size: u64) -> u64 {
        size.div_ceil(LARGE) * LARGE
    }
}

fn with_min_alloc(mut f: Frame, function: &str) -> Frame {
    // Frames that hold a structure in their locals get room for it.
    let min = match function {
        "ExpWaitForResource" => 0x60,
        "ExWaitForRundownProtectionReleaseCacheAware" => 0x50,
        _ => 0,
    };
    if f.alloc < min {
        f.alloc = min;
        if !(8 + f.size_to_return()).is_multiple_of(16) {
            f.alloc += 8;
        }
    }
    f
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

    #[test]
    fn call_specs() {
        assert_eq!(
            call("tcpip!FlPnpEvent+0x1c2"),
            Call {
                module: "tcpip".into(),
                function: "FlPnpEvent".into(),
                offset: 0x1c2
            }
        );
        assert_eq!(call("KiSwapContext+76").offset, 0x76);
    }
}
