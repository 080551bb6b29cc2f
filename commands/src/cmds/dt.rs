//! `dt [OPTIONS] [MODULE!]TYPE [ADDR] [FIELD…]`: a type's fields (offsets, types, bitfield
//! positions); with an address, their values. FIELD is a name, a pattern (`Image*`) or a nested
//! path (`Tcb.State`); a TYPE with `*` or `?` lists the types it matches.
//!
//! Options as WinDbg takes them: `-r[N]` expands embedded structures and the structures
//! pointers lead to, N levels deep (`-r` alone: 9); `-b` expands embedded structures and arrays
//! to any depth, and the pointers of the structure itself one level; `-a[N]` shows array
//! elements one per line (the first N); `-l FIELD` walks a list through FIELD from ADDR; `-c`
//! one line per structure; `-v` sizes and member counts; `-o` no offsets; `-i` no indent;
//! `-y NAME` fields starting with NAME; `-n NAME` NAME is a field even if it looks like a
//! number. Every walk has a bound, and a result cut at one says so.

use std::collections::HashSet;

use kdnet_symbols::{Ty, TypeTable, UdtKind};
use schemars::JsonSchema;
use serde::Serialize;

use super::common::{base_label, glob, shown_name, type_label};
use crate::args::{Args, Kind, Param, Syntax, split_token};
use crate::engine::{CmdError, Engine, addr};
use crate::registry::Render;
use kdnet_model::nt::ModuleSymbols;

/// `dt` takes its options and words in any order: the rest of the line, as written.
pub(crate) const SYNTAX: Syntax = Syntax::params(&[Param {
    name: "ARGS",
    kind: Kind::Rest,
    optional: false,
}]);

/// The usage line.
pub(crate) const USAGE: &str =
    "dt [-r[N]] [-b] [-a[N]] [-c] [-v] [-o] [-i] [-l FIELD] [MODULE!]TYPE [ADDR] [[-y|-n] FIELD…]";

/// Deepest `-r` and `-b` go.
const MAX_DEPTH: u32 = 9;
/// Most lines one `dt` shows.
const MAX_ROWS: usize = 20_000;
/// Most reads past the structure itself (pointer targets, strings) one `dt` makes.
const MAX_READS: usize = 512;
/// Most elements of one array shown.
const MAX_ELEMENTS: u64 = 4096;
/// Most records `-l` walks.
const MAX_RECORDS: usize = 4096;
/// Longest string a `_UNICODE_STRING` holds, in bytes.
const MAX_STRING: usize = 0xfffe;

/// What `dt` shows: a layout (with values, with an address), or the types a pattern matches.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(untagged)]
pub(crate) enum Dt {
    /// A type's layout, and with an address its values.
    Layout(Layout),
    /// The types a pattern matches.
    Types(Types),
}

/// The types whose names match a pattern (`dt nt!_KTH*`).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Types {
    /// The pattern, as `module!pattern`.
    pub pattern: String,
    /// The matching types, as `module!name`, sorted.
    pub types: Vec<String>,
}

/// A type's layout, and with an address its values.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Layout {
    /// The type, as `module!name`.
    #[serde(rename = "type")]
    pub ty: String,
    /// Its size in bytes.
    pub size: u64,
    /// Where the values were read (null: the layout only).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub address: Option<u64>,
    /// `-v`: `struct _KTHREAD, 233 elements, 0x430 bytes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The fields shown (all, or those FIELD names), in offset order; with `-l`, empty (the
    /// records are in `list`).
    pub fields: Vec<Field>,
    /// `-l FIELD`: the field the list was walked through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list_field: Option<String>,
    /// `-l FIELD`: each record of the list, from ADDR on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub list: Vec<Record>,
    /// How the text lays it out; not part of the data.
    #[serde(skip)]
    pub style: Style,
}

/// One record of a list walked with `-l`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Record {
    /// Where it is.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub address: u64,
    /// Its fields.
    pub fields: Vec<Field>,
}

/// How the text lays fields out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Style {
    /// `-c`: one line per structure.
    pub compact: bool,
    /// Not `-o`: offsets shown.
    pub offsets: bool,
    /// Not `-i`: nested fields indented.
    pub indent: bool,
}

impl Default for Style {
    fn default() -> Self {
        Style {
            compact: false,
            offsets: true,
            indent: true,
        }
    }
}

/// One field (or, named `[N]`, one array element).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Field {
    /// Its name, the path asked for (`Tcb.State`), or `[N]` for an array element.
    pub name: String,
    /// Its offset in the structure that holds it (an element's: in the array).
    pub offset: u64,
    /// Its type, in WinDbg's words (`Uint4B`, `Ptr64 _KTHREAD`, `Pos 0, 1 Bit`).
    #[serde(rename = "type")]
    pub ty: String,
    /// `-v`: the type described (`Ptr64 to struct _LIST_ENTRY, 2 elements, 0x10 bytes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its value (with an address).
    pub value: FieldValue,
    /// What could not be read for it (a pointer's target, a string's characters).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// With `-r`, `-b` or `-a`: the fields of the structure it is or points to, or its
    /// elements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<Field>,
    /// How the text shows it.
    #[serde(skip)]
    pub shown: Shown,
}

/// A field's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub(crate) enum FieldValue {
    /// An unsigned number: an unsigned integer of up to 4 bytes, a character, a bit field.
    Unsigned(u64),
    /// A pointer or an 8-byte unsigned integer, as a hex string (`"0xffffc18a00120638"`).
    Wide(
        #[serde(serialize_with = "crate::hex::ser")]
        #[schemars(with = "crate::hex::Hex")]
        u64,
    ),
    /// A signed number: a signed integer, an enumeration.
    Signed(i64),
    /// A character array up to its first NUL, or a `_UNICODE_STRING`'s text.
    Text(String),
    /// An embedded `_LIST_ENTRY`: its two links.
    List {
        /// The next entry.
        #[serde(serialize_with = "crate::hex::ser")]
        #[schemars(with = "crate::hex::Hex")]
        flink: u64,
        /// The previous entry.
        #[serde(serialize_with = "crate::hex::ser")]
        #[schemars(with = "crate::hex::Hex")]
        blink: u64,
    },
    /// No value: no address was given, or the field is a structure, an array of other than
    /// characters, or past what could be read.
    Null,
}

/// How the text shows a field (what the JSON value alone does not say).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Shown {
    /// Its type (no address, a structure, an array, a function).
    #[default]
    Type,
    /// `????`: past what could be read.
    Unreadable,
    /// `0x41 'A'`.
    Character,
    /// `0x2a` or `0n-1`.
    Number,
    /// `0xfffff805`5c400000 _KTHREAD`, or `(null)`.
    Pointer,
    /// `0n5 ( Waiting )`: the enumerator's name, when the value has one.
    Enumerator(Option<String>),
    /// `0y0101`: the field's width in bits.
    Bits(u32),
    /// `[16]  "System"`: the array's length.
    Characters(u64),
    /// `_LIST_ENTRY [ 0x… - 0x… ]`.
    ListEntry,
    /// `_UNICODE_STRING "…"`.
    UnicodeString,
}

fn le(bytes: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = bytes.len().min(8);
    a[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(a)
}

/// A field's value read from `bytes`, and how to show it.
pub(crate) fn field_value(table: &TypeTable, t: &Ty, bytes: Option<&[u8]>) -> (FieldValue, Shown) {
    let Some(b) = bytes else {
        return (FieldValue::Null, Shown::Unreadable);
    };
    match t {
        Ty::Base { name, size, signed } => {
            let v = le(&b[..(*size as usize).min(b.len())]);
            match base_label(name, *size, *signed) {
                "Char" | "UChar" => (FieldValue::Unsigned(v), Shown::Character),
                _ if *signed => {
                    let shift = 64 - 8 * (*size).clamp(1, 8);
                    (
                        FieldValue::Signed(((v << shift) as i64) >> shift),
                        Shown::Number,
                    )
                }
                _ if *size >= 8 => (FieldValue::Wide(v), Shown::Number),
                _ => (FieldValue::Unsigned(v), Shown::Number),
            }
        }
        Ty::Pointer(_) => (FieldValue::Wide(le(&b[..8.min(b.len())])), Shown::Pointer),
        Ty::Enum(n) => {
            let size = table.enumeration(n).map_or(4, |e| e.size).clamp(1, 8) as usize;
            let v = le(&b[..size.min(b.len())]);
            let shift = 64 - 8 * size as u32;
            let s = ((v << shift) as i64) >> shift;
            (
                FieldValue::Signed(s),
                Shown::Enumerator(table.enum_name(n, s).map(str::to_string)),
            )
        }
        Ty::Bitfield { pos, len, base } => {
            let size = table.ty_size(base).unwrap_or(4).clamp(1, 8) as usize;
            let raw = le(&b[..size.min(b.len())]) >> pos;
            let v = if *len >= 64 {
                raw
            } else {
                raw & ((1u64 << len) - 1)
            };
            (FieldValue::Unsigned(v), Shown::Bits(*len))
        }
        Ty::Array { count, elem } if matches!(elem.as_ref(), Ty::Base { size: 1, .. }) => {
            let n = (*count as usize).min(b.len());
            let end = b[..n].iter().position(|&c| c == 0).unwrap_or(n);
            (
                FieldValue::Text(String::from_utf8_lossy(&b[..end]).into_owned()),
                Shown::Characters(*count),
            )
        }
        Ty::Udt(n) if shown_name(n) == "_LIST_ENTRY" && b.len() >= 16 => (
            FieldValue::List {
                flink: le(&b[..8]),
                blink: le(&b[8..16]),
            },
            Shown::ListEntry,
        ),
        _ => (FieldValue::Null, Shown::Type),
    }
}

impl Field {
    /// The value as dt shows it.
    pub(crate) fn shown(&self) -> String {
        match (&self.shown, &self.value) {
            (Shown::Unreadable, _) => "????".into(),
            (Shown::Character, FieldValue::Unsigned(v)) => {
                let c = *v as u8;
                let shown = if (0x20..0x7f).contains(&c) {
                    (c as char).to_string()
                } else {
                    String::new()
                };
                format!("{v:#x} '{shown}'")
            }
            (Shown::Number | Shown::Enumerator(None), FieldValue::Signed(s)) => format!("0n{s}"),
            (Shown::Enumerator(Some(name)), FieldValue::Signed(s)) => format!("0n{s} ( {name} )"),
            (Shown::Number, FieldValue::Unsigned(v) | FieldValue::Wide(v)) => format!("{v:#x}"),
            (Shown::Pointer, FieldValue::Wide(0)) => "(null)".into(),
            (Shown::Pointer, FieldValue::Wide(v)) => format!(
                "0x{} {}",
                addr(*v),
                self.ty.strip_prefix("Ptr64 ").unwrap_or(&self.ty)
            ),
            (Shown::Bits(len), FieldValue::Unsigned(v)) => (0..*len)
                .rev()
                .map(|i| if v >> i & 1 == 1 { '1' } else { '0' })
                .fold(String::from("0y"), |mut s, c| {
                    s.push(c);
                    s
                }),
            (Shown::Characters(count), FieldValue::Text(s)) => format!("[{count}]  \"{s}\""),
            (Shown::ListEntry, FieldValue::List { flink, blink }) => {
                format!("{} [ 0x{} - 0x{} ]", self.ty, addr(*flink), addr(*blink))
            }
            (Shown::UnicodeString, FieldValue::Text(s)) => format!("{} \"{s}\"", self.ty),
            (Shown::UnicodeString, _) => format!(
                "{} \"--- {} ---\"",
                self.ty,
                self.error.as_deref().unwrap_or("memory read error")
            ),
            _ => self.description.clone().unwrap_or_else(|| self.ty.clone()),
        }
    }
}

/// What `dt`'s options ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Options {
    /// `-r[N]` (`-r`: [`MAX_DEPTH`]); 0 without.
    pub depth: u32,
    /// `-b`.
    pub blocks: bool,
    /// `-a[N]`: elements shown per array (all: `u64::MAX`).
    pub elements: Option<u64>,
    /// `-v`.
    pub verbose: bool,
    /// `-l FIELD`.
    pub list: Option<String>,
    /// `-c`, `-o`, `-i`.
    pub style: Style,
}

/// A FIELD word: a name, path or pattern (`Image*`), or with `-y` a name's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Word {
    /// As written; `-n` makes it a name whatever it looks like.
    Plain { text: String, name: bool },
    /// `-y NAME`: fields starting with NAME.
    Prefix(String),
}

/// `dt`'s arguments, sorted out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Request {
    pub options: Options,
    /// TYPE as written.
    pub ty: String,
    /// The other words, in order (the address among them).
    pub words: Vec<Word>,
}

/// Parses `dt`'s arguments: options anywhere, then TYPE, then the address and field words.
pub(crate) fn request(text: &str) -> Result<Request, CmdError> {
    let usage = |why: String| CmdError::Usage(format!("dt: {why}; usage: {USAGE}"));
    let mut r = Request::default();
    let mut rest = text.trim();
    let mut pending: Option<char> = None;
    while !rest.is_empty() {
        let (token, after) = split_token(rest).map_err(usage)?;
        rest = after.trim_start();
        if let Some(opt) = pending.take() {
            match opt {
                'l' => r.options.list = Some(token.to_string()),
                'y' => r.words.push(Word::Prefix(token.to_string())),
                _ => r.words.push(Word::Plain {
                    text: token.to_string(),
                    name: true,
                }),
            }
            continue;
        }
        let is_option = token.len() > 1
            && token.starts_with('-')
            && token[1..].starts_with(|c: char| c.is_ascii_alphabetic());
        if !is_option {
            if r.ty.is_empty() {
                r.ty = token.to_string();
            } else {
                r.words.push(Word::Plain {
                    text: token.to_string(),
                    name: false,
                });
            }
            continue;
        }
        let (letter, digits) = token[1..].split_at(1);
        let count = || -> Result<Option<u64>, CmdError> {
            if digits.is_empty() {
                return Ok(None);
            }
            digits
                .parse::<u64>()
                .map(Some)
                .map_err(|_| usage(format!("{token} needs a decimal count")))
        };
        match letter {
            "r" => {
                r.options.depth = match count()? {
                    None => MAX_DEPTH,
                    Some(n @ 1..=9) => n as u32,
                    Some(_) => return Err(usage("-r takes a depth from 1 to 9".into())),
                }
            }
            "a" => {
                r.options.elements = Some(match count()? {
                    None => u64::MAX,
                    Some(0) => return Err(usage("-a0 shows nothing".into())),
                    Some(n) => n,
                })
            }
            "b" | "c" | "v" | "o" | "i" | "l" | "y" | "n" if !digits.is_empty() => {
                return Err(usage(format!("unknown option {token}")));
            }
            "b" => r.options.blocks = true,
            "c" => r.options.style.compact = true,
            "v" => r.options.verbose = true,
            "o" => r.options.style.offsets = false,
            "i" => r.options.style.indent = false,
            "l" | "y" | "n" => pending = letter.chars().next(),
            _ => return Err(usage(format!("unknown option {token}"))),
        }
    }
    if let Some(opt) = pending {
        return Err(usage(format!("-{opt} needs a name after it")));
    }
    if r.ty.is_empty() {
        return Err(usage("a type is needed".into()));
    }
    Ok(r)
}

/// Whether a word is a plain number, taken as an address before a field name (WinDbg's rule;
/// `-n` says otherwise).
fn looks_numeric(w: &str) -> bool {
    let w = w.strip_prefix("0x").unwrap_or(w).replace('`', "");
    !w.is_empty() && w.chars().all(|c| c.is_ascii_hexdigit())
}

/// The fields of `udt` a FIELD word names.
fn picks(table: &TypeTable, udt: &str, word: &Word) -> Vec<(String, u64, Ty)> {
    let all = match table.udt(udt) {
        Ok(u) => u.fields.clone(),
        Err(_) => return Vec::new(),
    };
    let (text, prefix) = match word {
        Word::Plain { text, .. } => (text.as_str(), false),
        Word::Prefix(p) => (p.as_str(), true),
    };
    if !prefix && (text.contains('.') || text.contains('[')) {
        return table
            .field(udt, text)
            .map(|f| vec![(text.to_string(), f.offset, f.ty)])
            .unwrap_or_default();
    }
    all.into_iter()
        .filter(|f| {
            if prefix {
                f.name.starts_with(text)
            } else if text.contains(['*', '?']) {
                glob(text, &f.name)
            } else {
                f.name == text
            }
        })
        .map(|f| (f.name, f.offset, f.ty))
        .collect()
}

/// WinDbg's `-v` description of a type.
fn describe(table: &TypeTable, t: &Ty) -> String {
    match t {
        Ty::Udt(n) => match table.udt(n) {
            Ok(u) => format!(
                "{} {}, {} elements, {:#x} bytes",
                if u.kind == UdtKind::Union {
                    "union"
                } else {
                    "struct"
                },
                shown_name(&u.name),
                u.fields.len(),
                u.size
            ),
            Err(_) => shown_name(n).to_string(),
        },
        Ty::Pointer(inner) => format!("Ptr64 to {}", describe(table, inner)),
        Ty::Array { count, elem } => format!("[{count}] {}", describe(table, elem)),
        Ty::Bitfield { pos, len, .. } => format!(
            "Bitfield Pos {pos}, {len} Bit{}",
            if *len == 1 { "" } else { "s" }
        ),
        Ty::Enum(n) => match table.enumeration(n) {
            Ok(en) => format!(
                "Enum {},  {} total enums",
                shown_name(n),
                en.constants.len()
            ),
            Err(_) => shown_name(n).to_string(),
        },
        other => type_label(other),
    }
}

/// Builds fields, their values and what they expand to, within the bounds.
struct Walker<'t> {
    table: &'t TypeTable,
    options: &'t Options,
    rows: usize,
    reads: usize,
}

/// Where a field's value comes from.
#[derive(Clone, Copy)]
enum Data<'b> {
    /// No address: the layout only.
    Layout,
    /// The field's bytes (`None`: past what could be read), at this address.
    At(Option<&'b [u8]>, u64),
}

impl Walker<'_> {
    fn row(&mut self, e: &mut Engine) -> bool {
        self.rows += 1;
        if self.rows > MAX_ROWS {
            e.kernel.note_incomplete(format!(
                "dt: stopped at {MAX_ROWS} lines; ask for fewer fields or a smaller -r depth"
            ));
            return false;
        }
        true
    }

    fn read(&mut self, e: &mut Engine, at: u64, len: usize) -> Result<Option<Vec<u8>>, String> {
        if self.reads >= MAX_READS {
            e.kernel.note_incomplete(format!(
                "dt: stopped following pointers after {MAX_READS} reads"
            ));
            return Ok(None);
        }
        self.reads += 1;
        e.kernel
            .mem
            .kread(at, len.min(kdnet_model::mem::MAX_READ))
            .map(Some)
            .map_err(|_| format!("memory read error at address 0x{}", addr(at)))
    }

    /// The fields of structure `udt` (all, or `only`), at `level`.
    fn fields(
        &mut self,
        e: &mut Engine,
        udt: &str,
        data: Data<'_>,
        level: u32,
        only: Option<Vec<(String, u64, Ty)>>,
    ) -> Vec<Field> {
        let list = match only {
            Some(v) => v,
            None => match self.table.udt(udt) {
                Ok(u) => u
                    .fields
                    .iter()
                    .map(|f| (f.name.clone(), f.offset, f.ty.clone()))
                    .collect(),
                Err(_) => return Vec::new(),
            },
        };
        let mut out = Vec::with_capacity(list.len());
        for (name, offset, ty) in list {
            if !self.row(e) {
                break;
            }
            let sub = match data {
                Data::Layout => Data::Layout,
                Data::At(bytes, at) => {
                    let size = self.table.ty_size(&ty).unwrap_or(8).max(1);
                    let slice = bytes.and_then(|b| {
                        let start = usize::try_from(offset).ok()?;
                        let end = start.checked_add(usize::try_from(size).ok()?)?;
                        b.get(start..end)
                    });
                    Data::At(slice, at.wrapping_add(offset))
                }
            };
            out.push(self.field(e, name, offset, &ty, sub, level));
        }
        out
    }

    /// One field at `level` (0: the structure asked for) and what it expands to.
    fn field(
        &mut self,
        e: &mut Engine,
        name: String,
        offset: u64,
        ty: &Ty,
        data: Data<'_>,
        level: u32,
    ) -> Field {
        let (value, shown) = match data {
            Data::Layout => (FieldValue::Null, Shown::Type),
            Data::At(bytes, _) => field_value(self.table, ty, bytes),
        };
        let mut f = Field {
            name,
            offset,
            ty: type_label(ty),
            description: self.options.verbose.then(|| describe(self.table, ty)),
            value,
            error: None,
            fields: Vec::new(),
            shown,
        };
        let deeper = level < self.options.depth || self.options.blocks;
        match ty {
            Ty::Udt(n) => {
                if let Data::At(Some(b), _) = data
                    && shown_name(n) == "_UNICODE_STRING"
                {
                    self.unicode(e, &mut f, b);
                }
                if deeper && level < MAX_DEPTH.max(self.options.depth) {
                    f.fields = self.fields(e, n, data, level + 1, None);
                }
            }
            Ty::Pointer(inner) => {
                let follow = if self.options.blocks {
                    level == 0
                } else {
                    level < self.options.depth
                };
                if let (true, Ty::Udt(n)) = (follow, inner.as_ref()) {
                    match (data, &f.value) {
                        (Data::Layout, _) => {
                            f.fields = self.fields(e, n, Data::Layout, level + 1, None)
                        }
                        (Data::At(..), FieldValue::Wide(p)) if *p != 0 => {
                            let p = *p;
                            let size = self.table.ty_size(inner).unwrap_or(0) as usize;
                            match self.read(e, p, size) {
                                Ok(Some(buf)) => {
                                    f.fields =
                                        self.fields(e, n, Data::At(Some(&buf), p), level + 1, None)
                                }
                                Ok(None) => {}
                                Err(why) => f.error = Some(why),
                            }
                        }
                        _ => {}
                    }
                }
            }
            Ty::Array { count, elem } => {
                let wanted = if self.options.blocks {
                    Some(u64::MAX)
                } else {
                    self.options.elements
                };
                if let Some(wanted) = wanted {
                    let n = (*count).min(wanted);
                    if n > MAX_ELEMENTS {
                        e.kernel.note_incomplete(format!(
                            "dt: {} shows the first {MAX_ELEMENTS} of its {count} elements",
                            f.name
                        ));
                    }
                    let size = self.table.ty_size(elem).unwrap_or(1).max(1);
                    let mut elements = Vec::new();
                    for i in 0..n.min(MAX_ELEMENTS) {
                        if !self.row(e) {
                            break;
                        }
                        let off = i * size;
                        let sub = match data {
                            Data::Layout => Data::Layout,
                            Data::At(bytes, at) => Data::At(
                                bytes.and_then(|b| {
                                    b.get(off as usize..(off + size).min(b.len() as u64) as usize)
                                        .filter(|s| s.len() as u64 == size)
                                }),
                                at.wrapping_add(off),
                            ),
                        };
                        let mut el = self.field(e, format!("[{i:02}]"), off, elem, sub, level);
                        // `-a` alone still shows a structure element's own fields.
                        if let Ty::Udt(n) = elem.as_ref()
                            && !deeper
                        {
                            el.fields = self.fields(e, n, sub, level + 1, None);
                        }
                        elements.push(el);
                    }
                    f.fields = elements;
                }
            }
            _ => {}
        }
        f
    }

    /// A `_UNICODE_STRING`'s text, read from where its Buffer points.
    fn unicode(&mut self, e: &mut Engine, f: &mut Field, b: &[u8]) {
        if b.len() < 16 {
            return;
        }
        f.shown = Shown::UnicodeString;
        let len = (le(&b[..2]) as usize).min(MAX_STRING) & !1;
        let buffer = le(&b[8..16]);
        if len == 0 {
            f.value = FieldValue::Text(String::new());
            return;
        }
        match self.read(e, buffer, len) {
            Ok(Some(chars)) => {
                let units: Vec<u16> = chars
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect();
                f.value = FieldValue::Text(String::from_utf16_lossy(&units));
            }
            Ok(None) => f.shown = Shown::Type,
            Err(why) => f.error = Some(why),
        }
    }
}

pub(crate) fn run(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<Dt, CmdError> {
    let req = request(a.text("ARGS").unwrap_or(""))?;
    let (module, ty) = match req.ty.split_once('!') {
        Some((m, t)) => (m.to_string(), t.to_string()),
        None => ("nt".to_string(), req.ty.clone()),
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
    if ty.contains(['*', '?']) {
        let mut types: Vec<String> = table
            .type_names()
            .chain(table.enum_names())
            .filter(|n| !n.contains('#') && glob(&ty, n))
            .map(|n| format!("{module}!{n}"))
            .collect();
        types.sort();
        types.dedup();
        return Ok(Dt::Types(Types {
            pattern: format!("{module}!{ty}"),
            types,
        }));
    }
    let ty = if table.has_type(&ty) {
        table.udt(&ty)?.name.clone()
    } else {
        return Err(CmdError::Usage(format!("Symbol {module}!{ty} not found.")));
    };
    // The address is the first word that is a number, or that evaluates and names no field;
    // the others name fields.
    let mut address = None;
    let mut only: Option<Vec<(String, u64, Ty)>> = None;
    for w in &req.words {
        let picked = picks(&table, &ty, w);
        let number = matches!(w, Word::Plain { text, name: false } if looks_numeric(text));
        match w {
            Word::Plain { text, name: false }
                if address.is_none() && (number || picked.is_empty()) =>
            {
                address = Some(e.eval(text)?);
            }
            _ if picked.is_empty() => {
                let text = match w {
                    Word::Plain { text, .. } | Word::Prefix(text) => text,
                };
                return Err(CmdError::Usage(format!(
                    "{module}!{ty} has no field {text}"
                )));
            }
            _ => only.get_or_insert_with(Vec::new).extend(picked),
        }
    }
    let udt = table.udt(&ty)?.clone();
    let mut walker = Walker {
        table: &table,
        options: &req.options,
        rows: 0,
        reads: 0,
    };
    let size = (udt.size as usize).min(kdnet_model::mem::MAX_READ);
    let mut layout = Layout {
        ty: format!("{module}!{}", shown_name(&ty)),
        size: udt.size,
        address,
        description: req
            .options
            .verbose
            .then(|| describe(&table, &Ty::Udt(ty.clone()))),
        fields: Vec::new(),
        list_field: req.options.list.clone(),
        list: Vec::new(),
        style: req.options.style,
    };
    match (&req.options.list, address) {
        (Some(_), None) => return Err(CmdError::Usage("dt -l needs an address".into())),
        (Some(path), Some(start)) => {
            let link = table.field(&ty, path)?;
            if !matches!(link.ty, Ty::Pointer(_)) {
                return Err(CmdError::Usage(format!(
                    "dt -l: {path} is not a pointer ({})",
                    type_label(&link.ty)
                )));
            }
            // A link to the record's own type points at the record; any other (a
            // _LIST_ENTRY's Flink) at the same field of the next record.
            let back = match &link.ty {
                Ty::Pointer(t) if matches!(t.as_ref(), Ty::Udt(n) if *n == ty) => 0,
                _ => link.offset,
            };
            let mut seen = HashSet::new();
            let mut at = start;
            loop {
                if layout.list.len() >= MAX_RECORDS {
                    e.kernel
                        .note_incomplete(format!("dt -l: stopped after {MAX_RECORDS} records"));
                    break;
                }
                let bytes = e.kernel.mem.kread(at, size).map_err(CmdError::from)?;
                let fields = walker.fields(e, &ty, Data::At(Some(&bytes), at), 0, only.clone());
                layout.list.push(Record {
                    address: at,
                    fields,
                });
                seen.insert(at);
                let next = link
                    .offset
                    .try_into()
                    .ok()
                    .and_then(|o: usize| bytes.get(o..o + 8))
                    .map(le)
                    .ok_or_else(|| CmdError::Failed(format!("{path} is past {ty}")))?;
                if next == 0 {
                    break;
                }
                let next = next.wrapping_sub(back);
                if next == start {
                    break;
                }
                if !seen.insert(next) {
                    e.kernel.note_incomplete(format!(
                        "dt -l: the list loops back to 0x{} without returning to its start",
                        addr(next)
                    ));
                    break;
                }
                seen.remove(&next);
                at = next;
            }
        }
        (None, Some(at)) => {
            let bytes = e.kernel.mem.kread(at, size).map_err(CmdError::from)?;
            layout.fields = walker.fields(e, &ty, Data::At(Some(&bytes), at), 0, only);
        }
        (None, None) => layout.fields = walker.fields(e, &ty, Data::Layout, 0, only),
    }
    Ok(Dt::Layout(layout))
}

impl Render for Dt {
    fn render(&self, out: &mut String) {
        match self {
            Dt::Types(t) => {
                for name in &t.types {
                    out.push_str(&format!("          {name}\n"));
                }
            }
            Dt::Layout(l) => l.render(out),
        }
    }
}

impl Layout {
    fn render_fields(&self, fields: &[Field], depth: usize, out: &mut String) {
        let indent = if self.style.indent { depth * 3 } else { 0 };
        if self.style.compact {
            let line: Vec<String> = fields
                .iter()
                .map(|f| {
                    let off = if self.style.offsets {
                        format!("+{:#05x} ", f.offset)
                    } else {
                        String::new()
                    };
                    format!("{off}{} {}", f.name, f.shown())
                })
                .collect();
            if !line.is_empty() {
                out.push_str(&format!("{:indent$}   {}\n", "", line.join(" ")));
            }
            for f in fields {
                self.render_fields(&f.fields, depth + 1, out);
            }
            return;
        }
        for f in fields {
            let value = f.shown();
            if f.name.starts_with('[') {
                out.push_str(&format!("{:indent$}    {} {value}\n", "", f.name));
            } else {
                let off = if self.style.offsets {
                    format!("+{:#05x} ", f.offset)
                } else {
                    String::new()
                };
                out.push_str(&format!("{:indent$}   {off}{:<16} : {value}\n", "", f.name));
            }
            if let Some(why) = &f.error
                && f.shown != Shown::UnicodeString
            {
                out.push_str(&format!("{:indent$}      --- {why} ---\n", ""));
            }
            self.render_fields(&f.fields, depth + 1, out);
        }
    }
}

impl Render for Layout {
    fn render(&self, out: &mut String) {
        out.push_str(&self.ty);
        out.push('\n');
        if let Some(d) = &self.description {
            out.push_str(d);
            out.push('\n');
        }
        if let Some(path) = &self.list_field {
            for r in &self.list {
                out.push_str(&format!("{path} at 0x{}\n", addr(r.address)));
                out.push_str("---------------------------------------------\n");
                self.render_fields(&r.fields, 0, out);
                out.push('\n');
            }
            return;
        }
        self.render_fields(&self.fields, 0, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(t: &Ty, bytes: Option<&[u8]>) -> (String, serde_json::Value) {
        let table = TypeTable::new(None);
        let (value, shown) = field_value(&table, t, bytes);
        let f = Field {
            name: "F".into(),
            offset: 0,
            ty: type_label(t),
            description: None,
            value,
            error: None,
            fields: Vec::new(),
            shown,
        };
        (f.shown(), serde_json::to_value(&f.value).unwrap())
    }

    #[test]
    fn values_as_dt_shows_them() {
        let u4 = Ty::Base {
            name: "unsigned long".into(),
            size: 4,
            signed: false,
        };
        let bf = Ty::Bitfield {
            pos: 4,
            len: 1,
            base: Box::new(u4.clone()),
        };
        assert_eq!(shown(&bf, Some(&[0x10, 0, 0, 0])), ("0y1".into(), 1.into()));
        let i4 = Ty::Base {
            name: "long".into(),
            size: 4,
            signed: true,
        };
        assert_eq!(shown(&i4, Some(&[0xff; 4])), ("0n-1".into(), (-1).into()));
        assert_eq!(
            shown(&u4, Some(&[0x2a, 0, 0, 0])),
            ("0x2a".into(), 0x2a.into())
        );
        assert_eq!(shown(&u4, None), ("????".into(), serde_json::Value::Null));
        let ch = Ty::Base {
            name: "char".into(),
            size: 1,
            signed: true,
        };
        assert_eq!(shown(&ch, Some(b"A")), ("0x41 'A'".into(), 0x41.into()));
        assert_eq!(shown(&ch, Some(&[7])), ("0x7 ''".into(), 7.into()));
        let p = Ty::Pointer(Box::new(Ty::Udt("_KTHREAD".into())));
        assert_eq!(
            shown(&p, Some(&0xfffff805_5c400000u64.to_le_bytes())),
            (
                "0xfffff805`5c400000 _KTHREAD".into(),
                "0xfffff8055c400000".into()
            )
        );
        assert_eq!(
            shown(&p, Some(&[0; 8])),
            ("(null)".into(), "0x0000000000000000".into())
        );
        let name = Ty::Array {
            count: 15,
            elem: Box::new(ch.clone()),
        };
        assert_eq!(
            shown(&name, Some(b"System\0\0\0\0\0\0\0\0\0")),
            ("[15]  \"System\"".into(), "System".into())
        );
        let waits = Ty::Array {
            count: 4,
            elem: Box::new(Ty::Udt("_KWAIT_BLOCK".into())),
        };
        assert_eq!(
            shown(&waits, Some(&[0; 4])),
            ("[4] _KWAIT_BLOCK".into(), serde_json::Value::Null)
        );
    }

    #[test]
    fn the_dt_syntax() {
        let r = request("nt!_EPROCESS poi(@$proc + 0) Image*").unwrap();
        assert_eq!(r.ty, "nt!_EPROCESS");
        let plain = |t: &str| Word::Plain {
            text: t.into(),
            name: false,
        };
        assert_eq!(r.words, vec![plain("poi(@$proc + 0)"), plain("Image*")]);
        assert_eq!(r.options, Options::default());
        // Options anywhere, with their counts and their names.
        let r =
            request("-r2 -a3 _KTHREAD -c -v -o -i -y Wait -n Cb -l Next.Flink @$thread").unwrap();
        assert_eq!(r.options.depth, 2);
        assert_eq!(r.options.elements, Some(3));
        assert!(r.options.verbose);
        assert_eq!(
            r.options.style,
            Style {
                compact: true,
                offsets: false,
                indent: false
            }
        );
        assert_eq!(r.options.list.as_deref(), Some("Next.Flink"));
        assert_eq!(
            r.words,
            vec![
                Word::Prefix("Wait".into()),
                Word::Plain {
                    text: "Cb".into(),
                    name: true
                },
                plain("@$thread")
            ]
        );
        assert_eq!(request("-r -b -a _X").unwrap().options.depth, MAX_DEPTH);
        assert_eq!(request("-a _X").unwrap().options.elements, Some(u64::MAX));
        for bad in [
            "", "-r", "-r0 _X", "-r10 _X", "-q _X", "-a0 _X", "-bx _X", "_X -l",
        ] {
            assert!(request(bad).is_err(), "{bad}");
        }
        assert!(looks_numeric("ffffc18a`00120638") && looks_numeric("0x10"));
        assert!(!looks_numeric("State") && !looks_numeric("@$thread"));
    }
}
