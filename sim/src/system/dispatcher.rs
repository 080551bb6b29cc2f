//! Dispatcher objects: events, semaphores and mutants.

use crate::SimError;
use crate::pool::{PoolKind, tag};

use super::System;

impl System {
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
}
