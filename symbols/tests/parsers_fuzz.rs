//! Malformed symbol files never panic or hang: ISF JSON (mutated real text, and generated
//! tables with cycles and absurd values), xz streams and PDB files (mutated real PDBs). A parse
//! either fails with an error or gives a table whose every query answers without panicking.

use std::path::PathBuf;
use std::sync::OnceLock;

use kdnet_symbols::{TypeTable, isf, pdb};
use proptest::prelude::*;

fn demo_json() -> &'static [u8] {
    static J: OnceLock<Vec<u8>> = OnceLock::new();
    J.get_or_init(|| {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("builtin/ntkrnlmp-20348-demo.json");
        std::fs::read(p).unwrap()
    })
}

fn amdppm_pdb() -> Option<&'static [u8]> {
    // Asked on every call, so each test that needs it is counted.
    let dir = kdnet_testkit::shared("pdbs/amdppm.pdb")?;
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    Some(P.get_or_init(|| std::fs::read(dir.join("pdbs/amdppm.pdb")).unwrap()))
}

/// Asks a table everything a command would.
fn exercise(t: &TypeTable) {
    let names: Vec<String> = t.type_names().take(200).map(str::to_string).collect();
    for n in &names {
        let _ = t.size_of(n);
        if let Ok(udt) = t.udt(n) {
            for f in udt.fields.iter().take(50) {
                let _ = t.ty_size(&f.ty);
                let _ = t.offset(n, &f.name);
                let _ = t.field(n, &format!("{}.{}", f.name, "x"));
                let _ = t.field(n, &format!("{}[3]", f.name));
            }
        }
    }
    let syms: Vec<String> = t.symbol_names().take(200).map(str::to_string).collect();
    for n in &syms {
        if let Some(a) = t.symbol(n) {
            let _ = t.nearest(a.wrapping_add(3));
            let _ = t.next_symbol(a);
        }
    }
    let _ = t.nearest(u64::MAX);
    let _ = t.enum_name("_KOBJECTS", 2);
    let _ = isf::to_json(t);
}

fn mutate(base: &[u8], edits: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    let mut b = base.to_vec();
    for &(at, v) in edits {
        let i = at % b.len();
        b[i] = v;
    }
    if let Some(c) = cut {
        b.truncate(c % (b.len() + 1));
    }
    b
}

/// A generated ISF document: types whose fields point at each other (cycles included), bitfields
/// and arrays with absurd values, enums and symbols.
fn isf_doc() -> impl Strategy<Value = String> {
    let kind = prop_oneof![
        Just("struct".to_string()),
        Just("union".to_string()),
        Just("base".to_string()),
        Just("pointer".to_string()),
        Just("array".to_string()),
        Just("bitfield".to_string()),
        Just("enum".to_string()),
        Just("function".to_string()),
        Just("nonsense".to_string()),
    ];
    let field = (
        0usize..6,
        kind,
        any::<u32>(),
        any::<u32>(),
        prop_oneof![Just(0i64), any::<i64>()],
    );
    let ty = (
        prop::collection::vec(field, 0..6),
        prop_oneof![Just(0u64), any::<u64>(), 1u64..0x1000],
    );
    (
        prop::collection::vec(ty, 1..6),
        prop::collection::vec((0usize..6, any::<u64>()), 0..6),
    )
        .prop_map(|(types, syms)| {
            let mut user = serde_json::Map::new();
            for (i, (fields, size)) in types.iter().enumerate() {
                let mut fm = serde_json::Map::new();
                for (j, (target, kind, a, b, off)) in fields.iter().enumerate() {
                    let target = format!("_T{}", target % types.len().max(1) + *target / 7);
                    let t = match kind.as_str() {
                        "struct" | "union" | "enum" => serde_json::json!({"kind": kind, "name": target}),
                        "base" => serde_json::json!({"kind": "base", "name": "unsigned long"}),
                        "pointer" => serde_json::json!({"kind": "pointer", "subtype": {"kind": "struct", "name": target}}),
                        "array" => serde_json::json!({"kind": "array", "count": a, "subtype": {"kind": "struct", "name": target}}),
                        "bitfield" => serde_json::json!({"kind": "bitfield", "bit_position": a % 300, "bit_length": b % 300, "type": {"kind": "base", "name": "unsigned long long"}}),
                        "function" => serde_json::json!({"kind": "function"}),
                        _ => serde_json::json!({"kind": kind, "name": 5}),
                    };
                    fm.insert(format!("f{j}"), serde_json::json!({"offset": off, "type": t}));
                }
                user.insert(
                    format!("_T{i}"),
                    serde_json::json!({"kind": "struct", "size": size, "fields": fm}),
                );
            }
            let mut symbols = serde_json::Map::new();
            for (i, a) in syms {
                symbols.insert(format!("Sym{i}"), serde_json::json!({"address": a}));
            }
            serde_json::json!({
                "metadata": {"format": "6.2.0"},
                "base_types": {
                    "unsigned long": {"kind": "int", "size": 4, "signed": false, "endian": "little"},
                    "unsigned long long": {"kind": "int", "size": 8, "signed": false, "endian": "little"},
                    "pointer": {"kind": "int", "size": 8, "signed": false, "endian": "little"}
                },
                "user_types": user,
                "enums": {"_KOBJECTS": {"size": 4, "base": "unsigned long", "constants": {"EventNotificationObject": 0, "MutantObject": 2}}},
                "symbols": symbols
            })
            .to_string()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_isf_text_never_panics(
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..12),
        cut in prop::option::of(any::<usize>()),
    ) {
        let doc = mutate(demo_json(), &edits, cut);
        if let Ok(t) = isf::parse(&doc) {
            exercise(&t);
        }
    }

    #[test]
    fn generated_isf_tables_answer_every_query(doc in isf_doc()) {
        if let Ok(t) = isf::parse(doc.as_bytes()) {
            exercise(&t);
        }
    }

    #[test]
    fn xz_garbage_is_an_error(
        body in prop::collection::vec(any::<u8>(), 0..512),
        with_magic in any::<bool>(),
    ) {
        let mut raw = if with_magic { vec![0xFD, b'7', b'z', b'X', b'Z', 0] } else { Vec::new() };
        raw.extend_from_slice(&body);
        let _ = isf::decompress_xz(&raw);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_pdbs_never_panic(
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..16),
        header_edits in prop::collection::vec((0usize..0x2000, any::<u8>()), 0..4),
        cut in prop::option::of(any::<usize>()),
    ) {
        let Some(real) = amdppm_pdb() else { return Ok(()) };
        let mut all = edits;
        all.extend(header_edits);
        let bytes = mutate(real, &all, cut);
        let _ = pdb::identity(bytes.clone(), "amdppm.pdb");
        if let Ok(t) = pdb::parse(bytes, "amdppm.pdb") {
            exercise(&t);
        }
    }
}

#[test]
fn the_unmutated_inputs_parse() {
    // The properties above would be vacuous if the bases did not parse.
    let t = isf::parse(demo_json()).unwrap();
    assert!(t.size_of("_EPROCESS").unwrap() > 0x400);
    if let Some(p) = amdppm_pdb() {
        let t = pdb::parse(p.to_vec(), "amdppm.pdb").unwrap();
        assert!(t.symbol("InitAcpiCpc").is_some());
    }
}
