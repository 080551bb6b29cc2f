//! `x module!pattern`: the symbols whose names match, from each matching module's symbol table
//! (or its exports where that is all it has), by address. `*` and `?` work in both halves, and
//! case does not matter, as in WinDbg.

use schemars::JsonSchema;
use serde::Serialize;

use crate::args::{Args, Syntax, word};
use crate::engine::{CmdError, Engine, addr};
use crate::registry::Render;
use kdnet_model::nt::ModuleSymbols;

/// Most symbols one `x` lists.
const MAX_SYMBOLS: usize = 100_000;

/// `x module!pattern`.
pub(crate) const SYNTAX: Syntax = Syntax::params(&[word("PATTERN")]);

/// The symbols that matched.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Symbols {
    /// The pattern, as given.
    pub pattern: String,
    /// The matches, by address.
    pub symbols: Vec<Match>,
    /// Modules that matched but whose symbols could not be searched, and why.
    pub notes: Vec<String>,
}

/// One matching symbol.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Match {
    /// Its address.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub address: u64,
    /// `module!name`.
    pub name: String,
    /// Where the name came from: `symbols` (a symbol table) or `exports`.
    pub source: String,
}

fn matches(pattern: &str, text: &str) -> bool {
    crate::cmds::common::glob(&pattern.to_ascii_lowercase(), &text.to_ascii_lowercase())
}

/// `x module!pattern`.
pub(crate) fn run(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<Symbols, CmdError> {
    let pattern = a.text("PATTERN").unwrap_or("").to_string();
    let (module, name) = pattern.split_once('!').ok_or_else(|| {
        CmdError::Usage("x takes module!pattern (`x nt!KeWait*`, `x *!DriverEntry`)".into())
    })?;
    if module.is_empty() || name.is_empty() {
        return Err(CmdError::Usage(
            "x takes module!pattern: both halves are needed".into(),
        ));
    }
    let mods = e.kernel.modules()?.to_vec();
    let mut symbols = Vec::new();
    let mut notes = Vec::new();
    let mut any = false;
    for (i, m) in mods.iter().enumerate() {
        if !matches(module, &m.short) && !matches(module, &m.name) {
            continue;
        }
        any = true;
        let Some(syms) = e.kernel.module_symbols(i) else {
            notes.push(format!("{}: no symbols", m.short));
            continue;
        };
        let mut found: Vec<(u64, String, &str)> = match syms.as_ref() {
            ModuleSymbols::Table { table, .. } => table
                .all_symbols()
                .filter(|(n, _)| matches(name, n))
                .map(|(n, r)| (r, n.to_string(), "symbols"))
                .collect(),
            ModuleSymbols::Exports(x) => x
                .iter()
                .filter(|(n, _)| matches(name, n))
                .map(|(n, r)| (u64::from(*r), n.clone(), "exports"))
                .collect(),
            ModuleSymbols::None(why) => {
                notes.push(format!("{}: {why}", m.short));
                continue;
            }
        };
        found.sort();
        for (rva, n, source) in found {
            if symbols.len() >= MAX_SYMBOLS {
                let why = format!("stopped at {MAX_SYMBOLS} symbols");
                e.kernel.note_incomplete(why.clone());
                notes.push(why);
                break;
            }
            symbols.push(Match {
                address: m.base.wrapping_add(rva),
                name: format!("{}!{n}", m.short),
                source: source.to_string(),
            });
        }
    }
    if !any {
        return Err(CmdError::Failed(format!(
            "no loaded module matches {module:?}"
        )));
    }
    symbols.sort_by(|a, b| a.address.cmp(&b.address).then(a.name.cmp(&b.name)));
    Ok(Symbols {
        pattern,
        symbols,
        notes,
    })
}

impl Render for Symbols {
    fn render(&self, out: &mut String) {
        for s in &self.symbols {
            out.push_str(&format!("{} {}\n", addr(s.address), s.name));
        }
        for n in &self.notes {
            out.push_str(&format!("NOTE: {n}\n"));
        }
    }
}
