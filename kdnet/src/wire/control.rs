//! Control-channel messages: the target's OFFER, the debugger's RESPONSE, and the empty poke.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use sha2::{Digest, Sha256};

use super::key::{KEY_LEN, Key};

/// Payload bytes of an OFFER.
pub const OFFER_LEN: usize = 344;
/// Payload bytes of a RESPONSE.
pub const RESPONSE_LEN: usize = 322;
/// Bytes of each side's nonce.
pub const NONCE_LEN: usize = 32;
/// The part of the target nonce after its 8-byte counter: constant for one boot.
pub const NONCE_TAIL: std::ops::Range<usize> = 8..32;

const FORMAT: u8 = 0x01;
const KIND_OFFER: u8 = 0x01;
const KIND_RESPONSE: u8 = 0x02;

/// The target's periodic offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The target's nonce: a u64 LE counter (+1 per offer) then 24 bytes fixed for the boot.
    pub nonce: [u8; NONCE_LEN],
    /// The target's own address and port.
    pub target: SocketAddr,
    /// The host address and port configured with bcdedit.
    pub configured_host: SocketAddr,
    /// The debugger whose response the target accepted; port 0 when there is none.
    pub debugger: SocketAddr,
}

/// The debugger's answer to an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The offer's nonce, echoed.
    pub target_nonce: [u8; NONCE_LEN],
    /// The debugger's random nonce.
    pub host_nonce: [u8; NONCE_LEN],
}

/// A decoded control payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMessage {
    /// Target → host offer.
    Offer(Offer),
    /// Host → target response.
    Response(Response),
    /// An empty payload: the host asks for an offer now.
    Poke,
}

/// Why a control payload was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// Length matches no control message.
    #[error("control payload of {len} bytes is neither an offer (344) nor a response (322)")]
    BadLength {
        /// Payload length.
        len: usize,
    },
    /// The first two bytes are not a known format/kind.
    #[error("control payload starts {0:02x} {1:02x}, expected 01 01 (offer) or 01 02 (response)")]
    BadKind(u8, u8),
}

impl Offer {
    /// Encodes the 344-byte payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut p = vec![0u8; OFFER_LEN];
        p[0] = FORMAT;
        p[1] = KIND_OFFER;
        p[2..34].copy_from_slice(&self.nonce);
        put_addr(&mut p[34..52], self.target);
        put_addr(&mut p[52..70], self.configured_host);
        put_addr(&mut p[70..88], self.debugger);
        p
    }

    /// The 8-byte counter at the start of the nonce.
    pub fn counter(&self) -> u64 {
        let mut c = [0u8; 8];
        c.copy_from_slice(&self.nonce[..8]);
        u64::from_le_bytes(c)
    }

    /// The part of the nonce fixed for a boot.
    pub fn boot_id(&self) -> &[u8] {
        &self.nonce[NONCE_TAIL]
    }

    /// Whether the target reports a debugger with a data channel (port at offset 86 non-zero).
    pub fn has_debugger(&self) -> bool {
        self.debugger.port() != 0
    }
}

impl Response {
    /// Encodes the 322-byte payload.
    pub fn encode(&self) -> [u8; RESPONSE_LEN] {
        let mut p = [0u8; RESPONSE_LEN];
        p[0] = FORMAT;
        p[1] = KIND_RESPONSE;
        p[2..34].copy_from_slice(&self.target_nonce);
        p[34..66].copy_from_slice(&self.host_nonce);
        p
    }

    /// The data-channel key: SHA-256 of the control key and the whole response payload.
    pub fn data_key(&self, key: &Key) -> [u8; KEY_LEN] {
        data_key(key, &self.encode())
    }
}

/// `SHA-256(K ‖ response payload)`.
pub fn data_key(key: &Key, response_payload: &[u8]) -> [u8; KEY_LEN] {
    let mut h = Sha256::new();
    h.update(key.bytes());
    h.update(response_payload);
    let d = h.finalize();
    let mut out = [0u8; KEY_LEN];
    out.copy_from_slice(&d);
    out
}

impl ControlMessage {
    /// Decodes a control payload.
    pub fn decode(p: &[u8]) -> Result<ControlMessage, ControlError> {
        if p.is_empty() {
            return Ok(ControlMessage::Poke);
        }
        match (p.len(), p.first().copied(), p.get(1).copied()) {
            (OFFER_LEN, Some(FORMAT), Some(KIND_OFFER)) => {
                let mut nonce = [0u8; NONCE_LEN];
                nonce.copy_from_slice(&p[2..34]);
                Ok(ControlMessage::Offer(Offer {
                    nonce,
                    target: get_addr(&p[34..52]),
                    configured_host: get_addr(&p[52..70]),
                    debugger: get_addr(&p[70..88]),
                }))
            }
            (RESPONSE_LEN, Some(FORMAT), Some(KIND_RESPONSE)) => {
                let mut target_nonce = [0u8; NONCE_LEN];
                target_nonce.copy_from_slice(&p[2..34]);
                let mut host_nonce = [0u8; NONCE_LEN];
                host_nonce.copy_from_slice(&p[34..66]);
                Ok(ControlMessage::Response(Response {
                    target_nonce,
                    host_nonce,
                }))
            }
            (OFFER_LEN | RESPONSE_LEN, a, b) => {
                Err(ControlError::BadKind(a.unwrap_or(0), b.unwrap_or(0)))
            }
            (len, _, _) => Err(ControlError::BadLength { len }),
        }
    }

    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ControlMessage::Offer(o) => o.encode(),
            ControlMessage::Response(r) => r.encode().to_vec(),
            ControlMessage::Poke => Vec::new(),
        }
    }
}

fn put_addr(out: &mut [u8], addr: SocketAddr) {
    let v6 = match addr.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    out[..16].copy_from_slice(&v6.octets());
    out[16..18].copy_from_slice(&addr.port().to_be_bytes());
}

fn get_addr(b: &[u8]) -> SocketAddr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&b[..16]);
    let v6 = Ipv6Addr::from(o);
    let ip = match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None if v6.is_unspecified() => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        None => IpAddr::V6(v6),
    };
    SocketAddr::new(ip, u16::from_be_bytes([b[16], b[17]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offer_round_trip() {
        let o = Offer {
            nonce: [7; 32],
            target: "192.168.2.72:51111".parse().unwrap(),
            configured_host: "192.168.2.1:51111".parse().unwrap(),
            debugger: "0.0.0.0:0".parse().unwrap(),
        };
        let p = o.encode();
        assert_eq!(p.len(), OFFER_LEN);
        assert_eq!(
            &p[34..50],
            &Ipv4Addr::new(192, 168, 2, 72).to_ipv6_mapped().octets()
        );
        assert_eq!(&p[50..52], &51111u16.to_be_bytes());
        assert_eq!(
            ControlMessage::decode(&p).unwrap(),
            ControlMessage::Offer(o.clone())
        );
        assert!(!o.has_debugger());
    }

    #[test]
    fn response_round_trip_and_errors() {
        let r = Response {
            target_nonce: [1; 32],
            host_nonce: [2; 32],
        };
        let p = r.encode();
        assert_eq!(
            ControlMessage::decode(&p).unwrap(),
            ControlMessage::Response(r)
        );
        assert_eq!(ControlMessage::decode(&[]).unwrap(), ControlMessage::Poke);
        assert_eq!(
            ControlMessage::decode(&[1, 2, 3]),
            Err(ControlError::BadLength { len: 3 })
        );
        let mut bad = p;
        bad[1] = 9;
        assert_eq!(
            ControlMessage::decode(&bad),
            Err(ControlError::BadKind(1, 9))
        );
    }
}
