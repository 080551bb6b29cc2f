//! PDB files (MSF 7.00): public symbols and types, read with the `pdb2` crate into a
//! [`TypeTable`].

use std::collections::HashMap;
use std::io::Cursor;
use std::path::Path;

use pdb2::{FallibleIterator, PDB, PrimitiveKind, TypeData, TypeIndex, TypeInformation};

use crate::SymError;
use crate::table::{Enum, Field, PdbId, Ty, TypeTable, Udt, UdtKind};

/// Largest PDB read into memory.
pub const MAX_PDB_BYTES: u64 = 1 << 30;

fn fmt_err(path: &str, e: impl std::fmt::Display) -> SymError {
    SymError::Format {
        path: path.to_string(),
        message: e.to_string(),
    }
}

/// Reads a PDB file.
pub fn load_file(path: &Path) -> Result<TypeTable, SymError> {
    let meta = std::fs::metadata(path).map_err(|e| SymError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    if meta.len() > MAX_PDB_BYTES {
        return Err(fmt_err(&path.display().to_string(), "file is too large"));
    }
    let bytes = std::fs::read(path).map_err(|e| SymError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let name = path
        .file_name()
        .map_or("?".to_string(), |n| n.to_string_lossy().into_owned());
    parse(bytes, &name).map_err(|e| match e {
        SymError::Format { message, .. } => fmt_err(&path.display().to_string(), message),
        other => other,
    })
}

/// Runs the PDB reader so that a fault inside it on a malformed file (the reader asserts on
/// some impossible encodings) becomes an error instead of taking the process down.
fn contained<T>(name: &str, f: impl FnOnce() -> Result<T, SymError>) -> Result<T, SymError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => Err(fmt_err(
            name,
            "malformed PDB: the reader rejected an impossible record",
        )),
    }
}

/// The identity recorded in a PDB (GUID and age), without reading its types.
pub fn identity(bytes: Vec<u8>, name: &str) -> Result<PdbId, SymError> {
    contained(name, || identity_inner(bytes, name))
}

fn identity_inner(bytes: Vec<u8>, name: &str) -> Result<PdbId, SymError> {
    let mut pdb = PDB::open(Cursor::new(bytes)).map_err(|e| fmt_err(name, e))?;
    let info = pdb.pdb_information().map_err(|e| fmt_err(name, e))?;
    let (d1, d2, d3, d4) = info.guid.as_fields();
    let mut g = format!("{d1:08X}{d2:04X}{d3:04X}");
    for b in d4 {
        g.push_str(&format!("{b:02X}"));
    }
    let dbi_age = pdb.debug_information().ok().and_then(|d| d.age());
    Ok(PdbId {
        guid: g,
        age: dbi_age.unwrap_or(info.age),
        name: name.to_string(),
    })
}

/// Parses a PDB's public symbols and types.
pub fn parse(bytes: Vec<u8>, name: &str) -> Result<TypeTable, SymError> {
    contained(name, || parse_inner(bytes, name))
}

fn parse_inner(bytes: Vec<u8>, name: &str) -> Result<TypeTable, SymError> {
    let id = identity_inner(bytes.clone(), name)?;
    let mut pdb = PDB::open(Cursor::new(bytes)).map_err(|e| fmt_err(name, e))?;
    let mut table = TypeTable::new(Some(id));
    for (n, size, signed) in [
        ("char", 1, true),
        ("unsigned char", 1, false),
        ("short", 2, true),
        ("unsigned short", 2, false),
        ("long", 4, true),
        ("unsigned long", 4, false),
        ("int", 4, true),
        ("unsigned int", 4, false),
        ("long long", 8, true),
        ("unsigned long long", 8, false),
        ("wchar", 2, false),
        ("pointer", 8, false),
    ] {
        table.insert_base(n, size, signed);
    }
    // Public symbols, as RVAs.
    if let (Ok(symbols), Ok(map)) = (pdb.global_symbols(), pdb.address_map()) {
        let mut it = symbols.iter();
        let mut guard = 0usize;
        while let Ok(Some(sym)) = it.next() {
            guard += 1;
            if guard > 5_000_000 {
                break;
            }
            if let Ok(pdb2::SymbolData::Public(p)) = sym.parse()
                && let Some(rva) = p.offset.to_rva(&map)
            {
                let n = p.name.to_string();
                table.insert_symbol(&n, u64::from(rva.0));
            }
        }
    }
    // Types.
    if let Ok(tpi) = pdb.type_information() {
        read_types(&tpi, &mut table).map_err(|e| fmt_err(name, e))?;
    }
    table.finish();
    Ok(table)
}

/// A type's name in the table. Unnamed structs and unions (`<unnamed-tag>`, `<anonymous-tag>`)
/// all share one name in a PDB (even their decorated unique names repeat), so each gets its own
/// entry as `<unnamed-tag>#<type index>`; the members that use one refer to its definition's
/// index. `dt` shows it as `<unnamed-tag>`.
fn udt_name(name: &pdb2::RawString<'_>, index: TypeIndex) -> String {
    let n = name.to_string();
    if n.starts_with('<') || n.is_empty() {
        format!("<unnamed-tag>#{}", index.0)
    } else {
        n.into_owned()
    }
}

struct Conv<'a, 't> {
    finder: &'a pdb2::TypeFinder<'t>,
    memo: HashMap<u32, Ty>,
}

impl<'a, 't> Conv<'a, 't> {
    fn ty(&mut self, idx: TypeIndex, depth: u32) -> Ty {
        if let Some(t) = self.memo.get(&idx.0) {
            return t.clone();
        }
        let t = if depth > 32 {
            Ty::Void
        } else {
            match self.finder.find(idx).and_then(|i| i.parse()) {
                Ok(TypeData::Primitive(p)) => {
                    let (name, size, signed) = primitive(p.kind);
                    let base = if size == 0 {
                        Ty::Void
                    } else {
                        Ty::Base {
                            name: name.into(),
                            size,
                            signed,
                        }
                    };
                    if p.indirection.is_some() {
                        Ty::Pointer(Box::new(base))
                    } else {
                        base
                    }
                }
                Ok(TypeData::Pointer(p)) => {
                    Ty::Pointer(Box::new(self.ty(p.underlying_type, depth + 1)))
                }
                Ok(TypeData::Modifier(m)) => self.ty(m.underlying_type, depth + 1),
                Ok(TypeData::Class(c)) => Ty::Udt(udt_name(&c.name, idx)),
                Ok(TypeData::Union(u)) => Ty::Udt(udt_name(&u.name, idx)),
                Ok(TypeData::Enumeration(e)) => Ty::Enum(e.name.to_string().into_owned()),
                Ok(TypeData::Array(a)) => {
                    let elem = self.ty(a.element_type, depth + 1);
                    let total = u64::from(a.dimensions.last().copied().unwrap_or(0));
                    let esize = self.size_hint(&elem).max(1);
                    Ty::Array {
                        count: total / esize,
                        elem: Box::new(elem),
                    }
                }
                Ok(TypeData::Bitfield(b)) => Ty::Bitfield {
                    pos: u32::from(b.position),
                    len: u32::from(b.length).max(1),
                    base: Box::new(self.ty(b.underlying_type, depth + 1)),
                },
                Ok(TypeData::Procedure(_)) | Ok(TypeData::MemberFunction(_)) => Ty::Function,
                _ => Ty::Void,
            }
        };
        self.memo.insert(idx.0, t.clone());
        t
    }

    /// Size of a converted type where it can be known without the full table.
    fn size_hint(&self, t: &Ty) -> u64 {
        match t {
            Ty::Base { size, .. } => *size,
            Ty::Pointer(_) => 8,
            Ty::Array { count, elem } => count.saturating_mul(self.size_hint(elem)),
            Ty::Bitfield { base, .. } => self.size_hint(base),
            Ty::Enum(_) => 4,
            _ => 0,
        }
    }
}

fn primitive(k: PrimitiveKind) -> (&'static str, u64, bool) {
    use PrimitiveKind::*;
    match k {
        Void | NoType => ("void", 0, false),
        Char | RChar | I8 => ("char", 1, true),
        UChar | U8 | Char8 | Bool8 => ("unsigned char", 1, false),
        WChar | RChar16 => ("wchar", 2, false),
        Short | I16 => ("short", 2, true),
        UShort | U16 | Bool16 => ("unsigned short", 2, false),
        Long | I32 => ("long", 4, true),
        ULong | U32 | Bool32 | RChar32 => ("unsigned long", 4, false),
        HRESULT => ("HRESULT", 4, false),
        Quad | I64 => ("long long", 8, true),
        UQuad | U64 | Bool64 => ("unsigned long long", 8, false),
        F32 => ("float", 4, true),
        F64 => ("double", 8, true),
        _ => ("unsigned char", 1, false),
    }
}

fn read_types(tpi: &TypeInformation<'_>, table: &mut TypeTable) -> pdb2::Result<()> {
    let mut finder = tpi.finder();
    let mut it = tpi.iter();
    let mut records = Vec::new();
    while let Some(t) = it.next()? {
        finder.update(&it);
        records.push(t.index());
        if records.len() > 10_000_000 {
            break;
        }
    }
    let mut conv = Conv {
        finder: &finder,
        memo: HashMap::new(),
    };
    for idx in records {
        let Ok(data) = finder.find(idx).and_then(|i| i.parse()) else {
            continue;
        };
        match data {
            TypeData::Class(c) if !c.properties.forward_reference() => {
                let fields = collect_fields(&finder, &mut conv, c.fields);
                table.insert_udt(Udt {
                    name: udt_name(&c.name, idx),
                    kind: UdtKind::Struct,
                    size: c.size,
                    fields,
                });
            }
            TypeData::Union(u) if !u.properties.forward_reference() => {
                let fields = collect_fields(&finder, &mut conv, Some(u.fields));
                table.insert_udt(Udt {
                    name: udt_name(&u.name, idx),
                    kind: UdtKind::Union,
                    size: u.size,
                    fields,
                });
            }
            TypeData::Enumeration(e) if !e.properties.forward_reference() => {
                let mut constants = Vec::new();
                let mut next = Some(e.fields);
                let mut hops = 0;
                while let Some(fi) = next.take() {
                    hops += 1;
                    if hops > 64 {
                        break;
                    }
                    if let Ok(TypeData::FieldList(list)) = finder.find(fi).and_then(|i| i.parse()) {
                        for f in list.fields {
                            if let TypeData::Enumerate(en) = f {
                                constants
                                    .push((en.name.to_string().into_owned(), variant(&en.value)));
                            }
                        }
                        next = list.continuation;
                    }
                }
                let size = match conv.ty(e.underlying_type, 0) {
                    Ty::Base { size, .. } => size,
                    _ => 4,
                };
                table.insert_enum(Enum {
                    name: e.name.to_string().into_owned(),
                    size,
                    constants,
                });
            }
            _ => {}
        }
    }
    Ok(())
}

fn variant(v: &pdb2::Variant) -> i64 {
    use pdb2::Variant::*;
    match *v {
        U8(x) => i64::from(x),
        U16(x) => i64::from(x),
        U32(x) => i64::from(x),
        U64(x) => x as i64,
        I8(x) => i64::from(x),
        I16(x) => i64::from(x),
        I32(x) => i64::from(x),
        I64(x) => x,
    }
}

fn collect_fields(
    finder: &pdb2::TypeFinder<'_>,
    conv: &mut Conv<'_, '_>,
    first: Option<TypeIndex>,
) -> Vec<Field> {
    let mut out = Vec::new();
    let mut next = first;
    let mut hops = 0;
    while let Some(fi) = next.take() {
        hops += 1;
        if hops > 256 {
            break;
        }
        let Ok(TypeData::FieldList(list)) = finder.find(fi).and_then(|i| i.parse()) else {
            break;
        };
        for f in list.fields {
            if let TypeData::Member(m) = f {
                out.push(Field {
                    name: m.name.to_string().into_owned(),
                    offset: m.offset,
                    ty: conv.ty(m.field_type, 0),
                });
            }
        }
        next = list.continuation;
    }
    out
}
