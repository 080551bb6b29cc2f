//! The kernel model: version and base, the debugger data block, loaded modules and their
//! symbols, processes, threads, processors, wait analysis, stacks and bugcheck data — the same
//! code for live sessions and dumps, with every offset from the symbol table.

pub mod locks;
pub mod ndis;
pub mod pool;
pub mod procs;
pub mod threads;
pub mod unwind;
pub mod view;
pub mod vm;
pub mod waitgraph;

use kdnet_arch::le::Le;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kdnet_symbols::path::SymbolPath;
use kdnet_symbols::{PdbId, SymError, TypeTable, builtin};

use crate::mem::Memory;
use crate::pe::{self, ImageReader, PeError, RuntimeFunction};
use crate::target::{Target, TargetError};
use view::{View, ViewError};

/// Errors of the kernel model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// Memory or state could not be read.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// A symbol or type is missing.
    #[error(transparent)]
    Symbols(#[from] SymError),
    /// A structure could not be decoded.
    #[error(transparent)]
    View(#[from] ViewError),
    /// The kernel's symbols were not found.
    #[error(
        "no symbols for the kernel ({0}); give a symbol path with --symbols or _NT_SYMBOL_PATH"
    )]
    NoKernelSymbols(String),
    /// The kernel's symbols are not loaded because its image could not be read just now (the
    /// next command tries again).
    #[error("the kernel's symbols are not loaded: reading its image failed: {0}")]
    KernelUnread(TargetError),
    /// Data that cannot be right.
    #[error("{0}")]
    Corrupt(String),
}

/// Largest list walked.
pub const MAX_LIST: usize = 1 << 22;

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
    symbols: Option<Arc<ModuleSymbols>>,
    /// `symbols` came from reads that failed: tried again at the next command.
    symbols_retry: bool,
    /// Why the symbols could not be loaded just now (a read or the symbol path failed).
    symbols_problem: Option<String>,
    pdata: Option<Arc<Vec<RuntimeFunction>>>,
    /// `pdata` came from reads that failed: tried again at the next command.
    pdata_retry: bool,
    /// Why there is no exception table, when there is none.
    pdata_problem: Option<String>,
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
        _ => stem.to_string(),
    }
}

/// A list walked with every guard: an iteration cap, a visited set, Flink/Blink consistency,
/// canonical and aligned pointers, and unreadable entries reported instead of failing.
#[derive(Debug, Clone, Default)]
pub struct ListWalk {
    /// The entries (addresses of their LIST_ENTRY), in order.
    pub entries: Vec<u64>,
    /// Bytes read at each entry (`entry - link_offset`, `node_size` bytes), when asked for.
    pub nodes: Vec<Vec<u8>>,
    /// Why the walk ended early, if it did.
    pub note: Option<String>,
}

/// The debugger data block, decoded.
#[derive(Debug, Clone)]
pub struct Kdbg {
    /// Its address.
    pub address: u64,
    /// Whether it was encoded in memory.
    pub was_encoded: bool,
    /// The plain bytes (Header.Size of them).
    pub bytes: Vec<u8>,
}

impl Kdbg {
    /// A field by name (pointer-sized or 2/4-byte as the layout says).
    pub fn field(&self, name: &str) -> Option<u64> {
        let (_, off, size) = builtin::KDDEBUGGER_DATA64_FIELDS
            .iter()
            .find(|f| f.0 == name)?;
        let (off, size) = (*off as usize, *size as usize);
        let b = self.bytes.get(off..off + size)?;
        let mut a = [0u8; 8];
        a[..size].copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }
}

/// The model of one kernel.
pub struct Kernel {
    /// Memory.
    pub mem: Memory,
    /// Where symbols are looked for.
    pub path: SymbolPath,
    /// The kernel's table, when found.
    pub nt: Option<Arc<TypeTable>>,
    /// Where it came from, or why it is missing.
    pub nt_source: String,
    /// Kernel base.
    pub base: u64,
    /// Build number.
    pub build: u32,
    modules: Option<Vec<Module>>,
    /// Modules of an earlier stop, whose loaded symbols are reused when they are still there.
    earlier: Vec<Module>,
    kdbg: Option<Kdbg>,
    epoch: u64,
    /// Read-only image bytes (unwind data) by (module base, RVA, length): images do not change
    /// while loaded, so these outlive the memory cache.
    image_cache: HashMap<(u64, u32, u32, usize), Vec<u8>>,
    /// Warnings gathered while building the model.
    pub notes: Vec<String>,
    /// Why what the current command reads is not whole (see [`Kernel::note_incomplete`]).
    gaps: Vec<String>,
    /// Gaps beyond those kept.
    gaps_dropped: usize,
    /// The kernel image could not be read for a reason of the moment: its symbols are looked
    /// for again at the next command.
    nt_retry: Option<ModelError>,
    /// The module list in `modules` is not whole (why): it is walked again at the next command.
    modules_partial: Option<String>,
    /// Reading the module list failed during this command.
    modules_error: Option<ModelError>,
    /// Processors' registers read while the target stays stopped.
    contexts: HashMap<u32, kdnet_arch::Context>,
    /// The memory epoch `contexts` belong to.
    contexts_epoch: u64,
}

/// Most reasons one command's result keeps for being incomplete.
const MAX_GAPS: usize = 32;

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("build", &self.build)
            .field("base", &format_args!("{:#x}", self.base))
            .field("nt", &self.nt_source)
            .finish()
    }
}

/// A reader of a module image in target memory, keeping the first read that failed (one that
/// failed for a reason of the moment wins: it is the one that matters).
struct MemImage<'a> {
    mem: &'a mut Memory,
    base: u64,
    failed: Option<TargetError>,
}

impl<'a> MemImage<'a> {
    fn new(mem: &'a mut Memory, base: u64) -> MemImage<'a> {
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
    /// Builds the model over a target: finds the kernel base, reads the kernel image's PDB
    /// identity and looks for its symbols along `path`.
    pub fn open(target: Box<dyn Target>, path: SymbolPath) -> Result<Kernel, ModelError> {
        let mem = Memory::new(target);
        let info = mem.info().clone();
        let mut k = Kernel {
            mem,
            path,
            nt: None,
            nt_source: String::new(),
            base: info.kernel_base.unwrap_or(0),
            build: info.build,
            modules: None,
            earlier: Vec::new(),
            kdbg: None,
            epoch: 0,
            image_cache: HashMap::new(),
            notes: Vec::new(),
            gaps: Vec::new(),
            gaps_dropped: 0,
            nt_retry: None,
            modules_partial: None,
            modules_error: None,
            contexts: HashMap::new(),
            contexts_epoch: 0,
        };
        if k.base == 0 {
            // Dumps: the first loader entry is the kernel.
            if let Ok(mods) = k.modules()
                && let Some(first) = mods.first()
            {
                k.base = first.base;
            }
        }
        if k.base == 0 {
            return Err(ModelError::Corrupt(
                "the kernel base could not be found".into(),
            ));
        }
        k.load_nt_symbols();
        Ok(k)
    }

    fn load_nt_symbols(&mut self) {
        self.nt_retry = None;
        let (id, failed) = {
            let base = self.base;
            let mut r = MemImage::new(&mut self.mem, base);
            let id = match r
                .read(0, 0x1000)
                .map_err(|e| e.to_string())
                .and_then(|h| pe::headers(&h).map_err(|e| e.to_string()))
            {
                Ok(h) => pe::codeview(&h, &mut r).ok().flatten(),
                Err(e) => {
                    let e = match &r.failed {
                        Some(f) => format!("{e}: {f}"),
                        None => e,
                    };
                    let note = format!("the kernel image header is not readable ({e})");
                    if !self.notes.contains(&note) {
                        self.notes.push(note);
                    }
                    None
                }
            };
            (id, r.failed.filter(TargetError::is_transient))
        };
        // Not in memory (triage dumps): the kernel's image file along the symbol path.
        let id = id.or_else(|| {
            let first = self.modules().ok()?.first()?.clone();
            let mut img = self.image_file(&first)?;
            let h = img.headers.clone();
            pe::codeview(&h, &mut img).ok().flatten()
        });
        let Some(id) = id else {
            if let Some(e) = failed {
                // Not a fact about the target: read it again at the next command.
                self.nt_source = format!("reading the kernel image failed: {e}");
                self.nt_retry = Some(ModelError::KernelUnread(e));
                return;
            }
            self.nt_source =
                "kernel image not readable and not on the symbol path: identity unknown".into();
            return;
        };
        match self.path.find(&id) {
            Ok(Some(found)) => {
                self.nt_source = found.source;
                self.nt = Some(Arc::new(found.table));
            }
            Ok(None) => {
                self.nt_source = format!("{} {} not on the symbol path", id.name, id.key());
                self.notes.push(format!(
                    "no symbols for {} ({}): give --symbols",
                    id.name,
                    id.key()
                ));
            }
            Err(e) => {
                // A symbol server that did not answer, a damaged file: looked for again at the
                // next command.
                self.nt_source = e.to_string();
                if !self.notes.contains(&e.to_string()) {
                    self.notes.push(e.to_string());
                }
                self.nt_retry = Some(ModelError::NoKernelSymbols(e.to_string()));
            }
        }
    }

    /// The kernel's table, or an error saying it is missing (or could not be read just now).
    pub fn nt(&self) -> Result<Arc<TypeTable>, ModelError> {
        match (&self.nt, &self.nt_retry) {
            (Some(t), _) => Ok(t.clone()),
            (None, Some(e)) => Err(e.clone()),
            (None, None) => Err(ModelError::NoKernelSymbols(self.nt_source.clone())),
        }
    }

    /// Starts a command: what was derived from reads that failed is dropped so that this
    /// command reads it again (a failure is a fact about its moment, not about the target), and
    /// the reasons for an incomplete result start afresh.
    pub fn begin_command(&mut self) {
        self.gaps.clear();
        self.gaps_dropped = 0;
        self.modules_error = None;
        if let Some(list) = &mut self.modules {
            for m in list.iter_mut() {
                if m.symbols_retry {
                    m.symbols = None;
                    m.symbols_retry = false;
                    m.symbols_problem = None;
                }
                if m.pdata_retry {
                    m.pdata = None;
                    m.pdata_retry = false;
                    m.pdata_problem = None;
                }
            }
        }
        if self.modules_partial.take().is_some()
            && let Some(list) = self.modules.take()
        {
            self.earlier = list;
        }
        if self.nt.is_none() && self.nt_retry.is_some() {
            self.load_nt_symbols();
        }
    }

    /// Forgets what was read of the target (it ran): cached memory and registers.
    pub fn invalidate(&mut self) {
        self.contexts.clear();
        self.mem.invalidate();
    }

    /// The registers of processor `n` ([`Kernel::processor_context`]), kept while the target
    /// stays stopped.
    pub fn context(&mut self, n: u32) -> Result<kdnet_arch::Context, ModelError> {
        let e = self.mem.epoch();
        if e != self.contexts_epoch {
            self.contexts_epoch = e;
            self.contexts.clear();
        }
        if let Some(c) = self.contexts.get(&n) {
            return Ok(c.clone());
        }
        let c = self.processor_context(n)?;
        self.contexts.insert(n, c.clone());
        Ok(c)
    }

    /// Records why what the current command reads is not whole: a walk that stopped early, a
    /// read that failed, a limit. The engine gives these with the command's result.
    pub fn note_incomplete(&mut self, reason: impl Into<String>) {
        let reason = reason.into();
        if self.gaps.contains(&reason) {
            return;
        }
        if self.gaps.len() < MAX_GAPS {
            self.gaps.push(reason);
        } else {
            self.gaps_dropped += 1;
        }
    }

    /// The reasons recorded since [`Kernel::begin_command`], and how many more were dropped.
    pub fn take_gaps(&mut self) -> (Vec<String>, usize) {
        let n = std::mem::take(&mut self.gaps_dropped);
        (std::mem::take(&mut self.gaps), n)
    }

    /// The address of an nt symbol.
    pub fn sym(&self, name: &str) -> Result<u64, ModelError> {
        Ok(self.base + self.nt()?.require_symbol(name)?)
    }

    /// Whether nt has the symbol.
    pub fn has_sym(&self, name: &str) -> bool {
        self.nt.as_ref().is_some_and(|t| t.symbol(name).is_some())
    }

    /// Reads a whole `ty` at `addr` from kernel space.
    pub fn view(&mut self, ty: &str, addr: u64) -> Result<View, ModelError> {
        self.view_sized(ty, addr, None, false)
    }

    /// Reads a whole `ty` at `addr` with read-ahead (list walks).
    pub fn view_ahead(&mut self, ty: &str, addr: u64) -> Result<View, ModelError> {
        self.view_sized(ty, addr, None, true)
    }

    fn view_sized(
        &mut self,
        ty: &str,
        addr: u64,
        len: Option<usize>,
        ahead: bool,
    ) -> Result<View, ModelError> {
        let nt = self.nt()?;
        let size = match len {
            Some(l) => l,
            None => nt.size_of(ty)? as usize,
        };
        let bytes = if ahead {
            self.mem.kread_ahead(addr, size)?
        } else {
            self.mem.kread(addr, size)?
        };
        Ok(View::new(nt, ty, addr, bytes))
    }

    /// Walks a LIST_ENTRY list from `head`. With `node` = (link offset, size), the bytes of each
    /// containing structure are read too, in the same request as its links.
    pub fn walk_list(
        &mut self,
        head: u64,
        node: Option<(u64, usize)>,
        max: usize,
        ahead: bool,
    ) -> Result<ListWalk, ModelError> {
        let mut walk = ListWalk::default();
        let first = self.mem.u64(head)?;
        let mut prev = head;
        let mut cur = first;
        let mut seen = HashSet::new();
        let max = max.min(MAX_LIST);
        while cur != head {
            if walk.entries.len() >= max {
                walk.note = Some(format!(
                    "stopped after {} entries (limit)",
                    walk.entries.len()
                ));
                break;
            }
            if cur == 0 || cur % 8 != 0 || !crate::mem::canonical(cur, self.mem.paging_levels()) {
                walk.note = Some(format!(
                    "list broken after {prev:#x}: next pointer {cur:#x} is not a valid address"
                ));
                break;
            }
            if !seen.insert(cur) {
                walk.note = Some(format!("list loops back to {cur:#x}"));
                break;
            }
            let (start, len) = match node {
                Some((off, size)) => (cur.wrapping_sub(off), size.max(off as usize + 16)),
                None => (cur, 16),
            };
            let bytes = match if ahead {
                self.mem.kread_ahead(start, len)
            } else {
                self.mem.kread(start, len)
            } {
                Ok(b) => b,
                Err(e) => {
                    walk.note = Some(format!("entry {cur:#x} is unreadable: {e}"));
                    break;
                }
            };
            let lo = (cur - start) as usize;
            let flink = u64::from_le_bytes(bytes[lo..lo + 8].try_into().unwrap_or([0; 8]));
            let blink = u64::from_le_bytes(bytes[lo + 8..lo + 16].try_into().unwrap_or([0; 8]));
            if blink != prev {
                walk.note = Some(format!(
                    "list corrupted at {cur:#x}: its Blink is {blink:#x}, expected {prev:#x}"
                ));
                break;
            }
            walk.entries.push(cur);
            if node.is_some() {
                walk.nodes.push(bytes);
            }
            prev = cur;
            cur = flink;
        }
        Ok(walk)
    }

    /// Reads a UNICODE_STRING at `at` (bounded to 1024 characters).
    pub fn unicode_string(&mut self, at: u64) -> Result<String, ModelError> {
        let b = self.mem.kread(at, 16)?;
        let len = usize::from(Le(&b).u16(0)).min(2048);
        let buf = Le(&b).u64(8);
        if len == 0 || buf == 0 {
            return Ok(String::new());
        }
        // Names usually sit right after their structure: read on to the page end.
        let raw = self.mem.kread_ahead(buf, len & !1)?;
        Ok(kdnet_arch::le::utf16(&raw))
    }

    // ---- modules ----

    /// Drops what was derived from memory once the target has run since.
    fn sync(&mut self) {
        let e = self.mem.epoch();
        if e != self.epoch {
            self.epoch = e;
            if let Some(m) = self.modules.take() {
                self.earlier = m;
            }
            self.modules_partial = None;
            self.modules_error = None;
            self.kdbg = None;
        }
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
    fn load_modules(&mut self) -> Result<(Vec<Module>, Option<String>), ModelError> {
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
        // Loader entry fields are at the same offsets on every x64 build (extensions.md §1.4).
        let (dll_base, size_of_image, full, short, node) = match &self.nt {
            Some(t) => {
                let ty = if t.has_type("_KLDR_DATA_TABLE_ENTRY") {
                    "_KLDR_DATA_TABLE_ENTRY"
                } else {
                    "_LDR_DATA_TABLE_ENTRY"
                };
                (
                    t.offset(ty, "DllBase").unwrap_or(0x30),
                    t.offset(ty, "SizeOfImage").unwrap_or(0x40),
                    t.offset(ty, "FullDllName").unwrap_or(0x48),
                    t.offset(ty, "BaseDllName").unwrap_or(0x58),
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

    // ---- the debugger data block ----

    /// KDDEBUGGER_DATA64, located (debugger data list, dump header or symbol) and decoded.
    pub fn kdbg(&mut self) -> Result<Kdbg, ModelError> {
        self.sync();
        if let Some(k) = &self.kdbg {
            return Ok(k.clone());
        }
        let info = self.mem.info().clone();
        let address = if let Some(list) = info.debugger_data_list {
            self.mem.u64(list)?
        } else if let Some(a) = info.kd_debugger_data_block {
            a
        } else {
            self.sym("KdDebuggerDataBlock")?
        };
        let header = self.mem.kread(address, 0x18)?;
        let tag = u32::from_le_bytes(header[0x10..0x14].try_into().unwrap_or([0; 4]));
        let (was_encoded, size) = if tag == builtin::KDBG_TAG {
            (
                false,
                u32::from_le_bytes(header[0x14..0x18].try_into().unwrap_or([0; 4])),
            )
        } else {
            let (never, always, flag) = (
                self.mem.u64(self.sym("KiWaitNever")?)?,
                self.mem.u64(self.sym("KiWaitAlways")?)?,
                self.sym("KdpDataBlockEncoded")?,
            );
            let w = u64::from_le_bytes(header[0x10..0x18].try_into().unwrap_or([0; 8]));
            let p = decode_word(w, never, always, flag);
            if p as u32 != builtin::KDBG_TAG {
                return Err(ModelError::Corrupt(format!(
                    "the debugger data block at {address:#x} does not decode (tag {:#x})",
                    p as u32
                )));
            }
            (true, (p >> 32) as u32)
        };
        if !(0x80..0x1000).contains(&size) {
            return Err(ModelError::Corrupt(format!(
                "the debugger data block claims {size} bytes"
            )));
        }
        let raw = self.mem.kread(address, size as usize)?;
        let bytes = if was_encoded {
            let never = self.mem.u64(self.sym("KiWaitNever")?)?;
            let always = self.mem.u64(self.sym("KiWaitAlways")?)?;
            let flag = self.sym("KdpDataBlockEncoded")?;
            raw.chunks_exact(8)
                .flat_map(|c| {
                    decode_word(
                        u64::from_le_bytes(c.try_into().unwrap_or([0; 8])),
                        never,
                        always,
                        flag,
                    )
                    .to_le_bytes()
                })
                .collect()
        } else {
            raw
        };
        let k = Kdbg {
            address,
            was_encoded,
            bytes,
        };
        self.kdbg = Some(k.clone());
        Ok(k)
    }

    /// The header of a dump of this kernel: what a reader needs to find its way in the pages.
    pub fn dump_header(&mut self, comment: &str) -> Result<crate::dump::DumpHeader, ModelError> {
        let space = self.mem.kernel_space()?;
        let modules = match self.mem.info().ps_loaded_module_list {
            Some(h) => h,
            None => self.sym("PsLoadedModuleList")?,
        };
        let processes = match self.mem.info().ps_active_process_head {
            Some(h) => h,
            None => self.sym("PsActiveProcessHead")?,
        };
        // A header written from a read that failed just now would be wrong for good.
        let transient = |e: &ModelError| matches!(e, ModelError::Target(t) if t.is_transient());
        let kdbg = match self.kdbg() {
            Ok(k) => k.address,
            Err(e) if transient(&e) => return Err(e),
            Err(_) => 0,
        };
        let processors = match self.processors() {
            Ok(p) => p.len() as u32,
            Err(e) if transient(&e) => return Err(e),
            Err(_) => self.mem.info().processors,
        };
        let context = self.processor_context(0)?.as_bytes().to_vec();
        // Every processor's saved state, so that the dump answers for each of them.
        if let Ok(cpus) = self.processors() {
            for c in cpus {
                let _ = self.saved_context(c.prcb);
            }
        }
        Ok(crate::dump::DumpHeader {
            build: self.build,
            directory_table_base: space.dtb,
            ps_loaded_module_list: modules,
            ps_active_process_head: processes,
            kd_debugger_data_block: kdbg,
            processors,
            bugcheck: self.bugcheck()?.unwrap_or((0, [0; 4])),
            context,
            comment: comment.to_string(),
        })
    }

    /// Bugcheck code and parameters: the target's record (dumps) or KiBugCheckData.
    pub fn bugcheck(&mut self) -> Result<Option<(u32, [u64; 4])>, ModelError> {
        if let Some(b) = self.mem.info().bugcheck {
            return Ok((b.0 != 0).then_some(b));
        }
        let at = match self.sym("KiBugCheckData") {
            Ok(a) => a,
            Err(_) => match self.kdbg().ok().and_then(|k| k.field("KiBugcheckData")) {
                Some(a) => a,
                None => return Err(ModelError::NoKernelSymbols(self.nt_source.clone())),
            },
        };
        let b = self.mem.kread(at, 40)?;
        let q = |i: usize| u64::from_le_bytes(b[8 * i..8 * i + 8].try_into().unwrap_or([0; 8]));
        let code = q(0) as u32;
        Ok((code != 0).then_some((code, [q(1), q(2), q(3), q(4)])))
    }
}

/// `p = KiWaitAlways ^ bswap(A ^ rotl(c ^ KiWaitNever, KiWaitNever mod 64))`.
pub fn decode_word(c: u64, never: u64, always: u64, flag_address: u64) -> u64 {
    always ^ (flag_address ^ (c ^ never).rotate_left((never & 63) as u32)).swap_bytes()
}
