//! The filter manager's (fltmgr.sys) private structures, as the project lays them out where no
//! fltMgr.pdb is on the symbol path: the x64 layout fltmgr's public symbols give on Windows 10
//! 1809 to 20H2 (the same members and offsets on those builds), written down from public facts
//! (member names, offsets and sizes), not copied from a symbol file. It carries an identity of
//! its own, which the simulated FLTMGR.SYS names; on a real target the commands read the real
//! fltMgr.pdb from the symbol server with the same type and member names.
//!
//! Its symbols are `FltGlobals` and the functions the simulated FLTMGR.SYS runs, at RVAs the
//! project chose: they name nothing in a real fltmgr.sys.

use crate::builtin::{base as b, ptr, udt};
use crate::table::{Enum, PdbId, Ty, TypeTable};

/// GUID of the project's fltmgr layout (its own identity: no real fltMgr.pdb has it).
pub const FLTMGR_GUID: &str = "4B64E0F2A7C34D1E9F0A6C5D3E2B1A78";

/// RVA of `FltGlobals` in the simulated FLTMGR.SYS.
pub const FLT_GLOBALS_RVA: u64 = 0x1c000;

/// The functions the simulated FLTMGR.SYS has, in RVA order from 0x10000, 0x400 apart.
pub const FUNCTIONS: &[&str] = &[
    "GsDriverEntry",
    "FltpDispatch",
    "FltpCreate",
    "FltpFsControl",
    "FltpPassThroughCompletion",
    "FltpLegacyProcessingAfterPreCallbacksCompleted",
    "FltpPerformPreCallbacks",
    "FltpPassThrough",
    "FltpFastIoCheckIfPossible",
    "FltpFastIoRead",
    "FltpFastIoWrite",
    "FltpFastIoQueryBasicInfo",
    "FltpWaitForPendedPreOperation",
    "FltCompletePendedPreOperation",
];

fn u8t() -> Ty {
    b("unsigned char", 1)
}
fn u16t() -> Ty {
    b("unsigned short", 2)
}
fn u32t() -> Ty {
    b("unsigned long", 4)
}
fn u64t() -> Ty {
    b("unsigned long long", 8)
}
fn s(name: &str) -> Ty {
    Ty::Udt(name.to_string())
}
fn arr(count: u64, elem: Ty) -> Ty {
    Ty::Array {
        count,
        elem: Box::new(elem),
    }
}

fn enumeration(name: &str, constants: &[(&str, i64)]) -> Enum {
    Enum {
        name: name.to_string(),
        size: 4,
        constants: constants.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
    }
}

/// The project's fltmgr table.
pub fn table() -> TypeTable {
    let mut t = TypeTable::new(Some(PdbId {
        guid: FLTMGR_GUID.into(),
        age: 1,
        name: "fltMgr.pdb".into(),
    }));
    for (n, size) in [
        ("unsigned char", 1),
        ("unsigned short", 2),
        ("unsigned long", 4),
        ("unsigned long long", 8),
    ] {
        t.insert_base(n, size, false);
    }
    t.insert_udt(udt(
        "_LIST_ENTRY",
        0x10,
        vec![("Flink", 0, ptr()), ("Blink", 8, ptr())],
    ));
    t.insert_udt(udt(
        "_UNICODE_STRING",
        0x10,
        vec![
            ("Length", 0, u16t()),
            ("MaximumLength", 2, u16t()),
            ("Buffer", 8, ptr()),
        ],
    ));
    t.insert_udt(udt(
        "_IO_STATUS_BLOCK",
        0x10,
        vec![("Status", 0, u32t()), ("Information", 8, u64t())],
    ));
    t.insert_udt(udt(
        "_FLT_TYPE",
        4,
        vec![("Signature", 0, u16t()), ("Size", 2, u16t())],
    ));
    t.insert_udt(udt(
        "_FLT_OBJECT",
        0x30,
        vec![
            ("Flags", 0, Ty::Enum("_FLT_OBJECT_FLAGS".into())),
            ("PointerCount", 4, u32t()),
            ("RundownRef", 8, u64t()),
            ("PrimaryLink", 0x10, s("_LIST_ENTRY")),
            ("UniqueIdentifier", 0x20, arr(16, u8t())),
        ],
    ));
    t.insert_udt(udt(
        "_FLT_RESOURCE_LIST_HEAD",
        0x80,
        vec![
            ("rLock", 0, arr(0x68, u8t())),
            ("rList", 0x68, s("_LIST_ENTRY")),
            ("rCount", 0x78, u32t()),
        ],
    ));
    t.insert_udt(udt(
        "_FLT_MUTEX_LIST_HEAD",
        0x50,
        vec![
            ("mLock", 0, arr(0x38, u8t())),
            ("mList", 0x38, s("_LIST_ENTRY")),
            ("mCount", 0x48, u32t()),
        ],
    ));
    t.insert_udt(udt(
        "_GLOBALS",
        0xe80,
        vec![
            ("DebugFlags", 0, u32t()),
            ("TraceFlags", 8, u64t()),
            ("GFlags", 0x10, u32t()),
            ("NumProcessors", 0x20, u32t()),
            ("ControlDeviceObject", 0x30, ptr()),
            ("DriverObject", 0x38, ptr()),
            ("FrameList", 0x58, s("_FLT_RESOURCE_LIST_HEAD")),
            ("RegistryPath", 0x110, s("_UNICODE_STRING")),
            ("MsgDeviceObject", 0x278, ptr()),
        ],
    ));
    t.insert_udt(udt(
        "_FLTP_FRAME",
        0x780,
        vec![
            ("Type", 0, s("_FLT_TYPE")),
            ("Links", 8, s("_LIST_ENTRY")),
            ("FrameID", 0x18, u32t()),
            ("AltitudeIntervalLow", 0x20, s("_UNICODE_STRING")),
            ("AltitudeIntervalHigh", 0x30, s("_UNICODE_STRING")),
            ("LargeIrpCtrlStackSize", 0x40, u8t()),
            ("SmallIrpCtrlStackSize", 0x41, u8t()),
            ("RegisteredFilters", 0x48, s("_FLT_RESOURCE_LIST_HEAD")),
            ("AttachedVolumes", 0xc8, s("_FLT_RESOURCE_LIST_HEAD")),
            ("MountingVolumes", 0x148, s("_LIST_ENTRY")),
            ("AttachedFileSystems", 0x158, s("_FLT_MUTEX_LIST_HEAD")),
            ("ZombiedFltObjectContexts", 0x1a8, s("_FLT_MUTEX_LIST_HEAD")),
        ],
    ));
    t.insert_udt(udt(
        "_FLT_FILTER",
        0x2b0,
        vec![
            ("Base", 0, s("_FLT_OBJECT")),
            ("Frame", 0x30, ptr()),
            ("Name", 0x38, s("_UNICODE_STRING")),
            ("DefaultAltitude", 0x48, s("_UNICODE_STRING")),
            ("Flags", 0x58, Ty::Enum("_FLT_FILTER_FLAGS".into())),
            ("DriverObject", 0x60, ptr()),
            ("InstanceList", 0x68, s("_FLT_RESOURCE_LIST_HEAD")),
            ("VerifierExtension", 0xe8, ptr()),
            ("VerifiedFiltersLink", 0xf0, s("_LIST_ENTRY")),
            ("FilterUnload", 0x100, ptr()),
            ("InstanceSetup", 0x108, ptr()),
            ("InstanceQueryTeardown", 0x110, ptr()),
            ("InstanceTeardownStart", 0x118, ptr()),
            ("InstanceTeardownComplete", 0x120, ptr()),
            ("PreVolumeMount", 0x168, ptr()),
            ("PostVolumeMount", 0x170, ptr()),
            ("GenerateFileName", 0x178, ptr()),
            ("Operations", 0x1a8, ptr()),
            ("OldDriverUnload", 0x1b0, ptr()),
            ("ActiveOpens", 0x1b8, s("_FLT_MUTEX_LIST_HEAD")),
            ("ConnectionList", 0x208, s("_FLT_MUTEX_LIST_HEAD")),
            ("PortList", 0x258, s("_FLT_MUTEX_LIST_HEAD")),
        ],
    ));
    t.insert_udt(udt(
        "_FLT_INSTANCE",
        0x230,
        vec![
            ("Base", 0, s("_FLT_OBJECT")),
            ("OperationRundownRef", 0x30, ptr()),
            ("Volume", 0x38, ptr()),
            ("Filter", 0x40, ptr()),
            ("Flags", 0x48, Ty::Enum("_FLT_INSTANCE_FLAGS".into())),
            ("Altitude", 0x50, s("_UNICODE_STRING")),
            ("Name", 0x60, s("_UNICODE_STRING")),
            ("FilterLink", 0x70, s("_LIST_ENTRY")),
            ("ContextLock", 0x80, u64t()),
            ("Context", 0x88, ptr()),
            ("TransactionContexts", 0x90, ptr()),
            ("TrackCompletionNodes", 0x98, ptr()),
            ("CallbackNodes", 0xa0, arr(50, ptr())),
        ],
    ));
    t.insert_udt(udt(
        "_FLT_VOLUME",
        0x758,
        vec![
            ("Base", 0, s("_FLT_OBJECT")),
            ("Flags", 0x30, Ty::Enum("_FLT_VOLUME_FLAGS".into())),
            (
                "FileSystemType",
                0x34,
                Ty::Enum("_FLT_FILESYSTEM_TYPE".into()),
            ),
            ("DeviceObject", 0x38, ptr()),
            ("DiskDeviceObject", 0x40, ptr()),
            ("FrameZeroVolume", 0x48, ptr()),
            ("VolumeInNextFrame", 0x50, ptr()),
            ("Frame", 0x58, ptr()),
            ("DeviceName", 0x60, s("_UNICODE_STRING")),
            ("GuidName", 0x70, s("_UNICODE_STRING")),
            ("CDODeviceName", 0x80, s("_UNICODE_STRING")),
            ("CDODriverName", 0x90, s("_UNICODE_STRING")),
            ("InstanceList", 0xa0, s("_FLT_RESOURCE_LIST_HEAD")),
            ("Callbacks", 0x120, s("_CALLBACK_CTRL")),
            ("SupportedFeatures", 0x750, u32t()),
        ],
    ));
    t.insert_udt(udt(
        "_CALLBACK_CTRL",
        0x3e8,
        vec![
            ("OperationLists", 0, arr(50, s("_LIST_ENTRY"))),
            ("OperationFlags", 0x320, arr(50, u32t())),
        ],
    ));
    t.insert_udt(udt(
        "_CALLBACK_NODE",
        0x30,
        vec![
            ("CallbackLinks", 0, s("_LIST_ENTRY")),
            ("Instance", 0x10, ptr()),
            ("PreOperation", 0x18, ptr()),
            ("PostOperation", 0x20, ptr()),
            ("Flags", 0x28, u32t()),
        ],
    ));
    t.insert_udt(udt(
        "_FLT_IO_PARAMETER_BLOCK",
        0x48,
        vec![
            ("IrpFlags", 0, u32t()),
            ("MajorFunction", 4, u8t()),
            ("MinorFunction", 5, u8t()),
            ("OperationFlags", 6, u8t()),
            ("Reserved", 7, u8t()),
            ("TargetFileObject", 8, ptr()),
            ("TargetInstance", 0x10, ptr()),
            ("Parameters", 0x18, arr(6, u64t())),
        ],
    ));
    t.insert_udt(udt(
        "_FLT_CALLBACK_DATA",
        0x58,
        vec![
            ("Flags", 0, u32t()),
            ("Thread", 8, ptr()),
            ("Iopb", 0x10, ptr()),
            ("IoStatus", 0x18, s("_IO_STATUS_BLOCK")),
            ("TagData", 0x28, ptr()),
            ("QueueLinks", 0x30, s("_LIST_ENTRY")),
            ("QueueContext", 0x40, arr(2, ptr())),
            ("FilterContext", 0x30, arr(4, ptr())),
            ("RequestorMode", 0x50, u8t()),
        ],
    ));
    t.insert_udt(udt(
        "_COMPLETION_NODE",
        0x80,
        vec![
            ("IrpCtrl", 0, ptr()),
            ("CallbackNode", 8, ptr()),
            ("InstanceLink", 0x10, s("_LIST_ENTRY")),
            ("InstanceTrackingList", 0x20, ptr()),
            ("Context", 0x28, ptr()),
            ("DataSnapshot", 0x30, s("_FLT_IO_PARAMETER_BLOCK")),
            ("Flags", 0x78, u16t()),
        ],
    ));
    t.insert_udt(udt(
        "_IRP_CTRL",
        0x188,
        vec![
            ("Type", 0, s("_FLT_TYPE")),
            ("Flags", 4, u32t()),
            ("LookAsideProcessorIndex", 8, u32t()),
            ("MajorFunction", 0xc, u8t()),
            ("DataScanConflictRetryCount", 0xd, u8t()),
            ("CompletionStackLength", 0xe, u8t()),
            ("NextCompletion", 0xf, u8t()),
            ("CompletionStack", 0x10, ptr()),
            ("SyncEvent", 0x18, arr(0x18, u8t())),
            ("Irp", 0x30, ptr()),
            ("AsyncCompletionRoutine", 0x38, ptr()),
            ("AsyncCompletionContext", 0x40, ptr()),
            ("InitiatingInstance", 0x48, ptr()),
            ("PendingCallbackNode", 0x50, ptr()),
            ("PostCompletionRoutine", 0x60, ptr()),
            ("DeviceObject", 0x68, ptr()),
            ("FileObject", 0x70, ptr()),
            ("PendingCallbackContext", 0x78, ptr()),
            ("PendingStatus", 0x88, u32t()),
            ("TraceStatus", 0xe0, u32t()),
            ("Data", 0xe8, s("_FLT_CALLBACK_DATA")),
            ("WorkingParameters", 0x140, s("_FLT_IO_PARAMETER_BLOCK")),
        ],
    ));
    t.insert_enum(enumeration(
        "_FLT_OBJECT_FLAGS",
        &[
            ("FLT_OBFL_DRAINING", 0x1),
            ("FLT_OBFL_ZOMBIED", 0x2),
            ("FLT_OBFL_TYPE_INSTANCE", 0x0100_0000),
            ("FLT_OBFL_TYPE_FILTER", 0x0200_0000),
            ("FLT_OBFL_TYPE_VOLUME", 0x0400_0000),
        ],
    ));
    t.insert_enum(enumeration(
        "_FLT_FILTER_FLAGS",
        &[
            ("FLTFL_MANDATORY_UNLOAD_IN_PROGRESS", 0x1),
            ("FLTFL_FILTERING_INITIATED", 0x2),
            ("FLTFL_NAME_PROVIDER", 0x4),
            ("FLTFL_SUPPORTS_PIPES_MAILSLOTS", 0x8),
            ("FLTFL_BACKED_BY_PAGEFILE", 0x10),
            ("FLTFL_SUPPORTS_DAX_VOLUME", 0x20),
        ],
    ));
    t.insert_enum(enumeration(
        "_FLT_INSTANCE_FLAGS",
        &[
            ("INSFL_CAN_BE_DETACHED", 0x1),
            ("INSFL_DELETING", 0x2),
            ("INSFL_INITING", 0x4),
            ("INSFL_VOLUME_ATTRIBUTES_QUERIED", 0x8),
            ("INSFL_SUPPORTS_NAMED_STREAMS", 0x10),
            ("INSFL_IN_STREAM_LIST_CTRL", 0x20),
            ("INSFL_IN_FILE_LIST_CTRL", 0x40),
        ],
    ));
    t.insert_enum(enumeration(
        "_FLT_VOLUME_FLAGS",
        &[
            ("VOLFL_NETWORK_FILESYSTEM", 0x1),
            ("VOLFL_PENDING_MOUNT_SETUP_NOTIFIES", 0x2),
            ("VOLFL_MOUNT_SETUP_NOTIFIES_CALLED", 0x4),
            ("VOLFL_MOUNTING", 0x8),
            ("VOLFL_SENT_SHUTDOWN_IRP", 0x10),
            ("VOLFL_ENABLE_NAME_CACHING", 0x20),
            ("VOLFL_FILTER_EVER_ATTACHED", 0x40),
            ("VOLFL_STANDARD_LINK_NOT_SUPPORTED", 0x80),
            ("VOLFL_ENABLE_DATASCAN", 0x100),
            ("VOLFL_READ_ONLY_DATASCAN", 0x200),
            ("VOLFL_SUPPORTED_FEATURES_KNOWN", 0x400),
            ("VOLFL_DAX_VOLUME", 0x800),
        ],
    ));
    t.insert_enum(enumeration(
        "_FLT_FILESYSTEM_TYPE",
        &[
            ("FLT_FSTYPE_UNKNOWN", 0),
            ("FLT_FSTYPE_RAW", 1),
            ("FLT_FSTYPE_NTFS", 2),
            ("FLT_FSTYPE_FAT", 3),
            ("FLT_FSTYPE_CDFS", 4),
            ("FLT_FSTYPE_UDFS", 5),
            ("FLT_FSTYPE_LANMAN", 6),
            ("FLT_FSTYPE_WEBDAV", 7),
            ("FLT_FSTYPE_RDPDR", 8),
            ("FLT_FSTYPE_NFS", 9),
            ("FLT_FSTYPE_MUP", 13),
            ("FLT_FSTYPE_EXFAT", 22),
            ("FLT_FSTYPE_NPFS", 25),
            ("FLT_FSTYPE_MSFS", 26),
            ("FLT_FSTYPE_CSVFS", 27),
            ("FLT_FSTYPE_REFS", 28),
        ],
    ));
    t.insert_symbol("FltGlobals", FLT_GLOBALS_RVA);
    for (i, f) in FUNCTIONS.iter().enumerate() {
        t.insert_symbol(f, 0x10000 + 0x400 * i as u64);
    }
    t.finish();
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The offsets real `!fltkd` output and public walks of real targets show (list heads as
    /// address differences between a structure and the list it prints).
    #[test]
    fn the_walks_land_where_real_fltmgr_output_shows_them() {
        let t = table();
        let o = |ty: &str, p: &str| t.offset(ty, p).unwrap();
        assert_eq!(o("_GLOBALS", "FrameList.rList"), 0xc0);
        assert_eq!(o("_FLTP_FRAME", "Links"), 0x8);
        assert_eq!(o("_FLTP_FRAME", "RegisteredFilters.rList"), 0xb0);
        assert_eq!(o("_FLTP_FRAME", "AttachedVolumes.rList"), 0x130);
        assert_eq!(o("_FLT_FILTER", "Base.PrimaryLink"), 0x10);
        assert_eq!(o("_FLT_FILTER", "InstanceList.rList"), 0xd0);
        assert_eq!(o("_FLT_INSTANCE", "FilterLink"), 0x70);
        assert_eq!(o("_FLT_INSTANCE", "CallbackNodes"), 0xa0);
        assert_eq!(o("_FLT_VOLUME", "InstanceList.rList"), 0x108);
        assert_eq!(o("_CALLBACK_NODE", "PreOperation"), 0x18);
        assert_eq!(o("_CALLBACK_NODE", "PostOperation"), 0x20);
        assert_eq!(o("_IRP_CTRL", "Data"), 0xe8);
        assert_eq!(o("_IRP_CTRL", "Data.Iopb"), 0xf8);
        assert_eq!(t.size_of("_FLT_CALLBACK_DATA").unwrap(), 0x58);
        assert_eq!(t.symbol("FltGlobals"), Some(FLT_GLOBALS_RVA));
        // Every member lies inside its structure.
        for ty in [
            "_FLTP_FRAME",
            "_FLT_FILTER",
            "_FLT_INSTANCE",
            "_FLT_VOLUME",
            "_IRP_CTRL",
        ] {
            let size = t.size_of(ty).unwrap();
            for f in &t.udt(ty).unwrap().fields {
                assert!(
                    f.offset + t.ty_size(&f.ty).unwrap() <= size,
                    "{ty}.{}",
                    f.name
                );
            }
        }
    }
}
