//! `kdnet open DUMP -c "CMD; CMD"`: commands on a crash dump.

use std::path::PathBuf;

use anyhow::Context as _;
use kdnet_commands::engine::Engine;
use kdnet_model::dump::DumpFile;
use kdnet_model::nt::Kernel;

use crate::analysis::{self, Style};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The dump file (PAGEDU64: full, kernel, bitmap or triage).
    file: PathBuf,
    /// Commands to run, separated by `;` (`lm; k; dq @rsp`); without -c or --script, a prompt.
    #[arg(short = 'c', long = "command")]
    commands: Option<String>,
    /// A script (`.kds`) to run after the -c commands.
    #[arg(long)]
    script: Option<PathBuf>,
    /// Symbol path in WinDbg's syntax (`srv*CACHE*URL;DIR`); _NT_SYMBOL_PATH is added.
    #[arg(long)]
    symbols: Option<String>,
    /// One JSON object per line: the target, then each command's result.
    #[arg(long)]
    json: bool,
    /// The longest the whole run may take, in seconds (at a prompt: each line): past it the
    /// command under way stops with what it has and the rest is not run (the output says what
    /// was skipped).
    #[arg(long)]
    max_seconds: Option<f64>,
    #[command(flatten)]
    prompt: crate::repl::PromptArgs,
}

/// `--max-seconds` as a duration.
pub fn budget(s: Option<f64>) -> anyhow::Result<Option<std::time::Duration>> {
    match s {
        None => Ok(None),
        Some(v) if v.is_finite() && v > 0.0 && v < 1e7 => {
            Ok(Some(std::time::Duration::from_secs_f64(v)))
        }
        Some(v) => anyhow::bail!("--max-seconds {v} is not a number of seconds"),
    }
}

pub async fn run(a: Args, verbose: bool) -> anyhow::Result<u8> {
    tokio::task::spawn_blocking(move || open(a, verbose))
        .await
        .context("the analysis thread failed")?
}

fn open(a: Args, verbose: bool) -> anyhow::Result<u8> {
    let work = match crate::run::work_from(a.commands.as_deref(), a.script.as_ref()) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("kdnet: {e}");
            return Ok(crate::exit::BAD_ARGUMENTS);
        }
    };
    let dump = DumpFile::open(&a.file)?;
    let path = crate::symbols::path(a.symbols.as_deref());
    let kernel = Kernel::open(Box::new(dump), path)
        .with_context(|| format!("reading the kernel in {}", a.file.display()))?;
    let mut e = Engine::new(kernel);
    e.progress = crate::progress::terminal();
    let budget = budget(a.max_seconds)?;
    let style = Style {
        json: a.json,
        verbose,
        echo: true,
    };
    if work.is_empty() {
        return Ok(crate::repl::run_dump(e, style, a.prompt, budget));
    }
    analysis::banner(&mut e, style);
    e.deadline = budget.map(|b| std::time::Instant::now() + b);
    Ok(analysis::run_work(&mut e, &work, style, &a.prompt.out))
}
