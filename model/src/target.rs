//! The `Target` interface: what a live KDNET session and a crash dump both provide. Everything
//! above (translation, caching, the kernel model, the commands) is written against it.

use kdnet_arch::Context;

/// Why memory or state could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The address does not translate: no mapping, or a PTE that is not valid.
    #[error("{address:#x} is not present ({reason})")]
    NotPresent {
        /// The virtual address.
        address: u64,
        /// Why.
        reason: NotPresent,
    },
    /// The target could not supply the bytes (not in the dump, a failed read on the wire).
    #[error("memory at {address:#x} is not available")]
    Unavailable {
        /// The first unavailable address.
        address: u64,
    },
    /// A pointer that cannot be a kernel or user address.
    #[error("{0:#x} is not a canonical address")]
    NonCanonical(u64),
    /// A size or count beyond any sane value.
    #[error("{what} of {value} is beyond the limit of {limit}")]
    TooLarge {
        /// What it was.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// The processor does not exist.
    #[error("processor {0} does not exist")]
    NoSuchProcessor(u32),
    /// The target does not offer this.
    #[error("this target cannot {0}")]
    Unsupported(&'static str),
    /// The link to a live target failed (a lost reply, a timeout): a fact about this moment,
    /// not about the target.
    #[error("target: {0}")]
    Transport(String),
    /// The target stopped answering: the session gave it up. Every further request would only
    /// wait again.
    #[error("no answer from the target: {0}")]
    Gone(String),
    /// A time budget ran out.
    #[error("stopped: the time budget ran out")]
    OutOfTime,
    /// The command was cancelled.
    #[error("cancelled")]
    Cancelled,
}

impl TargetError {
    /// Whether the failure is about this moment (the link, the target's silence, a time budget
    /// or a cancel) rather than about the target's memory: nothing may be concluded from it, and
    /// nothing derived from it may be kept; the same read may work the next time.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            TargetError::Transport(_)
                | TargetError::Gone(_)
                | TargetError::OutOfTime
                | TargetError::Cancelled
        )
    }
}

/// Why a virtual address has no valid translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotPresent {
    /// An entry on the way (level 4 = PML5 … 0 = PTE) is zero.
    NotMapped {
        /// The level.
        level: u8,
    },
    /// The PTE is a page-file reference.
    PagedOut {
        /// The raw PTE.
        pte: u64,
    },
    /// The PTE is in transition (the page is on the standby or modified list).
    Transition {
        /// The raw PTE.
        pte: u64,
    },
    /// The PTE refers to a prototype PTE.
    Prototype {
        /// The raw PTE.
        pte: u64,
    },
    /// An upper-level entry is not valid but not zero.
    Invalid {
        /// The level.
        level: u8,
        /// The raw entry.
        entry: u64,
    },
}

impl std::fmt::Display for NotPresent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotPresent::NotMapped { level } => write!(f, "no mapping at level {level}"),
            NotPresent::PagedOut { pte } => write!(f, "paged out, PTE {pte:#x}"),
            NotPresent::Transition { pte } => write!(f, "transition page, PTE {pte:#x}"),
            NotPresent::Prototype { pte } => write!(f, "prototype PTE {pte:#x}"),
            NotPresent::Invalid { level, entry } => {
                write!(f, "invalid entry {entry:#x} at level {level}")
            }
        }
    }
}

/// Facts the target gives before any memory is read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetInfo {
    /// Build number.
    pub build: u32,
    /// Kernel base, if known.
    pub kernel_base: Option<u64>,
    /// Address of PsLoadedModuleList, if known.
    pub ps_loaded_module_list: Option<u64>,
    /// Address of PsActiveProcessHead, if known (dumps).
    pub ps_active_process_head: Option<u64>,
    /// Address of the debugger data list head (live) …
    pub debugger_data_list: Option<u64>,
    /// … or of KdDebuggerDataBlock (dumps).
    pub kd_debugger_data_block: Option<u64>,
    /// The kernel's directory table base, if the target knows it (dumps).
    pub directory_table_base: Option<u64>,
    /// Processors.
    pub processors: u32,
    /// The processor that stopped (live) or took the dump: the one `k` and `r` show first.
    pub current_processor: u32,
    /// Bugcheck code and parameters recorded by the target (dumps).
    pub bugcheck: Option<(u32, [u64; 4])>,
    /// A live session (the target is stopped now, but runs again after `g`).
    pub live: bool,
    /// Why the target stopped, as WinDbg says it (`Break instruction exception - code 80000003
    /// (first chance) on processor 0`), when the target knows (live sessions).
    pub last_event: Option<String>,
    /// The exception the target last reported (`.exr -1`): the state change's on a live
    /// target, the dump header's in a dump (an error when that record is damaged); none when
    /// the target reported none.
    pub last_exception: Option<Result<crate::nt::records::ExceptionRecord, String>>,
    /// A description for headers (`KDNET 127.0.0.1:51000`, `triage dump foo.dmp`).
    pub description: String,
}

/// A loaded module as a target records it itself (triage dumps keep their driver list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleRecord {
    /// File name.
    pub name: String,
    /// Full path.
    pub path: String,
    /// Base address.
    pub base: u64,
    /// SizeOfImage.
    pub size: u32,
    /// CheckSum.
    pub checksum: u32,
    /// TimeDateStamp.
    pub timestamp: u32,
}

/// Counters of the transport under the memory layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Requests sent (round trips on a live target; reads on a dump).
    pub round_trips: u64,
    /// Bytes moved.
    pub bytes: u64,
}

/// How the target is let go on (a live target's Continue2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Go {
    /// The continue status: DBG_CONTINUE, DBG_EXCEPTION_HANDLED (`gh`),
    /// DBG_EXCEPTION_NOT_HANDLED (`gn`).
    pub status: u32,
    /// One instruction, then a single-step stop.
    pub trace: bool,
    /// Dr7 for every processor (hardware breakpoints); 0x400 for none.
    pub dr7: u64,
}

/// DBG_CONTINUE.
pub const DBG_CONTINUE: u32 = 0x0001_0002;
/// DBG_EXCEPTION_HANDLED.
pub const DBG_EXCEPTION_HANDLED: u32 = 0x0001_0001;
/// DBG_EXCEPTION_NOT_HANDLED.
pub const DBG_EXCEPTION_NOT_HANDLED: u32 = 0x8001_0001;
/// STATUS_BREAKPOINT.
pub const STATUS_BREAKPOINT: u32 = 0x8000_0003;
/// STATUS_SINGLE_STEP.
pub const STATUS_SINGLE_STEP: u32 = 0x8000_0004;

impl Go {
    /// A plain continue.
    pub fn on() -> Go {
        Go {
            status: DBG_CONTINUE,
            trace: false,
            dr7: 0x400,
        }
    }
}

/// Why a target stopped, as it reported it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StopKind {
    /// An exception: a breakpoint (`int 3`, code 0x80000003), a single step or debug register
    /// (0x80000004), or another.
    Exception {
        /// ExceptionCode.
        code: u32,
        /// ExceptionAddress.
        address: u64,
        /// First chance.
        first_chance: bool,
        /// ExceptionInformation.
        parameters: Vec<u64>,
        /// DR6 at the stop (which debug register fired, or BS for a single step).
        dr6: u64,
    },
    /// A module was loaded or unloaded (a stop asked for with `sxe ld` / `sxe ud`).
    Module {
        /// Unloaded rather than loaded.
        unload: bool,
        /// Base address.
        base: u64,
        /// SizeOfImage.
        size: u32,
        /// The image path.
        path: String,
    },
    /// Something else (a command string, an unknown report).
    Other,
}

/// A stop of a live target.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StopEvent {
    /// The reporting processor.
    pub processor: u32,
    /// Processors in the machine.
    pub processors: u32,
    /// The current thread (KTHREAD) of that processor.
    pub thread: u64,
    /// Its instruction pointer.
    pub pc: u64,
    /// Why.
    pub kind: StopKind,
    /// Bytes of instructions the report carries from `pc` on: the kernel took the breakpoints
    /// among them out of its table when it reported the stop.
    pub reported: u32,
    /// Those bytes (breakpoints removed).
    pub stream: Vec<u8>,
    /// State changes seen so far in the session (a new one: the target ran in between).
    pub serial: u64,
}

/// DbgBreakPointWithStatus's argument when the kernel breaks in for the debugger
/// (DBG_STATUS_CONTROL_C): rcx holds it at the int 3 a break-in stops on. A bugcheck
/// (DBG_STATUS_BUGCHECK_FIRST) or a driver's own break reaches an int 3 with something else.
pub const DBG_STATUS_CONTROL_C: u64 = 1;

impl StopEvent {
    /// Whether this stop, the answer to a break-in, is the break-in itself (`rcx` as the
    /// stopped processor holds it) rather than a stop the target made itself in that instant:
    /// a bugcheck, an exception, a driver's break (or a breakpoint's hit, which only the
    /// session that set it can tell).
    pub fn is_break_in(&self, rcx: u64) -> bool {
        match &self.kind {
            StopKind::Exception { code, .. } if *code == STATUS_BREAKPOINT => {
                rcx == DBG_STATUS_CONTROL_C
            }
            // A single step or debug register is the debugger's own doing, never the target's.
            StopKind::Exception { code, .. } => *code == STATUS_SINGLE_STEP,
            // A module's load or unload in that instant: the debugger has it stopped all the
            // same, with nothing wrong.
            StopKind::Module { .. } | StopKind::Other => true,
        }
    }
}

/// A source of kernel memory and processor state.
pub trait Target: Send {
    /// What is known up front.
    fn info(&self) -> TargetInfo;

    /// Reads physical memory into `buf`; returns how many bytes from the start could be read.
    fn read_physical(&mut self, address: u64, buf: &mut [u8]) -> Result<usize, TargetError>;

    /// For targets that hold memory by virtual address (triage dumps): reads `buf` at `address`
    /// and returns the bytes read, or `None` when the target has no such memory model.
    fn read_virtual_direct(
        &mut self,
        _address: u64,
        _buf: &mut [u8],
    ) -> Option<Result<usize, TargetError>> {
        None
    }

    /// Largest transfer one request can carry.
    fn max_transfer(&self) -> usize;

    /// A processor's CONTEXT.
    fn context(&mut self, processor: u32) -> Result<Context, TargetError>;

    /// A processor's KSPECIAL_REGISTERS bytes (CR3 at 0x10, CR4 at 0x18).
    fn special_registers(&mut self, processor: u32) -> Result<Vec<u8>, TargetError>;

    /// Control space pointers: 0 KPCR, 1 KPRCB, 3 current thread.
    fn control_pointer(&mut self, processor: u32, index: u64) -> Result<u64, TargetError>;

    /// Transport counters.
    fn stats(&self) -> TransportStats;

    /// Searches virtual memory `[address, address + length)` for `pattern` on the target side,
    /// in one request: the first match. `None` when the target cannot search (dumps).
    fn search(
        &mut self,
        _address: u64,
        _length: u64,
        _pattern: &[u8],
    ) -> Option<Result<Option<u64>, TargetError>> {
        None
    }

    /// The module list, when the target keeps one itself (triage dumps).
    fn module_list(&mut self) -> Option<Vec<ModuleRecord>> {
        None
    }

    /// Whether memory may have changed since it was cached (the target ran); clears the flag.
    fn take_invalidation(&mut self) -> bool {
        false
    }

    /// Reads virtual memory the target translates itself (a live target's ReadVirtualMemory),
    /// in the current processor's address space; None when it cannot.
    fn read_virtual_live(
        &mut self,
        _address: u64,
        _buf: &mut [u8],
    ) -> Option<Result<usize, TargetError>> {
        None
    }

    /// The stop the target is in, when it is a live one.
    fn stop_event(&mut self) -> Option<StopEvent> {
        None
    }

    /// A number that stays the same while the loaded modules do (a live target that reports
    /// every load and unload); None when that is not known, and a module list must be read
    /// again whenever the target has run.
    fn module_generation(&mut self) -> Option<u64> {
        None
    }

    /// Writes a breakpoint (`int 3`) at `address` through the kernel's table; its handle.
    fn write_breakpoint(&mut self, _address: u64) -> Result<u32, TargetError> {
        Err(TargetError::Unsupported("set breakpoints"))
    }

    /// Removes a breakpoint by handle; false when the kernel had none by it (it removed it
    /// itself, reporting a stop there).
    fn restore_breakpoint(&mut self, _handle: u32) -> Result<bool, TargetError> {
        Err(TargetError::Unsupported("remove breakpoints"))
    }

    /// Sets a processor's CONTEXT.
    fn set_context(&mut self, _processor: u32, _context: &Context) -> Result<(), TargetError> {
        Err(TargetError::Unsupported("change registers"))
    }

    /// Lets the target go on.
    fn go(&mut self, _how: Go) -> Result<(), TargetError> {
        Err(TargetError::Unsupported("run"))
    }

    /// Waits for the target to stop after [`Target::go`]. At `deadline`, or when `cancel` is
    /// set, it breaks in: the stop is then the break-in's, and `interrupted` says so.
    fn wait_stop(
        &mut self,
        _deadline: Option<std::time::Instant>,
        _cancel: Option<&std::sync::atomic::AtomicBool>,
    ) -> Result<(StopEvent, bool), TargetError> {
        Err(TargetError::Unsupported("run"))
    }

    /// Which module loads and unloads stop the target (names without case, `*` for all); the
    /// others are continued at once.
    fn set_module_breaks(
        &mut self,
        _load: Vec<String>,
        _unload: Vec<String>,
    ) -> Result<(), TargetError> {
        Err(TargetError::Unsupported("stop on module events"))
    }
}
