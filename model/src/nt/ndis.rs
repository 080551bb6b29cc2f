//! NDIS as ndis.sys's own symbols describe it: NBL pools on the global pool list, the NBLs
//! carved from each, the freed ones on the pools' free lists, and for every other NBL the
//! owner-tracking slot that says which component holds it; the miniports and their state.
//! Every function takes ndis.sys's base and type table.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kdnet_symbols::TypeTable;

use crate::nt::view::View;
use crate::nt::{Kernel, ModelError};

/// Tracker slot value of an NBL that is back with the component that allocated it.
const NBL_HOME: u64 = 0x18;
/// NDIS object type bytes.
const TYPE_MINIPORT: u8 = 0x11;
const TYPE_FILTER: u8 = 0x12;
const TYPE_OPEN: u8 = 0x05;
/// Bounds on what is walked.
const MAX_POOLS: usize = 65_536;
const MAX_NBLS: u64 = 4 << 20;

/// The address of ndis.sys's symbol `name`.
pub fn sym(base: u64, t: &TypeTable, name: &str) -> Result<u64, ModelError> {
    Ok(base + t.require_symbol(name)?)
}

/// NDIS blocks are followed by what belongs to them (names, NBLs): a miss reads on to the end
/// of the page.
pub fn view(k: &mut Kernel, t: &Arc<TypeTable>, ty: &str, addr: u64) -> Result<View, ModelError> {
    let size = t.size_of(ty)? as usize;
    // NBL pools and blocks are read exactly: their NBLs are gathered page by page after.
    let bytes = if matches!(ty, "_NDIS_POOL_HEADER" | "_NDIS_NBL_BLOCK") {
        k.mem.kread(addr, size)?
    } else {
        k.mem.kread_ahead(addr, size)?
    };
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

/// A component that can hold NBLs: its name (or why it could not be read) and kind.
pub fn component(
    k: &mut Kernel,
    t: &Arc<TypeTable>,
    handle: u64,
) -> (Result<String, String>, &'static str) {
    let ty = match k.mem.u8(handle) {
        Ok(ty) => ty,
        Err(e) => return (Err(format!("reading {handle:#x} failed: {e}")), "Unknown"),
    };
    let (ty_name, field, kind) = match ty {
        TYPE_MINIPORT => ("_NDIS_MINIPORT_BLOCK", "MiniportName", "NetAdapter"),
        TYPE_FILTER => ("_NDIS_FILTER_BLOCK", "FilterFriendlyName", "Filter"),
        TYPE_OPEN => ("_NDIS_OPEN_BLOCK", "BindingName", "Protocol"),
        _ => return (Ok(String::new()), "Unknown"),
    };
    let name = view(k, t, ty_name, handle)
        .map_err(|e| format!("reading {ty_name} at {handle:#x} failed: {e}"))
        .and_then(|v| try_ustring(k, &v, field));
    (name, kind)
}

/// What the NBL walk found.
#[derive(Debug, Clone, Default)]
pub struct Nbls {
    /// Pools on the global list.
    pub pools: usize,
    /// NBLs carved from them.
    pub total: u64,
    /// On free lists.
    pub freed: u64,
    /// Pending NBLs and their holders.
    pub pending: Vec<(u64, u64)>,
    /// Whether owner tracking is on.
    pub tracking: bool,
    /// Why a walk stopped early.
    pub notes: Vec<String>,
}

/// The owner-tracking slot's offset in an NBL.
fn slot_offset(t: &TypeTable) -> Result<u64, ModelError> {
    let slot = t
        .enum_value("_NDIS_NET_BUFFER_LIST_INFO", "NetBufferListInfoReserved1")
        .map_err(ModelError::from)? as u64;
    Ok(t.offset("_NET_BUFFER_LIST", "NetBufferListInfo")? + 8 * slot)
}

/// Whether owner tracking is on (TrackNblOwner): without it no slot says who holds an NBL.
pub fn tracking(k: &mut Kernel, t: &Arc<TypeTable>, base: u64) -> Result<bool, ModelError> {
    Ok(k.mem.u32(sym(base, t, "ndisNblTrackerMode")?)? != 0)
}

/// The NBL pools on the global pool list, by their headers (a broken or endless list is noted).
fn pool_headers(
    k: &mut Kernel,
    t: &Arc<TypeTable>,
    base: u64,
    notes: &mut Vec<String>,
) -> Result<Vec<u64>, ModelError> {
    let head = sym(base, t, "ndisGlobalNblPoolList")?;
    let link = t.offset("_NDIS_POOL_HEADER", "GlobalLink")?;
    let pools = k.walk_list(head, None, MAX_POOLS, true)?;
    if let Some(n) = pools.note {
        notes.push(format!("pool list: {n}"));
    }
    Ok(pools.entries.into_iter().map(|e| e - link).collect())
}

/// An NBL block's elements: the first, how many, and their size.
type Elements = (u64, u64, u64);

/// An NBL block: the link to the next one, and its elements when they are plausible
/// (otherwise noted in `notes`).
fn read_block(
    k: &mut Kernel,
    t: &Arc<TypeTable>,
    b: u64,
    notes: &mut Vec<String>,
) -> Result<(u64, Option<Elements>), ModelError> {
    let blk = view(k, t, "_NDIS_NBL_BLOCK", b)?;
    let next = blk.get("Link.Flink")?;
    let count = blk.get("Count")?;
    let esize = blk.get("ElementSize")?;
    let first = blk.get("FirstElement")?;
    if count > 1 << 16 || esize == 0 || esize > 1 << 16 {
        notes.push(format!(
            "NBL block {b:x}: {count} elements of {esize:#x} bytes is not plausible"
        ));
        return Ok((next, None));
    }
    Ok((next, Some((first, count, esize))))
}

/// A pool's header, the NBLs carved from it and the blocks' element ranges (start, bytes).
struct PoolNbls {
    pool: View,
    nbls: Vec<u64>,
    ranges: Vec<(u64, u64)>,
}

/// A pool and the NBLs carved from it (every block's, bounded by `room` NBLs).
fn pool_nbls(
    k: &mut Kernel,
    t: &Arc<TypeTable>,
    ph: u64,
    room: u64,
    notes: &mut Vec<String>,
) -> Result<PoolNbls, ModelError> {
    let pool = view(k, t, "_NDIS_POOL_HEADER", ph)?;
    let block_link = t.offset("_NDIS_NBL_BLOCK", "Link")?;
    let blocks = k.walk_list(
        ph + t.offset("_NDIS_POOL_HEADER", "BlockListHead")?,
        None,
        1 << 16,
        true,
    )?;
    if let Some(n) = blocks.note {
        notes.push(format!("blocks of pool {ph:x}: {n}"));
    }
    let mut nbls = Vec::new();
    let mut ranges = Vec::new();
    for b in blocks.entries {
        let Some((first, count, esize)) = read_block(k, t, b - block_link, notes)?.1 else {
            continue;
        };
        if nbls.len() as u64 + count > room {
            notes.push(format!("stopped after {MAX_NBLS} NBLs"));
            break;
        }
        nbls.extend((0..count).map(|i| first + i * esize));
        ranges.push((first, count * esize));
    }
    Ok(PoolNbls { pool, nbls, ranges })
}

/// Who holds an NBL, from its tracker slot: `None` when it is home (or untracked). A slot
/// naming a tracker leads to the tracker's component (`trackers` keeps those read).
fn holder_of(
    k: &mut Kernel,
    t: &Arc<TypeTable>,
    slot: u64,
    trackers: &mut BTreeMap<u64, u64>,
) -> Result<Option<u64>, ModelError> {
    if slot == 0 || slot == NBL_HOME {
        return Ok(None);
    }
    if slot & 1 == 0 {
        return Ok(Some(slot & !7));
    }
    let tr = slot & !7;
    if let Some(h) = trackers.get(&tr) {
        return Ok(Some(*h));
    }
    let h = k.mem.u64(tr + t.offset("_NDIS_NBL_TRACKER", "Handle")?)?;
    trackers.insert(tr, h);
    Ok(Some(h))
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
    let info_off = slot_offset(t)?;
    let next_off = t.offset("_NET_BUFFER_LIST", "Next")?;
    let mut trackers: BTreeMap<u64, u64> = BTreeMap::new();
    for ph in pool_headers(k, t, base, &mut out.notes)? {
        let PoolNbls { pool, nbls, ranges } =
            pool_nbls(k, t, ph, MAX_NBLS - out.total, &mut out.notes)?;
        out.pools += 1;
        let allocated = pool.get("AllocatedCount")?;
        // A block's NBLs lie side by side: read whole, in full transfers (a page at a time
        // would take two requests a page, as a page is more than one transfer). What cannot
        // be read so is gathered below, NBL by NBL.
        for (first, len) in ranges {
            let _ = k.mem.kread(first, len as usize);
        }
        // Each NBL's link and tracking slot, gathered a page at a time.
        let mut addrs = Vec::with_capacity(nbls.len() * 2);
        for n in &nbls {
            addrs.push(n + next_off);
            addrs.push(n + info_off);
        }
        let values = k.mem.gather_u64(&addrs);
        // Freed NBLs: the pool's free list through NBL.Next (now from the cache).
        let mut free = BTreeSet::new();
        let mut cur = pool.get("FreeListHead")?;
        while cur != 0 {
            if free.len() as u64 > allocated {
                out.notes.push(format!(
                    "free list of pool {ph:x} is longer than its {allocated} NBLs: not followed further"
                ));
                break;
            }
            if !free.insert(cur) {
                out.notes.push(format!("free list of pool {ph:x} loops"));
                break;
            }
            cur = k.mem.u64(cur + next_off)?;
        }
        out.freed += free.len() as u64;
        for (i, nbl) in nbls.iter().enumerate() {
            out.total += 1;
            if free.contains(nbl) {
                continue;
            }
            let v = match &values[2 * i + 1] {
                Ok(v) => *v,
                Err(e) => {
                    out.notes.push(format!("NBL {nbl:x}: {e}"));
                    continue;
                }
            };
            if let Some(holder) = holder_of(k, t, v, &mut trackers)? {
                out.pending.push((*nbl, holder));
            }
        }
    }
    // Each of these leaves NBLs out.
    for n in &out.notes {
        k.note_incomplete(n.clone());
    }
    Ok(out)
}

/// Where a look at part of the NBLs goes on: the first NBL not looked at yet, by its pool, its
/// block and its index in the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NblCursor {
    /// The pool's header.
    pub pool: u64,
    /// The block's header.
    pub block: u64,
    /// The NBL's index in the block.
    pub index: u64,
}

/// A look at part of the NBLs: the owner slots of the NBLs on at most so many pages, from
/// where the last look stopped. The pools' free lists are not followed (they lead all over
/// the pools): an NBL counts as held when its slot names a holder. Besides the slots' pages it
/// reads the pool list, each pool's block-list head it passes, the blocks it looks into and
/// each holder's tracker once: a few requests more per pool passed.
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
    let info_off = slot_offset(t)?;
    let block_link = t.offset("_NDIS_NBL_BLOCK", "Link")?;
    let head_off = t.offset("_NDIS_POOL_HEADER", "BlockListHead")?;
    let pools = pool_headers(k, t, base, &mut out.notes)?;
    let (start, mut resume) = match from.and_then(|c| pools.iter().position(|p| *p == c.pool)) {
        Some(i) => (i, from),
        None => (0, None),
    };
    out.from_start = resume.is_none();
    let mut chosen: Vec<u64> = Vec::new();
    let mut seen_pages = BTreeSet::new();
    let pool_handle = t.offset("_NET_BUFFER_LIST", "NdisPoolHandle")?;
    // What cannot be read in one pool is noted and the look goes on with the next.
    'pools: for &ph in &pools[start..] {
        let head = ph + head_off;
        let mut link = match k.mem.u64(head) {
            Ok(l) => l,
            Err(e) => {
                out.notes.push(format!(
                    "blocks of pool {ph:x}: the list head is unreadable: {e}"
                ));
                continue;
            }
        };
        let mut first_index = 0;
        // The block the last look stopped in, while it is still on its pool's list (its
        // neighbour still points back at it) and still this pool's (its NBLs name the pool);
        // otherwise the pool from its first block. A block that cannot be read is not there.
        if let Some(c) = resume.take() {
            let l = c.block + block_link;
            let still_there = (|| -> Result<bool, ModelError> {
                let back = k.mem.u64(l + 8)?;
                if k.mem.u64(back)? != l {
                    return Ok(false);
                }
                let blk = view(k, t, "_NDIS_NBL_BLOCK", c.block)?;
                let first = blk.get("FirstElement")?;
                Ok(k.mem.u64(first + pool_handle)? == ph)
            })()
            .unwrap_or(false);
            if still_there {
                link = l;
                first_index = c.index;
            } else {
                out.from_start = false;
            }
        }
        let mut seen_blocks = BTreeSet::new();
        while link != head {
            // Where the last look stopped applies to the first block only.
            let from_index = std::mem::take(&mut first_index);
            if link == 0
                || link % 8 != 0
                || !seen_blocks.insert(link)
                || seen_blocks.len() > 1 << 16
            {
                out.notes.push(format!(
                    "blocks of pool {ph:x}: the list is broken or loops at {link:#x}"
                ));
                break;
            }
            let b = link - block_link;
            let (next, elements) = match read_block(k, t, b, &mut out.notes) {
                Ok(x) => x,
                Err(e) => {
                    out.notes
                        .push(format!("NBL block {b:x} of pool {ph:x} is unreadable: {e}"));
                    break;
                }
            };
            link = next;
            let Some((first, count, esize)) = elements else {
                continue;
            };
            for i in from_index..count {
                let nbl = first + i * esize;
                let page = (nbl + info_off) & !0xfff;
                if !seen_pages.contains(&page) {
                    if seen_pages.len() >= pages {
                        out.next = Some(NblCursor {
                            pool: ph,
                            block: b,
                            index: i,
                        });
                        break 'pools;
                    }
                    seen_pages.insert(page);
                }
                chosen.push(nbl);
            }
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
            Ok(Some(holder)) => out.pending.push((*nbl, holder)),
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
        })
        .collect())
}

fn enum_text(t: &TypeTable, ty: &str, v: &View, field: &str) -> String {
    let raw = v.get_or(field, 0) as i64;
    t.field(ty, field)
        .ok()
        .and_then(|f| match f.ty {
            kdnet_symbols::Ty::Enum(e) => t.enum_name(&e, raw).map(str::to_string),
            _ => None,
        })
        .unwrap_or_else(|| format!("{raw}"))
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
    /// Its current MAC address (`00-15-5d-…`).
    pub mac_address: String,
    /// PnP device state.
    pub pnp_state: String,
    /// Miniport state.
    pub miniport_state: String,
    /// Datapath state.
    pub datapath_state: String,
    /// Operational status.
    pub operational_status: String,
    /// Flags.
    pub flags: u64,
    /// PnP flags.
    pub pnp_flags: u64,
    /// References.
    pub references: u64,
    /// OID requests pending.
    pub pending_oids: u64,
    /// Send NBLs outstanding.
    pub send_nbls_outstanding: u64,
    /// Receive NBLs outstanding.
    pub receive_nbls_outstanding: u64,
}

/// The miniport block at `handle`; `None` when the block there is not a miniport's.
pub fn miniport(
    k: &mut Kernel,
    t: &Arc<TypeTable>,
    handle: u64,
) -> Result<Option<Miniport>, ModelError> {
    if k.mem.u8(handle)? != TYPE_MINIPORT {
        return Ok(None);
    }
    let v = view(k, t, "_NDIS_MINIPORT_BLOCK", handle)?;
    let name = ustring(k, &v, "MiniportName");
    let driver = v.get("DriverHandle")?;
    let dv = view(k, t, "_NDIS_M_DRIVER_BLOCK", driver)?;
    let service = ustring(k, &dv, "ServiceName");
    let ty = "_NDIS_MINIPORT_BLOCK";
    let media_type = enum_text(t, ty, &v, "MediaType");
    let pnp_state = enum_text(t, ty, &v, "PnPDeviceState");
    let miniport_state = enum_text(t, ty, &v, "MiniportState");
    let datapath_state = enum_text(t, ty, &v, "DatapathState");
    let operational_status = enum_text(t, ty, &v, "OperStatus");
    let mac: Vec<String> = v
        .bytes_of("CurrentMacAddress", 6)
        .map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
        .unwrap_or_default();
    let num = |f: &str| v.get_or(f, 0);
    Ok(Some(Miniport {
        handle,
        name,
        driver,
        service,
        ndis_version: (
            dv.get_or("MajorNdisVersion", 0),
            dv.get_or("MinorNdisVersion", 0),
        ),
        media_type,
        device_object: num("DeviceObject"),
        mac_address: mac.join("-"),
        pnp_state,
        miniport_state,
        datapath_state,
        operational_status,
        flags: num("Flags"),
        pnp_flags: num("PnPFlags"),
        references: num("Ref"),
        pending_oids: num("PendingOidCount"),
        send_nbls_outstanding: num("SendNblsOutstanding"),
        receive_nbls_outstanding: num("ReceiveNblsOutstanding"),
    }))
}
