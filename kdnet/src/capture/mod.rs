//! Reading UDP datagrams out of pcap and pcapng captures (plain or gzip-compressed).
//!
//! Link types: Ethernet (with 802.1Q tags), raw IP, Linux cooked (v1 and v2) and BSD loopback.
//! IPv4 fragments are reassembled; IPv6 is read without extension headers other than
//! hop-by-hop, routing and destination options. Errors carry the byte offset in the
//! (decompressed) capture where the problem is. [`decode`] turns the datagrams of a KDNET
//! session into authenticated, decoded records.

pub mod decode;

pub use decode::{DecodeSummary, Record, decode_session};

use std::collections::HashMap;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

/// One UDP datagram found in a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpDatagram {
    /// Time stamp, nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// Sender.
    pub src: SocketAddr,
    /// Receiver.
    pub dst: SocketAddr,
    /// The UDP payload.
    pub payload: Vec<u8>,
    /// Byte offset of the record holding it (of the last fragment, if reassembled).
    pub offset: usize,
    /// Whether the capture cut the packet short (snap length), so the payload is incomplete.
    pub truncated: bool,
}

/// Why a capture could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The gzip stream is damaged.
    #[error("the gzip stream is damaged after {decompressed} decompressed bytes: {source}")]
    Gzip {
        /// Bytes decompressed before the error.
        decompressed: usize,
        /// Cause.
        source: std::io::Error,
    },
    /// Neither pcap nor pcapng.
    #[error("not a pcap or pcapng capture (first bytes {0:02x?})")]
    UnknownFormat(Vec<u8>),
    /// The structure breaks at a byte offset.
    #[error("capture is damaged at byte offset {offset}: {what}")]
    Damaged {
        /// Offset in the (decompressed) capture.
        offset: usize,
        /// What was wrong.
        what: String,
    },
}

fn damaged(offset: usize, what: impl Into<String>) -> CaptureError {
    CaptureError::Damaged {
        offset,
        what: what.into(),
    }
}

/// Largest capture file read into memory.
pub const MAX_CAPTURE_BYTES: usize = 1 << 30;

/// Reads a capture file, decompressing gzip if it starts with the gzip magic.
pub fn read_file(path: &Path) -> Result<Vec<UdpDatagram>, CaptureError> {
    let raw = std::fs::read(path).map_err(|source| CaptureError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse(&raw)
}

/// Parses capture bytes (pcap, pcapng, or either gzip-compressed).
pub fn parse(raw: &[u8]) -> Result<Vec<UdpDatagram>, CaptureError> {
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        let mut dec = flate2::read::MultiGzDecoder::new(raw).take(MAX_CAPTURE_BYTES as u64);
        if let Err(source) = dec.read_to_end(&mut out) {
            return Err(CaptureError::Gzip {
                decompressed: out.len(),
                source,
            });
        }
        return parse_uncompressed(&out);
    }
    parse_uncompressed(raw)
}

fn parse_uncompressed(d: &[u8]) -> Result<Vec<UdpDatagram>, CaptureError> {
    let magic = d
        .get(..4)
        .ok_or_else(|| damaged(0, "file shorter than a capture header"))?;
    match magic {
        [0x0a, 0x0d, 0x0d, 0x0a] => parse_pcapng(d),
        [0xd4, 0xc3, 0xb2, 0xa1]
        | [0xa1, 0xb2, 0xc3, 0xd4]
        | [0x4d, 0x3c, 0xb2, 0xa1]
        | [0xa1, 0xb2, 0x3c, 0x4d] => parse_pcap(d),
        _ => Err(CaptureError::UnknownFormat(magic.to_vec())),
    }
}

#[derive(Clone, Copy)]
struct Endian(bool); // true = big endian

impl Endian {
    fn u16(self, d: &[u8], at: usize) -> Option<u16> {
        let b: [u8; 2] = d.get(at..at + 2)?.try_into().ok()?;
        Some(if self.0 {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    }
    fn u32(self, d: &[u8], at: usize) -> Option<u32> {
        let b: [u8; 4] = d.get(at..at + 4)?.try_into().ok()?;
        Some(if self.0 {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }
}

fn parse_pcap(d: &[u8]) -> Result<Vec<UdpDatagram>, CaptureError> {
    if d.len() < 24 {
        return Err(damaged(0, "pcap header is cut short"));
    }
    let (e, nanos) = match d[..4] {
        [0xd4, 0xc3, 0xb2, 0xa1] => (Endian(false), false),
        [0xa1, 0xb2, 0xc3, 0xd4] => (Endian(true), false),
        [0x4d, 0x3c, 0xb2, 0xa1] => (Endian(false), true),
        _ => (Endian(true), true),
    };
    let link = e.u32(d, 20).unwrap_or(0) & 0x0fff_ffff;
    let mut state = Reassembly::default();
    let mut out = Vec::new();
    let mut at = 24;
    while at < d.len() {
        let hdr = d
            .get(at..at + 16)
            .ok_or_else(|| damaged(at, "record header is cut short"))?;
        let secs = u64::from(e.u32(hdr, 0).unwrap_or(0));
        let frac = u64::from(e.u32(hdr, 4).unwrap_or(0));
        let incl = e.u32(hdr, 8).unwrap_or(0) as usize;
        let orig = e.u32(hdr, 12).unwrap_or(0) as usize;
        let data = d.get(at + 16..at + 16 + incl).ok_or_else(|| {
            damaged(
                at,
                format!("record of {incl} bytes runs past the end of the file"),
            )
        })?;
        let ns = secs * 1_000_000_000 + if nanos { frac } else { frac * 1000 };
        if let Some(u) = decode_link(link, data, incl < orig, ns, at, &mut state) {
            out.push(u);
        }
        at += 16 + incl;
    }
    Ok(out)
}

struct Interface {
    link: u32,
    /// Time-stamp units per second.
    units: u64,
}

fn parse_pcapng(d: &[u8]) -> Result<Vec<UdpDatagram>, CaptureError> {
    let mut e = Endian(false);
    let mut ifaces: Vec<Interface> = Vec::new();
    let mut state = Reassembly::default();
    let mut out = Vec::new();
    let mut at = 0;
    while at < d.len() {
        if d.len() - at < 12 {
            return Err(damaged(at, "block header is cut short"));
        }
        let btype = u32::from_le_bytes(d[at..at + 4].try_into().unwrap_or([0; 4]));
        if btype == 0x0a0d_0d0a {
            match d.get(at + 8..at + 12) {
                Some([0x4d, 0x3c, 0x2b, 0x1a]) => e = Endian(false),
                Some([0x1a, 0x2b, 0x3c, 0x4d]) => e = Endian(true),
                _ => return Err(damaged(at + 8, "section header has no byte-order magic")),
            }
            ifaces.clear();
        }
        let blen = e.u32(d, at + 4).unwrap_or(0) as usize;
        if blen < 12 || !blen.is_multiple_of(4) {
            return Err(damaged(at + 4, format!("block length {blen} is not valid")));
        }
        let block = d.get(at..at + blen).ok_or_else(|| {
            damaged(
                at,
                format!("block of {blen} bytes runs past the end of the file"),
            )
        })?;
        if e.u32(block, blen - 4) != Some(blen as u32) {
            return Err(damaged(
                at + blen - 4,
                "block's trailing length does not match",
            ));
        }
        let btype = e.u32(block, 0).unwrap_or(0);
        let body = &block[8..blen - 4];
        match btype {
            1 => {
                let link = u32::from(
                    e.u16(body, 0)
                        .ok_or_else(|| damaged(at, "short interface block"))?,
                );
                let mut units = 1_000_000;
                // Options start at body offset 8.
                let mut o = 8;
                while o + 4 <= body.len() {
                    let code = e.u16(body, o).unwrap_or(0);
                    let len = usize::from(e.u16(body, o + 2).unwrap_or(0));
                    if code == 0 {
                        break;
                    }
                    if code == 9 && len >= 1 {
                        let v = body.get(o + 4).copied().unwrap_or(6);
                        let exp = u32::from(v & 0x7f);
                        units = if v & 0x80 != 0 {
                            1u64.checked_shl(exp).unwrap_or(1_000_000)
                        } else {
                            10u64.checked_pow(exp).unwrap_or(1_000_000)
                        };
                    }
                    o += 4 + len.div_ceil(4) * 4;
                }
                ifaces.push(Interface {
                    link,
                    units: units.max(1),
                });
            }
            6 | 2 => {
                // Enhanced packet block (6) or the obsolete packet block (2).
                let (iface, ts_hi, ts_lo, caplen, orig, data_at) = if btype == 6 {
                    (
                        e.u32(body, 0).map(|v| v as usize),
                        e.u32(body, 4),
                        e.u32(body, 8),
                        e.u32(body, 12),
                        e.u32(body, 16),
                        20,
                    )
                } else {
                    (
                        e.u16(body, 0).map(usize::from),
                        e.u32(body, 4),
                        e.u32(body, 8),
                        e.u32(body, 12),
                        e.u32(body, 16),
                        20,
                    )
                };
                let (Some(iface), Some(hi), Some(lo), Some(caplen), Some(orig)) =
                    (iface, ts_hi, ts_lo, caplen, orig)
                else {
                    return Err(damaged(at, "packet block is cut short"));
                };
                let caplen = caplen as usize;
                let data = body.get(data_at..data_at + caplen).ok_or_else(|| {
                    damaged(at, format!("packet of {caplen} bytes runs past its block"))
                })?;
                let info = ifaces.get(iface).ok_or_else(|| {
                    damaged(
                        at,
                        format!("packet names interface {iface}, which was not described"),
                    )
                })?;
                let ts = (u64::from(hi) << 32) | u64::from(lo);
                let ns = (u128::from(ts) * 1_000_000_000 / u128::from(info.units)) as u64;
                if let Some(u) =
                    decode_link(info.link, data, caplen < orig as usize, ns, at, &mut state)
                {
                    out.push(u);
                }
            }
            3 => {
                // Simple packet block: interface 0, no time stamp.
                let orig = e.u32(body, 0).unwrap_or(0) as usize;
                let info = ifaces
                    .first()
                    .ok_or_else(|| damaged(at, "simple packet before any interface"))?;
                let data = &body[4.min(body.len())..];
                let len = orig.min(data.len());
                if let Some(u) = decode_link(info.link, &data[..len], len < orig, 0, at, &mut state)
                {
                    out.push(u);
                }
            }
            _ => {}
        }
        at += blen;
    }
    Ok(out)
}

/// An IPv4 datagram being reassembled: fragments by offset, and the total length once the last
/// fragment is seen.
type Fragments = (Vec<(usize, Vec<u8>)>, Option<usize>);

#[derive(Default)]
struct Reassembly {
    /// Keyed by (source, destination, IP id).
    pending: HashMap<(Ipv4Addr, Ipv4Addr, u16), Fragments>,
}

const MAX_PENDING_FRAGMENTED: usize = 256;

fn decode_link(
    link: u32,
    frame: &[u8],
    truncated: bool,
    ns: u64,
    offset: usize,
    state: &mut Reassembly,
) -> Option<UdpDatagram> {
    let ip = match link {
        1 => {
            let mut at = 12;
            let mut ethertype = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
            while ethertype == 0x8100 || ethertype == 0x88a8 {
                at += 4;
                ethertype = u16::from_be_bytes(frame.get(at..at + 2)?.try_into().ok()?);
            }
            if ethertype != 0x0800 && ethertype != 0x86dd {
                return None;
            }
            frame.get(at + 2..)?
        }
        101 | 12 | 14 | 228 | 229 => frame,
        113 => frame.get(16..)?,
        276 => frame.get(20..)?,
        0 | 108 => frame.get(4..)?,
        _ => return None,
    };
    let (src, dst, udp) = match ip.first()? >> 4 {
        4 => ipv4(ip, state)?,
        6 => ipv6(ip)?,
        _ => return None,
    };
    let sport = u16::from_be_bytes(udp.get(0..2)?.try_into().ok()?);
    let dport = u16::from_be_bytes(udp.get(2..4)?.try_into().ok()?);
    let ulen = usize::from(u16::from_be_bytes(udp.get(4..6)?.try_into().ok()?));
    if ulen < 8 {
        return None;
    }
    let avail = udp.len().min(ulen);
    let payload = udp.get(8..avail)?.to_vec();
    Some(UdpDatagram {
        time_ns: ns,
        src: SocketAddr::new(src, sport),
        dst: SocketAddr::new(dst, dport),
        payload,
        offset,
        truncated: truncated || udp.len() < ulen,
    })
}

fn ipv4(ip: &[u8], state: &mut Reassembly) -> Option<(IpAddr, IpAddr, Vec<u8>)> {
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes(ip.get(2..4)?.try_into().ok()?));
    if ihl < 20 || *ip.get(9)? != 17 {
        return None;
    }
    let src = Ipv4Addr::from(<[u8; 4]>::try_from(ip.get(12..16)?).ok()?);
    let dst = Ipv4Addr::from(<[u8; 4]>::try_from(ip.get(16..20)?).ok()?);
    let id = u16::from_be_bytes(ip.get(4..6)?.try_into().ok()?);
    let flags_frag = u16::from_be_bytes(ip.get(6..8)?.try_into().ok()?);
    let more = flags_frag & 0x2000 != 0;
    let frag_off = usize::from(flags_frag & 0x1fff) * 8;
    let end = total.min(ip.len()).max(ihl);
    let body = ip.get(ihl..end)?.to_vec();
    if !more && frag_off == 0 {
        return Some((IpAddr::V4(src), IpAddr::V4(dst), body));
    }
    if state.pending.len() >= MAX_PENDING_FRAGMENTED {
        state.pending.clear();
    }
    let entry = state.pending.entry((src, dst, id)).or_default();
    if !more {
        entry.1 = Some(frag_off + body.len());
    }
    entry.0.push((frag_off, body));
    let total_len = entry.1?;
    if total_len > 65_535 {
        state.pending.remove(&(src, dst, id));
        return None;
    }
    let mut buf = vec![0u8; total_len];
    let mut covered = vec![false; total_len];
    for (off, data) in &entry.0 {
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = buf.get_mut(off + i) {
                *slot = *b;
                covered[off + i] = true;
            }
        }
    }
    if covered.iter().all(|&c| c) {
        state.pending.remove(&(src, dst, id));
        Some((IpAddr::V4(src), IpAddr::V4(dst), buf))
    } else {
        None
    }
}

fn ipv6(ip: &[u8]) -> Option<(IpAddr, IpAddr, Vec<u8>)> {
    let plen = usize::from(u16::from_be_bytes(ip.get(4..6)?.try_into().ok()?));
    let mut next = *ip.get(6)?;
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(ip.get(8..24)?).ok()?);
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(ip.get(24..40)?).ok()?);
    let end = (40 + plen).min(ip.len());
    let mut at = 40;
    for _ in 0..8 {
        match next {
            17 => {
                return Some((IpAddr::V6(src), IpAddr::V6(dst), ip.get(at..end)?.to_vec()));
            }
            0 | 43 | 60 => {
                next = *ip.get(at)?;
                at += (usize::from(*ip.get(at + 1)?) + 1) * 8;
            }
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth_udp(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        let total = 20 + 8 + payload.len();
        let mut ip = vec![
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            1,
            0,
            0,
            64,
            17,
            0,
            0,
        ];
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        f.extend_from_slice(&ip);
        let ulen = 8 + payload.len();
        f.extend_from_slice(&[0xc7, 0xa7, 0xc7, 0xa7, (ulen >> 8) as u8, ulen as u8, 0, 0]);
        f.extend_from_slice(payload);
        f
    }

    fn pcap(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut d = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        d.extend_from_slice(&[0; 8]);
        d.extend_from_slice(&65535u32.to_le_bytes());
        d.extend_from_slice(&1u32.to_le_bytes());
        for (i, f) in frames.iter().enumerate() {
            d.extend_from_slice(&(i as u32).to_le_bytes());
            d.extend_from_slice(&500u32.to_le_bytes());
            d.extend_from_slice(&(f.len() as u32).to_le_bytes());
            d.extend_from_slice(&(f.len() as u32).to_le_bytes());
            d.extend_from_slice(f);
        }
        d
    }

    #[test]
    fn pcap_udp_and_truncation_offset() {
        let f = eth_udp([10, 0, 0, 1], [10, 0, 0, 2], b"MDBGhello");
        let d = pcap(&[f.clone(), f]);
        let u = parse(&d).unwrap();
        assert_eq!(u.len(), 2);
        assert_eq!(u[0].payload, b"MDBGhello");
        assert_eq!(u[0].src, "10.0.0.1:51111".parse().unwrap());
        assert_eq!(u[1].time_ns, 1_000_000_000 + 500_000);
        let cut = &d[..d.len() - 5];
        let err = parse(cut).unwrap_err().to_string();
        let second_record = 24 + 16 + (d.len() - 24) / 2 - 16;
        assert!(err.contains(&format!("offset {second_record}")), "{err}");
    }

    #[test]
    fn ipv4_fragments_reassemble() {
        let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let full = eth_udp([10, 0, 0, 1], [10, 0, 0, 2], &payload);
        let ip = &full[14..];
        let udp = &ip[20..];
        let mut frames = Vec::new();
        for (k, chunk) in udp.chunks(1480).enumerate() {
            let mut f = full[..14].to_vec();
            let mut h = ip[..20].to_vec();
            let total = 20 + chunk.len();
            h[2] = (total >> 8) as u8;
            h[3] = total as u8;
            let off = (k * 1480 / 8) as u16
                | if (k + 1) * 1480 < udp.len() {
                    0x2000
                } else {
                    0
                };
            h[6..8].copy_from_slice(&off.to_be_bytes());
            f.extend_from_slice(&h);
            f.extend_from_slice(chunk);
            frames.push(f);
        }
        frames.swap(0, 1);
        let u = parse(&pcap(&frames)).unwrap();
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].payload, payload);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(
            parse(b"hello world"),
            Err(CaptureError::UnknownFormat(_))
        ));
        assert!(parse(&[0x0a, 0x0d, 0x0d, 0x0a, 1]).is_err());
        assert!(parse(&[0x1f, 0x8b, 0, 0]).is_err());
    }
}
