//! `u [ADDR] [L n]`, `ub [ADDR] [L n]`, `uf ADDR`: x64 disassembly in WinDbg's layout, with
//! branch and call targets and RIP-relative operands symbolised.
//!
//! Bytes come from target memory, a page's piece at a time (no byte is asked for twice); where
//! memory cannot give them (a dump without the page) they come from the module's image file on
//! the symbol path, and the result says so. Bytes neither can give end the listing with `??`
//! and the result is marked incomplete. `uf` takes the function's extent from its module's
//! `.pdata` (chained fragments followed to the primary record) and also lists the fragments
//! its branches reach; `ub` decodes from the function's start where the exception data gives
//! it, so its instruction boundaries are the real ones.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use iced_x86::{
    Decoder, DecoderError, DecoderOptions, FlowControl, Formatter, Instruction, MasmFormatter,
    OpKind, SymbolResolver, SymbolResult,
};
use schemars::JsonSchema;
use serde::Serialize;

use crate::args::{Args, Syntax, expr, opt_expr};
use crate::engine::{CmdError, Engine, addr};
use crate::registry::Render;
use kdnet_model::pe::ImageReader;

/// Instructions `u` and `ub` show without a length.
const DEFAULT_COUNT: u64 = 8;
/// Most instructions one command shows.
const MAX_COUNT: u64 = 0x4000;
/// Longest x64 instruction.
const MAX_INSN: u64 = 15;
/// Largest function `uf` lists (bytes, all fragments together).
const MAX_FUNCTION: u64 = 0x4_0000;
/// Most chained fragments `uf` follows.
const MAX_FRAGMENTS: usize = 64;
/// Farthest back `ub` decodes from a function's start.
const MAX_BACK: u64 = 0x1_0000;
const PAGE: u64 = 0x1000;

/// `u [ADDR] [L n]` and `ub`.
pub(crate) const SYNTAX: Syntax = Syntax {
    flags: &[],
    params: &[opt_expr("ADDR")],
    length: true,
};

/// `uf ADDR`.
pub(crate) const UF_SYNTAX: Syntax = Syntax::params(&[expr("ADDR")]);

/// Disassembled code.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Disassembly {
    /// The address asked about.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub address: u64,
    /// The function's extent from its module's exception data (`uf`, and `ub` where it used
    /// it): null where none was used.
    pub function: Option<Extent>,
    /// The instructions, in address order.
    pub instructions: Vec<Insn>,
    /// The first address not read, where the listing stopped because memory could not be read
    /// there (null when it did not).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub unreadable: Option<u64>,
    /// Image files bytes were taken from, where memory did not have them.
    pub from_files: Vec<String>,
    /// Where the next plain `u` goes on.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub next: u64,
    /// What the listing could not do as asked.
    pub notes: Vec<String>,
}

/// A function's extent.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Extent {
    /// Its entry (the primary record's start).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub begin: u64,
    /// The primary record's end (exclusive).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub end: u64,
    /// Its name (`nt!KeWaitForSingleObject`), when a symbol starts there.
    pub symbol: Option<String>,
    /// Chained fragments listed with it.
    pub fragments: Vec<Fragment>,
}

/// A chained fragment of a function.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, JsonSchema)]
pub(crate) struct Fragment {
    /// Its start.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub begin: u64,
    /// Its end (exclusive).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub end: u64,
}

/// One instruction.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Insn {
    /// Its address.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub address: u64,
    /// The label line shown before it (`nt!KeWaitForSingleObject+0x1a`): at the first
    /// instruction, where a symbol starts, and (in `uf`) at branch targets.
    pub label: Option<String>,
    /// Its bytes, in hex.
    pub bytes: String,
    /// The mnemonic (`mov`, `call`).
    pub mnemonic: String,
    /// The operands as WinDbg writes them (MASM syntax, targets symbolised).
    pub operands: String,
    /// The branch or call target, or the address a RIP-relative operand refers to.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub target: Option<u64>,
    /// That address as `module!symbol+0x…` (null outside every module).
    pub target_symbol: Option<String>,
    /// Not a valid instruction.
    pub invalid: bool,
}

/// Bytes of one contiguous run, from memory or an image file.
struct Run {
    start: u64,
    bytes: Vec<u8>,
}

/// Reads code bytes a page's piece at a time, from memory and else the module's image file.
struct Fetcher {
    files: BTreeMap<usize, Option<kdnet_model::pe::FileImage>>,
    used_files: BTreeSet<String>,
    /// Bytes already known at an address (a stop report's instruction stream).
    known: Option<(u64, Vec<u8>)>,
}

impl Fetcher {
    fn new() -> Fetcher {
        Fetcher {
            files: BTreeMap::new(),
            used_files: BTreeSet::new(),
            known: None,
        }
    }

    /// Up to `len` bytes at `at`, not past the end of `at`'s page; None when neither memory nor
    /// an image file has them.
    fn piece(&mut self, e: &mut Engine, at: u64, len: u64) -> Option<Vec<u8>> {
        let len = len.min(PAGE - at % PAGE).max(1) as usize;
        if let Some((base, bytes)) = &self.known
            && at >= *base
            && at - base < bytes.len() as u64
        {
            let from = (at - base) as usize;
            return Some(bytes[from..(from + len).min(bytes.len())].to_vec());
        }
        if let Ok(b) = e.kernel.mem.kread(at, len) {
            return Some(b);
        }
        let mi = e.kernel.module_index(at)?;
        let m = e.kernel.modules().ok()?.get(mi)?.clone();
        let file = self
            .files
            .entry(mi)
            .or_insert_with(|| e.kernel.image_file(&m))
            .as_mut()?;
        let rva = u32::try_from(at - m.base).ok()?;
        let b = file.read(rva, len).ok()?;
        self.used_files.insert(m.name.clone());
        Some(b)
    }
}

/// Decodes instructions from `start`: at most `count`, none at or past `end`. Returns them and
/// where memory could not be read, if it stopped there.
fn decode(
    e: &mut Engine,
    f: &mut Fetcher,
    start: u64,
    count: u64,
    end: Option<u64>,
) -> (Vec<Instruction>, Option<u64>) {
    let mut out: Vec<Instruction> = Vec::new();
    let mut run = Run {
        start,
        bytes: Vec::new(),
    };
    let mut at = start;
    // Where a read failed: not asked again.
    let mut failed: Option<u64> = None;
    while (out.len() as u64) < count && end.is_none_or(|x| at < x) {
        if e.kernel.mem.cancelled() {
            e.kernel
                .note_incomplete(format!("stopped at {}: cancelled", addr(at)));
            break;
        }
        let have = run.start + run.bytes.len() as u64;
        // What is still wanted past what was read: enough for the instructions left, within
        // the range.
        let want_to = match end {
            Some(x) => x,
            None => at.saturating_add((count - out.len() as u64).saturating_mul(MAX_INSN)),
        };
        if have < at.saturating_add(MAX_INSN) && have < want_to && failed.is_none() {
            match f.piece(e, have, want_to - have) {
                Some(b) if !b.is_empty() => {
                    run.bytes.extend_from_slice(&b);
                    continue;
                }
                _ => failed = Some(have),
            }
        }
        if have <= at {
            return (out, Some(at));
        }
        let slice = &run.bytes[(at - run.start) as usize..];
        let limit = end.map_or(slice.len(), |x| slice.len().min((x - at) as usize));
        let mut d = Decoder::with_ip(64, &slice[..limit], at, DecoderOptions::NONE);
        let mut insn = Instruction::default();
        d.decode_out(&mut insn);
        if d.last_error() == DecoderError::NoMoreBytes {
            // Runs past what could be read, or past the range's end.
            return match failed {
                Some(x) if end.is_none_or(|y| x < y) => (out, Some(x)),
                _ => (out, None),
            };
        }
        at = insn.next_ip();
        out.push(insn);
        // Drop what is behind, keeping the buffer small on long listings.
        if at - run.start > 2 * PAGE {
            let drop = (at - run.start - PAGE) as usize;
            run.bytes.drain(..drop);
            run.start += drop as u64;
        }
    }
    (out, None)
}

/// Names the formatter gives addresses: `nt!KiSwapThread (fffff802`2e2a2b30)`.
struct Names(HashMap<u64, String>);

impl SymbolResolver for Names {
    fn symbol(
        &mut self,
        instruction: &Instruction,
        _operand: u32,
        instruction_operand: Option<u32>,
        address: u64,
        _address_size: u32,
    ) -> Option<SymbolResult<'_>> {
        let op = instruction_operand?;
        let named = match instruction.op_kind(op) {
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => true,
            OpKind::Memory => instruction.is_ip_rel_memory_operand(),
            _ => false,
        };
        if !named {
            return None;
        }
        self.0
            .get(&address)
            .map(|t| SymbolResult::with_str(address, t.as_str()))
    }
}

/// The address an instruction refers to: a near branch's target or a RIP-relative operand's.
fn referenced(i: &Instruction) -> Option<u64> {
    for op in 0..i.op_count() {
        match i.op_kind(op) {
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => {
                return Some(i.near_branch_target());
            }
            OpKind::Memory if i.is_ip_rel_memory_operand() => {
                return Some(i.ip_rel_memory_address());
            }
            _ => {}
        }
    }
    None
}

/// `module!symbol+0x…` for an address in a module; None outside every module.
fn symbol_of(e: &mut Engine, a: u64) -> Option<String> {
    let (m, s, off) = e.kernel.symbol_parts(a)?;
    Some(match (s, off) {
        (Some(s), 0) => format!("{m}!{s}"),
        (Some(s), o) => format!("{m}!{s}+{o:#x}"),
        (None, o) => format!("{m}+{o:#x}"),
    })
}

/// Formats decoded instructions; `labels` are addresses that get a label line besides the
/// first and symbol starts.
fn format(e: &mut Engine, insns: &[Instruction], labels: &BTreeSet<u64>) -> Vec<Insn> {
    let mut names: HashMap<u64, String> = HashMap::new();
    let mut symbols: HashMap<u64, Option<String>> = HashMap::new();
    for i in insns {
        if let Some(t) = referenced(i)
            && !symbols.contains_key(&t)
        {
            let s = symbol_of(e, t);
            names.insert(
                t,
                match &s {
                    Some(s) => format!("{s} ({})", addr(t)),
                    None => addr(t),
                },
            );
            symbols.insert(t, s);
        }
    }
    let mut fmt = MasmFormatter::with_options(Some(Box::new(Names(names))), None);
    let o = fmt.options_mut();
    o.set_show_branch_size(false);
    o.set_rip_relative_addresses(true);
    o.set_uppercase_hex(true);
    o.set_space_after_operand_separator(false);
    o.set_branch_leading_zeros(false);
    o.set_memory_size_options(iced_x86::MemorySizeOptions::Always);
    let mut out = Vec::with_capacity(insns.len());
    for (n, i) in insns.iter().enumerate() {
        let ip = i.ip();
        let parts = e.kernel.symbol_parts(ip);
        let label = match &parts {
            Some((_, Some(_), 0)) => symbol_of(e, ip),
            _ if n == 0 || labels.contains(&ip) => symbol_of(e, ip),
            _ => None,
        };
        let invalid = i.is_invalid();
        let (mut mnemonic, mut operands) = (String::new(), String::new());
        if invalid {
            mnemonic.push_str("???");
        } else {
            fmt.format_mnemonic(i, &mut mnemonic);
            fmt.format_all_operands(i, &mut operands);
            // WinDbg writes the breakpoint instruction as `int 3`.
            if mnemonic == "int3" {
                mnemonic = "int".into();
                operands = "3".into();
            }
        }
        let target = referenced(i);
        out.push(Insn {
            address: ip,
            label,
            bytes: String::new(),
            mnemonic,
            operands,
            target,
            target_symbol: target.and_then(|t| symbols.get(&t).cloned().flatten()),
            invalid,
        });
    }
    out
}

/// Fills each instruction's bytes (read again from the cache or file that decoded it).
fn fill_bytes(e: &mut Engine, f: &mut Fetcher, insns: &[Instruction], out: &mut [Insn]) {
    for (i, o) in insns.iter().zip(out.iter_mut()) {
        let len = i.len() as u64;
        let mut bytes = Vec::with_capacity(len as usize);
        let mut at = i.ip();
        while at < i.ip() + len {
            match f.piece(e, at, i.ip() + len - at) {
                Some(b) if !b.is_empty() => {
                    at += b.len() as u64;
                    bytes.extend(b);
                }
                _ => break,
            }
        }
        o.bytes = bytes.iter().map(|b| format!("{b:02x}")).collect();
    }
}

fn listing(
    e: &mut Engine,
    f: &mut Fetcher,
    insns: &[Instruction],
    labels: &BTreeSet<u64>,
) -> Vec<Insn> {
    let mut out = format(e, insns, labels);
    fill_bytes(e, f, insns, &mut out);
    out
}

/// The memory the instruction at `at` accesses when its registers are `c`: the address and
/// whether it writes there; none when it accesses no memory, or its bytes or the registers its
/// address needs are not known.
pub(crate) fn memory_access(
    e: &mut Engine,
    at: u64,
    c: &kdnet_arch::Context,
) -> Option<(u64, bool)> {
    use iced_x86::{InstructionInfoFactory, OpAccess, Register};
    let mut f = Fetcher::new();
    let (insns, _) = decode(e, &mut f, at, 1, None);
    let insn = insns.first()?;
    let mut factory = InstructionInfoFactory::new();
    let info = factory.info(insn);
    let m = info
        .used_memory()
        .iter()
        .find(|m| !matches!(m.access(), OpAccess::NoMemAccess))?;
    let write = matches!(
        m.access(),
        OpAccess::Write | OpAccess::ReadWrite | OpAccess::CondWrite | OpAccess::ReadCondWrite
    );
    let value = |reg: Register, _: usize, _: usize| -> Option<u64> {
        use kdnet_arch::Reg;
        let full = reg.full_register();
        let r = match full {
            Register::ES | Register::CS | Register::SS | Register::DS => return Some(0),
            Register::RAX => Reg::Rax,
            Register::RCX => Reg::Rcx,
            Register::RDX => Reg::Rdx,
            Register::RBX => Reg::Rbx,
            Register::RSP => Reg::Rsp,
            Register::RBP => Reg::Rbp,
            Register::RSI => Reg::Rsi,
            Register::RDI => Reg::Rdi,
            Register::R8 => Reg::R8,
            Register::R9 => Reg::R9,
            Register::R10 => Reg::R10,
            Register::R11 => Reg::R11,
            Register::R12 => Reg::R12,
            Register::R13 => Reg::R13,
            Register::R14 => Reg::R14,
            Register::R15 => Reg::R15,
            // FS and GS bases, vector indexes: not in a context's integer registers.
            _ => return None,
        };
        let v = c.reg(r);
        Some(match reg.size() {
            8 => v,
            n => v & ((1u64 << (8 * n)) - 1),
        })
    };
    Some((m.virtual_address(0, value)?, write))
}

/// The one instruction at `at` decoded from `bytes` (what a stop report carried from there),
/// without reading the target.
pub(crate) fn instruction_from(e: &mut Engine, at: u64, bytes: &[u8]) -> Option<Insn> {
    if bytes.is_empty() {
        return instruction_at(e, at);
    }
    let mut f = Fetcher::new();
    f.known = Some((at, bytes.to_vec()));
    let (insns, _) = decode(e, &mut f, at, 1, None);
    let mut out = listing(e, &mut f, &insns, &BTreeSet::new());
    out.pop().map(|mut i| {
        i.label = None;
        i
    })
}

/// The one instruction at `at`, as a listing shows it (no label line); none when its bytes
/// cannot be read. It does not move where a plain `u` goes on.
pub(crate) fn instruction_at(e: &mut Engine, at: u64) -> Option<Insn> {
    let mut f = Fetcher::new();
    let (insns, _) = decode(e, &mut f, at, 1, None);
    let mut out = listing(e, &mut f, &insns, &BTreeSet::new());
    out.pop().map(|mut i| {
        i.label = None;
        i
    })
}

impl Insn {
    /// The listing line: address, bytes, mnemonic and operands.
    pub(crate) fn line(&self) -> String {
        let text = if self.operands.is_empty() {
            self.mnemonic.clone()
        } else {
            format!("{:<7} {}", self.mnemonic, self.operands)
        };
        format!("{} {:<15} {}", addr(self.address), self.bytes, text)
    }
}

fn count_arg(e: &mut Engine, a: &Args<'_>) -> Result<u64, CmdError> {
    let n = a.length(e)?.unwrap_or(DEFAULT_COUNT);
    if n == 0 || n > MAX_COUNT {
        return Err(CmdError::Usage(format!(
            "a length of {n} is out of range (1 to {MAX_COUNT} instructions)"
        )));
    }
    Ok(n)
}

/// Where a plain `u` starts: after the last listing, else the current instruction.
fn default_start(e: &mut Engine) -> Result<u64, CmdError> {
    if let Some(n) = e.next_disassembly {
        return Ok(n);
    }
    let c = e.context(e.processor)?;
    Ok(c.reg(kdnet_arch::Reg::Rip))
}

fn finish(
    e: &mut Engine,
    f: Fetcher,
    address: u64,
    function: Option<Extent>,
    instructions: Vec<Insn>,
    unreadable: Option<u64>,
    mut notes: Vec<String>,
) -> Disassembly {
    if let Some(at) = unreadable {
        let why = format!(
            "memory at {} could not be read (and no image file on the symbol path has it)",
            addr(at)
        );
        e.kernel.note_incomplete(why.clone());
        notes.push(why);
    }
    let next = instructions
        .last()
        .map(|i| i.address + i.bytes.len() as u64 / 2)
        .unwrap_or(address);
    e.next_disassembly = Some(unreadable.unwrap_or(next));
    let from_files: Vec<String> = f.used_files.into_iter().collect();
    if !from_files.is_empty() {
        notes.push(format!(
            "bytes the target's memory did not give were read from {} on the symbol path",
            from_files.join(", ")
        ));
    }
    Disassembly {
        address,
        function,
        instructions,
        unreadable,
        from_files,
        next: unreadable.unwrap_or(next),
        notes,
    }
}

/// `u [ADDR] [L n]`, and `ub`.
pub(crate) fn run(e: &mut Engine, verb: &str, a: &Args<'_>) -> Result<Disassembly, CmdError> {
    if verb.eq_ignore_ascii_case("ub") {
        return back(e, a);
    }
    let start = match a.expr(e, "ADDR")? {
        Some(x) => x,
        None => default_start(e)?,
    };
    let count = count_arg(e, a)?;
    let mut f = Fetcher::new();
    let (insns, unreadable) = decode(e, &mut f, start, count, None);
    let out = listing(e, &mut f, &insns, &BTreeSet::new());
    Ok(finish(e, f, start, None, out, unreadable, Vec::new()))
}

/// `ub [ADDR] [L n]`: the `n` instructions before ADDR.
fn back(e: &mut Engine, a: &Args<'_>) -> Result<Disassembly, CmdError> {
    let end = match a.expr(e, "ADDR")? {
        Some(x) => x,
        None => {
            let c = e.context(e.processor)?;
            c.reg(kdnet_arch::Reg::Rip)
        }
    };
    let count = count_arg(e, a)?;
    let mut f = Fetcher::new();
    let mut notes = Vec::new();
    let extent = e.kernel.function_extent(end);
    // From the start of the record covering ADDR, its instruction boundaries are the real
    // ones; before that record (or without one) they are guessed, as WinDbg guesses them.
    let (from, function) = match &extent {
        Ok(Some(x)) if x.base + u64::from(x.covering.begin) < end => {
            let begin = x.base + u64::from(x.covering.begin);
            (
                Some(begin.max(end.saturating_sub(MAX_BACK))),
                Some(extent_of(e, x)),
            )
        }
        _ => (None, None),
    };
    let (insns, unreadable) = match from {
        Some(begin) => {
            let (mut v, u) = decode(e, &mut f, begin, u64::MAX, Some(end));
            if v.last().is_some_and(|i| i.next_ip() != end) {
                notes.push(format!(
                    "{} is not an instruction boundary when decoding from the function's start",
                    addr(end)
                ));
            }
            let skip = v.len().saturating_sub(count as usize);
            v.drain(..skip);
            (v, u)
        }
        None => {
            let why = match extent {
                Err(why) => why,
                Ok(Some(_)) => "it is where its function's unwind record starts".to_string(),
                Ok(None) => "no unwind record covers it".to_string(),
            };
            notes.push(format!(
                "instruction boundaries before {} are guessed: {why}",
                addr(end)
            ));
            guess_back(e, &mut f, end, count)
        }
    };
    let out = listing(e, &mut f, &insns, &BTreeSet::new());
    let start = out.first().map_or(end, |i| i.address);
    let mut d = finish(e, f, start, function, out, unreadable, notes);
    d.address = end;
    Ok(d)
}

/// Without unwind data: the start, as far back as `count` longest instructions, whose decoding
/// lands exactly on `end` with the most instructions (nearest the wanted count).
fn guess_back(
    e: &mut Engine,
    f: &mut Fetcher,
    end: u64,
    count: u64,
) -> (Vec<Instruction>, Option<u64>) {
    let span = count * MAX_INSN;
    let mut best: Option<Vec<Instruction>> = None;
    // The nearest address before `end` that could not be read, if any.
    let mut unread: Option<u64> = None;
    for back in (1..=span).rev() {
        let Some(start) = end.checked_sub(back) else {
            continue;
        };
        let (v, u) = decode(e, f, start, u64::MAX, Some(end));
        if let Some(at) = u {
            unread = unread.max(Some(at));
            continue;
        }
        if v.last().is_some_and(|i| i.next_ip() == end) && v.iter().all(|i| !i.is_invalid()) {
            let mut v = v;
            let skip = v.len().saturating_sub(count as usize);
            v.drain(..skip);
            if best.as_ref().is_none_or(|b| v.len() > b.len()) {
                let full = v.len() as u64 == count;
                best = Some(v);
                if full {
                    break;
                }
            }
        }
    }
    match (best, unread) {
        (Some(v), _) => (v, None),
        (None, Some(at)) => (Vec::new(), Some(at)),
        (None, None) => {
            let why = format!("no run of valid instructions ends at {}", addr(end));
            e.kernel.note_incomplete(why);
            (Vec::new(), None)
        }
    }
}

fn extent_of(e: &mut Engine, x: &kdnet_model::nt::unwind::FunctionExtent) -> Extent {
    let begin = x.base + u64::from(x.primary.begin);
    Extent {
        begin,
        end: x.base + u64::from(x.primary.end),
        symbol: e.kernel.global_name(begin),
        fragments: Vec::new(),
    }
}

/// `uf ADDR`: the whole function holding ADDR.
pub(crate) fn function(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<Disassembly, CmdError> {
    let at = a
        .expr(e, "ADDR")?
        .ok_or_else(|| CmdError::Usage("an address is needed".into()))?;
    let x = match e.kernel.function_extent(at) {
        Ok(Some(x)) => x,
        Ok(None) => {
            return Err(CmdError::Failed(format!(
                "no function's unwind data covers {} (a leaf function or not code): use u",
                addr(at)
            )));
        }
        Err(why) => return Err(CmdError::Failed(format!("uf {}: {why}", addr(at)))),
    };
    let mut extent = extent_of(e, &x);
    let mut f = Fetcher::new();
    let mut notes = Vec::new();
    let mut all: Vec<Instruction> = Vec::new();
    let mut labels: BTreeSet<u64> = BTreeSet::new();
    let mut unreadable = None;
    // Fragments to list: the primary range, then chained fragments its branches reach.
    let mut todo: Vec<(u64, u64)> = vec![(extent.begin, extent.end)];
    let mut done: BTreeSet<u64> = BTreeSet::new();
    let mut total = 0u64;
    while let Some((b, end)) = todo.pop() {
        if !done.insert(b) {
            continue;
        }
        if done.len() > MAX_FRAGMENTS {
            notes.push(format!("stopped after {MAX_FRAGMENTS} fragments"));
            e.kernel
                .note_incomplete(format!("uf stopped after {MAX_FRAGMENTS} fragments"));
            break;
        }
        total += end - b;
        if total > MAX_FUNCTION {
            let why =
                format!("the function is larger than {MAX_FUNCTION:#x} bytes: listed in part");
            e.kernel.note_incomplete(why.clone());
            notes.push(why);
            break;
        }
        if b != extent.begin {
            extent.fragments.push(Fragment { begin: b, end });
        }
        labels.insert(b);
        let (v, u) = decode(e, &mut f, b, u64::MAX, Some(end));
        if u.is_some() {
            unreadable = u;
        }
        for i in &v {
            if matches!(
                i.flow_control(),
                FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch
            ) {
                let t = i.near_branch_target();
                if t != 0 {
                    labels.insert(t);
                    if (t < extent.begin || t >= extent.end)
                        && !done.contains(&t)
                        && let Ok(Some(y)) = e.kernel.function_extent(t)
                        && y.primary == x.primary
                    {
                        let fb = y.base + u64::from(y.covering.begin);
                        todo.push((fb, y.base + u64::from(y.covering.end)));
                    }
                }
            }
        }
        all.extend(v);
        if unreadable.is_some() {
            break;
        }
    }
    all.sort_by_key(Instruction::ip);
    let out = listing(e, &mut f, &all, &labels);
    extent.fragments.sort_unstable();
    Ok(finish(e, f, at, Some(extent), out, unreadable, notes))
}

impl Render for Disassembly {
    fn render(&self, out: &mut String) {
        for i in &self.instructions {
            if let Some(l) = &i.label {
                out.push_str(&format!("{l}:\n"));
            }
            out.push_str(&i.line());
            out.push('\n');
        }
        if let Some(u) = self.unreadable {
            out.push_str(&format!("{} ??              ???\n", addr(u)));
        }
        for n in &self.notes {
            out.push_str(&format!("NOTE: {n}\n"));
        }
    }
}
