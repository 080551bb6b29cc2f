//! The object manager: an object's header (its type through `nt!ObTypeIndexTable`, the index
//! decoded with `nt!ObHeaderCookie` where the table has the cookie), its name from the name
//! information before the header, the namespace's directories from
//! `nt!ObpRootDirectoryObject`, paths resolved through them (symbolic links followed), and
//! the entries of a process's handle table. Every walk is bounded and loop-checked.

use std::collections::HashSet;

use kdnet_arch::le::Le;

use super::view::View;
use super::{Kernel, ModelError};

/// InfoMask bits.
const INFO_CREATOR: u8 = 0x1;
const INFO_NAME: u8 = 0x2;
/// Buckets of an object directory.
pub const DIRECTORY_BUCKETS: u64 = 37;
/// Most entries one directory is taken to hold.
const MAX_DIRECTORY_ENTRIES: usize = 65_536;
/// Deepest directory nesting or symbolic-link chain followed.
const MAX_DEPTH: usize = 32;
/// Most handles read from one table.
pub const MAX_HANDLES: u64 = 1 << 24;
/// The marker a kernel keeps at index 1 of the type table.
const TYPE_TABLE_MARKER: u64 = 0xbad0_b0b0;

/// An object as its header describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// The body.
    pub body: u64,
    /// The header.
    pub header: u64,
    /// The decoded type index.
    pub type_index: u8,
    /// The type object.
    pub type_object: u64,
    /// The type's name.
    pub type_name: String,
    /// Its name, when it has one.
    pub name: Option<String>,
    /// The directory it is named in (0 when none).
    pub directory: u64,
    /// PointerCount.
    pub pointer_count: i64,
    /// HandleCount.
    pub handle_count: i64,
    /// InfoMask.
    pub info_mask: u8,
    /// Flags.
    pub flags: u8,
}

/// An entry of an object directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Its hash bucket.
    pub bucket: u8,
    /// The object.
    pub object: u64,
}

/// A handle table entry in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandleEntry {
    /// The handle value.
    pub handle: u64,
    /// The entry's address.
    pub entry: u64,
    /// The object (body).
    pub object: u64,
    /// GrantedAccess.
    pub access: u32,
    /// OBJ_PROTECT_CLOSE (1), OBJ_INHERIT (2), OBJ_AUDIT_OBJECT_CLOSE (4).
    pub attributes: u8,
}

/// A handle table's entries and why the walk stopped early, if it did.
#[derive(Debug, Clone, Default)]
pub struct HandleWalk {
    /// Entries in use, in handle order.
    pub entries: Vec<HandleEntry>,
    /// The table's levels (1 to 3).
    pub levels: u8,
    /// Why the walk is not whole.
    pub notes: Vec<String>,
}

impl Kernel {
    /// The type object and name of type index `index`.
    pub fn object_type(&mut self, index: u8) -> Result<(u64, String), ModelError> {
        let table = self.sym("ObTypeIndexTable")?;
        let t = self.mem.u64(table + 8 * u64::from(index))?;
        if index < 2 || t == 0 || t == TYPE_TABLE_MARKER || t % 8 != 0 {
            return Err(ModelError::Corrupt(format!(
                "type index {index} names no object type (nt!ObTypeIndexTable[{index}] is {t:#x})"
            )));
        }
        let nt = self.nt()?;
        let name = self.unicode_string(t + nt.offset("_OBJECT_TYPE", "Name")?)?;
        Ok((t, name))
    }

    /// The object whose body is at `body`, as its header describes it.
    pub fn object(&mut self, body: u64) -> Result<Object, ModelError> {
        let nt = self.nt()?;
        let header = body.wrapping_sub(nt.offset("_OBJECT_HEADER", "Body")?);
        // The header and the optional headers before it in one request where they can be
        // read together (name, then creator information nearest the header).
        let ni_size = nt.size_of("_OBJECT_HEADER_NAME_INFO")?;
        let ci_size = nt.size_of("_OBJECT_HEADER_CREATOR_INFO")?;
        let header_size = nt.size_of("_OBJECT_HEADER")? as usize;
        let before = ni_size + ci_size;
        let (prefix, v) = match self
            .mem
            .kread(header.wrapping_sub(before), before as usize + header_size)
        {
            Ok(b) => {
                let h = b[before as usize..].to_vec();
                (Some(b), View::new(nt.clone(), "_OBJECT_HEADER", header, h))
            }
            Err(_) => (None, self.view("_OBJECT_HEADER", header)?),
        };
        let raw = v.get("TypeIndex")? as u8;
        let type_index = if self.has_sym("ObHeaderCookie") {
            let cookie = self.mem.kread(self.sym("ObHeaderCookie")?, 1)?[0];
            raw ^ cookie ^ ((header >> 8) as u8)
        } else {
            raw
        };
        let (type_object, type_name) = self.object_type(type_index).map_err(|e| {
            ModelError::Corrupt(format!(
                "{body:#x} is not an object: its header at {header:#x} has a bad type ({e})"
            ))
        })?;
        let info_mask = v.get("InfoMask")? as u8;
        let (name, directory) = if info_mask & INFO_NAME != 0 {
            let creator = if info_mask & INFO_CREATOR != 0 {
                ci_size
            } else {
                0
            };
            let ni = header - creator - ni_size;
            let n = match &prefix {
                Some(b) => {
                    let at = (before - creator - ni_size) as usize;
                    View::new(
                        nt.clone(),
                        "_OBJECT_HEADER_NAME_INFO",
                        ni,
                        b[at..at + ni_size as usize].to_vec(),
                    )
                }
                None => self.view("_OBJECT_HEADER_NAME_INFO", ni)?,
            };
            let dir = n.get("Directory")?;
            let name = self.unicode_string_in(&n, "Name")?;
            (Some(name), dir)
        } else {
            (None, 0)
        };
        Ok(Object {
            body,
            header,
            type_index,
            type_object,
            type_name,
            name,
            directory,
            pointer_count: v.get_signed("PointerCount")?,
            handle_count: v.get_signed("HandleCount")?,
            info_mask,
            flags: v.get("Flags")? as u8,
        })
    }

    /// The full path of a named object (`\Driver\cimfs`), following its directories up to the
    /// root; `None` for an unnamed one.
    pub fn object_path(&mut self, body: u64) -> Result<Option<String>, ModelError> {
        let root = self.mem.u64(self.sym("ObpRootDirectoryObject")?)?;
        let o = self.object(body)?;
        let Some(mut path) = o.name.clone() else {
            return Ok(None);
        };
        if body == root {
            return Ok(Some("\\".into()));
        }
        let mut dir = o.directory;
        for _ in 0..MAX_DEPTH {
            if dir == 0 || dir == root {
                return Ok(Some(format!("\\{path}")));
            }
            let d = self.object(dir)?;
            path = format!("{}\\{path}", d.name.unwrap_or_default());
            dir = d.directory;
        }
        Err(ModelError::Corrupt(format!(
            "the directories above {body:#x} nest deeper than {MAX_DEPTH}: a loop"
        )))
    }

    /// The entries of the object directory at `dir`, bucket by bucket; a broken or looping
    /// chain ends that bucket with a note.
    pub fn directory(&mut self, dir: u64) -> Result<(Vec<DirEntry>, Vec<String>), ModelError> {
        let nt = self.nt()?;
        let buckets = dir + nt.offset("_OBJECT_DIRECTORY", "HashBuckets")?;
        let heads = self.mem.kread(buckets, (8 * DIRECTORY_BUCKETS) as usize)?;
        let link = nt.offset("_OBJECT_DIRECTORY_ENTRY", "ChainLink")?;
        let object = nt.offset("_OBJECT_DIRECTORY_ENTRY", "Object")?;
        let mut out = Vec::new();
        let mut notes = Vec::new();
        let mut seen = HashSet::new();
        for b in 0..DIRECTORY_BUCKETS {
            let mut e = Le(&heads).u64(8 * b as usize);
            while e != 0 {
                if out.len() >= MAX_DIRECTORY_ENTRIES {
                    notes.push(format!(
                        "stopped after {MAX_DIRECTORY_ENTRIES} entries (limit)"
                    ));
                    return Ok((out, notes));
                }
                if !seen.insert(e) {
                    notes.push(format!("bucket {b} loops back to {e:#x}"));
                    break;
                }
                let bytes = match self.mem.kread_ahead(e, 0x18) {
                    Ok(b) => b,
                    Err(err) => {
                        notes.push(format!("bucket {b}: entry {e:#x} is unreadable: {err}"));
                        break;
                    }
                };
                out.push(DirEntry {
                    bucket: b as u8,
                    object: Le(&bytes).u64(object as usize),
                });
                e = Le(&bytes).u64(link as usize);
            }
        }
        for n in &notes {
            self.note_incomplete(format!("directory {dir:#x}: {n}"));
        }
        Ok((out, notes))
    }

    /// The object at a namespace path (`\Driver\cimfs`, `\GLOBAL??\C:`), through the
    /// directories from the root, following symbolic links in the middle of the path.
    pub fn lookup_object(&mut self, path: &str) -> Result<u64, ModelError> {
        let root = self.mem.u64(self.sym("ObpRootDirectoryObject")?)?;
        let mut pending: Vec<String> = path
            .split('\\')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect();
        pending.reverse();
        let mut cur = root;
        let mut hops = 0;
        while let Some(part) = pending.pop() {
            hops += 1;
            if hops > 4 * MAX_DEPTH {
                return Err(ModelError::Corrupt(format!(
                    "resolving {path} takes more than {} steps: a link loop",
                    4 * MAX_DEPTH
                )));
            }
            let o = self.object(cur)?;
            if o.type_name == "SymbolicLink" {
                let nt = self.nt()?;
                let target =
                    self.unicode_string(cur + nt.offset("_OBJECT_SYMBOLIC_LINK", "LinkTarget")?)?;
                pending.push(part);
                for p in target.split('\\').filter(|p| !p.is_empty()).rev() {
                    pending.push(p.to_string());
                }
                cur = root;
                continue;
            }
            if o.type_name != "Directory" {
                return Err(ModelError::Corrupt(format!(
                    "{path}: {part} is inside a {} object, not a directory",
                    o.type_name
                )));
            }
            let (entries, _) = self.directory(cur)?;
            let mut found = None;
            for e in entries {
                if let Ok(x) = self.object(e.object)
                    && x.name
                        .as_deref()
                        .is_some_and(|n| n.eq_ignore_ascii_case(&part))
                {
                    found = Some(e.object);
                    break;
                }
            }
            cur = found.ok_or_else(|| {
                ModelError::Corrupt(format!("{path}: no object named {part} in its directory"))
            })?;
        }
        Ok(cur)
    }

    /// The entries in use of the handle table at `table` (its TableCode's levels walked),
    /// at most `limit`; `only` reads just that handle.
    pub fn handles(
        &mut self,
        table: u64,
        only: Option<u64>,
        limit: u64,
    ) -> Result<HandleWalk, ModelError> {
        let nt = self.nt()?;
        let code = self
            .mem
            .u64(table + nt.offset("_HANDLE_TABLE", "TableCode")?)?;
        let levels = (code & 3) as u8 + 1;
        let mut walk = HandleWalk {
            levels,
            ..HandleWalk::default()
        };
        if levels > 3 {
            return Err(ModelError::Corrupt(format!(
                "the handle table at {table:#x} has TableCode {code:#x}: level {levels} does not exist"
            )));
        }
        let entry_size = nt.size_of("_HANDLE_TABLE_ENTRY")?;
        let per_page = 0x1000 / entry_size;
        let body_off = nt.offset("_OBJECT_HEADER", "Body")?;
        let pointer_bits = nt.has_field("_HANDLE_TABLE_ENTRY", "ObjectPointerBits");
        let access_field = if pointer_bits {
            "GrantedAccessBits"
        } else {
            "GrantedAccess"
        };
        let access_mask = if pointer_bits { 0x1ff_ffff } else { u64::MAX };
        let access = nt.field("_HANDLE_TABLE_ENTRY", access_field)?;
        let (access_off, access_pos) = match &access.ty {
            kdnet_symbols::Ty::Bitfield { pos, .. } => (access.offset, *pos),
            _ => (access.offset, 0),
        };
        // Level-0 pages, each with the handle value of its first entry.
        let mut pages: Vec<(u64, u64)> = Vec::new();
        let base = code & !3;
        let per_level1 = 0x1000 / 8;
        match levels {
            1 => pages.push((base, 0)),
            2 => {
                let ptrs = self.mem.kread(base, 0x1000)?;
                for i in 0..per_level1 {
                    let p = Le(&ptrs).u64(8 * i as usize);
                    if p == 0 {
                        break;
                    }
                    pages.push((p, i * per_page * 4));
                }
            }
            _ => {
                let tops = self.mem.kread(base, 0x1000)?;
                for j in 0..per_level1 {
                    let mid = Le(&tops).u64(8 * j as usize);
                    if mid == 0 {
                        break;
                    }
                    let ptrs = self.mem.kread(mid, 0x1000)?;
                    for i in 0..per_level1 {
                        let p = Le(&ptrs).u64(8 * i as usize);
                        if p == 0 {
                            break;
                        }
                        pages.push((p, (j * per_level1 + i) * per_page * 4));
                    }
                }
            }
        }
        let mut seen = HashSet::new();
        for (page, first) in pages {
            if let Some(h) = only
                && !(first..first + per_page * 4).contains(&h)
            {
                continue;
            }
            if !seen.insert(page) {
                walk.notes.push(format!(
                    "the handle table lists the page {page:#x} twice: a loop"
                ));
                break;
            }
            let bytes = match self.mem.kread(page, 0x1000) {
                Ok(b) => b,
                Err(e) => {
                    walk.notes.push(format!(
                        "handles {first:#x} to {:#x} are unreadable (page {page:#x}): {e}",
                        first + per_page * 4 - 4
                    ));
                    continue;
                }
            };
            for i in 1..per_page {
                let handle = first + i * 4;
                if only.is_some_and(|h| h != handle) {
                    continue;
                }
                let o = (i * entry_size) as usize;
                let low = Le(&bytes).u64(o);
                if low == 0 {
                    continue;
                }
                let (header, attributes) = if pointer_bits {
                    (
                        (low >> 20) << 4 | 0xffff_0000_0000_0000,
                        ((low >> 17) & 7) as u8,
                    )
                } else {
                    (low & !7, (low & 7) as u8)
                };
                if header & 0xf != 0 || header < 0xffff_8000_0000_0000 {
                    continue;
                }
                let a = Le(&bytes).u64(o + access_off as usize) >> access_pos;
                walk.entries.push(HandleEntry {
                    handle,
                    entry: page + i * entry_size,
                    object: header + body_off,
                    access: (a & access_mask) as u32,
                    attributes,
                });
                if walk.entries.len() as u64 >= limit.min(MAX_HANDLES) {
                    let n = format!("stopped after {} handles (limit)", walk.entries.len());
                    self.note_incomplete(format!("handle table {table:#x}: {n}"));
                    walk.notes.push(n);
                    return Ok(walk);
                }
            }
        }
        for n in walk.notes.clone() {
            self.note_incomplete(format!("handle table {table:#x}: {n}"));
        }
        Ok(walk)
    }
}
