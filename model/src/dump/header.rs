//! Reading a dump's header: the signature checks, what the header says of the target, and
//! the page map of each kind (physical memory runs, the page bitmap, triage regions).

use kdnet_arch::le::Le;

use super::{
    Backing, DumpError, DumpFile, FILLER, Layout, MAX_PFN, ModuleRecord, PAGE, Region, read_at,
};
use crate::target::TargetInfo;

/// The header is a 64-bit x64 `PAGEDU64` one.
pub(super) fn check_signature(h: &[u8]) -> Result<(), DumpError> {
    if &h[..4] != b"PAGE" {
        return Err(DumpError::NotADump("no PAGE signature".into()));
    }
    if &h[4..8] != b"DU64" {
        return Err(DumpError::NotADump(format!(
            "signature {:?} (only 64-bit DU64 dumps are read)",
            String::from_utf8_lossy(&h[4..8])
        )));
    }
    if Le(h).u32(0x30) != 0x8664 {
        return Err(DumpError::NotADump(format!(
            "machine {:#x} is not x64",
            Le(h).u32(0x30)
        )));
    }
    Ok(())
}

/// What the header records of the target (the description is filled in by the caller).
pub(super) fn header_info(h: &[u8]) -> TargetInfo {
    let filler_or = |v: u64| (v as u32 != FILLER && v != 0).then_some(v);
    TargetInfo {
        build: Le(h).u32(0xC),
        kernel_base: None,
        ps_loaded_module_list: filler_or(Le(h).u64(0x20)),
        ps_active_process_head: filler_or(Le(h).u64(0x28)),
        debugger_data_list: None,
        kd_debugger_data_block: filler_or(Le(h).u64(0x80)),
        directory_table_base: filler_or(Le(h).u64(0x10)),
        processors: Le(h).u32(0x34).clamp(1, 4096),
        current_processor: 0,
        bugcheck: Some((
            Le(h).u32(0x38),
            [
                Le(h).u64(0x40),
                Le(h).u64(0x48),
                Le(h).u64(0x50),
                Le(h).u64(0x58),
            ],
        )),
        live: false,
        last_event: None,
        last_exception: header_exception(h),
        description: String::new(),
    }
}

/// The exception record the header keeps (DUMP_HEADER64.Exception at 0xF00), unless it holds
/// the header's filler or no code; an error when it cannot be a record.
fn header_exception(h: &[u8]) -> Option<Result<crate::nt::records::ExceptionRecord, String>> {
    let b = h.get(0xF00..0xF00 + crate::nt::records::EXCEPTION_RECORD_LEN)?;
    let code = Le(b).u32(0);
    if code == 0 || code == FILLER {
        return None;
    }
    Some(
        crate::nt::records::ExceptionRecord::parse(b)
            .map_err(|why| format!("the dump header's exception record is damaged: {why}")),
    )
}

/// The physical memory runs of a full dump.
pub(super) fn runs_layout(h: &[u8], size: u64) -> Result<Layout, DumpError> {
    let n = Le(h).u32(0x88);
    if n == FILLER || n > 43 {
        return Err(DumpError::Damaged(format!("{n:#x} physical memory runs")));
    }
    let mut runs = Vec::new();
    let mut index = 0u64;
    for i in 0..n as usize {
        let base = Le(h).u64(0x98 + 16 * i);
        let count = Le(h).u64(0xA0 + 16 * i);
        // x64 physical addresses have 52 bits: page numbers below 2^40.
        if count > MAX_PFN || base > MAX_PFN - count {
            return Err(DumpError::Damaged(format!(
                "run {i} has {count} pages from page {base:#x}"
            )));
        }
        runs.push((base, count, index));
        index += count;
    }
    if 0x2000 + index * PAGE > size {
        return Err(DumpError::Damaged(format!(
            "runs describe {index} pages but the file holds {}",
            size.saturating_sub(0x2000) / PAGE
        )));
    }
    Ok(Layout::Runs(runs))
}

/// The page bitmap of a kernel or bitmap dump, with the rank of each word.
pub(super) fn bitmap_layout(
    file: &Backing,
    size: u64,
    dump_type: u32,
    io: impl Fn(std::io::Error) -> DumpError,
) -> Result<Layout, DumpError> {
    let mut b = vec![0u8; 0x38];
    read_at(file, 0x2000, &mut b).map_err(&io)?;
    if !matches!(&b[..4], b"SDMP" | b"FDMP") || &b[4..8] != b"DUMP" {
        return Err(DumpError::Unsupported(dump_type));
    }
    let first = Le(&b).u64(0x20);
    let present = Le(&b).u64(0x28);
    let pages = Le(&b).u64(0x30);
    if pages > MAX_PFN || first > size {
        return Err(DumpError::Damaged(format!(
            "bitmap header: {pages} pages, data at {first:#x}"
        )));
    }
    let nwords = pages.div_ceil(64) as usize;
    if 0x2038 + nwords as u64 * 8 > size {
        return Err(DumpError::Damaged(
            "the page bitmap runs past the end of the file".into(),
        ));
    }
    let mut raw = vec![0u8; nwords * 8];
    read_at(file, 0x2038, &mut raw).map_err(&io)?;
    let words: Vec<u64> = raw
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    let mut ranks = Vec::with_capacity(words.len());
    let mut total = 0u64;
    for w in &words {
        ranks.push(total);
        total += u64::from(w.count_ones());
    }
    if total != present {
        return Err(DumpError::Damaged(format!(
            "bitmap has {total} pages set, header says {present}"
        )));
    }
    if first + total * PAGE > size {
        return Err(DumpError::Damaged(format!(
            "{total} pages do not fit in the file"
        )));
    }
    Ok(Layout::Bitmap {
        first,
        words,
        ranks,
    })
}

impl DumpFile {
    pub(super) fn open_triage(&mut self, info: &mut TargetInfo) -> Result<(), DumpError> {
        let t = self.slice(0x2000, 0x80, "the triage header")?;
        let field = |o: usize| u64::from(Le(&t).u32(o));
        let valid = field(0x08);
        if valid + 4 <= self.size {
            let v = self.slice(valid, 4, "the triage end marker")?;
            if &v != b"TRGD" {
                return Err(DumpError::Damaged(format!("no TRGD marker at {valid:#x}")));
            }
        }
        let mut regions = Vec::new();
        // A region whose end would pass the top of the address space is not one.
        let mut add = |va: u64, off: u64, len: u64| {
            if va != 0 && len != 0 && va.checked_add(len).is_some() {
                regions.push(Region { va, off, len });
            }
        };
        let top = Le(&t).u64(0x48);
        let (stack_off, stack_len) = (field(0x28), field(0x2C));
        self.slice(stack_off, stack_len, "the call stack")?;
        add(top, stack_off, stack_len);
        let (dp_addr, dp_off, dp_len) = (Le(&t).u64(0x60), field(0x68), field(0x6C));
        if dp_len != 0 {
            self.slice(dp_off, dp_len, "the data page")?;
            add(dp_addr, dp_off, dp_len);
        }
        let (kd_off, kd_len) = (field(0x70), field(0x74));
        let kdbg = if kd_len != 0 {
            let k = self.slice(kd_off, kd_len, "the debugger data copy")?;
            if let Some(va) = info.kd_debugger_data_block {
                add(va, kd_off, kd_len);
            }
            Some(k)
        } else {
            None
        };
        let (blocks_off, blocks) = (field(0x78), field(0x7C));
        if blocks > 1 << 20 {
            return Err(DumpError::Damaged(format!("{blocks} data blocks")));
        }
        let table = self.slice(blocks_off, blocks * 16, "the data block table")?;
        for i in 0..blocks as usize {
            let (va, off, len) = (
                Le(&table).u64(16 * i),
                u64::from(Le(&table).u32(16 * i + 8)),
                u64::from(Le(&table).u32(16 * i + 12)),
            );
            if off + len > self.size {
                return Err(DumpError::Damaged(format!(
                    "data block {i} lies outside the file"
                )));
            }
            add(va, off, len);
        }
        // Copies of the crashing CPU's KPRCB, thread and process (where no data block has them).
        let k16 = |o: usize| {
            kdbg.as_ref().map_or(0, |k| {
                u64::from(u16::from_le_bytes(
                    k.get(o..o + 2)
                        .and_then(|x| x.try_into().ok())
                        .unwrap_or([0; 2]),
                ))
            })
        };
        let (prcb_off, proc_off, thread_off) = (field(0x1C), field(0x20), field(0x24));
        let size_prcb = k16(0x2B0);
        let size_thread = k16(0x2C0);
        let size_process = k16(0x2A8);
        if prcb_off != 0 && size_prcb != 0 {
            let prcb = self.slice(prcb_off, size_prcb, "the KPRCB copy")?;
            let sr = k16(0x2F2) as usize;
            self.special = prcb.get(sr..sr + 0xE0).map(<[u8]>::to_vec);
            let current = Le(&prcb).u64(k16(0x2B4) as usize);
            if thread_off != 0 && size_thread != 0 && current != 0 {
                let thread = self.slice(thread_off, size_thread, "the thread copy")?;
                add(current, thread_off, size_thread);
                let process = Le(&thread).u64(k16(0x2A0) as usize);
                if proc_off != 0 && size_process != 0 && process != 0 {
                    add(process, proc_off, size_process);
                }
            }
        }
        regions.sort_by_key(|r| r.va);
        self.layout = Layout::Regions(regions);
        // Drivers and their names.
        let (list_off, count, pool_off, pool_len) =
            (field(0x30), field(0x34), field(0x38), field(0x3C));
        if count > 0 {
            if count > 1 << 16 {
                return Err(DumpError::Damaged(format!("{count} drivers")));
            }
            let stride = if pool_off > list_off && (pool_off - list_off) % count == 0 {
                (pool_off - list_off) / count
            } else {
                0x90
            };
            let list = self.slice(list_off, stride * count, "the driver list")?;
            self.slice(pool_off, pool_len, "the string pool")?;
            let mut mods = Vec::with_capacity(count as usize);
            for i in 0..count as usize {
                let e = &list[i * stride as usize..];
                let name_at = u64::from(Le(e).u32(0));
                let name = self.dump_string(name_at).unwrap_or_default();
                let file = name.rsplit('\\').next().unwrap_or(&name).to_string();
                mods.push(ModuleRecord {
                    name: file,
                    path: name,
                    base: Le(e).u64(0x38),
                    size: Le(e).u32(0x48),
                    checksum: Le(e).u32(0x80),
                    timestamp: Le(e).u32(0x88),
                });
            }
            if let Some(first) = mods.first() {
                info.kernel_base = Some(first.base);
            }
            self.modules = Some(mods);
        }
        Ok(())
    }

    fn dump_string(&self, off: u64) -> Option<String> {
        let len = u64::from(Le(&self.slice(off, 4, "a driver name").ok()?).u32(0)).min(1024);
        let raw = self.slice(off + 4, len * 2, "a driver name").ok()?;
        Some(kdnet_arch::le::utf16(&raw))
    }
}
