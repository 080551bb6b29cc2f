//! Which structure families a kernel uses, told by its symbol table alone (the types, members
//! and symbols it has), never by the build number: a table of a build the project has never
//! seen gets the families its contents say it has.

use crate::SimError;
use crate::kernel::Kernel;

/// How the kernel pool is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolFamily {
    /// Pool descriptors with free-list heads, pages carved into `_POOL_HEADER` blocks.
    Classic,
    /// The segment heap (`ExPoolState`'s heaps; 19H1 and later).
    SegmentHeap,
}

/// How the system address space is arranged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaFamily {
    /// Fixed regions (`MmNonPagedPoolStart`), the page tables' self-map at the fixed slot.
    Fixed,
    /// Regions assigned at boot, the self-map still at the fixed slot (no `MmPteBase`).
    Dynamic,
    /// Regions assigned at boot and a self-map slot chosen at random (`MmPteBase`).
    Randomized,
}

/// How an `_ERESOURCE`'s waiters are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaiterFamily {
    /// A pointer to a KEVENT (exclusive) and a KSEMAPHORE (shared).
    Objects,
    /// Shared waiters in a `_KWAIT_CHAIN` embedded in the resource, exclusive ones on an event.
    EmbeddedChain,
    /// Both sides on circular chains of `_KWAIT_CHAIN_ENTRY` naming their threads.
    Chain,
}

/// Where the memory manager keeps its figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmFamily {
    /// Plain globals (`MmPagedPoolCommit`, `MmTotalCommittedPages` …).
    Globals,
    /// The system partition and `MiState`.
    Partition,
}

/// The families of one table, with the evidence for each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Families {
    /// The pool.
    pub pool: PoolFamily,
    /// The system address space.
    pub va: VaFamily,
    /// Resource waiters.
    pub waiters: WaiterFamily,
    /// Memory-manager figures.
    pub mm: MmFamily,
    /// The loader's module entry type.
    pub loader_entry: &'static str,
    /// Bytes of the debugger data block this kernel fills in (the last member it has a
    /// source for).
    pub kdbg_size: u64,
    /// One line per family: what was chosen and the table's evidence.
    pub why: Vec<String>,
}

impl Families {
    /// Families of no table, held only while the kernel is being made.
    pub(crate) fn placeholder() -> Families {
        Families {
            pool: PoolFamily::SegmentHeap,
            va: VaFamily::Randomized,
            waiters: WaiterFamily::Chain,
            mm: MmFamily::Partition,
            loader_entry: "_KLDR_DATA_TABLE_ENTRY",
            kdbg_size: 0x380,
            why: Vec::new(),
        }
    }

    /// Reads the families off the kernel's table (every name consulted is recorded as used,
    /// so the compact built-in table keeps the evidence).
    pub fn of(k: &Kernel) -> Result<Families, SimError> {
        let mut why = Vec::new();
        let classic = k.has("_POOL_DESCRIPTOR", "ListHeads");
        let heap = k.has_sym("ExPoolState") && k.has_type("_SEGMENT_HEAP");
        let pool = if classic {
            why.push("pool: classic (_POOL_DESCRIPTOR has ListHeads)".to_string());
            PoolFamily::Classic
        } else if heap {
            why.push(
                "pool: segment heap (ExPoolState and _SEGMENT_HEAP; no _POOL_DESCRIPTOR.ListHeads)"
                    .to_string(),
            );
            PoolFamily::SegmentHeap
        } else {
            return Err(SimError::Config(
                "the table has neither _POOL_DESCRIPTOR.ListHeads (a classic pool) nor ExPoolState and _SEGMENT_HEAP (the segment heap): the simulator cannot lay out this kernel's pool"
                    .into(),
            ));
        };
        let va = if k.has_sym("MmNonPagedPoolStart") {
            why.push("address space: fixed regions (MmNonPagedPoolStart)".to_string());
            VaFamily::Fixed
        } else if k.has_sym("MmPteBase") {
            why.push(
                "address space: regions assigned at boot, randomized self-map (MmPteBase)"
                    .to_string(),
            );
            VaFamily::Randomized
        } else {
            why.push(
                "address space: regions assigned at boot, fixed self-map (no MmNonPagedPoolStart, no MmPteBase)"
                    .to_string(),
            );
            VaFamily::Dynamic
        };
        let waiters = if k.has("_ERESOURCE", "SharedWaiters.Head") {
            why.push(
                "resource waiters: shared ones on a _KWAIT_CHAIN inside the resource (_ERESOURCE.SharedWaiters.Head)"
                    .to_string(),
            );
            WaiterFamily::EmbeddedChain
        } else if k.has("_KWAIT_CHAIN_ENTRY", "Thread") && k.has("_KWAIT_CHAIN_ENTRY", "Event") {
            why.push(
                "resource waiters: wait chains (_KWAIT_CHAIN_ENTRY has Thread and Event)"
                    .to_string(),
            );
            WaiterFamily::Chain
        } else {
            why.push(
                "resource waiters: an event and a semaphore (no _KWAIT_CHAIN_ENTRY.Thread)"
                    .to_string(),
            );
            WaiterFamily::Objects
        };
        let mm = if k.has_sym("MiState") && k.has_sym("MiSystemPartition") {
            why.push("memory manager: partition (MiState, MiSystemPartition)".to_string());
            MmFamily::Partition
        } else {
            why.push("memory manager: globals (no MiState)".to_string());
            MmFamily::Globals
        };
        let loader_entry = if k.has_type("_KLDR_DATA_TABLE_ENTRY") {
            "_KLDR_DATA_TABLE_ENTRY"
        } else {
            "_LDR_DATA_TABLE_ENTRY"
        };
        why.push(format!("loader entries: {loader_entry}"));
        // The debugger data block grew with the kernel: each step reaches a member whose
        // source only a kernel of that step has.
        let steps: [(bool, u64, &str); 4] = [
            (k.has_type("_KPRIQUEUE"), 0x360, "_KPRIQUEUE"),
            (k.has_sym("MmPteBase"), 0x368, "MmPteBase"),
            (
                k.has_sym("KeIsRetpolineEnabled"),
                0x37c,
                "KeIsRetpolineEnabled",
            ),
            (
                k.has("_EPROCESS", "MmHotPatchContext"),
                0x380,
                "_EPROCESS.MmHotPatchContext",
            ),
        ];
        let mut kdbg_size = 0x340;
        let mut reason = "the Windows 7 members";
        for (has, size, name) in steps {
            if has {
                kdbg_size = size;
                reason = name;
            }
        }
        why.push(format!(
            "debugger data block: {kdbg_size:#x} bytes (up to {reason})"
        ));
        Ok(Families {
            pool,
            va,
            waiters,
            mm,
            loader_entry,
            kdbg_size,
            why,
        })
    }
}
