//! Executive resources on `nt!ExpSystemResourcesList`: held ones with their owners, waiters
//! and contention.
//!
//! One read per resource (its whole ERESOURCE, with read-ahead along the list), then for each
//! held one its owner table in one read and its waiters: the dispatcher wait list of the
//! event/semaphore (7601/9600) or the wait-chain entries (later builds), cross-checked against
//! the NumberOf*Waiters counters.
//!
//! Or, for the resources waiting threads wait for, from the threads ([`from_waiters`]): no
//! walk of the list, whose length then does not matter.

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

/// Threads on a wait chain: a circular list of `_KWAIT_CHAIN_ENTRY` from the first, each naming
/// its thread (17763+), or a null-terminated singly linked one whose entries' events the
/// threads wait on (14393).
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

/// A waiter field of a resource (`SharedWaiters`, `ExclusiveWaiters`): the pointer it holds,
/// or the head of the `_KWAIT_CHAIN` it is (14393's shared side), and whether it is that
/// embedded chain.
fn waiter_field(v: &View, field: &str) -> Result<(u64, bool), ModelError> {
    let head = format!("{field}.Head");
    if v.has(&head) {
        Ok((v.get(&head)?, true))
    } else {
        Ok((v.get(field)?, false))
    }
}

/// The waiters of one side (shared or exclusive) of a resource, whichever form the field has.
fn waiters(k: &mut Kernel, (field_value, embedded): (u64, bool)) -> Result<Vec<u64>, ModelError> {
    if field_value == 0 {
        return Ok(Vec::new());
    }
    // The form is the table's: an embedded `_KWAIT_CHAIN` heads a chain (14393's shared
    // side); where wait-chain entries name their threads (17763 on) a pointer leads to the
    // first entry of a chain; otherwise to a dispatcher object (an event or a semaphore: 7601,
    // 9600, 14393's exclusive side).
    let chain = embedded || k.nt()?.has_field("_KWAIT_CHAIN_ENTRY", "Thread");
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
    let shared_waiters = waiters(k, waiter_field(v, "SharedWaiters")?)?;
    let exclusive_waiters = waiters(k, waiter_field(v, "ExclusiveWaiters")?)?;
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
            Err(e) if e.is_layout() => return Err(e),
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

/// Most values read as resources per waiter before it counts as leading nowhere.
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
    /// Values looked at as resources to find them (the right ones included).
    pub tried: usize,
}

/// Bytes of a waiter's stack looked through, from its saved RSP: the frames of the wait (the
/// dispatcher's, ExpWaitForResource's, the acquiring function's) and more; then further.
const STACK_WINDOWS: [u64; 2] = [0x800, 0x2000];

/// What a value on a waiter's stack cannot be when it is the resource it waits for.
pub struct NotResources {
    /// Kernel stacks, ETHREADs (start, end) of the threads known.
    ranges: Vec<(u64, u64)>,
    /// Processes, and the objects the waiters wait on with their wait-chain entries.
    values: HashSet<u64>,
    /// Loaded images: code, or a driver's globals (read after the rest).
    images: Vec<(u64, u64)>,
}

impl NotResources {
    /// From every thread and process known.
    pub fn new(k: &mut Kernel, threads: &[&Thread], processes: &[u64]) -> NotResources {
        let thread_size = k
            .nt()
            .ok()
            .and_then(|nt| nt.size_of("_ETHREAD").ok())
            .unwrap_or(0x800);
        let mut ranges = Vec::new();
        for t in threads {
            ranges.push((t.stack_limit, t.stack_base));
            // The thread object and the header before it (a header and its optional
            // headers; not further: a neighbouring pool block may be the resource itself).
            ranges.push((t.ethread.saturating_sub(0x60), t.ethread + thread_size));
        }
        let images = k
            .modules()
            .map(|m| {
                m.iter()
                    .map(|m| (m.base, m.base + u64::from(m.size)))
                    .collect()
            })
            .unwrap_or_default();
        NotResources {
            ranges,
            values: processes.iter().copied().collect(),
            images,
        }
    }
}

/// The values a waiter's stack holds that may be the resource it waits for, likeliest first.
/// ExpWaitForResource needs the resource once the wait ends, so it keeps it in a
/// non-volatile register (which the frames inside it save on the stack) or in its frame: the
/// words from the saved RSP up are looked at, those nearest the object waited on (a wait-chain
/// entry in ExpWaitForResource's frame) first; words that point into loaded images (code, or
/// a driver's global) after the others.
fn candidates(
    k: &mut Kernel,
    t: &Thread,
    not: &NotResources,
    window: (u64, u64),
) -> Result<Vec<u64>, ModelError> {
    let lo = t.kernel_stack.saturating_add(window.0);
    let hi = t.kernel_stack.saturating_add(window.1).min(t.stack_base);
    if !t.stack_resident || t.kernel_stack < t.stack_limit || lo >= hi {
        return Ok(Vec::new());
    }
    let bytes = k.mem.kread_ahead(lo, (hi - lo) as usize)?;
    let anchor = t
        .waits
        .iter()
        .map(|w| w.object)
        .find(|o| (t.stack_limit..t.stack_base).contains(o))
        .unwrap_or(t.kernel_stack);
    let mut out: Vec<(bool, u64, u64)> = Vec::new();
    for (i, w) in bytes.chunks_exact(8).enumerate() {
        let v = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
        let at = lo + 8 * i as u64;
        let plausible = v.is_multiple_of(8)
            && v >> 47 == 0x1ffff
            && !not.values.contains(&v)
            && !not.ranges.iter().any(|(a, b)| (*a..*b).contains(&v));
        if plausible && !out.iter().any(|c| c.2 == v) {
            let image = not.images.iter().any(|(a, b)| (*a..*b).contains(&v));
            out.push((image, at.abs_diff(anchor), v));
        }
    }
    out.sort();
    Ok(out.into_iter().map(|c| c.2).collect())
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
    let shared = waiter_field(&v, "SharedWaiters")?.0;
    let exclusive = waiter_field(&v, "ExclusiveWaiters")?.0;
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
/// register the frames inside it saved or in its frame: a value on the waiter's stack (see
/// `candidates`; no unwinding, so no unwind data is read) whose waiter field names what the
/// waiter waits on. `globals` (resources at known addresses) are tried first; `not` says what
/// a value cannot be. A resource reached gives all its waiters at once; a waiter that leads to
/// none is returned in `unresolved` (the caller walks the list for it).
pub fn from_waiters(
    k: &mut Kernel,
    waiters: &[&Thread],
    globals: &[u64],
    not: &NotResources,
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
    let mut not_keys = NotResources {
        ranges: not.ranges.clone(),
        values: not.values.clone(),
        images: not.images.clone(),
    };
    not_keys.values.extend(keys.iter().copied());
    let mut failed = Vec::new();
    for t in waiters {
        let mut tried = 0;
        for window in [(0, STACK_WINDOWS[0]), (STACK_WINDOWS[0], STACK_WINDOWS[1])] {
            if covered.contains(&t.ethread) || tried >= MAX_CANDIDATES {
                break;
            }
            let cands = match candidates(k, t, &not_keys, window) {
                Ok(c) => c,
                Err(ModelError::Target(e)) if e.is_transient() => return Err(e.into()),
                Err(_) => break,
            };
            for c in cands {
                if covered.contains(&t.ethread) || tried >= MAX_CANDIDATES {
                    break;
                }
                if !seen.insert(c) {
                    continue;
                }
                // Values that do not translate cost nothing; those read are counted.
                match resource_if_waited(k, c, &keys) {
                    Ok(Some(h)) => {
                        tried += 1;
                        take(h, &mut out, &mut covered);
                    }
                    Ok(None) => tried += 1,
                    Err(ModelError::Target(e)) if e.is_transient() => return Err(e.into()),
                    Err(ModelError::Target(TargetError::NotPresent { .. })) => {}
                    Err(_) => tried += 1,
                }
                out.tried += 1;
            }
        }
        if !covered.contains(&t.ethread) {
            failed.push((
                t.ethread,
                if tried == 0 {
                    "no value on its stack can be one".to_string()
                } else {
                    format!("none of the {tried} values on its stack that can be one names it as a waiter")
                },
            ));
        }
    }
    // A waiter a later one's resource named is not left over.
    out.unresolved = failed
        .into_iter()
        .filter(|(t, _)| !covered.contains(t))
        .collect();
    out.held.sort_by_key(|h| h.address);
    Ok(out)
}
