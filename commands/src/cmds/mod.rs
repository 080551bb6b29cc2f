//! The basic commands, one file each: `?`, `lm`, `db`…`dq`/`dps`, `u`/`ub`/`uf`, `x`, `dt`, `k`…, `.cxr`/`.trap`/`.exr`/`.frame`, `ln`, `r`, `~Ns`,
//! `vertarget`, `.writemem`, `.dump`, `.help`. Each declares its arguments (a [`crate::args::Syntax`]), runs on the engine and
//! returns a typed result that renders WinDbg's layout; its `command!` line is in
//! [`crate::registry::COMMANDS`].

pub(crate) mod common;
pub(crate) mod disasm;
pub(crate) mod display;
pub(crate) mod dt;
pub(crate) mod dump;
pub(crate) mod evaluate;
pub mod help;
pub(crate) mod lm;
pub(crate) mod ln;
pub(crate) mod processor;
pub(crate) mod registers;
pub(crate) mod run;
pub(crate) mod scope;
pub(crate) mod search;
pub mod session;
pub(crate) mod stack;
pub(crate) mod vertarget;
pub(crate) mod writemem;
pub(crate) mod x;
