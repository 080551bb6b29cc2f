//! The KD packet layer inside KDNET: packets, ids, acknowledgement, retransmission and
//! resynchronisation, for both ends. Sans-IO: the caller passes in payloads and the time, and
//! takes out payloads to send and events.

pub mod host;
pub mod packet;
pub mod target;

pub use host::{Busy, HostKd, HostKdConfig, HostKdEvent, KdStats};
pub use packet::{
    CONTROL_LEADER, DATA_LEADER, HOST_INITIAL_ID, KdError, MAX_DATA, Packet, PacketType, checksum,
};
pub use target::{TargetKd, TargetKdConfig, TargetKdEvent, TargetKdStats};

#[cfg(test)]
mod tests;
