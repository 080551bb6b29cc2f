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
        Sim::start_for(port, key, "120s", args)
    }

    /// A simulator that stops by itself after `duration`.
    pub fn start_for(port: u16, key: &str, duration: &str, args: &[&str]) -> Sim {
        let child = kdnet()
            .args(["sim", "--host", &format!("127.0.0.1:{port}"), "--key", key])
            .args(["--duration", duration])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Sim(child)
    }
}

/// A child whose standard output and error arrive line by line (tagged `out`/`err`), killed
/// on drop.
pub struct Lines {
    pub child: Child,
    rx: std::sync::mpsc::Receiver<(&'static str, String)>,
    /// Every line so far.
    pub seen: Vec<(&'static str, String)>,
}

impl Lines {
    /// Spawns `cmd` with its output piped (standard input too, kept open until dropped).
    pub fn spawn(cmd: &mut Command) -> Lines {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for (tag, r) in [
            ("out", Box::new(out) as Box<dyn std::io::Read + Send>),
            ("err", Box::new(err)),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                use std::io::BufRead as _;
                for l in std::io::BufReader::new(r).lines() {
                    let Ok(l) = l else { break };
                    if tx.send((tag, l)).is_err() {
                        break;
                    }
                }
            });
        }
        Lines {
            child,
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a line for which `f` holds, up to `limit`; the line. Fails the test with what
    /// was seen otherwise.
    pub fn wait_for(
        &mut self,
        limit: std::time::Duration,
        mut f: impl FnMut(&str, &str) -> bool,
    ) -> String {
        let end = std::time::Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((tag, l)) => {
                    self.seen.push((tag, l.clone()));
                    if f(tag, &l) {
                        return l;
                    }
                }
                Err(_) => panic!("not seen within {limit:?}; seen: {:#?}", self.seen),
            }
        }
    }

    /// Closes standard input and waits up to `limit` for the exit; the exit status, with the
    /// rest of the output collected.
    pub fn finish(&mut self, limit: std::time::Duration) -> std::process::ExitStatus {
        drop(self.child.stdin.take());
        self.wait_exit(limit)
    }

    /// Waits up to `limit` for the exit (standard input stays open); the exit status, with the
    /// rest of the output collected.
    pub fn wait_exit(&mut self, limit: std::time::Duration) -> std::process::ExitStatus {
        let end = std::time::Instant::now() + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if std::time::Instant::now() >= end {
                self.child.kill().ok();
                panic!("no exit within {limit:?}; seen: {:#?}", self.seen);
            }
            while let Ok(x) = self.rx.recv_timeout(std::time::Duration::from_millis(50)) {
                self.seen.push(x);
            }
        };
        // The pipes close with the process: take what is left.
        while let Ok(x) = self.rx.recv_timeout(std::time::Duration::from_secs(5)) {
            self.seen.push(x);
        }
        status
    }

    /// The lines seen on standard error, one text.
    pub fn stderr(&self) -> String {
        self.seen
            .iter()
            .filter(|(t, _)| *t == "err")
            .map(|(_, l)| format!("{l}\n"))
            .collect()
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// Checks from a fresh debugger session (a `kdnet repl` that does not break in) that the
/// simulated target sending to `port` with `key` is running: the session's probe finds it not
/// stopped, and the line `heartbeat` it prints only while it runs arrives afterwards.
pub fn assert_target_runs(port: u16, key: &str, heartbeat: &str) {
    let mut repl = Lines::spawn(
        kdnet()
            .args(["repl", "--no-break", "--port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--key-env", "KDNET_TEST_KEY"])
            .args(["--connect-timeout", "60s"])
            .env("KDNET_TEST_KEY", key),
    );
    let limit = std::time::Duration::from_secs(90);
    let l = repl.wait_for(limit, |_, l| {
        l.contains("the target runs") || l.contains("the target is already stopped")
    });
    assert!(l.contains("the target runs"), "{:#?}", repl.seen);
    repl.wait_for(limit, |_, l| l.contains(heartbeat));
    let status = repl.finish(std::time::Duration::from_secs(30));
    assert!(status.success(), "{:#?}", repl.seen);
    assert!(
        repl.stderr().contains("detached; the target runs"),
        "{:#?}",
        repl.seen
    );
}

/// Sends `sig` to `child`.
#[cfg(unix)]
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: signalling a child of this test.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
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
            // A test build on a busy machine may sample slower than a production ceiling.
            "--max-stop",
            "sample=60s,capture=120s",
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

/// The first byte `db ADDR L1`'s text shows (`cc` for an int 3).
pub fn db_byte(out: &str) -> String {
    out.lines()
        .find(|l| l.starts_with("fffff"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no db line: {out}"))
        .to_string()
}
