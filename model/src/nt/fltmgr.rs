//! The filter manager as fltmgr.sys's own symbols (fltMgr.pdb) describe it: the frames on
//! `FltGlobals.FrameList`, each frame's registered filters and attached volumes, each filter's
//! and each volume's instances, the callback nodes, and an operation's IRP_CTRL with the
//! callback data it holds (`Data`) and its completion nodes. Every function takes fltmgr.sys's
//! base and table; every list walk is bounded and loop-checked, and an object whose
//! `_FLT_OBJECT` type does not match what it is read as is said not to be one.

use std::sync::Arc;

use kdnet_symbols::TypeTable;

use crate::nt::view::View;
use crate::nt::{Kernel, ModelError};

/// FLT_OBFL_TYPE_* of `_FLT_OBJECT.Flags`.
pub const TYPE_INSTANCE: u64 = 0x0100_0000;
/// A filter.
pub const TYPE_FILTER: u64 = 0x0200_0000;
/// A volume.
pub const TYPE_VOLUME: u64 = 0x0400_0000;
/// Callback arrays are indexed by major function + this.
pub const OPERATION_BIAS: u64 = 22;
/// Most entries on any one filter manager list.
const MAX_ENTRIES: usize = 65_536;

/// A block of fltmgr's, read whole (and the rest of its page: names usually follow).
pub fn view(k: &mut Kernel, t: &Arc<TypeTable>, ty: &str, addr: u64) -> Result<View, ModelError> {
    let size = t.size_of(ty)? as usize;
    let bytes = k.mem.kread_ahead(addr, size)?;
    Ok(View::new(t.clone(), ty, addr, bytes))
}

fn name(k: &mut Kernel, v: &View, field: &str) -> String {
    match k.unicode_string_in(v, field) {
        Ok(s) => s,
        Err(e) => {
            k.note_incomplete(format!("{field} of {:x}: {e}", v.addr));
            format!("(unreadable: {e})")
        }
    }
}

/// The containing records of a list of `ty` linked through `link`, starting at the list head
/// `head`, bounded; why it stopped early goes in `notes`.
fn records(
    k: &mut Kernel,
    t: &Arc<TypeTable>,
    head: u64,
    ty: &str,
    link: &str,
    notes: &mut Vec<String>,
) -> Result<Vec<u64>, ModelError> {
    let off = t.offset(ty, link)?;
    let w = k.walk_list(head, None, MAX_ENTRIES, true)?;
    if let Some(n) = w.note {
        let n = format!("{ty} list at {head:x}: {n}");
        k.note_incomplete(n.clone());
        notes.push(n);
    }
    Ok(w.entries.into_iter().map(|e| e - off).collect())
}

fn check_type(v: &View, want: u64, what: &str) -> Result<(), ModelError> {
    let flags = v.get("Base.Flags")?;
    if flags & 0x0700_0000 != want {
        return Err(ModelError::Corrupt(format!(
            "{:#x} is not a filter manager {what}: its _FLT_OBJECT flags are {flags:#x}",
            v.addr
        )));
    }
    Ok(())
}

/// A frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Its address.
    pub addr: u64,
    /// FrameID.
    pub id: u32,
    /// The altitudes it covers.
    pub altitude_low: String,
    /// Highest altitude.
    pub altitude_high: String,
    /// Its registered filters' list head.
    pub filters_head: u64,
    /// Its attached volumes' list head.
    pub volumes_head: u64,
}

/// The frames on `FltGlobals.FrameList`.
pub fn frames(
    k: &mut Kernel,
    base: u64,
    t: &Arc<TypeTable>,
    notes: &mut Vec<String>,
) -> Result<Vec<Frame>, ModelError> {
    let globals = base + t.require_symbol("FltGlobals")?;
    let head = globals + t.offset("_GLOBALS", "FrameList.rList")?;
    let mut out = Vec::new();
    for f in records(k, t, head, "_FLTP_FRAME", "Links", notes)? {
        let v = view(k, t, "_FLTP_FRAME", f)?;
        out.push(Frame {
            addr: f,
            id: v.get("FrameID")? as u32,
            altitude_low: name(k, &v, "AltitudeIntervalLow"),
            altitude_high: name(k, &v, "AltitudeIntervalHigh"),
            filters_head: v.addr_of("RegisteredFilters.rList")?,
            volumes_head: v.addr_of("AttachedVolumes.rList")?,
        });
    }
    Ok(out)
}

/// A filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Its address.
    pub addr: u64,
    /// Name.
    pub name: String,
    /// DefaultAltitude.
    pub altitude: String,
    /// Flags.
    pub flags: u32,
    /// Its frame.
    pub frame: u64,
    /// Its driver object.
    pub driver: u64,
    /// Its instances, on its instance list.
    pub instances: Vec<u64>,
    /// The list's count (rCount).
    pub count: u32,
}

/// The filter at `addr`.
pub fn filter(
    k: &mut Kernel,
    t: &Arc<TypeTable>,
    addr: u64,
    notes: &mut Vec<String>,
) -> Result<Filter, ModelError> {
    let v = view(k, t, "_FLT_FILTER", addr)?;
    check_type(&v, TYPE_FILTER, "filter")?;
    let head = v.addr_of("InstanceList.rList")?;
    let instances = records(k, t, head, "_FLT_INSTANCE", "FilterLink", notes)?;
    Ok(Filter {
        addr,
        name: name(k, &v, "Name"),
        altitude: name(k, &v, "DefaultAltitude"),
        flags: v.get("Flags")? as u32,
        frame: v.get("Frame")?,
        driver: v.get("DriverObject")?,
        instances,
        count: v.get("InstanceList.rCount")? as u32,
    })
}

/// The filters registered in a frame, in list order.
pub fn filters(
    k: &mut Kernel,
    t: &Arc<TypeTable>,
    frame: &Frame,
    notes: &mut Vec<String>,
) -> Result<Vec<Filter>, ModelError> {
    let mut out = Vec::new();
    for f in records(
        k,
        t,
        frame.filters_head,
        "_FLT_FILTER",
        "Base.PrimaryLink",
        notes,
    )? {
        out.push(filter(k, t, f, notes)?);
    }
    Ok(out)
}

/// A volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// Its address.
    pub addr: u64,
    /// DeviceName.
    pub name: String,
    /// FileSystemType: value and name.
    pub fs_type: (u32, Option<String>),
    /// Flags.
    pub flags: u32,
    /// The filter manager's device on the volume.
    pub device: u64,
    /// The disk's device.
    pub disk_device: u64,
    /// Its frame.
    pub frame: u64,
    /// Its instances, highest altitude first.
    pub instances: Vec<u64>,
}

/// The volume at `addr`.
pub fn volume(
    k: &mut Kernel,
    t: &Arc<TypeTable>,
    addr: u64,
    notes: &mut Vec<String>,
) -> Result<Volume, ModelError> {
    let v = view(k, t, "_FLT_VOLUME", addr)?;
    check_type(&v, TYPE_VOLUME, "volume")?;
    let head = v.addr_of("InstanceList.rList")?;
    let instances = records(k, t, head, "_FLT_INSTANCE", "Base.PrimaryLink", notes)?;
    let fs = v.get("FileSystemType")? as u32;
    Ok(Volume {
        addr,
        name: name(k, &v, "DeviceName"),
        fs_type: (
            fs,
            t.enum_name("_FLT_FILESYSTEM_TYPE", i64::from(fs))
                .map(str::to_string),
        ),
        flags: v.get("Flags")? as u32,
        device: v.get("DeviceObject")?,
        disk_device: v.get("DiskDeviceObject")?,
        frame: v.get("Frame")?,
        instances,
    })
}

/// The volumes attached in a frame.
pub fn volumes(
    k: &mut Kernel,
    t: &Arc<TypeTable>,
    frame: &Frame,
    notes: &mut Vec<String>,
) -> Result<Vec<Volume>, ModelError> {
    let mut out = Vec::new();
    for a in records(
        k,
        t,
        frame.volumes_head,
        "_FLT_VOLUME",
        "Base.PrimaryLink",
        notes,
    )? {
        out.push(volume(k, t, a, notes)?);
    }
    Ok(out)
}

/// An instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Its address.
    pub addr: u64,
    /// Name.
    pub name: String,
    /// Altitude.
    pub altitude: String,
    /// Flags.
    pub flags: u32,
    /// Its volume.
    pub volume: u64,
    /// Its filter.
    pub filter: u64,
    /// Its callback nodes that are set: (major function, node, pre, post).
    pub callbacks: Vec<(i64, u64, u64, u64)>,
}

/// The instance at `addr`, with its callback nodes.
pub fn instance(k: &mut Kernel, t: &Arc<TypeTable>, addr: u64) -> Result<Instance, ModelError> {
    let v = view(k, t, "_FLT_INSTANCE", addr)?;
    check_type(&v, TYPE_INSTANCE, "instance")?;
    let slots = v.addr_of("CallbackNodes")? - addr;
    let mut callbacks = Vec::new();
    for i in 0..50u64 {
        let Some(b) = v
            .bytes
            .get((slots + 8 * i) as usize..(slots + 8 * i + 8) as usize)
        else {
            break;
        };
        let node = u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
        if node == 0 {
            continue;
        }
        let n = view(k, t, "_CALLBACK_NODE", node)?;
        callbacks.push((
            i as i64 - OPERATION_BIAS as i64,
            node,
            n.get("PreOperation")?,
            n.get("PostOperation")?,
        ));
    }
    Ok(Instance {
        addr,
        name: name(k, &v, "Name"),
        altitude: name(k, &v, "Altitude"),
        flags: v.get("Flags")? as u32,
        volume: v.get("Volume")?,
        filter: v.get("Filter")?,
        callbacks,
    })
}

/// The name of a filter, or why it could not be read.
pub fn filter_name(k: &mut Kernel, t: &Arc<TypeTable>, filter: u64) -> String {
    match view(k, t, "_FLT_FILTER", filter) {
        Ok(v) => name(k, &v, "Name"),
        Err(e) => format!("(unreadable: {e})"),
    }
}

/// A completion node: a filter that has seen the operation and wants its post-operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletionNode {
    /// Its address.
    pub addr: u64,
    /// Its callback node.
    pub callback_node: u64,
    /// The instance (from the callback node).
    pub instance: u64,
    /// The post-operation routine.
    pub post: u64,
    /// The completion context.
    pub context: u64,
}

/// An operation's IRP_CTRL and the callback data inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IrpCtrl {
    /// Its address.
    pub addr: u64,
    /// Flags.
    pub flags: u32,
    /// MajorFunction.
    pub major: u8,
    /// The IRP.
    pub irp: u64,
    /// DeviceObject.
    pub device: u64,
    /// FileObject.
    pub file: u64,
    /// CompletionStackLength and NextCompletion.
    pub stack: (u8, u8),
    /// The completion nodes in use (filters whose post-operation is due).
    pub completions: Vec<CompletionNode>,
    /// The callback node whose pre-operation pended it (0 when none).
    pub pending_node: u64,
    /// That node's instance.
    pub pending_instance: u64,
    /// The callback data (`Data`).
    pub cbd: u64,
    /// Its Flags.
    pub cbd_flags: u32,
    /// Its Thread.
    pub thread: u64,
    /// Its Iopb.
    pub iopb: u64,
    /// IoStatus.Status and Information.
    pub status: (u32, u64),
    /// RequestorMode.
    pub requestor_mode: u8,
    /// The parameters: MajorFunction, MinorFunction, IrpFlags, TargetFileObject,
    /// TargetInstance, the six argument words.
    pub iopb_fields: (u8, u8, u32, u64, u64, [u64; 6]),
}

/// The IRP_CTRL at `addr`. Its callback data's Iopb must point at a readable parameter block
/// whose major function is the IRP_CTRL's: otherwise it is no IRP_CTRL.
pub fn irp_ctrl(k: &mut Kernel, t: &Arc<TypeTable>, addr: u64) -> Result<IrpCtrl, ModelError> {
    let v = view(k, t, "_IRP_CTRL", addr)?;
    let major = v.get("MajorFunction")? as u8;
    let cbd = v.addr_of("Data")?;
    let iopb = v.get("Data.Iopb")?;
    let p = view(k, t, "_FLT_IO_PARAMETER_BLOCK", iopb).map_err(|e| {
        ModelError::Corrupt(format!(
            "{addr:#x} is not an IRP_CTRL: its callback data's Iopb {iopb:#x} is unreadable ({e})"
        ))
    })?;
    let pmajor = p.get("MajorFunction")? as u8;
    if pmajor != major {
        return Err(ModelError::Corrupt(format!(
            "{addr:#x} is not an IRP_CTRL: its major function {major:#x} is not its parameter block's ({pmajor:#x})"
        )));
    }
    let len = v.get("CompletionStackLength")? as u8;
    let next = v.get("NextCompletion")? as u8;
    let mut completions = Vec::new();
    let stack = v.get("CompletionStack")?;
    if next > len {
        k.note_incomplete(format!(
            "IRP_CTRL {addr:x}: NextCompletion {next} is past CompletionStackLength {len}"
        ));
    }
    let node_size = t.size_of("_COMPLETION_NODE")?;
    for i in 0..u64::from(next.min(len)) {
        let a = stack + i * node_size;
        let n = view(k, t, "_COMPLETION_NODE", a)?;
        let cb = n.get("CallbackNode")?;
        let (instance, post) = match view(k, t, "_CALLBACK_NODE", cb) {
            Ok(c) => (c.get("Instance")?, c.get("PostOperation")?),
            Err(e) => {
                k.note_incomplete(format!("completion node {a:x}: its callback node: {e}"));
                (0, 0)
            }
        };
        completions.push(CompletionNode {
            addr: a,
            callback_node: cb,
            instance,
            post,
            context: n.get("Context")?,
        });
    }
    let pending_node = v.get("PendingCallbackNode")?;
    let pending_instance = if pending_node != 0 {
        view(k, t, "_CALLBACK_NODE", pending_node)?.get("Instance")?
    } else {
        0
    };
    let args = p.bytes_of("Parameters", 48)?;
    let mut words = [0u64; 6];
    for (i, w) in words.iter_mut().enumerate() {
        *w = u64::from_le_bytes(args[8 * i..8 * i + 8].try_into().unwrap_or([0; 8]));
    }
    Ok(IrpCtrl {
        addr,
        flags: v.get("Flags")? as u32,
        major,
        irp: v.get("Irp")?,
        device: v.get("DeviceObject")?,
        file: v.get("FileObject")?,
        stack: (len, next),
        completions,
        pending_node,
        pending_instance,
        cbd,
        cbd_flags: v.get("Data.Flags")? as u32,
        thread: v.get("Data.Thread")?,
        iopb,
        status: (
            v.get("Data.IoStatus.Status")? as u32,
            v.get("Data.IoStatus.Information")?,
        ),
        requestor_mode: v.get("Data.RequestorMode")? as u8,
        iopb_fields: (
            pmajor,
            p.get("MinorFunction")? as u8,
            p.get("IrpFlags")? as u32,
            p.get("TargetFileObject")?,
            p.get("TargetInstance")?,
            words,
        ),
    })
}

/// The IRP_CTRL holding the callback data at `cbd`.
pub fn irp_ctrl_of_cbd(t: &TypeTable, cbd: u64) -> Result<u64, ModelError> {
    Ok(cbd.wrapping_sub(t.offset("_IRP_CTRL", "Data")?))
}
