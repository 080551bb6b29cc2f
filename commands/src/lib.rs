//! The commands of kdnet over the target model (`kdnet-model`): the command engine, WinDbg's
//! expressions, the script language and the extensions (`!locks` … `!hangcheck`). Front ends
//! (the CLI, the watcher) run them; the model below knows nothing of them.

pub mod args;
pub mod calendar;
pub mod cmds;
pub mod control;
pub mod engine;
pub mod expr;
pub mod ext;
pub mod hex;
pub mod registry;
mod regs;
pub mod script;
