//! The simulator's tables for a debugger: the layouts of the modules the simulator invents
//! (its `ndis.sys`), which no symbol server has. A debugger session that may talk to the
//! simulator adds them to its symbol path ([`symbol_path`], or
//! `SymbolPath::with_tables(tables())`); they answer only for the simulated modules' PDB
//! identities, so a real target's modules still get their real symbols.

use std::sync::{Arc, OnceLock};

use kdnet_symbols::PdbId;
use kdnet_symbols::TypeTable;
use kdnet_symbols::path::{SymbolPath, Tables};

use crate::ndis_layout;

/// The simulator's tables (see the module documentation).
#[derive(Debug, Default)]
pub struct SimTables;

impl Tables for SimTables {
    fn source(&self) -> &str {
        "built-in"
    }

    fn table(&self, id: &PdbId) -> Option<TypeTable> {
        // The simulated ndis.pdb's GUID starts with the build in hex.
        let build = u32::from_str_radix(id.guid.get(..8)?, 16).ok()?;
        (ndis_layout::pdb(build) == *id).then(|| ndis_layout::table(build))
    }
}

/// The simulator's tables, shared.
pub fn tables() -> Arc<dyn Tables> {
    static TABLES: OnceLock<Arc<dyn Tables>> = OnceLock::new();
    TABLES.get_or_init(|| Arc::new(SimTables)).clone()
}

/// `SymbolPath::parse(text)` with the simulator's tables after its entries.
pub fn symbol_path(text: &str) -> SymbolPath {
    SymbolPath::parse(text).with_tables(tables())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_for_the_simulated_ndis_of_any_build_only() {
        for build in [7601, 9600, 17763, 20348, 22000, 26100] {
            let id = ndis_layout::pdb(build);
            let t = SimTables.table(&id).expect("the simulated ndis.pdb");
            assert!(t.has_type("_NDIS_MINIPORT_BLOCK"));
            assert_eq!(t.id.as_ref(), Some(&id));
        }
        let mut other = ndis_layout::pdb(20348);
        other.age = 2;
        assert!(SimTables.table(&other).is_none());
        let real = PdbId {
            guid: "6ABBF3711A187DC5033358115921C89D".into(),
            age: 1,
            name: "ndis.pdb".into(),
        };
        assert!(SimTables.table(&real).is_none());
        // The symbol layer alone does not know the simulated layout.
        assert!(
            SymbolPath::parse("")
                .find(&ndis_layout::pdb(20348))
                .unwrap()
                .is_none()
        );
        let found = symbol_path("").find(&ndis_layout::pdb(20348)).unwrap();
        assert_eq!(found.map(|f| f.source), Some("built-in".to_string()));
    }
}
