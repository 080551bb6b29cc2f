//! `kdnet decode`: print every KDNET datagram of a capture.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use kdnet::capture;
use kdnet::wire::Key;

use crate::exit;

pub fn run(file: &Path, key: &str, json: bool) -> anyhow::Result<u8> {
    let key = match Key::parse(key) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("kdnet decode: bad --key: {e}");
            return Ok(exit::BAD_ARGUMENTS);
        }
    };
    let udp = capture::read_file(file).with_context(|| format!("reading {}", file.display()))?;
    let (records, summary) = capture::decode_session(&udp, &key);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let written: std::io::Result<()> = (|| {
        for r in &records {
            if json {
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
    Ok(exit::OK)
}
