//! Crash dump files (`PAGEDU64`, x64) as a [`Target`]: full dumps (physical memory runs),
//! kernel and full bitmap dumps (a page bitmap), and triage dumps (virtual-address regions:
//! the faulting stack, data blocks, copies of the crashing thread, process, KPRCB and the
//! debugger data block, plus the driver list). Every offset and count read from the file is
//! checked against the file before use. The format facts are summarised in docs/dumps.md.

use kdnet_arch::le::Le;
use std::fs::File;
use std::path::Path;

use kdnet_arch::Context;

use crate::target::{ModuleRecord, Target, TargetError, TargetInfo, TransportStats};

/// Why a dump could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DumpError {
    /// The file could not be read.
    #[error("cannot read {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// A dump could not be written.
    #[error("cannot write {path}: {message}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// Not a 64-bit kernel dump.
    #[error("not a 64-bit Windows kernel dump: {0}")]
    NotADump(String),
    /// A structure in the file is damaged.
    #[error("damaged dump: {0}")]
    Damaged(String),
    /// A kind this reader does not handle.
    #[error("dump type {0} is not supported (full, kernel/full bitmap and triage dumps are)")]
    Unsupported(u32),
}

/// The kinds of dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpKind {
    /// DumpType 1.
    Full,
    /// DumpType 2, 5 or 6 with an SDMP/FDMP bitmap.
    Bitmap,
    /// DumpType 4.
    Triage,
}

impl DumpKind {
    /// A name for headers.
    pub fn name(self) -> &'static str {
        match self {
            DumpKind::Full => "full",
            DumpKind::Bitmap => "bitmap",
            DumpKind::Triage => "triage",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Region {
    va: u64,
    off: u64,
    len: u64,
}

#[derive(Debug)]
enum Layout {
    /// (base PFN, pages, index of its first page among stored pages).
    Runs(Vec<(u64, u64, u64)>),
    /// First stored page offset, bitmap words and the rank (set bits before each word).
    Bitmap {
        first: u64,
        words: Vec<u64>,
        ranks: Vec<u64>,
    },
    /// Virtual regions, sorted by address.
    Regions(Vec<Region>),
}

/// An open dump file.
#[derive(Debug)]
pub struct DumpFile {
    file: Backing,
    size: u64,
    path: String,
    /// Kind.
    pub kind: DumpKind,
    layout: Layout,
    info: TargetInfo,
    context: Vec<u8>,
    special: Option<Vec<u8>>,
    modules: Option<Vec<ModuleRecord>>,
    reads: u64,
    bytes: u64,
}

const PAGE: u64 = 0x1000;
/// Page numbers of x64 physical memory (52-bit addresses) are below this.
const MAX_PFN: u64 = 1 << 40;
/// "PAGE": the filler of unused header fields.
const FILLER: u32 = 0x4547_4150;

/// Where a dump's bytes are: a file read in place, or bytes in memory.
#[derive(Debug)]
enum Backing {
    File(File),
    Bytes(Vec<u8>),
}

fn read_at(backing: &Backing, off: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    let file = match backing {
        Backing::File(f) => f,
        Backing::Bytes(b) => {
            let start = usize::try_from(off).unwrap_or(usize::MAX).min(b.len());
            let n = buf.len().min(b.len() - start);
            buf[..n].copy_from_slice(&b[start..start + n]);
            return Ok(n);
        }
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        let mut done = 0;
        while done < buf.len() {
            let n = file.read_at(&mut buf[done..], off + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::FileExt;
        let mut done = 0;
        while done < buf.len() {
            let n = file.seek_read(&mut buf[done..], off + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }
}

impl DumpFile {
    /// Opens a dump.
    pub fn open(path: &Path) -> Result<DumpFile, DumpError> {
        let p = path.display().to_string();
        let io = |e: std::io::Error| DumpError::Io {
            path: p.clone(),
            message: e.to_string(),
        };
        let file = File::open(path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        DumpFile::from_backing(Backing::File(file), size, p)
    }

    /// Opens a dump held in memory (`name` is used in messages).
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<DumpFile, DumpError> {
        let size = bytes.len() as u64;
        DumpFile::from_backing(Backing::Bytes(bytes), size, name.to_string())
    }

    fn from_backing(file: Backing, size: u64, p: String) -> Result<DumpFile, DumpError> {
        let io = |e: std::io::Error| DumpError::Io {
            path: p.clone(),
            message: e.to_string(),
        };
        let mut h = vec![0u8; 0x2000];
        if read_at(&file, 0, &mut h).map_err(io)? < 0x2000 {
            return Err(DumpError::NotADump("shorter than the 8 KB header".into()));
        }
        if &h[..4] != b"PAGE" {
            return Err(DumpError::NotADump("no PAGE signature".into()));
        }
        if &h[4..8] != b"DU64" {
            return Err(DumpError::NotADump(format!(
                "signature {:?} (only 64-bit DU64 dumps are read)",
                String::from_utf8_lossy(&h[4..8])
            )));
        }
        if Le(&h).u32(0x30) != 0x8664 {
            return Err(DumpError::NotADump(format!(
                "machine {:#x} is not x64",
                Le(&h).u32(0x30)
            )));
        }
        let dump_type = Le(&h).u32(0xF98);
        let filler_or = |v: u64| (v as u32 != FILLER && v != 0).then_some(v);
        let mut info = TargetInfo {
            build: Le(&h).u32(0xC),
            kernel_base: None,
            ps_loaded_module_list: filler_or(Le(&h).u64(0x20)),
            ps_active_process_head: filler_or(Le(&h).u64(0x28)),
            debugger_data_list: None,
            kd_debugger_data_block: filler_or(Le(&h).u64(0x80)),
            directory_table_base: filler_or(Le(&h).u64(0x10)),
            processors: Le(&h).u32(0x34).clamp(1, 4096),
            current_processor: 0,
            bugcheck: Some((
                Le(&h).u32(0x38),
                [
                    Le(&h).u64(0x40),
                    Le(&h).u64(0x48),
                    Le(&h).u64(0x50),
                    Le(&h).u64(0x58),
                ],
            )),
            live: false,
            description: String::new(),
        };
        let context = h[0x348..0x348 + 0x4D0].to_vec();
        let mut dump = DumpFile {
            file,
            size,
            path: p.clone(),
            kind: DumpKind::Full,
            layout: Layout::Runs(Vec::new()),
            info: info.clone(),
            context,
            special: None,
            modules: None,
            reads: 0,
            bytes: 0,
        };
        match dump_type {
            1 => {
                let n = Le(&h).u32(0x88);
                if n == FILLER || n > 43 {
                    return Err(DumpError::Damaged(format!("{n:#x} physical memory runs")));
                }
                let mut runs = Vec::new();
                let mut index = 0u64;
                for i in 0..n as usize {
                    let base = Le(&h).u64(0x98 + 16 * i);
                    let count = Le(&h).u64(0xA0 + 16 * i);
                    // x64 physical addresses have 52 bits: page numbers below 2^40.
                    if count > MAX_PFN || base > MAX_PFN - count {
                        return Err(DumpError::Damaged(format!(
                            "run {i} has {count} pages from page {base:#x}"
                        )));
                    }
                    runs.push((base, count, index));
                    index += count;
                }
                if 0x2000 + index * PAGE > size {
                    return Err(DumpError::Damaged(format!(
                        "runs describe {index} pages but the file holds {}",
                        size.saturating_sub(0x2000) / PAGE
                    )));
                }
                dump.layout = Layout::Runs(runs);
                dump.kind = DumpKind::Full;
            }
            2 | 5 | 6 => {
                let mut b = vec![0u8; 0x38];
                read_at(&dump.file, 0x2000, &mut b).map_err(io)?;
                if !matches!(&b[..4], b"SDMP" | b"FDMP") || &b[4..8] != b"DUMP" {
                    return Err(DumpError::Unsupported(dump_type));
                }
                let first = Le(&b).u64(0x20);
                let present = Le(&b).u64(0x28);
                let pages = Le(&b).u64(0x30);
                if pages > MAX_PFN || first > size {
                    return Err(DumpError::Damaged(format!(
                        "bitmap header: {pages} pages, data at {first:#x}"
                    )));
                }
                let nwords = pages.div_ceil(64) as usize;
                if 0x2038 + nwords as u64 * 8 > size {
                    return Err(DumpError::Damaged(
                        "the page bitmap runs past the end of the file".into(),
                    ));
                }
                let mut raw = vec![0u8; nwords * 8];
                read_at(&dump.file, 0x2038, &mut raw).map_err(io)?;
                let words: Vec<u64> = raw
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect();
                let mut ranks = Vec::with_capacity(words.len());
                let mut total = 0u64;
                for w in &words {
                    ranks.push(total);
                    total += u64::from(w.count_ones());
                }
                if total != present {
                    return Err(DumpError::Damaged(format!(
                        "bitmap has {total} pages set, header says {present}"
                    )));
                }
                if first + total * PAGE > size {
                    return Err(DumpError::Damaged(format!(
                        "{total} pages do not fit in the file"
                    )));
                }
                dump.layout = Layout::Bitmap {
                    first,
                    words,
                    ranks,
                };
                dump.kind = DumpKind::Bitmap;
            }
            4 => {
                dump.open_triage(&mut info)?;
                dump.kind = DumpKind::Triage;
            }
            other => return Err(DumpError::Unsupported(other)),
        }
        info.description = format!(
            "{} dump {}",
            dump.kind.name(),
            Path::new(&p)
                .file_name()
                .map_or(p.clone(), |f| f.to_string_lossy().into_owned())
        );
        dump.info = info;
        Ok(dump)
    }

    fn slice(&self, off: u64, len: u64, what: &str) -> Result<Vec<u8>, DumpError> {
        if len > 1 << 28 || off.checked_add(len).is_none_or(|e| e > self.size) {
            return Err(DumpError::Damaged(format!(
                "{what} ({len:#x} bytes at {off:#x}) lies outside the file"
            )));
        }
        let mut b = vec![0u8; len as usize];
        read_at(&self.file, off, &mut b).map_err(|e| DumpError::Io {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        Ok(b)
    }

    fn open_triage(&mut self, info: &mut TargetInfo) -> Result<(), DumpError> {
        let t = self.slice(0x2000, 0x80, "the triage header")?;
        let field = |o: usize| u64::from(Le(&t).u32(o));
        let valid = field(0x08);
        if valid + 4 <= self.size {
            let v = self.slice(valid, 4, "the triage end marker")?;
            if &v != b"TRGD" {
                return Err(DumpError::Damaged(format!("no TRGD marker at {valid:#x}")));
            }
        }
        let mut regions = Vec::new();
        // A region whose end would pass the top of the address space is not one.
        let mut add = |va: u64, off: u64, len: u64| {
            if va != 0 && len != 0 && va.checked_add(len).is_some() {
                regions.push(Region { va, off, len });
            }
        };
        let top = Le(&t).u64(0x48);
        let (stack_off, stack_len) = (field(0x28), field(0x2C));
        self.slice(stack_off, stack_len, "the call stack")?;
        add(top, stack_off, stack_len);
        let (dp_addr, dp_off, dp_len) = (Le(&t).u64(0x60), field(0x68), field(0x6C));
        if dp_len != 0 {
            self.slice(dp_off, dp_len, "the data page")?;
            add(dp_addr, dp_off, dp_len);
        }
        let (kd_off, kd_len) = (field(0x70), field(0x74));
        let kdbg = if kd_len != 0 {
            let k = self.slice(kd_off, kd_len, "the debugger data copy")?;
            if let Some(va) = info.kd_debugger_data_block {
                add(va, kd_off, kd_len);
            }
            Some(k)
        } else {
            None
        };
        let (blocks_off, blocks) = (field(0x78), field(0x7C));
        if blocks > 1 << 20 {
            return Err(DumpError::Damaged(format!("{blocks} data blocks")));
        }
        let table = self.slice(blocks_off, blocks * 16, "the data block table")?;
        for i in 0..blocks as usize {
            let (va, off, len) = (
                Le(&table).u64(16 * i),
                u64::from(Le(&table).u32(16 * i + 8)),
                u64::from(Le(&table).u32(16 * i + 12)),
            );
            if off + len > self.size {
                return Err(DumpError::Damaged(format!(
                    "data block {i} lies outside the file"
                )));
            }
            add(va, off, len);
        }
        // Copies of the crashing CPU's KPRCB, thread and process (where no data block has them).
        let k16 = |o: usize| {
            kdbg.as_ref().map_or(0, |k| {
                u64::from(u16::from_le_bytes(
                    k.get(o..o + 2)
                        .and_then(|x| x.try_into().ok())
                        .unwrap_or([0; 2]),
                ))
            })
        };
        let (prcb_off, proc_off, thread_off) = (field(0x1C), field(0x20), field(0x24));
        let size_prcb = k16(0x2B0);
        let size_thread = k16(0x2C0);
        let size_process = k16(0x2A8);
        if prcb_off != 0 && size_prcb != 0 {
            let prcb = self.slice(prcb_off, size_prcb, "the KPRCB copy")?;
            let sr = k16(0x2F2) as usize;
            self.special = prcb.get(sr..sr + 0xE0).map(<[u8]>::to_vec);
            let current = Le(&prcb).u64(k16(0x2B4) as usize);
            if thread_off != 0 && size_thread != 0 && current != 0 {
                let thread = self.slice(thread_off, size_thread, "the thread copy")?;
                add(current, thread_off, size_thread);
                let process = Le(&thread).u64(k16(0x2A0) as usize);
                if proc_off != 0 && size_process != 0 && process != 0 {
                    add(process, proc_off, size_process);
                }
            }
        }
        regions.sort_by_key(|r| r.va);
        self.layout = Layout::Regions(regions);
        // Drivers and their names.
        let (list_off, count, pool_off, pool_len) =
            (field(0x30), field(0x34), field(0x38), field(0x3C));
        if count > 0 {
            if count > 1 << 16 {
                return Err(DumpError::Damaged(format!("{count} drivers")));
            }
            let stride = if pool_off > list_off && (pool_off - list_off) % count == 0 {
                (pool_off - list_off) / count
            } else {
                0x90
            };
            let list = self.slice(list_off, stride * count, "the driver list")?;
            self.slice(pool_off, pool_len, "the string pool")?;
            let mut mods = Vec::with_capacity(count as usize);
            for i in 0..count as usize {
                let e = &list[i * stride as usize..];
                let name_at = u64::from(Le(e).u32(0));
                let name = self.dump_string(name_at).unwrap_or_default();
                let file = name.rsplit('\\').next().unwrap_or(&name).to_string();
                mods.push(ModuleRecord {
                    name: file,
                    path: name,
                    base: Le(e).u64(0x38),
                    size: Le(e).u32(0x48),
                    checksum: Le(e).u32(0x80),
                    timestamp: Le(e).u32(0x88),
                });
            }
            if let Some(first) = mods.first() {
                info.kernel_base = Some(first.base);
            }
            self.modules = Some(mods);
        }
        Ok(())
    }

    fn dump_string(&self, off: u64) -> Option<String> {
        let len = u64::from(Le(&self.slice(off, 4, "a driver name").ok()?).u32(0)).min(1024);
        let raw = self.slice(off + 4, len * 2, "a driver name").ok()?;
        Some(kdnet_arch::le::utf16(&raw))
    }

    fn phys_offset(&self, pfn: u64) -> Option<u64> {
        match &self.layout {
            Layout::Runs(runs) => runs
                .iter()
                .find(|(b, c, _)| pfn >= *b && pfn < b + c)
                .map(|(b, _, idx)| 0x2000 + (idx + pfn - b) * PAGE),
            Layout::Bitmap {
                first,
                words,
                ranks,
            } => {
                let w = words.get((pfn / 64) as usize)?;
                let bit = pfn % 64;
                if w & (1 << bit) == 0 {
                    return None;
                }
                let below = u64::from((w & ((1u64 << bit) - 1)).count_ones());
                Some(first + (ranks[(pfn / 64) as usize] + below) * PAGE)
            }
            Layout::Regions(_) => None,
        }
    }

    /// Physical pages stored (full and bitmap dumps).
    pub fn page_count(&self) -> u64 {
        match &self.layout {
            Layout::Runs(r) => r.iter().map(|x| x.1).sum(),
            Layout::Bitmap { words, .. } => words.iter().map(|w| u64::from(w.count_ones())).sum(),
            Layout::Regions(_) => 0,
        }
    }
}

impl Target for DumpFile {
    fn info(&self) -> TargetInfo {
        self.info.clone()
    }

    fn read_physical(&mut self, address: u64, buf: &mut [u8]) -> Result<usize, TargetError> {
        if matches!(self.layout, Layout::Regions(_)) {
            return Err(TargetError::Unsupported(
                "read physical memory from a triage dump",
            ));
        }
        let mut done = 0;
        while done < buf.len() {
            let Some(a) = address.checked_add(done as u64) else {
                break;
            };
            let Some(off) = self.phys_offset(a / PAGE) else {
                break;
            };
            let n = (buf.len() - done).min((PAGE - a % PAGE) as usize);
            let got = read_at(&self.file, off + a % PAGE, &mut buf[done..done + n])
                .map_err(|e| TargetError::Transport(e.to_string()))?;
            self.reads += 1;
            self.bytes += got as u64;
            done += got;
            if got < n {
                break;
            }
        }
        Ok(done)
    }

    fn read_virtual_direct(
        &mut self,
        address: u64,
        buf: &mut [u8],
    ) -> Option<Result<usize, TargetError>> {
        let Layout::Regions(regions) = &self.layout else {
            return None;
        };
        let mut done = 0;
        while done < buf.len() {
            let Some(a) = address.checked_add(done as u64) else {
                break;
            };
            let i = regions.partition_point(|r| r.va <= a);
            let Some(r) = i
                .checked_sub(1)
                .map(|i| regions[i])
                .filter(|r| a < r.va + r.len)
            else {
                break;
            };
            let n = (buf.len() - done).min((r.va + r.len - a) as usize);
            match read_at(&self.file, r.off + (a - r.va), &mut buf[done..done + n]) {
                Ok(got) => {
                    self.reads += 1;
                    self.bytes += got as u64;
                    done += got;
                    if got < n {
                        break;
                    }
                }
                Err(e) => return Some(Err(TargetError::Transport(e.to_string()))),
            }
        }
        Some(Ok(done))
    }

    fn max_transfer(&self) -> usize {
        1 << 20
    }

    fn context(&mut self, processor: u32) -> Result<Context, TargetError> {
        if processor != 0 {
            return Err(TargetError::Unsupported(
                "give contexts of other processors from a dump (read their KPRCB)",
            ));
        }
        Context::from_bytes(&self.context).map_err(|e| TargetError::Transport(e.to_string()))
    }

    fn special_registers(&mut self, processor: u32) -> Result<Vec<u8>, TargetError> {
        match (&self.special, processor) {
            (Some(s), 0) => Ok(s.clone()),
            _ => Err(TargetError::Unsupported("read control space from a dump")),
        }
    }

    fn control_pointer(&mut self, _processor: u32, _index: u64) -> Result<u64, TargetError> {
        Err(TargetError::Unsupported("read control space from a dump"))
    }

    fn stats(&self) -> TransportStats {
        TransportStats {
            round_trips: self.reads,
            bytes: self.bytes,
        }
    }

    fn module_list(&mut self) -> Option<Vec<ModuleRecord>> {
        self.modules.clone()
    }
}

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
}

/// How pages are laid out in a written dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// DumpType 1: runs of consecutive pages (at most 43 runs).
    Full,
    /// DumpType 5: a page bitmap; any set of pages.
    Bitmap,
}

const PAGE_USIZE: usize = PAGE as usize;
const MAX_RUNS: usize = (0x348 - 0x98) / 16;

fn put32(h: &mut [u8], o: usize, v: u32) {
    h[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(h: &mut [u8], o: usize, v: u64) {
    h[o..o + 8].copy_from_slice(&v.to_le_bytes());
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
    // The header: 'PAGE' in every field not set, as the kernel writes it.
    let mut h = vec![0u8; 0x2000];
    for c in h.chunks_exact_mut(4) {
        c.copy_from_slice(b"PAGE");
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
    let comment = header.comment.as_bytes();
    let n = comment.len().min(127);
    h[0xFB0..0xFB0 + n].copy_from_slice(&comment[..n]);
    h[0xFB0 + n] = 0;
    let mut body: Vec<u8> = Vec::new();
    match kind {
        WriteKind::Full => {
            let mut runs: Vec<(u64, u64)> = Vec::new();
            for &pfn in pages.keys() {
                match runs.last_mut() {
                    Some((base, count)) if *base + *count == pfn => *count += 1,
                    _ => runs.push((pfn, 1)),
                }
            }
            if runs.len() > MAX_RUNS {
                return Err(err(format!(
                    "{} runs of pages do not fit a full dump's header ({MAX_RUNS} do); write a bitmap dump",
                    runs.len()
                )));
            }
            put32(&mut h, 0xF98, 1);
            put32(&mut h, 0x88, runs.len() as u32);
            put32(&mut h, 0x8C, 0);
            put64(&mut h, 0x90, pages.len() as u64);
            for (i, (base, count)) in runs.iter().enumerate() {
                put64(&mut h, 0x98 + 16 * i, *base);
                put64(&mut h, 0xA0 + 16 * i, *count);
            }
        }
        WriteKind::Bitmap => {
            put32(&mut h, 0xF98, 5);
            let bits = pages.keys().next_back().map_or(0, |m| m + 1);
            let words = bits.div_ceil(64) as usize;
            let mut bitmap = vec![0u64; words];
            for &pfn in pages.keys() {
                bitmap[(pfn / 64) as usize] |= 1 << (pfn % 64);
            }
            let first = (0x2038 + 8 * words as u64).div_ceil(PAGE) * PAGE;
            let mut b = vec![0u8; 0x38];
            b[..4].copy_from_slice(b"SDMP");
            b[4..8].copy_from_slice(b"DUMP");
            put64(&mut b, 0x20, first);
            put64(&mut b, 0x28, pages.len() as u64);
            put64(&mut b, 0x30, bits);
            body.extend_from_slice(&b);
            for w in &bitmap {
                body.extend_from_slice(&w.to_le_bytes());
            }
            body.resize((first - 0x2000) as usize, 0);
        }
    }
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        path.file_name()
            .map_or("dump".into(), |n| n.to_string_lossy().into_owned()),
        std::process::id()
    ));
    let write = || -> std::io::Result<u64> {
        use std::io::Write;
        // Kernel memory: readable by its owner only, from the first byte.
        let mut open = std::fs::OpenOptions::new();
        open.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
        let f = open.open(&tmp)?;
        let mut w = std::io::BufWriter::new(f);
        w.write_all(&h)?;
        w.write_all(&body)?;
        for p in pages.values() {
            w.write_all(p)?;
        }
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        let len = f.metadata()?.len();
        drop(f);
        std::fs::rename(&tmp, path)?;
        Ok(len)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e.to_string())
    })
}
