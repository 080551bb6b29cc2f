//! Sealing and opening KDNET datagrams.
//!
//! ```text
//! "MDBG" | version | channel | AES-256-CBC(plaintext) | tag
//! plaintext = inner header (8) | payload | zero padding to 16
//! tag       = HMAC-SHA256(~K, "MDBG" | version | channel | plaintext)[..16], also the CBC IV
//! ```
//! Encryption is deterministic (the IV is a MAC of the plaintext), so sealing the plaintext of a
//! captured datagram gives back its bytes exactly.

use aes::Aes256;
use cbc::cipher::{Block, BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::key::KEY_LEN;

/// `MDBG`.
pub const MAGIC: [u8; 4] = *b"MDBG";
/// Bytes of the clear outer header: magic, version, channel.
pub const OUTER_HEADER_LEN: usize = 6;
/// Bytes of the inner header at the start of the plaintext.
pub const INNER_HEADER_LEN: usize = 8;
/// Bytes of the tag (the truncated HMAC) at the end of the datagram.
pub const TAG_LEN: usize = 16;
/// AES block size.
pub const BLOCK: usize = 16;
/// The smallest datagram: header, one block, tag.
pub const MIN_DATAGRAM: usize = OUTER_HEADER_LEN + BLOCK + TAG_LEN;
/// The largest datagram the codec accepts (a UDP payload cannot be larger).
pub const MAX_DATAGRAM: usize = 65_507;

/// Largest sequence number (56 bits).
pub const MAX_SEQUENCE: u64 = (1 << 56) - 1;

/// The two KDNET channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Channel 0: KD packets, hello and break-in, under the data key.
    Data,
    /// Channel 1: offers and responses, under the control key.
    Control,
}

impl Channel {
    /// The byte on the wire.
    pub fn byte(self) -> u8 {
        match self {
            Channel::Data => 0,
            Channel::Control => 1,
        }
    }
    /// The channel for a wire byte.
    pub fn from_byte(b: u8) -> Option<Channel> {
        match b {
            0 => Some(Channel::Data),
            1 => Some(Channel::Control),
            _ => None,
        }
    }
    /// `"data"` or `"control"`.
    pub fn name(self) -> &'static str {
        match self {
            Channel::Data => "data",
            Channel::Control => "control",
        }
    }
}

/// Who sent a datagram (bit 7 of the inner header's last byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The debugger (bit set).
    HostToTarget,
    /// The machine being debugged (bit clear).
    TargetToHost,
}

/// The decoded inner header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InnerHeader {
    /// 56-bit sequence number.
    pub sequence: u64,
    /// Direction bit.
    pub direction: Direction,
    /// Number of zero bytes padding the plaintext to a block.
    pub pad: u8,
}

impl InnerHeader {
    /// The 8 header bytes.
    pub fn encode(&self) -> [u8; 8] {
        let dir = match self.direction {
            Direction::HostToTarget => 0x80u64,
            Direction::TargetToHost => 0,
        };
        let v = ((self.sequence & MAX_SEQUENCE) << 8) | dir | u64::from(self.pad & 0x0f);
        v.to_be_bytes()
    }

    /// Decodes 8 header bytes; bits 4..6 of the last byte must be zero.
    pub fn decode(bytes: [u8; 8]) -> Result<InnerHeader, WireError> {
        let v = u64::from_be_bytes(bytes);
        let low = (v & 0xff) as u8;
        if low & 0x70 != 0 {
            return Err(WireError::BadInnerHeader { byte: low });
        }
        Ok(InnerHeader {
            sequence: v >> 8,
            direction: if low & 0x80 != 0 {
                Direction::HostToTarget
            } else {
                Direction::TargetToHost
            },
            pad: low & 0x0f,
        })
    }
}

/// Why a datagram could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than the smallest possible datagram.
    #[error("datagram of {len} bytes is too short for KDNET (at least {MIN_DATAGRAM})")]
    TooShort {
        /// Its length.
        len: usize,
    },
    /// Longer than any UDP payload.
    #[error("datagram of {len} bytes is too long")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// The first four bytes are not `MDBG`.
    #[error("not a KDNET datagram (no MDBG magic)")]
    BadMagic,
    /// Channel byte other than 0 or 1.
    #[error("unknown KDNET channel {0}")]
    BadChannel(u8),
    /// The ciphertext is not a whole number of blocks.
    #[error("ciphertext of {len} bytes is not a multiple of 16")]
    NotBlockAligned {
        /// Ciphertext length.
        len: usize,
    },
    /// The tag did not match: wrong key, or damaged in transit.
    #[error("datagram does not authenticate (wrong key or damaged)")]
    AuthenticationFailed,
    /// Reserved inner-header bits set.
    #[error("inner header byte {byte:#04x} has reserved bits set")]
    BadInnerHeader {
        /// The header's last byte.
        byte: u8,
    },
    /// The pad count is larger than the payload or the pad bytes are not zero.
    #[error("inner header says {pad} pad bytes, which the plaintext does not end with")]
    BadPadding {
        /// The pad count from the header.
        pad: u8,
    },
}

/// A datagram opened and authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The version byte.
    pub version: u8,
    /// The channel.
    pub channel: Channel,
    /// The inner header.
    pub header: InnerHeader,
    /// The payload (plaintext without inner header and padding).
    pub payload: Vec<u8>,
}

type HmacSha256 = Hmac<Sha256>;

/// Reads version and channel from the clear header, checking magic and shape.
pub fn peek(datagram: &[u8]) -> Result<(u8, Channel), WireError> {
    if datagram.len() < 4 || datagram[..4] != MAGIC {
        return Err(WireError::BadMagic);
    }
    if datagram.len() < MIN_DATAGRAM {
        return Err(WireError::TooShort {
            len: datagram.len(),
        });
    }
    if datagram.len() > MAX_DATAGRAM {
        return Err(WireError::TooLong {
            len: datagram.len(),
        });
    }
    let channel = Channel::from_byte(datagram[5]).ok_or(WireError::BadChannel(datagram[5]))?;
    let body = datagram.len() - OUTER_HEADER_LEN - TAG_LEN;
    if !body.is_multiple_of(BLOCK) {
        return Err(WireError::NotBlockAligned { len: body });
    }
    Ok((datagram[4], channel))
}

fn tag(hmac_key: &[u8; KEY_LEN], outer: &[u8], plaintext: &[u8]) -> [u8; TAG_LEN] {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(hmac_key).expect("HMAC takes any key");
    mac.update(outer);
    mac.update(plaintext);
    let full = mac.finalize().into_bytes();
    let mut t = [0u8; TAG_LEN];
    t.copy_from_slice(&full[..TAG_LEN]);
    t
}

/// Seals a whole plaintext (inner header, payload and padding already in place; its length must be
/// a multiple of 16). Used directly to re-seal a captured plaintext.
pub fn seal_plaintext(
    version: u8,
    channel: Channel,
    cipher_key: &[u8; KEY_LEN],
    hmac_key: &[u8; KEY_LEN],
    plaintext: &[u8],
) -> Vec<u8> {
    assert!(
        plaintext.len().is_multiple_of(BLOCK) && !plaintext.is_empty(),
        "plaintext must be whole blocks"
    );
    let outer = [
        MAGIC[0],
        MAGIC[1],
        MAGIC[2],
        MAGIC[3],
        version,
        channel.byte(),
    ];
    let iv = tag(hmac_key, &outer, plaintext);
    let mut out = Vec::with_capacity(OUTER_HEADER_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&outer);
    out.extend_from_slice(plaintext);
    let mut enc = cbc::Encryptor::<Aes256>::new(cipher_key.into(), (&iv).into());
    for chunk in out[OUTER_HEADER_LEN..].chunks_exact_mut(BLOCK) {
        let mut block = Block::<Aes256>::try_from(&*chunk).expect("16-byte chunk");
        enc.encrypt_block(&mut block);
        chunk.copy_from_slice(&block);
    }
    out.extend_from_slice(&iv);
    out
}

/// Builds the plaintext for a payload: inner header, payload, zero padding.
pub fn plaintext(sequence: u64, direction: Direction, payload: &[u8]) -> Vec<u8> {
    let pad = (BLOCK - (INNER_HEADER_LEN + payload.len()) % BLOCK) % BLOCK;
    let header = InnerHeader {
        sequence,
        direction,
        pad: pad as u8,
    };
    let mut p = Vec::with_capacity(INNER_HEADER_LEN + payload.len() + pad);
    p.extend_from_slice(&header.encode());
    p.extend_from_slice(payload);
    p.resize(p.len() + pad, 0);
    p
}

/// Seals a payload into a datagram.
pub fn seal(
    version: u8,
    channel: Channel,
    cipher_key: &[u8; KEY_LEN],
    hmac_key: &[u8; KEY_LEN],
    sequence: u64,
    direction: Direction,
    payload: &[u8],
) -> Vec<u8> {
    let p = plaintext(sequence, direction, payload);
    seal_plaintext(version, channel, cipher_key, hmac_key, &p)
}

/// Decrypts and authenticates a datagram, returning the whole plaintext (with inner header and
/// padding). The tag is compared in constant time.
pub fn open_plaintext(
    datagram: &[u8],
    cipher_key: &[u8; KEY_LEN],
    hmac_key: &[u8; KEY_LEN],
) -> Result<(u8, Channel, Vec<u8>), WireError> {
    let (version, channel) = peek(datagram)?;
    let tag_at = datagram.len() - TAG_LEN;
    let mut iv = [0u8; TAG_LEN];
    iv.copy_from_slice(&datagram[tag_at..]);
    let mut plain = datagram[OUTER_HEADER_LEN..tag_at].to_vec();
    let mut dec = cbc::Decryptor::<Aes256>::new(cipher_key.into(), (&iv).into());
    for chunk in plain.chunks_exact_mut(BLOCK) {
        let mut block = Block::<Aes256>::try_from(&*chunk).expect("16-byte chunk");
        dec.decrypt_block(&mut block);
        chunk.copy_from_slice(&block);
    }
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(hmac_key).expect("HMAC takes any key");
    mac.update(&datagram[..OUTER_HEADER_LEN]);
    mac.update(&plain);
    mac.verify_truncated_left(&iv)
        .map_err(|_| WireError::AuthenticationFailed)?;
    Ok((version, channel, plain))
}

/// Opens a datagram: decrypts, authenticates, and splits off the inner header and padding.
pub fn open(
    datagram: &[u8],
    cipher_key: &[u8; KEY_LEN],
    hmac_key: &[u8; KEY_LEN],
) -> Result<Opened, WireError> {
    let (version, channel, plain) = open_plaintext(datagram, cipher_key, hmac_key)?;
    let (header, payload) = split_plaintext(&plain)?;
    Ok(Opened {
        version,
        channel,
        header,
        payload: payload.to_vec(),
    })
}

/// Splits an authenticated plaintext into its inner header and payload, checking the padding.
pub fn split_plaintext(plain: &[u8]) -> Result<(InnerHeader, &[u8]), WireError> {
    let head: [u8; 8] = plain
        .get(..INNER_HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(WireError::TooShort { len: plain.len() })?;
    let header = InnerHeader::decode(head)?;
    let pad = usize::from(header.pad);
    let body = &plain[INNER_HEADER_LEN..];
    if pad > body.len() || body[body.len() - pad..].iter().any(|&b| b != 0) {
        return Err(WireError::BadPadding { pad: header.pad });
    }
    Ok((header, &body[..body.len() - pad]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Key;

    #[test]
    fn seal_open_round_trip_all_lengths() {
        let key = Key::parse("1.2.3.4").unwrap();
        let hk = key.hmac_key();
        for len in 0..70 {
            let payload: Vec<u8> = (0..len as u8).collect();
            let d = seal(
                4,
                Channel::Data,
                key.bytes(),
                &hk,
                7,
                Direction::HostToTarget,
                &payload,
            );
            assert_eq!((d.len() - 22) % 16, 0);
            let o = open(&d, key.bytes(), &hk).unwrap();
            assert_eq!(o.payload, payload);
            assert_eq!(o.header.sequence, 7);
            assert_eq!(o.header.direction, Direction::HostToTarget);
            assert_eq!(usize::from(o.header.pad), (16 - (8 + len) % 16) % 16);
        }
    }

    #[test]
    fn any_flipped_bit_fails_authentication() {
        let key = Key::parse("8.8.8.8").unwrap();
        let hk = key.hmac_key();
        let d = seal(
            2,
            Channel::Control,
            key.bytes(),
            &hk,
            1,
            Direction::TargetToHost,
            b"hello kdnet",
        );
        for i in 4..d.len() {
            let mut bad = d.clone();
            bad[i] ^= 0x01;
            assert!(open(&bad, key.bytes(), &hk).is_err(), "byte {i}");
        }
        let other = Key::parse("8.8.8.9").unwrap();
        assert_eq!(
            open(&d, other.bytes(), &other.hmac_key()),
            Err(WireError::AuthenticationFailed)
        );
    }

    #[test]
    fn shape_errors() {
        let key = Key::parse("8.8.8.8").unwrap();
        let hk = key.hmac_key();
        assert_eq!(open(b"XDBG", key.bytes(), &hk), Err(WireError::BadMagic));
        assert!(matches!(
            open(b"MDBG\x04\x00", key.bytes(), &hk),
            Err(WireError::TooShort { .. })
        ));
        let mut d = seal(
            4,
            Channel::Data,
            key.bytes(),
            &hk,
            1,
            Direction::HostToTarget,
            b"x",
        );
        d.push(0);
        assert!(matches!(
            open(&d, key.bytes(), &hk),
            Err(WireError::NotBlockAligned { .. })
        ));
        let mut d = seal(
            4,
            Channel::Data,
            key.bytes(),
            &hk,
            1,
            Direction::HostToTarget,
            b"x",
        );
        d[5] = 9;
        assert_eq!(open(&d, key.bytes(), &hk), Err(WireError::BadChannel(9)));
    }

    #[test]
    fn inner_header_bits() {
        let h = InnerHeader {
            sequence: 3,
            direction: Direction::HostToTarget,
            pad: 6,
        };
        assert_eq!(h.encode(), [0, 0, 0, 0, 0, 0, 3, 0x86]);
        assert!(InnerHeader::decode([0, 0, 0, 0, 0, 0, 3, 0x96]).is_err());
    }
}
