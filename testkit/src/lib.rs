//! What the workspace's tests share: the reference material in `../shared` (real captures,
//! symbol tables, a dump, PDBs), found in one way, and an account of the tests that could not
//! use it.
//!
//! A test that needs `../shared` asks [`shared`]. Without it the test returns early having
//! checked nothing, unless `KDNET_REQUIRE_SHARED` is set (CI), in which case it fails. Every
//! answer is recorded under the target directory for the `cargo` run it belongs to, and the
//! `shared_summary` test (the last to run in `cargo test --workspace`) prints one line saying how
//! many tests skipped, or how many used it.
//!
//! Also: [`local::LocalTarget`], the model's `Target` over any in-process `TargetHandler` (the
//! simulated machine without a network), and [`faulty`], a `Target` that fails chosen requests.

pub mod faulty;
pub mod local;

use std::io::Write as _;
use std::path::PathBuf;

/// The reference directory: `$KDNET_SHARED`, else `shared` beside the workspace (`../shared`
/// seen from it).
pub fn shared_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KDNET_SHARED") {
        return PathBuf::from(d);
    }
    let testkit = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let beside = testkit.parent().and_then(std::path::Path::parent);
    beside.map_or_else(|| testkit.join("../../shared"), |d| d.join("shared"))
}

/// The reference directory when it holds `sub` (a directory or file such as `captures` or
/// `pdbs/amdppm.pdb`); None when it does not and `KDNET_REQUIRE_SHARED` is not set (the calling
/// test is recorded as having skipped); a panic when it is set.
pub fn shared(sub: &str) -> Option<PathBuf> {
    let dir = shared_dir();
    let found = dir.join(sub).exists();
    record(if found { "used" } else { "skipped" });
    if found {
        return Some(dir);
    }
    assert!(
        std::env::var_os("KDNET_REQUIRE_SHARED").is_none(),
        "KDNET_REQUIRE_SHARED is set but {} is missing",
        dir.join(sub).display()
    );
    None
}

/// Where the answers of this `cargo` run are recorded: one directory per run (named for the
/// process that runs the test binaries, `cargo`), under the target directory.
pub fn run_dir(parent: u32) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // target/<profile>/deps/<binary>
    let profile = exe.parent()?.parent()?;
    Some(profile.join("kdnet-shared-tests").join(parent.to_string()))
}

/// The name of the summary's marker: once it exists, the count has been printed.
pub const REPORTED: &str = "reported";

/// The process that runs this test binary (`cargo`, for `cargo test`).
pub fn parent_pid() -> u32 {
    #[cfg(unix)]
    {
        std::os::unix::process::parent_id()
    }
    #[cfg(not(unix))]
    {
        0
    }
}

/// Records that the current test used `../shared` or skipped for want of it.
fn record(kind: &str) {
    let Some(dir) = run_dir(parent_pid()) else {
        return;
    };
    let binary = std::env::current_exe()
        .ok()
        .and_then(|e| e.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|s| match s.rsplit_once('-') {
            Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_string(),
            _ => s,
        })
        .unwrap_or_default();
    // The test harness names each test's thread after the test.
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .replace("::", ".");
    let name = format!("{binary}--{test}.{kind}");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(&name), b"");
    if kind == "skipped" && dir.join(REPORTED).exists() {
        // Too late for the count: say so where it shows (output written straight to the
        // standard error is not captured by the test harness).
        let _ = writeln!(
            std::io::stderr(),
            "{binary}: {test} skipped (no {}) after the count of skipped tests was printed",
            shared_dir().display()
        );
    }
}

/// The tests recorded in `dir`: (using ../shared, skipping for want of it). A test that asked
/// more than once counts once, as skipping if it ever did.
pub fn tally(dir: &std::path::Path) -> (usize, usize) {
    let mut used = std::collections::BTreeSet::new();
    let mut skipped = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if let Some(t) = n.strip_suffix(".skipped") {
            skipped.insert(t.to_string());
        } else if let Some(t) = n.strip_suffix(".used") {
            used.insert(t.to_string());
        }
    }
    let used = used.difference(&skipped).count();
    (used, skipped.len())
}
