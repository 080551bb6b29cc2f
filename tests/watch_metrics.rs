//! `kdnet watch --metrics`, scraped by a real Prometheus server (Debian's `prometheus`; CI
//! installs it and sets KDNET_REQUIRE_PROMETHEUS): a watcher of two simulated targets, one
//! sampled and calm, one whose health probe fails so that it is captured. Prometheus scrapes
//! the watcher every second; the test asks Prometheus's HTTP API for what it stored — the
//! capture counter, the targets' states, the stop-seconds histogram — not the page's text.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Sim, free_udp_port, kdnet, temp_dir};
use serde_json::Value;

/// The prometheus binary, or None (with a note) when it is absent and not required.
fn prometheus() -> Option<PathBuf> {
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let p = dir.join("prometheus");
        if p.is_file() {
            return Some(p);
        }
    }
    assert!(
        std::env::var_os("KDNET_REQUIRE_PROMETHEUS").is_none(),
        "KDNET_REQUIRE_PROMETHEUS is set but no prometheus was found"
    );
    eprintln!("skipping: no prometheus on PATH");
    None
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// GET `url`: the status and body, or None when nothing answers.
fn get(url: &str) -> Option<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent.get(url).call().ok()?;
    let status = r.status().as_u16();
    let body = r.body_mut().read_to_string().ok()?;
    Some((status, body))
}

/// Prometheus's answer to an instant query: each series' labels and value.
fn query(prom: u16, expr: &str) -> Vec<(Value, f64)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let Ok(mut r) = agent
        .get(&format!("http://127.0.0.1:{prom}/api/v1/query"))
        .query("query", expr)
        .call()
    else {
        return Vec::new();
    };
    let Ok(body) = r.body_mut().read_to_string() else {
        return Vec::new();
    };
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    assert_ne!(v["status"], "error", "{expr}: {body}");
    v["data"]["result"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| {
                    let x = s["value"][1].as_str()?.parse().ok()?;
                    Some((s["metric"].clone(), x))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The one value of `expr`, if it has exactly one series.
fn one(prom: u16, expr: &str) -> Option<f64> {
    match query(prom, expr).as_slice() {
        [(_, x)] => Some(*x),
        _ => None,
    }
}

fn diagnostics(dir: &Path) -> String {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    format!(
        "watcher:\n{}\nevents:\n{}\nprometheus:\n{}",
        read("watch.err"),
        read("events.jsonl"),
        read("prometheus.err")
    )
}

#[test]
fn a_real_prometheus_scrapes_the_watchers_metrics() {
    let Some(prom_bin) = prometheus() else { return };
    let dir = temp_dir("metrics-prometheus");
    std::fs::write(dir.join("k.key"), "4.4.4.4\n").unwrap();
    let (p_calm, p_hung) = (free_udp_port(), free_udp_port());
    let few = ["--scenario", "healthy", "--resources", "500"];
    let _calm = Sim::start_for(p_calm, "4.4.4.4", "900s", &few);
    let _hung = Sim::start_for(p_hung, "4.4.4.4", "900s", &few);
    let mport = free_tcp_port();
    let config = dir.join("targets.toml");
    std::fs::write(
        &config,
        format!(
            r#"events = "events.jsonl"
control = "watch.sock"
metrics = "127.0.0.1:{mport}"

[defaults]
out = "bundles"
max_stop = "sample=60s,capture=120s"

[[target]]
name = "calm"
port = {p_calm}
bind = "127.0.0.1"
key_file = "k.key"
tags = ["web", "eu"]
sample_every = "1s"

[[target]]
name = "hung"
port = {p_hung}
bind = "127.0.0.1"
key_file = "k.key"
tags = ["db"]
probe = "cmd:exit 1"
probe_every = "200ms"
probe_fail_after = "1s"
"#
        ),
    )
    .unwrap();
    let _watcher = Killed(
        kdnet()
            .arg("watch")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("watch.err")).unwrap())
            .spawn()
            .unwrap(),
    );
    let metrics = format!("http://127.0.0.1:{mport}/metrics");
    let limit = Duration::from_secs(240);
    let start = Instant::now();
    // The watcher serves its page before Prometheus starts scraping it.
    while get(&metrics).is_none_or(|(s, _)| s != 200) {
        assert!(
            start.elapsed() < limit,
            "no metrics page at {metrics}\n{}",
            diagnostics(&dir)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let pport = free_tcp_port();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: kdnet\n    static_configs:\n      - targets: ['127.0.0.1:{mport}']\n"
        ),
    )
    .unwrap();
    let _prom = Killed(
        Command::new(prom_bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{pport}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.err")).unwrap())
            .spawn()
            .unwrap(),
    );

    // Wait until Prometheus has scraped the watcher at least twice, and what it stored shows a
    // capture of the hung target and a sample of the calm one.
    let captured = r#"sum(kdnet_captures_total{job="kdnet",target="hung",trigger="probe",outcome=~"complete|incomplete"})"#;
    let sampled =
        r#"kdnet_samples_total{job="kdnet",target="calm",tags="web,eu",outcome="nothing-found"}"#;
    loop {
        let scrapes = one(pport, r#"count_over_time(up{job="kdnet"}[10m])"#).unwrap_or(0.0);
        let up = one(pport, r#"up{job="kdnet"}"#).unwrap_or(0.0);
        let c = one(pport, captured).unwrap_or(0.0);
        let s = one(pport, sampled).unwrap_or(0.0);
        if scrapes >= 2.0 && up == 1.0 && c >= 1.0 && s >= 1.0 {
            break;
        }
        assert!(
            start.elapsed() < limit,
            "scrapes {scrapes}, up {up}, captures {c}, samples {s}\n{}",
            diagnostics(&dir)
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // What Prometheus stored.
    assert_eq!(one(pport, r#"kdnet_targets{job="kdnet"}"#), Some(2.0));
    // The capture: counted once per bundle, with its stop in the histogram.
    let captures = one(pport, captured).unwrap();
    assert!(captures >= 1.0, "{captures}");
    let stops = one(
        pport,
        r#"kdnet_stop_seconds_count{job="kdnet",target="hung",tags="db",kind="capture"}"#,
    )
    .unwrap();
    let in_inf = one(
        pport,
        r#"kdnet_stop_seconds_bucket{job="kdnet",target="hung",kind="capture",le="+Inf"}"#,
    )
    .unwrap();
    assert_eq!(stops, in_inf);
    // Scraped at different moments, the counter and the histogram may be one capture apart.
    assert!(
        stops >= 1.0 && (stops - captures).abs() <= 1.0,
        "{stops} stops, {captures} captures\n{}",
        diagnostics(&dir)
    );
    let sum = one(
        pport,
        r#"kdnet_stop_seconds_sum{job="kdnet",target="hung",kind="capture"}"#,
    )
    .unwrap();
    assert!(sum > 0.0, "{sum}");
    // The calm target's samples are in the sample histogram, not the capture one.
    let sample_stops = one(
        pport,
        r#"kdnet_stop_seconds_count{job="kdnet",target="calm",tags="web,eu",kind="sample"}"#,
    )
    .unwrap();
    assert!(sample_stops >= 1.0, "{sample_stops}");
    assert_eq!(
        one(
            pport,
            r#"kdnet_stop_seconds_count{job="kdnet",target="calm",kind="capture"}"#
        ),
        Some(0.0)
    );
    // Each target is in exactly one state, at every scrape.
    for t in ["calm", "hung"] {
        let states = query(
            pport,
            &format!(r#"kdnet_target_state{{job="kdnet",target="{t}"}} == 1"#),
        );
        assert_eq!(states.len(), 1, "{t}: {states:?}");
        for f in ["min_over_time", "max_over_time"] {
            assert_eq!(
                one(
                    pport,
                    &format!(
                        r#"{f}((sum by (target) (kdnet_target_state{{job="kdnet",target="{t}"}}))[10m:1s])"#
                    )
                ),
                Some(1.0),
                "{t} {f}"
            );
        }
    }
    // The calm one was never captured, at any scrape. (Which state of its sampling cycle a
    // scrape lands in — running, sampling, resuming — depends on how fast this machine samples.)
    assert_eq!(
        one(
            pport,
            r#"max(max_over_time(kdnet_target_state{job="kdnet",target="calm",state=~"capturing|captured|capture-failed|capture-skipped"}[10m]))"#
        ),
        Some(0.0)
    );
    // The session's counters came from the wire.
    let rt = one(
        pport,
        r#"kdnet_round_trips_total{job="kdnet",target="hung"}"#,
    )
    .unwrap();
    assert!(rt > 0.0, "{rt}");
    let bytes = one(
        pport,
        r#"kdnet_bytes_total{job="kdnet",target="calm",direction="received"}"#,
    )
    .unwrap();
    assert!(bytes > 0.0, "{bytes}");
    assert_eq!(
        one(
            pport,
            r#"kdnet_wrong_key_offers_total{job="kdnet",target="calm"}"#
        ),
        Some(0.0)
    );
    let since = one(
        pport,
        r#"kdnet_seconds_since_last_capture{job="kdnet",target="hung"}"#,
    )
    .unwrap();
    assert!(since >= 0.0, "{since}");
    assert_eq!(
        query(
            pport,
            r#"kdnet_seconds_since_last_capture{job="kdnet",target="calm"}"#
        )
        .len(),
        0
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// An address that is not loopback is refused unless asked for, on the command line and in
/// targets.toml, before anything is listened on.
#[test]
fn metrics_off_loopback_need_to_be_asked_for() {
    let port = free_udp_port().to_string();
    let o = kdnet()
        .args(["watch", "--port", &port, "--bind", "127.0.0.1", "--key-env"])
        .args([
            "KDNET_WATCH_KEY",
            "--metrics",
            "0.0.0.0:9464",
            "--duration",
            "1s",
        ])
        .env("KDNET_WATCH_KEY", "4.4.4.4")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("not a loopback address") && err.contains("--metrics-listen-any"),
        "{err}"
    );
    let dir = temp_dir("metrics-any");
    std::fs::write(dir.join("k.key"), "4.4.4.4\n").unwrap();
    let config = dir.join("targets.toml");
    let file = |extra: &str| {
        format!(
            "metrics = \"10.255.255.1:9464\"\n{extra}\n[[target]]\nname = \"a\"\nport = {port}\nbind = \"127.0.0.1\"\nkey_file = \"k.key\"\n"
        )
    };
    std::fs::write(&config, file("")).unwrap();
    let o = kdnet()
        .arg("watch")
        .arg("--config")
        .arg(&config)
        .args(["--duration", "1s"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("not a loopback address"), "{err}");
    // Asked for: the check passes (and binding an address this machine does not have fails,
    // saying so).
    std::fs::write(&config, file("metrics_listen_any = true")).unwrap();
    let o = kdnet()
        .arg("watch")
        .arg("--config")
        .arg(&config)
        .args(["--duration", "1s"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("not a loopback address"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
