//! Runs after every other test binary of `cargo test --workspace` and prints one line: how
//! many tests skipped what needs `../shared` (it was not found), or how many used it. With
//! `KDNET_REQUIRE_SHARED` set and no test filter, the number the README states must be the
//! number of tests that used it.

use std::time::{Duration, SystemTime};

use kdnet_testkit::{REPORTED, parent_pid, run_dir, shared_dir, tally};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let Some(dir) = run_dir(parent_pid()) else {
        return;
    };
    forget_old_runs(&dir);
    let (used, skipped) = tally(&dir);
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(REPORTED), b"");
    if skipped > 0 {
        println!(
            "NOTE: {skipped} test{} skipped: what {} from {} was not found, and {} without checking it; \
KDNET_REQUIRE_SHARED=1 makes them fail instead (README.md, Tests)",
            if skipped == 1 { "" } else { "s" },
            if skipped == 1 {
                "it needs"
            } else {
                "they need"
            },
            shared_dir().display(),
            if skipped == 1 {
                "it passed"
            } else {
                "they passed"
            },
        );
    } else if used > 0 {
        println!("{used} tests used {}", shared_dir().display());
    }
    // The README's number is checked where every test runs with ../shared required (CI).
    let filtered = args.iter().any(|a| !a.starts_with('-'));
    if std::env::var_os("KDNET_REQUIRE_SHARED").is_some() && !filtered && used > 0 {
        let readme = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
        let text = std::fs::read_to_string(&readme).unwrap_or_default();
        let stated = text
            .split("tests need `../shared`")
            .next()
            .and_then(|before| before.split_whitespace().last())
            .and_then(|n| n.parse::<usize>().ok());
        if stated != Some(used + skipped) {
            eprintln!(
                "README.md states {} tests need `../shared`, but {} did in this run: update README.md",
                stated.map_or("no number of".to_string(), |n| n.to_string()),
                used + skipped
            );
            std::process::exit(1);
        }
    }
}

/// Removes the records of runs more than a day old (runs that ended before their summary).
fn forget_old_runs(current: &std::path::Path) {
    let Some(all) = current.parent() else { return };
    let day = Duration::from_secs(86_400);
    for e in std::fs::read_dir(all).into_iter().flatten().flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > day);
        if old && e.path() != current {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}
