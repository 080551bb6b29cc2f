//! `kdnet run --port P --key-file F -c "CMD; CMD"`: wait for a live target, break in, run the
//! commands, let it go on, exit.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use kdnet_commands::live::SessionError;
use kdnet_commands::target::TargetError;

use crate::analysis::{self, Style};
use crate::connect::{self, ConnectArgs};
use crate::exit;

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
    /// Symbol path in WinDbg's syntax (`srv*CACHE*URL;DIR`); _NT_SYMBOL_PATH is added.
    #[arg(long)]
    symbols: Option<String>,
    /// One JSON object per line: the target, then each command's result.
    #[arg(long)]
    json: bool,
    /// Leave the target stopped afterwards instead of letting it continue.
    #[arg(long)]
    leave_stopped: bool,
    /// The longest any one command may run, in seconds (it then stops with what it has).
    #[arg(long)]
    max_seconds: Option<f64>,
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
        Ok(w) if !w.is_empty() => w,
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
    let host = match connect::connect(&a.connect).await {
        Ok(h) => h,
        Err(code) => return Ok(code),
    };
    let stop = match host.break_in(Duration::from_secs(10)).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kdnet: the target did not stop: {e}");
            return Ok(exit::NO_CONNECTION);
        }
    };
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
    let result = tokio::task::spawn_blocking(move || -> anyhow::Result<(u8, Option<String>)> {
        let mut e = match h.open(rt, symbols.as_deref()) {
            Ok(e) => e,
            Err(SessionError::Version(TargetError::Gone(why))) => {
                return Ok((exit::NO_CONNECTION, Some(why)));
            }
            Err(e) => return Err(e.into()),
        };
        e.budget = budget;
        analysis::banner(&mut e, style);
        let code = analysis::run_work(&mut e, &work, style, &out);
        Ok((code, e.target_gone()))
    })
    .await
    .context("the analysis thread failed")?;
    let (code, gone) = result?;
    if let Some(why) = gone {
        // Nothing to let go on, and asking would only wait again.
        eprintln!("kdnet: no answer from the target: {why}");
        return Ok(exit::NO_CONNECTION);
    }
    if !a.leave_stopped {
        match host.go().await {
            Ok(()) => eprintln!("kdnet: the target continues"),
            Err(e) => eprintln!("kdnet: could not let the target continue: {e}"),
        }
    } else {
        eprintln!("kdnet: the target stays stopped");
    }
    if verbose {
        eprintln!("kdnet: {}", host.traffic().summary());
    }
    Ok(code)
}
