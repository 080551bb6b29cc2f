//! The external health probe: a TCP connect, an HTTP GET or a command's exit code, each with a
//! deadline.

use std::time::Duration;

use super::config::Probe;

/// Runs the probe once; Err says what failed.
pub async fn check(p: &Probe, timeout: Duration) -> Result<(), String> {
    match p {
        Probe::Tcp(addr) => {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr.as_str())).await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("tcp {addr}: {e}")),
                Err(_) => Err(format!("tcp {addr}: no answer within {timeout:?}")),
            }
        }
        Probe::Http(url) => {
            let url = url.clone();
            let job = tokio::task::spawn_blocking(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .timeout_global(Some(timeout))
                    .http_status_as_error(false)
                    .build()
                    .into();
                match agent.get(&url).call() {
                    Ok(r) if r.status().as_u16() < 400 => Ok(()),
                    Ok(r) => Err(format!("{url}: HTTP {}", r.status().as_u16())),
                    Err(e) => Err(format!("{url}: {e}")),
                }
            });
            match tokio::time::timeout(timeout + Duration::from_secs(1), job).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Err(format!("http probe: {e}")),
                Err(_) => Err(format!("http probe: no answer within {timeout:?}")),
            }
        }
        Probe::Cmd(cmd) => {
            let mut c = if cfg!(windows) {
                let mut c = tokio::process::Command::new("cmd");
                c.arg("/C").arg(cmd);
                c
            } else {
                let mut c = tokio::process::Command::new("sh");
                c.arg("-c").arg(cmd);
                c
            };
            c.stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true);
            let mut child = c.spawn().map_err(|e| format!("cmd {cmd:?}: {e}"))?;
            match tokio::time::timeout(timeout, child.wait()).await {
                Ok(Ok(s)) if s.success() => Ok(()),
                Ok(Ok(s)) => Err(format!("cmd {cmd:?}: {s}")),
                Ok(Err(e)) => Err(format!("cmd {cmd:?}: {e}")),
                Err(_) => {
                    let _ = child.kill().await;
                    Err(format!("cmd {cmd:?}: still running after {timeout:?}"))
                }
            }
        }
    }
}

/// Tracks how long a probe has been failing while the target ran.
#[derive(Debug, Default)]
pub struct Failing {
    since: Option<std::time::Instant>,
    /// Set once the trigger fired for this run of failures.
    fired: bool,
}

impl Failing {
    /// Records one result at `now`; true when the failure has lasted `after` (once per run of
    /// failures).
    pub fn record(&mut self, ok: bool, now: std::time::Instant, after: Duration) -> bool {
        if ok {
            *self = Failing::default();
            return false;
        }
        let since = *self.since.get_or_insert(now);
        if !self.fired && now.saturating_duration_since(since) >= after {
            self.fired = true;
            return true;
        }
        false
    }

    /// Forgets the failures (the target stopped, so they say nothing about it).
    pub fn reset(&mut self) {
        *self = Failing::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn fires_once_after_the_failure_lasts() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut f = Failing::default();
        assert!(!f.record(false, t0, s(30)));
        assert!(!f.record(false, t0 + s(29), s(30)));
        assert!(f.record(false, t0 + s(30), s(30)));
        assert!(
            !f.record(false, t0 + s(60), s(30)),
            "once per run of failures"
        );
        assert!(!f.record(true, t0 + s(61), s(30)));
        assert!(!f.record(false, t0 + s(62), s(30)));
        assert!(f.record(false, t0 + s(92), s(30)));
    }

    #[tokio::test]
    async fn each_kind_tells_up_from_down() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = l.local_addr().unwrap();
        let t = Duration::from_secs(5);
        assert!(check(&Probe::Tcp(up.to_string()), t).await.is_ok());
        drop(l);
        assert!(check(&Probe::Tcp(up.to_string()), t).await.is_err());
        assert!(check(&Probe::Cmd("exit 0".into()), t).await.is_ok());
        assert!(
            check(&Probe::Cmd("exit 3".into()), t)
                .await
                .unwrap_err()
                .contains('3')
        );
        let slow = check(&Probe::Cmd("sleep 5".into()), Duration::from_millis(200)).await;
        assert!(slow.unwrap_err().contains("still running"));
        // HTTP: a tiny server answering 200, then 503.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = l.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            }
        });
        let url = Probe::Http(format!("http://{at}/healthz"));
        assert!(check(&url, t).await.is_ok());
        assert!(check(&url, t).await.unwrap_err().contains("503"));
    }
}
