//! The extension commands: `!locks`, `!thread`, `!process`, `!stacks`, `!running`, `!analyze`,
//! `!deadlock`, `!hangcheck`, `!vm`, `!pool`, `!poolused`, `!poolfind`, `!ndiskd.*`.

pub mod analyze;
pub mod deadlock;
pub mod hangcheck;
pub mod io;
pub mod locks;
pub mod ndis;
pub mod objects;
pub mod pool;
pub mod threads;
pub mod vm;
