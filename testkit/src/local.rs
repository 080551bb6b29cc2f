//! A [`Target`] over an in-process [`TargetHandler`]: the simulated machine (or any handler)
//! without a network between. Each call counts as one round trip and requests are cut to the
//! same transfer size a KDNET session uses, so counts match what the wire would see.

use std::time::{Duration, Instant};

use kdnet::api::{MAX_TRANSFER, StateChange64};
use kdnet::target::{Activity, Breakpoints, Resume, StopReason, TargetHandler};
use kdnet_arch::Context;
use kdnet_live::stop_event as kdnet_stop;

use kdnet_model::target::{Go, StopEvent, Target, TargetError, TargetInfo, TransportStats};

/// How long an in-process target runs after `go` before it is broken into, when the caller set
/// no deadline (a simulated machine with nothing to stop it would otherwise run for ever).
pub const RUN_LIMIT: Duration = Duration::from_millis(300);

/// A stopped in-process target.
pub struct LocalTarget<H: TargetHandler> {
    handler: H,
    info: TargetInfo,
    max_transfer: usize,
    stats: TransportStats,
    breakpoints: Breakpoints,
    stop: Option<StateChange64>,
    serial: u64,
    ran: bool,
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
            breakpoints: Breakpoints::default(),
            stop: None,
            serial: 1,
            ran: false,
        }
    }

    /// The breakpoints written in the machine's memory and not removed: (address, byte).
    pub fn breakpoints(&self) -> Vec<(u64, u8)> {
        self.breakpoints.list()
    }

    fn stopped(&mut self, mut sc: StateChange64) -> StopEvent {
        self.breakpoints.report(&mut self.handler, &mut sc);
        self.serial += 1;
        let e = kdnet_stop(&sc, self.serial);
        self.stop = Some(sc);
        e
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
    fn read_virtual_live(
        &mut self,
        address: u64,
        buf: &mut [u8],
    ) -> Option<Result<usize, TargetError>> {
        self.count(buf.len());
        let processor = self.stop.as_ref().map_or(0, |s| s.processor);
        Some(Ok(self.handler.read_virtual(processor, address, buf)))
    }

    fn stop_event(&mut self) -> Option<StopEvent> {
        self.stop.as_ref().map(|sc| kdnet_stop(sc, self.serial))
    }

    fn write_breakpoint(&mut self, address: u64) -> Result<u32, TargetError> {
        self.count(0);
        self.breakpoints
            .write(&mut self.handler, 0, address)
            .ok_or(TargetError::Unavailable { address })
    }

    fn restore_breakpoint(&mut self, handle: u32) -> Result<bool, TargetError> {
        self.count(0);
        Ok(self.breakpoints.restore(&mut self.handler, handle))
    }

    fn set_context(&mut self, processor: u32, context: &Context) -> Result<(), TargetError> {
        self.count(context.as_bytes().len());
        if self.handler.set_context(processor as u16, context) {
            Ok(())
        } else {
            Err(TargetError::NoSuchProcessor(processor))
        }
    }

    fn take_invalidation(&mut self) -> bool {
        std::mem::take(&mut self.ran)
    }

    fn go(&mut self, how: Go) -> Result<(), TargetError> {
        self.count(0);
        self.stop = None;
        self.ran = true;
        self.handler.resumed_with(Resume {
            status: how.status,
            trace: how.trace,
            dr7: Some(how.dr7),
        });
        Ok(())
    }

    fn wait_stop(
        &mut self,
        deadline: Option<Instant>,
        cancel: Option<&std::sync::atomic::AtomicBool>,
    ) -> Result<(StopEvent, bool), TargetError> {
        let end = deadline.unwrap_or_else(|| Instant::now() + RUN_LIMIT);
        loop {
            if let Some(Activity::Stop(sc)) = self.handler.poll(Instant::now()) {
                return Ok((self.stopped(sc), false));
            }
            if Instant::now() >= end
                || cancel.is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst))
            {
                let sc = self.handler.stop_report(StopReason::BreakIn);
                return Ok((self.stopped(sc), true));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

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
