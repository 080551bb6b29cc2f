//! The symbol path of every kernel the CLI opens: `--symbols`, then `_NT_SYMBOL_PATH`, then the
//! tables built into the project (the demo kernel's, the NDIS layout of a real ndis.pdb), each
//! answering only for its own PDB identity. The simulator (`kdnet sim`, `kdnet demo`) needs
//! nothing more: its modules carry real PDB identities.

use kdnet_symbols::path::SymbolPath;

/// The symbol path for `--symbols` (see the module documentation).
pub fn path(arg: Option<&str>) -> SymbolPath {
    SymbolPath::from_args_and_env(arg)
}
