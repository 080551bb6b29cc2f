//! How far a long command (`.dump`) has got, drawn on a terminal: one line on standard error,
//! redrawn a few times a second and cleared when the command ends. When standard error is not
//! a terminal nothing is drawn, and standard output (the commands' text and JSON) is never
//! touched.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use kdnet_commands::engine::{Progress, ProgressSink};

/// Least time between two redraws.
const EVERY: Duration = Duration::from_millis(250);

/// The sink for an engine: a line on standard error when it is a terminal, else none.
pub fn terminal() -> Option<ProgressSink> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let mut last: Option<Instant> = None;
    Some(Box::new(move |what: &str, p: &Progress| {
        let mut err = std::io::stderr().lock();
        if p.finished {
            if last.take().is_some() {
                let _ = write!(err, "\r\x1b[K");
                let _ = err.flush();
            }
            return;
        }
        if last.is_some_and(|t| t.elapsed() < EVERY) {
            return;
        }
        last = Some(Instant::now());
        let _ = write!(err, "\r\x1b[K{}", line(what, p));
        let _ = err.flush();
    }))
}

/// `.dump: 3412/6862 pages (49%), 12.3 MB/s, 0:05 left`.
pub fn line(what: &str, p: &Progress) -> String {
    let pct = if p.total == 0 {
        100.0
    } else {
        100.0 * p.done as f64 / p.total as f64
    };
    let eta = match p.eta() {
        Some(d) => {
            let s = d.as_secs();
            if s >= 3600 {
                format!(", {}:{:02}:{:02} left", s / 3600, s / 60 % 60, s % 60)
            } else {
                format!(", {}:{:02} left", s / 60, s % 60)
            }
        }
        None => String::new(),
    };
    format!(
        "{what}: {}/{} pages ({pct:.0}%), {:.1} MB/s{eta}",
        p.done,
        p.total,
        p.rate() / 1e6
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line() {
        let p = Progress {
            done: 3000,
            total: 6000,
            done_now: 1000,
            bytes: 1000 * 4096,
            elapsed: Duration::from_secs(2),
            finished: false,
        };
        assert_eq!(
            line(".dump", &p),
            ".dump: 3000/6000 pages (50%), 2.0 MB/s, 0:06 left"
        );
        let p = Progress {
            done: 0,
            done_now: 0,
            bytes: 0,
            ..p
        };
        assert_eq!(line(".dump", &p), ".dump: 0/6000 pages (0%), 0.0 MB/s");
    }
}
