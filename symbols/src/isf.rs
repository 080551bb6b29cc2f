//! Volatility 3 symbol tables (ISF JSON, plain or `.json.xz`): reading them into a
//! [`TypeTable`], and writing a table back out (for the compact built-in tables).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::SymError;
use crate::table::{Enum, Field, PdbId, Ty, TypeTable, Udt, UdtKind};

/// Largest table accepted, as JSON (after decompression). The real kernel tables are 3–7 MB.
pub const MAX_TABLE_BYTES: u64 = 64 << 20;
/// Memory the xz decoder may use for its dictionary, in KiB (`xz -9` needs 65 MiB; the real
/// tables were made with 8 MiB dictionaries).
const MAX_XZ_MEMORY_KB: u32 = 128 << 10;
/// Largest size of a struct, union or field (the largest real kernel type, `_MI_HYPER_SPACE`
/// of build 17763, is 264 MiB).
pub const MAX_TYPE_BYTES: u64 = 1 << 32;
/// Largest base type (integers and floats; 8 bytes in every real table).
const MAX_BASE_BYTES: u64 = 16;

#[derive(Deserialize, Serialize)]
struct IsfFile {
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    base_types: BTreeMap<String, BaseType>,
    #[serde(default)]
    user_types: BTreeMap<String, UserType>,
    #[serde(default)]
    enums: BTreeMap<String, IsfEnum>,
    #[serde(default)]
    symbols: BTreeMap<String, IsfSymbol>,
}

#[derive(Deserialize, Serialize, Default)]
struct Metadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    windows: Option<Windows>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    producer: Option<serde_json::Value>,
}

#[derive(Deserialize, Serialize)]
struct Windows {
    pdb: IsfPdb,
}

#[derive(Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct IsfPdb {
    #[serde(rename = "GUID")]
    guid: String,
    age: u32,
    database: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    machine_type: Option<u32>,
}

#[derive(Deserialize, Serialize)]
struct BaseType {
    size: u64,
    #[serde(default)]
    signed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    endian: Option<String>,
}

#[derive(Deserialize, Serialize)]
struct UserType {
    kind: String,
    size: u64,
    #[serde(default)]
    fields: BTreeMap<String, IsfField>,
}

#[derive(Deserialize, Serialize)]
struct IsfField {
    offset: u64,
    #[serde(rename = "type")]
    ty: IsfTy,
}

#[derive(Deserialize, Serialize, Clone)]
struct IsfTy {
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subtype: Option<Box<IsfTy>>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "type")]
    inner: Option<Box<IsfTy>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bit_length: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bit_position: Option<u32>,
}

#[derive(Deserialize, Serialize)]
struct IsfEnum {
    #[serde(default)]
    base: String,
    #[serde(default)]
    size: Option<u64>,
    constants: BTreeMap<String, i64>,
}

#[derive(Deserialize, Serialize)]
struct IsfSymbol {
    address: u64,
}

/// Reads a table from a file; `.xz` files are decompressed.
pub fn load_file(path: &Path) -> Result<TypeTable, SymError> {
    let io = |e: std::io::Error| SymError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_TABLE_BYTES {
        return Err(SymError::Format {
            path: path.display().to_string(),
            message: format!("{len} bytes; a table is at most {MAX_TABLE_BYTES} bytes"),
        });
    }
    let raw = std::fs::read(path).map_err(io)?;
    let json = if raw.starts_with(&[0xFD, b'7', b'z', b'X', b'Z', 0]) {
        decompress_xz(&raw).map_err(|m| SymError::Format {
            path: path.display().to_string(),
            message: m,
        })?
    } else {
        raw
    };
    parse(&json).map_err(|e| match e {
        SymError::Format { message, .. } => SymError::Format {
            path: path.display().to_string(),
            message,
        },
        other => other,
    })
}

/// Decompresses an xz stream, bounded: the decoder streams into a buffer that stops it as soon
/// as the output passes [`MAX_TABLE_BYTES`], and its dictionary may not need more than
/// 128 MiB, so a small file that expands without end is an error, not an exhausted memory.
pub fn decompress_xz(raw: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let reader = lzma_rust2::XzReader::new_mem_limit(raw, false, MAX_XZ_MEMORY_KB);
    let mut out = Vec::new();
    reader
        .take(MAX_TABLE_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("xz: {e}"))?;
    if out.len() as u64 > MAX_TABLE_BYTES {
        return Err(format!(
            "the table decompresses to more than {MAX_TABLE_BYTES} bytes"
        ));
    }
    Ok(out)
}

/// Parses ISF JSON.
pub fn parse(json: &[u8]) -> Result<TypeTable, SymError> {
    let bad = |message: String| SymError::Format {
        path: String::new(),
        message,
    };
    if json.len() as u64 > MAX_TABLE_BYTES {
        return Err(bad(format!(
            "{} bytes; a table is at most {MAX_TABLE_BYTES} bytes",
            json.len()
        )));
    }
    let file: IsfFile = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    check_numbers(&file).map_err(bad)?;
    let id = file.metadata.windows.as_ref().map(|w| PdbId {
        guid: w.pdb.guid.to_ascii_uppercase(),
        age: w.pdb.age,
        name: w.pdb.database.clone(),
    });
    let mut t = TypeTable::new(id);
    for (name, b) in &file.base_types {
        t.insert_base(name, b.size, b.signed);
    }
    let base = |n: &str| {
        file.base_types
            .get(n)
            .map_or((0, false), |b| (b.size, b.signed))
    };
    for (name, u) in &file.user_types {
        let kind = if u.kind == "union" {
            UdtKind::Union
        } else {
            UdtKind::Struct
        };
        let mut fields = Vec::with_capacity(u.fields.len());
        for (fname, f) in &u.fields {
            fields.push(Field {
                name: fname.clone(),
                offset: f.offset,
                ty: convert(&f.ty, &base, 0)?,
            });
        }
        // A table does not keep declaration order: bit position, then name, orders the
        // members that share an offset.
        fields.sort_by(|a, b| {
            let bit = |f: &Field| match f.ty {
                Ty::Bitfield { pos, .. } => pos,
                _ => 0,
            };
            (a.offset, bit(a), &a.name).cmp(&(b.offset, bit(b), &b.name))
        });
        t.insert_udt(Udt {
            name: name.clone(),
            kind,
            size: u.size,
            fields,
        });
    }
    for (name, e) in &file.enums {
        let size = e.size.unwrap_or_else(|| base(&e.base).0.max(4));
        t.insert_enum(Enum {
            name: name.clone(),
            size,
            constants: e.constants.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        });
    }
    for (name, s) in &file.symbols {
        t.insert_symbol(name, s.address);
    }
    t.finish();
    // A field's size is known only once every type is in: an array of a large struct may not
    // be larger than a type can be.
    for (name, u) in t.parts().udts {
        for f in &u.fields {
            if let Ok(size) = t.ty_size(&f.ty)
                && size > MAX_TYPE_BYTES
            {
                return Err(bad(format!(
                    "{name}.{} is {size} bytes; a type is at most {MAX_TYPE_BYTES}",
                    f.name
                )));
            }
        }
    }
    Ok(t)
}

/// The numbers of a table checked before anything is built from them: sizes, offsets and
/// symbol addresses within what a kernel's types can have.
fn check_numbers(file: &IsfFile) -> Result<(), String> {
    for (name, b) in &file.base_types {
        if b.size > MAX_BASE_BYTES {
            return Err(format!(
                "base type {name:?} has size {}; at most {MAX_BASE_BYTES}",
                b.size
            ));
        }
    }
    for (name, u) in &file.user_types {
        if u.size > MAX_TYPE_BYTES {
            return Err(format!(
                "{name} has size {}; a type is at most {MAX_TYPE_BYTES} bytes",
                u.size
            ));
        }
        for (fname, f) in &u.fields {
            if f.offset > u.size {
                return Err(format!(
                    "{name}.{fname} is at offset {:#x}, past the end of its type ({:#x} bytes)",
                    f.offset, u.size
                ));
            }
        }
    }
    for (name, e) in &file.enums {
        if e.size.is_some_and(|s| s > MAX_BASE_BYTES) {
            return Err(format!(
                "enum {name} has size {}; at most {MAX_BASE_BYTES}",
                e.size.unwrap_or(0)
            ));
        }
    }
    for (name, s) in &file.symbols {
        if s.address > u64::from(u32::MAX) {
            return Err(format!(
                "symbol {name} is at {:#x}; a symbol is an offset in its image (32 bits)",
                s.address
            ));
        }
    }
    Ok(())
}

fn convert(ty: &IsfTy, base: &dyn Fn(&str) -> (u64, bool), depth: u32) -> Result<Ty, SymError> {
    let bad = |m: &str| SymError::Format {
        path: String::new(),
        message: m.to_string(),
    };
    if depth > 64 {
        return Err(bad("type nesting is too deep"));
    }
    let sub = |t: &Option<Box<IsfTy>>| -> Result<Ty, SymError> {
        match t {
            Some(t) => convert(t, base, depth + 1),
            None => Ok(Ty::Void),
        }
    };
    Ok(match ty.kind.as_str() {
        "base" => {
            let name = ty.name.clone().unwrap_or_default();
            if name == "void" {
                Ty::Void
            } else {
                let (size, signed) = base(&name);
                Ty::Base { name, size, signed }
            }
        }
        "pointer" => Ty::Pointer(Box::new(sub(&ty.subtype)?)),
        "struct" | "union" | "class" => Ty::Udt(
            ty.name
                .clone()
                .ok_or_else(|| bad("struct without a name"))?,
        ),
        "enum" => Ty::Enum(ty.name.clone().ok_or_else(|| bad("enum without a name"))?),
        "array" => Ty::Array {
            count: ty.count.unwrap_or(0),
            elem: Box::new(sub(&ty.subtype)?),
        },
        "bitfield" => {
            let pos = ty.bit_position.unwrap_or(0);
            let len = ty.bit_length.unwrap_or(1);
            if len == 0 || u64::from(pos) + u64::from(len) > 64 {
                return Err(bad(&format!(
                    "bitfield of {len} bits at bit {pos} (a bitfield lies within 64 bits)"
                )));
            }
            Ty::Bitfield {
                pos,
                len,
                base: Box::new(sub(&ty.inner)?),
            }
        }
        "function" => Ty::Function,
        other => return Err(bad(&format!("unknown type kind {other:?}"))),
    })
}

fn unconvert(ty: &Ty) -> IsfTy {
    let mut out = IsfTy {
        kind: String::new(),
        name: None,
        subtype: None,
        inner: None,
        count: None,
        bit_length: None,
        bit_position: None,
    };
    match ty {
        Ty::Base { name, .. } => {
            out.kind = "base".into();
            out.name = Some(name.clone());
        }
        Ty::Void => {
            out.kind = "base".into();
            out.name = Some("void".into());
        }
        Ty::Pointer(t) => {
            out.kind = "pointer".into();
            out.subtype = Some(Box::new(unconvert(t)));
        }
        Ty::Udt(n) => {
            out.kind = "struct".into();
            out.name = Some(n.clone());
        }
        Ty::Enum(n) => {
            out.kind = "enum".into();
            out.name = Some(n.clone());
        }
        Ty::Array { count, elem } => {
            out.kind = "array".into();
            out.count = Some(*count);
            out.subtype = Some(Box::new(unconvert(elem)));
        }
        Ty::Bitfield { pos, len, base } => {
            out.kind = "bitfield".into();
            out.bit_position = Some(*pos);
            out.bit_length = Some(*len);
            out.inner = Some(Box::new(unconvert(base)));
        }
        Ty::Function => out.kind = "function".into(),
    }
    out
}

/// Writes a table as ISF JSON (sorted, stable: regenerating gives the same bytes).
pub fn to_json(t: &TypeTable) -> String {
    let parts = t.parts();
    let (udts, enums, base, symbols) = (parts.udts, parts.enums, parts.base, parts.symbols);
    let file = IsfFile {
        metadata: Metadata {
            format: Some("6.1.0".into()),
            windows: t.id.as_ref().map(|id| Windows {
                pdb: IsfPdb {
                    guid: id.guid.clone(),
                    age: id.age,
                    database: id.name.clone(),
                    machine_type: Some(0x8664),
                },
            }),
            producer: None,
        },
        base_types: base
            .iter()
            .map(|(n, (size, signed))| {
                (
                    n.clone(),
                    BaseType {
                        size: *size,
                        signed: *signed,
                        kind: None,
                        endian: None,
                    },
                )
            })
            .collect(),
        user_types: udts
            .iter()
            .map(|(n, u)| {
                (
                    n.clone(),
                    UserType {
                        kind: match u.kind {
                            UdtKind::Struct => "struct".into(),
                            UdtKind::Union => "union".into(),
                        },
                        size: u.size,
                        fields: u
                            .fields
                            .iter()
                            .map(|f| {
                                (
                                    f.name.clone(),
                                    IsfField {
                                        offset: f.offset,
                                        ty: unconvert(&f.ty),
                                    },
                                )
                            })
                            .collect(),
                    },
                )
            })
            .collect(),
        enums: enums
            .iter()
            .map(|(n, e)| {
                (
                    n.clone(),
                    IsfEnum {
                        base: "int".into(),
                        size: Some(e.size),
                        constants: e.constants.iter().cloned().collect(),
                    },
                )
            })
            .collect(),
        symbols: symbols
            .iter()
            .map(|(n, a)| (n.clone(), IsfSymbol { address: *a }))
            .collect(),
    };
    let mut s = serde_json::to_string_pretty(&file).unwrap_or_default();
    s.push('\n');
    s
}
