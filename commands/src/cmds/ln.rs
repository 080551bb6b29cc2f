//! `ln ADDR`: the nearest symbols before and after an address, and an exact match.

use schemars::JsonSchema;
use serde::Serialize;

use crate::args::{Args, Syntax, expr};
use crate::engine::{CmdError, Engine, addr};
use crate::registry::Render;
use kdnet_model::nt::ModuleSymbols;

/// `ln ADDR`.
pub(crate) const SYNTAX: Syntax = Syntax::params(&[expr("ADDR")]);

/// What `ln` found at an address: a symbol, only a module, or nothing.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(untagged)]
pub(crate) enum Nearest {
    /// The nearest symbol at or before the address.
    Symbol(AtSymbol),
    /// A module with no symbol at or before the address.
    Module(InModule),
    /// No module holds the address.
    Nothing(Unmapped),
}

/// The nearest symbol at or before an address.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct AtSymbol {
    /// The address asked about.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub address: u64,
    /// The module that holds it (short name).
    pub module: String,
    /// The nearest symbol at or before it.
    pub symbol: String,
    /// Where that symbol is.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub symbol_address: u64,
    /// How far past the symbol the address is (0: an exact match).
    pub offset: u64,
    /// The next symbol after the address (null when there is none).
    pub next: Option<NextSymbol>,
}

/// The next symbol after an address.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct NextSymbol {
    /// Its name.
    pub symbol: String,
    /// Its address.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub address: u64,
}

/// An address in a module with no symbol at or before it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct InModule {
    /// The address asked about.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub address: u64,
    /// The module that holds it (short name).
    pub module: String,
    /// Always null: no symbol.
    pub symbol: (),
    /// How far past the module's base the address is.
    pub offset: u64,
}

/// An address no module holds.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Unmapped {
    /// The address asked about.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub address: u64,
    /// Always null: no symbol.
    pub symbol: (),
}

pub(crate) fn run(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<Nearest, CmdError> {
    let address = a
        .expr(e, "ADDR")?
        .ok_or_else(|| CmdError::Usage("an address is needed".into()))?;
    // No module list, no answer: "no symbols" would be a guess.
    e.kernel.modules()?;
    let Some(i) = e.kernel.module_index(address) else {
        return Ok(Nearest::Nothing(Unmapped {
            address,
            symbol: (),
        }));
    };
    let m = e.kernel.modules()?[i].clone();
    let rva = address - m.base;
    let syms = e.kernel.module_symbols(i);
    let (near, next) = match syms.as_deref() {
        Some(ModuleSymbols::Table { table, .. }) => (
            table.nearest(rva).map(|(n, o)| (n.to_string(), rva - o)),
            table.next_symbol(rva + 1).map(|(n, r)| (n.to_string(), r)),
        ),
        Some(ModuleSymbols::Exports(ex)) => {
            let j = ex.partition_point(|(_, r)| u64::from(*r) <= rva);
            (
                j.checked_sub(1)
                    .map(|j| (ex[j].0.clone(), u64::from(ex[j].1))),
                ex.get(j).map(|(n, r)| (n.clone(), u64::from(*r))),
            )
        }
        _ => (None, None),
    };
    let Some((symbol, start)) = near else {
        return Ok(Nearest::Module(InModule {
            address,
            module: m.short,
            symbol: (),
            offset: rva,
        }));
    };
    Ok(Nearest::Symbol(AtSymbol {
        address,
        module: m.short,
        symbol,
        symbol_address: m.base + start,
        offset: rva - start,
        next: next.map(|(symbol, r)| NextSymbol {
            symbol,
            address: m.base + r,
        }),
    }))
}

impl Render for Nearest {
    fn render(&self, out: &mut String) {
        match self {
            Nearest::Nothing(n) => out.push_str(&format!("No symbols at {}\n", addr(n.address))),
            Nearest::Module(m) => out.push_str(&format!(
                "({})   {}+{:#x}\n",
                addr(m.address.wrapping_sub(m.offset)),
                m.module,
                m.offset
            )),
            Nearest::Symbol(s) => {
                let here = if s.offset == 0 {
                    format!("{}!{}", s.module, s.symbol)
                } else {
                    format!("{}!{}+{:#x}", s.module, s.symbol, s.offset)
                };
                out.push_str(&format!("({})   {}", addr(s.symbol_address), here));
                if let Some(n) = &s.next {
                    out.push_str(&format!(
                        "   |  ({})   {}!{}",
                        addr(n.address),
                        s.module,
                        n.symbol
                    ));
                }
                out.push('\n');
                if s.offset == 0 {
                    out.push_str(&format!("Exact matches:\n    {}!{}\n", s.module, s.symbol));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: &Nearest) -> String {
        let mut t = String::new();
        n.render(&mut t);
        t
    }

    #[test]
    fn three_answers() {
        let n = Nearest::Nothing(Unmapped {
            address: 0x10,
            symbol: (),
        });
        assert_eq!(text(&n), "No symbols at 00000000`00000010\n");
        assert_eq!(
            serde_json::to_value(&n).unwrap(),
            serde_json::json!({"address": "0x0000000000000010", "symbol": null})
        );
        let n = Nearest::Module(InModule {
            address: 0x1010,
            module: "amdppm".into(),
            symbol: (),
            offset: 0x10,
        });
        assert_eq!(text(&n), "(00000000`00001000)   amdppm+0x10\n");
        assert_eq!(
            serde_json::to_value(&n).unwrap(),
            serde_json::json!({
                "address": "0x0000000000001010", "module": "amdppm", "symbol": null, "offset": 16
            })
        );
        let n = Nearest::Symbol(AtSymbol {
            address: 0x1000,
            module: "nt".into(),
            symbol: "KeBugCheckEx".into(),
            symbol_address: 0x1000,
            offset: 0,
            next: Some(NextSymbol {
                symbol: "KeBugCheck2".into(),
                address: 0x1100,
            }),
        });
        assert_eq!(
            text(&n),
            "(00000000`00001000)   nt!KeBugCheckEx   |  (00000000`00001100)   nt!KeBugCheck2\n\
             Exact matches:\n    nt!KeBugCheckEx\n"
        );
    }
}
