//! NDIS as ndis.sys's own symbols (ndis.pdb) describe it: the NBL pools on the global pool
//! list the triage block names, each pool's NBLs behind their entry headers on its allocated
//! list, the freed ones on its per-processor lookaside lists, and for every other NBL the
//! owner slot that says which component holds it; the miniports and their state.
//! Every function takes ndis.sys's base and type table.
//!
//! What ndis.pdb does not settle, and is read as the project's simulator lays it out (the
//! facts are in the documentation of its NDIS): an NBL lies right after its
//! `_NDIS_ENTRY_HEADER`; a freed NBL is on a lookaside list through `NET_BUFFER_LIST.Next`; an
//! owner slot holds the holder's tracker with the low bit set (or the holder itself, or
//! [`NBL_HOME`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kdnet_symbols::TypeTable;

use crate::nt::view::View;
use crate::nt::{Kernel, ModelError};

/// Owner-slot value of an NBL back with the component that allocated it.
const NBL_HOME: u64 = 0x18;
/// Bounds on what is walked.
const MAX_POOLS: usize = 65_536;
const MAX_NBLS: u64 = 4 << 20;
/// Most lookaside lists (processors) a pool is taken to have.
const MAX_LOOKASIDES: u64 = 2048;

/// The address of ndis.sys's symbol `name`.
pub fn sym(base: u64, t: &TypeTable, name: &str) -> Result<u64, ModelError> {
    Ok(base + t.require_symbol(name)?)
}

/// NDIS blocks are followed by what belongs to them (names): a miss reads on to the end of the
/// page.
pub fn view(k: &mut Kernel, t: &Arc<TypeTable>, ty: &str, addr: u64) -> Result<View, ModelError> {
    let size = t.size_of(ty)? as usize;
    let bytes = k.mem.kread_ahead(addr, size)?;
    Ok(View::new(t.clone(), ty, addr, bytes))
}

/// A name in a block, or why it could not be read.
fn try_ustring(k: &mut Kernel, v: &View, field: &str) -> Result<String, String> {
    let a = v.addr_of(field).map_err(|e| e.to_string())?;
    k.unicode_string(a)
        .map_err(|e| format!("reading {field} at {a:#x} failed: {e}"))
}

/// A name in a block; one that cannot be read is shown as such and makes the result incomplete.
pub fn ustring(k: &mut Kernel, v: &View, field: &str) -> String {
    match try_ustring(k, v, field) {
        Ok(s) => s,
        Err(e) => {
            k.note_incomplete(format!("the name of {:x}: {e}", v.addr));
            format!("(name unreadable: {e})")
        }
    }
}

/// The component an NBL tracker stands for: its name (or why it could not be read) and its
/// kind, from the tracker's `Name` and `Source`.
pub fn component(
    k: &mut Kernel,
    t: &Arc<TypeTable>,
    tracker: u64,
) -> (Result<String, String>, &'static str) {
    let v = match view(k, t, "_NDIS_NBL_TRACKER", tracker) {
        Ok(v) => v,
        Err(e) => {
            return (
                Err(format!("reading the tracker at {tracker:#x} failed: {e}")),
                "Unknown",
            );
        }
    };
    let kind = match v.get("Source") {
        Ok(0) => "NetAdapter",
        Ok(1) => "Filter",
        Ok(2) => "Protocol",
        _ => "Unknown",
    };
    let name = v.get("Name").map_err(|e| e.to_string()).and_then(|at| {
        if at == 0 {
            return Ok(String::new());
        }
        k.unicode_string(at)
            .map_err(|e| format!("reading the name at {at:#x} failed: {e}"))
    });
    (name, kind)
}

/// What the NBL walk found.
#[derive(Debug, Clone, Default)]
pub struct Nbls {
    /// Pools on the global list.
    pub pools: usize,
    /// NBLs allocated from them.
    pub total: u64,
    /// On their lookaside lists (freed).
    pub freed: u64,
    /// Pending NBLs and their holders.
    pub pending: Vec<(u64, u64)>,
    /// Each holder's tracker, where its slot named one.
    pub trackers: BTreeMap<u64, u64>,
    /// Whether owner tracking is on.
    pub tracking: bool,
    /// Why a walk stopped early.
    pub notes: Vec<String>,
}

/// The owner slot's offset in an NBL.
fn slot_offset(t: &TypeTable) -> Result<u64, ModelError> {
    let slot = t
        .enum_value("_NDIS_NET_BUFFER_LIST_INFO", "NetBufferListInfoReserved1")
        .map_err(ModelError::from)? as u64;
    Ok(t.offset("_NET_BUFFER_LIST", "NetBufferListInfo")? + 8 * slot)
}

/// Whether owner tracking is on (the NBL tracker's mode): without it no slot says who holds an
/// NBL.
pub fn tracking(k: &mut Kernel, t: &Arc<TypeTable>, base: u64) -> Result<bool, ModelError> {
    Ok(k.mem.u32(sym(base, t, "ndisNblTrackerMode")?)? != 0)
}

/// Where the pools' NBLs are, from the table: the entry header's link and size (an NBL follows
/// its header), the pool's allocated list and lookaside lists.
struct PoolLayout {
    linkage: u64,
    entry: u64,
    allocated: u64,
    lookasides: u64,
    lookaside_size: u64,
    heads: [u64; 2],
    next: u64,
    pool_handle: u64,
    cpus: u64,
}

impl PoolLayout {
    fn of(k: &mut Kernel, t: &Arc<TypeTable>, base: u64) -> Result<PoolLayout, ModelError> {
        let pt = "_NDIS_NET_BUFFER_LIST_POOL";
        let la = "_NDIS_NPAGED_LOOKASIDE_LIST";
        let triage = view(
            k,
            t,
            "_NDIS_GLOBAL_TRIAGE_BLOCK",
            sym(base, t, "ndisGlobalTriageBlock")?,
        )?;
        Ok(PoolLayout {
            linkage: t.offset("_NDIS_ENTRY_HEADER", "Linkage")?,
            entry: t.size_of("_NDIS_ENTRY_HEADER")?,
            allocated: t.offset(pt, "AllocatedList")?,
            lookasides: t.offset(pt, "NetBufferListPoolList")?,
            lookaside_size: t.size_of(la)?,
            heads: [
                t.offset(la, "List.L.ListHead")?,
                t.offset(la, "BackupList")?,
            ],
            next: t.offset("_NET_BUFFER_LIST", "Next")?,
            pool_handle: t.offset("_NET_BUFFER_LIST", "NdisPoolHandle")?,
            cpus: triage
                .get("MaxNumberOfProcessors")?
                .clamp(1, MAX_LOOKASIDES),
        })
    }

    /// The NBL whose entry header is linked at `link`.
    fn nbl(&self, link: u64) -> u64 {
        link.wrapping_sub(self.linkage).wrapping_add(self.entry)
    }

    /// Bytes from an entry header's start to the end of its NBL's owner slot.
    fn span(&self, info_off: u64) -> usize {
        (self.entry + info_off + 8) as usize
    }
}

/// The NBL pools on the global pool list (its head is where the triage block says), by their
/// addresses (a broken or endless list is noted).
fn pools(
    k: &mut Kernel,
    t: &Arc<TypeTable>,
    base: u64,
    notes: &mut Vec<String>,
) -> Result<Vec<u64>, ModelError> {
    let triage = sym(base, t, "ndisGlobalTriageBlock")?;
    let head = k
        .mem
        .u64(triage + t.offset("_NDIS_GLOBAL_TRIAGE_BLOCK", "GlobalNetBufferListPoolList")?)?;
    let link = t.offset("_NDIS_NET_BUFFER_LIST_POOL", "GlobalNetBufferListPoolList")?;
    let pools = k.walk_list(head, None, MAX_POOLS, true)?;
    if let Some(n) = pools.note {
        notes.push(format!("pool list: {n}"));
    }
    Ok(pools.entries.into_iter().map(|e| e - link).collect())
}

/// The freed NBLs of the pool at `pool`: those on its lookaside lists (each list bounded by
/// `bound` entries, a loop noted).
fn freed(
    k: &mut Kernel,
    l: &PoolLayout,
    pool: u64,
    bound: u64,
    notes: &mut Vec<String>,
) -> Result<BTreeSet<u64>, ModelError> {
    // The pool and its lookaside lists in one read.
    let _ = k
        .mem
        .kread(pool, (l.lookasides + l.cpus * l.lookaside_size) as usize);
    let mut free = BTreeSet::new();
    for cpu in 0..l.cpus {
        for h in l.heads {
            let head = pool + l.lookasides + cpu * l.lookaside_size + h;
            let mut cur = k.mem.u64(head + 8)? & !0xf;
            let mut n = 0;
            while cur != 0 {
                n += 1;
                if n > bound {
                    notes.push(format!(
                        "a lookaside list of pool {pool:x} is longer than its {bound} NBLs: not followed further"
                    ));
                    break;
                }
                if !free.insert(cur) {
                    notes.push(format!("a lookaside list of pool {pool:x} loops"));
                    break;
                }
                cur = k.mem.u64(cur + l.next)?;
            }
        }
    }
    Ok(free)
}

/// Who holds an NBL, from its owner slot: `None` when it is home (or untracked). A slot naming
/// a tracker leads to the tracker's component (`trackers` keeps those read, tracker → holder).
fn holder_of(
    k: &mut Kernel,
    t: &Arc<TypeTable>,
    slot: u64,
    trackers: &mut BTreeMap<u64, u64>,
) -> Result<Option<(u64, Option<u64>)>, ModelError> {
    if slot == 0 || slot == NBL_HOME {
        return Ok(None);
    }
    if slot & 1 == 0 {
        return Ok(Some((slot & !7, None)));
    }
    let tr = slot & !7;
    if let Some(h) = trackers.get(&tr) {
        return Ok(Some((*h, Some(tr))));
    }
    let h = k.mem.u64(tr + t.offset("_NDIS_NBL_TRACKER", "Context")?)?;
    trackers.insert(tr, h);
    Ok(Some((h, Some(tr))))
}

/// Walks every NBL pool.
pub fn walk_nbls(k: &mut Kernel, t: &Arc<TypeTable>, base: u64) -> Result<Nbls, ModelError> {
    let mut out = Nbls {
        tracking: tracking(k, t, base)?,
        ..Nbls::default()
    };
    if !out.tracking {
        return Ok(out);
    }
    let l = PoolLayout::of(k, t, base)?;
    let info_off = slot_offset(t)?;
    let mut trackers: BTreeMap<u64, u64> = BTreeMap::new();
    for pool in pools(k, t, base, &mut out.notes)? {
        out.pools += 1;
        let room = (MAX_NBLS - out.total) as usize;
        // Each entry is read with its NBL up to the owner slot: one read a page.
        let span = l.span(info_off);
        let w = k.walk_list(pool + l.allocated, Some((l.linkage, span)), room, true)?;
        if let Some(n) = &w.note {
            out.notes.push(format!("NBLs of pool {pool:x}: {n}"));
        }
        let nbls: Vec<u64> = w.entries.iter().map(|e| l.nbl(*e)).collect();
        let free = freed(k, &l, pool, nbls.len() as u64, &mut out.notes)?;
        out.freed += free.len() as u64;
        let slot_at = span - 8;
        for (nbl, node) in nbls.iter().zip(&w.nodes) {
            out.total += 1;
            if free.contains(nbl) {
                continue;
            }
            let Some(v) = node
                .get(slot_at..slot_at + 8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
            else {
                out.notes
                    .push(format!("NBL {nbl:x}: its owner slot was not read"));
                continue;
            };
            if let Some((holder, tracker)) = holder_of(k, t, v, &mut trackers)? {
                out.pending.push((*nbl, holder));
                if let Some(tr) = tracker {
                    out.trackers.insert(holder, tr);
                }
            }
        }
        if out.total >= MAX_NBLS {
            out.notes.push(format!("stopped after {MAX_NBLS} NBLs"));
            break;
        }
    }
    // Each of these leaves NBLs out.
    for n in &out.notes {
        k.note_incomplete(n.clone());
    }
    Ok(out)
}

/// Where a look at part of the NBLs goes on: the first NBL not looked at yet, by its pool and
/// the link of its entry header on the pool's allocated list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NblCursor {
    /// The pool.
    pub pool: u64,
    /// The NBL's entry header's link.
    pub entry: u64,
}

/// A look at part of the NBLs: the owner slots of the NBLs on at most so many pages, from
/// where the last look stopped. The lookaside lists are not followed (they lead all over the
/// pools): an NBL counts as held when its slot names a holder. Besides the slots' pages it
/// reads the pool list, the allocated lists it passes and each holder's tracker once.
#[derive(Debug, Clone, Default)]
pub struct NblWindow {
    /// Whether owner tracking is on.
    pub tracking: bool,
    /// NBLs whose slots were read.
    pub examined: u64,
    /// Those held away from home, and their holders.
    pub pending: Vec<(u64, u64)>,
    /// Where the next look goes on (`None`: this one reached the end of the pools).
    pub next: Option<NblCursor>,
    /// Whether this look started at the first pool (a window that starts there and has no
    /// `next` saw every NBL).
    pub from_start: bool,
    /// Why the look stopped early or left NBLs out.
    pub notes: Vec<String>,
}

/// Looks at the NBLs from `from` (the first pool when `None`, or when that pool is no longer on
/// the list) on, their owner slots on at most `pages` pages.
pub fn look_nbls(
    k: &mut Kernel,
    t: &Arc<TypeTable>,
    base: u64,
    from: Option<NblCursor>,
    pages: usize,
) -> Result<NblWindow, ModelError> {
    let mut out = NblWindow {
        tracking: tracking(k, t, base)?,
        ..NblWindow::default()
    };
    if !out.tracking {
        return Ok(out);
    }
    let l = PoolLayout::of(k, t, base)?;
    let info_off = slot_offset(t)?;
    // The pools are followed one by one from where the last look stopped (its pool, while it
    // is still on the list: its neighbours point at it), so a look reads only the pools it
    // looks into.
    let triage = sym(base, t, "ndisGlobalTriageBlock")?;
    let list_head = k
        .mem
        .u64(triage + t.offset("_NDIS_GLOBAL_TRIAGE_BLOCK", "GlobalNetBufferListPoolList")?)?;
    let pool_link = t.offset("_NDIS_NET_BUFFER_LIST_POOL", "GlobalNetBufferListPoolList")?;
    let on_list = |k: &mut Kernel, link: u64| -> Result<bool, ModelError> {
        let (f, b) = (k.mem.u64(link)?, k.mem.u64(link + 8)?);
        Ok(k.mem.u64(b)? == link && k.mem.u64(f + 8)? == link)
    };
    let mut resume = from;
    let mut link = match from.map(|c| on_list(k, c.pool + pool_link)) {
        Some(Ok(true)) => from.map_or(0, |c| c.pool + pool_link),
        other => {
            if let Some(Err(e)) = other {
                out.notes.push(format!(
                    "the pool the last look stopped in is unreadable: {e}"
                ));
            }
            resume = None;
            k.mem.u64(list_head)?
        }
    };
    out.from_start = resume.is_none();
    let mut chosen: Vec<u64> = Vec::new();
    let mut seen_pages = BTreeSet::new();
    let mut seen_pools = BTreeSet::new();
    // What cannot be read in one pool is noted and the look goes on with the next.
    'pools: while link != list_head {
        if link == 0 || link % 8 != 0 || !seen_pools.insert(link) || seen_pools.len() > MAX_POOLS {
            out.notes
                .push(format!("pool list: broken or looping at {link:#x}"));
            break;
        }
        let pool = link - pool_link;
        let next_pool = match k.mem.u64(link) {
            Ok(n) => n,
            Err(e) => {
                out.notes
                    .push(format!("pool list: the pool {pool:x} is unreadable: {e}"));
                break;
            }
        };
        link = next_pool;
        let head = pool + l.allocated;
        let mut entry = match k.mem.u64(head) {
            Ok(l) => l,
            Err(e) => {
                out.notes.push(format!(
                    "NBLs of pool {pool:x}: the list head is unreadable: {e}"
                ));
                continue;
            }
        };
        // The entry the last look stopped at, while it is still on its pool's list (its
        // neighbour still points back at it) and still this pool's (its NBL names the pool);
        // otherwise the pool from its first NBL. An entry that cannot be read is not there.
        if let Some(c) = resume.take() {
            let still_there = (|| -> Result<bool, ModelError> {
                let back = k.mem.u64(c.entry + 8)?;
                if k.mem.u64(back)? != c.entry {
                    return Ok(false);
                }
                Ok(k.mem.u64(l.nbl(c.entry) + l.pool_handle)? == pool)
            })()
            .unwrap_or_else(|e| {
                out.notes.push(format!(
                    "NBLs of pool {pool:x}: the entry {:x} the last look stopped at is unreadable: {e}",
                    c.entry
                ));
                false
            });
            if still_there {
                entry = c.entry;
            } else {
                out.from_start = false;
            }
        }
        let mut seen = BTreeSet::new();
        while entry != head {
            if entry == 0 || entry % 8 != 0 || !seen.insert(entry) || seen.len() as u64 > MAX_NBLS {
                out.notes.push(format!(
                    "NBLs of pool {pool:x}: the list is broken or loops at {entry:#x}"
                ));
                break;
            }
            let nbl = l.nbl(entry);
            // The pages this NBL costs: its entry (read to go on) and its slot.
            let first = entry.wrapping_sub(l.linkage) & !0xfff;
            let new: BTreeSet<u64> = [first, (nbl + info_off) & !0xfff]
                .into_iter()
                .filter(|p| !seen_pages.contains(p))
                .collect();
            if !new.is_empty() {
                if seen_pages.len() + new.len() > pages {
                    out.next = Some(NblCursor { pool, entry });
                    break 'pools;
                }
                seen_pages.extend(new);
            }
            chosen.push(nbl);
            // The entry with its NBL up to the owner slot, in one read.
            let start = entry.wrapping_sub(l.linkage);
            entry = match k.mem.kread_ahead(start, l.span(info_off)) {
                Ok(b) => {
                    let at = l.linkage as usize;
                    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
                }
                Err(e) => {
                    out.notes.push(format!(
                        "NBLs of pool {pool:x}: the entry at {entry:#x} is unreadable: {e}"
                    ));
                    break;
                }
            };
        }
    }
    let slots: Vec<u64> = chosen.iter().map(|n| n + info_off).collect();
    let values = k.mem.gather_u64(&slots);
    let mut trackers = BTreeMap::new();
    for (nbl, v) in chosen.iter().zip(values) {
        out.examined += 1;
        match v
            .map_err(ModelError::from)
            .and_then(|v| holder_of(k, t, v, &mut trackers))
        {
            Ok(Some((holder, _))) => out.pending.push((*nbl, holder)),
            Ok(None) => {}
            Err(e) => out.notes.push(format!("NBL {nbl:x}: {e}")),
        }
    }
    for n in &out.notes {
        k.note_incomplete(n.clone());
    }
    Ok(out)
}

/// Who holds each of `nbls` now (`None`: home), read from their slots in as few requests as
/// their pages allow.
pub fn holders(
    k: &mut Kernel,
    t: &Arc<TypeTable>,
    nbls: &[u64],
) -> Result<Vec<Result<Option<u64>, ModelError>>, ModelError> {
    let info_off = slot_offset(t)?;
    let slots: Vec<u64> = nbls.iter().map(|n| n + info_off).collect();
    let values = k.mem.gather_u64(&slots);
    let mut trackers = BTreeMap::new();
    Ok(values
        .into_iter()
        .map(|v| {
            v.map_err(ModelError::from)
                .and_then(|v| holder_of(k, t, v, &mut trackers))
                .map(|h| h.map(|(holder, _)| holder))
        })
        .collect())
}

/// An enum member by its enumerator's name (its number when the enum has no name for it).
fn enum_text(t: &TypeTable, ty: &str, v: &View, field: &str) -> Result<String, ModelError> {
    let raw = v.get(field)? as i64;
    Ok(t.field(ty, field)
        .ok()
        .and_then(|f| match f.ty {
            kdnet_symbols::Ty::Enum(e) => t.enum_name(&e, raw).map(str::to_string),
            _ => None,
        })
        .unwrap_or_else(|| format!("{raw}")))
}

/// The miniports on `ndisMiniportList`, in its order (a loop or an endless list is noted as
/// incomplete and the walk stops there).
pub fn miniports(k: &mut Kernel, t: &Arc<TypeTable>, base: u64) -> Result<Vec<u64>, ModelError> {
    let mut list = Vec::new();
    let mut cur = k.mem.u64(sym(base, t, "ndisMiniportList")?)?;
    let next = t.offset("_NDIS_MINIPORT_BLOCK", "NextGlobalMiniport")?;
    let mut seen = BTreeSet::new();
    while cur != 0 {
        if !seen.insert(cur) {
            k.note_incomplete(format!("the miniport list loops back to {cur:x}"));
            break;
        }
        if list.len() >= 4096 {
            k.note_incomplete("the miniport list was followed for 4096 entries only");
            break;
        }
        list.push(cur);
        cur = k.mem.u64(cur + next)?;
    }
    Ok(list)
}

/// A miniport as the list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MiniportEntry {
    /// Its block.
    pub miniport: u64,
    /// Its driver's block.
    pub driver: u64,
    /// Its name (or why it could not be read).
    pub name: String,
}

/// A miniport's name and driver.
pub fn miniport_entry(
    k: &mut Kernel,
    t: &Arc<TypeTable>,
    miniport: u64,
) -> Result<MiniportEntry, ModelError> {
    let v = view(k, t, "_NDIS_MINIPORT_BLOCK", miniport)?;
    let driver = v.get("DriverHandle")?;
    let name = ustring(k, &v, "MiniportName");
    Ok(MiniportEntry {
        miniport,
        driver,
        name,
    })
}

/// A miniport's state block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Miniport {
    /// Its block.
    pub handle: u64,
    /// Its name.
    pub name: String,
    /// Its driver's block.
    pub driver: u64,
    /// The driver's service name.
    pub service: String,
    /// The driver's NDIS version: major, minor.
    pub ndis_version: (u64, u64),
    /// The medium, by its enumerator's name.
    pub media_type: String,
    /// Its device object.
    pub device_object: u64,
    /// Its current MAC address (`00-15-5d-…`; empty when it has no general attributes).
    pub mac_address: String,
    /// PnP device state.
    pub pnp_state: String,
    /// Miniport state.
    pub miniport_state: String,
    /// Operational status.
    pub operational_status: String,
    /// Media connect state.
    pub media_connect_state: String,
    /// Flags.
    pub flags: u64,
    /// PnP flags.
    pub pnp_flags: u64,
    /// References.
    pub references: u64,
    /// The OID request pending (0: none).
    pub pending_oid_request: u64,
}

/// Most bytes of a MAC address shown.
const MAX_MAC: u64 = 32;

/// The miniport block at `handle`; `None` when `handle` is not on ndis.sys's miniport list.
pub fn miniport(
    k: &mut Kernel,
    t: &Arc<TypeTable>,
    base: u64,
    handle: u64,
) -> Result<Option<Miniport>, ModelError> {
    if !miniports(k, t, base)?.contains(&handle) {
        return Ok(None);
    }
    let ty = "_NDIS_MINIPORT_BLOCK";
    let v = view(k, t, ty, handle)?;
    let name = ustring(k, &v, "MiniportName");
    let driver = v.get("DriverHandle")?;
    let dv = view(k, t, "_NDIS_M_DRIVER_BLOCK", driver)?;
    let service = ustring(k, &dv, "ServiceName");
    // The address as the miniport's general attributes give it.
    let attrs = v.get("GeneralAttributes")?;
    let mac_address = if attrs == 0 {
        String::new()
    } else {
        let ga = "_NDIS_MINIPORT_ADAPTER_GENERAL_ATTRIBUTES";
        let a = view(k, t, ga, attrs)?;
        let len = a.get("MacAddressLength")?.min(MAX_MAC) as usize;
        a.bytes_of("CurrentMacAddress", len)?
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join("-")
    };
    Ok(Some(Miniport {
        handle,
        name,
        driver,
        service,
        ndis_version: (dv.get("MajorNdisVersion")?, dv.get("MinorNdisVersion")?),
        media_type: enum_text(t, ty, &v, "MediaType")?,
        device_object: v.get("DeviceObject")?,
        mac_address,
        pnp_state: enum_text(t, ty, &v, "PnPDeviceState")?,
        miniport_state: enum_text(t, ty, &v, "State")?,
        operational_status: enum_text(t, ty, &v, "OperStatus")?,
        media_connect_state: enum_text(t, ty, &v, "MediaConnectState")?,
        flags: v.get("Flags")?,
        pnp_flags: v.get("PnPFlags")?,
        references: v.get("Ref.ReferenceCount")?,
        pending_oid_request: v.get("PendingOidRequest")?,
    }))
}
