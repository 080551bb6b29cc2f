//! The kernel model: version and base, the debugger data block, loaded modules and their
//! symbols, processes, threads, processors, wait analysis, stacks and bugcheck data — the same
//! code for live sessions and dumps, with every offset from the symbol table.

mod access;
pub mod fltmgr;
pub mod idt;
pub mod io;
mod kdbg;
pub mod locks;
mod modules;
pub mod ndis;
pub mod objects;
pub mod physical;
pub mod pool;
pub mod procs;
pub mod pte;
pub mod records;
pub mod sched;
mod symbols;
pub mod threads;
pub mod timers;
pub mod unwind;
pub mod verifier;
pub mod view;
pub mod vm;
pub mod waitgraph;
pub mod workers;

pub use access::ListWalk;
pub use kdbg::{Kdbg, decode_word};
pub use modules::{Module, ModuleSymbols, short_name};
use symbols::MemImage;

use std::collections::HashMap;
use std::sync::Arc;

use kdnet_symbols::path::SymbolPath;
use kdnet_symbols::{SymError, TypeTable};

use crate::mem::Memory;
use crate::pe::{self, ImageReader};
use crate::target::{Target, TargetError};
use view::ViewError;

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

impl ModelError {
    /// Whether the kernel's table lacks a type, member, symbol or constant the reader needs:
    /// a fact about the table, not about one object, so whatever hit it stops and says so
    /// rather than going on object by object.
    pub fn is_layout(&self) -> bool {
        matches!(
            self,
            ModelError::Symbols(_) | ModelError::View(ViewError::Symbols(_))
        )
    }
}

/// Largest list walked.
pub const MAX_LIST: usize = 1 << 22;

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
    /// The target's module generation when `modules` was read (see
    /// [`Target::module_generation`]): while it holds, the list is kept across runs.
    modules_generation: Option<u64>,
    /// Processors' registers read while the target stays stopped.
    contexts: HashMap<u32, kdnet_arch::Context>,
    /// The memory epoch `contexts` belong to.
    contexts_epoch: u64,
}

/// What [`Kernel::reload`] with `force` did.
#[derive(Debug, Clone, Default)]
pub struct Reloaded {
    /// Modules whose symbols (a table or the exports) were loaded now.
    pub loaded: Vec<String>,
    /// Modules without symbols, each with why.
    pub missing: Vec<(String, String)>,
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
            modules_generation: None,
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

    /// Reads the module list and symbols again, as `.reload` does: the loader's list is walked
    /// anew and every module's symbols are looked for again along the (possibly new) symbol
    /// path; the kernel's own table too unless `only` names another module. With `force`, the
    /// symbols of every module (or of `only`) are loaded now instead of when first needed.
    /// Says, with `force`, which modules' symbols were loaded now and for which none could be
    /// found.
    pub fn reload(&mut self, only: Option<&str>, force: bool) -> Result<Reloaded, ModelError> {
        let is = |m: &Module, name: &str| {
            m.short.eq_ignore_ascii_case(name)
                || m.name.eq_ignore_ascii_case(name)
                || m.name
                    .rsplit_once('.')
                    .is_some_and(|(stem, _)| stem.eq_ignore_ascii_case(name))
        };
        let nt_too = match only {
            None => true,
            Some(name) => self.modules()?.first().is_some_and(|nt| is(nt, name)),
        };
        if nt_too {
            self.nt = None;
            self.load_nt_symbols();
        }
        // Forget the walked list, and the symbols kept from earlier stops (all of them, or the
        // one module's).
        self.modules = None;
        match only {
            None => self.earlier.clear(),
            Some(name) => self.earlier.retain(|m| !is(m, name)),
        }
        self.image_cache.clear();
        let mods = self.modules()?.to_vec();
        if let Some(name) = only
            && !mods.iter().any(|m| is(m, name))
        {
            return Err(ModelError::Corrupt(format!(
                "no loaded module is named {name}"
            )));
        }
        let (mut loaded, mut missing) = (Vec::new(), Vec::new());
        if force {
            for (i, m) in mods.iter().enumerate() {
                if only.is_none_or(|name| is(m, name)) {
                    match self.module_symbols(i).as_deref() {
                        Some(ModuleSymbols::Table { .. } | ModuleSymbols::Exports(_)) => {
                            loaded.push(m.short.clone());
                        }
                        Some(ModuleSymbols::None(why)) => {
                            missing.push((m.short.clone(), why.clone()));
                        }
                        None => missing.push((m.short.clone(), "not loaded".into())),
                    }
                }
            }
        }
        Ok(Reloaded { loaded, missing })
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

    /// Whether the kernel keeps its pool in the segment heap, told by the table: pool
    /// descriptors with free-list heads mean the classic pool (a 17763 kernel has the segment
    /// heap's types and `ExPoolState` too, but not for its pool), their absence with
    /// `ExPoolState` the segment heap.
    pub fn pool_is_segment_heap(&self) -> bool {
        self.nt.as_ref().is_some_and(|t| {
            !t.has_field("_POOL_DESCRIPTOR", "ListHeads") && t.symbol("ExPoolState").is_some()
        })
    }
}
