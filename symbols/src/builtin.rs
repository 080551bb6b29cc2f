//! Layouts the project carries itself.
//!
//! - [`extra`]: structures that no kernel symbol table describes, with the layout of their
//!   public definition: `KDDEBUGGER_DATA64` and `DBGKD_DEBUG_DATA_HEADER64` from the debugger
//!   SDK header `wdbgexts.h` (offsets as tabulated in extensions.md §1.2), `KSWITCH_FRAME` (the
//!   x64 context-switch frame, from the public `ksamd64` definitions) and the unloaded-driver
//!   record `MM_UNLOADED_DRIVER` (`{UNICODE_STRING Name; PVOID StartAddress; PVOID EndAddress;
//!   LARGE_INTEGER CurrentTime}`).
//! - [`nt_demo`]: the compact kernel table of the built-in demo (build 20348), generated from the
//!   real Volatility table by `scripts/gen-builtin-tables.sh` and regenerated, never edited.
//! - [`ndis`]: the NDIS types, enums and globals the NDIS commands and the simulated ndis.sys
//!   use, copied from a real ndis.pdb (its identity, its offsets) by the same script: what a
//!   debugger reads when that ndis.pdb is not on the symbol path.
//! - [`fltmgr`]: the filter manager's structures as the project lays them out from public
//!   facts, for the simulated FLTMGR.SYS (no fltMgr.pdb is at hand to copy).

use crate::table::{Field, PdbId, Ty, TypeTable, Udt, UdtKind};

/// The compact nt table (build 20348) the demo needs, as generated.
pub const NT_DEMO_JSON: &str = include_str!("../builtin/ntkrnlmp-20348-demo.json");

/// GUID and age of the 20348 kernel the demo table comes from.
pub const NT_DEMO_GUID: &str = "C2EADB24A615E9472CE47C8ADD31F130";

/// The NDIS types, enums and globals of the real ndis.pdb [`NDIS_GUID`], as generated.
pub const NDIS_JSON: &str = include_str!("../builtin/ndis.json");

/// GUID of the ndis.pdb the built-in NDIS layout is copied from.
pub const NDIS_GUID: &str = "6ABBF3711A187DC5033358115921C89D";

/// A pointer to void.
pub(crate) fn ptr() -> Ty {
    Ty::Pointer(Box::new(Ty::Void))
}

/// An unsigned base type.
pub(crate) fn base(name: &str, size: u64) -> Ty {
    Ty::Base {
        name: name.to_string(),
        size,
        signed: false,
    }
}

/// A structure from (member, offset, type) triples.
pub(crate) fn udt(name: &str, size: u64, fields: Vec<(&str, u64, Ty)>) -> Udt {
    Udt {
        name: name.to_string(),
        kind: UdtKind::Struct,
        size,
        fields: fields
            .into_iter()
            .map(|(n, o, t)| Field {
                name: n.to_string(),
                offset: o,
                ty: t,
            })
            .collect(),
    }
}

/// `KDDEBUGGER_DATA64` fields: (name, offset, size). Pointer-sized entries hold *addresses* of
/// kernel variables (KernBase holds the base itself); 2-byte entries are immediate offsets and
/// sizes.
pub const KDDEBUGGER_DATA64_FIELDS: &[(&str, u64, u64)] = &[
    ("KernBase", 0x18, 8),
    ("BreakpointWithStatus", 0x20, 8),
    ("SavedContext", 0x28, 8),
    ("ThCallbackStack", 0x30, 2),
    ("NextCallback", 0x32, 2),
    ("FramePointer", 0x34, 2),
    ("PaeEnabled", 0x36, 2),
    ("KiCallUserMode", 0x38, 8),
    ("KeUserCallbackDispatcher", 0x40, 8),
    ("PsLoadedModuleList", 0x48, 8),
    ("PsActiveProcessHead", 0x50, 8),
    ("PspCidTable", 0x58, 8),
    ("ExpSystemResourcesList", 0x60, 8),
    ("ExpPagedPoolDescriptor", 0x68, 8),
    ("ExpNumberOfPagedPools", 0x70, 8),
    ("KeTimeIncrement", 0x78, 8),
    ("KeBugCheckCallbackListHead", 0x80, 8),
    ("KiBugcheckData", 0x88, 8),
    ("IopErrorLogListHead", 0x90, 8),
    ("ObpRootDirectoryObject", 0x98, 8),
    ("ObpTypeObjectType", 0xA0, 8),
    ("MmSystemCacheStart", 0xA8, 8),
    ("MmSystemCacheEnd", 0xB0, 8),
    ("MmSystemCacheWs", 0xB8, 8),
    ("MmPfnDatabase", 0xC0, 8),
    ("MmSystemPtesStart", 0xC8, 8),
    ("MmSystemPtesEnd", 0xD0, 8),
    ("MmSubsectionBase", 0xD8, 8),
    ("MmNumberOfPagingFiles", 0xE0, 8),
    ("MmLowestPhysicalPage", 0xE8, 8),
    ("MmHighestPhysicalPage", 0xF0, 8),
    ("MmNumberOfPhysicalPages", 0xF8, 8),
    ("MmMaximumNonPagedPoolInBytes", 0x100, 8),
    ("MmNonPagedSystemStart", 0x108, 8),
    ("MmNonPagedPoolStart", 0x110, 8),
    ("MmNonPagedPoolEnd", 0x118, 8),
    ("MmPagedPoolStart", 0x120, 8),
    ("MmPagedPoolEnd", 0x128, 8),
    ("MmPagedPoolInformation", 0x130, 8),
    ("MmPageSize", 0x138, 8),
    ("MmSizeOfPagedPoolInBytes", 0x140, 8),
    ("MmTotalCommitLimit", 0x148, 8),
    ("MmTotalCommittedPages", 0x150, 8),
    ("MmSharedCommit", 0x158, 8),
    ("MmDriverCommit", 0x160, 8),
    ("MmProcessCommit", 0x168, 8),
    ("MmPagedPoolCommit", 0x170, 8),
    ("MmExtendedCommit", 0x178, 8),
    ("MmZeroedPageListHead", 0x180, 8),
    ("MmFreePageListHead", 0x188, 8),
    ("MmStandbyPageListHead", 0x190, 8),
    ("MmModifiedPageListHead", 0x198, 8),
    ("MmModifiedNoWritePageListHead", 0x1A0, 8),
    ("MmAvailablePages", 0x1A8, 8),
    ("MmResidentAvailablePages", 0x1B0, 8),
    ("PoolTrackTable", 0x1B8, 8),
    ("NonPagedPoolDescriptor", 0x1C0, 8),
    ("MmHighestUserAddress", 0x1C8, 8),
    ("MmSystemRangeStart", 0x1D0, 8),
    ("MmUserProbeAddress", 0x1D8, 8),
    ("KdPrintCircularBuffer", 0x1E0, 8),
    ("KdPrintCircularBufferEnd", 0x1E8, 8),
    ("KdPrintWritePointer", 0x1F0, 8),
    ("KdPrintRolloverCount", 0x1F8, 8),
    ("MmLoadedUserImageList", 0x200, 8),
    ("NtBuildLab", 0x208, 8),
    ("KiNormalSystemCall", 0x210, 8),
    ("KiProcessorBlock", 0x218, 8),
    ("MmUnloadedDrivers", 0x220, 8),
    ("MmLastUnloadedDriver", 0x228, 8),
    ("MmTriageActionTaken", 0x230, 8),
    ("MmSpecialPoolTag", 0x238, 8),
    ("KernelVerifier", 0x240, 8),
    ("MmVerifierData", 0x248, 8),
    ("MmAllocatedNonPagedPool", 0x250, 8),
    ("MmPeakCommitment", 0x258, 8),
    ("MmTotalCommitLimitMaximum", 0x260, 8),
    ("CmNtCSDVersion", 0x268, 8),
    ("MmPhysicalMemoryBlock", 0x270, 8),
    ("MmSessionBase", 0x278, 8),
    ("MmSessionSize", 0x280, 8),
    ("MmSystemParentTablePage", 0x288, 8),
    ("MmVirtualTranslationBase", 0x290, 8),
    ("OffsetKThreadNextProcessor", 0x298, 2),
    ("OffsetKThreadTeb", 0x29A, 2),
    ("OffsetKThreadKernelStack", 0x29C, 2),
    ("OffsetKThreadInitialStack", 0x29E, 2),
    ("OffsetKThreadApcProcess", 0x2A0, 2),
    ("OffsetKThreadState", 0x2A2, 2),
    ("OffsetKThreadBStore", 0x2A4, 2),
    ("OffsetKThreadBStoreLimit", 0x2A6, 2),
    ("SizeEProcess", 0x2A8, 2),
    ("OffsetEprocessPeb", 0x2AA, 2),
    ("OffsetEprocessParentCID", 0x2AC, 2),
    ("OffsetEprocessDirectoryTableBase", 0x2AE, 2),
    ("SizePrcb", 0x2B0, 2),
    ("OffsetPrcbDpcRoutine", 0x2B2, 2),
    ("OffsetPrcbCurrentThread", 0x2B4, 2),
    ("OffsetPrcbMhz", 0x2B6, 2),
    ("OffsetPrcbCpuType", 0x2B8, 2),
    ("OffsetPrcbVendorString", 0x2BA, 2),
    ("OffsetPrcbProcStateContext", 0x2BC, 2),
    ("OffsetPrcbNumber", 0x2BE, 2),
    ("SizeEThread", 0x2C0, 2),
    ("KdPrintCircularBufferPtr", 0x2C8, 8),
    ("KdPrintBufferSize", 0x2D0, 8),
    ("KeLoaderBlock", 0x2D8, 8),
    ("SizePcr", 0x2E0, 2),
    ("OffsetPcrSelfPcr", 0x2E2, 2),
    ("OffsetPcrCurrentPrcb", 0x2E4, 2),
    ("OffsetPcrContainedPrcb", 0x2E6, 2),
    ("OffsetPcrInitialBStore", 0x2E8, 2),
    ("OffsetPcrBStoreLimit", 0x2EA, 2),
    ("OffsetPcrInitialStack", 0x2EC, 2),
    ("OffsetPcrStackLimit", 0x2EE, 2),
    ("OffsetPrcbPcrPage", 0x2F0, 2),
    ("OffsetPrcbProcStateSpecialReg", 0x2F2, 2),
    ("GdtR0Code", 0x2F4, 2),
    ("GdtR0Data", 0x2F6, 2),
    ("GdtR0Pcr", 0x2F8, 2),
    ("GdtR3Code", 0x2FA, 2),
    ("GdtR3Data", 0x2FC, 2),
    ("GdtR3Teb", 0x2FE, 2),
    ("GdtLdt", 0x300, 2),
    ("GdtTss", 0x302, 2),
    ("Gdt64R3CmCode", 0x304, 2),
    ("Gdt64R3CmTeb", 0x306, 2),
    ("IopNumTriageDumpDataBlocks", 0x308, 8),
    ("IopTriageDumpDataBlocks", 0x310, 8),
    ("VfCrashDataBlock", 0x318, 8),
    ("MmBadPagesDetected", 0x320, 8),
    ("MmZeroedPageSingleBitErrorsDetected", 0x328, 8),
    ("EtwpDebuggerData", 0x330, 8),
    ("OffsetPrcbContext", 0x338, 2),
    ("OffsetPrcbMaxBreakpoints", 0x33A, 2),
    ("OffsetPrcbMaxWatchpoints", 0x33C, 2),
    ("OffsetKThreadStackLimit", 0x340, 4),
    ("OffsetKThreadStackBase", 0x344, 4),
    ("OffsetKThreadQueueListEntry", 0x348, 4),
    ("OffsetEThreadIrpList", 0x34C, 4),
    ("OffsetPrcbIdleThread", 0x350, 2),
    ("OffsetPrcbNormalDpcState", 0x352, 2),
    ("OffsetPrcbDpcStack", 0x354, 2),
    ("OffsetPrcbIsrStack", 0x356, 2),
    ("SizeKDPC_STACK_FRAME", 0x358, 2),
    ("OffsetKPriQueueThreadListHead", 0x35A, 2),
    ("OffsetKThreadWaitReason", 0x35C, 2),
    ("Padding", 0x35E, 2),
    ("PteBase", 0x360, 8),
    ("RetpolineStubFunctionTable", 0x368, 8),
    ("RetpolineStubFunctionTableSize", 0x370, 4),
    ("RetpolineStubOffset", 0x374, 4),
    ("RetpolineStubSize", 0x378, 4),
    ("OffsetEProcessMmHotPatchContext", 0x37C, 2),
];

/// `'KDBG'` as the little-endian OwnerTag.
pub const KDBG_TAG: u32 = 0x4742_444B;

/// The project's own table of structures no kernel table has.
pub fn extra() -> TypeTable {
    let mut t = TypeTable::new(None);
    t.insert_base("unsigned short", 2, false);
    t.insert_base("unsigned long", 4, false);
    t.insert_base("unsigned long long", 8, false);
    let list = udt(
        "_LIST_ENTRY64",
        0x10,
        vec![
            ("Flink", 0, base("unsigned long long", 8)),
            ("Blink", 8, base("unsigned long long", 8)),
        ],
    );
    t.insert_udt(list);
    t.insert_udt(udt(
        "_DBGKD_DEBUG_DATA_HEADER64",
        0x18,
        vec![
            ("List", 0, Ty::Udt("_LIST_ENTRY64".into())),
            ("OwnerTag", 0x10, base("unsigned long", 4)),
            ("Size", 0x14, base("unsigned long", 4)),
        ],
    ));
    let mut fields = vec![("Header", 0, Ty::Udt("_DBGKD_DEBUG_DATA_HEADER64".into()))];
    for (name, off, size) in KDDEBUGGER_DATA64_FIELDS {
        let ty = match size {
            2 => base("unsigned short", 2),
            4 => base("unsigned long", 4),
            _ => base("unsigned long long", 8),
        };
        fields.push((name, *off, ty));
    }
    t.insert_udt(udt("_KDDEBUGGER_DATA64", 0x380, fields));
    t.insert_udt(udt(
        "_KSWITCH_FRAME",
        0x40,
        vec![
            ("P1Home", 0, base("unsigned long long", 8)),
            ("P2Home", 8, base("unsigned long long", 8)),
            ("P3Home", 0x10, base("unsigned long long", 8)),
            ("P4Home", 0x18, base("unsigned long long", 8)),
            ("P5Home", 0x20, base("unsigned long long", 8)),
            ("ApcBypass", 0x28, base("unsigned char", 1)),
            ("Rbp", 0x30, base("unsigned long long", 8)),
            ("Return", 0x38, ptr()),
        ],
    ));
    t.insert_udt(udt(
        "_MM_UNLOADED_DRIVER",
        0x28,
        vec![
            ("Name", 0, Ty::Udt("_UNICODE_STRING".into())),
            ("StartAddress", 0x10, ptr()),
            ("EndAddress", 0x18, ptr()),
            ("CurrentTime", 0x20, base("unsigned long long", 8)),
        ],
    ));
    t.finish();
    t
}

/// The compact nt table of the demo (build 20348).
pub fn nt_demo() -> TypeTable {
    crate::isf::parse(NT_DEMO_JSON.as_bytes()).unwrap_or_else(|_| {
        // The table is generated and checked by a test; an empty table makes every lookup fail
        // with a clear "not in the symbols" error rather than a panic.
        TypeTable::new(Some(PdbId {
            guid: NT_DEMO_GUID.into(),
            age: 1,
            name: "ntkrnlmp.pdb".into(),
        }))
    })
}

/// The built-in copy of the real ndis.pdb's NDIS layout (empty if it could not be read: every
/// lookup then fails with a clear error).
pub fn ndis() -> TypeTable {
    crate::isf::parse(NDIS_JSON.as_bytes()).unwrap_or_else(|_| TypeTable::new(None))
}

/// The project's layout of the filter manager's structures (see [`crate::fltmgr`]), answering
/// for the identity the simulated FLTMGR.SYS names.
pub fn fltmgr() -> TypeTable {
    crate::fltmgr::table()
}

/// The built-in table for a PDB identity: the demo kernel's, or the ndis.pdb the NDIS layout
/// is copied from.
pub fn by_id(id: &PdbId) -> Option<TypeTable> {
    if id.guid == NDIS_GUID && id.name.eq_ignore_ascii_case("ndis.pdb") {
        let t = ndis();
        return (t.id.as_ref() == Some(id) && t.counts().0 > 0).then_some(t);
    }
    if id.guid == crate::fltmgr::FLTMGR_GUID && id.name.eq_ignore_ascii_case("fltMgr.pdb") {
        return Some(fltmgr());
    }
    if id.guid == NT_DEMO_GUID && id.age == 1 && id.name.eq_ignore_ascii_case("ntkrnlmp.pdb") {
        let t = nt_demo();
        return (t.counts().0 > 0).then_some(t);
    }
    None
}
