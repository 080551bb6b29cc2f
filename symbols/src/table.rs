//! One model of a module's types and symbols, whatever the source (ISF table, PDB), and the
//! layout queries everything else uses: sizes, field offsets and bit positions along nested
//! paths, enum names and values, symbol addresses and the nearest symbol to an address.
//!
//! A table can record the lookups made through it ([`TypeTable::record`]): which types, field
//! paths, enums and symbols were asked for. It is off unless asked for; the compact built-in
//! table is cut to what the commands are recorded asking.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use crate::SymError;

/// The PDB identity (RSDS record) of a module: GUID, age and PDB file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PdbId {
    /// The GUID as 32 upper-case hex digits, in the symbol-server order (Data1, Data2, Data3 as
    /// numbers, then the 8 bytes of Data4).
    pub guid: String,
    /// The age.
    pub age: u32,
    /// The PDB file name, e.g. `ntkrnlmp.pdb`.
    pub name: String,
}

impl PdbId {
    /// The symbol-server key: GUID followed by the age in hex without padding.
    pub fn key(&self) -> String {
        format!("{}{:X}", self.guid, self.age)
    }

    /// The GUID from the 16 raw bytes of an RSDS record (Data1..3 little-endian).
    pub fn guid_from_bytes(b: &[u8; 16]) -> String {
        let d1 = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let d2 = u16::from_le_bytes([b[4], b[5]]);
        let d3 = u16::from_le_bytes([b[6], b[7]]);
        let mut s = format!("{d1:08X}{d2:04X}{d3:04X}");
        for x in &b[8..16] {
            s.push_str(&format!("{x:02X}"));
        }
        s
    }

    /// The 16 raw bytes for a GUID string (the inverse of [`PdbId::guid_from_bytes`]).
    pub fn guid_to_bytes(guid: &str) -> Option<[u8; 16]> {
        if guid.len() != 32 || !guid.is_ascii() {
            return None;
        }
        let hex = |r: std::ops::Range<usize>| u64::from_str_radix(&guid[r], 16).ok();
        let d1 = hex(0..8)? as u32;
        let d2 = hex(8..12)? as u16;
        let d3 = hex(12..16)? as u16;
        let mut out = [0u8; 16];
        out[..4].copy_from_slice(&d1.to_le_bytes());
        out[4..6].copy_from_slice(&d2.to_le_bytes());
        out[6..8].copy_from_slice(&d3.to_le_bytes());
        for i in 0..8 {
            out[8 + i] = hex(16 + 2 * i..18 + 2 * i)? as u8;
        }
        Some(out)
    }
}

/// A type as a field or element refers to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ty {
    /// A base type (`unsigned long`, `pointer`, …).
    Base {
        /// Its name.
        name: String,
        /// Bytes.
        size: u64,
        /// Signed integer.
        signed: bool,
    },
    /// A pointer (8 bytes on x64) to something.
    Pointer(Box<Ty>),
    /// A struct, class or union by name.
    Udt(String),
    /// An enum by name.
    Enum(String),
    /// A fixed array.
    Array {
        /// Elements.
        count: u64,
        /// Element type.
        elem: Box<Ty>,
    },
    /// A bitfield of an integer.
    Bitfield {
        /// First bit.
        pos: u32,
        /// Number of bits.
        len: u32,
        /// The integer holding it.
        base: Box<Ty>,
    },
    /// A function (only behind pointers).
    Function,
    /// `void`.
    Void,
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ty::Base { name, .. } => write!(f, "{name}"),
            Ty::Pointer(t) => write!(f, "Ptr64 {t}"),
            Ty::Udt(n) | Ty::Enum(n) => write!(f, "{n}"),
            Ty::Array { count, elem } => write!(f, "[{count}] {elem}"),
            Ty::Bitfield { pos, len, .. } => write!(
                f,
                "Pos {pos}, {len} Bit{}",
                if *len == 1 { "" } else { "s" }
            ),
            Ty::Function => write!(f, "function"),
            Ty::Void => write!(f, "Void"),
        }
    }
}

/// Struct, class or union.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdtKind {
    /// `struct` (or `class`).
    Struct,
    /// `union`.
    Union,
}

/// A field of a struct or union.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Name.
    pub name: String,
    /// Byte offset in the containing type.
    pub offset: u64,
    /// Type.
    pub ty: Ty,
}

/// A struct, class or union.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Udt {
    /// Name, e.g. `_KTHREAD`.
    pub name: String,
    /// Struct or union.
    pub kind: UdtKind,
    /// Bytes.
    pub size: u64,
    /// Fields in offset order (then by bit position).
    pub fields: Vec<Field>,
}

impl Udt {
    /// A field by name.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// An enumeration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enum {
    /// Name.
    pub name: String,
    /// Bytes of the underlying integer.
    pub size: u64,
    /// Constants (name, value), sorted by value then name.
    pub constants: Vec<(String, i64)>,
}

/// Where a field path lands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRef {
    /// Byte offset from the start of the outer type.
    pub offset: u64,
    /// The field's type (for a bitfield, the bitfield).
    pub ty: Ty,
}

impl FieldRef {
    /// For a bitfield, (first bit, number of bits).
    pub fn bits(&self) -> Option<(u32, u32)> {
        match &self.ty {
            Ty::Bitfield { pos, len, .. } => Some((*pos, *len)),
            _ => None,
        }
    }
}

/// Borrowed contents of a table.
#[derive(Debug, Clone, Copy)]
pub struct TableParts<'a> {
    /// Structs and unions.
    pub udts: &'a HashMap<String, Udt>,
    /// Enums.
    pub enums: &'a HashMap<String, Enum>,
    /// Base types: size and signedness.
    pub base: &'a HashMap<String, (u64, bool)>,
    /// Symbols and their RVAs.
    pub symbols: &'a HashMap<String, u64>,
}

/// What was asked of a table while it recorded (see [`TypeTable::record`]). Names are as the
/// table spells them when it has them (`KTHREAD` asked, `_KTHREAD` recorded), as asked when it
/// does not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lookups {
    /// Structs and unions asked for by name (their size, their fields, whether they exist).
    pub types: BTreeSet<String>,
    /// Field paths asked for: (type, path), every array index written `[0]`.
    pub fields: BTreeSet<(String, String)>,
    /// Enums asked for.
    pub enums: BTreeSet<String>,
    /// Symbols asked for by name.
    pub symbols: BTreeSet<String>,
}

impl Lookups {
    /// Adds what `other` holds.
    pub fn merge(&mut self, other: &Lookups) {
        self.types.extend(other.types.iter().cloned());
        self.fields.extend(other.fields.iter().cloned());
        self.enums.extend(other.enums.iter().cloned());
        self.symbols.extend(other.symbols.iter().cloned());
    }

    /// One line per lookup (`type NAME`, `field TYPE PATH`, `enum NAME`, `symbol NAME`), in
    /// that order and sorted: the form [`Lookups::parse`] reads.
    pub fn to_lines(&self) -> String {
        let mut out = String::new();
        for t in &self.types {
            out.push_str(&format!("type {t}\n"));
        }
        for (t, p) in &self.fields {
            out.push_str(&format!("field {t} {p}\n"));
        }
        for e in &self.enums {
            out.push_str(&format!("enum {e}\n"));
        }
        for s in &self.symbols {
            out.push_str(&format!("symbol {s}\n"));
        }
        out
    }

    /// Reads [`Lookups::to_lines`]' form; blank lines and `#` comments are skipped.
    pub fn parse(text: &str) -> Result<Lookups, String> {
        let mut l = Lookups::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || format!("line {}: {line:?} is not a lookup", n + 1);
            let (kind, rest) = line.split_once(' ').ok_or_else(bad)?;
            match kind {
                "type" => l.types.insert(rest.to_string()),
                "field" => {
                    let (t, p) = rest.split_once(' ').ok_or_else(bad)?;
                    l.fields.insert((t.to_string(), p.to_string()))
                }
                "enum" => l.enums.insert(rest.to_string()),
                "symbol" => l.symbols.insert(rest.to_string()),
                _ => return Err(bad()),
            };
        }
        Ok(l)
    }
}

/// A recording of a table's lookups, shared by the table and its clones.
#[derive(Debug, Clone, Default)]
pub struct Recording(Arc<Mutex<Lookups>>);

impl Recording {
    /// What has been asked so far.
    pub fn lookups(&self) -> Lookups {
        self.0.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// Types and symbols of one module (one PDB).
#[derive(Debug, Clone, Default)]
pub struct TypeTable {
    /// The PDB this describes, when known.
    pub id: Option<PdbId>,
    udts: HashMap<String, Udt>,
    enums: HashMap<String, Enum>,
    base: HashMap<String, (u64, bool)>,
    symbols: HashMap<String, u64>,
    by_rva: Vec<(u64, String)>,
    recording: Option<Recording>,
}

/// Largest array index accepted in a field path.
const MAX_INDEX: u64 = 1 << 24;

impl TypeTable {
    /// An empty table.
    pub fn new(id: Option<PdbId>) -> TypeTable {
        TypeTable {
            id,
            ..TypeTable::default()
        }
    }

    /// Adds or replaces a struct/union.
    /// Fields are put in offset order; fields at one offset keep the order given (a PDB gives
    /// declaration order, which is what `dt` shows).
    pub fn insert_udt(&mut self, mut udt: Udt) {
        udt.fields.sort_by_key(|f| f.offset);
        self.udts.insert(udt.name.clone(), udt);
    }

    /// Adds or replaces an enum.
    pub fn insert_enum(&mut self, mut e: Enum) {
        e.constants.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        self.enums.insert(e.name.clone(), e);
    }

    /// Adds a base type.
    pub fn insert_base(&mut self, name: &str, size: u64, signed: bool) {
        self.base.insert(name.to_string(), (size, signed));
    }

    /// Adds a symbol at `rva` (relative to the module base).
    pub fn insert_symbol(&mut self, name: &str, rva: u64) {
        self.symbols.insert(name.to_string(), rva);
        self.by_rva.clear();
    }

    /// Sorts the address index (call after inserting symbols).
    pub fn finish(&mut self) {
        let mut v: Vec<(u64, String)> = self
            .symbols
            .iter()
            .filter(|(n, _)| !n.starts_with("$$"))
            .map(|(n, a)| (*a, n.clone()))
            .collect();
        v.sort();
        self.by_rva = v;
    }

    /// Number of types, enums and symbols.
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.udts.len(), self.enums.len(), self.symbols.len())
    }

    /// Starts recording the lookups made through this table and the clones made from now on;
    /// the recording returned reads them.
    pub fn record(&mut self) -> Recording {
        let r = Recording::default();
        self.recording = Some(r.clone());
        r
    }

    fn note(&self, f: impl FnOnce(&mut Lookups)) {
        if let Some(r) = &self.recording
            && let Ok(mut l) = r.0.lock()
        {
            f(&mut l);
        }
    }

    fn note_type(&self, name: &str) {
        if self.recording.is_some() {
            let name = self.find_udt(name).map_or(name, |u| u.name.as_str());
            self.note(|l| {
                l.types.insert(name.to_string());
            });
        }
    }

    fn note_enum(&self, name: &str) {
        if self.recording.is_some() {
            let name = self.find_enum(name).map_or(name, |e| e.name.as_str());
            self.note(|l| {
                l.enums.insert(name.to_string());
            });
        }
    }

    fn find_udt(&self, name: &str) -> Result<&Udt, SymError> {
        self.udts
            .get(name)
            .or_else(|| self.udts.get(&format!("_{name}")))
            .ok_or_else(|| SymError::NoType(name.to_string()))
    }

    fn find_enum(&self, name: &str) -> Result<&Enum, SymError> {
        self.enums
            .get(name)
            .or_else(|| self.enums.get(&format!("_{name}")))
            .ok_or_else(|| SymError::NoType(name.to_string()))
    }

    /// A struct or union by name; `KTHREAD` finds `_KTHREAD`.
    pub fn udt(&self, name: &str) -> Result<&Udt, SymError> {
        self.note_type(name);
        self.find_udt(name)
    }

    /// Whether the type exists.
    pub fn has_type(&self, name: &str) -> bool {
        self.udt(name).is_ok()
    }

    /// All struct/union names.
    pub fn type_names(&self) -> impl Iterator<Item = &str> {
        self.udts.keys().map(String::as_str)
    }

    /// All enum names.
    pub fn enum_names(&self) -> impl Iterator<Item = &str> {
        self.enums.keys().map(String::as_str)
    }

    /// An enum by name.
    pub fn enumeration(&self, name: &str) -> Result<&Enum, SymError> {
        self.note_enum(name);
        self.find_enum(name)
    }

    /// Size of a named type.
    pub fn size_of(&self, name: &str) -> Result<u64, SymError> {
        if let Ok(u) = self.find_udt(name) {
            self.note_type(name);
            return Ok(u.size);
        }
        if let Ok(e) = self.find_enum(name) {
            self.note_enum(name);
            return Ok(e.size);
        }
        match self.base.get(name) {
            Some(b) => Ok(b.0),
            None => {
                self.note_type(name);
                Err(SymError::NoType(name.to_string()))
            }
        }
    }

    /// Size of a type reference.
    pub fn ty_size(&self, ty: &Ty) -> Result<u64, SymError> {
        self.ty_size_as(ty, true)
    }

    fn ty_size_as(&self, ty: &Ty, noted: bool) -> Result<u64, SymError> {
        Ok(match ty {
            Ty::Base { size, .. } => *size,
            Ty::Pointer(_) => 8,
            Ty::Udt(n) => {
                if noted {
                    self.note_type(n);
                }
                self.find_udt(n)?.size
            }
            Ty::Enum(n) => {
                if noted {
                    self.note_enum(n);
                }
                self.find_enum(n).map_or(4, |e| e.size)
            }
            Ty::Array { count, elem } => count.saturating_mul(self.ty_size_as(elem, noted)?),
            Ty::Bitfield { base, .. } => self.ty_size_as(base, noted)?,
            Ty::Function | Ty::Void => 0,
        })
    }

    /// Resolves a field path such as `Tcb.WaitBlockList`, `WaitBlock[2].Object` or
    /// `ProcessorState.ContextFrame.Rip` within `ty`.
    pub fn field(&self, ty: &str, path: &str) -> Result<FieldRef, SymError> {
        if self.recording.is_some() {
            let t = self.find_udt(ty).map_or(ty, |u| u.name.as_str());
            let p = indices_as_zero(path);
            self.note(|l| {
                l.fields.insert((t.to_string(), p));
            });
        }
        let mut cur = Ty::Udt(self.find_udt(ty)?.name.clone());
        let mut offset = 0u64;
        let err = || SymError::NoField {
            ty: ty.to_string(),
            path: path.to_string(),
        };
        for part in path.split('.') {
            let (name, indices) = split_indices(part).ok_or_else(err)?;
            let udt = match &cur {
                Ty::Udt(n) => self.find_udt(n)?,
                _ => return Err(err()),
            };
            let f = udt.field(name).ok_or_else(|| {
                if udt.name == ty {
                    err()
                } else {
                    SymError::NoMember {
                        ty: ty.to_string(),
                        path: path.to_string(),
                        inner: udt.name.clone(),
                        member: name.to_string(),
                    }
                }
            })?;
            offset = offset.checked_add(f.offset).ok_or_else(err)?;
            cur = f.ty.clone();
            for idx in indices {
                let Ty::Array { count, elem } = cur else {
                    return Err(err());
                };
                if idx >= count.max(1) && count != 0 || idx > MAX_INDEX {
                    return Err(SymError::IndexOutOfRange {
                        path: path.to_string(),
                        index: idx,
                        count,
                    });
                }
                offset = idx
                    .checked_mul(self.ty_size_as(&elem, false)?)
                    .and_then(|d| offset.checked_add(d))
                    .ok_or_else(err)?;
                cur = *elem;
            }
        }
        Ok(FieldRef { offset, ty: cur })
    }

    /// The byte offset of a field path.
    pub fn offset(&self, ty: &str, path: &str) -> Result<u64, SymError> {
        self.field(ty, path).map(|f| f.offset)
    }

    /// Whether a field path exists.
    pub fn has_field(&self, ty: &str, path: &str) -> bool {
        self.field(ty, path).is_ok()
    }

    /// A symbol's RVA.
    pub fn symbol(&self, name: &str) -> Option<u64> {
        self.note(|l| {
            l.symbols.insert(name.to_string());
        });
        self.symbols.get(name).copied()
    }

    /// A symbol's RVA or an error naming it.
    pub fn require_symbol(&self, name: &str) -> Result<u64, SymError> {
        self.symbol(name)
            .ok_or_else(|| SymError::NoSymbol(name.to_string()))
    }

    /// All symbol names.
    pub fn symbol_names(&self) -> impl Iterator<Item = &str> {
        self.symbols.keys().map(String::as_str)
    }

    /// Every symbol and its RVA (a listing such as `x`: not recorded as looked up by name).
    pub fn all_symbols(&self) -> impl Iterator<Item = (&str, u64)> {
        self.symbols.iter().map(|(n, a)| (n.as_str(), *a))
    }

    /// The symbol at or below `rva` and the distance from it.
    pub fn nearest(&self, rva: u64) -> Option<(&str, u64)> {
        let i = self.by_rva.partition_point(|(a, _)| *a <= rva);
        let (a, n) = self.by_rva.get(i.checked_sub(1)?)?;
        Some((n.as_str(), rva - a))
    }

    /// The RVA of the next symbol after `rva`, if any (an upper bound for a function's end).
    pub fn next_symbol_after(&self, rva: u64) -> Option<u64> {
        self.next_symbol(rva).map(|(_, a)| a)
    }

    /// The next symbol after `rva` and its RVA.
    pub fn next_symbol(&self, rva: u64) -> Option<(&str, u64)> {
        let i = self.by_rva.partition_point(|(a, _)| *a <= rva);
        self.by_rva.get(i).map(|(a, n)| (n.as_str(), *a))
    }

    /// The value of an enum constant.
    pub fn enum_value(&self, enum_name: &str, constant: &str) -> Result<i64, SymError> {
        self.enumeration(enum_name)?
            .constants
            .iter()
            .find(|(n, _)| n == constant)
            .map(|(_, v)| *v)
            .ok_or_else(|| SymError::NoField {
                ty: enum_name.to_string(),
                path: constant.to_string(),
            })
    }

    /// The name of an enum value (the first constant with it).
    pub fn enum_name(&self, enum_name: &str, value: i64) -> Option<&str> {
        self.enumeration(enum_name)
            .ok()?
            .constants
            .iter()
            .find(|(_, v)| *v == value)
            .map(|(n, _)| n.as_str())
    }

    /// A copy holding only `types` (with every type on the paths in `fields`), the enums they
    /// or `enums` name, and `symbols`. Used to make the compact built-in tables.
    pub fn subset(
        &self,
        types: &[&str],
        fields: &[(&str, &str)],
        enums: &[&str],
        symbols: &[&str],
    ) -> Result<TypeTable, SymError> {
        let mut out = TypeTable::new(self.id.clone());
        out.base = self.base.clone();
        let mut want: Vec<String> = Vec::new();
        for t in types {
            want.push(self.find_udt(t)?.name.clone());
        }
        for (t, path) in fields {
            // Every struct along the path.
            let mut cur = self.find_udt(t)?.name.clone();
            want.push(cur.clone());
            for part in path.split('.') {
                let (name, _) = split_indices(part).ok_or_else(|| SymError::NoField {
                    ty: t.to_string(),
                    path: path.to_string(),
                })?;
                let f = self
                    .udt(&cur)?
                    .field(name)
                    .ok_or_else(|| SymError::NoField {
                        ty: t.to_string(),
                        path: path.to_string(),
                    })?;
                let mut ty = &f.ty;
                loop {
                    match ty {
                        Ty::Array { elem, .. } => ty = elem,
                        Ty::Bitfield { base, .. } => ty = base,
                        _ => break,
                    }
                }
                match ty {
                    Ty::Udt(n) => {
                        want.push(n.clone());
                        cur = n.clone();
                    }
                    _ => break,
                }
            }
        }
        want.sort();
        want.dedup();
        for n in &want {
            let u = self.find_udt(n)?.clone();
            for f in &u.fields {
                collect_enums(&f.ty, &mut |e| {
                    if let Ok(en) = self.find_enum(e) {
                        out.enums.insert(en.name.clone(), en.clone());
                    }
                });
            }
            out.udts.insert(u.name.clone(), u);
        }
        for e in enums {
            let en = self.find_enum(e)?.clone();
            out.enums.insert(en.name.clone(), en);
        }
        for s in symbols {
            out.symbols.insert(
                s.to_string(),
                self.symbols
                    .get(*s)
                    .copied()
                    .ok_or_else(|| SymError::NoSymbol(s.to_string()))?,
            );
        }
        out.finish();
        Ok(out)
    }

    /// Structs/unions, enums, base types and symbols (for serialisers).
    pub fn parts(&self) -> TableParts<'_> {
        TableParts {
            udts: &self.udts,
            enums: &self.enums,
            base: &self.base,
            symbols: &self.symbols,
        }
    }
}

fn collect_enums(ty: &Ty, f: &mut dyn FnMut(&str)) {
    match ty {
        Ty::Enum(n) => f(n),
        Ty::Pointer(t) | Ty::Array { elem: t, .. } | Ty::Bitfield { base: t, .. } => {
            collect_enums(t, f)
        }
        _ => {}
    }
}

/// A field path with every array index written `[0]`: `WaitBlock[2].Object` →
/// `WaitBlock[0].Object`.
fn indices_as_zero(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut inside = false;
    for c in path.chars() {
        match c {
            '[' => {
                inside = true;
                out.push_str("[0");
            }
            ']' => {
                inside = false;
                out.push(']');
            }
            _ if inside => {}
            _ => out.push(c),
        }
    }
    out
}

/// `Name[1][2]` → ("Name", [1, 2]).
fn split_indices(part: &str) -> Option<(&str, Vec<u64>)> {
    let Some(open) = part.find('[') else {
        return (!part.is_empty()).then_some((part, Vec::new()));
    };
    let name = &part[..open];
    let mut rest = &part[open..];
    let mut idx = Vec::new();
    while !rest.is_empty() {
        let close = rest.find(']')?;
        let inner = rest.get(1..close)?.trim();
        let v = if let Some(h) = inner.strip_prefix("0x") {
            u64::from_str_radix(h, 16).ok()?
        } else {
            inner.parse().ok()?
        };
        idx.push(v);
        rest = &rest[close + 1..];
        if !rest.is_empty() && !rest.starts_with('[') {
            return None;
        }
    }
    (!name.is_empty()).then_some((name, idx))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> TypeTable {
        let mut t = TypeTable::new(None);
        let ulong = Ty::Base {
            name: "unsigned long".into(),
            size: 4,
            signed: false,
        };
        t.insert_udt(Udt {
            name: "_INNER".into(),
            kind: UdtKind::Struct,
            size: 8,
            fields: vec![
                Field {
                    name: "A".into(),
                    offset: 0,
                    ty: ulong.clone(),
                },
                Field {
                    name: "Bits".into(),
                    offset: 4,
                    ty: Ty::Bitfield {
                        pos: 3,
                        len: 29,
                        base: Box::new(ulong.clone()),
                    },
                },
            ],
        });
        t.insert_udt(Udt {
            name: "_OUTER".into(),
            kind: UdtKind::Struct,
            size: 0x40,
            fields: vec![
                Field {
                    name: "Inner".into(),
                    offset: 0x10,
                    ty: Ty::Udt("_INNER".into()),
                },
                Field {
                    name: "Arr".into(),
                    offset: 0x18,
                    ty: Ty::Array {
                        count: 4,
                        elem: Box::new(Ty::Udt("_INNER".into())),
                    },
                },
            ],
        });
        t.insert_symbol("Alpha", 0x1000);
        t.insert_symbol("Beta", 0x1100);
        t.finish();
        t
    }

    #[test]
    fn nested_paths_arrays_and_bits() {
        let t = table();
        assert_eq!(t.offset("_OUTER", "Inner.A").unwrap(), 0x10);
        assert_eq!(t.offset("OUTER", "Arr[2].A").unwrap(), 0x18 + 16);
        let f = t.field("_OUTER", "Inner.Bits").unwrap();
        assert_eq!((f.offset, f.bits()), (0x14, Some((3, 29))));
        assert!(t.field("_OUTER", "Arr[4]").is_err());
        assert!(t.field("_OUTER", "Nope").is_err());
        assert!(t.field("_OUTER", "Inner.A.B").is_err());
        assert!(t.field("_OUTER", "Arr[x]").is_err());
        assert!(t.field("_NOPE", "A").is_err());
    }

    #[test]
    fn lookups_are_recorded_when_asked_only() {
        let mut t = table();
        assert_eq!(t.offset("_OUTER", "Arr[2].A").unwrap(), 0x18 + 16);
        let r = t.record();
        let c = t.clone();
        assert_eq!(c.offset("OUTER", "Arr[2].A").unwrap(), 0x18 + 16);
        assert!(c.field("_OUTER", "Nope").is_err());
        assert!(c.has_type("INNER"));
        assert!(!c.has_type("_MISSING"));
        assert_eq!(c.size_of("unsigned long").ok(), None);
        assert_eq!(c.symbol("Alpha"), Some(0x1000));
        assert!(c.require_symbol("Gamma").is_err());
        let l = r.lookups();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(l.types, s(&["_INNER", "_MISSING", "unsigned long"]));
        assert_eq!(
            l.fields,
            [("_OUTER", "Arr[0].A"), ("_OUTER", "Nope")]
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        );
        assert_eq!(l.symbols, s(&["Alpha", "Gamma"]));
        assert_eq!(Lookups::parse(&l.to_lines()).unwrap(), l);
        assert!(Lookups::parse("kind x").is_err());
    }

    #[test]
    fn nearest_symbol() {
        let t = table();
        assert_eq!(t.nearest(0x1005), Some(("Alpha", 5)));
        assert_eq!(t.nearest(0x1100), Some(("Beta", 0)));
        assert_eq!(t.nearest(0xfff), None);
        assert_eq!(t.next_symbol_after(0x1005), Some(0x1100));
    }

    #[test]
    fn guid_bytes_round_trip() {
        let g = "C2EADB24A615E9472CE47C8ADD31F130";
        let b = PdbId::guid_to_bytes(g).unwrap();
        assert_eq!(&b[..4], &0xC2EADB24u32.to_le_bytes());
        assert_eq!(PdbId::guid_from_bytes(&b), g);
        assert!(PdbId::guid_to_bytes("xyz").is_none());
    }
}
