//! NDIS state of the simulated machine, laid out with the real ndis.pdb's types
//! ([`ndis_table`]: the real file's layout, built into the project): drivers, miniports,
//! protocols and their bindings, filters, NBL trackers, and NBL pools.
//!
//! Where the real layout leaves a question open the simulator answers it one way and says so:
//! - NBL pools hang on the list whose head `ndisGlobalTriageBlock.GlobalNetBufferListPoolList`
//!   points at, through each pool's `GlobalNetBufferListPoolList` link.
//! - Each NBL follows its `_NDIS_ENTRY_HEADER` (linked on its pool's `AllocatedList`); a freed
//!   one is also on one of the pool's per-processor lookaside lists (`NetBufferListPoolList[i]`,
//!   one for each of `MaxNumberOfProcessors`), linked through `NET_BUFFER_LIST.Next`.
//! - An NBL's owner slot (`NetBufferListInfo[NetBufferListInfoReserved1]`) holds its current
//!   holder's tracker with the low bit set, or [`NBL_HOME`] when it is back with its pool's
//!   owner; a tracker's `Context` is its component's block and `Source` its kind.

use kdnet_symbols::{TypeTable, builtin};

use crate::SimError;
use crate::kernel::Kernel;
use crate::pool::{PoolKind, tag};
use crate::system::System;

/// Owner-slot value of an NBL back with the component that allocated it.
pub const NBL_HOME: u64 = 0x18;

/// The NDIS layout the simulated ndis.sys is laid out with: the real ndis.pdb's, as the project
/// carries it.
pub fn ndis_table() -> TypeTable {
    builtin::ndis()
}

/// How NDIS looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NdisSetup {
    /// NBL owner tracking on (TrackNblOwner = 1).
    pub tracking: bool,
    /// The first miniport holds the pending NBLs, paused and query-removed.
    pub hang: bool,
}

/// What was planted, for tests.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NdisFacts {
    /// NBL pools.
    pub pools: u32,
    /// NBLs in all pools.
    pub total: u32,
    /// NBLs on the pools' lookaside lists (freed).
    pub freed: u32,
    /// NBLs held away from home.
    pub pending: u32,
    /// The component holding them (miniport block).
    pub holder: u64,
    /// Its name.
    pub holder_name: String,
    /// Every miniport block and its name.
    pub miniports: Vec<(u64, String)>,
    /// An NBL back home in each pool that has one.
    pub home: Vec<u64>,
}

/// The miniport name of the reported hang.
pub const HUNG_MINIPORT: &str = "My Ethernet 1Gb 4-port Adapter";

/// `_NDIS_NBL_TRACKER_SOURCE` of each kind of component.
const SOURCE_MINIPORT: u64 = 0;
const SOURCE_FILTER: u64 = 1;
const SOURCE_PROTOCOL: u64 = 2;

struct Component {
    block: u64,
    tracker: u64,
}

/// Where the simulated ndis.sys is loaded and its table.
struct Ndis {
    base: u64,
    t: TypeTable,
}

impl Ndis {
    fn global(&self, name: &str) -> Result<u64, SimError> {
        Ok(self.base + self.t.require_symbol(name)?)
    }
}

fn new_block(sys: &mut System, t: &TypeTable, ty: &str, tag_name: &str) -> Result<u64, SimError> {
    let size = t.size_of(ty)?;
    let b = sys
        .pool
        .alloc(&mut sys.k, PoolKind::NonPaged, size, tag(tag_name))?;
    // Every block starts with its NDIS object header; its size is the block's.
    sys.k.w16(b + 2, size.min(0xffff) as u16);
    Ok(b)
}

/// A UNICODE_STRING holding `text` in non-paged pool (the string and its buffer allocated
/// apart, as `RtlDuplicateUnicodeString` does); returns the string's address.
fn new_unicode(k: &mut Kernel, pool: &mut crate::pool::Pool, text: &str) -> Result<u64, SimError> {
    let at = pool.alloc(k, PoolKind::NonPaged, 0x10, tag("NDus"))?;
    let buf = pool.alloc(
        k,
        PoolKind::NonPaged,
        (text.len() as u64 + 1) * 2,
        tag("NDnm"),
    )?;
    k.unicode_string(at, buf, text);
    Ok(at)
}

/// Writes `text` into the UNICODE_STRING member `field` of the block at `block`.
fn unicode(
    k: &mut Kernel,
    pool: &mut crate::pool::Pool,
    t: &TypeTable,
    block: u64,
    ty: &str,
    field: &str,
    text: &str,
) -> Result<(), SimError> {
    let buf = pool.alloc(
        k,
        PoolKind::NonPaged,
        (text.len() as u64 + 1) * 2,
        tag("NDnm"),
    )?;
    let at = block + t.offset(ty, field)?;
    k.unicode_string(at, buf, text);
    Ok(())
}

/// Builds NDIS. Needs the modules `ndis`, `tcpip`, `wfplwfs`, `myeth1g` and `netvsc`.
pub fn build(sys: &mut System, setup: NdisSetup) -> Result<NdisFacts, SimError> {
    let t = ndis_table();
    let mi = sys
        .module("ndis")
        .ok_or_else(|| SimError::Config("no ndis module".into()))?;
    let n = Ndis {
        base: sys.modules[mi].image.base,
        t,
    };
    let t = &n.t;
    // The globals' pages.
    for name in crate::layout::NDIS_SYMBOLS {
        let at = n.global(name)?;
        sys.k.map(at, 0x200, true);
    }
    let mode = u64::from(setup.tracking);
    sys.k.w32(n.global("ndisNblTrackerMode")?, mode as u32);
    let tracker_list = n.global("ndisNblTrackerList")?;
    sys.k.list_init(tracker_list);
    // The triage block: where the NBL pools are, and how many lookaside lists each has.
    let triage = n.global("ndisGlobalTriageBlock")?;
    let pool_list = sys
        .pool
        .alloc(&mut sys.k, PoolKind::NonPaged, 0x10, tag("NDgl"))?;
    sys.k.list_init(pool_list);
    let tb = "_NDIS_GLOBAL_TRIAGE_BLOCK";
    let cpus = sys.cpus.len() as u64;
    sys.k.set_in(t, triage, tb, "Size", t.size_of(tb)?)?;
    sys.k
        .set_in(t, triage, tb, "GlobalNetBufferListPoolList", pool_list)?;
    sys.k.set_in(t, triage, tb, "MaxNumberOfProcessors", cpus)?;
    sys.k.set_in(t, triage, tb, "NdisTrackNblOwner", mode)?;

    let mut facts = NdisFacts::default();
    let miniports = miniports(sys, &n, setup, &mut facts)?;
    let opens = protocols(sys, &n, &miniports, &facts)?;
    let filters = filters(sys, &n, &miniports, setup)?;
    let comps = trackers(
        sys,
        t,
        setup,
        tracker_list,
        &miniports,
        &filters,
        &opens,
        &facts,
    )?;
    let tracker_of = |block: u64| {
        comps
            .iter()
            .find(|c| c.block == block)
            .map_or(0, |c| c.tracker)
    };

    let pools = pool_plan(&opens, &miniports, &filters, setup.hang);
    let slot = t.enum_value("_NDIS_NET_BUFFER_LIST_INFO", "NetBufferListInfoReserved1")? as u64;
    let info = t.offset("_NET_BUFFER_LIST", "NetBufferListInfo")? + 8 * slot;
    let holder = miniports[0];
    let layout = NblLayout {
        entry: t.size_of("_NDIS_ENTRY_HEADER")?,
        nbl_size: t.size_of("_NET_BUFFER_LIST")?,
        nb_size: t.size_of("_NET_BUFFER")?,
        info,
        holder_tracker: tracker_of(holder),
        per_block: 32,
        cpus,
    };
    for pool in pools {
        let home = nbl_pool(sys, t, setup, pool_list, &layout, pool)?;
        facts.home.extend(home);
        let (_, _, count, pending, freed) = pool;
        facts.pools += 1;
        facts.total += count;
        facts.freed += freed;
        facts.pending += pending;
    }
    if setup.hang {
        facts.holder = holder;
        facts.holder_name = HUNG_MINIPORT.to_string();
    }
    Ok(facts)
}

/// The miniport drivers and their miniports (the first is the hung one when `setup.hang`);
/// returns the miniport blocks.
fn miniports(
    sys: &mut System,
    n: &Ndis,
    setup: NdisSetup,
    facts: &mut NdisFacts,
) -> Result<Vec<u64>, SimError> {
    let t = &n.t;
    let mut miniports = Vec::new();
    let mut prev_driver = 0u64;
    let mut prev_miniport = 0u64;
    for (i, (service, image, name)) in [
        ("myeth1g", "myeth1g.sys", HUNG_MINIPORT),
        ("netvsc", "netvsc.sys", "Microsoft Hyper-V Network Adapter"),
    ]
    .into_iter()
    .enumerate()
    {
        let drv = driver_block(sys, t, service, image, prev_driver)?;
        prev_driver = drv;
        let m = new_block(sys, t, "_NDIS_MINIPORT_BLOCK", "NDmp")?;
        let full = format!("{name} #{}", i + 1);
        let display = if i == 0 {
            name.to_string()
        } else {
            full.clone()
        };
        let mb = "_NDIS_MINIPORT_BLOCK";
        unicode(
            &mut sys.k,
            &mut sys.pool,
            t,
            m,
            mb,
            "MiniportName",
            &display,
        )?;
        unicode(
            &mut sys.k,
            &mut sys.pool,
            t,
            m,
            mb,
            "BaseName",
            &format!(
                "{{{:08X}-5E2B-4C8A-9F01-0000000000{:02X}}}",
                0x4d1c_0000 + i as u32,
                i
            ),
        )?;
        let hung = setup.hang && i == 0;
        let attrs = sys.pool.alloc(
            &mut sys.k,
            PoolKind::NonPaged,
            t.size_of("_NDIS_MINIPORT_ADAPTER_GENERAL_ATTRIBUTES")?,
            tag("NDga"),
        )?;
        miniport_state(&mut sys.k, t, m, drv, attrs, i, hung)?;
        let k = &mut sys.k;
        k.set_in(t, m, mb, "NextGlobalMiniport", 0)?;
        if prev_miniport != 0 {
            k.set_in(t, prev_miniport, mb, "NextGlobalMiniport", m)?;
        } else {
            k.w64(n.global("ndisMiniportList")?, m);
        }
        prev_miniport = m;
        miniports.push(m);
        facts.miniports.push((m, display));
    }
    sys.k.w64(n.global("ndisMiniDriverList")?, prev_driver);
    Ok(miniports)
}

/// A miniport driver block, linked after `prev_driver`.
fn driver_block(
    sys: &mut System,
    t: &TypeTable,
    service: &str,
    image: &str,
    prev_driver: u64,
) -> Result<u64, SimError> {
    let db = "_NDIS_M_DRIVER_BLOCK";
    let drv = new_block(sys, t, db, "NDdb")?;
    unicode(
        &mut sys.k,
        &mut sys.pool,
        t,
        drv,
        db,
        "ServiceName",
        service,
    )?;
    unicode(&mut sys.k, &mut sys.pool, t, drv, db, "ImageName", image)?;
    sys.k.set_in(t, drv, db, "MajorNdisVersion", 6)?;
    sys.k.set_in(
        t,
        drv,
        db,
        "MinorNdisVersion",
        if sys.k.build < 9200 { 20 } else { 82 },
    )?;
    sys.k.set_in(t, drv, db, "NextDriver", prev_driver)?;
    Ok(drv)
}

/// A miniport's state: its driver, medium, PnP and miniport state, counters and address (in
/// its general attributes at `attrs`).
fn miniport_state(
    k: &mut Kernel,
    t: &TypeTable,
    m: u64,
    drv: u64,
    attrs: u64,
    i: usize,
    hung: bool,
) -> Result<(), SimError> {
    let mb = "_NDIS_MINIPORT_BLOCK";
    let e = |name: &str, c: &str| -> Result<u64, SimError> { Ok(t.enum_value(name, c)? as u64) };
    k.set_in(t, m, mb, "DriverHandle", drv)?;
    k.set_in(t, drv, "_NDIS_M_DRIVER_BLOCK", "MiniportQueue", m)?;
    k.set_in(t, m, mb, "MediaType", e("_NDIS_MEDIUM", "NdisMedium802_3")?)?;
    k.set_in(t, m, mb, "PhysicalMediumType", 14)?;
    let pnp = if hung {
        "NdisPnPDeviceQueryRemoved"
    } else {
        "NdisPnPDeviceStarted"
    };
    k.set_in(
        t,
        m,
        mb,
        "PnPDeviceState",
        e("_NDIS_PNP_DEVICE_STATE", pnp)?,
    )?;
    let state = if hung {
        "NdisMiniportPausing"
    } else {
        "NdisMiniportRunning"
    };
    k.set_in(t, m, mb, "State", e("_NDIS_MINIPORT_STATE", state)?)?;
    let oper = if hung {
        "NET_IF_OPER_STATUS_DOWN"
    } else {
        "NET_IF_OPER_STATUS_UP"
    };
    k.set_in(t, m, mb, "OperStatus", e("_NET_IF_OPER_STATUS", oper)?)?;
    k.set_in(t, m, mb, "MediaConnectState", 1)?;
    k.set_in(
        t,
        m,
        mb,
        "Flags",
        if hung { 0x2040_1208 } else { 0x2040_0208 },
    )?;
    k.set_in(
        t,
        m,
        mb,
        "PnPFlags",
        if hung { 0x0001_0021 } else { 0x0001_0001 },
    )?;
    k.set_in(t, m, mb, "Ref.ReferenceCount", if hung { 1858 } else { 4 })?;
    k.set_in(t, m, mb, "IfIndex", 5 + i as u64)?;
    let ga = "_NDIS_MINIPORT_ADAPTER_GENERAL_ATTRIBUTES";
    k.set_in(t, m, mb, "GeneralAttributes", attrs)?;
    k.set_in(t, attrs, ga, "MacAddressLength", 6)?;
    let mac = [0x00, 0x15, 0x5d, 0x4c, 0x21, 0x10 + i as u8];
    k.write(attrs + t.offset(ga, "CurrentMacAddress")?, &mac);
    k.write(attrs + t.offset(ga, "PermanentMacAddress")?, &mac);
    Ok(())
}

/// The protocols and their bindings (opens) to each miniport; returns each protocol's name and
/// opens.
fn protocols(
    sys: &mut System,
    n: &Ndis,
    miniports: &[u64],
    facts: &NdisFacts,
) -> Result<Vec<(String, Vec<u64>)>, SimError> {
    let t = &n.t;
    let mut opens: Vec<(String, Vec<u64>)> = Vec::new();
    let mut prev_proto = 0u64;
    let mut prev_open = 0u64;
    let (pt, ot) = ("_NDIS_PROTOCOL_BLOCK", "_NDIS_OPEN_BLOCK");
    for proto in ["TCPIP", "TCPIP6", "MSLLDP", "NDISUIO"] {
        let pb = new_block(sys, t, pt, "NDpb")?;
        unicode(&mut sys.k, &mut sys.pool, t, pb, pt, "Name", proto)?;
        sys.k.set_in(t, pb, pt, "NextProtocol", prev_proto)?;
        prev_proto = pb;
        let mut list = Vec::new();
        let mut prev_of_protocol = 0u64;
        for (mi_idx, m) in miniports.iter().enumerate() {
            let o = new_block(sys, t, ot, "NDop")?;
            sys.k.set_in(t, o, ot, "ProtocolHandle", pb)?;
            sys.k.set_in(t, o, ot, "MiniportHandle", *m)?;
            sys.k.set_in(t, o, ot, "NextGlobalOpen", prev_open)?;
            sys.k
                .set_in(t, o, ot, "ProtocolNextOpen", prev_of_protocol)?;
            prev_of_protocol = o;
            let device = format!(
                "\\DEVICE\\{{{:08X}-5E2B-4C8A-9F01-0000000000{mi_idx:02X}}}",
                0x4d1c_0000 + mi_idx as u32
            );
            let name = new_unicode(&mut sys.k, &mut sys.pool, &device)?;
            sys.k.set_in(t, o, ot, "BindDeviceName", name)?;
            prev_open = o;
            list.push(o);
            let _ = &facts.miniports[mi_idx];
        }
        sys.k.set_in(t, pb, pt, "OpenQueue", prev_of_protocol)?;
        opens.push((proto.to_string(), list));
    }
    sys.k.w64(n.global("ndisProtocolList")?, prev_proto);
    sys.k.w64(n.global("ndisGlobalOpenList")?, prev_open);
    Ok(opens)
}

/// A lightweight filter on each miniport; returns the filter blocks.
fn filters(
    sys: &mut System,
    n: &Ndis,
    miniports: &[u64],
    setup: NdisSetup,
) -> Result<Vec<u64>, SimError> {
    let t = &n.t;
    let ft = "_NDIS_FILTER_BLOCK";
    let mut filters = Vec::new();
    let mut prev_filter = 0u64;
    for (i, m) in miniports.iter().enumerate() {
        let f = new_block(sys, t, ft, "NDfb")?;
        sys.k.set_in(t, f, ft, "Miniport", *m)?;
        sys.k.set_in(t, f, ft, "NextGlobalFilter", prev_filter)?;
        let state = if setup.hang && i == 0 {
            "NdisFilterPausing"
        } else {
            "NdisFilterRunning"
        };
        let state = t.enum_value("_NDIS_FILTER_STATE", state)? as u64;
        sys.k.set_in(t, f, ft, "State", state)?;
        sys.k
            .set_in(t, *m, "_NDIS_MINIPORT_BLOCK", "LowestFilter", f)?;
        sys.k
            .set_in(t, *m, "_NDIS_MINIPORT_BLOCK", "HighestFilter", f)?;
        let name = new_unicode(
            &mut sys.k,
            &mut sys.pool,
            &format!("WFP Native MAC Layer LightWeight Filter-{i:04}"),
        )?;
        sys.k.set_in(t, f, ft, "FilterFriendlyName", name)?;
        prev_filter = f;
        filters.push(f);
    }
    sys.k.w64(n.global("ndisGlobalFilterList")?, prev_filter);
    Ok(filters)
}

/// The NBL trackers: one per miniport, filter and open (its component's block in `Context`,
/// its kind in `Source`, its name in `Name`), linked when tracking is on.
#[allow(clippy::too_many_arguments)]
fn trackers(
    sys: &mut System,
    t: &TypeTable,
    setup: NdisSetup,
    tracker_list: u64,
    miniports: &[u64],
    filters: &[u64],
    opens: &[(String, Vec<u64>)],
    facts: &NdisFacts,
) -> Result<Vec<Component>, SimError> {
    let mut comps: Vec<Component> = Vec::new();
    let mut all: Vec<(u64, &str, u64, String)> = Vec::new();
    for (i, m) in miniports.iter().enumerate() {
        let name = facts.miniports[i].1.clone();
        all.push((*m, "_NDIS_MINIPORT_BLOCK", SOURCE_MINIPORT, name));
    }
    for (i, f) in filters.iter().enumerate() {
        let name = format!("WFP Native MAC Layer LightWeight Filter-{i:04}");
        all.push((*f, "_NDIS_FILTER_BLOCK", SOURCE_FILTER, name));
    }
    for (proto, list) in opens {
        for (i, o) in list.iter().enumerate() {
            let name = format!("{proto} bound to {}", facts.miniports[i].1);
            all.push((*o, "_NDIS_OPEN_BLOCK", SOURCE_PROTOCOL, name));
        }
    }
    let tt = "_NDIS_NBL_TRACKER";
    let source = t.field(tt, "Source")?;
    if source
        .bits()
        .is_some_and(|(pos, len)| pos != 0 || len != 16)
    {
        return Err(SimError::Config(format!(
            "{tt}.Source is not the low 16 bits of its word"
        )));
    }
    // The names first, then the trackers (a tracker does not share its page with its name).
    let mut names = Vec::with_capacity(all.len());
    for (_, _, _, name) in &all {
        names.push(new_unicode(&mut sys.k, &mut sys.pool, name)?);
    }
    for ((block, ty, kind, _), n) in all.into_iter().zip(names) {
        let tr = sys
            .pool
            .alloc(&mut sys.k, PoolKind::NonPaged, t.size_of(tt)?, tag("NDtk"))?;
        sys.k.w16(tr + source.offset, kind as u16);
        sys.k.set_in(t, tr, tt, "Context", block)?;
        sys.k.set_in(t, tr, tt, "Name", n)?;
        if setup.tracking {
            let link = tr + t.offset(tt, "Linkage")?;
            sys.k.list_append(tracker_list, link);
        }
        sys.k.set_in(t, block, ty, "NblTracker", tr)?;
        comps.push(Component { block, tracker: tr });
    }
    Ok(comps)
}

/// The NBL pools: (owner block, tag, NBLs, pending held by the first miniport, freed).
fn pool_plan(
    opens: &[(String, Vec<u64>)],
    miniports: &[u64],
    filters: &[u64],
    hang: bool,
) -> Vec<(u64, &'static str, u32, u32, u32)> {
    let tcp = &opens[0].1;
    let tcp6 = &opens[1].1;
    let lldp = &opens[2].1;
    let uio = &opens[3].1;
    let pend = |n: u32| if hang { n } else { 0 };
    vec![
        (tcp[0], "TcNb", 400, pend(380), if hang { 20 } else { 150 }),
        (tcp[0], "TcNb", 400, pend(380), if hang { 20 } else { 150 }),
        (tcp[1], "TcNb", 400, pend(380), if hang { 20 } else { 150 }),
        (tcp[1], "TcNb", 400, pend(380), if hang { 20 } else { 150 }),
        (tcp6[0], "T6Nb", 100, pend(84), if hang { 16 } else { 40 }),
        (tcp6[0], "T6Nb", 100, pend(84), if hang { 16 } else { 40 }),
        (tcp6[1], "T6Nb", 100, pend(83), if hang { 17 } else { 40 }),
        (tcp6[1], "T6Nb", 100, pend(83), if hang { 17 } else { 40 }),
        (miniports[0], "MyNb", 100, 0, 50),
        (miniports[0], "MyNb", 100, 0, 50),
        (miniports[0], "MyNb", 100, 0, 50),
        (miniports[1], "VmNb", 100, 0, 50),
        (miniports[1], "VmNb", 100, 0, 50),
        (miniports[1], "VmNb", 100, 0, 50),
        (filters[0], "WfNb", 100, 0, 60),
        (filters[1], "WfNb", 100, 0, 60),
        (lldp[0], "LdNb", 50, 0, 30),
        (lldp[1], "LdNb", 50, 0, 30),
        (uio[0], "UiNb", 52, 0, 30),
        (uio[1], "UiNb", 53, 0, 30),
    ]
}

/// How NBLs are laid out in their pools.
#[derive(Clone, Copy)]
struct NblLayout {
    /// `_NDIS_ENTRY_HEADER` size (each NBL follows its entry header).
    entry: u64,
    /// `_NET_BUFFER_LIST` size.
    nbl_size: u64,
    /// `_NET_BUFFER` size.
    nb_size: u64,
    /// The owner slot's offset in an NBL.
    info: u64,
    /// The tracker of the component holding the pending NBLs.
    holder_tracker: u64,
    /// NBLs allocated together.
    per_block: u32,
    /// Processors (one lookaside list each per pool).
    cpus: u64,
}

/// One NBL pool of `count` NBLs owned by `owner`: the first `pending` are held by the holder,
/// the last `freed` are on its lookaside lists. Returns an NBL back home in it, if any.
fn nbl_pool(
    sys: &mut System,
    t: &TypeTable,
    setup: NdisSetup,
    pool_list: u64,
    l: &NblLayout,
    (owner, tag_name, count, pending, freed): (u64, &str, u32, u32, u32),
) -> Result<Option<u64>, SimError> {
    let pt = "_NDIS_NET_BUFFER_LIST_POOL";
    let la = "_NDIS_NPAGED_LOOKASIDE_LIST";
    // The pool with one lookaside list per processor.
    let lookasides = t.offset(pt, "NetBufferListPoolList")?;
    let la_size = t.size_of(la)?;
    let size = (lookasides + l.cpus * la_size).max(t.size_of(pt)?);
    let ph = sys
        .pool
        .alloc(&mut sys.k, PoolKind::NonPaged, size, tag("NDpl"))?;
    let elem = (l.entry + l.nbl_size + l.nb_size).div_ceil(16) * 16;
    let k = &mut sys.k;
    k.w16(ph + 2, size.min(0xffff) as u16);
    k.set_in(t, ph, pt, "Tag", u64::from(tag(tag_name)))?;
    k.set_in(t, ph, pt, "ProtocolId", 6)?;
    k.set_in(t, ph, pt, "Flags", 1)?;
    k.set_in(t, ph, pt, "OwnerHandle", owner)?;
    k.set_in(t, ph, pt, "ItemLength", elem)?;
    let allocated = ph + t.offset(pt, "AllocatedList")?;
    k.list_init(allocated);
    k.list_append(pool_list, ph + t.offset(pt, "GlobalNetBufferListPoolList")?);
    let heads: Vec<u64> = (0..l.cpus)
        .map(|i| -> Result<u64, SimError> {
            Ok(ph + lookasides + i * la_size + t.offset(la, "List.L.ListHead")?)
        })
        .collect::<Result<_, _>>()?;
    let mut depth = vec![0u64; heads.len()];
    let linkage = t.offset("_NDIS_ENTRY_HEADER", "Linkage")?;
    let mut home = None;
    let mut made = 0u32;
    while made < count {
        let n = l.per_block.min(count - made);
        let chunk = sys.pool.alloc(
            &mut sys.k,
            PoolKind::NonPaged,
            u64::from(n) * elem,
            tag(tag_name),
        )?;
        let k = &mut sys.k;
        for j in 0..n {
            let idx = made + j;
            let entry = chunk + u64::from(j) * elem;
            let nbl = entry + l.entry;
            let nb = nbl + l.nbl_size;
            let cpu = u64::from(idx) % l.cpus.max(1);
            k.set_in(t, entry, "_NDIS_ENTRY_HEADER", "PoolHeader", ph)?;
            k.set_in(t, entry, "_NDIS_ENTRY_HEADER", "LookasideProcIndex", cpu)?;
            k.list_append(allocated, entry + linkage);
            k.set_in(t, nbl, "_NET_BUFFER_LIST", "FirstNetBuffer", nb)?;
            k.set_in(t, nbl, "_NET_BUFFER_LIST", "NdisPoolHandle", ph)?;
            k.set_in(t, nbl, "_NET_BUFFER_LIST", "SourceHandle", owner)?;
            k.set_in(t, nb, "_NET_BUFFER", "DataLength", 0x5ea)?;
            let is_pending = idx < pending;
            let is_free = !is_pending && idx >= count - freed;
            let value = if !setup.tracking {
                0
            } else if is_pending {
                l.holder_tracker | 1
            } else {
                NBL_HOME
            };
            k.w64(nbl + l.info, value);
            if is_free {
                // Pushed on its processor's lookaside list: the SLIST header's second word
                // points at the first entry, its first word counts them.
                let head = heads[cpu as usize];
                let first = k.r64(head + 8) & !0xf;
                k.set_in(t, nbl, "_NET_BUFFER_LIST", "Next", first)?;
                k.w64(head + 8, nbl);
                depth[cpu as usize] += 1;
                k.w64(head, depth[cpu as usize]);
                home.get_or_insert(nbl);
            }
        }
        made += n;
    }
    Ok(home)
}
