//! `kdnet mcp` driven by a real MCP client (the official Python SDK, over stdio and over
//! Streamable HTTP) serving a watcher of two simulated machines; and, speaking JSON-RPC by
//! hand, a client that goes away in the middle of a run (the target runs on), an attach to a
//! port nobody offers on (an error in bounded time), and setups that must be refused.

mod common;

use std::io::{BufRead as _, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Lines, Sim, assert_target_runs, free_udp_port, kdnet, temp_dir};
use serde_json::{Value, json};

/// The Python that has the MCP SDK and jsonschema, or None (with a note) when there is none and
/// it is not required.
fn python() -> Option<String> {
    let python = std::env::var("KDNET_PYTHON").unwrap_or_else(|_| "python3".into());
    let have = Command::new(&python)
        .args(["-c", "import mcp, jsonschema"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        assert!(
            std::env::var_os("KDNET_REQUIRE_MCP").is_none(),
            "KDNET_REQUIRE_MCP is set but {python} cannot import mcp and jsonschema"
        );
        eprintln!(
            "NOTE: the MCP client test did not run: {python} lacks the mcp module (pip install mcp jsonschema)"
        );
        return None;
    }
    Some(python)
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// The watcher's targets' states by name (`kdnet ctl list`).
fn states(sock: &Path) -> Value {
    let o = kdnet()
        .args(["ctl", "--control"])
        .arg(sock)
        .args(["--json", "list"])
        .output()
        .unwrap();
    serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
}

fn wait_running(sock: &Path, names: &[&str], limit: Duration) {
    let start = Instant::now();
    loop {
        let v = states(sock);
        let running = v["targets"].as_array().is_some_and(|ts| {
            names.iter().all(|n| {
                ts.iter()
                    .any(|t| t["name"] == *n && t["state"] == "running")
            })
        });
        if running {
            return;
        }
        assert!(start.elapsed() < limit, "not running within {limit:?}: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn run_client(python: &str, args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp_client.py");
    let o = Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success(),
        "the MCP client failed: {err}\n{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let out = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(out.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {out}\n{err}"))
}

fn check_seen(seen: &Value, how: &str) {
    let tools: Vec<&str> = seen["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(tools.len(), 11, "{how}: {tools:?}");
    assert!(
        seen["read_only"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "targets")
    );
    assert_eq!(seen["destructive"], json!(["break_in"]), "{how}");
    assert_eq!(seen["targets"]["hung"], "running", "{how}: {seen}");
    assert_eq!(seen["targets"]["healthy"], "running", "{how}: {seen}");
    // The two held locks of the hang, read from the typed result.
    assert_eq!(seen["locks_ok"], true, "{how}: {seen}");
    assert_eq!(seen["held_locks"], 2, "{how}: {seen}");
    assert_eq!(seen["run_broke_in"], true);
    assert_eq!(
        seen["state_after_run"], "running",
        "{how}: the run let it go on"
    );
    assert!(
        seen["run_text"].as_str().unwrap().starts_with("kd> !locks"),
        "{seen}"
    );
    // `!process 0 7` was stored and read a page at a time.
    assert!(seen["stored_lines"].as_u64().unwrap() > 100, "{seen}");
    assert!(seen["pages"].as_u64().unwrap() >= 2);
    assert!(seen["thread_lines"].as_u64().unwrap() > 10);
    assert!(
        seen["break_in_refused"]
            .as_str()
            .unwrap()
            .contains("--allow-control"),
        "{seen}"
    );
    // The capture's findings: the NBLs the miniport holds, and who holds them.
    assert_eq!(seen["pending_nbls"], 1854, "{how}: {seen}");
    assert!(
        !seen["nbl_holders"].as_array().unwrap().is_empty(),
        "{seen}"
    );
    let bundle = seen["bundle"].as_str().unwrap();
    assert!(Path::new(bundle).join("report.json").is_file());
    assert!(
        seen["bundles"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b == bundle)
    );
    assert_eq!(seen["bundle_findings_nbls"], 1854);
    assert!(!seen["resources"].as_array().unwrap().is_empty());
    assert_eq!(seen["resource_target"], "hung", "{seen}");
    // The event stream saw the break-ins and the capture.
    assert!(seen["events"].as_u64().unwrap() > 0, "{seen}");
    let states: Vec<&str> = seen["event_states"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(states.contains(&"captured"), "{how}: {states:?}");
    assert_eq!(seen["targets_after"]["hung"], "running", "{how}: {seen}");
    // The build, once the target was stopped.
    assert_eq!(seen["builds"]["hung"], 20348, "{how}: {seen}");
}

#[test]
fn an_agent_drives_a_watcher_of_two_machines_over_stdio_and_http() {
    let Some(python) = python() else {
        return;
    };
    let dir = temp_dir("mcp-watch");
    std::fs::write(dir.join("k.key"), "4.4.4.4\n").unwrap();
    let (p1, p2) = (free_udp_port(), free_udp_port());
    let few = ["--resources", "2000"];
    let _hung = Sim::start_for(
        p1,
        "4.4.4.4",
        "600s",
        &[&few[..], &["--scenario", "nbl-hang", "--hang-after", "2s"]].concat(),
    );
    let _healthy = Sim::start_for(
        p2,
        "4.4.4.4",
        "600s",
        &[&few[..], &["--scenario", "healthy"]].concat(),
    );
    let config = dir.join("targets.toml");
    std::fs::write(
        &config,
        format!(
            r#"control = "watch.sock"

[defaults]
out = "bundles"
max_stop = "sample=60s,capture=180s"

[[target]]
name = "hung"
port = {p1}
bind = "127.0.0.1"
key_file = "k.key"

[[target]]
name = "healthy"
port = {p2}
bind = "127.0.0.1"
key_file = "k.key"
"#
        ),
    )
    .unwrap();
    let _watcher = Killed(
        kdnet()
            .current_dir(&dir)
            .args(["watch", "--config"])
            .arg(&config)
            .args(["--control-lease", "1s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let sock = dir.join("watch.sock");
    let start = Instant::now();
    while !sock.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no control socket"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_running(&sock, &["hung", "healthy"], Duration::from_secs(60));
    // The hang begins 2 s after the machine starts.
    std::thread::sleep(Duration::from_secs(3));
    let bin = env!("CARGO_BIN_EXE_kdnet");
    let sock_s = sock.to_str().unwrap();
    let bundles = dir.join("bundles");
    let seen = run_client(
        &python,
        &[
            "stdio",
            bin,
            "mcp",
            "--watch-socket",
            sock_s,
            "--bundles",
            bundles.to_str().unwrap(),
        ],
    );
    check_seen(&seen, "stdio");

    // The same over Streamable HTTP.
    let mut server = Lines::spawn(
        kdnet()
            .args(["mcp", "--http", "127.0.0.1:0", "--watch-socket", sock_s])
            .arg("--bundles")
            .arg(&bundles),
    );
    let line = server.wait_for(Duration::from_secs(30), |t, l| {
        t == "err" && l.contains("serving MCP at ")
    });
    let url = line
        .split("serving MCP at ")
        .nth(1)
        .unwrap()
        .trim()
        .to_string();
    let seen = run_client(&python, &["http", &url]);
    check_seen(&seen, "http");
    // Both targets run on.
    wait_running(&sock, &["hung", "healthy"], Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A JSON-RPC client over a child's stdio.
struct Rpc {
    child: Child,
    out: std::sync::mpsc::Receiver<Value>,
    next: u64,
    /// What the server wrote on standard error.
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Rpc {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Rpc {
        let mut c = kdnet();
        c.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(stdout).lines() {
                let Ok(l) = l else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&l)
                    && tx.send(v).is_err()
                {
                    break;
                }
            }
        });
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let into = log.clone();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(stderr).lines() {
                let Ok(l) = l else { break };
                into.lock().unwrap().push_str(&format!("{l}\n"));
            }
        });
        let mut r = Rpc {
            child,
            out: rx,
            next: 1,
            log,
        };
        let init = r.call(
            "initialize",
            json!({
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": { "name": "test", "version": "0" },
            }),
            Duration::from_secs(30),
        );
        assert!(init["result"]["serverInfo"]["name"] == "kdnet", "{init}");
        r.send(&json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }));
        r
    }

    fn send(&mut self, v: &Value) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{v}").unwrap();
        stdin.flush().unwrap();
    }

    /// Sends a request without waiting; its id.
    fn request(&mut self, method: &str, params: Value) -> u64 {
        let id = self.next;
        self.next += 1;
        self.send(&json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }));
        id
    }

    fn call(&mut self, method: &str, params: Value, limit: Duration) -> Value {
        let id = self.request(method, params);
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.out.recv_timeout(left) {
                Ok(v) if v["id"] == id => return v,
                Ok(_) => {}
                Err(_) => panic!("{method}: no answer within {limit:?}"),
            }
        }
    }

    fn tool(&mut self, name: &str, args: Value, limit: Duration) -> Value {
        self.call(
            "tools/call",
            json!({ "name": name, "arguments": args }),
            limit,
        )["result"]
            .clone()
    }
}

impl Drop for Rpc {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// `kdnet mcp` on stdio with control allowed, its own watcher of the one target at `port`
/// (named `t`), with `env` besides the key; returned once that target runs.
fn mcp_of_one_target(port: u16, key: &str, env: &[(&str, &str)]) -> Rpc {
    let p = port.to_string();
    let mut all = vec![("KDNET_MCP_KEY", key)];
    all.extend_from_slice(env);
    let mut rpc = Rpc::start(
        &[
            "mcp",
            "--port",
            &p,
            "--bind",
            "127.0.0.1",
            "--key-env",
            "KDNET_MCP_KEY",
            "--allow-control",
            "--name",
            "t",
        ],
        &all,
    );
    // The target connects to the server's own watcher.
    let start = Instant::now();
    loop {
        let r = rpc.tool("targets", json!({}), Duration::from_secs(60));
        if r["structuredContent"]["targets"][0]["state"] == "running" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{r}");
        std::thread::sleep(Duration::from_millis(300));
    }
    rpc
}

/// The client goes away (its input ends): the server must end, and well.
fn hang_up_and_wait_for_the_end(rpc: &mut Rpc) {
    drop(rpc.child.stdin.take());
    let end = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = rpc.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < end,
            "the server did not end after its client went away"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_client_gone_mid_run_leaves_the_target_running() {
    let port = free_udp_port();
    let key = "5.6.7.8";
    let _sim = Sim::start_for(
        port,
        key,
        "300s",
        &[
            "--resources",
            "2000",
            "--scenario",
            "nbl-hang",
            "--print-every",
            "1s",
        ],
    );
    let mut rpc = mcp_of_one_target(port, key, &[]);
    // Control, allowed: broken into, a run leaves it stopped, `continue` lets it go on.
    let r = rpc.tool(
        "break_in",
        json!({ "target": "t" }),
        Duration::from_secs(60),
    );
    assert_eq!(r["structuredContent"]["state"]["state"], "stopped", "{r}");
    let r = rpc.tool(
        "run",
        json!({ "target": "t", "command": "lm" }),
        Duration::from_secs(60),
    );
    assert_eq!(r["structuredContent"]["broke_in"], false, "{r}");
    assert_eq!(r["structuredContent"]["state"]["state"], "stopped", "{r}");
    let r = rpc.tool(
        "continue",
        json!({ "target": "t" }),
        Duration::from_secs(60),
    );
    assert_eq!(r["structuredContent"]["state"]["state"], "running", "{r}");
    // A long run, and the client goes away in the middle of it.
    rpc.request(
        "tools/call",
        json!({ "name": "run", "arguments": { "target": "t", "command": "!process 0 7; !stacks 2; !process 0 7", "timeout_ms": 120000 } }),
    );
    std::thread::sleep(Duration::from_millis(700));
    hang_up_and_wait_for_the_end(&mut rpc);
    // A fresh session finds the target running, and its DbgPrint line arrives.
    assert_target_runs(port, key, "ndis: miniport");
}

#[test]
fn no_target_an_exposed_address_and_control_are_refused_or_bounded() {
    // An attach to a port nobody offers on: the run is an error, in bounded time.
    let port = free_udp_port();
    let p = port.to_string();
    // With the debug log on: the key must not be in it either.
    let mut rpc = Rpc::start(
        &[
            "-vv",
            "mcp",
            "--port",
            &p,
            "--bind",
            "127.0.0.1",
            "--key-env",
            "KDNET_MCP_KEY",
        ],
        &[("KDNET_MCP_KEY", "1.2.3.4")],
    );
    let t = Instant::now();
    let r = rpc.tool(
        "run",
        json!({ "target": "target", "command": "lm" }),
        Duration::from_secs(60),
    );
    assert_eq!(r["isError"], true, "{r}");
    let text = r["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("not connected"), "{text}");
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    // The key is nowhere in what the server says.
    let all = rpc
        .tool("targets", json!({}), Duration::from_secs(30))
        .to_string();
    assert!(!all.contains("1.2.3.4"), "{all}");
    // Control without --allow-control.
    let r = rpc.tool(
        "break_in",
        json!({ "target": "target" }),
        Duration::from_secs(30),
    );
    assert_eq!(r["isError"], true);
    assert!(r.to_string().contains("--allow-control"), "{r}");
    // The client goes: the server ends by itself.
    drop(rpc.child.stdin.take());
    let end = Instant::now() + Duration::from_secs(60);
    while rpc.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < end,
            "the server did not end after its client went away"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = rpc.log.lock().unwrap().clone();
    assert!(!log.contains("1.2.3.4"), "the key in the log: {log}");
    drop(rpc);

    // HTTP on an address others reach, without a token: refused before anything is served.
    let o = kdnet()
        .args(["mcp", "--http", "0.0.0.0:0", "--dump", "x.dmp"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a loopback address"));
    let o = kdnet()
        .args(["mcp", "--listen", "0.0.0.0:0", "--dump", "x.dmp"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--token-file"));
    // Nothing to serve.
    let o = kdnet().arg("mcp").output().unwrap();
    assert_eq!(o.status.code(), Some(3));
}

#[test]
fn a_client_gone_in_the_middle_of_a_g_leaves_no_breakpoint_and_the_target_running() {
    let port = free_udp_port();
    let key = "5.6.7.9";
    let _sim = Sim::start_for(port, key, "300s", &["--scenario", "bindflt-race"]);
    let state = common::temp_dir("mcp-g");
    let p = port.to_string();
    let state_s = state.display().to_string();
    let mut rpc = mcp_of_one_target(port, key, &[("KDNET_STATE_DIR", &state_s)]);
    // A g on a breakpoint nothing reaches; the client goes away while it waits.
    rpc.request(
        "tools/call",
        json!({ "name": "run", "arguments": { "target": "t", "command": "bp nt!KeBugCheckEx; g", "timeout_ms": 120000 } }),
    );
    let written = || std::fs::read_dir(&state).map(|d| d.count()).unwrap_or(0);
    let start = Instant::now();
    while written() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the g never wrote its breakpoint"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    hang_up_and_wait_for_the_end(&mut rpc);
    assert_eq!(written(), 0, "the record of the breakpoint stays");
    // A fresh session finds the original instruction, and the target running.
    let o = common::kdnet()
        .args([
            "run",
            "--port",
            &p,
            "--bind",
            "127.0.0.1",
            "--key-env",
            "KDNET_MCP_KEY",
        ])
        .args(["-c", "db nt!KeBugCheckEx L1"])
        .env("KDNET_MCP_KEY", key)
        .env("KDNET_STATE_DIR", &state)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{out}");
    let byte = common::db_byte(&out);
    assert_ne!(byte, "cc", "an int 3 left: {out}");
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("left breakpoints"),
        "nothing to recover"
    );
    assert_target_runs(port, key, "dotnet: open of");
    std::fs::remove_dir_all(&state).ok();
}
