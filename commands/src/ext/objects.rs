//! `!object` and `!handle`: objects as their headers describe them, the namespace's
//! directories, and processes' handle tables ([`kdnet_model::nt::objects`]).

use schemars::JsonSchema;
use serde::Serialize;

use crate::args::{Args, Syntax, opt_expr, opt_word, word};
use crate::engine::{CmdError, Engine};
use crate::registry::Render;
use kdnet_model::nt::io as io_model;

/// An object as `!object` shows it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ObjectInfo {
    /// The body.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub object: u64,
    /// The header.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub header: u64,
    /// The type object.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub type_object: u64,
    /// The type's name.
    #[serde(rename = "type")]
    pub type_name: String,
    /// The type index (decoded).
    pub type_index: u8,
    /// HandleCount.
    pub handle_count: i64,
    /// PointerCount.
    pub pointer_count: i64,
    /// Its name.
    pub name: Option<String>,
    /// Its full path in the namespace.
    pub path: Option<String>,
    /// The directory it is named in.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub directory: u64,
    /// A symbolic link's target.
    pub link_target: Option<String>,
    /// A file object's name.
    pub file_name: Option<String>,
}

/// A directory entry as `!object` lists it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Entry {
    /// The hash bucket.
    pub bucket: u8,
    /// The object.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub object: u64,
    /// Its type's name (null when its header is bad).
    #[serde(rename = "type")]
    pub type_name: Option<String>,
    /// Its name.
    pub name: Option<String>,
    /// Why its header could not be read.
    pub error: Option<String>,
}

/// What `!object` shows.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ObjectResult {
    /// The object.
    #[serde(flatten)]
    pub object: ObjectInfo,
    /// A directory's entries (empty for other objects).
    pub entries: Vec<Entry>,
    /// Why the directory listing is not whole.
    pub notes: Vec<String>,
}

/// `!object ADDR|\Path`.
pub const OBJECT: Syntax = Syntax::params(&[word("OBJECT")]);

fn object_info(e: &mut Engine, body: u64) -> Result<ObjectInfo, CmdError> {
    let o = e.kernel.object(body)?;
    let path = match e.kernel.object_path(body) {
        Ok(p) => p,
        Err(err) => {
            e.kernel
                .note_incomplete(format!("the path of {body:x}: {err}"));
            None
        }
    };
    let link_target = if o.type_name == "SymbolicLink" {
        let nt = e.kernel.nt()?;
        let at = body + nt.offset("_OBJECT_SYMBOLIC_LINK", "LinkTarget")?;
        Some(e.kernel.unicode_string(at)?)
    } else {
        None
    };
    let file_name = if o.type_name == "File" {
        match io_model::file_object(&mut e.kernel, body) {
            Ok(f) => Some(f.name),
            Err(err) => {
                e.kernel
                    .note_incomplete(format!("file object {body:x}: {err}"));
                None
            }
        }
    } else {
        None
    };
    Ok(ObjectInfo {
        object: body,
        header: o.header,
        type_object: o.type_object,
        type_name: o.type_name,
        type_index: o.type_index,
        handle_count: o.handle_count,
        pointer_count: o.pointer_count,
        name: o.name,
        path,
        directory: o.directory,
        link_target,
        file_name,
    })
}

/// `!object`.
pub fn object(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<ObjectResult, CmdError> {
    let t = a.text("OBJECT").unwrap_or_default();
    let body = if t.starts_with('\\') {
        e.kernel.lookup_object(t)?
    } else {
        e.eval(t)?
    };
    let object = object_info(e, body)?;
    let mut entries = Vec::new();
    let mut notes = Vec::new();
    if object.type_name == "Directory" {
        let (list, n) = e.kernel.directory(body)?;
        notes = n;
        for d in list {
            match e.kernel.object(d.object) {
                Ok(o) => entries.push(Entry {
                    bucket: d.bucket,
                    object: d.object,
                    type_name: Some(o.type_name),
                    name: o.name,
                    error: None,
                }),
                Err(err) if err.is_layout() => return Err(err.into()),
                Err(err) => {
                    e.kernel
                        .note_incomplete(format!("directory entry {:x}: {err}", d.object));
                    entries.push(Entry {
                        bucket: d.bucket,
                        object: d.object,
                        type_name: None,
                        name: None,
                        error: Some(err.to_string()),
                    });
                }
            }
        }
    }
    Ok(ObjectResult {
        object,
        entries,
        notes,
    })
}

fn render_object(o: &ObjectInfo, indent: &str, out: &mut String) {
    out.push_str(&format!(
        "{indent}Object: {:016x}  Type: ({:016x}) {}\n",
        o.object, o.type_object, o.type_name
    ));
    out.push_str(&format!(
        "{indent}    ObjectHeader: {:016x} (new version)\n{indent}    HandleCount: {}  PointerCount: {}\n",
        o.header, o.handle_count, o.pointer_count
    ));
    if let Some(n) = &o.name {
        out.push_str(&format!(
            "{indent}    Directory Object: {:016x}  Name: {}\n",
            o.directory,
            o.path.clone().unwrap_or_else(|| n.clone())
        ));
    }
    if let Some(f) = &o.file_name {
        out.push_str(&format!("{indent}    Name: {f}\n"));
    }
    if let Some(t) = &o.link_target {
        out.push_str(&format!("{indent}    Target String is '{t}'\n"));
    }
}

impl Render for ObjectResult {
    fn render(&self, out: &mut String) {
        render_object(&self.object, "", out);
        if self.object.type_name == "Directory" {
            out.push_str(
                "\n    Hash Address          Type                      Name\n    ---- -------          ----                      ----\n",
            );
            let mut last = None;
            for en in &self.entries {
                let hash = if last == Some(en.bucket) {
                    "  ".to_string()
                } else {
                    format!("{:02}", en.bucket)
                };
                last = Some(en.bucket);
                out.push_str(&format!(
                    "     {hash}  {:016x} {:<25} {}\n",
                    en.object,
                    en.type_name.clone().unwrap_or_else(|| "?".into()),
                    en.name
                        .clone()
                        .or_else(|| en.error.as_ref().map(|e| format!("({e})")))
                        .unwrap_or_default()
                ));
            }
            for n in &self.notes {
                out.push_str(&format!("NOTE: {n}\n"));
            }
        }
    }
}

// ---------------------------------------------------------------- !handle

/// `!handle [HANDLE [FLAGS [PROCESS [TYPE]]]]`.
pub const HANDLE: Syntax = Syntax::params(&[
    opt_expr("HANDLE"),
    opt_expr("FLAGS"),
    opt_expr("PROCESS"),
    opt_word("TYPE"),
]);

/// A handle as `!handle` shows it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct HandleInfo {
    /// The handle value.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub handle: u64,
    /// The entry's address.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub entry: u64,
    /// GrantedAccess.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub granted_access: u64,
    /// `Protected`, `Inherit`, `Audit`.
    pub attributes: Vec<String>,
    /// The object (null fields when its header could not be read).
    pub object: Option<ObjectInfo>,
    /// The object's address.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub object_address: u64,
    /// Why the object could not be read.
    pub error: Option<String>,
}

/// What `!handle` shows.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Handles {
    /// The process.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub process: u64,
    /// Its id.
    pub pid: u64,
    /// Its image name.
    pub image: String,
    /// Its handle table.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub table: u64,
    /// The table's levels.
    pub levels: u8,
    /// Entries in use (all of them, whatever was asked).
    pub in_use: usize,
    /// The handles shown.
    pub handles: Vec<HandleInfo>,
    /// FLAGS as given.
    pub flags: u64,
    /// Why the table walk is not whole.
    pub notes: Vec<String>,
}

/// `!handle`.
pub fn handle(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<Handles, CmdError> {
    let which = a.expr(e, "HANDLE")?.unwrap_or(0);
    let flags = a.expr(e, "FLAGS")?.unwrap_or(3);
    let type_filter = a.text("TYPE").map(str::to_string);
    let process = match a.expr(e, "PROCESS")? {
        None | Some(0) => e.eval("@$proc")?,
        Some(v) => {
            // A process id, or an EPROCESS address.
            let (procs, _) = e.kernel.processes()?;
            procs.iter().find(|p| p.pid == v).map_or(v, |p| p.eprocess)
        }
    };
    let p = e.kernel.process(process)?;
    if p.object_table == 0 {
        return Err(CmdError::Usage(format!(
            "process {process:x} ({}) has no handle table",
            p.name
        )));
    }
    let only = (which != 0).then_some(which);
    let walk = e
        .kernel
        .handles(p.object_table, only, kdnet_model::nt::objects::MAX_HANDLES)?;
    let in_use = walk.entries.len();
    let mut handles = Vec::new();
    for h in walk.entries {
        let (object, error) = if flags & 2 != 0 || type_filter.is_some() {
            match object_info(e, h.object) {
                Ok(o) => (Some(o), None),
                Err(CmdError::Model(err)) if err.is_layout() => return Err(err.into()),
                Err(err) => {
                    e.kernel
                        .note_incomplete(format!("handle {:x}: {err}", h.handle));
                    (None, Some(err.to_string()))
                }
            }
        } else {
            (None, None)
        };
        if let Some(t) = &type_filter
            && !object
                .as_ref()
                .is_some_and(|o| o.type_name.eq_ignore_ascii_case(t))
        {
            continue;
        }
        let mut attributes = Vec::new();
        for (b, n) in [(1, "Protected"), (2, "Inherit"), (4, "Audit")] {
            if h.attributes & b != 0 {
                attributes.push(n.to_string());
            }
        }
        handles.push(HandleInfo {
            handle: h.handle,
            entry: h.entry,
            granted_access: u64::from(h.access),
            attributes,
            object,
            object_address: h.object,
            error,
        });
    }
    if let Some(h) = only
        && handles.is_empty()
        && walk.notes.is_empty()
    {
        return Err(CmdError::Usage(format!(
            "handle {h:x} is not in use in {} ({:x})'s table",
            p.name, p.eprocess
        )));
    }
    Ok(Handles {
        process: p.eprocess,
        pid: p.pid,
        image: p.name,
        table: p.object_table,
        levels: walk.levels,
        in_use,
        handles,
        flags,
        notes: walk.notes,
    })
}

impl Render for Handles {
    fn render(&self, out: &mut String) {
        out.push_str(&format!(
            "\nPROCESS {:016x}\n    Image: {}  Cid: {:04x}\n\nHandle table at {:016x} with {} entries in use ({} level{})\n\n",
            self.process,
            self.image,
            self.pid,
            self.table,
            self.in_use,
            self.levels,
            if self.levels == 1 { "" } else { "s" }
        ));
        for h in &self.handles {
            let attrs: String = h.attributes.iter().map(|a| format!(" ({a})")).collect();
            out.push_str(&format!(
                "{:04x}: Object: {:016x}  GrantedAccess: {:08x}{attrs} Entry: {:016x}\n",
                h.handle, h.object_address, h.granted_access, h.entry
            ));
            if let Some(o) = &h.object {
                render_object(o, "", out);
            }
            if let Some(err) = &h.error {
                out.push_str(&format!("    (object unreadable: {err})\n"));
            }
            out.push('\n');
        }
        for n in &self.notes {
            out.push_str(&format!("NOTE: {n}\n"));
        }
    }
}
