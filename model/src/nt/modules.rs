//! Loaded modules: their records, the loader's module list walked once per stop (symbols
//! of modules still loaded kept across stops), and lookups by address and name.

use std::sync::Arc;

use kdnet_symbols::{PdbId, TypeTable};

use super::{Kernel, ModelError};
use crate::pe::RuntimeFunction;

/// A loaded module.
#[derive(Debug, Clone)]
pub struct Module {
    /// File name (`ntoskrnl.exe`).
    pub name: String,
    /// Full path as the loader recorded it.
    pub path: String,
    /// Short name for `module!symbol` (`nt`, `tcpip`).
    pub short: String,
    /// Base address.
    pub base: u64,
    /// SizeOfImage.
    pub size: u32,
    /// TimeDateStamp, once known.
    pub timestamp: Option<u32>,
    /// PDB identity, once read from the image.
    pub pdb: Option<PdbId>,
    pub(super) symbols: Option<Arc<ModuleSymbols>>,
    /// `symbols` came from reads that failed: tried again at the next command.
    pub(super) symbols_retry: bool,
    /// Why the symbols could not be loaded just now (a read or the symbol path failed).
    pub(super) symbols_problem: Option<String>,
    pub(super) pdata: Option<Arc<Vec<RuntimeFunction>>>,
    /// `pdata` came from reads that failed: tried again at the next command.
    pub(super) pdata_retry: bool,
    /// Why there is no exception table, when there is none.
    pub(super) pdata_problem: Option<String>,
}

/// What a module's symbols are.
#[derive(Debug)]
pub enum ModuleSymbols {
    /// A full table (ISF or PDB).
    Table {
        /// The table.
        table: Arc<TypeTable>,
        /// Where it came from.
        source: String,
    },
    /// Only the image's exports.
    Exports(Vec<(String, u32)>),
    /// Nothing.
    None(String),
}

impl Module {
    /// A module record.
    pub fn new(name: &str, path: &str, base: u64, size: u32) -> Module {
        Module {
            name: name.to_string(),
            path: path.to_string(),
            short: short_name(name),
            base,
            size,
            timestamp: None,
            pdb: None,
            symbols: None,
            symbols_retry: false,
            symbols_problem: None,
            pdata: None,
            pdata_retry: false,
            pdata_problem: None,
        }
    }

    /// Whether `addr` lies in the image.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr - self.base < u64::from(self.size)
    }

    /// Its symbols, if loaded.
    pub fn symbols(&self) -> Option<&ModuleSymbols> {
        self.symbols.as_deref()
    }

    /// Why its symbols could not be loaded just now (a read of its image or the symbol path
    /// failed), when that is so: then they are not missing, only not loaded.
    pub fn symbols_problem(&self) -> Option<&str> {
        self.symbols_problem.as_deref()
    }
}

/// `ntoskrnl.exe` → `nt`, `hal.dll` → `hal`, `Wdf01000.sys` → `Wdf01000`.
pub fn short_name(file: &str) -> String {
    let stem = file.rsplit(['\\', '/']).next().unwrap_or(file);
    let stem = stem.rsplit_once('.').map_or(stem, |(s, _)| s);
    match stem.to_ascii_lowercase().as_str() {
        "ntoskrnl" | "ntkrnlmp" | "ntkrnlpa" | "ntkrpamp" => "nt".into(),
        // As WinDbg names modules: what cannot be in a symbol name (`winfsp-x64.sys`) becomes
        // an underscore (`winfsp_x64`).
        _ => stem
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect(),
    }
}

impl Kernel {
    /// Drops what was derived from memory once the target has run since.
    pub(super) fn sync(&mut self) {
        let e = self.mem.epoch();
        if e != self.epoch {
            self.epoch = e;
            // A whole list read since the last module event (the target reports every load
            // and unload) is still the list: kept. Otherwise read again.
            let now = self.mem.target().module_generation();
            let keep = now.is_some()
                && now == self.modules_generation
                && self.modules_partial.is_none()
                && self.modules_error.is_none();
            if !keep {
                self.modules_generation = None;
                if let Some(m) = self.modules.take() {
                    self.earlier = m;
                }
            }
            self.modules_partial = None;
            self.modules_error = None;
            self.kdbg = None;
        }
    }

    /// Reads the module list again now, whatever was kept (a dump written from what was read
    /// must hold the list's pages: a reader finds the kernel through them).
    pub fn reread_modules(&mut self) -> Result<(), ModelError> {
        self.sync();
        if let Some(m) = self.modules.take() {
            self.earlier = m;
        }
        self.modules_generation = None;
        self.modules_partial = None;
        self.modules_error = None;
        self.modules().map(|_| ())
    }

    /// The loaded modules. A list read whole is kept while the target stays stopped; one that
    /// is not (a read failed, the list is broken) is used by the current command, which is
    /// then incomplete, and read again by the next.
    pub fn modules(&mut self) -> Result<&[Module], ModelError> {
        self.sync();
        if let Some(e) = &self.modules_error {
            return Err(e.clone());
        }
        if self.modules.is_none() {
            let generation = self.mem.target().module_generation();
            let (mut list, partial) = match self.load_modules() {
                Ok(x) => x,
                Err(e) => {
                    self.modules_error = Some(e.clone());
                    return Err(e);
                }
            };
            // A module still loaded where it was keeps the symbols already found for it.
            for m in &mut list {
                if let Some(old) = self.earlier.iter().find(|o| {
                    o.base == m.base && o.size == m.size && o.name.eq_ignore_ascii_case(&m.name)
                }) {
                    if !old.symbols_retry {
                        m.symbols = old.symbols.clone();
                    }
                    if !old.pdata_retry {
                        m.pdata = old.pdata.clone();
                    }
                    m.pdb = old.pdb.clone();
                    m.timestamp = m.timestamp.or(old.timestamp);
                }
            }
            self.earlier.clear();
            if let Some(p) = &partial {
                let note = format!("module list: {p}");
                if !self.notes.contains(&note) {
                    self.notes.push(note);
                }
            }
            self.modules_generation = generation.filter(|_| partial.is_none());
            self.modules_partial = partial;
            self.modules = Some(list);
        }
        if let Some(p) = self.modules_partial.clone() {
            self.note_incomplete(format!("the module list is incomplete: {p}"));
        }
        Ok(self.modules.as_deref().unwrap_or(&[]))
    }

    /// Why the module list the current command sees is not whole, if it is not: a module not
    /// found in it may still be loaded.
    pub fn modules_incomplete(&mut self) -> Option<String> {
        self.modules().ok()?;
        self.modules_partial.clone()
    }

    /// The module list and, when it is not whole, why.
    pub(super) fn load_modules(&mut self) -> Result<(Vec<Module>, Option<String>), ModelError> {
        if let Some(list) = self.mem.target().module_list() {
            let all = list.len();
            let list: Vec<Module> = list
                .into_iter()
                .filter(|m| m.base.checked_add(u64::from(m.size)).is_some())
                .map(|m| {
                    let mut module = Module::new(&m.name, &m.path, m.base, m.size);
                    module.timestamp = Some(m.timestamp);
                    module
                })
                .collect();
            let partial = (list.len() < all).then(|| {
                format!(
                    "{} damaged entries (an image past the end of the address space) left out",
                    all - list.len()
                )
            });
            return Ok((list, partial));
        }
        let head = match self.mem.info().ps_loaded_module_list {
            Some(h) => h,
            None => self.sym("PsLoadedModuleList")?,
        };
        // Without nt's table (it is found through this list) the loader entry's members are
        // at the offsets every x64 build has (checked against every real table the tests
        // have); with it, at the table's, and a table without them is an error.
        let (dll_base, size_of_image, full, short, node) = match &self.nt {
            Some(t) => {
                let ty = if t.has_type("_KLDR_DATA_TABLE_ENTRY") {
                    "_KLDR_DATA_TABLE_ENTRY"
                } else {
                    "_LDR_DATA_TABLE_ENTRY"
                };
                (
                    t.offset(ty, "DllBase")?,
                    t.offset(ty, "SizeOfImage")?,
                    t.offset(ty, "FullDllName")?,
                    t.offset(ty, "BaseDllName")?,
                    0x68usize,
                )
            }
            None => (0x30, 0x40, 0x48, 0x58, 0x68),
        };
        let walk = self.walk_list(head, Some((0, node)), 4096, true)?;
        let mut problems: Vec<String> = walk.note.iter().cloned().collect();
        let mut damaged = 0usize;
        let mut out = Vec::new();
        for (entry, bytes) in walk.entries.iter().zip(&walk.nodes) {
            let q = |o: u64| {
                u64::from_le_bytes(
                    bytes[o as usize..o as usize + 8]
                        .try_into()
                        .unwrap_or([0; 8]),
                )
            };
            let base = q(dll_base);
            let size = q(size_of_image) as u32;
            // An image that would run past the top of the address space is a damaged entry.
            if base.checked_add(u64::from(size)).is_none() {
                damaged += 1;
                continue;
            }
            let name = match self.unicode_string(entry.wrapping_add(short)) {
                Ok(n) => n,
                Err(e) => {
                    problems.push(format!(
                        "the name of the module at {base:#x} is unreadable: {e}"
                    ));
                    String::new()
                }
            };
            let path = match self.unicode_string(entry.wrapping_add(full)) {
                Ok(p) => p,
                Err(e) => {
                    problems.push(format!(
                        "the path of the module at {base:#x} is unreadable: {e}"
                    ));
                    String::new()
                }
            };
            out.push(Module::new(&name, &path, base, size));
        }
        if damaged > 0 {
            problems.push(format!(
                "{damaged} damaged entries (an image past the end of the address space) left out"
            ));
        }
        let partial = (!problems.is_empty()).then(|| problems.join("; "));
        Ok((out, partial))
    }

    /// The index of the module containing `addr` (none when the module list cannot be read:
    /// then the current command says so).
    pub fn module_index(&mut self, addr: u64) -> Option<usize> {
        match self.modules() {
            Ok(list) => list.iter().position(|m| m.contains(addr)),
            Err(e) => {
                self.note_incomplete(format!(
                    "the module list is unreadable ({e}): addresses are shown without symbols"
                ));
                None
            }
        }
    }

    /// The module containing `addr`.
    pub fn module_at(&mut self, addr: u64) -> Option<Module> {
        let i = self.module_index(addr)?;
        self.modules.as_ref()?.get(i).cloned()
    }

    /// The symbol names of the module called `short` (`nt`, `ndis`), loading its symbols if
    /// they are not yet; empty when there is no such module.
    pub fn symbol_names(&mut self, short: &str) -> Vec<String> {
        let Ok(modules) = self.modules() else {
            return Vec::new();
        };
        let Some(index) = modules
            .iter()
            .position(|m| m.short.eq_ignore_ascii_case(short))
        else {
            return Vec::new();
        };
        match self.module_symbols(index).as_deref() {
            Some(ModuleSymbols::Table { table, .. }) => {
                table.symbol_names().map(str::to_string).collect()
            }
            Some(ModuleSymbols::Exports(e)) => e.iter().map(|(n, _)| n.clone()).collect(),
            _ => Vec::new(),
        }
    }

    /// The short names of the loaded modules.
    pub fn module_names(&mut self) -> Vec<String> {
        self.modules()
            .map(|m| m.iter().map(|m| m.short.clone()).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::short_name;

    #[test]
    fn short_names_are_windbg_s() {
        assert_eq!(short_name("\\SystemRoot\\system32\\ntoskrnl.exe"), "nt");
        assert_eq!(short_name("ntkrnlmp.exe"), "nt");
        assert_eq!(short_name("FLTMGR.SYS"), "FLTMGR");
        assert_eq!(short_name("winfsp-x64.sys"), "winfsp_x64");
        assert_eq!(short_name("my.driver.v2.sys"), "my_driver_v2");
    }
}
