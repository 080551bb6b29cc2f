//! Reading pages of an open dump: the page map lookups and the [`Target`] implementation.

use kdnet_arch::Context;

use super::{DumpFile, Layout, PAGE, read_at};
use crate::target::{ModuleRecord, Target, TargetError, TargetInfo, TransportStats};

impl DumpFile {
    fn phys_offset(&self, pfn: u64) -> Option<u64> {
        match &self.layout {
            Layout::Runs(runs) => runs
                .iter()
                .find(|(b, c, _)| pfn >= *b && pfn < b + c)
                .map(|(b, _, idx)| 0x2000 + (idx + pfn - b) * PAGE),
            Layout::Bitmap {
                first,
                words,
                ranks,
            } => {
                let w = words.get((pfn / 64) as usize)?;
                let bit = pfn % 64;
                if w & (1 << bit) == 0 {
                    return None;
                }
                let below = u64::from((w & ((1u64 << bit) - 1)).count_ones());
                Some(first + (ranks[(pfn / 64) as usize] + below) * PAGE)
            }
            Layout::Regions(_) => None,
        }
    }

    /// Physical pages stored (full and bitmap dumps).
    pub fn page_count(&self) -> u64 {
        match &self.layout {
            Layout::Runs(r) => r.iter().map(|x| x.1).sum(),
            Layout::Bitmap { words, .. } => words.iter().map(|w| u64::from(w.count_ones())).sum(),
            Layout::Regions(_) => 0,
        }
    }
}

impl Target for DumpFile {
    fn info(&self) -> TargetInfo {
        self.info.clone()
    }

    fn read_physical(&mut self, address: u64, buf: &mut [u8]) -> Result<usize, TargetError> {
        if matches!(self.layout, Layout::Regions(_)) {
            return Err(TargetError::Unsupported(
                "read physical memory from a triage dump",
            ));
        }
        let mut done = 0;
        while done < buf.len() {
            let Some(a) = address.checked_add(done as u64) else {
                break;
            };
            let Some(off) = self.phys_offset(a / PAGE) else {
                break;
            };
            let n = (buf.len() - done).min((PAGE - a % PAGE) as usize);
            let got = read_at(&self.file, off + a % PAGE, &mut buf[done..done + n])
                .map_err(|e| TargetError::Transport(e.to_string()))?;
            self.reads += 1;
            self.bytes += got as u64;
            done += got;
            if got < n {
                break;
            }
        }
        Ok(done)
    }

    fn read_virtual_direct(
        &mut self,
        address: u64,
        buf: &mut [u8],
    ) -> Option<Result<usize, TargetError>> {
        let Layout::Regions(regions) = &self.layout else {
            return None;
        };
        let mut done = 0;
        while done < buf.len() {
            let Some(a) = address.checked_add(done as u64) else {
                break;
            };
            let i = regions.partition_point(|r| r.va <= a);
            let Some(r) = i
                .checked_sub(1)
                .map(|i| regions[i])
                .filter(|r| a < r.va + r.len)
            else {
                break;
            };
            let n = (buf.len() - done).min((r.va + r.len - a) as usize);
            match read_at(&self.file, r.off + (a - r.va), &mut buf[done..done + n]) {
                Ok(got) => {
                    self.reads += 1;
                    self.bytes += got as u64;
                    done += got;
                    if got < n {
                        break;
                    }
                }
                Err(e) => return Some(Err(TargetError::Transport(e.to_string()))),
            }
        }
        Some(Ok(done))
    }

    fn max_transfer(&self) -> usize {
        1 << 20
    }

    fn context(&mut self, processor: u32) -> Result<Context, TargetError> {
        if processor != 0 {
            return Err(TargetError::Unsupported(
                "give contexts of other processors from a dump (read their KPRCB)",
            ));
        }
        Context::from_bytes(&self.context).map_err(|e| TargetError::Transport(e.to_string()))
    }

    fn special_registers(&mut self, processor: u32) -> Result<Vec<u8>, TargetError> {
        match (&self.special, processor) {
            (Some(s), 0) => Ok(s.clone()),
            _ => Err(TargetError::Unsupported("read control space from a dump")),
        }
    }

    fn control_pointer(&mut self, _processor: u32, _index: u64) -> Result<u64, TargetError> {
        Err(TargetError::Unsupported("read control space from a dump"))
    }

    fn stats(&self) -> TransportStats {
        TransportStats {
            round_trips: self.reads,
            bytes: self.bytes,
        }
    }

    fn module_list(&mut self) -> Option<Vec<ModuleRecord>> {
        self.modules.clone()
    }
}
