//! The filter manager as the fltkd extension shows it: `!fltkd.frames`, `!fltkd.filters`,
//! `!fltkd.filter`, `!fltkd.volumes`, `!fltkd.volume`, `!fltkd.instances`, `!fltkd.instance`,
//! `!fltkd.irpctrl` and `!fltkd.cbd`, from fltmgr.sys's own symbols
//! ([`kdnet_model::nt::fltmgr`]).

use std::sync::Arc;

use kdnet_symbols::TypeTable;
use schemars::JsonSchema;
use serde::Serialize;

use crate::args::{Args, Syntax, expr};
use crate::engine::{CmdError, Engine};
use crate::registry::Render;
use kdnet_model::nt::fltmgr as model;

use super::io::{bits, major_name};

/// fltmgr.sys's base, table and where the table came from.
fn fltmgr(e: &mut Engine) -> Result<(u64, Arc<TypeTable>, String), CmdError> {
    super::module_table(&mut e.kernel, "FLTMGR", "fltmgr.sys", "fltMgr.pdb")
}

fn sym(e: &mut Engine, a: u64) -> Option<String> {
    (a != 0).then(|| e.kernel.symbolize(a))
}

const FILTER_FLAGS: &[(u32, &str)] = &[
    (0x1, "MandatoryUnloadInProgress"),
    (0x2, "FilteringInitiated"),
    (0x4, "NameProvider"),
    (0x8, "SupportsPipesMailslots"),
    (0x10, "BackedByPagefile"),
    (0x20, "SupportsDaxVolume"),
];

const CBD_FLAGS: &[(u32, &str)] = &[
    (0x1, "Irp"),
    (0x2, "FastIo"),
    (0x4, "FsFilter"),
    (0x8, "SystemBuffer"),
    (0x0001_0000, "Generated"),
    (0x0002_0000, "Reissued"),
    (0x0004_0000, "Draining"),
    (0x0008_0000, "PostOperation"),
    (0x0010_0000, "NewSystemBuffer"),
    (0x8000_0000, "Dirty"),
];

/// An instance in a list.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct InstanceRow {
    /// The instance.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub instance: u64,
    /// Its name.
    pub name: String,
    /// Its altitude.
    pub altitude: String,
    /// Its filter's name.
    pub filter: String,
    /// Its volume's name.
    pub volume: String,
}

/// A filter in a frame.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FilterRow {
    /// The filter.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub filter: u64,
    /// Its name.
    pub name: String,
    /// Its altitude.
    pub altitude: String,
    /// Its instances (as `fltmc filters` counts them).
    pub instance_count: usize,
    /// Each instance.
    pub instances: Vec<InstanceRow>,
}

/// A volume in a frame.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct VolumeRow {
    /// The volume.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub volume: u64,
    /// Its device name.
    pub name: String,
    /// Its file system (`FLT_FSTYPE_NTFS`).
    pub file_system: String,
    /// Its instances, highest altitude first.
    pub instances: Vec<InstanceRow>,
}

/// A frame.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FrameRow {
    /// The frame.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub frame: u64,
    /// FrameID.
    pub id: u32,
    /// Lowest altitude.
    pub altitude_low: String,
    /// Highest altitude.
    pub altitude_high: String,
    /// Its registered filters' list head.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub filter_list: u64,
    /// Its attached volumes' list head.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub volume_list: u64,
    /// Its filters (`!fltkd.frames`, `!fltkd.filters`).
    pub filters: Vec<FilterRow>,
    /// Its volumes (`!fltkd.volumes`).
    pub volumes: Vec<VolumeRow>,
}

/// The filter manager's frames with their filters or volumes.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Frames {
    /// Where fltmgr.sys's layout came from: a fltMgr.pdb along the symbol path, or `built-in`.
    pub symbols: String,
    /// What is shown: `frames`, `filters` or `volumes`.
    pub view: String,
    /// The frames.
    pub frames: Vec<FrameRow>,
    /// Why a walk stopped early.
    pub notes: Vec<String>,
}

/// Names of instances: their filter's and volume's.
/// The rows of instances `addrs`; `volume` names their volume where the caller has read it
/// already (else each instance's volume is read for its name).
fn instance_rows(
    e: &mut Engine,
    t: &Arc<TypeTable>,
    addrs: &[u64],
    volume: Option<&str>,
    notes: &mut Vec<String>,
) -> Result<Vec<InstanceRow>, CmdError> {
    let mut rows = Vec::with_capacity(addrs.len());
    for &addr in addrs {
        let i = model::instance(&mut e.kernel, t, addr)?;
        let filter = model::filter_name(&mut e.kernel, t, i.filter);
        let volume = match volume {
            Some(v) => v.to_string(),
            None => match model::volume(&mut e.kernel, t, i.volume, notes) {
                Ok(v) => v.name,
                Err(err) => {
                    let why = format!("the volume of instance {addr:#x} is unreadable: {err}");
                    e.kernel.note_incomplete(why.clone());
                    notes.push(why);
                    format!("(unreadable: {err})")
                }
            },
        };
        rows.push(InstanceRow {
            instance: addr,
            name: i.name,
            altitude: i.altitude,
            filter,
            volume,
        });
    }
    Ok(rows)
}

/// A volume's file system: its name, else the type's number.
fn file_system(v: &model::Volume) -> String {
    v.fs_type
        .1
        .clone()
        .unwrap_or_else(|| format!("{:#x}", v.fs_type.0))
}

fn frames_view(e: &mut Engine, view: &str) -> Result<Frames, CmdError> {
    let (base, t, symbols) = fltmgr(e)?;
    let mut notes = Vec::new();
    let frames = model::frames(&mut e.kernel, base, &t, &mut notes)?;
    let mut out = Vec::new();
    for f in frames {
        let mut filters = Vec::new();
        let mut volumes = Vec::new();
        if view == "volumes" {
            for v in model::volumes(&mut e.kernel, &t, &f, &mut notes)? {
                let instances = instance_rows(e, &t, &v.instances, Some(&v.name), &mut notes)?;
                volumes.push(VolumeRow {
                    volume: v.addr,
                    file_system: file_system(&v),
                    name: v.name,
                    instances,
                });
            }
        } else {
            for flt in model::filters(&mut e.kernel, &t, &f, &mut notes)? {
                let instances = instance_rows(e, &t, &flt.instances, None, &mut notes)?;
                filters.push(FilterRow {
                    filter: flt.addr,
                    name: flt.name,
                    altitude: flt.altitude,
                    instance_count: flt.instances.len(),
                    instances,
                });
            }
        }
        out.push(FrameRow {
            frame: f.addr,
            id: f.id,
            altitude_low: f.altitude_low,
            altitude_high: f.altitude_high,
            filter_list: f.filters_head,
            volume_list: f.volumes_head,
            filters,
            volumes,
        });
    }
    Ok(Frames {
        symbols,
        view: view.into(),
        frames: out,
        notes,
    })
}

/// `!fltkd.frames`, `!fltkd.filters`, `!fltkd.volumes`, `!fltkd.instances`: no arguments.
pub const NONE: Syntax = Syntax::NONE;

/// `!fltkd.frames`.
pub fn frames(e: &mut Engine, _verb: &str, _a: &Args<'_>) -> Result<Frames, CmdError> {
    frames_view(e, "frames")
}

/// `!fltkd.filters`.
pub fn filters(e: &mut Engine, _verb: &str, _a: &Args<'_>) -> Result<Frames, CmdError> {
    frames_view(e, "filters")
}

/// `!fltkd.volumes`.
pub fn volumes(e: &mut Engine, _verb: &str, _a: &Args<'_>) -> Result<Frames, CmdError> {
    frames_view(e, "volumes")
}

/// `!fltkd.instances`: every volume's instances.
pub fn instances(e: &mut Engine, _verb: &str, _a: &Args<'_>) -> Result<Frames, CmdError> {
    frames_view(e, "volumes").map(|mut f| {
        f.view = "instances".into();
        f
    })
}

impl Render for Frames {
    fn render(&self, out: &mut String) {
        for f in &self.frames {
            match self.view.as_str() {
                "frames" => {
                    out.push_str(&format!(
                        "Frame List: {:x}\n   FLTP_FRAME: {:x} \"Frame {}\" \"{} to {}\"\n",
                        f.frame, f.frame, f.id, f.altitude_low, f.altitude_high
                    ));
                    for flt in &f.filters {
                        out.push_str(&format!(
                            "      FLT_FILTER: {:x} \"{}\" \"{}\"\n",
                            flt.filter, flt.name, flt.altitude
                        ));
                        for i in &flt.instances {
                            out.push_str(&format!(
                                "         FLT_INSTANCE: {:x} \"{}\" \"{}\"\n",
                                i.instance, i.name, i.altitude
                            ));
                        }
                    }
                }
                "filters" => {
                    out.push_str(&format!(
                        "Filter List: {:x} \"Frame {}\" \n",
                        f.filter_list, f.id
                    ));
                    for flt in &f.filters {
                        out.push_str(&format!(
                            "   FLT_FILTER: {:x} \"{}\" \"{}\"\n",
                            flt.filter, flt.name, flt.altitude
                        ));
                        for i in &flt.instances {
                            out.push_str(&format!(
                                "      FLT_INSTANCE: {:x} \"{}\" \"{}\"\n",
                                i.instance, i.name, i.altitude
                            ));
                        }
                    }
                    out.push_str(
                        "\nFilter Name                     Num Instances    Altitude    Frame\n------------------------------  -------------  ------------  -----\n",
                    );
                    for flt in &f.filters {
                        out.push_str(&format!(
                            "{:<30}  {:>13}  {:>12}  {:>5}\n",
                            flt.name, flt.instance_count, flt.altitude, f.id
                        ));
                    }
                }
                "volumes" => {
                    out.push_str(&format!(
                        "Volume List: {:x} \"Frame {}\" \n",
                        f.volume_list, f.id
                    ));
                    for v in &f.volumes {
                        out.push_str(&format!("   FLT_VOLUME: {:x} \"{}\"\n", v.volume, v.name));
                        for i in &v.instances {
                            out.push_str(&format!(
                                "      FLT_INSTANCE: {:x} \"{}\" \"{}\"\n",
                                i.instance, i.name, i.altitude
                            ));
                        }
                    }
                }
                _ => {
                    for v in &f.volumes {
                        for i in &v.instances {
                            out.push_str(&format!(
                                "FLT_INSTANCE: {:x} \"{}\" \"{}\"  {}  {}\n",
                                i.instance, i.name, i.altitude, i.filter, v.name
                            ));
                        }
                    }
                }
            }
        }
        out.push_str(&format!("fltmgr.sys layout from: {}\n", self.symbols));
        for n in &self.notes {
            out.push_str(&format!("NOTE: {n}\n"));
        }
    }
}

/// `!fltkd.filter ADDR`, `!fltkd.volume ADDR`, `!fltkd.instance ADDR`, `!fltkd.irpctrl ADDR`,
/// `!fltkd.cbd ADDR`.
pub const ADDR: Syntax = Syntax::params(&[expr("ADDR")]);

/// A filter in full.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FilterDetail {
    /// The filter.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub filter: u64,
    /// Its name.
    pub name: String,
    /// Its altitude.
    pub altitude: String,
    /// Flags.
    pub flags: u32,
    /// Flag names.
    pub flag_names: Vec<String>,
    /// Its frame.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub frame: u64,
    /// Its driver object.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub driver: u64,
    /// Its instances.
    pub instances: Vec<InstanceRow>,
    /// Why a walk stopped early.
    pub notes: Vec<String>,
}

/// `!fltkd.filter`.
pub fn filter(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<FilterDetail, CmdError> {
    let addr = a.expr(e, "ADDR")?.unwrap_or(0);
    let (_, t, _) = fltmgr(e)?;
    let mut notes = Vec::new();
    let f = model::filter(&mut e.kernel, &t, addr, &mut notes)?;
    let instances = instance_rows(e, &t, &f.instances, None, &mut notes)?;
    Ok(FilterDetail {
        filter: addr,
        name: f.name,
        altitude: f.altitude,
        flags: f.flags,
        flag_names: bits(f.flags, FILTER_FLAGS),
        frame: f.frame,
        driver: f.driver,
        instances,
        notes,
    })
}

impl Render for FilterDetail {
    fn render(&self, out: &mut String) {
        out.push_str(&format!(
            "FLT_FILTER: {:x} \"{}\" \"{}\"\n   Flags                    : [{:08x}] {}\n   Frame                    : {:x}\n   DriverObject             : {:x}\n   InstanceList             : ({} instances)\n",
            self.filter,
            self.name,
            self.altitude,
            self.flags,
            self.flag_names.join(" "),
            self.frame,
            self.driver,
            self.instances.len()
        ));
        for i in &self.instances {
            out.push_str(&format!(
                "      FLT_INSTANCE: {:x} \"{}\" \"{}\"  {}\n",
                i.instance, i.name, i.altitude, i.volume
            ));
        }
        for n in &self.notes {
            out.push_str(&format!("NOTE: {n}\n"));
        }
    }
}

/// A volume in full.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct VolumeDetail {
    /// The volume.
    #[serde(flatten)]
    pub volume: VolumeRow,
    /// Flags.
    pub flags: u32,
    /// The filter manager's device on it.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub device: u64,
    /// The disk's device.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub disk_device: u64,
    /// Its frame.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub frame: u64,
    /// Why a walk stopped early.
    pub notes: Vec<String>,
}

/// `!fltkd.volume`.
pub fn volume(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<VolumeDetail, CmdError> {
    let addr = a.expr(e, "ADDR")?.unwrap_or(0);
    let (_, t, _) = fltmgr(e)?;
    let mut notes = Vec::new();
    let v = model::volume(&mut e.kernel, &t, addr, &mut notes)?;
    let instances = instance_rows(e, &t, &v.instances, Some(&v.name), &mut notes)?;
    Ok(VolumeDetail {
        volume: VolumeRow {
            volume: addr,
            file_system: file_system(&v),
            name: v.name,
            instances,
        },
        flags: v.flags,
        device: v.device,
        disk_device: v.disk_device,
        frame: v.frame,
        notes,
    })
}

impl Render for VolumeDetail {
    fn render(&self, out: &mut String) {
        let v = &self.volume;
        out.push_str(&format!(
            "FLT_VOLUME: {:x} \"{}\"\n   Flags                    : [{:08x}]\n   FileSystemType           : {}\n   Frame                    : {:x}\n   DeviceObject             : {:x}\n   DiskDeviceObject         : {:x}\n   InstanceList             : ({} instances)\n",
            v.volume,
            v.name,
            self.flags,
            v.file_system,
            self.frame,
            self.device,
            self.disk_device,
            v.instances.len()
        ));
        for i in &v.instances {
            out.push_str(&format!(
                "      FLT_INSTANCE: {:x} \"{}\" \"{}\"\n",
                i.instance, i.name, i.altitude
            ));
        }
        for n in &self.notes {
            out.push_str(&format!("NOTE: {n}\n"));
        }
    }
}

/// A callback of an instance.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Callback {
    /// The major function (negative: the filter manager's own operations).
    pub major: i64,
    /// Its name.
    pub major_name: String,
    /// The callback node.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub node: u64,
    /// The pre-operation routine and its symbol.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub pre: u64,
    /// Symbol.
    pub pre_symbol: Option<String>,
    /// The post-operation routine and its symbol.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub post: u64,
    /// Symbol.
    pub post_symbol: Option<String>,
}

/// An instance in full.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct InstanceDetail {
    /// The instance.
    #[serde(flatten)]
    pub instance: InstanceRow,
    /// Flags.
    pub flags: u32,
    /// Its filter.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub filter_address: u64,
    /// Its volume.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub volume_address: u64,
    /// Its callbacks.
    pub callbacks: Vec<Callback>,
}

fn operation_name(m: i64) -> String {
    if m >= 0 {
        major_name(m as u8)
    } else {
        format!("IRP_MJ_FLT_INTERNAL({m})")
    }
}

/// `!fltkd.instance`.
pub fn instance(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<InstanceDetail, CmdError> {
    let addr = a.expr(e, "ADDR")?.unwrap_or(0);
    let (_, t, _) = fltmgr(e)?;
    let mut notes = Vec::new();
    let row = instance_rows(e, &t, &[addr], None, &mut notes)?.remove(0);
    let i = model::instance(&mut e.kernel, &t, addr)?;
    let mut callbacks = Vec::new();
    for (m, node, pre, post) in i.callbacks {
        let pre_symbol = sym(e, pre);
        let post_symbol = sym(e, post);
        callbacks.push(Callback {
            major: m,
            major_name: operation_name(m),
            node,
            pre,
            pre_symbol,
            post,
            post_symbol,
        });
    }
    Ok(InstanceDetail {
        instance: row,
        flags: i.flags,
        filter_address: i.filter,
        volume_address: i.volume,
        callbacks,
    })
}

impl Render for InstanceDetail {
    fn render(&self, out: &mut String) {
        let i = &self.instance;
        out.push_str(&format!(
            "FLT_INSTANCE: {:x} \"{}\" \"{}\"\n   Flags                    : [{:08x}]\n   Volume                   : {:x} \"{}\"\n   Filter                   : {:x} \"{}\"\n   CallbackNodes:\n",
            i.instance, i.name, i.altitude, self.flags, self.volume_address, i.volume, self.filter_address, i.filter
        ));
        for c in &self.callbacks {
            out.push_str(&format!(
                "      {:<32} {:x}  Pre: {}  Post: {}\n",
                c.major_name,
                c.node,
                c.pre_symbol.clone().unwrap_or_else(|| "0".into()),
                c.post_symbol.clone().unwrap_or_else(|| "0".into())
            ));
        }
    }
}

/// A filter that has seen an operation.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SeenBy {
    /// The filter's name.
    pub filter: String,
    /// Its instance.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub instance: u64,
    /// Its altitude.
    pub altitude: String,
    /// `pended` (its pre-operation holds the operation) or `completion` (its post-operation
    /// is due: a completion node).
    pub state: String,
    /// The routine concerned (pre-operation when pended, post-operation otherwise).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub routine: u64,
    /// Its symbol.
    pub routine_symbol: Option<String>,
    /// The completion context (completion nodes).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub context: u64,
}

/// An operation as the filter manager holds it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Operation {
    /// The IRP_CTRL.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub irp_ctrl: u64,
    /// The callback data in it.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub cbd: u64,
    /// The major function and its name.
    pub major: u8,
    /// Name.
    pub major_name: String,
    /// IRP_CTRL flags.
    pub flags: u32,
    /// The IRP.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub irp: u64,
    /// The filter manager's device.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub device: u64,
    /// The file object.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub file: u64,
    /// CompletionStackLength.
    pub completion_stack_length: u8,
    /// NextCompletion.
    pub next_completion: u8,
    /// The callback data's flags and their names.
    pub cbd_flags: u32,
    /// Names.
    pub cbd_flag_names: Vec<String>,
    /// The thread.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub thread: u64,
    /// IoStatus.Status.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub status: u64,
    /// IoStatus.Information.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub information: u64,
    /// `KernelMode` or `UserMode`.
    pub requestor_mode: String,
    /// Whether a filter's pre-operation holds it (FLT_PREOP_PENDING).
    pub pended: bool,
    /// The filter holding it, when pended.
    pub pended_by: Option<String>,
    /// The filters that have seen it: the one holding it, and those whose post-operation is due.
    pub seen_by: Vec<SeenBy>,
    /// The parameter block (Iopb).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub iopb: u64,
    /// Its TargetFileObject.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub target_file: u64,
    /// Its TargetInstance.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub target_instance: u64,
    /// The target file's name, when it could be read.
    pub file_name: Option<String>,
    /// Its argument words.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "[crate::hex::Hex; 6]")]
    pub args: [u64; 6],
    /// What was asked about: `irpctrl` or `cbd`.
    pub asked: String,
}

fn seen(
    e: &mut Engine,
    t: &Arc<TypeTable>,
    instance: u64,
    state: &str,
    routine: u64,
    context: u64,
) -> SeenBy {
    let (filter, altitude) = match model::instance(&mut e.kernel, t, instance) {
        Ok(i) => (model::filter_name(&mut e.kernel, t, i.filter), i.altitude),
        Err(err) => (format!("(instance unreadable: {err})"), String::new()),
    };
    SeenBy {
        filter,
        instance,
        altitude,
        state: state.into(),
        routine,
        routine_symbol: sym(e, routine),
        context,
    }
}

fn operation(e: &mut Engine, ctrl: u64, asked: &str) -> Result<Operation, CmdError> {
    let (_, t, _) = fltmgr(e)?;
    let c = model::irp_ctrl(&mut e.kernel, &t, ctrl)?;
    let mut seen_by = Vec::new();
    let mut pended_by = None;
    if c.pending_node != 0 {
        let pre = model::view(&mut e.kernel, &t, "_CALLBACK_NODE", c.pending_node)
            .and_then(|v| Ok(v.get("PreOperation")?))
            .unwrap_or(0);
        let s = seen(e, &t, c.pending_instance, "pended", pre, 0);
        pended_by = Some(s.filter.clone());
        seen_by.push(s);
    }
    for n in &c.completions {
        seen_by.push(seen(e, &t, n.instance, "completion", n.post, n.context));
    }
    let (major, _, _, target_file, target_instance, args) = c.iopb_fields;
    let file_name = if target_file != 0 {
        kdnet_model::nt::io::file_object(&mut e.kernel, target_file)
            .ok()
            .map(|f| f.name)
    } else {
        None
    };
    Ok(Operation {
        irp_ctrl: ctrl,
        cbd: c.cbd,
        major,
        major_name: major_name(major),
        flags: c.flags,
        irp: c.irp,
        device: c.device,
        file: c.file,
        completion_stack_length: c.stack.0,
        next_completion: c.stack.1,
        cbd_flags: c.cbd_flags,
        cbd_flag_names: bits(c.cbd_flags, CBD_FLAGS),
        thread: c.thread,
        status: u64::from(c.status.0),
        information: c.status.1,
        requestor_mode: if c.requestor_mode == 0 {
            "KernelMode".into()
        } else {
            "UserMode".into()
        },
        pended: c.pending_node != 0,
        pended_by,
        seen_by,
        iopb: c.iopb,
        target_file,
        target_instance,
        file_name,
        args,
        asked: asked.into(),
    })
}

/// `!fltkd.irpctrl`.
pub fn irpctrl(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<Operation, CmdError> {
    let addr = a.expr(e, "ADDR")?.unwrap_or(0);
    operation(e, addr, "irpctrl")
}

/// `!fltkd.cbd`: the callback data, through the IRP_CTRL that holds it.
pub fn cbd(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<Operation, CmdError> {
    let addr = a.expr(e, "ADDR")?.unwrap_or(0);
    let (_, t, _) = fltmgr(e)?;
    let ctrl = model::irp_ctrl_of_cbd(&t, addr)?;
    operation(e, ctrl, "cbd").map_err(|err| match err {
        CmdError::Model(m) if !m.is_layout() => {
            CmdError::Model(kdnet_model::nt::ModelError::Corrupt(format!(
                "{addr:#x} is not callback data an IRP_CTRL holds: {m}"
            )))
        }
        other => other,
    })
}

impl Render for Operation {
    fn render(&self, out: &mut String) {
        if self.asked == "irpctrl" {
            out.push_str(&format!(
                "IRP_CTRL: {:x} {} ({}) [{:08x}] {}\n   Flags                    : [{:08x}]\n   Irp                      : {:x}\n   DeviceObject             : {:x}\n   FileObject               : {:x}\n   CompletionNodeStack      : Size={} Next={}\n   CallbackData             : ({:x})\n",
                self.irp_ctrl,
                self.major_name,
                self.major,
                self.cbd_flags,
                self.cbd_flag_names.join(" "),
                self.flags,
                self.irp,
                self.device,
                self.file,
                self.completion_stack_length,
                self.next_completion,
                self.cbd
            ));
        } else {
            out.push_str(&format!(
                "FLT_CALLBACK_DATA: {:x} in IRP_CTRL {:x}  {} ({})\n",
                self.cbd, self.irp_ctrl, self.major_name, self.major
            ));
        }
        out.push_str(&format!(
            "    Flags                    : [{:08x}] {}\n    Thread                   : {:x}\n    Iopb                     : {:x}\n    RequestorMode            : {}\n    IoStatus.Status          : {:#010x}\n    IoStatus.Information     : {:016x}\n    TargetFileObject         : {:x} {}\n    TargetInstance           : {:x}\n",
            self.cbd_flags,
            self.cbd_flag_names.join(" "),
            self.thread,
            self.iopb,
            self.requestor_mode,
            self.status,
            self.information,
            self.target_file,
            self.file_name.clone().unwrap_or_default(),
            self.target_instance
        ));
        match &self.pended_by {
            Some(f) => out.push_str(&format!(
                "    PENDED by {f} in its pre-operation callback\n"
            )),
            None => out.push_str("    not pended by a filter\n"),
        }
        if !self.seen_by.is_empty() {
            out.push_str("    Seen by:\n");
            for s in &self.seen_by {
                out.push_str(&format!(
                    "       {:<12} {:<10} instance {:x} \"{}\"  {} ctx {:x}\n",
                    s.filter,
                    s.state,
                    s.instance,
                    s.altitude,
                    s.routine_symbol.clone().unwrap_or_default(),
                    s.context
                ));
            }
        }
    }
}
