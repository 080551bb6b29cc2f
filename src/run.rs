//! `kdnet run --port P --key-file F -c "CMD; CMD"`: wait for a live target, break in, run the
//! commands, let it go on, exit. Ctrl-C, SIGTERM or SIGHUP while it holds the target stopped
//! let the target continue before the process exits.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kdnet_commands::engine::Engine;
use kdnet_live::{Link, Session, SessionError};
use kdnet_model::target::TargetError;

use crate::analysis::{self, Style};
use crate::connect::{self, ConnectArgs};
use crate::exit;
use crate::signals::{self, Ending};
use crate::watch::bundle;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Commands to run, separated by `;` (`!locks; !vm`); the script language works here too.
    #[arg(short = 'c', long = "command")]
    commands: Option<String>,
    /// A capture script (`.kds`) to run after the -c commands.
    #[arg(long)]
    script: Option<PathBuf>,
    /// Where `.snapshot` writes its dumps.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Write the bundle a watcher writes (report.txt, report.json, report.html, snapshot.dmp)
    /// into a new directory under DIR, from the -c commands and --script (without them: the
    /// built-in hang.kds, or bugcheck.kds after a bugcheck); prints the findings and its path.
    #[arg(long, value_name = "DIR")]
    bundle: Option<PathBuf>,
    /// Symbol path in WinDbg's syntax (`srv*CACHE*URL;DIR`); _NT_SYMBOL_PATH is added.
    #[arg(long)]
    symbols: Option<String>,
    /// One JSON object per line: the target, then each command's result.
    #[arg(long)]
    json: bool,
    /// Leave the target stopped afterwards instead of letting it continue.
    #[arg(long)]
    leave_stopped: bool,
    /// The longest the whole run may keep the target stopped for its commands, in seconds,
    /// from the break-in: past it the command under way stops with what it has, and the rest
    /// of the script is not run (the output says what was skipped).
    #[arg(long)]
    max_seconds: Option<f64>,
    /// When the target stops answering: how long to wait for it to come back, so that a target
    /// that was only frozen (a paused VM, a network outage) is not left stopped in its
    /// debugger (0s: exit at once).
    #[arg(long, default_value = "15s", value_parser = crate::duration::parse)]
    wait_return: Duration,
}

/// The -c line and the script file's text, in the order they run; Err is for the user.
pub fn work_from(
    commands: Option<&str>,
    script: Option<&PathBuf>,
) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    if let Some(c) = commands {
        out.push(("-c".to_string(), c.to_string()));
    }
    if let Some(f) = script {
        let text = std::fs::read_to_string(f)
            .map_err(|e| format!("cannot read the script {}: {e}", f.display()))?;
        if let Err(e) = kdnet_commands::script::parse(&text) {
            return Err(format!("{}: {e}", f.display()));
        }
        out.push((f.display().to_string(), text));
    }
    Ok(out)
}

pub async fn run(a: Args, verbose: bool) -> anyhow::Result<u8> {
    let work = match work_from(a.commands.as_deref(), a.script.as_ref()) {
        Ok(w) if !w.is_empty() || a.bundle.is_some() => w,
        Ok(_) => {
            eprintln!("kdnet: give the commands with -c or --script (or use `kdnet repl`)");
            return Ok(exit::BAD_ARGUMENTS);
        }
        Err(e) => {
            eprintln!("kdnet: {e}");
            return Ok(exit::BAD_ARGUMENTS);
        }
    };
    let budget = crate::open::budget(a.max_seconds)?;
    // From here a signal lets a target this run stopped continue before the process ends.
    let mut signals = Ending::catch().context("catching signals")?;
    let host = tokio::select! {
        r = connect::connect(&a.connect) => match r {
            Ok(h) => h,
            Err(code) => return Ok(code),
        },
        s = signals.next() => {
            eprintln!("kdnet: {} before a target connected", s.name());
            return Ok(s.exit_code());
        }
    };
    let stop = tokio::select! {
        r = host.break_in(Duration::from_secs(10)) => match r {
            Ok(s) => s,
            Err(e) => {
                eprintln!("kdnet: the target did not stop: {e}");
                return Ok(exit::NO_CONNECTION);
            }
        },
        s = signals.next() => {
            let code =
                signals::resume_before_exit(&host, s, &mut signals, a.leave_stopped, true).await;
            std::process::exit(i32::from(code));
        }
    };
    // The whole run's commands end by this instant (the target stopped at the break-in).
    let deadline = budget.map(|b| Instant::now() + b);
    let stop_started = Instant::now();
    eprintln!(
        "kdnet: stopped on processor {} of {}",
        stop.processor, stop.processors
    );
    let style = Style {
        json: a.json,
        verbose,
        echo: true,
    };
    let rt = tokio::runtime::Handle::current();
    let h = host.clone();
    let symbols = a.symbols.clone();
    let out = a.out.clone();
    let cancel = Arc::new(AtomicBool::new(false));
    let cancel_analysis = cancel.clone();
    let moving = Arc::new(AtomicBool::new(false));
    let moving_analysis = moving.clone();
    let job = a.bundle.clone().map(|dir| bundle_job(dir, &work, budget));
    let job_analysis = job.clone();
    let gathered: Arc<std::sync::Mutex<Option<bundle::Gathered>>> = Arc::default();
    let gathered_analysis = gathered.clone();
    let mut analysis =
        tokio::task::spawn_blocking(move || -> anyhow::Result<(u8, Option<String>)> {
            let mut e = match h.open(rt, crate::symbols::path(symbols.as_deref())) {
                Ok(k) => {
                    let mut e = Engine::new(k);
                    crate::recovery::attach(&mut e, &h, &moving_analysis);
                    e
                }
                Err(SessionError::Version(TargetError::Gone(why))) => {
                    return Ok((exit::NO_CONNECTION, Some(why)));
                }
                Err(e) => return Err(e.into()),
            };
            e.kernel.mem.set_cancel(Some(cancel_analysis));
            e.progress = crate::progress::terminal();
            e.deadline = deadline;
            if let Some(job) = job_analysis {
                // The watcher's capture, by hand: gathered now, written once the target runs.
                let stamp = crate::watch::utc_stamp(crate::watch::now_secs());
                let g = bundle::gather(&mut e, &job, &bundle::Lost::default(), &stamp)?;
                *gathered_analysis
                    .lock()
                    .map_err(|_| anyhow::anyhow!("the capture's lock was poisoned"))? = Some(g);
                return Ok((exit::OK, e.target_gone()));
            }
            analysis::banner(&mut e, style);
            let code = analysis::run_work(&mut e, &work, style, &out);
            Ok((code, e.target_gone()))
        });
    let (code, gone) = tokio::select! {
        r = &mut analysis => match r.context("the analysis thread failed").and_then(|x| x) {
            Ok(v) => v,
            Err(e) => {
                // The kernel could not be read or the bundle's directory could not be made:
                // the target this run stopped goes on all the same.
                if !a.leave_stopped {
                    match host.go().await {
                        Ok(()) => eprintln!("kdnet: the target continues"),
                        Err(e) => eprintln!("kdnet: could not let the target continue: {e}"),
                    }
                }
                return Err(e);
            }
        },
        s = signals.next() => {
            // The analysis stops at its next read; the target continues now (a `g` under way
            // has its breakpoints taken out first).
            cancel.store(true, Ordering::SeqCst);
            crate::recovery::let_motion_end(&moving, &mut signals).await;
            let code =
                signals::resume_before_exit(&host, s, &mut signals, a.leave_stopped, false).await;
            std::process::exit(i32::from(code));
        }
    };
    let code = if let Some(why) = &gone {
        eprintln!("kdnet: no answer from the target: {why}");
        if !a.leave_stopped {
            tokio::select! {
                () = let_go_when_back(&host, a.wait_return) => {}
                s = signals.next() => return Ok(s.exit_code()),
            }
        }
        exit::NO_CONNECTION
    } else {
        if !a.leave_stopped {
            match host.go().await {
                Ok(()) => eprintln!("kdnet: the target continues"),
                Err(e) => eprintln!("kdnet: could not let the target continue: {e}"),
            }
        } else {
            eprintln!("kdnet: the target stays stopped");
        }
        code
    };
    let stopped = stop_started.elapsed().as_secs_f64();
    let code = match (job, gathered.lock().ok().and_then(|mut g| g.take())) {
        (Some(job), Some(g)) => {
            let traffic = host.traffic();
            // How long the target was kept stopped (None: it stays stopped).
            let stopped = (!a.leave_stopped && gone.is_none()).then_some(stopped);
            let c = tokio::task::spawn_blocking(move || {
                bundle::write(g, &job, stopped, Some(&traffic))
            })
            .await
            .context("the bundle thread failed")??;
            if a.json {
                outln!(
                    "{}",
                    serde_json::json!({
                        "type": "bundle", "command": "", "result": {
                            "path": c.dir, "complete": c.complete,
                            "failed_steps": c.failed_steps, "findings": c.summary,
                            "round_trips": c.round_trips, "bytes": c.bytes,
                            "stopped_seconds": c.seconds,
                        },
                        "error": null, "complete": c.complete, "incomplete": [],
                        "cost": { "round_trips": c.round_trips, "bytes": c.bytes, "cache_hits": 0 },
                    })
                );
            } else {
                outln!("bundle: {}", c.dir.display());
                for f in &c.summary {
                    outln!("  - {f}");
                }
                outln!(
                    "  {}; {} round trips, {} bytes, the target stopped {:.2} s",
                    if c.complete {
                        "complete"
                    } else {
                        "INCOMPLETE (report.txt says why)"
                    },
                    c.round_trips,
                    c.bytes,
                    c.seconds
                );
            }
            let mine = if c.failed_steps > 0 {
                exit::FAILED
            } else if !c.complete {
                exit::INCOMPLETE
            } else {
                exit::OK
            };
            exit::worst(code, mine)
        }
        _ => code,
    };
    if verbose {
        eprintln!("kdnet: {}", host.traffic().summary());
    }
    Ok(code)
}

/// The capture `--bundle DIR` makes: the -c commands and the script as one capture script
/// (none: the built-in one), the run's budget as the stop budget.
fn bundle_job(dir: PathBuf, work: &[(String, String)], budget: Option<Duration>) -> bundle::Job {
    let script = (!work.is_empty()).then(|| {
        let origin: Vec<&str> = work.iter().map(|(o, _)| o.as_str()).collect();
        let text: Vec<&str> = work.iter().map(|(_, t)| t.as_str()).collect();
        (origin.join(" + "), text.join("\n"))
    });
    bundle::Job {
        name: "run".into(),
        tags: Vec::new(),
        out: dir,
        trigger: bundle::Trigger {
            kind: "manual".into(),
            detail: "kdnet run --bundle".into(),
            sample: None,
            hit: None,
        },
        script,
        started: Instant::now(),
        budget: budget.unwrap_or(Duration::from_secs(300)),
        command_budget: Duration::from_secs(120),
        continues: None,
    }
}

/// A target that stopped answering while this run held it stopped: waits up to `grace` for it
/// to be heard again and lets it continue, so a target that was only frozen is not left
/// stopped in its debugger; a new boot of it runs by itself.
async fn let_go_when_back(host: &Session, grace: Duration) {
    let mut w = host.watch();
    let back = tokio::time::timeout(grace, w.wait_for(|s| s.link == Link::Connected)).await;
    if !matches!(back, Ok(true)) {
        eprintln!(
            "kdnet: the target did not come back within {grace:?}; if it does, it may be stopped in its debugger"
        );
        return;
    }
    if !host.status().stopped {
        eprintln!("kdnet: the target is back and runs (a new boot)");
        return;
    }
    match host.go().await {
        Ok(()) => eprintln!("kdnet: the target answers again and continues"),
        Err(e) => eprintln!("kdnet: the target answers again but could not continue: {e}"),
    }
}
