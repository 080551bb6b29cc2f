//! Choosing the kernel symbol table for a build.

use std::path::Path;

use kdnet_symbols::{TypeTable, builtin, isf};

use crate::{SimError, TableSource};

/// Builds whose real tables the project knows by GUID (the tables themselves are not carried,
/// except the compact demo table of 20348).
pub const KNOWN_BUILDS: &[(u32, &str, u32, &str)] = &[
    (
        7601,
        "339E74133576439CBCDF7E0229DA3773",
        1,
        "6.1.7601.24540",
    ),
    (
        17763,
        "A1E1C9A90091DA9805D0EBA0470BEC85",
        1,
        "10.0.17763.2114",
    ),
    (
        20348,
        "C2EADB24A615E9472CE47C8ADD31F130",
        1,
        "10.0.20348.288",
    ),
];

/// The full version string of a known build.
pub fn version_string(build: u32) -> Option<&'static str> {
    KNOWN_BUILDS.iter().find(|b| b.0 == build).map(|b| b.3)
}

/// Loads the nt table for `build` from `source`.
pub fn load(build: u32, source: &TableSource) -> Result<TypeTable, SimError> {
    match source {
        TableSource::Builtin => {
            if build != 20348 {
                return Err(SimError::Config(format!(
                    "the built-in table covers build 20348 only; for build {build} give its symbol table (--isf FILE or --symbols DIR)"
                )));
            }
            let t = builtin::nt_demo();
            if t.counts().0 == 0 {
                return Err(SimError::Config("the built-in table is empty".into()));
            }
            Ok(t)
        }
        TableSource::File(p) => Ok(isf::load_file(p)?),
        TableSource::Dir(d) => {
            let (_, guid, age, _) = KNOWN_BUILDS.iter().find(|b| b.0 == build).ok_or_else(|| {
                SimError::Config(format!(
                    "build {build} is not one the simulator knows by GUID; give its table with --isf FILE"
                ))
            })?;
            for name in [
                format!("{guid}-{age}.json.xz"),
                format!("{guid}-{age}.json"),
            ] {
                for sub in ["ntkrnlmp.pdb", "windows/ntkrnlmp.pdb", ""] {
                    let p = Path::new(d).join(sub).join(&name);
                    if p.is_file() {
                        return Ok(isf::load_file(&p)?);
                    }
                }
            }
            Err(SimError::Config(format!(
                "no table for build {build} ({guid}-{age}.json.xz) under {}",
                d.display()
            )))
        }
    }
}

/// Extra nt layout the analysis commands read beyond what the simulator writes: the whole of
/// these types, these enums and these symbols go into the compact demo table too.
pub const COMMAND_TYPES: &[&str] = &[
    "_LIST_ENTRY",
    "_UNICODE_STRING",
    "_DISPATCHER_HEADER",
    "_KEVENT",
    "_KSEMAPHORE",
    "_KMUTANT",
    "_KQUEUE",
    "_KWAIT_BLOCK",
    "_KWAIT_CHAIN",
    "_KWAIT_CHAIN_ENTRY",
    "_ERESOURCE",
    "_OWNER_ENTRY",
    "_KTHREAD",
    "_ETHREAD",
    "_KPROCESS",
    "_EPROCESS",
    "_KPCR",
    "_KPRCB",
    "_KPROCESSOR_STATE",
    "_KSPECIAL_REGISTERS",
    "_CONTEXT",
    "_KTRAP_FRAME",
    "_KAPC_STATE",
    "_CLIENT_ID",
    "_KLDR_DATA_TABLE_ENTRY",
    "_POOL_HEADER",
    "_POOL_TRACKER_TABLE",
    "_POOL_TRACKER_BIG_PAGES",
    "_KUSER_SHARED_DATA",
    "_KSYSTEM_TIME",
    "_IRP",
    "_OBJECT_HEADER",
    "_MMPAGING_FILE",
    "_MMPFNLIST",
    "_MI_PARTITION",
    "_MI_VISIBLE_PARTITION",
    "_MI_PARTITION_COMMIT",
    "_MI_SYSTEM_INFORMATION",
    "_MI_VISIBLE_STATE",
    "_MI_POOL_STATE",
    "_MI_SYSTEM_PTE_TYPE",
    "_MM_PAGED_POOL_INFO",
    "_EX_POOL_HEAP_MANAGER_STATE",
    "_EX_HEAP_POOL_NODE",
    "_RTLP_HP_HEAP_MANAGER",
    "_RTLP_HP_HEAP_GLOBALS",
    "_SEGMENT_HEAP",
    "_HEAP_SEG_CONTEXT",
    "_HEAP_PAGE_SEGMENT",
    "_HEAP_PAGE_RANGE_DESCRIPTOR",
    "_HEAP_VS_SUBSEGMENT",
    "_HEAP_VS_CHUNK_HEADER",
    "_HEAP_VS_CHUNK_HEADER_SIZE",
    "_HEAP_LFH_SUBSEGMENT",
    "_MMPTE_HARDWARE",
];

/// Enums the commands name.
pub const COMMAND_ENUMS: &[&str] = &[
    "_KWAIT_REASON",
    "_KTHREAD_STATE",
    "_KOBJECTS",
    "_POOL_TYPE",
    "_KWAIT_BLOCK_STATE",
    "_WAIT_TYPE",
    "_MODE",
];

/// Symbols the commands read.
pub const COMMAND_SYMBOLS: &[&str] = &[
    "KdDebuggerDataBlock",
    "KdpDataBlockEncoded",
    "KiWaitNever",
    "KiWaitAlways",
    "KdpDebuggerDataListHead",
    "PsLoadedModuleList",
    "PsActiveProcessHead",
    "ExpSystemResourcesList",
    "KiBugCheckData",
    "KiProcessorBlock",
    "KeNumberProcessors",
    "KeMaximumIncrement",
    "PoolBigPageTable",
    "PoolBigPageTableSize",
    "PoolTrackTable",
    "PoolTrackTableSize",
    "ExPoolTagTables",
    "ExPoolState",
    "RtlpHpHeapGlobals",
    "MiSystemPartition",
    "MiState",
    "MiVisibleState",
    "MmPteBase",
    "PsIdleProcess",
    "MmUnloadedDrivers",
    "MmLastUnloadedDriver",
    "KiBugCheckDriver",
    "ExPoolFailures",
];

/// Builds the compact demo table from the real 20348 table at `full`: what every scenario
/// uses, plus what the commands read.
pub fn demo_table_json(full: &Path) -> Result<String, SimError> {
    let table = isf::load_file(full)?;
    if table.id.as_ref().map(|i| i.guid.as_str()) != Some(builtin::NT_DEMO_GUID) {
        return Err(SimError::Config(format!(
            "{} is not the 20348 kernel table",
            full.display()
        )));
    }
    let mut usage = crate::kernel::Usage::default();
    for scenario in crate::Scenario::ALL {
        let mut config = crate::SimConfig::demo();
        config.scenario = scenario;
        config.table = TableSource::File(full.to_path_buf());
        config.resources = 200;
        let (sys, _, _) = crate::scenario::build_with_table(&config, table.clone())?;
        usage.merge(&sys.k.usage());
    }
    let mut types: Vec<&str> = usage.types.iter().map(String::as_str).collect();
    types.extend(COMMAND_TYPES.iter().copied().filter(|t| table.has_type(t)));
    let fields: Vec<(&str, &str)> = usage
        .fields
        .iter()
        .map(|(t, p)| (t.as_str(), p.as_str()))
        .collect();
    let mut enums: Vec<&str> = usage.enums.iter().map(String::as_str).collect();
    enums.extend(
        COMMAND_ENUMS
            .iter()
            .copied()
            .filter(|e| table.enumeration(e).is_ok()),
    );
    let mut symbols: Vec<&str> = usage.symbols.iter().map(String::as_str).collect();
    symbols.extend(
        COMMAND_SYMBOLS
            .iter()
            .copied()
            .filter(|s| table.symbol(s).is_some()),
    );
    symbols.sort();
    symbols.dedup();
    let subset = table.subset(&types, &fields, &enums, &symbols)?;
    Ok(isf::to_json(&subset))
}
