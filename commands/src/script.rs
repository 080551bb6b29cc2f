//! The command language shared by the REPL and capture scripts (`.kds`): WinDbg commands and
//! expressions, `$$` comments, `;` and newlines between statements, and a small scripting layer:
//!
//! ```text
//! $locks = !locks                       $$ a named result (its JSON)
//! .foreach (h in $locks.held) { !thread $h.exclusive_owner }
//! .if ($vm.commit_failures > 0) { .echo commit is failing: $vm.commit_failures } .else { .echo ok }
//! .timeout 30                           $$ each command from here may run 30 s
//! .snapshot hang                        $$ write what has been read to hang.dmp
//! ```
//!
//! Parsed with nom into one AST; errors name the line and column.

use std::collections::HashMap;

use std::path::PathBuf;

use nom::IResult;
use nom::Parser;
use nom::bytes::complete::{tag, take_while1};
use nom::character::complete::{char, space0};
use nom::combinator::opt;
use nom::sequence::{delimited, preceded};
use serde_json::Value;

use crate::engine::{Engine, Outcome};

/// A position in the script (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    /// Line.
    pub line: usize,
    /// Column.
    pub column: usize,
}

/// A statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Stmt {
    /// A debugger command (variables substituted when it runs).
    Command {
        /// Its text.
        text: String,
        /// Where it is.
        pos: Pos,
    },
    /// `$name = command`.
    Assign {
        /// The variable.
        name: String,
        /// The command.
        text: String,
        /// Where it is.
        pos: Pos,
    },
    /// `.foreach (v in $path) { … }`.
    Foreach {
        /// The loop variable.
        var: String,
        /// The list (`$name.field…`).
        source: String,
        /// The body.
        body: Vec<Stmt>,
        /// Where it is.
        pos: Pos,
    },
    /// `.if (cond) { … } [.else { … }]`.
    If {
        /// The condition (an expression after substitution).
        cond: String,
        /// When true.
        then: Vec<Stmt>,
        /// When false.
        otherwise: Vec<Stmt>,
        /// Where it is.
        pos: Pos,
    },
    /// `.echo text`.
    Echo {
        /// The text (variables substituted).
        text: String,
        /// Where it is.
        pos: Pos,
    },
    /// `.timeout SECONDS` (0: no limit; `.time SECONDS` is its older spelling).
    Time {
        /// Seconds.
        seconds: f64,
        /// Where it is.
        pos: Pos,
    },
    /// `.snapshot NAME`.
    Snapshot {
        /// The name.
        name: String,
        /// Where it is.
        pos: Pos,
    },
}

impl Stmt {
    /// Where the statement is in the script.
    pub fn pos(&self) -> Pos {
        match self {
            Stmt::Command { pos, .. }
            | Stmt::Assign { pos, .. }
            | Stmt::Foreach { pos, .. }
            | Stmt::If { pos, .. }
            | Stmt::Echo { pos, .. }
            | Stmt::Time { pos, .. }
            | Stmt::Snapshot { pos, .. } => *pos,
        }
    }

    /// The statement as written (a block's head without its body).
    pub fn source(&self) -> String {
        match self {
            Stmt::Command { text, .. } => text.clone(),
            Stmt::Assign { name, text, .. } => format!("${name} = {text}"),
            Stmt::Foreach { var, source, .. } => format!(".foreach ({var} in ${source})"),
            Stmt::If { cond, .. } => format!(".if ({cond})"),
            Stmt::Echo { text, .. } => format!(".echo {text}"),
            Stmt::Time { seconds, .. } => format!(".timeout {seconds}"),
            Stmt::Snapshot { name, .. } => format!(".snapshot {name}"),
        }
    }
}

/// A syntax error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {}, column {}: {message}", pos.line, pos.column)]
pub struct ParseError {
    /// Where.
    pub pos: Pos,
    /// What.
    pub message: String,
}

type In<'a> = &'a str;

fn pos_of(full: &str, rest: &str) -> Pos {
    let at = full.len() - rest.len();
    let before = &full[..at];
    let line = before.matches('\n').count() + 1;
    // Columns count characters, as an editor shows them.
    let column = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count()
        + 1;
    Pos { line, column }
}

/// Skips spaces, newlines, `;` and `$$` comments.
fn gap(mut i: In<'_>) -> In<'_> {
    loop {
        let t = i.trim_start_matches(|c: char| c.is_whitespace() || c == ';');
        if let Some(rest) = t.strip_prefix("$$") {
            i = rest.find('\n').map_or("", |n| &rest[n..]);
            continue;
        }
        return t;
    }
}

fn ident(i: In<'_>) -> IResult<In<'_>, In<'_>> {
    take_while1(|c: char| c.is_ascii_alphanumeric() || c == '_')(i)
}

/// The text of a command: up to `;`, a newline, `$$`, or an unmatched `}`.
fn command_text(i: In<'_>) -> (In<'_>, String) {
    let mut depth = 0i32;
    let mut quoted = false;
    let b = i.as_bytes();
    let mut end = 0;
    while end < b.len() {
        let c = b[end];
        match c {
            b'"' => quoted = !quoted,
            b';' | b'\n' if !quoted => break,
            b'$' if !quoted && b.get(end + 1) == Some(&b'$') => break,
            b'{' if !quoted => depth += 1,
            b'}' if !quoted => {
                if depth == 0 {
                    break;
                }
                depth -= 1;
            }
            _ => {}
        }
        end += 1;
    }
    (&i[end..], i[..end].trim().to_string())
}

fn block<'a>(full: &'a str, i: In<'a>) -> Result<(In<'a>, Vec<Stmt>), ParseError> {
    let i = gap(i);
    let Some(mut rest) = i.strip_prefix('{') else {
        return Err(ParseError {
            pos: pos_of(full, i),
            message: "expected '{'".into(),
        });
    };
    let mut out = Vec::new();
    loop {
        rest = gap(rest);
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((r, out));
        }
        if rest.is_empty() {
            return Err(ParseError {
                pos: pos_of(full, rest),
                message: "a block is not closed with '}'".into(),
            });
        }
        let (r, s) = statement(full, rest)?;
        out.push(s);
        rest = r;
    }
}

fn paren(i: In<'_>) -> IResult<In<'_>, In<'_>> {
    // Balanced parentheses.
    let b = i.as_bytes();
    if b.first() != Some(&b'(') {
        return Err(nom::Err::Error(nom::error::Error::new(
            i,
            nom::error::ErrorKind::Char,
        )));
    }
    let mut depth = 0;
    for (n, c) in b.iter().enumerate() {
        match c {
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return Ok((&i[n + 1..], &i[1..n]));
                }
            }
            b'\n' => break,
            _ => {}
        }
    }
    Err(nom::Err::Error(nom::error::Error::new(
        i,
        nom::error::ErrorKind::Char,
    )))
}

fn statement<'a>(full: &'a str, i: In<'a>) -> Result<(In<'a>, Stmt), ParseError> {
    let pos = pos_of(full, i);
    let err = |at: In<'a>, m: &str| ParseError {
        pos: pos_of(full, at),
        message: m.to_string(),
    };
    // `.foreach (v in $path) { … }`
    if let Some(rest) = i.strip_prefix(".foreach") {
        let r: IResult<In<'_>, (In<'_>, In<'_>)> = (|x| {
            let (x, _) = space0(x)?;
            let (x, _) = char('(')(x)?;
            let (x, _) = space0(x)?;
            let (x, var) = ident(x)?;
            let (x, _) = delimited(space0, tag("in"), space0).parse(x)?;
            let (x, src) = preceded(
                char('$'),
                take_while1(|c: char| {
                    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']')
                }),
            )
            .parse(x)?;
            let (x, _) = space0(x)?;
            let (x, _) = char(')')(x)?;
            Ok((x, (var, src)))
        })(rest);
        let (rest, (var, src)) = r.map_err(|e| {
            let at = match e {
                nom::Err::Error(e) | nom::Err::Failure(e) => e.input,
                nom::Err::Incomplete(_) => rest,
            };
            err(at, "expected .foreach (NAME in $VARIABLE) { … }")
        })?;
        check_variable(full, i, var)?;
        let (rest, body) = block(full, rest)?;
        return Ok((
            rest,
            Stmt::Foreach {
                var: var.to_string(),
                source: src.to_string(),
                body,
                pos,
            },
        ));
    }
    // `.if (cond) { … } [.else { … }]`
    if let Some(rest) = i.strip_prefix(".if") {
        let r: IResult<In<'_>, In<'_>> = preceded(space0, paren).parse(rest);
        let (rest, cond) = r.map_err(|_| err(rest, "expected .if (CONDITION) { … }"))?;
        let (rest, then) = block(full, rest)?;
        let after = gap(rest);
        let (rest, otherwise) = match after.strip_prefix(".else") {
            Some(r) => block(full, r)?,
            None => (rest, Vec::new()),
        };
        return Ok((
            rest,
            Stmt::If {
                cond: cond.trim().to_string(),
                then,
                otherwise,
                pos,
            },
        ));
    }
    if let Some(rest) = i.strip_prefix(".echo") {
        let (rest, text) = command_text(rest);
        return Ok((rest, Stmt::Echo { text, pos }));
    }
    // `.timeout SECONDS`; `.time SECONDS` is its older spelling (`.time` alone is WinDbg's
    // command, which shows the target's clock).
    let timeout = i.strip_prefix(".timeout").or_else(|| {
        i.strip_prefix(".time")
            .filter(|r| r.starts_with([' ', '\t']))
    });
    if let Some(rest) = timeout {
        let (rest, text) = command_text(rest);
        if i.starts_with(".timeout") || !text.is_empty() {
            let seconds: f64 = text
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                .ok_or_else(|| err(i, "expected .timeout SECONDS"))?;
            return Ok((rest, Stmt::Time { seconds, pos }));
        }
    }
    if let Some(rest) = i.strip_prefix(".snapshot") {
        let (rest, text) = command_text(rest);
        if text.is_empty()
            || !text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(err(i, "expected .snapshot NAME (letters, digits, _ - .)"));
        }
        return Ok((rest, Stmt::Snapshot { name: text, pos }));
    }
    if i.starts_with(".else") {
        return Err(err(i, ".else without .if"));
    }
    // `$name = command`
    if let Some(rest) = i.strip_prefix('$') {
        let r: IResult<In<'_>, (In<'_>, Option<char>)> =
            (ident, preceded(space0, opt(char('=')))).parse(rest);
        if let Ok((after, (name, Some('=')))) = r
            && !after.starts_with('=')
        {
            let (rest, text) = command_text(after);
            if text.is_empty() {
                return Err(err(after, "expected a command after '='"));
            }
            check_variable(full, i, name)?;
            return Ok((
                rest,
                Stmt::Assign {
                    name: name.to_string(),
                    text,
                    pos,
                },
            ));
        }
    }
    if i.starts_with('}') {
        return Err(err(i, "'}' without a block"));
    }
    let (rest, text) = command_text(i);
    if text.is_empty() {
        return Err(err(i, "expected a command"));
    }
    Ok((rest, Stmt::Command { text, pos }))
}

/// Parses a script (or one REPL line).
pub fn parse(text: &str) -> Result<Vec<Stmt>, ParseError> {
    if text.len() > 1 << 20 {
        return Err(ParseError {
            pos: Pos { line: 1, column: 1 },
            message: "a script of more than 1 MB".into(),
        });
    }
    // Blocks nest at most this deep, so parsing and running stay bounded.
    let mut depth = 0i32;
    for (n, c) in text.char_indices() {
        match c {
            '{' => {
                depth += 1;
                if depth > 32 {
                    return Err(ParseError {
                        pos: pos_of(text, &text[n..]),
                        message: "blocks nested more than 32 deep".into(),
                    });
                }
            }
            '}' => depth -= 1,
            _ => {}
        }
    }
    let mut out = Vec::new();
    let mut rest = gap(text);
    while !rest.is_empty() {
        let (r, s) = statement(text, rest)?;
        out.push(s);
        rest = gap(r);
    }
    Ok(out)
}

/// A value reached by `$name.field[index]…`.
pub fn lookup<'a>(vars: &'a HashMap<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let head = parts.next()?;
    let (name, idx) = split_index(head)?;
    let mut v = vars.get(name)?;
    for i in idx {
        v = v.get(i)?;
    }
    for p in parts {
        let (field, idx) = split_index(p)?;
        v = v.get(field)?;
        for i in idx {
            v = v.get(i)?;
        }
    }
    Some(v)
}

fn split_index(p: &str) -> Option<(&str, Vec<usize>)> {
    let (name, rest) = match p.find('[') {
        Some(i) => (&p[..i], &p[i..]),
        None => (p, ""),
    };
    let mut idx = Vec::new();
    let mut r = rest;
    while let Some(x) = r.strip_prefix('[') {
        let end = x.find(']')?;
        idx.push(x[..end].parse().ok()?);
        r = &x[end + 1..];
    }
    r.is_empty().then_some((name, idx))
}

/// The text a value stands for in a command: numbers as `0x…` (valid in every expression),
/// strings as they are, an object as its address-like field, anything else as JSON.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::Number(n) => match n.as_u64() {
            Some(u) => format!("0x{u:x}"),
            None => n.to_string(),
        },
        Value::String(s) => s.clone(),
        Value::Bool(b) => u8::from(*b).to_string(),
        Value::Null => "0".into(),
        Value::Object(m) => {
            for key in ["thread", "address", "handle", "nbl", "process", "value"] {
                if let Some(x) = m.get(key) {
                    return value_text(x);
                }
            }
            v.to_string()
        }
        Value::Array(a) => a.len().to_string(),
    }
}

/// Replaces `$name.path` with the values of `vars`; unknown names are an error.
pub fn substitute(text: &str, vars: &HashMap<String, Value>) -> Result<String, String> {
    substitute_as(text, vars, value_text)
}

/// The text a value stands for in `.echo`: counts in decimal as people read them, addresses
/// (anything of 2^32 or more) in hex.
pub fn echo_text(v: &Value) -> String {
    match v.as_u64() {
        Some(u) if u < 1 << 32 => u.to_string(),
        _ => value_text(v),
    }
}

/// Whether `rest` (after a `$`) starts with the name of a WinDbg pseudo-register: the script
/// leaves those to the expression evaluator, `$thread` as well as `@$thread`.
fn pseudo_at(rest: &str) -> bool {
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    crate::expr::is_pseudo_register(&rest[..end])
}

/// Refuses a script variable named like a pseudo-register (it would hide it).
fn check_variable<'a>(full: &'a str, at: In<'a>, name: &str) -> Result<(), ParseError> {
    if crate::expr::is_pseudo_register(name) {
        return Err(ParseError {
            pos: pos_of(full, at),
            message: format!(
                "${name} is a WinDbg pseudo-register; name the variable otherwise (a user \
                 register is set with `r ${name} = …`)"
            ),
        });
    }
    Ok(())
}

fn substitute_as(
    text: &str,
    vars: &HashMap<String, Value>,
    render: fn(&Value) -> String,
) -> Result<String, String> {
    let mut out = String::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$'
            && b.get(i + 1)
                .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
            && !(i > 0 && b[i - 1] == b'@')
            && !pseudo_at(&text[i + 1..])
        {
            let start = i + 1;
            let mut end = start;
            while end < b.len()
                && (b[end].is_ascii_alphanumeric() || matches!(b[end], b'_' | b'.' | b'[' | b']'))
            {
                end += 1;
            }
            // A trailing '.' ends a sentence, not a path.
            while end > start && b[end - 1] == b'.' {
                end -= 1;
            }
            let path = &text[start..end];
            match lookup(vars, path) {
                Some(v) => out.push_str(&render(v)),
                None => return Err(format!("${path} is not set")),
            }
            i = end;
        } else {
            let c = text[i..].chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
        }
    }
    Ok(out)
}

/// One line of `--json` output: every event of a run in the same envelope. `type` says which
/// event it is; `command` is the command or statement as run; `result` the command's result
/// (its own schema), `{"text": …}` for `.echo`, `{"path": …}` for `.snapshot`, null on error.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct Line {
    /// What the line is.
    #[serde(rename = "type")]
    pub kind: LineType,
    /// The command (or script statement) as run, variables substituted.
    pub command: String,
    /// Its output as data (null when it failed).
    pub result: Value,
    /// Why it failed.
    pub error: Option<String>,
    /// Whether the result is whole: false when the command failed, or when it could not read
    /// all it needed (a read failed, a walk stopped early at a limit, a broken list or the time
    /// budget); `incomplete` says why.
    pub complete: bool,
    /// Why the result is not whole (empty when it is, or when the command failed).
    pub incomplete: Vec<String>,
    /// What it cost.
    pub cost: crate::engine::Cost,
    /// Where in the script a failed step is (errors only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
    /// The command's output in WinDbg's layout (answers of a watcher's control socket only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// What a [`Line`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LineType {
    /// A command ran.
    Command,
    /// `.echo`.
    Echo,
    /// `.snapshot` wrote a file.
    Snapshot,
    /// A script step failed before it could run (an unset variable, a list that is not one, a
    /// run stopped early).
    Error,
}

/// A position in a script, for JSON.
#[derive(Debug, Clone, Copy, serde::Serialize, schemars::JsonSchema)]
pub struct Position {
    /// Line (1-based).
    pub line: usize,
    /// Column (1-based).
    pub column: usize,
}

impl Event {
    /// The event as one JSON line's envelope.
    pub fn line(&self) -> Line {
        let plain = |kind, command: String, result: Value| Line {
            kind,
            command,
            result,
            error: None,
            complete: true,
            incomplete: Vec::new(),
            cost: crate::engine::Cost::default(),
            position: None,
            text: None,
        };
        match self {
            Event::Outcome(o, _) => Line {
                kind: LineType::Command,
                command: o.command.clone(),
                result: o.result.clone(),
                error: o.error.clone(),
                complete: o.complete,
                incomplete: o.incomplete.clone(),
                cost: o.cost,
                position: None,
                text: None,
            },
            Event::Echo(t) => plain(
                LineType::Echo,
                ".echo".into(),
                serde_json::json!({ "text": t }),
            ),
            Event::Snapshot(p) => plain(
                LineType::Snapshot,
                ".snapshot".into(),
                serde_json::json!({ "path": p }),
            ),
            Event::Error {
                pos,
                statement,
                message,
            } => Line {
                error: Some(message.clone()),
                complete: false,
                position: Some(Position {
                    line: pos.line,
                    column: pos.column,
                }),
                ..plain(LineType::Error, statement.clone(), Value::Null)
            },
        }
    }
}

/// What running a script produces, in order.
#[derive(Debug, Clone)]
pub enum Event {
    /// A command ran (on the processor shown in the prompt).
    Outcome(Outcome, u32),
    /// `.echo`.
    Echo(String),
    /// A snapshot was written.
    Snapshot(PathBuf),
    /// A step failed before it could run (an unset variable, a list that is not one).
    Error {
        /// Where.
        pos: Pos,
        /// The statement, as written.
        statement: String,
        /// Why.
        message: String,
    },
}

/// Most loop iterations one run may make.
const MAX_STEPS: u64 = 1_000_000;

/// The most text one command's result keeps; beyond it the text is cut with a note.
pub const MAX_RESULT_TEXT: usize = 4 << 20;
/// The most JSON (serialized) one command's result keeps; beyond it its longest lists are cut
/// with a note.
pub const MAX_RESULT_JSON: usize = 4 << 20;

/// Why a run stopped before its end, and what it did not run.
#[derive(Debug, Clone)]
struct Halt {
    /// The statement it stopped at.
    stmt: Stmt,
    /// Why.
    why: String,
    /// Statements not run (the one it stopped at included), at every nesting level.
    statements: u64,
    /// Loop iterations not run.
    iterations: u64,
}

/// Runs statements against an engine, keeping named results.
pub struct Runner<'a> {
    /// The engine.
    pub engine: &'a mut Engine,
    /// Named results.
    pub vars: HashMap<String, Value>,
    /// Where `.snapshot` writes.
    pub snapshot_dir: PathBuf,
    /// The most output (text and JSON of every result, in bytes) one run may give; past it
    /// the run stops and says what it did not run. None: no limit (output that is printed as
    /// it comes needs none; output that is kept does).
    pub output_limit: Option<usize>,
    /// Snapshot files that could not be written (`NAME.dmp: why`); a failed read is not here.
    pub write_failures: Vec<String>,
    /// Pages an earlier stop read (a run that goes on where one cut short stopped): snapshots
    /// hold them beneath what this run reads.
    pub earlier_pages: std::collections::BTreeMap<u64, Vec<u8>>,
    /// How many events the last run gave before each top-level statement it reached (the one
    /// it stopped at included).
    pub tops: Vec<usize>,
    /// How many of the last run's top-level statements ran to their end before anything
    /// (the time budget, a cancel, the output limit, the target gone) stopped the run: the
    /// statements from there on were cut short or not run.
    pub finished: usize,
    emitted: usize,
    /// How deep in blocks the run is (0: the top level).
    nest: u32,
    output: usize,
    steps: u64,
    failed: bool,
    incomplete: bool,
    /// The target stopped answering: nothing more runs.
    gone: Option<String>,
    depth: u32,
    halt: Option<Halt>,
    halted: Option<String>,
}

/// Counts bytes written.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len();
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The size of `v` as JSON text.
pub fn json_size(v: &Value) -> usize {
    let mut c = Counter(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

/// The largest char boundary of `s` at or below `at`.
fn floor_boundary(s: &str, mut at: usize) -> usize {
    at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// The longest list inside `v` (by its JSON size), as a JSON pointer, with its size.
fn largest_list(v: &Value, path: &mut String, best: &mut Option<(String, usize)>) {
    match v {
        Value::Array(a) => {
            if !a.is_empty() {
                let size = json_size(v);
                if best.as_ref().is_none_or(|(_, s)| size > *s) {
                    *best = Some((path.clone(), size));
                }
            }
            for (i, x) in a.iter().enumerate() {
                let n = path.len();
                path.push_str(&format!("/{i}"));
                largest_list(x, path, best);
                path.truncate(n);
            }
        }
        Value::Object(m) => {
            for (k, x) in m {
                let n = path.len();
                path.push('/');
                path.push_str(&k.replace('~', "~0").replace('/', "~1"));
                largest_list(x, path, best);
                path.truncate(n);
            }
        }
        _ => {}
    }
}

/// Cuts `v` to at most `limit` bytes of JSON by halving its longest lists; what was cut, as
/// (list, kept, of). Err when no list is left to cut and it is still too large.
fn trim_json(v: &mut Value, limit: usize) -> Result<Vec<(String, usize, usize)>, usize> {
    let mut cuts: Vec<(String, usize, usize)> = Vec::new();
    loop {
        let size = json_size(v);
        if size <= limit {
            return Ok(cuts);
        }
        let mut best = None;
        largest_list(v, &mut String::new(), &mut best);
        let Some((path, _)) = best else {
            return Err(size);
        };
        let Some(Value::Array(a)) = v.pointer_mut(&path) else {
            return Err(size);
        };
        let of = a.len();
        a.truncate(of / 2);
        let kept = a.len();
        match cuts.iter_mut().find(|c| c.0 == path) {
            Some(c) => c.1 = kept,
            None => cuts.push((path, kept, of)),
        }
    }
}

/// Keeps one result within [`MAX_RESULT_TEXT`] and [`MAX_RESULT_JSON`]: text past the limit
/// is cut with a note at its end; JSON past it has its longest lists cut, and says so in a
/// `truncated` member (`{"limit", "lists": [{"list", "kept", "of"}]}`; a result that is not an
/// object is wrapped as `{"value": …, "truncated": …}`). True when anything was cut.
pub fn bound_outcome(o: &mut Outcome) -> bool {
    bound_outcome_to(o, MAX_RESULT_TEXT, MAX_RESULT_JSON)
}

fn bound_outcome_to(o: &mut Outcome, max_text: usize, max_json: usize) -> bool {
    let mut cut = false;
    if o.text.len() > max_text {
        let at = floor_boundary(&o.text, max_text);
        let more = o.text.len() - at;
        o.text.truncate(at);
        if !o.text.ends_with('\n') {
            o.text.push('\n');
        }
        o.text.push_str(&format!(
            "[output truncated: {more} more bytes of text; a result keeps at most {max_text} bytes]\n"
        ));
        cut = true;
    }
    if json_size(&o.result) > max_json {
        let note = match trim_json(&mut o.result, max_json.saturating_sub(1024)) {
            Ok(cuts) => serde_json::json!({
                "limit": max_json,
                "lists": cuts
                    .iter()
                    .map(|(list, kept, of)| serde_json::json!({ "list": list, "kept": kept, "of": of }))
                    .collect::<Vec<_>>(),
            }),
            Err(size) => {
                o.result = Value::Null;
                serde_json::json!({ "limit": max_json, "dropped_bytes": size })
            }
        };
        match &mut o.result {
            Value::Object(m) => {
                m.insert("truncated".into(), note);
            }
            other => {
                let value = std::mem::take(other);
                *other = serde_json::json!({ "value": value, "truncated": note });
            }
        }
        cut = true;
    }
    cut
}

impl<'a> Runner<'a> {
    /// A runner writing snapshots to `snapshot_dir`.
    pub fn new(engine: &'a mut Engine, snapshot_dir: PathBuf) -> Runner<'a> {
        Runner {
            engine,
            vars: HashMap::new(),
            snapshot_dir,
            output_limit: None,
            write_failures: Vec::new(),
            earlier_pages: std::collections::BTreeMap::new(),
            tops: Vec::new(),
            finished: 0,
            emitted: 0,
            nest: 0,
            output: 0,
            steps: 0,
            failed: false,
            incomplete: false,
            gone: None,
            depth: 0,
            halt: None,
            halted: None,
        }
    }

    /// Whether any step failed (or the run stopped before its end).
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Why the last run stopped before its end, if it did.
    pub fn halted(&self) -> Option<&str> {
        self.halted.as_deref()
    }

    /// Whether any command's result was incomplete (see [`Outcome::complete`]).
    pub fn incomplete(&self) -> bool {
        self.incomplete
    }

    /// Why the run stopped early because the target stopped answering, if it did.
    pub fn target_gone(&self) -> Option<&str> {
        self.gone.as_deref()
    }

    fn error(&mut self, s: &Stmt, message: String, sink: &mut dyn FnMut(Event)) {
        self.failed = true;
        self.emitted += 1;
        sink(Event::Error {
            pos: s.pos(),
            statement: s.source(),
            message,
        });
    }

    /// Why the run must stop before `s`, if it must.
    fn limit_reached(&self) -> Option<String> {
        // Each command would only wait again.
        if let Some(why) = &self.gone {
            return Some(format!("no answer from the target ({why})"));
        }
        if self.steps > MAX_STEPS {
            return Some(format!(
                "the run made {MAX_STEPS} steps, the most one run may make"
            ));
        }
        if self.engine.kernel.mem.cancelled() {
            return Some("cancelled".into());
        }
        if let Some(d) = self.engine.deadline
            && std::time::Instant::now() >= d
        {
            return Some("the time budget for the whole run ran out".into());
        }
        if let Some(l) = self.output_limit
            && self.output > l
        {
            return Some(format!(
                "the run's output passed {l} bytes, the most it may keep"
            ));
        }
        None
    }

    /// Gives an outcome to the sink, within the size bounds.
    fn outcome(&mut self, mut o: Outcome, sink: &mut dyn FnMut(Event)) {
        if bound_outcome(&mut o) && o.ok() {
            // A cut result is not the whole answer.
            o.complete = false;
            o.incomplete.push(format!(
                "the result was cut to the size a result may keep ({MAX_RESULT_TEXT} bytes of text, {MAX_RESULT_JSON} of JSON)"
            ));
        }
        self.failed |= !o.ok();
        self.incomplete |= o.ok() && !o.complete;
        if self.gone.is_none() {
            self.gone = self.engine.target_gone();
        }
        self.output += o.text.len() + json_size(&o.result);
        self.emitted += 1;
        sink(Event::Outcome(o, self.engine.processor));
    }

    /// Runs `stmts`, reporting each step to `sink`. A run that must stop before its end (the
    /// engine's deadline passed, the output limit or the step limit was reached) stops between
    /// statements and inside loops, and ends with one error naming where it stopped, why, and
    /// how many statements and loop iterations it did not run.
    pub fn run(&mut self, stmts: &[Stmt], sink: &mut dyn FnMut(Event)) {
        if self.depth == 0 {
            self.halt = None;
            self.halted = None;
            self.output = 0;
            self.emitted = 0;
            self.tops.clear();
            self.finished = 0;
        }
        self.depth += 1;
        self.block(stmts, sink);
        self.depth -= 1;
        if self.depth == 0
            && let Some(h) = self.halt.take()
        {
            let mut not_run = format!(
                "{} statement{}",
                h.statements,
                if h.statements == 1 { "" } else { "s" }
            );
            if h.iterations > 0 {
                not_run.push_str(&format!(
                    " and {} loop iteration{}",
                    h.iterations,
                    if h.iterations == 1 { "" } else { "s" }
                ));
            }
            self.error(
                &h.stmt,
                format!("stopped here: {}; not run: {not_run}", h.why),
                sink,
            );
            self.halted = Some(h.why);
        }
    }

    fn block(&mut self, stmts: &[Stmt], sink: &mut dyn FnMut(Event)) {
        let top = self.nest == 0;
        self.nest += 1;
        self.statements(stmts, sink, top);
        self.nest -= 1;
    }

    fn statements(&mut self, stmts: &[Stmt], sink: &mut dyn FnMut(Event), top: bool) {
        for (i, s) in stmts.iter().enumerate() {
            if top && self.halt.is_none() {
                self.tops.push(self.emitted);
            }
            if self.halt.is_none() {
                self.steps += 1;
                if let Some(why) = self.limit_reached() {
                    self.halt = Some(Halt {
                        stmt: s.clone(),
                        why,
                        statements: 0,
                        iterations: 0,
                    });
                }
            }
            if let Some(h) = &mut self.halt {
                h.statements += (stmts.len() - i) as u64;
                return;
            }
            match s {
                Stmt::Command { text, .. } => match substitute(text, &self.vars) {
                    Ok(t) => {
                        let o = self.engine.run(&t);
                        self.outcome(o, sink);
                    }
                    Err(e) => self.error(s, e, sink),
                },
                Stmt::Assign { name, text, .. } => match substitute(text, &self.vars) {
                    Ok(t) => {
                        let o = self.engine.run(&t);
                        self.vars.insert(name.clone(), o.result.clone());
                        self.outcome(o, sink);
                    }
                    Err(e) => self.error(s, e, sink),
                },
                Stmt::Foreach {
                    var, source, body, ..
                } => {
                    let items = match lookup(&self.vars, source) {
                        Some(Value::Array(a)) => a.clone(),
                        Some(_) => {
                            self.error(s, format!("${source} is not a list"), sink);
                            continue;
                        }
                        None => {
                            self.error(s, format!("${source} is not set"), sink);
                            continue;
                        }
                    };
                    let n = items.len();
                    for (k, item) in items.into_iter().enumerate() {
                        self.vars.insert(var.clone(), item);
                        self.block(body, sink);
                        if let Some(h) = &mut self.halt {
                            h.iterations += (n - k - 1) as u64;
                            break;
                        }
                    }
                }
                Stmt::If {
                    cond,
                    then,
                    otherwise,
                    ..
                } => {
                    let value = substitute(cond, &self.vars)
                        .and_then(|c| self.engine.eval(&c).map_err(|e| e.to_string()));
                    if self.gone.is_none() {
                        self.gone = self.engine.target_gone();
                    }
                    match value {
                        Ok(v) if v != 0 => self.block(then, sink),
                        Ok(_) => self.block(otherwise, sink),
                        Err(e) => self.error(s, e, sink),
                    }
                }
                Stmt::Echo { text, .. } => match substitute_as(text, &self.vars, echo_text) {
                    Ok(t) => {
                        self.output += t.len();
                        self.engine.log_text(&format!("{t}\n"));
                        self.emitted += 1;
                        sink(Event::Echo(t));
                    }
                    Err(e) => self.error(s, e, sink),
                },
                Stmt::Time { seconds, .. } => {
                    self.engine.budget = (*seconds > 0.0)
                        .then(|| std::time::Duration::from_secs_f64(seconds.min(1e7)));
                }
                Stmt::Snapshot { name, .. } => match self.snapshot(name) {
                    Ok(p) => {
                        self.emitted += 1;
                        sink(Event::Snapshot(p))
                    }
                    Err(e) => self.error(s, e, sink),
                },
            }
            // Ran to its end unless something that stops the run came first (it may have
            // cut this statement's last command short).
            if top && self.halt.is_none() && self.limit_reached().is_none() {
                self.finished = i + 1;
            }
        }
    }

    /// Writes `NAME.dmp` into the snapshot directory (made owner-only if it is new; the file
    /// is owner-only): every page read so far.
    pub fn snapshot(&mut self, name: &str) -> Result<PathBuf, String> {
        let header = self
            .engine
            .kernel
            .dump_header(&format!("kdnet snapshot {name}"))
            .map_err(|e| format!("cannot read what the dump's header needs: {e}"))?;
        let mut pages = self.earlier_pages.clone();
        pages.extend(self.engine.kernel.mem.snapshot_pages());
        let path = self.snapshot_dir.join(format!("{name}.dmp"));
        let written = private_dir(&self.snapshot_dir)
            .map_err(|e| format!("cannot create {}: {e}", self.snapshot_dir.display()))
            .and_then(|()| {
                kdnet_model::dump::write_dump(
                    &path,
                    &header,
                    kdnet_model::dump::WriteKind::Bitmap,
                    &pages,
                )
                .map_err(|e| e.to_string())
            });
        if let Err(e) = written {
            self.write_failures.push(format!("{name}.dmp: {e}"));
            return Err(e);
        }
        Ok(path)
    }
}

/// Creates `dir` and its missing parents, owner-only (0700) where this creates them.
pub fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn statements_blocks_and_comments() {
        let s = parse(
            "$$ a hang capture\n$locks = !locks\n.foreach (h in $locks.held) {\n  !thread $h.exclusive_owner; k\n}\n.if ($vm.commit_failures > 0) { .echo failing } .else { .echo fine }\n.timeout 30\n.snapshot hang-1 $$ done\nlm",
        )
        .unwrap();
        assert_eq!(s.len(), 6);
        assert!(
            matches!(&s[0], Stmt::Assign { name, text, .. } if name == "locks" && text == "!locks")
        );
        match &s[1] {
            Stmt::Foreach {
                var,
                source,
                body,
                pos,
            } => {
                assert_eq!((var.as_str(), source.as_str()), ("h", "locks.held"));
                assert_eq!(body.len(), 2);
                assert_eq!(pos.line, 3);
            }
            other => panic!("{other:?}"),
        }
        match &s[2] {
            Stmt::If {
                cond,
                then,
                otherwise,
                ..
            } => {
                assert_eq!(cond, "$vm.commit_failures > 0");
                assert_eq!(then.len(), 1);
                assert_eq!(otherwise.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(s[3], Stmt::Time { seconds, .. } if seconds == 30.0));
        assert!(matches!(&s[4], Stmt::Snapshot { name, .. } if name == "hang-1"));
        assert!(matches!(&s[5], Stmt::Command { text, pos } if text == "lm" && pos.line == 9));
        // `;` separates, `==` in a command is not an assignment.
        let s = parse("? 1; ? 2 == 2").unwrap();
        assert_eq!(s.len(), 2);
        assert!(matches!(
            &parse("$x == 1").unwrap()[0],
            Stmt::Command { .. }
        ));
    }

    #[test]
    fn errors_name_line_and_column() {
        let e = parse("lm\n.foreach (x of $y) { k }").unwrap_err();
        assert_eq!(
            e.pos,
            Pos {
                line: 2,
                column: 13
            }
        );
        let e = parse("lm\n.if ($a) { k").unwrap_err();
        assert_eq!(e.pos.line, 2);
        assert!(e.message.contains("not closed"));
        let e = parse("  }").unwrap_err();
        assert_eq!(e.pos, Pos { line: 1, column: 3 });
        assert!(parse(".time soon").is_err());
        assert!(parse(".snapshot ../x").is_err());
        assert!(parse(&"{".repeat(40)).is_err());
    }

    #[test]
    fn substitution() {
        let mut vars = HashMap::new();
        vars.insert(
            "locks".to_string(),
            json!({"held": [{"address": 255, "exclusive_owner": 4096}], "total_locks": 3}),
        );
        vars.insert("t".to_string(), json!({"thread": 16, "pid": 4}));
        assert_eq!(
            substitute("!thread $locks.held[0].exclusive_owner", &vars).unwrap(),
            "!thread 0x1000"
        );
        assert_eq!(
            substitute("!pool $locks.held[0]", &vars).unwrap(),
            "!pool 0xff"
        );
        assert_eq!(
            substitute("!thread $t; $t.pid.", &vars).unwrap(),
            "!thread 0x10; 0x4."
        );
        assert!(substitute("$nope", &vars).is_err());
        assert_eq!(
            substitute_as("$t.pid of $locks.held[0].address", &vars, echo_text).unwrap(),
            "4 of 255"
        );
        assert_eq!(
            substitute("$$ not a var? 5$", &vars).unwrap(),
            "$$ not a var? 5$"
        );
        // WinDbg's pseudo-registers pass through to the evaluator, with `@` or without.
        assert_eq!(
            substitute(
                "dt nt!_KTHREAD @$thread State; ? $proc + $t.pid; r $t0 = @$prcb",
                &vars
            )
            .unwrap(),
            "dt nt!_KTHREAD @$thread State; ? $proc + 0x4; r $t0 = @$prcb"
        );
        assert_eq!(substitute("? @$t; ? $T19", &vars).unwrap(), "? @$t; ? $T19");
    }

    #[test]
    fn variables_keep_off_pseudo_register_names() {
        for bad in [
            "$thread = !thread",
            "$t0 = ? 1",
            "$p = r",
            ".foreach (proc in $x) { r }",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.message.contains("pseudo-register"), "{bad}: {e:?}");
        }
        assert!(parse("$threads = !thread; $t20 = r").is_ok());
    }

    #[test]
    fn json_past_the_limit_loses_the_end_of_its_longest_lists() {
        let mut v = json!({
            "held": (0..1000).map(|i| json!({ "address": i, "waiters": [1, 2, 3] })).collect::<Vec<_>>(),
            "total": 1000,
        });
        let cuts = trim_json(&mut v, 2000).unwrap();
        assert!(json_size(&v) <= 2000);
        assert_eq!(cuts[0].0, "/held");
        assert_eq!(cuts[0].2, 1000);
        assert_eq!(v["held"].as_array().unwrap().len(), cuts[0].1);
        assert_eq!(v["held"][0]["address"], 0, "the beginning is kept");
        assert_eq!(v["total"], 1000);
        // Nothing left to cut: an error with the size.
        let mut s = json!("x".repeat(100));
        assert_eq!(trim_json(&mut s, 10), Err(102));
    }

    #[test]
    fn text_is_cut_on_a_character_boundary() {
        let mut o = Outcome {
            command: "x".into(),
            text: "é".repeat(100),
            result: json!([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
            error: None,
            complete: true,
            incomplete: Vec::new(),
            cost: Default::default(),
        };
        assert!(bound_outcome_to(&mut o, 51, 1024 + 10));
        assert!(o.text.starts_with(&"é".repeat(25)));
        assert!(
            o.text.contains("[output truncated: 150 more bytes"),
            "{}",
            o.text
        );
        assert_eq!(
            o.result,
            json!([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
            "within its limit"
        );
        // A list at the top is wrapped so the note has a place.
        let mut o2 = o.clone();
        o2.result = json!((0..2000).collect::<Vec<_>>());
        assert!(bound_outcome_to(&mut o2, 1 << 20, 2048));
        assert!(o2.result["value"].as_array().unwrap().len() < 2000);
        assert_eq!(o2.result["truncated"]["lists"][0]["of"], 2000);
    }
}
