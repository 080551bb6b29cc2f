//! Threads across the machine: every process with its threads, a thread's stack (from its
//! processor's registers when it runs), the frame it is blocked in, the current thread of a
//! processor.

use super::procs::{Process, Thread};
use super::unwind::Stack;
use super::{Kernel, ModelError};

/// Frames of the generic wait and scheduler path, skipped when naming what a thread is
/// blocked in.
pub const WAIT_PATH: [&str; 29] = [
    "KiSwapContext",
    "SwapContext",
    "KiSwapThread",
    "KiCommitThreadWait",
    "KeWaitForSingleObject",
    "KeWaitForMultipleObjects",
    "KeWaitForMutexObject",
    "KeRemoveQueueEx",
    "KeRemovePriQueue",
    "KeRemoveQueue",
    "KeDelayExecutionThread",
    "KiSchedulerApc",
    "KiDeliverApc",
    "KiCheckForKernelApcDelivery",
    "ExpWaitForResource",
    "ExfAcquirePushLockExclusiveEx",
    "ExfAcquirePushLockSharedEx",
    "ExpAcquireFastMutexContended",
    "KeAcquireGuardedMutex",
    "ExAcquireFastMutex",
    "AlpcpSignalAndWait",
    "AlpcpWaitForSingleObject",
    "KiIdleLoop",
    "ExAcquireResourceExclusiveLite",
    "ExAcquireResourceSharedLite",
    "ExAcquireSharedStarveExclusive",
    "ExAcquireSharedWaitForExclusive",
    "ExAcquireFastMutexUnsafe",
    "KeAcquireGuardedMutexUnsafe",
];

/// A process and its threads.
pub type ProcessThreads = (Process, Vec<Thread>);

/// The frame a thread is blocked in: the first one off the generic wait path.
pub fn blocker(stack: &Stack) -> Option<String> {
    stack
        .frames
        .iter()
        .find(|f| {
            let name = f.call_site.split('!').nth(1).unwrap_or(&f.call_site);
            let func = name.split('+').next().unwrap_or(name);
            !WAIT_PATH.contains(&func)
        })
        .map(|f| f.call_site.clone())
}

impl Kernel {
    /// A thread's stack, started from its processor's registers when it runs (a running
    /// thread whose processor's registers cannot be read is unwound from its saved state).
    pub fn stack_of(&mut self, t: &Thread) -> Result<Stack, ModelError> {
        let ctx = if t.state == 2 {
            self.context(t.processor as u32).ok()
        } else {
            None
        };
        self.thread_stack(t, ctx.as_ref())
    }

    /// Says in the result that a thread's stack is not whole.
    pub fn note_stack(&mut self, t: &Thread, st: &Stack) {
        if !st.complete {
            self.note_incomplete(format!(
                "the stack of thread {:x} ({:x}.{:x}) stops early: {}",
                t.ethread,
                t.pid,
                t.tid,
                st.note.as_deref().unwrap_or("the walk ended")
            ));
        }
    }

    /// Every process with its threads, and notes on what could not be read (each also
    /// recorded with [`Kernel::note_incomplete`]: it leaves threads out).
    pub fn all_threads(&mut self) -> Result<(Vec<ProcessThreads>, Vec<String>), ModelError> {
        let mut notes = Vec::new();
        let (procs, note) = self.processes()?;
        notes.extend(note.map(|n| format!("process list: {n}")));
        // Every process's ETHREADs first, then the objects their waits are on, read together
        // (a few pages hold the objects of many processes' waits), then each thread.
        let mut read = Vec::new();
        for p in procs {
            match self.thread_views_of(p.eprocess) {
                Ok((views, note)) => {
                    if let Some(n) = note {
                        notes.push(format!("{} ({:x}): {n}", p.name, p.eprocess));
                    }
                    read.push((p, Ok(views)));
                }
                Err(err) => read.push((p, Err(err))),
            }
        }
        let every: Vec<_> = read
            .iter()
            .filter_map(|(_, v)| v.as_ref().ok())
            .flatten()
            .cloned()
            .collect();
        self.prefetch_wait_objects(&every);
        drop(every);
        let mut out = Vec::new();
        for (p, views) in read {
            match views.and_then(|v| self.threads_from(v)) {
                Ok(threads) => out.push((p, threads)),
                Err(err) => {
                    notes.push(format!(
                        "{} ({:x}): threads unreadable: {err}",
                        p.name, p.eprocess
                    ));
                    out.push((p, Vec::new()));
                }
            }
        }
        for n in &notes {
            self.note_incomplete(n.clone());
        }
        Ok((out, notes))
    }

    /// The thread processor `n` runs (`None` when there is no such processor).
    pub fn current_thread(&mut self, n: u32) -> Result<Option<u64>, ModelError> {
        let cpus = self.processors()?;
        Ok(cpus.iter().find(|c| c.number == n).map(|c| c.current))
    }
}
