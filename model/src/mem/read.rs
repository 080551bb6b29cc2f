//! Virtual reads (translated, or direct on targets that only read virtual memory), reads
//! from the kernel address space and the typed reads over them.

use super::cache::{CachedPage, GRANULE};
use super::{MAX_READ, Memory, PAGE, QUICK_MAX, QUICK_WINDOW, Space, canonical};
use crate::target::TargetError;

impl Memory {
    /// Reads `len` bytes at `va` in `space`.
    pub fn read(&mut self, space: Space, va: u64, len: usize) -> Result<Vec<u8>, TargetError> {
        self.read_impl(space, va, len, false)
    }

    /// Reads with read-ahead: a miss fetches up to one full transfer from `va` onwards, within
    /// physically contiguous pages (for walks over lists of nearby nodes).
    pub fn read_ahead(
        &mut self,
        space: Space,
        va: u64,
        len: usize,
    ) -> Result<Vec<u8>, TargetError> {
        self.read_impl(space, va, len, true)
    }

    fn read_impl(
        &mut self,
        space: Space,
        va: u64,
        len: usize,
        ahead: bool,
    ) -> Result<Vec<u8>, TargetError> {
        let r = self.read_inner(space, va, len, ahead);
        if let Err(e) = &r {
            self.record(e, || format!("read of {len:#x} bytes at {va:#x}"));
        }
        r
    }

    fn read_inner(
        &mut self,
        space: Space,
        va: u64,
        len: usize,
        ahead: bool,
    ) -> Result<Vec<u8>, TargetError> {
        if len > MAX_READ {
            return Err(TargetError::TooLarge {
                what: "a read",
                value: len as u64,
                limit: MAX_READ as u64,
            });
        }
        if len == 0 {
            return Ok(Vec::new());
        }
        if !canonical(va, self.levels)
            || !canonical(va.wrapping_add(len as u64 - 1), self.levels)
            || va.checked_add(len as u64).is_none()
        {
            return Err(TargetError::NonCanonical(va));
        }
        if self.virtual_only {
            return self.read_direct(va, len);
        }
        self.refresh();
        if self.quick && len <= QUICK_MAX {
            let end = va + len as u64;
            if let Some((at, w)) = self
                .quick_windows
                .iter()
                .find(|(at, w)| *at <= va && end <= at + w.len() as u64)
            {
                let skip = (va - at) as usize;
                let value = w[skip..skip + len].to_vec();
                self.stats.bytes_requested += len as u64;
                self.stats.cache_hits += 1;
                return Ok(value);
            }
            // The bytes around the value, within its page (mapped as the value is): the
            // fields of a structure a condition reads are near each other. A value across two
            // pages is read as it is.
            let page = va & !(PAGE - 1);
            let (at, want) = if (end - 1) & !(PAGE - 1) == page {
                let at = va.saturating_sub(QUICK_WINDOW / 2).max(page) & !7;
                (
                    at,
                    (QUICK_WINDOW.max(end - at).min(page + PAGE - at)) as usize,
                )
            } else {
                (va, len)
            };
            let skip = (va - at) as usize;
            self.check_budget()?;
            let mut buf = vec![0u8; want];
            if let Some(r) = self.target.read_virtual_live(at, &mut buf) {
                self.stats.bytes_requested += len as u64;
                let got = match r {
                    Ok(g) => g,
                    Err(e) => {
                        self.seen(&e);
                        return Err(e);
                    }
                };
                self.stats.bytes_fetched += got as u64;
                self.stats.cache_misses += 1;
                if got < skip + len {
                    return Err(TargetError::Unavailable {
                        address: (at + got as u64).max(va),
                    });
                }
                buf.truncate(got);
                let value = buf[skip..skip + len].to_vec();
                self.quick_windows.push((at, buf));
                return Ok(value);
            }
        }
        self.stats.bytes_requested += len as u64;
        // Translate the pages of the request into physically contiguous runs.
        let mut runs: Vec<(u64, u64, u64)> = Vec::new(); // (va, pa, len)
        let end = va + len as u64;
        let mut at = va;
        while at < end {
            let pa = self.translate_inner(space, at)?;
            let n = (PAGE - at % PAGE).min(end - at);
            match runs.last_mut() {
                Some((_, rpa, rlen)) if *rpa + *rlen == pa => *rlen += n,
                _ => runs.push((at, pa, n)),
            }
            at += n;
        }
        for (_, pa, n) in &runs {
            self.note_needed(*pa, *n);
        }
        let all_cached = runs.iter().all(|(_, pa, n)| self.cached(*pa, *n));
        if all_cached {
            self.stats.cache_hits += 1;
        } else {
            self.stats.cache_misses += 1;
            let max_g = (self.target.max_transfer().max(GRANULE as usize) as u64) & !(GRANULE - 1);
            let last = runs.len() - 1;
            for (i, (rva, pa, n)) in runs.clone().into_iter().enumerate() {
                if self.cached(pa, n) {
                    continue;
                }
                let mut fetch_len = n;
                // The window starts at the granule holding `pa` and stays within one request.
                let max = max_g - pa % GRANULE;
                if ahead && i == last && n < max {
                    // Extend through following pages while they stay physically contiguous.
                    let mut ext = n;
                    let mut next_va = rva + n;
                    while ext < max {
                        if next_va % PAGE != 0 {
                            ext = (ext + (PAGE - next_va % PAGE)).min(max);
                            next_va = (next_va + PAGE) & !(PAGE - 1);
                            continue;
                        }
                        match self.translate_inner(space, next_va) {
                            Ok(npa) if npa == pa + ext => {
                                ext = (ext + PAGE).min(max);
                                next_va += PAGE;
                            }
                            _ => break,
                        }
                    }
                    fetch_len = ext;
                }
                // The part the caller needs must arrive; read-ahead beyond it is best effort.
                if fetch_len > n {
                    if self.fetch(pa, fetch_len).is_err() {
                        self.fetch(pa, n)?;
                    }
                } else {
                    self.fetch(pa, n)?;
                }
            }
        }
        let mut out = vec![0u8; len];
        let mut off = 0usize;
        for (_, pa, n) in runs {
            self.copy_out(pa, &mut out[off..off + n as usize]);
            off += n as usize;
        }
        Ok(out)
    }

    fn read_direct(&mut self, va: u64, len: usize) -> Result<Vec<u8>, TargetError> {
        self.stats.bytes_requested += len as u64;
        let mut out = vec![0u8; len];
        let mut off = 0usize;
        let mut hit = true;
        while off < len {
            let a = va + off as u64;
            let page = a / PAGE;
            let po = (a % PAGE) as usize;
            let n = (len - off).min(PAGE as usize - po);
            let cached = self.virt.get(&page).is_some_and(|p| {
                let g = GRANULE as usize;
                (po / g..(po + n).div_ceil(g)).all(|i| p.has(i))
            });
            if !cached {
                hit = false;
                self.check_budget()?;
                let mut buf = vec![0u8; n];
                let got = match self.target.read_virtual_direct(a, &mut buf) {
                    Some(Ok(g)) => g,
                    Some(Err(e)) => {
                        self.seen(&e);
                        return Err(e);
                    }
                    None => 0,
                };
                self.stats.bytes_fetched += got as u64;
                if got < n {
                    return Err(TargetError::Unavailable {
                        address: a + got as u64,
                    });
                }
                let p = self.virt.entry(page).or_insert_with(CachedPage::new);
                p.data[po..po + n].copy_from_slice(&buf);
                // Only whole granules are marked; edges are re-read if needed.
                let g = GRANULE as usize;
                for i in po.div_ceil(g)..(po + n) / g {
                    p.set(i);
                }
            }
            if let Some(p) = self.virt.get(&page)
                && cached
            {
                out[off..off + n].copy_from_slice(&p.data[po..po + n]);
            } else if !cached {
                let p = self.virt.get(&page).expect("stored above");
                out[off..off + n].copy_from_slice(&p.data[po..po + n]);
            }
            off += n;
        }
        if hit {
            self.stats.cache_hits += 1;
        } else {
            self.stats.cache_misses += 1;
        }
        Ok(out)
    }

    /// Reads from the kernel address space.
    pub fn kread(&mut self, va: u64, len: usize) -> Result<Vec<u8>, TargetError> {
        let s = self.kernel_space()?;
        self.read(s, va, len)
    }

    /// Reads from the kernel address space with read-ahead.
    pub fn kread_ahead(&mut self, va: u64, len: usize) -> Result<Vec<u8>, TargetError> {
        let s = self.kernel_space()?;
        self.read_ahead(s, va, len)
    }

    /// Many u64s from the kernel address space, read in as few requests as the pages allow:
    /// addresses on one page are fetched by one read spanning them (split where a span would
    /// exceed the largest transfer). Unreadable ones come back as errors in place.
    pub fn gather_u64(&mut self, addrs: &[u64]) -> Vec<Result<u64, TargetError>> {
        let max = self.target.max_transfer().max(8) as u64;
        let mut order: Vec<usize> = (0..addrs.len()).collect();
        order.sort_by_key(|&i| addrs[i]);
        let mut i = 0;
        while i < order.len() {
            let start = addrs[order[i]];
            let page = start & !(PAGE - 1);
            let mut j = i;
            while j + 1 < order.len() {
                let next = addrs[order[j + 1]];
                if next & !(PAGE - 1) != page || next.saturating_add(8) - start > max {
                    break;
                }
                j += 1;
            }
            let end = addrs[order[j]].saturating_add(8);
            // One fetch for the span; the reads below are then served from the cache.
            let _ = self.kread(start, (end - start) as usize);
            i = j + 1;
        }
        addrs.iter().map(|&a| self.u64(a)).collect()
    }

    /// A u64 from the kernel address space.
    pub fn u64(&mut self, va: u64) -> Result<u64, TargetError> {
        let b = self.kread(va, 8)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }

    /// A u32 from the kernel address space.
    pub fn u32(&mut self, va: u64) -> Result<u32, TargetError> {
        let b = self.kread(va, 4)?;
        Ok(u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
    }

    /// A u16 from the kernel address space.
    pub fn u16(&mut self, va: u64) -> Result<u16, TargetError> {
        let b = self.kread(va, 2)?;
        Ok(u16::from_le_bytes(b.try_into().unwrap_or([0; 2])))
    }

    /// A byte from the kernel address space.
    pub fn u8(&mut self, va: u64) -> Result<u8, TargetError> {
        Ok(self.kread(va, 1)?[0])
    }
}
