//! The scheduler's queues as each processor's KPRCB holds them: the ready lists by priority
//! (`DispatcherReadyListHead`, and the `_KSHARED_READY_QUEUE` processors share on builds that
//! have one), and the DPC queues (`DpcData[0]` normal, `DpcData[1]` threaded: a singly linked
//! list with a last-entry pointer, or a LIST_ENTRY list on 7601). Every walk is bounded and
//! says where it stopped.

use std::collections::HashSet;

use super::procs::Processor;
use super::{Kernel, ModelError};

/// Most entries read from one queue.
pub const MAX_QUEUE: usize = 10_000;

/// One ready queue: a processor's, or the one processors share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyQueue {
    /// The processor it belongs to (None: the shared queue).
    pub processor: Option<u32>,
    /// The processors that point at it (for the shared queue).
    pub shared_by: Vec<u32>,
    /// The KPRCB or `_KSHARED_READY_QUEUE`.
    pub address: u64,
    /// ReadySummary: bit N set when priority N has a ready thread.
    pub summary: u32,
    /// The threads by priority, highest first: (priority, threads in queue order).
    pub priorities: Vec<(u8, Vec<u64>)>,
    /// Why a list was not read whole, or disagrees with ReadySummary.
    pub notes: Vec<String>,
    /// Whether every list was read whole.
    pub complete: bool,
}

/// A queued DPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedDpc {
    /// The KDPC.
    pub dpc: u64,
    /// Its type (0x13 DpcObject, 0x1a ThreadedDpcObject).
    pub kind: u8,
    /// Importance (0 low, 1 medium, 2 high, 3 medium-high).
    pub importance: u8,
    /// DeferredRoutine.
    pub routine: u64,
    /// DeferredContext.
    pub context: u64,
}

/// A processor's DPC queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpcQueues {
    /// The processor.
    pub processor: u32,
    /// Its KPRCB.
    pub prcb: u64,
    /// The normal queue and the threaded one, in queue order.
    pub queues: [Vec<QueuedDpc>; 2],
    /// DpcQueueDepth of each.
    pub depth: [i64; 2],
    /// DpcCount of each.
    pub count: [u64; 2],
    /// Why a queue was not read whole, or disagrees with its depth.
    pub notes: Vec<String>,
    /// Whether both were read whole.
    pub complete: bool,
}

impl Kernel {
    /// Every processor's ready queue, then the shared ones.
    pub fn ready_queues(&mut self) -> Result<Vec<ReadyQueue>, ModelError> {
        let nt = self.nt()?;
        let cpus = self.processors()?;
        let summary_at = nt.offset("_KPRCB", "ReadySummary")?;
        let heads_at = nt.offset("_KPRCB", "DispatcherReadyListHead")?;
        let shared_at = nt.offset("_KPRCB", "SharedReadyQueue").ok();
        let mut out = Vec::new();
        let mut shared: Vec<(u64, Vec<u32>)> = Vec::new();
        // ReadySummary, the list heads and the shared queue's pointer lie close together in
        // the KPRCB: one read for all three.
        let lo = summary_at.min(heads_at).min(shared_at.unwrap_or(u64::MAX));
        let hi = (heads_at + 32 * 16)
            .max(summary_at + 4)
            .max(shared_at.map_or(0, |s| s + 8));
        let span = usize::try_from(hi - lo)
            .ok()
            .filter(|n| *n <= 0x4000)
            .ok_or_else(|| {
                ModelError::Corrupt(format!("_KPRCB's ready fields span {:#x} bytes", hi - lo))
            })?;
        let at = |b: &[u8], off: u64, n: usize| -> Vec<u8> {
            let o = (off - lo) as usize;
            b[o..o + n].to_vec()
        };
        for c in &cpus {
            let block = self.mem.kread(c.prcb + lo, span)?;
            let summary =
                u32::from_le_bytes(at(&block, summary_at, 4).try_into().unwrap_or([0; 4]));
            let raw = at(&block, heads_at, 32 * 16);
            out.push(self.ready_lists(Some(c.number), c.prcb, summary, c.prcb + heads_at, raw)?);
            if let Some(off) = shared_at {
                let q = u64::from_le_bytes(at(&block, off, 8).try_into().unwrap_or([0; 8]));
                if q != 0 {
                    match shared.iter_mut().find(|(a, _)| *a == q) {
                        Some((_, by)) => by.push(c.number),
                        None => shared.push((q, vec![c.number])),
                    }
                }
            }
        }
        if !shared.is_empty() {
            let s_summary = nt.offset("_KSHARED_READY_QUEUE", "ReadySummary")?;
            let s_heads = nt.offset("_KSHARED_READY_QUEUE", "ReadyListHead")?;
            for (q, by) in shared {
                let end = (s_heads + 32 * 16).max(s_summary + 4) as usize;
                let block = self.mem.kread(q, end)?;
                let o = s_summary as usize;
                let summary = u32::from_le_bytes(block[o..o + 4].try_into().unwrap_or([0; 4]));
                let h = s_heads as usize;
                let raw = block[h..h + 32 * 16].to_vec();
                let mut r = self.ready_lists(None, q, summary, q + s_heads, raw)?;
                r.shared_by = by;
                out.push(r);
            }
        }
        Ok(out)
    }

    fn ready_lists(
        &mut self,
        processor: Option<u32>,
        address: u64,
        summary: u32,
        heads: u64,
        raw: Vec<u8>,
    ) -> Result<ReadyQueue, ModelError> {
        let nt = self.nt()?;
        let link = nt.offset("_KTHREAD", "WaitListEntry")?;
        // Each thread is read whole with its link, in one request (what `!ready` shows of it
        // then comes from there).
        let size = nt.size_of("_ETHREAD")? as usize;
        let mut priorities = Vec::new();
        let mut notes = Vec::new();
        let mut complete = true;
        for p in (0..32u8).rev() {
            let o = 16 * usize::from(p);
            let flink = u64::from_le_bytes(raw[o..o + 8].try_into().unwrap_or([0; 8]));
            let head = heads + o as u64;
            let empty = flink == head;
            let bit = summary >> p & 1 == 1;
            if empty {
                if bit {
                    notes.push(format!(
                        "ReadySummary has priority {p} but its list is empty"
                    ));
                }
                continue;
            }
            let walk = self.walk_list(head, Some((link, size)), MAX_QUEUE, false)?;
            if let Some(n) = walk.note {
                notes.push(format!("priority {p}: {n}"));
                complete = false;
            }
            if !bit {
                notes.push(format!(
                    "priority {p} has threads but ReadySummary does not say so"
                ));
            }
            let threads = walk.entries.iter().map(|e| e.wrapping_sub(link)).collect();
            priorities.push((p, threads));
        }
        Ok(ReadyQueue {
            processor,
            shared_by: Vec::new(),
            address,
            summary,
            priorities,
            notes,
            complete,
        })
    }

    /// Every processor's DPC queues.
    pub fn dpc_queues(&mut self) -> Result<Vec<DpcQueues>, ModelError> {
        let cpus = self.processors()?;
        let mut out = Vec::new();
        for c in &cpus {
            out.push(self.processor_dpcs(c)?);
        }
        Ok(out)
    }

    fn processor_dpcs(&mut self, c: &Processor) -> Result<DpcQueues, ModelError> {
        let nt = self.nt()?;
        let data_size = nt.size_of("_KDPC_DATA")?;
        let data0 = c.prcb + nt.offset("_KPRCB", "DpcData")?;
        let link = nt.offset("_KDPC", "DpcListEntry")?;
        let dpc_size = nt.size_of("_KDPC")? as usize;
        let doubly = nt.offset("_KDPC_DATA", "DpcListHead").ok();
        let mut queues: [Vec<QueuedDpc>; 2] = [Vec::new(), Vec::new()];
        let mut depth = [0i64; 2];
        let mut count = [0u64; 2];
        let mut notes = Vec::new();
        let mut complete = true;
        for (i, queue) in queues.iter_mut().enumerate() {
            let which = if i == 0 { "normal" } else { "threaded" };
            let mut whole = true;
            let data = data0 + i as u64 * data_size;
            let v = self.view("_KDPC_DATA", data)?;
            depth[i] = v.get_signed("DpcQueueDepth")?;
            count[i] = v.get("DpcCount")?;
            let (entries, mut note) = match doubly {
                Some(off) => {
                    let w = self.walk_list(data + off, Some((link, dpc_size)), MAX_QUEUE, false)?;
                    (w.entries, w.note)
                }
                None => self.single_list(v.get("DpcList.ListHead.Next")?, link, dpc_size)?,
            };
            // A singly linked list ends where LastEntry says it does.
            if doubly.is_none() && note.is_none() {
                let last = v.get("DpcList.LastEntry")?;
                let head = data + nt.offset("_KDPC_DATA", "DpcList.ListHead")?;
                let ends = entries.last().copied().unwrap_or(head);
                if !entries.is_empty() && last != ends {
                    note = Some(format!(
                        "the list ends at {ends:#x} but its LastEntry is {last:#x}"
                    ));
                }
            }
            if let Some(n) = note {
                notes.push(format!("the {which} queue: {n}"));
                whole = false;
            }
            for e in entries {
                let dpc = e.wrapping_sub(link);
                match self.view("_KDPC", dpc) {
                    Ok(d) => queue.push(QueuedDpc {
                        dpc,
                        kind: d.get("Type")? as u8,
                        importance: d.get("Importance")? as u8,
                        routine: d.get("DeferredRoutine")?,
                        context: d.get("DeferredContext")?,
                    }),
                    Err(err) if !err.is_layout() => {
                        notes.push(format!("the {which} queue: DPC {dpc:#x}: {err}"));
                        whole = false;
                        break;
                    }
                    Err(err) => return Err(err),
                }
            }
            if whole && queue.len() as i64 != depth[i] {
                notes.push(format!(
                    "the {which} queue holds {} DPCs but its DpcQueueDepth is {}",
                    queue.len(),
                    depth[i]
                ));
                // Fewer than the depth: some may not have been reached.
                whole = (queue.len() as i64) > depth[i];
            }
            complete &= whole;
        }
        Ok(DpcQueues {
            processor: c.number,
            prcb: c.prcb,
            queues,
            depth,
            count,
            notes,
            complete,
        })
    }

    /// The entries of a singly linked list from its first entry: each entry's first qword is
    /// the next one's address, 0 at the end. Each entry's structure (`size` bytes, the link
    /// `link` bytes in) is read whole with it.
    fn single_list(
        &mut self,
        first: u64,
        link: u64,
        size: usize,
    ) -> Result<(Vec<u64>, Option<String>), ModelError> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut cur = first;
        while cur != 0 {
            if out.len() >= MAX_QUEUE {
                return Ok((
                    out,
                    Some(format!("stopped after {MAX_QUEUE} entries (limit)")),
                ));
            }
            if !cur.is_multiple_of(8) || !crate::mem::canonical(cur, self.mem.paging_levels()) {
                return Ok((
                    out,
                    Some(format!(
                        "the list is broken: next pointer {cur:#x} is not an address"
                    )),
                ));
            }
            if !seen.insert(cur) {
                return Ok((out, Some(format!("the list loops back to {cur:#x}"))));
            }
            let start = cur.wrapping_sub(link);
            let lo = link as usize;
            cur = match self.mem.kread(start, size.max(lo + 8)) {
                Ok(b) => {
                    out.push(cur);
                    u64::from_le_bytes(b[lo..lo + 8].try_into().unwrap_or([0; 8]))
                }
                Err(e) => return Ok((out, Some(format!("entry {cur:#x} is unreadable: {e}")))),
            };
        }
        Ok((out, None))
    }
}
