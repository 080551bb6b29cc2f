//! Choosing the kernel symbol table for a build.

use std::path::Path;

use kdnet_symbols::{Lookups, TypeTable, builtin, isf};

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
        9600,
        "22597D0B40394E23936F6A24C6C52D5B",
        1,
        "6.3.9600.19913",
    ),
    (
        14393,
        "517E128F7B7C4EA79491DE6B9B9CE190",
        1,
        "10.0.14393.4583",
    ),
    (
        17763,
        "A1E1C9A90091DA9805D0EBA0470BEC85",
        1,
        "10.0.17763.2114",
    ),
    (
        19041,
        "BBED7C2955FBE4522AAA23F4B8677AD9",
        1,
        "10.0.19041.329",
    ),
    (
        20348,
        "C2EADB24A615E9472CE47C8ADD31F130",
        1,
        "10.0.20348.288",
    ),
    (
        22000,
        "32C1A669D5FFEFD41091F636CFDB6E99",
        1,
        "10.0.22000.318",
    ),
];

/// The build a table belongs to, told by its PDB's GUID and age (`None` for a table the
/// project does not know: its build must then be given).
pub fn build_of(table: &TypeTable) -> Option<u32> {
    let id = table.id.as_ref()?;
    KNOWN_BUILDS
        .iter()
        .find(|b| b.1.eq_ignore_ascii_case(&id.guid) && b.2 == id.age)
        .map(|b| b.0)
}

/// The kernel's major and minor version of a build (6.1 for 7601, 6.2 for 9200, 6.3 for
/// 9600, 10.0 from 10240 on).
pub fn nt_version(build: u32) -> (u32, u32) {
    match build {
        0..9200 => (6, 1),
        9200..9600 => (6, 2),
        9600..10240 => (6, 3),
        _ => (10, 0),
    }
}

/// The file version of the kernel image of a build (major, minor, build, revision): a known
/// build's own revision, revision 0 for any other.
pub fn file_version(build: u32) -> [u16; 4] {
    let (major, minor) = nt_version(build);
    let revision = version_string(build)
        .and_then(|v| v.rsplit('.').next())
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    [major as u16, minor as u16, build as u16, revision]
}

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

/// What the commands look up in the kernel's table (`sim/command-lookups.txt`, recorded from
/// the commands by `commands/tests/table_lookups.rs`): the compact demo table carries it too.
pub const COMMAND_LOOKUPS: &str = include_str!("../command-lookups.txt");

/// [`COMMAND_LOOKUPS`] read.
pub fn command_lookups() -> Result<Lookups, SimError> {
    Lookups::parse(COMMAND_LOOKUPS)
        .map_err(|e| SimError::Config(format!("sim/command-lookups.txt: {e}")))
}

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
    let wanted = command_lookups()?;
    let mut types: Vec<&str> = usage.types.iter().map(String::as_str).collect();
    types.extend(
        wanted
            .types
            .iter()
            .map(String::as_str)
            .filter(|t| table.has_type(t)),
    );
    let mut fields: Vec<(&str, &str)> = usage
        .fields
        .iter()
        .map(|(t, p)| (t.as_str(), p.as_str()))
        .collect();
    fields.extend(
        wanted
            .fields
            .iter()
            .map(|(t, p)| (t.as_str(), p.as_str()))
            .filter(|(t, p)| table.has_field(t, p)),
    );
    let mut enums: Vec<&str> = usage.enums.iter().map(String::as_str).collect();
    enums.extend(
        wanted
            .enums
            .iter()
            .map(String::as_str)
            .filter(|e| table.enumeration(e).is_ok()),
    );
    let mut symbols: Vec<&str> = usage.symbols.iter().map(String::as_str).collect();
    symbols.extend(
        wanted
            .symbols
            .iter()
            .map(String::as_str)
            .filter(|s| table.symbol(s).is_some()),
    );
    symbols.sort();
    symbols.dedup();
    let subset = table.subset(&types, &fields, &enums, &symbols)?;
    Ok(isf::to_json(&subset))
}

/// What the built-in NDIS layout copies from the real ndis.pdb: the types (whole), the enums
/// and the globals the simulated ndis.sys and the NDIS commands use.
pub const NDIS_TYPES: &[&str] = &[
    "_LIST_ENTRY",
    "_UNICODE_STRING",
    "_SLIST_HEADER",
    "_GENERAL_LOOKASIDE_POOL",
    "_LOOKASIDE_LIST_EX",
    "_NDIS_OBJECT_HEADER",
    "_NET_BUFFER_LIST",
    "_NET_BUFFER",
    "_NDIS_POOL_HEADER",
    "_NDIS_ENTRY_HEADER",
    "_NDIS_NET_BUFFER_LIST_POOL",
    "_NDIS_NPAGED_LOOKASIDE_LIST",
    "_NDIS_GLOBAL_TRIAGE_BLOCK",
    "_NDIS_NBL_TRACKER",
    "_NDIS_NBL_TRACKER_BUCKET",
    "_NDIS_MINIPORT_BLOCK",
    "_NDIS_MINIPORT_ADAPTER_GENERAL_ATTRIBUTES",
    "_NDIS_M_DRIVER_BLOCK",
    "_NDIS_FILTER_BLOCK",
    "_NDIS_COMMON_OPEN_BLOCK",
    "_NDIS_OPEN_BLOCK",
    "_NDIS_PROTOCOL_BLOCK",
    "_ULONG_REFERENCE",
    "_REFERENCE_EX",
];
/// … the enums.
pub const NDIS_ENUMS: &[&str] = &[
    "_NDIS_NET_BUFFER_LIST_INFO",
    "_NDIS_NBL_TRACKER_SOURCE",
    "_NDIS_NBL_TRACKER_MODE",
];
/// … the globals.
pub const NDIS_SYMBOLS: &[&str] = &[
    "ndisMiniportList",
    "ndisMiniDriverList",
    "ndisGlobalFilterList",
    "ndisGlobalOpenList",
    "ndisProtocolList",
    "ndisNblTrackerMode",
    "ndisNblTrackerList",
    "ndisGlobalTriageBlock",
];

/// The built-in NDIS layout (`symbols/builtin/ndis.json`) from the real ndis.pdb it copies.
pub fn ndis_table_json(pdb: &Path) -> Result<String, SimError> {
    let real = kdnet_symbols::pdb::load_file(pdb)?;
    if real.id.as_ref().map(|i| i.guid.as_str()) != Some(builtin::NDIS_GUID) {
        return Err(SimError::Config(format!(
            "{} is not the ndis.pdb the built-in layout copies ({})",
            pdb.display(),
            builtin::NDIS_GUID
        )));
    }
    let t = real.subset(NDIS_TYPES, &[], NDIS_ENUMS, NDIS_SYMBOLS)?;
    Ok(isf::to_json(&t))
}
