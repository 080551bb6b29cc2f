//! The I/O path as WinDbg's kernel extensions show it: `!irp`, `!irpfind`, `!devobj`,
//! `!drvobj`, `!devstack`, `!devnode` and `!fileobj`, each from the model's checked reads
//! ([`kdnet_model::nt::io`]).

use schemars::JsonSchema;
use serde::Serialize;

use crate::args::{Args, Flag, Syntax, flag, opt_expr, opt_word, word};
use crate::engine::{CmdError, Engine};
use crate::registry::Render;
use kdnet_model::nt::io as model;
use kdnet_model::nt::pool;

/// IRP_MJ_* names by number.
pub const MAJOR: [&str; 28] = [
    "IRP_MJ_CREATE",
    "IRP_MJ_CREATE_NAMED_PIPE",
    "IRP_MJ_CLOSE",
    "IRP_MJ_READ",
    "IRP_MJ_WRITE",
    "IRP_MJ_QUERY_INFORMATION",
    "IRP_MJ_SET_INFORMATION",
    "IRP_MJ_QUERY_EA",
    "IRP_MJ_SET_EA",
    "IRP_MJ_FLUSH_BUFFERS",
    "IRP_MJ_QUERY_VOLUME_INFORMATION",
    "IRP_MJ_SET_VOLUME_INFORMATION",
    "IRP_MJ_DIRECTORY_CONTROL",
    "IRP_MJ_FILE_SYSTEM_CONTROL",
    "IRP_MJ_DEVICE_CONTROL",
    "IRP_MJ_INTERNAL_DEVICE_CONTROL",
    "IRP_MJ_SHUTDOWN",
    "IRP_MJ_LOCK_CONTROL",
    "IRP_MJ_CLEANUP",
    "IRP_MJ_CREATE_MAILSLOT",
    "IRP_MJ_QUERY_SECURITY",
    "IRP_MJ_SET_SECURITY",
    "IRP_MJ_POWER",
    "IRP_MJ_SYSTEM_CONTROL",
    "IRP_MJ_DEVICE_CHANGE",
    "IRP_MJ_QUERY_QUOTA",
    "IRP_MJ_SET_QUOTA",
    "IRP_MJ_PNP",
];

const PNP_MINOR: [&str; 26] = [
    "IRP_MN_START_DEVICE",
    "IRP_MN_QUERY_REMOVE_DEVICE",
    "IRP_MN_REMOVE_DEVICE",
    "IRP_MN_CANCEL_REMOVE_DEVICE",
    "IRP_MN_STOP_DEVICE",
    "IRP_MN_QUERY_STOP_DEVICE",
    "IRP_MN_CANCEL_STOP_DEVICE",
    "IRP_MN_QUERY_DEVICE_RELATIONS",
    "IRP_MN_QUERY_INTERFACE",
    "IRP_MN_QUERY_CAPABILITIES",
    "IRP_MN_QUERY_RESOURCES",
    "IRP_MN_QUERY_RESOURCE_REQUIREMENTS",
    "IRP_MN_QUERY_DEVICE_TEXT",
    "IRP_MN_FILTER_RESOURCE_REQUIREMENTS",
    "",
    "IRP_MN_READ_CONFIG",
    "IRP_MN_WRITE_CONFIG",
    "IRP_MN_EJECT",
    "IRP_MN_SET_LOCK",
    "IRP_MN_QUERY_ID",
    "IRP_MN_QUERY_PNP_DEVICE_STATE",
    "IRP_MN_QUERY_BUS_INFORMATION",
    "IRP_MN_DEVICE_USAGE_NOTIFICATION",
    "IRP_MN_SURPRISE_REMOVAL",
    "IRP_MN_QUERY_LEGACY_BUS_INFORMATION",
    "IRP_MN_DEVICE_ENUMERATED",
];

const POWER_MINOR: [&str; 4] = [
    "IRP_MN_WAIT_WAKE",
    "IRP_MN_POWER_SEQUENCE",
    "IRP_MN_SET_POWER",
    "IRP_MN_QUERY_POWER",
];

const WMI_MINOR: [&str; 12] = [
    "IRP_MN_QUERY_ALL_DATA",
    "IRP_MN_QUERY_SINGLE_INSTANCE",
    "IRP_MN_CHANGE_SINGLE_INSTANCE",
    "IRP_MN_CHANGE_SINGLE_ITEM",
    "IRP_MN_ENABLE_EVENTS",
    "IRP_MN_DISABLE_EVENTS",
    "IRP_MN_ENABLE_COLLECTION",
    "IRP_MN_DISABLE_COLLECTION",
    "IRP_MN_REGINFO",
    "IRP_MN_EXECUTE_METHOD",
    "",
    "IRP_MN_REGINFO_EX",
];

const FSCTL_MINOR: [&str; 5] = [
    "IRP_MN_USER_FS_REQUEST",
    "IRP_MN_MOUNT_VOLUME",
    "IRP_MN_VERIFY_VOLUME",
    "IRP_MN_LOAD_FILE_SYSTEM",
    "IRP_MN_KERNEL_CALL",
];

/// `IRP_MJ_READ` for 3; `IRP_MJ_(0x40)` for what is no major function.
pub fn major_name(m: u8) -> String {
    MAJOR
        .get(usize::from(m))
        .map_or_else(|| format!("IRP_MJ_({m:#x})"), |s| s.to_string())
}

/// The minor function's name for its major function (`N/A` where the major has none).
pub fn minor_name(major: u8, minor: u8) -> String {
    let table: &[&str] = match major {
        0x1b => &PNP_MINOR,
        0x16 => &POWER_MINOR,
        0x17 => &WMI_MINOR,
        0x0d => &FSCTL_MINOR,
        0x0c => &[
            "",
            "IRP_MN_QUERY_DIRECTORY",
            "IRP_MN_NOTIFY_CHANGE_DIRECTORY",
            "IRP_MN_NOTIFY_CHANGE_DIRECTORY_EX",
        ],
        0x11 => &[
            "",
            "IRP_MN_LOCK",
            "IRP_MN_UNLOCK_SINGLE",
            "IRP_MN_UNLOCK_ALL",
            "IRP_MN_UNLOCK_ALL_BY_KEY",
        ],
        0x03 | 0x04 => {
            return if minor == 0 {
                "N/A".into()
            } else {
                bits(
                    u32::from(minor),
                    &[
                        (1, "IRP_MN_DPC"),
                        (2, "IRP_MN_MDL"),
                        (4, "IRP_MN_COMPLETE"),
                        (8, "IRP_MN_COMPRESSED"),
                    ],
                )
                .join("|")
            };
        }
        _ => &[],
    };
    match table.get(usize::from(minor)) {
        Some(s) if !s.is_empty() => s.to_string(),
        _ if table.is_empty() && minor == 0 => "N/A".into(),
        _ => format!("IRP_MN_({minor:#x})"),
    }
}

/// The names of the bits set in `v`, and any left over in hex.
pub fn bits(v: u32, names: &[(u32, &str)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut left = v;
    for (b, n) in names {
        if v & b != 0 {
            out.push(n.to_string());
            left &= !b;
        }
    }
    if left != 0 {
        out.push(format!("{left:#x}"));
    }
    out
}

const IRP_FLAGS: &[(u32, &str)] = &[
    (0x1, "IRP_NOCACHE"),
    (0x2, "IRP_PAGING_IO"),
    (0x4, "IRP_SYNCHRONOUS_API"),
    (0x8, "IRP_ASSOCIATED_IRP"),
    (0x10, "IRP_BUFFERED_IO"),
    (0x20, "IRP_DEALLOCATE_BUFFER"),
    (0x40, "IRP_INPUT_OPERATION"),
    (0x80, "IRP_CREATE_OPERATION"),
    (0x100, "IRP_READ_OPERATION"),
    (0x200, "IRP_WRITE_OPERATION"),
    (0x400, "IRP_CLOSE_OPERATION"),
    (0x800, "IRP_DEFER_IO_COMPLETION"),
    (0x1000, "IRP_OB_QUERY_NAME"),
    (0x2000, "IRP_HOLD_DEVICE_QUEUE"),
    (0x4000, "IRP_UM_DRIVER_INITIATED_IO"),
];

const SL_CONTROL: &[(u32, &str)] = &[
    (0x01, "pending"),
    (0x02, "error returned"),
    (0x20, "Cancel"),
    (0x40, "Success"),
    (0x80, "Error"),
];

const DO_FLAGS: &[(u32, &str)] = &[
    (0x2, "DO_VERIFY_VOLUME"),
    (0x4, "DO_BUFFERED_IO"),
    (0x8, "DO_EXCLUSIVE"),
    (0x10, "DO_DIRECT_IO"),
    (0x20, "DO_MAP_IO_BUFFER"),
    (0x40, "DO_DEVICE_HAS_NAME"),
    (0x80, "DO_DEVICE_INITIALIZING"),
    (0x100, "DO_SYSTEM_BOOT_PARTITION"),
    (0x200, "DO_LONG_TERM_REQUESTS"),
    (0x400, "DO_NEVER_LAST_DEVICE"),
    (0x800, "DO_SHUTDOWN_REGISTERED"),
    (0x1000, "DO_BUS_ENUMERATED_DEVICE"),
    (0x2000, "DO_POWER_PAGABLE"),
    (0x4000, "DO_POWER_INRUSH"),
    (0x10000, "DO_LOW_PRIORITY_FILESYSTEM"),
];

const CHARACTERISTICS: &[(u32, &str)] = &[
    (0x1, "FILE_REMOVABLE_MEDIA"),
    (0x2, "FILE_READ_ONLY_DEVICE"),
    (0x4, "FILE_FLOPPY_DISKETTE"),
    (0x8, "FILE_WRITE_ONCE_MEDIA"),
    (0x10, "FILE_REMOTE_DEVICE"),
    (0x20, "FILE_DEVICE_IS_MOUNTED"),
    (0x40, "FILE_VIRTUAL_VOLUME"),
    (0x80, "FILE_AUTOGENERATED_DEVICE_NAME"),
    (0x100, "FILE_DEVICE_SECURE_OPEN"),
    (0x800, "FILE_CHARACTERISTIC_PNP_DEVICE"),
    (0x20000, "FILE_DEVICE_ALLOW_APPCONTAINER_TRAVERSAL"),
];

const FO_FLAGS: &[(u32, &str)] = &[
    (0x1, "File Open"),
    (0x2, "Synchronous IO"),
    (0x4, "Alertable IO"),
    (0x8, "No Intermediate Buffering"),
    (0x10, "Write Through"),
    (0x20, "Sequential Only"),
    (0x40, "Cache Supported"),
    (0x80, "Named Pipe"),
    (0x100, "Stream File"),
    (0x200, "Mailslot"),
    (0x400, "Generate Audit On Close"),
    (0x800, "Direct Device Open"),
    (0x1000, "File Modified"),
    (0x2000, "File Size Changed"),
    (0x4000, "Cleanup Complete"),
    (0x8000, "Temporary File"),
    (0x10000, "Delete On Close"),
    (0x20000, "Opened Case Sensitive"),
    (0x40000, "Handle Created"),
    (0x80000, "Fast IO Read"),
    (0x100000, "Random Access"),
    (0x200000, "Open Cancelled"),
    (0x400000, "Volume Open"),
    (0x1000000, "Remote Origin"),
    (0x2000000, "Disallow Exclusive"),
    (0x4000000, "Skip Set Event"),
];

/// An address symbolised, or hex.
fn sym(e: &mut Engine, a: u64) -> Option<String> {
    (a != 0).then(|| e.kernel.symbolize(a))
}

/// A driver's name from a device, or why it could not be read.
fn device_driver_name(e: &mut Engine, device: u64) -> Option<String> {
    if device == 0 {
        return None;
    }
    match model::device(&mut e.kernel, device) {
        Ok(d) => Some(d.driver_name),
        Err(err) => {
            e.kernel
                .note_incomplete(format!("device {device:#x}: {err}"));
            Some(format!("(device unreadable: {err})"))
        }
    }
}

// ---------------------------------------------------------------- !irp

/// `!irp ADDR [DETAIL]`.
pub const IRP: Syntax = Syntax::params(&[crate::args::expr("ADDR"), opt_expr("DETAIL")]);

/// A stack location as `!irp` shows it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct IrpStack {
    /// 1-based, as CurrentLocation counts.
    pub index: u8,
    /// Its address.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub address: u64,
    /// Whether it is the current location (`>`).
    pub current: bool,
    /// IRP_MJ_* number and name.
    pub major: u8,
    /// `IRP_MJ_READ`.
    pub major_name: String,
    /// IRP_MN_* number.
    pub minor: u8,
    /// Its name (`N/A` when the major function has none).
    pub minor_name: String,
    /// SL_* flags.
    pub flags: u8,
    /// Control.
    pub control: u8,
    /// Control decoded: `pending`, `Success`, `Error`, `Cancel`.
    pub control_names: Vec<String>,
    /// Device object.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub device: u64,
    /// Its driver's name.
    pub driver: Option<String>,
    /// File object.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub file: u64,
    /// Completion routine.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub completion: u64,
    /// It symbolised.
    pub completion_symbol: Option<String>,
    /// Its context.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub context: u64,
    /// Parameters' first four words.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "[crate::hex::Hex; 4]")]
    pub args: [u64; 4],
}

/// What `!irp` shows.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct IrpResult {
    /// The IRP.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub irp: u64,
    /// Size.
    pub size: u64,
    /// StackCount.
    pub stack_count: u8,
    /// CurrentLocation.
    pub current_location: u8,
    /// Whether a driver holds it (CurrentLocation within the stack).
    pub active: bool,
    /// Flags and their names.
    pub flags: u32,
    /// Flag names.
    pub flag_names: Vec<String>,
    /// MdlAddress.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub mdl: u64,
    /// AssociatedIrp (SystemBuffer or MasterIrp).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub associated: u64,
    /// The thread that issued it.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub thread: u64,
    /// Cancel.
    pub cancel: bool,
    /// CancelIrql.
    pub cancel_irql: u8,
    /// CancelRoutine.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub cancel_routine: u64,
    /// It symbolised.
    pub cancel_routine_symbol: Option<String>,
    /// PendingReturned.
    pub pending_returned: bool,
    /// IoStatus.Status.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub status: u64,
    /// IoStatus.Information.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub information: u64,
    /// UserEvent.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub user_event: u64,
    /// UserIosb.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub user_iosb: u64,
    /// UserBuffer.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub user_buffer: u64,
    /// `KernelMode` or `UserMode`.
    pub requestor_mode: String,
    /// Tail.Overlay.OriginalFileObject.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub original_file: u64,
    /// Tail.Overlay.AuxiliaryBuffer.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub auxiliary_buffer: u64,
    /// Its stack locations, the lowest first.
    pub stack: Vec<IrpStack>,
    /// What is wrong with it (a second completion, counts that cannot be right).
    pub problems: Vec<String>,
    /// Whether the header's details were asked for (`!irp ADDR 1`).
    pub detail: bool,
}

/// `!irp`.
pub fn irp(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<IrpResult, CmdError> {
    let addr = a
        .expr(e, "ADDR")?
        .ok_or_else(|| CmdError::Usage("!irp ADDR [1]".into()))?;
    let detail = a.expr(e, "DETAIL")?.unwrap_or(0) != 0;
    let i = model::irp(&mut e.kernel, addr)?;
    let mut stack = Vec::new();
    for l in &i.locations {
        let driver = device_driver_name(e, l.device);
        let completion_symbol = sym(e, l.completion);
        stack.push(IrpStack {
            index: l.index,
            address: l.addr,
            current: i.current_in_range() && l.index == i.current,
            major: l.major,
            major_name: major_name(l.major),
            minor: l.minor,
            minor_name: minor_name(l.major, l.minor),
            flags: l.flags,
            control: l.control,
            control_names: bits(u32::from(l.control), SL_CONTROL),
            device: l.device,
            driver,
            file: l.file,
            completion: l.completion,
            completion_symbol,
            context: l.context,
            args: l.args,
        });
    }
    let cancel_routine_symbol = sym(e, i.cancel_routine);
    Ok(IrpResult {
        irp: i.addr,
        size: i.size,
        stack_count: i.stack_count,
        current_location: i.current,
        active: i.current_in_range(),
        flags: i.flags,
        flag_names: bits(i.flags, IRP_FLAGS),
        mdl: i.mdl,
        associated: i.associated,
        thread: i.thread,
        cancel: i.cancel,
        cancel_irql: i.cancel_irql,
        cancel_routine: i.cancel_routine,
        cancel_routine_symbol,
        pending_returned: i.pending_returned,
        status: u64::from(i.status),
        information: i.information,
        user_event: i.user_event,
        user_iosb: i.user_iosb,
        user_buffer: i.user_buffer,
        requestor_mode: if i.requestor_mode == 0 {
            "KernelMode".into()
        } else {
            "UserMode".into()
        },
        original_file: i.original_file,
        auxiliary_buffer: i.auxiliary_buffer,
        stack,
        problems: i.problems,
        detail,
    })
}

impl Render for IrpResult {
    fn render(&self, out: &mut String) {
        let current_at = self.stack.iter().find(|s| s.current).map(|s| s.address);
        match current_at {
            Some(c) => out.push_str(&format!(
                "Irp is active with {} stacks {} is current (= {c:#x})\n",
                self.stack_count, self.current_location
            )),
            None => out.push_str(&format!(
                "Irp is active with {} stacks {} is current (no current stack location)\n",
                self.stack_count, self.current_location as i8
            )),
        }
        let mdl = if self.mdl == 0 {
            " No Mdl:".to_string()
        } else {
            format!(" Mdl={:x}:", self.mdl)
        };
        let buf = if self.associated == 0 {
            " No System Buffer:".to_string()
        } else {
            format!(" System buffer={:x}:", self.associated)
        };
        out.push_str(&format!(
            "{mdl}{buf} Thread {:016x}:  Irp stack trace.  {}\n",
            self.thread,
            if self.pending_returned {
                "Pending has been returned"
            } else {
                ""
            }
        ));
        out.push_str("     cmd  flg cl Device   File     Completion-Context\n");
        for s in self.stack.iter().rev() {
            out.push_str(&format!(
                "{}[{}({:x}), {}({:x})]\n",
                if s.current { ">" } else { " " },
                s.major_name,
                s.major,
                s.minor_name,
                s.minor
            ));
            out.push_str(&format!(
                "           {:2x} {:2x} {:016x} {:016x} {:016x}-{:016x}    {}\n",
                s.flags,
                s.control,
                s.device,
                s.file,
                s.completion,
                s.context,
                s.control_names.join(" ")
            ));
            let drv = s.driver.clone().unwrap_or_default();
            let comp = s.completion_symbol.clone().unwrap_or_default();
            if !drv.is_empty() || !comp.is_empty() {
                out.push_str(&format!("\t       {drv}\t{comp}\n"));
            }
            out.push_str(&format!(
                "\t\t\tArgs: {:016x} {:016x} {:016x} {:016x}\n",
                s.args[0], s.args[1], s.args[2], s.args[3]
            ));
        }
        if self.detail {
            out.push_str(&format!(
                "\nIrp {:x}: Size {:#x} Flags {:08x} ({})\n  IoStatus: Status {:08x} Information {:x}  RequestorMode {}\n  PendingReturned {}  Cancel {}  CancelIrql {}  CancelRoutine {:x} {}\n  UserEvent {:x}  UserIosb {:x}  UserBuffer {:x}\n  Tail.Overlay.OriginalFileObject {:x}  AuxiliaryBuffer {:x}\n",
                self.irp,
                self.size,
                self.flags,
                self.flag_names.join(" | "),
                self.status,
                self.information,
                self.requestor_mode,
                self.pending_returned as u8,
                self.cancel as u8,
                self.cancel_irql,
                self.cancel_routine,
                self.cancel_routine_symbol.clone().unwrap_or_default(),
                self.user_event,
                self.user_iosb,
                self.user_buffer,
                self.original_file,
                self.auxiliary_buffer
            ));
        }
        for p in &self.problems {
            out.push_str(&format!("WARNING: {p}\n"));
        }
    }
}

// ---------------------------------------------------------------- !irpfind

/// `!irpfind [-v] [0 0 CRITERIA VALUE]`.
pub const IRPFIND: Syntax = Syntax {
    flags: &[flag("-v", "each IRP's stack locations too")] as &[Flag],
    params: &[
        opt_expr("POOLTYPE"),
        opt_expr("RESTART"),
        opt_word("CRITERIA"),
        opt_expr("DATA"),
    ],
    length: false,
};

/// An IRP found.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FoundIrp {
    /// The IRP.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub irp: u64,
    /// The thread that issued it.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub thread: u64,
    /// The current location's major and minor functions (null when no location is current).
    pub major: Option<u8>,
    /// Minor function.
    pub minor: Option<u8>,
    /// The current location's device.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub device: u64,
    /// Its driver.
    pub driver: Option<String>,
    /// MdlAddress.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub mdl: u64,
    /// Tail.Overlay.OriginalFileObject.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub file: u64,
    /// UserEvent.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub user_event: u64,
    /// Where it was found: `pool`, `thread` or both.
    pub found_in: Vec<String>,
    /// What is wrong with it.
    pub problems: Vec<String>,
    /// With `-v`: its stack locations, the highest first (empty without).
    pub locations: Vec<FoundLocation>,
}

/// A stack location of a found IRP (`!irpfind -v`).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FoundLocation {
    /// 1-based.
    pub index: u8,
    /// Whether it is the current one.
    pub current: bool,
    /// `IRP_MJ_READ`.
    pub major_name: String,
    /// Its minor function's name.
    pub minor_name: String,
    /// Its device.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub device: u64,
    /// Its device's driver.
    pub driver: Option<String>,
    /// Its completion routine, symbolised.
    pub completion: Option<String>,
}

/// What `!irpfind` found.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct IrpFind {
    /// The criteria (`device`, `fileobject`, `thread`, `userevent`, `arg`) and value, if any.
    pub criteria: Option<(String, String)>,
    /// Pool blocks with the IRP tag looked at.
    pub pool_blocks: usize,
    /// Threads whose IRP lists were walked.
    pub threads: usize,
    /// The IRPs, by address.
    pub irps: Vec<FoundIrp>,
    /// Why the search is not whole.
    pub notes: Vec<String>,
}

/// Most IRPs `!irpfind` looks at.
const IRPFIND_LIMIT: usize = 1 << 20;

/// `!irpfind`.
pub fn irpfind(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<IrpFind, CmdError> {
    let criteria = match a.text("CRITERIA") {
        None => None,
        Some(c) => {
            let c = c.to_ascii_lowercase();
            if ![
                "device",
                "fileobject",
                "thread",
                "userevent",
                "mdlprocess",
                "arg",
            ]
            .contains(&c.as_str())
            {
                return Err(CmdError::Usage(format!(
                    "criteria {c}: use device, fileobject, thread, userevent or arg"
                )));
            }
            let v = a
                .expr(e, "DATA")?
                .ok_or_else(|| CmdError::Usage(format!("criteria {c} needs a value")))?;
            Some((c, v))
        }
    };
    let verbose = a.flag("-v");
    let mut notes = Vec::new();
    // The IRP tag's blocks in non-paged pool, big allocations included.
    let tag = pool::tag_value("Irp ").unwrap_or(0);
    let (hits, pool_notes) = pool::find_tag(&mut e.kernel, tag, Some(false), IRPFIND_LIMIT)?;
    notes.extend(pool_notes);
    let mut found: std::collections::BTreeMap<u64, Vec<String>> = Default::default();
    for h in &hits {
        found.entry(h.4).or_default().push("pool".into());
    }
    // Every thread's IRP list.
    let (listed, threads, thread_notes) = model::thread_irps(&mut e.kernel)?;
    notes.extend(thread_notes);
    for (irp, _) in listed {
        found.entry(irp).or_default().push("thread".into());
    }
    let mut irps = Vec::new();
    let pool_blocks = hits.len();
    for (addr, from) in found {
        let i = match model::irp(&mut e.kernel, addr) {
            Ok(i) => i,
            // A block with the tag that holds no IRP now (freed, reused) is not one.
            Err(kdnet_model::nt::ModelError::Corrupt(_))
                if !from.contains(&"thread".to_string()) =>
            {
                continue;
            }
            Err(err) if err.is_layout() => return Err(err.into()),
            Err(err) => {
                notes.push(format!("{addr:x}: {err}"));
                continue;
            }
        };
        let cur = i
            .locations
            .iter()
            .find(|l| i.current_in_range() && l.index == i.current)
            .cloned();
        let device = cur.as_ref().map_or(0, |l| l.device);
        if let Some((c, v)) = &criteria {
            let hit = match c.as_str() {
                "device" => i.locations.iter().any(|l| l.device == *v),
                "fileobject" => i.original_file == *v || i.locations.iter().any(|l| l.file == *v),
                "thread" => i.thread == *v,
                "userevent" => i.user_event == *v,
                "arg" => i.locations.iter().any(|l| l.args.contains(v)),
                _ => false,
            };
            if !hit {
                continue;
            }
        }
        let driver = device_driver_name(e, device);
        let mut locations = Vec::new();
        if verbose {
            for l in i.locations.iter().rev() {
                let driver = device_driver_name(e, l.device);
                let completion = sym(e, l.completion);
                locations.push(FoundLocation {
                    index: l.index,
                    current: i.current_in_range() && l.index == i.current,
                    major_name: major_name(l.major),
                    minor_name: minor_name(l.major, l.minor),
                    device: l.device,
                    driver,
                    completion,
                });
            }
        }
        irps.push(FoundIrp {
            irp: addr,
            thread: i.thread,
            major: cur.as_ref().map(|l| l.major),
            minor: cur.as_ref().map(|l| l.minor),
            device,
            driver,
            mdl: i.mdl,
            file: i.original_file,
            user_event: i.user_event,
            found_in: from,
            problems: i.problems,
            locations,
        });
    }
    for n in &notes {
        e.kernel.note_incomplete(n.clone());
    }
    Ok(IrpFind {
        criteria: criteria.map(|(c, v)| (c, format!("{v:x}"))),
        pool_blocks,
        threads,
        irps,
        notes,
    })
}

impl Render for IrpFind {
    fn render(&self, out: &mut String) {
        out.push_str(
            "Scanning large pool allocation table and non-paged pool for tag 0x20707249 (Irp ), and every thread's IRP list\n",
        );
        out.push_str(&".".repeat((self.pool_blocks / 64).clamp(1, 70)));
        out.push_str("\n\n  Irp              [ Thread ]         irpStack: (Mj,Mn)   DevObj           [Driver]         MDL Process\n");
        for i in &self.irps {
            let stack = match (i.major, i.minor) {
                (Some(m), Some(n)) => format!("({m:2x},{n:2x})"),
                _ => "(  ,  )".into(),
            };
            out.push_str(&format!(
                "{:016x} [{:016x}] irpStack: {stack}  {:016x} [{}]{}\n",
                i.irp,
                i.thread,
                i.device,
                i.driver.clone().unwrap_or_default(),
                if i.problems.is_empty() {
                    String::new()
                } else {
                    format!("  !! {}", i.problems.join("; "))
                }
            ));
            for l in &i.locations {
                out.push_str(&format!(
                    "    {}[{}, {}] {:016x} {} {}\n",
                    if l.current { ">" } else { " " },
                    l.major_name,
                    l.minor_name,
                    l.device,
                    l.driver.clone().unwrap_or_default(),
                    l.completion.clone().unwrap_or_default()
                ));
            }
        }
        out.push_str(&format!(
            "\n{} IRP(s) found ({} pool block(s) with the tag, {} thread(s) looked at)\n",
            self.irps.len(),
            self.pool_blocks,
            self.threads
        ));
        for n in &self.notes {
            out.push_str(&format!("NOTE: {n}\n"));
        }
    }
}

// ---------------------------------------------------------------- !devobj, !devstack

/// `!devobj ADDR|\Device\Name`.
pub const DEVOBJ: Syntax = Syntax::params(&[word("DEVICE")]);

/// Resolves a device, driver or other object argument: a path (`\Device\X`), a bare name in
/// `default_dir`, or an expression.
fn object_arg(e: &mut Engine, text: &str, default_dir: &str) -> Result<u64, CmdError> {
    if text.starts_with('\\') {
        return Ok(e.kernel.lookup_object(text)?);
    }
    match e.eval(text) {
        Ok(v) => Ok(v),
        Err(first) => match e.kernel.lookup_object(&format!("{default_dir}\\{text}")) {
            Ok(v) => Ok(v),
            Err(_) => Err(first),
        },
    }
}

/// A device object as `!devobj` shows it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DevObj {
    /// The device.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub device: u64,
    /// Its name.
    pub name: Option<String>,
    /// Its driver.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub driver: u64,
    /// The driver's name.
    pub driver_name: String,
    /// CurrentIrp.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub current_irp: u64,
    /// ReferenceCount.
    pub reference_count: i64,
    /// DeviceType.
    pub device_type: u32,
    /// Flags.
    pub flags: u32,
    /// Flag names.
    pub flag_names: Vec<String>,
    /// Characteristics.
    pub characteristics: u32,
    /// Characteristic names.
    pub characteristic_names: Vec<String>,
    /// Vpb.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub vpb: u64,
    /// DeviceExtension.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub extension: u64,
    /// DeviceObjectExtension.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub devobj_extension: u64,
    /// ExtensionFlags.
    pub extension_flags: u32,
    /// StackSize.
    pub stack_size: u8,
    /// The device attached above (and its driver).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub attached_device: u64,
    /// Its driver's name.
    pub attached_driver: Option<String>,
    /// The device below (AttachedTo) and its driver.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub attached_to: u64,
    /// Its driver's name.
    pub attached_to_driver: Option<String>,
    /// The device node (PDOs).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub devnode: u64,
}

fn devobj_of(e: &mut Engine, d: &model::Device) -> DevObj {
    let attached_driver = device_driver_name(e, d.attached);
    let attached_to_driver = device_driver_name(e, d.attached_to);
    DevObj {
        device: d.addr,
        name: d.name.clone(),
        driver: d.driver,
        driver_name: d.driver_name.clone(),
        current_irp: d.current_irp,
        reference_count: d.reference_count,
        device_type: d.device_type,
        flags: d.flags,
        flag_names: bits(d.flags, DO_FLAGS),
        characteristics: d.characteristics,
        characteristic_names: bits(d.characteristics, CHARACTERISTICS),
        vpb: d.vpb,
        extension: d.extension,
        devobj_extension: d.devobj_extension,
        extension_flags: d.extension_flags,
        stack_size: d.stack_size,
        attached_device: d.attached,
        attached_driver,
        attached_to: d.attached_to,
        attached_to_driver,
        devnode: d.devnode,
    }
}

/// `!devobj`.
pub fn devobj(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<DevObj, CmdError> {
    let t = a.text("DEVICE").unwrap_or_default();
    let addr = object_arg(e, t, "\\Device")?;
    let d = model::device(&mut e.kernel, addr)?;
    Ok(devobj_of(e, &d))
}

impl Render for DevObj {
    fn render(&self, out: &mut String) {
        out.push_str(&format!(
            "Device object ({:x}) is for:\n {} {} DriverObject {:x}\n",
            self.device,
            self.name.clone().unwrap_or_default(),
            self.driver_name,
            self.driver
        ));
        out.push_str(&format!(
            "Current Irp {:08x} RefCount {} Type {:08x} Flags {:08x}\n",
            self.current_irp, self.reference_count, self.device_type, self.flags
        ));
        if self.vpb != 0 {
            out.push_str(&format!("Vpb {:x} ", self.vpb));
        }
        out.push_str(&format!(
            "DevExt {:x} DevObjExt {:x} \n",
            self.extension, self.devobj_extension
        ));
        if !self.flag_names.is_empty() {
            out.push_str(&format!(
                "Flags ({:#010x})  {}\n",
                self.flags,
                self.flag_names.join(", ")
            ));
        }
        if self.characteristics != 0 {
            out.push_str(&format!(
                "Characteristics ({:#010x})  {}\n",
                self.characteristics,
                self.characteristic_names.join(", ")
            ));
        }
        if self.attached_device != 0 {
            out.push_str(&format!(
                "AttachedDevice (Upper) {:x} {}\n",
                self.attached_device,
                self.attached_driver.clone().unwrap_or_default()
            ));
        }
        if self.attached_to != 0 {
            out.push_str(&format!(
                "AttachedTo (Lower) {:x} {}\n",
                self.attached_to,
                self.attached_to_driver.clone().unwrap_or_default()
            ));
        }
        if self.devnode != 0 {
            out.push_str(&format!("Device node {:x}\n", self.devnode));
        }
        out.push_str(if self.current_irp == 0 {
            "Device queue is not busy.\n"
        } else {
            "Device queue is busy.\n"
        });
    }
}

/// `!devstack ADDR|\Device\Name`.
pub const DEVSTACK: Syntax = Syntax::params(&[word("DEVICE")]);

/// A device in a stack.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StackDevice {
    /// The device.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub device: u64,
    /// Its driver's name.
    pub driver: String,
    /// DeviceExtension.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub extension: u64,
    /// Its name.
    pub name: Option<String>,
    /// Whether it is the device asked about (`>`).
    pub this: bool,
}

/// What `!devstack` shows.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DevStack {
    /// The stack, top first.
    pub stack: Vec<StackDevice>,
    /// The device node of the stack's bottom (its PDO), when it has one.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub devnode: u64,
    /// Its instance path and service.
    pub instance: Option<String>,
    /// Service.
    pub service: Option<String>,
    /// Why the stack is not whole.
    pub notes: Vec<String>,
}

/// `!devstack`.
pub fn devstack(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<DevStack, CmdError> {
    let t = a.text("DEVICE").unwrap_or_default();
    let addr = object_arg(e, t, "\\Device")?;
    let (devs, notes) = model::device_stack(&mut e.kernel, addr)?;
    let devnode = devs.last().map_or(0, |d| d.devnode);
    let (instance, service) = if devnode != 0 {
        match model::devnode(&mut e.kernel, devnode, 0) {
            Ok((n, _, _)) => (Some(n.instance), Some(n.service)),
            Err(err) => {
                e.kernel
                    .note_incomplete(format!("device node {devnode:x}: {err}"));
                (None, None)
            }
        }
    } else {
        (None, None)
    };
    Ok(DevStack {
        stack: devs
            .iter()
            .map(|d| StackDevice {
                device: d.addr,
                driver: d.driver_name.clone(),
                extension: d.extension,
                name: d.name.clone(),
                this: d.addr == addr,
            })
            .collect(),
        devnode,
        instance,
        service,
        notes,
    })
}

impl Render for DevStack {
    fn render(&self, out: &mut String) {
        out.push_str("  !DevObj           !DrvObj                  !DevExt           ObjectName\n");
        for d in &self.stack {
            out.push_str(&format!(
                "{} {:016x}  {:<24} {:016x}  {}\n",
                if d.this { ">" } else { " " },
                d.device,
                d.driver,
                d.extension,
                d.name.clone().unwrap_or_default()
            ));
        }
        if self.devnode != 0 {
            out.push_str(&format!("!DevNode {:x} :\n", self.devnode));
            if let Some(i) = &self.instance {
                out.push_str(&format!("  DeviceInst is \"{i}\"\n"));
            }
            if let Some(s) = &self.service
                && !s.is_empty()
            {
                out.push_str(&format!("  ServiceName is \"{s}\"\n"));
            }
        }
        for n in &self.notes {
            out.push_str(&format!("NOTE: {n}\n"));
        }
    }
}

// ---------------------------------------------------------------- !drvobj

/// `!drvobj ADDR|\Driver\Name [FLAGS]`.
pub const DRVOBJ: Syntax = Syntax::params(&[word("DRIVER"), opt_expr("FLAGS")]);

/// A routine and its symbol.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Routine {
    /// What it is (`IRP_MJ_CREATE`, `FastIoRead`, `DriverUnload`).
    pub name: String,
    /// Its address.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub address: u64,
    /// It symbolised.
    pub symbol: Option<String>,
    /// Whether it is nt!IopInvalidDeviceRequest (the driver does not handle it).
    pub invalid_request: bool,
}

/// What `!drvobj` shows.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DrvObj {
    /// The driver object.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub driver: u64,
    /// Its name.
    pub name: String,
    /// Its service key name.
    pub service: String,
    /// Its devices.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Vec<crate::hex::Hex>")]
    pub devices: Vec<u64>,
    /// DriverStart.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub start: u64,
    /// DriverSize.
    pub size: u64,
    /// DriverEntry, DriverStartIo, DriverUnload, AddDevice.
    pub entry_points: Vec<Routine>,
    /// The dispatch table (with flags bit 2, or always in JSON).
    pub dispatch: Vec<Routine>,
    /// The fast I/O routines set.
    pub fast_io: Vec<Routine>,
    /// FastIoDispatch.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub fast_io_dispatch: u64,
    /// FLAGS as given (1 devices, 2 dispatch, 4 fast I/O; 7 by default).
    pub flags: u64,
    /// Why the device list is not whole.
    pub notes: Vec<String>,
}

fn routine(e: &mut Engine, name: &str, address: u64, invalid: Option<u64>) -> Routine {
    Routine {
        name: name.to_string(),
        address,
        symbol: sym(e, address),
        invalid_request: invalid == Some(address) && address != 0,
    }
}

/// `!drvobj`.
pub fn drvobj(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<DrvObj, CmdError> {
    let t = a.text("DRIVER").unwrap_or_default();
    let addr = object_arg(e, t, "\\Driver")?;
    let flags = a.expr(e, "FLAGS")?.unwrap_or(7);
    let d = model::driver(&mut e.kernel, addr)?;
    let invalid = e.kernel.sym("IopInvalidDeviceRequest").ok();
    let entry_points = vec![
        routine(e, "DriverEntry", d.init, None),
        routine(e, "DriverStartIo", d.start_io, None),
        routine(e, "DriverUnload", d.unload, None),
        routine(e, "AddDevice", d.add_device, None),
    ];
    let mut dispatch = Vec::new();
    for (i, r) in d.dispatch.iter().enumerate() {
        dispatch.push(routine(e, MAJOR[i], *r, invalid));
    }
    let mut fast_io = Vec::new();
    for (n, r) in &d.fast_io_routines {
        fast_io.push(routine(e, n, *r, None));
    }
    Ok(DrvObj {
        driver: addr,
        name: d.name,
        service: d.service,
        devices: d.devices,
        start: d.start,
        size: d.size,
        entry_points,
        dispatch,
        fast_io,
        fast_io_dispatch: d.fast_io,
        flags,
        notes: d.notes,
    })
}

impl Render for DrvObj {
    fn render(&self, out: &mut String) {
        out.push_str(&format!(
            "Driver object ({:x}) is for:\n {}\n\nDriver Extension List: (id , addr)\n\nDevice Object list:\n",
            self.driver, self.name
        ));
        let devs: Vec<String> = self.devices.iter().map(|d| format!("{d:016x}")).collect();
        for row in devs.chunks(4) {
            out.push_str(&format!("{}\n", row.join("  ")));
        }
        if self.flags & 2 != 0 {
            out.push('\n');
            for r in &self.entry_points {
                out.push_str(&format!(
                    "{:<15}{:016x}\t{}\n",
                    format!("{}:", r.name),
                    r.address,
                    r.symbol.clone().unwrap_or_default()
                ));
            }
            out.push_str("\nDispatch routines:\n");
            for (i, r) in self.dispatch.iter().enumerate() {
                out.push_str(&format!(
                    "[{i:02x}] {:<35}{:016x}\t{}\n",
                    r.name,
                    r.address,
                    r.symbol.clone().unwrap_or_default()
                ));
            }
        }
        if self.flags & 4 != 0 && !self.fast_io.is_empty() {
            out.push_str(&format!(
                "\nFast I/O routines ({:x}):\n",
                self.fast_io_dispatch
            ));
            for r in &self.fast_io {
                out.push_str(&format!(
                    "{:<35}{:016x}\t{}\n",
                    r.name,
                    r.address,
                    r.symbol.clone().unwrap_or_default()
                ));
            }
        }
        for n in &self.notes {
            out.push_str(&format!("NOTE: {n}\n"));
        }
    }
}

// ---------------------------------------------------------------- !devnode

/// `!devnode [ADDR [FLAGS [SERVICE]]]`.
pub const DEVNODE: Syntax =
    Syntax::params(&[opt_expr("ADDR"), opt_expr("FLAGS"), opt_word("SERVICE")]);

/// A device node as `!devnode` shows it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Node {
    /// The node.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub devnode: u64,
    /// Depth below where the walk started.
    pub depth: usize,
    /// Its PDO.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub pdo: u64,
    /// InstancePath.
    pub instance: String,
    /// ServiceName.
    pub service: String,
    /// State's name (`DeviceNodeStarted`), or its number when the table has no name for it.
    pub state: String,
    /// State's value.
    pub state_value: u32,
    /// PreviousState's name.
    pub previous_state: String,
    /// Problem (CM_PROB_*; 0 none).
    pub problem: u32,
}

/// What `!devnode` shows.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DevNodes {
    /// The nodes, depth first.
    pub nodes: Vec<Node>,
    /// Why the tree is not whole.
    pub notes: Vec<String>,
}

fn state_text(s: &(u32, Option<String>)) -> String {
    s.1.clone().unwrap_or_else(|| format!("{:#x}", s.0))
}

/// `!devnode`: `!devnode 0 1` the whole tree; `!devnode 0 1 SERVICE` the nodes of a service;
/// `!devnode ADDR` one node.
pub fn devnode(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<DevNodes, CmdError> {
    let addr = a.expr(e, "ADDR")?.unwrap_or(0);
    let flags = a.expr(e, "FLAGS")?.unwrap_or(0);
    let service = a.text("SERVICE").map(str::to_ascii_lowercase);
    let recurse = flags & 1 != 0 || service.is_some();
    let (nodes, notes) = model::devnodes(&mut e.kernel, addr, recurse)?;
    Ok(DevNodes {
        nodes: nodes
            .into_iter()
            .filter(|n| {
                service
                    .as_ref()
                    .is_none_or(|s| n.service.eq_ignore_ascii_case(s))
            })
            .map(|n| Node {
                devnode: n.addr,
                depth: n.depth,
                pdo: n.pdo,
                instance: n.instance,
                service: n.service,
                state: state_text(&n.state),
                state_value: n.state.0,
                previous_state: state_text(&n.previous),
                problem: n.problem,
            })
            .collect(),
        notes,
    })
}

impl Render for DevNodes {
    fn render(&self, out: &mut String) {
        if let Some(first) = self.nodes.first()
            && first.depth == 0
        {
            out.push_str(&format!(
                "Dumping IopRootDeviceNode (= {:#x})\n",
                first.devnode
            ));
        }
        for n in &self.nodes {
            let pad = "  ".repeat(n.depth);
            out.push_str(&format!(
                "{pad}DevNode {:#x} for PDO {:#x}\n{pad}  InstancePath is \"{}\"\n",
                n.devnode, n.pdo, n.instance
            ));
            if !n.service.is_empty() {
                out.push_str(&format!("{pad}  ServiceName is \"{}\"\n", n.service));
            }
            out.push_str(&format!(
                "{pad}  State = {} ({:#x})\n{pad}  Previous State = {}\n",
                n.state, n.state_value, n.previous_state
            ));
            if n.problem != 0 {
                out.push_str(&format!("{pad}  Problem = CM_PROB_{:#x}\n", n.problem));
            }
        }
        for n in &self.notes {
            out.push_str(&format!("NOTE: {n}\n"));
        }
    }
}

// ---------------------------------------------------------------- !fileobj

/// `!fileobj ADDR`.
pub const FILEOBJ: Syntax = Syntax::params(&[crate::args::expr("ADDR")]);

/// What `!fileobj` shows.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FileObj {
    /// The file object.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub file: u64,
    /// FileName.
    pub name: String,
    /// DeviceObject.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub device: u64,
    /// Its driver's name.
    pub driver: Option<String>,
    /// Its device's name.
    pub device_name: Option<String>,
    /// Vpb.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub vpb: u64,
    /// Access: `Read`, `Write`, `Delete`, `SharedRead`, `SharedWrite`, `SharedDelete`.
    pub access: Vec<String>,
    /// Flags.
    pub flags: u32,
    /// Flag names.
    pub flag_names: Vec<String>,
    /// FsContext.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub fs_context: u64,
    /// FsContext2.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub fs_context2: u64,
    /// SectionObjectPointer.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub section_object_pointer: u64,
    /// PrivateCacheMap.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub private_cache_map: u64,
    /// RelatedFileObject.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub related: u64,
    /// CurrentByteOffset.
    pub current_byte_offset: u64,
    /// FinalStatus.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub final_status: u64,
    /// DeletePending.
    pub delete_pending: bool,
}

/// `!fileobj`.
pub fn fileobj(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<FileObj, CmdError> {
    let addr = a
        .expr(e, "ADDR")?
        .ok_or_else(|| CmdError::Usage("!fileobj ADDR".into()))?;
    let f = model::file_object(&mut e.kernel, addr)?;
    let (driver, device_name) = if f.device != 0 {
        match model::device(&mut e.kernel, f.device) {
            Ok(d) => (Some(d.driver_name), d.name),
            Err(err) => {
                e.kernel
                    .note_incomplete(format!("the device of file object {addr:x}: {err}"));
                (None, None)
            }
        }
    } else {
        (None, None)
    };
    let names = [
        "Read",
        "Write",
        "Delete",
        "SharedRead",
        "SharedWrite",
        "SharedDelete",
    ];
    Ok(FileObj {
        file: addr,
        name: f.name,
        device: f.device,
        driver,
        device_name,
        vpb: f.vpb,
        access: names
            .iter()
            .zip(f.access)
            .filter(|(_, on)| *on)
            .map(|(n, _)| n.to_string())
            .collect(),
        flags: f.flags,
        flag_names: bits(f.flags, FO_FLAGS),
        fs_context: f.fs_context,
        fs_context2: f.fs_context2,
        section_object_pointer: f.section_object_pointer,
        private_cache_map: f.private_cache_map,
        related: f.related,
        current_byte_offset: f.current_byte_offset,
        final_status: u64::from(f.final_status),
        delete_pending: f.delete_pending,
    })
}

impl Render for FileObj {
    fn render(&self, out: &mut String) {
        out.push_str(&format!("\n{}\n\n", self.name));
        out.push_str(&format!(
            "Device Object: {:#x}   {}{}\n",
            self.device,
            self.driver.clone().unwrap_or_default(),
            self.device_name
                .as_ref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        ));
        out.push_str(&format!("Vpb: {:#x}\n", self.vpb));
        out.push_str(&format!("Access: {} \n\n", self.access.join(" ")));
        out.push_str(&format!("Flags:  {:#x}\n", self.flags));
        for f in &self.flag_names {
            out.push_str(&format!("\t{f}\n"));
        }
        if self.delete_pending {
            out.push_str("\tDelete Pending\n");
        }
        out.push_str(&format!(
            "\nFsContext: {:#x}\tFsContext2: {:#x}\nPrivate Cache Map: {:#x}\nSectionObjectPointer: {:#x}\nCurrentByteOffset: {:x}\nFinalStatus: {:#x}\n",
            self.fs_context,
            self.fs_context2,
            self.private_cache_map,
            self.section_object_pointer,
            self.current_byte_offset,
            self.final_status
        ));
        if self.related != 0 {
            out.push_str(&format!("RelatedFileObject: {:#x}\n", self.related));
        }
    }
}
