//! The basic commands: `lm`, `db/dw/dd/dq/dp/dps`, `dt`, `k/kn/kb`, `ln`, `r`, `vertarget`,
//! each in WinDbg's layout with a JSON value beside it.

use kdnet_arch::{Context, Reg};
use kdnet_symbols::{Ty, TypeTable};
use serde_json::{Value, json};

use schemars::JsonSchema;
use serde::Serialize;

use crate::args::{Args, Kind, Param, Syntax};
use crate::engine::{CmdError, Engine, Output, addr};
use crate::registry::Render;
use kdnet_model::nt::ModuleSymbols;
use kdnet_model::nt::unwind::Regs;

/// Most bytes one display command shows.
const MAX_DISPLAY: u64 = 0x10_0000;

fn opt_addr(v: Option<u64>) -> Value {
    v.map_or(Value::Null, |x| json!(x))
}

// ---- ? ----

/// `? EXPR`.
pub(crate) const EVALUATE: Syntax = Syntax::params(&[Param {
    name: "EXPR",
    kind: Kind::Rest,
    optional: false,
}]);

/// What `? EXPR` evaluated to.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Evaluated {
    /// The value, as a 64-bit unsigned number.
    pub value: u64,
}

pub(crate) fn evaluate(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<Evaluated, CmdError> {
    let text = a.text("EXPR").unwrap_or("");
    Ok(Evaluated {
        value: e.eval(text)?,
    })
}

impl Render for Evaluated {
    fn render(&self, out: &mut String) {
        out.push_str(&format!(
            "Evaluate expression: {} = {}\n",
            self.value as i64,
            addr(self.value)
        ));
    }
}

// ---- lm ----

pub(crate) fn lm(e: &mut Engine, args: &str) -> Result<Output, CmdError> {
    // `lm m pattern` / `lmm pattern`: modules whose name matches.
    let pattern = args
        .strip_prefix('m')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.to_ascii_lowercase());
    // The kernel's symbols are loaded already: show them as such.
    if e.kernel.nt.is_some() {
        let base = e.kernel.base;
        if let Some(i) = e.kernel.module_index(base) {
            e.kernel.module_symbols(i);
        }
    }
    let mut mods = e.kernel.modules()?.to_vec();
    mods.sort_by_key(|m| m.base);
    let mut text = String::from("start             end                 module name\n");
    let mut list = Vec::new();
    for m in &mods {
        if let Some(p) = &pattern
            && !glob(p, &m.short.to_ascii_lowercase())
        {
            continue;
        }
        let (status, file) = match m.symbols() {
            Some(ModuleSymbols::Table { source, .. }) => ("pdb", Some(source.clone())),
            Some(ModuleSymbols::Exports(_)) => ("export", None),
            Some(ModuleSymbols::None(_)) => ("none", None),
            None => ("deferred", None),
        };
        let label = match status {
            "pdb" => "(pdb symbols)",
            "export" => "(export symbols)",
            "none" => "(no symbols)",
            _ => "(deferred)",
        };
        let end = m.base + u64::from(m.size);
        text.push_str(&format!(
            "{} {}   {:<10} {:<22} {}\n",
            addr(m.base),
            addr(end),
            m.short,
            label,
            file.as_deref().unwrap_or("")
        ));
        list.push(json!({
            "name": m.short,
            "image": m.name,
            "path": m.path,
            "base": m.base,
            "end": end,
            "size": m.size,
            "timestamp": m.timestamp,
            "symbols": status,
            "symbol_file": file,
        }));
    }
    let text = text
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    Ok(Output {
        text,
        json: json!({ "modules": list }),
    })
}

/// `*` and `?` wildcards, as `lm m` takes them.
fn glob(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8], budget: &mut u32) -> bool {
        *budget = budget.saturating_sub(1);
        if *budget == 0 {
            return false;
        }
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], t, budget) || (!t.is_empty() && go(p, &t[1..], budget)),
            (Some(b'?'), Some(_)) => go(&p[1..], &t[1..], budget),
            (Some(a), Some(b)) if a == b => go(&p[1..], &t[1..], budget),
            _ => false,
        }
    }
    let mut budget = 100_000;
    go(pattern.as_bytes(), text.as_bytes(), &mut budget)
}

// ---- display memory ----

/// Splits `ADDR [L count]` / `ADDR Lcount` / `ADDR ADDR2` into (address, count of units).
fn range(e: &mut Engine, args: &str, unit: u64, default: u64) -> Result<(u64, u64), CmdError> {
    if args.is_empty() {
        return Err(CmdError::Usage("an address is needed".into()));
    }
    // The length is the last token starting with L/l (`L4`, `L 4`, `L?1000`).
    let lower = args.to_ascii_lowercase();
    let (start_text, count) = match find_length(&lower) {
        Some(i) => {
            let spec = args[i + 1..].trim().trim_start_matches('?');
            let n = e.eval(spec)?;
            (&args[..i], n)
        }
        None => {
            // `start end`: a second expression after whitespace.
            let parts: Vec<&str> = args.split_whitespace().collect();
            if parts.len() == 2 {
                let a = e.eval(parts[0])?;
                let b = e.eval(parts[1])?;
                if b < a {
                    return Err(CmdError::Usage("the end is before the start".into()));
                }
                return Ok((a, ((b - a) / unit + 1).min(MAX_DISPLAY / unit)));
            }
            (args, default)
        }
    };
    let start = e.eval(start_text.trim())?;
    if count == 0 || count.saturating_mul(unit) > MAX_DISPLAY {
        return Err(CmdError::Usage(format!(
            "a length of {count} is out of range (at most {:#x} bytes)",
            MAX_DISPLAY
        )));
    }
    Ok((start, count))
}

/// Where an `L` length begins: an `l` that starts a token.
fn find_length(lower: &str) -> Option<usize> {
    let b = lower.as_bytes();
    (0..b.len())
        .rev()
        .find(|&i| b[i] == b'l' && (i == 0 || b[i - 1].is_ascii_whitespace()) && i > 0)
}

pub(crate) fn display(e: &mut Engine, verb: &str, args: &str) -> Result<Output, CmdError> {
    let (unit, per_line, default) = match verb {
        "db" => (1u64, 16usize, 128u64),
        "dw" => (2, 8, 64),
        "dd" => (4, 4, 32),
        "dps" | "dqs" => (8, 1, 16),
        _ => (8, 2, 16),
    };
    let (start, count) = range(e, args, unit, default)?;
    let len = (count * unit) as usize;
    // Read page by page so one unreadable page shows as ?? and the rest still shows.
    let mut bytes: Vec<Option<u8>> = Vec::with_capacity(len);
    let mut at = start;
    while bytes.len() < len {
        let n = ((len - bytes.len()) as u64).min(0x1000 - (at & 0xfff)) as usize;
        match e.kernel.mem.kread(at, n) {
            Ok(b) => bytes.extend(b.into_iter().map(Some)),
            Err(_) => bytes.extend(std::iter::repeat_n(None, n)),
        }
        at = at.wrapping_add(n as u64);
    }
    let value = |i: usize| -> Option<u64> {
        let mut v = 0u64;
        for j in (0..unit as usize).rev() {
            v = (v << 8) | u64::from(bytes[i * unit as usize + j]?);
        }
        Some(v)
    };
    let mut text = String::new();
    let mut values = Vec::new();
    let mut symbols = Vec::new();
    for line in 0..(count as usize).div_ceil(per_line) {
        let first = line * per_line;
        let last = (first + per_line).min(count as usize);
        text.push_str(&addr(start + first as u64 * unit));
        text.push_str("  ");
        match unit {
            1 => {
                let mut ascii = String::new();
                for col in 0..per_line {
                    text.push_str(match col {
                        0 => "",
                        8 => "-",
                        _ => " ",
                    });
                    match bytes.get(first + col).filter(|_| first + col < last) {
                        Some(Some(b)) => {
                            text.push_str(&format!("{b:02x}"));
                            ascii.push(if (0x20..0x7f).contains(b) {
                                *b as char
                            } else {
                                '.'
                            });
                        }
                        Some(None) => {
                            text.push_str("??");
                            ascii.push('?');
                        }
                        None => text.push_str("  "),
                    }
                }
                text.push_str("  ");
                text.push_str(&ascii);
            }
            _ => {
                let cells: Vec<String> = (first..last)
                    .map(|i| match (value(i), unit) {
                        (Some(v), 8) => addr(v),
                        (Some(v), 4) => format!("{v:08x}"),
                        (Some(v), _) => format!("{v:04x}"),
                        (None, 8) => "????????`????????".into(),
                        (None, 4) => "????????".into(),
                        (None, _) => "????".into(),
                    })
                    .collect();
                text.push_str(&cells.join(" "));
                if per_line == 1
                    && let Some(v) = value(first)
                {
                    let s = e.kernel.symbol_parts(v).map(|_| e.kernel.symbolize(v));
                    if let Some(s) = &s {
                        text.push(' ');
                        text.push_str(s);
                    }
                    symbols.push(s);
                } else if per_line == 1 {
                    symbols.push(None);
                }
            }
        }
        text.push('\n');
        for i in first..last {
            values.push(opt_addr(value(i)));
        }
    }
    let mut j = json!({ "address": start, "unit_bytes": unit, "values": values });
    if per_line == 1 && unit == 8 {
        j["symbols"] = json!(symbols);
    }
    Ok(Output { text, json: j })
}

// ---- dt ----

/// A type's name as shown: unnamed types carry a unique suffix in the table.
fn shown_name(n: &str) -> &str {
    n.split('#').next().unwrap_or(n)
}

/// WinDbg's name for a type.
fn type_label(t: &Ty) -> String {
    match t {
        Ty::Base { name, size, signed } => base_label(name, *size, *signed).to_string(),
        Ty::Pointer(inner) => format!("Ptr64 {}", type_label(inner)),
        Ty::Udt(n) | Ty::Enum(n) => shown_name(n).to_string(),
        Ty::Array { count, elem } => format!("[{count}] {}", type_label(elem)),
        Ty::Bitfield { pos, len, .. } => {
            format!("Pos {pos}, {len} Bit{}", if *len == 1 { "" } else { "s" })
        }
        Ty::Function => "void".into(),
        Ty::Void => "Void".into(),
    }
}

fn base_label(name: &str, size: u64, signed: bool) -> &'static str {
    match name {
        "char" => "Char",
        "unsigned char" => "UChar",
        "wchar" | "wchar_t" => "Wchar",
        "float" => "Float",
        "double" => "Float",
        "void" => "Void",
        "bool" => "Bool",
        _ => match (size, signed) {
            (1, true) => "Char",
            (1, false) => "UChar",
            (2, true) => "Int2B",
            (2, false) => "Uint2B",
            (4, true) => "Int4B",
            (4, false) => "Uint4B",
            (8, true) => "Int8B",
            (8, false) => "Uint8B",
            _ => "Void",
        },
    }
}

fn le(bytes: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = bytes.len().min(8);
    a[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(a)
}

/// A field's value as dt shows it, and as JSON.
fn field_value(table: &TypeTable, t: &Ty, bytes: Option<&[u8]>) -> (String, Value) {
    let Some(b) = bytes else {
        return ("????".into(), Value::Null);
    };
    match t {
        Ty::Base { name, size, signed } => {
            let v = le(&b[..(*size as usize).min(b.len())]);
            match base_label(name, *size, *signed) {
                "Char" | "UChar" => {
                    let c = v as u8;
                    let shown = if (0x20..0x7f).contains(&c) {
                        (c as char).to_string()
                    } else {
                        String::new()
                    };
                    (format!("{v:#x} '{shown}'"), json!(v))
                }
                _ if *signed => {
                    let shift = 64 - 8 * (*size).clamp(1, 8);
                    let s = ((v << shift) as i64) >> shift;
                    (format!("0n{s}"), json!(s))
                }
                _ => (format!("{v:#x}"), json!(v)),
            }
        }
        Ty::Pointer(inner) => {
            let v = le(&b[..8.min(b.len())]);
            (format!("0x{} {}", addr(v), type_label(inner)), json!(v))
        }
        Ty::Enum(n) => {
            let size = table.enumeration(n).map_or(4, |e| e.size).clamp(1, 8) as usize;
            let v = le(&b[..size.min(b.len())]);
            let shift = 64 - 8 * size as u32;
            let s = ((v << shift) as i64) >> shift;
            match table.enum_name(n, s) {
                Some(name) => (format!("0n{s} ( {name} )"), json!(s)),
                None => (format!("0n{s}"), json!(s)),
            }
        }
        Ty::Bitfield { pos, len, base } => {
            let size = table.ty_size(base).unwrap_or(4).clamp(1, 8) as usize;
            let raw = le(&b[..size.min(b.len())]) >> pos;
            let v = if *len >= 64 {
                raw
            } else {
                raw & ((1u64 << len) - 1)
            };
            let bits: String = (0..*len)
                .rev()
                .map(|i| if v >> i & 1 == 1 { '1' } else { '0' })
                .collect();
            (format!("0y{bits}"), json!(v))
        }
        Ty::Array { count, elem } => {
            let label = format!("[{count}] {}", type_label(elem));
            if matches!(elem.as_ref(), Ty::Base { size: 1, .. }) {
                let n = (*count as usize).min(b.len());
                let end = b[..n].iter().position(|&c| c == 0).unwrap_or(n);
                let s = String::from_utf8_lossy(&b[..end]).into_owned();
                (format!("[{count}]  \"{s}\""), json!(s))
            } else {
                (label, Value::Null)
            }
        }
        other => (type_label(other), Value::Null),
    }
}

pub(crate) fn dt(e: &mut Engine, args: &str) -> Result<Output, CmdError> {
    let mut parts = args.split_whitespace();
    let Some(ty_arg) = parts.next() else {
        return Err(CmdError::Usage("dt TYPE [ADDRESS] [FIELD]".into()));
    };
    let (module, ty) = match ty_arg.split_once('!') {
        Some((m, t)) => (m.to_string(), t.to_string()),
        None => ("nt".to_string(), ty_arg.to_string()),
    };
    let table = if module.eq_ignore_ascii_case("nt") {
        e.kernel.nt()?
    } else {
        let mods = e.kernel.modules()?.to_vec();
        let i = mods
            .iter()
            .position(|m| m.short.eq_ignore_ascii_case(&module))
            .ok_or_else(|| CmdError::Usage(format!("no module {module}")))?;
        match e.kernel.module_symbols(i).as_deref() {
            Some(ModuleSymbols::Table { table, .. }) => table.clone(),
            _ => return Err(CmdError::Usage(format!("no type information for {module}"))),
        }
    };
    let ty = if table.has_type(&ty) {
        ty
    } else if table.has_type(&format!("_{ty}")) {
        format!("_{ty}")
    } else {
        return Err(CmdError::Usage(format!("Symbol {module}!{ty} not found.")));
    };
    let rest: Vec<&str> = parts.collect();
    // The address is the first argument that evaluates; a field name may follow.
    let (address, field) = match rest.as_slice() {
        [] => (None, None),
        [a] => match e.eval(a) {
            Ok(v) => (Some(v), None),
            Err(_) if table.has_field(&ty, a) => (None, Some(a.to_string())),
            Err(err) => return Err(err),
        },
        [a, f, ..] => (Some(e.eval(a)?), Some(f.to_string())),
    };
    let udt = table.udt(&ty)?.clone();
    let size = udt.size as usize;
    let bytes = match address {
        Some(a) => Some(
            e.kernel
                .mem
                .kread(a, size.min(kdnet_model::mem::MAX_READ))
                .map_err(CmdError::from)?,
        ),
        None => None,
    };
    let mut text = format!("{module}!{ty}\n");
    let mut fields = Vec::new();
    // One nested field path (`Tcb.State`), or the top-level fields.
    let shown: Vec<(String, u64, Ty)> = match &field {
        Some(path) if path.contains('.') || path.contains('[') => {
            let f = table.field(&ty, path)?;
            vec![(path.clone(), f.offset, f.ty)]
        }
        Some(name) => {
            // An exact field name, or a pattern with `*`/`?` (`dt _EPROCESS Image*`).
            let v: Vec<_> = udt
                .fields
                .iter()
                .filter(|f| {
                    if name.contains(['*', '?']) {
                        glob(name, &f.name)
                    } else {
                        f.name == *name
                    }
                })
                .map(|f| (f.name.clone(), f.offset, f.ty.clone()))
                .collect();
            if v.is_empty() {
                return Err(CmdError::Usage(format!(
                    "{module}!{ty} has no field {name}"
                )));
            }
            v
        }
        None => udt
            .fields
            .iter()
            .map(|f| (f.name.clone(), f.offset, f.ty.clone()))
            .collect(),
    };
    let width = shown.iter().map(|f| f.0.len()).max().unwrap_or(0);
    for (name, off, fty) in &shown {
        let (shown_value, jv) = match &bytes {
            Some(b) => {
                let size = table.ty_size(fty).unwrap_or(8).max(1) as usize;
                let slice = b.get(*off as usize..(*off as usize + size).min(b.len()));
                match fty {
                    Ty::Udt(n) => (shown_name(n).to_string(), Value::Null),
                    _ => field_value(&table, fty, slice),
                }
            }
            None => (type_label(fty), Value::Null),
        };
        text.push_str(&format!(
            "   +{:#05x} {:<width$} : {}\n",
            off, name, shown_value
        ));
        fields.push(json!({
            "name": name,
            "offset": off,
            "type": type_label(fty),
            "value": jv,
        }));
    }
    Ok(Output {
        text,
        json: json!({
            "type": format!("{module}!{ty}"),
            "size": udt.size,
            "address": opt_addr(address),
            "fields": fields,
        }),
    })
}

// ---- stacks ----

pub(crate) fn stack(e: &mut Engine, verb: &str, args: &str) -> Result<Output, CmdError> {
    let max = if args.is_empty() {
        256
    } else {
        e.eval(args)?.clamp(1, 256) as usize
    };
    let n = e.processor;
    let ctx = e.context(n)?;
    // The stack bounds of the current thread, when the model can read it.
    let bounds = e
        .kernel
        .processors()
        .ok()
        .and_then(|cpus| cpus.into_iter().find(|c| c.number == n))
        .and_then(|c| e.kernel.thread(c.current).ok())
        .map(|t| (t.stack_limit, t.stack_base))
        .filter(|(lo, hi)| lo < hi);
    let s = e.kernel.unwind(Regs::from_context(&ctx), bounds, true);
    let with_args = verb == "kb" || verb == "kp";
    let mut text = if with_args {
        String::from(
            " # RetAddr               : Args to Child                                                           : Call Site\n",
        )
    } else {
        String::from(" # Child-SP          RetAddr               Call Site\n")
    };
    let mut frames = Vec::new();
    for f in s.frames.iter().take(max) {
        if with_args {
            text.push_str(&format!(
                "{:02x} {}     : {} {} {} {} : {}\n",
                f.number,
                addr(f.return_address),
                addr(f.args[0]),
                addr(f.args[1]),
                addr(f.args[2]),
                addr(f.args[3]),
                f.call_site
            ));
        } else {
            text.push_str(&format!(
                "{:02x} {} {}     {}\n",
                f.number,
                addr(f.child_sp),
                addr(f.return_address),
                f.call_site
            ));
        }
        frames.push(json!({
            "number": f.number,
            "child_sp": f.child_sp,
            "return_address": f.return_address,
            "ip": f.ip,
            "call_site": f.call_site,
            "module": f.module,
            "args": f.args,
        }));
    }
    if let Some(note) = &s.note {
        text.push_str(&format!("({note})\n"));
    }
    if !s.complete {
        e.kernel.note_incomplete(format!(
            "the stack walk stopped early: {}",
            s.note.as_deref().unwrap_or("the walk ended")
        ));
    }
    Ok(Output {
        text,
        json: json!({ "processor": n, "frames": frames, "note": s.note }),
    })
}

// ---- ln ----

pub(crate) fn ln(e: &mut Engine, args: &str) -> Result<Output, CmdError> {
    let a = e.eval(args)?;
    // No module list, no answer: "no symbols" would be a guess.
    e.kernel.modules()?;
    let Some(i) = e.kernel.module_index(a) else {
        return Ok(Output {
            text: format!("No symbols at {}\n", addr(a)),
            json: json!({ "address": a, "symbol": Value::Null }),
        });
    };
    let m = e.kernel.modules()?[i].clone();
    let rva = a - m.base;
    let syms = e.kernel.module_symbols(i);
    let (near, next) = match syms.as_deref() {
        Some(ModuleSymbols::Table { table, .. }) => (
            table.nearest(rva).map(|(n, o)| (n.to_string(), rva - o)),
            table.next_symbol(rva + 1).map(|(n, r)| (n.to_string(), r)),
        ),
        Some(ModuleSymbols::Exports(ex)) => {
            let j = ex.partition_point(|(_, r)| u64::from(*r) <= rva);
            (
                j.checked_sub(1)
                    .map(|j| (ex[j].0.clone(), u64::from(ex[j].1))),
                ex.get(j).map(|(n, r)| (n.clone(), u64::from(*r))),
            )
        }
        _ => (None, None),
    };
    let Some((name, start)) = near else {
        return Ok(Output {
            text: format!("({})   {}+{:#x}\n", addr(m.base), m.short, rva),
            json: json!({ "address": a, "module": m.short, "symbol": Value::Null, "offset": rva }),
        });
    };
    let off = rva - start;
    let here = if off == 0 {
        format!("{}!{}", m.short, name)
    } else {
        format!("{}!{}+{:#x}", m.short, name, off)
    };
    let mut text = format!("({})   {}", addr(m.base + start), here);
    if let Some((n, r)) = &next {
        text.push_str(&format!("   |  ({})   {}!{}", addr(m.base + r), m.short, n));
    }
    text.push('\n');
    if off == 0 {
        text.push_str(&format!("Exact matches:\n    {}!{}\n", m.short, name));
    }
    Ok(Output {
        text,
        json: json!({
            "address": a,
            "module": m.short,
            "symbol": name,
            "symbol_address": m.base + start,
            "offset": off,
            "next": next.map(|(n, r)| json!({ "symbol": n, "address": m.base + r })),
        }),
    })
}

// ---- r ----

fn seg(c: &Context, off: usize) -> u16 {
    let b = c.as_bytes();
    u16::from_le_bytes([b[off], b[off + 1]])
}

pub(crate) fn registers(e: &mut Engine, args: &str) -> Result<Output, CmdError> {
    let c = e.context(e.processor)?;
    if !args.is_empty() {
        let mut text = String::new();
        let mut j = serde_json::Map::new();
        for name in args.split([',', ' ']).filter(|s| !s.is_empty()) {
            let name = name.trim_start_matches('@');
            let r = Reg::from_name(name)
                .ok_or_else(|| CmdError::Usage(format!("bad register '{name}'")))?;
            text.push_str(&format!("{}={:016x}\n", r.name(), c.reg(r)));
            j.insert(r.name().into(), json!(c.reg(r)));
        }
        return Ok(Output {
            text,
            json: Value::Object(j),
        });
    }
    let g = |r: Reg| format!("{}={:016x}", r.name(), c.reg(r));
    let p = |r: Reg| format!("{:>3}={:016x}", r.name(), c.reg(r));
    let efl = c.eflags();
    let flag = |bit: u32, on: &'static str, off: &'static str| {
        if efl >> bit & 1 == 1 { on } else { off }
    };
    let mut text = String::new();
    text.push_str(&format!(
        "{} {} {}\n",
        g(Reg::Rax),
        g(Reg::Rbx),
        g(Reg::Rcx)
    ));
    text.push_str(&format!(
        "{} {} {}\n",
        g(Reg::Rdx),
        g(Reg::Rsi),
        g(Reg::Rdi)
    ));
    text.push_str(&format!(
        "{} {} {}\n",
        g(Reg::Rip),
        g(Reg::Rsp),
        g(Reg::Rbp)
    ));
    text.push_str(&format!("{} {} {}\n", p(Reg::R8), p(Reg::R9), p(Reg::R10)));
    text.push_str(&format!(
        "{} {} {}\n",
        p(Reg::R11),
        p(Reg::R12),
        p(Reg::R13)
    ));
    text.push_str(&format!("{} {}\n", p(Reg::R14), p(Reg::R15)));
    text.push_str(&format!(
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
    text.push_str(&format!(
        "cs={:04x}  ss={:04x}  ds={:04x}  es={:04x}  fs={:04x}  gs={:04x}             efl={:08x}\n",
        seg(&c, 0x38),
        seg(&c, 0x42),
        seg(&c, 0x3A),
        seg(&c, 0x3C),
        seg(&c, 0x3E),
        seg(&c, 0x40),
        efl
    ));
    let rip = c.reg(Reg::Rip);
    text.push_str(&format!("{}:\n", e.kernel.symbolize(rip)));
    let mut j = serde_json::Map::new();
    for r in Reg::ALL {
        j.insert(r.name().into(), json!(c.reg(r)));
    }
    j.insert("efl".into(), json!(efl));
    j.insert("processor".into(), json!(e.processor));
    Ok(Output {
        text,
        json: Value::Object(j),
    })
}

// ---- vertarget ----

pub(crate) fn vertarget(e: &mut Engine) -> Result<Output, CmdError> {
    let info = e.kernel.mem.info().clone();
    let build = e.kernel.build;
    let base = e.kernel.base;
    let modules = info
        .ps_loaded_module_list
        .or_else(|| e.kernel.sym("PsLoadedModuleList").ok());
    let product = match build {
        0..=7601 => "Windows 7",
        7602..=9600 => "Windows 8.1",
        _ => "Windows 10",
    };
    let mut text = format!(
        "{product} Kernel Version {build} MP ({} procs) Free x64\n",
        info.processors
    );
    text.push_str(&format!(
        "Kernel base = 0x{} PsLoadedModuleList = 0x{}\n",
        addr(base),
        modules.map_or("?".into(), addr)
    ));
    text.push_str(&format!("Target: {}\n", info.description));
    text.push_str(&format!("Symbols: {}\n", e.kernel.nt_source));
    Ok(Output {
        text,
        json: json!({
            "build": build,
            "kernel_base": base,
            "ps_loaded_module_list": opt_addr(modules),
            "processors": info.processors,
            "live": info.live,
            "target": info.description,
            "symbols": e.kernel.nt_source,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(glob("nt*", "ntoskrnl"));
        assert!(glob("*ppm", "amdppm"));
        assert!(glob("a?dppm", "amdppm"));
        assert!(!glob("tcp", "tcpip"));
        assert!(!glob(&"*a".repeat(40), &"a".repeat(39)));
    }

    #[test]
    fn type_labels() {
        let u4 = Ty::Base {
            name: "unsigned long".into(),
            size: 4,
            signed: false,
        };
        assert_eq!(type_label(&u4), "Uint4B");
        assert_eq!(
            type_label(&Ty::Pointer(Box::new(Ty::Udt("_KTHREAD".into())))),
            "Ptr64 _KTHREAD"
        );
        assert_eq!(
            type_label(&Ty::Array {
                count: 4,
                elem: Box::new(Ty::Udt("_KWAIT_BLOCK".into()))
            }),
            "[4] _KWAIT_BLOCK"
        );
        let bf = Ty::Bitfield {
            pos: 4,
            len: 1,
            base: Box::new(u4.clone()),
        };
        assert_eq!(type_label(&bf), "Pos 4, 1 Bit");
        let t = TypeTable::new(None);
        assert_eq!(field_value(&t, &bf, Some(&[0x10, 0, 0, 0])).0, "0y1");
        let i4 = Ty::Base {
            name: "long".into(),
            size: 4,
            signed: true,
        };
        assert_eq!(field_value(&t, &i4, Some(&[0xff; 4])).0, "0n-1");
        assert_eq!(field_value(&t, &u4, Some(&[0x2a, 0, 0, 0])).0, "0x2a");
        assert_eq!(field_value(&t, &u4, None).0, "????");
    }
}
