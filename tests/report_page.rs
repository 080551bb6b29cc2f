//! `report.html` in a real browser: a bundle captured from the simulated deadlock opens in
//! headless Chromium, its script runs, and a screenshot shows the wait-for graph with the cycle
//! drawn in red. Needs Chromium (`chromium`, or KDNET_CHROMIUM=path); CI installs it and sets
//! KDNET_REQUIRE_CHROMIUM so the test cannot be skipped there.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KDNET_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    assert!(
        std::env::var_os("KDNET_REQUIRE_CHROMIUM").is_none(),
        "KDNET_REQUIRE_CHROMIUM is set but no Chromium was found"
    );
    eprintln!("skipping: no Chromium on PATH");
    None
}

fn browser(chrome: &Path, profile: &Path) -> Command {
    let mut c = Command::new(chrome);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

#[test]
fn the_report_page_renders_the_wait_for_graph() {
    let Some(chrome) = chromium() else { return };
    let (dir, bundle) = common::first_capture(
        "page",
        &["--scenario", "deadlock", "--resources", "2000"],
        &["--sample-every", "1s", "--name", "dl"],
        "!locks\n!deadlock\n",
    );
    let url = format!("file://{}", bundle.join("report.html").display());
    // The page's script ran and the graph is in the document.
    let o = browser(&chrome, &dir.join("profile1"))
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&o.stdout);
    assert!(
        dom.contains("data-ready=\"1\""),
        "the page's script did not run: {dom}"
    );
    assert!(dom.contains("<svg id=\"waitgraph\""), "{dom}");
    assert!(dom.matches("class=\"thread\"").count() >= 3, "{dom}");
    assert!(dom.contains("vmcompute.exe") && dom.contains("containerd.exe"));
    // A screenshot: the cycle's edges and boxes are drawn in their red.
    let shot = dir.join("page.png");
    let o = browser(&chrome, &dir.join("profile2"))
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1400,2000")
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        shot.is_file(),
        "no screenshot: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let px = match info.color_type {
        png::ColorType::Rgba => 4,
        png::ColorType::Rgb => 3,
        other => panic!("{other:?}"),
    };
    let near = |p: &[u8], c: [u8; 3]| p.iter().zip(c).all(|(a, b)| a.abs_diff(b) < 40);
    let mut red_rows = std::collections::BTreeSet::new();
    let mut red = 0usize;
    for (i, p) in buf[..info.buffer_size()].chunks(px).enumerate() {
        if near(p, [0xd0, 0x02, 0x1b]) {
            red += 1;
            red_rows.insert(i / info.width as usize);
        }
    }
    // Two thick edges and two outlined boxes: hundreds of pixels over many rows.
    assert!(red > 400, "only {red} cycle-coloured pixels");
    assert!(
        red_rows.len() > 60,
        "cycle colour on {} rows only",
        red_rows.len()
    );
    std::fs::remove_dir_all(dir).ok();
}
