//! An ISF table's numbers are checked before anything is built from them, and an xz stream is
//! decompressed within a bound: crafted tables and streams give errors naming what is wrong.

use kdnet_symbols::{SymError, isf};

fn table(user: &str, symbols: &str, base_size: u64) -> String {
    format!(
        r#"{{"metadata": {{"format": "6.2.0"}},
        "base_types": {{"unsigned long": {{"kind": "int", "size": {base_size}, "signed": false, "endian": "little"}}}},
        "user_types": {{{user}}},
        "enums": {{}},
        "symbols": {{{symbols}}}}}"#
    )
}

fn err(doc: &str) -> String {
    match isf::parse(doc.as_bytes()) {
        Err(SymError::Format { message, .. }) => message,
        other => panic!("expected a format error, got {other:?}"),
    }
}

const GOOD: &str = r#""_T": {"kind": "struct", "size": 16, "fields": {
    "A": {"offset": 0, "type": {"kind": "base", "name": "unsigned long"}},
    "B": {"offset": 4, "type": {"kind": "bitfield", "bit_position": 3, "bit_length": 5, "type": {"kind": "base", "name": "unsigned long"}}},
    "C": {"offset": 8, "type": {"kind": "array", "count": 2, "subtype": {"kind": "base", "name": "unsigned long"}}}}}"#;

#[test]
fn a_sane_table_loads() {
    let t = isf::parse(table(GOOD, r#""Sym": {"address": 4096}"#, 4).as_bytes()).unwrap();
    assert_eq!(t.offset("_T", "C[1]").unwrap(), 12);
    assert_eq!(t.field("_T", "B").unwrap().bits(), Some((3, 5)));
    assert_eq!(t.symbol("Sym"), Some(4096));
}

#[test]
fn sizes_offsets_bits_and_addresses_out_of_range_are_errors() {
    let e = err(&table(
        r#""_HUGE": {"kind": "struct", "size": 1000000000000000, "fields": {}}"#,
        "",
        4,
    ));
    assert!(e.contains("_HUGE has size 1000000000000000"), "{e}");
    let e = err(&table(
        r#""_T": {"kind": "struct", "size": 8, "fields": {"Far": {"offset": 4294967296, "type": {"kind": "base", "name": "unsigned long"}}}}"#,
        "",
        4,
    ));
    assert!(
        e.contains("_T.Far is at offset 0x100000000, past the end"),
        "{e}"
    );
    let e = err(&table(GOOD, "", 1 << 40));
    assert!(e.contains("base type \"unsigned long\" has size"), "{e}");
    let e = err(&table(
        r#""_T": {"kind": "struct", "size": 8, "fields": {"B": {"offset": 0, "type": {"kind": "bitfield", "bit_position": 60, "bit_length": 9, "type": {"kind": "base", "name": "unsigned long"}}}}}"#,
        "",
        4,
    ));
    assert!(e.contains("bitfield of 9 bits at bit 60"), "{e}");
    let e = err(&table(
        r#""_T": {"kind": "struct", "size": 8, "fields": {"Arr": {"offset": 0, "type": {"kind": "array", "count": 4294967296, "subtype": {"kind": "struct", "name": "_BIG"}}}}},
           "_BIG": {"kind": "struct", "size": 4096, "fields": {}}"#,
        "",
        4,
    ));
    assert!(e.contains("_T.Arr is 17592186044416 bytes"), "{e}");
    let e = err(&table(
        GOOD,
        r#""Far": {"address": 18446744073709551615}"#,
        4,
    ));
    assert!(e.contains("symbol Far is at 0xffffffffffffffff"), "{e}");
}

/// `data` compressed by the xz tool.
fn xz(data: Vec<u8>) -> Vec<u8> {
    let mut child = std::process::Command::new("xz")
        .args(["-z", "-c", "-6"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the xz tool makes the test's streams");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(&data).unwrap();
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    out.stdout
}

#[test]
fn an_xz_stream_that_expands_past_the_bound_is_an_error() {
    // 65 MiB of one byte compresses to a few kilobytes: the decoder is stopped at the bound,
    // not run to the end.
    let bomb = xz(vec![b'{'; 65 << 20]);
    assert!(bomb.len() < 64 << 10, "{} bytes", bomb.len());
    let e = isf::decompress_xz(&bomb).unwrap_err();
    assert!(e.contains("more than 67108864 bytes"), "{e}");
    // A stream within the bound decompresses whole; a damaged one is an error.
    let doc = table(GOOD, "", 4).into_bytes();
    let packed = xz(doc.clone());
    assert_eq!(isf::decompress_xz(&packed).unwrap(), doc);
    let mut bad = packed.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    assert!(isf::decompress_xz(&bad).unwrap_err().starts_with("xz:"));
}
