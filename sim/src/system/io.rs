//! The I/O manager's objects: driver objects with their dispatch tables, device objects and
//! their stacks, volume parameter blocks, file objects, IRPs with their stack locations on
//! their threads' lists, and the PnP tree's device nodes. Every member from the table.

use crate::SimError;
use crate::pool::{PoolKind, tag};

use super::System;

/// IRP_MJ_MAXIMUM_FUNCTION + 1.
pub const MAJOR_FUNCTIONS: u64 = 28;

/// A device object to make.
#[derive(Debug, Clone)]
pub struct DeviceSpec<'a> {
    /// Its driver object.
    pub driver: u64,
    /// Its name in `\Device` (or the full path of a directory already made, with `\`).
    pub name: Option<&'a str>,
    /// FILE_DEVICE_* type.
    pub device_type: u32,
    /// Bytes of device extension.
    pub extension: u64,
    /// DO_* flags besides DO_DEVICE_HAS_NAME.
    pub flags: u32,
    /// FILE_* characteristics.
    pub characteristics: u32,
}

/// One stack location of an IRP to make.
#[derive(Debug, Clone, Default)]
pub struct IrpLocation {
    /// IRP_MJ_*.
    pub major: u8,
    /// IRP_MN_*.
    pub minor: u8,
    /// SL_* flags.
    pub flags: u8,
    /// SL_PENDING_RETURNED (0x01), SL_INVOKE_ON_CANCEL (0x20), SL_INVOKE_ON_SUCCESS (0x40),
    /// SL_INVOKE_ON_ERROR (0x80).
    pub control: u8,
    /// Its device object.
    pub device: u64,
    /// Its file object.
    pub file: u64,
    /// The completion routine (`module!function`) and its context.
    pub completion: Option<(String, u64)>,
    /// The four argument words (Parameters).
    pub args: [u64; 4],
}

/// An IRP to make.
#[derive(Debug, Clone, Default)]
pub struct IrpSpec {
    /// Its stack locations, [0] the lowest.
    pub locations: Vec<IrpLocation>,
    /// CurrentLocation (1-based; StackCount + 1 when no driver holds it).
    pub current: u8,
    /// The thread (index) whose list it is on.
    pub thread: Option<usize>,
    /// IRP_* flags.
    pub flags: u32,
    /// PendingReturned.
    pub pending_returned: bool,
    /// IoStatus.Status and Information.
    pub status: (u32, u64),
    /// The file object it was issued on (Tail.Overlay.OriginalFileObject).
    pub original_file: u64,
    /// UserEvent.
    pub user_event: u64,
    /// UserIosb.
    pub user_iosb: u64,
    /// MdlAddress.
    pub mdl: u64,
    /// AssociatedIrp.SystemBuffer.
    pub system_buffer: u64,
    /// The cancel routine (`module!function`).
    pub cancel_routine: Option<String>,
    /// RequestorMode (0 kernel, 1 user).
    pub requestor_mode: u8,
}

impl System {
    /// The address of `module!function` (defining it in an invented module).
    pub fn routine(&mut self, spec: &str) -> Result<u64, SimError> {
        let (module, function) = spec.split_once('!').unwrap_or(("nt", spec));
        Ok(self.function(module, function)?.0)
    }

    /// A driver object `\Driver\NAME` (or `\FileSystem\NAME` with `file_system`) for module
    /// `module`, with `dispatch` = (major function, routine) entries (the others
    /// `nt!IopInvalidDeviceRequest`), an unload routine, an AddDevice routine and, with
    /// `fast_io`, a fast I/O table of those routines.
    #[allow(clippy::too_many_arguments)]
    pub fn driver(
        &mut self,
        name: &str,
        file_system: bool,
        module: &str,
        dispatch: &[(u8, &str)],
        unload: Option<&str>,
        add_device: Option<&str>,
        fast_io: &[(&str, &str)],
    ) -> Result<u64, SimError> {
        let size = self.k.size("_DRIVER_OBJECT")?;
        let ext = self.k.size("_DRIVER_EXTENSION")?;
        let dir = self.dir(if file_system {
            "\\FileSystem"
        } else {
            "\\Driver"
        })?;
        let body = self.new_object(
            "Driver",
            size + ext + 0x40,
            PoolKind::NonPaged,
            tag("Driv"),
            Some((dir, name)),
        )?;
        let full = format!(
            "\\{}\\{name}",
            if file_system { "FileSystem" } else { "Driver" }
        );
        let mi = self
            .module(module)
            .ok_or_else(|| SimError::Config(format!("no module {module}")))?;
        let (mbase, msize) = (
            self.modules[mi].image.base,
            u64::from(self.modules[mi].image.size),
        );
        let invalid = self.k.sym("IopInvalidDeviceRequest")?;
        let qualified = |r: &str| {
            if r.contains('!') {
                r.to_string()
            } else {
                format!("{module}!{r}")
            }
        };
        let entry = if module == "nt" {
            0
        } else {
            self.routine(&qualified("GsDriverEntry"))?
        };
        let mut routines = vec![invalid; MAJOR_FUNCTIONS as usize];
        for (major, r) in dispatch {
            routines[usize::from(*major)] = self.routine(&qualified(r))?;
        }
        let unload = match unload {
            Some(u) => self.routine(&qualified(u))?,
            None => 0,
        };
        let add = match add_device {
            Some(a) => self.routine(&qualified(a))?,
            None => 0,
        };
        let fio = if fast_io.is_empty() {
            0
        } else {
            let fsize = self.k.size("_FAST_IO_DISPATCH")?;
            let t = self
                .pool
                .alloc(&mut self.k, PoolKind::NonPaged, fsize, tag("FIoD"))?;
            self.k
                .set(t, "_FAST_IO_DISPATCH", "SizeOfFastIoDispatch", fsize)?;
            for (member, r) in fast_io {
                let a = self.routine(&qualified(r))?;
                self.k.set(t, "_FAST_IO_DISPATCH", member, a)?;
            }
            t
        };
        let strings = self
            .pool
            .alloc(&mut self.k, PoolKind::Paged, 0x100, tag("DrvN"))?;
        let dx = body + size;
        let k = &mut self.k;
        k.set(body, "_DRIVER_OBJECT", "Type", 4)?;
        k.set(body, "_DRIVER_OBJECT", "Size", size)?;
        k.set(body, "_DRIVER_OBJECT", "Flags", 0x12)?;
        k.set(body, "_DRIVER_OBJECT", "DriverStart", mbase)?;
        k.set(body, "_DRIVER_OBJECT", "DriverSize", msize)?;
        k.set(body, "_DRIVER_OBJECT", "DriverExtension", dx)?;
        k.unicode_string(
            body + k.off("_DRIVER_OBJECT", "DriverName")?,
            strings,
            &full,
        );
        k.set(body, "_DRIVER_OBJECT", "FastIoDispatch", fio)?;
        k.set(body, "_DRIVER_OBJECT", "DriverInit", entry)?;
        k.set(body, "_DRIVER_OBJECT", "DriverUnload", unload)?;
        let mf = body + k.off("_DRIVER_OBJECT", "MajorFunction")?;
        for (i, r) in routines.iter().enumerate() {
            k.w64(mf + 8 * i as u64, *r);
        }
        k.set(dx, "_DRIVER_EXTENSION", "DriverObject", body)?;
        k.set(dx, "_DRIVER_EXTENSION", "AddDevice", add)?;
        k.unicode_string(
            dx + k.off("_DRIVER_EXTENSION", "ServiceKeyName")?,
            strings + 0x80,
            name,
        );
        Ok(body)
    }

    /// A device object of `spec.driver`, at the head of the driver's device list.
    pub fn device(&mut self, spec: &DeviceSpec<'_>) -> Result<u64, SimError> {
        let size = self.k.size("_DEVICE_OBJECT")?;
        let dox = self.k.size("_DEVOBJ_EXTENSION")?;
        let ext = spec.extension.div_ceil(16) * 16;
        let named = match spec.name {
            Some(n) if n.contains('\\') => {
                let (d, leaf) = n.rsplit_once('\\').unwrap_or(("", n));
                Some((self.dir(d)?, leaf.to_string()))
            }
            Some(n) => Some((self.dir("\\Device")?, n.to_string())),
            None => None,
        };
        let body = self.new_object(
            "Device",
            size + ext + dox,
            PoolKind::NonPaged,
            tag("Devi"),
            named.as_ref().map(|(d, n)| (*d, n.as_str())),
        )?;
        let de = body + size + ext;
        let k = &mut self.k;
        let first = k.get(spec.driver, "_DRIVER_OBJECT", "DeviceObject")?;
        k.set(body, "_DEVICE_OBJECT", "Type", 3)?;
        k.set(body, "_DEVICE_OBJECT", "Size", size + ext)?;
        k.set(body, "_DEVICE_OBJECT", "ReferenceCount", 0)?;
        k.set(body, "_DEVICE_OBJECT", "DriverObject", spec.driver)?;
        k.set(body, "_DEVICE_OBJECT", "NextDevice", first)?;
        k.set(spec.driver, "_DRIVER_OBJECT", "DeviceObject", body)?;
        let has_name = if named.is_some() { 0x40 } else { 0 };
        k.set(
            body,
            "_DEVICE_OBJECT",
            "Flags",
            u64::from(spec.flags | has_name),
        )?;
        k.set(
            body,
            "_DEVICE_OBJECT",
            "Characteristics",
            u64::from(spec.characteristics),
        )?;
        if ext != 0 {
            k.set(body, "_DEVICE_OBJECT", "DeviceExtension", body + size)?;
        }
        k.set(
            body,
            "_DEVICE_OBJECT",
            "DeviceType",
            u64::from(spec.device_type),
        )?;
        k.set(body, "_DEVICE_OBJECT", "StackSize", 1)?;
        k.set(body, "_DEVICE_OBJECT", "DeviceObjectExtension", de)?;
        k.set(de, "_DEVOBJ_EXTENSION", "Type", 13)?;
        k.set(de, "_DEVOBJ_EXTENSION", "Size", 0)?;
        k.set(de, "_DEVOBJ_EXTENSION", "DeviceObject", body)?;
        Ok(body)
    }

    /// Attaches `upper` on top of `lower` (the top of its stack).
    pub fn attach(&mut self, upper: u64, lower: u64) -> Result<(), SimError> {
        let k = &mut self.k;
        k.set(lower, "_DEVICE_OBJECT", "AttachedDevice", upper)?;
        let de = k.get(upper, "_DEVICE_OBJECT", "DeviceObjectExtension")?;
        k.set(de, "_DEVOBJ_EXTENSION", "AttachedTo", lower)?;
        let below = k.get(lower, "_DEVICE_OBJECT", "StackSize")?;
        k.set(upper, "_DEVICE_OBJECT", "StackSize", below + 1)?;
        Ok(())
    }

    /// A volume parameter block mounting `fs_device` on `real`, with its label.
    pub fn vpb(&mut self, real: u64, fs_device: u64, label: &str) -> Result<u64, SimError> {
        let size = self.k.size("_VPB")?;
        let v = self
            .pool
            .alloc(&mut self.k, PoolKind::NonPaged, size, tag("Vpb "))?;
        let k = &mut self.k;
        k.set(v, "_VPB", "Type", 10)?;
        k.set(v, "_VPB", "Size", size)?;
        k.set(v, "_VPB", "Flags", 1)?;
        k.set(v, "_VPB", "DeviceObject", fs_device)?;
        k.set(v, "_VPB", "RealDevice", real)?;
        k.set(v, "_VPB", "SerialNumber", 0x5a3c_77e1)?;
        let units: Vec<u8> = label
            .encode_utf16()
            .take(32)
            .flat_map(u16::to_le_bytes)
            .collect();
        k.set(v, "_VPB", "VolumeLabelLength", units.len() as u64)?;
        k.write(v + k.off("_VPB", "VolumeLabel")?, &units);
        k.set(real, "_DEVICE_OBJECT", "Vpb", v)?;
        Ok(v)
    }

    /// A file object named `name` on `device` (its volume's VPB from the device), with its
    /// file system's context words and FO_* flags.
    pub fn file_object(
        &mut self,
        device: u64,
        name: &str,
        flags: u32,
        fs_context: (u64, u64),
        related: u64,
    ) -> Result<u64, SimError> {
        let size = self.k.size("_FILE_OBJECT")?;
        let body = self.new_object("File", size, PoolKind::NonPaged, tag("File"), None)?;
        let buf = self.pool.alloc(
            &mut self.k,
            PoolKind::Paged,
            (name.len() as u64 + 1) * 2,
            tag("FNam"),
        )?;
        let sop = self
            .pool
            .alloc(&mut self.k, PoolKind::NonPaged, 0x18, tag("FSop"))?;
        let k = &mut self.k;
        let vpb = k.get(device, "_DEVICE_OBJECT", "Vpb")?;
        k.set(body, "_FILE_OBJECT", "Type", 5)?;
        k.set(body, "_FILE_OBJECT", "Size", size)?;
        k.set(body, "_FILE_OBJECT", "DeviceObject", device)?;
        k.set(body, "_FILE_OBJECT", "Vpb", vpb)?;
        k.set(body, "_FILE_OBJECT", "FsContext", fs_context.0)?;
        k.set(body, "_FILE_OBJECT", "FsContext2", fs_context.1)?;
        k.set(body, "_FILE_OBJECT", "SectionObjectPointer", sop)?;
        k.set(body, "_FILE_OBJECT", "RelatedFileObject", related)?;
        k.set(body, "_FILE_OBJECT", "ReadAccess", 1)?;
        k.set(body, "_FILE_OBJECT", "SharedRead", 1)?;
        k.set(body, "_FILE_OBJECT", "Flags", u64::from(flags))?;
        k.unicode_string(body + k.off("_FILE_OBJECT", "FileName")?, buf, name);
        k.list_init(body + k.off("_FILE_OBJECT", "IrpList")?);
        let ev = body + k.off("_FILE_OBJECT", "Event")?;
        self.event_at(ev, "EventSynchronizationObject")?;
        Ok(body)
    }

    /// An IRP in non-paged pool (tag `Irp `) as `spec` describes it, on its thread's list.
    pub fn irp(&mut self, spec: &IrpSpec) -> Result<u64, SimError> {
        let n = spec.locations.len() as u64;
        let loc = self.k.size("_IO_STACK_LOCATION")?;
        let size = self.k.size("_IRP")? + n * loc;
        let irp = self
            .pool
            .alloc(&mut self.k, PoolKind::NonPaged, size, tag("Irp "))?;
        let first = irp + self.k.size("_IRP")?;
        let cancel = match &spec.cancel_routine {
            Some(r) => self.routine(r)?,
            None => 0,
        };
        let mut completions = Vec::new();
        for l in &spec.locations {
            completions.push(match &l.completion {
                Some((r, ctx)) => (self.routine(r)?, *ctx),
                None => (0, 0),
            });
        }
        let k = &mut self.k;
        k.set(irp, "_IRP", "Type", 6)?;
        k.set(irp, "_IRP", "Size", size)?;
        k.set(irp, "_IRP", "StackCount", n)?;
        k.set(irp, "_IRP", "CurrentLocation", u64::from(spec.current))?;
        k.set(irp, "_IRP", "Flags", u64::from(spec.flags))?;
        k.set(irp, "_IRP", "MdlAddress", spec.mdl)?;
        k.set(
            irp,
            "_IRP",
            "AssociatedIrp.SystemBuffer",
            spec.system_buffer,
        )?;
        k.set(
            irp,
            "_IRP",
            "PendingReturned",
            u64::from(spec.pending_returned),
        )?;
        k.set(irp, "_IRP", "IoStatus.Status", u64::from(spec.status.0))?;
        k.set(irp, "_IRP", "IoStatus.Information", spec.status.1)?;
        k.set(irp, "_IRP", "RequestorMode", u64::from(spec.requestor_mode))?;
        k.set(irp, "_IRP", "UserEvent", spec.user_event)?;
        k.set(irp, "_IRP", "UserIosb", spec.user_iosb)?;
        k.set(irp, "_IRP", "CancelRoutine", cancel)?;
        k.set(
            irp,
            "_IRP",
            "Tail.Overlay.OriginalFileObject",
            spec.original_file,
        )?;
        let current = first + (u64::from(spec.current).max(1) - 1) * loc;
        k.set(irp, "_IRP", "Tail.Overlay.CurrentStackLocation", current)?;
        k.list_init(irp + k.off("_IRP", "ThreadListEntry")?);
        for (i, l) in spec.locations.iter().enumerate() {
            let s = first + i as u64 * loc;
            k.set(s, "_IO_STACK_LOCATION", "MajorFunction", u64::from(l.major))?;
            k.set(s, "_IO_STACK_LOCATION", "MinorFunction", u64::from(l.minor))?;
            k.set(s, "_IO_STACK_LOCATION", "Flags", u64::from(l.flags))?;
            k.set(s, "_IO_STACK_LOCATION", "Control", u64::from(l.control))?;
            k.set(s, "_IO_STACK_LOCATION", "DeviceObject", l.device)?;
            k.set(s, "_IO_STACK_LOCATION", "FileObject", l.file)?;
            k.set(
                s,
                "_IO_STACK_LOCATION",
                "CompletionRoutine",
                completions[i].0,
            )?;
            k.set(s, "_IO_STACK_LOCATION", "Context", completions[i].1)?;
            let p = s + k.off("_IO_STACK_LOCATION", "Parameters")?;
            for (j, a) in l.args.iter().enumerate() {
                k.w64(p + 8 * j as u64, *a);
            }
        }
        if let Some(t) = spec.thread {
            let et = self.threads[t].ethread;
            let k = &mut self.k;
            k.set(irp, "_IRP", "Tail.Overlay.Thread", et)?;
            let head = et + k.off("_ETHREAD", "IrpList")?;
            let link = irp + k.off("_IRP", "ThreadListEntry")?;
            k.list_append(head, link);
        }
        Ok(irp)
    }

    /// A device node for `pdo` under `parent` (the root when `None`), with its instance path,
    /// service, and states (`_PNP_DEVNODE_STATE` names) and problem code.
    #[allow(clippy::too_many_arguments)]
    pub fn devnode(
        &mut self,
        parent: Option<u64>,
        pdo: u64,
        instance: &str,
        service: &str,
        state: &str,
        previous: &str,
        problem: u32,
    ) -> Result<u64, SimError> {
        let size = self.k.size("_DEVICE_NODE")?;
        let dn = self
            .pool
            .alloc(&mut self.k, PoolKind::NonPaged, size, tag("Devn"))?;
        let strings = self
            .pool
            .alloc(&mut self.k, PoolKind::Paged, 0x140, tag("DvNm"))?;
        let st = self.k.enum_value("_PNP_DEVNODE_STATE", state)? as u64;
        let prev = self.k.enum_value("_PNP_DEVNODE_STATE", previous)? as u64;
        let k = &mut self.k;
        k.set(dn, "_DEVICE_NODE", "PhysicalDeviceObject", pdo)?;
        k.unicode_string(
            dn + k.off("_DEVICE_NODE", "InstancePath")?,
            strings,
            instance,
        );
        k.unicode_string(
            dn + k.off("_DEVICE_NODE", "ServiceName")?,
            strings + 0x100,
            service,
        );
        k.set(dn, "_DEVICE_NODE", "State", st)?;
        k.set(dn, "_DEVICE_NODE", "PreviousState", prev)?;
        k.set(dn, "_DEVICE_NODE", "Problem", u64::from(problem))?;
        if pdo != 0 {
            let de = k.get(pdo, "_DEVICE_OBJECT", "DeviceObjectExtension")?;
            k.set(de, "_DEVOBJ_EXTENSION", "DeviceNode", dn)?;
        }
        match parent {
            None => {
                let at = k.sym("IopRootDeviceNode")?;
                k.w64(at, dn);
            }
            Some(p) => {
                k.set(dn, "_DEVICE_NODE", "Parent", p)?;
                let level = k.get(p, "_DEVICE_NODE", "Level")?;
                k.set(dn, "_DEVICE_NODE", "Level", level + 1)?;
                let last = k.get(p, "_DEVICE_NODE", "LastChild")?;
                if last == 0 {
                    k.set(p, "_DEVICE_NODE", "Child", dn)?;
                } else {
                    k.set(last, "_DEVICE_NODE", "Sibling", dn)?;
                }
                k.set(p, "_DEVICE_NODE", "LastChild", dn)?;
            }
        }
        Ok(dn)
    }
}
