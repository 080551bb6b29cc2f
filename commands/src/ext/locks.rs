//! `!locks`: executive resources on `nt!ExpSystemResourcesList` (the walk is the model's,
//! [`kdnet_model::nt::locks`]): held ones with their owners, waiters and contention, and the
//! `N total locks, M locks currently held` summary.

use serde_json::json;

use crate::engine::{CmdError, Engine, Output};
use kdnet_model::nt::locks::walk;

fn progress(text: &mut String, skipped: u64) {
    if skipped > 0 {
        text.push_str("KD: Scanning for held locks.");
        for _ in 0..skipped / 32 {
            text.push('.');
        }
        text.push_str("\n\n");
    }
}

/// `!locks [-v] [ADDRESS]`.
pub fn command(e: &mut Engine, args: &str) -> Result<Output, CmdError> {
    let mut verbose = false;
    let mut only = None;
    for a in args.split_whitespace() {
        match a {
            "-v" | "-d" => verbose = true,
            "-p" => {}
            other if other.starts_with('-') => {
                return Err(CmdError::Usage(format!(
                    "!locks: unknown option {other} (use -v, -d, -p or an address)"
                )));
            }
            other => only = Some(e.eval(other)?),
        }
    }
    let locks = walk(&mut e.kernel, verbose, only)?;
    let mut text = String::from("**** DUMP OF ALL RESOURCE OBJECTS ****\n");
    for (h, skipped) in locks.held.iter().zip(&locks.skipped_before) {
        progress(&mut text, *skipped);
        let name = match &h.symbol {
            Some(s) => format!("{s} (0x{:x})", h.address),
            None => format!("0x{:x}", h.address),
        };
        let state = if h.active_count == 0 {
            "Available".to_string()
        } else if h.exclusive {
            "Exclusively owned".to_string()
        } else {
            format!("Shared {} owning threads", h.active_count)
        };
        text.push_str(&format!("Resource @ {name}    {state}\n"));
        if h.contention_count != 0 {
            text.push_str(&format!("    Contention Count = {}\n", h.contention_count));
        }
        if h.shared_waiter_count != 0 {
            text.push_str(&format!(
                "    NumberOfSharedWaiters = {}\n",
                h.shared_waiter_count
            ));
        }
        if h.exclusive_waiter_count != 0 {
            text.push_str(&format!(
                "    NumberOfExclusiveWaiters = {}\n",
                h.exclusive_waiter_count
            ));
        }
        if !h.owners.is_empty() {
            text.push_str("     Threads:");
            for o in &h.owners {
                text.push_str(&format!(
                    " {:x}-{:02x}{}",
                    o.value,
                    o.count,
                    if o.current { "<*>" } else { "" }
                ));
                if o.owner_pointer {
                    if o.unknown {
                        text.push_str(" *** Unknown owner, possibly FileSystem");
                    } else {
                        text.push_str(&format!(" *** Actual Thread {:x}", o.thread));
                    }
                }
            }
            text.push('\n');
        }
        for (label, list) in [
            ("Threads Waiting On Shared Access", &h.shared_waiters),
            ("Threads Waiting On Exclusive Access", &h.exclusive_waiters),
        ] {
            if list.is_empty() {
                continue;
            }
            text.push_str(&format!("     {label}:\n"));
            for chunk in list.chunks(4) {
                let line: Vec<String> = chunk.iter().map(|t| format!("{t:016x}")).collect();
                text.push_str(&format!("              {}\n", line.join("       ")));
            }
        }
        for w in &h.warnings {
            text.push_str(&format!("    WARNING: {w}\n"));
        }
        text.push('\n');
    }
    progress(&mut text, locks.skipped_after);
    let held_count = locks.held.iter().filter(|h| h.active_count != 0).count();
    if held_count > 0 {
        text.push_str(&format!(
            "{} total locks, {} locks currently held\n",
            locks.total, held_count
        ));
    } else {
        text.push_str(&format!("{} total locks\n", locks.total));
    }
    if let Some(n) = &locks.note {
        text.push_str(&format!("NOTE: {n}\n"));
    }
    let held: Vec<_> = locks
        .held
        .iter()
        .map(|h| {
            json!({
                "address": h.address,
                "symbol": h.symbol,
                "state": if h.active_count == 0 { "available" } else if h.exclusive { "exclusive" } else { "shared" },
                "active_count": h.active_count,
                "exclusive_owner": h.exclusive.then(|| h.owners.first().map(|o| o.thread)).flatten(),
                "shared_owners": if h.exclusive { vec![] } else { h.owners.iter().map(|o| o.thread).collect::<Vec<_>>() },
                "owners": h.owners,
                "contention_count": h.contention_count,
                "shared_waiters": h.shared_waiters,
                "exclusive_waiters": h.exclusive_waiters,
                "number_of_shared_waiters": h.shared_waiter_count,
                "number_of_exclusive_waiters": h.exclusive_waiter_count,
                "warnings": h.warnings,
            })
        })
        .collect();
    Ok(Output {
        text,
        json: json!({
            "total_locks": locks.total,
            "held_locks": held_count,
            "held": held,
            "complete": locks.note.is_none(),
            "note": locks.note,
        }),
    })
}
