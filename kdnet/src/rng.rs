//! A small seeded pseudo-random generator (SplitMix64) for link impairment and tests, where a
//! run must be repeatable from its seed. Not for keys or nonces: those come from the OS.

/// SplitMix64.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A float in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.next_f64() < p
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

/// 32 bytes from the operating system's random source.
pub fn os_random_32() -> [u8; 32] {
    let mut b = [0u8; 32];
    if let Err(e) = getrandom::fill(&mut b) {
        // Should never happen on a supported OS. Mix the clock and pid so sessions still differ,
        // and say so.
        tracing::warn!("the OS random source failed ({e}); using a clock-seeded nonce");
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut r = SplitMix64::new(t ^ u64::from(std::process::id()));
        for c in b.chunks_mut(8) {
            c.copy_from_slice(&r.next_u64().to_le_bytes());
        }
    }
    b
}
