//! The I/O manager's structures: IRPs and their stack locations, device and driver objects,
//! device stacks, file objects and the PnP tree's device nodes. Each is checked to be what it
//! claims (its Type, sizes and counts) before it is believed; what is wrong is said, with what
//! could still be read.

use std::collections::HashSet;

use kdnet_arch::le::Le;

use super::{Kernel, ModelError};

/// IO_TYPE_* values.
pub const IO_TYPE_DEVICE: u64 = 3;
/// IO_TYPE_DRIVER.
pub const IO_TYPE_DRIVER: u64 = 4;
/// IO_TYPE_FILE.
pub const IO_TYPE_FILE: u64 = 5;
/// IO_TYPE_IRP.
pub const IO_TYPE_IRP: u64 = 6;
/// IRP_MJ_MAXIMUM_FUNCTION + 1.
pub const MAJOR_FUNCTIONS: usize = 28;
/// Most stack locations an IRP can have (StackCount is a CCHAR).
pub const MAX_STACK: u64 = 127;
/// Most devices followed on a driver's list or up and down a stack.
pub const MAX_DEVICES: usize = 4096;
/// Most device nodes walked.
pub const MAX_DEVNODES: usize = 65_536;

/// The members of `_FAST_IO_DISPATCH` after its size, in order.
pub const FAST_IO: &[&str] = &[
    "FastIoCheckIfPossible",
    "FastIoRead",
    "FastIoWrite",
    "FastIoQueryBasicInfo",
    "FastIoQueryStandardInfo",
    "FastIoLock",
    "FastIoUnlockSingle",
    "FastIoUnlockAll",
    "FastIoUnlockAllByKey",
    "FastIoDeviceControl",
    "AcquireFileForNtCreateSection",
    "ReleaseFileForNtCreateSection",
    "FastIoDetachDevice",
    "FastIoQueryNetworkOpenInfo",
    "AcquireForModWrite",
    "MdlRead",
    "MdlReadComplete",
    "PrepareMdlWrite",
    "MdlWriteComplete",
    "FastIoReadCompressed",
    "FastIoWriteCompressed",
    "MdlReadCompleteCompressed",
    "MdlWriteCompleteCompressed",
    "FastIoQueryOpen",
    "ReleaseForModWrite",
    "AcquireForCcFlush",
    "ReleaseForCcFlush",
];

/// One stack location of an IRP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackLocation {
    /// 1-based, as CurrentLocation counts.
    pub index: u8,
    /// Its address.
    pub addr: u64,
    /// IRP_MJ_*.
    pub major: u8,
    /// IRP_MN_*.
    pub minor: u8,
    /// SL_* flags.
    pub flags: u8,
    /// Control (SL_PENDING_RETURNED, SL_INVOKE_ON_*).
    pub control: u8,
    /// Device object.
    pub device: u64,
    /// File object.
    pub file: u64,
    /// Completion routine.
    pub completion: u64,
    /// Its context.
    pub context: u64,
    /// The first four words of Parameters.
    pub args: [u64; 4],
}

/// An IRP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Irp {
    /// Its address.
    pub addr: u64,
    /// Size.
    pub size: u64,
    /// StackCount.
    pub stack_count: u8,
    /// CurrentLocation.
    pub current: u8,
    /// Flags.
    pub flags: u32,
    /// MdlAddress.
    pub mdl: u64,
    /// AssociatedIrp (SystemBuffer, MasterIrp or IrpCount).
    pub associated: u64,
    /// Tail.Overlay.Thread.
    pub thread: u64,
    /// Cancel.
    pub cancel: bool,
    /// CancelIrql.
    pub cancel_irql: u8,
    /// CancelRoutine.
    pub cancel_routine: u64,
    /// PendingReturned.
    pub pending_returned: bool,
    /// IoStatus.Status.
    pub status: u32,
    /// IoStatus.Information.
    pub information: u64,
    /// UserEvent.
    pub user_event: u64,
    /// UserIosb.
    pub user_iosb: u64,
    /// UserBuffer.
    pub user_buffer: u64,
    /// RequestorMode.
    pub requestor_mode: u8,
    /// Tail.Overlay.OriginalFileObject.
    pub original_file: u64,
    /// Tail.Overlay.CurrentStackLocation.
    pub current_stack_location: u64,
    /// Tail.Overlay.AuxiliaryBuffer.
    pub auxiliary_buffer: u64,
    /// Its stack locations, [0] the lowest.
    pub locations: Vec<StackLocation>,
    /// What is wrong with it.
    pub problems: Vec<String>,
}

impl Irp {
    /// Whether a driver holds it: CurrentLocation within the stack.
    pub fn current_in_range(&self) -> bool {
        self.current >= 1 && self.current <= self.stack_count
    }
}

/// Reads the IRP at `addr`. Not an IRP (its Type is not 6) is an error; an IRP whose sizes or
/// counts cannot be right is read as far as they allow, with each problem said.
pub fn irp(k: &mut Kernel, addr: u64) -> Result<Irp, ModelError> {
    let nt = k.nt()?;
    let v = k.view("_IRP", addr)?;
    let ty = v.get("Type")?;
    if ty != IO_TYPE_IRP {
        return Err(ModelError::Corrupt(format!(
            "{addr:#x} is not an IRP: its Type is {ty:#x} (an IRP's is 6); a freed IRP or another \
             structure (`dt nt!_IRP {addr:x}` shows the bytes)"
        )));
    }
    let irp_size = nt.size_of("_IRP")?;
    let loc_size = nt.size_of("_IO_STACK_LOCATION")?;
    let size = v.get("Size")?;
    let stack_count = v.get("StackCount")? as u8;
    let current = v.get("CurrentLocation")? as u8;
    let mut problems = Vec::new();
    let mut readable = u64::from(stack_count);
    if stack_count == 0 || u64::from(stack_count) > MAX_STACK {
        problems.push(format!(
            "StackCount is {} (1 to {MAX_STACK}): no stack location is shown",
            stack_count as i8
        ));
        readable = 0;
    } else if size < irp_size + readable * loc_size {
        let fits = size.saturating_sub(irp_size) / loc_size;
        problems.push(format!(
            "Size {size:#x} holds {fits} stack locations, not the {stack_count} of StackCount: \
             {fits} shown"
        ));
        readable = fits;
    }
    if u64::from(current) == u64::from(stack_count) + 2 && stack_count != 0 {
        problems.push(format!(
            "CurrentLocation is {current}, past StackCount + 1 ({}): the IRP was completed \
             more than once",
            u64::from(stack_count) + 1
        ));
    } else if current == 0 || u64::from(current) > u64::from(stack_count) + 1 {
        problems.push(format!(
            "CurrentLocation is {} (1 to {} for this IRP): no location is current",
            current as i8,
            u64::from(stack_count) + 1
        ));
    }
    let first = addr + irp_size;
    let mut locations = Vec::new();
    if readable > 0 {
        let bytes = k.mem.kread(first, (readable * loc_size) as usize)?;
        let o = |f: &str| nt.offset("_IO_STACK_LOCATION", f);
        let (major, minor, flags, control) = (
            o("MajorFunction")?,
            o("MinorFunction")?,
            o("Flags")?,
            o("Control")?,
        );
        let (params, device, file, completion, context) = (
            o("Parameters")?,
            o("DeviceObject")?,
            o("FileObject")?,
            o("CompletionRoutine")?,
            o("Context")?,
        );
        for i in 0..readable {
            let b = &bytes[(i * loc_size) as usize..((i + 1) * loc_size) as usize];
            let l = Le(b);
            let p = params as usize;
            locations.push(StackLocation {
                index: (i + 1) as u8,
                addr: first + i * loc_size,
                major: b[major as usize],
                minor: b[minor as usize],
                flags: b[flags as usize],
                control: b[control as usize],
                device: l.u64(device as usize),
                file: l.u64(file as usize),
                completion: l.u64(completion as usize),
                context: l.u64(context as usize),
                args: [l.u64(p), l.u64(p + 8), l.u64(p + 16), l.u64(p + 24)],
            });
        }
    }
    let cancel_routine = v.get("CancelRoutine")?;
    Ok(Irp {
        addr,
        size,
        stack_count,
        current,
        flags: v.get("Flags")? as u32,
        mdl: v.get("MdlAddress")?,
        associated: v.get("AssociatedIrp.SystemBuffer")?,
        thread: v.get("Tail.Overlay.Thread")?,
        cancel: v.get("Cancel")? != 0,
        cancel_irql: v.get("CancelIrql")? as u8,
        cancel_routine,
        pending_returned: v.get("PendingReturned")? != 0,
        status: v.get("IoStatus.Status")? as u32,
        information: v.get("IoStatus.Information")?,
        user_event: v.get("UserEvent")?,
        user_iosb: v.get("UserIosb")?,
        user_buffer: v.get("UserBuffer")?,
        requestor_mode: v.get("RequestorMode")? as u8,
        original_file: v.get("Tail.Overlay.OriginalFileObject")?,
        current_stack_location: v.get("Tail.Overlay.CurrentStackLocation")?,
        auxiliary_buffer: v.get("Tail.Overlay.AuxiliaryBuffer")?,
        locations,
        problems,
    })
}

/// A device object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Its address.
    pub addr: u64,
    /// Its name (null when unnamed).
    pub name: Option<String>,
    /// Its driver object.
    pub driver: u64,
    /// The driver's name (`\Driver\cimfs`).
    pub driver_name: String,
    /// The next device of the same driver.
    pub next: u64,
    /// The device attached on top of it.
    pub attached: u64,
    /// The device it is attached to (from its DeviceObjectExtension).
    pub attached_to: u64,
    /// CurrentIrp.
    pub current_irp: u64,
    /// ReferenceCount.
    pub reference_count: i64,
    /// Flags (DO_*).
    pub flags: u32,
    /// Characteristics (FILE_*).
    pub characteristics: u32,
    /// Vpb.
    pub vpb: u64,
    /// DeviceExtension.
    pub extension: u64,
    /// DeviceObjectExtension.
    pub devobj_extension: u64,
    /// ExtensionFlags of the DeviceObjectExtension.
    pub extension_flags: u32,
    /// DeviceType.
    pub device_type: u32,
    /// StackSize.
    pub stack_size: u8,
    /// Its device node (PDOs).
    pub devnode: u64,
}

/// Reads the device object at `addr` (its Type must be 3).
pub fn device(k: &mut Kernel, addr: u64) -> Result<Device, ModelError> {
    let v = k.view_ahead("_DEVICE_OBJECT", addr)?;
    let ty = v.get("Type")?;
    if ty != IO_TYPE_DEVICE {
        return Err(ModelError::Corrupt(format!(
            "{addr:#x} is not a device object: its Type is {ty:#x} (a device object's is 3)"
        )));
    }
    let driver = v.get("DriverObject")?;
    let driver_name = driver_name(k, driver);
    let de = v.get("DeviceObjectExtension")?;
    let (attached_to, devnode, extension_flags) = if de != 0 {
        let x = k.view_ahead("_DEVOBJ_EXTENSION", de)?;
        (
            x.get("AttachedTo")?,
            x.get("DeviceNode")?,
            x.get("ExtensionFlags")? as u32,
        )
    } else {
        (0, 0, 0)
    };
    let name = k.object(addr).ok().and_then(|o| o.name);
    Ok(Device {
        addr,
        name,
        driver,
        driver_name,
        next: v.get("NextDevice")?,
        attached: v.get("AttachedDevice")?,
        attached_to,
        current_irp: v.get("CurrentIrp")?,
        reference_count: v.get_signed("ReferenceCount")?,
        flags: v.get("Flags")? as u32,
        characteristics: v.get("Characteristics")? as u32,
        vpb: v.get("Vpb")?,
        extension: v.get("DeviceExtension")?,
        devobj_extension: de,
        extension_flags,
        device_type: v.get("DeviceType")? as u32,
        stack_size: v.get("StackSize")? as u8,
        devnode,
    })
}

/// A driver object's name (its DriverName), or why it could not be read.
pub fn driver_name(k: &mut Kernel, driver: u64) -> String {
    if driver == 0 {
        return String::new();
    }
    let at = match k
        .nt()
        .and_then(|nt| Ok(nt.offset("_DRIVER_OBJECT", "DriverName")?))
    {
        Ok(o) => driver + o,
        Err(e) => return format!("(name unreadable: {e})"),
    };
    match k.unicode_string(at) {
        Ok(s) => s,
        Err(e) => {
            k.note_incomplete(format!("the name of driver {driver:#x}: {e}"));
            format!("(name unreadable: {e})")
        }
    }
}

/// A driver object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Driver {
    /// Its address.
    pub addr: u64,
    /// DriverName.
    pub name: String,
    /// Its devices, in list order.
    pub devices: Vec<u64>,
    /// DriverStart and DriverSize.
    pub start: u64,
    /// DriverSize.
    pub size: u64,
    /// DriverInit.
    pub init: u64,
    /// DriverStartIo.
    pub start_io: u64,
    /// DriverUnload.
    pub unload: u64,
    /// DriverExtension.AddDevice.
    pub add_device: u64,
    /// Service key name.
    pub service: String,
    /// MajorFunction[].
    pub dispatch: Vec<u64>,
    /// FastIoDispatch.
    pub fast_io: u64,
    /// The fast I/O routines set: member and routine.
    pub fast_io_routines: Vec<(String, u64)>,
    /// Flags.
    pub flags: u32,
    /// Why the device list is not whole.
    pub notes: Vec<String>,
}

/// Reads the driver object at `addr` (its Type must be 4), its device list bounded.
pub fn driver(k: &mut Kernel, addr: u64) -> Result<Driver, ModelError> {
    let nt = k.nt()?;
    let v = k.view_ahead("_DRIVER_OBJECT", addr)?;
    let ty = v.get("Type")?;
    if ty != IO_TYPE_DRIVER {
        return Err(ModelError::Corrupt(format!(
            "{addr:#x} is not a driver object: its Type is {ty:#x} (a driver object's is 4)"
        )));
    }
    let name = driver_name(k, addr);
    let mut devices = Vec::new();
    let mut notes = Vec::new();
    let mut seen = HashSet::new();
    let mut d = v.get("DeviceObject")?;
    let next = nt.offset("_DEVICE_OBJECT", "NextDevice")?;
    while d != 0 {
        if devices.len() >= MAX_DEVICES {
            notes.push(format!("stopped after {MAX_DEVICES} devices (limit)"));
            break;
        }
        if !seen.insert(d) {
            notes.push(format!("the device list loops back to {d:#x}"));
            break;
        }
        devices.push(d);
        d = match k.mem.u64(d + next) {
            Ok(n) => n,
            Err(e) => {
                notes.push(format!("device {d:#x} is unreadable: {e}"));
                break;
            }
        };
    }
    for n in &notes {
        k.note_incomplete(format!("driver {addr:#x}: {n}"));
    }
    let mf = nt.offset("_DRIVER_OBJECT", "MajorFunction")?;
    let table = k.mem.kread(addr + mf, 8 * MAJOR_FUNCTIONS)?;
    let dispatch = (0..MAJOR_FUNCTIONS)
        .map(|i| Le(&table).u64(8 * i))
        .collect();
    let dx = v.get("DriverExtension")?;
    let (add_device, service) = if dx != 0 {
        let x = k.view_ahead("_DRIVER_EXTENSION", dx)?;
        let s = k
            .unicode_string(x.addr_of("ServiceKeyName")?)
            .unwrap_or_default();
        (x.get("AddDevice")?, s)
    } else {
        (0, String::new())
    };
    let fast_io = v.get("FastIoDispatch")?;
    let mut fast_io_routines = Vec::new();
    if fast_io != 0 {
        let f = k.view("_FAST_IO_DISPATCH", fast_io)?;
        let declared = f.get("SizeOfFastIoDispatch")?;
        for m in FAST_IO {
            if !f.has(m) {
                continue;
            }
            let off = f.addr_of(m)? - fast_io;
            if off + 8 > declared {
                break;
            }
            let r = f.get(m)?;
            if r != 0 {
                fast_io_routines.push((m.to_string(), r));
            }
        }
    }
    Ok(Driver {
        addr,
        name,
        devices,
        start: v.get("DriverStart")?,
        size: v.get("DriverSize")?,
        init: v.get("DriverInit")?,
        start_io: v.get("DriverStartIo")?,
        unload: v.get("DriverUnload")?,
        add_device,
        service,
        dispatch,
        fast_io,
        fast_io_routines,
        flags: v.get("Flags")? as u32,
        notes,
    })
}

/// The device stack `addr` is in, top first: up through AttachedDevice to the top, then down
/// through each DeviceObjectExtension's AttachedTo. Bounded and loop-checked.
pub fn device_stack(k: &mut Kernel, addr: u64) -> Result<(Vec<Device>, Vec<String>), ModelError> {
    let mut notes = Vec::new();
    let mut top = device(k, addr)?;
    let mut seen = HashSet::from([addr]);
    while top.attached != 0 {
        if seen.len() >= MAX_DEVICES || !seen.insert(top.attached) {
            notes.push(format!("the stack above {:#x} loops", top.addr));
            break;
        }
        top = device(k, top.attached)?;
    }
    let mut out = vec![top];
    let mut seen = HashSet::from([out[0].addr]);
    loop {
        let below = out[out.len() - 1].attached_to;
        if below == 0 {
            break;
        }
        if out.len() >= MAX_DEVICES || !seen.insert(below) {
            notes.push(format!("the stack below {below:#x} loops"));
            break;
        }
        match device(k, below) {
            Ok(d) => out.push(d),
            Err(e) => {
                notes.push(format!("the device below at {below:#x}: {e}"));
                break;
            }
        }
    }
    for n in &notes {
        k.note_incomplete(n.clone());
    }
    Ok((out, notes))
}

/// A file object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileObject {
    /// Its address.
    pub addr: u64,
    /// FileName.
    pub name: String,
    /// DeviceObject.
    pub device: u64,
    /// Vpb.
    pub vpb: u64,
    /// FsContext.
    pub fs_context: u64,
    /// FsContext2.
    pub fs_context2: u64,
    /// SectionObjectPointer.
    pub section_object_pointer: u64,
    /// PrivateCacheMap.
    pub private_cache_map: u64,
    /// FinalStatus.
    pub final_status: u32,
    /// RelatedFileObject.
    pub related: u64,
    /// Flags (FO_*).
    pub flags: u32,
    /// ReadAccess, WriteAccess, DeleteAccess, SharedRead, SharedWrite, SharedDelete.
    pub access: [bool; 6],
    /// DeletePending.
    pub delete_pending: bool,
    /// CurrentByteOffset.
    pub current_byte_offset: u64,
}

/// Reads the file object at `addr` (its Type must be 5).
pub fn file_object(k: &mut Kernel, addr: u64) -> Result<FileObject, ModelError> {
    let v = k.view_ahead("_FILE_OBJECT", addr)?;
    let ty = v.get("Type")?;
    if ty != IO_TYPE_FILE {
        return Err(ModelError::Corrupt(format!(
            "{addr:#x} is not a file object: its Type is {ty:#x} (a file object's is 5)"
        )));
    }
    let name = match k.unicode_string(v.addr_of("FileName")?) {
        Ok(s) => s,
        Err(e) => {
            k.note_incomplete(format!("the name of file object {addr:#x}: {e}"));
            format!("(name unreadable: {e})")
        }
    };
    let b = |f: &str| v.get(f).map(|x| x != 0);
    Ok(FileObject {
        addr,
        name,
        device: v.get("DeviceObject")?,
        vpb: v.get("Vpb")?,
        fs_context: v.get("FsContext")?,
        fs_context2: v.get("FsContext2")?,
        section_object_pointer: v.get("SectionObjectPointer")?,
        private_cache_map: v.get("PrivateCacheMap")?,
        final_status: v.get("FinalStatus")? as u32,
        related: v.get("RelatedFileObject")?,
        flags: v.get("Flags")? as u32,
        access: [
            b("ReadAccess")?,
            b("WriteAccess")?,
            b("DeleteAccess")?,
            b("SharedRead")?,
            b("SharedWrite")?,
            b("SharedDelete")?,
        ],
        delete_pending: b("DeletePending")?,
        current_byte_offset: v.get("CurrentByteOffset.QuadPart")?,
    })
}

/// A device node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevNode {
    /// Its address.
    pub addr: u64,
    /// Depth below the root.
    pub depth: usize,
    /// PhysicalDeviceObject.
    pub pdo: u64,
    /// InstancePath.
    pub instance: String,
    /// ServiceName.
    pub service: String,
    /// State: value and `_PNP_DEVNODE_STATE` name.
    pub state: (u32, Option<String>),
    /// PreviousState.
    pub previous: (u32, Option<String>),
    /// Problem (CM_PROB_*).
    pub problem: u32,
    /// Parent.
    pub parent: u64,
}

/// Reads one device node.
pub fn devnode(k: &mut Kernel, addr: u64, depth: usize) -> Result<(DevNode, u64, u64), ModelError> {
    let nt = k.nt()?;
    let v = k.view("_DEVICE_NODE", addr)?;
    let state = v.get("State")? as u32;
    let previous = v.get("PreviousState")? as u32;
    let name = |s: u32| {
        nt.enum_name("_PNP_DEVNODE_STATE", i64::from(s))
            .map(str::to_string)
    };
    let instance = k
        .unicode_string(v.addr_of("InstancePath")?)
        .unwrap_or_else(|e| format!("(unreadable: {e})"));
    let service = k
        .unicode_string(v.addr_of("ServiceName")?)
        .unwrap_or_else(|e| format!("(unreadable: {e})"));
    Ok((
        DevNode {
            addr,
            depth,
            pdo: v.get("PhysicalDeviceObject")?,
            instance,
            service,
            state: (state, name(state)),
            previous: (previous, name(previous)),
            problem: v.get("Problem")? as u32,
            parent: v.get("Parent")?,
        },
        v.get("Child")?,
        v.get("Sibling")?,
    ))
}

/// The device tree under `root` (nt!IopRootDeviceNode when 0), depth first, bounded and
/// loop-checked; with `recurse` false only `root` itself.
pub fn devnodes(
    k: &mut Kernel,
    root: u64,
    recurse: bool,
) -> Result<(Vec<DevNode>, Vec<String>), ModelError> {
    let root = if root == 0 {
        k.mem.u64(k.sym("IopRootDeviceNode")?)?
    } else {
        root
    };
    let mut out = Vec::new();
    let mut notes = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![(root, 0usize)];
    while let Some((n, depth)) = stack.pop() {
        if n == 0 {
            continue;
        }
        if out.len() >= MAX_DEVNODES {
            notes.push(format!("stopped after {MAX_DEVNODES} device nodes (limit)"));
            break;
        }
        if !seen.insert(n) {
            notes.push(format!("the device tree loops back to {n:#x}"));
            continue;
        }
        let (node, child, sibling) = match devnode(k, n, depth) {
            Ok(x) => x,
            Err(e) if e.is_layout() => return Err(e),
            Err(e) => {
                notes.push(format!("device node {n:#x} is unreadable: {e}"));
                continue;
            }
        };
        out.push(node);
        if !recurse {
            break;
        }
        if depth > 0 {
            stack.push((sibling, depth));
        }
        stack.push((child, depth + 1));
    }
    for n in &notes {
        k.note_incomplete(n.clone());
    }
    Ok((out, notes))
}

/// The IRPs on the threads' IRP lists: (IRP, thread) pairs, how many threads were looked at,
/// and why the walk is not whole.
pub type ThreadIrps = (Vec<(u64, u64)>, usize, Vec<String>);

/// The IRPs on every thread's IRP list. An empty list costs nothing beyond the thread itself.
pub fn thread_irps(k: &mut Kernel) -> Result<ThreadIrps, ModelError> {
    let nt = k.nt()?;
    let irp_list = nt.offset("_ETHREAD", "IrpList")?;
    let link = nt.offset("_IRP", "ThreadListEntry")?;
    let (procs, note) = k.processes()?;
    let mut notes: Vec<String> = note
        .into_iter()
        .map(|n| format!("process list: {n}"))
        .collect();
    let mut out = Vec::new();
    let mut threads = 0;
    for p in procs {
        let (views, note) = match k.thread_views_of(p.eprocess) {
            Ok(x) => x,
            Err(e) if e.is_layout() => return Err(e),
            Err(e) => {
                notes.push(format!("the threads of {} are unreadable: {e}", p.name));
                continue;
            }
        };
        if let Some(n) = note {
            notes.push(format!("the thread list of {}: {n}", p.name));
        }
        for v in views {
            threads += 1;
            let head = v.addr + irp_list;
            if v.get("IrpList.Flink")? == head {
                continue;
            }
            let w = k.walk_list(head, None, 65_536, false)?;
            if let Some(n) = w.note {
                notes.push(format!("the IRP list of thread {:x}: {n}", v.addr));
            }
            out.extend(w.entries.into_iter().map(|e| (e - link, v.addr)));
        }
    }
    for n in &notes {
        k.note_incomplete(n.clone());
    }
    Ok((out, threads, notes))
}
