//! `.help` and `.help NAME`: the commands from the registry, and the script language's
//! statements. Added as every command is: this file, one registry line, its test.

use std::fmt::Write as _;

use schemars::JsonSchema;
use serde::Serialize;

use crate::args::{Args, Syntax, opt_word};
use crate::engine::{CmdError, Engine};
use crate::registry::{COMMANDS, Command, Render, find};

/// `.help [NAME]`.
pub const SYNTAX: Syntax = Syntax::params(&[opt_word("NAME")]);

/// The statements of the script language (not commands: the script runner takes them).
pub const STATEMENTS: &[(&str, &str)] = &[
    (
        "$name = COMMAND",
        "runs COMMAND and keeps its JSON result as $name",
    ),
    (
        ".foreach (v in $name.list) { … }",
        "runs the block once per item of a list",
    ),
    (".if (EXPR) { … } .else { … }", "an expression decides"),
    (".echo TEXT", "prints TEXT"),
    (
        ".timeout SECONDS",
        "each command after it may run that long (0: no limit)",
    ),
    (
        ".snapshot NAME",
        "writes NAME.dmp into --out: every page read so far",
    ),
];

/// What `.help` shows.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Help {
    /// The commands described (all of them, or the one asked for).
    pub commands: Vec<CommandHelp>,
    /// The script language's statements (with the whole list only).
    pub statements: Vec<StatementHelp>,
}

/// One command's help.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct CommandHelp {
    /// As typed.
    pub name: String,
    /// Other spellings.
    pub aliases: Vec<String>,
    /// What it shows.
    pub summary: String,
    /// Its usage line.
    pub usage: String,
    /// What it shows in full.
    pub doc: String,
    /// Command lines that show it at work.
    pub examples: Vec<String>,
    /// Its flags and what each does.
    pub flags: Vec<FlagHelp>,
}

/// One flag.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FlagHelp {
    /// As typed (`-v`).
    pub name: String,
    /// What it does.
    pub help: String,
}

/// One script statement.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StatementHelp {
    /// Its form.
    pub form: String,
    /// What it does.
    pub meaning: String,
}

fn describe(c: &Command) -> CommandHelp {
    CommandHelp {
        name: c.name.to_string(),
        aliases: c.aliases.iter().map(|a| a.to_string()).collect(),
        summary: c.summary.to_string(),
        usage: c.usage(),
        doc: c.doc.to_string(),
        examples: c
            .examples
            .iter()
            .filter(|x| !x.contains('{'))
            .map(|x| x.to_string())
            .collect(),
        flags: c
            .syntax
            .flags
            .iter()
            .map(|f| FlagHelp {
                name: f.name.to_string(),
                help: f.help.to_string(),
            })
            .collect(),
    }
}

/// The help for `topic` (a command's name or alias, with or without its `!`), or for all.
pub fn help(topic: Option<&str>) -> Result<Help, CmdError> {
    match topic {
        None => Ok(Help {
            commands: COMMANDS.iter().map(describe).collect(),
            statements: STATEMENTS
                .iter()
                .map(|(form, meaning)| StatementHelp {
                    form: form.to_string(),
                    meaning: meaning.to_string(),
                })
                .collect(),
        }),
        Some(t) => {
            let c = find(t)
                .or_else(|| find(&format!("!{t}")))
                .ok_or_else(|| CmdError::Usage(format!(".help: no command {t}")))?;
            Ok(Help {
                commands: vec![describe(c)],
                statements: Vec::new(),
            })
        }
    }
}

/// `.help [NAME]`.
pub fn run(_e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<Help, CmdError> {
    help(a.text("NAME"))
}

impl Render for Help {
    fn render(&self, out: &mut String) {
        if let [c] = self.commands.as_slice()
            && self.statements.is_empty()
        {
            let _ = writeln!(out, "{}", c.usage);
            let _ = writeln!(out, "  {}", c.doc);
            if !c.aliases.is_empty() {
                let _ = writeln!(out, "  also: {}", c.aliases.join(", "));
            }
            for f in &c.flags {
                let _ = writeln!(out, "  {:<6} {}", f.name, f.help);
            }
            if !c.examples.is_empty() {
                let _ = writeln!(out, "  e.g. {}", c.examples.join("; "));
            }
            return;
        }
        let width = self
            .commands
            .iter()
            .map(|c| c.usage.chars().count())
            .max()
            .unwrap_or(0)
            .min(34);
        out.push_str("Commands (.help NAME for one):\n");
        for c in &self.commands {
            let usage = &c.usage;
            if usage.chars().count() > width {
                let _ = writeln!(out, "  {usage}\n  {:width$}  {}", "", c.summary);
            } else {
                let _ = writeln!(out, "  {usage:width$}  {}", c.summary);
            }
        }
        if !self.statements.is_empty() {
            out.push_str("Script statements (`;` or newlines between them, $$ comments):\n");
            for s in &self.statements {
                let _ = writeln!(out, "  {:<34}  {}", s.form, s.meaning);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_is_listed_and_each_found_by_name_and_alias() {
        let all = help(None).unwrap();
        assert_eq!(all.commands.len(), COMMANDS.len());
        let mut text = String::new();
        all.render(&mut text);
        for c in COMMANDS {
            assert!(text.contains(c.summary), "{} missing from .help", c.name);
            for name in std::iter::once(c.name).chain(c.aliases.iter().copied()) {
                let one = help(Some(name)).unwrap();
                assert_eq!(one.commands[0].name, c.name, "{name}");
            }
        }
        // An extension is found without its `!` too, and a name that is none is an error.
        let h = help(Some(".help")).unwrap();
        assert_eq!(h.commands[0].usage, ".help [NAME]");
        assert!(help(Some("frobnicate")).is_err());
    }
}
