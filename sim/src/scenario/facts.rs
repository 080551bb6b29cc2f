//! What a scenario planted: the answers the commands must find.

use crate::ndis::NdisFacts;

/// A held lock as planted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLock {
    /// ERESOURCE address.
    pub address: u64,
    /// Its symbol, for globals.
    pub symbol: Option<String>,
    /// Exclusive owner (ETHREAD).
    pub exclusive_owner: Option<u64>,
    /// Shared owners.
    pub shared_owners: Vec<u64>,
    /// ContentionCount.
    pub contention: u32,
    /// Threads waiting shared.
    pub shared_waiters: Vec<u64>,
    /// Threads waiting exclusive.
    pub exclusive_waiters: Vec<u64>,
}

/// Pool corruption as planted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    /// The overrun allocation (its data address).
    pub victim_of_overrun: u64,
    /// The header that was smashed.
    pub smashed_header: u64,
    /// Its page.
    pub page: u64,
    /// The BlockSize (16-byte units) that should be there.
    pub expected_block_units: u64,
    /// The bytes now there.
    pub found: [u8; 16],
    /// A special-pool allocation (data address) and its tag.
    pub special: u64,
    /// The driver that did it.
    pub driver: String,
}

/// The deadlock as planted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deadlock {
    /// The two threads of the cycle.
    pub threads: [u64; 2],
    /// The two resources: `resources[i]` is owned by `threads[i]` and waited for by the other.
    pub resources: [u64; 2],
    /// The thread waiting on the mutant, and the mutant (owned by `threads[0]`).
    pub mutant_waiter: u64,
    /// The mutant.
    pub mutant: u64,
    /// Threads queued as shared waiters behind them.
    pub queued: Vec<u64>,
}

/// An exception as planted (the 0x3B scenario): where its records are and what they hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlantedException {
    /// The thread that faulted.
    pub thread: u64,
    /// The CONTEXT record (the bugcheck's third parameter).
    pub context_record: u64,
    /// The EXCEPTION_RECORD.
    pub exception_record: u64,
    /// The KTRAP_FRAME the page fault's entry built.
    pub trap_frame: u64,
    /// The faulting instruction.
    pub faulting_ip: u64,
    /// RSP at the fault.
    pub faulting_rsp: u64,
    /// The address the instruction read (freed memory).
    pub read: u64,
    /// The close IRP on its way down.
    pub irp: u64,
    /// The file being closed.
    pub file: u64,
}

/// The DPC that ran too long (the 0x133 scenario).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StuckDpc {
    /// The processor it ran on.
    pub processor: u32,
    /// Its KDPC.
    pub dpc: u64,
    /// Its routine (`module!function`).
    pub routine: String,
    /// The function spinning inside it (`module!function`).
    pub spinning: String,
    /// Where the clock interrupt found it.
    pub spin_ip: u64,
    /// The clock interrupt's trap frame.
    pub trap_frame: u64,
}

/// A named device object as planted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamedDevice {
    /// Its path in the namespace.
    pub path: String,
    /// The device object.
    pub device: u64,
    /// Its driver's name.
    pub driver: String,
}

/// An IRP as planted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlantedIrp {
    /// The IRP.
    pub irp: u64,
    /// The thread whose list it is on.
    pub thread: u64,
    /// Its stack locations, [0] the lowest: major function, device, the device's driver
    /// name, the completion routine (`module!function`).
    pub stack: Vec<(u8, u64, String, Option<String>)>,
    /// CurrentLocation.
    pub current: u8,
    /// The file object it was issued on.
    pub file: u64,
}

/// The I/O layer as planted.
#[derive(Debug, Clone, Default)]
pub struct IoFacts {
    /// Driver objects: name (`\Driver\cimfs`) and address.
    pub drivers: Vec<(String, u64)>,
    /// Named device objects.
    pub named_devices: Vec<NamedDevice>,
    /// Device nodes: instance path and address.
    pub devnodes: Vec<(String, u64)>,
    /// The NIC: PDO, the miniport's FDO, its device node.
    pub nic: Option<(u64, u64, u64)>,
    /// The NIC device node's state (`_PNP_DEVNODE_STATE` name).
    pub nic_state: String,
    /// The system volume's file-system stack, top first.
    pub volume_stack: Vec<u64>,
    /// Handles: process id, handle value, file object, file name.
    pub handles: Vec<(u64, u64, u64, String)>,
    /// IRPs in flight.
    pub irps: Vec<PlantedIrp>,
    /// The IRP completed twice (bugcheck 0x44's first parameter).
    pub double_irp: Option<PlantedIrp>,
    /// The filter manager: frame, filters, volumes, instances.
    pub flt: crate::fltmgr::FltFacts,
    /// A create pended in a filter's pre-operation callback.
    pub pended_create: Option<PendedCreate>,
}

/// A create a filter holds in its pre-operation callback.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PendedCreate {
    /// The IRP_CTRL.
    pub irp_ctrl: u64,
    /// Its callback data.
    pub cbd: u64,
    /// The IRP.
    pub irp: u64,
    /// The filter holding it.
    pub filter: String,
    /// Its instance.
    pub instance: u64,
    /// The thread waiting for it.
    pub thread: u64,
    /// The file object being opened, and the directory it is relative to.
    pub file: u64,
    /// The current directory's file object (the create's RootDirectory).
    pub related: u64,
    /// The process, the current directory's handle and its file name.
    pub cwd: (u64, u64, String),
}

/// What a scenario planted: the answers the commands must find.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Scenario name.
    pub scenario: String,
    /// What the running machine's activity planted (routines, IRP, thread, counters).
    pub activity: Option<crate::activity::Planted>,
    /// What the build's table has no place for, so the machine does not hold it (types,
    /// members, globals).
    pub left_out: Vec<String>,
    /// The structure families the table says the kernel has, each with its evidence.
    pub families: Vec<String>,
    /// Build.
    pub build: u32,
    /// ERESOURCEs on the list.
    pub total_resources: u32,
    /// The held ones.
    pub held: Vec<HeldLock>,
    /// The hung thread (ETHREAD) and how long it has waited (seconds).
    pub hung_thread: Option<(u64, u64)>,
    /// NDIS.
    pub ndis: NdisFacts,
    /// The I/O layer.
    pub io: IoFacts,
    /// Driver Verifier and the thread it watches (verifier-apc).
    pub verifier: Option<super::verifier_apc::VerifierFacts>,
    /// The exception the 0x3B scenario planted.
    pub exception: Option<PlantedException>,
    /// The clock processor that stopped ticking (0x1CA).
    pub watchdog: Option<super::watchdog_1ca::WatchdogFacts>,
    /// The DPC that ran too long (0x133).
    pub stuck_dpc: Option<StuckDpc>,
    /// Threads on ready queues: (ETHREAD, processor, or None for the shared ready queue,
    /// priority), in queue order.
    pub ready: Vec<(u64, Option<u32>, u8)>,
    /// Queued DPCs: (processor, threaded, KDPC, routine as `module!function`), in queue order.
    pub dpcs: Vec<(u32, bool, u64, String)>,
    /// The executive's work queues (`_EX_WORK_QUEUE`), in the order a debugger lists them.
    pub work_queues: Vec<u64>,
    /// Worker threads a scenario made busy (on the first queue, active).
    pub busy_workers: Vec<u64>,
    /// Work items pending: (queue, priority, WORK_QUEUE_ITEM, routine as `module!function`).
    pub work_items: Vec<(u64, u8, u64, String)>,
    /// Timers in the processors' timer tables, in the order they were set.
    pub timers: Vec<PlantedTimer>,
    /// Whether NBL tracking is on.
    pub nbl_tracking: bool,
    /// `N commit requests have failed`.
    pub commit_failures: u64,
    /// Committed pages and the limit.
    pub committed: u64,
    /// Commit limit (pages).
    pub commit_limit: u64,
    /// Pool corruption.
    pub corruption: Option<Corruption>,
    /// Deadlock.
    pub deadlock: Option<Deadlock>,
    /// Bugcheck code and parameters.
    pub bugcheck: Option<(u32, [u64; 4])>,
    /// Lines the target prints once the hang begins.
    pub prints_when_hung: Vec<String>,
    /// A line it prints now and then.
    pub heartbeat: String,
    /// Processes (EPROCESS, pid, name).
    pub processes: Vec<(u64, u64, String)>,
    /// What each process's details hold, in the order of `processes`.
    pub process_details: Vec<crate::system::ProcessDetails>,
    /// The thread impersonating a client: (ETHREAD, token, impersonation level).
    pub impersonating: Option<(u64, u64, u64)>,
    /// Pages whose PTE is a page-file reference (reads fail).
    pub paged_out: Vec<u64>,
    /// Pages whose PTE is in transition (resident, but not valid: reads fail on a live target).
    pub transition: Vec<u64>,
    /// Every page made not resident (the two above and the swapped-out stack's pages) and how:
    /// its page-file number and offset, or its frame.
    pub not_resident: Vec<(u64, crate::kernel::NotResident)>,
    /// The memory manager's invalid-PTE mask the entries of those pages are swizzled with
    /// (zero on a kernel that does not swizzle).
    pub invalid_pte_mask: u64,
    /// A thread whose kernel stack is swapped out (KernelStackResident clear).
    pub swapped_stack_thread: Option<u64>,
    /// Thread count.
    pub threads: usize,
    /// Processor count.
    pub processors: usize,
}

/// A timer set in a processor's timer table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlantedTimer {
    /// The processor whose table holds it.
    pub processor: u32,
    /// The set of lists (0, or 1 on builds with two).
    pub set: u8,
    /// The KTIMER.
    pub timer: u64,
    /// Its due time (interrupt time, 100 ns).
    pub due: u64,
    /// Its period in milliseconds (0: once).
    pub period_ms: u32,
    /// The KDPC it queues (0: none).
    pub dpc: u64,
    /// That DPC's routine as `module!function`.
    pub routine: Option<String>,
    /// The thread waiting on it (ETHREAD).
    pub waiter: Option<u64>,
    /// Due before the machine stopped (still in its list).
    pub expired: bool,
}
