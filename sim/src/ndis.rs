//! NDIS state of the simulated machine, in the simulator's own NDIS layout
//! ([`crate::ndis_layout`]): drivers, miniports, protocols and their bindings, filters, NBL
//! trackers, and NBL pools whose NBLs carry their current owner in the tracker slot.

use crate::ndis_layout::{
    self as ndis, NBL_HOME, TYPE_FILTER, TYPE_MINIPORT, TYPE_OPEN, TYPE_POOL, TYPE_PROTOCOL,
};
use kdnet_symbols::TypeTable;

use crate::SimError;
use crate::kernel::Kernel;
use crate::pool::{PoolKind, tag};
use crate::system::System;

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
    /// NBLs on the pools' free lists.
    pub freed: u32,
    /// NBLs held away from home.
    pub pending: u32,
    /// The component holding them (miniport block).
    pub holder: u64,
    /// Its name.
    pub holder_name: String,
    /// Every miniport block and its name.
    pub miniports: Vec<(u64, String)>,
    /// NBLs back home with their pools (each pool's free-list head, when it has one).
    pub home: Vec<u64>,
}

/// The miniport name of the reported hang.
pub const HUNG_MINIPORT: &str = "My Ethernet 1Gb 4-port Adapter";

struct Component {
    block: u64,
    tracker: u64,
}

fn new_block(
    sys: &mut System,
    t: &TypeTable,
    ty: &str,
    kind: u8,
    tag_name: &str,
) -> Result<u64, SimError> {
    let size = t.size_of(ty)?;
    let b = sys
        .pool
        .alloc(&mut sys.k, PoolKind::NonPaged, size, tag(tag_name))?;
    sys.k.w8(b, kind);
    Ok(b)
}

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
    let t = ndis::table(sys.k.build);
    let mi = sys
        .module("ndis")
        .ok_or_else(|| SimError::Config("no ndis module".into()))?;
    let base = sys.modules[mi].image.base;
    sys.k.map(base + 0x21000, 0x1000, true);
    let g = |name: &str| -> Result<u64, SimError> { Ok(base + t.require_symbol(name)?) };
    let mode = u64::from(setup.tracking);
    sys.k.w32(g("ndisNblTrackerMode")?, mode as u32);
    sys.k.w32(g("ndisTrackNblOwner")?, mode as u32);
    let tracker_list = g("ndisNblTrackerList")?;
    sys.k.list_init(tracker_list);
    let pool_list = g("ndisGlobalNblPoolList")?;
    sys.k.list_init(pool_list);

    let mut facts = NdisFacts::default();
    let miniports = miniports(sys, &t, base, setup, &mut facts)?;

    let opens = protocols(sys, &t, base, &miniports, &facts)?;

    let filters = filters(sys, &t, base, &miniports, setup)?;

    let comps = trackers(sys, &t, setup, tracker_list, &miniports, &filters, &opens)?;
    let tracker_of = |block: u64| {
        comps
            .iter()
            .find(|c| c.block == block)
            .map_or(0, |c| c.tracker)
    };

    let pools = pool_plan(&opens, &miniports, &filters, setup.hang);
    let slot = u64::try_from(ndis::tracker_slot(sys.k.build)).unwrap_or(27);
    let nbl_size = t.size_of("_NET_BUFFER_LIST")?;
    let nb_size = t.size_of("_NET_BUFFER")?;
    let elem = (nbl_size + nb_size).div_ceil(16) * 16;
    let info = t.offset("_NET_BUFFER_LIST", "NetBufferListInfo")? + 8 * slot;
    let holder = miniports[0];
    let layout = NblLayout {
        nbl_size,
        elem,
        info,
        holder_tracker: tracker_of(holder),
        per_block: 32,
    };
    for pool in pools {
        let free_head = nbl_pool(sys, &t, setup, pool_list, &layout, pool)?;
        facts.home.extend((free_head != 0).then_some(free_head));
        let (_, _, count, pending, freed) = pool;
        facts.pools += 1;
        facts.total += count;
        facts.freed += freed;
        facts.pending += pending;
    }
    if setup.hang {
        sys.k.set_in(
            &t,
            holder,
            "_NDIS_MINIPORT_BLOCK",
            "SendNblsOutstanding",
            u64::from(facts.pending),
        )?;
        facts.holder = holder;
        facts.holder_name = HUNG_MINIPORT.to_string();
    }
    Ok(facts)
}

/// A global of ndis.sys, loaded at `base`.
fn global(t: &TypeTable, base: u64, name: &str) -> Result<u64, SimError> {
    Ok(base + t.require_symbol(name)?)
}

/// The miniport drivers and their miniports (the first is the hung one when `setup.hang`);
/// returns the miniport blocks.
fn miniports(
    sys: &mut System,
    t: &TypeTable,
    base: u64,
    setup: NdisSetup,
    facts: &mut NdisFacts,
) -> Result<Vec<u64>, SimError> {
    // Drivers and miniports.
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
        let m = new_block(sys, t, "_NDIS_MINIPORT_BLOCK", TYPE_MINIPORT, "NDmp")?;
        let full = format!("{name} #{}", i + 1);
        let display = if i == 0 {
            name.to_string()
        } else {
            full.clone()
        };
        unicode(
            &mut sys.k,
            &mut sys.pool,
            t,
            m,
            "_NDIS_MINIPORT_BLOCK",
            "MiniportName",
            &display,
        )?;
        unicode(
            &mut sys.k,
            &mut sys.pool,
            t,
            m,
            "_NDIS_MINIPORT_BLOCK",
            "BaseName",
            &format!(
                "{{{:08X}-5E2B-4C8A-9F01-0000000000{:02X}}}",
                0x4d1c_0000 + i as u32,
                i
            ),
        )?;
        let hung = setup.hang && i == 0;
        miniport_state(&mut sys.k, t, m, drv, i, hung)?;
        let k = &mut sys.k;
        k.set_in(t, m, "_NDIS_MINIPORT_BLOCK", "NextGlobalMiniport", 0)?;
        if prev_miniport != 0 {
            k.set_in(
                t,
                prev_miniport,
                "_NDIS_MINIPORT_BLOCK",
                "NextGlobalMiniport",
                m,
            )?;
        } else {
            k.w64(global(t, base, "ndisMiniportList")?, m);
        }
        prev_miniport = m;
        miniports.push(m);
        facts.miniports.push((m, display));
    }
    sys.k
        .w64(global(t, base, "ndisMiniDriverList")?, prev_driver);
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
    let drv = new_block(sys, t, "_NDIS_M_DRIVER_BLOCK", 0x0B, "NDdb")?;
    unicode(
        &mut sys.k,
        &mut sys.pool,
        t,
        drv,
        "_NDIS_M_DRIVER_BLOCK",
        "ServiceName",
        service,
    )?;
    unicode(
        &mut sys.k,
        &mut sys.pool,
        t,
        drv,
        "_NDIS_M_DRIVER_BLOCK",
        "ImageName",
        image,
    )?;
    sys.k
        .set_in(t, drv, "_NDIS_M_DRIVER_BLOCK", "MajorNdisVersion", 6)?;
    sys.k.set_in(
        t,
        drv,
        "_NDIS_M_DRIVER_BLOCK",
        "MinorNdisVersion",
        if sys.k.build < 9200 { 20 } else { 82 },
    )?;
    sys.k
        .set_in(t, drv, "_NDIS_M_DRIVER_BLOCK", "NextDriver", prev_driver)?;
    Ok(drv)
}

/// A miniport's state: its driver, medium, PnP and data path state, counters and address.
fn miniport_state(
    k: &mut Kernel,
    t: &TypeTable,
    m: u64,
    drv: u64,
    i: usize,
    hung: bool,
) -> Result<(), SimError> {
    k.set_in(t, m, "_NDIS_MINIPORT_BLOCK", "DriverHandle", drv)?;
    k.set_in(t, drv, "_NDIS_M_DRIVER_BLOCK", "MiniportQueue", m)?;
    k.set_in(t, m, "_NDIS_MINIPORT_BLOCK", "MediaType", 0)?;
    k.set_in(t, m, "_NDIS_MINIPORT_BLOCK", "PhysicalMediumType", 14)?;
    k.set_in(
        t,
        m,
        "_NDIS_MINIPORT_BLOCK",
        "PnPDeviceState",
        if hung { 4 } else { 1 },
    )?;
    k.set_in(
        t,
        m,
        "_NDIS_MINIPORT_BLOCK",
        "MiniportState",
        if hung { 5 } else { 3 },
    )?;
    k.set_in(
        t,
        m,
        "_NDIS_MINIPORT_BLOCK",
        "DatapathState",
        if hung { 2 } else { 0 },
    )?;
    k.set_in(
        t,
        m,
        "_NDIS_MINIPORT_BLOCK",
        "OperStatus",
        if hung { 2 } else { 1 },
    )?;
    k.set_in(t, m, "_NDIS_MINIPORT_BLOCK", "MediaConnectState", 1)?;
    k.set_in(
        t,
        m,
        "_NDIS_MINIPORT_BLOCK",
        "Flags",
        if hung { 0x2040_1208 } else { 0x2040_0208 },
    )?;
    k.set_in(
        t,
        m,
        "_NDIS_MINIPORT_BLOCK",
        "PnPFlags",
        if hung { 0x0001_0021 } else { 0x0001_0001 },
    )?;
    k.set_in(
        t,
        m,
        "_NDIS_MINIPORT_BLOCK",
        "Ref",
        if hung { 1858 } else { 4 },
    )?;
    k.set_in(t, m, "_NDIS_MINIPORT_BLOCK", "InterfaceIndex", 5 + i as u64)?;
    k.write(
        m + t.offset("_NDIS_MINIPORT_BLOCK", "CurrentMacAddress")?,
        &[0x00, 0x15, 0x5d, 0x4c, 0x21, 0x10 + i as u8],
    );
    Ok(())
}

/// The protocols and their bindings (opens) to each miniport; returns each protocol's name and
/// opens.
fn protocols(
    sys: &mut System,
    t: &TypeTable,
    base: u64,
    miniports: &[u64],
    facts: &NdisFacts,
) -> Result<Vec<(String, Vec<u64>)>, SimError> {
    // Protocols and their bindings (opens) to each miniport.
    let mut opens: Vec<(String, Vec<u64>)> = Vec::new();
    let mut prev_proto = 0u64;
    let mut prev_open = 0u64;
    for proto in ["TCPIP", "TCPIP6", "MSLLDP", "NDISUIO"] {
        let pb = new_block(sys, t, "_NDIS_PROTOCOL_BLOCK", TYPE_PROTOCOL, "NDpb")?;
        unicode(
            &mut sys.k,
            &mut sys.pool,
            t,
            pb,
            "_NDIS_PROTOCOL_BLOCK",
            "Name",
            proto,
        )?;
        sys.k
            .set_in(t, pb, "_NDIS_PROTOCOL_BLOCK", "NextProtocol", prev_proto)?;
        prev_proto = pb;
        let mut list = Vec::new();
        for (mi_idx, m) in miniports.iter().enumerate() {
            let o = new_block(sys, t, "_NDIS_OPEN_BLOCK", TYPE_OPEN, "NDop")?;
            sys.k
                .set_in(t, o, "_NDIS_OPEN_BLOCK", "ProtocolHandle", pb)?;
            sys.k
                .set_in(t, o, "_NDIS_OPEN_BLOCK", "MiniportHandle", *m)?;
            sys.k
                .set_in(t, o, "_NDIS_OPEN_BLOCK", "NextGlobalOpen", prev_open)?;
            let name = format!("{proto} bound to {}", facts.miniports[mi_idx].1);
            unicode(
                &mut sys.k,
                &mut sys.pool,
                t,
                o,
                "_NDIS_OPEN_BLOCK",
                "BindingName",
                &name,
            )?;
            prev_open = o;
            list.push(o);
        }
        opens.push((proto.to_string(), list));
    }
    sys.k.w64(global(t, base, "ndisProtocolList")?, prev_proto);
    sys.k.w64(global(t, base, "ndisGlobalOpenList")?, prev_open);
    Ok(opens)
}

/// A lightweight filter on each miniport; returns the filter blocks.
fn filters(
    sys: &mut System,
    t: &TypeTable,
    base: u64,
    miniports: &[u64],
    setup: NdisSetup,
) -> Result<Vec<u64>, SimError> {
    // A lightweight filter on each miniport.
    let mut filters = Vec::new();
    let mut prev_filter = 0u64;
    for (i, m) in miniports.iter().enumerate() {
        let f = new_block(sys, t, "_NDIS_FILTER_BLOCK", TYPE_FILTER, "NDfb")?;
        sys.k.set_in(t, f, "_NDIS_FILTER_BLOCK", "Miniport", *m)?;
        sys.k
            .set_in(t, f, "_NDIS_FILTER_BLOCK", "NextGlobalFilter", prev_filter)?;
        sys.k.set_in(
            t,
            f,
            "_NDIS_FILTER_BLOCK",
            "State",
            if setup.hang && i == 0 { 5 } else { 3 },
        )?;
        sys.k
            .set_in(t, *m, "_NDIS_MINIPORT_BLOCK", "FilterList", f)?;
        unicode(
            &mut sys.k,
            &mut sys.pool,
            t,
            f,
            "_NDIS_FILTER_BLOCK",
            "FilterFriendlyName",
            &format!("WFP Native MAC Layer LightWeight Filter-{i:04}"),
        )?;
        prev_filter = f;
        filters.push(f);
    }
    sys.k
        .w64(global(t, base, "ndisGlobalFilterList")?, prev_filter);
    Ok(filters)
}

/// The NBL trackers: one per miniport, filter and open, linked when tracking is on.
fn trackers(
    sys: &mut System,
    t: &TypeTable,
    setup: NdisSetup,
    tracker_list: u64,
    miniports: &[u64],
    filters: &[u64],
    opens: &[(String, Vec<u64>)],
) -> Result<Vec<Component>, SimError> {
    // Trackers: one per miniport, filter and open, linked when tracking is on.
    let mut comps: Vec<Component> = Vec::new();
    let all_blocks: Vec<(u64, &str)> = miniports
        .iter()
        .map(|m| (*m, "_NDIS_MINIPORT_BLOCK"))
        .chain(filters.iter().map(|f| (*f, "_NDIS_FILTER_BLOCK")))
        .chain(
            opens
                .iter()
                .flat_map(|(_, v)| v.iter().map(|o| (*o, "_NDIS_OPEN_BLOCK"))),
        )
        .collect();
    for (block, ty) in all_blocks {
        let tr = new_block(sys, t, "_NDIS_NBL_TRACKER", 0, "NDtk")?;
        sys.k.w8(tr, 0);
        sys.k.set_in(t, tr, "_NDIS_NBL_TRACKER", "Handle", block)?;
        let kind = match ty {
            "_NDIS_MINIPORT_BLOCK" => 1,
            "_NDIS_FILTER_BLOCK" => 2,
            _ => 3,
        };
        sys.k
            .set_in(t, tr, "_NDIS_NBL_TRACKER", "ComponentKind", kind)?;
        if setup.tracking {
            let link = tr + t.offset("_NDIS_NBL_TRACKER", "Linkage")?;
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

/// How NBLs are laid out in their pools' blocks.
#[derive(Clone, Copy)]
struct NblLayout {
    /// `_NET_BUFFER_LIST` size.
    nbl_size: u64,
    /// One NBL with its NET_BUFFER, rounded to 16.
    elem: u64,
    /// The tracker slot's offset in an NBL.
    info: u64,
    /// The tracker of the component holding the pending NBLs.
    holder_tracker: u64,
    /// NBLs per block.
    per_block: u32,
}

/// One NBL pool of `count` NBLs owned by `owner`: the first `pending` are held by the holder,
/// the last `freed` are on its free list (whose head it returns).
fn nbl_pool(
    sys: &mut System,
    t: &TypeTable,
    setup: NdisSetup,
    pool_list: u64,
    l: &NblLayout,
    (owner, tag_name, count, pending, freed): (u64, &str, u32, u32, u32),
) -> Result<u64, SimError> {
    let NblLayout {
        nbl_size,
        elem,
        info,
        holder_tracker,
        per_block,
    } = *l;
    let ph = new_block(sys, t, "_NDIS_POOL_HEADER", TYPE_POOL, "NDpl")?;
    let k = &mut sys.k;
    k.w32(ph, 0x0180_010D);
    k.set_in(t, ph, "_NDIS_POOL_HEADER", "ElementSize", elem)?;
    k.set_in(t, ph, "_NDIS_POOL_HEADER", "Tag", u64::from(tag(tag_name)))?;
    k.set_in(t, ph, "_NDIS_POOL_HEADER", "ProtocolId", 6)?;
    k.set_in(t, ph, "_NDIS_POOL_HEADER", "Flags", 1)?;
    k.set_in(t, ph, "_NDIS_POOL_HEADER", "OwnerHandle", owner)?;
    let blocks_head = ph + t.offset("_NDIS_POOL_HEADER", "BlockListHead")?;
    k.list_init(blocks_head);
    k.list_append(pool_list, ph + t.offset("_NDIS_POOL_HEADER", "GlobalLink")?);
    let mut free_head = 0u64;
    let mut made = 0u32;
    while made < count {
        let n = per_block.min(count - made);
        let header = t.size_of("_NDIS_NBL_BLOCK")?.div_ceil(16) * 16;
        let block = sys.pool.alloc(
            &mut sys.k,
            PoolKind::NonPaged,
            header + u64::from(n) * elem,
            tag(tag_name),
        )?;
        let k = &mut sys.k;
        k.list_append(blocks_head, block + t.offset("_NDIS_NBL_BLOCK", "Link")?);
        k.set_in(t, block, "_NDIS_NBL_BLOCK", "Count", u64::from(n))?;
        k.set_in(t, block, "_NDIS_NBL_BLOCK", "ElementSize", elem)?;
        k.set_in(t, block, "_NDIS_NBL_BLOCK", "FirstElement", block + header)?;
        for j in 0..n {
            let idx = made + j;
            let nbl = block + header + u64::from(j) * elem;
            let nb = nbl + nbl_size;
            k.set_in(t, nbl, "_NET_BUFFER_LIST", "FirstNetBuffer", nb)?;
            k.set_in(t, nbl, "_NET_BUFFER_LIST", "NdisPoolHandle", ph)?;
            k.set_in(t, nbl, "_NET_BUFFER_LIST", "SourceHandle", owner)?;
            k.set_in(t, nb, "_NET_BUFFER", "DataLength", 0x5ea)?;
            let is_pending = idx < pending;
            let is_free = !is_pending && idx >= count - freed;
            let value = if !setup.tracking {
                0
            } else if is_pending {
                holder_tracker | 1
            } else {
                NBL_HOME
            };
            k.w64(nbl + info, value);
            if is_free {
                k.set_in(t, nbl, "_NET_BUFFER_LIST", "Next", free_head)?;
                free_head = nbl;
            }
        }
        made += n;
    }
    let k = &mut sys.k;
    k.set_in(t, ph, "_NDIS_POOL_HEADER", "FreeListHead", free_head)?;
    k.set_in(t, ph, "_NDIS_POOL_HEADER", "FreeCount", u64::from(freed))?;
    k.set_in(
        t,
        ph,
        "_NDIS_POOL_HEADER",
        "AllocatedCount",
        u64::from(count),
    )?;
    Ok(free_head)
}
