//! Little-endian integers out of bytes: the one reader every decoder uses (KDNET packets, dump
//! headers, PE images, PDB streams, unwind data). Short input is `None`, never a panic.

/// The `u16` at `at`, if `b` holds it.
pub fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

/// The `u32` at `at`, if `b` holds it.
pub fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// The `u64` at `at`, if `b` holds it.
pub fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// UTF-16LE text (a UNICODE_STRING's buffer, a file name): unpaired surrogates become U+FFFD;
/// an odd last byte is dropped.
pub fn utf16(b: &[u8]) -> String {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16_lossy(&units)
}

/// A record whose length was checked against its fixed layout before its fields are read
/// (a DBGKD structure, a dump header): a field is read at its constant offset, and one past
/// the end (which the check rules out) reads as 0 rather than a panic.
#[derive(Debug, Clone, Copy)]
pub struct Le<'a>(pub &'a [u8]);

impl Le<'_> {
    /// The `u16` at `at` (0 past the end).
    pub fn u16(self, at: usize) -> u16 {
        u16_at(self.0, at).unwrap_or(0)
    }

    /// The `u32` at `at` (0 past the end).
    pub fn u32(self, at: usize) -> u32 {
        u32_at(self.0, at).unwrap_or(0)
    }

    /// The `u64` at `at` (0 past the end).
    pub fn u64(self, at: usize) -> u64 {
        u64_at(self.0, at).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_input_is_none_and_offsets_cannot_overflow() {
        let b = [1, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(u16_at(&b, 0), Some(0x0201));
        assert_eq!(u32_at(&b, 5), Some(0x0908_0706));
        assert_eq!(u64_at(&b, 1), Some(0x0908_0706_0504_0302));
        assert_eq!(u32_at(&b, 6), None);
        assert_eq!(u64_at(&b, usize::MAX - 3), None);
        assert_eq!(Le(&b).u64(2), 0);
        assert_eq!(Le(&b).u16(7), 0x0908);
        assert_eq!(utf16(&[b'n', 0, b't', 0, 0x00, 0xd8, b'!']), "nt\u{fffd}");
    }
}
