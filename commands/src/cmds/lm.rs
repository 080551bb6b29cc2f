//! `lm [OPTIONS] [a ADDR] [m PATTERN]`: the loaded modules, sorted by address, with their
//! symbol state. Options as WinDbg takes them, run together or apart (`lm vm nt`, `lm v m nt`):
//! `v` verbose (path, timestamp, checksum, size, PDB of each), `f` the full path, `n` the image
//! name, `t` the timestamp, `l` only modules with symbols loaded, `e` only modules with a symbol
//! problem, `k` kernel modules (all of them here), `u` user modules (none: the loader list of a
//! kernel target has none), `o` loaded modules (all of them here).

use schemars::JsonSchema;
use serde::Serialize;

use super::common::glob;
use crate::args::{Args, Kind, Param, Syntax};
use crate::engine::{CmdError, Engine, addr};
use crate::registry::Render;
use kdnet_model::nt::ModuleSymbols;

/// `lm [OPTIONS] [a ADDR] [m PATTERN]` (also `lm mPATTERN`): the rest of the line, as written.
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
    /// How the text lays them out (`v`, `f`, `n`, `t`); not part of the data.
    #[serde(skip)]
    pub layout: Layout,
}

/// Which of `lm`'s layouts the text uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Layout {
    /// `v`: a block of details under each module.
    pub verbose: bool,
    /// `f`: the full path instead of the symbol state.
    pub full_path: bool,
    /// `n`: the image name instead of the symbol state.
    pub image_name: bool,
    /// `t`: the timestamp instead of the symbol state.
    pub timestamp: bool,
}

/// What `lm`'s arguments ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Options {
    pub layout: Layout,
    /// `l`: only modules whose symbols are loaded.
    pub loaded_symbols: bool,
    /// `e`: only modules with a symbol problem.
    pub symbol_problems: bool,
    /// `u`: only user-mode modules.
    pub user: bool,
    /// `m PATTERN`.
    pub pattern: Option<String>,
    /// `a ADDR`: the module holding ADDR (an expression, evaluated later).
    pub address: Option<String>,
}

/// Parses `lm`'s arguments: option letters (together or apart), then `a ADDR` or `m PATTERN`.
pub(crate) fn options(text: &str) -> Result<Options, CmdError> {
    let mut o = Options::default();
    let mut rest = text.trim();
    while let Some(c) = rest.chars().next() {
        let after = rest[c.len_utf8()..].trim_start();
        match c {
            'm' | 'M' => {
                if after.is_empty() {
                    return Err(CmdError::Usage("lm m needs a pattern".into()));
                }
                o.pattern = Some(after.to_ascii_lowercase());
                return Ok(o);
            }
            'a' => {
                if after.is_empty() {
                    return Err(CmdError::Usage("lm a needs an address".into()));
                }
                o.address = Some(after.to_string());
                return Ok(o);
            }
            'v' => o.layout.verbose = true,
            'f' => o.layout.full_path = true,
            'n' => o.layout.image_name = true,
            't' => o.layout.timestamp = true,
            'l' => o.loaded_symbols = true,
            'e' => o.symbol_problems = true,
            'u' => o.user = true,
            'k' | 'o' => {}
            ' ' | '\t' => {}
            other => {
                return Err(CmdError::Usage(format!(
                    "lm: unknown option '{other}' (v f n t l e k u o, a ADDR, m PATTERN)"
                )));
            }
        }
        rest = if c.is_whitespace() {
            rest.trim_start()
        } else {
            &rest[c.len_utf8()..]
        };
    }
    Ok(o)
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
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub base: u64,
    /// The first address past the image.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub end: u64,
    /// SizeOfImage.
    pub size: u32,
    /// The image's TimeDateStamp (null when not known).
    pub timestamp: Option<u32>,
    /// Its symbols: from a PDB, from the export table, none, or not loaded yet.
    pub symbols: SymbolState,
    /// The PDB the symbols came from (null without PDB symbols).
    pub symbol_file: Option<String>,
    /// The image's CheckSum (with `v`; null otherwise or when the header could not be read).
    pub checksum: Option<u32>,
    /// The PDB the image names: file name, GUID and age (`ntkrnlmp.pdb 22597D0B…1`), when
    /// known.
    pub pdb: Option<String>,
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
    let o = options(a.text("ARGS").unwrap_or(""))?;
    let pattern = o.pattern.clone();
    let at = match &o.address {
        Some(x) => Some(e.eval(x)?),
        None => None,
    };
    // The kernel's symbols are loaded already: show them as such.
    if e.kernel.nt.is_some() {
        let base = e.kernel.base;
        if let Some(i) = e.kernel.module_index(base) {
            e.kernel.module_symbols(i);
        }
    }
    let mut mods = e.kernel.modules()?.to_vec();
    mods.sort_by_key(|m| m.base);
    let mut modules: Vec<Module> = mods
        .iter()
        .filter(|m| {
            pattern
                .as_deref()
                .is_none_or(|p| glob(p, &m.short.to_ascii_lowercase()))
        })
        .filter(|m| at.is_none_or(|a| a >= m.base && a - m.base < u64::from(m.size)))
        // The loader's list of a kernel target holds kernel modules only.
        .filter(|_| !o.user)
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
                checksum: None,
                pdb: m
                    .pdb
                    .as_ref()
                    .map(|p| format!("{} {}{:X}", p.name, p.guid, p.age)),
            }
        })
        .filter(|m| {
            !o.loaded_symbols || matches!(m.symbols, SymbolState::Pdb | SymbolState::Export)
        })
        .filter(|m| !o.symbol_problems || m.symbols == SymbolState::None)
        .collect();
    if o.layout.verbose {
        // The header page of each image listed: its checksum.
        for m in &mut modules {
            if let Ok(h) = e.kernel.mem.kread(m.base, 0x400)
                && let Ok(h) = kdnet_model::pe::headers(&h)
            {
                m.checksum = Some(h.checksum);
                m.timestamp = m.timestamp.or(Some(h.timestamp));
            } else {
                e.kernel.note_incomplete(format!(
                    "the headers of {} at {} could not be read",
                    m.name,
                    addr(m.base)
                ));
            }
        }
    }
    Ok(Modules {
        modules,
        layout: o.layout,
    })
}

/// A TimeDateStamp as WinDbg shows it (`Wed Jun  9 06:21:35 2021`), in UTC.
pub(crate) fn stamp_text(t: u32) -> String {
    let secs = i64::from(t);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, mo, d) = crate::calendar::civil(days);
    let wd = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let mon = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(mo - 1) as usize];
    format!(
        "{wd} {mon} {d:>2} {:02}:{:02}:{:02} {y}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

impl Render for Modules {
    fn render(&self, out: &mut String) {
        out.push_str("start             end                 module name\n");
        let l = self.layout;
        for m in &self.modules {
            let what = if l.full_path {
                m.path.clone()
            } else if l.image_name {
                m.image.clone()
            } else if l.timestamp {
                match m.timestamp {
                    Some(t) => format!("{} ({t:08X})", stamp_text(t)),
                    None => "(timestamp not known)".into(),
                }
            } else {
                format!(
                    "{:<22} {}",
                    m.symbols.label(),
                    m.symbol_file.as_deref().unwrap_or("")
                )
            };
            let line = format!("{} {}   {:<10} {what}", addr(m.base), addr(m.end), m.name);
            out.push_str(line.trim_end());
            out.push('\n');
            if l.verbose {
                out.push_str(&format!("    Image path: {}\n", m.path));
                out.push_str(&format!("    Image name: {}\n", m.image));
                match m.timestamp {
                    Some(t) => out.push_str(&format!(
                        "    Timestamp:        {} ({t:08X})\n",
                        stamp_text(t)
                    )),
                    None => out.push_str("    Timestamp:        not known\n"),
                }
                match m.checksum {
                    Some(c) => out.push_str(&format!("    CheckSum:         {c:08X}\n")),
                    None => out.push_str("    CheckSum:         not read\n"),
                }
                out.push_str(&format!("    ImageSize:        {:08X}\n", m.size));
                if let Some(p) = &m.pdb {
                    out.push_str(&format!("    PDB:              {p}\n"));
                }
                if let Some(f) = &m.symbol_file {
                    out.push_str(&format!("    Symbol file:      {f}\n"));
                }
            }
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
            checksum: None,
            pdb: None,
        };
        let list = Modules {
            modules: vec![
                m("nt", SymbolState::Pdb, Some("ntkrnlmp.pdb")),
                m("ndis", SymbolState::Deferred, None),
            ],
            layout: Layout::default(),
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
        assert_eq!(j["modules"][0].as_object().unwrap().len(), 11);
    }

    #[test]
    fn options_together_or_apart() {
        let vm = options("vm nt").unwrap();
        assert!(vm.layout.verbose);
        assert_eq!(vm.pattern.as_deref(), Some("nt"));
        assert_eq!(options("v m nt").unwrap(), vm);
        assert_eq!(options("mnd*").unwrap().pattern.as_deref(), Some("nd*"));
        let f = options("f").unwrap();
        assert!(f.layout.full_path && f.pattern.is_none());
        assert_eq!(
            options("a fffff805`5c400000").unwrap().address.as_deref(),
            Some("fffff805`5c400000")
        );
        assert!(options("q").is_err());
        assert!(options("m").is_err());
        assert_eq!(stamp_text(0), "Thu Jan  1 00:00:00 1970");
        assert_eq!(stamp_text(0x60c05a7f), "Wed Jun  9 06:06:55 2021");
    }
}
