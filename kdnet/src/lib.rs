//! The KDNET protocol: Windows kernel debugging over UDP.
//!
//! Layers, each using only the one below it:
//! - [`wire`]: keys, AES-256-CBC + HMAC-SHA256 datagrams, the handshake (sans-IO);
//! - [`kd`]: KD packets, acknowledgement, retransmission and resynchronisation (sans-IO);
//! - [`api`]: the DBGKD structures carried in KD packets;
//! - [`host`] and [`target`]: tokio sessions for the debugger and the debuggee;
//! - [`capture`]: reading pcap/pcapng captures of KDNET traffic;
//! - [`link`]: an impaired UDP link (latency, loss, duplication, reordering) for tests and the
//!   simulator.

pub mod api;
pub mod capture;
pub mod host;
pub mod kd;
pub mod link;
pub mod machine;
pub mod rng;
pub mod target;
pub mod wire;
