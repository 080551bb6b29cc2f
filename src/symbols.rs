//! The symbol path of every kernel the CLI opens: `--symbols`, then `_NT_SYMBOL_PATH`, then the
//! simulator's own tables. This binary ships the simulator (`kdnet sim`, `kdnet demo`), so a
//! session attached to it finds the layouts of the modules it invents; those tables answer only
//! for the simulated modules' PDB identities, so a real target's modules get their real symbols.

use kdnet_symbols::path::SymbolPath;

/// The symbol path for `--symbols` (see the module documentation).
pub fn path(arg: Option<&str>) -> SymbolPath {
    SymbolPath::from_args_and_env(arg).with_tables(kdnet_sim::symbols::tables())
}
