//! Module symbols and images: tables along the symbol path or the image's exports, the
//! exception table, image bytes, and symbolizing addresses.

use std::sync::Arc;

use super::{Kernel, Module, ModuleSymbols};
use crate::mem::Memory;
use crate::pe::{self, ImageReader, PeError, RuntimeFunction};
use crate::target::TargetError;

/// A reader of a module image in target memory, keeping the first read that failed (one that
/// failed for a reason of the moment wins: it is the one that matters).
pub(super) struct MemImage<'a> {
    pub(super) mem: &'a mut Memory,
    pub(super) base: u64,
    pub(super) failed: Option<TargetError>,
}

impl<'a> MemImage<'a> {
    pub(super) fn new(mem: &'a mut Memory, base: u64) -> MemImage<'a> {
        MemImage {
            mem,
            base,
            failed: None,
        }
    }
}

impl ImageReader for MemImage<'_> {
    fn read(&mut self, rva: u32, len: usize) -> Result<Vec<u8>, PeError> {
        let at = self.base.wrapping_add(u64::from(rva));
        self.mem.kread(at, len).map_err(|e| {
            if self.failed.as_ref().is_none_or(|f| !f.is_transient()) {
                self.failed = Some(e);
            }
            PeError::Unreadable { rva }
        })
    }
}

impl Kernel {
    /// The file version in the version resource of the image at `base` (`None` when it has
    /// none). A read that failed is an error, not an absence.
    pub fn image_file_version(&mut self, base: u64) -> Result<Option<[u16; 4]>, String> {
        let mut r = MemImage::new(&mut self.mem, base);
        let h = r.read(0, 0x1000).map_err(|e| e.to_string())?;
        let h = pe::headers(&h).map_err(|e| e.to_string())?;
        let v = pe::file_version(&h, &mut r);
        match (v, r.failed) {
            (Ok(v), _) => Ok(v),
            (Err(_), Some(f)) => Err(f.to_string()),
            (Err(e), None) => Err(e.to_string()),
        }
    }

    /// Loads a module's symbols (table along the path, else exports) once. What came of a
    /// read that failed (or a symbol path that failed) is used by the current command only:
    /// the next one tries again.
    pub fn module_symbols(&mut self, index: usize) -> Option<Arc<ModuleSymbols>> {
        let m = self.modules.as_ref()?.get(index)?.clone();
        if let Some(s) = &m.symbols {
            return Some(s.clone());
        }
        let mark = self.mem.failure_count();
        // Whether a read of the image failed (then nothing found is not a fact about the
        // module, and is not kept), and why the current command must say so.
        let mut retry = false;
        let mut problem: Option<String> = None;
        let syms = if m.short == "nt" && self.nt.is_some() {
            ModuleSymbols::Table {
                table: self.nt.clone()?,
                source: self.nt_source.clone(),
            }
        } else {
            let mut r = MemImage::new(&mut self.mem, m.base);
            let headers = r.read(0, 0x1000).ok().and_then(|h| pe::headers(&h).ok());
            match headers {
                Some(h) => {
                    let id = pe::codeview(&h, &mut r).ok().flatten();
                    let header_failure = r.failed.take();
                    let found = match &id {
                        Some(id) => match self.path.find(id) {
                            Ok(f) => f,
                            Err(e) => {
                                problem = Some(format!("its symbols could not be loaded: {e}"));
                                None
                            }
                        },
                        None => None,
                    };
                    if let Some(e) = header_failure {
                        retry = true;
                        if e.is_transient() {
                            problem = Some(format!("its debug directory is unreadable: {e}"));
                        }
                    }
                    if let Some(mm) = self.modules.as_mut().and_then(|v| v.get_mut(index)) {
                        mm.pdb = id.clone();
                        mm.timestamp = Some(h.timestamp);
                    }
                    match found {
                        Some(f) => ModuleSymbols::Table {
                            table: Arc::new(f.table),
                            source: f.source,
                        },
                        None => {
                            let mut r = MemImage::new(&mut self.mem, m.base);
                            let e = pe::exports(&h, &mut r);
                            if let Some(f) = r.failed {
                                retry = true;
                                if f.is_transient() {
                                    problem = Some(format!("its exports are unreadable: {f}"));
                                }
                            }
                            match e {
                                Ok(e) if !e.is_empty() => ModuleSymbols::Exports(e),
                                Ok(_) => ModuleSymbols::None("no symbols, no exports".into()),
                                Err(e) => ModuleSymbols::None(format!("exports: {e}")),
                            }
                        }
                    }
                }
                None => {
                    let header_failure = r.failed.take();
                    let (syms, file_problem) = self.image_file_symbols(&m);
                    if let Some(p) = file_problem {
                        problem = Some(p);
                    }
                    if let Some(e) = header_failure {
                        retry = true;
                        if e.is_transient() && matches!(syms, ModuleSymbols::None(_)) {
                            problem = Some(format!("its image header is unreadable: {e}"));
                        }
                    }
                    syms
                }
            }
        };
        // What the symbol path gave for an image not in memory is kept; "nothing" is not.
        retry = (retry && matches!(syms, ModuleSymbols::None(_)))
            || problem.is_some()
            || self.mem.failure_count() > mark;
        if let Some(p) = &problem {
            let name = if m.name.is_empty() {
                format!("the module at {:#x}", m.base)
            } else {
                m.name.clone()
            };
            self.note_incomplete(format!("symbols of {name}: {p}"));
        }
        let arc = Arc::new(syms);
        if let Some(mm) = self.modules.as_mut().and_then(|v| v.get_mut(index)) {
            mm.symbols = Some(arc.clone());
            mm.symbols_retry = retry;
            mm.symbols_problem = problem;
        }
        Some(arc)
    }

    /// For modules whose image is not in memory (triage dumps): the image file from the
    /// symbol path (`<name>/<TimeDateStamp><SizeOfImage>/<name>`, or a flat copy), then its PDB;
    /// and why the symbols could not be loaded, when the symbol path failed.
    fn image_file_symbols(&mut self, m: &Module) -> (ModuleSymbols, Option<String>) {
        let Some(mut img) = self.image_file(m) else {
            return (
                ModuleSymbols::None("image not in memory and not on the symbol path".into()),
                None,
            );
        };
        let h = img.headers.clone();
        let id = pe::codeview(&h, &mut img).ok().flatten();
        let (found, problem) = match id.as_ref().map(|id| self.path.find(id)) {
            Some(Ok(f)) => (f, None),
            Some(Err(e)) => (None, Some(format!("its symbols could not be loaded: {e}"))),
            None => (None, None),
        };
        let syms = match found {
            Some(f) => ModuleSymbols::Table {
                table: Arc::new(f.table),
                source: f.source,
            },
            None => match pe::exports(&h, &mut img) {
                Ok(e) if !e.is_empty() => ModuleSymbols::Exports(e),
                _ => ModuleSymbols::None("no symbols found for the image file".into()),
            },
        };
        (syms, problem)
    }

    /// The module's image file, found along the symbol path (and downloaded from a symbol
    /// server) by its time stamp and size, and checked against both.
    pub fn image_file(&self, m: &Module) -> Option<pe::FileImage> {
        let check = |p: &std::path::Path| {
            std::fs::read(p)
                .ok()
                .and_then(|b| pe::FileImage::new(b).ok())
                .is_some_and(|img| {
                    img.headers.size_of_image == m.size
                        && m.timestamp.is_none_or(|t| t == img.headers.timestamp)
                })
        };
        let found = match m.timestamp {
            Some(ts) => self.path.find_image(&m.name, ts, m.size, &check),
            None => self.path.entries.iter().find_map(|e| {
                let dir = match e {
                    kdnet_symbols::path::PathEntry::Dir(d) => d,
                    kdnet_symbols::path::PathEntry::Server { cache, .. } => cache,
                };
                let c = dir.join(&m.name);
                (c.is_file() && check(&c)).then_some(c)
            }),
        }?;
        pe::FileImage::new(std::fs::read(found).ok()?).ok()
    }

    /// The module's exception table (`.pdata`), from memory or its image file, kept once read;
    /// `Err` says why there is none. A table missing because a read failed is looked for again
    /// at the next command.
    pub fn module_pdata(&mut self, index: usize) -> Result<Arc<Vec<RuntimeFunction>>, String> {
        let m = self
            .modules
            .as_ref()
            .and_then(|l| l.get(index))
            .cloned()
            .ok_or_else(|| format!("no module {index}"))?;
        if let Some(p) = &m.pdata {
            return match &m.pdata_problem {
                Some(why) if p.is_empty() => Err(why.clone()),
                _ => Ok(p.clone()),
            };
        }
        let mark = self.mem.failure_count();
        let (from_mem, failed) = {
            let mut r = MemImage::new(&mut self.mem, m.base);
            let t = r
                .read(0, 0x1000)
                .ok()
                .and_then(|h| pe::headers(&h).ok())
                .and_then(|h| pe::pdata(&h, &mut r).ok());
            (t, r.failed)
        };
        let table = match from_mem {
            Some(t) if !t.is_empty() => t,
            _ => match self.image_file(&m) {
                Some(mut img) => {
                    let h = img.headers.clone();
                    pe::pdata(&h, &mut img).unwrap_or_default()
                }
                None => Vec::new(),
            },
        };
        // Without the table a leaf cannot be told from a framed function: say why it is not
        // there rather than guess.
        let problem = table.is_empty().then(|| match &failed {
            Some(e) => format!(
                "no unwind data for {}: reading its image failed ({e}) and it is not on the symbol path",
                m.name
            ),
            None => format!(
                "no unwind data for {} (image not readable and not on the symbol path)",
                m.name
            ),
        });
        let retry = table.is_empty() && (failed.is_some() || self.mem.failure_count() > mark);
        let arc = Arc::new(table);
        if let Some(mm) = self.modules.as_mut().and_then(|v| v.get_mut(index)) {
            mm.pdata = Some(arc.clone());
            mm.pdata_retry = retry;
            mm.pdata_problem = problem.clone();
        }
        match problem {
            Some(why) if arc.is_empty() => Err(why),
            _ => Ok(arc),
        }
    }

    /// [`Kernel::module_bytes`], remembered for the life of the module (unwind data).
    pub fn image_bytes_cached(&mut self, index: usize, rva: u32, len: usize) -> Option<Vec<u8>> {
        let m = self.modules.as_ref()?.get(index)?;
        let key = (m.base, m.size, rva, len);
        if let Some(b) = self.image_cache.get(&key) {
            return Some(b.clone());
        }
        let b = self.module_bytes(index, rva, len)?;
        if self.image_cache.len() < 1 << 16 {
            self.image_cache.insert(key, b.clone());
        }
        Some(b)
    }

    /// Reads a module's image bytes at an RVA (memory first, then its file).
    pub fn module_bytes(&mut self, index: usize, rva: u32, len: usize) -> Option<Vec<u8>> {
        let m = self.modules.as_ref()?.get(index)?.clone();
        if let Ok(b) = self.mem.kread(m.base.wrapping_add(u64::from(rva)), len) {
            return Some(b);
        }
        self.image_file(&m)
            .and_then(|mut img| img.read(rva, len).ok())
    }

    /// `module!symbol+0x…` for an address; `module+0x…` without symbols; hex otherwise.
    pub fn symbolize(&mut self, addr: u64) -> String {
        match self.symbol_parts(addr) {
            Some((m, Some(s), 0)) => format!("{m}!{s}"),
            Some((m, Some(s), off)) => format!("{m}!{s}+{off:#x}"),
            Some((m, None, off)) => format!("{m}+{off:#x}"),
            None => format!("{addr:#x}"),
        }
    }

    /// `module!symbol` when a symbol starts exactly at `addr` (a global), as WinDbg names it.
    pub fn global_name(&mut self, addr: u64) -> Option<String> {
        self.symbol_parts(addr)
            .and_then(|(m, s, off)| s.filter(|_| off == 0).map(|s| format!("{m}!{s}")))
    }

    /// (module, symbol, offset) for an address.
    pub fn symbol_parts(&mut self, addr: u64) -> Option<(String, Option<String>, u64)> {
        let i = self.module_index(addr)?;
        let m = self.modules.as_ref()?.get(i)?.clone();
        let rva = addr - m.base;
        let syms = self.module_symbols(i);
        let near = match syms.as_deref() {
            Some(ModuleSymbols::Table { table, .. }) => {
                table.nearest(rva).map(|(n, o)| (n.to_string(), o))
            }
            Some(ModuleSymbols::Exports(e)) => {
                let j = e.partition_point(|(_, a)| u64::from(*a) <= rva);
                j.checked_sub(1)
                    .map(|j| (e[j].0.clone(), rva - u64::from(e[j].1)))
            }
            _ => None,
        };
        Some(match near {
            Some((n, o)) => (m.short.clone(), Some(n), o),
            None => (m.short.clone(), None, rva),
        })
    }

    /// The address of `module!symbol` (exports count too).
    pub fn resolve(&mut self, module: &str, symbol: &str) -> Option<u64> {
        let mods = self.modules().ok()?.to_vec();
        for (i, m) in mods.iter().enumerate() {
            if !m.short.eq_ignore_ascii_case(module) && !m.name.eq_ignore_ascii_case(module) {
                continue;
            }
            let syms = self.module_symbols(i)?;
            let rva = match syms.as_ref() {
                ModuleSymbols::Table { table, .. } => table.symbol(symbol),
                ModuleSymbols::Exports(e) => e
                    .iter()
                    .find(|(n, _)| n == symbol)
                    .map(|(_, a)| u64::from(*a)),
                ModuleSymbols::None(_) => None,
            };
            return rva.map(|r| m.base.wrapping_add(r));
        }
        None
    }
}
