//! The symbol-server path against a local HTTP server started here: a download lands in the
//! cache atomically and is found there the next time without the server; a missing file is not
//! an error; a transfer cut short leaves nothing under the final name; an unreachable server is
//! reported clearly.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kdnet_symbols::PdbId;
use kdnet_symbols::path::{PathEntry, SymbolPath};

fn shared() -> Option<PathBuf> {
    kdnet_testkit::shared("pdbs")
}

/// Serves `body` for `path`; `truncate` sends a Content-Length larger than the body.
fn serve(path: String, body: Vec<u8>, truncate: bool) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(8) {
            let Ok(mut s) = stream else { continue };
            let mut line = String::new();
            let mut r = BufReader::new(s.try_clone().unwrap());
            r.read_line(&mut line).unwrap_or(0);
            loop {
                let mut l = String::new();
                if r.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                    break;
                }
            }
            h.fetch_add(1, Ordering::SeqCst);
            let wanted = line.split_whitespace().nth(1).unwrap_or("").to_string();
            if wanted == path {
                let len = if truncate {
                    body.len() + 1000
                } else {
                    body.len()
                };
                let half = if truncate {
                    &body[..body.len() / 2]
                } else {
                    &body[..]
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                );
                let _ = s.write_all(half);
            } else {
                let _ = write!(
                    s,
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        }
    });
    (format!("http://{addr}/symbols"), hits)
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kdnet-sym-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn download_once_then_from_cache() {
    let Some(dir) = shared() else { return };
    let bytes = std::fs::read(dir.join("pdbs/amdppm.pdb")).unwrap();
    let id = kdnet_symbols::pdb::identity(bytes.clone(), "amdppm.pdb").unwrap();
    assert_eq!(id.guid, "1C19FDDB27BB3399D9B45973EFEAFCF3");
    let (url, hits) = serve(
        format!("/symbols/amdppm.pdb/{}/amdppm.pdb", id.key()),
        bytes,
        false,
    );
    let cache = temp("cache");
    let path = SymbolPath::parse(&format!("srv*{}*{url}", cache.display()));
    let found = path.find(&id).unwrap().unwrap();
    assert!(
        found
            .source
            .ends_with(&format!("amdppm.pdb/{}/amdppm.pdb", id.key())),
        "{}",
        found.source
    );
    assert!(found.table.symbol_names().count() > 100);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // No partial files remain; the second lookup is served from the cache.
    let entries: Vec<_> = std::fs::read_dir(cache.join("amdppm.pdb").join(id.key()))
        .unwrap()
        .collect();
    assert_eq!(entries.len(), 1);
    let again = SymbolPath::parse(&format!(
        "srv*{}*http://127.0.0.1:9/nothing",
        cache.display()
    ));
    assert!(again.find(&id).unwrap().is_some());
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn missing_truncated_and_offline() {
    let Some(dir) = shared() else { return };
    let bytes = std::fs::read(dir.join("pdbs/amdppm.pdb")).unwrap();
    let id = kdnet_symbols::pdb::identity(bytes.clone(), "amdppm.pdb").unwrap();
    // 404: not found, not an error.
    let (url, _) = serve("/elsewhere".into(), vec![], false);
    let cache = temp("missing");
    let p = SymbolPath::parse(&format!("srv*{}*{url}", cache.display()));
    assert!(p.find(&id).unwrap().is_none());
    // A transfer cut short: an error, and nothing under the final name.
    let (url, _) = serve(
        format!("/symbols/amdppm.pdb/{}/amdppm.pdb", id.key()),
        bytes,
        true,
    );
    let cache = temp("cut");
    let p = SymbolPath::parse(&format!("srv*{}*{url}", cache.display()));
    let err = p.find(&id).unwrap_err().to_string();
    assert!(err.contains("bytes"), "{err}");
    let d = cache.join("amdppm.pdb").join(id.key());
    let left: Vec<_> = std::fs::read_dir(&d)
        .map(|r| r.collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    // Nobody listening: a clear message.
    let mut p = SymbolPath::parse(&format!(
        "srv*{}*http://127.0.0.1:9/symbols",
        temp("off").display()
    ));
    p.timeout = Duration::from_secs(3);
    let err = p.find(&id).unwrap_err().to_string();
    assert!(
        err.contains("cannot reach the symbol server") && err.contains("offline"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn local_store_and_isf_directories() {
    let Some(dir) = shared() else { return };
    // The shared directory's ISF tables are found by GUID and age.
    let id = PdbId {
        guid: "A1E1C9A90091DA9805D0EBA0470BEC85".into(),
        age: 1,
        name: "ntkrnlmp.pdb".into(),
    };
    let p = SymbolPath::parse(&dir.join("symbols").display().to_string());
    let f = p.find(&id).unwrap().unwrap();
    assert!(f.table.symbol("KiBugCheckData").is_some());
    // A symbol-store layout for a PDB.
    let store = temp("store");
    let bytes = std::fs::read(dir.join("pdbs/amdppm.pdb")).unwrap();
    let amd = kdnet_symbols::pdb::identity(bytes.clone(), "amdppm.pdb").unwrap();
    let at = store.join("amdppm.pdb").join(amd.key());
    std::fs::create_dir_all(&at).unwrap();
    std::fs::write(at.join("amdppm.pdb"), &bytes).unwrap();
    let p = SymbolPath::parse(&format!(
        "{};{}",
        dir.join("symbols").display(),
        store.display()
    ));
    assert!(p.find(&amd).unwrap().is_some());
    // The built-in tables answer last; an unknown identity is simply not found.
    let demo = PdbId {
        guid: kdnet_symbols::builtin::NT_DEMO_GUID.into(),
        age: 1,
        name: "ntkrnlmp.pdb".into(),
    };
    assert_eq!(
        SymbolPath::parse("").find(&demo).unwrap().unwrap().source,
        "built-in"
    );
    let unknown = PdbId {
        guid: "00".repeat(16),
        age: 9,
        name: "nope.pdb".into(),
    };
    assert!(
        SymbolPath::parse(&store.display().to_string())
            .find(&unknown)
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        SymbolPath::parse("").entries.first(),
        None | Some(PathEntry::Dir(_))
    ));
    let _ = std::fs::remove_dir_all(&store);
}
