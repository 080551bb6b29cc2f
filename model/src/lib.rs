//! The target model: one [`target::Target`] interface over live sessions and crash dumps,
//! memory with translation and caching ([`mem`]), dump files ([`dump`]), module images
//! ([`pe`]) and the Windows kernel model ([`nt`]: modules, processes, threads and their waits,
//! processors, unwinding). It knows nothing of commands, and nothing of the network: reading a
//! dump links neither the protocol nor its ciphers.

pub mod dump;
pub mod mem;
pub mod nt;
pub mod pe;
pub mod target;
