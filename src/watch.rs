//! `kdnet watch`: wait on a target, notice when it stops by itself (a bugcheck, an exception),
//! capture what matters into a bundle while it is stopped, and let it go on.
//!
//! A bundle is a directory `OUT/NAME-YYYYMMDDTHHMMSSZ-REASON/` holding `report.txt` (the capture
//! script's output as at the prompt), `report.json` (the same as JSON: one object per step) and
//! `snapshot.dmp` (every page the capture read). It is written under a temporary name and renamed
//! when complete, so a bundle that exists is whole.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use kdnet::api::status;
use kdnet::host::{Host, Phase};
use kdnet_commands::script::{self, Runner};
use serde_json::{Value, json};

use crate::analysis::{self, Style};
use crate::connect::{self, ConnectArgs};
use crate::exit;

/// The capture scripts built into the binary.
const HANG_SCRIPT: &str = include_str!("../scripts/hang.kds");
const BUGCHECK_SCRIPT: &str = include_str!("../scripts/bugcheck.kds");

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Where bundles go.
    #[arg(long, default_value = "kdnet-captures")]
    out: PathBuf,
    /// The capture script (default: the built-in bugcheck.kds after a bugcheck, hang.kds
    /// otherwise).
    #[arg(long)]
    script: Option<PathBuf>,
    /// Exit after this many captures.
    #[arg(long)]
    max_captures: Option<u32>,
    /// Append each state change as a JSON line to this file.
    #[arg(long)]
    events: Option<PathBuf>,
    /// Symbol path in WinDbg's syntax (`srv*CACHE*URL;DIR`); _NT_SYMBOL_PATH is added.
    #[arg(long)]
    symbols: Option<String>,
    /// The longest any one capture command may run, in seconds.
    #[arg(long, default_value_t = 60.0)]
    max_seconds: f64,
    /// Leave the target stopped after a capture instead of letting it go on.
    #[arg(long)]
    leave_stopped: bool,
    /// The target's name in events and bundle names.
    #[arg(long, default_value = "target")]
    name: String,
}

/// Seconds since 1970 as `YYYYMMDDTHHMMSSZ`.
pub fn utc_stamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Prints state changes and appends them to the events file.
struct Events {
    name: String,
    file: Option<std::fs::File>,
    last: String,
}

impl Events {
    fn state(&mut self, state: &str, detail: &str) {
        if state == self.last && detail.is_empty() {
            return;
        }
        self.last = state.to_string();
        eprintln!(
            "kdnet watch: {}: {state}{}{detail}",
            self.name,
            if detail.is_empty() { "" } else { ": " }
        );
        if let Some(f) = &mut self.file {
            let line = json!({ "time": now_secs(), "target": self.name, "state": state, "detail": detail });
            if let Err(e) = writeln!(f, "{line}") {
                eprintln!("kdnet watch: cannot write the events file: {e}");
            }
        }
    }
}

/// What one capture produced.
struct Captured {
    dir: PathBuf,
    failed_steps: usize,
}

/// Runs the capture on the stopped target and writes the bundle.
fn capture(
    host: Host,
    rt: tokio::runtime::Handle,
    a: &CaptureSettings,
    stamp: &str,
) -> anyhow::Result<Captured> {
    let mut e = analysis::open_live(host, rt, a.symbols.as_deref())?;
    e.budget = Some(a.budget);
    let bugcheck = e.kernel.bugcheck().ok().flatten();
    let reason = match bugcheck {
        Some((code, _)) => format!("bugcheck-{code:x}"),
        None => "stopped".to_string(),
    };
    let text = match &a.script {
        Some(t) => t.clone(),
        None if bugcheck.is_some() => BUGCHECK_SCRIPT.to_string(),
        None => HANG_SCRIPT.to_string(),
    };
    let stmts = script::parse(&text).map_err(|e| anyhow::anyhow!("the capture script: {e}"))?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let final_dir = a.out.join(format!("{}-{stamp}-{reason}", a.name));
    let tmp = a.out.join(format!(".partial-{}-{stamp}", a.name));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let text_style = Style {
        json: false,
        verbose: false,
        echo: true,
    };
    let mut report = String::new();
    let mut steps: Vec<Value> = Vec::new();
    let mut failed_steps = 0;
    {
        let mut runner = Runner::new(&mut e, tmp.clone());
        runner.run(&stmts, &mut |ev| {
            report.push_str(&analysis::format_event(&ev, text_style));
            let v = analysis::event_json(&ev);
            if v.get("error").is_some_and(|e| !e.is_null()) {
                failed_steps += 1;
            }
            steps.push(v);
        });
        // Everything read, whatever the script asked for.
        match runner.snapshot("snapshot") {
            Ok(_) => {}
            Err(err) => report.push_str(&format!("error: the snapshot: {err}\n")),
        }
    }
    let info = json!({
        "schema": 1,
        "target": a.name,
        "time": stamp,
        "reason": reason,
        "build": e.kernel.build,
        "kernel_base": e.kernel.base,
        "bugcheck": bugcheck.map(|(c, p)| json!({ "code": c, "parameters": p })),
        "steps": steps,
    });
    std::fs::write(tmp.join("report.txt"), report).context("writing report.txt")?;
    std::fs::write(tmp.join("report.json"), format!("{info:#}\n"))
        .context("writing report.json")?;
    std::fs::rename(&tmp, &final_dir)
        .with_context(|| format!("moving the bundle to {}", final_dir.display()))?;
    Ok(Captured {
        dir: final_dir,
        failed_steps,
    })
}

#[derive(Clone)]
struct CaptureSettings {
    out: PathBuf,
    name: String,
    script: Option<String>,
    symbols: Option<String>,
    budget: Duration,
}

/// `kdnet watch`.
pub async fn run(a: Args) -> anyhow::Result<u8> {
    let script = match &a.script {
        Some(f) => {
            let t = std::fs::read_to_string(f)
                .with_context(|| format!("reading the script {}", f.display()));
            match t.map(|t| (script::parse(&t).map(|_| ()), t)) {
                Ok((Ok(()), t)) => Some(t),
                Ok((Err(e), _)) => {
                    eprintln!("kdnet: {}: {e}", f.display());
                    return Ok(exit::BAD_ARGUMENTS);
                }
                Err(e) => {
                    eprintln!("kdnet: {e:#}");
                    return Ok(exit::BAD_ARGUMENTS);
                }
            }
        }
        None => None,
    };
    if !(a.max_seconds.is_finite() && a.max_seconds > 0.0) {
        eprintln!("kdnet: --max-seconds must be a positive number of seconds");
        return Ok(exit::BAD_ARGUMENTS);
    }
    let file = match &a.events {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening the events file {}", p.display()))?,
        ),
        None => None,
    };
    let mut events = Events {
        name: a.name.clone(),
        file,
        last: String::new(),
    };
    let host = match connect::bind(&a.connect).await {
        Ok(h) => h,
        Err(code) => return Ok(code),
    };
    events.state(
        "offline",
        &format!("listening on UDP {}", host.local_addr()),
    );
    let settings = CaptureSettings {
        out: a.out.clone(),
        name: a.name.clone(),
        script,
        symbols: a.symbols.clone(),
        budget: Duration::from_secs_f64(a.max_seconds.min(1e6)),
    };
    let mut state_rx = host.watch_state();
    let mut captures = 0u32;
    let mut connected = false;
    loop {
        // The link's phase: nothing heard, offers that do not authenticate, connected.
        let (phase, stopped, peer) = {
            let s = state_rx.borrow_and_update();
            (s.phase, s.run == kdnet::host::RunState::Stopped, s.target)
        };
        if phase == Phase::Connected && !connected {
            connected = true;
            events.state(
                "connected",
                &peer.map_or_else(String::new, |p| p.to_string()),
            );
        }
        match phase {
            Phase::Waiting => events.state("offline", ""),
            Phase::WrongKey => events.state("wrong-key", "offers arrive but do not authenticate"),
            Phase::Connected if !stopped => events.state("running", ""),
            Phase::Connected => {}
        }
        if phase != Phase::Connected {
            connected = false;
        }
        if phase == Phase::Connected && stopped {
            events.state("stopped", "the target stopped by itself");
            events.state("capturing", "");
            let stamp = utc_stamp(now_secs());
            let h = host.clone();
            let rt = tokio::runtime::Handle::current();
            let s = settings.clone();
            let result = tokio::task::spawn_blocking(move || capture(h, rt, &s, &stamp))
                .await
                .context("the capture thread failed")?;
            match result {
                Ok(c) => {
                    captures += 1;
                    events.state(
                        "captured",
                        &format!(
                            "{}{}",
                            c.dir.display(),
                            if c.failed_steps > 0 {
                                format!(" ({} steps failed)", c.failed_steps)
                            } else {
                                String::new()
                            }
                        ),
                    );
                }
                Err(e) => events.state("capture-failed", &format!("{e:#}")),
            }
            if a.leave_stopped {
                events.state("stopped", "left stopped (--leave-stopped)");
                return Ok(exit::OK);
            }
            events.state("resuming", "");
            if let Err(e) = host.resume(status::DBG_CONTINUE).await {
                events.state("resume-failed", &e.to_string());
            }
            if a.max_captures.is_some_and(|m| captures >= m) {
                return Ok(exit::OK);
            }
            continue;
        }
        // Wait for the next change of the link.
        if state_rx.changed().await.is_err() {
            return Ok(exit::FAILED);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_utc_calendar_times() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
        assert_eq!(utc_stamp(1_795_305_599), "20261121T235959Z");
    }

    #[test]
    fn the_built_in_scripts_parse() {
        assert!(script::parse(HANG_SCRIPT).is_ok());
        assert!(script::parse(BUGCHECK_SCRIPT).is_ok());
    }
}
