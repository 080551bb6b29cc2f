//! The x64 processor state as Windows lays it out: the CONTEXT (0x4D0 bytes), its registers,
//! and the offsets of KSPECIAL_REGISTERS and the control-space indices. Below both the KDNET
//! protocol (which carries it) and the dump reader (which stores it), and knowing neither.

pub mod le;

use serde::Serialize;

/// Bytes that do not make a CONTEXT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CONTEXT needs {need} bytes, got {have}")]
pub struct ContextTooShort {
    /// Bytes needed.
    pub need: usize,
    /// Bytes present.
    pub have: usize,
}

/// Size of the AMD64 CONTEXT.
pub const CONTEXT_LEN: usize = 0x4D0;
/// CONTEXT_AMD64 | CONTROL | INTEGER | SEGMENTS | FLOATING_POINT | DEBUG_REGISTERS.
pub const CONTEXT_ALL: u32 = 0x0010_001F;
/// CONTEXT_AMD64 | CONTROL | INTEGER | FLOATING_POINT.
pub const CONTEXT_FULL: u32 = 0x0010_000B;

/// Bytes of KSPECIAL_REGISTERS as recent kernels report it (with Xcr0).
pub const SPECIAL_REGISTERS_LEN: usize = 0xE0;
/// Offset of Cr0 in KSPECIAL_REGISTERS.
pub const SPECIAL_CR0: usize = 0x00;
/// Offset of Cr2.
pub const SPECIAL_CR2: usize = 0x08;
/// Offset of Cr3.
pub const SPECIAL_CR3: usize = 0x10;
/// Offset of Cr4.
pub const SPECIAL_CR4: usize = 0x18;
/// Offset of KernelDr6.
pub const SPECIAL_DR6: usize = 0x40;
/// Offset of KernelDr7.
pub const SPECIAL_DR7: usize = 0x48;
/// Offset of Gdtr.Limit.
pub const SPECIAL_GDTR_LIMIT: usize = 0x56;
/// Offset of Gdtr.Base.
pub const SPECIAL_GDTR_BASE: usize = 0x58;
/// Offset of Idtr.Limit.
pub const SPECIAL_IDTR_LIMIT: usize = 0x66;
/// Offset of Idtr.Base.
pub const SPECIAL_IDTR_BASE: usize = 0x68;
/// Offset of Cr8.
pub const SPECIAL_CR8: usize = 0xA0;
/// Offset of MsrGsBase.
pub const SPECIAL_GS_BASE: usize = 0xA8;
/// Offset of Xcr0.
pub const SPECIAL_XCR0: usize = 0xD8;

/// Control-space index: pointer to the processor's KPCR.
pub const CONTROL_SPACE_KPCR: u64 = 0;
/// Control-space index: pointer to its KPRCB.
pub const CONTROL_SPACE_KPRCB: u64 = 1;
/// Control-space index: its KSPECIAL_REGISTERS.
pub const CONTROL_SPACE_SPECIAL_REGISTERS: u64 = 2;
/// Control-space index: pointer to its current KTHREAD.
pub const CONTROL_SPACE_THREAD: u64 = 3;

/// A general-purpose or control register of the CONTEXT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum Reg {
    Rax,
    Rcx,
    Rdx,
    Rbx,
    Rsp,
    Rbp,
    Rsi,
    Rdi,
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
    R14,
    R15,
    Rip,
}

impl Reg {
    /// All, in CONTEXT order.
    pub const ALL: [Reg; 17] = [
        Reg::Rax,
        Reg::Rcx,
        Reg::Rdx,
        Reg::Rbx,
        Reg::Rsp,
        Reg::Rbp,
        Reg::Rsi,
        Reg::Rdi,
        Reg::R8,
        Reg::R9,
        Reg::R10,
        Reg::R11,
        Reg::R12,
        Reg::R13,
        Reg::R14,
        Reg::R15,
        Reg::Rip,
    ];

    /// Offset in CONTEXT.
    pub fn offset(self) -> usize {
        match self {
            Reg::Rip => 0xF8,
            r => 0x78 + 8 * (r as usize),
        }
    }

    /// Lower-case name (`rax`).
    pub fn name(self) -> &'static str {
        const N: [&str; 17] = [
            "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11",
            "r12", "r13", "r14", "r15", "rip",
        ];
        N[self as usize]
    }

    /// The register with this name (case-insensitive).
    pub fn from_name(s: &str) -> Option<Reg> {
        let s = s.to_ascii_lowercase();
        Reg::ALL.into_iter().find(|r| r.name() == s)
    }

    /// The x64 unwind-code register number (0 rax … 15 r15).
    pub fn from_number(n: u8) -> Option<Reg> {
        Reg::ALL
            .get(usize::from(n))
            .copied()
            .filter(|r| *r != Reg::Rip)
    }
}

/// An x64 CONTEXT record.
#[derive(Clone, PartialEq, Eq)]
pub struct Context(Vec<u8>);

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Context {{ rip: {:#x}, rsp: {:#x} }}",
            self.reg(Reg::Rip),
            self.reg(Reg::Rsp)
        )
    }
}

impl Default for Context {
    fn default() -> Self {
        Context::new()
    }
}

impl Context {
    /// An all-zero CONTEXT with ContextFlags = CONTEXT_ALL and kernel segments.
    pub fn new() -> Context {
        let mut c = Context(vec![0; CONTEXT_LEN]);
        c.set_u32(0x30, CONTEXT_ALL);
        c.set_u16(0x38, 0x10); // SegCs
        for o in [0x3A, 0x3C, 0x42] {
            c.set_u16(o, 0x18); // Ds, Es, Ss
        }
        c.set_u16(0x3E, 0x53); // Fs
        c.set_u16(0x40, 0x2B); // Gs
        c.set_u32(0x34, 0x1F80); // MxCsr
        c.set_u32(0x44, 0x202); // EFlags
        c
    }

    /// From the bytes of a GetContext reply (must be at least 0x4D0 bytes).
    pub fn from_bytes(b: &[u8]) -> Result<Context, ContextTooShort> {
        let body = b.get(..CONTEXT_LEN).ok_or(ContextTooShort {
            need: CONTEXT_LEN,
            have: b.len(),
        })?;
        Ok(Context(body.to_vec()))
    }

    /// The 0x4D0 bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// A register.
    pub fn reg(&self, r: Reg) -> u64 {
        self.u64(r.offset())
    }
    /// Sets a register.
    pub fn set_reg(&mut self, r: Reg, v: u64) {
        let o = r.offset();
        self.0[o..o + 8].copy_from_slice(&v.to_le_bytes());
    }
    /// ContextFlags.
    pub fn flags(&self) -> u32 {
        self.u32(0x30)
    }
    /// EFlags.
    pub fn eflags(&self) -> u32 {
        self.u32(0x44)
    }
    /// Sets EFlags.
    pub fn set_eflags(&mut self, v: u32) {
        self.set_u32(0x44, v);
    }
    /// SegCs.
    pub fn cs(&self) -> u16 {
        self.u16(0x38)
    }
    /// SegSs.
    pub fn ss(&self) -> u16 {
        self.u16(0x42)
    }

    fn u16(&self, o: usize) -> u16 {
        u16::from_le_bytes([self.0[o], self.0[o + 1]])
    }
    fn u32(&self, o: usize) -> u32 {
        u32::from_le_bytes([self.0[o], self.0[o + 1], self.0[o + 2], self.0[o + 3]])
    }
    fn u64(&self, o: usize) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&self.0[o..o + 8]);
        u64::from_le_bytes(a)
    }
    fn set_u16(&mut self, o: usize, v: u16) {
        self.0[o..o + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn set_u32(&mut self, o: usize, v: u32) {
        self.0[o..o + 4].copy_from_slice(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_offsets() {
        assert_eq!(Reg::Rax.offset(), 0x78);
        assert_eq!(Reg::Rsp.offset(), 0x98);
        assert_eq!(Reg::R15.offset(), 0xF0);
        assert_eq!(Reg::Rip.offset(), 0xF8);
        let mut c = Context::new();
        c.set_reg(Reg::Rip, 0x1234);
        assert_eq!(
            Context::from_bytes(c.as_bytes()).unwrap().reg(Reg::Rip),
            0x1234
        );
        assert!(Context::from_bytes(&[0; 100]).is_err());
        assert_eq!(Reg::from_name("R12"), Some(Reg::R12));
    }
}
