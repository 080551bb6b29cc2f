//! The interactive prompt, driven as a person drives it: through a pseudo-terminal (Ctrl-C,
//! tab completion, history recalled with the arrow key) and through a pipe (the same commands
//! from a file), against the simulated target.

mod common;

use std::io::{Read, Write};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Sim, free_udp_port, kdnet, temp_dir};

/// A child process on a pseudo-terminal, with everything it printed so far.
#[cfg(unix)]
struct Pty {
    master: std::fs::File,
    child: Child,
    seen: Arc<Mutex<String>>,
    /// How much of `seen` earlier expectations consumed.
    from: usize,
}

#[cfg(unix)]
impl Pty {
    fn spawn(cmd: &mut std::process::Command) -> Pty {
        use std::os::fd::FromRawFd;
        use std::os::unix::process::CommandExt;
        let (mut m, mut s) = (0, 0);
        let size = libc::winsize {
            ws_row: 50,
            ws_col: 200,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty writes two descriptors it opened into m and s.
        let r = unsafe {
            libc::openpty(
                &mut m,
                &mut s,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(r, 0, "openpty failed");
        // SAFETY: both descriptors were just opened and are owned here.
        let (master, slave) =
            unsafe { (std::fs::File::from_raw_fd(m), std::fs::File::from_raw_fd(s)) };
        // SAFETY: only async-signal-safe calls between fork and exec: a new session whose
        // controlling terminal is the pseudo-terminal, so Ctrl-C becomes SIGINT as at a console.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave))
            .spawn()
            .unwrap();
        let seen = Arc::new(Mutex::new(String::new()));
        let mut reader = master.try_clone().unwrap();
        let s2 = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        s2.lock().unwrap().push_str(&format!("[read error: {e}]"));
                        break;
                    }
                };
                s2.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Pty {
            master,
            child,
            seen,
            from: 0,
        }
    }

    /// Types `s` a key at a time, as a person does.
    fn send(&mut self, s: &str) {
        for c in s.chars() {
            let mut b = [0u8; 4];
            self.master
                .write_all(c.encode_utf8(&mut b).as_bytes())
                .unwrap();
            self.master.flush().unwrap();
            std::thread::sleep(Duration::from_millis(15));
        }
    }

    /// Waits until `needle` appears after what earlier calls matched.
    fn expect(&mut self, needle: &str, within: Duration) {
        let until = Instant::now() + within;
        loop {
            {
                let s = self.seen.lock().unwrap();
                if let Some(i) = s[self.from..].find(needle) {
                    self.from += i + needle.len();
                    return;
                }
            }
            if Instant::now() > until {
                let s = self.seen.lock().unwrap();
                panic!(
                    "{needle:?} did not appear within {within:?}; after the last match:\n{:?}\nall:\n{:?}",
                    &s[self.from..],
                    &s[..]
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait(&mut self, within: Duration) -> Option<i32> {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.kill().ok();
        panic!("the prompt did not exit");
    }
}

#[cfg(unix)]
impl Drop for Pty {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

#[cfg(unix)]
#[test]
fn at_a_terminal_ctrl_c_breaks_in_and_cancels_tab_completes_and_history_persists() {
    let port = free_udp_port();
    // A slow link (20 ms round trips) makes !locks over 84,372 resources take a minute: time
    // to cancel it.
    let _sim = Sim::start(
        port,
        "2.7.1.8",
        &[
            "--scenario",
            "deadlock",
            "--latency",
            "10ms",
            "--print-every",
            "300ms",
        ],
    );
    let dir = temp_dir("repl-pty");
    let history = dir.join("history");
    let long = Duration::from_secs(60);
    let repl = |extra: &[&str]| {
        let mut c = kdnet();
        c.args(["repl", "-k", &format!("net:port={port},key=2.7.1.8")])
            .args(["--bind", "127.0.0.1", "--connect-timeout", "30s"])
            .arg("--history")
            .arg(&history)
            .args(extra)
            .env("TERM", "xterm");
        c
    };
    let mut p = Pty::spawn(&mut repl(&["--no-break"]));
    p.expect("Connected to target 127.0.0.1", long);
    p.expect("running> ", long);
    // Ctrl-C at the prompt of a running target breaks in.
    p.send("\x03");
    p.expect("stopped on processor", long);
    p.expect("Kernel base = ", long);
    p.expect("0: kd> ", long);
    // Ctrl-C during a long command (nothing cached yet, 20 ms a round trip) cancels the
    // command, not the session.
    p.send("!locks\r");
    std::thread::sleep(Duration::from_millis(1500));
    p.send("\x03");
    p.expect("cancelled", long);
    p.expect("0: kd> ", long);
    p.send("r\r");
    p.expect("rip=", long);
    p.expect("0: kd> ", long);
    // Tab completes an extension and a module!symbol (what the line became shows in what ran:
    // `!runn` and `nt!PsActiveProcessH` alone are errors).
    p.send("!runn\t\r");
    p.expect("System Processors: ", long);
    p.expect("0: kd> ", long);
    p.send("? nt!PsActiveProcessH\t\r");
    p.expect("Evaluate expression: ", long);
    p.expect("0: kd> ", long);
    // g lets it run. Its DbgPrint lines appear above the line being typed, which survives.
    p.send("g\r");
    p.expect("the target runs", long);
    p.expect("running> ", long);
    p.send(".bre");
    p.expect("vmcompute: container 5f1c0a: waiting for CimFS mount", long);
    p.expect("running> .bre", long);
    p.send("ak\r");
    p.expect("stopped on processor", long);
    p.expect("0: kd> ", long);
    // Ctrl-C stops it too.
    p.send("g\r");
    p.expect("running> ", long);
    p.send("\x03");
    p.expect("stopped on processor", long);
    p.expect("0: kd> ", long);
    // q lets the target go on.
    p.send("q\r");
    p.expect("detached; the target continues", long);
    assert_eq!(p.wait(long), Some(0));
    drop(p);
    let saved = std::fs::read_to_string(&history).unwrap();
    assert!(saved.lines().any(|l| l == "!running"), "{saved}");
    assert_eq!(saved.lines().last(), Some("q"));

    // Next time: the arrow key recalls lines of the last run (the second step back is its `q`).
    // The target was left running, so .break (after --no-break) really stops it.
    let mut p = Pty::spawn(&mut repl(&["--no-break"]));
    p.expect("running> ", long);
    p.send(".break\r");
    p.expect("stopped on processor", long);
    p.expect("0: kd> ", long);
    p.send("\x1b[A\x1b[A\r");
    p.expect("detached; the target continues", long);
    assert_eq!(p.wait(long), Some(0));
    std::fs::remove_dir_all(dir).ok();
}

fn piped(args: &[&str], input: &str) -> (String, String, Option<i32>) {
    let mut child = kdnet()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
        o.status.code(),
    )
}

#[test]
fn piped_input_runs_the_same_language_and_leaves_the_target_running() {
    let port = free_udp_port();
    let _sim = Sim::start(port, "1.6.1.8", &["--resources", "800"]);
    let dir = temp_dir("repl-pipe");
    let key = dir.join("key");
    std::fs::write(&key, "1.6.1.8\n").unwrap();
    let args = |extra: &'static [&'static str]| {
        let mut v: Vec<String> = vec![
            "repl".into(),
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--key-file".into(),
            key.display().to_string(),
            "--history".into(),
            dir.join("h").display().to_string(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let a = args(&[]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let (out, err, code) = piped(
        &a,
        "$v = vertarget\n.echo build $v.build\ng\n.help\nk\n.break\n.help !locks\n$h = .help lm\n.echo usage $h.commands[0].usage\n.if ($v.build == 0n20348) { .echo right build }\n.reboot\n.break\n$w = vertarget\n.echo base again $w.kernel_base\nq\n",
    );
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("build 20348"), "{out}");
    assert!(out.contains("right build"), "{out}");
    // .help from the registry, also while the target runs (it needs none), and as data.
    assert!(out.contains("Commands (.help NAME for one):"), "{out}");
    assert!(out.contains("At the prompt: g (continue)"), "{out}");
    assert!(out.contains("!locks [-v]"), "{out}");
    assert!(
        out.contains("usage lm [v|f|n|t|l|e|k|u|o…] [a ADDR] [m PATTERN]"),
        "{out}"
    );
    // .reboot waits for the new boot's handshake; the model is read again after it.
    assert!(err.contains("the target is back"), "{err}");
    assert!(out.contains("base again 0xfffff8"), "{out}");
    assert_eq!(out.matches("Kernel symbols: built-in").count(), 2, "{out}");
    assert!(err.contains("the target runs"), "{err}");
    assert!(
        err.contains("the target is running; Ctrl-C or .break"),
        "{err}"
    );
    assert!(err.contains("detached; the target continues"), "{err}");
    // It was left running: a second prompt that does not break in finds it running.
    let a = args(&["--no-break", "--json"]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let (out, err, code) = piped(&a, ".break\nr\nqs\n");
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(err.contains("stopped on processor"), "{err}");
    assert!(!err.contains("already stopped"), "{err}");
    let r: serde_json::Value = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["command"] == "r")
        .expect("r as JSON");
    assert!(kdnet_commands::hex::parse(&r["result"]["rip"]).unwrap() > 0);
    assert!(err.contains("the target stays stopped"), "{err}");
    // qs left it stopped: the next prompt finds it so without breaking in.
    let (_, err, _) = piped(&a, ".break\nq\n");
    assert!(
        err.contains("the target is already stopped (Break instruction"),
        "{err}"
    );
    assert!(
        err.contains("kdnet: the target is already stopped\n"),
        "{err}"
    );
    assert!(err.contains("detached; the target continues"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_wrong_key_or_no_target_is_told_apart_and_exits_2() {
    let port = free_udp_port();
    let _sim = Sim::start(port, "1.1.1.1", &["--resources", "200"]);
    let (_, err, code) = piped(
        &[
            "repl",
            "-k",
            &format!("net:port={port},key=2.2.2.2"),
            "--bind",
            "127.0.0.1",
            "--connect-timeout",
            "4s",
        ],
        "",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("the key is probably wrong"), "{err}");
    let (_, err, code) = piped(
        &[
            "repl",
            "-k",
            &format!("net:port={},key=2.2.2.2", free_udp_port()),
            "--bind",
            "127.0.0.1",
            "--connect-timeout",
            "1s",
        ],
        "",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no KDNET offer arrived"), "{err}");
    // Bad arguments are 3.
    let (_, err, code) = piped(&["repl", "-k", "com:port=com1"], "");
    assert_eq!(code, Some(3), "{err}");
}
