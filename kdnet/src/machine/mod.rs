//! The two ends of a KDNET session as sans-IO state machines: they take datagrams (with their
//! source) and the time, and give datagrams to send, events and their next deadline. The tokio
//! drivers in [`crate::host`] and [`crate::target`] only move bytes and sleep; tests run a pair
//! of machines over a simulated link with a virtual clock.

pub mod host;
pub mod target;

pub use host::{
    DR7_NONE, Done, HostError, HostEvent, HostMachine, HostMachineConfig, HostStats, LinkState,
    ModuleBreaks, Op, OpId, Output, Phase, RunState, TRANSFER_STEPS,
};
pub use target::{
    Activity, Resume, StopReason, TargetConfig, TargetHandler, TargetMachine, TargetStats,
};
