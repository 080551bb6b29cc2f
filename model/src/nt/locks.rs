//! Executive resources on `nt!ExpSystemResourcesList`: held ones with their owners, waiters
//! and contention.
//!
//! One read per resource (its whole ERESOURCE, with read-ahead along the list), then for each
//! held one its owner table in one read and its waiters: the dispatcher wait list of the
//! event/semaphore (7601/9600) or the wait-chain entries (later builds), cross-checked against
//! the NumberOf*Waiters counters.

use std::collections::HashSet;

use serde::Serialize;

use super::procs::Thread;
use super::view::View;
use super::{Kernel, ModelError};
use crate::target::TargetError;

/// Largest owner table read (the classic extension refused more than 2000).
const MAX_OWNER_TABLE: u64 = 2000;
/// Largest waiter list followed.
const MAX_WAITERS: usize = 4096;
/// `Flag`: owned exclusively.
const OWNED_EXCLUSIVE: u64 = 0x80;

/// An owner entry.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Owner {
    /// The value in the entry (a thread, or an owner pointer with its low bits set).
    pub value: u64,
    /// The thread, after clearing owner-pointer bits.
    pub thread: u64,
    /// Recursion count.
    pub count: u64,
    /// Believed a current owner (`<*>`).
    pub current: bool,
    /// Set through ExSetResourceOwnerPointer.
    pub owner_pointer: bool,
    /// The cleared value is not a thread.
    pub unknown: bool,
}

/// A held resource.
#[derive(Debug, Clone, Serialize)]
pub struct Held {
    /// Its address.
    pub address: u64,
    /// Its symbol, for globals.
    pub symbol: Option<String>,
    /// Owned exclusively.
    pub exclusive: bool,
    /// ActiveCount.
    pub active_count: i64,
    /// Owners.
    pub owners: Vec<Owner>,
    /// ContentionCount.
    pub contention_count: u64,
    /// NumberOfSharedWaiters.
    pub shared_waiter_count: u64,
    /// NumberOfExclusiveWaiters.
    pub exclusive_waiter_count: u64,
    /// Threads waiting for shared access.
    pub shared_waiters: Vec<u64>,
    /// Threads waiting for exclusive access.
    pub exclusive_waiters: Vec<u64>,
    /// Anything that did not add up.
    pub warnings: Vec<String>,
}

/// What the walk found.
#[derive(Debug, Clone, Default)]
pub struct Locks {
    /// Resources visited.
    pub total: u64,
    /// The held ones (or all, verbose).
    pub held: Vec<Held>,
    /// Resources skipped between displayed ones, per displayed one (for the progress dots).
    pub skipped_before: Vec<u64>,
    /// Skipped after the last displayed one.
    pub skipped_after: u64,
    /// Why the walk ended early.
    pub note: Option<String>,
}

fn is_thread(k: &mut Kernel, a: u64) -> bool {
    a != 0 && a.is_multiple_of(8) && k.mem.u8(a).is_ok_and(|t| t == 6)
}

/// Threads on a dispatcher object's wait list (`Header.WaitListHead` → `_KWAIT_BLOCK`).
fn wait_list_threads(k: &mut Kernel, object: u64) -> Result<Vec<u64>, ModelError> {
    let nt = k.nt()?;
    let head = object + nt.offset("_DISPATCHER_HEADER", "WaitListHead")?;
    let link = nt.offset("_KWAIT_BLOCK", "WaitListEntry")?;
    let thread = nt.offset("_KWAIT_BLOCK", "Thread")?;
    let w = k.walk_list(head, None, MAX_WAITERS, false)?;
    if let Some(n) = &w.note {
        k.note_incomplete(format!("the waiters of {object:#x}: {n}"));
    }
    let mut out = Vec::new();
    for e in w.entries {
        match k.mem.u64(e - link + thread) {
            Ok(t) => out.push(t),
            Err(err) => k.note_incomplete(format!(
                "a waiter of {object:#x} (wait block {:#x}) is unreadable: {err}",
                e - link
            )),
        }
    }
    Ok(out)
}

/// Threads on a wait chain (17763+: a circular list of `_KWAIT_CHAIN_ENTRY` from the first).
fn wait_chain_threads(k: &mut Kernel, first: u64) -> Result<Vec<u64>, ModelError> {
    let nt = k.nt()?;
    let thread_off = nt.offset("_KWAIT_CHAIN_ENTRY", "Thread").ok();
    let event_off = nt.offset("_KWAIT_CHAIN_ENTRY", "Event")?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut cur = first;
    while cur != 0 && out.len() < MAX_WAITERS {
        if !seen.insert(cur) {
            k.note_incomplete(format!("the wait chain from {first:#x} loops at {cur:#x}"));
            break;
        }
        match thread_off {
            Some(o) => out.push(k.mem.u64(cur + o)?),
            // 14393: the thread is the one waiting on the entry's event.
            None => out.extend(wait_list_threads(k, cur + event_off)?),
        }
        let next = k.mem.u64(cur)?;
        if next == first {
            break;
        }
        cur = next;
    }
    if out.len() >= MAX_WAITERS {
        k.note_incomplete(format!(
            "the wait chain from {first:#x} was followed for {MAX_WAITERS} waiters only"
        ));
    }
    Ok(out)
}

/// The waiters of one side (shared or exclusive) of a resource, whichever form the field has.
fn waiters(k: &mut Kernel, field_value: u64) -> Result<Vec<u64>, ModelError> {
    if field_value == 0 {
        return Ok(Vec::new());
    }
    let ty = k.mem.u8(field_value)?;
    // A dispatcher object (event 0/1, semaphore 5) is the 7601/9600 form.
    let chain = k.nt()?.has_type("_KWAIT_CHAIN_ENTRY") && !matches!(ty, 0 | 1 | 5);
    if chain {
        wait_chain_threads(k, field_value)
    } else {
        wait_list_threads(k, field_value)
    }
}

fn held_from(k: &mut Kernel, v: &View) -> Result<Held, ModelError> {
    let addr = v.addr;
    let flag = v.get("Flag")?;
    let active = v.get_signed("ActiveCount")?;
    let mut owners = Vec::new();
    let mut raw_owners: Vec<(u64, u64)> = Vec::new();
    let inline = v.get("OwnerEntry.OwnerThread")?;
    if inline != 0 {
        raw_owners.push((inline, v.get("OwnerEntry.OwnerCount")?));
    }
    let table = v.get("OwnerTable")?;
    let mut warnings = Vec::new();
    if table != 0 {
        let nt = k.nt()?;
        let esize = nt.size_of("_OWNER_ENTRY")?;
        let size = k.mem.u32(table + nt.offset("_OWNER_ENTRY", "TableSize")?)? as u64;
        if size > MAX_OWNER_TABLE {
            warnings.push(format!("owner table of {size} entries is not plausible"));
        } else if size > 1 {
            let bytes = k.mem.kread(table, (size * esize) as usize)?;
            for i in 1..size {
                let e = View::new(
                    nt.clone(),
                    "_OWNER_ENTRY",
                    table + i * esize,
                    bytes[(i * esize) as usize..((i + 1) * esize) as usize].to_vec(),
                );
                let t = e.get("OwnerThread")?;
                if t != 0 {
                    raw_owners.push((t, e.get("OwnerCount")?));
                }
            }
        }
    }
    let shared_count = v.get("NumberOfSharedWaiters")?;
    let exclusive_count = v.get("NumberOfExclusiveWaiters")?;
    let shared_waiters = waiters(k, v.get("SharedWaiters")?)?;
    let exclusive_waiters = waiters(k, v.get("ExclusiveWaiters")?)?;
    if shared_waiters.len() as u64 != shared_count {
        warnings.push(format!(
            "NumberOfSharedWaiters is {shared_count} but {} threads wait for shared access",
            shared_waiters.len()
        ));
    }
    if exclusive_waiters.len() as u64 != exclusive_count {
        warnings.push(format!(
            "NumberOfExclusiveWaiters is {exclusive_count} but {} threads wait for exclusive access",
            exclusive_waiters.len()
        ));
    }
    let exclusive = flag & OWNED_EXCLUSIVE != 0;
    for (value, count) in raw_owners {
        let owner_pointer = value & 3 == 3;
        let thread = value & !3;
        let unknown = owner_pointer && !is_thread(k, thread);
        // Classic rule: a shared owner that also waits for shared access is not yet an owner.
        let current = !(active > 0 && !exclusive && shared_waiters.contains(&thread));
        owners.push(Owner {
            value,
            thread,
            count,
            current,
            owner_pointer,
            unknown,
        });
    }
    let symbol = k.global_name(addr);
    Ok(Held {
        address: addr,
        symbol,
        exclusive,
        active_count: active,
        owners,
        contention_count: v.get("ContentionCount")?,
        shared_waiter_count: shared_count,
        exclusive_waiter_count: exclusive_count,
        shared_waiters,
        exclusive_waiters,
        warnings,
    })
}

/// Walks the resource list. `verbose` shows every resource, held or not; `only` one address.
pub fn walk(k: &mut Kernel, verbose: bool, only: Option<u64>) -> Result<Locks, ModelError> {
    let nt = k.nt()?;
    let size = nt.size_of("_ERESOURCE")? as usize;
    let mut out = Locks::default();
    if let Some(a) = only {
        let v = k.view("_ERESOURCE", a)?;
        out.total = 1;
        out.held.push(held_from(k, &v)?);
        out.skipped_before.push(0);
        return Ok(out);
    }
    let head = k.sym("ExpSystemResourcesList")?;
    let link = nt.offset("_ERESOURCE", "SystemResourcesList")?;
    let w = k.walk_list(head, Some((link, size)), super::MAX_LIST, true)?;
    out.note = w.note.map(|n| {
        if n.contains("time budget") {
            format!(
                "stopped after {} resources: the time budget ran out before the end of the list",
                w.entries.len()
            )
        } else {
            format!("stopped after {} resources: {n}", w.entries.len())
        }
    });
    let mut skipped = 0u64;
    for (entry, bytes) in w.entries.iter().zip(w.nodes) {
        out.total += 1;
        let v = View::new(nt.clone(), "_ERESOURCE", entry - link, bytes);
        let active = v.get_signed("ActiveCount")?;
        if active == 0 && !verbose {
            skipped += 1;
            continue;
        }
        match held_from(k, &v) {
            Ok(h) => out.held.push(h),
            Err(ModelError::Target(e @ (TargetError::OutOfTime | TargetError::Cancelled))) => {
                let why = if matches!(e, TargetError::Cancelled) {
                    "cancelled"
                } else {
                    "the time budget ran out"
                };
                out.note = Some(format!("stopped after {} resources: {why}", out.total));
                break;
            }
            Err(e) => {
                let mut h = held_from_error(&v, &e);
                h.warnings.push(format!("could not read all of it: {e}"));
                k.note_incomplete(format!(
                    "resource {:#x} could not be read whole: {e}",
                    v.addr
                ));
                out.held.push(h);
            }
        }
        out.skipped_before.push(skipped);
        skipped = 0;
    }
    out.skipped_after = skipped;
    if let Some(n) = &out.note {
        k.note_incomplete(n.clone());
    }
    Ok(out)
}

fn held_from_error(v: &View, _e: &ModelError) -> Held {
    Held {
        address: v.addr,
        symbol: None,
        exclusive: v.get_or("Flag", 0) & OWNED_EXCLUSIVE != 0,
        active_count: v.get_signed("ActiveCount").unwrap_or(0),
        owners: Vec::new(),
        contention_count: v.get_or("ContentionCount", 0),
        shared_waiter_count: v.get_or("NumberOfSharedWaiters", 0),
        exclusive_waiter_count: v.get_or("NumberOfExclusiveWaiters", 0),
        shared_waiters: Vec::new(),
        exclusive_waiters: Vec::new(),
        warnings: Vec::new(),
    }
}

/// Most resources tried per waiter before it counts as leading nowhere.
const MAX_CANDIDATES: usize = 16;

/// The resources waiting threads wait for, reached from the threads (see [`from_waiters`]).
#[derive(Debug, Clone, Default)]
pub struct FromWaiters {
    /// The held resources reached, with their owners and waiters.
    pub held: Vec<Held>,
    /// Resources reached that nobody holds (their waiters are about to run).
    pub free: Vec<u64>,
    /// Waiters that led to no resource, each with why.
    pub unresolved: Vec<(u64, String)>,
    /// Resources read to find them (the right ones included).
    pub tried: usize,
}

/// Frames of the dispatcher's wait path, below the code that waits for a resource.
const DISPATCH: [&str; 9] = [
    "KiSwapContext",
    "SwapContext",
    "KiSwapThread",
    "KiCommitThreadWait",
    "KeWaitForSingleObject",
    "KeWaitForMultipleObjects",
    "KiSchedulerApc",
    "KiDeliverApc",
    "KiCheckForKernelApcDelivery",
];

fn function_of(call_site: &str) -> &str {
    let name = call_site.split('!').nth(1).unwrap_or(call_site);
    name.split('+').next().unwrap_or(name)
}

/// The values a waiter's stack holds that may be the resource it waits for, likeliest first:
/// the non-volatile registers of the frames that wait for it (ExpWaitForResource and its
/// callers up to the first frame off the wait path — the code needs the resource after the
/// wait, so it is in a register the frames inside saved, or in their memory), then the words
/// of those frames.
fn candidates(k: &mut Kernel, t: &Thread, exclude: &HashSet<u64>) -> Result<Vec<u64>, String> {
    let stack = k
        .stack_of(t)
        .map_err(|e| format!("its stack is unreadable: {e}"))?;
    let frames = &stack.frames;
    let first = frames
        .iter()
        .position(|f| !DISPATCH.contains(&function_of(&f.call_site)))
        .ok_or_else(|| {
            format!(
                "its stack has no frame above the wait{}",
                stack
                    .note
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            )
        })?;
    let last = frames[first..]
        .iter()
        .position(|f| !super::threads::WAIT_PATH.contains(&function_of(&f.call_site)))
        .map_or(frames.len() - 1, |i| first + i);
    let thread_size = k
        .nt()
        .ok()
        .and_then(|nt| nt.size_of("_ETHREAD").ok())
        .unwrap_or(0x800);
    let code: HashSet<u64> = frames
        .iter()
        .flat_map(|f| [f.ip, f.return_address])
        .collect();
    let plausible = |v: u64| {
        v.is_multiple_of(8)
            && v >> 47 == 0x1ffff
            && !(t.stack_limit..t.stack_base).contains(&v)
            && !(t.ethread.saturating_sub(0x100)..t.ethread + thread_size).contains(&v)
            && v != t.process
            && !exclude.contains(&v)
            && !code.contains(&v)
    };
    let mut out: Vec<u64> = Vec::new();
    let push = |v: u64, out: &mut Vec<u64>| {
        if plausible(v) && !out.contains(&v) {
            out.push(v);
        }
    };
    for f in &frames[first..=last] {
        for (_, v) in f.regs.nonvolatile() {
            push(v, &mut out);
        }
    }
    // The frames' own memory: from the innermost waiting frame's RSP to the end of the
    // outermost one (the return address of the frame beyond it).
    let lo = frames[first].child_sp;
    let hi = frames
        .get(last + 1)
        .map_or(lo + 0x200, |f| f.child_sp)
        .min(lo + 0x1000);
    if hi > lo
        && let Ok(bytes) = k.mem.kread(lo, (hi - lo) as usize)
    {
        for w in bytes.chunks_exact(8) {
            push(u64::from_le_bytes(w.try_into().unwrap_or([0; 8])), &mut out);
        }
    }
    Ok(out)
}

/// Reads the resource at `a` when one of its waiter fields holds one of `keys` (the objects
/// the waiters wait on, or their wait-chain entries): its owners and waiters then. `None` when
/// it is not a resource those threads wait for.
fn resource_if_waited(
    k: &mut Kernel,
    a: u64,
    keys: &HashSet<u64>,
) -> Result<Option<Held>, ModelError> {
    let v = k.view("_ERESOURCE", a)?;
    let shared = v.get("SharedWaiters")?;
    let exclusive = v.get("ExclusiveWaiters")?;
    if !(keys.contains(&shared) || keys.contains(&exclusive)) {
        return Ok(None);
    }
    Ok(Some(held_from(k, &v)?))
}

/// The resources the threads in `waiters` (each waiting with reason WrResource) wait for,
/// reached from the threads rather than from the resource list: what each waits on is the
/// resource's shared-waiters semaphore or exclusive-waiters event (7601, 9600) or the event of
/// a wait-chain entry on its own stack (later builds), both named by a waiter field of the
/// resource; the resource itself is the one `ExpWaitForResource` keeps across the wait, in a
/// register the frames inside it saved or in its frames. `globals` (resources at known
/// addresses) are tried first. A resource reached gives all its waiters at once; a waiter
/// that leads to none is returned in `unresolved` (the caller walks the list for it).
pub fn from_waiters(
    k: &mut Kernel,
    waiters: &[&Thread],
    globals: &[u64],
) -> Result<FromWaiters, ModelError> {
    let mut out = FromWaiters::default();
    let nt = k.nt()?;
    // What the waiters wait on, and the wait-chain entries those objects sit in.
    let mut keys: HashSet<u64> = HashSet::new();
    let chain_event = nt.offset("_KWAIT_CHAIN_ENTRY", "Event").ok();
    for t in waiters {
        for w in &t.waits {
            keys.insert(w.object);
            if let Some(off) = chain_event {
                keys.insert(w.object.wrapping_sub(off));
            }
        }
    }
    keys.remove(&0);
    let mut covered: HashSet<u64> = HashSet::new();
    let mut seen: HashSet<u64> = HashSet::new();
    let take = |h: Held, out: &mut FromWaiters, covered: &mut HashSet<u64>| {
        covered.extend(h.shared_waiters.iter().chain(&h.exclusive_waiters));
        if h.active_count == 0 {
            out.free.push(h.address);
        } else {
            out.held.push(h);
        }
    };
    for &g in globals {
        if !seen.insert(g) {
            continue;
        }
        out.tried += 1;
        // A global that cannot be read is no answer: the stacks are asked next.
        if let Ok(Some(h)) = resource_if_waited(k, g, &keys) {
            take(h, &mut out, &mut covered);
        }
    }
    let exclude: HashSet<u64> = keys.iter().copied().collect();
    for t in waiters {
        if covered.contains(&t.ethread) {
            continue;
        }
        let cands = match candidates(k, t, &exclude) {
            Ok(c) => c,
            Err(why) => {
                out.unresolved.push((t.ethread, why));
                continue;
            }
        };
        let mut found = false;
        let cands: Vec<u64> = cands
            .into_iter()
            .filter(|c| !seen.contains(c))
            .take(MAX_CANDIDATES)
            .collect();
        for c in cands {
            seen.insert(c);
            out.tried += 1;
            match resource_if_waited(k, c, &keys) {
                Ok(Some(h)) => {
                    let mine = h.shared_waiters.contains(&t.ethread)
                        || h.exclusive_waiters.contains(&t.ethread);
                    take(h, &mut out, &mut covered);
                    if mine {
                        found = true;
                        break;
                    }
                }
                Ok(None) => {}
                Err(ModelError::Target(e)) if e.is_transient() => return Err(e.into()),
                Err(_) => {}
            }
        }
        if !found && !covered.contains(&t.ethread) {
            out.unresolved.push((
                t.ethread,
                "no resource its stack holds names it as a waiter".into(),
            ));
        }
    }
    out.held.sort_by_key(|h| h.address);
    Ok(out)
}
