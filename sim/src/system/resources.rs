//! Executive resources: ERESOURCEs, their owners and their waiters.

use crate::SimError;
use crate::families::WaiterFamily;
use crate::image::Gpr;
use crate::pool::{PoolKind, tag};

use super::System;

impl System {
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
    /// Either way `ExpWaitForResource` keeps the resource in a non-volatile register across
    /// the wait (it acquires it when the wait ends), which the frames inside it save.
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
        for w in waiters {
            // Which register the compiler chose differs between builds; one of them.
            let regs = [
                Gpr::Rbx,
                Gpr::Rsi,
                Gpr::Rdi,
                Gpr::R12,
                Gpr::R13,
                Gpr::R14,
                Gpr::R15,
            ];
            let reg = regs[(self.k.build as usize + *w) % regs.len()];
            self.set_frame_register(*w, "ExpWaitForResource", reg, r)
                .map_err(|e| {
                    SimError::Config(format!(
                        "a resource waiter needs nt!ExpWaitForResource on its stack: {e}"
                    ))
                })?;
        }
        let contention = self.k.get(r, "_ERESOURCE", "ContentionCount")?;
        self.k.set(
            r,
            "_ERESOURCE",
            "ContentionCount",
            contention + waiters.len() as u64,
        )?;
        // The form each side has on this build, from the table: a `_KWAIT_CHAIN` inside the
        // resource (14393's shared waiters: entries without a thread, singly linked), a
        // pointer to the first of a circular list of entries that name their threads
        // (17763+), or a pointer to a KEVENT/KSEMAPHORE (7601, 9600, 14393's exclusive side).
        let embedded_chain = self.k.has("_ERESOURCE", &format!("{field}.Head"));
        let chain = embedded_chain || self.k.families.waiters == WaiterFamily::Chain;
        if chain {
            let mut entries = Vec::new();
            for w in waiters {
                let rsp = self.frame_rsp(*w, "ExpWaitForResource").ok_or_else(|| {
                    SimError::Config(
                        "a resource waiter needs nt!ExpWaitForResource on its stack".into(),
                    )
                })?;
                let entry = rsp + 0x20;
                let et = self.threads[*w].ethread;
                if !embedded_chain {
                    self.k.set(entry, "_KWAIT_CHAIN_ENTRY", "Thread", et)?;
                }
                let ev = entry + self.k.off("_KWAIT_CHAIN_ENTRY", "Event")?;
                self.event_at(ev, "EventSynchronizationObject")?;
                self.wait(*w, &[ev], "WrResource", seconds_ago)?;
                entries.push(entry);
            }
            if embedded_chain {
                // A singly linked list from the resource's head, ending in null; new waiters
                // go in front of those already there.
                let head = r + self.k.off("_ERESOURCE", &format!("{field}.Head"))?;
                let existing = self.k.r64(head);
                for (i, e) in entries.iter().enumerate() {
                    let next = entries.get(i + 1).copied().unwrap_or(existing);
                    self.k.w64(*e, next);
                }
                self.k.w64(head, entries[0]);
            } else {
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
}
