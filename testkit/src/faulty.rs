//! A [`Target`] that passes every request to another and makes chosen ones fail: the Nth
//! request, a window of requests (a link lost for a while, a target paused), every request from
//! some point on (a target gone), or a share of them at random (a lossy link). It proves what
//! the model and the commands do when reads fail, deterministically.
//!
//! The plan is shared ([`Faults`] is a cheap handle), so it can change after the target has
//! been handed to the model: fail while a command runs, then heal and run it again.

use std::sync::{Arc, Mutex, MutexGuard};

use kdnet_arch::Context;

use kdnet_model::target::{ModuleRecord, Target, TargetError, TargetInfo, TransportStats};

/// Which requests fail.
#[derive(Debug, Clone)]
enum Rule {
    /// Requests numbered `from..until` (counted from 0 over the target's life) fail.
    Window {
        from: u64,
        until: Option<u64>,
        error: TargetError,
    },
    /// Each request fails with this chance (per million).
    Random {
        per_million: u64,
        error: TargetError,
    },
    /// Physical reads that touch `start..end` fail.
    Physical {
        start: u64,
        end: u64,
        error: TargetError,
    },
}

#[derive(Debug, Default)]
struct Plan {
    requests: u64,
    failed: u64,
    rules: Vec<Rule>,
    rng: u64,
}

impl Plan {
    /// The failure for the request about to be made (a physical read of `range`, or another
    /// request), counting it.
    fn next(&mut self, range: Option<(u64, u64)>) -> Option<TargetError> {
        let n = self.requests;
        self.requests += 1;
        let mut out = None;
        let mut rng = self.rng;
        for r in &self.rules {
            let hit = match r {
                Rule::Window { from, until, error } => {
                    (n >= *from && until.is_none_or(|u| n < u)).then(|| error.clone())
                }
                Rule::Random { per_million, error } => {
                    // splitmix64: a fixed sequence for a seed.
                    rng = rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    let mut z = rng;
                    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                    z ^= z >> 31;
                    (z % 1_000_000 < *per_million).then(|| error.clone())
                }
                Rule::Physical { start, end, error } => range
                    .filter(|(a, b)| a < end && b > start)
                    .map(|_| error.clone()),
            };
            if out.is_none() {
                out = hit;
            }
        }
        self.rng = rng;
        if out.is_some() {
            self.failed += 1;
        }
        out
    }
}

/// The plan of failures of a [`FaultyTarget`]; clones share it.
#[derive(Debug, Clone, Default)]
pub struct Faults(Arc<Mutex<Plan>>);

impl Faults {
    /// No failures yet.
    pub fn new() -> Faults {
        Faults::default()
    }

    fn plan(&self) -> MutexGuard<'_, Plan> {
        // A test that panicked while holding the lock leaves a plan that is still whole.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests made so far (failed ones included).
    pub fn requests(&self) -> u64 {
        self.plan().requests
    }

    /// Requests that failed so far.
    pub fn failed(&self) -> u64 {
        self.plan().failed
    }

    /// After `after` more requests, the next `count` fail with `error`; then requests work
    /// again (a link lost for a while, a target paused).
    pub fn fail_window(&self, after: u64, count: u64, error: TargetError) {
        let mut p = self.plan();
        let from = p.requests + after;
        p.rules.push(Rule::Window {
            from,
            until: Some(from + count),
            error,
        });
    }

    /// The next `count` requests fail with `error`.
    pub fn fail_next(&self, count: u64, error: TargetError) {
        self.fail_window(0, count, error);
    }

    /// After `after` more requests, every request fails with `error` (a target that stopped
    /// answering: [`TargetError::Gone`]).
    pub fn fail_after(&self, after: u64, error: TargetError) {
        let mut p = self.plan();
        let from = p.requests + after;
        p.rules.push(Rule::Window {
            from,
            until: None,
            error,
        });
    }

    /// Each request fails with `error` with a chance of `percent` %, drawn from `seed`.
    pub fn lossy(&self, percent: f64, seed: u64, error: TargetError) {
        let mut p = self.plan();
        p.rng = seed;
        p.rules.push(Rule::Random {
            per_million: (percent.clamp(0.0, 100.0) * 10_000.0) as u64,
            error,
        });
    }

    /// Physical reads that touch `start..end` fail with `error` (a page the target cannot
    /// read, or one whose reads keep getting lost).
    pub fn fail_physical(&self, start: u64, end: u64, error: TargetError) {
        self.plan().rules.push(Rule::Physical { start, end, error });
    }

    /// No more failures.
    pub fn heal(&self) {
        self.plan().rules.clear();
    }

    fn next(&self) -> Option<TargetError> {
        self.plan().next(None)
    }
}

/// A target whose requests fail as its [`Faults`] say.
pub struct FaultyTarget {
    inner: Box<dyn Target>,
    faults: Faults,
}

impl std::fmt::Debug for FaultyTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyTarget")
            .field("faults", &self.faults)
            .finish()
    }
}

impl FaultyTarget {
    /// Wraps `inner`; `faults` decides which requests fail.
    pub fn new(inner: Box<dyn Target>, faults: Faults) -> FaultyTarget {
        FaultyTarget { inner, faults }
    }
}

impl Target for FaultyTarget {
    fn info(&self) -> TargetInfo {
        self.inner.info()
    }

    fn read_physical(&mut self, address: u64, buf: &mut [u8]) -> Result<usize, TargetError> {
        let range = (address, address.saturating_add(buf.len() as u64));
        match self.faults.plan().next(Some(range)) {
            Some(e) => Err(e),
            None => self.inner.read_physical(address, buf),
        }
    }

    fn read_virtual_direct(
        &mut self,
        address: u64,
        buf: &mut [u8],
    ) -> Option<Result<usize, TargetError>> {
        // An empty read asks only whether the target has this memory model.
        if buf.is_empty() {
            return self.inner.read_virtual_direct(address, buf);
        }
        match self.faults.next() {
            Some(e) => self
                .inner
                .read_virtual_direct(address, &mut [])
                .map(|_| Err(e)),
            None => self.inner.read_virtual_direct(address, buf),
        }
    }

    fn max_transfer(&self) -> usize {
        self.inner.max_transfer()
    }

    fn context(&mut self, processor: u32) -> Result<Context, TargetError> {
        match self.faults.next() {
            Some(e) => Err(e),
            None => self.inner.context(processor),
        }
    }

    fn special_registers(&mut self, processor: u32) -> Result<Vec<u8>, TargetError> {
        match self.faults.next() {
            Some(e) => Err(e),
            None => self.inner.special_registers(processor),
        }
    }

    fn control_pointer(&mut self, processor: u32, index: u64) -> Result<u64, TargetError> {
        match self.faults.next() {
            Some(e) => Err(e),
            None => self.inner.control_pointer(processor, index),
        }
    }

    fn stats(&self) -> TransportStats {
        self.inner.stats()
    }

    fn search(
        &mut self,
        address: u64,
        length: u64,
        pattern: &[u8],
    ) -> Option<Result<Option<u64>, TargetError>> {
        match self.faults.next() {
            Some(e) => Some(Err(e)),
            None => self.inner.search(address, length, pattern),
        }
    }

    fn module_list(&mut self) -> Option<Vec<ModuleRecord>> {
        self.inner.module_list()
    }

    fn take_invalidation(&mut self) -> bool {
        self.inner.take_invalidation()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_gone_and_loss_follow_the_plan() {
        let f = Faults::new();
        let e = TargetError::Transport("lost".into());
        f.fail_window(2, 3, e.clone());
        let got: Vec<bool> = (0..7).map(|_| f.next().is_some()).collect();
        assert_eq!(got, [false, false, true, true, true, false, false]);
        f.heal();
        f.fail_after(1, TargetError::Gone("killed".into()));
        assert!(f.next().is_none());
        for _ in 0..100 {
            assert!(matches!(f.next(), Some(TargetError::Gone(_))));
        }
        f.heal();
        f.lossy(30.0, 7, e);
        let lost = (0..10_000).filter(|_| f.next().is_some()).count();
        assert!((2_700..3_300).contains(&lost), "{lost}");
        assert_eq!(f.requests(), 7 + 101 + 10_000);
        assert_eq!(f.failed(), 3 + 100 + lost as u64);
        // The same seed, the same losses.
        let (a, b) = (Faults::new(), Faults::new());
        a.lossy(30.0, 9, TargetError::OutOfTime);
        b.lossy(30.0, 9, TargetError::OutOfTime);
        let pa: Vec<bool> = (0..100).map(|_| a.next().is_some()).collect();
        let pb: Vec<bool> = (0..100).map(|_| b.next().is_some()).collect();
        assert_eq!(pa, pb);
        // Reads of a physical range.
        let f = Faults::new();
        f.fail_physical(0x2000, 0x3000, TargetError::OutOfTime);
        let mut p = f.plan();
        assert!(p.next(Some((0x1000, 0x2000))).is_none());
        assert!(p.next(Some((0x1ff8, 0x2008))).is_some());
        assert!(p.next(Some((0x2ff8, 0x3000))).is_some());
        assert!(p.next(Some((0x3000, 0x4000))).is_none());
        assert!(p.next(None).is_none());
    }
}
