//! Writing a dump: the header of a written dump and the pages laid out as runs or a bitmap.

use std::path::Path;

use super::{DumpError, PAGE};

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
