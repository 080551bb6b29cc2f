//! `!ndiskd.pendingnbls` and `!ndiskd.miniport`, read with ndis.sys's own symbols: NBL pools
//! on the global pool list, the NBLs carved from each, the freed ones on the pools' free
//! lists, and for every other NBL the owner-tracking slot that says which component holds it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kdnet_symbols::TypeTable;
use serde_json::{Value, json};

use crate::engine::{CmdError, Engine, Output};
use kdnet_model::nt::view::View;
use kdnet_model::nt::{Kernel, ModelError, ModuleSymbols};

/// Tracker slot value of an NBL that is back with the component that allocated it.
const NBL_HOME: u64 = 0x18;
/// NDIS object type bytes.
const TYPE_MINIPORT: u8 = 0x11;
const TYPE_FILTER: u8 = 0x12;
const TYPE_OPEN: u8 = 0x05;
/// Bounds on what is walked.
const MAX_POOLS: usize = 65_536;
const MAX_NBLS: u64 = 4 << 20;

/// ndis.sys's base and table.
fn ndis(k: &mut Kernel) -> Result<(u64, Arc<TypeTable>), CmdError> {
    let mods = k.modules()?.to_vec();
    let Some(i) = mods
        .iter()
        .position(|m| m.short.eq_ignore_ascii_case("ndis"))
    else {
        // Only a whole list tells that a module is not there.
        return Err(CmdError::Usage(match k.modules_incomplete() {
            Some(why) => format!(
                "ndis.sys is not in the module list, but the list is incomplete ({why}): it may be loaded"
            ),
            None => "ndis.sys is not loaded".into(),
        }));
    };
    match k.module_symbols(i).as_deref() {
        Some(ModuleSymbols::Table { table, .. }) => Ok((mods[i].base, table.clone())),
        _ => {
            let problem = k
                .modules()?
                .get(i)
                .and_then(|m| m.symbols_problem().map(str::to_string));
            Err(CmdError::Usage(match problem {
                Some(p) => format!("the symbols of ndis.sys could not be loaded just now: {p}"),
                None => "no symbols for ndis.sys: ndis.pdb is needed (give a symbol path with --symbols)"
                    .into(),
            }))
        }
    }
}

fn sym(base: u64, t: &TypeTable, name: &str) -> Result<u64, ModelError> {
    Ok(base + t.require_symbol(name)?)
}

/// NDIS blocks are followed by what belongs to them (names, NBLs): a miss reads on to the end
/// of the page.
fn view(k: &mut Kernel, t: &Arc<TypeTable>, ty: &str, addr: u64) -> Result<View, ModelError> {
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
fn ustring(k: &mut Kernel, v: &View, field: &str) -> String {
    match try_ustring(k, v, field) {
        Ok(s) => s,
        Err(e) => {
            k.note_incomplete(format!("the name of {:x}: {e}", v.addr));
            format!("(name unreadable: {e})")
        }
    }
}

/// A component that can hold NBLs: its name (or why it could not be read) and kind.
fn component(
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
pub fn walk_nbls(k: &mut Kernel, t: &Arc<TypeTable>, base: u64) -> Result<Nbls, CmdError> {
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

/// The pending NBLs' addresses, or `None` when owner tracking is off.
pub fn pending_nbls(k: &mut Kernel) -> Result<Option<Vec<u64>>, CmdError> {
    let (base, t) = ndis(k)?;
    let nbls = walk_nbls(k, &t, base)?;
    Ok(nbls
        .tracking
        .then(|| nbls.pending.iter().map(|p| p.0).collect()))
}

/// `!ndiskd.pendingnbls`.
pub fn pendingnbls_command(e: &mut Engine, _args: &str) -> Result<Output, CmdError> {
    let (base, t) = ndis(&mut e.kernel)?;
    let nbls = walk_nbls(&mut e.kernel, &t, base)?;
    if !nbls.tracking {
        let text = "NBL owner tracking is not enabled on this target, so pending NBLs cannot be \
attributed to the component holding them.\n\nTo enable it, set the DWORD registry value\n    \
HKLM\\SYSTEM\\CurrentControlSet\\Services\\NDIS\\Parameters\\TrackNblOwner = 1\nand restart the \
computer (servers default to 0; clients to 1).\n"
            .to_string();
        return Ok(Output {
            text,
            json: json!({ "tracking": false, "pending": Value::Null, "total": Value::Null, "holders": [] }),
        });
    }
    let mut names: BTreeMap<u64, (Result<String, String>, &'static str)> = BTreeMap::new();
    let mut by_holder: BTreeMap<u64, u64> = BTreeMap::new();
    for (_, h) in &nbls.pending {
        *by_holder.entry(*h).or_default() += 1;
        if !names.contains_key(h) {
            let c = component(&mut e.kernel, &t, *h);
            if let Err(why) = &c.0 {
                e.kernel
                    .note_incomplete(format!("the name of NBL holder {h:x} is unreadable: {why}"));
            }
            names.insert(*h, c);
        }
    }
    let shown = |n: &Result<String, String>| match n {
        Ok(s) => s.clone(),
        Err(why) => format!("(name unreadable: {why})"),
    };
    let mut text = format!(
        "PHASE 1/3: Found {} NBL pool(s).\nPHASE 2/3: Found {} freed NBL(s).\n\n    Pending Nbl        Currently held by\n",
        nbls.pools, nbls.freed
    );
    for (nbl, h) in &nbls.pending {
        let (name, kind) = &names[h];
        text.push_str(&format!(
            "    {nbl:x}   {h:x} - {}  [{kind}]\n",
            shown(name)
        ));
    }
    text.push_str(&format!(
        "\nPHASE 3/3: Found {} pending NBL(s) of {} total NBL(s).\nSearch complete.\n",
        nbls.pending.len(),
        nbls.total
    ));
    let mut holders: Vec<(u64, u64)> = by_holder.into_iter().collect();
    holders.sort_by_key(|(h, c)| (std::cmp::Reverse(*c), *h));
    if !holders.is_empty() {
        text.push_str("\nHeld by:\n");
        for (h, c) in &holders {
            let (name, kind) = &names[h];
            text.push_str(&format!("    {c:>6}  {h:x} - {}  [{kind}]\n", shown(name)));
        }
    }
    for n in &nbls.notes {
        text.push_str(&format!("NOTE: {n}\n"));
    }
    Ok(Output {
        text,
        json: json!({
            "tracking": true,
            "pools": nbls.pools,
            "freed": nbls.freed,
            "pending": nbls.pending.len(),
            "total": nbls.total,
            "holders": holders.iter().map(|(h, c)| json!({
                "handle": h,
                "name": names[h].0.as_ref().ok(),
                "name_error": names[h].0.as_ref().err(),
                "kind": names[h].1,
                "count": c,
            })).collect::<Vec<_>>(),
            "nbls": nbls.pending.iter().map(|(n, h)| json!({ "nbl": n, "holder": h })).collect::<Vec<_>>(),
            "notes": nbls.notes,
        }),
    })
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

/// `!ndiskd.miniport [HANDLE]`.
pub fn miniport_command(e: &mut Engine, args: &str) -> Result<Output, CmdError> {
    let (base, t) = ndis(&mut e.kernel)?;
    let k = &mut e.kernel;
    let mut list = Vec::new();
    let mut cur = k.mem.u64(sym(base, &t, "ndisMiniportList")?)?;
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
    let arg = args.split_whitespace().next();
    if arg.is_none() {
        let mut text = String::from("    Driver             Miniport            Name\n");
        let mut rows = Vec::new();
        for m in &list {
            let v = view(k, &t, "_NDIS_MINIPORT_BLOCK", *m)?;
            let driver = v.get("DriverHandle")?;
            let name = ustring(k, &v, "MiniportName");
            text.push_str(&format!("    {driver:x}   {m:x}    {name}\n"));
            rows.push(json!({ "miniport": m, "driver": driver, "name": name }));
        }
        return Ok(Output {
            text,
            json: json!({ "miniports": rows }),
        });
    }
    let handle = e.eval(arg.unwrap_or_default())?;
    let k = &mut e.kernel;
    if k.mem.u8(handle)? != TYPE_MINIPORT {
        return Err(CmdError::Usage(format!(
            "{handle:x} is not a miniport block"
        )));
    }
    let v = view(k, &t, "_NDIS_MINIPORT_BLOCK", handle)?;
    let name = ustring(k, &v, "MiniportName");
    let driver = v.get("DriverHandle")?;
    let dv = view(k, &t, "_NDIS_M_DRIVER_BLOCK", driver)?;
    let service = ustring(k, &dv, "ServiceName");
    let ty = "_NDIS_MINIPORT_BLOCK";
    let media = enum_text(&t, ty, &v, "MediaType");
    let pnp = enum_text(&t, ty, &v, "PnPDeviceState");
    let state = enum_text(&t, ty, &v, "MiniportState");
    let datapath = enum_text(&t, ty, &v, "DatapathState");
    let oper = enum_text(&t, ty, &v, "OperStatus");
    let mac: Vec<String> = v
        .bytes_of("CurrentMacAddress", 6)
        .map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
        .unwrap_or_default();
    let num = |f: &str| v.get_or(f, 0);
    let text = format!(
        "MINIPORT\n\n    {name}\n\n    Ndis handle            {handle:x}\n    Driver                 {driver:x} - {service}  v{}.{}\n    Media type             {media}\n    Device object          {:x}\n    MAC address            {}\n\nSTATE\n\n    Miniport               {state}\n    Device PnP             {pnp}\n    Datapath               {datapath}\n    Operational status     {oper}\n    Flags                  {:08x}\n    PnP flags              {:08x}\n    References             {}\n    Pending OIDs           {}\n    Send NBLs outstanding  {}\n    Receive NBLs outstanding {}\n",
        dv.get_or("MajorNdisVersion", 0),
        dv.get_or("MinorNdisVersion", 0),
        num("DeviceObject"),
        mac.join("-"),
        num("Flags"),
        num("PnPFlags"),
        num("Ref"),
        num("PendingOidCount"),
        num("SendNblsOutstanding"),
        num("ReceiveNblsOutstanding"),
    );
    Ok(Output {
        text,
        json: json!({
            "miniport": handle,
            "name": name,
            "driver": driver,
            "service": service,
            "media_type": media,
            "pnp_state": pnp,
            "miniport_state": state,
            "datapath_state": datapath,
            "operational_status": oper,
            "mac_address": mac.join("-"),
            "flags": num("Flags"),
            "pnp_flags": num("PnPFlags"),
            "references": num("Ref"),
            "pending_oids": num("PendingOidCount"),
            "send_nbls_outstanding": num("SendNblsOutstanding"),
            "receive_nbls_outstanding": num("ReceiveNblsOutstanding"),
        }),
    })
}
