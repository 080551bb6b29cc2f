//! `dt [MODULE!]TYPE [ADDR] [FIELD]`: a type's fields (offsets, types, bitfield positions);
//! with an address, their values. FIELD is a name, a pattern (`Image*`) or a nested path
//! (`Tcb.State`).

use kdnet_symbols::{Ty, TypeTable};
use schemars::JsonSchema;
use serde::Serialize;

use super::common::{base_label, glob, type_label};
use crate::args::{Args, Syntax, opt_expr, opt_word, word};
use crate::engine::{CmdError, Engine, addr};
use crate::registry::Render;
use kdnet_model::nt::ModuleSymbols;

/// `dt TYPE [ADDR] [FIELD]`; a lone second word that does not evaluate but names a field is
/// the field.
pub(crate) const SYNTAX: Syntax =
    Syntax::params(&[word("TYPE"), opt_expr("ADDR"), opt_word("FIELD")]);

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
    /// The fields shown (all, or those FIELD names), in offset order.
    pub fields: Vec<Field>,
}

/// One field.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Field {
    /// Its name, or the path asked for (`Tcb.State`).
    pub name: String,
    /// Its offset in the type.
    pub offset: u64,
    /// Its type, in WinDbg's words (`Uint4B`, `Ptr64 _KTHREAD`, `Pos 0, 1 Bit`).
    #[serde(rename = "type")]
    pub ty: String,
    /// Its value (with an address).
    pub value: FieldValue,
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
    /// A character array, up to its first NUL.
    Text(String),
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
    /// `0xfffff805`5c400000 _KTHREAD`.
    Pointer,
    /// `0n5 ( Waiting )`: the enumerator's name, when the value has one.
    Enumerator(Option<String>),
    /// `0y0101`: the field's width in bits.
    Bits(u32),
    /// `[16]  "System"`: the array's length.
    Characters(u64),
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
            _ => self.ty.clone(),
        }
    }
}

pub(crate) fn run(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<Layout, CmdError> {
    let ty_arg = a
        .text("TYPE")
        .ok_or_else(|| CmdError::Usage("dt TYPE [ADDRESS] [FIELD]".into()))?;
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
    // The address is the second word when it evaluates; alone, a word that does not but
    // names a field is the field.
    let (address, field) = match (a.text("ADDR"), a.text("FIELD")) {
        (None, _) => (None, None),
        (Some(x), None) => match e.eval(x) {
            Ok(v) => (Some(v), None),
            Err(_) if table.has_field(&ty, x) => (None, Some(x.to_string())),
            Err(err) => return Err(err),
        },
        (Some(x), Some(f)) => (Some(e.eval(x)?), Some(f.to_string())),
    };
    let udt = table.udt(&ty)?.clone();
    let bytes = match address {
        Some(a) => Some(
            e.kernel
                .mem
                .kread(a, (udt.size as usize).min(kdnet_model::mem::MAX_READ))
                .map_err(CmdError::from)?,
        ),
        None => None,
    };
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
    let fields = shown
        .into_iter()
        .map(|(name, offset, fty)| {
            let (value, shown) = match &bytes {
                Some(b) => {
                    let size = table.ty_size(&fty).unwrap_or(8).max(1) as usize;
                    let slice = b.get(offset as usize..(offset as usize + size).min(b.len()));
                    match fty {
                        Ty::Udt(_) => (FieldValue::Null, Shown::Type),
                        _ => field_value(&table, &fty, slice),
                    }
                }
                None => (FieldValue::Null, Shown::Type),
            };
            Field {
                name,
                offset,
                ty: type_label(&fty),
                value,
                shown,
            }
        })
        .collect();
    Ok(Layout {
        ty: format!("{module}!{ty}"),
        size: udt.size,
        address,
        fields,
    })
}

impl Render for Layout {
    fn render(&self, out: &mut String) {
        out.push_str(&self.ty);
        out.push('\n');
        let width = self.fields.iter().map(|f| f.name.len()).max().unwrap_or(0);
        for f in &self.fields {
            out.push_str(&format!(
                "   +{:#05x} {:<width$} : {}\n",
                f.offset,
                f.name,
                f.shown()
            ));
        }
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
            value,
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
        let a = SYNTAX
            .parse("dt", "nt!_EPROCESS poi(@$proc + 0) Image*")
            .unwrap();
        assert_eq!(a.text("TYPE"), Some("nt!_EPROCESS"));
        assert_eq!(a.text("ADDR"), Some("poi(@$proc + 0)"));
        assert_eq!(a.text("FIELD"), Some("Image*"));
        let a = SYNTAX.parse("dt", "_KTHREAD State").unwrap();
        assert_eq!((a.text("ADDR"), a.text("FIELD")), (Some("State"), None));
        assert!(SYNTAX.parse("dt", "").is_err());
        assert!(SYNTAX.parse("dt", "a b c d").is_err());
        assert_eq!(SYNTAX.usage(), "TYPE [ADDR] [FIELD]");
    }
}
