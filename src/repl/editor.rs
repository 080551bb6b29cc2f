//! The line editor's side of the prompt: tab completion and the history file.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use kdnet_commands::engine::Engine;
use kdnet_commands::registry::{self};
use rustyline::completion::{Completer, Pair};
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::{DefaultHistory, History};
use rustyline::validate::Validator;
use rustyline::{Editor, Helper};

use super::PROMPT_WORDS;

/// Tab completion over commands, extensions, modules and `module!symbol`.
pub(super) struct KdHelper {
    pub(super) engine: Rc<RefCell<Option<Engine>>>,
    pub(super) names: RefCell<HashMap<String, Rc<Vec<String>>>>,
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

pub(super) fn history_path(given: Option<&Path>) -> Option<PathBuf> {
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

pub(super) fn load_history(editor: &mut Editor<KdHelper, DefaultHistory>, path: &Path) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    for l in &lines[lines.len().saturating_sub(HISTORY_LINES)..] {
        let _ = editor.add_history_entry(*l);
    }
}

/// Writes the history (a line per entry) by a temporary file and a rename.
pub(super) fn save_history(
    editor: &Editor<KdHelper, DefaultHistory>,
    path: &Path,
) -> std::io::Result<()> {
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
