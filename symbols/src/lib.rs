//! Symbols for kdnet: one type-layout API over Volatility 3 symbol tables (ISF) and PDB files,
//! found along a symbol path.

pub mod builtin;
pub mod fltmgr;
pub mod isf;
pub mod msf;
pub mod path;
pub mod pdb;
pub mod table;

pub use table::{Enum, Field, FieldRef, Lookups, PdbId, Recording, Ty, TypeTable, Udt, UdtKind};

/// Errors of the symbol layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SymError {
    /// A file could not be read.
    #[error("cannot read {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// A file is not what it should be.
    #[error("{path}: not a valid symbol file: {message}")]
    Format {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// No such type.
    #[error("type {0} is not in the symbols")]
    NoType(String),
    /// No such field.
    #[error("{ty} has no field {path}")]
    NoField {
        /// The type.
        ty: String,
        /// The path asked for.
        path: String,
    },
    /// No such field: a structure on the way lacks the member.
    #[error("{ty} has no field {path} ({inner} has no member {member})")]
    NoMember {
        /// The type asked about.
        ty: String,
        /// The path asked for.
        path: String,
        /// The structure on the path that lacks the member.
        inner: String,
        /// The member it lacks.
        member: String,
    },
    /// An array index past the end.
    #[error("index {index} is past the end of {path} ({count} elements)")]
    IndexOutOfRange {
        /// The path.
        path: String,
        /// The index.
        index: u64,
        /// Elements in the array.
        count: u64,
    },
    /// No such symbol.
    #[error("symbol {0} is not in the symbols")]
    NoSymbol(String),
}
