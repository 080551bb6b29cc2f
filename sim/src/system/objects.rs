//! The object manager as a debugger reads it: object types indexed by `nt!ObTypeIndexTable`,
//! object headers with their type index (encoded with `nt!ObHeaderCookie` where the table has
//! the cookie) and their optional name information, the namespace's directories from
//! `nt!ObpRootDirectoryObject`, symbolic links, and the processes' handle tables.

use std::collections::HashMap;

use crate::SimError;
use crate::pool::{PoolKind, tag};

use super::System;

/// Object types in index order (index = position + 2; 0 and 1 are not types), as a
/// Windows 10 kernel creates them; the readers take the names from the types themselves.
const TYPES: &[&str] = &[
    "Type",
    "Directory",
    "SymbolicLink",
    "Token",
    "Job",
    "Process",
    "Thread",
    "Partition",
    "UserApcReserve",
    "IoCompletionReserve",
    "ActivityReference",
    "DebugObject",
    "Event",
    "Mutant",
    "Callback",
    "Semaphore",
    "Timer",
    "IRTimer",
    "Profile",
    "KeyedEvent",
    "WindowStation",
    "Desktop",
    "Adapter",
    "Controller",
    "Device",
    "Driver",
    "IoCompletion",
    "WaitCompletionPacket",
    "File",
    "Section",
    "Session",
    "Key",
    "ALPC Port",
    "FilterConnectionPort",
    "FilterCommunicationPort",
];

/// `InfoMask` bits of the optional headers before an object header.
const INFO_NAME: u64 = 0x2;

/// Buckets in an object directory.
pub const DIRECTORY_BUCKETS: u64 = 37;

/// The object manager's state while the machine is built.
#[derive(Debug, Default)]
pub struct Objects {
    /// Type name → (index, type object body).
    pub types: HashMap<&'static str, (u8, u64)>,
    /// The header cookie (0 where the table has none).
    pub cookie: u8,
    /// The root directory (body).
    pub root: u64,
    /// Directories by path (`\Driver`).
    pub dirs: HashMap<String, u64>,
}

/// What a handle refers to: its object, granted access and attributes (1 protect from close,
/// 2 inherit, 4 audit on close).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandleRec {
    /// Object body.
    pub object: u64,
    /// GrantedAccess.
    pub access: u32,
    /// OBJ_* attribute bits.
    pub attributes: u8,
}

/// The directory hash of a name, as the object manager computes it (upper-cased characters
/// folded into the running value).
pub fn name_hash(name: &str) -> u32 {
    let mut h: u32 = 0;
    for c in name.encode_utf16() {
        let c = if (u16::from(b'a')..=u16::from(b'z')).contains(&c) {
            c - 0x20
        } else {
            c
        };
        h = h
            .wrapping_add(h << 1)
            .wrapping_add(h >> 1)
            .wrapping_add(u32::from(c));
    }
    h
}

impl System {
    /// Creates the object types, the root directory and the standard directories. Called
    /// once, before anything makes an object.
    pub(super) fn init_objects(&mut self) -> Result<(), SimError> {
        if self.k.has_sym("ObHeaderCookie") {
            // From a value already drawn: the machine's other random choices stay the same
            // on every build, cookie or not.
            let cookie = ((self.wait_never >> 24) as u8) | 1;
            let at = self.k.sym("ObHeaderCookie")?;
            self.k.w8(at, cookie);
            self.ob.cookie = cookie;
        }
        let table = self.k.sym("ObTypeIndexTable")?;
        // Index 1 holds the marker a real kernel keeps there.
        self.k.w64(table + 8, 0xbad0_b0b0);
        let type_size = self.k.size("_OBJECT_TYPE")?;
        // The Type type describes itself: make every type object first, then name them.
        let mut made = Vec::new();
        for (i, name) in TYPES.iter().enumerate() {
            let index = (i + 2) as u8;
            self.ob.types.insert(name, (index, 0));
            let body = self.object_at("Type", type_size, PoolKind::NonPaged, tag("ObjT"))?;
            self.ob.types.insert(name, (index, body));
            self.k.w64(table + 8 * u64::from(index), body);
            let k = &mut self.k;
            k.list_init(body + k.off("_OBJECT_TYPE", "TypeList")?);
            k.set(body, "_OBJECT_TYPE", "Index", u64::from(index))?;
            let key = u64::from(tag(&format!("{:<4}", &name[..name.len().min(4)])));
            k.set(body, "_OBJECT_TYPE", "Key", key)?;
            made.push((name, body));
        }
        // Type objects made before the Type type existed get their index now.
        for (_, body) in &made {
            self.stamp(*body, "Type")?;
        }
        for (name, body) in &made {
            let buf = self
                .pool
                .alloc(&mut self.k, PoolKind::Paged, 64, tag("ObNm"))?;
            let at = body + self.k.off("_OBJECT_TYPE", "Name")?;
            self.k.unicode_string(at, buf, name);
        }
        let root = self.directory_body(None, "")?;
        self.ob.root = root;
        let at = self.k.sym("ObpRootDirectoryObject")?;
        self.k.w64(at, root);
        for d in [
            "ObjectTypes",
            "Driver",
            "Device",
            "FileSystem",
            "GLOBAL??",
            "KernelObjects",
        ] {
            let body = self.directory_body(Some(root), d)?;
            self.ob.dirs.insert(format!("\\{d}"), body);
        }
        let fs = self.ob.dirs["\\FileSystem"];
        let filters = self.directory_body(Some(fs), "Filters")?;
        self.ob.dirs.insert("\\FileSystem\\Filters".into(), filters);
        let types = self.ob.dirs["\\ObjectTypes"];
        for (name, body) in made {
            self.name_object(body, types, name)?;
        }
        Ok(())
    }

    /// The object header address of an object body.
    pub fn header_of(&self, body: u64) -> Result<u64, SimError> {
        Ok(body - self.k.off("_OBJECT_HEADER", "Body")?)
    }

    /// Writes the header's type index for `ty` (encoded as the table's kernel does).
    pub fn stamp(&mut self, body: u64, ty: &str) -> Result<(), SimError> {
        let (index, _) = *self
            .ob
            .types
            .get(ty)
            .ok_or_else(|| SimError::Config(format!("no object type {ty}")))?;
        let h = self.header_of(body)?;
        let stored = if self.k.has_sym("ObHeaderCookie") {
            index ^ self.ob.cookie ^ ((h >> 8) as u8)
        } else {
            index
        };
        self.k
            .set(h, "_OBJECT_HEADER", "TypeIndex", u64::from(stored))?;
        if self.k.has("_OBJECT_HEADER", "KernelObject") {
            self.k.set(h, "_OBJECT_HEADER", "KernelObject", 1)?;
        }
        Ok(())
    }

    /// An object of type `ty` with a `size`-byte body and room for name information before its
    /// header; returns the body.
    fn object_at(
        &mut self,
        ty: &str,
        size: u64,
        kind: PoolKind,
        pool_tag: u32,
    ) -> Result<u64, SimError> {
        let name_info = self.k.size("_OBJECT_HEADER_NAME_INFO")?;
        let body_off = self.k.off("_OBJECT_HEADER", "Body")?;
        let block = self
            .pool
            .alloc(&mut self.k, kind, name_info + body_off + size, pool_tag)?;
        let body = block + name_info + body_off;
        let h = body - body_off;
        self.k.set(h, "_OBJECT_HEADER", "PointerCount", 1)?;
        if self.ob.types.get(ty).is_some_and(|t| t.1 != 0) || ty != "Type" {
            self.stamp(body, ty)?;
        }
        Ok(body)
    }

    /// A new object of type `ty`, named `name` in the directory at `dir` when given.
    pub fn new_object(
        &mut self,
        ty: &str,
        size: u64,
        kind: PoolKind,
        pool_tag: u32,
        named: Option<(u64, &str)>,
    ) -> Result<u64, SimError> {
        let body = self.object_at(ty, size, kind, pool_tag)?;
        if let Some((dir, name)) = named {
            self.name_object(body, dir, name)?;
        }
        Ok(body)
    }

    /// Gives an object its name information and enters it in `dir`.
    pub fn name_object(&mut self, body: u64, dir: u64, name: &str) -> Result<(), SimError> {
        let h = self.header_of(body)?;
        let ni_size = self.k.size("_OBJECT_HEADER_NAME_INFO")?;
        let ni = h - ni_size;
        let mask = self.k.get(h, "_OBJECT_HEADER", "InfoMask")?;
        self.k
            .set(h, "_OBJECT_HEADER", "InfoMask", mask | INFO_NAME)?;
        let buf = self.pool.alloc(
            &mut self.k,
            PoolKind::Paged,
            (name.len() as u64 + 1) * 2,
            tag("ObNm"),
        )?;
        let k = &mut self.k;
        k.set(ni, "_OBJECT_HEADER_NAME_INFO", "Directory", dir)?;
        k.unicode_string(ni + k.off("_OBJECT_HEADER_NAME_INFO", "Name")?, buf, name);
        if dir != 0 {
            self.enter(dir, body, name)?;
        }
        Ok(())
    }

    /// Enters `body` in the directory `dir` under `name` (at the head of its bucket).
    fn enter(&mut self, dir: u64, body: u64, name: &str) -> Result<(), SimError> {
        let size = self.k.size("_OBJECT_DIRECTORY_ENTRY")?;
        let e = self
            .pool
            .alloc(&mut self.k, PoolKind::Paged, size, tag("ObDi"))?;
        let hash = name_hash(name);
        let bucket = dir
            + self.k.off("_OBJECT_DIRECTORY", "HashBuckets")?
            + 8 * (u64::from(hash) % DIRECTORY_BUCKETS);
        let k = &mut self.k;
        let first = k.r64(bucket);
        k.set(e, "_OBJECT_DIRECTORY_ENTRY", "ChainLink", first)?;
        k.set(e, "_OBJECT_DIRECTORY_ENTRY", "Object", body)?;
        if k.has("_OBJECT_DIRECTORY_ENTRY", "HashValue") {
            k.set(e, "_OBJECT_DIRECTORY_ENTRY", "HashValue", u64::from(hash))?;
        }
        k.w64(bucket, e);
        Ok(())
    }

    fn directory_body(&mut self, parent: Option<u64>, name: &str) -> Result<u64, SimError> {
        let size = self.k.size("_OBJECT_DIRECTORY")?;
        let body = self.object_at("Directory", size, PoolKind::Paged, tag("Dire"))?;
        self.name_object(
            body,
            parent.unwrap_or(0),
            if parent.is_some() { name } else { "\\" },
        )?;
        Ok(body)
    }

    /// The directory at `path` (`\Driver`, `\FileSystem\Filters`).
    pub fn dir(&self, path: &str) -> Result<u64, SimError> {
        self.ob
            .dirs
            .get(path)
            .copied()
            .ok_or_else(|| SimError::Config(format!("no directory {path}")))
    }

    /// A symbolic link `name` in `dir` to `target`.
    pub fn symlink(&mut self, dir: u64, name: &str, target: &str) -> Result<u64, SimError> {
        let size = self.k.size("_OBJECT_SYMBOLIC_LINK")?;
        let body = self.new_object(
            "SymbolicLink",
            size,
            PoolKind::Paged,
            tag("Symb"),
            Some((dir, name)),
        )?;
        let buf = self.pool.alloc(
            &mut self.k,
            PoolKind::Paged,
            (target.len() as u64 + 1) * 2,
            tag("SymT"),
        )?;
        let at = body + self.k.off("_OBJECT_SYMBOLIC_LINK", "LinkTarget")?;
        self.k.unicode_string(at, buf, target);
        Ok(body)
    }

    /// An event object with a header (one a handle can refer to).
    pub fn event_object(&mut self, named: Option<(u64, &str)>) -> Result<u64, SimError> {
        let size = self.k.size("_KEVENT")?;
        let body = self.new_object("Event", size, PoolKind::NonPaged, tag("Even"), named)?;
        self.event_at(body, "EventNotificationObject")?;
        Ok(body)
    }

    /// Adds a handle to process `p`'s table; returns the handle value.
    pub fn add_handle(&mut self, p: usize, h: HandleRec) -> u64 {
        let list = &mut self.processes[p].handles;
        list.push(h);
        // Entry 0 of every 256-entry page is never a handle.
        let n = list.len() as u64;
        let index = n + (n - 1) / 255;
        index * 4
    }

    /// Writes process `p`'s handle table pages (one level, or two past 255 handles) and points
    /// `table.TableCode` at them; returns the number of handles.
    pub(super) fn write_handle_table(&mut self, p: usize, table: u64) -> Result<u64, SimError> {
        let handles = self.processes[p].handles.clone();
        let entry = self.k.size("_HANDLE_TABLE_ENTRY")?;
        let per_page = 0x1000 / entry;
        let pages = (handles.len() as u64).div_ceil(per_page - 1).max(1);
        let mut page_addrs = Vec::new();
        for _ in 0..pages {
            page_addrs.push(
                self.pool
                    .alloc(&mut self.k, PoolKind::Paged, 0x1000, tag("Obtb"))?,
            );
        }
        let pointer_bits = self.k.has("_HANDLE_TABLE_ENTRY", "ObjectPointerBits");
        let body_off = self.k.off("_OBJECT_HEADER", "Body")?;
        for (i, h) in handles.iter().enumerate() {
            let i = i as u64;
            let page = page_addrs[(i / (per_page - 1)) as usize];
            let e = page + entry * (1 + i % (per_page - 1));
            let header = h.object - body_off;
            let k = &mut self.k;
            if pointer_bits {
                let low = ((header & 0x0000_ffff_ffff_fff0) << 16)
                    | (u64::from(h.attributes & 7) << 17)
                    | 1;
                k.w64(e, low);
                k.set(
                    e,
                    "_HANDLE_TABLE_ENTRY",
                    "GrantedAccessBits",
                    u64::from(h.access),
                )?;
            } else {
                k.w64(e, header | u64::from(h.attributes & 7));
                k.set(
                    e,
                    "_HANDLE_TABLE_ENTRY",
                    "GrantedAccess",
                    u64::from(h.access),
                )?;
            }
            let count = k.get(header, "_OBJECT_HEADER", "HandleCount")?;
            k.set(header, "_OBJECT_HEADER", "HandleCount", count + 1)?;
        }
        let code = if pages == 1 {
            page_addrs[0]
        } else {
            let top = self
                .pool
                .alloc(&mut self.k, PoolKind::Paged, 0x1000, tag("Obtb"))?;
            for (i, a) in page_addrs.iter().enumerate() {
                self.k.w64(top + 8 * i as u64, *a);
            }
            top | 1
        };
        self.k.set(table, "_HANDLE_TABLE", "TableCode", code)?;
        if self.k.has("_HANDLE_TABLE", "NextHandleNeedingPool") {
            self.k.set(
                table,
                "_HANDLE_TABLE",
                "NextHandleNeedingPool",
                pages * per_page * 4,
            )?;
        }
        Ok(handles.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_hash_without_regard_to_case() {
        assert_eq!(name_hash("Driver"), name_hash("DRIVER"));
        assert_ne!(name_hash("Driver"), name_hash("Device"));
    }
}
