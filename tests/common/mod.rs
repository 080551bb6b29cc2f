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
