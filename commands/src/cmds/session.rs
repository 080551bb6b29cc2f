//! The session's own commands, as WinDbg has them: `.bugcheck`, `.lastevent`, `.time`, `.cls`,
//! `.reload`, `.sympath`, `.symfix`, `.logopen`/`.logappend`/`.logclose`.

use std::io::Write as _;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::Serialize;

use crate::args::{Args, Kind, Param, Syntax};
use crate::engine::{CmdError, Engine, addr};
use crate::registry::Render;
use kdnet_symbols::path::SymbolPath;

/// The rest of the line, as written.
pub(crate) const REST: Syntax = Syntax::params(&[Param {
    name: "ARGS",
    kind: Kind::Rest,
    optional: true,
}]);

/// `.bugcheck`: the bugcheck code and its parameters.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Bugcheck {
    /// Whether the target has bugchecked.
    pub bugchecked: bool,
    /// The code (0 without a bugcheck).
    pub code: u32,
    /// The four parameters.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "[crate::hex::Hex; 4]")]
    pub parameters: [u64; 4],
}

pub(crate) fn bugcheck(e: &mut Engine, _v: &str, _a: &Args<'_>) -> Result<Bugcheck, CmdError> {
    let b = e.kernel.bugcheck()?;
    Ok(Bugcheck {
        bugchecked: b.is_some(),
        code: b.map_or(0, |b| b.0),
        parameters: b.map_or([0; 4], |b| b.1),
    })
}

impl Render for Bugcheck {
    fn render(&self, out: &mut String) {
        out.push_str(&format!("Bugcheck code {:08X}\n", self.code));
        let p: Vec<String> = self.parameters.iter().map(|p| addr(*p)).collect();
        out.push_str(&format!("Arguments {}\n", p.join(" ")));
        if !self.bugchecked {
            out.push_str("(the target has not bugchecked)\n");
        }
    }
}

/// `.lastevent`: why the target stopped.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct LastEvent {
    /// The event as WinDbg words it (null when the target does not say).
    pub event: Option<String>,
    /// The processor that reported it.
    pub processor: u32,
}

pub(crate) fn last_event(e: &mut Engine, _v: &str, _a: &Args<'_>) -> Result<LastEvent, CmdError> {
    let info = e.kernel.mem.target().info();
    let event = match info.last_event {
        Some(x) => Some(x),
        None => e.kernel.bugcheck()?.map(|(code, p)| {
            format!(
                "Bugcheck {code:08X} ({:x}, {:x}, {:x}, {:x}) on processor {}",
                p[0], p[1], p[2], p[3], info.current_processor
            )
        }),
    };
    Ok(LastEvent {
        event,
        processor: info.current_processor,
    })
}

impl Render for LastEvent {
    fn render(&self, out: &mut String) {
        match &self.event {
            Some(x) => out.push_str(&format!("Last event: {x}\n")),
            None => out.push_str("Last event: not known (the target does not report it)\n"),
        }
    }
}

/// `.time`: the target's clock and how long it has run.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Time {
    /// The target's system time, UTC, as ISO 8601 (`2026-12-02T05:05:17.123Z`).
    pub system_time: String,
    /// The target's time zone: minutes east of UTC.
    pub utc_offset_minutes: i64,
    /// Seconds since boot (its interrupt time).
    pub uptime_seconds: f64,
}

/// Uptime as WinDbg writes it: `0 days 4:12:00.000`.
pub(crate) fn uptime_text(seconds: f64) -> String {
    let ms = (seconds * 1000.0).round() as u64;
    let (s, ms) = (ms / 1000, ms % 1000);
    format!(
        "{} days {}:{:02}:{:02}.{ms:03}",
        s / 86_400,
        s / 3600 % 24,
        s / 60 % 60,
        s % 60
    )
}

pub(crate) fn time(e: &mut Engine, _v: &str, _a: &Args<'_>) -> Result<Time, CmdError> {
    let (system, interrupt, bias) = e.kernel.clocks()?;
    Ok(Time {
        system_time: crate::calendar::iso(i128::from(system)),
        utc_offset_minutes: -bias / 600_000_000,
        uptime_seconds: interrupt as f64 / 1e7,
    })
}

impl Render for Time {
    fn render(&self, out: &mut String) {
        let off = self.utc_offset_minutes;
        out.push_str(&format!(
            "Debug session time: {} (UTC {} {}:{:02})\n",
            self.system_time,
            if off < 0 { '-' } else { '+' },
            off.abs() / 60,
            off.abs() % 60
        ));
        out.push_str(&format!(
            "System Uptime: {}\n",
            uptime_text(self.uptime_seconds)
        ));
    }
}

/// `.cls`: the prompt clears its screen; elsewhere nothing happens.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Cleared {}

pub(crate) fn cls(_e: &mut Engine, _v: &str, _a: &Args<'_>) -> Result<Cleared, CmdError> {
    Ok(Cleared {})
}

impl Render for Cleared {
    fn render(&self, _out: &mut String) {}
}

/// `.reload [/f] [MODULE]`: the module list and symbols read again.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Reloaded {
    /// The module reloaded (null: all of them).
    pub module: Option<String>,
    /// How many modules are loaded.
    pub modules: usize,
    /// The modules whose symbols were loaded now (`/f`).
    pub loaded: Vec<String>,
    /// The modules `/f` found no symbols for, each with why (`name: why`).
    pub without_symbols: Vec<String>,
    /// Where nt's symbols came from, or why there are none.
    pub kernel_symbols: String,
}

pub(crate) fn reload(e: &mut Engine, _v: &str, a: &Args<'_>) -> Result<Reloaded, CmdError> {
    let mut force = false;
    let mut module = None;
    for w in a.text("ARGS").unwrap_or("").split_whitespace() {
        match w {
            "/f" | "-f" => force = true,
            "/user" => {
                return Err(CmdError::Usage(
                    ".reload /user: a kernel target's loader list has no user modules".into(),
                ));
            }
            w if w.starts_with('/') => {
                return Err(CmdError::Usage(format!(
                    ".reload: unknown option {w} (/f, or a module name)"
                )));
            }
            // `.reload nt.sys=fffff805…,…` names a module with its place; the name is enough.
            w => module = Some(w.split('=').next().unwrap_or(w).to_string()),
        }
    }
    let kdnet_model::nt::Reloaded { loaded, missing } =
        e.kernel.reload(module.as_deref(), force)?;
    let modules = e.kernel.modules()?.len();
    Ok(Reloaded {
        module,
        modules,
        loaded,
        without_symbols: missing
            .into_iter()
            .map(|(m, why)| format!("{m}: {why}"))
            .collect(),
        kernel_symbols: e.kernel.nt_source.clone(),
    })
}

impl Render for Reloaded {
    fn render(&self, out: &mut String) {
        out.push_str("Loading Kernel Symbols\n");
        out.push_str(&format!(
            "{} modules; nt: {}\n",
            self.modules, self.kernel_symbols
        ));
        if !self.loaded.is_empty() {
            out.push_str(&format!("Symbols loaded now: {}\n", self.loaded.join(" ")));
        }
        for m in &self.without_symbols {
            out.push_str(&format!("*** ERROR: no symbols for {m}\n"));
        }
    }
}

/// `.sympath`, `.sympath+`, `.symfix`: the symbol path.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct SymPath {
    /// The symbol path, in WinDbg's syntax.
    pub path: String,
    /// Whether it changed (and the symbols were looked for again).
    pub changed: bool,
    /// Where nt's symbols came from, or why there are none.
    pub kernel_symbols: String,
}

/// Microsoft's public symbol server.
const MS_SYMBOLS: &str = "https://msdl.microsoft.com/download/symbols";

fn set_path(e: &mut Engine, mut path: SymbolPath) -> Result<(), CmdError> {
    // Tables the front end added (the simulator's) stay.
    path.tables = e.kernel.path.tables.clone();
    path.timeout = e.kernel.path.timeout;
    e.kernel.path = path;
    e.kernel.reload(None, false)?;
    Ok(())
}

pub(crate) fn sympath(e: &mut Engine, verb: &str, a: &Args<'_>) -> Result<SymPath, CmdError> {
    let text = a.text("ARGS").unwrap_or("").trim();
    let (add, text) = match text.strip_prefix('+') {
        Some(rest) => (true, rest.trim()),
        None => (verb.ends_with('+'), text),
    };
    let changed = match (verb, text.is_empty()) {
        (".symfix" | ".symfix+", _) => {
            let cache = if text.is_empty() {
                kdnet_symbols::path::default_cache().display().to_string()
            } else {
                text.to_string()
            };
            let server = format!("srv*{cache}*{MS_SYMBOLS}");
            let new = if verb.ends_with('+') && !e.kernel.path.entries.is_empty() {
                format!("{};{server}", e.kernel.path.text())
            } else {
                server
            };
            set_path(e, SymbolPath::parse(&new))?;
            true
        }
        (_, true) => false,
        (_, false) => {
            let new = if add && !e.kernel.path.entries.is_empty() {
                format!("{};{text}", e.kernel.path.text())
            } else {
                text.to_string()
            };
            set_path(e, SymbolPath::parse(&new))?;
            true
        }
    };
    Ok(SymPath {
        path: e.kernel.path.text(),
        changed,
        kernel_symbols: e.kernel.nt_source.clone(),
    })
}

impl Render for SymPath {
    fn render(&self, out: &mut String) {
        out.push_str(&format!("Symbol search path is: {}\n", self.path));
        if self.changed {
            out.push_str(&format!("Kernel symbols: {}\n", self.kernel_symbols));
        }
    }
}

/// `.logopen FILE`, `.logappend FILE`, `.logclose`: the session log.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Log {
    /// The log file now open (null: none).
    pub file: Option<String>,
    /// The file closed (null: none was open).
    pub closed: Option<String>,
    /// Whether it was appended to (`.logappend`) rather than started anew.
    pub appended: bool,
}

/// An open session log: every command and its output from here on, as the prompt shows them.
pub struct SessionLog {
    path: PathBuf,
    file: std::fs::File,
}

impl SessionLog {
    /// Appends text; why it could not, if it could not.
    pub fn write(&mut self, text: &str) -> Result<(), String> {
        self.file
            .write_all(text.as_bytes())
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }
}

fn open_log(path: &str, append: bool) -> Result<SessionLog, CmdError> {
    let mut o = std::fs::OpenOptions::new();
    o.create(true).write(true);
    if append {
        o.append(true);
    } else {
        o.truncate(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // It holds what the target's memory showed.
        o.mode(0o600);
    }
    let file = o
        .open(path)
        .map_err(|x| CmdError::Usage(format!("cannot open log file {path}: {x}")))?;
    Ok(SessionLog {
        path: PathBuf::from(path),
        file,
    })
}

pub(crate) fn log(e: &mut Engine, verb: &str, a: &Args<'_>) -> Result<Log, CmdError> {
    let closed = e.log.take().map(|l| l.path.display().to_string());
    if verb == ".logclose" {
        return Ok(Log {
            file: None,
            closed,
            appended: false,
        });
    }
    let path = a
        .text("ARGS")
        .map(|p| p.trim().trim_matches('"'))
        .filter(|p| !p.is_empty())
        .ok_or_else(|| CmdError::Usage(format!("{verb} needs a file name")))?;
    let append = verb == ".logappend";
    e.log = Some(open_log(path, append)?);
    Ok(Log {
        file: Some(path.to_string()),
        closed,
        appended: append,
    })
}

impl Render for Log {
    fn render(&self, out: &mut String) {
        if let Some(c) = &self.closed {
            out.push_str(&format!("Closing open log file {c}\n"));
        }
        match &self.file {
            Some(f) => out.push_str(&format!("Opened log file '{f}'\n")),
            None if self.closed.is_none() => out.push_str("No log file open\n"),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_as_windbg_writes_them() {
        assert_eq!(
            uptime_text(4.0 * 3600.0 + 12.0 * 60.0),
            "0 days 4:12:00.000"
        );
        assert_eq!(uptime_text(90061.5), "1 days 1:01:01.500");
        // 2021-01-01T00:00:00Z as a FILETIME.
        assert_eq!(
            crate::calendar::unix_of(132_539_328_000_000_000),
            (1_609_459_200, 0)
        );
    }
}
