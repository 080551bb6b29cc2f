//! The simulated ndis.sys is laid out with a real ndis.pdb's types and names that file: a
//! debugger finds the real file on its symbol path when it is there, the project's built-in
//! copy of its layout when it is not, and never a layout of the simulator's own.

use kdnet_sim::{Machine, SimConfig};
use kdnet_symbols::path::SymbolPath;
use kdnet_symbols::{PdbId, builtin, pdb};

#[test]
fn the_simulated_ndis_names_the_real_ndis_pdb() {
    let machine = Machine::build(SimConfig::demo()).unwrap();
    let ndis = machine
        .system()
        .modules
        .iter()
        .find(|m| m.short == "ndis")
        .unwrap();
    let id = ndis.image.pdb.clone();
    assert_eq!(id.guid, builtin::NDIS_GUID);
    assert_eq!(id.name, "ndis.pdb");
    // Its globals lie inside the image.
    let t = builtin::ndis();
    for name in kdnet_sim::layout::NDIS_SYMBOLS {
        assert!(
            t.symbol(name).unwrap() < u64::from(ndis.image.size),
            "{name}"
        );
    }
    // Without the file on the path, the built-in copy answers for it.
    let found = SymbolPath::parse("").find(&id).unwrap().unwrap();
    assert_eq!(found.source, "built-in");
    assert!(found.table.has_type("_NDIS_MINIPORT_BLOCK"));
}

#[test]
fn a_real_ndis_pdb_still_comes_from_the_real_file() {
    let Some(dir) = kdnet_testkit::shared("pdbs/ndis.pdb") else {
        return;
    };
    let dir = dir.join("pdbs");
    let file = dir.join("ndis.pdb");
    let id = pdb::identity(std::fs::read(&file).unwrap(), "ndis.pdb").unwrap();
    assert_eq!(
        id,
        PdbId {
            guid: "6ABBF3711A187DC5033358115921C89D".into(),
            age: id.age,
            name: "ndis.pdb".into(),
        }
    );
    let found = SymbolPath::parse(&dir.display().to_string())
        .find(&id)
        .unwrap()
        .unwrap();
    assert!(found.source.ends_with("ndis.pdb"), "{}", found.source);
    let real = found.table;
    assert_eq!(real.id.as_ref(), Some(&id));
    for ty in [
        "_NDIS_MINIPORT_BLOCK",
        "_NET_BUFFER_LIST",
        "_NDIS_NBL_TRACKER",
    ] {
        assert!(real.has_type(ty), "{ty}");
    }
    // Its data publics by the names a debugger shows (the file has them decorated), and the
    // members a type inherits from its base class.
    for (name, rva) in [
        ("ndisMiniportList", 0xE4090),
        ("ndisGlobalTriageBlock", 0xE37A0),
        ("ndisNblTrackerMode", 0xE5E08),
        ("ndisNblTrackerList", 0xE4AD8),
    ] {
        assert_eq!(real.symbol(name), Some(rva), "{name}");
    }
    for (ty, member, offset) in [
        ("_NDIS_NET_BUFFER_LIST_POOL", "AllocatedList", 0x10),
        (
            "_NDIS_NET_BUFFER_LIST_POOL",
            "GlobalNetBufferListPoolList",
            0x48,
        ),
        ("_NDIS_OPEN_BLOCK", "NextGlobalOpen", 0x180),
        ("_NDIS_OPEN_BLOCK", "BindDeviceName", 0x198),
        ("_NET_BUFFER_LIST", "NetBufferListInfo", 0x90),
    ] {
        assert_eq!(real.offset(ty, member).ok(), Some(offset), "{ty}.{member}");
    }
    // Without the file on the path, the built-in copy of its layout answers for it.
    let copy = SymbolPath::parse("").find(&id).unwrap().unwrap();
    assert_eq!(copy.source, "built-in");
    assert_eq!(
        copy.table.size_of("_NDIS_MINIPORT_BLOCK").ok(),
        real.size_of("_NDIS_MINIPORT_BLOCK").ok()
    );
}

/// The built-in NDIS layout is a copy of the real ndis.pdb's: generated from it (never edited),
/// and every type, member, enum constant and global it holds at the real file's offset.
#[test]
fn the_builtin_ndis_layout_is_the_real_pdbs() {
    let Some(dir) = kdnet_testkit::shared("pdbs/ndis.pdb") else {
        return;
    };
    let file = dir.join("pdbs/ndis.pdb");
    let fresh = kdnet_sim::layout::ndis_table_json(&file).unwrap();
    assert!(
        fresh == builtin::NDIS_JSON,
        "symbols/builtin/ndis.json is stale or edited: run scripts/gen-builtin-tables.sh"
    );
    let real = pdb::load_file(&file).unwrap();
    let copy = builtin::ndis();
    assert_eq!(copy.id, real.id);
    let mut members = 0;
    for ty in kdnet_sim::layout::NDIS_TYPES {
        let (c, r) = (copy.udt(ty).unwrap(), real.udt(ty).unwrap());
        assert_eq!(c.size, r.size, "{ty}");
        for f in &c.fields {
            let rf = r
                .field(&f.name)
                .unwrap_or_else(|| panic!("{ty}.{}", f.name));
            assert_eq!((f.offset, &f.ty), (rf.offset, &rf.ty), "{ty}.{}", f.name);
            members += 1;
        }
        assert_eq!(c.fields.len(), r.fields.len(), "{ty}");
    }
    assert!(members > 600, "{members}");
    for e in kdnet_sim::layout::NDIS_ENUMS {
        assert_eq!(
            copy.enumeration(e).unwrap(),
            real.enumeration(e).unwrap(),
            "{e}"
        );
    }
    for s in kdnet_sim::layout::NDIS_SYMBOLS {
        assert_eq!(copy.symbol(s), real.symbol(s), "{s}");
        assert!(copy.symbol(s).is_some(), "{s}");
    }
    // It answers for the real file's identity when the file is not on the path.
    let id = real.id.clone().unwrap();
    let found = SymbolPath::parse("").find(&id).unwrap().unwrap();
    assert_eq!(found.source, "built-in");
}
