//! `kdnet decode`: print every KDNET datagram of a capture. A capture that is damaged or cut
//! short part-way still has every datagram before the damage printed; then the error, and the
//! exit code says it failed.

use std::io::{Read as _, Write};
use std::path::{Path, PathBuf};

use kdnet::capture::{self, CaptureError, UdpDatagram};

use crate::connect::KeyArgs;
use crate::exit;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The capture file.
    file: PathBuf,
    #[command(flatten)]
    keys: KeyArgs,
    /// One JSON object per KDNET datagram instead of text.
    #[arg(long)]
    json: bool,
}

/// The datagrams of the capture at `path` up to any damage, and the damage.
fn read(path: &Path) -> (Vec<UdpDatagram>, Option<CaptureError>) {
    let raw = match std::fs::read(path) {
        Ok(r) => r,
        Err(source) => {
            let e = CaptureError::Io {
                path: path.display().to_string(),
                source,
            };
            return (Vec::new(), Some(e));
        }
    };
    let (data, gzip_error) = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        let mut dec =
            flate2::read::MultiGzDecoder::new(&raw[..]).take(capture::MAX_CAPTURE_BYTES as u64);
        match dec.read_to_end(&mut out) {
            Ok(_) => (out, None),
            Err(source) => {
                let decompressed = out.len();
                (
                    out,
                    Some(CaptureError::Gzip {
                        decompressed,
                        source,
                    }),
                )
            }
        }
    } else {
        (raw, None)
    };
    match capture::parse(&data) {
        Ok(u) => (u, gzip_error),
        Err(e) => {
            // A damaged structure: what lies before it is whole, read that.
            let mut end = match &e {
                CaptureError::Damaged { offset, .. } => *offset,
                _ => return (Vec::new(), gzip_error.or(Some(e))),
            };
            let first = gzip_error.unwrap_or(e);
            loop {
                match capture::parse(&data[..end]) {
                    Ok(u) => return (u, Some(first)),
                    Err(CaptureError::Damaged { offset, .. }) if offset < end => end = offset,
                    Err(_) => return (Vec::new(), Some(first)),
                }
            }
        }
    }
}

pub fn run(a: Args) -> anyhow::Result<u8> {
    let key = match a.keys.resolve(None) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("kdnet decode: {e}");
            return Ok(exit::BAD_ARGUMENTS);
        }
    };
    let (udp, damage) = read(&a.file);
    let (records, summary) = capture::decode_session(&udp, &key);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let written: std::io::Result<()> = (|| {
        for r in &records {
            if a.json {
                serde_json::to_writer(&mut out, r)?;
                writeln!(out)?;
            } else {
                writeln!(out, "{}", r.line())?;
            }
        }
        out.flush()
    })();
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(exit::OK),
        other => other?,
    }
    eprintln!(
        "{} KDNET datagrams ({} UDP), {} authenticated",
        summary.kdnet, summary.udp, summary.authenticated
    );
    if let Some(h) = summary.hint() {
        eprintln!("hint: {h}");
    }
    if let Some(e) = damage {
        eprintln!(
            "kdnet decode: reading {}: {e}{}",
            a.file.display(),
            if udp.is_empty() {
                String::new()
            } else {
                format!(
                    " (the {} UDP datagrams before it are decoded above)",
                    udp.len()
                )
            }
        );
        return Ok(exit::FAILED);
    }
    Ok(exit::OK)
}
