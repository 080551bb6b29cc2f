//! What a data-channel payload carries: one KD packet, the target's hello, or the break-in byte.

use std::net::Ipv4Addr;

/// The byte a debugger sends to make a running target stop (`'b'`).
pub const BREAK_IN: u8 = 0x62;
/// Length of the target's hello.
pub const HELLO_LEN: usize = 12;

/// A data-channel payload, classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPayload<'a> {
    /// The single byte 0x62: break in.
    BreakIn,
    /// The hello the target sends after a handshake: a type-0 KD header followed by the host's
    /// IPv4 address as a little-endian u32 of its big-endian value.
    Hello {
        /// The debugger address the target saw (0.0.0.0 for IPv6).
        host: Ipv4Addr,
    },
    /// Anything else: a KD packet (parsed by [`crate::kd`]).
    Kd(&'a [u8]),
}

impl<'a> DataPayload<'a> {
    /// Classifies a payload.
    pub fn classify(p: &'a [u8]) -> DataPayload<'a> {
        if p == [BREAK_IN] {
            return DataPayload::BreakIn;
        }
        if p.len() == HELLO_LEN && p[..8].iter().all(|&b| b == 0) {
            let v = u32::from_le_bytes([p[8], p[9], p[10], p[11]]);
            return DataPayload::Hello {
                host: Ipv4Addr::from(v),
            };
        }
        DataPayload::Kd(p)
    }
}

/// Encodes the hello for a debugger at `host`.
pub fn hello(host: Ipv4Addr) -> [u8; HELLO_LEN] {
    let mut h = [0u8; HELLO_LEN];
    h[8..].copy_from_slice(&u32::from(host).to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_matches_capture_bytes() {
        // The captured hello for a debugger at 192.168.2.1 ends in 01 02 a8 c0.
        let h = hello(Ipv4Addr::new(192, 168, 2, 1));
        assert_eq!(&h[8..], &[0x01, 0x02, 0xa8, 0xc0]);
        assert_eq!(
            DataPayload::classify(&h),
            DataPayload::Hello {
                host: Ipv4Addr::new(192, 168, 2, 1)
            }
        );
        assert_eq!(DataPayload::classify(&[0x62]), DataPayload::BreakIn);
        assert_eq!(DataPayload::classify(&[0x63]), DataPayload::Kd(&[0x63]));
    }
}
