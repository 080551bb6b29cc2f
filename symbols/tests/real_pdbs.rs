//! Real PDBs read through the PDB path: amdppm.pdb (types and public symbols of a Windows
//! driver) and user32.pdb (public symbols only), checked against what they hold.

use std::path::PathBuf;

use kdnet_symbols::path::SymbolPath;
use kdnet_symbols::{PdbId, Ty, pdb};

fn pdbs() -> Option<PathBuf> {
    kdnet_testkit::shared("pdbs").map(|d| d.join("pdbs"))
}

#[test]
fn amdppm_types_and_symbols() {
    let Some(dir) = pdbs() else { return };
    let t = pdb::load_file(&dir.join("amdppm.pdb")).unwrap();
    assert_eq!(
        t.id,
        Some(PdbId {
            guid: "1C19FDDB27BB3399D9B45973EFEAFCF3".into(),
            age: 1,
            name: "amdppm.pdb".into(),
        })
    );
    // A struct with a nested struct, a byte and a bitfield sharing an offset.
    assert_eq!(t.size_of("_KDEVICE_QUEUE").unwrap(), 0x28);
    let f = t.field("_KDEVICE_QUEUE", "DeviceListHead").unwrap();
    assert_eq!((f.offset, f.ty), (8, Ty::Udt("_LIST_ENTRY".into())));
    assert_eq!(
        t.offset("_KDEVICE_QUEUE", "DeviceListHead.Blink").unwrap(),
        16
    );
    let hint = t.field("_KDEVICE_QUEUE", "Hint").unwrap();
    assert_eq!((hint.offset, hint.bits()), (32, Some((8, 56))));
    // Arrays of pointers, indexed paths.
    let c = t.field("_RTL_BALANCED_NODE", "Children[1]").unwrap();
    assert_eq!(c.offset, 8);
    assert_eq!(
        c.ty,
        Ty::Pointer(Box::new(Ty::Udt("_RTL_BALANCED_NODE".into())))
    );
    assert!(t.field("_RTL_BALANCED_NODE", "Children[2]").is_err());
    // Arrays of structs count elements, not bytes (the member names a forward declaration;
    // the element size is the complete type's).
    let em = t.field("GLOBALS", "EnergyModels").unwrap();
    assert_eq!(
        em.ty,
        Ty::Array {
            count: 2,
            elem: Box::new(Ty::Udt("_PROC_ENERGY_MODEL".into()))
        }
    );
    assert_eq!(t.ty_size(&em.ty).unwrap(), 512);
    assert_eq!(t.offset("GLOBALS", "EnergyModels[1]").unwrap(), 1536 + 256);
    assert!(t.field("GLOBALS", "EnergyModels[2]").is_err());
    assert_eq!(
        t.field("_RTL_BALANCED_NODE", "Balance").unwrap().bits(),
        Some((0, 2))
    );
    // Members of a union keep declaration order: the bits, then the whole value.
    let u = t.udt("_AER_BRIDGE_DESCRIPTOR_FLAGS").unwrap();
    assert_eq!(u.fields.first().unwrap().name, "UncorrectableErrorMaskRW");
    assert_eq!(u.fields.last().unwrap().name, "AsUSHORT");
    // Unnamed nested structs stay apart: each has its own members.
    let io = t.field("_HV_X64_PPM_IDLE_STATE_CONFIG", "Io.Port").unwrap();
    assert_eq!(io.offset, 0);
    assert!(
        t.field("_HV_X64_PPM_IDLE_STATE_CONFIG", "Hlt.Port")
            .is_err()
    );
    // Enums.
    assert_eq!(t.enum_name("_DEVICE_POWER_STATE", 1), Some("PowerDeviceD0"));
    assert_eq!(t.enum_value("_KPROFILE_SOURCE", "ProfileTime").unwrap(), 0);
    assert_eq!(t.enum_name("_POOL_TYPE", 1), Some("PagedPool"));
    // Public symbols and the nearest one to an address.
    let init = t.symbol("InitAcpiCpc").unwrap();
    assert_eq!(init, 134_008);
    assert_eq!(t.nearest(init + 0x317), Some(("InitAcpiCpc", 0x317)));
}

#[test]
fn user32_public_symbols() {
    let Some(dir) = pdbs() else { return };
    let t = pdb::load_file(&dir.join("user32.pdb")).unwrap();
    let id = t.id.clone().unwrap();
    assert_eq!(
        (id.guid.as_str(), id.age),
        ("15F778B3671D4EFDBDCDE79905308B79", 2)
    );
    assert_eq!(t.counts().0, 0, "no types in a public PDB");
    let mb = t.symbol("MessageBoxW").unwrap();
    assert_eq!(t.nearest(mb + 5), Some(("MessageBoxW", 5)));
    assert!(t.symbol("CreateWindowExW").is_some());
    // Found by identity in a directory holding it flat.
    let found = SymbolPath::parse(&dir.display().to_string())
        .find(&id)
        .unwrap()
        .unwrap();
    assert!(found.source.ends_with("user32.pdb"));
    // A different age is a different PDB.
    let other = PdbId { age: 3, ..id };
    assert!(
        SymbolPath::parse(&dir.display().to_string())
            .find(&other)
            .unwrap()
            .is_none()
    );
}
