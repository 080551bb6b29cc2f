//! The watcher's control socket: a Unix domain socket (owner-only) speaking JSON lines, through
//! which `kdnet ctl`, `kdnet capture` or any program lists the targets, reads the event
//! stream, breaks in, runs commands, lets a target go on, or asks for a capture.
//!
//! Requests, one JSON object per line:
//! `{"op":"list"}`, `{"op":"events"}` (then one line per event until the client leaves),
//! `{"op":"capture","target":"NAME"}`, `{"op":"break","target":"NAME"}`,
//! `{"op":"run","target":"NAME","command":"!locks"}` (with `"max_seconds":N` to bound it),
//! `{"op":"continue","target":"NAME"}`.
//! Each answer is one line: `{"ok":true,…}` or `{"ok":false,"error":"…"}`. Requests to one
//! target are carried out one at a time, in the order they arrive.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

use super::hub::Hub;
use super::target::{Client, Request};

/// The longest request line accepted.
const MAX_LINE: usize = 64 * 1024;

/// The requester of what no control client asked for (a signal).
pub const NO_CLIENT: Client = 0;

/// Numbers the control clients (connections), from 1.
static NEXT_CLIENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Where the socket is when not given: `$XDG_RUNTIME_DIR/kdnet/watch.sock`, or
/// `/tmp/kdnet-UID/watch.sock`.
pub fn default_path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("kdnet").join("watch.sock"),
        _ => {
            #[cfg(unix)]
            let uid = crate::sys::uid();
            #[cfg(not(unix))]
            let uid = 0;
            std::env::temp_dir()
                .join(format!("kdnet-{uid}"))
                .join("watch.sock")
        }
    }
}

/// The targets' request queues by name.
pub type Targets = Arc<BTreeMap<String, mpsc::Sender<Request>>>;

#[cfg(unix)]
/// Refuses a directory for the control socket that is not the user's own, or that others may
/// write to (they could put their own socket in its place).
pub fn check_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let uid = crate::sys::uid();
    if !m.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if m.uid() != uid {
        return Err(format!(
            "the control socket's directory {} belongs to user {}, not to this user ({uid}): \
refusing it; give --control PATH in a directory of your own",
            dir.display(),
            m.uid()
        ));
    }
    if m.mode() & 0o022 != 0 {
        return Err(format!(
            "the control socket's directory {} can be written by others (mode {:o}): refusing \
it; make it private (chmod go-w) or give --control PATH in a directory of your own",
            dir.display(),
            m.mode() & 0o7777
        ));
    }
    Ok(())
}

#[cfg(unix)]
/// Listens on `path` (owner-only) in a directory that is the user's own and that only the user
/// may write to (made so when this creates it); a socket left by a watcher that died is
/// replaced, one in use is an error.
pub async fn listen(path: &Path) -> Result<tokio::net::UnixListener, String> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    check_private_dir(dir)?;
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(format!(
                "another watcher is listening on {}; give --control PATH",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("removing the stale socket {}: {e}", path.display()))?;
    }
    // Owner-only from the start: no moment where others could connect.
    let old = crate::sys::umask(0o177);
    let l = tokio::net::UnixListener::bind(path);
    crate::sys::umask(old);
    let l = l.map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    Ok(l)
}

#[cfg(unix)]
/// Serves clients until the listener fails.
pub async fn serve(l: tokio::net::UnixListener, hub: Arc<Hub>, targets: Targets) {
    loop {
        let Ok((stream, _)) = l.accept().await else {
            return;
        };
        let hub = hub.clone();
        let targets = targets.clone();
        let client = NEXT_CLIENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            let counted = hub.metrics().client();
            serve_client(stream, client, &hub, &targets).await;
            drop(counted);
            // Gone: what it holds is let go on after the lease.
            for tx in targets.values() {
                let _ = tx.send(Request::Release(client)).await;
            }
        });
    }
}

#[cfg(unix)]
async fn serve_client(
    stream: tokio::net::UnixStream,
    client: Client,
    hub: &Hub,
    targets: &Targets,
) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    loop {
        let line = match read_line(&mut r, MAX_LINE).await {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(e) => {
                let _ = reply(&mut w, &json!({ "ok": false, "error": e })).await;
                return;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let req: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                let msg = json!({ "ok": false, "error": format!("not JSON: {e}") });
                if reply(&mut w, &msg).await.is_err() {
                    return;
                }
                continue;
            }
        };
        if req["op"] == "events" {
            stream_events(hub, &mut w).await;
            return;
        }
        // A client that goes away while its request runs (a `g` waiting for a breakpoint)
        // cancels it: the run stops the target, takes its breakpoints out and ends. Gone is
        // the socket closed at the other end (a hang-up), not a client that only shut its
        // sending side after its request.
        let gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let answer = {
            let work = handle(&req, hub, targets, client, gone.clone());
            tokio::pin!(work);
            let hung_up = async {
                loop {
                    match w.ready(tokio::io::Interest::WRITABLE).await {
                        Ok(r) if r.is_write_closed() => return,
                        Err(_) => return,
                        Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
                    }
                }
            };
            tokio::pin!(hung_up);
            let mut watching = true;
            loop {
                tokio::select! {
                    a = &mut work => break a,
                    () = &mut hung_up, if watching => {
                        watching = false;
                        gone.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            }
        };
        if w.write_all(format!("{answer}\n").as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The longest answer a client accepts: a `run` answer is bounded by the watcher's output
/// limit (and each result within it by its own), with room for the JSON around them.
pub(crate) const MAX_ANSWER: usize = super::target::MAX_RUN_OUTPUT * 2 + (1 << 20);

/// Reads one line of at most `max` bytes; None at the end.
pub(crate) async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<String>, String> {
    let mut buf = Vec::new();
    loop {
        let chunk = r.fill_buf().await.map_err(|e| e.to_string())?;
        if chunk.is_empty() {
            return Ok((!buf.is_empty()).then(|| String::from_utf8_lossy(&buf).into_owned()));
        }
        let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        buf.extend_from_slice(&chunk[..take]);
        r.consume(take);
        if buf.len() > max {
            return Err(format!("line longer than {max} bytes"));
        }
        if done {
            buf.pop();
            return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
        }
    }
}

async fn reply<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, v: &Value) -> std::io::Result<()> {
    w.write_all(format!("{v}\n").as_bytes()).await
}

async fn stream_events<W: tokio::io::AsyncWrite + Unpin>(hub: &Hub, w: &mut W) {
    let mut rx = hub.subscribe();
    if reply(w, &json!({ "ok": true, "streaming": true }))
        .await
        .is_err()
    {
        return;
    }
    loop {
        match rx.recv().await {
            Ok(v) => {
                if reply(w, &v).await.is_err() {
                    return;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                let _ = reply(w, &json!({ "lagged": n })).await;
            }
            Err(_) => return,
        }
    }
}

/// The answer to one request, as the line sent (without its newline).
async fn handle(
    req: &Value,
    hub: &Hub,
    targets: &Targets,
    client: Client,
    gone: Arc<std::sync::atomic::AtomicBool>,
) -> String {
    match handle_value(req, hub, targets, client, gone).await {
        Answer::Value(v) => v.to_string(),
        Answer::Results(name, raw) => format!(
            "{{\"ok\":true,\"target\":{},\"results\":{raw}}}",
            Value::String(name)
        ),
    }
}

enum Answer {
    Value(Value),
    /// A `run`'s results (a JSON array, as text) for a target.
    Results(String, String),
}

impl From<Value> for Answer {
    fn from(v: Value) -> Answer {
        Answer::Value(v)
    }
}

async fn handle_value(
    req: &Value,
    hub: &Hub,
    targets: &Targets,
    client: Client,
    gone: Arc<std::sync::atomic::AtomicBool>,
) -> Answer {
    let op = req["op"].as_str().unwrap_or("");
    if op == "list" {
        return json!({ "ok": true, "targets": hub.list() }).into();
    }
    let ops = ["capture", "break", "continue", "run"];
    if !ops.contains(&op) {
        return json!({ "ok": false, "error": format!("unknown op {op:?}: list, events, capture, break, run, continue") }).into();
    }
    let Some(name) = req["target"].as_str() else {
        return json!({ "ok": false, "error": format!("{op}: give \"target\"") }).into();
    };
    let Some(tx) = targets.get(name) else {
        let known: Vec<&String> = targets.keys().collect();
        return json!({ "ok": false, "error": format!("no target {name:?} (watching {known:?})") })
            .into();
    };
    let ended = || json!({ "ok": false, "error": "the target's task has ended" }).into();
    if op == "run" {
        let command = match req["command"].as_str() {
            Some(c) if !c.trim().is_empty() => c.to_string(),
            _ => return json!({ "ok": false, "error": "run: give \"command\"" }).into(),
        };
        // A client may bound the run: past the time, the command under way stops with what
        // it has and the rest is not run (each result says so).
        let within = match req.get("max_seconds") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_f64() {
                Some(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => {
                    Some(std::time::Duration::from_secs_f64(s))
                }
                _ => {
                    return json!({ "ok": false, "error": "run: \"max_seconds\" must be a number of seconds above 0 and at most 86400" }).into();
                }
            },
        };
        let (rtx, rrx) = oneshot::channel();
        if tx
            .send(Request::Run(client, command, within, gone, rtx))
            .await
            .is_err()
        {
            return ended();
        }
        return match rrx.await {
            Ok(Ok(raw)) => Answer::Results(name.to_string(), raw),
            Ok(Err(e)) => json!({ "ok": false, "target": name, "error": e }).into(),
            Err(_) => ended(),
        };
    }
    let (rtx, rrx) = oneshot::channel();
    let r = match op {
        "capture" => Request::Capture(client, rtx),
        "break" => Request::Break(client, rtx),
        _ => Request::Continue(rtx),
    };
    if tx.send(r).await.is_err() {
        return ended();
    }
    match rrx.await {
        Ok(Ok(v)) => {
            let mut out = json!({ "ok": true, "target": name });
            if let (Some(m), Value::Object(x)) = (out.as_object_mut(), v) {
                m.extend(x);
            }
            out.into()
        }
        Ok(Err(e)) => json!({ "ok": false, "target": name, "error": e }).into(),
        Err(_) => ended(),
    }
}

/// `kdnet ctl` and `kdnet capture`.
#[derive(clap::Args, Debug)]
pub struct CtlArgs {
    /// The watcher's control socket (default: $XDG_RUNTIME_DIR/kdnet/watch.sock or
    /// /tmp/kdnet-UID/watch.sock).
    #[arg(long)]
    control: Option<PathBuf>,
    /// Print the raw JSON answers.
    #[arg(long)]
    json: bool,
    /// `list`, `events`, `capture NAME`, `break NAME`, `continue NAME`, `run NAME COMMAND…`.
    #[arg(required = true, num_args = 1..)]
    words: Vec<String>,
}

impl CtlArgs {
    /// `kdnet capture NAME`.
    pub fn capture(name: String, control: Option<PathBuf>, json: bool) -> CtlArgs {
        CtlArgs {
            control,
            json,
            words: vec!["capture".into(), name],
        }
    }
}

/// Builds the request for `kdnet ctl WORDS…`.
pub fn request_of(words: &[String]) -> Result<Value, String> {
    let name = || {
        words
            .get(1)
            .cloned()
            .ok_or_else(|| format!("{}: give the target's name", words[0]))
    };
    Ok(match words.first().map(String::as_str) {
        Some("list") => json!({ "op": "list" }),
        Some("events") => json!({ "op": "events" }),
        Some(op @ ("capture" | "break" | "continue")) => json!({ "op": op, "target": name()? }),
        Some("run") => {
            let command = words.get(2..).map(|w| w.join(" ")).unwrap_or_default();
            if command.trim().is_empty() {
                return Err("run: give the command after the target's name".into());
            }
            json!({ "op": "run", "target": name()?, "command": command })
        }
        other => {
            return Err(format!(
                "unknown request {:?}: list, events, capture NAME, break NAME, continue NAME, run NAME COMMAND",
                other.unwrap_or("")
            ));
        }
    })
}

fn print_answer(v: &Value, json_out: bool) {
    if json_out {
        println!("{v}");
        return;
    }
    if let Some(ts) = v["targets"].as_array() {
        println!(
            "{:<20} {:<16} {:<22} {:>8}  detail",
            "target", "state", "listen", "captures"
        );
        for t in ts {
            println!(
                "{:<20} {:<16} {:<22} {:>8}  {}",
                t["name"].as_str().unwrap_or(""),
                t["state"].as_str().unwrap_or(""),
                t["listen"].as_str().unwrap_or(""),
                t["captures"],
                t["detail"].as_str().unwrap_or("")
            );
        }
    } else if let Some(rs) = v["results"].as_array() {
        for r in rs {
            if let Some(c) = r["command"].as_str() {
                println!("kd> {c}");
            }
            if let Some(t) = r["text"].as_str() {
                print!("{t}");
            }
            if let Some(e) = r["error"].as_str() {
                println!("error: {e}");
            }
            if r["type"] == "echo"
                && let Some(e) = r["result"]["text"].as_str()
            {
                println!("{e}");
            }
        }
    } else if let Some(b) = v["bundle"].as_str() {
        println!("bundle: {b}");
        for f in v["findings"].as_array().into_iter().flatten() {
            println!("  - {}", f.as_str().unwrap_or(""));
        }
    } else {
        println!("{v}");
    }
}

#[cfg(unix)]
/// Sends one request and prints the answer (or the event stream).
pub async fn run(a: CtlArgs) -> anyhow::Result<u8> {
    let req = match request_of(&a.words) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kdnet ctl: {e}");
            return Ok(crate::exit::BAD_ARGUMENTS);
        }
    };
    let path = a.control.unwrap_or_else(default_path);
    let stream = match tokio::net::UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "kdnet ctl: no watcher on {}: {e} (is `kdnet watch` running? give --control PATH)",
                path.display()
            );
            return Ok(crate::exit::NO_CONNECTION);
        }
    };
    let (r, mut w) = stream.into_split();
    reply(&mut w, &req).await?;
    let mut r = BufReader::new(r);
    let streaming = req["op"] == "events";
    let mut first = true;
    loop {
        let line = match read_line(&mut r, MAX_ANSWER).await {
            Ok(Some(l)) => l,
            Ok(None) => {
                if first {
                    eprintln!("kdnet ctl: the watcher closed the connection");
                    return Ok(crate::exit::FAILED);
                }
                return Ok(crate::exit::OK);
            }
            Err(e) => {
                eprintln!("kdnet ctl: {e}");
                return Ok(crate::exit::FAILED);
            }
        };
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::String(line));
        if first && v["ok"] == false {
            eprintln!("kdnet ctl: {}", v["error"].as_str().unwrap_or("failed"));
            if a.json {
                println!("{v}");
            }
            return Ok(crate::exit::FAILED);
        }
        if streaming {
            if !first {
                println!("{v}");
            }
        } else {
            print_answer(&v, a.json);
            return Ok(crate::exit::OK);
        }
        first = false;
    }
}

#[cfg(not(unix))]
pub async fn run(_: CtlArgs) -> anyhow::Result<u8> {
    eprintln!("kdnet ctl: the control socket needs a Unix domain socket (Linux)");
    Ok(crate::exit::FAILED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_make_requests() {
        let w = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(request_of(&w("list")).unwrap(), json!({ "op": "list" }));
        assert_eq!(
            request_of(&w("run web-01 !locks -v")).unwrap(),
            json!({ "op": "run", "target": "web-01", "command": "!locks -v" })
        );
        assert!(request_of(&w("capture")).unwrap_err().contains("name"));
        assert!(request_of(&w("run web-01")).is_err());
        assert!(request_of(&w("reboot x")).unwrap_err().contains("unknown"));
    }

    /// A client that shuts its sending side after a `run` gets its answer; one that hangs up
    /// while its `run` is under way cancels it.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_hang_up_cancels_a_run_and_a_half_close_does_not() {
        use std::time::Duration;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let hub = Arc::new(Hub::new(None));
        let (tx, mut rx) = mpsc::channel(4);
        let targets: Targets = Arc::new([("t".to_string(), tx)].into_iter().collect());
        let request = b"{\"op\":\"run\",\"target\":\"t\",\"command\":\"g\"}\n";
        for hang_up in [false, true] {
            let (mut client, server) = tokio::net::UnixStream::pair().unwrap();
            let (h, t) = (hub.clone(), targets.clone());
            let served = tokio::spawn(async move { serve_client(server, 7, &h, &t).await });
            client.write_all(request).await.unwrap();
            let Some(Request::Run(_, _, _, gone, reply)) = rx.recv().await else {
                panic!("no run request")
            };
            if hang_up {
                drop(client);
                let start = std::time::Instant::now();
                while !gone.load(std::sync::atomic::Ordering::SeqCst) {
                    assert!(start.elapsed() < Duration::from_secs(10), "never cancelled");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let _ = reply.send(Err("cancelled".into()));
            } else {
                client.shutdown().await.unwrap();
                // Several of the watch's looks at the socket go by: not gone.
                tokio::time::sleep(Duration::from_millis(700)).await;
                assert!(!gone.load(std::sync::atomic::Ordering::SeqCst));
                reply.send(Ok("[]".into())).unwrap();
                let mut answer = String::new();
                client.read_to_string(&mut answer).await.unwrap();
                let v: Value = serde_json::from_str(answer.trim()).unwrap();
                assert_eq!(v["ok"], true, "{v}");
            }
            served.await.unwrap();
        }
    }

    #[tokio::test]
    async fn long_lines_are_refused() {
        let data = vec![b'x'; MAX_LINE + 10];
        let mut r = BufReader::new(&data[..]);
        assert!(
            read_line(&mut r, MAX_LINE)
                .await
                .unwrap_err()
                .contains("longer")
        );
        let mut r = BufReader::new(&b"{\"op\":\"list\"}\nrest"[..]);
        assert_eq!(
            read_line(&mut r, MAX_LINE).await.unwrap().unwrap(),
            "{\"op\":\"list\"}"
        );
        assert_eq!(read_line(&mut r, MAX_LINE).await.unwrap().unwrap(), "rest");
        assert_eq!(read_line(&mut r, MAX_LINE).await.unwrap(), None);
    }
}
