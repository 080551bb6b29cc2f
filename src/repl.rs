//! The interactive prompt: `kdnet repl` on a live target, `kdnet open DUMP` without -c on a dump.
//!
//! One line at a time through the script parser (so `$x = !locks` and `.foreach` work here too),
//! history kept in a file, tab completion of commands, `!` extensions and `module!symbol`.
//! Live targets add `g`, `.break`, `.reboot` and Ctrl-C: at the prompt of a running target it
//! breaks in; during a command it cancels that command. `q` lets the target go on and leaves.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use kdnet_commands::engine::Engine;
use kdnet_commands::registry::{self, Render};
use kdnet_live::{self as live, Event};
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::{DefaultHistory, History};
use rustyline::validate::Validator;
use rustyline::{CompletionType, Config, Editor, ExternalPrinter, Helper};

use crate::analysis::{self, Style};
use crate::connect::{self, ConnectArgs};
use crate::exit;

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

/// What the prompt can do to the target besides running commands.
pub trait Control {
    /// Stopped in the debugger.
    fn stopped(&self) -> bool;
    /// How many times it has stopped, and on which processor it last did.
    fn stop_serial(&self) -> (u64, u32);
    /// The kernel model (the target must be stopped).
    fn open(&mut self) -> Result<Engine, String>;
    /// Lets it run.
    fn go(&mut self) -> Result<(), String>;
    /// Stops it; the processor it stopped on.
    fn break_in(&mut self) -> Result<u32, String>;
    /// Reboots it.
    fn reboot(&mut self) -> Result<(), String>;
    /// Leaves: the target continues unless `leave_stopped`.
    fn detach(&mut self, leave_stopped: bool);
    /// The session, for a live target (one that can run).
    fn host(&self) -> Option<live::Session> {
        None
    }
}

/// A dump file: always stopped, never runs.
pub struct DumpControl {
    /// The engine, until the prompt takes it.
    pub engine: Option<Engine>,
}

impl Control for DumpControl {
    fn stopped(&self) -> bool {
        true
    }
    fn stop_serial(&self) -> (u64, u32) {
        (0, 0)
    }
    fn open(&mut self) -> Result<Engine, String> {
        self.engine
            .take()
            .ok_or_else(|| "the dump is already open".to_string())
    }
    fn go(&mut self) -> Result<(), String> {
        Err("a dump cannot run".into())
    }
    fn break_in(&mut self) -> Result<u32, String> {
        Err("a dump does not run".into())
    }
    fn reboot(&mut self) -> Result<(), String> {
        Err("a dump cannot reboot".into())
    }
    fn detach(&mut self, _leave_stopped: bool) {}
}

/// A live KDNET session.
struct LiveControl {
    host: live::Session,
    rt: tokio::runtime::Handle,
    symbols: Option<String>,
    /// Set when SIGTERM or SIGHUP arrived: the signal's handler lets the target go on.
    ending: Arc<AtomicBool>,
}

impl Control for LiveControl {
    fn host(&self) -> Option<live::Session> {
        Some(self.host.clone())
    }
    fn stopped(&self) -> bool {
        self.host.status().stopped
    }
    fn stop_serial(&self) -> (u64, u32) {
        let s = self.host.status();
        (s.stops, s.stop.map_or(0, |x| x.processor))
    }
    fn open(&mut self) -> Result<Engine, String> {
        self.host
            .open(
                self.rt.clone(),
                crate::symbols::path(self.symbols.as_deref()),
            )
            .map(Engine::new)
            .map_err(|e| e.to_string())
    }
    fn go(&mut self) -> Result<(), String> {
        self.rt.block_on(self.host.go()).map_err(|e| e.to_string())
    }
    fn break_in(&mut self) -> Result<u32, String> {
        self.rt
            .block_on(self.host.break_in(Duration::from_secs(10)))
            .map(|s| s.processor)
            .map_err(|e| e.to_string())
    }
    fn reboot(&mut self) -> Result<(), String> {
        let mut events = self.host.events();
        self.rt
            .block_on(self.host.reboot())
            .map_err(|e| e.to_string())?;
        eprintln!("kdnet: the target reboots; waiting up to 5 minutes for it to come back");
        // It comes back with a new boot's offer and a new handshake.
        self.rt.block_on(async {
            let wait = async {
                loop {
                    match events.next().await {
                        Some(Event::Connected { .. }) => return Ok(()),
                        Some(_) => {}
                        None => return Err("the session closed".to_string()),
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(300), wait)
                .await
                .map_err(|_| "the target did not come back within 5 minutes".to_string())?
        })
    }
    fn detach(&mut self, leave_stopped: bool) {
        if self.ending.load(Ordering::SeqCst) {
            return;
        }
        if !self.stopped() {
            eprintln!("kdnet: detached; the target runs");
        } else if leave_stopped {
            eprintln!("kdnet: detached; the target stays stopped");
        } else {
            match self.go() {
                Ok(()) => eprintln!("kdnet: detached; the target continues"),
                Err(e) => eprintln!("kdnet: could not let the target continue: {e}"),
            }
        }
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

/// Tab completion over commands, extensions, modules and `module!symbol`.
struct KdHelper {
    engine: Rc<RefCell<Option<Engine>>>,
    names: RefCell<HashMap<String, Rc<Vec<String>>>>,
}

/// Most candidates offered at once.
const MAX_CANDIDATES: usize = 200;

impl KdHelper {
    fn symbols_of(&self, module: &str) -> Rc<Vec<String>> {
        let key = module.to_ascii_lowercase();
        if let Some(v) = self.names.borrow().get(&key) {
            return v.clone();
        }
        let mut names = match self.engine.try_borrow_mut() {
            Ok(mut e) => match e.as_mut() {
                Some(e) => e.kernel.symbol_names(module),
                None => Vec::new(),
            },
            Err(_) => Vec::new(),
        };
        names.sort();
        let v = Rc::new(names);
        if !v.is_empty() {
            self.names.borrow_mut().insert(key, v.clone());
        }
        v
    }

    fn modules(&self) -> Vec<String> {
        match self.engine.try_borrow_mut() {
            Ok(mut e) => e
                .as_mut()
                .map(|e| e.kernel.module_names())
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    /// The word before `pos` and its candidates.
    pub fn candidates(&self, line: &str, pos: usize) -> (usize, Vec<String>) {
        let pos = pos.min(line.len());
        let head = &line[..pos];
        let start = head
            .rfind(|c: char| c.is_whitespace() || matches!(c, ';' | '(' | ',' | '{'))
            .map_or(0, |i| i + 1);
        let word = &head[start..];
        let before = head[..start].trim_end();
        let first = before.is_empty() || before.ends_with(';') || before.ends_with('{');
        let lower = word.to_ascii_lowercase();
        let mut out: Vec<String> = Vec::new();
        match word.split_once('!') {
            Some((module, prefix)) if !module.is_empty() => {
                let names = self.symbols_of(module);
                let p = prefix.to_ascii_lowercase();
                out.extend(
                    names
                        .iter()
                        .filter(|n| n.to_ascii_lowercase().starts_with(&p))
                        .take(MAX_CANDIDATES)
                        .map(|n| format!("{module}!{n}")),
                );
            }
            _ if first => {
                out.extend(
                    registry::names()
                        .chain(PROMPT_WORDS.iter().copied())
                        .filter(|c| c.starts_with(&lower))
                        .map(|c| c.to_string()),
                );
            }
            _ if !word.is_empty() && !word.starts_with(['$', '@', '0']) => {
                out.extend(
                    self.modules()
                        .into_iter()
                        .filter(|m| m.to_ascii_lowercase().starts_with(&lower))
                        .map(|m| format!("{m}!")),
                );
            }
            _ => {}
        }
        out.sort();
        out.dedup();
        (start, out)
    }
}

impl Completer for KdHelper {
    type Candidate = Pair;
    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let (start, c) = self.candidates(line, pos);
        Ok((
            start,
            c.into_iter()
                .map(|s| Pair {
                    display: s.clone(),
                    replacement: s,
                })
                .collect(),
        ))
    }
}
impl Hinter for KdHelper {
    type Hint = String;
}
impl Highlighter for KdHelper {}
impl Validator for KdHelper {}
impl Helper for KdHelper {}

fn history_path(given: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = given {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("KDNET_HISTORY") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .map(|h| PathBuf::from(h).join(".kdnet_history"))
}

/// Most history lines kept.
const HISTORY_LINES: usize = 1000;

fn load_history(editor: &mut Editor<KdHelper, DefaultHistory>, path: &Path) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    for l in &lines[lines.len().saturating_sub(HISTORY_LINES)..] {
        let _ = editor.add_history_entry(*l);
    }
}

/// Writes the history (a line per entry) by a temporary file and a rename.
fn save_history(editor: &Editor<KdHelper, DefaultHistory>, path: &Path) -> std::io::Result<()> {
    let h = editor.history();
    let mut text = String::new();
    for i in h.len().saturating_sub(HISTORY_LINES)..h.len() {
        if let Ok(Some(e)) = h.get(i, rustyline::history::SearchDirection::Forward) {
            text.push_str(&e.entry);
            text.push('\n');
        }
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(d) = dir {
        std::fs::create_dir_all(d)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
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
            "g" => {
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

fn break_in(control: &mut dyn Control) {
    match control.break_in() {
        Ok(p) => eprintln!("kdnet: stopped on processor {p}"),
        Err(e) => eprintln!("kdnet: could not break in: {e}"),
    }
}

/// Ctrl-C outside the line editor (while a command runs, or when input is not a terminal):
/// cancels the running command, or breaks into a running target. Call it after the line
/// editor exists: the editor installs its own SIGINT handler, and this registration must come
/// after it to be the one that runs.
fn watch_interrupts(host: Option<live::Session>, cancel: Arc<AtomicBool>, busy: Arc<AtomicBool>) {
    // The line editor's own SIGINT handler goes: chained behind ours it would leave a stale
    // interrupt that ends the next prompt as if Ctrl-C had been typed there.
    #[cfg(unix)]
    crate::sys::default_sigint();
    #[cfg(unix)]
    let mut sigint = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kdnet: Ctrl-C will not cancel commands: {e}");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            #[cfg(unix)]
            if sigint.recv().await.is_none() {
                break;
            }
            #[cfg(not(unix))]
            if tokio::signal::ctrl_c().await.is_err() {
                break;
            }
            if busy.load(Ordering::SeqCst) {
                cancel.store(true, Ordering::SeqCst);
                eprintln!("^C: cancelling the command");
            } else if let Some(h) = &host {
                if !h.status().stopped {
                    eprintln!("^C: breaking in");
                    if let Err(e) = h.break_in(Duration::from_secs(10)).await {
                        eprintln!("kdnet: could not break in: {e}");
                    }
                }
            } else {
                std::process::exit(130);
            }
        }
    });
}

/// SIGTERM or SIGHUP: the command under way is cancelled, the target continues (unless
/// `--leave-stopped`), and the process exits (Ctrl-C keeps its meaning at the prompt).
/// The flag it returns is set as soon as such a signal arrives.
fn resume_on_termination(
    host: live::Session,
    cancel: Arc<AtomicBool>,
    leave_stopped: bool,
) -> anyhow::Result<Arc<AtomicBool>> {
    let mut signals = crate::signals::Ending::catch_but_interrupt().context("catching signals")?;
    let ending = Arc::new(AtomicBool::new(false));
    let flag = ending.clone();
    tokio::spawn(async move {
        let sig = signals.next().await;
        flag.store(true, Ordering::SeqCst);
        cancel.store(true, Ordering::SeqCst);
        let code =
            crate::signals::resume_before_exit(&host, sig, &mut signals, leave_stopped, false)
                .await;
        std::process::exit(i32::from(code));
    });
    Ok(ending)
}

/// Prints the target's DbgPrint output and stops as they happen.
fn watch_events(host: &live::Session, printer: PrinterSlot) {
    let mut events = host.events();
    tokio::spawn(async move {
        while let Some(ev) = events.next().await {
            let text = match ev {
                Event::Print(text) => text,
                Event::Stopped(stop) => stop.description,
                Event::WrongKey { from } => {
                    format!("kdnet: datagrams from {from} do not authenticate (wrong key?)")
                }
                Event::Connected { peer, rebooted } => format!(
                    "Connected to target {peer}{}",
                    if rebooted { " (a new boot)" } else { "" }
                ),
                Event::Silent { after } => format!(
                    "kdnet: the target stopped answering (nothing heard for {:.1} s)",
                    after.as_secs_f64()
                ),
                Event::Heard { after } => format!(
                    "kdnet: the target answers again (after {:.1} s of silence)",
                    after.as_secs_f64()
                ),
            };
            emit(&printer, text);
        }
    });
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
    watch_events(&host, printer.clone());
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
    let ending =
        resume_on_termination(host.clone(), session.cancel.clone(), a.prompt.leave_stopped)?;
    let mut control = LiveControl {
        host,
        rt: tokio::runtime::Handle::current(),
        symbols: a.symbols.clone(),
        ending: ending.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn helper() -> KdHelper {
        KdHelper {
            engine: Rc::new(RefCell::new(None)),
            names: RefCell::new(HashMap::new()),
        }
    }

    #[test]
    fn completes_commands_and_extensions() {
        let h = helper();
        let (start, c) = h.candidates("!po", 3);
        assert_eq!(start, 0);
        assert_eq!(c, vec!["!pool", "!poolfind", "!poolused"]);
        let (start, c) = h.candidates("lm; !ndiskd.p", 13);
        assert_eq!(start, 4);
        assert_eq!(c, vec!["!ndiskd.pendingnbls"]);
        let (_, c) = h.candidates(".sn", 3);
        assert_eq!(c, vec![".snapshot"]);
        // An argument position is not completed as a command.
        let (_, c) = h.candidates("dt lm", 5);
        assert!(c.is_empty());
    }
}
