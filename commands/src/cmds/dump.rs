//! `.dump /f FILE`, `.dump /k FILE`, `.dump /ka FILE`: a kernel target's memory written as a
//! Windows crash dump, as WinDbg's `.dump` does in kernel mode.
//!
//! - `/f`, a complete memory dump: every page of the RAM the kernel describes
//!   (`nt!MmPhysicalMemoryBlock`), as a full dump (DumpType 1, the runs in the header) when its
//!   runs fit the header, else as a bitmap dump (DumpType 5).
//! - `/k`, a kernel memory dump: the RAM mapped in the kernel half of the address space and the
//!   page tables that map it, walked from the kernel's page-table root (a bitmap dump).
//! - `/ka`: that and the current process's user pages with their page tables.
//!
//! Pages are read past the cache in requests as large as the protocol allows and streamed to
//! `FILE.partial` in frame order, so memory use stays bounded whatever the size; `FILE` appears
//! (mode 0600, by a rename) only once the dump is whole. What has been written is recorded in
//! `FILE.partial.state`, so that when the link fails the same `.dump` goes on where it stopped
//! on the same machine (its kernel base, build, page-table root, processors and memory runs
//! must be the ones recorded) and says so, in its result and in the dump's comment: the target
//! may have run between the parts, and the dump then holds pages from two moments. A page the
//! target cannot read is left out of the dump (never written as zeros) and named, as Windows
//! leaves out of its own dumps the pages it cannot read; device memory mapped in the kernel's
//! half is left out of `/k` and `/ka` as Windows leaves it out.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kdnet_model::dump::{DumpWriter, PagePlan, WriteKind};
use kdnet_model::mem::{Piece, Space};
use kdnet_model::nt::ModelError;
use kdnet_model::nt::physical::{FrameSet, PhysicalMemory};
use kdnet_model::target::TargetError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::args::{Args, Syntax};
use crate::engine::{CmdError, Engine, Progress};
use crate::registry::Render;

/// `.dump [/f|/k|/ka] [/o] [/c COMMENT] FILE`.
pub(crate) const SYNTAX: Syntax = crate::cmds::session::REST;

/// Pages written between two records of the state (16 MiB: a few seconds of KDNET).
const CHECKPOINT: u64 = 1 << 12;
/// The state file's version.
const STATE_VERSION: u32 = 1;
/// Frames named in a result (the rest are counted).
const NAMED: usize = 16;
const PAGE: u64 = 0x1000;

/// What is dumped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// `/f`.
    Complete,
    /// `/k`.
    Kernel,
    /// `/ka`.
    KernelAndUser,
}

impl Scope {
    fn option(self) -> &'static str {
        match self {
            Scope::Complete => "/f",
            Scope::Kernel => "/k",
            Scope::KernelAndUser => "/ka",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Scope::Complete => "complete memory dump",
            Scope::Kernel => "kernel memory dump",
            Scope::KernelAndUser => "kernel memory dump with the current process's user pages",
        }
    }
}

/// The command line, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Options {
    scope: Scope,
    overwrite: bool,
    comment: Option<String>,
    file: String,
}

/// Splits on white space, keeping a quoted string whole (without its quotes).
fn words(text: &str) -> Result<Vec<String>, CmdError> {
    let mut out = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        if let Some(inner) = rest.strip_prefix('"') {
            let end = inner
                .find('"')
                .ok_or_else(|| CmdError::Usage(".dump: a quoted string is not closed".into()))?;
            out.push(inner[..end].to_string());
            rest = inner[end + 1..].trim_start();
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            out.push(rest[..end].to_string());
            rest = rest[end..].trim_start();
        }
    }
    Ok(out)
}

const USAGE: &str = "usage: .dump /f|/k|/ka [/o] [/c COMMENT] FILE";

/// The options (`/f`, `/k`, `/ka`, `/o`, `/c COMMENT`), then the file: the last word is
/// always the file (so `/tmp/x.dmp` is a file, not an option).
fn parse(text: &str) -> Result<Options, CmdError> {
    let w = words(text)?;
    let Some((file, opts)) = w.split_last() else {
        return Err(CmdError::Usage(format!(
            ".dump: a file name is needed; {USAGE}"
        )));
    };
    if matches!(
        file.as_str(),
        "/f" | "/k" | "/ka" | "/o" | "/c" | "-f" | "-k" | "-ka" | "-o" | "-c"
    ) {
        return Err(CmdError::Usage(format!(
            ".dump: a file name is needed after the options; {USAGE}"
        )));
    }
    let mut scope = None;
    let mut overwrite = false;
    let mut comment = None;
    let mut i = 0;
    while i < opts.len() {
        let o = opts[i].as_str();
        let set = |s: Scope, scope: &mut Option<Scope>| match scope.replace(s) {
            Some(other) if other != s => Err(CmdError::Usage(format!(
                ".dump: {} and {} ask for two kinds of dump; give one",
                other.option(),
                s.option()
            ))),
            _ => Ok(()),
        };
        match o {
            "/f" | "-f" => set(Scope::Complete, &mut scope)?,
            "/k" | "-k" => set(Scope::Kernel, &mut scope)?,
            "/ka" | "-ka" => set(Scope::KernelAndUser, &mut scope)?,
            "/o" | "-o" => overwrite = true,
            "/c" | "-c" => {
                i += 1;
                let c = opts.get(i).ok_or_else(|| {
                    CmdError::Usage(format!(
                        ".dump: /c needs a comment before the file; {USAGE}"
                    ))
                })?;
                comment = Some(c.clone());
            }
            o if o.starts_with("/m") || o.starts_with("-m") => {
                return Err(CmdError::Usage(format!(
                    ".dump {o}: small memory dumps are not written here; /f (complete), /k \
                     (kernel) or /ka (kernel and the current process's user pages)"
                )));
            }
            o if o.starts_with("/f") || o.starts_with("-f") => {
                return Err(CmdError::Usage(format!(
                    ".dump {o}: /f takes no options here (the AVX registers of /fy are not \
                     written); {USAGE}"
                )));
            }
            o if (o.starts_with('/') || o.starts_with('-'))
                && !o[1..].contains(['/', '\\', '.']) =>
            {
                return Err(CmdError::Usage(format!(
                    ".dump: unknown option {o} (/f, /k, /ka, /o, /c COMMENT); {USAGE}"
                )));
            }
            o => {
                return Err(CmdError::Usage(format!(
                    ".dump: unexpected {o:?} before the file name {file:?} (a name with spaces \
                     needs quotes); {USAGE}"
                )));
            }
        }
        i += 1;
    }
    let scope = scope.ok_or_else(|| {
        CmdError::Usage(format!(
            ".dump: give /f (complete), /k (kernel) or /ka (kernel and the current process's \
             user pages): WinDbg's default, a small memory dump (/m), is not written here; \
             {USAGE}"
        ))
    })?;
    Ok(Options {
        scope,
        overwrite,
        comment,
        file: file.clone(),
    })
}

/// A machine, as far as a dump begun on it is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Machine {
    build: u32,
    kernel_base: u64,
    directory_table_base: u64,
    processors: u32,
    runs: Vec<(u64, u64)>,
}

impl Machine {
    /// How `self` (here) differs from `was` (recorded).
    fn differences(&self, was: &Machine) -> Vec<String> {
        let mut d = Vec::new();
        if self.build != was.build {
            d.push(format!("build {} here, {} there", self.build, was.build));
        }
        if self.kernel_base != was.kernel_base {
            d.push(format!(
                "kernel base {:#x} here, {:#x} there",
                self.kernel_base, was.kernel_base
            ));
        }
        if self.directory_table_base != was.directory_table_base {
            d.push(format!(
                "page-table root {:#x} here, {:#x} there",
                self.directory_table_base, was.directory_table_base
            ));
        }
        if self.processors != was.processors {
            d.push(format!(
                "{} processors here, {} there",
                self.processors, was.processors
            ));
        }
        if self.runs != was.runs {
            let pages = |r: &[(u64, u64)]| r.iter().map(|x| x.1).sum::<u64>();
            d.push(format!(
                "{} memory runs of {:#x} pages here, {} of {:#x} there",
                self.runs.len(),
                pages(&self.runs),
                was.runs.len(),
                pages(&was.runs)
            ));
        }
        d
    }
}

/// What `FILE.partial.state` records of a dump being written.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    version: u32,
    option: String,
    machine: Machine,
    /// `/ka`: the process whose user pages it holds (EPROCESS).
    process: Option<u64>,
    /// Pages planned.
    pages: u64,
    /// Pages written (durable in FILE.partial).
    written: u64,
    /// Frames the target could not read, in order.
    left_out: Vec<u64>,
    /// The target's interrupt time when the first part began (100 ns units).
    interrupt_time: Option<u64>,
    /// Runs of .dump so far (this one included once it begins).
    parts: u32,
    /// Round trips of the earlier parts.
    round_trips: u64,
    /// `/k`, `/ka`: mapped frames that are not RAM.
    not_ram: u64,
    /// Page tables the target could not read when the pages were gathered.
    unreadable_tables: Vec<String>,
    /// The comment asked for.
    comment: Option<String>,
}

/// A dump written.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Dumped {
    /// The file, as given (a relative name is relative to the debugger's current directory).
    pub file: String,
    /// The option: `/f`, `/k` or `/ka`.
    pub option: String,
    /// What it holds: `complete memory dump`, `kernel memory dump`, or `kernel memory dump with
    /// the current process's user pages`.
    pub kind: String,
    /// Its DumpType: 1 (a full dump: the physical memory runs in its header) or 5 (a page
    /// bitmap).
    pub dump_type: u32,
    /// Pages in it.
    pub pages: u64,
    /// Pages it was to hold: those in it and those left out.
    pub planned: u64,
    /// Its size in bytes.
    pub bytes: u64,
    /// Runs of consecutive physical pages in it.
    pub runs: u64,
    /// The physical memory runs the kernel describes (`nt!MmPhysicalMemoryBlock`).
    pub memory_runs: u64,
    /// The pages in those runs.
    pub memory_pages: u64,
    /// Pages the target answered it could not read: left out of the dump (never written as
    /// zeros), as Windows leaves out of its own dumps the pages it cannot read.
    pub left_out: u64,
    /// The physical addresses of the first of those pages.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Vec<crate::hex::Hex>")]
    pub left_out_pages: Vec<u64>,
    /// `/k`, `/ka`: mapped pages that are not RAM (device memory), left out as Windows leaves
    /// them out.
    pub not_ram: u64,
    /// `/ka`: the process whose user pages it holds (EPROCESS).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub process: Option<u64>,
    /// Whether this run went on with a dump an earlier one began (`FILE.partial`).
    pub resumed: bool,
    /// Pages done (written, or found unreadable) when this run began.
    pub resumed_at: u64,
    /// For a resumed dump, whether the target ran between the parts (its interrupt time
    /// moved): then the dump holds pages from two moments. Null when not resumed, or when it
    /// could not be told (then it may have).
    pub target_ran: Option<bool>,
    /// Runs of `.dump` that wrote it (1 unless resumed).
    pub parts: u32,
    /// Pages this run read.
    pub pages_read: u64,
    /// Requests this run made to the target (page tables and the kernel's records included).
    pub round_trips: u64,
    /// Requests all the parts made.
    pub round_trips_all_parts: u64,
    /// The comment in its header.
    pub comment: String,
}

impl Render for Dumped {
    fn render(&self, out: &mut String) {
        out.push_str(&format!("Creating {} - {}\n", self.file, self.kind));
        if self.resumed {
            out.push_str(&format!(
                "Resumed {}.partial at page {} of {} (part {}): {}\n",
                self.file,
                self.resumed_at,
                self.planned,
                self.parts,
                match self.target_ran {
                    Some(false) => "the target has not run since the first part: one snapshot",
                    Some(true) => {
                        "the target ran between the parts: the dump holds pages from two moments"
                    }
                    None => {
                        "the target may have run between the parts: the dump may hold pages from \
                         two moments"
                    }
                }
            ));
        }
        let layout = if self.dump_type == 1 {
            format!("full dump, {} runs in the header", self.runs)
        } else {
            format!("bitmap dump, {} runs", self.runs)
        };
        out.push_str(&format!(
            "{} of {} pages of RAM in {} runs; {}\n",
            self.pages, self.memory_pages, self.memory_runs, layout
        ));
        if self.left_out > 0 {
            let shown: Vec<String> = self
                .left_out_pages
                .iter()
                .map(|a| format!("{a:x}"))
                .collect();
            out.push_str(&format!(
                "{} pages could not be read and are left out: {}{}\n",
                self.left_out,
                shown.join(" "),
                if self.left_out > shown.len() as u64 {
                    " …"
                } else {
                    ""
                }
            ));
        }
        if self.not_ram > 0 {
            out.push_str(&format!(
                "{} mapped pages of device memory left out\n",
                self.not_ram
            ));
        }
        if self.pages_read > 0 {
            out.push_str(&format!(
                "Read {} pages in {} round trips ({:.0} bytes each)\n",
                self.pages_read,
                self.round_trips,
                (self.pages_read * PAGE) as f64 / self.round_trips.max(1) as f64
            ));
        }
        out.push_str(&format!(
            "Dump successfully written: {:x} bytes\n",
            self.bytes
        ));
    }
}

/// `FILE.partial` and `FILE.partial.state`.
fn partial_paths(path: &Path) -> (PathBuf, PathBuf) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (
        path.with_file_name(format!("{name}.partial")),
        path.with_file_name(format!("{name}.partial.state")),
    )
}

fn save_state(path: &Path, s: &State) -> Result<(), CmdError> {
    let fail = |e: String| {
        CmdError::Failed(format!(
            "cannot record the dump's progress in {}: {e}",
            path.display()
        ))
    };
    let text = serde_json::to_string(s).map_err(|e| fail(e.to_string()))?;
    let tmp = path.with_extension("state.tmp");
    let write = || -> std::io::Result<()> {
        use std::io::Write as _;
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        let mut f = o.open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| fail(e.to_string()))
}

/// The process the current processor runs (or is attached to): (EPROCESS, its page-table
/// root).
fn current_process(e: &mut Engine) -> Result<(u64, u64), CmdError> {
    let n = e.processor;
    let cpu = e
        .kernel
        .processors()?
        .into_iter()
        .find(|c| c.number == n)
        .ok_or_else(|| CmdError::Failed(format!("processor {n} is not in the processor block")))?;
    let t = e.kernel.thread(cpu.current)?;
    let ep = t.attached_process.unwrap_or(t.process);
    let p = e.kernel.process(ep)?;
    Ok((ep, p.dtb))
}

/// The pages of a `/k` or `/ka` dump.
fn gather(
    e: &mut Engine,
    ram: &PhysicalMemory,
    kernel: Space,
    user: Option<Space>,
) -> Result<FrameSet, CmdError> {
    let five = e.kernel.mem.paging_levels() == 5;
    let half = if five {
        0xff00_0000_0000_0000
    } else {
        0xffff_8000_0000_0000
    };
    let mut set = FrameSet::new(ram.clone());
    e.kernel.gather_frames(kernel, half, u64::MAX, &mut set)?;
    if let Some(u) = user {
        let top = if five {
            0x00ff_ffff_ffff_ffff
        } else {
            0x0000_7fff_ffff_ffff
        };
        e.kernel.gather_frames(u, 0, top, &mut set)?;
    }
    Ok(set)
}

pub(crate) fn run(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<Dumped, CmdError> {
    let o = parse(a.text("ARGS").unwrap_or(""))?;
    if e.kernel.mem.virtual_only() {
        return Err(CmdError::Failed(
            "this target holds no physical memory (a triage dump): there is nothing to write a \
             memory dump from"
                .into(),
        ));
    }
    let path = PathBuf::from(&o.file);
    if path.file_name().is_none() {
        return Err(CmdError::Usage(format!("{} names no file", o.file)));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(CmdError::Failed(format!(
            "{} is not a directory; nothing was written",
            dir.display()
        )));
    }
    if path.is_dir() {
        return Err(CmdError::Failed(format!(
            "{} is a directory; nothing was written",
            o.file
        )));
    }
    if path.exists() && !o.overwrite {
        return Err(CmdError::Failed(format!(
            "{} exists; /o overwrites it (nothing was written)",
            o.file
        )));
    }
    let (partial, state_path) = partial_paths(&path);
    let started = Instant::now();
    let before = e.kernel.mem.stats();
    // The machine as it is now.
    let kernel = e.kernel.mem.kernel_space()?;
    let ram = e.kernel.physical_memory()?;
    // (A read that failed just now must not make this machine look like another.)
    let processors = match e.kernel.processors() {
        Ok(p) => p.len() as u32,
        Err(ModelError::Target(t)) if t.is_transient() => return Err(t.into()),
        Err(_) => e.kernel.mem.info().processors,
    };
    let here = Machine {
        build: e.kernel.build,
        kernel_base: e.kernel.base,
        directory_table_base: kernel.dtb,
        processors,
        runs: ram.runs.clone(),
    };
    let interrupt_now = e.kernel.clocks().ok().map(|c| c.1);
    let earlier = if partial.is_file() && state_path.is_file() {
        let text = std::fs::read_to_string(&state_path).map_err(|err| {
            CmdError::Failed(format!("cannot read {}: {err}", state_path.display()))
        })?;
        let s: State = serde_json::from_str(&text)
            .ok()
            .filter(|s: &State| s.version == STATE_VERSION)
            .ok_or_else(|| {
                CmdError::Failed(format!(
                    "{} is not a record this version of kdnet keeps; delete it and {} to \
                     begin again",
                    state_path.display(),
                    partial.display()
                ))
            })?;
        Some(s)
    } else {
        None
    };
    let (mut writer, mut state, resumed_at, target_ran) = match earlier {
        Some(mut s) => {
            if s.option != o.scope.option() {
                return Err(CmdError::Failed(format!(
                    "{} is a .dump {} begun earlier; run .dump {} {} to finish it, or delete \
                     it and {} to begin a .dump {}",
                    partial.display(),
                    s.option,
                    s.option,
                    o.file,
                    state_path.display(),
                    o.scope.option()
                )));
            }
            let diff = here.differences(&s.machine);
            if !diff.is_empty() {
                return Err(CmdError::Failed(format!(
                    "{} was begun on another machine, or another boot of it ({}); it is not \
                     resumed: delete it and {} to begin again, or give another file",
                    partial.display(),
                    diff.join("; "),
                    state_path.display()
                )));
            }
            let ran = match (s.interrupt_time, interrupt_now) {
                (Some(was), Some(now)) if now < was => {
                    return Err(CmdError::Failed(format!(
                        "{} was begun on an earlier boot of this machine (its clock is behind \
                         the one recorded); delete it and {} to begin again",
                        partial.display(),
                        state_path.display()
                    )));
                }
                (Some(was), Some(now)) => Some(now != was),
                _ => None,
            };
            let w = DumpWriter::reopen(&partial, s.written).map_err(failed)?;
            if w.plan().pages() != s.pages {
                return Err(CmdError::Failed(format!(
                    "{} plans {} pages, its record {}; delete both to begin again",
                    partial.display(),
                    w.plan().pages(),
                    s.pages
                )));
            }
            let at = s.written + s.left_out.len() as u64;
            s.parts += 1;
            (w, s, Some(at), ran)
        }
        None => {
            let (plan, kind, process, not_ram, unreadable) = match o.scope {
                Scope::Complete => {
                    let plan = PagePlan::from_runs(&ram.runs).map_err(CmdError::Failed)?;
                    let kind = if plan.fits_full() {
                        WriteKind::Full
                    } else {
                        WriteKind::Bitmap
                    };
                    (plan, kind, None, 0, Vec::new())
                }
                Scope::Kernel | Scope::KernelAndUser => {
                    let user = if o.scope == Scope::KernelAndUser {
                        Some(current_process(e)?)
                    } else {
                        None
                    };
                    let set = gather(e, &ram, kernel, user.map(|(_, dtb)| Space { dtb }))?;
                    let unreadable: Vec<String> = set
                        .unreadable_tables
                        .iter()
                        .map(|(pfn, va, why)| {
                            format!("the page table at {:#x} (for {va:#x}): {why}", pfn * PAGE)
                        })
                        .collect();
                    (
                        PagePlan::from_bitmap(set.words()),
                        WriteKind::Bitmap,
                        user.map(|u| u.0),
                        set.not_ram,
                        unreadable,
                    )
                }
            };
            if plan.pages() == 0 {
                return Err(CmdError::Failed(
                    "no page to dump: the walk found no RAM mapped".into(),
                ));
            }
            let mut header = e
                .kernel
                .dump_header(&default_comment(o.scope, &o.comment))?;
            if let Ok((system, interrupt, _)) = e.kernel.clocks() {
                header.system_time = system;
                header.up_time = interrupt;
            }
            let state = State {
                version: STATE_VERSION,
                option: o.scope.option().into(),
                machine: here.clone(),
                process,
                pages: plan.pages(),
                written: 0,
                left_out: Vec::new(),
                interrupt_time: interrupt_now,
                parts: 1,
                round_trips: 0,
                not_ram,
                unreadable_tables: unreadable,
                comment: o.comment.clone(),
            };
            let w = DumpWriter::create(&partial, &header, kind, plan).map_err(failed)?;
            save_state(&state_path, &state)?;
            (w, state, None, None)
        }
    };
    // The pages, in the plan's order, from where the dump stands.
    let total = state.pages;
    let start = state.written + state.left_out.len() as u64;
    let mut done = start;
    let mut since_checkpoint = 0u64;
    let mut pages_read = 0u64;
    let mut stop: Option<CmdError> = None;
    let runs: Vec<(u64, u64)> = writer.plan().runs().to_vec();
    let first_run = writer.plan().locate(start);
    let sink = &mut e.progress;
    let mem = &mut e.kernel.mem;
    if let Some((i, pfn)) = first_run {
        for (j, &(base, count)) in runs.iter().enumerate().skip(i) {
            let from = if j == i { pfn } else { base };
            let len = (base + count - from) * PAGE;
            mem.read_physical_range(from * PAGE, len, |at, piece| {
                let r = match piece {
                    Piece::Read(b) => {
                        let n = b.len() as u64 / PAGE;
                        writer.write_pages(b).map_err(failed).map(|()| {
                            pages_read += n;
                            done += n;
                            since_checkpoint += n;
                        })
                    }
                    Piece::Unreadable { len, error } if !error.is_transient() => {
                        for p in 0..len.div_ceil(PAGE) {
                            state.left_out.push(at / PAGE + p);
                        }
                        done += len.div_ceil(PAGE);
                        Ok(())
                    }
                    Piece::Unreadable { error, .. } => {
                        Err(stopped(&error, at, done, total, &partial))
                    }
                };
                // Durable before it is recorded: at each checkpoint, and where it stops.
                let r = match r {
                    Ok(()) if since_checkpoint >= CHECKPOINT => {
                        since_checkpoint = 0;
                        record(&mut writer, &mut state, &state_path)
                    }
                    Err(err) => Err(match record(&mut writer, &mut state, &state_path) {
                        Ok(()) => err,
                        Err(not_recorded) => CmdError::Failed(format!("{err}; but {not_recorded}")),
                    }),
                    ok => ok,
                };
                if let Some(sink) = sink.as_mut() {
                    sink(".dump", &progress(started, done, total, pages_read, false));
                }
                match r {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(err) => {
                        stop = Some(err);
                        ControlFlow::Break(())
                    }
                }
            });
            if stop.is_some() {
                break;
            }
        }
    }
    e.report_progress(".dump", &progress(started, done, total, pages_read, true));
    let cost = e.kernel.mem.stats().since(&before).transport.round_trips;
    if let Some(err) = stop {
        state.round_trips += cost;
        let _ = save_state(&state_path, &state);
        return Err(err);
    }
    let comment = final_comment(o.scope, &state, resumed_at, target_ran);
    let finished = writer
        .finish(&path, &state.left_out, Some(&comment))
        .map_err(failed)?;
    let _ = std::fs::remove_file(&state_path);
    // What the result must say of itself.
    let left_out = state.left_out.len() as u64;
    if left_out > 0 {
        e.kernel.note_incomplete(format!(
            "{left_out} pages could not be read and are not in the dump (from physical {:#x})",
            state.left_out[0] * PAGE
        ));
    }
    for t in &state.unreadable_tables {
        e.kernel
            .note_incomplete(format!("{t}: what it maps is not in the dump"));
    }
    if resumed_at.is_some() && target_ran != Some(false) {
        e.kernel.note_incomplete(format!(
            "the dump joins pages read at two stops: the target {} between the parts",
            if target_ran == Some(true) {
                "ran"
            } else {
                "may have run"
            }
        ));
    }
    Ok(Dumped {
        file: o.file.clone(),
        option: o.scope.option().into(),
        kind: o.scope.name().into(),
        dump_type: finished.kind.dump_type(),
        pages: finished.pages,
        planned: state.pages,
        bytes: finished.bytes,
        runs: finished.runs as u64,
        memory_runs: ram.runs.len() as u64,
        memory_pages: ram.pages,
        left_out,
        left_out_pages: state
            .left_out
            .iter()
            .take(NAMED)
            .map(|p| p * PAGE)
            .collect(),
        not_ram: state.not_ram,
        process: state.process,
        resumed: resumed_at.is_some(),
        resumed_at: resumed_at.unwrap_or(0),
        target_ran,
        parts: state.parts,
        pages_read,
        round_trips: cost,
        round_trips_all_parts: state.round_trips + cost,
        comment,
    })
}

fn failed(e: kdnet_model::dump::DumpError) -> CmdError {
    CmdError::Failed(e.to_string())
}

/// Makes what was written durable, then records it.
fn record(writer: &mut DumpWriter, state: &mut State, path: &Path) -> Result<(), CmdError> {
    writer.sync().map_err(failed)?;
    state.written = writer.written();
    save_state(path, state)
}

/// The error of a dump stopped by a failure of the moment.
fn stopped(error: &TargetError, at: u64, done: u64, total: u64, partial: &Path) -> CmdError {
    CmdError::Failed(format!(
        "stopped at physical {at:#x} after {done} of {total} pages ({error}); {} keeps them: \
         run the same .dump again to go on from there",
        partial.display()
    ))
}

fn progress(started: Instant, done: u64, total: u64, now: u64, finished: bool) -> Progress {
    Progress {
        done,
        total,
        done_now: now,
        bytes: now * PAGE,
        elapsed: started.elapsed(),
        finished,
    }
}

fn default_comment(scope: Scope, asked: &Option<String>) -> String {
    asked
        .clone()
        .unwrap_or_else(|| format!("kdnet .dump {}", scope.option()))
}

/// The header's comment: what the dump must say of itself first (a resumed dump, pages left
/// out), then the comment asked for; 127 bytes are kept.
fn final_comment(
    scope: Scope,
    state: &State,
    resumed_at: Option<u64>,
    target_ran: Option<bool>,
) -> String {
    let mut notes = Vec::new();
    if state.parts > 1 {
        let first = resumed_at.unwrap_or(0);
        notes.push(format!(
            "{} parts, resumed at page {first} of {}: {}",
            state.parts,
            state.pages,
            match target_ran {
                Some(false) => "one stop",
                Some(true) => "the target ran between them",
                None => "the target may have run between them",
            }
        ));
    }
    if !state.left_out.is_empty() {
        notes.push(format!(
            "{} unreadable pages left out",
            state.left_out.len()
        ));
    }
    let base = default_comment(scope, &state.comment);
    if notes.is_empty() {
        base
    } else {
        format!("{}; {base}", notes.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_and_files() {
        let o = parse("/f c:\\dumps\\full.dmp").unwrap();
        assert_eq!(
            o,
            Options {
                scope: Scope::Complete,
                overwrite: false,
                comment: None,
                file: "c:\\dumps\\full.dmp".into()
            }
        );
        let o = parse("/o /c \"after the hang\" /ka /tmp/k a.dmp").unwrap_err();
        assert!(o.to_string().contains("unexpected \"/tmp/k\""), "{o}");
        let o = parse("/o /c \"after the hang\" /ka \"/tmp/k a.dmp\"").unwrap();
        assert_eq!(
            (o.scope, o.overwrite, o.comment.as_deref(), o.file.as_str()),
            (
                Scope::KernelAndUser,
                true,
                Some("after the hang"),
                "/tmp/k a.dmp"
            )
        );
        assert_eq!(parse("/k /tmp/x.dmp").unwrap().file, "/tmp/x.dmp");
        for (bad, says) in [
            ("", "a file name is needed"),
            ("x.dmp", "give /f"),
            ("/m x.dmp", "small memory dumps"),
            ("/ma x.dmp", "small memory dumps"),
            ("/fy x.dmp", "AVX"),
            ("/u /f x.dmp", "unknown option /u"),
            ("/f /k x.dmp", "two kinds"),
            ("/f /c", "a file name is needed"),
            ("/f", "a file name is needed"),
            ("/c x.dmp", "/c needs a comment"),
            ("/f \"x.dmp", "not closed"),
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }

    #[test]
    fn the_text_says_what_was_written() {
        let d = Dumped {
            file: "/tmp/full.dmp".into(),
            option: "/f".into(),
            kind: "complete memory dump".into(),
            dump_type: 1,
            pages: 0x1a5c,
            planned: 0x1a5e,
            bytes: 0x1a5e000,
            runs: 2,
            memory_runs: 2,
            memory_pages: 0x1a5e,
            left_out: 2,
            left_out_pages: vec![0x1234000, 0x1235000],
            not_ram: 0,
            process: None,
            resumed: true,
            resumed_at: 0xd00,
            target_ran: Some(false),
            parts: 2,
            pages_read: 0xd5c,
            round_trips: 3600,
            round_trips_all_parts: 7200,
            comment: "2 parts".into(),
        };
        let mut t = String::new();
        d.render(&mut t);
        assert_eq!(
            t,
            "Creating /tmp/full.dmp - complete memory dump\n\
             Resumed /tmp/full.dmp.partial at page 3328 of 6750 (part 2): the target has not run \
             since the first part: one snapshot\n\
             6748 of 6750 pages of RAM in 2 runs; full dump, 2 runs in the header\n\
             2 pages could not be read and are left out: 1234000 1235000\n\
             Read 3420 pages in 3600 round trips (3891 bytes each)\n\
             Dump successfully written: 1a5e000 bytes\n"
        );
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["left_out_pages"][0], "0x0000000001234000");
        assert_eq!(v["process"], serde_json::Value::Null);
        assert_eq!(v["target_ran"], false);
    }
}
