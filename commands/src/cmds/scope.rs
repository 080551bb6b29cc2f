//! The register context commands: `.cxr [ADDR]` (a CONTEXT record's registers become the
//! current processor's for `r`, `k` and `u`; without an address, back to its own), `.trap
//! [ADDR]` (the same from a KTRAP_FRAME), `.exr ADDR|-1` (an exception record, decoded), and
//! `.frame [/r] [N]` (a frame of the current stack, with its registers).

use schemars::JsonSchema;
use serde::Serialize;

use crate::args::{Args, Kind, Param, Syntax, opt_expr, opt_word};
use crate::cmds::disasm::{Insn, instruction_at};
use crate::cmds::registers::{AllRegisters, general};
use crate::cmds::stack;
use crate::engine::{CmdError, Engine, Scope, ScopeKind, addr};
use crate::registry::Render;
use kdnet_model::nt::records::ExceptionRecord;

/// `.cxr [ADDR]`, `.trap [ADDR]`.
pub(crate) const SYNTAX: Syntax = Syntax::params(&[opt_expr("ADDR")]);

/// `.exr ADDR|-1`.
pub(crate) const EXR_SYNTAX: Syntax = Syntax::params(&[opt_word("ADDR")]);

/// `.frame [/r] [N]`: the rest of the line (`/r` is not a dash option).
pub(crate) const FRAME_SYNTAX: Syntax = Syntax::params(&[Param {
    name: "ARGS",
    kind: Kind::Rest,
    optional: true,
}]);

/// What `.cxr` or `.trap` did.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct ScopeSet {
    /// `context_record`, `trap_frame`, or `reset` (back to the processor's own registers).
    pub kind: String,
    /// Where the registers were read (null on a reset).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub address: Option<u64>,
    /// The registers now in effect (null on a reset).
    pub registers: Option<AllRegisters>,
    /// The instruction at their RIP (null when its bytes cannot be read).
    pub instruction: Option<Insn>,
    /// A trap frame's error code (the processor pushes one for page faults and general
    /// protection faults).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub error_code: Option<u64>,
    /// The mode a trap frame's trap interrupted (from its code selector): `kernel` or `user`.
    pub interrupted_mode: Option<String>,
}

fn set(e: &mut Engine, kind: ScopeKind, address: u64) -> Result<ScopeSet, CmdError> {
    let (context, error_code, interrupted_mode) = match kind {
        ScopeKind::ContextRecord | ScopeKind::Frame => {
            (e.kernel.context_record(address)?, None, None)
        }
        ScopeKind::TrapFrame => {
            let t = e.kernel.trap_frame(address)?;
            let mode = if t.context.cs() & 3 == 0 {
                "kernel"
            } else {
                "user"
            };
            (t.context, t.error_code, Some(mode.to_string()))
        }
    };
    let processor = e.processor;
    e.scope = Some(Scope {
        processor,
        context: context.clone(),
        kind,
        address,
    });
    e.frame = 0;
    e.next_disassembly = None;
    let registers = general(e, &context, processor);
    let instruction = instruction_at(e, registers.rip);
    Ok(ScopeSet {
        kind: kind.name().into(),
        address: Some(address),
        registers: Some(registers),
        instruction,
        error_code,
        interrupted_mode,
    })
}

fn reset(e: &mut Engine) -> ScopeSet {
    e.reset_scope();
    e.next_disassembly = None;
    ScopeSet {
        kind: "reset".into(),
        address: None,
        registers: None,
        instruction: None,
        error_code: None,
        interrupted_mode: None,
    }
}

/// `.cxr [ADDR]`.
pub(crate) fn cxr(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<ScopeSet, CmdError> {
    match a.expr(e, "ADDR")? {
        Some(at) => set(e, ScopeKind::ContextRecord, at),
        None => Ok(reset(e)),
    }
}

/// `.trap [ADDR]`.
pub(crate) fn trap(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<ScopeSet, CmdError> {
    match a.expr(e, "ADDR")? {
        Some(at) => set(e, ScopeKind::TrapFrame, at),
        None => Ok(reset(e)),
    }
}

impl Render for ScopeSet {
    fn render(&self, out: &mut String) {
        let Some(r) = &self.registers else {
            out.push_str("Resetting default scope\n");
            return;
        };
        if self.kind == "trap_frame" {
            out.push_str(
                "NOTE: The trap frame does not contain all registers.\n\
                 Some register values may be zeroed or incorrect.\n",
            );
        }
        r.render(out);
        match &self.instruction {
            Some(i) => {
                out.push_str(&i.line());
                out.push('\n');
            }
            None => out.push_str(&format!("{} ??              ???\n", addr(r.rip))),
        }
    }
}

/// Exception codes' names, as the debugger prints them.
const EXCEPTION_NAMES: &[(u32, &str)] = &[
    (0x8000_0001, "Guard page violation"),
    (0x8000_0002, "Data misaligned"),
    (0x8000_0003, "Break instruction exception"),
    (0x8000_0004, "Single step exception"),
    (0xc000_0005, "Access violation"),
    (0xc000_0006, "In-page I/O error"),
    (0xc000_0008, "Invalid handle"),
    (0xc000_001d, "Illegal instruction"),
    (0xc000_001e, "Invalid lock sequence"),
    (0xc000_0025, "Non-continuable exception"),
    (0xc000_0026, "Invalid disposition"),
    (0xc000_008c, "Array bounds exceeded"),
    (0xc000_0094, "Integer divide-by-zero"),
    (0xc000_0095, "Integer overflow"),
    (0xc000_0096, "Privileged instruction"),
    (0xc000_00fd, "Stack overflow"),
    (
        0xc000_0409,
        "Security check failure or stack buffer overrun",
    ),
    (0xc000_0420, "Assertion failure"),
];

/// Fast-fail codes (the first parameter of 0xc0000409).
const FAST_FAIL: &[(u64, &str)] = &[
    (0, "FAST_FAIL_LEGACY_GS_VIOLATION"),
    (1, "FAST_FAIL_VTGUARD_CHECK_FAILURE"),
    (2, "FAST_FAIL_STACK_COOKIE_CHECK_FAILURE"),
    (3, "FAST_FAIL_CORRUPT_LIST_ENTRY"),
    (4, "FAST_FAIL_INCORRECT_STACK"),
    (5, "FAST_FAIL_INVALID_ARG"),
    (6, "FAST_FAIL_GS_COOKIE_INIT"),
    (7, "FAST_FAIL_FATAL_APP_EXIT"),
    (8, "FAST_FAIL_RANGE_CHECK_FAILURE"),
    (9, "FAST_FAIL_UNSAFE_REGISTRY_ACCESS"),
    (10, "FAST_FAIL_GUARD_ICALL_CHECK_FAILURE"),
    (11, "FAST_FAIL_GUARD_WRITE_CHECK_FAILURE"),
    (12, "FAST_FAIL_INVALID_FIBER_SWITCH"),
    (13, "FAST_FAIL_INVALID_SET_OF_CONTEXT"),
    (14, "FAST_FAIL_INVALID_REFERENCE_COUNT"),
    (18, "FAST_FAIL_INVALID_JUMP_BUFFER"),
    (19, "FAST_FAIL_MRDATA_MODIFIED"),
    (21, "FAST_FAIL_INVALID_EXCEPTION_CHAIN"),
    (24, "FAST_FAIL_INVALID_IMAGE_BASE"),
    (28, "FAST_FAIL_INVALID_BUFFER_ACCESS"),
    (29, "FAST_FAIL_INVALID_BALANCED_TREE"),
    (32, "FAST_FAIL_APCS_DISABLED"),
    (37, "FAST_FAIL_GUARD_JUMPTABLE"),
    (38, "FAST_FAIL_INVALID_LONGJUMP_TARGET"),
];

/// The name of an exception code (empty when it has none here).
pub(crate) fn exception_name(code: u32) -> &'static str {
    EXCEPTION_NAMES
        .iter()
        .find(|(c, _)| *c == code)
        .map_or("", |(_, n)| n)
}

/// What the parameters of an exception say, for the codes whose parameters are known.
pub(crate) fn exception_meaning(r: &ExceptionRecord) -> Option<String> {
    let p = |i: usize| r.parameters.get(i).copied();
    match r.code {
        0xc000_0005 => {
            let (kind, at) = (p(0)?, p(1)?);
            Some(match kind {
                0 => format!("Attempt to read from address {at:016x}"),
                1 => format!("Attempt to write to address {at:016x}"),
                8 => format!("Attempt to execute non-executable address {at:016x}"),
                k => format!("Access of kind {k:#x} at address {at:016x}"),
            })
        }
        0xc000_0006 => Some(format!(
            "Inpage operation failed at {:016x}, due to I/O error {:08x}",
            p(1)?,
            p(2)?
        )),
        0xc000_0409 => {
            let code = p(0)?;
            let name = FAST_FAIL
                .iter()
                .find(|(c, _)| *c == code)
                .map_or("", |(_, n)| n);
            Some(format!("Subcode: {code:#x} {name}").trim_end().to_string())
        }
        _ => None,
    }
}

/// An exception record, decoded.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Exception {
    /// Where the record was read (null for `.exr -1`: the target's last reported exception).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub record: Option<u64>,
    /// ExceptionAddress.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub address: u64,
    /// `module!symbol+offset` of it (null outside every module).
    pub symbol: Option<String>,
    /// ExceptionCode.
    pub code: u32,
    /// Its name (empty when not known).
    pub code_name: String,
    /// ExceptionFlags.
    pub flags: u32,
    /// The chained exception record (0 when none).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub chained: u64,
    /// ExceptionInformation.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Vec<crate::hex::Hex>")]
    pub parameters: Vec<u64>,
    /// What the parameters say (`Attempt to read from address …`), for the codes whose
    /// parameters are known.
    pub meaning: Option<String>,
}

/// The decoded form of a record.
pub(crate) fn exception(e: &mut Engine, record: Option<u64>, r: &ExceptionRecord) -> Exception {
    let symbol = e
        .kernel
        .module_index(r.address)
        .map(|_| e.kernel.symbolize(r.address));
    Exception {
        record,
        address: r.address,
        symbol,
        code: r.code,
        code_name: exception_name(r.code).to_string(),
        flags: r.flags,
        chained: r.chained,
        parameters: r.parameters.clone(),
        meaning: exception_meaning(r),
    }
}

/// `.exr ADDR|-1`.
pub(crate) fn exr(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<Exception, CmdError> {
    let word = a.text("ADDR").ok_or_else(|| {
        CmdError::Usage(".exr needs an address, or -1 for the last exception".into())
    })?;
    if word.trim() == "-1" {
        let info = e.kernel.mem.info().clone();
        let Some(r) = info.last_exception else {
            return Err(CmdError::Failed(match info.last_event {
                Some(ev) => format!("the last event is not an exception ({ev})"),
                None => "the target has reported no exception".into(),
            }));
        };
        let r = r.map_err(CmdError::Failed)?;
        return Ok(exception(e, None, &r));
    }
    let at = e.eval(word)?;
    let r = e.kernel.exception_record(at)?;
    Ok(exception(e, Some(at), &r))
}

impl Exception {
    /// The record as `.exr` prints it.
    pub(crate) fn render_record(&self, out: &mut String) {
        let symbol = self
            .symbol
            .as_deref()
            .map(padded_offset)
            .map_or(String::new(), |s| format!(" ({s})"));
        out.push_str(&format!(
            "ExceptionAddress: {:016x}{symbol}\n   ExceptionCode: {:08x}{}\n  ExceptionFlags: {:08x}\nNumberParameters: {}\n",
            self.address,
            self.code,
            if self.code_name.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.code_name)
            },
            self.flags,
            self.parameters.len()
        ));
        for (i, p) in self.parameters.iter().enumerate() {
            out.push_str(&format!("   Parameter[{i}]: {p:016x}\n"));
        }
        if let Some(m) = &self.meaning {
            out.push_str(m);
            out.push('\n');
        }
    }
}

impl Render for Exception {
    fn render(&self, out: &mut String) {
        self.render_record(out);
    }
}

/// `nt!Foo+0x1a` as `.exr` writes it: `nt!Foo+0x000000000000001a`.
fn padded_offset(s: &str) -> String {
    match s.rsplit_once("+0x") {
        Some((name, off)) => match u64::from_str_radix(off, 16) {
            Ok(v) => format!("{name}+0x{v:016x}"),
            Err(_) => s.to_string(),
        },
        None => s.to_string(),
    }
}

/// The frame `.frame` chose.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct FrameChosen {
    /// The frame, as `k` shows it.
    pub frame: stack::Frame,
    /// Its registers (`.frame /r`): the non-volatile ones as the walk recovered them; the
    /// others are those of the frame inside it (null without `/r`).
    pub registers: Option<AllRegisters>,
    /// The instruction at its RIP (`/r`; null when unreadable or not asked for).
    pub instruction: Option<Insn>,
}

/// `.frame [/r] [N]`.
pub(crate) fn frame(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<FrameChosen, CmdError> {
    let text = a.text("ARGS").unwrap_or("").trim();
    // Options: /r (the frame's registers), /c (make them the register context), together as
    // /rc or /cr.
    let (mut registers_wanted, mut set_context, mut rest) = (false, false, text);
    if let Some(opts) = rest.strip_prefix(['/', '-']) {
        let end = opts.find(char::is_whitespace).unwrap_or(opts.len());
        for c in opts[..end].chars() {
            match c.to_ascii_lowercase() {
                'r' => registers_wanted = true,
                'c' => set_context = true,
                other => {
                    return Err(CmdError::Usage(format!(
                        ".frame: unknown option /{other}; .frame [/r] [/c] [N]"
                    )));
                }
            }
        }
        rest = opts[end..].trim();
    }
    let wanted = if rest.is_empty() {
        e.frame
    } else {
        let n = e.eval(rest)?;
        usize::try_from(n).map_err(|_| CmdError::Usage(format!("frame {n:#x} is out of range")))?
    };
    let (frames, note) = stack::walk(e)?;
    let Some(f) = frames.into_iter().find(|f| f.number == wanted) else {
        return Err(CmdError::Usage(match note {
            Some(why) if wanted > 0 => {
                format!("there is no frame {wanted:#x}: the stack walk ended before it ({why})")
            }
            _ => format!("there is no frame {wanted:#x} on this stack"),
        }));
    };
    e.frame = wanted;
    let (registers, instruction) = if registers_wanted || set_context {
        let mut c = e.context(e.processor)?;
        for (i, v) in f.regs.gpr.iter().enumerate() {
            if let Some(r) = kdnet_arch::Reg::from_number(i as u8) {
                c.set_reg(r, *v);
            }
        }
        c.set_reg(kdnet_arch::Reg::Rip, f.ip);
        c.set_reg(kdnet_arch::Reg::Rsp, f.child_sp);
        if set_context {
            // The frame's registers become the context `r`, `k` and `u` use, until `.cxr`.
            e.scope = Some(Scope {
                processor: e.processor,
                context: c.clone(),
                kind: ScopeKind::Frame,
                address: f.child_sp,
            });
            e.frame = 0;
            e.next_disassembly = None;
        }
        let regs = general(e, &c, e.processor);
        let insn = instruction_at(e, f.ip);
        (Some(regs), insn)
    } else {
        (None, None)
    };
    Ok(FrameChosen {
        frame: stack::Frame::from_model(&f),
        registers,
        instruction,
    })
}

impl Render for FrameChosen {
    fn render(&self, out: &mut String) {
        let f = &self.frame;
        out.push_str(&format!(
            "{:02x} {} {}     {}\n",
            f.number,
            addr(f.child_sp),
            addr(f.return_address),
            f.call_site
        ));
        if let Some(r) = &self.registers {
            r.render(out);
            if let Some(i) = &self.instruction {
                out.push_str(&i.line());
                out.push('\n');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_violations_say_what_was_attempted() {
        let mut r = ExceptionRecord {
            code: 0xc000_0005,
            flags: 0,
            chained: 0,
            address: 0,
            parameters: vec![1, u64::MAX],
        };
        assert_eq!(
            exception_meaning(&r).unwrap(),
            "Attempt to write to address ffffffffffffffff"
        );
        r.parameters = vec![0, 0x18];
        assert_eq!(
            exception_meaning(&r).unwrap(),
            "Attempt to read from address 0000000000000018"
        );
        r.parameters = vec![0];
        assert!(exception_meaning(&r).is_none(), "a parameter is missing");
        r.code = 0xc000_0409;
        r.parameters = vec![2];
        assert_eq!(
            exception_meaning(&r).unwrap(),
            "Subcode: 0x2 FAST_FAIL_STACK_COOKIE_CHECK_FAILURE"
        );
        // winnt.h's numbers.
        for (code, name) in [
            (3, "FAST_FAIL_CORRUPT_LIST_ENTRY"),
            (14, "FAST_FAIL_INVALID_REFERENCE_COUNT"),
            (18, "FAST_FAIL_INVALID_JUMP_BUFFER"),
            (28, "FAST_FAIL_INVALID_BUFFER_ACCESS"),
            (37, "FAST_FAIL_GUARD_JUMPTABLE"),
        ] {
            r.parameters = vec![code];
            assert_eq!(
                exception_meaning(&r).unwrap(),
                format!("Subcode: {code:#x} {name}")
            );
        }
        r.parameters = vec![0x77];
        assert_eq!(exception_meaning(&r).unwrap(), "Subcode: 0x77");
        assert_eq!(exception_name(0x8000_0003), "Break instruction exception");
        assert_eq!(
            padded_offset("amdppm!WriteIoMemRawEx+0x70"),
            "amdppm!WriteIoMemRawEx+0x0000000000000070"
        );
        assert_eq!(padded_offset("nt"), "nt");
    }
}
