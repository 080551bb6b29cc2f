//! Crash dump files (`PAGEDU64`, x64) as a [`Target`]: full dumps (physical memory runs),
//! kernel and full bitmap dumps (a page bitmap), and triage dumps (virtual-address regions:
//! the faulting stack, data blocks, copies of the crashing thread, process, KPRCB and the
//! debugger data block, plus the driver list). Every offset and count read from the file is
//! checked against the file before use. The format facts are summarised in docs/dumps.md.

use kdnet_arch::le::Le;
use std::fs::File;
use std::path::Path;

use crate::target::{ModuleRecord, TargetInfo};

mod header;
mod pages;
mod write;

use header::{bitmap_layout, check_signature, header_info, runs_layout};
pub use write::{DumpHeader, DumpWriter, Finished, MAX_RUNS, PagePlan, WriteKind, write_dump};

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
        check_signature(&h)?;
        let dump_type = Le(&h).u32(0xF98);
        let mut info = header_info(&h);
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
                dump.layout = runs_layout(&h, size)?;
                dump.kind = DumpKind::Full;
            }
            2 | 5 | 6 => {
                dump.layout = bitmap_layout(&dump.file, size, dump_type, io)?;
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
}
