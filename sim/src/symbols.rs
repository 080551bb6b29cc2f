//! The symbol path of a debugger session with the simulator. Every module the simulator lays
//! out with types carries a real PDB's identity (nt: the real kernel table's; ndis.sys: the real
//! ndis.pdb whose layout the project carries), which the symbol layer answers for, along the
//! path or from its built-in copies: the simulator serves no tables of its own, so what a
//! debugger reads of it is exactly what it would read of a real machine with those PDBs.

use kdnet_symbols::path::SymbolPath;

/// The symbol path `text` (a session with the simulator needs nothing more).
pub fn symbol_path(text: &str) -> SymbolPath {
    SymbolPath::parse(text)
}
