//! The DBGKD structures carried in KD packets (x64 layouts).

pub mod context;
pub mod io;
pub mod manipulate;
pub mod state_change;
pub mod status;
pub mod version;

pub use context::{Context, Reg};
pub use io::{DebugIo, FileIo, FileOp};
pub use manipulate::{Api, ApiBody, MAX_TRANSFER, Manipulate};
pub use state_change::{ControlReport, Exception64, LoadSymbols64, StateChange64, StateEvent};
pub use version::GetVersion64;

/// A DBGKD structure that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// Not enough bytes.
    #[error("{what} needs {need} bytes, got {have}")]
    TooShort {
        /// The structure.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
}

impl From<context::ContextTooShort> for ApiError {
    fn from(e: context::ContextTooShort) -> ApiError {
        ApiError::TooShort {
            what: "CONTEXT",
            need: e.need,
            have: e.have,
        }
    }
}
