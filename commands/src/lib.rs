//! Kernel analysis for kdnet: one [`target::Target`] interface over live KDNET sessions and
//! crash dumps, memory access with translation and caching ([`mem`]), module images ([`pe`]),
//! the kernel model ([`nt`]), and the commands; [`faulty`] makes a target's requests fail on
//! purpose, to prove what all of it does when reads fail.

mod basic;
pub mod dump;
pub mod engine;
pub mod expr;
pub mod ext;
pub mod faulty;
pub mod live;
pub mod local;
pub mod mem;
pub mod nt;
pub mod pe;
pub mod script;
pub mod target;
