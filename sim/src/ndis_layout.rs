//! The NDIS layout of the simulated `ndis.sys`.
//!
//! The public ndis.pdb describes NDIS internals, but no copy is available to the project, so the
//! simulator's ndis.sys uses this layout, which the project defines and documents itself:
//! - `_NET_BUFFER_LIST` follows the public `ndis.h` definition for x64 (Next, FirstNetBuffer,
//!   Context, ParentNetBufferList, NdisPoolHandle, NdisReserved[2], ProtocolReserved[4],
//!   MiniportReserved[2], Scratch, SourceHandle, NblFlags, ChildRefCount, Flags, Status,
//!   NetBufferListInfo[]); the owner-tracking slot is `NetBufferListInfoReserved1`, index 18 on
//!   NDIS 6.20 (7601) and 27 on NDIS 6.80+ (17763, 20348), per extensions.md §6.2.
//! - `_NDIS_NBL_TRACKER` (0x48: Linkage, ComponentKind, Handle, Context, Buckets) and the
//!   tracker encoding (holder | 1, home marker 0x18) follow the facts of extensions.md §6.2.
//! - `_NDIS_MINIPORT_BLOCK`, `_NDIS_M_DRIVER_BLOCK`, `_NDIS_FILTER_BLOCK`, `_NDIS_OPEN_BLOCK`,
//!   `_NDIS_PROTOCOL_BLOCK` and `_NDIS_POOL_HEADER` keep the member names public write-ups use
//!   (NextGlobalMiniport, DriverHandle, MediaType, NblTracker, …) at offsets of the project's
//!   choosing; the first byte of every block is its NDIS object type (0x11 miniport, 0x12
//!   filter, 0x05 open, 0x03 protocol, 0x0D pool).
//! - NBL pools keep a list of the blocks they carved NBLs from (`BlockListHead`) and a free
//!   list (`FreeListHead`, an SLIST through `NET_BUFFER_LIST.Next`); pools are linked on
//!   `ndisGlobalNblPoolList`. These are the simulator's own, as the real list is not public.
//!
//! Real ndis.sys builds differ; on a real target the commands use ndis.pdb from the symbol
//! server instead. The symbol layer does not know this layout: the simulator's [`Tables`]
//! (`crate::symbols`) serve it to whoever adds them to the symbol path.
//!
//! [`Tables`]: kdnet_symbols::path::Tables

use kdnet_symbols::{Enum, Field, PdbId, Ty, TypeTable, Udt, UdtKind};

/// NDIS object type byte of a miniport block.
pub const TYPE_MINIPORT: u8 = 0x11;
/// … of a filter block.
pub const TYPE_FILTER: u8 = 0x12;
/// … of an open (protocol binding) block.
pub const TYPE_OPEN: u8 = 0x05;
/// … of a protocol block.
pub const TYPE_PROTOCOL: u8 = 0x03;
/// … of an NBL pool.
pub const TYPE_POOL: u8 = 0x0D;
/// Tracker slot value of an NBL that is back with the component that allocated it.
pub const NBL_HOME: u64 = 0x18;
/// Elements of `NetBufferListInfo`.
pub const NBL_INFO_COUNT: u64 = 29;

/// The owner-tracking slot of `NetBufferListInfo` for a build.
pub fn tracker_slot(build: u32) -> i64 {
    if build < 9200 { 18 } else { 27 }
}

/// The PDB identity of the simulated ndis.sys for a build.
pub fn pdb(build: u32) -> PdbId {
    let mut g = format!("{build:08X}");
    g.push_str("4E444953534D4C41544F52010203");
    g.truncate(32);
    PdbId {
        guid: g,
        age: 1,
        name: "ndis.pdb".into(),
    }
}

/// RVAs of the simulated ndis.sys globals.
pub const GLOBALS: &[(&str, u64)] = &[
    ("ndisMiniportList", 0x21000),
    ("ndisMiniDriverList", 0x21008),
    ("ndisGlobalFilterList", 0x21010),
    ("ndisGlobalOpenList", 0x21018),
    ("ndisProtocolList", 0x21020),
    ("ndisNblTrackerMode", 0x21028),
    ("ndisTrackNblOwner", 0x2102c),
    ("ndisNblTrackerList", 0x21030),
    ("ndisNblTrackerEpoch", 0x21040),
    ("ndisGlobalNblPoolList", 0x21050),
];

fn p() -> Ty {
    Ty::Pointer(Box::new(Ty::Void))
}
fn u(name: &str, size: u64) -> Ty {
    Ty::Base {
        name: name.into(),
        size,
        signed: false,
    }
}
fn s(name: &str) -> Ty {
    Ty::Udt(name.into())
}
fn e(name: &str) -> Ty {
    Ty::Enum(name.into())
}

fn add(t: &mut TypeTable, name: &str, size: u64, fields: Vec<(&str, u64, Ty)>) {
    t.insert_udt(Udt {
        name: name.into(),
        kind: UdtKind::Struct,
        size,
        fields: fields
            .into_iter()
            .map(|(n, o, ty)| Field {
                name: n.into(),
                offset: o,
                ty,
            })
            .collect(),
    });
}

fn add_enum(t: &mut TypeTable, name: &str, constants: &[(&str, i64)]) {
    t.insert_enum(Enum {
        name: name.into(),
        size: 4,
        constants: constants.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
    });
}

/// The simulated ndis.sys table for a build.
pub fn table(build: u32) -> TypeTable {
    let mut t = TypeTable::new(Some(pdb(build)));
    add_base_types(&mut t);
    add_component_blocks(&mut t);
    add_nbl_types(&mut t);
    add_enums(&mut t, build);
    for (n, rva) in GLOBALS {
        t.insert_symbol(n, *rva);
    }
    t.finish();
    t
}

/// The base types, lists, strings and the NDIS object header.
fn add_base_types(t: &mut TypeTable) {
    for (n, sz) in [
        ("unsigned char", 1),
        ("unsigned short", 2),
        ("unsigned long", 4),
        ("unsigned long long", 8),
        ("pointer", 8),
    ] {
        t.insert_base(n, sz, false);
    }
    add(
        t,
        "_LIST_ENTRY",
        0x10,
        vec![("Flink", 0, p()), ("Blink", 8, p())],
    );
    add(
        t,
        "_UNICODE_STRING",
        0x10,
        vec![
            ("Length", 0, u("unsigned short", 2)),
            ("MaximumLength", 2, u("unsigned short", 2)),
            ("Buffer", 8, p()),
        ],
    );
    add(
        t,
        "_NDIS_OBJECT_HEADER",
        4,
        vec![
            ("Type", 0, u("unsigned char", 1)),
            ("Revision", 1, u("unsigned char", 1)),
            ("Size", 2, u("unsigned short", 2)),
        ],
    );
}

/// The NBL tracker and the driver, miniport, protocol, open and filter blocks.
fn add_component_blocks(t: &mut TypeTable) {
    add(
        t,
        "_NDIS_NBL_TRACKER",
        0x48,
        vec![
            ("Linkage", 0, s("_LIST_ENTRY")),
            ("ComponentKind", 0x10, u("unsigned short", 2)),
            ("Handle", 0x18, p()),
            ("Context", 0x20, p()),
            (
                "Buckets",
                0x28,
                Ty::Array {
                    count: 2,
                    elem: Box::new(Ty::Array {
                        count: 2,
                        elem: Box::new(p()),
                    }),
                },
            ),
        ],
    );
    add(
        t,
        "_NDIS_M_DRIVER_BLOCK",
        0x80,
        vec![
            ("Header", 0, s("_NDIS_OBJECT_HEADER")),
            ("NextDriver", 8, p()),
            ("MiniportQueue", 0x10, p()),
            ("DriverObject", 0x18, p()),
            ("ServiceName", 0x20, s("_UNICODE_STRING")),
            ("ImageName", 0x30, s("_UNICODE_STRING")),
            ("MajorNdisVersion", 0x40, u("unsigned char", 1)),
            ("MinorNdisVersion", 0x41, u("unsigned char", 1)),
            ("Ref", 0x44, u("unsigned long", 4)),
        ],
    );
    add(
        t,
        "_NDIS_MINIPORT_BLOCK",
        0x400,
        vec![
            ("Header", 0, s("_NDIS_OBJECT_HEADER")),
            ("NextGlobalMiniport", 8, p()),
            ("DriverHandle", 0x10, p()),
            ("MiniportAdapterContext", 0x18, p()),
            ("MiniportName", 0x20, s("_UNICODE_STRING")),
            ("BaseName", 0x30, s("_UNICODE_STRING")),
            ("MediaType", 0x40, e("_NDIS_MEDIUM")),
            ("PhysicalMediumType", 0x44, u("unsigned long", 4)),
            ("PnPDeviceState", 0x48, e("_NDIS_PNP_DEVICE_STATE")),
            ("MiniportState", 0x4C, e("_NDIS_MINIPORT_STATE")),
            ("DatapathState", 0x50, e("_NDIS_DATAPATH_STATE")),
            ("OperStatus", 0x54, e("_NET_IF_OPER_STATUS")),
            ("MediaConnectState", 0x58, u("unsigned long", 4)),
            ("Flags", 0x5C, u("unsigned long", 4)),
            ("PnPFlags", 0x60, u("unsigned long", 4)),
            ("Ref", 0x64, u("unsigned long", 4)),
            ("PendingOidCount", 0x68, u("unsigned long", 4)),
            ("NblTracker", 0x70, p()),
            ("DeviceObject", 0x78, p()),
            ("PhysicalDeviceObject", 0x80, p()),
            ("InterfaceIndex", 0x88, u("unsigned long", 4)),
            (
                "CurrentMacAddress",
                0x8C,
                Ty::Array {
                    count: 6,
                    elem: Box::new(u("unsigned char", 1)),
                },
            ),
            ("OpenQueue", 0x98, p()),
            ("FilterList", 0xA0, p()),
            ("SendNblsOutstanding", 0xA8, u("unsigned long", 4)),
            ("ReceiveNblsOutstanding", 0xAC, u("unsigned long", 4)),
        ],
    );
    add(
        t,
        "_NDIS_PROTOCOL_BLOCK",
        0x80,
        vec![
            ("Header", 0, s("_NDIS_OBJECT_HEADER")),
            ("NextProtocol", 8, p()),
            ("OpenQueue", 0x10, p()),
            ("Name", 0x18, s("_UNICODE_STRING")),
            ("ImageName", 0x28, s("_UNICODE_STRING")),
        ],
    );
    add(
        t,
        "_NDIS_OPEN_BLOCK",
        0x100,
        vec![
            ("Header", 0, s("_NDIS_OBJECT_HEADER")),
            ("NextGlobalOpen", 8, p()),
            ("ProtocolHandle", 0x10, p()),
            ("MiniportHandle", 0x18, p()),
            ("MiniportNextOpen", 0x20, p()),
            ("ProtocolNextOpen", 0x28, p()),
            ("NblTracker", 0x30, p()),
            ("BindingName", 0x38, s("_UNICODE_STRING")),
        ],
    );
    add(
        t,
        "_NDIS_FILTER_BLOCK",
        0x100,
        vec![
            ("Header", 0, s("_NDIS_OBJECT_HEADER")),
            ("NextGlobalFilter", 8, p()),
            ("Miniport", 0x10, p()),
            ("NextFilter", 0x18, p()),
            ("FilterFriendlyName", 0x20, s("_UNICODE_STRING")),
            ("FilterInstanceName", 0x30, s("_UNICODE_STRING")),
            ("NblTracker", 0x40, p()),
            ("State", 0x48, e("_NDIS_MINIPORT_STATE")),
        ],
    );
}

/// NBL pools, their blocks, NET_BUFFER and NET_BUFFER_LIST.
fn add_nbl_types(t: &mut TypeTable) {
    add(
        t,
        "_NDIS_POOL_HEADER",
        0x80,
        vec![
            ("Header", 0, s("_NDIS_OBJECT_HEADER")),
            ("HeaderSignature", 0, u("unsigned long", 4)),
            ("ElementSize", 8, u("unsigned long", 4)),
            ("Tag", 0xC, u("unsigned long", 4)),
            ("ProtocolId", 0x10, u("unsigned long", 4)),
            ("Flags", 0x14, u("unsigned long", 4)),
            ("OwnerHandle", 0x18, p()),
            ("CallerAddress", 0x20, p()),
            ("BlockListHead", 0x28, s("_LIST_ENTRY")),
            ("FreeListHead", 0x38, p()),
            ("FreeCount", 0x40, u("unsigned long", 4)),
            ("AllocatedCount", 0x44, u("unsigned long", 4)),
            ("GlobalLink", 0x48, s("_LIST_ENTRY")),
        ],
    );
    add(
        t,
        "_NDIS_NBL_BLOCK",
        0x20,
        vec![
            ("Link", 0, s("_LIST_ENTRY")),
            ("Count", 0x10, u("unsigned long", 4)),
            ("ElementSize", 0x14, u("unsigned long", 4)),
            ("FirstElement", 0x18, p()),
        ],
    );
    add(
        t,
        "_NET_BUFFER",
        0x50,
        vec![
            ("Next", 0, p()),
            ("CurrentMdl", 8, p()),
            ("CurrentMdlOffset", 0x10, u("unsigned long", 4)),
            ("DataLength", 0x18, u("unsigned long", 4)),
            ("MdlChain", 0x20, p()),
            ("DataOffset", 0x28, u("unsigned long", 4)),
        ],
    );
    add(
        t,
        "_NET_BUFFER_LIST",
        0x88 + 8 * NBL_INFO_COUNT,
        vec![
            ("Next", 0, p()),
            ("FirstNetBuffer", 8, p()),
            ("Context", 0x10, p()),
            ("ParentNetBufferList", 0x18, p()),
            ("NdisPoolHandle", 0x20, p()),
            (
                "NdisReserved",
                0x28,
                Ty::Array {
                    count: 2,
                    elem: Box::new(p()),
                },
            ),
            (
                "ProtocolReserved",
                0x38,
                Ty::Array {
                    count: 4,
                    elem: Box::new(p()),
                },
            ),
            (
                "MiniportReserved",
                0x58,
                Ty::Array {
                    count: 2,
                    elem: Box::new(p()),
                },
            ),
            ("Scratch", 0x68, p()),
            ("SourceHandle", 0x70, p()),
            ("NblFlags", 0x78, u("unsigned long", 4)),
            ("ChildRefCount", 0x7C, u("unsigned long", 4)),
            ("Flags", 0x80, u("unsigned long", 4)),
            ("Status", 0x84, u("unsigned long", 4)),
            (
                "NetBufferListInfo",
                0x88,
                Ty::Array {
                    count: NBL_INFO_COUNT,
                    elem: Box::new(p()),
                },
            ),
        ],
    );
}

/// The enumerations (the NBL info slot of the owner tracker depends on the build).
fn add_enums(t: &mut TypeTable, build: u32) {
    add_enum(
        t,
        "_NDIS_NET_BUFFER_LIST_INFO",
        &[
            ("NetBufferListInfoReserved1", tracker_slot(build)),
            ("MaxNetBufferListInfo", NBL_INFO_COUNT as i64),
        ],
    );
    add_enum(
        t,
        "_NDIS_MEDIUM",
        &[
            ("NdisMedium802_3", 0),
            ("NdisMedium802_5", 1),
            ("NdisMediumWan", 3),
            ("NdisMediumNative802_11", 16),
            ("NdisMediumIP", 19),
        ],
    );
    add_enum(
        t,
        "_NDIS_PNP_DEVICE_STATE",
        &[
            ("NdisPnPDeviceAdded", 0),
            ("NdisPnPDeviceStarted", 1),
            ("NdisPnPDeviceQueryStopped", 2),
            ("NdisPnPDeviceStopped", 3),
            ("NdisPnPDeviceQueryRemoved", 4),
            ("NdisPnPDeviceRemoved", 5),
            ("NdisPnPDeviceSurpriseRemoved", 6),
        ],
    );
    add_enum(
        t,
        "_NDIS_MINIPORT_STATE",
        &[
            ("NdisMiniportUnknown", 0),
            ("NdisMiniportHalted", 1),
            ("NdisMiniportInitializing", 2),
            ("NdisMiniportRunning", 3),
            ("NdisMiniportPausing", 4),
            ("NdisMiniportPaused", 5),
            ("NdisMiniportRestarting", 6),
        ],
    );
    add_enum(
        t,
        "_NDIS_DATAPATH_STATE",
        &[
            ("NdisDatapathNormal", 0),
            ("NdisDatapathDiverted", 1),
            ("NdisDatapathPaused", 2),
        ],
    );
    add_enum(
        t,
        "_NET_IF_OPER_STATUS",
        &[
            ("NET_IF_OPER_STATUS_UP", 1),
            ("NET_IF_OPER_STATUS_DOWN", 2),
            ("NET_IF_OPER_STATUS_TESTING", 3),
            ("NET_IF_OPER_STATUS_UNKNOWN", 4),
            ("NET_IF_OPER_STATUS_DORMANT", 5),
            ("NET_IF_OPER_STATUS_NOT_PRESENT", 6),
            ("NET_IF_OPER_STATUS_LOWER_LAYER_DOWN", 7),
        ],
    );
    add_enum(
        t,
        "_NDIS_NBL_TRACKER_MODE",
        &[
            ("NdisTrackNblDisabled", 0),
            ("NdisTrackNblLogOnly", 1),
            ("NdisTrackNblFullLogNoStack", 3),
        ],
    );
}
