//! The debuggee's end of KDNET over tokio: a task owns the UDP socket and a
//! [`TargetMachine`], moving datagrams and sleeping until the machine's next deadline.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

pub use crate::machine::target::{
    Activity, Breakpoints, Resume, StopReason, TargetConfig, TargetHandler, TargetMachine,
    TargetStats,
};
use crate::rng::os_random_32;

enum Control {
    Activity(Activity),
    Reboot,
    Shutdown,
}

/// A running target end.
#[derive(Debug)]
pub struct TargetHandle {
    ctl: mpsc::Sender<Control>,
    stats: Arc<Mutex<TargetStats>>,
    running: watch::Receiver<bool>,
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TargetHandle {
    /// Binds and starts a target end.
    pub async fn spawn(
        config: TargetConfig,
        handler: Box<dyn TargetHandler>,
    ) -> std::io::Result<TargetHandle> {
        let socket = UdpSocket::bind(config.bind).await?;
        let local = socket.local_addr()?;
        let machine = TargetMachine::new(
            config,
            local,
            handler,
            Instant::now(),
            Box::new(os_random_32),
        );
        let (ctl, ctl_rx) = mpsc::channel(256);
        let stats = Arc::new(Mutex::new(TargetStats::default()));
        let (run_tx, running) = watch::channel(machine.is_running());
        let driver = Driver {
            socket,
            machine,
            stats: stats.clone(),
            running: run_tx,
            ctl: ctl_rx,
        };
        let task = tokio::spawn(driver.run());
        Ok(TargetHandle {
            ctl,
            stats,
            running,
            local,
            task,
        })
    }

    /// The address the target sends from.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The counters so far.
    pub fn stats(&self) -> TargetStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether the target runs (not stopped in the debugger).
    pub fn is_running(&self) -> bool {
        *self.running.borrow()
    }

    /// Makes the running target print or stop.
    pub async fn act(&self, a: Activity) {
        let _ = self.ctl.send(Control::Activity(a)).await;
    }

    /// Reboots the target: new boot nonce, new session needed.
    pub async fn reboot(&self) {
        let _ = self.ctl.send(Control::Reboot).await;
    }

    /// Stops the target end and waits for it; returns the final counters.
    pub async fn shutdown(self) -> TargetStats {
        let _ = self.ctl.send(Control::Shutdown).await;
        let _ = self.task.await;
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

struct Driver {
    socket: UdpSocket,
    machine: TargetMachine,
    stats: Arc<Mutex<TargetStats>>,
    running: watch::Sender<bool>,
    ctl: mpsc::Receiver<Control>,
}

impl Driver {
    async fn run(mut self) {
        let mut buf = vec![0u8; 65_536];
        loop {
            self.machine.handle_timeout(Instant::now());
            self.flush().await;
            let wake = tokio::time::Instant::from_std(self.machine.poll_timeout());
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => {
                    if let Ok((n, from)) = r {
                        self.machine.handle_datagram(from, &buf[..n], Instant::now());
                    }
                }
                c = self.ctl.recv() => match c {
                    Some(Control::Activity(a)) => self.machine.act(a, Instant::now()),
                    Some(Control::Reboot) => self.machine.reboot(Instant::now()),
                    Some(Control::Shutdown) | None => {
                        self.flush().await;
                        return;
                    }
                },
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    async fn flush(&mut self) {
        while let Some(t) = self.machine.poll_transmit() {
            if let Err(e) = self.socket.send_to(&t.datagram, t.to).await {
                tracing::debug!("send to {} failed: {e}", t.to);
            }
        }
        *self.stats.lock().unwrap_or_else(|p| p.into_inner()) = self.machine.stats().clone();
        self.running.send_if_modified(|r| {
            let now = self.machine.is_running();
            std::mem::replace(r, now) != now
        });
    }
}
