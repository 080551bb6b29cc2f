//! A small x64 interpreter: the simulated machine runs its own routines instruction by
//! instruction over its memory, so what a debugger does to the machine takes effect where it
//! would on a real processor: an `int 3` written over an instruction is met when that
//! instruction is reached, the trap flag stops after one instruction of its real length, and
//! the debug registers fire on execution (before the instruction) and on writes (after it).
//!
//! It executes what the simulator assembles (moves, arithmetic, compares and branches, calls
//! and returns, pushes and pops); anything else is a fault the caller reports.

use iced_x86::{ConditionCode, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

/// Memory as the processor sees it (virtual addresses of the running space).
pub trait Bus {
    /// Reads `buf.len()` bytes; false if any is not mapped.
    fn read(&mut self, va: u64, buf: &mut [u8]) -> bool;
    /// Writes the bytes; false if any is not mapped.
    fn write(&mut self, va: u64, data: &[u8]) -> bool;
}

/// EFLAGS.TF.
pub const TF: u64 = 0x100;
/// DR6.BS: the stop was a single step.
pub const DR6_BS: u64 = 0x4000;

const CF: u64 = 1;
const ZF: u64 = 0x40;
const SF: u64 = 0x80;
const OF: u64 = 0x800;

/// A processor's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cpu {
    /// RAX … R15 in encoding order.
    pub regs: [u64; 16],
    /// The instruction pointer.
    pub rip: u64,
    /// EFLAGS.
    pub rflags: u64,
    /// DR0–DR3.
    pub dr: [u64; 4],
    /// DR7.
    pub dr7: u64,
    /// The resume flag: the next instruction does not fire an execution breakpoint (set when
    /// one was reported, as the kernel sets EFLAGS.RF on the way back).
    pub resume: bool,
}

/// What one step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// One instruction executed.
    Ran,
    /// The instruction at RIP is `int 3`: a breakpoint exception at RIP (not executed).
    Breakpoint,
    /// A debug exception: an execution breakpoint before the instruction (RIP unchanged), or a
    /// write breakpoint or the trap flag after it. DR6 says which.
    Debug {
        /// DR6: B0–B3 for the debug registers, BS for a single step.
        dr6: u64,
    },
    /// Something the interpreter cannot do (an unmapped access, an instruction it does not
    /// know).
    Fault(String),
}

/// Register index of a general-purpose register (any width).
fn gpr(r: Register) -> Option<usize> {
    let f = r.full_register();
    let i = (f as usize).checked_sub(Register::RAX as usize)?;
    (i < 16).then_some(i)
}

fn mask(size: usize) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size * 8)) - 1
    }
}

fn sign_bit(size: usize) -> u64 {
    1u64 << (size * 8 - 1)
}

impl Cpu {
    /// A processor at `rip` with stack pointer `rsp` (interrupts enabled, no breakpoint).
    pub fn new(rip: u64, rsp: u64) -> Cpu {
        let mut regs = [0u64; 16];
        regs[4] = rsp;
        Cpu {
            regs,
            rip,
            rflags: 0x202,
            dr: [0; 4],
            dr7: 0x400,
            resume: false,
        }
    }

    /// RSP.
    pub fn rsp(&self) -> u64 {
        self.regs[4]
    }

    fn reg(&self, r: Register) -> Result<u64, String> {
        let i = gpr(r).ok_or_else(|| format!("register {r:?}"))?;
        let v = self.regs[i];
        Ok(match r.size() {
            1 if matches!(r, Register::AH | Register::CH | Register::DH | Register::BH) => {
                (v >> 8) & 0xff
            }
            n => v & mask(n),
        })
    }

    fn set_reg(&mut self, r: Register, v: u64) -> Result<(), String> {
        let i = gpr(r).ok_or_else(|| format!("register {r:?}"))?;
        let n = r.size();
        self.regs[i] = match n {
            8 => v,
            // A 32-bit destination clears the upper half.
            4 => v & 0xffff_ffff,
            _ => (self.regs[i] & !mask(n)) | (v & mask(n)),
        };
        Ok(())
    }

    /// The effective address of the instruction's memory operand.
    fn address(&self, ins: &Instruction) -> Result<u64, String> {
        if ins.is_ip_rel_memory_operand() {
            return Ok(ins.ip_rel_memory_address());
        }
        let mut a = ins.memory_displacement64();
        if ins.memory_base() != Register::None {
            a = a.wrapping_add(self.reg(ins.memory_base())?);
        }
        if ins.memory_index() != Register::None {
            let scale = u64::from(ins.memory_index_scale());
            a = a.wrapping_add(self.reg(ins.memory_index())?.wrapping_mul(scale));
        }
        Ok(a)
    }

    fn size_of(ins: &Instruction, op: u32) -> usize {
        match ins.op_kind(op) {
            OpKind::Register => ins.op_register(op).size(),
            OpKind::Memory => ins.memory_size().size(),
            _ => 8,
        }
    }

    fn read_op(&self, ins: &Instruction, op: u32, bus: &mut dyn Bus) -> Result<u64, String> {
        match ins.op_kind(op) {
            OpKind::Register => self.reg(ins.op_register(op)),
            OpKind::Memory => {
                let a = self.address(ins)?;
                let n = ins.memory_size().size().min(8);
                let mut b = [0u8; 8];
                if !bus.read(a, &mut b[..n]) {
                    return Err(format!("read of {a:#x} faulted"));
                }
                Ok(u64::from_le_bytes(b))
            }
            OpKind::NearBranch64 => Ok(ins.near_branch64()),
            OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64 => Ok(ins.immediate(op)),
            k => Err(format!("operand kind {k:?}")),
        }
    }

    fn write_op(
        &mut self,
        ins: &Instruction,
        op: u32,
        v: u64,
        bus: &mut dyn Bus,
        writes: &mut Vec<(u64, usize)>,
    ) -> Result<(), String> {
        match ins.op_kind(op) {
            OpKind::Register => self.set_reg(ins.op_register(op), v),
            OpKind::Memory => {
                let a = self.address(ins)?;
                let n = ins.memory_size().size().min(8);
                if !bus.write(a, &v.to_le_bytes()[..n]) {
                    return Err(format!("write of {a:#x} faulted"));
                }
                writes.push((a, n));
                Ok(())
            }
            k => Err(format!("destination kind {k:?}")),
        }
    }

    fn push(
        &mut self,
        v: u64,
        bus: &mut dyn Bus,
        writes: &mut Vec<(u64, usize)>,
    ) -> Result<(), String> {
        let sp = self.regs[4].wrapping_sub(8);
        if !bus.write(sp, &v.to_le_bytes()) {
            return Err(format!("push to {sp:#x} faulted"));
        }
        writes.push((sp, 8));
        self.regs[4] = sp;
        Ok(())
    }

    fn pop(&mut self, bus: &mut dyn Bus) -> Result<u64, String> {
        let sp = self.regs[4];
        let mut b = [0u8; 8];
        if !bus.read(sp, &mut b) {
            return Err(format!("pop from {sp:#x} faulted"));
        }
        self.regs[4] = sp.wrapping_add(8);
        Ok(u64::from_le_bytes(b))
    }

    fn set_flags(&mut self, flags: u64) {
        self.rflags = (self.rflags & !(CF | ZF | SF | OF)) | flags;
    }

    fn logic_flags(r: u64, size: usize) -> u64 {
        let mut f = 0;
        if r & mask(size) == 0 {
            f |= ZF;
        }
        if r & sign_bit(size) != 0 {
            f |= SF;
        }
        f
    }

    fn condition(&self, c: ConditionCode) -> bool {
        let f = self.rflags;
        let (cf, zf, sf, of) = (f & CF != 0, f & ZF != 0, f & SF != 0, f & OF != 0);
        match c {
            ConditionCode::o => of,
            ConditionCode::no => !of,
            ConditionCode::b => cf,
            ConditionCode::ae => !cf,
            ConditionCode::e => zf,
            ConditionCode::ne => !zf,
            ConditionCode::be => cf || zf,
            ConditionCode::a => !cf && !zf,
            ConditionCode::s => sf,
            ConditionCode::ns => !sf,
            ConditionCode::l => sf != of,
            ConditionCode::ge => sf == of,
            ConditionCode::le => zf || sf != of,
            ConditionCode::g => !zf && sf == of,
            _ => false,
        }
    }

    /// The execution breakpoint (0–3) DR7 enables at `rip`, if any.
    fn exec_hit(&self) -> Option<usize> {
        (0..4).find(|&i| {
            let enabled = self.dr7 & (3 << (2 * i)) != 0;
            let rw = (self.dr7 >> (16 + 4 * i)) & 3;
            enabled && rw == 0 && self.dr[i] == self.rip
        })
    }

    /// The write breakpoints DR7 enables that `writes` touch, as DR6 bits.
    fn write_hits(&self, writes: &[(u64, usize)]) -> u64 {
        let mut dr6 = 0;
        for i in 0..4 {
            let enabled = self.dr7 & (3 << (2 * i)) != 0;
            let rw = (self.dr7 >> (16 + 4 * i)) & 3;
            if !enabled || !(rw == 1 || rw == 3) {
                continue;
            }
            let len = [1u64, 2, 8, 4][((self.dr7 >> (18 + 4 * i)) & 3) as usize];
            let start = self.dr[i] & !(len - 1);
            if writes
                .iter()
                .any(|&(a, n)| a < start + len && start < a + n as u64)
            {
                dr6 |= 1 << i;
            }
        }
        dr6
    }

    /// Executes one instruction (or stops before it).
    pub fn step(&mut self, bus: &mut dyn Bus) -> Step {
        if !std::mem::take(&mut self.resume)
            && let Some(i) = self.exec_hit()
        {
            return Step::Debug { dr6: 1 << i };
        }
        let mut bytes = [0u8; 15];
        // The longest instruction at once; near the end of what is mapped, byte by byte.
        let mut n = if bus.read(self.rip, &mut bytes) {
            bytes.len()
        } else {
            0
        };
        if n == 0 {
            while n < bytes.len() && bus.read(self.rip + n as u64, &mut bytes[n..n + 1]) {
                n += 1;
            }
        }
        if n == 0 {
            return Step::Fault(format!("instruction fetch at {:#x} faulted", self.rip));
        }
        if bytes[0] == 0xCC {
            return Step::Breakpoint;
        }
        let mut d = Decoder::with_ip(64, &bytes[..n], self.rip, DecoderOptions::NONE);
        let ins = d.decode();
        if ins.is_invalid() {
            return Step::Fault(format!("no instruction at {:#x}", self.rip));
        }
        let trace = self.rflags & TF != 0;
        let mut writes = Vec::new();
        if let Err(e) = self.execute(&ins, bus, &mut writes) {
            return Step::Fault(format!("{e} at {:#x} ({ins})", ins.ip()));
        }
        let mut dr6 = self.write_hits(&writes);
        if trace {
            dr6 |= DR6_BS;
        }
        if dr6 != 0 {
            return Step::Debug { dr6 };
        }
        Step::Ran
    }

    fn execute(
        &mut self,
        ins: &Instruction,
        bus: &mut dyn Bus,
        writes: &mut Vec<(u64, usize)>,
    ) -> Result<(), String> {
        let next = ins.next_ip();
        self.rip = next;
        match ins.mnemonic() {
            Mnemonic::Nop | Mnemonic::Pause => {}
            Mnemonic::Push => {
                let v = self.read_op(ins, 0, bus)?;
                self.push(v, bus, writes)?;
            }
            Mnemonic::Pop => {
                let v = self.pop(bus)?;
                self.write_op(ins, 0, v, bus, writes)?;
            }
            Mnemonic::Mov => {
                let v = self.read_op(ins, 1, bus)?;
                self.write_op(ins, 0, v & mask(Self::size_of(ins, 0)), bus, writes)?;
            }
            Mnemonic::Movzx => {
                let v = self.read_op(ins, 1, bus)? & mask(Self::size_of(ins, 1));
                self.write_op(ins, 0, v, bus, writes)?;
            }
            Mnemonic::Lea => {
                let a = self.address(ins)?;
                self.write_op(ins, 0, a, bus, writes)?;
            }
            Mnemonic::Add | Mnemonic::Sub | Mnemonic::Cmp => {
                let size = Self::size_of(ins, 0);
                let a = self.read_op(ins, 0, bus)? & mask(size);
                let b = self.read_op(ins, 1, bus)? & mask(size);
                let add = ins.mnemonic() == Mnemonic::Add;
                let r = if add {
                    a.wrapping_add(b)
                } else {
                    a.wrapping_sub(b)
                } & mask(size);
                let mut f = Self::logic_flags(r, size);
                let s = sign_bit(size);
                if add {
                    if r < a {
                        f |= CF;
                    }
                    if !(a ^ b) & (a ^ r) & s != 0 {
                        f |= OF;
                    }
                } else {
                    if a < b {
                        f |= CF;
                    }
                    if (a ^ b) & (a ^ r) & s != 0 {
                        f |= OF;
                    }
                }
                self.set_flags(f);
                if ins.mnemonic() != Mnemonic::Cmp {
                    self.write_op(ins, 0, r, bus, writes)?;
                }
            }
            Mnemonic::And | Mnemonic::Or | Mnemonic::Xor | Mnemonic::Test => {
                let size = Self::size_of(ins, 0);
                let a = self.read_op(ins, 0, bus)?;
                let b = self.read_op(ins, 1, bus)?;
                let r = match ins.mnemonic() {
                    Mnemonic::Or => a | b,
                    Mnemonic::Xor => a ^ b,
                    _ => a & b,
                } & mask(size);
                self.set_flags(Self::logic_flags(r, size));
                if ins.mnemonic() != Mnemonic::Test {
                    self.write_op(ins, 0, r, bus, writes)?;
                }
            }
            Mnemonic::Inc | Mnemonic::Dec => {
                let size = Self::size_of(ins, 0);
                let a = self.read_op(ins, 0, bus)? & mask(size);
                let inc = ins.mnemonic() == Mnemonic::Inc;
                let r = if inc {
                    a.wrapping_add(1)
                } else {
                    a.wrapping_sub(1)
                } & mask(size);
                let mut f = Self::logic_flags(r, size) | (self.rflags & CF);
                let s = sign_bit(size);
                if (inc && r == s) || (!inc && a == s) {
                    f |= OF;
                }
                self.set_flags(f);
                self.write_op(ins, 0, r, bus, writes)?;
            }
            Mnemonic::Jmp => self.rip = self.read_op(ins, 0, bus)?,
            Mnemonic::Call => {
                let target = self.read_op(ins, 0, bus)?;
                self.push(next, bus, writes)?;
                self.rip = target;
            }
            Mnemonic::Ret => {
                self.rip = self.pop(bus)?;
                if ins.op_count() == 1 {
                    self.regs[4] = self.regs[4].wrapping_add(ins.immediate(0));
                }
            }
            _ if ins.condition_code() != ConditionCode::None && ins.is_jcc_short_or_near() => {
                if self.condition(ins.condition_code()) {
                    self.rip = ins.near_branch_target();
                }
            }
            m => return Err(format!("the interpreter does not execute {m:?}")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::code_asm::*;

    struct Ram {
        base: u64,
        bytes: Vec<u8>,
    }

    impl Bus for Ram {
        fn read(&mut self, va: u64, buf: &mut [u8]) -> bool {
            let Some(o) = va.checked_sub(self.base).map(|o| o as usize) else {
                return false;
            };
            match self.bytes.get(o..o + buf.len()) {
                Some(s) => {
                    buf.copy_from_slice(s);
                    true
                }
                None => false,
            }
        }
        fn write(&mut self, va: u64, data: &[u8]) -> bool {
            let Some(o) = va.checked_sub(self.base).map(|o| o as usize) else {
                return false;
            };
            match self.bytes.get_mut(o..o + data.len()) {
                Some(s) => {
                    s.copy_from_slice(data);
                    true
                }
                None => false,
            }
        }
    }

    const BASE: u64 = 0xffff_f800_1000_0000;

    /// A routine: `f(rcx = p, edx = v)`: stores v at [p+0x30], calls g, returns [p+0x30] + 1
    /// when v is 0 and v otherwise.
    fn program() -> (Ram, u64, u64) {
        let mut a = CodeAssembler::new(64).unwrap();
        let mut g = a.create_label();
        let mut nonzero = a.create_label();
        let mut out = a.create_label();
        a.push(rbx).unwrap();
        a.sub(rsp, 0x20).unwrap();
        a.mov(rbx, rcx).unwrap();
        a.mov(dword_ptr(rcx + 0x30), edx).unwrap();
        a.call(g).unwrap();
        a.mov(eax, dword_ptr(rbx + 0x30)).unwrap();
        a.test(eax, eax).unwrap();
        a.jne(nonzero).unwrap();
        a.inc(eax).unwrap();
        a.jmp(out).unwrap();
        a.set_label(&mut nonzero).unwrap();
        a.nop().unwrap();
        a.set_label(&mut out).unwrap();
        a.add(rsp, 0x20).unwrap();
        a.pop(rbx).unwrap();
        a.ret().unwrap();
        a.set_label(&mut g).unwrap();
        a.movzx(eax, byte_ptr(rcx + 0x42)).unwrap();
        a.add(eax, 1).unwrap();
        a.mov(byte_ptr(rcx + 0x43), al).unwrap();
        a.ret().unwrap();
        let code = a.assemble(BASE).unwrap();
        let mut bytes = vec![0u8; 0x3000];
        bytes[..code.len()].copy_from_slice(&code);
        (Ram { base: BASE, bytes }, BASE, BASE + 0x2000)
    }

    fn run(cpu: &mut Cpu, ram: &mut Ram, end: u64) -> Vec<Step> {
        let mut stops = Vec::new();
        for _ in 0..1000 {
            if cpu.rip == end {
                return stops;
            }
            match cpu.step(ram) {
                Step::Ran => {}
                Step::Fault(e) => panic!("{e}"),
                s => {
                    stops.push(s);
                    if stops.len() > 100 {
                        return stops;
                    }
                    cpu.resume = true;
                }
            }
        }
        panic!("did not return");
    }

    fn call(ram: &mut Ram, entry: u64, p: u64, v: u64) -> Cpu {
        let sentinel = BASE + 0x2ff0;
        let stack = BASE + 0x2800;
        ram.write(stack, &sentinel.to_le_bytes());
        let mut cpu = Cpu::new(entry, stack);
        cpu.regs[1] = p;
        cpu.regs[2] = v;
        cpu
    }

    #[test]
    fn runs_a_routine_with_a_call_a_branch_and_a_byte_store() {
        let (mut ram, entry, data) = program();
        ram.bytes[0x2042] = 5;
        let mut cpu = call(&mut ram, entry, data, 0);
        assert!(run(&mut cpu, &mut ram, BASE + 0x2ff0).is_empty());
        assert_eq!(cpu.regs[0], 1);
        assert_eq!(ram.bytes[0x2043], 6);
        assert_eq!(cpu.rsp(), BASE + 0x2808);
        let mut cpu = call(&mut ram, entry, data, 0xC000_000D);
        run(&mut cpu, &mut ram, BASE + 0x2ff0);
        assert_eq!(cpu.regs[0], 0xC000_000D);
    }

    #[test]
    fn an_int3_stops_before_the_instruction_and_the_trap_flag_after_each() {
        let (mut ram, entry, data) = program();
        let mut cpu = call(&mut ram, entry, data, 0);
        ram.bytes[0] = 0xCC;
        assert_eq!(cpu.step(&mut ram), Step::Breakpoint);
        assert_eq!(cpu.rip, entry);
        // Put back, then single-step: each step moves by the instruction's real length.
        ram.bytes[0] = 0x53;
        cpu.rflags |= TF;
        let mut at = vec![cpu.rip];
        for _ in 0..4 {
            assert_eq!(cpu.step(&mut ram), Step::Debug { dr6: DR6_BS });
            at.push(cpu.rip);
        }
        // push rbx (1), sub rsp,20h (4), mov rbx,rcx (3), mov [rcx+30h],edx (3).
        let lens: Vec<u64> = at.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(lens, vec![1, 4, 3, 3]);
    }

    #[test]
    fn debug_registers_fire_on_execution_and_on_writes() {
        let (mut ram, entry, data) = program();
        // DR0: execute at the call's target; DR1: write, 1 byte, at [data+0x43].
        let mut cpu = call(&mut ram, entry, data, 7);
        let g = {
            let mut d = Decoder::with_ip(64, &ram.bytes[..0x40], BASE, DecoderOptions::NONE);
            d.iter()
                .find(|i| i.mnemonic() == Mnemonic::Call)
                .unwrap()
                .near_branch64()
        };
        cpu.dr[0] = g;
        cpu.dr[1] = data + 0x43;
        cpu.dr7 = 0x400 | 1 | 4 | (1 << 20);
        let stops = run(&mut cpu, &mut ram, BASE + 0x2ff0);
        assert_eq!(stops, vec![Step::Debug { dr6: 1 }, Step::Debug { dr6: 2 }]);
        assert_eq!(cpu.regs[0], 7);
    }
}
