//! The executive's worker queues, found the way each build keeps them: three `_EX_WORK_QUEUE`s
//! of KQUEUE kind at `nt!ExWorkerQueue` (builds whose queue has `WorkerQueue`: critical,
//! delayed, hypercritical); each NUMA node's `_ENODE.ExWorkQueues[]` (builds with that field);
//! the system partition's `_EX_PARTITION.WorkQueues[node][index]` (`PspSystemPartition` →
//! `_EPARTITION.ExPartition`, later builds). Each queue's back pointer (`Node`, `Partition`)
//! must lead back where the walk came from, or the layout was guessed wrong and it is said.
//! Threads are on the queue's thread list (through `KTHREAD.QueueListEntry`), pending work
//! items on its entry lists (one per priority for a KPRIQUEUE).

use super::{Kernel, ModelError};

/// Most threads or items read from one list.
pub const MAX_ITEMS: usize = 10_000;
/// Most NUMA nodes.
pub const MAX_NODES: u64 = 64;

/// A pending work item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkItem {
    /// The priority list it is on (a KPRIQUEUE's; 0 for a KQUEUE).
    pub priority: u8,
    /// The WORK_QUEUE_ITEM.
    pub item: u64,
    /// WorkerRoutine.
    pub routine: u64,
    /// Parameter.
    pub parameter: u64,
}

/// One executive work queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkQueue {
    /// The NUMA node.
    pub node: u32,
    /// Its name: `CriticalWorkQueue`/`DelayedWorkQueue`/`HyperCriticalWorkQueue` (KQUEUE
    /// builds), or the `_EXQUEUEINDEX` constant of its index (`ExPoolUntrusted`, …).
    pub name: String,
    /// The `_EX_WORK_QUEUE`.
    pub address: u64,
    /// Whether its queue object is a KPRIQUEUE.
    pub priority_queue: bool,
    /// Its worker threads, in list order.
    pub threads: Vec<u64>,
    /// Its pending work items, highest priority first, in queue order.
    pub items: Vec<WorkItem>,
    /// Threads active on it (CurrentCount, summed over priorities).
    pub active: u64,
    /// MaximumCount: the concurrency it allows.
    pub maximum: u64,
    /// WorkItemsProcessed.
    pub processed: u64,
    /// ThreadCount / DynamicThreadCount.
    pub thread_count: i64,
    /// MaxThreads, where the build has it.
    pub max_threads: Option<i64>,
    /// Where a list was not read whole or a pointer did not lead back.
    pub notes: Vec<String>,
    /// Whether every list was read whole.
    pub complete: bool,
}

/// KQUEUE-kind queues by index.
const KQUEUE_NAMES: [&str; 3] = [
    "CriticalWorkQueue",
    "DelayedWorkQueue",
    "HyperCriticalWorkQueue",
];

impl Kernel {
    /// Every executive work queue.
    pub fn work_queues(&mut self) -> Result<Vec<WorkQueue>, ModelError> {
        let nt = self.nt()?;
        let mut out = Vec::new();
        if nt.field("_EX_WORK_QUEUE", "WorkerQueue").is_ok() {
            let base = self.sym("ExWorkerQueue")?;
            let size = nt.size_of("_EX_WORK_QUEUE")?;
            for (i, name) in KQUEUE_NAMES.iter().enumerate() {
                out.push(self.work_queue(0, name, base + i as u64 * size, false)?);
            }
            return Ok(out);
        }
        let nodes = match self.sym("KeNumberNodes") {
            Ok(a) => u64::from(self.mem.u16(a)?),
            Err(_) => 1,
        };
        if nodes == 0 || nodes > MAX_NODES {
            return Err(ModelError::Corrupt(format!(
                "KeNumberNodes is {nodes}, more than {MAX_NODES} or none"
            )));
        }
        let index_names: Vec<(String, i64)> = nt
            .enumeration("_EXQUEUEINDEX")
            .map(|e| e.constants.clone())
            .unwrap_or_default();
        let slots = index_names
            .iter()
            .find(|(n, _)| n == "ExPoolMax")
            .map_or(8, |(_, v)| *v as u64)
            .min(32);
        let name_of = |i: u64| {
            index_names
                .iter()
                .find(|(n, v)| *v as u64 == i && n != "ExPoolMax")
                .map_or_else(|| format!("queue {i}"), |(n, _)| n.clone())
        };
        if let Ok(field) = nt.field("_ENODE", "ExWorkQueues") {
            // The node's array says how many it has.
            let slots = match &field.ty {
                kdnet_symbols::Ty::Array { count, .. } => (*count).min(32),
                _ => slots,
            };
            let block = self.sym("KeNodeBlock")?;
            let slots_at = nt.offset("_ENODE", "ExWorkQueues")?;
            let node_back = nt.offset("_EX_WORK_QUEUE", "Node")?;
            for n in 0..nodes {
                let enode = self.mem.u64(block + 8 * n)?;
                if enode == 0 {
                    continue;
                }
                let raw = self
                    .mem
                    .kread(enode.wrapping_add(slots_at), 8 * slots as usize)?;
                for i in 0..slots {
                    let o = 8 * i as usize;
                    let q = u64::from_le_bytes(raw[o..o + 8].try_into().unwrap_or([0; 8]));
                    if q == 0 {
                        continue;
                    }
                    let back = self.mem.u64(q.wrapping_add(node_back))?;
                    if back != enode {
                        return Err(ModelError::Corrupt(format!(
                            "node {n}'s work queue {i} at {q:#x} says its node is {back:#x}, \
                             not {enode:#x}"
                        )));
                    }
                    out.push(self.work_queue(n as u32, &name_of(i), q, true)?);
                }
            }
            return Ok(out);
        }
        // The system partition's executive state.
        let partition = self.mem.u64(self.sym("PspSystemPartition")?)?;
        let ex = self
            .mem
            .u64(partition.wrapping_add(nt.offset("_EPARTITION", "ExPartition")?))?;
        let v = self.view("_EX_PARTITION", ex)?;
        let object = v.get("PartitionObject")?;
        if object != partition {
            return Err(ModelError::Corrupt(format!(
                "the system partition {partition:#x}'s executive state {ex:#x} says its \
                 partition is {object:#x}"
            )));
        }
        let table = v.get("WorkQueues")?;
        let mask = v.get("QueueAllocationMask")?;
        let back_at = nt.offset("_EX_WORK_QUEUE", "Partition")?;
        let per_node = self.mem.kread(table, 8 * nodes as usize)?;
        for n in 0..nodes {
            let o = 8 * n as usize;
            let arr = u64::from_le_bytes(per_node[o..o + 8].try_into().unwrap_or([0; 8]));
            if arr == 0 {
                if mask != 0 {
                    return Err(ModelError::Corrupt(format!(
                        "the system partition allocates work queues (QueueAllocationMask \
                         {mask:#x}) but node {n} has none"
                    )));
                }
                continue;
            }
            let raw = self.mem.kread(arr, 8 * slots as usize)?;
            for i in 0..slots {
                let o = 8 * i as usize;
                let q = u64::from_le_bytes(raw[o..o + 8].try_into().unwrap_or([0; 8]));
                if q == 0 {
                    if mask >> i & 1 == 1 {
                        return Err(ModelError::Corrupt(format!(
                            "node {n}'s work queue {i} is allocated (QueueAllocationMask \
                             {mask:#x}) but its pointer is null"
                        )));
                    }
                    continue;
                }
                let back = self.mem.u64(q.wrapping_add(back_at))?;
                if back != ex {
                    return Err(ModelError::Corrupt(format!(
                        "node {n}'s work queue {i} at {q:#x} says its partition is {back:#x}, \
                         not {ex:#x}"
                    )));
                }
                out.push(self.work_queue(n as u32, &name_of(i), q, true)?);
            }
        }
        Ok(out)
    }

    fn work_queue(
        &mut self,
        node: u32,
        name: &str,
        address: u64,
        priority_queue: bool,
    ) -> Result<WorkQueue, ModelError> {
        let nt = self.nt()?;
        let v = self.view("_EX_WORK_QUEUE", address)?;
        let object = if priority_queue {
            "WorkPriQueue"
        } else {
            "WorkerQueue"
        };
        let mut notes = Vec::new();
        let mut complete = true;
        // Threads.
        let thread_link = nt.offset("_KTHREAD", "QueueListEntry")?;
        let threads_head = v.addr_of(&format!("{object}.ThreadListHead"))?;
        // Each thread read whole with its link (what is shown of it then comes from there).
        let thread_size = nt.size_of("_ETHREAD")? as usize;
        let w = self.walk_list(
            threads_head,
            Some((thread_link, thread_size)),
            MAX_ITEMS,
            false,
        )?;
        if let Some(n) = w.note {
            notes.push(format!("its thread list: {n}"));
            complete = false;
        }
        let threads = w
            .entries
            .iter()
            .map(|e| e.wrapping_sub(thread_link))
            .collect();
        // Items.
        let item_link = nt.offset("_WORK_QUEUE_ITEM", "List")?;
        let item_size = nt.size_of("_WORK_QUEUE_ITEM")? as usize;
        let mut items = Vec::new();
        let heads: Vec<(u8, u64)> = if priority_queue {
            let first = v.addr_of("WorkPriQueue.EntryListHead")?;
            (0..32u8)
                .rev()
                .map(|p| (p, first + 16 * u64::from(p)))
                .collect()
        } else {
            vec![(0, v.addr_of("WorkerQueue.EntryListHead")?)]
        };
        let raw_heads = if priority_queue {
            Some(v.bytes_of("WorkPriQueue.EntryListHead", 32 * 16)?.to_vec())
        } else {
            None
        };
        for (p, head) in heads {
            if let Some(raw) = &raw_heads {
                let o = 16 * usize::from(p);
                let flink = u64::from_le_bytes(raw[o..o + 8].try_into().unwrap_or([0; 8]));
                if flink == head {
                    continue;
                }
            }
            let w = self.walk_list(head, Some((item_link, item_size)), MAX_ITEMS, false)?;
            if let Some(n) = w.note {
                notes.push(format!("its priority {p} items: {n}"));
                complete = false;
            }
            for (e, bytes) in w.entries.iter().zip(w.nodes) {
                let item = e.wrapping_sub(item_link);
                let iv = super::view::View::new(nt.clone(), "_WORK_QUEUE_ITEM", item, bytes);
                items.push(WorkItem {
                    priority: p,
                    item,
                    routine: iv.get("WorkerRoutine")?,
                    parameter: iv.get("Parameter")?,
                });
            }
        }
        let active = if priority_queue {
            let b = v.bytes_of("WorkPriQueue.CurrentCount", 32 * 4)?;
            b.chunks_exact(4)
                .map(|c| u64::from(u32::from_le_bytes(c.try_into().unwrap_or([0; 4]))))
                .sum()
        } else {
            v.get("WorkerQueue.CurrentCount")?
        };
        // The queue's own count of its workers: ThreadCount, or on KQUEUE builds that keep
        // it the worker info's WorkerCount (DynamicThreadCount there counts only the threads
        // the balance manager added).
        let thread_count = if v.has("Info.WorkerCount") {
            v.get("Info.WorkerCount")? as i64
        } else if v.has("ThreadCount") {
            v.get_signed("ThreadCount")?
        } else {
            v.get_signed("DynamicThreadCount")?
        };
        Ok(WorkQueue {
            node,
            name: name.to_string(),
            address,
            priority_queue,
            threads,
            items,
            active,
            maximum: v.get(&format!("{object}.MaximumCount"))?,
            processed: v.get("WorkItemsProcessed")?,
            thread_count,
            max_threads: if v.has("MaxThreads") {
                Some(v.get_signed("MaxThreads")?)
            } else {
                None
            },
            notes,
            complete,
        })
    }
}
