//! Writing a dump: the header, then the pages streamed to disk in frame order, laid out as runs
//! (a full dump) or under a page bitmap, so that a dump of any size is written in bounded
//! memory. A dump being written can be reopened and continued where it stopped; pages that
//! turn out unreadable are left out when it is finished (runs are split around them, and a
//! full dump whose runs no longer fit its header becomes a bitmap dump).

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use kdnet_arch::le::Le;

use super::{DumpError, FILLER, MAX_PFN, PAGE};

/// What the header of a written dump records.
#[derive(Debug, Clone, Default)]
pub struct DumpHeader {
    /// NT build number.
    pub build: u32,
    /// The kernel's page-table root (CR3).
    pub directory_table_base: u64,
    /// PsLoadedModuleList.
    pub ps_loaded_module_list: u64,
    /// PsActiveProcessHead.
    pub ps_active_process_head: u64,
    /// KdDebuggerDataBlock (its virtual address).
    pub kd_debugger_data_block: u64,
    /// Processors.
    pub processors: u32,
    /// Bugcheck code and parameters (code 0 when there was none).
    pub bugcheck: (u32, [u64; 4]),
    /// The CONTEXT of the processor the dump was taken on.
    pub context: Vec<u8>,
    /// A comment (at most 127 bytes are kept).
    pub comment: String,
    /// The target's system time when the dump was taken (a FILETIME, UTC; 0: not known).
    pub system_time: u64,
    /// How long the target had run (100 ns units; 0: not known).
    pub up_time: u64,
}

/// How pages are laid out in a written dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// DumpType 1: runs of consecutive pages (at most 43 runs).
    Full,
    /// DumpType 5: a page bitmap; any set of pages.
    Bitmap,
}

impl WriteKind {
    /// The header's DumpType.
    pub fn dump_type(self) -> u32 {
        match self {
            WriteKind::Full => 1,
            WriteKind::Bitmap => 5,
        }
    }
}

const PAGE_USIZE: usize = PAGE as usize;
/// Runs a full dump's header holds.
pub const MAX_RUNS: usize = (0x348 - 0x98) / 16;
/// Where the header's fields are.
const DUMP_TYPE: usize = 0xF98;
const REQUIRED_SPACE: usize = 0xFA0;
const SYSTEM_TIME: usize = 0xFA8;
const COMMENT: usize = 0xFB0;
const UP_TIME: usize = 0x1030;
/// Bytes moved at once when a full dump becomes a bitmap dump.
const MOVE_CHUNK: u64 = 1 << 20;

fn put32(h: &mut [u8], o: usize, v: u32) {
    h[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(h: &mut [u8], o: usize, v: u64) {
    h[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

/// The pages a dump holds: runs of consecutive frames `(first frame, count)`, in frame order,
/// apart from one another.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PagePlan {
    runs: Vec<(u64, u64)>,
    pages: u64,
}

impl PagePlan {
    /// The plan of `runs` (any order; touching runs are joined). Overlapping runs, empty ones
    /// and frames past x64's 52-bit physical addresses are refused.
    pub fn from_runs(runs: &[(u64, u64)]) -> Result<PagePlan, String> {
        let mut sorted: Vec<(u64, u64)> = runs.to_vec();
        sorted.sort_unstable();
        let mut plan = PagePlan::default();
        for (base, count) in sorted {
            if count == 0 || count > MAX_PFN || base > MAX_PFN - count {
                return Err(format!("a run of {count:#x} pages from frame {base:#x}"));
            }
            plan.push(base, count)?;
        }
        Ok(plan)
    }

    /// Appends a run past the end of the plan (joined to the last one when they touch).
    fn push(&mut self, base: u64, count: u64) -> Result<(), String> {
        match self.runs.last_mut() {
            Some((b, c)) if *b + *c == base => *c += count,
            Some((b, c)) if *b + *c > base => {
                return Err(format!(
                    "frames {base:#x}..{:#x} overlap those from {b:#x}",
                    base + count
                ));
            }
            _ => self.runs.push((base, count)),
        }
        self.pages += count;
        Ok(())
    }

    /// The plan of a bitmap of frames (bit *n* of word *n / 64*: frame *n*).
    pub fn from_bitmap(words: &[u64]) -> PagePlan {
        let mut plan = PagePlan::default();
        for (i, &w) in words.iter().enumerate() {
            let mut w = w;
            while w != 0 {
                let bit = u64::from(w.trailing_zeros());
                let run = u64::from((!(w >> bit)).trailing_zeros()).min(64 - bit);
                let _ = plan.push(i as u64 * 64 + bit, run);
                w = if bit + run >= 64 {
                    0
                } else {
                    w & !(((1u64 << run) - 1) << bit)
                };
            }
        }
        plan
    }

    /// The runs.
    pub fn runs(&self) -> &[(u64, u64)] {
        &self.runs
    }

    /// Pages in all.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Whether a full dump's header can hold the runs.
    pub fn fits_full(&self) -> bool {
        self.runs.len() <= MAX_RUNS
    }

    /// The frames one past the highest.
    fn end(&self) -> u64 {
        self.runs.last().map_or(0, |(b, c)| b + c)
    }

    /// The plan without the frames `gone` (sorted, each in the plan).
    pub fn without(&self, gone: &[u64]) -> PagePlan {
        let mut plan = PagePlan::default();
        let mut g = gone.iter().copied().peekable();
        for &(base, count) in &self.runs {
            let mut at = base;
            let end = base + count;
            while let Some(&pfn) = g.peek() {
                if pfn >= end {
                    break;
                }
                g.next();
                if pfn < at {
                    continue;
                }
                if pfn > at {
                    let _ = plan.push(at, pfn - at);
                }
                at = pfn + 1;
            }
            if at < end {
                let _ = plan.push(at, end - at);
            }
        }
        plan
    }

    /// Where the `n`-th page of the plan (from 0) is: its run and its frame.
    pub fn locate(&self, n: u64) -> Option<(usize, u64)> {
        let mut before = 0u64;
        for (i, &(base, count)) in self.runs.iter().enumerate() {
            if n < before + count {
                return Some((i, base + (n - before)));
            }
            before += count;
        }
        None
    }

    fn bitmap(&self) -> (u64, Vec<u64>) {
        let bits = self.end();
        let mut words = vec![0u64; bits.div_ceil(64) as usize];
        for &(base, count) in &self.runs {
            let mut pfn = base;
            let end = base + count;
            while pfn < end {
                let bit = pfn % 64;
                let n = (64 - bit).min(end - pfn);
                let mask = if n == 64 {
                    u64::MAX
                } else {
                    ((1u64 << n) - 1) << bit
                };
                words[(pfn / 64) as usize] |= mask;
                pfn += n;
            }
        }
        (bits, words)
    }
}

/// Where a bitmap dump's first page is, for `words` words of bitmap.
fn bitmap_first(words: usize) -> u64 {
    (0x2038 + 8 * words as u64).div_ceil(PAGE) * PAGE
}

/// What a finished dump holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// How its pages are laid out.
    pub kind: WriteKind,
    /// Pages in it.
    pub pages: u64,
    /// Runs of consecutive frames among them.
    pub runs: usize,
    /// The file's size.
    pub bytes: u64,
}

/// A dump being written: the header is on disk, the pages follow in the plan's order.
#[derive(Debug)]
pub struct DumpWriter {
    out: std::io::BufWriter<File>,
    path: PathBuf,
    kind: WriteKind,
    plan: PagePlan,
    written: u64,
}

impl DumpWriter {
    /// Starts a dump of `plan`'s pages at `path` (a new file only its owner may read: it holds
    /// kernel memory; one already there is replaced): the header, and for a bitmap dump the
    /// bitmap. A full dump needs the plan's runs to fit its header.
    pub fn create(
        path: &Path,
        header: &DumpHeader,
        kind: WriteKind,
        plan: PagePlan,
    ) -> Result<DumpWriter, DumpError> {
        let err = |m: String| DumpError::Write {
            path: path.display().to_string(),
            message: m,
        };
        if kind == WriteKind::Full && !plan.fits_full() {
            return Err(err(format!(
                "{} runs of pages do not fit a full dump's header ({MAX_RUNS} do); write a bitmap dump",
                plan.runs.len()
            )));
        }
        let mut h = header_bytes(header);
        put32(&mut h, DUMP_TYPE, kind.dump_type());
        let mut body = Vec::new();
        match kind {
            WriteKind::Full => put_runs(&mut h, &plan),
            WriteKind::Bitmap => {
                let (bits, words) = plan.bitmap();
                let first = bitmap_first(words.len());
                body = bitmap_header(first, plan.pages, bits, &words);
                body.resize((first - 0x2000) as usize, 0);
            }
        }
        let io = |e: std::io::Error| err(e.to_string());
        let _ = std::fs::remove_file(path);
        let mut open = std::fs::OpenOptions::new();
        open.read(true).write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
        let f = open.open(path).map_err(io)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, f);
        out.write_all(&h).map_err(io)?;
        out.write_all(&body).map_err(io)?;
        Ok(DumpWriter {
            out,
            path: path.to_path_buf(),
            kind,
            plan,
            written: 0,
        })
    }

    /// Opens a dump begun by [`DumpWriter::create`] to go on after its first `written` pages
    /// (what follows them, a write cut short, is dropped). The plan is read back from its
    /// header.
    pub fn reopen(path: &Path, written: u64) -> Result<DumpWriter, DumpError> {
        let err = |m: String| DumpError::Write {
            path: path.display().to_string(),
            message: m,
        };
        let io = |e: std::io::Error| err(e.to_string());
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        let size = f.metadata().map_err(io)?.len();
        let mut h = vec![0u8; 0x2038];
        if size < h.len() as u64 {
            return Err(err("shorter than a dump's header".into()));
        }
        std::io::Read::read_exact(&mut f, &mut h).map_err(io)?;
        super::header::check_signature(&h).map_err(|e| err(e.to_string()))?;
        let (kind, plan, data) = match Le(&h).u32(DUMP_TYPE) {
            1 => {
                let n = Le(&h).u32(0x88) as usize;
                if n > MAX_RUNS {
                    return Err(err(format!("{n} runs in the header")));
                }
                let runs: Vec<(u64, u64)> = (0..n)
                    .map(|i| (Le(&h).u64(0x98 + 16 * i), Le(&h).u64(0xA0 + 16 * i)))
                    .collect();
                (
                    WriteKind::Full,
                    PagePlan::from_runs(&runs).map_err(err)?,
                    0x2000,
                )
            }
            5 => {
                if &h[0x2000..0x2008] != b"SDMPDUMP" {
                    return Err(err("no page bitmap".into()));
                }
                let first = Le(&h).u64(0x2020);
                let bits = Le(&h).u64(0x2030);
                let words = bits.div_ceil(64);
                if bits > MAX_PFN || first != bitmap_first(words as usize) || first > size {
                    return Err(err(format!("a bitmap of {bits} bits, pages at {first:#x}")));
                }
                let mut raw = vec![0u8; words as usize * 8];
                std::io::Read::read_exact(&mut f, &mut raw).map_err(io)?;
                let words: Vec<u64> = raw
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect();
                (WriteKind::Bitmap, PagePlan::from_bitmap(&words), first)
            }
            t => return Err(err(format!("dump type {t} is not one this writer begins"))),
        };
        if written > plan.pages || data + written * PAGE > size {
            return Err(err(format!(
                "it holds {} of the {written} pages said to be written",
                size.saturating_sub(data) / PAGE
            )));
        }
        let end = data + written * PAGE;
        f.set_len(end).map_err(io)?;
        f.seek(SeekFrom::Start(end)).map_err(io)?;
        Ok(DumpWriter {
            out: std::io::BufWriter::with_capacity(1 << 20, f),
            path: path.to_path_buf(),
            kind,
            plan,
            written,
        })
    }

    /// The layout begun.
    pub fn kind(&self) -> WriteKind {
        self.kind
    }

    /// The pages it is to hold.
    pub fn plan(&self) -> &PagePlan {
        &self.plan
    }

    /// Pages written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn err(&self, m: String) -> DumpError {
        DumpError::Write {
            path: self.path.display().to_string(),
            message: m,
        }
    }

    /// Appends whole pages (the next ones of the plan, in its order).
    pub fn write_pages(&mut self, bytes: &[u8]) -> Result<(), DumpError> {
        if !bytes.len().is_multiple_of(PAGE_USIZE) {
            return Err(self.err(format!("{} bytes are not whole pages", bytes.len())));
        }
        let n = (bytes.len() / PAGE_USIZE) as u64;
        if self.written + n > self.plan.pages {
            return Err(self.err(format!(
                "{} pages past the {} planned",
                self.written + n - self.plan.pages,
                self.plan.pages
            )));
        }
        self.out
            .write_all(bytes)
            .map_err(|e| self.err(e.to_string()))?;
        self.written += n;
        Ok(())
    }

    /// Makes what was written so far durable (before its count is recorded anywhere).
    pub fn sync(&mut self) -> Result<(), DumpError> {
        self.out.flush().map_err(|e| self.err(e.to_string()))?;
        self.out
            .get_ref()
            .sync_data()
            .map_err(|e| self.err(e.to_string()))
    }

    /// Completes the dump and renames it to `dest`: the frames `left_out` (sorted; with the
    /// pages written they make up the plan) are taken out of its page map, `comment` (when
    /// given) replaces the header's, the header records the file's size. The file is flushed
    /// to disk before the rename, and the rename with its directory after.
    pub fn finish(
        mut self,
        dest: &Path,
        left_out: &[u64],
        comment: Option<&str>,
    ) -> Result<Finished, DumpError> {
        if self.written + left_out.len() as u64 != self.plan.pages {
            return Err(self.err(format!(
                "{} pages written and {} left out of {} planned",
                self.written,
                left_out.len(),
                self.plan.pages
            )));
        }
        self.out.flush().map_err(|e| self.err(e.to_string()))?;
        let path = self.path.clone();
        let plan = self.plan.without(left_out);
        let written = self.written;
        let mut kind = self.kind;
        let f = self.out.get_mut();
        let io = |e: std::io::Error| DumpError::Write {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let mut h = vec![0u8; 0x2000];
        f.seek(SeekFrom::Start(0)).map_err(io)?;
        std::io::Read::read_exact(f, &mut h).map_err(io)?;
        match kind {
            WriteKind::Full if plan.fits_full() => put_runs(&mut h, &plan),
            WriteKind::Full => {
                // Split runs no longer fit: the pages move down past a bitmap.
                let (bits, words) = plan.bitmap();
                let first = bitmap_first(words.len());
                let shift = first - 0x2000;
                f.set_len(first + written * PAGE).map_err(io)?;
                let mut end = 0x2000 + written * PAGE;
                let mut buf = vec![0u8; MOVE_CHUNK as usize];
                while end > 0x2000 {
                    let start = end.saturating_sub(MOVE_CHUNK).max(0x2000);
                    let b = &mut buf[..(end - start) as usize];
                    f.seek(SeekFrom::Start(start)).map_err(io)?;
                    std::io::Read::read_exact(f, b).map_err(io)?;
                    f.seek(SeekFrom::Start(start + shift)).map_err(io)?;
                    f.write_all(b).map_err(io)?;
                    end = start;
                }
                let mut body = bitmap_header(first, plan.pages, bits, &words);
                body.resize(shift as usize, 0);
                f.seek(SeekFrom::Start(0x2000)).map_err(io)?;
                f.write_all(&body).map_err(io)?;
                clear_runs(&mut h);
                kind = WriteKind::Bitmap;
                put32(&mut h, DUMP_TYPE, kind.dump_type());
            }
            WriteKind::Bitmap => {
                // The bitmap keeps its size; the frames left out are cleared from it.
                let mut b = vec![0u8; 0x38];
                f.seek(SeekFrom::Start(0x2000)).map_err(io)?;
                std::io::Read::read_exact(f, &mut b).map_err(io)?;
                let bits = Le(&b).u64(0x30);
                let mut words = plan.bitmap().1;
                words.resize(bits.div_ceil(64) as usize, 0);
                put64(&mut b, 0x28, plan.pages);
                let mut raw = b;
                for w in &words {
                    raw.extend_from_slice(&w.to_le_bytes());
                }
                f.seek(SeekFrom::Start(0x2000)).map_err(io)?;
                f.write_all(&raw).map_err(io)?;
            }
        }
        let size = f.seek(SeekFrom::End(0)).map_err(io)?;
        put64(&mut h, REQUIRED_SPACE, size);
        if let Some(c) = comment {
            put_comment(&mut h, c);
        }
        f.seek(SeekFrom::Start(0)).map_err(io)?;
        f.write_all(&h).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&path, dest).map_err(io)?;
        // The rename itself reaches the disk with its directory.
        let dir = match dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(Finished {
            kind,
            pages: plan.pages,
            runs: plan.runs.len(),
            bytes: size,
        })
    }
}

/// The header: 'PAGE' in every field not set, as the kernel writes it.
fn header_bytes(header: &DumpHeader) -> Vec<u8> {
    let mut h = vec![0u8; 0x2000];
    for c in h.chunks_exact_mut(4) {
        c.copy_from_slice(&FILLER.to_le_bytes());
    }
    h[4..8].copy_from_slice(b"DU64");
    put32(&mut h, 0x8, 0xF);
    put32(&mut h, 0xC, header.build);
    put64(&mut h, 0x10, header.directory_table_base);
    put64(&mut h, 0x20, header.ps_loaded_module_list);
    put64(&mut h, 0x28, header.ps_active_process_head);
    put32(&mut h, 0x30, 0x8664);
    put32(&mut h, 0x34, header.processors.max(1));
    put32(&mut h, 0x38, header.bugcheck.0);
    for (i, p) in header.bugcheck.1.iter().enumerate() {
        put64(&mut h, 0x40 + 8 * i, *p);
    }
    put64(&mut h, 0x80, header.kd_debugger_data_block);
    let ctx = &header.context[..header.context.len().min(3000)];
    h[0x348..0x348 + ctx.len()].copy_from_slice(ctx);
    if header.system_time != 0 {
        put64(&mut h, SYSTEM_TIME, header.system_time);
    }
    if header.up_time != 0 {
        put64(&mut h, UP_TIME, header.up_time);
    }
    put_comment(&mut h, &header.comment);
    h
}

/// At most 127 bytes of `comment` (cut on a character boundary), then a zero.
fn put_comment(h: &mut [u8], comment: &str) {
    let mut n = comment.len().min(127);
    while !comment.is_char_boundary(n) {
        n -= 1;
    }
    h[COMMENT..COMMENT + 128].fill(0);
    h[COMMENT..COMMENT + n].copy_from_slice(&comment.as_bytes()[..n]);
}

/// A full dump's runs (the layout of `_PHYSICAL_MEMORY_DESCRIPTOR`): their count, the pages,
/// the runs, the filler after them.
fn put_runs(h: &mut [u8], plan: &PagePlan) {
    clear_runs(h);
    put32(h, 0x88, plan.runs.len() as u32);
    put32(h, 0x8C, 0);
    put64(h, 0x90, plan.pages);
    for (i, (base, count)) in plan.runs.iter().enumerate() {
        put64(h, 0x98 + 16 * i, *base);
        put64(h, 0xA0 + 16 * i, *count);
    }
}

fn clear_runs(h: &mut [u8]) {
    for c in h[0x88..0x348].chunks_exact_mut(4) {
        c.copy_from_slice(&FILLER.to_le_bytes());
    }
}

/// The bitmap header (`SDMP`), then the bitmap.
fn bitmap_header(first: u64, pages: u64, bits: u64, words: &[u64]) -> Vec<u8> {
    let mut b = vec![0u8; 0x38];
    b[..4].copy_from_slice(b"SDMP");
    b[4..8].copy_from_slice(b"DUMP");
    put64(&mut b, 0x20, first);
    put64(&mut b, 0x28, pages);
    put64(&mut b, 0x30, bits);
    for w in words {
        b.extend_from_slice(&w.to_le_bytes());
    }
    b
}

/// Writes a dump of `pages` (page frame number → its 4 KB) at `path`, atomically: the bytes go
/// to a temporary file beside it that is renamed into place only once complete. Returns the
/// file size.
pub fn write_dump(
    path: &Path,
    header: &DumpHeader,
    kind: WriteKind,
    pages: &std::collections::BTreeMap<u64, Vec<u8>>,
) -> Result<u64, DumpError> {
    let err = |m: String| DumpError::Write {
        path: path.display().to_string(),
        message: m,
    };
    if let Some((pfn, p)) = pages.iter().find(|(_, p)| p.len() != PAGE_USIZE) {
        return Err(err(format!("page {pfn:#x} has {} bytes", p.len())));
    }
    let mut plan = PagePlan::default();
    for &pfn in pages.keys() {
        if pfn >= MAX_PFN {
            return Err(err(format!(
                "frame {pfn:#x} is past x64's physical addresses"
            )));
        }
        plan.push(pfn, 1).map_err(err)?;
    }
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        path.file_name()
            .map_or("dump".into(), |n| n.to_string_lossy().into_owned()),
        std::process::id()
    ));
    let write = || -> Result<u64, DumpError> {
        let mut w = DumpWriter::create(&tmp, header, kind, plan)?;
        for p in pages.values() {
            w.write_pages(p)?;
        }
        Ok(w.finish(path, &[], None)?.bytes)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        match e {
            DumpError::Write { message, .. } => err(message),
            other => other,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::{DumpFile, DumpKind};
    use crate::target::Target;

    fn page(pfn: u64) -> Vec<u8> {
        let mut p = vec![0u8; PAGE_USIZE];
        for (i, c) in p.chunks_exact_mut(8).enumerate() {
            c.copy_from_slice(&(pfn * PAGE + 8 * i as u64).to_le_bytes());
        }
        p
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kdnet-write-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Reads back every frame below `end`: Some(bytes) where the dump has it.
    fn frames(path: &Path, end: u64) -> Vec<Option<Vec<u8>>> {
        let mut d = DumpFile::open(path).unwrap();
        (0..end)
            .map(|pfn| {
                let mut b = vec![0u8; PAGE_USIZE];
                let n = d.read_physical(pfn * PAGE, &mut b).unwrap();
                (n == PAGE_USIZE).then_some(b)
            })
            .collect()
    }

    #[test]
    fn plans_from_runs_bitmaps_and_without_frames() {
        let p = PagePlan::from_runs(&[(0x100, 4), (1, 0x9e), (0x104, 2)]).unwrap();
        assert_eq!(p.runs(), &[(1, 0x9e), (0x100, 6)]);
        assert_eq!(p.pages(), 0x9e + 6);
        assert!(PagePlan::from_runs(&[(1, 4), (3, 4)]).is_err());
        assert!(PagePlan::from_runs(&[(1, 0)]).is_err());
        assert!(PagePlan::from_runs(&[(MAX_PFN - 1, 2)]).is_err());
        let (bits, words) = p.bitmap();
        assert_eq!(bits, 0x106);
        assert_eq!(PagePlan::from_bitmap(&words), p);
        let full = PagePlan::from_bitmap(&[u64::MAX, u64::MAX, 1]);
        assert_eq!(full.runs(), &[(0, 129)]);
        let w = p.without(&[1, 0x50, 0x101, 0x105]);
        assert_eq!(w.runs(), &[(2, 0x4e), (0x51, 0x4e), (0x100, 1), (0x102, 3)]);
        assert_eq!(w.pages(), p.pages() - 4);
        assert_eq!(p.locate(0), Some((0, 1)));
        assert_eq!(p.locate(0x9e), Some((1, 0x100)));
        assert_eq!(p.locate(0x9e + 6), None);
    }

    #[test]
    fn a_dump_streamed_in_two_parts_with_pages_left_out() {
        let dir = scratch("parts");
        for kind in [WriteKind::Full, WriteKind::Bitmap] {
            let plan = PagePlan::from_runs(&[(2, 6), (0x40, 3)]).unwrap();
            let partial = dir.join("x.partial");
            let dest = dir.join(format!("{kind:?}.dmp"));
            let header = DumpHeader {
                build: 20348,
                comment: "first".into(),
                ..DumpHeader::default()
            };
            let mut w = DumpWriter::create(&partial, &header, kind, plan.clone()).unwrap();
            // Frames 2, 3 written; 4 left out; 5 written and then a cut.
            for pfn in [2, 3, 5] {
                w.write_pages(&page(pfn)).unwrap();
            }
            w.sync().unwrap();
            w.write_pages(&page(6)).unwrap();
            drop(w);
            let mut w = DumpWriter::reopen(&partial, 3).unwrap();
            assert_eq!((w.kind(), w.plan(), w.written()), (kind, &plan, 3));
            for pfn in [6, 7, 0x40, 0x42] {
                w.write_pages(&page(pfn)).unwrap();
            }
            assert!(
                w.write_pages(&[0; 3 * PAGE_USIZE]).is_err(),
                "past the plan"
            );
            let f = w.finish(&dest, &[4, 0x41], Some("second")).unwrap();
            assert_eq!((f.kind, f.pages, f.runs), (kind, 7, 4));
            assert!(!partial.exists());
            assert_eq!(f.bytes, std::fs::metadata(&dest).unwrap().len());
            let got = frames(&dest, 0x44);
            for (pfn, g) in got.iter().enumerate() {
                let want = [2, 3, 5, 6, 7, 0x40, 0x42].contains(&(pfn as u64));
                assert_eq!(
                    g.as_ref(),
                    want.then(|| page(pfn as u64)).as_ref(),
                    "{pfn:#x}"
                );
            }
            let raw = std::fs::read(&dest).unwrap();
            assert_eq!(&raw[COMMENT..COMMENT + 7], b"second\0");
            assert_eq!(Le(&raw).u64(REQUIRED_SPACE), f.bytes);
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600);
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_full_dump_whose_runs_split_past_43_becomes_a_bitmap_dump() {
        let dir = scratch("split");
        let plan = PagePlan::from_runs(&[(0x10, 200)]).unwrap();
        let partial = dir.join("y.partial");
        let dest = dir.join("y.dmp");
        let mut w =
            DumpWriter::create(&partial, &DumpHeader::default(), WriteKind::Full, plan).unwrap();
        // Every fourth frame cannot be read: 50 holes, 51 runs.
        let gone: Vec<u64> = (0x10..0x10 + 200).filter(|p| p % 4 == 1).collect();
        for pfn in 0x10..0x10 + 200u64 {
            if !gone.contains(&pfn) {
                w.write_pages(&page(pfn)).unwrap();
            }
        }
        let f = w.finish(&dest, &gone, None).unwrap();
        assert_eq!((f.kind, f.pages, f.runs), (WriteKind::Bitmap, 150, 51));
        let d = DumpFile::open(&dest).unwrap();
        assert_eq!((d.kind, d.page_count()), (DumpKind::Bitmap, 150));
        for (pfn, g) in frames(&dest, 0x10 + 200).iter().enumerate() {
            let pfn = pfn as u64;
            let want = (0x10..0x10 + 200).contains(&pfn) && !gone.contains(&pfn);
            assert_eq!(g.as_ref(), want.then(|| page(pfn)).as_ref(), "{pfn:#x}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
