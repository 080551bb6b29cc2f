//! Long reads: a range of any length read in pieces as large as one read may be, so that the
//! layer below coalesces physically contiguous pages and fills every request to the largest
//! transfer the target allows. Where a piece fails, it is read again in halves (split on page
//! boundaries) down to single pages, so one unreadable page costs a few extra requests and
//! leaves the rest readable.
//!
//! Translated here over physical reads (not the target's own virtual read,
//! DbgKdReadVirtualMemory), because what is read lands in the page cache every other command
//! shares, and the kernel's large ranges are physically contiguous where it matters: its image
//! is mapped with 2 MB pages, so a range of it goes out in full 3,944-byte requests, with the
//! page tables costing a request per 256 entries. A range whose 4 KiB pages are scattered still
//! costs two requests a page (3,944 + 152 bytes) this way; a target-side virtual read would
//! fill those requests too, at the price of a second cache keyed by virtual address. Targets
//! that only read virtual memory (triage dumps) keep their own path in the layer below.

use std::ops::ControlFlow;

use super::cache::GRANULE;
use super::{Memory, PAGE, Space};
use crate::target::TargetError;

/// Bytes one piece of a long read spans at most (pieces are aligned to it): large enough that
/// the request cut at a piece's end is rare (one in 266 at 3,944 bytes a request), small enough
/// that halving a failed piece down to one page takes eight steps.
pub const RANGE_PIECE: u64 = 1 << 20;

/// A part of a long read, handed to the caller in address order.
#[derive(Debug)]
pub enum Piece<'a> {
    /// The bytes at the piece's address.
    Read(&'a [u8]),
    /// `len` bytes that could not be read: one page, or the part of it the range covers (more
    /// when the target is gone or the command's budget ran out: then nothing further is asked).
    Unreadable {
        /// How many bytes.
        len: u64,
        /// Why.
        error: TargetError,
    },
}

impl Memory {
    /// Reads `[va, va + len)` of `space` (the addresses wrap past the top of the address space
    /// as WinDbg's do) and hands each piece to `each` in address order; `each` stops the read by
    /// returning [`ControlFlow::Break`].
    pub fn read_range<F>(&mut self, space: Space, va: u64, len: u64, mut each: F)
    where
        F: FnMut(u64, Piece<'_>) -> ControlFlow<()>,
    {
        let mut done = 0u64;
        while done < len {
            let at = va.wrapping_add(done);
            let n = (len - done).min(RANGE_PIECE - at % RANGE_PIECE);
            if self.range_piece(space, at, n, &mut each).is_break() {
                return;
            }
            done += n;
        }
    }

    /// [`Memory::read_range`] in the kernel's address space.
    pub fn kread_range<F>(&mut self, va: u64, len: u64, mut each: F)
    where
        F: FnMut(u64, Piece<'_>) -> ControlFlow<()>,
    {
        match self.kernel_space() {
            Ok(s) => self.read_range(s, va, len, each),
            Err(error) if len > 0 => {
                let _ = each(va, Piece::Unreadable { len, error });
            }
            Err(_) => {}
        }
    }

    /// One piece (within one [`RANGE_PIECE`], so it does not wrap): read whole, else in halves.
    fn range_piece<F>(&mut self, space: Space, at: u64, n: u64, each: &mut F) -> ControlFlow<()>
    where
        F: FnMut(u64, Piece<'_>) -> ControlFlow<()>,
    {
        let error = match self.read(space, at, n as usize) {
            Ok(bytes) => return each(at, Piece::Read(&bytes)),
            Err(e) => e,
        };
        let first = at / PAGE;
        let last = (at + (n - 1)) / PAGE;
        let hopeless = matches!(
            error,
            TargetError::Gone(_) | TargetError::Cancelled | TargetError::OutOfTime
        );
        if first == last || hopeless {
            return each(at, Piece::Unreadable { len: n, error });
        }
        let mid = (first + (last - first).div_ceil(2)) * PAGE;
        self.range_piece(space, at, mid - at, each)?;
        self.range_piece(space, mid, n - (mid - at), each)
    }
}

impl Memory {
    /// Reads physical `[pa, pa + len)` straight from the target, past the cache (a complete
    /// dump reads each page once, and gigabytes of them would only push out what commands
    /// share), in requests as large as the target allows, and hands each piece to `each` in
    /// address order. Where a request fails for a reason of the memory (the target answered it
    /// could not read there), the rest of the piece is read again in halves on page boundaries
    /// down to the page that fails, so one unreadable page costs a few extra requests and the
    /// rest is read; a failure of the moment (the link, the time budget, a cancel) is handed
    /// over for the rest of the piece at once, and nothing further is asked.
    pub fn read_physical_range<F>(&mut self, pa: u64, len: u64, mut each: F)
    where
        F: FnMut(u64, Piece<'_>) -> ControlFlow<()>,
    {
        let mut done = 0u64;
        while done < len {
            let Some(at) = pa.checked_add(done) else {
                return;
            };
            let n = (len - done).min(RANGE_PIECE - at % RANGE_PIECE);
            if self.physical_piece(at, n, &mut each).is_break() {
                return;
            }
            done += n;
        }
    }

    fn physical_piece<F>(&mut self, at: u64, n: u64, each: &mut F) -> ControlFlow<()>
    where
        F: FnMut(u64, Piece<'_>) -> ControlFlow<()>,
    {
        let mut buf = vec![0u8; n as usize];
        let (got, error) = self.fetch_direct(at, &mut buf);
        let Some(error) = error else {
            return each(at, Piece::Read(&buf));
        };
        // What arrived before the failure, in whole pages, is good.
        let keep = ((at + got) & !(PAGE - 1)).saturating_sub(at).min(n);
        if keep > 0 {
            each(at, Piece::Read(&buf[..keep as usize]))?;
        }
        let (at, n) = (at + keep, n - keep);
        let first = at / PAGE;
        let last = (at + (n - 1)) / PAGE;
        if first == last || error.is_transient() {
            return each(at, Piece::Unreadable { len: n, error });
        }
        let mid = (first + (last - first).div_ceil(2)) * PAGE;
        self.physical_piece(at, mid - at, each)?;
        self.physical_piece(mid, n - (mid - at), each)
    }

    /// Fills `buf` from physical `pa` in requests of the largest transfer (whole granules):
    /// the bytes read from the start, and why the rest was not (a short answer is the target
    /// saying it could not read there).
    pub(super) fn fetch_direct(&mut self, pa: u64, buf: &mut [u8]) -> (u64, Option<TargetError>) {
        let max = (self.target.max_transfer().max(GRANULE as usize) as u64) & !(GRANULE - 1);
        self.stats.bytes_requested += buf.len() as u64;
        self.stats.cache_misses += 1;
        let mut done = 0usize;
        while done < buf.len() {
            let at = pa + done as u64;
            if let Err(e) = self.check_budget() {
                return (done as u64, Some(e));
            }
            let n = (buf.len() - done).min(max as usize);
            match self.target.read_physical(at, &mut buf[done..done + n]) {
                Ok(got) => {
                    let got = got.min(n);
                    self.stats.bytes_fetched += got as u64;
                    done += got;
                    if got < n {
                        return (
                            done as u64,
                            Some(TargetError::Unavailable {
                                address: pa + done as u64,
                            }),
                        );
                    }
                }
                Err(e) => {
                    self.record(&e, || format!("read of {n:#x} bytes at physical {at:#x}"));
                    return (done as u64, Some(e));
                }
            }
        }
        (done as u64, None)
    }
}
