//! A [`Target`] over an in-process [`TargetHandler`]: the simulated machine (or any handler)
//! without a network between. Each call counts as one round trip and requests are cut to the
//! same transfer size a KDNET session uses, so counts match what the wire would see.

use kdnet::api::MAX_TRANSFER;
use kdnet::target::TargetHandler;
use kdnet_arch::Context;

use kdnet_model::target::{Target, TargetError, TargetInfo, TransportStats};

/// A stopped in-process target.
pub struct LocalTarget<H: TargetHandler> {
    handler: H,
    info: TargetInfo,
    max_transfer: usize,
    stats: TransportStats,
}

impl<H: TargetHandler> std::fmt::Debug for LocalTarget<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalTarget")
            .field("build", &self.info.build)
            .finish()
    }
}

impl<H: TargetHandler> LocalTarget<H> {
    /// Wraps `handler`, which must describe a stopped machine with `processors` processors.
    pub fn new(mut handler: H, processors: u32) -> LocalTarget<H> {
        let v = handler.version();
        LocalTarget {
            handler,
            info: TargetInfo {
                build: u32::from(v.minor_version),
                kernel_base: Some(v.kern_base),
                ps_loaded_module_list: Some(v.ps_loaded_module_list),
                debugger_data_list: (v.debugger_data_list != 0).then_some(v.debugger_data_list),
                processors: processors.max(1),
                live: true,
                description: "in-process target".into(),
                ..TargetInfo::default()
            },
            max_transfer: MAX_TRANSFER as usize,
            stats: TransportStats::default(),
        }
    }

    /// Caps each request at `bytes` (the KDNET default otherwise).
    pub fn set_max_transfer(&mut self, bytes: usize) {
        self.max_transfer = bytes.clamp(8, MAX_TRANSFER as usize);
    }

    /// The handler.
    pub fn handler(&mut self) -> &mut H {
        &mut self.handler
    }

    fn count(&mut self, bytes: usize) {
        self.stats.round_trips += 1;
        self.stats.bytes += bytes as u64;
    }
}

impl<H: TargetHandler> Target for LocalTarget<H> {
    fn info(&self) -> TargetInfo {
        self.info.clone()
    }

    fn read_physical(&mut self, address: u64, buf: &mut [u8]) -> Result<usize, TargetError> {
        let mut done = 0;
        while done < buf.len() {
            let n = (buf.len() - done).min(self.max_transfer);
            let got = self
                .handler
                .read_physical(address + done as u64, &mut buf[done..done + n]);
            self.count(got);
            done += got.min(n);
            if got < n {
                break;
            }
        }
        Ok(done)
    }

    fn max_transfer(&self) -> usize {
        self.max_transfer
    }

    fn context(&mut self, processor: u32) -> Result<Context, TargetError> {
        let p = u16::try_from(processor).map_err(|_| TargetError::NoSuchProcessor(processor))?;
        self.count(kdnet::api::context::CONTEXT_LEN);
        self.handler
            .context(p)
            .ok_or(TargetError::NoSuchProcessor(processor))
    }

    fn special_registers(&mut self, processor: u32) -> Result<Vec<u8>, TargetError> {
        let p = u16::try_from(processor).map_err(|_| TargetError::NoSuchProcessor(processor))?;
        let mut buf = vec![0u8; 0xe0];
        let n = self
            .handler
            .read_control_space(p, 2, &mut buf)
            .ok_or(TargetError::NoSuchProcessor(processor))?;
        self.count(n);
        buf.truncate(n);
        Ok(buf)
    }

    fn control_pointer(&mut self, processor: u32, index: u64) -> Result<u64, TargetError> {
        let p = u16::try_from(processor).map_err(|_| TargetError::NoSuchProcessor(processor))?;
        let mut buf = [0u8; 8];
        self.handler
            .read_control_space(p, index, &mut buf)
            .ok_or(TargetError::NoSuchProcessor(processor))?;
        self.count(8);
        Ok(u64::from_le_bytes(buf))
    }

    fn stats(&self) -> TransportStats {
        self.stats
    }

    fn search(
        &mut self,
        address: u64,
        length: u64,
        pattern: &[u8],
    ) -> Option<Result<Option<u64>, TargetError>> {
        self.count(0);
        Some(Ok(self.handler.search(address, length, pattern)))
    }
}
