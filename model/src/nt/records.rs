//! The records an exception leaves in memory: a CONTEXT (what `.cxr` loads), a KTRAP_FRAME
//! (what `.trap` loads; its layout from the kernel's symbols) and an EXCEPTION_RECORD (what
//! `.exr` shows). Each is checked for what it must hold before it is believed: an address that
//! holds something else gives an error that says what was wrong, not registers made of noise.

use kdnet_arch::le::Le;
use kdnet_arch::{CONTEXT_LEN, Context, Reg};

use super::{Kernel, ModelError};

/// ContextFlags' architecture bit (CONTEXT_AMD64).
const CONTEXT_AMD64: u32 = 0x0010_0000;
/// Bytes of an x64 EXCEPTION_RECORD.
pub const EXCEPTION_RECORD_LEN: usize = 0x98;
/// Most parameters an exception record holds (EXCEPTION_MAXIMUM_PARAMETERS).
pub const MAX_EXCEPTION_PARAMETERS: usize = 15;

/// An EXCEPTION_RECORD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExceptionRecord {
    /// ExceptionCode (`0xc0000005`).
    pub code: u32,
    /// ExceptionFlags (1: not continuable).
    pub flags: u32,
    /// ExceptionRecord: the chained record (0 when none).
    pub chained: u64,
    /// ExceptionAddress.
    pub address: u64,
    /// ExceptionInformation[0..NumberParameters].
    pub parameters: Vec<u64>,
}

impl ExceptionRecord {
    /// Decodes the x64 layout. Errors say what does not fit an exception record.
    pub fn parse(b: &[u8]) -> Result<ExceptionRecord, String> {
        if b.len() < EXCEPTION_RECORD_LEN {
            return Err(format!(
                "{} bytes are too few for an exception record",
                b.len()
            ));
        }
        let l = Le(b);
        let n = l.u32(0x18) as usize;
        if n > MAX_EXCEPTION_PARAMETERS {
            return Err(format!(
                "NumberParameters is {n}, more than the {MAX_EXCEPTION_PARAMETERS} a record holds"
            ));
        }
        Ok(ExceptionRecord {
            code: l.u32(0),
            flags: l.u32(4),
            chained: l.u64(8),
            address: l.u64(0x10),
            parameters: (0..n).map(|i| l.u64(0x20 + 8 * i)).collect(),
        })
    }
}

/// The registers a trap frame holds, as a CONTEXT (the others zero), and which those are.
#[derive(Debug, Clone)]
pub struct TrapFrame {
    /// The registers: the volatile ones, RBP, RIP, RSP, the flags and the segments; RBX, RSI,
    /// RDI and R12–R15 are zero (a trap frame does not keep them).
    pub context: Context,
    /// PreviousMode: 0 kernel, 1 user.
    pub previous_mode: u8,
    /// The ErrorCode slot: what the processor pushed for a page fault or general-protection
    /// fault (an interrupt's entry leaves a placeholder there).
    pub error_code: Option<u64>,
    /// FaultAddress (CR2 of a page fault), when the frame holds one.
    pub fault_address: Option<u64>,
}

/// Code selectors a kernel or user frame holds (kernel 0x10, user 0x33, 32-bit user 0x23).
fn plausible_cs(cs: u16) -> bool {
    matches!(cs, 0x10 | 0x33 | 0x23)
}

impl Kernel {
    /// The CONTEXT at `addr`.
    pub fn context_record(&mut self, addr: u64) -> Result<Context, ModelError> {
        let b = self.mem.kread(addr, CONTEXT_LEN)?;
        let c = Context::from_bytes(&b)
            .map_err(|e| ModelError::Corrupt(format!("context record at {addr:#x}: {e}")))?;
        let flags = c.flags();
        if flags & CONTEXT_AMD64 == 0 {
            return Err(ModelError::Corrupt(format!(
                "{addr:#x} does not hold an x64 context record: its ContextFlags {flags:#x} \
                 lack CONTEXT_AMD64 ({CONTEXT_AMD64:#x})"
            )));
        }
        if !plausible_cs(c.cs()) {
            return Err(ModelError::Corrupt(format!(
                "{addr:#x} does not hold a context record: its code selector {:#x} is not \
                 kernel (0x10) or user (0x33, 0x23) code",
                c.cs()
            )));
        }
        Ok(c)
    }

    /// The trap frame at `addr`, its layout from the kernel's `_KTRAP_FRAME`.
    pub fn trap_frame(&mut self, addr: u64) -> Result<TrapFrame, ModelError> {
        let v = self.view("_KTRAP_FRAME", addr)?;
        let cs = v.get("SegCs")? as u16;
        if !plausible_cs(cs) {
            return Err(ModelError::Corrupt(format!(
                "{addr:#x} does not hold a trap frame: its code selector {cs:#x} is not \
                 kernel (0x10) or user (0x33, 0x23) code"
            )));
        }
        let mut c = Context::new();
        for (r, field) in [
            (Reg::Rax, "Rax"),
            (Reg::Rcx, "Rcx"),
            (Reg::Rdx, "Rdx"),
            (Reg::R8, "R8"),
            (Reg::R9, "R9"),
            (Reg::R10, "R10"),
            (Reg::R11, "R11"),
            (Reg::Rbp, "Rbp"),
            (Reg::Rip, "Rip"),
            (Reg::Rsp, "Rsp"),
        ] {
            c.set_reg(r, v.get(field)?);
        }
        c.set_eflags(v.get("EFlags")? as u32);
        let mut b = c.as_bytes().to_vec();
        let ss = v.get("SegSs")? as u16;
        let user = cs & 3 == 3;
        // The data selectors a trap frame of each mode runs with (kept only for user frames).
        let data = |name: &str, kernel: u16| {
            if user {
                v.get(name).map(|x| x as u16).unwrap_or(0x2b)
            } else {
                kernel
            }
        };
        let segs = [
            (0x38, cs),
            (0x3a, data("SegDs", 0x2b)),
            (0x3c, data("SegEs", 0x2b)),
            (0x3e, data("SegFs", 0x53)),
            (0x40, data("SegGs", 0x2b)),
            (0x42, ss),
        ];
        for (off, s) in segs {
            b[off..off + 2].copy_from_slice(&s.to_le_bytes());
        }
        b[0x30..0x34].copy_from_slice(&0x0010_000bu32.to_le_bytes());
        let context = Context::from_bytes(&b)
            .map_err(|e| ModelError::Corrupt(format!("trap frame at {addr:#x}: {e}")))?;
        Ok(TrapFrame {
            context,
            previous_mode: v.get("PreviousMode")? as u8,
            error_code: v.get("ErrorCode").ok(),
            fault_address: v.get("FaultAddress").ok(),
        })
    }

    /// The exception record at `addr`.
    pub fn exception_record(&mut self, addr: u64) -> Result<ExceptionRecord, ModelError> {
        let b = self.mem.kread(addr, EXCEPTION_RECORD_LEN)?;
        ExceptionRecord::parse(&b).map_err(|why| {
            ModelError::Corrupt(format!(
                "{addr:#x} does not hold an exception record: {why}"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record's bytes (the x64 layout).
    fn bytes(r: &ExceptionRecord) -> Vec<u8> {
        let mut b = vec![0u8; EXCEPTION_RECORD_LEN];
        b[0..4].copy_from_slice(&r.code.to_le_bytes());
        b[4..8].copy_from_slice(&r.flags.to_le_bytes());
        b[8..0x10].copy_from_slice(&r.chained.to_le_bytes());
        b[0x10..0x18].copy_from_slice(&r.address.to_le_bytes());
        let n = r.parameters.len().min(MAX_EXCEPTION_PARAMETERS);
        b[0x18..0x1c].copy_from_slice(&(n as u32).to_le_bytes());
        for (i, p) in r.parameters.iter().take(n).enumerate() {
            b[0x20 + 8 * i..0x28 + 8 * i].copy_from_slice(&p.to_le_bytes());
        }
        b
    }

    #[test]
    fn an_exception_record_round_trips_and_a_bad_count_is_refused() {
        let r = ExceptionRecord {
            code: 0xc000_0005,
            flags: 0,
            chained: 0,
            address: 0xfffff804_8b58334c,
            parameters: vec![1, u64::MAX],
        };
        let b = bytes(&r);
        assert_eq!(ExceptionRecord::parse(&b).unwrap(), r);
        let mut bad = b.clone();
        bad[0x18] = 16;
        let e = ExceptionRecord::parse(&bad).unwrap_err();
        assert!(e.contains("NumberParameters is 16"), "{e}");
        assert!(ExceptionRecord::parse(&b[..0x40]).is_err());
    }
}
