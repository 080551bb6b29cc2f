//! `.writemem FILE ADDR END` or `.writemem FILE ADDR L COUNT`: kernel memory written to a file,
//! as WinDbg does. The range is read through the memory layer's long reads (full requests
//! where the pages are physically contiguous) and must be readable whole: the first address
//! that is not fails the command and nothing is written. The file appears whole or not at all
//! (written under a temporary name in the same directory, flushed to disk, then renamed), and
//! only its owner may read it (it holds kernel memory). A relative name is relative to the
//! debugger's current directory.

use std::io::Write as _;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use kdnet_model::mem::Piece;
use kdnet_model::nt::ModelError;
use kdnet_model::target::TargetError;
use schemars::JsonSchema;
use serde::Serialize;

use crate::args::{Args, Syntax, expr, opt_expr, word};
use crate::engine::{CmdError, Engine, addr};
use crate::registry::Render;

/// Most bytes one `.writemem` writes (WinDbg asks for `L?` past 256 MB; here it is the bound).
pub const MAX_WRITE: u64 = 256 << 20;

/// `.writemem FILE ADDR [END] [L COUNT]`.
pub(crate) const SYNTAX: Syntax = Syntax {
    flags: &[],
    params: &[word("FILE"), expr("ADDR"), opt_expr("END")],
    length: true,
};

/// Memory written to a file.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Written {
    /// The file, as given (a relative name is relative to the debugger's current directory).
    pub file: String,
    /// The first address written.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub address: u64,
    /// Bytes written: the whole range, in address order.
    pub bytes: u64,
}

impl Render for Written {
    fn render(&self, out: &mut String) {
        out.push_str(&format!("Writing {:x} bytes\n", self.bytes));
    }
}

/// The range's length in bytes: from ADDR to END inclusive, or COUNT bytes.
fn length(e: &mut Engine, a: &Args<'_>, start: u64) -> Result<u64, CmdError> {
    let len = match (a.expr(e, "END")?, a.length(e)?) {
        (Some(_), Some(_)) => {
            return Err(CmdError::Usage(
                "give an end address or a length, not both".into(),
            ));
        }
        (Some(end), None) => {
            if end < start {
                return Err(CmdError::Usage("the end is before the start".into()));
            }
            (end - start).saturating_add(1)
        }
        (None, Some(n)) => n,
        (None, None) => {
            return Err(CmdError::Usage(
                "a range is needed: ADDR END, or ADDR L COUNT".into(),
            ));
        }
    };
    if len == 0 || len > MAX_WRITE {
        return Err(CmdError::Usage(format!(
            "a range of {len:#x} bytes is out of range (at most {MAX_WRITE:#x})"
        )));
    }
    Ok(len)
}

pub(crate) fn run(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<Written, CmdError> {
    let file = a
        .text("FILE")
        .ok_or_else(|| CmdError::Usage("a file name is needed".into()))?;
    let address = a
        .expr(e, "ADDR")?
        .ok_or_else(|| CmdError::Usage("an address is needed".into()))?;
    let len = length(e, a, address)?;
    let path = Path::new(file);
    let name = path
        .file_name()
        .ok_or_else(|| CmdError::Usage(format!("{file} names no file")))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let temp = dir.join(format!(
        ".{}.{}-{}.partial",
        name.to_string_lossy(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let io = |what: &str, p: &Path, err: std::io::Error| {
        CmdError::Failed(format!(
            "{what} {}: {err}; nothing was written",
            p.display()
        ))
    };
    let out = create_private(&temp).map_err(|err| io("cannot create", path, err))?;
    let r = fill(e, out, address, len, path).and_then(|out| {
        out.sync_all()
            .map_err(|err| io("cannot write", path, err))?;
        drop(out);
        std::fs::rename(&temp, path).map_err(|err| io("cannot rename to", path, err))
    });
    if let Err(err) = r {
        let _ = std::fs::remove_file(&temp);
        return Err(err);
    }
    // The rename itself reaches the disk with its directory.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(Written {
        file: file.to_string(),
        address,
        bytes: len,
    })
}

/// A new file only its owner may read or write.
fn create_private(p: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600);
    }
    o.open(p)
}

/// Reads the range into `out`; the first unreadable address fails it.
fn fill(
    e: &mut Engine,
    out: std::fs::File,
    address: u64,
    len: u64,
    path: &Path,
) -> Result<std::fs::File, CmdError> {
    let mut w = std::io::BufWriter::with_capacity(1 << 20, out);
    let mut failed: Option<CmdError> = None;
    e.kernel.mem.kread_range(address, len, |at, piece| {
        let r = match piece {
            Piece::Read(b) => w.write_all(b).map_err(|err| {
                CmdError::Failed(format!(
                    "cannot write {}: {err}; nothing was written",
                    path.display()
                ))
            }),
            // The budget's own message says what ran out.
            Piece::Unreadable {
                error: TargetError::OutOfTime,
                ..
            } => Err(CmdError::Model(ModelError::Target(TargetError::OutOfTime))),
            Piece::Unreadable { error, .. } => Err(CmdError::Failed(format!(
                "memory at {} cannot be read ({error}); nothing was written",
                addr(at)
            ))),
        };
        match r {
            Ok(()) => ControlFlow::Continue(()),
            Err(err) => {
                failed = Some(err);
                ControlFlow::Break(())
            }
        }
    });
    if let Some(err) = failed {
        return Err(err);
    }
    w.into_inner().map_err(|err| {
        CmdError::Failed(format!(
            "cannot write {}: {}; nothing was written",
            path.display(),
            err.error()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writemem_syntax_and_text() {
        let a = SYNTAX
            .parse(".writemem", r"c:\x.bin fffff805`5c400000 L?100000")
            .unwrap();
        assert_eq!(a.text("FILE"), Some(r"c:\x.bin"));
        assert_eq!(a.text("ADDR"), Some("fffff805`5c400000"));
        let a = SYNTAX.parse(".writemem", "nt.bin nt nt+0xfff").unwrap();
        assert_eq!(
            (a.text("FILE"), a.text("ADDR"), a.text("END")),
            (Some("nt.bin"), Some("nt"), Some("nt+0xfff"))
        );
        assert!(SYNTAX.parse(".writemem", "x.bin").is_err());
        assert_eq!(SYNTAX.usage(), "FILE ADDR [END] [L COUNT]");
        let w = Written {
            file: "x.bin".into(),
            address: 0xfffff805_5c400000,
            bytes: 0x10_0000,
        };
        let mut text = String::new();
        w.render(&mut text);
        assert_eq!(text, "Writing 100000 bytes\n");
        assert_eq!(
            serde_json::to_value(&w).unwrap(),
            serde_json::json!({"file": "x.bin", "address": "0xfffff8055c400000", "bytes": 1048576})
        );
    }
}
