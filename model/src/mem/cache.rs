//! The page cache over physical reads: fetches coalesced into the largest transfers the
//! target allows, kept in 8-byte granules, and the spans callers needed.

use super::{MAX_READ, Memory, PAGE};
use crate::target::TargetError;

/// The unit of the cache: 8 bytes, so that KDNET's 3,944-byte transfers (493 granules) fill
/// whole granules.
pub(super) const GRANULE: u64 = 8;
const GRANULES_WORDS: usize = (PAGE / GRANULE / 64) as usize;

pub(super) struct CachedPage {
    pub(super) data: Box<[u8; PAGE as usize]>,
    /// 512 granules of 8 bytes.
    valid: [u64; GRANULES_WORDS],
}

impl CachedPage {
    pub(super) fn new() -> CachedPage {
        CachedPage {
            data: Box::new([0; PAGE as usize]),
            valid: [0; GRANULES_WORDS],
        }
    }
    pub(super) fn has(&self, g: usize) -> bool {
        self.valid[g / 64] & (1 << (g % 64)) != 0
    }
    pub(super) fn set(&mut self, g: usize) {
        self.valid[g / 64] |= 1 << (g % 64);
    }
}

impl Memory {
    pub(super) fn fetch(&mut self, pa: u64, len: u64) -> Result<(), TargetError> {
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

    pub(super) fn cached(&self, pa: u64, len: u64) -> bool {
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

    pub(super) fn copy_out(&self, pa: u64, out: &mut [u8]) {
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

    pub(super) fn note_needed(&mut self, pa: u64, len: u64) {
        if let Some(a) = &mut self.asked {
            a.push((pa, len));
        }
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
}
