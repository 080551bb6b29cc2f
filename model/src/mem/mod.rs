//! Memory access over a [`Target`]: x64 address translation done here, over physical reads (so
//! the exact set of pages touched is known), a page cache for a stopped target, reads coalesced
//! into the largest transfers the target allows, optional read-ahead for list walks, and counts
//! of every read.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::target::{Target, TargetError, TargetInfo, TransportStats};

const PAGE: u64 = 0x1000;
const ADDR: u64 = 0x000f_ffff_ffff_f000;
/// Largest single read a caller may ask for.
pub const MAX_READ: usize = 64 << 20;
/// Pages kept in the cache before it is emptied.
const MAX_CACHED_PAGES: usize = 1 << 17;
/// Bytes fetched around a page-table entry (256 entries: 1 MB of mappings per request).
const TABLE_CHUNK: u64 = 0x800;
/// Failed reads described in the log (the rest are only counted).
const MAX_LOGGED: usize = 8;

/// An address space, named by its page-table root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Space {
    /// CR3 / DirectoryTableBase.
    pub dtb: u64,
}

/// The largest read [`Memory::set_quick`] sends to the target as it is.
pub const QUICK_MAX: usize = 64;

/// The bytes a quick read fetches around its value (within the value's page).
const QUICK_WINDOW: u64 = 128;

/// Windows of quick reads kept in one stop (a bound; conditions read a few values).
const MAX_QUICK_WINDOWS: usize = 256;

/// Counters of the memory layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemStats {
    /// Bytes callers asked for.
    pub bytes_requested: u64,
    /// Reads served entirely from the cache.
    pub cache_hits: u64,
    /// Reads that needed the target.
    pub cache_misses: u64,
    /// Page-table entries read (from cache or target).
    pub translations: u64,
    /// Memory bytes that came from the target (payload, without protocol overhead).
    pub bytes_fetched: u64,
    /// Transport counters: round trips and bytes moved.
    pub transport: TransportStats,
}

impl MemStats {
    /// The counters accumulated since `earlier`.
    pub fn since(&self, earlier: &MemStats) -> MemStats {
        MemStats {
            bytes_requested: self.bytes_requested - earlier.bytes_requested,
            cache_hits: self.cache_hits - earlier.cache_hits,
            cache_misses: self.cache_misses - earlier.cache_misses,
            translations: self.translations - earlier.translations,
            bytes_fetched: self.bytes_fetched - earlier.bytes_fetched,
            transport: TransportStats {
                round_trips: self.transport.round_trips - earlier.transport.round_trips,
                bytes: self.transport.bytes - earlier.transport.bytes,
            },
        }
    }
}

/// Memory of a target, translated and cached.
pub struct Memory {
    target: Box<dyn Target>,
    info: TargetInfo,
    phys: HashMap<u64, CachedPage>,
    virt: HashMap<u64, CachedPage>,
    touched: BTreeSet<u64>,
    stats: MemStats,
    kernel: Option<Space>,
    levels: u32,
    deadline: Option<Instant>,
    cancel: Option<Arc<AtomicBool>>,
    virtual_only: bool,
    /// Small reads go to the target as virtual reads, translated there ([`Memory::set_quick`]).
    quick: bool,
    /// What quick reads fetched in this stop: the bytes around each value, by address.
    quick_windows: Vec<(u64, Vec<u8>)>,
    epoch: u64,
    /// Per physical page, the span of bytes callers asked for (page tables included): the
    /// least any reader must fetch.
    needed: HashMap<u64, (u16, u16)>,
    /// Every physical range callers asked for (page-table entries included, read-ahead not),
    /// while kept (see [`Memory::keep_asked`]).
    asked: Option<Vec<(u64, u64)>>,
    /// Set once a request failed with [`TargetError::Gone`]: later requests fail at once.
    gone: Option<String>,
    /// Reads that failed for a reason of the moment, ever (see [`TargetError::is_transient`]).
    failures_total: u64,
    /// `failures_total` when the log was last cleared.
    log_base: u64,
    /// The first few of those failures since the log was cleared, described.
    failure_log: Vec<String>,
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory")
            .field("target", &self.info.description)
            .field("cached_pages", &self.phys.len())
            .finish()
    }
}

mod cache;
mod range;
mod read;
mod translate;

#[cfg(test)]
mod tests;

use cache::CachedPage;
pub use range::{Piece, RANGE_PIECE};
pub use translate::{LevelEntry, Mapped, PageWalk, WalkEnd, canonical};

impl Memory {
    /// Wraps a target.
    pub fn new(mut target: Box<dyn Target>) -> Memory {
        let info = target.info();
        let virtual_only = target.read_virtual_direct(0, &mut []).is_some();
        Memory {
            target,
            info,
            phys: HashMap::new(),
            virt: HashMap::new(),
            touched: BTreeSet::new(),
            stats: MemStats::default(),
            kernel: None,
            levels: 4,
            deadline: None,
            cancel: None,
            virtual_only,
            quick: false,
            quick_windows: Vec::new(),
            epoch: 0,
            needed: HashMap::new(),
            asked: None,
            gone: None,
            failures_total: 0,
            log_base: 0,
            failure_log: Vec::new(),
        }
    }

    /// Why the target is taken for gone: a request failed with [`TargetError::Gone`] since the
    /// target last stopped. Every request fails at once with it from then on.
    pub fn gone(&self) -> Option<&str> {
        self.gone.as_deref()
    }

    /// Starts a fresh log of failed reads (each command keeps its own).
    pub fn clear_failures(&mut self) {
        self.log_base = self.failures_total;
        self.failure_log.clear();
    }

    /// Reads that failed for a reason of the moment (the link, the target's silence, the time
    /// budget; never a page that is not present) since [`Memory::clear_failures`]: how many,
    /// and the first few described (`read of 0x10 bytes at 0x… failed: …`).
    pub fn failures(&self) -> (u64, &[String]) {
        (self.failures_total - self.log_base, &self.failure_log)
    }

    /// A counter of such failures that only grows: whoever derives something from memory can
    /// tell whether a read failed meanwhile, and then must not keep what it derived.
    pub fn failure_count(&self) -> u64 {
        self.failures_total
    }

    /// Notes a target error: a gone target is remembered, a failure of the moment logged.
    fn record(&mut self, e: &TargetError, what: impl FnOnce() -> String) {
        self.seen(e);
        if !e.is_transient() {
            return;
        }
        self.failures_total += 1;
        if self.failure_log.len() < MAX_LOGGED {
            let line = format!("{} failed: {e}", what());
            if !self.failure_log.contains(&line) {
                self.failure_log.push(line);
            }
        }
    }

    /// Forgets that the target was taken for gone: the caller has reason to ask again (a new
    /// line at the prompt; the session hears the target again).
    pub fn clear_gone(&mut self) {
        self.gone = None;
    }

    /// Remembers a target that stopped answering.
    fn seen(&mut self, e: &TargetError) {
        if let TargetError::Gone(m) = e
            && self.gone.is_none()
        {
            self.gone = Some(m.clone());
        }
    }

    /// Fails at once when the target is gone.
    fn check_gone(&self) -> Result<(), TargetError> {
        match &self.gone {
            Some(m) => Err(TargetError::Gone(m.clone())),
            None => Ok(()),
        }
    }

    /// A processor's CONTEXT from the target.
    pub fn context(&mut self, processor: u32) -> Result<kdnet_arch::Context, TargetError> {
        self.check_gone()?;
        let r = self.target.context(processor);
        if let Err(e) = &r {
            self.record(e, || format!("reading processor {processor}'s registers"));
        }
        r
    }

    /// Searches `[address, address + length)` on the target side (see [`Target::search`]).
    pub fn search(
        &mut self,
        address: u64,
        length: u64,
        pattern: &[u8],
    ) -> Option<Result<Option<u64>, TargetError>> {
        if let Err(e) = self.check_gone().and_then(|()| self.check_budget()) {
            return Some(Err(e));
        }
        let r = self.target.search(address, length, pattern);
        if let Some(Err(e)) = &r {
            self.record(e, || format!("search of {length:#x} bytes at {address:#x}"));
        }
        r
    }

    /// The target's facts.
    pub fn info(&self) -> &TargetInfo {
        &self.info
    }

    /// The target itself.
    pub fn target(&mut self) -> &mut dyn Target {
        self.target.as_mut()
    }

    /// Whether memory is only available by virtual address (triage dumps).
    pub fn virtual_only(&self) -> bool {
        self.virtual_only
    }

    /// Counters so far.
    pub fn stats(&self) -> MemStats {
        let mut s = self.stats;
        s.transport = self.target.stats();
        s
    }

    /// Starts (or stops) keeping every physical range callers ask for: what a reader needed,
    /// as opposed to what read-ahead fetched along with it.
    pub fn keep_asked(&mut self, on: bool) {
        self.asked = on.then(Vec::new);
    }

    /// The physical ranges (address, length) callers asked for since the last call, while
    /// kept.
    pub fn take_asked(&mut self) -> Vec<(u64, u64)> {
        self.asked.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Physical pages read so far (page-table pages included).
    pub fn touched_pages(&self) -> &BTreeSet<u64> {
        &self.touched
    }

    /// Every cached physical page, whole or in part (bytes never read are zero): what a dump
    /// of just the memory read so far holds.
    pub fn snapshot_pages(&self) -> std::collections::BTreeMap<u64, Vec<u8>> {
        self.phys
            .iter()
            .map(|(pfn, p)| (*pfn, p.data.to_vec()))
            .collect()
    }

    /// Stops reads after `deadline` (they fail with [`TargetError::OutOfTime`]).
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// Small reads (at most [`QUICK_MAX`] bytes) go to a live target as virtual reads it
    /// translates itself: one round trip for a value, where translating here costs a read of
    /// each paging level the cache lost when the target ran. For judging a breakpoint's
    /// condition at each hit. Each read fetches the bytes around the value (within its page,
    /// so mapped as the value is): the other fields of a structure a condition reads come
    /// from them while the target stays stopped.
    pub fn set_quick(&mut self, on: bool) {
        self.quick = on;
    }

    /// The instant reads stop at, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The cancel flag, if any.
    pub fn cancel_flag(&self) -> Option<Arc<AtomicBool>> {
        self.cancel.clone()
    }

    /// Stops reads when `flag` becomes true ([`TargetError::Cancelled`]).
    pub fn set_cancel(&mut self, flag: Option<Arc<AtomicBool>>) {
        self.cancel = flag;
    }

    /// Whether the cancel flag is set (reads fail with [`TargetError::Cancelled`]).
    pub fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }

    /// Forgets everything cached (the target ran). A target taken for gone is asked again.
    pub fn invalidate(&mut self) {
        self.phys.clear();
        self.virt.clear();
        self.quick_windows.clear();
        self.epoch += 1;
        self.gone = None;
    }

    /// A number that changes whenever the cache is dropped because the target ran: what was
    /// derived from memory before a change is stale.
    pub fn epoch(&mut self) -> u64 {
        if self.target.take_invalidation() {
            self.invalidate();
        }
        self.epoch
    }

    fn check_budget(&self) -> Result<(), TargetError> {
        self.check_gone()?;
        if self
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
        {
            return Err(TargetError::Cancelled);
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(TargetError::OutOfTime);
        }
        Ok(())
    }

    fn refresh(&mut self) {
        if self.target.take_invalidation() {
            self.invalidate();
        }
        if self.phys.len() > MAX_CACHED_PAGES {
            self.phys.clear();
        }
        if self.virt.len() > MAX_CACHED_PAGES {
            self.virt.clear();
        }
        if self.quick_windows.len() > MAX_QUICK_WINDOWS {
            self.quick_windows.clear();
        }
    }
}
