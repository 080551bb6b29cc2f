//! KD packets: a 16-byte header and up to 4000 data bytes.
//!
//! ```text
//! 0  leader      0x30303030 data, 0x69696969 control
//! 4  type        u16
//! 6  byte count  u16
//! 8  packet id   u32
//! 12 checksum    u32, sum of the data bytes (0 for control packets)
//! ```
//! Over KDNET a datagram carries exactly one packet, with no trailing 0xAA byte.

use std::fmt;

/// Leader of packets that carry data and are acknowledged.
pub const DATA_LEADER: u32 = 0x3030_3030;
/// Leader of ACK, RESEND and RESET.
pub const CONTROL_LEADER: u32 = 0x6969_6969;
/// Bytes of the header.
pub const HEADER_LEN: usize = 16;
/// Largest data part of a packet (`PACKET_MAX_SIZE`).
pub const MAX_DATA: usize = 4000;
/// First id of the debugger's data packets over KDNET; +2 per new packet.
pub const HOST_INITIAL_ID: u32 = 0x8000_0000;

/// The packet types, by their names in the debugger headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    /// 0: unused (the KDNET hello has this type).
    Unused,
    /// 1: 32-bit state change.
    StateChange32,
    /// 2: DBGKD_MANIPULATE_STATE64 request or reply.
    StateManipulate,
    /// 3: DBGKD_DEBUG_IO (DbgPrint, DbgPrompt).
    DebugIo,
    /// 4: acknowledgement.
    Acknowledge,
    /// 5: "send your last packet again".
    Resend,
    /// 6: resynchronise packet ids.
    Reset,
    /// 7: DBGKD_WAIT_STATE_CHANGE64.
    StateChange64,
    /// 8: target-internal poll for break-in; never on the wire.
    PollBreakIn,
    /// 9: DBGKD_TRACE_IO.
    TraceIo,
    /// 10: DBGKD_CONTROL_REQUEST.
    ControlRequest,
    /// 11: DBGKD_FILE_IO.
    FileIo,
    /// Any other value.
    Other(u16),
}

impl PacketType {
    /// From the wire value.
    pub fn from_u16(v: u16) -> PacketType {
        match v {
            0 => PacketType::Unused,
            1 => PacketType::StateChange32,
            2 => PacketType::StateManipulate,
            3 => PacketType::DebugIo,
            4 => PacketType::Acknowledge,
            5 => PacketType::Resend,
            6 => PacketType::Reset,
            7 => PacketType::StateChange64,
            8 => PacketType::PollBreakIn,
            9 => PacketType::TraceIo,
            10 => PacketType::ControlRequest,
            11 => PacketType::FileIo,
            other => PacketType::Other(other),
        }
    }

    /// The wire value.
    pub fn to_u16(self) -> u16 {
        match self {
            PacketType::Unused => 0,
            PacketType::StateChange32 => 1,
            PacketType::StateManipulate => 2,
            PacketType::DebugIo => 3,
            PacketType::Acknowledge => 4,
            PacketType::Resend => 5,
            PacketType::Reset => 6,
            PacketType::StateChange64 => 7,
            PacketType::PollBreakIn => 8,
            PacketType::TraceIo => 9,
            PacketType::ControlRequest => 10,
            PacketType::FileIo => 11,
            PacketType::Other(v) => v,
        }
    }

    /// The name used in the debugger headers.
    pub fn name(self) -> &'static str {
        match self {
            PacketType::Unused => "PACKET_TYPE_UNUSED",
            PacketType::StateChange32 => "PACKET_TYPE_KD_STATE_CHANGE32",
            PacketType::StateManipulate => "PACKET_TYPE_KD_STATE_MANIPULATE",
            PacketType::DebugIo => "PACKET_TYPE_KD_DEBUG_IO",
            PacketType::Acknowledge => "PACKET_TYPE_KD_ACKNOWLEDGE",
            PacketType::Resend => "PACKET_TYPE_KD_RESEND",
            PacketType::Reset => "PACKET_TYPE_KD_RESET",
            PacketType::StateChange64 => "PACKET_TYPE_KD_STATE_CHANGE64",
            PacketType::PollBreakIn => "PACKET_TYPE_KD_POLL_BREAKIN",
            PacketType::TraceIo => "PACKET_TYPE_KD_TRACE_IO",
            PacketType::ControlRequest => "PACKET_TYPE_KD_CONTROL_REQUEST",
            PacketType::FileIo => "PACKET_TYPE_KD_FILE_IO",
            PacketType::Other(_) => "PACKET_TYPE_UNKNOWN",
        }
    }
}

impl fmt::Display for PacketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why bytes are not a KD packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KdError {
    /// Fewer than 16 bytes.
    #[error("KD packet of {len} bytes is shorter than its 16-byte header")]
    TooShort {
        /// Length.
        len: usize,
    },
    /// Leader neither data nor control.
    #[error("KD packet leader {0:#010x} is neither data nor control")]
    BadLeader(u32),
    /// Byte count does not match what follows the header.
    #[error("KD header says {declared} data bytes but {actual} follow")]
    ByteCount {
        /// ByteCount field.
        declared: usize,
        /// Bytes present.
        actual: usize,
    },
    /// More than 4000 data bytes.
    #[error("KD packet carries {0} data bytes, more than the protocol's 4000")]
    TooLong(usize),
    /// Checksum mismatch.
    #[error("KD checksum {found:#010x} does not match the data ({computed:#010x})")]
    Checksum {
        /// In the header.
        found: u32,
        /// Of the data.
        computed: u32,
    },
}

/// A KD packet.
#[derive(Clone, PartialEq, Eq)]
pub struct Packet {
    /// Leader.
    pub leader: u32,
    /// Type.
    pub kind: PacketType,
    /// Id.
    pub id: u32,
    /// Data bytes.
    pub data: Vec<u8>,
}

impl fmt::Debug for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Packet {{ {} id {:#x}, {} bytes }}",
            self.kind.name(),
            self.id,
            self.data.len()
        )
    }
}

/// The checksum: the sum of the bytes, wrapping at 2^32.
pub fn checksum(data: &[u8]) -> u32 {
    data.iter().fold(0u32, |a, &b| a.wrapping_add(u32::from(b)))
}

impl Packet {
    /// A data packet.
    pub fn data(kind: PacketType, id: u32, data: Vec<u8>) -> Packet {
        Packet {
            leader: DATA_LEADER,
            kind,
            id,
            data,
        }
    }

    /// A control packet (ACK, RESEND, RESET).
    pub fn control(kind: PacketType, id: u32) -> Packet {
        Packet {
            leader: CONTROL_LEADER,
            kind,
            id,
            data: Vec::new(),
        }
    }

    /// Whether this is a data packet.
    pub fn is_data(&self) -> bool {
        self.leader == DATA_LEADER
    }

    /// The wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.data.len());
        out.extend_from_slice(&self.leader.to_le_bytes());
        out.extend_from_slice(&self.kind.to_u16().to_le_bytes());
        out.extend_from_slice(&(self.data.len() as u16).to_le_bytes());
        out.extend_from_slice(&self.id.to_le_bytes());
        let sum = if self.leader == DATA_LEADER {
            checksum(&self.data)
        } else {
            0
        };
        out.extend_from_slice(&sum.to_le_bytes());
        out.extend_from_slice(&self.data);
        out
    }

    /// Parses one packet that fills `bytes` exactly, checking the checksum of data packets.
    pub fn decode(bytes: &[u8]) -> Result<Packet, KdError> {
        let (p, found) = Self::decode_unchecked(bytes)?;
        if p.leader == DATA_LEADER {
            let computed = checksum(&p.data);
            if computed != found {
                return Err(KdError::Checksum { found, computed });
            }
        }
        Ok(p)
    }

    /// Parses without checking the checksum; returns the checksum field too.
    pub fn decode_unchecked(bytes: &[u8]) -> Result<(Packet, u32), KdError> {
        let h: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(KdError::TooShort { len: bytes.len() })?;
        let leader = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        if leader != DATA_LEADER && leader != CONTROL_LEADER {
            return Err(KdError::BadLeader(leader));
        }
        let kind = PacketType::from_u16(u16::from_le_bytes([h[4], h[5]]));
        let declared = usize::from(u16::from_le_bytes([h[6], h[7]]));
        let id = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
        let sum = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
        let actual = bytes.len() - HEADER_LEN;
        if declared != actual {
            return Err(KdError::ByteCount { declared, actual });
        }
        if declared > MAX_DATA {
            return Err(KdError::TooLong(declared));
        }
        Ok((
            Packet {
                leader,
                kind,
                id,
                data: bytes[HEADER_LEN..].to_vec(),
            },
            sum,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checksum() {
        let p = Packet::data(
            PacketType::StateManipulate,
            0x8000_0002,
            vec![1, 2, 3, 0xff],
        );
        let b = p.encode();
        assert_eq!(&b[12..16], &(1u32 + 2 + 3 + 255).to_le_bytes());
        assert_eq!(Packet::decode(&b).unwrap(), p);
        let mut bad = b.clone();
        bad[16] = 9;
        assert!(matches!(
            Packet::decode(&bad),
            Err(KdError::Checksum { .. })
        ));
        let ack = Packet::control(PacketType::Acknowledge, 4);
        let b = ack.encode();
        assert_eq!(b.len(), 16);
        assert_eq!(&b[..4], &[0x69; 4]);
        assert_eq!(Packet::decode(&b).unwrap(), ack);
        assert!(matches!(
            Packet::decode(&b[..15]),
            Err(KdError::TooShort { len: 15 })
        ));
        let mut extra = b.clone();
        extra.push(0xaa);
        assert!(matches!(
            Packet::decode(&extra),
            Err(KdError::ByteCount { .. })
        ));
    }

    #[test]
    fn every_type_has_a_name_and_round_trips() {
        for v in 0..=12u16 {
            let t = PacketType::from_u16(v);
            assert_eq!(t.to_u16(), v);
            assert!(t.name().starts_with("PACKET_TYPE_"));
        }
    }
}
