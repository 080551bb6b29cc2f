//! Malformed PDBs under a 2 GB address-space limit (as `ulimit -v 2000000` sets): a real PDB
//! (`../shared/pdbs/ndis.pdb`) is corrupted so that a stream, the type stream's header or one
//! type record claims gigabytes, and each copy is loaded in a child process whose address space
//! is limited with `setrlimit(RLIMIT_AS)`. An allocation failure there would abort the child (an
//! abort is not a panic anything can contain); the child must instead end normally and print
//! the loader's answer: a clear error for a file whose numbers cannot be, or the table when the
//! damage is in a record the table does not use.
//!
//! The child is this test binary run again with `KDNET_PDB_LIMIT_CHILD` naming the file.
//! Without `../shared` the test is skipped, unless `KDNET_REQUIRE_SHARED` is set.

#![cfg(unix)]

use std::path::Path;
use std::process::Command;

use kdnet_symbols::msf::Msf;

const CHILD: &str = "KDNET_PDB_LIMIT_CHILD";
const TEST: &str = "malformed_pdbs_are_errors_under_a_2gb_address_space_limit";
/// The limit, in KB as `ulimit -v` takes it.
const LIMIT_KB: u64 = 2_000_000;

fn shared_pdb(name: &str) -> Option<Vec<u8>> {
    let f = kdnet_testkit::shared(&format!("pdbs/{name}"))?
        .join("pdbs")
        .join(name);
    Some(std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display())))
}

/// The child: limit the address space, load the PDB, print the answer on one line.
fn child(path: &Path) {
    let limit = libc::rlimit {
        rlim_cur: LIMIT_KB * 1024,
        rlim_max: LIMIT_KB * 1024,
    };
    // SAFETY: setrlimit reads the struct it is given and nothing else.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) };
    assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
    match kdnet_symbols::pdb::load_file(path) {
        Ok(t) => {
            let (types, enums, symbols) = t.counts();
            println!("PDB-ANSWER loaded {types} types, {enums} enums, {symbols} symbols");
        }
        Err(e) => println!("PDB-ANSWER error: {e}"),
    }
}

/// Runs the child on `file`; returns its answer line. Fails unless the child ended normally.
fn run_child(file: &Path) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD, file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the child loading {} did not end normally ({:?}):\n{stdout}\n{stderr}",
        file.display(),
        out.status
    );
    stdout
        .lines()
        .find_map(|l| l.split_once("PDB-ANSWER ").map(|(_, a)| a))
        .unwrap_or_else(|| panic!("no answer from the child:\n{stdout}\n{stderr}"))
        .to_string()
}

/// Writes `v` at byte `at` of stream `stream` (`None`: of the stream directory), byte by byte
/// since a stream's consecutive bytes may lie on different pages.
fn put(b: &mut [u8], msf: &Msf<'_>, stream: Option<usize>, at: usize, v: &[u8]) {
    for (i, x) in v.iter().enumerate() {
        let off = match stream {
            Some(s) => msf.file_offset(s, at + i),
            None => msf.directory_offset(at + i),
        };
        b[off.unwrap()] = *x;
    }
}

/// The first type record of `kind` in the type stream, as its index in the stream; `pick`
/// chooses among them by the record's bytes.
fn find_record(tpi: &[u8], kind: u16, pick: impl Fn(&[u8]) -> bool) -> usize {
    let mut at = u32::from_le_bytes(tpi[4..8].try_into().unwrap()) as usize;
    while at + 4 <= tpi.len() {
        let len = usize::from(u16::from_le_bytes([tpi[at], tpi[at + 1]]));
        let k = u16::from_le_bytes([tpi[at + 2], tpi[at + 3]]);
        if k == kind && pick(&tpi[at + 2..at + 2 + len]) {
            return at;
        }
        at += 2 + len;
    }
    panic!("no type record of kind {kind:#x}");
}

#[test]
fn malformed_pdbs_are_errors_under_a_2gb_address_space_limit() {
    if let Some(file) = std::env::var_os(CHILD) {
        child(Path::new(&file));
        return;
    }
    let Some(real) = shared_pdb("ndis.pdb") else {
        return;
    };
    let msf = Msf::open(&real).unwrap();
    let tpi = msf.stream(2);
    let dir = std::env::temp_dir().join(format!("kdnet-pdb-limit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };

    // The untouched file loads under the limit (the limit leaves room for honest work).
    let clean = run_child(&write("clean.pdb", &real));
    assert!(clean.starts_with("loaded "), "{clean}");
    assert!(!clean.starts_with("loaded 0 types"), "{clean}");

    // The type stream claims 4 GiB in the stream directory.
    let mut b = real.clone();
    put(&mut b, &msf, None, 4 + 4 * 2, &0xFFFF_FFF0u32.to_le_bytes());
    let a = run_child(&write("stream.pdb", &b));
    assert!(
        a.contains("malformed PDB: stream 2 claims 4294967280 bytes"),
        "{a}"
    );

    // The type stream's header claims 4 billion types (the last index 0xFFFFFFFF).
    let mut b = real.clone();
    put(&mut b, &msf, Some(2), 12, &u32::MAX.to_le_bytes());
    let a = run_child(&write("types.pdb", &b));
    assert!(a.contains("malformed PDB: the TPI header claims"), "{a}");
    assert!(a.contains("records in"), "{a}");

    // The DBI header claims a 2 GB module substream.
    let mut b = real.clone();
    put(&mut b, &msf, Some(3), 24, &0x7FFF_FFF0u32.to_le_bytes());
    let a = run_child(&write("dbi.pdb", &b));
    assert!(a.contains("malformed PDB: the DBI substreams claim"), "{a}");

    // An argument list claims 2^30 arguments: a reader that sizes a vector from that count
    // asks for 4 GiB. The table does not use argument lists, so the file still loads, whole.
    let arglist = find_record(&tpi, 0x1201, |r| r.len() >= 6);
    let mut b = real.clone();
    put(
        &mut b,
        &msf,
        Some(2),
        arglist + 4,
        &0x4000_0000u32.to_le_bytes(),
    );
    let a = run_child(&write("arglist.pdb", &b));
    assert_eq!(a, clean);

    // A struct's member list holds that argument list in place of its first member: the
    // struct's members cannot be read, which is an error, not an allocation.
    let list = find_record(&tpi, 0x1203, |r| {
        r.len() > 8 && u16::from_le_bytes([r[2], r[3]]) == 0x150d
    });
    let mut b = real.clone();
    put(&mut b, &msf, Some(2), list + 4, &0x1201u16.to_le_bytes());
    put(
        &mut b,
        &msf,
        Some(2),
        list + 6,
        &0x4000_0000u32.to_le_bytes(),
    );
    let a = run_child(&write("members.pdb", &b));
    assert!(
        a.contains("malformed PDB: members of") && a.contains("unknown kind 0x1201"),
        "{a}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
