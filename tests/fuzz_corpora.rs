//! The fuzz targets' corpora replayed on the stable toolchain: every file committed under
//! `fuzz/corpus/<target>/` (seeds and the inputs that once found a fault) and every seed the
//! generator makes now goes through the same entry points the libFuzzer targets call
//! (`fuzz/src/targets.rs`). `KDNET_WRITE_FUZZ_CORPUS=1` first writes the generated seeds into
//! the corpus directories.

#[path = "../fuzz/src/seeds.rs"]
#[allow(dead_code)]
mod seeds;
#[path = "../fuzz/src/targets.rs"]
mod targets;

use std::path::PathBuf;

/// A target's entry point.
type Entry = fn(&[u8]);

const TARGETS: [(&str, Entry); 7] = [
    ("datagram", targets::datagram),
    ("kd_packet", targets::kd_packet),
    ("dbgkd", targets::dbgkd),
    ("dump", targets::dump),
    ("pdb", targets::pdb),
    ("isf", targets::isf),
    ("expr", targets::expr),
];

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus")
}

#[test]
fn every_corpus_file_and_seed_replays() {
    let generated = seeds::all();
    if std::env::var_os("KDNET_WRITE_FUZZ_CORPUS").is_some() {
        for (target, name, bytes) in &generated {
            let dir = corpus().join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    let mut total = 0;
    for (target, run) in TARGETS {
        let dir = corpus().join(target);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no corpus for {target}");
        for f in &files {
            let bytes = std::fs::read(f).unwrap();
            // A failure names the file: the panic message is printed with the test's output.
            eprintln!("{target}: {}", f.display());
            run(&bytes);
        }
        let mine: Vec<_> = generated.iter().filter(|s| s.0 == target).collect();
        assert!(!mine.is_empty(), "no seeds for {target}");
        for (_, _, bytes) in mine {
            run(bytes);
        }
        total += files.len();
    }
    assert!(total >= 40, "{total} corpus files");
}

#[test]
fn the_seeds_are_what_they_claim() {
    // The seeds reach deep into their formats only if they are valid; check the ones built
    // here rather than by a writer the project tests elsewhere.
    let pdb = seeds::small_pdb();
    let t = kdnet_symbols::pdb::parse(pdb, "seed.pdb").unwrap();
    assert_eq!(t.size_of("_OUTER").unwrap(), 64);
    let pairs = t.field("_OUTER", "Pairs").unwrap();
    assert_eq!(
        pairs.ty,
        kdnet_symbols::Ty::Array {
            count: 4,
            elem: Box::new(kdnet_symbols::Ty::Udt("_PAIR".into()))
        }
    );
    assert_eq!(t.offset("_OUTER", "Pairs[3].B").unwrap(), 40);
    assert_eq!(t.field("_OUTER", "Flags").unwrap().bits(), Some((3, 5)));
    assert_eq!(t.enum_value("_FUZZ_KIND", "FuzzSeven").unwrap(), 7);
    assert_eq!(t.symbol("KdpFuzzSeed"), Some(0x1010));
    let all = seeds::all();
    let xz = &all.iter().find(|s| s.1 == "small.json.xz").unwrap().2;
    let json = &all.iter().find(|s| s.1 == "small.json").unwrap().2;
    assert_eq!(&kdnet_symbols::isf::decompress_xz(xz).unwrap(), json);
    let t = kdnet_symbols::isf::parse(json).unwrap();
    assert_eq!(t.offset("_OUTER", "Pairs[2].B").unwrap(), 28);
    let triage = &all.iter().find(|s| s.1 == "triage.dmp").unwrap().2;
    let mut d = kdnet_model::dump::DumpFile::from_bytes("t.dmp", triage.clone()).unwrap();
    use kdnet_model::target::Target;
    let m = d.module_list().unwrap();
    assert_eq!(m[0].name, "ntoskrnl.exe");
}
