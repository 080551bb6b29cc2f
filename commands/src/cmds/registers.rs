//! `r [REG,…]`: the current processor's registers, flags and segments; with names, only those
//! registers.

use std::collections::BTreeMap;

use kdnet_arch::{Context, Reg};
use schemars::JsonSchema;
use serde::Serialize;

use crate::args::{Args, Kind, Param, Syntax};
use crate::engine::{CmdError, Engine};
use crate::registry::Render;

/// `r [REG,…]`: names separated by commas or spaces, `@` allowed.
pub(crate) const SYNTAX: Syntax = Syntax::params(&[Param {
    name: "REG,",
    kind: Kind::Rest,
    optional: true,
}]);

/// The registers `r` shows.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(untagged)]
pub(crate) enum Registers {
    /// `r`: every general register, the flags and the processor.
    All(AllRegisters),
    /// `r rip,rsp`: the registers asked for, by name.
    Chosen(ChosenRegisters),
}

/// Every general register of a processor, its flags and segments.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct AllRegisters {
    /// RAX.
    pub rax: u64,
    /// RCX.
    pub rcx: u64,
    /// RDX.
    pub rdx: u64,
    /// RBX.
    pub rbx: u64,
    /// RSP.
    pub rsp: u64,
    /// RBP.
    pub rbp: u64,
    /// RSI.
    pub rsi: u64,
    /// RDI.
    pub rdi: u64,
    /// R8.
    pub r8: u64,
    /// R9.
    pub r9: u64,
    /// R10.
    pub r10: u64,
    /// R11.
    pub r11: u64,
    /// R12.
    pub r12: u64,
    /// R13.
    pub r13: u64,
    /// R14.
    pub r14: u64,
    /// R15.
    pub r15: u64,
    /// RIP.
    pub rip: u64,
    /// EFlags.
    pub efl: u32,
    /// The processor they are of.
    pub processor: u32,
    /// The segment selectors (shown in the text only).
    #[serde(skip)]
    pub segments: Segments,
    /// `module!symbol+offset` of RIP (shown in the text only).
    #[serde(skip)]
    pub rip_symbol: String,
}

/// Segment selectors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Segments {
    pub cs: u16,
    pub ss: u16,
    pub ds: u16,
    pub es: u16,
    pub fs: u16,
    pub gs: u16,
}

/// The registers asked for: each by its lower-case name (`rip`), its value.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct ChosenRegisters {
    /// Register name → value.
    #[serde(flatten)]
    pub values: BTreeMap<String, u64>,
    /// The names in the order asked for (the text shows them so).
    #[serde(skip)]
    pub order: Vec<String>,
}

fn seg(c: &Context, off: usize) -> u16 {
    let b = c.as_bytes();
    match b.get(off..off + 2) {
        Some(s) => u16::from_le_bytes([s[0], s[1]]),
        None => 0,
    }
}

pub(crate) fn run(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<Registers, CmdError> {
    let c = e.context(e.processor)?;
    if let Some(names) = a.text("REG,") {
        let mut values = BTreeMap::new();
        let mut order = Vec::new();
        for name in names.split([',', ' ']).filter(|s| !s.is_empty()) {
            let name = name.trim_start_matches('@');
            let r = Reg::from_name(name)
                .ok_or_else(|| CmdError::Usage(format!("bad register '{name}'")))?;
            values.insert(r.name().to_string(), c.reg(r));
            order.push(r.name().to_string());
        }
        return Ok(Registers::Chosen(ChosenRegisters { values, order }));
    }
    let rip = c.reg(Reg::Rip);
    Ok(Registers::All(AllRegisters {
        rax: c.reg(Reg::Rax),
        rcx: c.reg(Reg::Rcx),
        rdx: c.reg(Reg::Rdx),
        rbx: c.reg(Reg::Rbx),
        rsp: c.reg(Reg::Rsp),
        rbp: c.reg(Reg::Rbp),
        rsi: c.reg(Reg::Rsi),
        rdi: c.reg(Reg::Rdi),
        r8: c.reg(Reg::R8),
        r9: c.reg(Reg::R9),
        r10: c.reg(Reg::R10),
        r11: c.reg(Reg::R11),
        r12: c.reg(Reg::R12),
        r13: c.reg(Reg::R13),
        r14: c.reg(Reg::R14),
        r15: c.reg(Reg::R15),
        rip,
        efl: c.eflags(),
        processor: e.processor,
        segments: Segments {
            cs: seg(&c, 0x38),
            ss: seg(&c, 0x42),
            ds: seg(&c, 0x3A),
            es: seg(&c, 0x3C),
            fs: seg(&c, 0x3E),
            gs: seg(&c, 0x40),
        },
        rip_symbol: e.kernel.symbolize(rip),
    }))
}

impl Render for Registers {
    fn render(&self, out: &mut String) {
        match self {
            Registers::Chosen(c) => {
                for name in &c.order {
                    if let Some(v) = c.values.get(name) {
                        out.push_str(&format!("{name}={v:016x}\n"));
                    }
                }
            }
            Registers::All(r) => r.render(out),
        }
    }
}

impl AllRegisters {
    fn render(&self, out: &mut String) {
        let g = |name: &str, v: u64| format!("{name}={v:016x}");
        let p = |name: &str, v: u64| format!("{name:>3}={v:016x}");
        let efl = self.efl;
        let flag = |bit: u32, on: &'static str, off: &'static str| {
            if efl >> bit & 1 == 1 { on } else { off }
        };
        // WinDbg's rows: the first three with names as they are, r8 on right-aligned.
        let rows: [(&[(&str, u64)], bool); 6] = [
            (
                &[("rax", self.rax), ("rbx", self.rbx), ("rcx", self.rcx)],
                false,
            ),
            (
                &[("rdx", self.rdx), ("rsi", self.rsi), ("rdi", self.rdi)],
                false,
            ),
            (
                &[("rip", self.rip), ("rsp", self.rsp), ("rbp", self.rbp)],
                false,
            ),
            (&[("r8", self.r8), ("r9", self.r9), ("r10", self.r10)], true),
            (
                &[("r11", self.r11), ("r12", self.r12), ("r13", self.r13)],
                true,
            ),
            (&[("r14", self.r14), ("r15", self.r15)], true),
        ];
        for (regs, aligned) in rows {
            let cells: Vec<String> = regs
                .iter()
                .map(|&(n, v)| if aligned { p(n, v) } else { g(n, v) })
                .collect();
            out.push_str(&cells.join(" "));
            out.push('\n');
        }
        out.push_str(&format!(
            "iopl={}         {} {} {} {} {} {} {} {}\n",
            efl >> 12 & 3,
            flag(11, "ov", "nv"),
            flag(10, "dn", "up"),
            flag(9, "ei", "di"),
            flag(7, "ng", "pl"),
            flag(6, "zr", "nz"),
            flag(4, "ac", "na"),
            flag(2, "pe", "po"),
            flag(0, "cy", "nc"),
        ));
        let s = &self.segments;
        out.push_str(&format!(
            "cs={:04x}  ss={:04x}  ds={:04x}  es={:04x}  fs={:04x}  gs={:04x}             efl={:08x}\n",
            s.cs, s.ss, s.ds, s.es, s.fs, s.gs, efl
        ));
        out.push_str(&format!("{}:\n", self.rip_symbol));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chosen_in_the_order_asked() {
        let r = Registers::Chosen(ChosenRegisters {
            values: [("rip".to_string(), 0x10u64), ("rsp".to_string(), 0x20)].into(),
            order: vec!["rsp".into(), "rip".into()],
        });
        let mut t = String::new();
        r.render(&mut t);
        assert_eq!(t, "rsp=0000000000000020\nrip=0000000000000010\n");
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({"rip": 16, "rsp": 32})
        );
    }

    #[test]
    fn every_register_by_name() {
        let mut c = Context::default();
        for (i, r) in Reg::ALL.into_iter().enumerate() {
            c.set_reg(r, i as u64 + 1);
        }
        let all = AllRegisters {
            rax: c.reg(Reg::Rax),
            rcx: c.reg(Reg::Rcx),
            rdx: c.reg(Reg::Rdx),
            rbx: c.reg(Reg::Rbx),
            rsp: c.reg(Reg::Rsp),
            rbp: c.reg(Reg::Rbp),
            rsi: c.reg(Reg::Rsi),
            rdi: c.reg(Reg::Rdi),
            r8: c.reg(Reg::R8),
            r9: c.reg(Reg::R9),
            r10: c.reg(Reg::R10),
            r11: c.reg(Reg::R11),
            r12: c.reg(Reg::R12),
            r13: c.reg(Reg::R13),
            r14: c.reg(Reg::R14),
            r15: c.reg(Reg::R15),
            rip: c.reg(Reg::Rip),
            efl: 0x246,
            processor: 1,
            segments: Segments::default(),
            rip_symbol: "nt!KeBugCheckEx".into(),
        };
        let j = serde_json::to_value(Registers::All(all)).unwrap();
        let o = j.as_object().unwrap();
        assert_eq!(o.len(), Reg::ALL.len() + 2);
        for (i, r) in Reg::ALL.into_iter().enumerate() {
            assert_eq!(o[r.name()], i as u64 + 1, "{}", r.name());
        }
        assert_eq!(
            (o["efl"].as_u64(), o["processor"].as_u64()),
            (Some(0x246), Some(1))
        );
    }
}
