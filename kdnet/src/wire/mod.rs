//! The KDNET wire: keys, sealed datagrams, the control-channel handshake and the data channel.
//! Sans-IO: pure functions and state machines over byte slices.

pub mod control;
pub mod data;
pub mod datagram;
pub mod endpoint;
pub mod key;

pub use control::{ControlMessage, Offer, Response};
pub use data::DataPayload;
pub use datagram::{Channel, Direction, InnerHeader, Opened, WireError};
pub use endpoint::{
    Dropped, Drops, HandshakeReason, HostWire, HostWireEvent, TargetWire, TargetWireConfig,
    TargetWireEvent, Transmit,
};
pub use key::{Key, KeyError};
