//! Memory access over a [`Target`]: x64 address translation done here, over physical reads (so
//! the exact set of pages touched is known), a page cache for a stopped target, reads coalesced
//! into the largest transfers the target allows, optional read-ahead for list walks, and counts
//! of every read.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::target::{NotPresent, Target, TargetError, TargetInfo, TransportStats};

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

/// The unit of the cache: 8 bytes, so that KDNET's 3,944-byte transfers (493 granules) fill
/// whole granules.
const GRANULE: u64 = 8;
const GRANULES_WORDS: usize = (PAGE / GRANULE / 64) as usize;

struct CachedPage {
    data: Box<[u8; PAGE as usize]>,
    /// 512 granules of 8 bytes.
    valid: [u64; GRANULES_WORDS],
}

impl CachedPage {
    fn new() -> CachedPage {
        CachedPage {
            data: Box::new([0; PAGE as usize]),
            valid: [0; GRANULES_WORDS],
        }
    }
    fn has(&self, g: usize) -> bool {
        self.valid[g / 64] & (1 << (g % 64)) != 0
    }
    fn set(&mut self, g: usize) {
        self.valid[g / 64] |= 1 << (g % 64);
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
    epoch: u64,
    /// Per physical page, the span of bytes callers asked for (page tables included): the
    /// least any reader must fetch.
    needed: HashMap<u64, (u16, u16)>,
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

/// Where a page walk ended.
enum Walk {
    /// At this physical address.
    Mapped(u64),
    /// At an entry that is not present, at this level (0: the PTE).
    Absent { level: u8, entry: u64 },
}

/// Whether an address is canonical for 48-bit (or, with `la57`, 57-bit) virtual addresses.
pub fn canonical(va: u64, levels: u32) -> bool {
    let bits = if levels == 5 { 56 } else { 47 };
    let top = va >> bits;
    top == 0 || top == (1u64 << (64 - bits)) - 1
}

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
            epoch: 0,
            needed: HashMap::new(),
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
    }

    /// The kernel address space: the target's directory table base, or processor 0's CR3
    /// (whose CR4 also tells 4- or 5-level paging).
    pub fn kernel_space(&mut self) -> Result<Space, TargetError> {
        if let Some(s) = self.kernel {
            return Ok(s);
        }
        let dtb = match self.info.directory_table_base {
            Some(d) => d,
            None => {
                self.check_gone()?;
                let sr = match self.target.special_registers(0) {
                    Ok(sr) => sr,
                    Err(e) => {
                        self.record(&e, || "reading processor 0's special registers".into());
                        return Err(e);
                    }
                };
                let q = |o: usize| {
                    sr.get(o..o + 8)
                        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                };
                if q(0x18) & (1 << 12) != 0 {
                    self.levels = 5;
                }
                q(0x10)
            }
        };
        let s = Space { dtb: dtb & ADDR };
        self.kernel = Some(s);
        Ok(s)
    }

    /// Paging levels (4 or 5).
    pub fn paging_levels(&self) -> u32 {
        self.levels
    }

    // ---- physical ----

    /// Fetches `[pa, pa+len)` into the cache in as few requests as possible.
    fn fetch(&mut self, pa: u64, len: u64) -> Result<(), TargetError> {
        // Whole granules per request, so no request leaves a sliver for another round trip.
        let max = (self.target.max_transfer().max(GRANULE as usize) as u64) & !(GRANULE - 1);
        let mut at = pa & !(GRANULE - 1);
        let end = (pa + len).div_ceil(GRANULE) * GRANULE;
        while at < end {
            // Skip what is cached.
            let pfn = at / PAGE;
            let g = ((at % PAGE) / GRANULE) as usize;
            if self.phys.get(&pfn).is_some_and(|p| p.has(g)) {
                at += GRANULE;
                continue;
            }
            self.check_budget()?;
            let n = (end - at).min(max);
            let mut buf = vec![0u8; n as usize];
            let got = match self.target.read_physical(at, &mut buf) {
                Ok(g) => g as u64,
                Err(e) => {
                    self.seen(&e);
                    return Err(e);
                }
            };
            self.stats.bytes_fetched += got;
            // Only whole granules are kept; a read that ends inside one has hit the end of
            // what the target holds there.
            let whole = got.min(n) / GRANULE * GRANULE;
            if whole == 0 {
                return Err(TargetError::Unavailable { address: at });
            }
            self.store(at, &buf[..whole as usize]);
            at += whole;
        }
        Ok(())
    }

    fn store(&mut self, pa: u64, data: &[u8]) {
        let mut off = 0usize;
        while off < data.len() {
            let a = pa + off as u64;
            let pfn = a / PAGE;
            let po = (a % PAGE) as usize;
            let n = (data.len() - off).min(PAGE as usize - po);
            let page = self.phys.entry(pfn).or_insert_with(CachedPage::new);
            page.data[po..po + n].copy_from_slice(&data[off..off + n]);
            let g = GRANULE as usize;
            for i in po / g..(po + n).div_ceil(g) {
                page.set(i);
            }
            self.touched.insert(pfn);
            off += n;
        }
    }

    fn cached(&self, pa: u64, len: u64) -> bool {
        let mut at = pa & !(GRANULE - 1);
        while at < pa + len {
            let pfn = at / PAGE;
            let Some(p) = self.phys.get(&pfn) else {
                return false;
            };
            if !p.has(((at % PAGE) / GRANULE) as usize) {
                return false;
            }
            at += GRANULE;
        }
        true
    }

    fn copy_out(&self, pa: u64, out: &mut [u8]) {
        let mut off = 0usize;
        while off < out.len() {
            let a = pa + off as u64;
            let po = (a % PAGE) as usize;
            let n = (out.len() - off).min(PAGE as usize - po);
            if let Some(p) = self.phys.get(&(a / PAGE)) {
                out[off..off + n].copy_from_slice(&p.data[po..po + n]);
            }
            off += n;
        }
    }

    /// Reads physical memory through the cache.
    pub fn read_physical(&mut self, pa: u64, len: usize) -> Result<Vec<u8>, TargetError> {
        let r = self.read_physical_inner(pa, len);
        if let Err(e) = &r {
            self.record(e, || format!("read of {len:#x} bytes at physical {pa:#x}"));
        }
        r
    }

    fn read_physical_inner(&mut self, pa: u64, len: usize) -> Result<Vec<u8>, TargetError> {
        if len > MAX_READ {
            return Err(TargetError::TooLarge {
                what: "a read",
                value: len as u64,
                limit: MAX_READ as u64,
            });
        }
        self.refresh();
        self.stats.bytes_requested += len as u64;
        if self.cached(pa, len as u64) {
            self.stats.cache_hits += 1;
        } else {
            self.stats.cache_misses += 1;
            self.fetch(pa, len as u64)?;
        }
        let mut out = vec![0u8; len];
        self.copy_out(pa, &mut out);
        Ok(out)
    }

    fn note_needed(&mut self, pa: u64, len: u64) {
        let mut at = pa;
        let end = pa + len;
        while at < end {
            let pfn = at / PAGE;
            let lo = (at % PAGE) as u16;
            let n = (end - at).min(PAGE - at % PAGE);
            let hi = (at % PAGE + n - 1) as u16;
            let e = self.needed.entry(pfn).or_insert((lo, hi));
            e.0 = e.0.min(lo);
            e.1 = e.1.max(hi);
            at += n;
        }
    }

    /// The least number of requests that could have fetched what callers asked for since the
    /// last [`Memory::reset_needed`]: per page, its needed span over the largest transfer.
    pub fn least_round_trips(&self) -> u64 {
        let max = self.target.max_transfer().max(1) as u64;
        self.needed
            .values()
            .map(|(lo, hi)| (u64::from(*hi) - u64::from(*lo) + 1).div_ceil(max))
            .sum()
    }

    /// Distinct pages callers asked for since the last reset.
    pub fn needed_pages(&self) -> usize {
        self.needed.len()
    }

    /// Starts counting what callers need afresh.
    pub fn reset_needed(&mut self) {
        self.needed.clear();
    }

    fn table_entry(&mut self, entry_pa: u64) -> Result<u64, TargetError> {
        self.stats.translations += 1;
        self.note_needed(entry_pa, 8);
        if !self.cached(entry_pa, 8) {
            let chunk = entry_pa & !(TABLE_CHUNK - 1);
            self.fetch(chunk, TABLE_CHUNK)?;
        }
        let mut b = [0u8; 8];
        self.copy_out(entry_pa, &mut b);
        Ok(u64::from_le_bytes(b))
    }

    /// Translates `va` in `space`.
    pub fn translate(&mut self, space: Space, va: u64) -> Result<u64, TargetError> {
        let r = self.translate_inner(space, va);
        if let Err(e) = &r {
            self.record(e, || format!("translation of {va:#x}"));
        }
        r
    }

    fn translate_inner(&mut self, space: Space, va: u64) -> Result<u64, TargetError> {
        if !canonical(va, self.levels) {
            return Err(TargetError::NonCanonical(va));
        }
        self.refresh();
        match self.walk(space, va)? {
            Walk::Mapped(pa) => Ok(pa),
            Walk::Absent { level, entry: e } => {
                let reason = if e == 0 {
                    NotPresent::NotMapped { level }
                } else if level > 0 {
                    NotPresent::Invalid { level, entry: e }
                } else if e & (1 << 10) != 0 {
                    NotPresent::Prototype { pte: e }
                } else if e & (1 << 11) != 0 {
                    NotPresent::Transition { pte: e }
                } else {
                    NotPresent::PagedOut { pte: e }
                };
                Err(TargetError::NotPresent {
                    address: va,
                    reason,
                })
            }
        }
    }

    /// The page walk of a canonical `va`: where it lands, or the level whose entry is not
    /// present (0 is the PTE) and that entry. Large pages (PDE, PDPTE) end the walk.
    fn walk(&mut self, space: Space, va: u64) -> Result<Walk, TargetError> {
        let mut table = space.dtb & ADDR;
        for level in (0..self.levels).rev() {
            let idx = (va >> (12 + 9 * level)) & 0x1ff;
            let e = self.table_entry(table + 8 * idx)?;
            if e & 1 == 0 {
                return Ok(Walk::Absent {
                    level: level as u8,
                    entry: e,
                });
            }
            if (level == 1 || level == 2) && e & 0x80 != 0 {
                let size = 1u64 << (12 + 9 * level);
                return Ok(Walk::Mapped((e & ADDR & !(size - 1)) | (va & (size - 1))));
            }
            table = e & ADDR;
        }
        Ok(Walk::Mapped(table | (va & (PAGE - 1))))
    }

    /// The first address at or after `va` (below `end`) whose page is present, skipping whole
    /// unmapped page-table ranges at once; `None` when there is none.
    pub fn next_present(
        &mut self,
        space: Space,
        va: u64,
        end: u64,
    ) -> Result<Option<u64>, TargetError> {
        let r = self.next_present_inner(space, va, end);
        if let Err(e) = &r {
            self.record(e, || format!("page-table walk from {va:#x}"));
        }
        r
    }

    fn next_present_inner(
        &mut self,
        space: Space,
        mut va: u64,
        end: u64,
    ) -> Result<Option<u64>, TargetError> {
        va &= !(PAGE - 1);
        let mut steps = 0u32;
        while va < end {
            steps += 1;
            if steps > 1 << 20 {
                return Err(TargetError::TooLarge {
                    what: "pages probed",
                    value: u64::from(steps),
                    limit: 1 << 20,
                });
            }
            if !canonical(va, self.levels) {
                // Jump to the start of the kernel half.
                let bits = if self.levels == 5 { 56 } else { 47 };
                let next = !((1u64 << bits) - 1);
                if next <= va {
                    return Ok(None);
                }
                va = next;
                continue;
            }
            match self.walk(space, va)? {
                Walk::Mapped(_) => return Ok(Some(va)),
                Walk::Absent { level, .. } => {
                    // Not present at this level: the whole span it maps is absent.
                    let span = 1u64 << (12 + 9 * u32::from(level));
                    match (va & !(span - 1)).checked_add(span) {
                        Some(n) => va = n,
                        None => return Ok(None),
                    }
                }
            }
        }
        Ok(None)
    }

    // ---- virtual ----

    /// Reads `len` bytes at `va` in `space`.
    pub fn read(&mut self, space: Space, va: u64, len: usize) -> Result<Vec<u8>, TargetError> {
        self.read_impl(space, va, len, false)
    }

    /// Reads with read-ahead: a miss fetches up to one full transfer from `va` onwards, within
    /// physically contiguous pages (for walks over lists of nearby nodes).
    pub fn read_ahead(
        &mut self,
        space: Space,
        va: u64,
        len: usize,
    ) -> Result<Vec<u8>, TargetError> {
        self.read_impl(space, va, len, true)
    }

    fn read_impl(
        &mut self,
        space: Space,
        va: u64,
        len: usize,
        ahead: bool,
    ) -> Result<Vec<u8>, TargetError> {
        let r = self.read_inner(space, va, len, ahead);
        if let Err(e) = &r {
            self.record(e, || format!("read of {len:#x} bytes at {va:#x}"));
        }
        r
    }

    fn read_inner(
        &mut self,
        space: Space,
        va: u64,
        len: usize,
        ahead: bool,
    ) -> Result<Vec<u8>, TargetError> {
        if len > MAX_READ {
            return Err(TargetError::TooLarge {
                what: "a read",
                value: len as u64,
                limit: MAX_READ as u64,
            });
        }
        if len == 0 {
            return Ok(Vec::new());
        }
        if !canonical(va, self.levels)
            || !canonical(va.wrapping_add(len as u64 - 1), self.levels)
            || va.checked_add(len as u64).is_none()
        {
            return Err(TargetError::NonCanonical(va));
        }
        if self.virtual_only {
            return self.read_direct(va, len);
        }
        self.refresh();
        self.stats.bytes_requested += len as u64;
        // Translate the pages of the request into physically contiguous runs.
        let mut runs: Vec<(u64, u64, u64)> = Vec::new(); // (va, pa, len)
        let end = va + len as u64;
        let mut at = va;
        while at < end {
            let pa = self.translate_inner(space, at)?;
            let n = (PAGE - at % PAGE).min(end - at);
            match runs.last_mut() {
                Some((_, rpa, rlen)) if *rpa + *rlen == pa => *rlen += n,
                _ => runs.push((at, pa, n)),
            }
            at += n;
        }
        for (_, pa, n) in &runs {
            self.note_needed(*pa, *n);
        }
        let all_cached = runs.iter().all(|(_, pa, n)| self.cached(*pa, *n));
        if all_cached {
            self.stats.cache_hits += 1;
        } else {
            self.stats.cache_misses += 1;
            let max_g = (self.target.max_transfer().max(GRANULE as usize) as u64) & !(GRANULE - 1);
            let last = runs.len() - 1;
            for (i, (rva, pa, n)) in runs.clone().into_iter().enumerate() {
                if self.cached(pa, n) {
                    continue;
                }
                let mut fetch_len = n;
                // The window starts at the granule holding `pa` and stays within one request.
                let max = max_g - pa % GRANULE;
                if ahead && i == last && n < max {
                    // Extend through following pages while they stay physically contiguous.
                    let mut ext = n;
                    let mut next_va = rva + n;
                    while ext < max {
                        if next_va % PAGE != 0 {
                            ext = (ext + (PAGE - next_va % PAGE)).min(max);
                            next_va = (next_va + PAGE) & !(PAGE - 1);
                            continue;
                        }
                        match self.translate_inner(space, next_va) {
                            Ok(npa) if npa == pa + ext => {
                                ext = (ext + PAGE).min(max);
                                next_va += PAGE;
                            }
                            _ => break,
                        }
                    }
                    fetch_len = ext;
                }
                // The part the caller needs must arrive; read-ahead beyond it is best effort.
                if fetch_len > n {
                    if self.fetch(pa, fetch_len).is_err() {
                        self.fetch(pa, n)?;
                    }
                } else {
                    self.fetch(pa, n)?;
                }
            }
        }
        let mut out = vec![0u8; len];
        let mut off = 0usize;
        for (_, pa, n) in runs {
            self.copy_out(pa, &mut out[off..off + n as usize]);
            off += n as usize;
        }
        Ok(out)
    }

    fn read_direct(&mut self, va: u64, len: usize) -> Result<Vec<u8>, TargetError> {
        self.stats.bytes_requested += len as u64;
        let mut out = vec![0u8; len];
        let mut off = 0usize;
        let mut hit = true;
        while off < len {
            let a = va + off as u64;
            let page = a / PAGE;
            let po = (a % PAGE) as usize;
            let n = (len - off).min(PAGE as usize - po);
            let cached = self.virt.get(&page).is_some_and(|p| {
                let g = GRANULE as usize;
                (po / g..(po + n).div_ceil(g)).all(|i| p.has(i))
            });
            if !cached {
                hit = false;
                self.check_budget()?;
                let mut buf = vec![0u8; n];
                let got = match self.target.read_virtual_direct(a, &mut buf) {
                    Some(Ok(g)) => g,
                    Some(Err(e)) => {
                        self.seen(&e);
                        return Err(e);
                    }
                    None => 0,
                };
                self.stats.bytes_fetched += got as u64;
                if got < n {
                    return Err(TargetError::Unavailable {
                        address: a + got as u64,
                    });
                }
                let p = self.virt.entry(page).or_insert_with(CachedPage::new);
                p.data[po..po + n].copy_from_slice(&buf);
                // Only whole granules are marked; edges are re-read if needed.
                let g = GRANULE as usize;
                for i in po.div_ceil(g)..(po + n) / g {
                    p.set(i);
                }
            }
            if let Some(p) = self.virt.get(&page)
                && cached
            {
                out[off..off + n].copy_from_slice(&p.data[po..po + n]);
            } else if !cached {
                let p = self.virt.get(&page).expect("stored above");
                out[off..off + n].copy_from_slice(&p.data[po..po + n]);
            }
            off += n;
        }
        if hit {
            self.stats.cache_hits += 1;
        } else {
            self.stats.cache_misses += 1;
        }
        Ok(out)
    }

    /// Reads from the kernel address space.
    pub fn kread(&mut self, va: u64, len: usize) -> Result<Vec<u8>, TargetError> {
        let s = self.kernel_space()?;
        self.read(s, va, len)
    }

    /// Reads from the kernel address space with read-ahead.
    pub fn kread_ahead(&mut self, va: u64, len: usize) -> Result<Vec<u8>, TargetError> {
        let s = self.kernel_space()?;
        self.read_ahead(s, va, len)
    }

    /// Many u64s from the kernel address space, read in as few requests as the pages allow:
    /// addresses on one page are fetched by one read spanning them (split where a span would
    /// exceed the largest transfer). Unreadable ones come back as errors in place.
    pub fn gather_u64(&mut self, addrs: &[u64]) -> Vec<Result<u64, TargetError>> {
        let max = self.target.max_transfer().max(8) as u64;
        let mut order: Vec<usize> = (0..addrs.len()).collect();
        order.sort_by_key(|&i| addrs[i]);
        let mut i = 0;
        while i < order.len() {
            let start = addrs[order[i]];
            let page = start & !(PAGE - 1);
            let mut j = i;
            while j + 1 < order.len() {
                let next = addrs[order[j + 1]];
                if next & !(PAGE - 1) != page || next.saturating_add(8) - start > max {
                    break;
                }
                j += 1;
            }
            let end = addrs[order[j]].saturating_add(8);
            // One fetch for the span; the reads below are then served from the cache.
            let _ = self.kread(start, (end - start) as usize);
            i = j + 1;
        }
        addrs.iter().map(|&a| self.u64(a)).collect()
    }

    /// A u64 from the kernel address space.
    pub fn u64(&mut self, va: u64) -> Result<u64, TargetError> {
        let b = self.kread(va, 8)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }

    /// A u32 from the kernel address space.
    pub fn u32(&mut self, va: u64) -> Result<u32, TargetError> {
        let b = self.kread(va, 4)?;
        Ok(u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
    }

    /// A u16 from the kernel address space.
    pub fn u16(&mut self, va: u64) -> Result<u16, TargetError> {
        let b = self.kread(va, 2)?;
        Ok(u16::from_le_bytes(b.try_into().unwrap_or([0; 2])))
    }

    /// A byte from the kernel address space.
    pub fn u8(&mut self, va: u64) -> Result<u8, TargetError> {
        Ok(self.kread(va, 1)?[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdnet_arch::Context;

    /// A flat physical memory with a page table mapping a few pages, counting requests.
    struct Flat {
        mem: HashMap<u64, u8>,
        requests: u64,
        bytes: u64,
        /// CR3 and CR4 given by control space (no directory table base in the target facts).
        cr: Option<(u64, u64)>,
    }

    impl Flat {
        fn w64(&mut self, a: u64, v: u64) {
            for (i, b) in v.to_le_bytes().iter().enumerate() {
                self.mem.insert(a + i as u64, *b);
            }
        }
    }

    impl Target for Flat {
        fn info(&self) -> TargetInfo {
            TargetInfo {
                directory_table_base: self.cr.is_none().then_some(0x1000),
                ..TargetInfo::default()
            }
        }
        fn read_physical(&mut self, address: u64, buf: &mut [u8]) -> Result<usize, TargetError> {
            self.requests += 1;
            self.bytes += buf.len() as u64;
            for (i, b) in buf.iter_mut().enumerate() {
                let a = address + i as u64;
                // Page-table pages are zero where unset; data pages hold their address's low byte.
                let filler = if a < 0x10_0000 { 0 } else { a as u8 };
                *b = self.mem.get(&a).copied().unwrap_or(filler);
            }
            Ok(buf.len())
        }
        fn max_transfer(&self) -> usize {
            3944
        }
        fn context(&mut self, _p: u32) -> Result<Context, TargetError> {
            Ok(Context::new())
        }
        fn special_registers(&mut self, _p: u32) -> Result<Vec<u8>, TargetError> {
            let mut v = vec![0; 0xe0];
            if let Some((cr3, cr4)) = self.cr {
                v[0x10..0x18].copy_from_slice(&cr3.to_le_bytes());
                v[0x18..0x20].copy_from_slice(&cr4.to_le_bytes());
            }
            Ok(v)
        }
        fn control_pointer(&mut self, _p: u32, _i: u64) -> Result<u64, TargetError> {
            Ok(0)
        }
        fn stats(&self) -> TransportStats {
            TransportStats {
                round_trips: self.requests,
                bytes: self.bytes,
            }
        }
    }

    fn flat() -> Flat {
        let mut f = Flat {
            mem: HashMap::new(),
            requests: 0,
            bytes: 0,
            cr: None,
        };
        // PML4 0x1000 → PDPT 0x2000 → PD 0x3000 → PT 0x4000, all for VA 0xffff800000000000+.
        let va: u64 = 0xffff_8000_0010_0000;
        f.w64(0x1000 + 8 * ((va >> 39) & 0x1ff), 0x2000 | 3);
        f.w64(0x2000 + 8 * ((va >> 30) & 0x1ff), 0x3000 | 3);
        f.w64(0x3000 + 8 * ((va >> 21) & 0x1ff), 0x4000 | 3);
        // Four contiguous pages at 0x100000, then one elsewhere, then a paged-out one.
        for i in 0..4u64 {
            f.w64(
                0x4000 + 8 * (((va >> 12) & 0x1ff) + i),
                (0x10_0000 + i * PAGE) | 3,
            );
        }
        f.w64(0x4000 + 8 * (((va >> 12) & 0x1ff) + 4), 0x20_0000 | 3);
        f.w64(0x4000 + 8 * (((va >> 12) & 0x1ff) + 5), 0x0123_0000_0080);
        // A 2 MB page one PDE up.
        f.w64(0x3000 + 8 * (((va >> 21) & 0x1ff) + 1), 0x4000_0000 | 0x83);
        f
    }

    const VA: u64 = 0xffff_8000_0010_0000;

    #[test]
    fn translation_large_pages_and_not_present_reasons() {
        let mut m = Memory::new(Box::new(flat()));
        let s = m.kernel_space().unwrap();
        assert_eq!(m.translate(s, VA + 0x10).unwrap(), 0x10_0010);
        assert_eq!(m.translate(s, VA + 4 * PAGE).unwrap(), 0x20_0000);
        assert_eq!(
            m.translate(s, VA + 0x20_0000 + 0x1234).unwrap(),
            0x4010_1234
        );
        let e = m.translate(s, VA + 5 * PAGE).unwrap_err();
        assert!(
            matches!(
                e,
                TargetError::NotPresent {
                    reason: NotPresent::PagedOut { .. },
                    ..
                }
            ),
            "{e:?}"
        );
        let e = m.translate(s, VA + 6 * PAGE).unwrap_err();
        assert!(
            matches!(
                e,
                TargetError::NotPresent {
                    reason: NotPresent::NotMapped { level: 0 },
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(matches!(
            m.translate(s, 0x0000_8000_0000_0000),
            Err(TargetError::NonCanonical(_))
        ));
    }

    #[test]
    fn five_level_paging_and_huge_pages() {
        // CR4.LA57 set: a PML5 at 0x9000 above the same PML4.
        let mut f = flat();
        f.cr = Some((0x9000, 1 << 12));
        let va5: u64 = 0xff91_2345_6780_0000;
        let idx = |va: u64, level: u32| (va >> (12 + 9 * level)) & 0x1ff;
        f.w64(0x9000 + 8 * idx(va5, 4), 0xa000 | 3);
        f.w64(0xa000 + 8 * idx(va5, 3), 0xb000 | 3);
        // A 1 GB page at the PDPT level.
        f.w64(0xb000 + 8 * idx(va5, 2), 0x1_c000_0000 | 0x83);
        // The 4-level kernel mapping, reached through PML5 entry 0x1ff.
        f.w64(0x9000 + 8 * 0x1ff, 0x1000 | 3);
        let mut m = Memory::new(Box::new(f));
        let s = m.kernel_space().unwrap();
        assert_eq!(m.paging_levels(), 5);
        assert_eq!(s.dtb, 0x9000);
        assert_eq!(
            m.translate(s, va5 + 0x1234_5678).unwrap(),
            0x1_c000_0000 + ((va5 + 0x1234_5678) & 0x3fff_ffff)
        );
        // A 57-bit canonical address that a 4-level walk would refuse.
        assert!(canonical(va5, 5) && !canonical(va5, 4));
        let kva = 0xffff_8000_0010_0000u64 | (0x1ff << 48);
        assert_eq!(m.translate(s, kva + 8).unwrap(), 0x10_0008);
        assert!(matches!(
            m.translate(s, 0x0100_0000_0000_0000),
            Err(TargetError::NonCanonical(_))
        ));
    }

    #[test]
    fn cache_coalescing_and_read_ahead() {
        let mut m = Memory::new(Box::new(flat()));
        let s = m.kernel_space().unwrap();
        // A read across three physically contiguous pages is one request (plus page tables).
        m.read(s, VA + 0x800, 2 * PAGE as usize).unwrap();
        let before = m.stats().transport.round_trips;
        // Cached now.
        let b = m.read(s, VA + 0x900, 0x100).unwrap();
        assert_eq!(b[0], 0x00, "byte at pa 0x100900 is its low address byte");
        assert_eq!(m.stats().transport.round_trips, before);
        // Read-ahead: one small read fetches a whole transfer's worth of what follows.
        let mut m = Memory::new(Box::new(flat()));
        let s = m.kernel_space().unwrap();
        m.read_ahead(s, VA + 0x10, 0x68).unwrap();
        let rt = m.stats().transport.round_trips;
        for i in 1..30u64 {
            m.read_ahead(s, VA + 0x10 + i * 0x80, 0x68).unwrap();
        }
        assert_eq!(
            m.stats().transport.round_trips,
            rt,
            "served from the read-ahead"
        );
        // Reads that straddle a physical discontinuity still come back right.
        let b = m.read(s, VA + 4 * PAGE - 8, 16).unwrap();
        assert_eq!(b[8], 0x00);
        assert_eq!(b[7], 0xff);
        // Paged-out pages fail with the reason; absurd sizes are refused.
        assert!(m.read(s, VA + 5 * PAGE, 8).is_err());
        assert!(matches!(
            m.read(s, VA, MAX_READ + 1),
            Err(TargetError::TooLarge { .. })
        ));
        assert!(m.touched_pages().contains(&0x100));
    }
}
