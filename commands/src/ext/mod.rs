//! The extension commands: `!locks`, `!thread`, `!process`, `!stacks`, `!running`, `!analyze`,
//! `!deadlock`, `!hangcheck`, `!vm`, `!pool`, `!poolused`, `!poolfind`, `!ndiskd.*`.

pub mod analyze;
pub mod deadlock;
pub mod hangcheck;
pub mod locks;
pub mod ndis;
pub mod pool;
pub mod threads;
pub mod vm;

use crate::engine::{CmdError, Engine, Output};

/// The extensions, as typed (for completion and help).
pub const EXTENSIONS: &[&str] = &[
    "!locks",
    "!thread",
    "!process",
    "!stacks",
    "!running",
    "!analyze",
    "!deadlock",
    "!vm",
    "!pool",
    "!poolused",
    "!poolfind",
    "!ndiskd.pendingnbls",
    "!ndiskd.miniport",
    "!hangcheck",
];

/// Runs `!name args`, or says there is no such extension.
pub fn dispatch(e: &mut Engine, name: &str, args: &str) -> Result<Output, CmdError> {
    match name.to_ascii_lowercase().as_str() {
        "locks" | "kdexts.locks" => locks::command(e, args),
        "thread" => threads::thread_command(e, args),
        "process" => threads::process_command(e, args),
        "stacks" => threads::stacks_command(e, args),
        "running" => threads::running_command(e, args),
        "analyze" => analyze::command(e, args),
        "deadlock" => deadlock::command(e, args),
        "hangcheck" => hangcheck::command(e, args),
        "vm" => vm::command(e, args),
        "pool" => pool::pool_command(e, args),
        "poolused" => pool::poolused_command(e, args),
        "poolfind" => pool::poolfind_command(e, args),
        "ndiskd.pendingnbls" => ndis::pendingnbls_command(e, args),
        "ndiskd.miniport" | "ndiskd.miniports" | "ndiskd.netadapter" => {
            ndis::miniport_command(e, args)
        }
        other => Err(CmdError::Unknown(format!("!{other}"))),
    }
}
