//! PDB files (MSF 7.00): public symbols and types into a [`TypeTable`].
//!
//! Every number a PDB holds is checked before it sizes anything: the container (page size, page
//! count, stream directory, every stream's size and pages) by [`crate::msf`], then the headers of
//! the type streams (TPI, IPI) and of the debug-information stream (DBI) against their streams,
//! all before any stream is handed on. The types are read here, record by record, from the
//! checked type stream: a record's counts never size an allocation, a member list is walked
//! without recursion, and the member lists read for all types together are bounded by the size
//! of the stream, so a malformed file is an error value whatever memory limit the process runs
//! under. The public symbols and their section-relative addresses are read with the `pdb2`
//! crate, only after the checks, and only the public-symbol records are decoded (a fault inside
//! that reader is contained and becomes an error).

use kdnet_arch::le::{u16_at, u32_at};
use std::collections::HashMap;
use std::io::Cursor;
use std::path::Path;

use pdb2::{FallibleIterator, PDB};

use crate::SymError;
use crate::msf::Msf;
use crate::table::{Enum, Field, PdbId, Ty, TypeTable, Udt, UdtKind};

/// Largest PDB read into memory.
pub const MAX_PDB_BYTES: u64 = 1 << 30;

/// Stream numbers of the fixed streams.
const PDB_INFO_STREAM: usize = 1;
const TPI_STREAM: usize = 2;
const DBI_STREAM: usize = 3;
const IPI_STREAM: usize = 4;
/// A stream number meaning "none".
const NO_STREAM: u16 = 0xFFFF;
/// Public symbol records (`S_PUB32`, and `S_PUB32_ST` of older linkers): the only symbol
/// records decoded.
const S_PUB32: u16 = 0x110e;
const S_PUB32_ST: u16 = 0x1009;
/// Most symbol records read.
const MAX_SYMBOL_RECORDS: usize = 5_000_000;
/// Most member lists one type's list continues into.
const MAX_CONTINUATIONS: usize = 256;
/// Deepest chain of pointers, modifiers, arrays and bitfields followed for one member.
const MAX_TYPE_DEPTH: u32 = 32;

fn fmt_err(path: &str, e: impl std::fmt::Display) -> SymError {
    SymError::Format {
        path: path.to_string(),
        message: e.to_string(),
    }
}

fn malformed(path: &str, e: impl std::fmt::Display) -> SymError {
    fmt_err(path, format!("malformed PDB: {e}"))
}

/// Reads a PDB file.
pub fn load_file(path: &Path) -> Result<TypeTable, SymError> {
    let meta = std::fs::metadata(path).map_err(|e| SymError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    if meta.len() > MAX_PDB_BYTES {
        return Err(fmt_err(
            &path.display().to_string(),
            format!(
                "file is too large ({} bytes; at most {MAX_PDB_BYTES} are read)",
                meta.len()
            ),
        ));
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

/// Runs the PDB reader so that a fault inside it on a malformed file (the `pdb2` reader asserts
/// on some impossible encodings) becomes an error instead of taking the process down.
fn contained<T>(name: &str, f: impl FnOnce() -> Result<T, SymError>) -> Result<T, SymError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => Err(malformed(name, "the reader rejected an impossible record")),
    }
}

/// The identity recorded in a PDB (GUID and age), without reading its types.
pub fn identity(bytes: Vec<u8>, name: &str) -> Result<PdbId, SymError> {
    contained(name, || {
        let msf = Msf::open(&bytes).map_err(|m| malformed(name, m))?;
        check_streams(&msf).map_err(|m| malformed(name, m))?;
        identity_of(&msf, name)
    })
}

/// Parses a PDB's public symbols and types.
pub fn parse(bytes: Vec<u8>, name: &str) -> Result<TypeTable, SymError> {
    contained(name, || parse_inner(&bytes, name))
}

/// The header of a type stream (TPI or IPI), checked against the stream.
#[derive(Debug, Clone, Copy)]
struct TpiHeader {
    /// First type index (indices below are primitive types).
    min: u32,
    /// Number of records.
    count: u32,
    /// Where the records start and end in the stream.
    records: (usize, usize),
}

fn tpi_header(s: &[u8], what: &str, streams: usize) -> Result<Option<TpiHeader>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    let field = |at: usize| u32_at(s, at).unwrap_or(0);
    if s.len() < 56 {
        return Err(format!(
            "the {what} stream is {} bytes, shorter than its 56-byte header",
            s.len()
        ));
    }
    let header_size = field(4) as usize;
    let (min, max, record_bytes) = (field(8), field(12), field(16) as usize);
    if header_size < 56 || header_size > s.len() {
        return Err(format!(
            "the {what} header claims {header_size} bytes in a stream of {}",
            s.len()
        ));
    }
    if min < 0x1000 || max < min {
        return Err(format!(
            "the {what} header's type indices run from {min:#x} to {max:#x}"
        ));
    }
    if record_bytes > s.len() - header_size {
        return Err(format!(
            "the {what} header claims {record_bytes} bytes of records, the stream holds {}",
            s.len() - header_size
        ));
    }
    let count = max - min;
    // Every record has a length and a kind: 4 bytes at least.
    if u64::from(count) * 4 > record_bytes as u64 {
        return Err(format!(
            "the {what} header claims {count} records in {record_bytes} bytes"
        ));
    }
    for at in [20, 22] {
        let st = u16_at(s, at).unwrap_or(NO_STREAM);
        if st != NO_STREAM && usize::from(st) >= streams {
            return Err(format!(
                "the {what} header names hash stream {st}; the file has {streams} streams"
            ));
        }
    }
    Ok(Some(TpiHeader {
        min,
        count,
        records: (header_size, header_size + record_bytes),
    }))
}

/// Checks the DBI header's sizes and stream numbers against the stream and the file.
fn check_dbi(s: &[u8], streams: usize) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    if s.len() < 64 {
        return Err(format!(
            "the DBI stream is {} bytes, shorter than its 64-byte header",
            s.len()
        ));
    }
    if u32_at(s, 0) != Some(u32::MAX) {
        return Err("the DBI header predates Visual C++ 7 (not read)".into());
    }
    let stream_ok = |st: u16| st == NO_STREAM || usize::from(st) < streams;
    for (at, what) in [
        (12, "global symbol"),
        (16, "public symbol"),
        (20, "symbol record"),
    ] {
        let st = u16_at(s, at).unwrap_or(NO_STREAM);
        if !stream_ok(st) {
            return Err(format!(
                "the DBI header names {what} stream {st}; the file has {streams} streams"
            ));
        }
    }
    // Substreams in file order: modules, section contributions, section map, files, type
    // servers, EC names, then the optional debug header.
    let mut total = 64u64;
    let mut sizes = [0u64; 7];
    for (i, (at, what)) in [
        (24, "module"),
        (28, "section contribution"),
        (32, "section map"),
        (36, "file"),
        (40, "type server"),
        (52, "EC name"),
        (48, "debug header"),
    ]
    .into_iter()
    .enumerate()
    {
        let v = u32_at(s, at).unwrap_or(0) as i32;
        if v < 0 {
            return Err(format!("the DBI {what} substream has size {v}"));
        }
        sizes[i] = v as u64;
        total += v as u64;
    }
    if total > s.len() as u64 {
        return Err(format!(
            "the DBI substreams claim {total} bytes, the stream holds {}",
            s.len()
        ));
    }
    let debug_at = (total - sizes[6]) as usize;
    for i in 0..(sizes[6] / 2) as usize {
        let st = u16_at(s, debug_at + 2 * i).unwrap_or(NO_STREAM);
        if !stream_ok(st) {
            return Err(format!(
                "the DBI debug header names stream {st}; the file has {streams} streams"
            ));
        }
    }
    Ok(())
}

/// The checks on the fixed streams that any reader of the file relies on.
fn check_streams(msf: &Msf<'_>) -> Result<(), String> {
    let n = msf.stream_count();
    if msf.stream_len(PDB_INFO_STREAM).unwrap_or(0) < 32 {
        return Err("no PDB information stream".into());
    }
    tpi_header(&msf.stream(TPI_STREAM), "TPI", n)?;
    tpi_header(&msf.stream(IPI_STREAM), "IPI", n)?;
    check_dbi(&msf.stream(DBI_STREAM), n)
}

fn identity_of(msf: &Msf<'_>, name: &str) -> Result<PdbId, SymError> {
    let info = msf.stream(PDB_INFO_STREAM);
    let age = u32_at(&info, 8).unwrap_or(0);
    let mut guid = [0u8; 16];
    guid.copy_from_slice(
        info.get(12..28)
            .ok_or_else(|| malformed(name, "no PDB information stream"))?,
    );
    // The DBI stream's age is the one images record; the information stream's is the fallback.
    let dbi = msf.stream(DBI_STREAM);
    let dbi_age = u32_at(&dbi, 8).filter(|a| *a != 0 && dbi.len() >= 64);
    Ok(PdbId {
        guid: PdbId::guid_from_bytes(&guid),
        age: dbi_age.unwrap_or(age),
        name: name.to_string(),
    })
}

fn parse_inner(bytes: &[u8], name: &str) -> Result<TypeTable, SymError> {
    let msf = Msf::open(bytes).map_err(|m| malformed(name, m))?;
    check_streams(&msf).map_err(|m| malformed(name, m))?;
    let id = identity_of(&msf, name)?;
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
    if msf.stream_len(DBI_STREAM).unwrap_or(0) > 0 {
        read_publics(bytes, &mut table).map_err(|e| malformed(name, e))?;
    }
    let tpi = msf.stream(TPI_STREAM);
    if let Some(h) = tpi_header(&tpi, "TPI", msf.stream_count()).map_err(|m| malformed(name, m))? {
        let types = Types::new(&tpi, h).map_err(|m| malformed(name, m))?;
        types.read(&mut table).map_err(|m| malformed(name, m))?;
    }
    table.finish();
    Ok(table)
}

/// Public symbols, as RVAs (read with `pdb2` from the checked file; only `S_PUB32` records are
/// decoded).
fn read_publics(bytes: &[u8], table: &mut TypeTable) -> Result<(), String> {
    let mut pdb = PDB::open(Cursor::new(bytes)).map_err(|e| e.to_string())?;
    let symbols = pdb
        .global_symbols()
        .map_err(|e| format!("symbol records: {e}"))?;
    let map = pdb
        .address_map()
        .map_err(|e| format!("section headers: {e}"))?;
    let mut it = symbols.iter();
    let mut records = 0usize;
    let mut decorated: Vec<(String, String, u64)> = Vec::new();
    while let Some(sym) = it.next().map_err(|e| format!("symbol records: {e}"))? {
        records += 1;
        if records > MAX_SYMBOL_RECORDS {
            return Err(format!("more than {MAX_SYMBOL_RECORDS} symbol records"));
        }
        if !matches!(sym.raw_kind(), S_PUB32 | S_PUB32_ST) {
            continue;
        }
        if let Ok(pdb2::SymbolData::Public(p)) = sym.parse()
            && let Some(rva) = p.offset.to_rva(&map)
        {
            let name = p.name.to_string().into_owned();
            match undecorate(&name) {
                Some(plain) => decorated.push((plain, name, u64::from(rva.0))),
                None => table.insert_symbol(&name, u64::from(rva.0)),
            }
        }
    }
    // A decorated public goes by the name a debugger shows and its user types; where that name
    // is taken (a C export of the same name), by its decorated one.
    for (plain, name, rva) in decorated {
        if table.symbol(&plain).is_none() {
            table.insert_symbol(&plain, rva);
        } else {
            table.insert_symbol(&name, rva);
        }
    }
    Ok(())
}

// ---- type records ----

// Leaf kinds (CodeView `LF_*`), the `_ST` forms being those of older compilers with
// length-prefixed names.
const LF_MODIFIER: u16 = 0x1001;
const LF_POINTER: u16 = 0x1002;
const LF_ARRAY_ST: u16 = 0x1003;
const LF_CLASS_ST: u16 = 0x1004;
const LF_STRUCTURE_ST: u16 = 0x1005;
const LF_UNION_ST: u16 = 0x1006;
const LF_ENUM_ST: u16 = 0x1007;
const LF_PROCEDURE: u16 = 0x1008;
const LF_MFUNCTION: u16 = 0x1009;
const LF_FIELDLIST: u16 = 0x1203;
const LF_BITFIELD: u16 = 0x1205;
const LF_BCLASS: u16 = 0x1400;
const LF_VBCLASS: u16 = 0x1401;
const LF_IVBCLASS: u16 = 0x1402;
const LF_FRIENDFCN_ST: u16 = 0x1403;
const LF_INDEX: u16 = 0x1404;
const LF_MEMBER_ST: u16 = 0x1405;
const LF_STMEMBER_ST: u16 = 0x1406;
const LF_METHOD_ST: u16 = 0x1407;
const LF_NESTTYPE_ST: u16 = 0x1408;
const LF_VFUNCTAB: u16 = 0x1409;
const LF_FRIENDCLS: u16 = 0x140a;
const LF_ONEMETHOD_ST: u16 = 0x140b;
const LF_VFUNCOFF: u16 = 0x140c;
const LF_NESTTYPEEX_ST: u16 = 0x140d;
const LF_MEMBERMODIFY_ST: u16 = 0x140e;
const LF_ENUMERATE_ST: u16 = 0x0403;
/// Kinds up to this one carry length-prefixed names.
const LF_ST_MAX: u16 = 0x1500;
const LF_ENUMERATE: u16 = 0x1502;
const LF_ARRAY: u16 = 0x1503;
const LF_CLASS: u16 = 0x1504;
const LF_STRUCTURE: u16 = 0x1505;
const LF_UNION: u16 = 0x1506;
const LF_ENUM: u16 = 0x1507;
const LF_FRIENDFCN: u16 = 0x150c;
const LF_MEMBER: u16 = 0x150d;
const LF_STMEMBER: u16 = 0x150e;
const LF_METHOD: u16 = 0x150f;
const LF_NESTTYPE: u16 = 0x1510;
const LF_ONEMETHOD: u16 = 0x1511;
const LF_NESTTYPEEX: u16 = 0x1512;
const LF_MEMBERMODIFY: u16 = 0x1513;
const LF_STRIDED_ARRAY: u16 = 0x1516;
const LF_INTERFACE: u16 = 0x1519;
const LF_BINTERFACE: u16 = 0x151a;
const LF_CLASS2: u16 = 0x1608;
const LF_STRUCTURE2: u16 = 0x1609;
const LF_UNION2: u16 = 0x160a;
const LF_INTERFACE2: u16 = 0x160b;
// Numeric leaves.
const LF_NUMERIC: u16 = 0x8000;
const LF_CHAR: u16 = 0x8000;
const LF_SHORT: u16 = 0x8001;
const LF_USHORT: u16 = 0x8002;
const LF_LONG: u16 = 0x8003;
const LF_ULONG: u16 = 0x8004;
const LF_QUADWORD: u16 = 0x8009;
const LF_UQUADWORD: u16 = 0x800a;
/// The forward-reference bit of a UDT's properties.
const PROP_FWDREF: u32 = 0x80;

/// A cursor over one record.
struct Cur<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cur<'a> {
    fn new(b: &'a [u8]) -> Cur<'a> {
        Cur { b, at: 0 }
    }
    fn is_empty(&self) -> bool {
        self.at >= self.b.len()
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or("a record ends early")?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, String> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
    /// A name: zero-terminated, or length-prefixed for the `_ST` kinds.
    fn name(&mut self, kind: u16) -> Result<&'a [u8], String> {
        if kind > LF_ST_MAX {
            let rest = &self.b[self.at.min(self.b.len())..];
            let n = rest
                .iter()
                .position(|c| *c == 0)
                .ok_or("a name runs past its record")?;
            self.at += n + 1;
            Ok(&rest[..n])
        } else {
            let n = self.u8()?;
            self.take(usize::from(n))
        }
    }
    /// A numeric leaf as a signed value.
    fn signed(&mut self) -> Result<i64, String> {
        let leaf = self.u16()?;
        if leaf < LF_NUMERIC {
            return Ok(i64::from(leaf));
        }
        Ok(match leaf {
            LF_CHAR => i64::from(self.u8()? as i8),
            LF_SHORT => i64::from(self.u16()? as i16),
            LF_USHORT => i64::from(self.u16()?),
            LF_LONG => i64::from(self.u32()? as i32),
            LF_ULONG => i64::from(self.u32()?),
            LF_QUADWORD | LF_UQUADWORD => self.u64()? as i64,
            other => return Err(format!("numeric leaf of kind {other:#x}")),
        })
    }
    /// A numeric leaf that must not be negative (sizes, offsets).
    fn unsigned(&mut self) -> Result<u64, String> {
        let leaf = self.u16()?;
        if leaf < LF_NUMERIC {
            return Ok(u64::from(leaf));
        }
        let v = match leaf {
            LF_CHAR => i64::from(self.u8()?),
            LF_SHORT => i64::from(self.u16()? as i16),
            LF_USHORT => i64::from(self.u16()?),
            LF_LONG => i64::from(self.u32()? as i32),
            LF_ULONG => i64::from(self.u32()?),
            LF_QUADWORD => self.u64()? as i64,
            LF_UQUADWORD => return self.u64(),
            other => return Err(format!("numeric leaf of kind {other:#x}")),
        };
        u64::try_from(v).map_err(|_| format!("negative size or offset {v}"))
    }
    /// Skips the padding (`LF_PAD0`..`LF_PAD15`) between members.
    fn padding(&mut self) -> Result<(), String> {
        while let Some(&p) = self.b.get(self.at) {
            if p < 0xf0 {
                break;
            }
            self.at += 1;
            if p > 0xf0 {
                self.take(usize::from(p & 0x0f) - 1)?;
            }
        }
        Ok(())
    }
}

/// A type record in the terms the table needs.
enum Leaf<'a> {
    Pointer(u32),
    Modifier(u32),
    Udt {
        union: bool,
        fwd: bool,
        fields: u32,
        size: u64,
        name: &'a [u8],
    },
    Enum {
        fwd: bool,
        underlying: u32,
        fields: u32,
        name: &'a [u8],
    },
    Array {
        elem: u32,
        bytes: u64,
    },
    Bitfield {
        base: u32,
        len: u8,
        pos: u8,
    },
    Function,
    /// Anything else (member lists are read on their own).
    Other,
}

fn leaf(rec: &[u8]) -> Result<Leaf<'_>, String> {
    let mut c = Cur::new(rec);
    let kind = c.u16()?;
    Ok(match kind {
        LF_POINTER => Leaf::Pointer(c.u32()?),
        LF_MODIFIER => Leaf::Modifier(c.u32()?),
        LF_CLASS | LF_CLASS_ST | LF_STRUCTURE | LF_STRUCTURE_ST | LF_INTERFACE => {
            c.u16()?;
            let props = u32::from(c.u16()?);
            let fields = c.u32()?;
            c.u32()?;
            c.u32()?;
            let size = c.unsigned()?;
            Leaf::Udt {
                union: false,
                fwd: props & PROP_FWDREF != 0,
                fields,
                size,
                name: c.name(kind)?,
            }
        }
        LF_CLASS2 | LF_STRUCTURE2 | LF_INTERFACE2 => {
            let props = c.u32()?;
            let fields = c.u32()?;
            c.u32()?;
            c.u32()?;
            c.u16()?;
            let size = c.unsigned()?;
            Leaf::Udt {
                union: false,
                fwd: props & PROP_FWDREF != 0,
                fields,
                size,
                name: c.name(kind)?,
            }
        }
        LF_UNION | LF_UNION_ST => {
            c.u16()?;
            let props = u32::from(c.u16()?);
            let fields = c.u32()?;
            let size = c.unsigned()?;
            Leaf::Udt {
                union: true,
                fwd: props & PROP_FWDREF != 0,
                fields,
                size,
                name: c.name(kind)?,
            }
        }
        LF_UNION2 => {
            let props = c.u32()?;
            let fields = c.u32()?;
            c.u16()?;
            let size = c.unsigned()?;
            Leaf::Udt {
                union: true,
                fwd: props & PROP_FWDREF != 0,
                fields,
                size,
                name: c.name(kind)?,
            }
        }
        LF_ENUM | LF_ENUM_ST => {
            c.u16()?;
            let props = u32::from(c.u16()?);
            let underlying = c.u32()?;
            let fields = c.u32()?;
            Leaf::Enum {
                fwd: props & PROP_FWDREF != 0,
                underlying,
                fields,
                name: c.name(kind)?,
            }
        }
        LF_ARRAY | LF_ARRAY_ST | LF_STRIDED_ARRAY => {
            let elem = c.u32()?;
            c.u32()?;
            if kind == LF_STRIDED_ARRAY {
                c.u32()?;
            }
            Leaf::Array {
                elem,
                bytes: c.unsigned()?,
            }
        }
        LF_BITFIELD => Leaf::Bitfield {
            base: c.u32()?,
            len: c.u8()?,
            pos: c.u8()?,
        },
        LF_PROCEDURE | LF_MFUNCTION => Leaf::Function,
        _ => Leaf::Other,
    })
}

/// One entry of a member list, in the terms the table needs.
enum Member<'a> {
    Data {
        name: &'a [u8],
        ty: u32,
        offset: u64,
    },
    Constant {
        name: &'a [u8],
        value: i64,
    },
    Continue(u32),
    /// A non-virtual base class and where it lies in the derived one.
    Base {
        ty: u32,
        offset: u64,
    },
    Other,
}

/// Reads the member list record `rec` (kind included) without recursion.
fn members(rec: &[u8]) -> Result<Vec<Member<'_>>, String> {
    let mut c = Cur::new(rec);
    if c.u16()? != LF_FIELDLIST {
        return Err("a member list reference names another kind of record".into());
    }
    let mut out = Vec::new();
    while !c.is_empty() {
        let kind = c.u16()?;
        let m = match kind {
            LF_MEMBER | LF_MEMBER_ST => {
                c.u16()?;
                let ty = c.u32()?;
                let offset = c.unsigned()?;
                Member::Data {
                    name: c.name(kind)?,
                    ty,
                    offset,
                }
            }
            LF_ENUMERATE | LF_ENUMERATE_ST => {
                c.u16()?;
                let value = c.signed()?;
                Member::Constant {
                    name: c.name(kind)?,
                    value,
                }
            }
            LF_INDEX => {
                c.u16()?;
                Member::Continue(c.u32()?)
            }
            LF_STMEMBER | LF_STMEMBER_ST | LF_NESTTYPE | LF_NESTTYPE_ST | LF_NESTTYPEEX
            | LF_NESTTYPEEX_ST | LF_FRIENDFCN | LF_FRIENDFCN_ST | LF_MEMBERMODIFY
            | LF_MEMBERMODIFY_ST => {
                c.u16()?;
                c.u32()?;
                c.name(kind)?;
                Member::Other
            }
            LF_METHOD | LF_METHOD_ST => {
                c.u16()?;
                c.u32()?;
                c.name(kind)?;
                Member::Other
            }
            LF_ONEMETHOD | LF_ONEMETHOD_ST => {
                let attr = c.u16()?;
                c.u32()?;
                // An introducing virtual method carries its vtable offset.
                if matches!((attr >> 2) & 7, 4 | 6) {
                    c.u32()?;
                }
                c.name(kind)?;
                Member::Other
            }
            LF_BCLASS | LF_BINTERFACE => {
                c.u16()?;
                let ty = c.u32()?;
                let offset = c.unsigned()?;
                Member::Base { ty, offset }
            }
            LF_VBCLASS | LF_IVBCLASS => {
                c.u16()?;
                c.u32()?;
                c.u32()?;
                c.unsigned()?;
                c.unsigned()?;
                Member::Other
            }
            LF_VFUNCTAB | LF_FRIENDCLS => {
                c.u16()?;
                c.u32()?;
                Member::Other
            }
            LF_VFUNCOFF => {
                c.u16()?;
                c.u32()?;
                c.u32()?;
                Member::Other
            }
            other => return Err(format!("member record of unknown kind {other:#x}")),
        };
        out.push(m);
        c.padding()?;
    }
    Ok(out)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A type's name in the table. Unnamed structs and unions (`<unnamed-tag>`, `<anonymous-tag>`)
/// all share one name in a PDB (even their decorated unique names repeat), so each gets its own
/// entry as `<unnamed-tag>#<type index>`; the members that use one refer to its definition's
/// index. `dt` shows it as `<unnamed-tag>`.
fn udt_name(name: &[u8], index: u32) -> String {
    if name.starts_with(b"<") || name.is_empty() {
        format!("<unnamed-tag>#{index}")
    } else {
        text(name)
    }
}

/// A primitive type (index below 0x1000): its name, size and signedness, or `None` for `void`
/// and kinds that are not known.
fn primitive(index: u32) -> Option<(&'static str, u64, bool)> {
    Some(match index & 0xff {
        0x10 | 0x70 | 0x68 => ("char", 1, true),
        0x20 | 0x69 | 0x7c | 0x30 => ("unsigned char", 1, false),
        0x71 | 0x7a => ("wchar", 2, false),
        0x11 | 0x72 => ("short", 2, true),
        0x21 | 0x73 | 0x31 => ("unsigned short", 2, false),
        0x12 | 0x74 => ("long", 4, true),
        0x22 | 0x75 | 0x32 | 0x7b => ("unsigned long", 4, false),
        0x08 => ("HRESULT", 4, false),
        0x13 | 0x76 => ("long long", 8, true),
        0x23 | 0x77 | 0x33 => ("unsigned long long", 8, false),
        0x14 | 0x78 => ("__int128", 16, true),
        0x24 | 0x79 => ("unsigned __int128", 16, false),
        0x46 => ("half", 2, true),
        0x40 | 0x45 => ("float", 4, true),
        0x44 => ("float48", 6, true),
        0x41 => ("double", 8, true),
        0x42 => ("long double", 10, true),
        0x43 => ("float128", 16, true),
        _ => return None,
    })
}

/// The checked type stream: every record's place, found once.
struct Types<'a> {
    tpi: &'a [u8],
    min: u32,
    /// (start, length) of each record (kind included) in `tpi`.
    records: Vec<(u32, u16)>,
}

/// What reading the types may still spend on member lists, in bytes of records walked.
struct Budget(u64);

impl<'a> Types<'a> {
    fn new(tpi: &'a [u8], h: TpiHeader) -> Result<Types<'a>, String> {
        let (mut at, end) = h.records;
        let mut records = Vec::with_capacity(h.count as usize);
        while at < end {
            let len = u16_at(tpi, at)
                .filter(|_| at + 2 <= end)
                .ok_or("a type record's length is cut off")?;
            if len < 2 || at + 2 + usize::from(len) > end {
                return Err(format!(
                    "type record {:#x} of {len} bytes does not fit the stream",
                    u64::from(h.min) + records.len() as u64
                ));
            }
            if records.len() == h.count as usize {
                return Err(format!(
                    "the type stream holds more records than the {} its header counts",
                    h.count
                ));
            }
            records.push(((at + 2) as u32, len));
            at += 2 + usize::from(len);
        }
        if records.len() != h.count as usize {
            return Err(format!(
                "the type stream holds {} records, its header counts {}",
                records.len(),
                h.count
            ));
        }
        Ok(Types {
            tpi,
            min: h.min,
            records,
        })
    }

    /// The record of a non-primitive type index.
    fn record(&self, index: u32) -> Result<&'a [u8], String> {
        let (start, len) = index
            .checked_sub(self.min)
            .and_then(|i| self.records.get(i as usize))
            .ok_or_else(|| format!("type index {index:#x} is outside the type stream"))?;
        Ok(&self.tpi[*start as usize..*start as usize + usize::from(*len)])
    }

    /// A member list and the ones it continues into, with every member read (bounded by the
    /// budget and [`MAX_CONTINUATIONS`]).
    fn member_list(
        &self,
        first: u32,
        budget: &mut Budget,
        what: &dyn Fn() -> String,
    ) -> Result<Vec<Member<'a>>, String> {
        let mut out = Vec::new();
        let mut next = (first >= self.min).then_some(first);
        let mut hops = 0;
        while let Some(index) = next.take() {
            hops += 1;
            if hops > MAX_CONTINUATIONS {
                return Err(format!(
                    "the members of {} continue past {MAX_CONTINUATIONS} lists",
                    what()
                ));
            }
            let rec = self.record(index)?;
            budget.0 = budget.0.checked_sub(rec.len() as u64).ok_or_else(|| {
                format!(
                    "the types refer to their member lists far more often than a PDB's types do (at {})",
                    what()
                )
            })?;
            for m in members(rec).map_err(|e| format!("members of {}: {e}", what()))? {
                match m {
                    Member::Continue(i) => next = Some(i),
                    Member::Other => {}
                    m => out.push(m),
                }
            }
        }
        Ok(out)
    }

    /// Reads every complete struct, union and enum into `table`.
    fn read(&self, table: &mut TypeTable) -> Result<(), String> {
        // Sizes of the complete types by name, so an array of a struct (whose member refers to
        // a forward declaration) is counted in elements.
        let mut sizes: HashMap<String, u64> = HashMap::new();
        let mut enum_bases: HashMap<String, u32> = HashMap::new();
        for i in 0..self.records.len() as u32 {
            let index = self.min + i;
            match leaf(self.record(index)?) {
                Ok(Leaf::Udt {
                    fwd: false,
                    size,
                    name,
                    ..
                }) => {
                    sizes.insert(udt_name(name, index), size);
                }
                Ok(Leaf::Enum {
                    fwd: false,
                    underlying,
                    name,
                    ..
                }) => {
                    enum_bases.insert(text(name), underlying);
                }
                Ok(_) => {}
                Err(e) => return Err(format!("type record {index:#x}: {e}")),
            }
        }
        let mut conv = Conv {
            types: self,
            sizes,
            enum_bases,
            memo: HashMap::new(),
        };
        let mut budget = Budget(4 * self.tpi.len() as u64 + (1 << 20));
        // (derived, base, offset of the base in the derived)
        let mut bases: Vec<(String, String, u64)> = Vec::new();
        for i in 0..self.records.len() as u32 {
            let index = self.min + i;
            match leaf(self.record(index)?)? {
                Leaf::Udt {
                    union,
                    fwd: false,
                    fields,
                    size,
                    name,
                } => {
                    let name = udt_name(name, index);
                    let list = self.member_list(fields, &mut budget, &|| name.clone())?;
                    let mut out = Vec::new();
                    for m in list {
                        match m {
                            Member::Data {
                                name: n,
                                ty,
                                offset,
                            } => out.push(Field {
                                name: text(n),
                                offset,
                                ty: conv.ty(ty, 0)?,
                            }),
                            Member::Base { ty, offset } => {
                                if let Ty::Udt(b) = conv.ty(ty, 0)? {
                                    bases.push((name.clone(), b, offset));
                                }
                            }
                            _ => {}
                        }
                    }
                    table.insert_udt(Udt {
                        name,
                        kind: if union {
                            UdtKind::Union
                        } else {
                            UdtKind::Struct
                        },
                        size,
                        fields: out,
                    });
                }
                Leaf::Enum {
                    fwd: false,
                    underlying,
                    fields,
                    name,
                } => {
                    let name = text(name);
                    let list = self.member_list(fields, &mut budget, &|| name.clone())?;
                    let constants = list
                        .into_iter()
                        .filter_map(|m| match m {
                            Member::Constant { name, value } => Some((text(name), value)),
                            _ => None,
                        })
                        .collect();
                    let size = match conv.ty(underlying, 0)? {
                        Ty::Base { size, .. } => size,
                        _ => 4,
                    };
                    table.insert_enum(Enum {
                        name,
                        size,
                        constants,
                    });
                }
                _ => {}
            }
        }
        flatten_bases(table, &bases);
        Ok(())
    }
}

/// Deepest chain of base classes whose members are brought into a derived type.
const MAX_BASE_DEPTH: usize = 8;

/// Brings every non-virtual base class's members into the types derived from it, at the base's
/// offset (as a debugger shows and resolves them: `_NDIS_NET_BUFFER_LIST_POOL.AllocatedList` is
/// its `_NDIS_POOL_HEADER` base's). A member the derived type declares itself wins over a
/// base's of the same name.
fn flatten_bases(table: &mut TypeTable, bases: &[(String, String, u64)]) {
    let mut of: HashMap<&str, Vec<(&str, u64)>> = HashMap::new();
    for (derived, base, offset) in bases {
        of.entry(derived.as_str())
            .or_default()
            .push((base.as_str(), *offset));
    }
    // The members a base brings, its own bases' included (bounded in depth, so a cycle in a
    // malformed file ends).
    fn inherited(
        table: &TypeTable,
        of: &HashMap<&str, Vec<(&str, u64)>>,
        ty: &str,
        at: u64,
        depth: usize,
        out: &mut Vec<Field>,
    ) {
        if depth > MAX_BASE_DEPTH {
            return;
        }
        let Ok(u) = table.udt(ty) else { return };
        for f in &u.fields {
            out.push(Field {
                name: f.name.clone(),
                offset: f.offset.saturating_add(at),
                ty: f.ty.clone(),
            });
        }
        for (b, off) in of.get(ty).into_iter().flatten() {
            inherited(table, of, b, at.saturating_add(*off), depth + 1, out);
        }
    }
    for derived in of.keys() {
        let mut extra = Vec::new();
        for (b, off) in &of[derived] {
            inherited(table, &of, b, *off, 1, &mut extra);
        }
        let Ok(u) = table.udt(derived) else { continue };
        let mut u = u.clone();
        for f in extra {
            if u.field(&f.name).is_none() {
                u.fields.push(f);
            }
        }
        table.insert_udt(u);
    }
}

/// The name a debugger shows for a decorated public: `?ndisMiniportList@@3PEAU…@@EA` is
/// `ndisMiniportList`, `?Name@Scope@@…` is `Scope::Name`. Special names (`??…`: operators,
/// string literals, constructors) and undecorated names give `None`.
fn undecorate(name: &str) -> Option<String> {
    let rest = name.strip_prefix('?')?;
    if rest.starts_with('?') {
        return None;
    }
    let end = rest.find("@@")?;
    let parts: Vec<&str> = rest[..end].split('@').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || !p.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'))
    {
        return None;
    }
    Some(parts.into_iter().rev().collect::<Vec<_>>().join("::"))
}

struct Conv<'a, 't> {
    types: &'a Types<'t>,
    sizes: HashMap<String, u64>,
    enum_bases: HashMap<String, u32>,
    memo: HashMap<u32, Ty>,
}

impl Conv<'_, '_> {
    /// The table's view of type `index`; records of kinds a member cannot usefully have are
    /// `void`, as are chains deeper than [`MAX_TYPE_DEPTH`].
    fn ty(&mut self, index: u32, depth: u32) -> Result<Ty, String> {
        if let Some(t) = self.memo.get(&index) {
            return Ok(t.clone());
        }
        if depth > MAX_TYPE_DEPTH {
            return Ok(Ty::Void);
        }
        let t = if index < self.types.min {
            if index > 0x7ff {
                Ty::Void
            } else {
                let base = match primitive(index) {
                    Some((name, size, signed)) => Ty::Base {
                        name: name.into(),
                        size,
                        signed,
                    },
                    None => Ty::Void,
                };
                if index & 0xf00 != 0 {
                    Ty::Pointer(Box::new(base))
                } else {
                    base
                }
            }
        } else {
            match leaf(self.types.record(index)?)
                .map_err(|e| format!("type record {index:#x}: {e}"))?
            {
                Leaf::Pointer(u) => Ty::Pointer(Box::new(self.ty(u, depth + 1)?)),
                Leaf::Modifier(u) => self.ty(u, depth + 1)?,
                Leaf::Udt { name, .. } => Ty::Udt(udt_name(name, index)),
                Leaf::Enum { name, .. } => Ty::Enum(text(name)),
                Leaf::Array { elem, bytes } => {
                    let elem = self.ty(elem, depth + 1)?;
                    let esize = self.size_hint(&elem, 0).max(1);
                    Ty::Array {
                        count: bytes / esize,
                        elem: Box::new(elem),
                    }
                }
                Leaf::Bitfield { base, len, pos } => Ty::Bitfield {
                    pos: u32::from(pos),
                    len: u32::from(len).max(1),
                    base: Box::new(self.ty(base, depth + 1)?),
                },
                Leaf::Function => Ty::Function,
                Leaf::Other => Ty::Void,
            }
        };
        // Only a conversion given the whole depth is kept: one cut short is not the type.
        if depth == 0 {
            self.memo.insert(index, t.clone());
        }
        Ok(t)
    }

    /// Size of a converted type, from the complete types' sizes.
    fn size_hint(&mut self, t: &Ty, depth: u32) -> u64 {
        match t {
            Ty::Base { size, .. } => *size,
            Ty::Pointer(_) => 8,
            Ty::Array { count, elem } if depth < MAX_TYPE_DEPTH => {
                count.saturating_mul(self.size_hint(elem, depth + 1))
            }
            Ty::Bitfield { base, .. } if depth < MAX_TYPE_DEPTH => self.size_hint(base, depth + 1),
            Ty::Udt(n) => self.sizes.get(n).copied().unwrap_or(0),
            Ty::Enum(n) => match self.enum_bases.get(n).copied() {
                Some(u) if u < self.types.min => primitive(u).map_or(4, |p| p.1),
                _ => 4,
            },
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decorated_publics_go_by_their_plain_names() {
        assert_eq!(
            undecorate("?ndisMiniportList@@3PEAU_NDIS_MINIPORT_BLOCK@@EA").as_deref(),
            Some("ndisMiniportList")
        );
        assert_eq!(
            undecorate("?Run@Engine@Kd@@QEAAXXZ").as_deref(),
            Some("Kd::Engine::Run")
        );
        for special in [
            "??_C@_0BD@GEIFCBIL@LdrHotPatchRoutine?$AA@",
            "??0Engine@@QEAA@XZ",
            "NdisAllocateNetBufferListPool",
            "?x",
            "?a b@@3HA",
        ] {
            assert_eq!(undecorate(special), None, "{special}");
        }
    }

    #[test]
    fn base_class_members_are_found_in_the_derived_type() {
        let mut t = TypeTable::new(None);
        t.insert_base("unsigned long", 4, false);
        let u = |name: &str, size, fields: Vec<(&str, u64)>| Udt {
            name: name.into(),
            kind: UdtKind::Struct,
            size,
            fields: fields
                .into_iter()
                .map(|(n, o)| Field {
                    name: n.into(),
                    offset: o,
                    ty: Ty::Base {
                        name: "unsigned long".into(),
                        size: 4,
                        signed: false,
                    },
                })
                .collect(),
        };
        t.insert_udt(u("Root", 8, vec![("Header", 0), ("Flags", 4)]));
        t.insert_udt(u("Mid", 0x10, vec![("Count", 8), ("Flags", 0xc)]));
        t.insert_udt(u("Leaf", 0x20, vec![("Own", 0x18)]));
        flatten_bases(
            &mut t,
            &[
                ("Leaf".into(), "Mid".into(), 0x10),
                ("Mid".into(), "Root".into(), 0),
            ],
        );
        assert_eq!(t.offset("Leaf", "Own").unwrap(), 0x18);
        assert_eq!(t.offset("Leaf", "Count").unwrap(), 0x18);
        assert_eq!(t.offset("Leaf", "Header").unwrap(), 0x10);
        // The derived type's own member wins over its base's.
        assert_eq!(t.offset("Mid", "Flags").unwrap(), 0xc);
        // A cycle in a malformed file ends.
        flatten_bases(
            &mut t,
            &[
                ("Root".into(), "Mid".into(), 0),
                ("Mid".into(), "Root".into(), 0),
            ],
        );
    }

    /// A type stream header for `records` (records are length-prefixed already).
    fn tpi(records: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = records.concat();
        let mut h = vec![0u8; 56];
        h[0..4].copy_from_slice(&20040203u32.to_le_bytes());
        h[4..8].copy_from_slice(&56u32.to_le_bytes());
        h[8..12].copy_from_slice(&0x1000u32.to_le_bytes());
        h[12..16].copy_from_slice(&(0x1000 + records.len() as u32).to_le_bytes());
        h[16..20].copy_from_slice(&(body.len() as u32).to_le_bytes());
        h[20..24].copy_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
        h.extend_from_slice(&body);
        h
    }

    fn rec(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(&((body.len() + 2) as u16).to_le_bytes());
        r.extend_from_slice(&kind.to_le_bytes());
        r.extend_from_slice(body);
        r
    }

    fn member(ty: u32, offset: u16, name: &str) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&LF_MEMBER.to_le_bytes());
        m.extend_from_slice(&3u16.to_le_bytes());
        m.extend_from_slice(&ty.to_le_bytes());
        m.extend_from_slice(&offset.to_le_bytes());
        m.extend_from_slice(name.as_bytes());
        m.push(0);
        while m.len() % 4 != 0 {
            m.push(0xf0 | (4 - m.len() % 4) as u8);
        }
        m
    }

    fn structure(fields: u32, size: u16, name: &str) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&2u16.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&fields.to_le_bytes());
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&size.to_le_bytes());
        b.extend_from_slice(name.as_bytes());
        b.push(0);
        rec(LF_STRUCTURE, &b)
    }

    fn read(records: &[Vec<u8>]) -> Result<TypeTable, String> {
        let s = tpi(records);
        let h = tpi_header(&s, "TPI", 5)?.unwrap();
        let mut t = TypeTable::new(None);
        Types::new(&s, h)?.read(&mut t)?;
        Ok(t)
    }

    #[test]
    fn structs_arrays_of_structs_and_members() {
        // 0x1000: members of _PAIR; 0x1001: _PAIR; 0x1002: _PAIR[4]; 0x1003: members of
        // _OUTER; 0x1004: _OUTER.
        let pair_members = rec(
            LF_FIELDLIST,
            &[member(0x75, 0, "A"), member(0x75, 4, "B")].concat(),
        );
        let mut array = Vec::new();
        array.extend_from_slice(&0x1001u32.to_le_bytes());
        array.extend_from_slice(&0x23u32.to_le_bytes());
        array.extend_from_slice(&32u16.to_le_bytes());
        array.push(0);
        let outer_members = rec(
            LF_FIELDLIST,
            &[member(0x1002, 0, "Pairs"), member(0x0675, 32, "P")].concat(),
        );
        let t = read(&[
            pair_members,
            structure(0x1000, 8, "_PAIR"),
            rec(LF_ARRAY, &array),
            outer_members,
            structure(0x1003, 40, "_OUTER"),
        ])
        .unwrap();
        let f = t.field("_OUTER", "Pairs").unwrap();
        assert_eq!(
            f.ty,
            Ty::Array {
                count: 4,
                elem: Box::new(Ty::Udt("_PAIR".into()))
            }
        );
        assert_eq!(t.offset("_OUTER", "Pairs[3].B").unwrap(), 28);
        assert!(t.field("_OUTER", "Pairs[4]").is_err());
        assert!(matches!(t.field("_OUTER", "P").unwrap().ty, Ty::Pointer(_)));
    }

    #[test]
    fn malformed_records_are_errors() {
        // A member list holding a record kind that is not a member (an argument list).
        let mut bad = Vec::new();
        bad.extend_from_slice(&0x1201u16.to_le_bytes());
        bad.extend_from_slice(&0x4000_0000u32.to_le_bytes());
        let e = read(&[rec(LF_FIELDLIST, &bad), structure(0x1000, 8, "_S")]).unwrap_err();
        assert!(e.contains("unknown kind 0x1201"), "{e}");
        // A member list nested in a member list.
        let nested = [0x03u8, 0x12].repeat(2000);
        let e = read(&[rec(LF_FIELDLIST, &nested), structure(0x1000, 8, "_S")]).unwrap_err();
        assert!(e.contains("unknown kind 0x1203"), "{e}");
        // A member list continuing into itself.
        let mut cont = Vec::new();
        cont.extend_from_slice(&LF_INDEX.to_le_bytes());
        cont.extend_from_slice(&0u16.to_le_bytes());
        cont.extend_from_slice(&0x1000u32.to_le_bytes());
        let e = read(&[rec(LF_FIELDLIST, &cont), structure(0x1000, 8, "_S")]).unwrap_err();
        assert!(e.contains("continue"), "{e}");
        // A struct whose members are beyond the table, a truncated record.
        let e = read(&[structure(0x1234, 8, "_S")]).unwrap_err();
        assert!(e.contains("outside"), "{e}");
        let e = read(&[rec(LF_STRUCTURE, &[1, 0, 0])]).unwrap_err();
        assert!(e.contains("ends early"), "{e}");
    }

    #[test]
    fn shared_member_lists_are_bounded() {
        // 3,000 structs all naming one 60 KB member list: the budget stops the work.
        let many: Vec<u8> = (0..5000)
            .flat_map(|i| member(0x75, i as u16, "F"))
            .collect();
        let mut records = vec![rec(LF_FIELDLIST, &many[..60_000])];
        for i in 0..3000 {
            records.push(structure(0x1000, 8, &format!("_S{i}")));
        }
        let e = read(&records).unwrap_err();
        assert!(e.contains("far more often"), "{e}");
    }

    #[test]
    fn type_headers_are_checked_against_their_streams() {
        let good = tpi(&[structure(0, 0, "_E")]);
        assert!(tpi_header(&good, "TPI", 5).unwrap().is_some());
        let set = |at: usize, v: u32| {
            let mut s = good.clone();
            s[at..at + 4].copy_from_slice(&v.to_le_bytes());
            tpi_header(&s, "TPI", 5).unwrap_err()
        };
        assert!(set(4, 0x10_0000).contains("header claims"));
        assert!(set(8, 0x10).contains("indices"));
        assert!(set(12, 0x4000_1000).contains("records in"));
        assert!(set(16, 0xFFFF_FFF0).contains("bytes of records"));
        assert!(set(20, 77).contains("hash stream"));
        assert!(tpi_header(&good[..40], "TPI", 5).is_err());
        // DBI: sizes against the stream, stream numbers against the file.
        let mut dbi = vec![0u8; 64];
        dbi[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        dbi[12..14].copy_from_slice(&NO_STREAM.to_le_bytes());
        dbi[16..18].copy_from_slice(&NO_STREAM.to_le_bytes());
        dbi[20..22].copy_from_slice(&4u16.to_le_bytes());
        assert!(check_dbi(&dbi, 5).is_ok());
        assert!(
            check_dbi(&dbi, 4)
                .unwrap_err()
                .contains("symbol record stream 4")
        );
        let mut big = dbi.clone();
        big[24..28].copy_from_slice(&0x7FFF_FFFFu32.to_le_bytes());
        assert!(check_dbi(&big, 5).unwrap_err().contains("substreams claim"));
        let mut neg = dbi.clone();
        neg[48..52].copy_from_slice(&(-8i32).to_le_bytes());
        assert!(check_dbi(&neg, 5).unwrap_err().contains("size -8"));
    }
}
