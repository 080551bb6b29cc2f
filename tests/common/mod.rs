//! What the end-to-end tests of the binary share: the binary, a free port, a simulated target
//! that is stopped when the test ends, however it ends.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};

/// The `kdnet` binary under test.
pub fn kdnet() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kdnet"))
}

/// A UDP port nobody listens on now.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `kdnet sim` sending to 127.0.0.1:port, killed on drop.
pub struct Sim(pub Child);

impl Sim {
    pub fn start(port: u16, key: &str, args: &[&str]) -> Sim {
        let child = kdnet()
            .args(["sim", "--host", &format!("127.0.0.1:{port}"), "--key", key])
            .args(["--duration", "120s"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Sim(child)
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// A fresh directory under the system's temporary one.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("kdnet-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Text of JSON lines (`--json` output, an events file) as values; a line that is not JSON
/// fails the test with the line.
pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Runs `kdnet watch` on a fresh simulated machine (`sim_args`) with the capture script
/// `script` until its first capture; the test's directory and the bundle.
pub fn first_capture(
    name: &str,
    sim_args: &[&str],
    watch_args: &[&str],
    script: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = temp_dir(name);
    let port = free_udp_port();
    let _sim = Sim::start(port, "4.4.4.4", sim_args);
    let script_file = dir.join("capture.kds");
    std::fs::write(&script_file, script).unwrap();
    let out = dir.join("b");
    let o = kdnet()
        .args(["watch", "--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--key",
            "4.4.4.4",
            "--max-captures",
            "1",
            "--duration",
            "60s",
        ])
        .args(watch_args)
        .arg("--script")
        .arg(&script_file)
        .arg("--out")
        .arg(&out)
        .arg("--control")
        .arg(dir.join("s.sock"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bundle = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("report.json").is_file())
        .expect("a bundle");
    (dir, bundle)
}
