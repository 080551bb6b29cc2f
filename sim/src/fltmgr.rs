//! The filter manager, laid out with the table FLTMGR.SYS names (the project's layout of
//! fltmgr's structures, `kdnet_symbols::fltmgr`): `FltGlobals.FrameList` with one frame, its
//! registered filters (the report's five, by altitude, each with its driver object), the
//! volumes attached (each with the filter manager's device over a file system's), an instance
//! per filter and volume linked on the filter's and the volume's lists, and each instance's
//! create callback node on the volume's callback list.

use std::sync::Arc;

use kdnet_symbols::TypeTable;

use crate::SimError;
use crate::pool::{PoolKind, tag};
use crate::system::{DeviceSpec, System};

/// The filters of the report (`fltmc filters` on the container host): name, altitude,
/// instances, the module, and the create pre/post callbacks.
pub const FILTERS: &[(&str, &str, usize, &str, &str, &str)] = &[
    (
        "bindflt",
        "409800",
        29,
        "bindflt",
        "BfPreCreate",
        "BfPostCreate",
    ),
    (
        "FsDepends",
        "407000",
        35,
        "FsDepends",
        "DepPreCreate",
        "DepPostCreate",
    ),
    (
        "WdFilter",
        "328010",
        35,
        "WdFilter",
        "MpPreCreate",
        "MpPostCreate",
    ),
    (
        "wcifs",
        "189900",
        17,
        "wcifs",
        "WcPreCreate",
        "WcPostCreate",
    ),
    (
        "Wof",
        "40700",
        1,
        "Wof",
        "WofPreCreateCallback",
        "WofPostCreateCallback",
    ),
];

/// Volumes the filters attach to.
pub const VOLUMES: usize = 35;

/// FLT_OBFL_TYPE_* of `_FLT_OBJECT.Flags`.
const TYPE_INSTANCE: u64 = 0x0100_0000;
const TYPE_FILTER: u64 = 0x0200_0000;
const TYPE_VOLUME: u64 = 0x0400_0000;
/// Index of IRP_MJ_CREATE in the callback arrays (major function + 22).
pub const CREATE_INDEX: u64 = 22;

/// A filter as planted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlantedFilter {
    /// Name.
    pub name: String,
    /// Altitude.
    pub altitude: String,
    /// Its _FLT_FILTER.
    pub filter: u64,
    /// Its instances, in volume order.
    pub instances: Vec<u64>,
}

/// A volume as planted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlantedVolume {
    /// Its device name.
    pub name: String,
    /// Its _FLT_VOLUME.
    pub volume: u64,
    /// The filter manager's device on it.
    pub flt_device: u64,
    /// The file system's volume device below.
    pub fs_device: u64,
}

/// What the filter manager holds.
#[derive(Debug, Clone, Default)]
pub struct FltFacts {
    /// `FltGlobals`.
    pub globals: u64,
    /// The frame.
    pub frame: u64,
    /// The filters, highest altitude first.
    pub filters: Vec<PlantedFilter>,
    /// The volumes.
    pub volumes: Vec<PlantedVolume>,
    /// Create callback nodes by (filter index, volume index).
    pub create_nodes: Vec<Vec<u64>>,
}

/// The table FLTMGR.SYS is laid out with.
pub fn table(sys: &System) -> Result<Arc<TypeTable>, SimError> {
    let i = sys
        .module("FLTMGR")
        .ok_or_else(|| SimError::Config("FLTMGR.SYS is not loaded".into()))?;
    sys.modules[i]
        .own
        .clone()
        .ok_or_else(|| SimError::Config("FLTMGR.SYS has no table".into()))
}

struct W<'a> {
    sys: &'a mut System,
    t: Arc<TypeTable>,
}

impl W<'_> {
    fn off(&self, ty: &str, path: &str) -> Result<u64, SimError> {
        Ok(self.t.offset(ty, path)?)
    }
    fn set(&mut self, at: u64, ty: &str, path: &str, v: u64) -> Result<(), SimError> {
        let t = self.t.clone();
        self.sys.k.set_in(&t, at, ty, path, v)
    }
    fn string(&mut self, at: u64, ty: &str, path: &str, s: &str) -> Result<(), SimError> {
        let buf = self.sys.pool.alloc(
            &mut self.sys.k,
            PoolKind::Paged,
            (s.len() as u64 + 1) * 2,
            tag("FMns"),
        )?;
        let a = at + self.off(ty, path)?;
        self.sys.k.unicode_string(a, buf, s);
        Ok(())
    }
    fn list_init(&mut self, at: u64, ty: &str, path: &str) -> Result<(), SimError> {
        let a = at + self.off(ty, path)?;
        self.sys.k.list_init(a);
        Ok(())
    }
    fn append(
        &mut self,
        head: (u64, &str, &str),
        entry: (u64, &str, &str),
    ) -> Result<(), SimError> {
        let h = head.0 + self.off(head.1, head.2)?;
        let e = entry.0 + self.off(entry.1, entry.2)?;
        self.sys.k.list_append(h, e);
        Ok(())
    }
    fn alloc(&mut self, ty: &str, extra: u64, t: &str) -> Result<u64, SimError> {
        let size = self.t.size_of(ty)? + extra;
        self.sys
            .pool
            .alloc(&mut self.sys.k, PoolKind::NonPaged, size, tag(t))
    }
}

/// Builds the filter manager's state over the system volume (`system_volume`: the filter
/// manager's device and NTFS's on `\Device\HarddiskVolume3`, and that volume's device).
pub fn build(
    sys: &mut System,
    fltmgr_driver: u64,
    ntfs_driver: u64,
    system_volume: (u64, u64, u64),
) -> Result<FltFacts, SimError> {
    let t = table(sys)?;
    let fbase = sys.modules[sys.module("FLTMGR").unwrap_or(0)].image.base;
    let globals = fbase + t.require_symbol("FltGlobals")?;
    // The image's data: mapped here, as the loader maps a driver's sections.
    let gsize = t.size_of("_GLOBALS")?;
    sys.k.map(globals, gsize, true);
    let mut w = W { sys, t };
    let mut facts = FltFacts {
        globals,
        ..FltFacts::default()
    };
    w.list_init(globals, "_GLOBALS", "FrameList.rList")?;
    w.set(globals, "_GLOBALS", "FrameList.rCount", 1)?;
    w.set(globals, "_GLOBALS", "DriverObject", fltmgr_driver)?;
    let frame = w.alloc("_FLTP_FRAME", 0, "FMfr")?;
    facts.frame = frame;
    w.append(
        (globals, "_GLOBALS", "FrameList.rList"),
        (frame, "_FLTP_FRAME", "Links"),
    )?;
    w.set(frame, "_FLTP_FRAME", "FrameID", 0)?;
    w.string(frame, "_FLTP_FRAME", "AltitudeIntervalLow", "0")?;
    w.string(frame, "_FLTP_FRAME", "AltitudeIntervalHigh", "409800")?;
    w.set(frame, "_FLTP_FRAME", "LargeIrpCtrlStackSize", 4)?;
    w.set(frame, "_FLTP_FRAME", "SmallIrpCtrlStackSize", 2)?;
    w.list_init(frame, "_FLTP_FRAME", "RegisteredFilters.rList")?;
    w.list_init(frame, "_FLTP_FRAME", "AttachedVolumes.rList")?;
    // The volumes: the system volume, thirty-two container volumes, two more disks.
    for v in 0..VOLUMES {
        let (name, flt_device, fs_device, disk) = if v == 0 {
            (
                "\\Device\\HarddiskVolume3".to_string(),
                system_volume.0,
                system_volume.1,
                system_volume.2,
            )
        } else {
            let name = if v <= 32 {
                format!(
                    "\\Device\\VhdHardDisk{{5f1c0a{v:02x}-8e7b-4c1d-9a3e-{:012x}}}",
                    0x2b6d_0000u64 + v as u64
                )
            } else {
                format!("\\Device\\HarddiskVolume{}", v - 32)
            };
            let fs = w.sys.device(&DeviceSpec {
                driver: ntfs_driver,
                name: None,
                device_type: 0x08,
                extension: 0x1a0,
                flags: 0,
                characteristics: 0,
            })?;
            let flt = w.sys.device(&DeviceSpec {
                driver: fltmgr_driver,
                name: None,
                device_type: 0x08,
                extension: 0x40,
                flags: 0,
                characteristics: 0,
            })?;
            w.sys.attach(flt, fs)?;
            (name, flt, fs, 0)
        };
        let vol = w.alloc("_FLT_VOLUME", 0, "FMvo")?;
        w.set(vol, "_FLT_VOLUME", "Base.Flags", TYPE_VOLUME)?;
        w.set(vol, "_FLT_VOLUME", "Base.PointerCount", 1)?;
        w.set(vol, "_FLT_VOLUME", "Base.RundownRef", 0x8c)?;
        w.set(vol, "_FLT_VOLUME", "Flags", 0x464)?;
        w.set(vol, "_FLT_VOLUME", "FileSystemType", 2)?;
        w.set(vol, "_FLT_VOLUME", "DeviceObject", flt_device)?;
        w.set(vol, "_FLT_VOLUME", "DiskDeviceObject", disk)?;
        w.set(vol, "_FLT_VOLUME", "FrameZeroVolume", vol)?;
        w.set(vol, "_FLT_VOLUME", "Frame", frame)?;
        w.string(vol, "_FLT_VOLUME", "DeviceName", &name)?;
        w.list_init(vol, "_FLT_VOLUME", "InstanceList.rList")?;
        let lists = w.off("_FLT_VOLUME", "Callbacks.OperationLists")?;
        for i in 0..50 {
            w.sys.k.list_init(vol + lists + 0x10 * i);
        }
        w.append(
            (frame, "_FLTP_FRAME", "AttachedVolumes.rList"),
            (vol, "_FLT_VOLUME", "Base.PrimaryLink"),
        )?;
        facts.volumes.push(PlantedVolume {
            name,
            volume: vol,
            flt_device,
            fs_device,
        });
    }
    w.set(
        frame,
        "_FLTP_FRAME",
        "AttachedVolumes.rCount",
        VOLUMES as u64,
    )?;
    // The filters, highest altitude first, each attached to its first N volumes.
    let fs_dir = w.sys.dir("\\FileSystem")?;
    let _ = fs_dir;
    for (name, altitude, count, module, pre, post) in FILTERS {
        let driver = w.sys.driver(name, true, module, &[], None, None, &[])?;
        let filter = w.alloc("_FLT_FILTER", 0, "FMfl")?;
        w.set(filter, "_FLT_FILTER", "Base.Flags", TYPE_FILTER)?;
        w.set(filter, "_FLT_FILTER", "Base.PointerCount", 1)?;
        w.set(filter, "_FLT_FILTER", "Frame", frame)?;
        w.string(filter, "_FLT_FILTER", "Name", name)?;
        w.string(filter, "_FLT_FILTER", "DefaultAltitude", altitude)?;
        w.set(filter, "_FLT_FILTER", "Flags", 0x2)?;
        w.set(filter, "_FLT_FILTER", "DriverObject", driver)?;
        w.list_init(filter, "_FLT_FILTER", "InstanceList.rList")?;
        w.set(filter, "_FLT_FILTER", "InstanceList.rCount", *count as u64)?;
        w.append(
            (frame, "_FLTP_FRAME", "RegisteredFilters.rList"),
            (filter, "_FLT_FILTER", "Base.PrimaryLink"),
        )?;
        let pre_at = w.sys.routine(&format!("{module}!{pre}"))?;
        let post_at = w.sys.routine(&format!("{module}!{post}"))?;
        let mut instances = Vec::new();
        let mut nodes = Vec::new();
        for v in 0..*count {
            let vol = facts.volumes[v].volume;
            let inst = w.alloc("_FLT_INSTANCE", 0, "FMis")?;
            w.set(inst, "_FLT_INSTANCE", "Base.Flags", TYPE_INSTANCE)?;
            w.set(inst, "_FLT_INSTANCE", "Base.PointerCount", 1)?;
            w.set(inst, "_FLT_INSTANCE", "Volume", vol)?;
            w.set(inst, "_FLT_INSTANCE", "Filter", filter)?;
            w.set(inst, "_FLT_INSTANCE", "Flags", 0x19)?;
            w.string(inst, "_FLT_INSTANCE", "Altitude", altitude)?;
            w.string(inst, "_FLT_INSTANCE", "Name", &format!("{name} Instance"))?;
            w.append(
                (filter, "_FLT_FILTER", "InstanceList.rList"),
                (inst, "_FLT_INSTANCE", "FilterLink"),
            )?;
            w.append(
                (vol, "_FLT_VOLUME", "InstanceList.rList"),
                (inst, "_FLT_INSTANCE", "Base.PrimaryLink"),
            )?;
            let rc = w.off("_FLT_VOLUME", "InstanceList.rCount")?;
            let n = w.sys.k.r32(vol + rc);
            w.sys.k.w32(vol + rc, n + 1);
            // Its create callback, on the volume's create list in altitude order.
            let node = w.alloc("_CALLBACK_NODE", 0, "FMcb")?;
            w.set(node, "_CALLBACK_NODE", "Instance", inst)?;
            w.set(node, "_CALLBACK_NODE", "PreOperation", pre_at)?;
            w.set(node, "_CALLBACK_NODE", "PostOperation", post_at)?;
            let slots = w.off("_FLT_INSTANCE", "CallbackNodes")?;
            w.sys.k.w64(inst + slots + 8 * CREATE_INDEX, node);
            let lists = w.off("_FLT_VOLUME", "Callbacks.OperationLists")?;
            w.sys.k.list_append(vol + lists + 0x10 * CREATE_INDEX, node);
            instances.push(inst);
            nodes.push(node);
        }
        facts.filters.push(PlantedFilter {
            name: name.to_string(),
            altitude: altitude.to_string(),
            filter,
            instances,
        });
        facts.create_nodes.push(nodes);
    }
    w.set(
        frame,
        "_FLTP_FRAME",
        "RegisteredFilters.rCount",
        FILTERS.len() as u64,
    )?;
    Ok(facts)
}
