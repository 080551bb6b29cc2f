//! A live KDNET session as a [`Target`]. The analysis code is synchronous; it runs on a blocking
//! thread and waits here for the async session.

use kdnet::api::Context;
use kdnet::host::{Host, HostError};
use tokio::runtime::Handle;

use crate::target::{Target, TargetError, TargetInfo, TransportStats};

/// A stopped target on a KDNET session.
#[derive(Debug)]
pub struct LiveTarget {
    host: Host,
    rt: Handle,
    info: TargetInfo,
    ran: bool,
    /// The host's count of state changes when memory was last read.
    stops: u64,
}

fn map(e: HostError, address: u64) -> TargetError {
    match e {
        HostError::Memory { address, .. } => TargetError::Unavailable { address },
        HostError::Status { .. } => TargetError::Unavailable { address },
        other => TargetError::Transport(other.to_string()),
    }
}

impl LiveTarget {
    /// Wraps a session whose target is stopped. Call from a thread that is not running the
    /// runtime (e.g. inside `spawn_blocking`).
    pub fn new(host: Host, rt: Handle) -> Result<LiveTarget, TargetError> {
        let v = rt
            .block_on(host.get_version())
            .map_err(|e| TargetError::Transport(e.to_string()))?;
        let stops = host_stops(&host);
        let stop = host.state().stop;
        let processors = stop.as_ref().map_or(1, |s| s.number_processors.max(1));
        let current_processor = stop.map_or(0, |s| u32::from(s.processor));
        let description = format!(
            "KDNET {}",
            host.state()
                .target
                .map_or("?".to_string(), |a| a.to_string())
        );
        Ok(LiveTarget {
            host,
            rt,
            info: TargetInfo {
                build: u32::from(v.minor_version),
                kernel_base: Some(v.kern_base),
                ps_loaded_module_list: Some(v.ps_loaded_module_list),
                debugger_data_list: (v.debugger_data_list != 0).then_some(v.debugger_data_list),
                processors,
                current_processor,
                live: true,
                description,
                ..TargetInfo::default()
            },
            ran: false,
            stops,
        })
    }

    /// The session.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Marks that the target ran (the cache above must be dropped).
    pub fn ran(&mut self) {
        self.ran = true;
    }
}

fn host_stops(host: &Host) -> u64 {
    host.state().stops
}

impl Target for LiveTarget {
    fn info(&self) -> TargetInfo {
        self.info.clone()
    }

    fn read_physical(&mut self, address: u64, buf: &mut [u8]) -> Result<usize, TargetError> {
        match self
            .rt
            .block_on(self.host.read_physical(address, buf.len()))
        {
            Ok(b) => {
                buf[..b.len()].copy_from_slice(&b);
                Ok(b.len())
            }
            Err(HostError::Memory { read, .. }) => {
                buf[..read.len()].copy_from_slice(&read);
                Ok(read.len())
            }
            Err(e) => Err(map(e, address)),
        }
    }

    fn max_transfer(&self) -> usize {
        self.host.max_transfer() as usize
    }

    fn context(&mut self, processor: u32) -> Result<Context, TargetError> {
        self.rt
            .block_on(self.host.get_context(processor as u16))
            .map_err(|e| match e {
                HostError::Status { .. } => TargetError::NoSuchProcessor(processor),
                other => map(other, 0),
            })
    }

    fn special_registers(&mut self, processor: u32) -> Result<Vec<u8>, TargetError> {
        self.rt
            .block_on(self.host.read_control_space(processor as u16, 2, 0xe0))
            .map_err(|e| match e {
                HostError::Status { .. } => TargetError::NoSuchProcessor(processor),
                other => map(other, 0),
            })
    }

    fn control_pointer(&mut self, processor: u32, index: u64) -> Result<u64, TargetError> {
        let b = self
            .rt
            .block_on(self.host.read_control_space(processor as u16, index, 8))
            .map_err(|e| match e {
                HostError::Status { .. } => TargetError::NoSuchProcessor(processor),
                other => map(other, 0),
            })?;
        Ok(u64::from_le_bytes(
            b.get(..8).and_then(|x| x.try_into().ok()).unwrap_or([0; 8]),
        ))
    }

    fn stats(&self) -> TransportStats {
        let s = self.host.stats();
        TransportStats {
            round_trips: s.round_trips,
            bytes: s.bytes_sent + s.bytes_received,
        }
    }

    /// True once after the target ran: marked by the caller, or seen as a new state change
    /// (a break-in or a stop after `g`).
    fn search(
        &mut self,
        address: u64,
        length: u64,
        pattern: &[u8],
    ) -> Option<Result<Option<u64>, TargetError>> {
        Some(
            self.rt
                .block_on(self.host.search_memory(address, length, pattern))
                .map_err(|e| map(e, address)),
        )
    }

    fn take_invalidation(&mut self) -> bool {
        let now = host_stops(&self.host);
        let changed = now != self.stops;
        self.stops = now;
        std::mem::take(&mut self.ran) || changed
    }
}
