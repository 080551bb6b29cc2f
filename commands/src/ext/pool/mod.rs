//! `!pool`, `!poolused`, `!poolfind`: the pool model ([`kdnet_model::nt::pool`]) shown as
//! WinDbg shows it, one file per command.

pub mod find;
pub mod page;
pub mod used;

pub use kdnet_model::nt::pool::{tag_text, tag_value};
