//! A kernel table given with `--isf` is input like any file: the built-in demo table with one
//! number made absurd (a type of gigabytes, a table whose entries map gigabytes, a bitfield in
//! a 16-byte integer, a symbol far past any image, a field far past its type) makes building
//! the simulated machine fail at once with an error naming the type, never a panic or a build
//! that maps memory without end.

use std::path::PathBuf;

use kdnet_sim::{Machine, SimConfig, SimError, TableSource};
use serde_json::Value;

fn demo() -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../symbols/builtin/ntkrnlmp-20348-demo.json");
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// Builds the demo machine from `table` written to a file; returns the error.
fn build_error(name: &str, table: &Value) -> String {
    // A directory of its own: the cases run at once.
    let dir = std::env::temp_dir().join(format!("kdnet-sim-bounds-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{name}.json"));
    std::fs::write(&p, serde_json::to_vec(table).unwrap()).unwrap();
    let mut config = SimConfig::demo();
    config.resources = 200;
    config.table = TableSource::File(p.clone());
    let r = Machine::build(config);
    std::fs::remove_dir_all(&dir).ok();
    match r {
        Err(e @ (SimError::Config(_) | SimError::Symbols(_))) => e.to_string(),
        Ok(_) => panic!("{name}: the machine was built"),
    }
}

#[test]
fn the_untouched_table_builds() {
    let dir = std::env::temp_dir().join(format!("kdnet-sim-bounds-ok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("demo.json");
    std::fs::write(&p, serde_json::to_vec(&demo()).unwrap()).unwrap();
    let mut config = SimConfig::demo();
    config.resources = 200;
    config.table = TableSource::File(p);
    Machine::build(config).unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn absurd_type_sizes_are_refused_by_the_loader() {
    let mut t = demo();
    t["user_types"]["_EPROCESS"]["size"] = Value::from(1u64 << 50);
    let e = build_error("huge", &t);
    assert!(e.contains("_EPROCESS has size 1125899906842624"), "{e}");
}

#[test]
fn sizes_the_simulator_cannot_lay_out_are_errors() {
    // A type within what a table may hold (3 GiB) but not what the machine lays out.
    let mut t = demo();
    t["user_types"]["_EPROCESS"]["size"] = Value::from(3u64 << 30);
    let e = build_error("eprocess", &t);
    assert!(e.contains("_EPROCESS 0xc0000000 bytes"), "{e}");

    // A small type whose per-processor table of 2,048 entries would map gigabytes.
    let mut t = demo();
    t["user_types"]["_POOL_TRACKER_TABLE"]["size"] = Value::from(512u64 << 10);
    let e = build_error("tracker", &t);
    assert!(e.contains("needs 0x40000000 bytes at once"), "{e}");

    // A field far past anything laid out (in a type whose size the build never asks).
    let mut t = demo();
    t["user_types"]["_KPRCB"]["size"] = Value::from(1u64 << 31);
    t["user_types"]["_KPRCB"]["fields"]["CurrentThread"]["offset"] = Value::from(1u64 << 30);
    let e = build_error("offset", &t);
    assert!(e.contains("CurrentThread at offset 0x40000000"), "{e}");
}

#[test]
fn a_bitfield_in_a_sixteen_byte_integer_is_an_error() {
    let mut t = demo();
    t["base_types"]["wide"] =
        serde_json::json!({"kind": "int", "size": 16, "signed": false, "endian": "little"});
    let mut changed = 0;
    for (_, u) in t["user_types"].as_object_mut().unwrap() {
        for (_, f) in u["fields"].as_object_mut().unwrap() {
            if f["type"]["kind"] == "bitfield" {
                f["type"]["type"] = serde_json::json!({"kind": "base", "name": "wide"});
                changed += 1;
            }
        }
    }
    assert!(changed > 10);
    let e = build_error("bitfield", &t);
    assert!(
        e.contains("a bitfield of") && e.contains("in 16 bytes"),
        "{e}"
    );
}

#[test]
fn a_symbol_past_any_image_is_an_error() {
    let mut t = demo();
    t["symbols"]["KiWaitNever"]["address"] = Value::from(0xF000_0000u64);
    let e = build_error("symbol", &t);
    assert!(e.contains("at RVA 0xf0000000"), "{e}");
}
