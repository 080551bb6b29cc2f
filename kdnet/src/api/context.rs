//! The x64 CONTEXT and KSPECIAL_REGISTERS offsets: the processor state the DBGKD APIs carry,
//! defined below the protocol (in `kdnet-arch`) so the dump reader shares it without the
//! network stack.

pub use kdnet_arch::*;
