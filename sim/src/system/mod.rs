//! Assembling the simulated system: the kernel image and driver images, processors, processes,
//! threads with unwindable stacks and wait blocks, dispatcher objects, executive resources, the
//! debugger data block and the other globals a debugger reads.

mod dispatcher;
mod io;
mod kdbg;
mod memory;
mod modules;
mod objects;
mod processes;
mod processors;
mod resources;
mod shared_data;
mod threads;
mod workers;

pub use workers::WorkQueueRec;

pub use io::{DeviceSpec, IrpLocation, IrpSpec, MAJOR_FUNCTIONS};
pub use kdbg::{decode_kdbg_word, encode_kdbg_word};
pub use objects::{DIRECTORY_BUCKETS, HandleRec, Objects, name_hash};

use kdnet::api::{Context, GetVersion64};
use kdnet::rng::SplitMix64;
use kdnet_symbols::{PdbId, TypeTable, builtin};

use crate::SimError;
use crate::image::Image;
use crate::kernel::{KUSER_SHARED_DATA, Kernel};
use crate::mem::{LARGE, PAGE, Space};
use crate::pool::Pool;

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
    /// What the frame above an exception or interrupt entry was doing there (none: an
    /// ordinary instruction).
    pub interrupted: Option<Interrupted>,
}

/// The instruction an exception or interrupt entry interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupted {
    /// `mov rax, qword ptr [reg+disp]` (a read that faulted).
    Load(crate::image::Gpr, i32),
    /// `pause` in a loop that jumps back to it (a processor stuck spinning).
    Spin,
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
        interrupted: None,
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
    /// In the loader's list now (a module that loads while the machine runs is not, at
    /// first).
    pub listed: bool,
    /// Its loader entry (written with the list).
    pub ldr: u64,
    /// The table of its own the project provides for it (FLTMGR.SYS), which places its
    /// functions and globals.
    pub own: Option<std::sync::Arc<TypeTable>>,
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
    /// What `!process` details show, once [`System::finish`] wrote it.
    pub details: ProcessDetails,
    /// The handles its table holds, in handle order.
    pub handles: Vec<HandleRec>,
}

/// What a process's details hold beyond its identity, as written at the end of the build.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessDetails {
    /// Its handle table (ObjectTable), 0 for the idle process.
    pub handle_table: u64,
    /// Handles in use.
    pub handle_count: u64,
    /// Its primary token.
    pub token: u64,
    /// The root node of its VAD tree.
    pub vad_root: u64,
    /// VADs in the tree.
    pub vad_count: u64,
    /// Working-set pages now, minimum, maximum.
    pub working_set: (u64, u64, u64),
    /// VirtualSize in bytes.
    pub virtual_size: u64,
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
    /// Its GDT (the IDT is the page after, the TSS the page after that).
    pub tables: u64,
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
    /// The thread impersonating a client: (ETHREAD, token, impersonation level).
    pub impersonating: Option<(u64, u64, u64)>,
    /// KiSystemCall64 and KiSystemCall32: what LSTAR and CSTAR hold.
    pub syscall_entries: (Option<u64>, Option<u64>),
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
    /// Booted without a kernel debugger: the debugger data block is encoded (9200+).
    pub booted_nodebug: bool,
    /// The ready queue the processors share (builds that have one).
    pub shared_ready_queue: Option<u64>,
    /// The object manager: types, directories.
    pub ob: Objects,
    /// What the running machine does (a scenario's thread calling planted routines).
    pub activity: Option<crate::activity::Activity>,
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
        let mut k = Kernel::new(nt, builtin::extra(), build, 4 << 20)?;
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
        let mut nt_image = Image::new(
            "ntoskrnl.exe",
            "\\SystemRoot\\system32\\ntoskrnl.exe",
            base,
            max_rva as u32,
            pdb,
            0x5a3c_1f2e,
        );
        // Its version resource names the build the machine reports.
        nt_image.version = Some(crate::layout::file_version(build));
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
                listed: true,
                ldr: 0,
                own: None,
            }],
            processes: Vec::new(),
            threads: Vec::new(),
            cpus: Vec::new(),
            resources: Vec::new(),
            now_tick: UPTIME_SECONDS * TICKS_PER_SECOND,
            impersonating: None,
            syscall_entries: (None, None),
            wait_never,
            wait_always,
            rng,
            next_tid: 0x1c,
            next_pid: 0x60,
            cid_spacing: 4,
            commit: Vec::new(),
            booted_nodebug: false,
            shared_ready_queue: None,
            ob: Objects::default(),
            activity: None,
        };
        s.init_globals(cpus)?;
        s.init_objects()?;
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
        // Where the memory manager keeps its invalid-PTE mask: a global before 1607, in
        // MiState's hardware state after.
        let mask = k.invalid_pte_mask;
        if k.has_sym("MiInvalidPteMask") {
            k.w64(k.sym("MiInvalidPteMask")?, mask);
        } else if k.has_sym("MiState") && k.has("_MI_SYSTEM_INFORMATION", "Hardware.InvalidPteMask")
        {
            let state = k.sym("MiState")?;
            k.set(
                state,
                "_MI_SYSTEM_INFORMATION",
                "Hardware.InvalidPteMask",
                mask,
            )?;
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

    /// Writes everything that depends on the whole system; returns the GetVersion block.
    pub fn finish(&mut self) -> Result<GetVersion64, SimError> {
        // Unwind data for the routine every waiting thread's saved state stops in, for a
        // debugger that unwinds such a thread from there.
        if self.k.has_sym("SwapContext") {
            self.function("nt", "SwapContext")?;
        }
        // Images first: their final SizeOfImage goes into the loader entries.
        for m in &mut self.modules {
            m.image.write(&mut self.k)?;
        }
        self.write_module_list()?;
        self.write_va_regions()?;
        self.write_process_details()?;
        let cpus = self.cpus.len();
        self.pool.finish(&mut self.k, cpus)?;
        self.write_processor_state()?;
        self.write_kuser()?;
        self.write_kernel_globals()?;
        // The break instruction the state changes point at.
        let brk = self.k.sym("RtlpBreakWithStatusInstruction")?;
        self.k.write(brk, &[0xcc, 0xc3]);
        let size = self.write_kdbg()?;
        if self.booted_nodebug {
            if let Ok(flag) = self.k.sym("KdpBootedNodebug") {
                self.k.w8(flag, 1);
            }
            // Kernels from Windows 8 on encode the block at boot (those whose block reaches
            // past the Windows 7 members).
            if size > 0x340 {
                self.encode_kdbg(size)?;
            }
        }
        // Every process shares the kernel half of the system address space.
        let sys = self.k.space;
        for p in &self.processes {
            if p.space != sys {
                p.space.share_kernel_half(&mut self.k.mem, &sys);
            }
        }
        // Last: it describes every frame handed out.
        self.write_physical_memory_block()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_specs() {
        assert_eq!(
            call("tcpip!FlPnpEvent+0x1c2"),
            Call {
                module: "tcpip".into(),
                function: "FlPnpEvent".into(),
                offset: 0x1c2,
                interrupted: None,
            }
        );
        assert_eq!(call("KiSwapContext+76").offset, 0x76);
    }
}
