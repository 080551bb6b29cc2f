//! Real x64 code for the simulated images, assembled with iced-x86: each function with a
//! frame gets a prolog that its unwind codes describe, a body of real instructions with a call
//! ending at every return address a simulated stack holds (to the callee on that stack: direct
//! within a module, through an import slot across modules, as Windows images call), an
//! instruction starting wherever a processor or thread is stopped, and an epilog; what is left
//! of its `.pdata` range is `int 3` padding, as linkers leave between functions.

use iced_x86::code_asm::{
    AsmRegister64, CodeAssembler, byte_ptr, dword_ptr, qword_ptr, r8, r9d, r12, r13, r14, r15, rax,
    rbp, rbx, rcx, rdi, rdx, rsi, rsp,
};
use std::collections::BTreeMap;

use iced_x86::{Code, Instruction, MemoryOperand, Register};

use crate::SimError;
use crate::image::Gpr;

/// What must be at a place in a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Site {
    /// A call whose return address is here (the call ends here), to this callee; None: through
    /// a register.
    CallReturningTo(Option<u64>),
    /// An instruction starts here (a stopped processor's or thread's instruction pointer).
    Instruction,
    /// `mov rax, qword ptr [reg+disp]` starts here (the instruction a thread faulted on).
    Load(Gpr, i32),
    /// `pause` starts here, then a jump back to it: a loop that never ends (where a
    /// processor spins).
    Spin,
}

/// One unwind operation of a prolog: (offset of the end of its instruction, operation,
/// operation info, extra slots).
pub type UnwindOp = (u8, u8, u8, Vec<u16>);

fn err(what: &str, e: impl std::fmt::Display) -> SimError {
    SimError::Config(format!("assembling {what}: {e}"))
}

pub(crate) fn reg64(r: Gpr) -> AsmRegister64 {
    use iced_x86::code_asm::{r10, r11};
    match r {
        Gpr::Rax => rax,
        Gpr::Rcx => rcx,
        Gpr::Rdx => rdx,
        Gpr::Rbx => rbx,
        Gpr::Rsp => rsp,
        Gpr::Rbp => rbp,
        Gpr::Rsi => rsi,
        Gpr::Rdi => rdi,
        Gpr::R8 => r8,
        Gpr::R9 => iced_x86::code_asm::r9,
        Gpr::R10 => r10,
        Gpr::R11 => r11,
        Gpr::R12 => r12,
        Gpr::R13 => r13,
        Gpr::R14 => r14,
        Gpr::R15 => r15,
    }
}

/// Assembles what `build` adds at `ip`.
fn asm(
    ip: u64,
    what: &str,
    build: impl FnOnce(&mut CodeAssembler) -> Result<(), iced_x86::IcedError>,
) -> Result<Vec<u8>, SimError> {
    let mut a = CodeAssembler::new(64).map_err(|e| err(what, e))?;
    build(&mut a).map_err(|e| err(what, e))?;
    a.assemble(ip).map_err(|e| err(what, e))
}

/// A prolog: the pushes, the allocation and the saves, at `ip`; its bytes and the unwind
/// operations describing it, in prolog order.
pub fn prolog(
    ip: u64,
    lead: u32,
    pushes: &[Gpr],
    alloc: u32,
    saves: &[(Gpr, u32)],
) -> Result<(Vec<u8>, Vec<UnwindOp>), SimError> {
    let mut bytes = Vec::new();
    let mut ops = Vec::new();
    if lead > 0 {
        // Room the entry makes itself before its pushes (an interrupt's error-code slot).
        bytes.extend(asm(ip, "the leading allocation", |a| {
            a.sub(rsp, lead as i32)
        })?);
        ops.push((bytes.len() as u8, 2, ((lead - 8) / 8) as u8, vec![]));
    }
    for r in pushes {
        let b = asm(ip + bytes.len() as u64, "a push", |a| a.push(reg64(*r)))?;
        bytes.extend(b);
        ops.push((bytes.len() as u8, 0, *r as u8, vec![]));
    }
    if alloc > 0 {
        let b = asm(ip + bytes.len() as u64, "the allocation", |a| {
            a.sub(rsp, alloc as i32)
        })?;
        bytes.extend(b);
        let off = bytes.len() as u8;
        ops.push(if alloc <= 128 {
            (off, 2, ((alloc - 8) / 8) as u8, vec![])
        } else if alloc <= 512 * 1024 - 8 {
            (off, 1, 0, vec![(alloc / 8) as u16])
        } else {
            (off, 1, 1, vec![alloc as u16, (alloc >> 16) as u16])
        });
    }
    for (r, disp) in saves {
        let b = asm(ip + bytes.len() as u64, "a save", |a| {
            a.mov(qword_ptr(rsp + *disp as i32), reg64(*r))
        })?;
        bytes.extend(b);
        ops.push((bytes.len() as u8, 4, *r as u8, vec![(disp / 8) as u16]));
    }
    Ok((bytes, ops))
}

/// The epilog undoing a prolog: the saved registers restored, the allocation freed, the pushes
/// popped, `ret` (for an interrupt entry: the error code dropped, `iretq`).
fn epilog(
    ip: u64,
    pushes: &[Gpr],
    alloc: u32,
    saves: &[(Gpr, u32)],
    machine: bool,
) -> Result<Vec<u8>, SimError> {
    asm(ip, "an epilog", |a| {
        for (r, disp) in saves {
            a.mov(reg64(*r), qword_ptr(rsp + *disp as i32))?;
        }
        if alloc > 0 {
            a.add(rsp, alloc as i32)?;
        }
        for r in pushes.iter().rev() {
            a.pop(reg64(*r))?;
        }
        if machine {
            a.add(rsp, 8)?;
            a.iretq()
        } else {
            a.ret()
        }
    })
}

/// How many kinds of ordinary instruction [`filler`] has.
const FILLERS: u64 = 12;

/// The ordinary instructions a body is made of (none touches RSP).
fn filler(a: &mut CodeAssembler, which: u64) -> Result<(), iced_x86::IcedError> {
    match which % FILLERS {
        0 => a.mov(rcx, rbx),
        1 => a.xor(iced_x86::code_asm::edx, iced_x86::code_asm::edx),
        2 => a.lea(r8, qword_ptr(rsp + 0x40)),
        3 => a.mov(iced_x86::code_asm::eax, dword_ptr(rbx + 0x18)),
        4 => a.test(iced_x86::code_asm::eax, iced_x86::code_asm::eax),
        5 => a.mov(qword_ptr(rsp + 0x28), rax),
        6 => a.mov(r9d, 1),
        7 => a.cmp(byte_ptr(rdi + 0x71), 0),
        8 => a.mov(rdx, qword_ptr(rsi + 8)),
        9 => a.and(dword_ptr(rsp + 0x20), 0),
        10 => a.mov(rcx, qword_ptr(rbx + 0x10)),
        _ => a.lea(rdx, qword_ptr(rbp - 0x28)),
    }
}

/// Fills `[at, to)` with ordinary instructions (a short conditional branch over one now and
/// then), ending exactly at `to`.
fn fill(out: &mut Vec<u8>, base: u64, to: u64, seed: &mut u64) -> Result<(), SimError> {
    while base + (out.len() as u64) < to {
        let at = base + out.len() as u64;
        let room = to - at;
        *seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let mut pick = *seed >> 33;
        let mut one = asm(at, "filler", |a| filler(a, pick))?;
        // The first of the kinds from the one picked on that fits; a nop where none does.
        for _ in 0..FILLERS {
            if one.len() as u64 <= room {
                break;
            }
            pick += 1;
            one = asm(at, "filler", |a| filler(a, pick))?;
        }
        if one.len() as u64 > room {
            out.extend(asm(at, "padding", |a| a.nop())?);
            continue;
        }
        // Now and then a branch over the next instruction (as compiled code tests and skips).
        if pick.is_multiple_of(5) && (one.len() as u64) + 2 <= room {
            let next = asm(at + 2, "filler", |a| filler(a, pick / 5))?;
            if (next.len() as u64) + 2 <= room {
                let target = at + 2 + next.len() as u64;
                let jcc = asm(at, "a branch", |a| a.je(target))?;
                if jcc.len() == 2 {
                    out.extend(jcc);
                    out.extend(next);
                    continue;
                }
            }
        }
        out.extend(one);
    }
    Ok(())
}

/// A call at `at` to `callee`: through `slot` (an import slot in the caller's image holding
/// the callee's address) when it has one, as calls across modules go; direct within a module;
/// through a register where the callee differs from stack to stack.
fn call(at: u64, callee: Option<u64>, slot: Option<u64>) -> Result<Vec<u8>, SimError> {
    match (callee, slot) {
        (Some(_), Some(slot)) => asm(at, "an import call", |a| {
            let m = MemoryOperand::with_base_displ_size(Register::RIP, slot as i64, 8);
            a.add_instruction(Instruction::with1(Code::Call_rm64, m)?)
        }),
        (Some(callee), None) => asm(at, "a call", |a| a.call(callee)),
        (None, _) => asm(at, "an indirect call", |a| a.call(rax)),
    }
}

/// Length of a call: 6 bytes through an import slot, 5 direct, 2 through a register.
pub fn call_len(known: bool, import: bool) -> u64 {
    match (known, import) {
        (true, true) => 6,
        (true, false) => 5,
        (false, _) => 2,
    }
}

/// A function's code, filling its `.pdata` range `[ip, end)`: the prolog, the sites in
/// address order, the epilog, padding. `slot_for` gives the import slot a cross-module call
/// goes through. Returns the bytes (the whole range), how many of them are the function's
/// own (the rest is `int 3` padding, outside its `.pdata` record as linkers leave it) and the
/// sites that could not be placed (too close to the prolog or to another site).
#[allow(clippy::too_many_arguments)]
pub fn function(
    ip: u64,
    end: u64,
    pushes: &[Gpr],
    alloc: u32,
    saves: &[(Gpr, u32)],
    machine: bool,
    lead: u32,
    sites: &[(u64, Site)],
    mut slot_for: impl FnMut(u64) -> Option<u64>,
) -> Result<(Vec<u8>, usize, Vec<u64>), SimError> {
    let (mut out, _) = prolog(ip, lead, pushes, alloc, saves)?;
    let mut seed = ip ^ 0x9e37_79b9_7f4a_7c15;
    let mut skipped = Vec::new();
    // One site per place: calls returning to the same place from different callers' stacks
    // to different callees are one indirect call (as a thread's start routine is called).
    let mut by_place: BTreeMap<u64, Site> = BTreeMap::new();
    for (at, site) in sites {
        let merged = match (by_place.get(at), site) {
            (None, s) | (Some(Site::Instruction), s) => *s,
            (Some(Site::CallReturningTo(a)), Site::CallReturningTo(b)) if a != b => {
                Site::CallReturningTo(None)
            }
            (Some(s), _) => *s,
        };
        by_place.insert(*at, merged);
    }
    for (at, site) in by_place {
        let here = ip + out.len() as u64;
        match site {
            Site::Instruction => {
                if at < here || at >= end {
                    if at != here {
                        skipped.push(at);
                    }
                    continue;
                }
                fill(&mut out, ip, at, &mut seed)?;
            }
            Site::Spin => {
                if at < here || at + 4 > end {
                    skipped.push(at);
                    continue;
                }
                fill(&mut out, ip, at, &mut seed)?;
                out.extend(asm(at, "a spin", |a| {
                    a.pause()?;
                    a.jmp(at)
                })?);
            }
            Site::Load(base, disp) => {
                if at < here || at >= end {
                    skipped.push(at);
                    continue;
                }
                fill(&mut out, ip, at, &mut seed)?;
                out.extend(asm(at, "a load", |a| {
                    a.mov(rax, qword_ptr(reg64(base) + disp))
                })?);
            }
            Site::CallReturningTo(callee) => {
                let slot = callee.and_then(&mut slot_for);
                let len = call_len(callee.is_some(), slot.is_some());
                if at < here + len || at > end {
                    if at != here {
                        skipped.push(at);
                    }
                    continue;
                }
                fill(&mut out, ip, at - len, &mut seed)?;
                let c = call(at - len, callee, slot)?;
                if c.len() as u64 != len {
                    return Err(SimError::Config(format!(
                        "the call returning to {at:#x} is {} bytes, not {len}",
                        c.len()
                    )));
                }
                out.extend(c);
            }
        }
    }
    let here = ip + out.len() as u64;
    // More code to near the end of the range (as a function fills the space up to the next
    // symbol, but for a few bytes of alignment padding), then the epilog where it fits.
    let ep = epilog(here, pushes, alloc, saves, machine)?;
    let pad = (ip >> 4 ^ ip >> 12) % 12;
    let last = end.saturating_sub(pad).max(here);
    if here + ep.len() as u64 <= last {
        fill(&mut out, ip, last - ep.len() as u64, &mut seed)?;
        out.extend(epilog(
            ip + out.len() as u64,
            pushes,
            alloc,
            saves,
            machine,
        )?);
    } else if here + ep.len() as u64 <= end {
        out.extend(ep);
    }
    let len = (end - ip) as usize;
    let own = out.len().min(len);
    if out.len() < len {
        out.resize(len, 0xcc);
    }
    out.truncate(len);
    Ok((out, own, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_function_has_its_calls_where_its_return_addresses_are() {
        let ip = 0xfffff805_60001000u64;
        let far = 0xfffff880_00f01000u64;
        let sites = [
            (ip + 0x40, Site::CallReturningTo(Some(ip + 0x400))),
            (ip + 0x80, Site::CallReturningTo(Some(far))),
            (ip + 0x95, Site::Instruction),
        ];
        let (code, own, skipped) = function(
            ip,
            ip + 0x200,
            &[Gpr::Rbx, Gpr::Rsi],
            0x30,
            &[(Gpr::Rdi, 0x50)],
            false,
            0,
            &sites,
            |c| (c == far).then_some(ip + 0x1f00),
        )
        .unwrap();
        assert!(skipped.is_empty());
        assert_eq!(code.len(), 0x200);
        assert!(own < 0x200 && code[own..].iter().all(|b| *b == 0xcc));
        assert_eq!(code[own - 1], 0xc3, "the function ends with its ret");
        // The direct call ends at +0x40 and reaches its callee.
        assert_eq!(code[0x3b], 0xe8);
        let rel = i32::from_le_bytes(code[0x3c..0x40].try_into().unwrap());
        assert_eq!((ip + 0x40).wrapping_add(rel as i64 as u64), ip + 0x400);
        // The far one goes through the import slot.
        assert_eq!(&code[0x7a..0x7c], &[0xff, 0x15]);
        let disp = i32::from_le_bytes(code[0x7c..0x80].try_into().unwrap());
        assert_eq!((ip + 0x80).wrapping_add(disp as i64 as u64), ip + 0x1f00);
        // Decoded from the start, every site is an instruction boundary.
        let mut d = iced_x86::Decoder::with_ip(64, &code, ip, iced_x86::DecoderOptions::NONE);
        let mut starts = Vec::new();
        while d.can_decode() {
            let i = d.decode();
            assert!(!i.is_invalid(), "{:#x}", i.ip());
            starts.push(i.ip());
        }
        for (at, _) in sites {
            assert!(starts.contains(&at), "{at:#x}");
        }
        // The prolog is what its unwind operations say: push, push, sub, mov.
        let (p, ops) = prolog(ip, 0, &[Gpr::Rbx, Gpr::Rsi], 0x30, &[(Gpr::Rdi, 0x50)]).unwrap();
        assert_eq!(&code[..p.len()], &p[..]);
        assert_eq!(ops.len(), 4);
        assert_eq!(ops[3].0 as usize, p.len());
        assert_eq!(&p[..2], &[0x53, 0x56]);
    }
}
