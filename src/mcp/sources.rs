//! What `kdnet mcp` serves: watchers' targets, reached through their control sockets (a
//! running `kdnet watch`, or the one the server starts itself for a target it attaches), and
//! dumps it opened. Every request has a deadline; a watcher's connection is held for the whole
//! session, so that what the server broke into is the server's, and is let go on by the
//! watcher when the server goes away.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kdnet_commands::engine::Engine;
use kdnet_commands::script::{self, Runner};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::analysis;

/// How long a watcher has to answer a request that is not a `run` or a `capture`.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(20);
/// How long a capture may take before the server stops waiting (the watcher's own stop
/// ceiling for a capture is 120 s by default).
pub const CAPTURE_WITHIN: Duration = Duration::from_secs(300);
/// Events kept for `events` (older ones are dropped, and the cursor says so).
pub const EVENTS_KEPT: usize = 4096;

/// A connection to a watcher's control socket: requests and answers, one at a time.
pub struct Watcher {
    /// The socket.
    pub path: PathBuf,
    conn: Mutex<Option<Conn>>,
}

#[cfg(unix)]
type Conn = (
    tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
    tokio::net::unix::OwnedWriteHalf,
);
#[cfg(not(unix))]
type Conn = ();

/// The watcher's connection, held for several requests in a row (break in, run, let go on)
/// so that nothing else comes between them.
pub type Held<'a> = tokio::sync::MutexGuard<'a, Option<Conn>>;

/// The answer's `error` when it is not `ok`.
fn ok_of(v: Value) -> Result<Value, String> {
    if v["ok"] == true {
        Ok(v)
    } else {
        Err(v["error"].as_str().unwrap_or("the watcher refused").into())
    }
}

impl Watcher {
    /// A watcher at `path` (connected at the first request).
    pub fn new(path: PathBuf) -> Watcher {
        Watcher {
            path,
            conn: Mutex::new(None),
        }
    }

    /// The connection, for requests in a row; waits at most `within` for another caller's.
    pub async fn hold(&self, within: Duration) -> Result<Held<'_>, String> {
        tokio::time::timeout(within, self.conn.lock())
            .await
            .map_err(|_| {
                format!(
                    "the watcher at {} is busy with another request: gave up after {} ms",
                    self.path.display(),
                    within.as_millis()
                )
            })
    }

    /// Sends `req` on the held connection and waits at most `within` for the answer. The
    /// connection is taken out while the exchange is under way and put back only when it is
    /// whole: an exchange that failed, timed out or was dropped half-way leaves no connection
    /// (the next request connects again, and no answer is read for the wrong request); the
    /// watcher then lets go on, after its lease, what the old connection had broken into.
    pub async fn exchange(
        &self,
        held: &mut Held<'_>,
        req: &Value,
        within: Duration,
    ) -> Result<Value, String> {
        let started = Instant::now();
        let conn = match held.take() {
            Some(c) => c,
            None => self.connect(within).await?,
        };
        let left = within.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, Self::talk(conn, req)).await {
            Ok(Ok((v, conn))) => {
                **held = Some(conn);
                Ok(v)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!(
                "the watcher did not answer within {} ms",
                within.as_millis()
            )),
        }
    }

    /// One request on a connection of its own, closed after the answer: what it takes over
    /// (a target another client stopped) is let go on after the watcher's lease.
    pub async fn once(&self, req: &Value, within: Duration) -> Result<Value, String> {
        let started = Instant::now();
        let conn = self.connect(within).await?;
        let left = within.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, Self::talk(conn, req)).await {
            Ok(r) => ok_of(r?.0),
            Err(_) => Err(format!(
                "the watcher did not answer within {} ms",
                within.as_millis()
            )),
        }
    }

    #[cfg(unix)]
    async fn connect(&self, within: Duration) -> Result<Conn, String> {
        let s = tokio::time::timeout(within, tokio::net::UnixStream::connect(&self.path))
            .await
            .map_err(|_| format!("no answer from the watcher at {}", self.path.display()))?
            .map_err(|e| format!("no watcher at {}: {e}", self.path.display()))?;
        let (r, w) = s.into_split();
        Ok((tokio::io::BufReader::new(r), w))
    }

    #[cfg(not(unix))]
    async fn connect(&self, _within: Duration) -> Result<Conn, String> {
        Err("a watcher's control socket needs a Unix domain socket (Linux)".into())
    }

    #[cfg(unix)]
    async fn talk(mut conn: Conn, req: &Value) -> Result<(Value, Conn), String> {
        use tokio::io::AsyncWriteExt as _;
        let (r, w) = &mut conn;
        w.write_all(format!("{req}\n").as_bytes())
            .await
            .map_err(|e| format!("writing to the watcher: {e}"))?;
        let v = match crate::watch::control::read_line(r, crate::watch::control::MAX_ANSWER).await {
            Ok(Some(l)) => serde_json::from_str::<Value>(&l)
                .map_err(|e| format!("the watcher answered what is not JSON: {e}"))?,
            Ok(None) => return Err("the watcher closed the connection".to_string()),
            Err(e) => return Err(format!("reading the watcher's answer: {e}")),
        };
        Ok((v, conn))
    }

    #[cfg(not(unix))]
    async fn talk(conn: Conn, _req: &Value) -> Result<(Value, Conn), String> {
        let _ = conn;
        Err("a watcher's control socket needs a Unix domain socket (Linux)".into())
    }

    /// [`Watcher::exchange`] whose answer must be `ok`.
    pub async fn ok_on(
        &self,
        held: &mut Held<'_>,
        req: &Value,
        within: Duration,
    ) -> Result<Value, String> {
        ok_of(self.exchange(held, req, within).await?)
    }

    /// One request whose answer must be `ok`.
    pub async fn ok(&self, req: &Value, within: Duration) -> Result<Value, String> {
        let mut held = self.hold(within).await?;
        self.ok_on(&mut held, req, within).await
    }

    /// The targets the watcher lists.
    pub async fn targets(&self) -> Result<Vec<Value>, String> {
        let v = self.ok(&json!({ "op": "list" }), ANSWER_WITHIN).await?;
        Ok(v["targets"].as_array().cloned().unwrap_or_default())
    }
}

/// The events the watchers reported, numbered from 1, the oldest dropped past
/// [`EVENTS_KEPT`].
#[derive(Default)]
pub struct Events {
    next: u64,
    kept: VecDeque<(u64, Value)>,
}

impl Events {
    /// Adds one.
    pub fn push(&mut self, v: Value) {
        self.next += 1;
        self.kept.push_back((self.next, v));
        while self.kept.len() > EVENTS_KEPT {
            self.kept.pop_front();
        }
    }

    /// Those after `cursor` (at most `limit`), the cursor to ask from next, and how many after
    /// `cursor` were dropped before they could be read.
    pub fn since(&self, cursor: u64, limit: usize) -> (Vec<(u64, Value)>, u64, u64) {
        let first = self.kept.front().map_or(self.next + 1, |(n, _)| *n);
        let lost = first.saturating_sub(cursor.saturating_add(1));
        let out: Vec<(u64, Value)> = self
            .kept
            .iter()
            .filter(|(n, _)| *n > cursor)
            .take(limit)
            .cloned()
            .collect();
        let next = out.last().map_or(cursor.max(first - 1), |(n, _)| *n);
        (out, next, lost)
    }
}

/// Reads a watcher's event stream into `events` until the watcher goes away (then tries
/// again every few seconds).
#[cfg(unix)]
pub async fn follow_events(path: PathBuf, events: Arc<std::sync::Mutex<Events>>) {
    use tokio::io::AsyncWriteExt as _;
    loop {
        if let Ok(s) = tokio::net::UnixStream::connect(&path).await {
            let (r, mut w) = s.into_split();
            let mut r = tokio::io::BufReader::new(r);
            if w.write_all(b"{\"op\":\"events\"}\n").await.is_ok() {
                let mut first = true;
                while let Ok(Some(l)) =
                    crate::watch::control::read_line(&mut r, crate::watch::control::MAX_ANSWER)
                        .await
                {
                    if first {
                        first = false;
                        continue;
                    }
                    let v = serde_json::from_str(&l).unwrap_or(Value::String(l));
                    if let Ok(mut e) = events.lock() {
                        e.push(v);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[cfg(not(unix))]
pub async fn follow_events(_path: PathBuf, _events: Arc<std::sync::Mutex<Events>>) {}

/// A dump opened for commands.
pub struct Dump {
    /// The file.
    pub path: PathBuf,
    /// Its engine (commands run one at a time).
    pub engine: Arc<std::sync::Mutex<Engine>>,
    /// The target line the banner gives (`Windows 10 Kernel Version 19041 …`).
    pub description: String,
    /// The Windows build.
    pub build: u32,
}

impl Dump {
    /// Opens `path` with the symbol path `symbols`.
    pub fn open(path: &Path, symbols: Option<&str>) -> Result<Dump, String> {
        let file = kdnet_model::dump::DumpFile::open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let sp = crate::symbols::path(symbols);
        let kernel = kdnet_model::nt::Kernel::open(Box::new(file), sp)
            .map_err(|e| format!("reading the kernel in {}: {e}", path.display()))?;
        let mut e = Engine::new(kernel);
        let build = e.kernel.mem.info().build;
        let description = e
            .run("vertarget")
            .text
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        Ok(Dump {
            path: path.to_path_buf(),
            engine: Arc::new(std::sync::Mutex::new(e)),
            description,
            build,
        })
    }

    /// Runs a command line within `within`; the results as the watcher gives them (one JSON
    /// object per command, with its text).
    pub async fn run(&self, line: &str, within: Duration) -> Result<Vec<Value>, String> {
        let stmts = script::parse(line).map_err(|e| e.to_string())?;
        let engine = self.engine.clone();
        let dir = self
            .path
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        tokio::task::spawn_blocking(move || {
            let mut e = engine
                .lock()
                .map_err(|_| "the dump's engine failed earlier".to_string())?;
            e.deadline = Some(Instant::now() + within);
            let mut outs = Vec::new();
            {
                let mut runner = Runner::new(&mut e, dir);
                runner.run(&stmts, &mut |ev| {
                    outs.push(analysis::event_json_with_text(&ev))
                });
            }
            e.deadline = None;
            Ok(outs)
        })
        .await
        .map_err(|e| format!("the command thread failed: {e}"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_read_from_a_cursor_and_losses_said() {
        let mut e = Events::default();
        for i in 0..5 {
            e.push(json!(i));
        }
        let (got, next, lost) = e.since(0, 2);
        assert_eq!(got.iter().map(|(n, _)| *n).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!((next, lost), (2, 0));
        let (got, next, _) = e.since(next, 10);
        assert_eq!(got.len(), 3);
        assert_eq!(next, 5);
        // Nothing new: the cursor stays.
        let (got, next, _) = e.since(5, 10);
        assert!(got.is_empty());
        assert_eq!(next, 5);
        // Past the kept window: the loss is counted.
        for i in 0..EVENTS_KEPT + 10 {
            e.push(json!(i));
        }
        let (got, _, lost) = e.since(0, 1);
        assert_eq!(got[0].0, 16);
        assert_eq!(lost, 15);
    }
}
