//! WinDbg's argument conventions, parsed once for every command.
//!
//! A command declares its [`Syntax`]: the `-flags` it takes, its positional parameters and
//! whether it takes an `L` length. [`Syntax::parse`] splits the argument text into tokens
//! (quoted strings and parenthesised expressions stay whole: `poi(@rsp + 8)`), sorts out flags,
//! the length (`L4`, `L 4`, `L?1000`, `L0n16`) and positional words, and refuses what the
//! command did not declare. Expressions are evaluated by the engine when the command asks
//! ([`Args::expr`]): numbers are hex unless written `0n…`, and `module!symbol+off`, registers
//! and `poi()` work wherever an address does.

use std::fmt::Write as _;

use crate::engine::{CmdError, Engine};

/// What a positional parameter holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An expression: a number (hex by default), `module!symbol+off`, `@reg`, `poi(…)`.
    Expr,
    /// A word taken as written: a type name, a pattern, a tag, a field path.
    Word,
    /// A decimal number of seconds (fractions allowed).
    Seconds,
    /// Everything from here to the end of the line, as written.
    Rest,
}

/// One positional parameter.
#[derive(Clone, Copy, Debug)]
pub struct Param {
    /// Its name in the usage line (`ADDR`, `FLAGS`).
    pub name: &'static str,
    /// What it holds.
    pub kind: Kind,
    /// Whether it may be left out (all after an optional one are optional too).
    pub optional: bool,
}

/// One `-flag`.
#[derive(Clone, Copy, Debug)]
pub struct Flag {
    /// As typed, with its dash (`-v`).
    pub name: &'static str,
    /// What it does, for `.help`.
    pub help: &'static str,
}

/// A command's declared arguments.
#[derive(Clone, Copy, Debug)]
pub struct Syntax {
    /// The flags it takes (anywhere on the line).
    pub flags: &'static [Flag],
    /// Its positional parameters, in order.
    pub params: &'static [Param],
    /// Whether it takes an `L` length (`L COUNT`, `L?COUNT`).
    pub length: bool,
}

/// A required expression parameter.
pub const fn expr(name: &'static str) -> Param {
    Param {
        name,
        kind: Kind::Expr,
        optional: false,
    }
}

/// An optional expression parameter.
pub const fn opt_expr(name: &'static str) -> Param {
    Param {
        name,
        kind: Kind::Expr,
        optional: true,
    }
}

/// A required word.
pub const fn word(name: &'static str) -> Param {
    Param {
        name,
        kind: Kind::Word,
        optional: false,
    }
}

/// An optional word.
pub const fn opt_word(name: &'static str) -> Param {
    Param {
        name,
        kind: Kind::Word,
        optional: true,
    }
}

/// A flag.
pub const fn flag(name: &'static str, help: &'static str) -> Flag {
    Flag { name, help }
}

impl Syntax {
    /// No arguments at all.
    pub const NONE: Syntax = Syntax {
        flags: &[],
        params: &[],
        length: false,
    };

    /// Positional parameters only.
    pub const fn params(params: &'static [Param]) -> Syntax {
        Syntax {
            flags: &[],
            params,
            length: false,
        }
    }

    /// The usage line's argument part: `[-v] [ADDR] [L COUNT]`.
    pub fn usage(&self) -> String {
        let mut s = String::new();
        for f in self.flags {
            let _ = write!(s, " [{}]", f.name);
        }
        for p in self.params {
            let name = if p.kind == Kind::Rest {
                format!("{}…", p.name)
            } else {
                p.name.to_string()
            };
            if p.optional {
                let _ = write!(s, " [{name}]");
            } else {
                let _ = write!(s, " {name}");
            }
        }
        if self.length {
            s.push_str(" [L COUNT]");
        }
        s.trim_start().to_string()
    }

    /// Parses `text` by this syntax; `command` names the command in errors.
    pub fn parse<'a>(&self, command: &str, text: &'a str) -> Result<Args<'a>, CmdError> {
        let usage = || format!("usage: {command} {}", self.usage());
        let mut args = Args {
            flags: Vec::new(),
            values: Vec::new(),
            length: None,
        };
        let mut rest = text.trim();
        let mut next_param = 0usize;
        while !rest.is_empty() {
            // A `Rest` parameter takes the remainder whole.
            if let Some(p) = self.params.get(next_param)
                && p.kind == Kind::Rest
            {
                args.values.push((p.name, rest));
                next_param += 1;
                break;
            }
            let (token, after) = split_token(rest)
                .map_err(|why| CmdError::Usage(format!("{command}: {why}; {}", usage())))?;
            rest = after.trim_start();
            // Flags: a dash then a letter (`-1` and `-0x10` are numbers).
            if token.len() > 1
                && token.starts_with('-')
                && token[1..].starts_with(|c: char| c.is_ascii_alphabetic())
            {
                match self
                    .flags
                    .iter()
                    .find(|f| f.name.eq_ignore_ascii_case(token))
                {
                    Some(f) => args.flags.push(f.name),
                    None => {
                        // Single-letter flags run together, as WinDbg takes them (`-ti`).
                        let each: Option<Vec<&'static str>> = token[1..]
                            .chars()
                            .map(|c| {
                                self.flags
                                    .iter()
                                    .find(|f| {
                                        f.name.len() == 2
                                            && f.name[1..].eq_ignore_ascii_case(&c.to_string())
                                    })
                                    .map(|f| f.name)
                            })
                            .collect();
                        match each {
                            Some(names) if token.len() > 2 => args.flags.extend(names),
                            _ => {
                                return Err(CmdError::Usage(format!(
                                    "{command}: unknown option {token}; {}",
                                    usage()
                                )));
                            }
                        }
                    }
                }
                continue;
            }
            // `L4`, `L 4`, `L?1000`.
            if self.length
                && next_param > 0
                && let Some(spec) = token.strip_prefix(['L', 'l'])
                && (spec.is_empty() || !spec.starts_with(|c: char| c.is_ascii_alphabetic()))
            {
                let spec = match spec.strip_prefix('?').unwrap_or(spec) {
                    "" => {
                        let (n, after) = split_token(rest).map_err(|_| {
                            CmdError::Usage(format!("{command}: L needs a count; {}", usage()))
                        })?;
                        rest = after.trim_start();
                        n
                    }
                    s => s,
                };
                if args.length.replace(spec).is_some() {
                    return Err(CmdError::Usage(format!(
                        "{command}: more than one length; {}",
                        usage()
                    )));
                }
                continue;
            }
            match self.params.get(next_param) {
                Some(p) => {
                    args.values.push((p.name, token));
                    next_param += 1;
                }
                None => {
                    return Err(CmdError::Usage(format!(
                        "{command}: unexpected argument {token:?}; {}",
                        usage()
                    )));
                }
            }
        }
        if let Some(p) = self.params.get(next_param)
            && !p.optional
        {
            return Err(CmdError::Usage(format!(
                "{command}: {} is needed; {}",
                p.name,
                usage()
            )));
        }
        Ok(args)
    }
}

/// Every token of `text`, as [`split_token`] takes them.
pub(crate) fn tokens(text: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let (t, after) = split_token(rest)?;
        out.push(t);
        rest = after.trim_start();
    }
    Ok(out)
}

/// Splits one token off the front of `s` (trimmed): a quoted string (without its quotes), or
/// a run of characters up to whitespace outside parentheses.
pub(crate) fn split_token(s: &str) -> Result<(&str, &str), String> {
    let s = s.trim_start();
    if s.is_empty() {
        return Err("an argument is missing".into());
    }
    if let Some(inner) = s.strip_prefix('"') {
        return match inner.find('"') {
            Some(end) => Ok((&inner[..end], &inner[end + 1..])),
            None => Err("a quoted string is not closed".into()),
        };
    }
    let mut depth = 0i32;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            c if c.is_whitespace() && depth <= 0 => return Ok((&s[..i], &s[i..])),
            _ => {}
        }
    }
    if depth > 0 {
        return Err("a parenthesis is not closed".into());
    }
    Ok((s, ""))
}

/// A command's arguments, parsed by its [`Syntax`].
#[derive(Debug)]
pub struct Args<'a> {
    flags: Vec<&'static str>,
    values: Vec<(&'static str, &'a str)>,
    length: Option<&'a str>,
}

impl<'a> Args<'a> {
    /// Whether `-name` was given.
    pub fn flag(&self, name: &str) -> bool {
        self.flags.contains(&name)
    }

    /// The text given for parameter `name`, as written.
    pub fn text(&self, name: &str) -> Option<&'a str> {
        self.values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }

    /// Parameter `name` evaluated as an expression, if given.
    pub fn expr(&self, e: &mut Engine, name: &str) -> Result<Option<u64>, CmdError> {
        self.text(name).map(|t| e.eval(t)).transpose()
    }

    /// Parameter `name` as a decimal number of seconds, if given.
    pub fn seconds(&self, name: &str) -> Result<Option<f64>, CmdError> {
        self.text(name)
            .map(|t| {
                t.parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .ok_or_else(|| CmdError::Usage(format!("{t:?} is not a number of seconds")))
            })
            .transpose()
    }

    /// The `L` count, evaluated, if given.
    pub fn length(&self, e: &mut Engine) -> Result<Option<u64>, CmdError> {
        self.length.map(|t| e.eval(t)).transpose()
    }

    /// How many positional parameters were given.
    pub fn count(&self) -> usize {
        self.values.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DISPLAY: Syntax = Syntax {
        flags: &[],
        params: &[expr("ADDR"), opt_expr("END")],
        length: true,
    };
    const LOCKS: Syntax = Syntax {
        flags: &[flag("-v", "all"), flag("-p", "")],
        params: &[opt_expr("ADDR")],
        length: false,
    };

    #[test]
    fn lengths_in_every_spelling() {
        for (text, addr, len) in [
            ("rsp L4", "rsp", "4"),
            ("rsp L 4", "rsp", "4"),
            ("rsp l?1000", "rsp", "1000"),
            ("nt!KiWaitNever L0n16", "nt!KiWaitNever", "0n16"),
            ("poi(@rsp + 8) L2", "poi(@rsp + 8)", "2"),
        ] {
            let a = DISPLAY.parse("dq", text).unwrap();
            assert_eq!(a.text("ADDR"), Some(addr), "{text}");
            assert_eq!(a.length, Some(len), "{text}");
            assert_eq!(a.text("END"), None);
        }
        let a = DISPLAY.parse("dq", "1000 2000").unwrap();
        assert_eq!(
            (a.text("ADDR"), a.text("END")),
            (Some("1000"), Some("2000"))
        );
        // A symbol that begins with l is an address, not a length.
        let a = DISPLAY.parse("dq", "lsass L2").unwrap();
        assert_eq!((a.text("ADDR"), a.length), (Some("lsass"), Some("2")));
        assert!(DISPLAY.parse("dq", "rsp L1 L2").is_err());
        assert!(DISPLAY.parse("dq", "rsp L").is_err());
    }

    #[test]
    fn flags_and_numbers() {
        let a = LOCKS.parse("!locks", "-v ffff8001`00001000").unwrap();
        assert!(a.flag("-v") && !a.flag("-p"));
        assert_eq!(a.text("ADDR"), Some("ffff8001`00001000"));
        let e = LOCKS.parse("!locks", "-x").unwrap_err().to_string();
        assert!(
            e.contains("unknown option -x") && e.contains("!locks [-v] [-p] [ADDR]"),
            "{e}"
        );
        // -1 is a number, not a flag.
        const T: Syntax = Syntax::params(&[opt_expr("THREAD"), opt_expr("FLAGS")]);
        let t = T;
        let a = t.parse("!thread", "-1 0x1f").unwrap();
        assert_eq!(a.text("THREAD"), Some("-1"));
        assert!(t.parse("!thread", "1 2 3").is_err());
    }

    #[test]
    fn required_quoted_and_rest() {
        const S: Syntax = Syntax::params(&[word("TYPE"), opt_expr("ADDR")]);
        let s = S;
        assert!(
            s.parse("dt", "")
                .unwrap_err()
                .to_string()
                .contains("TYPE is needed")
        );
        let a = s.parse("dt", "\"nt!_LIST_ENTRY\" 10").unwrap();
        assert_eq!(a.text("TYPE"), Some("nt!_LIST_ENTRY"));
        assert!(s.parse("dt", "\"open").is_err());
        assert!(s.parse("dt", "x (1 + 2").is_err());
        const R: Syntax = Syntax::params(&[Param {
            name: "EXPR",
            kind: Kind::Rest,
            optional: false,
        }]);
        let r = R;
        let a = r.parse("?", "1 + 2 * (3)").unwrap();
        assert_eq!(a.text("EXPR"), Some("1 + 2 * (3)"));
        assert_eq!(r.usage(), "EXPR…");
    }
}
