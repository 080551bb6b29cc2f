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

/// The attribute `name` of the first element that has it in `html`.
fn attr<'a>(html: &'a str, name: &str) -> Option<&'a str> {
    let i = html.find(&format!(" {name}=\""))? + name.len() + 3;
    html[i..].split('"').next()
}

fn num(html: &str, name: &str) -> f64 {
    attr(html, name)
        .unwrap_or_else(|| panic!("no {name}"))
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A screenshot's pixels, RGB(A) rows.
struct Shot {
    width: usize,
    height: usize,
    px: usize,
    buf: Vec<u8>,
}

impl Shot {
    fn read(path: &Path) -> Shot {
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        let px = match info.color_type {
            png::ColorType::Rgba => 4,
            png::ColorType::Rgb => 3,
            other => panic!("{other:?}"),
        };
        buf.truncate(info.buffer_size());
        Shot {
            width: info.width as usize,
            height: info.height as usize,
            px,
            buf,
        }
    }

    fn at(&self, x: usize, y: usize) -> &[u8] {
        let i = (y * self.width + x) * self.px;
        &self.buf[i..i + 3]
    }
}

fn near(p: &[u8], c: [u8; 3], tolerance: u8) -> bool {
    p.iter().zip(c).all(|(a, b)| a.abs_diff(b) < tolerance)
}

fn rgb(hex: &str) -> [u8; 3] {
    let h = hex.trim_start_matches('#');
    let c = |i: usize| u8::from_str_radix(&h[i..i + 2], 16).unwrap();
    [c(0), c(2), c(4)]
}

/// The page of `bundle` in the browser at 1400×2000: the DOM after its script ran, and a
/// screenshot.
fn open_page(chrome: &Path, dir: &Path, bundle: &Path) -> (String, Shot) {
    let url = format!("file://{}", bundle.join("report.html").display());
    let o = browser(chrome, &dir.join("profile1"))
        .arg("--window-size=1400,2000")
        .arg("--force-device-scale-factor=1")
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        dom.contains("data-ready=\"1\""),
        "the page's script did not run: {dom}"
    );
    let shot = dir.join("page.png");
    let o = browser(chrome, &dir.join("profile2"))
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1400,2000")
        .arg("--force-device-scale-factor=1")
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        shot.is_file(),
        "no screenshot: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    (dom, Shot::read(&shot))
}

/// The graph as the browser laid it out: it fits its column, no label leaves its box, and
/// each arrow's head is drawn, in its edge's colour, just before the border it ends on.
fn check_graph(dom: &str, shot: &Shot) -> String {
    let start = dom.find("<svg id=\"waitgraph\"").expect("the graph");
    let svg = &dom[start..start + dom[start..].find("</svg>").unwrap()];
    // Every label measured, none past its box.
    assert!(num(svg, "data-labels") >= 6.0, "{svg}");
    assert_eq!(
        attr(svg, "data-overflow"),
        Some("0"),
        "labels overflow: {svg}"
    );
    // The graph fits its column of a 1400-px window.
    let (rendered, column) = (
        num(svg, "data-rendered-width"),
        num(svg, "data-column-width"),
    );
    assert!(
        rendered > 100.0 && rendered <= column && column <= 1400.0,
        "graph {rendered} px in a column of {column} px"
    );
    assert_eq!(attr(svg, "width"), Some("100%"));
    let (left, top, scale) = (
        num(svg, "data-left"),
        num(svg, "data-top"),
        num(svg, "data-scale"),
    );
    assert!(scale > 0.3, "scaled to {scale}");
    // Each arrowhead: pixels of its edge's colour just before the tip.
    let mut checked = 0;
    let edges: Vec<&str> = svg.split("<path class=\"edge").skip(1).collect();
    assert!(!edges.is_empty());
    for e in &edges {
        let (x2, y2, dx, dy) = (
            num(e, "data-x2"),
            num(e, "data-y2"),
            num(e, "data-dx"),
            num(e, "data-dy"),
        );
        let color = rgb(attr(e, "data-color").unwrap());
        let (x, y) = (
            left + (x2 - dx * 5.0) * scale,
            top + (y2 - dy * 5.0) * scale,
        );
        let (x, y) = (x.round() as i64, y.round() as i64);
        if x < 2 || y < 2 || x as usize + 2 >= shot.width || y as usize + 2 >= shot.height {
            continue;
        }
        checked += 1;
        let hit = (-2..=2)
            .flat_map(|i| (-2..=2).map(move |j| (i, j)))
            .any(|(i, j)| near(shot.at((x + i) as usize, (y + j) as usize), color, 50));
        assert!(
            hit,
            "no arrowhead of {color:?} at ({x}, {y}) for edge{}",
            &e[..e.find("<title>").unwrap_or(e.len())]
        );
    }
    assert!(
        checked * 5 >= edges.len() * 4,
        "only {checked} of {} arrowheads on screen",
        edges.len()
    );
    svg.to_string()
}

#[test]
fn the_report_page_renders_the_wait_for_graph() {
    let Some(chrome) = chromium() else { return };
    let (dir, bundle) = common::first_capture(
        "page",
        &["--scenario", "deadlock", "--resources", "2000"],
        &["--sample-every", "1s", "--name", "dl"],
        "!locks\n!deadlock\n!poolused 2\n",
    );
    let (dom, shot) = open_page(&chrome, &dir, &bundle);
    let svg = check_graph(&dom, &shot);
    // The two deadlocked threads, the one on the mutant and the crowds of shared waiters, by
    // their whole address and process.
    assert!(svg.matches("class=\"node thread\"").count() >= 3, "{svg}");
    assert!(svg.matches("class=\"node group\"").count() >= 1, "{svg}");
    assert!(svg.contains("vmcompute.exe") && svg.contains("containerd.exe"));
    let full = svg
        .split(">thread ")
        .skip(1)
        .filter(|t| {
            let a = t.split('<').next().unwrap_or("");
            a.len() == 17 && a.as_bytes()[8] == b'`'
        })
        .count();
    assert!(full >= 3, "threads by their whole address: {svg}");
    assert!(svg.contains(">ERESOURCE</text>") && svg.contains(">KMUTANT</text>"));
    // Findings by severity: the deadlock is an error, the top pool tag only information.
    let li = |class: &str| -> Vec<&str> {
        dom.split(&format!("<li class=\"finding {class}\">"))
            .skip(1)
            .map(|x| x.split("</li>").next().unwrap_or(""))
            .collect()
    };
    assert!(li("error").iter().any(|l| l.contains("deadlock")), "{dom}");
    assert!(
        li("info").iter().any(|l| l.contains("top pool tag")),
        "{dom}"
    );
    assert!(
        !li("error").iter().any(|l| l.contains("top pool tag")),
        "{dom}"
    );
    // A screenshot: the cycle's edges and boxes are drawn in their red.
    let red_c = rgb(html_cycle_color());
    let mut red_rows = std::collections::BTreeSet::new();
    let mut red = 0usize;
    for (i, p) in shot.buf.chunks(shot.px).enumerate() {
        if near(p, red_c, 40) {
            red += 1;
            red_rows.insert(i / shot.width);
        }
    }
    // Thick edges and outlined boxes: hundreds of pixels over many rows.
    assert!(red > 400, "only {red} cycle-coloured pixels");
    assert!(
        red_rows.len() > 60,
        "cycle colour on {} rows only",
        red_rows.len()
    );
    std::fs::remove_dir_all(dir).ok();
}

/// The cycle's colour on the page.
fn html_cycle_color() -> &'static str {
    "#d0021b"
}

#[test]
fn the_chain_of_the_nbl_hang_reaches_the_miniport() {
    let Some(chrome) = chromium() else { return };
    let (dir, bundle) = common::first_capture(
        "page-nbl",
        &["--scenario", "nbl-hang", "--resources", "2000"],
        &["--sample-every", "1s", "--name", "nbl"],
        include_str!("../scripts/hang.kds"),
    );
    let (dom, shot) = open_page(&chrome, &dir, &bundle);
    let svg = check_graph(&dom, &shot);
    // The lock by its symbol, the PnP worker holding it, what it waits for, and the miniport
    // holding the packets at the end.
    for label in [
        ">nt!PiEngineLock</text>",
        ">KEVENT</text>",
        ">rundown protection</text>",
        ">NDIS miniport</text>",
        ">My Ethernet 1Gb 4-port Adapter</text>",
    ] {
        assert!(svg.contains(label), "{label}: {svg}");
    }
    assert_eq!(svg.matches("class=\"edge beyond\"").count(), 1, "{svg}");
    // Linked from the waiting thread's chain: the owner of the lock is the thread whose wait
    // ends at the miniport.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("report.json")).unwrap())
            .unwrap();
    let f = &report["findings"];
    let lock = f["wait_edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["symbol"] == "nt!PiEngineLock")
        .expect("a wait on nt!PiEngineLock");
    let end = f["wait_ends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["thread"] == lock["owner"])
        .expect("the owner's wait goes on");
    assert_eq!(end["via"], "rundown protection");
    let miniport = f["nbl_holders"][0]["handle"].clone();
    assert_eq!(end["held_by"], serde_json::json!([miniport]));
    std::fs::remove_dir_all(dir).ok();
}
