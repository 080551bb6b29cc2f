//! Finding a module's symbols along a symbol path in WinDbg's syntax
//! (`_NT_SYMBOL_PATH`, `--symbols`): `srv*CACHE*URL;DIR;cache*DIR;...`.
//!
//! Each directory is searched for a Volatility 3 table (`<pdb>/<GUID>-<age>.json[.xz]`) and for
//! a PDB in a symbol-store layout (`<pdb>/<GUID><AGE>/<pdb>`). A server entry checks its cache
//! first and otherwise downloads `URL/<pdb>/<GUID><AGE>/<pdb>` into the cache, atomically (a
//! half-written file is never used), with a timeout and a clear message when offline. Tables
//! a caller adds ([`Tables`], e.g. a simulated target's own layouts) come next, and the
//! project's built-in tables are the last resort.

use std::fmt;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::table::{PdbId, TypeTable};
use crate::{SymError, builtin, isf, pdb};

/// One element of a symbol path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathEntry {
    /// A local directory (ISF tables and/or a symbol store).
    Dir(PathBuf),
    /// A symbol server and the cache it downloads into.
    Server {
        /// Where downloads go (and are looked for first).
        cache: PathBuf,
        /// `http(s)://…`.
        url: String,
    },
}

/// Tables a caller supplies beside the symbol path, found by PDB identity: layouts that are
/// in no file, such as the invented modules of a simulated target. The symbol layer knows none
/// itself; whoever runs such a target adds its tables with [`SymbolPath::with_tables`].
pub trait Tables: Send + Sync + fmt::Debug {
    /// What [`Found::source`] says for a table from here.
    fn source(&self) -> &str;
    /// The table for `id`, if this provider has it.
    fn table(&self, id: &PdbId) -> Option<TypeTable>;
}

/// A parsed symbol path.
#[derive(Debug, Clone)]
pub struct SymbolPath {
    /// Entries, searched in order.
    pub entries: Vec<PathEntry>,
    /// Longest wait for one download.
    pub timeout: Duration,
    /// Tables added by the caller, searched after the entries and before the built-in tables.
    pub tables: Vec<Arc<dyn Tables>>,
}

impl PartialEq for SymbolPath {
    fn eq(&self, other: &SymbolPath) -> bool {
        self.entries == other.entries
            && self.timeout == other.timeout
            && self.tables.len() == other.tables.len()
            && self
                .tables
                .iter()
                .zip(&other.tables)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

impl Eq for SymbolPath {}

/// Where a table came from.
#[derive(Debug, Clone)]
pub struct Found {
    /// The table.
    pub table: TypeTable,
    /// Its file (or `built-in`).
    pub source: String,
}

/// The default cache when `srv*URL` names none.
pub fn default_cache() -> PathBuf {
    if let Some(d) = std::env::var_os("KDNET_SYMBOL_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .or_else(|| std::env::var_os("LOCALAPPDATA"))
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("kdnet").join("symbols")
}

impl SymbolPath {
    /// Parses WinDbg's syntax. Empty elements are skipped.
    pub fn parse(text: &str) -> SymbolPath {
        let mut entries = Vec::new();
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let lower = part.to_ascii_lowercase();
            if lower.starts_with("srv*") || lower.starts_with("symsrv*") {
                let rest: Vec<&str> = part
                    .split_once('*')
                    .map(|x| x.1)
                    .unwrap_or("")
                    .split('*')
                    .collect();
                let (stores, url) = match rest
                    .iter()
                    .rposition(|s| s.starts_with("http://") || s.starts_with("https://"))
                {
                    Some(i) => (&rest[..i], Some(rest[i].trim_end_matches('/').to_string())),
                    None => (&rest[..], None),
                };
                let cache = stores
                    .iter()
                    .find(|s| !s.is_empty() && !s.eq_ignore_ascii_case("symsrv.dll"))
                    .map(PathBuf::from)
                    .unwrap_or_else(default_cache);
                // Extra downstream stores are searched as plain directories.
                for s in stores.iter().skip(1).filter(|s| !s.is_empty()) {
                    entries.push(PathEntry::Dir(PathBuf::from(s)));
                }
                match url {
                    Some(url) => entries.push(PathEntry::Server { cache, url }),
                    None => entries.push(PathEntry::Dir(cache)),
                }
            } else if lower.starts_with("cache*") {
                let d = &part[6..];
                entries.push(PathEntry::Dir(if d.is_empty() {
                    default_cache()
                } else {
                    PathBuf::from(d)
                }));
            } else {
                entries.push(PathEntry::Dir(PathBuf::from(part)));
            }
        }
        SymbolPath {
            entries,
            timeout: Duration::from_secs(60),
            tables: Vec::new(),
        }
    }

    /// The path in WinDbg's syntax (`srv*CACHE*URL;DIR`), as `.sympath` shows it.
    pub fn text(&self) -> String {
        let parts: Vec<String> = self
            .entries
            .iter()
            .map(|e| match e {
                PathEntry::Dir(d) => d.display().to_string(),
                PathEntry::Server { cache, url } => format!("srv*{}*{url}", cache.display()),
            })
            .collect();
        parts.join(";")
    }

    /// The path with `tables` searched after its entries (see [`Tables`]).
    pub fn with_tables(mut self, tables: Arc<dyn Tables>) -> SymbolPath {
        self.tables.push(tables);
        self
    }

    /// `--symbols` if given, then `_NT_SYMBOL_PATH`.
    pub fn from_args_and_env(arg: Option<&str>) -> SymbolPath {
        let mut text = arg.unwrap_or("").to_string();
        if let Ok(env) = std::env::var("_NT_SYMBOL_PATH") {
            text.push(';');
            text.push_str(&env);
        }
        SymbolPath::parse(&text)
    }

    /// Finds the table for `id`: along the path, then the caller's [`Tables`], then the
    /// built-in tables. `Ok(None)` when
    /// nothing has it; errors only for files that exist but are damaged or for a download that
    /// failed in a way worth reporting (they are also skipped over if a later entry has it).
    pub fn find(&self, id: &PdbId) -> Result<Option<Found>, SymError> {
        let mut first_error = None;
        for e in &self.entries {
            let r = match e {
                PathEntry::Dir(d) => find_in_dir(d, id),
                PathEntry::Server { cache, url } => match find_in_dir(cache, id) {
                    Ok(Some(f)) => Ok(Some(f)),
                    Ok(None) => download(cache, url, id, self.timeout),
                    Err(e) => Err(e),
                },
            };
            match r {
                Ok(Some(f)) => return Ok(Some(f)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!("{e}");
                    first_error.get_or_insert(e);
                }
            }
        }
        for t in &self.tables {
            if let Some(table) = t.table(id) {
                return Ok(Some(Found {
                    table,
                    source: t.source().to_string(),
                }));
            }
        }
        if let Some(t) = builtin::by_id(id) {
            return Ok(Some(Found {
                table: t,
                source: "built-in".into(),
            }));
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }
}

/// Looks in one directory: ISF tables, then a symbol store.
pub fn find_in_dir(dir: &Path, id: &PdbId) -> Result<Option<Found>, SymError> {
    let key = id.key();
    let isf_name = format!("{}-{}", id.guid, id.age);
    for sub in ["", "windows", "symbols", "symbols/windows"] {
        let base = dir.join(sub).join(&id.name);
        for ext in ["json.xz", "json"] {
            let p = base.join(format!("{isf_name}.{ext}"));
            if p.is_file() {
                let table = isf::load_file(&p)?;
                return Ok(Some(Found {
                    table,
                    source: p.display().to_string(),
                }));
            }
        }
    }
    let store = dir.join(&id.name).join(&key).join(&id.name);
    if store.is_file() {
        let table = pdb::load_file(&store)?;
        return Ok(Some(Found {
            table,
            source: store.display().to_string(),
        }));
    }
    // A lone PDB of that name whose identity matches.
    let flat = dir.join(&id.name);
    if flat.is_file()
        && let Ok(bytes) = std::fs::read(&flat)
        && pdb::identity(bytes, &id.name).is_ok_and(|got| got.guid == id.guid && got.age == id.age)
    {
        let table = pdb::load_file(&flat)?;
        return Ok(Some(Found {
            table,
            source: flat.display().to_string(),
        }));
    }
    Ok(None)
}

/// Downloads `URL/<pdb>/<KEY>/<pdb>` into the cache's store layout and loads it.
pub fn download(
    cache: &Path,
    url: &str,
    id: &PdbId,
    timeout: Duration,
) -> Result<Option<Found>, SymError> {
    Ok(
        fetch(cache, url, &id.name, &id.key(), timeout, pdb::load_file)?.map(|(table, path)| {
            Found {
                table,
                source: path.display().to_string(),
            }
        }),
    )
}

/// Downloads `URL/<name>/<key>/<name>` to `cache/<name>/<key>/<name>`: into a temporary file
/// first, checked by `check` (which also gives what the caller wants from it), then renamed, so
/// a half-written or wrong file never takes the final name. `Ok(None)` when the server has no
/// such file.
pub fn fetch<T>(
    cache: &Path,
    url: &str,
    name: &str,
    key: &str,
    timeout: Duration,
    check: impl Fn(&Path) -> Result<T, SymError>,
) -> Result<Option<(T, PathBuf)>, SymError> {
    if name.contains(['/', '\\']) || name.starts_with('.') || key.contains(['/', '\\']) {
        return Err(SymError::Io {
            path: name.to_string(),
            message: "not a plain file name".into(),
        });
    }
    let target_dir = cache.join(name).join(key);
    let target = target_dir.join(name);
    let full_url = format!("{url}/{name}/{key}/{name}");
    let io = |p: &Path, e: std::io::Error| SymError::Io {
        path: p.display().to_string(),
        message: e.to_string(),
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .timeout_connect(Some(timeout.min(Duration::from_secs(15))))
        .http_status_as_error(false)
        .build()
        .into();
    let resp = match agent
        .get(&full_url)
        .header("User-Agent", "Microsoft-Symbol-Server/10.0.0.0")
        .call()
    {
        Ok(r) => r,
        Err(e) => {
            return Err(SymError::Io {
                path: full_url,
                message: format!(
                    "cannot reach the symbol server ({e}); offline? Put the symbols in a local directory on the symbol path instead"
                ),
            });
        }
    };
    let status = resp.status().as_u16();
    if status == 404 {
        return Ok(None);
    }
    if status != 200 {
        return Err(SymError::Io {
            path: full_url,
            message: format!("the symbol server answered HTTP {status}"),
        });
    }
    let total = resp.body().content_length();
    std::fs::create_dir_all(&target_dir).map_err(|e| io(&target_dir, e))?;
    let tmp = target_dir.join(format!(".{name}.{}.partial", std::process::id()));
    let mut out = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
    let mut reader = resp
        .into_body()
        .into_with_config()
        .limit(pdb::MAX_PDB_BYTES)
        .reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut done: u64 = 0;
    let show = std::io::stderr().is_terminal() && total.is_none_or(|t| t > 1 << 20);
    let mut last = Instant::now();
    let result: std::io::Result<()> = (|| {
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])?;
            done += n as u64;
            if show && last.elapsed() >= Duration::from_millis(250) {
                last = Instant::now();
                let mut e = std::io::stderr().lock();
                let _ = match total {
                    Some(t) => write!(
                        e,
                        "\rdownloading {name}: {:.1} of {:.1} MB",
                        done as f64 / 1e6,
                        t as f64 / 1e6
                    ),
                    None => write!(e, "\rdownloading {name}: {:.1} MB", done as f64 / 1e6),
                };
            }
        }
        out.sync_all()
    })();
    if show {
        let _ = writeln!(
            std::io::stderr(),
            "\rdownloaded {name}: {:.1} MB            ",
            done as f64 / 1e6
        );
    }
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(SymError::Io {
            path: full_url,
            message: format!("download broke off after {done} bytes: {e}"),
        });
    }
    if total.is_some_and(|t| t != done) {
        let _ = std::fs::remove_file(&tmp);
        return Err(SymError::Io {
            path: full_url,
            message: format!("download ended at {done} of {} bytes", total.unwrap_or(0)),
        });
    }
    // Check what arrived before it takes the final name.
    let value = match check(&tmp) {
        Ok(t) => t,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, &target).map_err(|e| io(&target, e))?;
    Ok(Some((value, target)))
}

impl SymbolPath {
    /// Finds a module's image file (for modules whose image is not in memory, as in triage
    /// dumps) by the symbol-store key `<TimeDateStamp><SizeOfImage>`: `<dir>/<name>/<key>/<name>`
    /// or a flat `<dir>/<name>` in each directory, then downloads from the servers. `check`
    /// decides whether a candidate file is the right image.
    pub fn find_image(
        &self,
        name: &str,
        timestamp: u32,
        size_of_image: u32,
        check: &dyn Fn(&Path) -> bool,
    ) -> Option<PathBuf> {
        let key = format!("{timestamp:08X}{size_of_image:X}");
        for e in &self.entries {
            let dir = match e {
                PathEntry::Dir(d) => d,
                PathEntry::Server { cache, .. } => cache,
            };
            for c in [dir.join(name).join(&key).join(name), dir.join(name)] {
                if c.is_file() && check(&c) {
                    return Some(c);
                }
            }
        }
        for e in &self.entries {
            if let PathEntry::Server { cache, url } = e {
                let got = fetch(cache, url, name, &key, self.timeout, |p| {
                    if check(p) {
                        Ok(())
                    } else {
                        Err(SymError::Io {
                            path: p.display().to_string(),
                            message: "the server sent a different image".into(),
                        })
                    }
                });
                match got {
                    Ok(Some((_, p))) => return Some(p),
                    Ok(None) => {}
                    Err(err) => tracing::warn!("{err}"),
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_windbg_syntax() {
        let p = SymbolPath::parse(
            "srv*/tmp/sym*https://msdl.microsoft.com/download/symbols; /data/isf ;cache*/c;;srv*/only",
        );
        assert_eq!(
            p.entries,
            vec![
                PathEntry::Server {
                    cache: "/tmp/sym".into(),
                    url: "https://msdl.microsoft.com/download/symbols".into()
                },
                PathEntry::Dir("/data/isf".into()),
                PathEntry::Dir("/c".into()),
                PathEntry::Dir("/only".into()),
            ]
        );
        let p = SymbolPath::parse("SRV**http://localhost:1/x/");
        assert!(
            matches!(&p.entries[0], PathEntry::Server { url, .. } if url == "http://localhost:1/x")
        );
    }
}
