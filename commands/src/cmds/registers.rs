//! `r [REG,…]`: the current processor's registers, flags and segments; with names, only those
//! registers (any x64 name WinDbg takes: `eax`, `al`, `zf`, `cr3`, `dr7`, `gdtr`, and
//! pseudo-registers such as `$thread`); `r $t0 = EXPR` sets a user register; `rM MASK` shows
//! the groups of the mask (0x20 debug registers and CR4, 0x80 control registers, 0x100
//! descriptor tables); `rm [MASK]` shows or sets the mask plain `r` uses.

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
    All(Box<AllRegisters>),
    /// `r rip,rsp`: the registers asked for, by name.
    Chosen(ChosenRegisters),
}

/// Every general register of a processor, its flags and segments.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AllRegisters {
    /// RAX.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub rax: u64,
    /// RCX.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub rcx: u64,
    /// RDX.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub rdx: u64,
    /// RBX.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub rbx: u64,
    /// RSP.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub rsp: u64,
    /// RBP.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub rbp: u64,
    /// RSI.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub rsi: u64,
    /// RDI.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub rdi: u64,
    /// R8.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub r8: u64,
    /// R9.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub r9: u64,
    /// R10.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub r10: u64,
    /// R11.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub r11: u64,
    /// R12.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub r12: u64,
    /// R13.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub r13: u64,
    /// R14.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub r14: u64,
    /// R15.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub r15: u64,
    /// RIP.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub rip: u64,
    /// EFlags.
    pub efl: u32,
    /// The processor they are of.
    pub processor: u32,
    /// The registers the mask added beyond the general ones (`rM 0xa0`: debug and control
    /// registers), by name; empty when none were asked for.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "BTreeMap<String, crate::hex::Hex>")]
    pub other: BTreeMap<String, u64>,
    /// The mask's groups in display order, each a row of names (the text shows them so).
    #[serde(skip)]
    pub other_rows: Vec<Vec<(String, usize)>>,
    /// The segment selectors (shown in the text only).
    #[serde(skip)]
    pub segments: Segments,
    /// `module!symbol+offset` of RIP (shown in the text only).
    #[serde(skip)]
    pub rip_symbol: String,
    /// The instruction at RIP as `u` shows it (shown in the text only; absent when it cannot
    /// be read).
    #[serde(skip)]
    pub instruction: Option<String>,
}

/// Segment selectors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Segments {
    pub cs: u16,
    pub ss: u16,
    pub ds: u16,
    pub es: u16,
    pub fs: u16,
    pub gs: u16,
}

/// The registers asked for: each by its lower-case name (`rip`, `$thread`), its value.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct ChosenRegisters {
    /// Register name → value.
    #[serde(flatten)]
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "BTreeMap<String, crate::hex::Hex>")]
    pub values: BTreeMap<String, u64>,
    /// The names in the order asked for, with the hex digits each is shown with (the text
    /// shows them so).
    #[serde(skip)]
    pub order: Vec<(String, usize)>,
}

/// The register groups of `rM`, beyond the general registers: (mask bit, rows of names).
const GROUPS: &[(u32, &[&[&str]])] = &[
    (
        0x20,
        &[&["dr0", "dr1", "dr2"], &["dr3", "dr6", "dr7", "cr4"]],
    ),
    (0x80, &[&["cr0", "cr2", "cr3"], &["cr8"]]),
    (0x100, &[&["gdtr", "gdtl", "idtr", "idtl", "tr", "ldtr"]]),
];

/// The mask plain `r` uses, as WinDbg's x64 default (0x2: the integer registers).
pub(crate) const DEFAULT_MASK: u32 = 0x2;

fn seg(c: &Context, off: usize) -> u16 {
    let b = c.as_bytes();
    match b.get(off..off + 2) {
        Some(s) => u16::from_le_bytes([s[0], s[1]]),
        None => 0,
    }
}

/// A register's value for `r`, with the digits it is shown with.
fn value_of(e: &mut Engine, name: &str) -> Result<(String, u64, usize), CmdError> {
    let name = name.trim().trim_start_matches('@').to_ascii_lowercase();
    if name.is_empty() {
        return Err(CmdError::Usage("a register name is needed".into()));
    }
    let digits = match crate::regs::lookup(&name) {
        Some(d) => d.digits(),
        None if name.starts_with('$') => 16,
        None => return Err(CmdError::Usage(format!("bad register '{name}'"))),
    };
    let v = e.register(&name)?;
    Ok((name, v, digits))
}

pub(crate) fn run(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<Registers, CmdError> {
    let text = a.text("REG,").unwrap_or("").trim();
    // `rM MASK [REG,…]` arrives as `M MASK …`.
    let (mask, text) = match text.strip_prefix("M ") {
        Some(rest) => {
            let rest = rest.trim_start();
            let (m, more) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            let mask = e.eval(m)?;
            let mask = u32::try_from(mask)
                .map_err(|_| CmdError::Usage(format!("register mask {mask:#x} is too large")))?;
            (mask, more.trim())
        }
        None => (e.register_mask, text),
    };
    // `r $t0 = EXPR`.
    if let Some((lhs, rhs)) = text.split_once('=')
        && !rhs.starts_with('=')
    {
        let name = lhs.trim().trim_start_matches('@').to_ascii_lowercase();
        let value = e.eval(rhs)?;
        let Some(i) = name.strip_prefix('$').and_then(crate::expr::user_register) else {
            return Err(CmdError::Usage(format!(
                "cannot set '{name}': only the user registers $t0-$t19 can be set (a stopped \
                 target's registers stay as they are)"
            )));
        };
        e.user_registers[i] = value;
        return Ok(Registers::Chosen(ChosenRegisters {
            values: [(name.clone(), value)].into(),
            order: vec![(name, 16)],
        }));
    }
    if !text.is_empty() {
        let mut values = BTreeMap::new();
        let mut order = Vec::new();
        for name in text.split([',', ' ']).filter(|s| !s.is_empty()) {
            let (name, v, digits) = value_of(e, name)?;
            values.insert(name.clone(), v);
            order.push((name, digits));
        }
        return Ok(Registers::Chosen(ChosenRegisters { values, order }));
    }
    let c = e.context(e.processor)?;
    let mut other = BTreeMap::new();
    let mut other_rows = Vec::new();
    for (bit, rows) in GROUPS {
        if mask & bit == 0 {
            continue;
        }
        for row in *rows {
            let mut shown = Vec::new();
            for name in *row {
                let (name, v, digits) = value_of(e, name)?;
                other.insert(name.clone(), v);
                shown.push((name, digits));
            }
            other_rows.push(shown);
        }
    }
    let mut all = general(e, &c, e.processor);
    // `r` ends with the instruction at RIP, as WinDbg's does.
    all.instruction = Some(crate::cmds::disasm::instruction_at(e, all.rip).map_or_else(
        || format!("{} ??              ???", crate::engine::addr(all.rip)),
        |i| i.line(),
    ));
    all.other = other;
    all.other_rows = other_rows;
    Ok(Registers::All(Box::new(all)))
}

/// The general registers, flags and segments of a context.
pub(crate) fn general(e: &mut Engine, c: &Context, processor: u32) -> AllRegisters {
    let rip = c.reg(Reg::Rip);
    AllRegisters {
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
        processor,
        other: BTreeMap::new(),
        other_rows: Vec::new(),
        segments: Segments {
            cs: seg(c, 0x38),
            ss: seg(c, 0x42),
            ds: seg(c, 0x3A),
            es: seg(c, 0x3C),
            fs: seg(c, 0x3E),
            gs: seg(c, 0x40),
        },
        rip_symbol: e.kernel.symbolize(rip),
        instruction: None,
    }
}

/// `rm [MASK]`.
pub(crate) const MASK_SYNTAX: Syntax = Syntax::params(&[Param {
    name: "MASK",
    kind: Kind::Expr,
    optional: true,
}]);

/// The register mask plain `r` uses.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct RegisterMask {
    /// The mask (0x2 integer registers, 0x20 debug registers and CR4, 0x80 control registers,
    /// 0x100 descriptor tables).
    pub mask: u32,
}

pub(crate) fn mask(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<RegisterMask, CmdError> {
    if let Some(m) = a.expr(e, "MASK")? {
        let known = 0x1 | 0x2 | 0x8 | GROUPS.iter().map(|g| g.0).fold(0, |a, b| a | b);
        if m & !u64::from(known) != 0 {
            return Err(CmdError::Usage(format!(
                "register mask {m:#x} has bits this debugger does not show (it knows {known:#x})"
            )));
        }
        e.register_mask = m as u32;
    }
    Ok(RegisterMask {
        mask: e.register_mask,
    })
}

impl Render for RegisterMask {
    fn render(&self, out: &mut String) {
        out.push_str(&format!("Register output mask is {:x}:\n", self.mask));
        for (bit, what) in [
            (0x2, "Integer state (64-bit)"),
            (0x1, "Integer state (32-bit)"),
            (0x8, "Segment registers"),
            (0x20, "Debug registers"),
            (0x80, "Control registers"),
            (0x100, "Descriptor and task state"),
        ] {
            if self.mask & bit != 0 {
                out.push_str(&format!("    {bit:4x} - {what}\n"));
            }
        }
    }
}

impl Render for Registers {
    fn render(&self, out: &mut String) {
        match self {
            Registers::Chosen(c) => {
                for (name, digits) in &c.order {
                    if let Some(v) = c.values.get(name) {
                        out.push_str(&format!("{name}={v:0digits$x}\n"));
                    }
                }
            }
            Registers::All(r) => r.render(out),
        }
    }
}

impl AllRegisters {
    pub(crate) fn render(&self, out: &mut String) {
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
        for row in &self.other_rows {
            let cells: Vec<String> = row
                .iter()
                .filter_map(|(n, d)| self.other.get(n).map(|v| format!("{n}={v:0d$x}", d = *d)))
                .collect();
            out.push_str(&cells.join(" "));
            out.push('\n');
        }
        out.push_str(&format!("{}:\n", self.rip_symbol));
        if let Some(i) = &self.instruction {
            out.push_str(i);
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chosen_in_the_order_asked() {
        let r = Registers::Chosen(ChosenRegisters {
            values: [("rip".to_string(), 0x10u64), ("rsp".to_string(), 0x20)].into(),
            order: vec![("rsp".into(), 16), ("rip".into(), 16)],
        });
        let mut t = String::new();
        r.render(&mut t);
        assert_eq!(t, "rsp=0000000000000020\nrip=0000000000000010\n");
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({"rip": "0x0000000000000010", "rsp": "0x0000000000000020"})
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
            other: BTreeMap::new(),
            other_rows: Vec::new(),
            segments: Segments::default(),
            rip_symbol: "nt!KeBugCheckEx".into(),
            instruction: None,
        };
        let j = serde_json::to_value(Registers::All(Box::new(all))).unwrap();
        let o = j.as_object().unwrap();
        assert_eq!(o.len(), Reg::ALL.len() + 3);
        for (i, r) in Reg::ALL.into_iter().enumerate() {
            assert_eq!(
                crate::hex::parse(&o[r.name()]),
                Some(i as u64 + 1),
                "{}",
                r.name()
            );
        }
        assert_eq!(
            (o["efl"].as_u64(), o["processor"].as_u64()),
            (Some(0x246), Some(1))
        );
    }
}
