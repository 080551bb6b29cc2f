//! The debugger data block (located and decoded), the dump header built from it, the
//! bugcheck data, and the decoding of encoded kernel pointers.

use kdnet_symbols::builtin;

use super::{Kernel, ModelError};

/// The debugger data block, decoded.
#[derive(Debug, Clone)]
pub struct Kdbg {
    /// Its address.
    pub address: u64,
    /// Whether it was encoded in memory.
    pub was_encoded: bool,
    /// The plain bytes (Header.Size of them).
    pub bytes: Vec<u8>,
}

impl Kdbg {
    /// A field by name (pointer-sized or 2/4-byte as the layout says).
    pub fn field(&self, name: &str) -> Option<u64> {
        let (_, off, size) = builtin::KDDEBUGGER_DATA64_FIELDS
            .iter()
            .find(|f| f.0 == name)?;
        let (off, size) = (*off as usize, *size as usize);
        let b = self.bytes.get(off..off + size)?;
        let mut a = [0u8; 8];
        a[..size].copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }
}

impl Kernel {
    /// KDDEBUGGER_DATA64, located (debugger data list, dump header or symbol) and decoded.
    pub fn kdbg(&mut self) -> Result<Kdbg, ModelError> {
        self.sync();
        if let Some(k) = &self.kdbg {
            return Ok(k.clone());
        }
        let info = self.mem.info().clone();
        let address = if let Some(list) = info.debugger_data_list {
            self.mem.u64(list)?
        } else if let Some(a) = info.kd_debugger_data_block {
            a
        } else {
            self.sym("KdDebuggerDataBlock")?
        };
        let header = self.mem.kread(address, 0x18)?;
        let tag = u32::from_le_bytes(header[0x10..0x14].try_into().unwrap_or([0; 4]));
        let (was_encoded, size) = if tag == builtin::KDBG_TAG {
            (
                false,
                u32::from_le_bytes(header[0x14..0x18].try_into().unwrap_or([0; 4])),
            )
        } else {
            let (never, always, flag) = (
                self.mem.u64(self.sym("KiWaitNever")?)?,
                self.mem.u64(self.sym("KiWaitAlways")?)?,
                self.sym("KdpDataBlockEncoded")?,
            );
            let w = u64::from_le_bytes(header[0x10..0x18].try_into().unwrap_or([0; 8]));
            let p = decode_word(w, never, always, flag);
            if p as u32 != builtin::KDBG_TAG {
                return Err(ModelError::Corrupt(format!(
                    "the debugger data block at {address:#x} does not decode (tag {:#x})",
                    p as u32
                )));
            }
            (true, (p >> 32) as u32)
        };
        if !(0x80..0x1000).contains(&size) {
            return Err(ModelError::Corrupt(format!(
                "the debugger data block claims {size} bytes"
            )));
        }
        let raw = self.mem.kread(address, size as usize)?;
        let bytes = if was_encoded {
            let never = self.mem.u64(self.sym("KiWaitNever")?)?;
            let always = self.mem.u64(self.sym("KiWaitAlways")?)?;
            let flag = self.sym("KdpDataBlockEncoded")?;
            raw.chunks_exact(8)
                .flat_map(|c| {
                    decode_word(
                        u64::from_le_bytes(c.try_into().unwrap_or([0; 8])),
                        never,
                        always,
                        flag,
                    )
                    .to_le_bytes()
                })
                .collect()
        } else {
            raw
        };
        let k = Kdbg {
            address,
            was_encoded,
            bytes,
        };
        self.kdbg = Some(k.clone());
        Ok(k)
    }

    /// The header of a dump of this kernel: what a reader needs to find its way in the pages.
    pub fn dump_header(&mut self, comment: &str) -> Result<crate::dump::DumpHeader, ModelError> {
        let space = self.mem.kernel_space()?;
        let modules = match self.mem.info().ps_loaded_module_list {
            Some(h) => h,
            None => self.sym("PsLoadedModuleList")?,
        };
        let processes = match self.mem.info().ps_active_process_head {
            Some(h) => h,
            None => self.sym("PsActiveProcessHead")?,
        };
        // A header written from a read that failed just now would be wrong for good.
        let transient = |e: &ModelError| matches!(e, ModelError::Target(t) if t.is_transient());
        // The loader's list is read now, so that its pages are among those the dump holds.
        match self.reread_modules() {
            Err(e) if transient(&e) => return Err(e),
            _ => {}
        }
        let kdbg = match self.kdbg() {
            Ok(k) => k.address,
            Err(e) if transient(&e) => return Err(e),
            Err(_) => 0,
        };
        let processors = match self.processors() {
            Ok(p) => p.len() as u32,
            Err(e) if transient(&e) => return Err(e),
            Err(_) => self.mem.info().processors,
        };
        let context = self.processor_context(0)?.as_bytes().to_vec();
        // Every processor's saved state, so that the dump answers for each of them.
        if let Ok(cpus) = self.processors() {
            for c in cpus {
                let _ = self.saved_context(c.prcb);
            }
        }
        Ok(crate::dump::DumpHeader {
            build: self.build,
            directory_table_base: space.dtb,
            ps_loaded_module_list: modules,
            ps_active_process_head: processes,
            kd_debugger_data_block: kdbg,
            processors,
            bugcheck: self.bugcheck()?.unwrap_or((0, [0; 4])),
            context,
            comment: comment.to_string(),
            system_time: 0,
            up_time: 0,
        })
    }

    /// Bugcheck code and parameters: the target's record (dumps) or KiBugCheckData.
    pub fn bugcheck(&mut self) -> Result<Option<(u32, [u64; 4])>, ModelError> {
        if let Some(b) = self.mem.info().bugcheck {
            return Ok((b.0 != 0).then_some(b));
        }
        let at = match self.sym("KiBugCheckData") {
            Ok(a) => a,
            Err(_) => match self.kdbg().ok().and_then(|k| k.field("KiBugcheckData")) {
                Some(a) => a,
                None => return Err(ModelError::NoKernelSymbols(self.nt_source.clone())),
            },
        };
        let b = self.mem.kread(at, 40)?;
        let q = |i: usize| u64::from_le_bytes(b[8 * i..8 * i + 8].try_into().unwrap_or([0; 8]));
        let code = q(0) as u32;
        Ok((code != 0).then_some((code, [q(1), q(2), q(3), q(4)])))
    }
}

/// `p = KiWaitAlways ^ bswap(A ^ rotl(c ^ KiWaitNever, KiWaitNever mod 64))`.
pub fn decode_word(c: u64, never: u64, always: u64, flag_address: u64) -> u64 {
    always ^ (flag_address ^ (c ^ never).rotate_left((never & 63) as u32)).swap_bytes()
}
