//! Expressions in WinDbg's MASM syntax, parsed with nom into one AST: hex numbers by default
//! (`fffff805`5c400000`, `0x10`, `0n42` decimal, `0y101` binary, `0t17` octal), symbols
//! (`nt!KiProcessorBlock`, `tcpip`, `KeBugCheckEx`), registers (`@rip`, `@$ip`), `poi()`,
//! `qwo() dwo() wo() by()`, unary `- ~`, binary `* / % + - << >> & ^ |`, comparisons
//! `== != < <= > >=`, and parentheses. Errors give the column where parsing failed.

use nom::IResult;
use nom::Parser;
use nom::branch::alt;
use nom::bytes::complete::{tag, take_while, take_while1};
use nom::character::complete::{char, multispace0};
use nom::combinator::{map, opt, recognize};
use nom::sequence::{delimited, pair, preceded};

/// An expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// A number.
    Num(u64),
    /// `module!name`, or a bare name (a symbol or a module).
    Sym {
        /// The module, when written.
        module: Option<String>,
        /// The name.
        name: String,
    },
    /// `@reg` or `@$pseudo`.
    Reg(String),
    /// `poi(x)` (pointer size), `qwo`, `dwo`, `wo`, `by`: memory at an address.
    Deref {
        /// Bytes read.
        size: u8,
        /// The address.
        addr: Box<Expr>,
    },
    /// A unary operator.
    Unary(UnOp, Box<Expr>),
    /// A binary operator.
    Binary(BinOp, Box<Expr>, Box<Expr>),
}

/// Unary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnOp {
    /// `-x`.
    Neg,
    /// `~x`.
    Not,
}

/// Binary operators, loosest last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    /// `*`.
    Mul,
    /// `/`.
    Div,
    /// `%`.
    Rem,
    /// `+`.
    Add,
    /// `-`.
    Sub,
    /// `<<`.
    Shl,
    /// `>>`.
    Shr,
    /// `&`.
    And,
    /// `^`.
    Xor,
    /// `|`.
    Or,
    /// `==`.
    Eq,
    /// `!=`.
    Ne,
    /// `<`.
    Lt,
    /// `<=`.
    Le,
    /// `>`.
    Gt,
    /// `>=`.
    Ge,
}

/// Why an expression failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExprError {
    /// Syntax.
    #[error("syntax error at column {column}: {message}")]
    Syntax {
        /// 1-based column.
        column: usize,
        /// What was wrong.
        message: String,
    },
    /// A symbol that does not resolve.
    #[error("couldn't resolve symbol '{0}'")]
    Unresolved(String),
    /// A register that does not exist.
    #[error("bad register '@{0}'")]
    BadRegister(String),
    /// A register or pseudo-register that has no value here (the reason says why).
    #[error("{name}: {why}")]
    Unavailable {
        /// The register as written (`@$ra`).
        name: String,
        /// Why it has no value.
        why: String,
    },
    /// Memory that cannot be read.
    #[error("memory access error at {0:#x}")]
    Memory(u64),
    /// Division by zero.
    #[error("divide by zero")]
    DivideByZero,
}

/// What evaluation needs from the debugger.
pub trait Env {
    /// A symbol's address (or a module's base when `module` is None and `name` is a module).
    fn symbol(&mut self, module: Option<&str>, name: &str) -> Option<u64>;
    /// A register of the current context, or a pseudo-register (`$thread`), by its lower-case
    /// name without `@`.
    fn register(&mut self, name: &str) -> Result<u64, ExprError>;
    /// `size` bytes at `addr`, little-endian.
    fn read(&mut self, addr: u64, size: u8) -> Option<u64>;
}

type In<'a> = &'a str;

/// A parse error that keeps the furthest point any alternative reached, so the column names
/// where the input really went wrong.
#[derive(Debug)]
struct Deepest<'a> {
    input: In<'a>,
}

impl<'a> nom::error::ParseError<In<'a>> for Deepest<'a> {
    fn from_error_kind(input: In<'a>, _kind: nom::error::ErrorKind) -> Self {
        Deepest { input }
    }
    fn append(_input: In<'a>, _kind: nom::error::ErrorKind, other: Self) -> Self {
        other
    }
    fn or(self, other: Self) -> Self {
        if other.input.len() <= self.input.len() {
            other
        } else {
            self
        }
    }
}

impl<'a> nom::error::FromExternalError<In<'a>, std::num::ParseIntError> for Deepest<'a> {
    fn from_external_error(
        input: In<'a>,
        _kind: nom::error::ErrorKind,
        _e: std::num::ParseIntError,
    ) -> Self {
        Deepest { input }
    }
}

type Res<'a> = IResult<In<'a>, Expr, Deepest<'a>>;

fn fail(input: In<'_>) -> nom::Err<Deepest<'_>> {
    nom::Err::Error(Deepest { input })
}

fn ws<'a, O>(
    p: impl Parser<In<'a>, Output = O, Error = Deepest<'a>>,
) -> impl Parser<In<'a>, Output = O, Error = Deepest<'a>> {
    delimited(multispace0, p, multispace0)
}

fn is_sym_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '?' | '@' | '.' | ':' | '<' | '>')
}

/// Digits in `radix` with WinDbg's backtick separators.
fn digits(s: &str, radix: u32) -> Option<u64> {
    let clean: String = s.chars().filter(|&c| c != '`').collect();
    if clean.is_empty() {
        return None;
    }
    u64::from_str_radix(&clean, radix).ok()
}

fn number(i: In<'_>) -> Res<'_> {
    let (rest, text) = take_while1(|c: char| c.is_ascii_alphanumeric() || c == '`')(i)?;
    // A token followed by `!` is a module name, not a number.
    if rest.starts_with('!') && !rest.starts_with("!=") {
        return Err(fail(i));
    }
    let lower = text.to_ascii_lowercase();
    let v = if let Some(d) = lower.strip_prefix("0x") {
        digits(d, 16)
    } else if let Some(d) = lower.strip_prefix("0n") {
        digits(d, 10)
    } else if let Some(d) = lower.strip_prefix("0y") {
        digits(d, 2)
    } else if let Some(d) = lower.strip_prefix("0t") {
        digits(d, 8)
    } else if lower.chars().next().is_some_and(|c| c.is_ascii_hexdigit()) {
        digits(&lower, 16)
    } else {
        None
    };
    match v {
        Some(v) => Ok((rest, Expr::Num(v))),
        None => Err(fail(i)),
    }
}

fn symbol(i: In<'_>) -> Res<'_> {
    let name = |i| recognize(take_while1(is_sym_char)).parse(i);
    map(
        pair(name, opt(preceded(char('!'), take_while(is_sym_char)))),
        |(a, b): (&str, Option<&str>)| match b {
            Some(n) => Expr::Sym {
                module: Some(a.to_string()),
                name: n.to_string(),
            },
            None => Expr::Sym {
                module: None,
                name: a.to_string(),
            },
        },
    )
    .parse(i)
}

fn register(i: In<'_>) -> Res<'_> {
    let name = |i| take_while1(|c: char| c.is_ascii_alphanumeric() || c == '_').parse(i);
    alt((
        // `@rax`, `@$thread`.
        map(
            preceded(char('@'), recognize(pair(opt(char('$')), name))),
            |r: &str| Expr::Reg(r.to_ascii_lowercase()),
        ),
        // `$thread` without `@`, as WinDbg takes pseudo-registers.
        map(recognize(pair(char('$'), name)), |r: &str| {
            Expr::Reg(r.to_ascii_lowercase())
        }),
    ))
    .parse(i)
}

/// WinDbg's pseudo-registers this debugger knows (without `$`; `t0`–`t19` besides): an
/// expression takes them as `@$name` or `$name`, and the script language keeps its variables
/// off these names.
pub const PSEUDO_REGISTERS: &[&str] = &[
    "thread",
    "proc",
    "prcb",
    "pcr",
    "teb",
    "peb",
    "tid",
    "tpid",
    "ip",
    "ra",
    "csp",
    "retreg",
    "retreg64",
    "exentry",
    "p",
    "ptrsize",
    "pagesize",
    "bug_code",
    "bug_param1",
    "bug_param2",
    "bug_param3",
    "bug_param4",
];

/// Whether `name` (without `$`) is a pseudo-register: one of [`PSEUDO_REGISTERS`] or a user
/// register `t0`–`t19`.
pub fn is_pseudo_register(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    PSEUDO_REGISTERS.contains(&n.as_str()) || user_register(&n).is_some()
}

/// The index of user register `tN` (0–19).
pub fn user_register(name: &str) -> Option<usize> {
    let d = name.strip_prefix('t').or_else(|| name.strip_prefix('T'))?;
    if d.is_empty()
        || d.len() > 2
        || !d.bytes().all(|b| b.is_ascii_digit())
        || d.starts_with('0') && d.len() > 1
    {
        return None;
    }
    d.parse::<usize>().ok().filter(|n| *n < 20)
}

#[cfg(test)]
#[test]
fn pseudo_register_names() {
    assert!(is_pseudo_register("thread") && is_pseudo_register("T19") && is_pseudo_register("t0"));
    assert!(
        !is_pseudo_register("t20") && !is_pseudo_register("t01") && !is_pseudo_register("locks")
    );
    assert_eq!(user_register("t7"), Some(7));
}

fn deref(i: In<'_>) -> Res<'_> {
    let (rest, f) = alt((tag("poi"), tag("qwo"), tag("dwo"), tag("wo"), tag("by"))).parse(i)?;
    let (rest, inner) = preceded(multispace0, delimited(char('('), expr, char(')'))).parse(rest)?;
    let size = match f {
        "poi" | "qwo" => 8,
        "dwo" => 4,
        "wo" => 2,
        _ => 1,
    };
    Ok((
        rest,
        Expr::Deref {
            size,
            addr: Box::new(inner),
        },
    ))
}

fn atom(i: In<'_>) -> Res<'_> {
    ws(alt((
        delimited(char('('), expr, char(')')),
        deref,
        register,
        number,
        symbol,
    )))
    .parse(i)
}

fn unary(i: In<'_>) -> Res<'_> {
    // Prefix operators are gathered in a loop, not by recursion, so a long run of them cannot
    // exhaust the stack.
    let mut ops = Vec::new();
    let mut rest = i;
    loop {
        let t = rest.trim_start();
        match t.chars().next() {
            Some('-') => ops.push(Some(UnOp::Neg)),
            Some('~') => ops.push(Some(UnOp::Not)),
            Some('+') => ops.push(None),
            _ => break,
        }
        rest = &t[1..];
    }
    let (rest, mut e) = atom(rest)?;
    for op in ops.into_iter().rev().flatten() {
        e = Expr::Unary(op, Box::new(e));
    }
    Ok((rest, e))
}

/// One precedence level: `next (op next)*`, left-associative.
fn level<'a>(i: In<'a>, ops: &[(&'static str, BinOp)], next: fn(In<'a>) -> Res<'a>) -> Res<'a> {
    let (mut rest, mut left) = next(i)?;
    'outer: loop {
        let trimmed = rest.trim_start();
        for (text, op) in ops {
            if let Some(after) = trimmed.strip_prefix(text) {
                // `<` is not `<<` or `<=`; `>` likewise; `&` alone, `|` alone.
                let longer = ops
                    .iter()
                    .any(|(t, _)| t.len() > text.len() && trimmed.starts_with(t));
                if longer {
                    continue;
                }
                if (*text == "<" || *text == ">")
                    && (after.starts_with('<') || after.starts_with('>'))
                {
                    continue;
                }
                let (r, right) = next(after)?;
                left = Expr::Binary(*op, Box::new(left), Box::new(right));
                rest = r;
                continue 'outer;
            }
        }
        return Ok((rest, left));
    }
}

fn mul(i: In<'_>) -> Res<'_> {
    level(
        i,
        &[("*", BinOp::Mul), ("/", BinOp::Div), ("%", BinOp::Rem)],
        unary,
    )
}
fn add(i: In<'_>) -> Res<'_> {
    level(i, &[("+", BinOp::Add), ("-", BinOp::Sub)], mul)
}
fn shift(i: In<'_>) -> Res<'_> {
    level(i, &[("<<", BinOp::Shl), (">>", BinOp::Shr)], add)
}
fn compare(i: In<'_>) -> Res<'_> {
    level(
        i,
        &[
            ("==", BinOp::Eq),
            ("!=", BinOp::Ne),
            ("<=", BinOp::Le),
            (">=", BinOp::Ge),
            ("<", BinOp::Lt),
            (">", BinOp::Gt),
        ],
        shift,
    )
}
fn band(i: In<'_>) -> Res<'_> {
    level(i, &[("&", BinOp::And)], compare)
}
fn bxor(i: In<'_>) -> Res<'_> {
    level(i, &[("^", BinOp::Xor)], band)
}
fn expr(i: In<'_>) -> Res<'_> {
    level(i, &[("|", BinOp::Or)], bxor)
}

/// Parses a whole expression.
pub fn parse(text: &str) -> Result<Expr, ExprError> {
    if text.len() > 4096 {
        return Err(ExprError::Syntax {
            column: 4097,
            message: "expression too long".into(),
        });
    }
    // Nesting and operator count are bounded so hostile input cannot exhaust the stack when
    // the tree is evaluated or dropped.
    let depth = text.chars().filter(|&c| c == '(').count();
    let operators = text.chars().filter(|c| "+-*/%&|^~<>=".contains(*c)).count();
    if operators > 256 {
        return Err(ExprError::Syntax {
            column: 1,
            message: format!("too many operators ({operators}; at most 256)"),
        });
    }
    if depth > 64 {
        return Err(ExprError::Syntax {
            column: 1,
            message: "too deeply nested".into(),
        });
    }
    match expr(text) {
        Ok((rest, e)) if rest.trim().is_empty() => Ok(e),
        Ok((rest, _)) => Err(ExprError::Syntax {
            column: text.len() - rest.len() + 1,
            message: format!("unexpected '{}'", rest.trim().chars().next().unwrap_or(' ')),
        }),
        Err(nom::Err::Error(e) | nom::Err::Failure(e)) => Err(ExprError::Syntax {
            column: text.len() - e.input.len() + 1,
            message: if e.input.trim().is_empty() {
                "expression ends early".into()
            } else {
                format!(
                    "unexpected '{}'",
                    e.input.trim().chars().next().unwrap_or(' ')
                )
            },
        }),
        Err(nom::Err::Incomplete(_)) => Err(ExprError::Syntax {
            column: text.len() + 1,
            message: "expression ends early".into(),
        }),
    }
}

/// Evaluates an expression.
pub fn eval(e: &Expr, env: &mut dyn Env) -> Result<u64, ExprError> {
    Ok(match e {
        Expr::Num(v) => *v,
        Expr::Sym { module, name } => match env.symbol(module.as_deref(), name) {
            Some(v) => v,
            None => {
                return Err(ExprError::Unresolved(match module {
                    Some(m) => format!("{m}!{name}"),
                    None => name.clone(),
                }));
            }
        },
        Expr::Reg(r) => env.register(r)?,
        Expr::Deref { size, addr } => {
            let a = eval(addr, env)?;
            env.read(a, *size).ok_or(ExprError::Memory(a))?
        }
        Expr::Unary(UnOp::Neg, x) => eval(x, env)?.wrapping_neg(),
        Expr::Unary(UnOp::Not, x) => !eval(x, env)?,
        Expr::Binary(op, a, b) => {
            let (a, b) = (eval(a, env)?, eval(b, env)?);
            match op {
                BinOp::Mul => a.wrapping_mul(b),
                BinOp::Div => a.checked_div(b).ok_or(ExprError::DivideByZero)?,
                BinOp::Rem => a.checked_rem(b).ok_or(ExprError::DivideByZero)?,
                BinOp::Add => a.wrapping_add(b),
                BinOp::Sub => a.wrapping_sub(b),
                BinOp::Shl => a.checked_shl(b.min(64) as u32).unwrap_or(0),
                BinOp::Shr => a.checked_shr(b.min(64) as u32).unwrap_or(0),
                BinOp::And => a & b,
                BinOp::Xor => a ^ b,
                BinOp::Or => a | b,
                BinOp::Eq => u64::from(a == b),
                BinOp::Ne => u64::from(a != b),
                BinOp::Lt => u64::from(a < b),
                BinOp::Le => u64::from(a <= b),
                BinOp::Gt => u64::from(a > b),
                BinOp::Ge => u64::from(a >= b),
            }
        }
    })
}

/// Parses and evaluates.
pub fn evaluate(text: &str, env: &mut dyn Env) -> Result<u64, ExprError> {
    eval(&parse(text)?, env)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct T;
    impl Env for T {
        fn symbol(&mut self, module: Option<&str>, name: &str) -> Option<u64> {
            match (module, name) {
                (Some("nt"), "KiProcessorBlock") => Some(0xfffff805_5d000000),
                (None, "nt") => Some(0xfffff805_5c400000),
                (None, "KeBugCheckEx") => Some(0xfffff805_5c500000),
                _ => None,
            }
        }
        fn register(&mut self, name: &str) -> Result<u64, ExprError> {
            match name {
                "rsp" => Ok(0x1000),
                "$ip" | "rip" => Ok(0x2000),
                "$t3" => Ok(7),
                _ => Err(ExprError::BadRegister(name.into())),
            }
        }
        fn read(&mut self, addr: u64, size: u8) -> Option<u64> {
            (addr == 0x1000)
                .then_some(0x1122_3344_5566_7788 & (u64::MAX >> (64 - 8 * u32::from(size))))
        }
    }

    fn ev(s: &str) -> Result<u64, ExprError> {
        evaluate(s, &mut T)
    }

    #[test]
    fn numbers_in_every_radix() {
        assert_eq!(ev("10"), Ok(16));
        assert_eq!(ev("fffff805`5c400000"), Ok(0xfffff805_5c400000));
        assert_eq!(ev("0x10"), Ok(16));
        assert_eq!(ev("0n10"), Ok(10));
        assert_eq!(ev("0y101"), Ok(5));
        assert_eq!(ev("0t17"), Ok(15));
    }

    #[test]
    fn symbols_registers_and_memory() {
        assert_eq!(ev("nt!KiProcessorBlock+8"), Ok(0xfffff805_5d000008));
        assert_eq!(ev("nt + 0x100"), Ok(0xfffff805_5c400100));
        assert_eq!(ev("KeBugCheckEx"), Ok(0xfffff805_5c500000));
        assert_eq!(ev("@rsp+@$ip"), Ok(0x3000));
        // Pseudo-registers with or without `@`.
        assert_eq!(ev("$ip+$t3"), Ok(0x2007));
        assert_eq!(ev("@$T3*2"), Ok(14));
        assert!(matches!(ev("$nope"), Err(ExprError::BadRegister(_))));
        assert_eq!(ev("poi(@rsp)"), Ok(0x1122_3344_5566_7788));
        assert_eq!(ev("dwo(@rsp)"), Ok(0x5566_7788));
        assert_eq!(ev("by(1000)"), Ok(0x88));
        assert_eq!(ev("nt!Nope"), Err(ExprError::Unresolved("nt!Nope".into())));
        assert_eq!(ev("poi(2000)"), Err(ExprError::Memory(0x2000)));
        assert_eq!(ev("@zz"), Err(ExprError::BadRegister("zz".into())));
    }

    #[test]
    fn precedence_and_operators() {
        assert_eq!(ev("1+2*3"), Ok(7));
        assert_eq!(ev("(1+2)*3"), Ok(9));
        assert_eq!(ev("1<<4|1"), Ok(0x11));
        assert_eq!(ev("-1"), Ok(u64::MAX));
        assert_eq!(ev("~0 & ff"), Ok(0xff));
        assert_eq!(ev("0n10 / 0n3"), Ok(3));
        assert_eq!(ev("5 % 0"), Err(ExprError::DivideByZero));
        assert_eq!(ev("3 > 2"), Ok(1));
        assert_eq!(ev("3 >= 4"), Ok(0));
        assert_eq!(ev("2 != 2"), Ok(0));
        assert_eq!(ev("1 < 2 == 1"), Ok(1));
    }

    #[test]
    fn errors_point_at_the_column() {
        match parse("1 + + )") {
            Err(ExprError::Syntax { column, .. }) => assert_eq!(column, 7),
            other => panic!("{other:?}"),
        }
        match parse("(1 + 2") {
            Err(ExprError::Syntax { column, .. }) => assert!(column >= 1),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(""), Err(ExprError::Syntax { .. })));
        assert!(matches!(
            parse(&"(".repeat(100)),
            Err(ExprError::Syntax { .. })
        ));
        // Long chains of unary operators do not exhaust the stack.
        let deep = format!("{}1", "-~".repeat(2000));
        assert!(matches!(parse(&deep), Err(ExprError::Syntax { .. })));
        assert_eq!(ev(&format!("{}1", "--".repeat(20))), Ok(1));
        // The longest accepted chain of operators evaluates; a longer one is refused.
        assert_eq!(ev(&format!("{}1", "1+".repeat(256))), Ok(257));
        assert!(matches!(
            parse(&format!("{}1", "1+".repeat(2047))),
            Err(ExprError::Syntax { .. })
        ));
    }
}
