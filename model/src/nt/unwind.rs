//! x64 stack unwinding with the images' exception data (`.pdata` → UNWIND_INFO), read from
//! target memory or from the image files on the symbol path.
//!
//! A waiting thread starts from its KSWITCH_FRAME (`KernelStack`: Rbp at +0x30, the return into
//! the context-switch routine at +0x38, RSP = KernelStack + 0x40); a running thread from its
//! processor's CONTEXT. Each frame applies the unwind codes of the function containing RIP
//! (chained records followed, machine frames honoured, the frame register used when set); a
//! function without unwind data is a leaf. The walk stops at RIP 0 or outside every module, when
//! RSP does not increase or leaves the stack, or after 256 frames.

use kdnet_arch::le::Le;
use kdnet_arch::{Context, Reg};
use serde::Serialize;

use super::procs::Thread;
use super::{Kernel, ModelError};
use crate::pe;

/// Most frames walked.
pub const MAX_FRAMES: usize = 256;

/// The integer registers and RIP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Regs {
    /// rax … r15 by unwind register number.
    pub gpr: [u64; 16],
    /// Instruction pointer.
    pub rip: u64,
}

impl Regs {
    /// From a CONTEXT.
    pub fn from_context(c: &Context) -> Regs {
        let mut gpr = [0u64; 16];
        for (i, g) in gpr.iter_mut().enumerate() {
            if let Some(r) = Reg::from_number(i as u8) {
                *g = c.reg(r);
            }
        }
        Regs {
            gpr,
            rip: c.reg(Reg::Rip),
        }
    }

    /// RSP.
    pub fn rsp(&self) -> u64 {
        self.gpr[4]
    }
}

/// One frame.
#[derive(Debug, Clone, Serialize)]
pub struct Frame {
    /// Frame number (0 = innermost).
    pub number: usize,
    /// RSP in this frame ("Child-SP").
    pub child_sp: u64,
    /// Where this frame returns to.
    pub return_address: u64,
    /// RIP in this frame.
    pub ip: u64,
    /// `module!symbol+offset`.
    pub call_site: String,
    /// Module short name, when known.
    pub module: Option<String>,
    /// The first four stack arguments' home slots (for `kb`).
    #[serde(skip)]
    pub args: [u64; 4],
    /// The trap frame this frame's machine frame is the end of (an interrupt or exception
    /// entry such as `KiPageFault`): what `kv` shows and `.trap` loads.
    pub trap_frame: Option<u64>,
    /// The registers in this frame as the walk recovered them (the non-volatile ones are
    /// exact; the volatile ones are those of the frame inside it).
    #[serde(skip)]
    pub regs: Regs,
}

/// A walked stack.
#[derive(Debug, Clone, Serialize)]
pub struct Stack {
    /// Frames, innermost first.
    pub frames: Vec<Frame>,
    /// Why the walk ended early, if it did (or why there is nothing to walk).
    pub note: Option<String>,
    /// Whether the frames are the whole stack: false when the walk stopped before its end (a
    /// read failed, no unwind data, a limit); a stack that is not resident is whole (there is
    /// nothing in memory to show, and `note` says so).
    pub complete: bool,
}

impl Kernel {
    /// The stack of a thread. `context` is its processor's CONTEXT when the thread runs.
    pub fn thread_stack(
        &mut self,
        t: &Thread,
        context: Option<&Context>,
    ) -> Result<Stack, ModelError> {
        if !t.stack_resident {
            return Ok(Stack {
                frames: Vec::new(),
                note: Some("the kernel stack is not resident (swapped out)".into()),
                complete: true,
            });
        }
        let bounds = (t.stack_limit, t.stack_base);
        let regs = match (t.state, context) {
            (2, Some(c)) => Regs::from_context(c),
            _ => {
                let ks = t.kernel_stack;
                let rbp = self.stack_u64(ks.wrapping_add(0x30))?;
                let ret = self.stack_u64(ks.wrapping_add(0x38))?;
                let mut gpr = [0u64; 16];
                gpr[4] = ks.wrapping_add(0x40);
                gpr[5] = rbp;
                Regs { gpr, rip: ret }
            }
        };
        Ok(self.unwind(regs, Some(bounds), t.state == 2))
    }

    /// Unwinds from `regs`. `bounds` limits RSP to a stack; `precise` says the first frame's RIP
    /// is the current instruction (a running thread), not a return address.
    pub fn unwind(&mut self, mut regs: Regs, bounds: Option<(u64, u64)>, precise: bool) -> Stack {
        let mut frames: Vec<Frame> = Vec::new();
        let mut note = None;
        // The frame above a machine frame was interrupted at RIP, not returned to.
        let mut interrupted = false;
        // (RIP, RSP) pairs walked: a machine frame may lead back to one (hostile memory).
        let mut seen = std::collections::HashSet::new();
        for n in 0..MAX_FRAMES {
            let entry = regs;
            let rip = regs.rip;
            let rsp = regs.rsp();
            if rip == 0 {
                break;
            }
            if !seen.insert((rip, rsp)) {
                note = Some(format!(
                    "the walk came back to RIP {rip:#x} with RSP {rsp:#x}; it stops"
                ));
                break;
            }
            if rip >> 47 == 0 {
                // A user-mode return address: the kernel part of the stack ends here.
                frames.push(self.frame(n, rsp, rip, 0, entry));
                break;
            }
            if let Some((lo, hi)) = bounds
                && (rsp < lo || rsp > hi)
            {
                note = Some(format!(
                    "stack pointer {rsp:#x} left the stack [{lo:#x}, {hi:#x})"
                ));
                break;
            }
            let exact = (n == 0 && precise) || interrupted;
            let lookup_ip = if exact { rip } else { rip - 1 };
            let Some(mi) = self.module_index(lookup_ip) else {
                frames.push(self.frame(n, rsp, rip, 0, entry));
                note = Some(format!(
                    "{rip:#x} is not in any loaded module; the walk stops"
                ));
                break;
            };
            let base = self.modules().map(|m| m[mi].base).unwrap_or(0);
            let rva = (lookup_ip - base) as u32;
            let result = match self.module_pdata(mi) {
                Ok(table) => match pe::lookup(&table, rva) {
                    Some(f) => self.apply_unwind(mi, f, rva, &mut regs, exact),
                    None => self.leaf(&mut regs),
                },
                // Without the module's exception table a leaf cannot be told from a framed
                // function: guessing would invent frames.
                Err(why) => Err(why),
            };
            let ret = match result {
                Ok(r) => r,
                Err(e) => {
                    frames.push(self.frame(n, rsp, rip, 0, entry));
                    note = Some(e);
                    break;
                }
            };
            let mut f = self.frame(n, rsp, rip, ret.0, entry);
            f.trap_frame = ret.1.and_then(|machine| {
                let rip_at = self.nt.as_ref()?.field("_KTRAP_FRAME", "Rip").ok()?.offset;
                Some(machine.wrapping_sub(rip_at))
            });
            interrupted = ret.1.is_some();
            f.args = [
                self.stack_u64(rsp.wrapping_add(8)).unwrap_or(0),
                self.stack_u64(rsp.wrapping_add(16)).unwrap_or(0),
                self.stack_u64(rsp.wrapping_add(24)).unwrap_or(0),
                self.stack_u64(rsp.wrapping_add(32)).unwrap_or(0),
            ];
            frames.push(f);
            if regs.rsp() <= rsp && ret.1.is_none() {
                note = Some(format!("stack pointer did not increase at {rsp:#x}"));
                break;
            }
            if frames.len() == MAX_FRAMES {
                note = Some(format!("stopped after {MAX_FRAMES} frames"));
            }
        }
        let complete = note.is_none();
        Stack {
            frames,
            note,
            complete,
        }
    }

    fn frame(&mut self, number: usize, rsp: u64, rip: u64, ret: u64, regs: Regs) -> Frame {
        let parts = self.symbol_parts(rip);
        Frame {
            number,
            child_sp: rsp,
            return_address: ret,
            ip: rip,
            call_site: self.symbolize(rip),
            module: parts.map(|p| p.0),
            args: [0; 4],
            trap_frame: None,
            regs,
        }
    }

    /// A qword on a stack: a miss reads on to the end of the page, where the frames above lie.
    fn stack_u64(&mut self, a: u64) -> Result<u64, crate::target::TargetError> {
        let b = self.mem.kread_ahead(a, 8)?;
        Ok(u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8])))
    }

    fn leaf(&mut self, regs: &mut Regs) -> Result<(u64, Option<u64>), String> {
        let rsp = regs.rsp();
        let ret = self
            .stack_u64(rsp)
            .map_err(|e| format!("return address at {rsp:#x} unreadable: {e}"))?;
        regs.gpr[4] = rsp.wrapping_add(8);
        regs.rip = ret;
        Ok((ret, None))
    }

    /// Applies the unwind codes of `func` (and its chain). Returns the return address (or the
    /// interrupted RIP), and where the machine frame was when one set RSP.
    fn apply_unwind(
        &mut self,
        mi: usize,
        func: pe::RuntimeFunction,
        rva: u32,
        regs: &mut Regs,
        first: bool,
    ) -> Result<(u64, Option<u64>), String> {
        let mut f = func;
        let mut primary = true;
        let mut machine: Option<(u64, u64, u64)> = None;
        let read = |k: &mut Kernel, rva: u32, len: usize| -> Result<Vec<u8>, String> {
            k.image_bytes_cached(mi, rva, len)
                .ok_or_else(|| format!("unwind data at RVA {rva:#x} unreadable"))
        };
        for _chain in 0..32 {
            let unwind_rva = f.unwind & !1;
            let head = read(self, unwind_rva, 4)?;
            let (ver, flags, prolog, count, freg, foff) = (
                head[0] & 7,
                head[0] >> 3,
                u32::from(head[1]),
                usize::from(head[2]),
                head[3] & 0xf,
                u64::from(head[3] >> 4),
            );
            if ver == 0 || ver > 2 {
                return Err(format!(
                    "unknown unwind info version {ver} at RVA {unwind_rva:#x}"
                ));
            }
            let codes = if count > 0 {
                read(self, unwind_rva.wrapping_add(4), 2 * count)?
            } else {
                Vec::new()
            };
            let offset = rva.saturating_sub(f.begin);
            let past_prolog = !(first && primary) || offset >= prolog;
            if freg != 0 && past_prolog {
                regs.gpr[4] = regs.gpr[usize::from(freg)].wrapping_sub(foff * 16);
            }
            let mut i = 0;
            while i < count {
                let code_offset = u32::from(codes[2 * i]);
                let op = codes[2 * i + 1] & 0xf;
                let info = codes[2 * i + 1] >> 4;
                let slot = |j: usize| Le(&codes).u16(2 * (i + j));
                let slots = match op {
                    0 | 2 | 3 | 10 => 1,
                    1 => {
                        if info == 0 {
                            2
                        } else {
                            3
                        }
                    }
                    4 => 2,
                    5 => 3,
                    6 => 2,
                    8 => 2,
                    9 => 3,
                    _ => 1,
                };
                let applies = !(first && primary) || code_offset <= offset;
                if applies {
                    let rsp = regs.gpr[4];
                    let rd = |k: &mut Kernel, a: u64| {
                        k.stack_u64(a)
                            .map_err(|e| format!("stack at {a:#x} unreadable: {e}"))
                    };
                    match op {
                        0 => {
                            regs.gpr[usize::from(info)] = rd(self, rsp)?;
                            regs.gpr[4] = rsp.wrapping_add(8);
                        }
                        1 => {
                            let size = if info == 0 {
                                u64::from(slot(1)) * 8
                            } else {
                                u64::from(slot(1)) | (u64::from(slot(2)) << 16)
                            };
                            regs.gpr[4] = rsp.wrapping_add(size);
                        }
                        2 => regs.gpr[4] = rsp.wrapping_add(u64::from(info) * 8 + 8),
                        3 => {}
                        4 => {
                            regs.gpr[usize::from(info)] =
                                rd(self, rsp.wrapping_add(u64::from(slot(1)) * 8))?
                        }
                        5 => {
                            let off = u64::from(slot(1)) | (u64::from(slot(2)) << 16);
                            regs.gpr[usize::from(info)] = rd(self, rsp.wrapping_add(off))?;
                        }
                        10 => {
                            let base = rsp.wrapping_add(if info == 1 { 8 } else { 0 });
                            let rip = rd(self, base)?;
                            let new_rsp = rd(self, base.wrapping_add(0x18))?;
                            machine = Some((rip, new_rsp, base));
                        }
                        _ => {}
                    }
                }
                i += slots.min(count - i).max(1);
            }
            if let Some((rip, rsp, at)) = machine {
                regs.rip = rip;
                regs.gpr[4] = rsp;
                return Ok((rip, Some(at)));
            }
            if flags & 4 != 0 {
                let at = unwind_rva.wrapping_add(4 + 2 * (count.div_ceil(2) * 2) as u32);
                let c = read(self, at, 12)?;
                let q = |o: usize| u32::from_le_bytes(c[o..o + 4].try_into().unwrap_or([0; 4]));
                f = pe::RuntimeFunction {
                    begin: q(0),
                    end: q(4),
                    unwind: q(8),
                };
                primary = false;
                continue;
            }
            break;
        }
        let rsp = regs.gpr[4];
        let ret = self
            .stack_u64(rsp)
            .map_err(|e| format!("return address at {rsp:#x} unreadable: {e}"))?;
        regs.gpr[4] = rsp.wrapping_add(8);
        regs.rip = ret;
        Ok((ret, None))
    }
}

/// A function's extent from its module's exception data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionExtent {
    /// The module holding it (index in the loaded-module list).
    pub module: usize,
    /// The module's base.
    pub base: u64,
    /// The primary record: the function's entry and the range its prolog's unwind data covers.
    pub primary: pe::RuntimeFunction,
    /// The record covering the address asked about (the primary one, or a chained fragment).
    pub covering: pe::RuntimeFunction,
}

/// Most chained records followed to a function's primary record.
const MAX_CHAIN: usize = 32;

impl Kernel {
    /// The function holding `addr`, from its module's `.pdata` (a chained fragment followed to
    /// its primary record). `Ok(None)`: the module has exception data and no record covers
    /// `addr` (a leaf function, or no code); `Err`: no module holds it, or its exception data
    /// or unwind information could not be read.
    pub fn function_extent(&mut self, addr: u64) -> Result<Option<FunctionExtent>, String> {
        let mi = self
            .module_index(addr)
            .ok_or_else(|| format!("no loaded module holds {addr:#x}"))?;
        let base = self
            .modules()
            .ok()
            .and_then(|l| l.get(mi))
            .map(|m| m.base)
            .ok_or_else(|| format!("module {mi} is gone"))?;
        let table = self.module_pdata(mi)?;
        let rva =
            u32::try_from(addr - base).map_err(|_| format!("{addr:#x} is past its module"))?;
        let Some(covering) = pe::lookup(&table, rva) else {
            return Ok(None);
        };
        let primary = self.primary_record(mi, covering)?;
        Ok(Some(FunctionExtent {
            module: mi,
            base,
            primary,
            covering,
        }))
    }

    /// The primary record a (possibly chained) record leads to.
    pub fn primary_record(
        &mut self,
        mi: usize,
        record: pe::RuntimeFunction,
    ) -> Result<pe::RuntimeFunction, String> {
        let mut f = record;
        for _ in 0..MAX_CHAIN {
            // An RVA with the low bit set points at another record rather than unwind data.
            if f.unwind & 1 != 0 {
                let c = self
                    .image_bytes_cached(mi, f.unwind & !1, 12)
                    .ok_or_else(|| format!("record at RVA {:#x} unreadable", f.unwind & !1))?;
                f = runtime_function(&c);
                continue;
            }
            let head = self
                .image_bytes_cached(mi, f.unwind, 4)
                .ok_or_else(|| format!("unwind data at RVA {:#x} unreadable", f.unwind))?;
            if head[0] >> 3 & 4 == 0 {
                return Ok(f);
            }
            let count = u32::from(head[2]);
            let at = f.unwind.wrapping_add(4 + 2 * count.div_ceil(2) * 2);
            let c = self
                .image_bytes_cached(mi, at, 12)
                .ok_or_else(|| format!("chained record at RVA {at:#x} unreadable"))?;
            f = runtime_function(&c);
        }
        Err(format!(
            "unwind data chains more than {MAX_CHAIN} records from RVA {:#x}",
            record.begin
        ))
    }
}

fn runtime_function(c: &[u8]) -> pe::RuntimeFunction {
    let q = |o: usize| Le(c).u32(o);
    pe::RuntimeFunction {
        begin: q(0),
        end: q(4),
        unwind: q(8),
    }
}
