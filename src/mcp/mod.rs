//! `kdnet mcp`: the debugger as a Model Context Protocol server, for agents and programs.
//!
//! It serves running watchers (`--watch-socket`, through their control sockets: all their
//! targets, their events and bundles), a target it attaches itself (`--port` and a key: a
//! watcher of its own, whose control socket only this process can reach) and dumps (`--dump`,
//! or `open_dump`). Over stdio by default, or Streamable HTTP (`--http`, loopback only; another
//! address only with `--listen` and a bearer token from a file). A client that goes away, or
//! a server that stops, never leaves a target stopped: the watcher lets go on what this
//! server broke into (the attached target at once, a running watcher's after its lease).

pub mod pages;
pub mod server;
pub mod sources;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use rmcp::ServiceExt as _;

use crate::connect::ConnectArgs;
use crate::exit;
use server::{Server, Settings};
use sources::{Dump, Events, Watcher};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A running watcher's control socket (`kdnet watch`); may be given more than once.
    #[arg(long, value_name = "PATH")]
    watch_socket: Vec<PathBuf>,
    /// Attach a target itself (with --port and a key, or -k net:…).
    #[command(flatten)]
    connect: ConnectArgs,
    /// The attached target's name.
    #[arg(long, default_value = "target")]
    name: String,
    /// Where the attached target's bundles go [default: kdnet-captures].
    #[arg(long)]
    out: Option<PathBuf>,
    /// A crash dump to serve; may be given more than once.
    #[arg(long, value_name = "FILE")]
    dump: Vec<PathBuf>,
    /// Symbol path in WinDbg's syntax (`srv*CACHE*URL;DIR`); _NT_SYMBOL_PATH is added.
    #[arg(long)]
    symbols: Option<String>,
    /// Also look for bundles here (the watchers' bundle directories are found by themselves
    /// once they have written one).
    #[arg(long, value_name = "DIR")]
    bundles: Vec<PathBuf>,
    /// Serve Streamable HTTP at http://ADDRESS/mcp instead of stdio: a loopback address.
    #[arg(long, value_name = "ADDRESS", conflicts_with = "listen")]
    http: Option<SocketAddr>,
    /// Serve Streamable HTTP on an address that is not loopback: needs --token-file (clients
    /// send `Authorization: Bearer TOKEN`).
    #[arg(long, value_name = "ADDRESS")]
    listen: Option<SocketAddr>,
    /// The bearer token clients of --listen (or --http) must send, read from this file.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Allow control: break_in (which leaves a target stopped), and commands that change a
    /// target or write files on this host.
    #[arg(long)]
    allow_control: bool,
    /// Results larger than this many bytes of JSON are stored and summarised (page them with
    /// `output`).
    #[arg(long, default_value_t = 64 * 1024)]
    max_result_bytes: usize,
}

/// Where HTTP is served, and the token it needs (if any).
struct HttpPlan {
    addr: SocketAddr,
    token: Option<String>,
}

/// Checks the HTTP options: loopback with --http; another address only with --listen and a
/// token.
fn http_plan(a: &Args) -> Result<Option<HttpPlan>, String> {
    let token = match &a.token_file {
        Some(p) => {
            let t = std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read the token file {}: {e}", p.display()))?;
            let t = t.trim().to_string();
            if t.len() < 16 {
                return Err(format!(
                    "the token in {} is shorter than 16 characters: refusing it",
                    p.display()
                ));
            }
            Some(t)
        }
        None => None,
    };
    match (a.http, a.listen) {
        (Some(addr), None) => {
            if !addr.ip().is_loopback() {
                return Err(format!(
                    "--http {addr} is not a loopback address: use --listen {addr} with --token-file to serve others"
                ));
            }
            Ok(Some(HttpPlan { addr, token }))
        }
        (None, Some(addr)) => match token {
            Some(token) => Ok(Some(HttpPlan {
                addr,
                token: Some(token),
            })),
            None => Err(format!(
                "--listen {addr} needs --token-file: anyone who reaches the address could drive the debugger"
            )),
        },
        (None, None) if a.token_file.is_some() => {
            Err("--token-file goes with --http or --listen".into())
        }
        _ => Ok(None),
    }
}

pub async fn run(a: Args) -> anyhow::Result<u8> {
    let http = match http_plan(&a) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("kdnet mcp: {e}");
            return Ok(exit::BAD_ARGUMENTS);
        }
    };
    let attach = a.connect.port.is_some() || a.connect.kernel.is_some();
    if a.watch_socket.is_empty() && !attach && a.dump.is_empty() {
        eprintln!(
            "kdnet mcp: nothing to serve: give --watch-socket PATH, --port P with a key (or -k net:…), or --dump FILE"
        );
        return Ok(exit::BAD_ARGUMENTS);
    }
    let mut dumps = Vec::new();
    for d in &a.dump {
        let name = d
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "dump".into());
        let path = d.clone();
        let symbols = a.symbols.clone();
        match tokio::task::spawn_blocking(move || Dump::open(&path, symbols.as_deref())).await? {
            Ok(dump) => dumps.push((name, dump)),
            Err(e) => {
                eprintln!("kdnet mcp: {e}");
                return Ok(exit::FAILED);
            }
        }
    }
    let mut watchers: Vec<Arc<Watcher>> = a
        .watch_socket
        .iter()
        .map(|p| Arc::new(Watcher::new(p.clone())))
        .collect();
    let events = Arc::new(Mutex::new(Events::default()));
    let mut bundle_dirs = a.bundles.clone();

    // A target attached here: a watcher of its own, reached through a socket in a private
    // directory, ended with the server.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut own_watch = None;
    let mut private_dir = None;
    if attach {
        match own_watcher(&a, stop_rx.clone()).await {
            Ok((path, dir, out, task)) => {
                watchers.push(Arc::new(Watcher::new(path)));
                bundle_dirs.push(out);
                private_dir = Some(dir);
                own_watch = Some(task);
            }
            Err(code) => return Ok(code),
        }
    }
    for w in &watchers {
        tokio::spawn(sources::follow_events(w.path.clone(), events.clone()));
    }
    let settings = Settings {
        remote: a.listen.is_some(),
        allow_control: a.allow_control,
        max_result_bytes: a.max_result_bytes.max(1024),
        symbols: a.symbols.clone(),
        bundle_dirs,
    };
    let server = Server::new(settings, watchers, dumps, events);
    let mut ending = crate::signals::Ending::catch().context("catching signals")?;
    let served = match http {
        None => {
            let running = server
                .serve(rmcp::transport::stdio())
                .await
                .context("starting the MCP session on stdio")?;
            tokio::select! {
                r = running.waiting() => { r.map(|_| ()).map_err(anyhow::Error::from) }
                s = ending.next() => {
                    eprintln!("kdnet mcp: {}: ending", s.name());
                    Ok(())
                }
            }
        }
        Some(h) => serve_http(server, h, &mut ending).await,
    };
    // Let the attached target go on, and wait for its watcher to finish.
    let _ = stop_tx.send(true);
    if let Some(t) = own_watch {
        // As long as a run may take, and the watcher's own time to finish what it does.
        let bound = server::RUN_MAX + std::time::Duration::from_secs(60);
        let _ = tokio::time::timeout(bound, t).await;
    }
    if let Some(d) = private_dir {
        let _ = std::fs::remove_dir_all(d);
    }
    served.map(|()| exit::OK)
}

/// The watcher of a target this server attaches: its control socket, the private directory
/// the socket is in, where its bundles go, and its task.
async fn own_watcher(
    a: &Args,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<
    (
        PathBuf,
        PathBuf,
        PathBuf,
        tokio::task::JoinHandle<anyhow::Result<u8>>,
    ),
    u8,
> {
    use crate::watch::{self, config};
    let host = match a.connect.resolve() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("kdnet mcp: {e}");
            return Err(exit::BAD_ARGUMENTS);
        }
    };
    // Bundles named from where this server runs, whatever a client's directory.
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("kdnet-captures"));
    let out = std::env::current_dir().map_or(out.clone(), |d| d.join(&out));
    let common = config::Common {
        out: Some(out),
        symbols: a.symbols.clone(),
        ..config::Common::default()
    };
    let spec = match config::spec(&a.name, host, Vec::new(), &common) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kdnet mcp: {e}");
            return Err(exit::BAD_ARGUMENTS);
        }
    };
    let out = spec.out.clone();
    let sessions = watch::bind_all(std::slice::from_ref(&spec)).await?;
    remove_stale_dirs();
    let dir = std::env::temp_dir().join(format!(
        "kdnet-mcp-{}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    ));
    let path = dir.join("control.sock");
    let hub = Arc::new(watch::hub::Hub::new(None));
    let limits = watch::Limits {
        max_captures: None,
        duration: None,
        // The server's own connection never goes away before the server: at its end the
        // target is let go on at once.
        lease: std::time::Duration::ZERO,
    };
    let targets = vec![(spec, sessions.into_iter().next().ok_or(exit::FAILED)?)];
    let control = watch::Control::At(path.clone());
    let task = tokio::spawn(async move {
        watch::watch_until(targets, hub, control, limits, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
    });
    // The socket is there once the watcher listens.
    for _ in 0..100 {
        if path.exists() {
            return Ok((path, dir, out, task));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    eprintln!(
        "kdnet mcp: the attached target's watcher did not start ({} never appeared)",
        path.display()
    );
    Err(exit::FAILED)
}

/// Removes the private directories of servers that are gone (killed before they could remove
/// their own): `kdnet-mcp-PID-…` whose process no longer exists (told by /proc, on Linux).
fn remove_stale_dirs() {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("kdnet-mcp-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Serves Streamable HTTP until a signal.
async fn serve_http(
    server: Server,
    h: HttpPlan,
    ending: &mut crate::signals::Ending,
) -> anyhow::Result<()> {
    use http_body_util::{BodyExt as _, Full};
    use hyper_util::rt::TokioIo;
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    };
    let ct = tokio_util::sync::CancellationToken::new();
    let mut config = StreamableHttpServerConfig::default().with_cancellation_token(ct.clone());
    if !h.addr.ip().is_loopback() {
        // Served to others (with a token, which every request must carry): clients name the
        // server by whatever name reaches it. On loopback only loopback names are taken, so a
        // web page cannot reach the server through a name it rebinds to 127.0.0.1.
        config = config.disable_allowed_hosts();
    }
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let listener = tokio::net::TcpListener::bind(h.addr)
        .await
        .with_context(|| format!("listening on TCP {}", h.addr))?;
    let at = listener.local_addr()?;
    eprintln!("kdnet mcp: serving MCP at http://{at}/mcp");
    let token = h.token.map(Arc::new);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => { eprintln!("kdnet mcp: accepting a connection: {e}"); continue; }
            },
            s = ending.next() => {
                eprintln!("kdnet mcp: {}: ending", s.name());
                ct.cancel();
                return Ok(());
            }
        };
        let service = service.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let service = service.clone();
                    let token = token.clone();
                    async move {
                        let refuse = |status: u16, msg: &'static str| {
                            let mut r = hyper::Response::new(
                                Full::new(bytes::Bytes::from_static(msg.as_bytes())).boxed(),
                            );
                            *r.status_mut() =
                                hyper::StatusCode::from_u16(status).unwrap_or_default();
                            Ok::<_, std::convert::Infallible>(r)
                        };
                        if req.uri().path() != "/mcp" {
                            return refuse(404, "not found: the MCP endpoint is /mcp\n");
                        }
                        if let Some(t) = token.as_deref() {
                            let given = req
                                .headers()
                                .get(hyper::header::AUTHORIZATION)
                                .and_then(|v| v.to_str().ok())
                                .and_then(|s| s.strip_prefix("Bearer "));
                            if !given.is_some_and(|g| same(g.as_bytes(), t.as_bytes())) {
                                return refuse(401, "a bearer token is needed\n");
                            }
                        }
                        Ok(service.handle(req).await)
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Compares two secrets in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct T {
        #[command(flatten)]
        a: Args,
    }

    fn args(words: &[&str]) -> Args {
        T::try_parse_from(std::iter::once("x").chain(words.iter().copied()))
            .unwrap()
            .a
    }

    #[test]
    fn http_only_on_loopback_without_a_token() {
        assert!(
            http_plan(&args(&["--http", "127.0.0.1:0"]))
                .unwrap()
                .is_some()
        );
        let e = http_plan(&args(&["--http", "0.0.0.0:8000"])).err().unwrap();
        assert!(e.contains("not a loopback address"), "{e}");
        let e = http_plan(&args(&["--listen", "0.0.0.0:8000"]))
            .err()
            .unwrap();
        assert!(e.contains("needs --token-file"), "{e}");
        let dir = std::env::temp_dir().join(format!("kdnet-mcp-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let short = dir.join("short");
        std::fs::write(&short, "abc\n").unwrap();
        let e = http_plan(&args(&[
            "--listen",
            "0.0.0.0:8000",
            "--token-file",
            short.to_str().unwrap(),
        ]))
        .err()
        .unwrap();
        assert!(e.contains("shorter than 16"), "{e}");
        let good = dir.join("good");
        std::fs::write(&good, "0123456789abcdef0123\n").unwrap();
        let p = http_plan(&args(&[
            "--listen",
            "0.0.0.0:8000",
            "--token-file",
            good.to_str().unwrap(),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(p.token.as_deref(), Some("0123456789abcdef0123"));
        let _ = std::fs::remove_dir_all(dir);
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"ab", b"abc"));
    }
}
