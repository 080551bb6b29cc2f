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

/// Walks every NBL pool.
pub fn walk_nbls(k: &mut Kernel, t: &Arc<TypeTable>, base: u64) -> Result<Nbls, ModelError> {
    let mut out = Nbls::default();
    let mode = k.mem.u32(sym(base, t, "ndisNblTrackerMode")?)?;
    out.tracking = mode != 0;
    if !out.tracking {
        return Ok(out);
    }
    let slot = t
        .enum_value("_NDIS_NET_BUFFER_LIST_INFO", "NetBufferListInfoReserved1")
        .map_err(ModelError::from)? as u64;
    let info_off = t.offset("_NET_BUFFER_LIST", "NetBufferListInfo")? + 8 * slot;
    let next_off = t.offset("_NET_BUFFER_LIST", "Next")?;
    let handle_off = t.offset("_NDIS_NBL_TRACKER", "Handle")?;
    let head = sym(base, t, "ndisGlobalNblPoolList")?;
    let link = t.offset("_NDIS_POOL_HEADER", "GlobalLink")?;
    let pools = k.walk_list(head, None, MAX_POOLS, true)?;
    if let Some(n) = pools.note {
        out.notes.push(format!("pool list: {n}"));
    }
    let block_link = t.offset("_NDIS_NBL_BLOCK", "Link")?;
    let mut trackers: BTreeMap<u64, u64> = BTreeMap::new();
    for entry in pools.entries {
        let ph = entry - link;
        let pool = view(k, t, "_NDIS_POOL_HEADER", ph)?;
        out.pools += 1;
        let allocated = pool.get("AllocatedCount")?;
        // Every block the pool carved NBLs from.
        let blocks = k.walk_list(
            ph + pool.table.offset("_NDIS_POOL_HEADER", "BlockListHead")?,
            None,
            1 << 16,
            true,
        )?;
        if let Some(n) = blocks.note {
            out.notes.push(format!("blocks of pool {ph:x}: {n}"));
        }
        let mut nbls = Vec::new();
        for b in blocks.entries {
            let blk = view(k, t, "_NDIS_NBL_BLOCK", b - block_link)?;
            let count = blk.get("Count")?;
            let esize = blk.get("ElementSize")?;
            let first = blk.get("FirstElement")?;
            if count > 1 << 16 || esize == 0 || esize > 1 << 16 {
                out.notes.push(format!(
                    "NBL block {:x}: {count} elements of {esize:#x} bytes is not plausible",
                    b - block_link
                ));
                continue;
            }
            if out.total + nbls.len() as u64 + count > MAX_NBLS {
                out.notes.push(format!("stopped after {MAX_NBLS} NBLs"));
                break;
            }
            nbls.extend((0..count).map(|i| first + i * esize));
            // A block's NBLs lie side by side: read whole, in full transfers (a page at a time
            // would take two requests a page, as a page is more than one transfer). What
            // cannot be read so is gathered below, NBL by NBL.
            let _ = k.mem.kread(first, (count * esize) as usize);
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
            if v == 0 || v == NBL_HOME {
                continue;
            }
            let holder = if v & 1 == 1 {
                let tr = v & !7;
                match trackers.get(&tr) {
                    Some(h) => *h,
                    None => {
                        let h = k.mem.u64(tr + handle_off)?;
                        trackers.insert(tr, h);
                        h
                    }
                }
            } else {
                v & !7
            };
            out.pending.push((*nbl, holder));
        }
    }
    // Each of these leaves NBLs out.
    for n in &out.notes {
        k.note_incomplete(n.clone());
    }
    Ok(out)
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
