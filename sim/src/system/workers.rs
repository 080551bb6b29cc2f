//! The executive's worker queues as each build lays them out: three `_EX_WORK_QUEUE`s of
//! KQUEUE kind at `nt!ExWorkerQueue` (7601: critical, delayed, hypercritical); queues of
//! KPRIQUEUE kind that each NUMA node's `_ENODE.ExWorkQueues` points to (9600, 14393); the
//! same queues reached from the system partition (`PspSystemPartition` → `_EPARTITION` →
//! `_EX_PARTITION.WorkQueues[node][index]`, later builds). Worker threads sit on the queue's
//! thread list; pending work items on its entry lists (one per priority for a KPRIQUEUE).

use crate::SimError;
use crate::pool::{PoolKind, tag};

use super::System;

/// A work queue the simulator laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkQueueRec {
    /// The `_EX_WORK_QUEUE`.
    pub address: u64,
    /// Its queue object: a KPRIQUEUE (per-priority lists) or a KQUEUE (one list).
    pub priority: bool,
}

impl System {
    /// Lays out the executive's work queues for this build; returns them in the order a
    /// debugger lists them (7601: critical, delayed, hypercritical; later: the node's queues
    /// by index, the executive's then the I/O manager's).
    pub fn work_queues(&mut self) -> Result<Vec<WorkQueueRec>, SimError> {
        let k = &mut self.k;
        let mut out = Vec::new();
        if k.has("_EX_WORK_QUEUE", "WorkerQueue") {
            let base = k.sym("ExWorkerQueue")?;
            let size = k.size("_EX_WORK_QUEUE")?;
            let ty = k.enum_value("_KOBJECTS", "QueueObject")? as u64;
            for i in 0..3 {
                let q = base + i * size;
                k.set(q, "_EX_WORK_QUEUE", "WorkerQueue.Header.Type", ty)?;
                for l in [
                    "WorkerQueue.Header.WaitListHead",
                    "WorkerQueue.EntryListHead",
                    "WorkerQueue.ThreadListHead",
                ] {
                    let at = q + k.off("_EX_WORK_QUEUE", l)?;
                    k.list_init(at);
                }
                k.set(q, "_EX_WORK_QUEUE", "WorkerQueue.MaximumCount", 4)?;
                k.set(
                    q,
                    "_EX_WORK_QUEUE",
                    "WorkItemsProcessed",
                    0x2_31c4 + 0x1_07 * i,
                )?;
                out.push(WorkQueueRec {
                    address: q,
                    priority: false,
                });
            }
            return Ok(out);
        }
        let nodes_at = k.sym("KeNumberNodes")?;
        k.w16(nodes_at, 1);
        // The executive's queue and the next index's (the I/O manager's, or the trusted
        // pool's on 9600).
        let count = 2;
        let mut queues = Vec::new();
        for i in 0..count {
            let q = self.alloc_object("_EX_WORK_QUEUE", "ExWq")?;
            queues.push(q);
            out.push(WorkQueueRec {
                address: q,
                priority: true,
            });
            let k = &mut self.k;
            let ty = k.enum_value("_KOBJECTS", "PriQueueObject")? as u64;
            k.set(q, "_EX_WORK_QUEUE", "WorkPriQueue.Header.Type", ty)?;
            let wl = q + k.off("_EX_WORK_QUEUE", "WorkPriQueue.Header.WaitListHead")?;
            k.list_init(wl);
            let heads = q + k.off("_EX_WORK_QUEUE", "WorkPriQueue.EntryListHead")?;
            for p in 0..32 {
                k.list_init(heads + 16 * p);
            }
            let tl = q + k.off("_EX_WORK_QUEUE", "WorkPriQueue.ThreadListHead")?;
            k.list_init(tl);
            k.set(q, "_EX_WORK_QUEUE", "WorkPriQueue.MaximumCount", 4)?;
            k.set(
                q,
                "_EX_WORK_QUEUE",
                "WorkItemsProcessed",
                0x4_81a0 + 0x3_11 * i,
            )?;
            k.set(q, "_EX_WORK_QUEUE", "MaxThreads", 0x400)?;
            if k.has("_EX_WORK_QUEUE", "QueueIndex") {
                k.set(q, "_EX_WORK_QUEUE", "QueueIndex", i)?;
            }
        }
        let k = &mut self.k;
        if k.has("_ENODE", "ExWorkQueues") {
            // 9600, 14393: the node's block points at its queues.
            let enode = self.alloc_object("_ENODE", "KeNd")?;
            let k = &mut self.k;
            let block = k.sym("KeNodeBlock")?;
            k.w64(block, enode);
            let slots = enode + k.off("_ENODE", "ExWorkQueues")?;
            for (i, q) in queues.iter().enumerate() {
                k.w64(slots + 8 * i as u64, *q);
                k.set(*q, "_EX_WORK_QUEUE", "Node", enode)?;
            }
        } else {
            // The system partition's executive state.
            let ep = self.alloc_object("_EPARTITION", "Part")?;
            let ex = self.alloc_object("_EX_PARTITION", "ExPr")?;
            // WorkQueues: one pointer per node, each to eight queue pointers.
            let per_node = self
                .pool
                .alloc(&mut self.k, PoolKind::NonPaged, 8 * 8, tag("ExPr"))?;
            let nodes = self
                .pool
                .alloc(&mut self.k, PoolKind::NonPaged, 8, tag("ExPr"))?;
            let k = &mut self.k;
            k.w64(k.sym("PspSystemPartition")?, ep);
            k.set(ep, "_EPARTITION", "ExPartition", ex)?;
            k.set(ex, "_EX_PARTITION", "PartitionObject", ep)?;
            k.set(ex, "_EX_PARTITION", "WorkQueues", nodes)?;
            k.set(
                ex,
                "_EX_PARTITION",
                "QueueAllocationMask",
                (1u64 << queues.len()) - 1,
            )?;
            k.w64(nodes, per_node);
            for (i, q) in queues.iter().enumerate() {
                k.w64(per_node + 8 * i as u64, *q);
                k.set(*q, "_EX_WORK_QUEUE", "Partition", ex)?;
            }
        }
        Ok(out)
    }

    /// Makes thread `t` one of queue `q`'s workers: its Queue pointer, its QueueListEntry on
    /// the queue's thread list, and (unless it is waiting for work) one more of the queue's
    /// active threads.
    pub fn attach_worker(
        &mut self,
        t: usize,
        q: &WorkQueueRec,
        active: bool,
    ) -> Result<(), SimError> {
        let et = self.threads[t].ethread;
        let k = &mut self.k;
        let object = if q.priority {
            "WorkPriQueue"
        } else {
            "WorkerQueue"
        };
        let queue = q.address + k.off("_EX_WORK_QUEUE", object)?;
        k.set(et, "_ETHREAD", "Tcb.Queue", queue)?;
        let list = q.address + k.off("_EX_WORK_QUEUE", &format!("{object}.ThreadListHead"))?;
        k.list_append(list, et + k.off("_ETHREAD", "Tcb.QueueListEntry")?);
        if q.priority {
            let n = k.get(q.address, "_EX_WORK_QUEUE", "ThreadCount")?;
            k.set(q.address, "_EX_WORK_QUEUE", "ThreadCount", n + 1)?;
        } else {
            // The boot-time workers: the worker info's count (DynamicThreadCount is for the
            // threads the balance manager adds later).
            let n = k.get(q.address, "_EX_WORK_QUEUE", "Info.WorkerCount")?;
            k.set(q.address, "_EX_WORK_QUEUE", "Info.WorkerCount", n + 1)?;
        }
        if active {
            let at = if q.priority {
                // CurrentCount[priority 12], the delayed priority the items run at.
                q.address + k.off("_EX_WORK_QUEUE", "WorkPriQueue.CurrentCount")? + 4 * 12
            } else {
                q.address + k.off("_EX_WORK_QUEUE", "WorkerQueue.CurrentCount")?
            };
            let n = k.r32(at);
            k.w32(at, n + 1);
        }
        Ok(())
    }

    /// A work item (`WORK_QUEUE_ITEM`) for `routine` with `parameter`, pending on queue `q`
    /// (at `priority` on a KPRIQUEUE); returns it.
    pub fn queue_work_item(
        &mut self,
        q: &WorkQueueRec,
        priority: u8,
        routine: &str,
        parameter: u64,
    ) -> Result<u64, SimError> {
        let item = self.alloc_object("_WORK_QUEUE_ITEM", "IoWI")?;
        let routine = self.routine(routine)?;
        let k = &mut self.k;
        k.set(item, "_WORK_QUEUE_ITEM", "WorkerRoutine", routine)?;
        k.set(item, "_WORK_QUEUE_ITEM", "Parameter", parameter)?;
        let link = item + k.off("_WORK_QUEUE_ITEM", "List")?;
        let head = if q.priority {
            q.address
                + k.off("_EX_WORK_QUEUE", "WorkPriQueue.EntryListHead")?
                + 16 * u64::from(priority.min(31))
        } else {
            q.address + k.off("_EX_WORK_QUEUE", "WorkerQueue.EntryListHead")?
        };
        k.list_append(head, link);
        // A KQUEUE's signal state counts its entries.
        let header = if q.priority {
            "WorkPriQueue.Header.SignalState"
        } else {
            "WorkerQueue.Header.SignalState"
        };
        let n = k.get(q.address, "_EX_WORK_QUEUE", header)?;
        k.set(q.address, "_EX_WORK_QUEUE", header, n + 1)?;
        Ok(item)
    }

    /// Every executive worker thread (started at `nt!ExpWorkerThread`) not yet on a queue
    /// becomes an active worker of `q`: a scenario's workers are busy with their items.
    pub fn attach_busy_workers(&mut self, q: &WorkQueueRec) -> Result<Vec<u64>, SimError> {
        let start = self.routine("nt!ExpWorkerThread")?;
        let mut out = Vec::new();
        for t in 0..self.threads.len() {
            let et = self.threads[t].ethread;
            if self.k.get(et, "_ETHREAD", "StartAddress")? == start
                && self.k.get(et, "_ETHREAD", "Tcb.Queue")? == 0
            {
                self.attach_worker(t, q, true)?;
                out.push(et);
            }
        }
        Ok(out)
    }
}
