//! Where the watcher's targets report: each state change is printed, appended to the events
//! file as a JSON line, kept as the target's current state (for `list`), and sent to the
//! control clients reading the event stream.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::metrics::Metrics;

/// A target as `list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Its name.
    pub name: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// The UDP address it is listened for on.
    pub listen: String,
    /// Its state.
    pub state: String,
    /// What goes with it.
    pub detail: String,
    /// Since when (seconds since 1970).
    pub since: u64,
    /// Bundles written.
    pub captures: u32,
    /// The last one.
    pub last_bundle: Option<String>,
    /// The session's counters: round trips, retransmissions, silences, handshakes, and the
    /// datagrams dropped by cause.
    pub link: Option<kdnet_live::Traffic>,
    /// The Windows build, once the target was stopped and its kernel read.
    pub build: Option<u32>,
}

/// The watcher's report hub.
pub struct Hub {
    /// Print to standard output with the time since this instant (the demo's story) instead
    /// of to standard error.
    story: Option<std::time::Instant>,
    /// Print nothing (benchmarks).
    silent: bool,
    tx: broadcast::Sender<Value>,
    file: Mutex<Option<std::fs::File>>,
    status: Mutex<BTreeMap<String, Status>>,
    metrics: Arc<Metrics>,
}

impl Hub {
    /// A hub appending to `file`.
    pub fn new(file: Option<std::fs::File>) -> Hub {
        Hub {
            story: None,
            silent: false,
            tx: broadcast::channel(1024).0,
            file: Mutex::new(file),
            status: Mutex::new(BTreeMap::new()),
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// A hub telling its story on standard output, timed from `start`.
    pub fn story(mut self, start: std::time::Instant) -> Hub {
        self.story = Some(start);
        self
    }

    /// A hub that prints nothing.
    pub fn silent(mut self) -> Hub {
        self.silent = true;
        self
    }

    fn say(&self, name: &str, text: &str) {
        if self.silent {
            return;
        }
        match self.story {
            Some(t) => outln!("[{:7.3}s] {name}: {text}", t.elapsed().as_secs_f64()),
            None => eprintln!("kdnet watch: {name}: {text}"),
        }
    }

    /// The metrics every state change feeds (served by `--metrics`).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Registers a target.
    pub fn add(&self, name: &str, tags: &[String], listen: String) {
        self.metrics.add(name, tags);
        if let Ok(mut s) = self.status.lock() {
            s.insert(
                name.to_string(),
                Status {
                    name: name.to_string(),
                    tags: tags.to_vec(),
                    listen,
                    state: "offline".into(),
                    detail: String::new(),
                    since: super::now_secs(),
                    captures: 0,
                    last_bundle: None,
                    link: None,
                    build: None,
                },
            );
        }
    }

    /// Every target's status.
    pub fn list(&self) -> Vec<Status> {
        self.status
            .lock()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default()
    }

    /// A receiver of every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Value> {
        self.tx.subscribe()
    }

    /// A state change of `name`; a repeat of the current state without detail is dropped.
    /// `extra` (an object) is merged into the JSON line.
    pub fn state(&self, name: &str, state: &str, detail: &str, extra: Value) {
        let now = super::now_secs();
        if let Ok(mut all) = self.status.lock()
            && let Some(s) = all.get_mut(name)
        {
            if s.state == state && detail.is_empty() && extra.is_null() {
                return;
            }
            if s.state != state {
                s.since = now;
            }
            s.state = state.to_string();
            s.detail = detail.to_string();
            if state == "captured" {
                s.captures += 1;
                s.last_bundle = extra["bundle"].as_str().map(str::to_string);
            }
        }
        self.metrics.state(name, state, detail, &extra);
        self.say(
            name,
            &format!(
                "{state}{}{detail}",
                if detail.is_empty() { "" } else { ": " }
            ),
        );
        let mut line = json!({ "time": now, "target": name, "state": state, "detail": detail });
        if let (Some(m), Some(x)) = (line.as_object_mut(), extra.as_object()) {
            for (k, v) in x {
                m.insert(k.clone(), v.clone());
            }
        }
        self.emit(line);
    }

    /// A remark about `name` that does not change its state.
    pub fn note(&self, name: &str, text: &str) {
        self.note_with(name, text, Value::Null);
    }

    /// A remark with more (an object merged into the JSON line).
    pub fn note_with(&self, name: &str, text: &str, extra: Value) {
        self.say(name, text);
        let mut line = json!({ "time": super::now_secs(), "target": name, "note": text });
        if let (Some(m), Some(x)) = (line.as_object_mut(), extra.as_object()) {
            for (k, v) in x {
                m.insert(k.clone(), v.clone());
            }
        }
        self.emit(line);
    }

    /// The Windows build of `name`, for `list`.
    pub fn build(&self, name: &str, build: u32) {
        if let Ok(mut all) = self.status.lock()
            && let Some(s) = all.get_mut(name)
        {
            s.build = Some(build);
        }
    }

    /// The session counters of `name`, for `list`.
    pub fn traffic(&self, name: &str, t: kdnet_live::Traffic) {
        if let Ok(mut all) = self.status.lock()
            && let Some(s) = all.get_mut(name)
        {
            s.link = Some(t);
        }
        self.metrics.traffic(name, t);
    }

    fn emit(&self, line: Value) {
        if let Ok(mut f) = self.file.lock()
            && let Some(f) = f.as_mut()
            && let Err(e) = writeln!(f, "{line}")
        {
            eprintln!("kdnet watch: cannot write the events file: {e}");
        }
        let _ = self.tx.send(line);
    }
}
