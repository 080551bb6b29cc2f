//! Every x64 register name WinDbg accepts, and where its value lives: the CONTEXT (general
//! registers and their 32/16/8-bit parts, segments, flags and their bits, debug registers,
//! MXCSR) or the processor's KSPECIAL_REGISTERS (control registers, descriptor tables).

use kdnet_arch::{self as arch, Context, Reg};

/// Where a register's bits are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// `bytes` bytes at `offset` of the CONTEXT, shifted right by `shift`.
    Context {
        /// Offset.
        offset: usize,
        /// Width in bytes.
        bytes: usize,
        /// Bits to shift right (for `ah`).
        shift: u32,
    },
    /// Bits `[bit, bit + width)` of EFlags.
    Flag {
        /// Lowest bit.
        bit: u32,
        /// Bits.
        width: u32,
    },
    /// `bytes` bytes at `offset` of KSPECIAL_REGISTERS.
    Special {
        /// Offset.
        offset: usize,
        /// Width in bytes.
        bytes: usize,
    },
}

/// A register: its canonical name, where it is and how many hex digits WinDbg prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RegDef {
    pub name: &'static str,
    pub place: Place,
}

impl RegDef {
    /// Hex digits of its display (`rax=0000000000000000`, `eax=00000000`, `cs=0010`, `zf=1`).
    pub(crate) fn digits(&self) -> usize {
        match self.place {
            Place::Context { bytes, .. } | Place::Special { bytes, .. } => bytes * 2,
            Place::Flag { .. } => 1,
        }
    }

    /// Whether reading it needs the processor's special registers.
    pub(crate) fn special(&self) -> bool {
        matches!(self.place, Place::Special { .. })
    }

    /// Its value from a CONTEXT and, for control registers, KSPECIAL_REGISTERS.
    pub(crate) fn value(&self, c: &Context, special: &[u8]) -> Option<u64> {
        let le = |b: &[u8], o: usize, n: usize| -> Option<u64> {
            let s = b.get(o..o + n)?;
            let mut a = [0u8; 8];
            a[..n].copy_from_slice(s);
            Some(u64::from_le_bytes(a))
        };
        match self.place {
            Place::Context {
                offset,
                bytes,
                shift,
            } => Some(le(c.as_bytes(), offset, bytes.max(1) + (shift as usize / 8))? >> shift)
                .map(|v| v & mask(bytes)),
            Place::Flag { bit, width } => {
                Some(u64::from(c.eflags()) >> bit & ((1u64 << width) - 1))
            }
            Place::Special { offset, bytes } => le(special, offset, bytes),
        }
    }
}

fn mask(bytes: usize) -> u64 {
    if bytes >= 8 {
        u64::MAX
    } else {
        (1u64 << (bytes * 8)) - 1
    }
}

const fn ctx(name: &'static str, offset: usize, bytes: usize) -> RegDef {
    RegDef {
        name,
        place: Place::Context {
            offset,
            bytes,
            shift: 0,
        },
    }
}

const fn flag(name: &'static str, bit: u32, width: u32) -> RegDef {
    RegDef {
        name,
        place: Place::Flag { bit, width },
    }
}

const fn special(name: &'static str, offset: usize, bytes: usize) -> RegDef {
    RegDef {
        name,
        place: Place::Special { offset, bytes },
    }
}

/// The registers that are not parts of the sixteen general ones.
const OTHERS: &[RegDef] = &[
    ctx("rip", 0xF8, 8),
    ctx("eip", 0xF8, 4),
    ctx("ip", 0xF8, 2),
    ctx("efl", 0x44, 4),
    ctx("cs", 0x38, 2),
    ctx("ds", 0x3A, 2),
    ctx("es", 0x3C, 2),
    ctx("fs", 0x3E, 2),
    ctx("gs", 0x40, 2),
    ctx("ss", 0x42, 2),
    ctx("mxcsr", 0x34, 4),
    ctx("dr0", 0x48, 8),
    ctx("dr1", 0x50, 8),
    ctx("dr2", 0x58, 8),
    ctx("dr3", 0x60, 8),
    ctx("dr6", 0x68, 8),
    ctx("dr7", 0x70, 8),
    flag("cf", 0, 1),
    flag("pf", 2, 1),
    flag("af", 4, 1),
    flag("zf", 6, 1),
    flag("sf", 7, 1),
    flag("tf", 8, 1),
    flag("if", 9, 1),
    flag("df", 10, 1),
    flag("of", 11, 1),
    flag("iopl", 12, 2),
    flag("vip", 20, 1),
    flag("vif", 19, 1),
    special("cr0", arch::SPECIAL_CR0, 8),
    special("cr2", arch::SPECIAL_CR2, 8),
    special("cr3", arch::SPECIAL_CR3, 8),
    special("cr4", arch::SPECIAL_CR4, 8),
    special("cr8", arch::SPECIAL_CR8, 8),
    special("gdtr", arch::SPECIAL_GDTR_BASE, 8),
    special("gdtl", arch::SPECIAL_GDTR_LIMIT, 2),
    special("idtr", arch::SPECIAL_IDTR_BASE, 8),
    special("idtl", arch::SPECIAL_IDTR_LIMIT, 2),
    special("tr", 0x70, 2),
    special("ldtr", 0x72, 2),
    special("xcr0", arch::SPECIAL_XCR0, 8),
];

/// The 32-, 16- and 8-bit names of the general registers, in CONTEXT order.
const PARTS: [[&str; 4]; 16] = [
    ["eax", "ax", "al", "ah"],
    ["ecx", "cx", "cl", "ch"],
    ["edx", "dx", "dl", "dh"],
    ["ebx", "bx", "bl", "bh"],
    ["esp", "sp", "spl", ""],
    ["ebp", "bp", "bpl", ""],
    ["esi", "si", "sil", ""],
    ["edi", "di", "dil", ""],
    ["r8d", "r8w", "r8b", ""],
    ["r9d", "r9w", "r9b", ""],
    ["r10d", "r10w", "r10b", ""],
    ["r11d", "r11w", "r11b", ""],
    ["r12d", "r12w", "r12b", ""],
    ["r13d", "r13w", "r13b", ""],
    ["r14d", "r14w", "r14b", ""],
    ["r15d", "r15w", "r15b", ""],
];

/// The register named `name` (case-insensitive, without `@`).
pub(crate) fn lookup(name: &str) -> Option<RegDef> {
    let lower = name.to_ascii_lowercase();
    let n = lower.as_str();
    if let Some(r) = Reg::from_name(n) {
        return Some(RegDef {
            name: r.name(),
            place: Place::Context {
                offset: r.offset(),
                bytes: 8,
                shift: 0,
            },
        });
    }
    if let Some(d) = OTHERS.iter().find(|d| d.name == n) {
        return Some(*d);
    }
    for (i, parts) in PARTS.iter().enumerate() {
        let r = Reg::ALL[i];
        for (j, p) in parts.iter().enumerate() {
            if !p.is_empty() && *p == n {
                let (bytes, shift) = [(4, 0), (2, 0), (1, 0), (1, 8)][j];
                return Some(RegDef {
                    name: p,
                    place: Place::Context {
                        offset: r.offset(),
                        bytes,
                        shift,
                    },
                });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_flags_and_control_registers() {
        let mut c = Context::default();
        c.set_reg(Reg::Rax, 0x1122_3344_5566_7788);
        c.set_reg(Reg::R9, 0xaabb_ccdd_eeff_0102);
        c.set_eflags(0x3246);
        let mut s = vec![0u8; arch::SPECIAL_REGISTERS_LEN];
        s[arch::SPECIAL_CR3..arch::SPECIAL_CR3 + 8].copy_from_slice(&0x1aa000u64.to_le_bytes());
        let v = |n: &str| lookup(n).unwrap().value(&c, &s).unwrap();
        assert_eq!(v("rax"), 0x1122_3344_5566_7788);
        assert_eq!(v("EAX"), 0x5566_7788);
        assert_eq!(v("ax"), 0x7788);
        assert_eq!(v("al"), 0x88);
        assert_eq!(v("ah"), 0x77);
        assert_eq!(v("r9d"), 0xeeff_0102);
        assert_eq!(v("r9b"), 0x02);
        assert_eq!(v("zf"), 1);
        assert_eq!(v("cf"), 0);
        assert_eq!(v("iopl"), 3);
        assert_eq!(v("cs"), 0x10);
        assert_eq!(v("cr3"), 0x1aa000);
        assert!(lookup("cr3").unwrap().special());
        assert_eq!(lookup("eax").unwrap().digits(), 8);
        assert!(lookup("xyz").is_none());
    }
}
