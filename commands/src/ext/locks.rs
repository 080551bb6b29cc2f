//! `!locks`: executive resources on `nt!ExpSystemResourcesList` (the walk is the model's,
//! [`kdnet_model::nt::locks`]): held ones with their owners, waiters and contention, and the
//! `N total locks, M locks currently held` summary.

use schemars::JsonSchema;
use serde::Serialize;

use crate::args::{Args, Syntax, flag, opt_expr};
use crate::engine::{CmdError, Engine};
use crate::ext::threads::{ThreadInfo, thread_info};
use crate::registry::Render;
use kdnet_model::nt::locks::{Held, Owner, walk};

/// `!locks [-v] [-d] [-p] [ADDR]`.
pub const SYNTAX: Syntax = Syntax {
    flags: &[
        flag(
            "-v",
            "every resource, held or not, and each owner thread with its stack",
        ),
        flag("-d", "every resource, held or not"),
        flag(
            "-p",
            "accepted, as WinDbg's (performance data is not shown)",
        ),
    ],
    params: &[opt_expr("ADDR")],
    length: false,
};

/// An owner entry of a resource.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct LockOwner {
    /// The value in the entry (a thread, or an owner pointer with its low bits set).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub value: u64,
    /// The thread, after clearing owner-pointer bits.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub thread: u64,
    /// Recursion count.
    pub count: u64,
    /// Believed a current owner (`<*>`).
    pub current: bool,
    /// Set through ExSetResourceOwnerPointer.
    pub owner_pointer: bool,
    /// The cleared value is not a thread.
    pub unknown: bool,
    /// `-v`: the owner thread as `!thread` shows it, with its stack.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Box<ThreadInfo>>,
    /// `-v`: why the owner thread could not be shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details_error: Option<String>,
}

impl From<&Owner> for LockOwner {
    fn from(o: &Owner) -> LockOwner {
        LockOwner {
            value: o.value,
            thread: o.thread,
            count: o.count,
            current: o.current,
            owner_pointer: o.owner_pointer,
            unknown: o.unknown,
            details: None,
            details_error: None,
        }
    }
}

/// One resource shown.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Resource {
    /// Its address.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub address: u64,
    /// Its symbol, for globals.
    pub symbol: Option<String>,
    /// `exclusive`, `shared` or `available`.
    pub state: String,
    /// ActiveCount.
    pub active_count: i64,
    /// The owner, when owned exclusively.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub exclusive_owner: Option<u64>,
    /// The owning threads, when shared.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Vec<crate::hex::Hex>")]
    pub shared_owners: Vec<u64>,
    /// The owner entries.
    pub owners: Vec<LockOwner>,
    /// ContentionCount.
    pub contention_count: u64,
    /// Threads waiting for shared access.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Vec<crate::hex::Hex>")]
    pub shared_waiters: Vec<u64>,
    /// Threads waiting for exclusive access.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Vec<crate::hex::Hex>")]
    pub exclusive_waiters: Vec<u64>,
    /// NumberOfSharedWaiters.
    pub number_of_shared_waiters: u64,
    /// NumberOfExclusiveWaiters.
    pub number_of_exclusive_waiters: u64,
    /// Anything that did not add up.
    pub warnings: Vec<String>,
    /// Resources skipped (not held) before this one, for the progress dots.
    #[serde(skip)]
    pub skipped_before: u64,
}

impl From<&Held> for Resource {
    fn from(h: &Held) -> Resource {
        Resource {
            address: h.address,
            symbol: h.symbol.clone(),
            state: if h.active_count == 0 {
                "available"
            } else if h.exclusive {
                "exclusive"
            } else {
                "shared"
            }
            .into(),
            active_count: h.active_count,
            exclusive_owner: h
                .exclusive
                .then(|| h.owners.first().map(|o| o.thread))
                .flatten(),
            shared_owners: if h.exclusive {
                Vec::new()
            } else {
                h.owners.iter().map(|o| o.thread).collect()
            },
            owners: h.owners.iter().map(LockOwner::from).collect(),
            contention_count: h.contention_count,
            shared_waiters: h.shared_waiters.clone(),
            exclusive_waiters: h.exclusive_waiters.clone(),
            number_of_shared_waiters: h.shared_waiter_count,
            number_of_exclusive_waiters: h.exclusive_waiter_count,
            warnings: h.warnings.clone(),
            skipped_before: 0,
        }
    }
}

/// What `!locks` found.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Locks {
    /// Resources visited.
    pub total_locks: u64,
    /// Resources held.
    pub held_locks: usize,
    /// The resources shown: the held ones (every one with -v).
    pub held: Vec<Resource>,
    /// Whether the whole list was walked.
    pub complete: bool,
    /// Why the walk ended early.
    pub note: Option<String>,
    /// Resources skipped after the last one shown, for the progress dots.
    #[serde(skip)]
    pub skipped_after: u64,
}

/// `!locks [-v] [-d] [-p] [ADDR]`.
pub fn run(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<Locks, CmdError> {
    let verbose = a.flag("-v");
    let only = a.expr(e, "ADDR")?;
    let all = verbose || a.flag("-d");
    let locks = walk(&mut e.kernel, all, only)?;
    let mut held: Vec<Resource> = locks
        .held
        .iter()
        .zip(&locks.skipped_before)
        .map(|(h, skipped)| Resource {
            skipped_before: *skipped,
            ..Resource::from(h)
        })
        .collect();
    if verbose {
        owner_details(e, &mut held);
    }
    Ok(Locks {
        total_locks: locks.total,
        held_locks: locks.held.iter().filter(|h| h.active_count != 0).count(),
        held,
        complete: locks.note.is_none(),
        note: locks.note,
        skipped_after: locks.skipped_after,
    })
}

/// Most owner threads `-v` shows in full.
const MAX_OWNERS_SHOWN: usize = 64;

/// `-v`: each owner thread of a held resource as `!thread` shows it, each thread read once.
fn owner_details(e: &mut Engine, held: &mut [Resource]) {
    let mut seen: std::collections::HashMap<u64, Result<Box<ThreadInfo>, String>> =
        std::collections::HashMap::new();
    for owner in held
        .iter_mut()
        .filter(|r| r.active_count != 0)
        .flat_map(|r| r.owners.iter_mut())
        .filter(|o| !o.unknown && o.thread != 0)
    {
        if !seen.contains_key(&owner.thread) {
            if seen.len() >= MAX_OWNERS_SHOWN {
                e.kernel.note_incomplete(format!(
                    "!locks -v: the first {MAX_OWNERS_SHOWN} owner threads are shown in full"
                ));
                break;
            }
            let info = e
                .kernel
                .thread(owner.thread)
                .map_err(CmdError::from)
                .and_then(|t| thread_info(e, &t, true))
                .map(Box::new)
                .map_err(|err| err.to_string());
            seen.insert(owner.thread, info);
        }
        match &seen[&owner.thread] {
            Ok(info) => owner.details = Some(info.clone()),
            Err(why) => {
                e.kernel.note_incomplete(format!(
                    "!locks -v: owner thread {:x} could not be shown: {why}",
                    owner.thread
                ));
                owner.details_error = Some(why.clone());
            }
        }
    }
}

fn progress(text: &mut String, skipped: u64) {
    if skipped > 0 {
        text.push_str("KD: Scanning for held locks.");
        for _ in 0..skipped / 32 {
            text.push('.');
        }
        text.push_str("\n\n");
    }
}

impl Render for Locks {
    fn render(&self, text: &mut String) {
        text.push_str("**** DUMP OF ALL RESOURCE OBJECTS ****\n");
        for h in &self.held {
            progress(text, h.skipped_before);
            let name = match &h.symbol {
                Some(s) => format!("{s} (0x{:x})", h.address),
                None => format!("0x{:x}", h.address),
            };
            let state = match h.state.as_str() {
                "available" => "Available".to_string(),
                "exclusive" => "Exclusively owned".to_string(),
                _ => format!("Shared {} owning threads", h.active_count),
            };
            text.push_str(&format!("Resource @ {name}    {state}\n"));
            if h.contention_count != 0 {
                text.push_str(&format!("    Contention Count = {}\n", h.contention_count));
            }
            if h.number_of_shared_waiters != 0 {
                text.push_str(&format!(
                    "    NumberOfSharedWaiters = {}\n",
                    h.number_of_shared_waiters
                ));
            }
            if h.number_of_exclusive_waiters != 0 {
                text.push_str(&format!(
                    "    NumberOfExclusiveWaiters = {}\n",
                    h.number_of_exclusive_waiters
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
                for o in &h.owners {
                    if let Some(info) = &o.details {
                        let mut block = String::new();
                        info.render(&mut block);
                        text.push('\n');
                        for line in block.lines() {
                            if line.is_empty() {
                                text.push('\n');
                            } else {
                                text.push_str(&format!("     {line}\n"));
                            }
                        }
                    } else if let Some(why) = &o.details_error {
                        text.push_str(&format!("     THREAD {:x}: {why}\n", o.thread));
                    }
                }
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
        progress(text, self.skipped_after);
        if self.held_locks > 0 {
            text.push_str(&format!(
                "{} total locks, {} locks currently held\n",
                self.total_locks, self.held_locks
            ));
        } else {
            text.push_str(&format!("{} total locks\n", self.total_locks));
        }
        if let Some(n) = &self.note {
            text.push_str(&format!("NOTE: {n}\n"));
        }
    }
}
