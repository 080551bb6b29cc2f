//! `lm [m PATTERN]`: the loaded modules, sorted by address, with their symbol state.

use schemars::JsonSchema;
use serde::Serialize;

use super::common::glob;
use crate::args::{Args, Kind, Param, Syntax};
use crate::engine::{CmdError, Engine, addr};
use crate::registry::Render;
use kdnet_model::nt::ModuleSymbols;

/// `lm [m PATTERN]` (also `lm mPATTERN`): the rest of the line, as written.
pub(crate) const SYNTAX: Syntax = Syntax::params(&[Param {
    name: "ARGS",
    kind: Kind::Rest,
    optional: true,
}]);

/// The modules `lm` lists.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Modules {
    /// The modules (those whose name matches the pattern, with one), sorted by base address.
    pub modules: Vec<Module>,
}

/// One loaded module.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Module {
    /// The short name, as in `name!symbol` (`nt`, `tcpip`).
    pub name: String,
    /// The image's file name (`ntoskrnl.exe`).
    pub image: String,
    /// The full path the loader recorded.
    pub path: String,
    /// The base address.
    pub base: u64,
    /// The first address past the image.
    pub end: u64,
    /// SizeOfImage.
    pub size: u32,
    /// The image's TimeDateStamp (null when not known).
    pub timestamp: Option<u32>,
    /// Its symbols: from a PDB, from the export table, none, or not loaded yet.
    pub symbols: SymbolState,
    /// The PDB the symbols came from (null without PDB symbols).
    pub symbol_file: Option<String>,
}

/// Where a module's symbols come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum SymbolState {
    /// A PDB.
    Pdb,
    /// The export table.
    Export,
    /// None could be found.
    None,
    /// Not loaded yet.
    Deferred,
}

impl SymbolState {
    fn label(self) -> &'static str {
        match self {
            SymbolState::Pdb => "(pdb symbols)",
            SymbolState::Export => "(export symbols)",
            SymbolState::None => "(no symbols)",
            SymbolState::Deferred => "(deferred)",
        }
    }
}

pub(crate) fn run(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<Modules, CmdError> {
    // `lm m pattern` / `lm mpattern`: modules whose name matches.
    let pattern = a
        .text("ARGS")
        .unwrap_or("")
        .strip_prefix('m')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.to_ascii_lowercase());
    // The kernel's symbols are loaded already: show them as such.
    if e.kernel.nt.is_some() {
        let base = e.kernel.base;
        if let Some(i) = e.kernel.module_index(base) {
            e.kernel.module_symbols(i);
        }
    }
    let mut mods = e.kernel.modules()?.to_vec();
    mods.sort_by_key(|m| m.base);
    let modules = mods
        .iter()
        .filter(|m| {
            pattern
                .as_deref()
                .is_none_or(|p| glob(p, &m.short.to_ascii_lowercase()))
        })
        .map(|m| {
            let (symbols, symbol_file) = match m.symbols() {
                Some(ModuleSymbols::Table { source, .. }) => {
                    (SymbolState::Pdb, Some(source.clone()))
                }
                Some(ModuleSymbols::Exports(_)) => (SymbolState::Export, None),
                Some(ModuleSymbols::None(_)) => (SymbolState::None, None),
                None => (SymbolState::Deferred, None),
            };
            Module {
                name: m.short.clone(),
                image: m.name.clone(),
                path: m.path.clone(),
                base: m.base,
                end: m.base.wrapping_add(u64::from(m.size)),
                size: m.size,
                timestamp: m.timestamp,
                symbols,
                symbol_file,
            }
        })
        .collect();
    Ok(Modules { modules })
}

impl Render for Modules {
    fn render(&self, out: &mut String) {
        out.push_str("start             end                 module name\n");
        for m in &self.modules {
            let line = format!(
                "{} {}   {:<10} {:<22} {}",
                addr(m.base),
                addr(m.end),
                m.name,
                m.symbols.label(),
                m.symbol_file.as_deref().unwrap_or("")
            );
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_module_without_trailing_blanks() {
        let m = |name: &str, symbols, file: Option<&str>| Module {
            name: name.into(),
            image: format!("{name}.sys"),
            path: format!("\\SystemRoot\\system32\\drivers\\{name}.sys"),
            base: 0xfffff805_5c400000,
            end: 0xfffff805_5c500000,
            size: 0x10_0000,
            timestamp: None,
            symbols,
            symbol_file: file.map(str::to_string),
        };
        let list = Modules {
            modules: vec![
                m("nt", SymbolState::Pdb, Some("ntkrnlmp.pdb")),
                m("ndis", SymbolState::Deferred, None),
            ],
        };
        let mut text = String::new();
        list.render(&mut text);
        assert_eq!(
            text,
            "start             end                 module name\n\
             fffff805`5c400000 fffff805`5c500000   nt         (pdb symbols)          ntkrnlmp.pdb\n\
             fffff805`5c400000 fffff805`5c500000   ndis       (deferred)\n"
        );
        let j = serde_json::to_value(&list).unwrap();
        assert_eq!(j["modules"][1]["symbols"], "deferred");
        assert_eq!(j["modules"][1]["symbol_file"], serde_json::Value::Null);
        assert_eq!(j["modules"][0]["timestamp"], serde_json::Value::Null);
        assert_eq!(j["modules"][0].as_object().unwrap().len(), 9);
    }
}
