//! The interactive prompt: `kdnet repl` on a live target, `kdnet open DUMP` without -c on a dump.
//!
//! One line at a time through the script parser (so `$x = !locks` and `.foreach` work here too),
//! history kept in a file, tab completion of commands, `!` extensions and `module!symbol`.
//! Live targets add `g`, `.break`, `.reboot` and Ctrl-C: at the prompt of a running target it
//! breaks in; during a command it cancels that command. `q` lets the target go on and leaves.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use kdnet_commands::engine::Engine;
use kdnet_commands::registry::Render;
use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::{CompletionType, Config, Editor, ExternalPrinter};

use crate::analysis::{self, Style};
use crate::connect::{self, ConnectArgs};
use crate::exit;

mod control;
mod editor;
#[cfg(test)]
mod tests;

pub use control::{Control, DumpControl};
use control::{LiveControl, break_in, resume_on_termination, watch_events, watch_interrupts};
use editor::{KdHelper, history_path, load_history, save_history};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Symbol path in WinDbg's syntax (`srv*CACHE*URL;DIR`); _NT_SYMBOL_PATH is added.
    #[arg(long)]
    symbols: Option<String>,
    /// Print each command's result as one JSON object per line.
    #[arg(long)]
    json: bool,
    /// The longest one line may take, in seconds: past it the command under way stops with
    /// what it has and the rest of the line is not run.
    #[arg(long)]
    max_seconds: Option<f64>,
    #[command(flatten)]
    prompt: PromptArgs,
    /// Stay running after connecting instead of breaking in (Ctrl-C or .break stops it).
    #[arg(long)]
    no_break: bool,
}

/// Options of the prompt itself, shared with `kdnet open`.
#[derive(clap::Args, Debug, Clone)]
pub struct PromptArgs {
    /// The history file (default: $KDNET_HISTORY, else ~/.kdnet_history).
    #[arg(long)]
    pub history: Option<PathBuf>,
    /// Where `.snapshot` writes its dumps.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// On `q`, leave the target stopped instead of letting it continue.
    #[arg(long)]
    pub leave_stopped: bool,
}

/// The words the prompt itself handles.
const PROMPT_WORDS: &[&str] = &[
    "g",
    "q",
    "qs",
    ".break",
    ".reboot",
    ".help",
    ".echo",
    ".time",
    ".timeout",
    ".snapshot",
    ".foreach",
    ".if",
];

/// What the prompt adds to `.help`: the target's control.
const PROMPT_HELP: &str = "\
At the prompt: g (continue), .break (stop a running target; Ctrl-C does the same), .reboot,
q (let the target continue and quit), qs (quit leaving it stopped).
Ctrl-C during a command cancels the command.
";

/// `.help [NAME]` at the prompt (also while the target runs: it needs no target).
fn prompt_help(topic: Option<&str>) -> String {
    match kdnet_commands::cmds::help::help(topic) {
        Ok(h) => {
            let mut text = String::new();
            h.render(&mut text);
            if topic.is_none() {
                text.push_str(PROMPT_HELP);
            }
            text
        }
        Err(e) => format!("{e}\n"),
    }
}

/// Where text from other threads goes: above the line being typed while the target runs,
/// else straight to stderr.
type PrinterSlot = Arc<Mutex<Option<Box<dyn ExternalPrinter + Send>>>>;

fn emit(slot: &PrinterSlot, text: String) {
    let text = if text.ends_with('\n') {
        text
    } else {
        format!("{text}\n")
    };
    {
        let mut g = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = g.as_mut()
            && p.print(text.clone()).is_ok()
        {
            return;
        }
    }
    // Without the slot held: the prompt may be about to install a printer.
    eprint!("{text}");
}

/// Settings of one prompt session.
pub struct Session {
    /// Output style.
    pub style: Style,
    /// The longest one line may take.
    pub budget: Option<Duration>,
    /// Prompt options.
    pub prompt: PromptArgs,
    /// Set by Ctrl-C while a command runs.
    pub cancel: Arc<AtomicBool>,
    /// Whether a command runs now.
    pub busy: Arc<AtomicBool>,
    /// Where other threads print.
    pub printer: PrinterSlot,
}

/// Runs the prompt until `q` or end of input; the exit code.
pub fn prompt(control: &mut dyn Control, s: Session) -> u8 {
    let engine: Rc<RefCell<Option<Engine>>> = Rc::new(RefCell::new(None));
    let config = Config::builder()
        .auto_add_history(false)
        .completion_type(CompletionType::List)
        .build();
    let mut editor = match Editor::<KdHelper, DefaultHistory>::with_config(config) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("kdnet: cannot start the prompt: {e}");
            return exit::FAILED;
        }
    };
    editor.set_helper(Some(KdHelper {
        engine: engine.clone(),
        names: RefCell::new(HashMap::new()),
    }));
    let history = history_path(s.prompt.history.as_deref());
    if let Some(h) = &history {
        load_history(&mut editor, h);
    }
    let mut style = s.style;
    style.echo = !std::io::IsTerminal::is_terminal(&std::io::stdin());
    watch_interrupts(control.host(), s.cancel.clone(), s.busy.clone());
    let mut vars = HashMap::new();
    let mut leave_stopped = s.prompt.leave_stopped;
    let mut seen_stop = u64::MAX;
    loop {
        if control.stopped() {
            let (serial, processor) = control.stop_serial();
            let mut eng = engine.borrow_mut();
            if eng.is_none() {
                match control.open() {
                    Ok(mut e) => {
                        e.kernel.mem.set_cancel(Some(s.cancel.clone()));
                        if e.progress.is_none() {
                            e.progress = crate::progress::terminal();
                        }
                        analysis::banner(&mut e, style);
                        *eng = Some(e);
                        seen_stop = serial;
                    }
                    Err(err) => eprintln!("kdnet: {err}"),
                }
            }
            if let Some(e) = eng.as_mut()
                && serial != seen_stop
            {
                // Stopped again since the last prompt: the current processor may differ, and a
                // bugcheck may have happened while it ran.
                seen_stop = serial;
                e.processor = processor;
                if let Ok(Some((code, p))) = e.kernel.bugcheck() {
                    outln!(
                        "*** Fatal System Error: 0x{code:08x} (0x{:x},0x{:x},0x{:x},0x{:x}); try !analyze -v",
                        p[0],
                        p[1],
                        p[2],
                        p[3]
                    );
                }
            }
        }
        // While the target runs, its DbgPrint lines are printed above the line being typed. The
        // printer exists only then: with one, the line editor waits on the terminal even when
        // it already holds typed-ahead bytes (a paste), and stalls until the next key; at the
        // stopped prompt, where commands are pasted, there is nothing to print.
        // (try_lock: a print blocked on the editor holds the slot until the editor runs again;
        // waiting for it here would never end, and the toggle can wait a round.)
        let slot = (0..50).find_map(|_| match s.printer.try_lock() {
            Ok(g) => Some(g),
            Err(_) => {
                std::thread::sleep(Duration::from_millis(1));
                None
            }
        });
        if let Some(mut slot) = slot {
            if control.host().is_some() && !control.stopped() {
                if slot.is_none()
                    && let Ok(p) = editor.create_external_printer()
                {
                    *slot = Some(Box::new(p));
                }
            } else {
                *slot = None;
            }
        }
        let prompt = if !control.stopped() {
            "running> ".to_string()
        } else {
            match &*engine.borrow() {
                Some(e) => format!("{}: kd> ", e.processor),
                None => "kd> ".to_string(),
            }
        };
        let line = match editor.readline(&prompt) {
            Ok(l) => l,
            Err(ReadlineError::Interrupted) => {
                if control.host().is_some() && !control.stopped() {
                    break_in(control);
                }
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("kdnet: reading the prompt: {e}");
                break;
            }
        };
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(t);
        match t {
            "q" | "qq" => break,
            "qs" => {
                leave_stopped = true;
                break;
            }
            h if h == ".help" || h.starts_with(".help ") => {
                let topic = h[".help".len()..].trim();
                out!(
                    "{}",
                    prompt_help((!topic.is_empty()).then_some(topic)).trim_end()
                );
            }
            // With breakpoints or event filters set, `g` is the engine's: it waits for them
            // (Ctrl-C breaks in). Without, the target runs and the prompt says so.
            "g" if !runs_under_control(&engine.borrow()) => {
                if !control.stopped() {
                    eprintln!("kdnet: the target is already running");
                } else {
                    match control.go() {
                        Ok(()) => eprintln!("kdnet: the target runs (Ctrl-C or .break stops it)"),
                        Err(e) => eprintln!("kdnet: {e}"),
                    }
                }
            }
            ".break" => {
                if control.stopped() {
                    eprintln!("kdnet: the target is already stopped");
                } else {
                    break_in(control);
                }
            }
            ".reboot" => match control.reboot() {
                Ok(()) => {
                    // A new boot: a new kernel, new modules, nothing read before holds.
                    *engine.borrow_mut() = None;
                    eprintln!("kdnet: the target is back and runs; Ctrl-C or .break stops it");
                }
                Err(e) => eprintln!("kdnet: {e}"),
            },
            _ => {
                if !control.stopped() {
                    eprintln!(
                        "kdnet: the target is running; Ctrl-C or .break stops it, then the command runs"
                    );
                    continue;
                }
                let mut eng = engine.borrow_mut();
                let Some(e) = eng.as_mut() else {
                    eprintln!("kdnet: the kernel could not be read; nothing to run commands on");
                    continue;
                };
                s.cancel.store(false, Ordering::SeqCst);
                s.busy.store(true, Ordering::SeqCst);
                e.retry_target();
                e.deadline = s.budget.map(|b| std::time::Instant::now() + b);
                analysis::run_script(e, &mut vars, t, "input", style, &s.prompt.out);
                e.deadline = None;
                s.busy.store(false, Ordering::SeqCst);
                if s.cancel.swap(false, Ordering::SeqCst) {
                    eprintln!("kdnet: cancelled");
                }
            }
        }
    }
    if let Ok(mut slot) = s.printer.try_lock() {
        *slot = None;
    }
    if let Some(h) = &history
        && let Err(e) = save_history(&editor, h)
    {
        eprintln!("kdnet: could not save the history to {}: {e}", h.display());
    }
    control.detach(leave_stopped);
    exit::OK
}

/// `kdnet repl`.
pub async fn run(a: Args, verbose: bool) -> anyhow::Result<u8> {
    let budget = crate::open::budget(a.max_seconds)?;
    let host = match connect::connect(&a.connect).await {
        Ok(h) => h,
        Err(code) => return Ok(code),
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let busy = Arc::new(AtomicBool::new(false));
    let printer: PrinterSlot = Arc::new(Mutex::new(None));
    let moving = Arc::new(AtomicBool::new(false));
    watch_events(&host, printer.clone(), moving.clone());
    if !a.no_break {
        if let Err(e) = host.break_in(Duration::from_secs(10)).await {
            eprintln!("kdnet: the target did not stop: {e}");
            return Ok(exit::NO_CONNECTION);
        }
    } else if let Some(sc) = host.probe_stopped(Duration::from_secs(1)).await {
        eprintln!("kdnet: the target is already stopped ({})", sc.description);
    } else {
        eprintln!("kdnet: the target runs; Ctrl-C or .break stops it");
    }
    let session = Session {
        style: Style {
            json: a.json,
            verbose,
            echo: true,
        },
        budget,
        prompt: a.prompt.clone(),
        cancel,
        busy,
        printer,
    };
    let ending = resume_on_termination(
        host.clone(),
        session.cancel.clone(),
        moving.clone(),
        a.prompt.leave_stopped,
    )?;
    let mut control = LiveControl {
        host,
        rt: tokio::runtime::Handle::current(),
        symbols: a.symbols.clone(),
        ending: ending.clone(),
        moving,
    };
    let code = tokio::task::spawn_blocking(move || prompt(&mut control, session))
        .await
        .context("the prompt thread failed")?;
    if ending.load(Ordering::SeqCst) {
        // The signal also ended the prompt's read: its handler ends the process.
        std::future::pending::<()>().await;
    }
    Ok(code)
}

/// The prompt over a dump (`kdnet open DUMP` without -c).
pub fn run_dump(
    engine: Engine,
    style: Style,
    prompt_args: PromptArgs,
    budget: Option<Duration>,
) -> u8 {
    let session = Session {
        style,
        budget,
        prompt: prompt_args,
        cancel: Arc::new(AtomicBool::new(false)),
        busy: Arc::new(AtomicBool::new(false)),
        printer: Arc::new(Mutex::new(None)),
    };
    let mut control = DumpControl {
        engine: Some(engine),
    };
    prompt(&mut control, session)
}

/// Whether the session has breakpoints or event stops for `g` to wait for.
fn runs_under_control(engine: &Option<Engine>) -> bool {
    engine.as_ref().is_some_and(|e| {
        !e.control.breakpoints.is_empty()
            || !e.control.module_loads.is_empty()
            || !e.control.module_unloads.is_empty()
    })
}
