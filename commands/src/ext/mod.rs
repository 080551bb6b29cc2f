//! The extension commands: `!locks`, `!thread`, `!process`, `!stacks`, `!running`, `!analyze`,
//! `!deadlock`, `!hangcheck`, `!vm`, `!pool`, `!poolused`, `!poolfind`, `!ndiskd.*`, the I/O
//! path (`!irp`, `!irpfind`, `!devobj`, `!drvobj`, `!devstack`, `!devnode`, `!fileobj`,
//! `!object`, `!handle`) and the filter manager (`!fltkd.*`).

use std::sync::Arc;

use kdnet_model::nt::{Kernel, ModuleSymbols};
use kdnet_symbols::TypeTable;

use crate::engine::CmdError;

pub mod analyze;
pub mod deadlock;
pub mod exqueue;
pub mod fltkd;
pub mod hangcheck;
pub mod io;
pub mod locks;
pub mod ndis;
pub mod objects;
pub mod pool;
pub mod pte;
pub mod sched;
pub mod threads;
pub mod timers;
pub mod verifier;
pub mod vm;

/// A driver's base, its symbol table and where the table came from (a PDB along the symbol
/// path, or `built-in`), by its short name (`ndis`, `FLTMGR`); `file` and `pdb` name it in
/// errors. A module missing from a list that is not whole may be loaded: said so.
pub(crate) fn module_table(
    k: &mut Kernel,
    short: &str,
    file: &str,
    pdb: &str,
) -> Result<(u64, Arc<TypeTable>, String), CmdError> {
    let mods = k.modules()?.to_vec();
    let Some(i) = mods
        .iter()
        .position(|m| m.short.eq_ignore_ascii_case(short))
    else {
        return Err(CmdError::Usage(match k.modules_incomplete() {
            Some(why) => format!(
                "{file} is not in the module list, but the list is incomplete ({why}): it may be loaded"
            ),
            None => format!("{file} is not loaded"),
        }));
    };
    match k.module_symbols(i).as_deref() {
        Some(ModuleSymbols::Table { table, source }) => {
            Ok((mods[i].base, table.clone(), source.clone()))
        }
        _ => {
            let problem = k
                .modules()?
                .get(i)
                .and_then(|m| m.symbols_problem().map(str::to_string));
            Err(CmdError::Usage(match problem {
                Some(p) => format!("the symbols of {file} could not be loaded just now: {p}"),
                None => format!(
                    "no symbols for {file}: {pdb} is needed (give a symbol path with --symbols)"
                ),
            }))
        }
    }
}
