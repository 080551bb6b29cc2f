//! The I/O layer every scenario has: drivers in `\Driver` and `\FileSystem`, the PnP tree with
//! the NIC under the PCI bus, the system volume (volume manager's device, NTFS mounted on it,
//! the filter manager's device on top), the CimFS control device, file objects behind the
//! processes' handles, and the filter manager's control devices in `\FileSystem\Filters`.

use crate::SimError;
use crate::system::{DeviceSpec, HandleRec, IrpLocation, IrpSpec, System};

use super::facts::{IoFacts, NamedDevice, PlantedIrp};

/// IRP_MJ_* numbers used here.
pub mod mj {
    /// IRP_MJ_CREATE.
    pub const CREATE: u8 = 0x00;
    /// IRP_MJ_CLOSE.
    pub const CLOSE: u8 = 0x02;
    /// IRP_MJ_READ.
    pub const READ: u8 = 0x03;
    /// IRP_MJ_WRITE.
    pub const WRITE: u8 = 0x04;
    /// IRP_MJ_QUERY_INFORMATION.
    pub const QUERY_INFORMATION: u8 = 0x05;
    /// IRP_MJ_SET_INFORMATION.
    pub const SET_INFORMATION: u8 = 0x06;
    /// IRP_MJ_DIRECTORY_CONTROL.
    pub const DIRECTORY_CONTROL: u8 = 0x0c;
    /// IRP_MJ_FILE_SYSTEM_CONTROL.
    pub const FILE_SYSTEM_CONTROL: u8 = 0x0d;
    /// IRP_MJ_DEVICE_CONTROL.
    pub const DEVICE_CONTROL: u8 = 0x0e;
    /// IRP_MJ_INTERNAL_DEVICE_CONTROL.
    pub const INTERNAL_DEVICE_CONTROL: u8 = 0x0f;
    /// IRP_MJ_CLEANUP.
    pub const CLEANUP: u8 = 0x12;
    /// IRP_MJ_POWER.
    pub const POWER: u8 = 0x16;
    /// IRP_MJ_SYSTEM_CONTROL.
    pub const SYSTEM_CONTROL: u8 = 0x17;
    /// IRP_MJ_PNP.
    pub const PNP: u8 = 0x1b;
}

/// FILE_DEVICE_* types used here.
const FILE_DEVICE_DISK: u32 = 0x07;
const FILE_DEVICE_DISK_FILE_SYSTEM: u32 = 0x08;
const FILE_DEVICE_NETWORK: u32 = 0x12;
const FILE_DEVICE_BUS_EXTENDER: u32 = 0x2a;
const FILE_DEVICE_CONTROLLER: u32 = 0x04;
/// DO_* flags.
const DO_BUFFERED_IO: u32 = 0x4;
const DO_DIRECT_IO: u32 = 0x10;
const DO_BUS_ENUMERATED_DEVICE: u32 = 0x1000;
const DO_POWER_PAGABLE: u32 = 0x2000;
/// FILE_DEVICE_SECURE_OPEN.
const SECURE_OPEN: u32 = 0x100;

/// What the I/O layer made that scenarios build on.
#[derive(Debug, Clone, Default)]
pub struct Io {
    /// The facts so far.
    pub facts: IoFacts,
    /// The CimFS driver object.
    pub cimfs: u64,
    /// The filter manager's driver object.
    pub fltmgr: u64,
    /// The NIC's device node.
    pub nic_devnode: u64,
    /// The system volume's device (`\Device\HarddiskVolume3`).
    pub volume: u64,
    /// The system volume's file-system stack: the filter manager's device and NTFS's.
    pub volume_devices: (u64, u64),
}

fn spec(driver: u64, name: Option<&str>, device_type: u32, extension: u64) -> DeviceSpec<'_> {
    DeviceSpec {
        driver,
        name,
        device_type,
        extension,
        flags: 0,
        characteristics: 0,
    }
}

/// The filter manager's device attached above `volume` (a file system's volume device), as it
/// attaches to every volume it filters; returns it.
pub(super) fn filter_above(sys: &mut System, io: &Io, volume: u64) -> Result<u64, SimError> {
    let flt = sys.device(&DeviceSpec {
        driver: io.fltmgr,
        name: None,
        device_type: 0x08,
        extension: 0x40,
        flags: 0x10,
        characteristics: 0,
    })?;
    sys.attach(flt, volume)?;
    Ok(flt)
}

/// Builds the I/O layer.
pub(super) fn io_base(sys: &mut System, user_procs: &[usize]) -> Result<Io, SimError> {
    let mut io = Io::default();
    let f = &mut io.facts;
    // The PnP manager's own driver: the root device.
    let pnpmgr = sys.driver("PnpManager", false, "nt", &[], None, None, &[])?;
    f.drivers.push(("\\Driver\\PnpManager".into(), pnpmgr));
    let root_pdo = sys.device(&spec(pnpmgr, Some("00000001"), FILE_DEVICE_CONTROLLER, 0))?;
    let root = sys.devnode(
        None,
        root_pdo,
        "HTREE\\ROOT\\0",
        "",
        "DeviceNodeStarted",
        "DeviceNodeEnumerateCompletion",
        0,
    )?;
    f.devnodes.push(("HTREE\\ROOT\\0".into(), root));
    // The PCI bus and the NIC it enumerates; the miniport's device on top.
    let pci = sys.driver(
        "pci",
        false,
        "pci",
        &[
            (mj::PNP, "PciDispatchPnpPower"),
            (mj::POWER, "PciDispatchPnpPower"),
            (mj::SYSTEM_CONTROL, "PciDispatchSystemControl"),
            (mj::DEVICE_CONTROL, "PciDispatchDeviceControl"),
        ],
        None,
        Some("PciAddDevice"),
        &[],
    )?;
    f.drivers.push(("\\Driver\\pci".into(), pci));
    let bus_pdo = sys.device(&DeviceSpec {
        flags: DO_BUS_ENUMERATED_DEVICE | DO_POWER_PAGABLE,
        ..spec(pnpmgr, Some("00000002"), FILE_DEVICE_CONTROLLER, 0)
    })?;
    let bus_fdo = sys.device(&spec(pci, None, FILE_DEVICE_BUS_EXTENDER, 0x60))?;
    sys.attach(bus_fdo, bus_pdo)?;
    let bus = sys.devnode(
        Some(root),
        bus_pdo,
        "ACPI\\PNP0A08\\0",
        "pci",
        "DeviceNodeStarted",
        "DeviceNodeEnumerateCompletion",
        0,
    )?;
    f.devnodes.push(("ACPI\\PNP0A08\\0".into(), bus));
    let miniport = sys.driver(
        "myeth1g",
        false,
        "myeth1g",
        &[
            (mj::CREATE, "ndis!ndisCreateIrpHandler"),
            (mj::CLOSE, "ndis!ndisCloseIrpHandler"),
            (mj::DEVICE_CONTROL, "ndis!ndisDeviceControlIrpHandler"),
            (
                mj::INTERNAL_DEVICE_CONTROL,
                "ndis!ndisDeviceControlIrpHandler",
            ),
            (mj::POWER, "ndis!ndisPowerDispatch"),
            (mj::SYSTEM_CONTROL, "ndis!ndisWMIDispatch"),
            (mj::PNP, "ndis!ndisPnPDispatch"),
        ],
        Some("ndis!ndisMUnloadEx"),
        Some("ndis!ndisPnPAddDevice"),
        &[],
    )?;
    f.drivers.push(("\\Driver\\myeth1g".into(), miniport));
    let nic_pdo = sys.device(&DeviceSpec {
        flags: DO_BUS_ENUMERATED_DEVICE | DO_POWER_PAGABLE,
        characteristics: SECURE_OPEN,
        ..spec(pci, Some("NTPNP_PCI0007"), FILE_DEVICE_BUS_EXTENDER, 0x80)
    })?;
    let nic_fdo = sys.device(&DeviceSpec {
        flags: DO_BUFFERED_IO | DO_POWER_PAGABLE,
        characteristics: SECURE_OPEN,
        ..spec(
            miniport,
            Some("{5E8A1C40-2B7D-4F3A-9C61-0D2B8E4F7A13}"),
            FILE_DEVICE_NETWORK,
            0x200,
        )
    })?;
    sys.attach(nic_fdo, nic_pdo)?;
    let nic_instance = "PCI\\VEN_8086&DEV_1521&SUBSYS_00011028&REV_01\\4&1B0B1A6&0&0008";
    io.nic_devnode = sys.devnode(
        Some(bus),
        nic_pdo,
        nic_instance,
        "myeth1g",
        "DeviceNodeStarted",
        "DeviceNodeEnumerateCompletion",
        0,
    )?;
    f.devnodes.push((nic_instance.into(), io.nic_devnode));
    f.nic = Some((nic_pdo, nic_fdo, io.nic_devnode));
    // The system volume: the volume manager's device, NTFS mounted on it, the filter
    // manager's device on NTFS's volume device.
    let volmgr = sys.driver(
        "volmgr",
        false,
        "volmgr",
        &[
            (mj::CREATE, "VmCreate"),
            (mj::CLOSE, "VmClose"),
            (mj::READ, "VmReadWrite"),
            (mj::WRITE, "VmReadWrite"),
            (mj::DEVICE_CONTROL, "VmDeviceControl"),
            (mj::PNP, "VmPnp"),
            (mj::POWER, "VmPower"),
        ],
        None,
        Some("VmAddDevice"),
        &[],
    )?;
    f.drivers.push(("\\Driver\\volmgr".into(), volmgr));
    let ntfs = sys.driver(
        "Ntfs",
        true,
        "Ntfs",
        &[
            (mj::CREATE, "NtfsFsdCreate"),
            (mj::CLOSE, "NtfsFsdClose"),
            (mj::READ, "NtfsFsdRead"),
            (mj::WRITE, "NtfsFsdWrite"),
            (mj::QUERY_INFORMATION, "NtfsFsdDispatchWait"),
            (mj::SET_INFORMATION, "NtfsFsdSetInformation"),
            (mj::DIRECTORY_CONTROL, "NtfsFsdDirectoryControl"),
            (mj::FILE_SYSTEM_CONTROL, "NtfsFsdFileSystemControl"),
            (mj::CLEANUP, "NtfsFsdCleanup"),
        ],
        None,
        None,
        &[
            ("FastIoCheckIfPossible", "NtfsFastIoCheckIfPossible"),
            ("FastIoRead", "NtfsCopyReadA"),
            ("FastIoWrite", "NtfsCopyWriteA"),
            ("FastIoQueryBasicInfo", "NtfsFastQueryBasicInfo"),
            ("FastIoQueryStandardInfo", "NtfsFastQueryStdInfo"),
        ],
    )?;
    f.drivers.push(("\\FileSystem\\Ntfs".into(), ntfs));
    let fltmgr_dispatch: Vec<(u8, &str)> = (0..crate::system::MAJOR_FUNCTIONS as u8)
        .map(|m| match m {
            mj::CREATE => (m, "FltpCreate"),
            mj::FILE_SYSTEM_CONTROL => (m, "FltpFsControl"),
            _ => (m, "FltpDispatch"),
        })
        .collect();
    let fltmgr = sys.driver(
        "FltMgr",
        true,
        "FLTMGR",
        &fltmgr_dispatch,
        None,
        None,
        &[
            ("FastIoCheckIfPossible", "FltpFastIoCheckIfPossible"),
            ("FastIoRead", "FltpFastIoRead"),
            ("FastIoWrite", "FltpFastIoWrite"),
            ("FastIoQueryBasicInfo", "FltpFastIoQueryBasicInfo"),
        ],
    )?;
    io.fltmgr = fltmgr;
    f.drivers.push(("\\FileSystem\\FltMgr".into(), fltmgr));
    for cdo in [
        "\\FileSystem\\Filters\\FltMgr",
        "\\FileSystem\\Filters\\FltMgrMsg",
    ] {
        let d = sys.device(&spec(fltmgr, Some(cdo), FILE_DEVICE_DISK_FILE_SYSTEM, 0))?;
        f.named_devices.push(NamedDevice {
            path: cdo.into(),
            device: d,
            driver: "\\FileSystem\\FltMgr".into(),
        });
    }
    let volume = sys.device(&DeviceSpec {
        flags: DO_DIRECT_IO | DO_POWER_PAGABLE,
        characteristics: SECURE_OPEN,
        ..spec(volmgr, Some("HarddiskVolume3"), FILE_DEVICE_DISK, 0x100)
    })?;
    io.volume = volume;
    f.named_devices.push(NamedDevice {
        path: "\\Device\\HarddiskVolume3".into(),
        device: volume,
        driver: "\\Driver\\volmgr".into(),
    });
    let vol_instance = "STORAGE\\Volume\\{8A3C2E51-7F0B-11EC-B3A5-806E6F6E6963}#0000000000100000";
    let vol_node = sys.devnode(
        Some(root),
        volume,
        vol_instance,
        "volume",
        "DeviceNodeStarted",
        "DeviceNodeEnumerateCompletion",
        0,
    )?;
    f.devnodes.push((vol_instance.into(), vol_node));
    let ntfs_vol = sys.device(&spec(ntfs, None, FILE_DEVICE_DISK_FILE_SYSTEM, 0x1a0))?;
    sys.vpb(volume, ntfs_vol, "System")?;
    let flt_vol = sys.device(&spec(fltmgr, None, FILE_DEVICE_DISK_FILE_SYSTEM, 0x40))?;
    sys.attach(flt_vol, ntfs_vol)?;
    f.volume_stack = vec![flt_vol, ntfs_vol];
    io.volume_devices = (flt_vol, ntfs_vol);
    let link_dir = sys.dir("\\GLOBAL??")?;
    sys.symlink(link_dir, "C:", "\\Device\\HarddiskVolume3")?;
    // CimFS: its driver and control device; its volumes come with the images mounted.
    let cimfs = sys.driver(
        "cimfs",
        false,
        "CimFS",
        &[
            (mj::CREATE, "CimFsDispatchCreate"),
            (mj::CLOSE, "CimFsDispatchClose"),
            (mj::READ, "CimFsDispatchRead"),
            (mj::QUERY_INFORMATION, "CimFsDispatchQueryInformation"),
            (mj::DIRECTORY_CONTROL, "CimFsDispatchDirectoryControl"),
            (mj::FILE_SYSTEM_CONTROL, "CimFsDispatchFsControl"),
            (mj::DEVICE_CONTROL, "CimFsDispatchDeviceControl"),
            (mj::CLEANUP, "CimFsDispatchCleanup"),
        ],
        Some("CimFsUnload"),
        None,
        &[],
    )?;
    io.cimfs = cimfs;
    f.drivers.push(("\\Driver\\cimfs".into(), cimfs));
    let cdo = sys.device(&spec(cimfs, Some("cimfs"), FILE_DEVICE_DISK_FILE_SYSTEM, 0))?;
    f.named_devices.push(NamedDevice {
        path: "\\Device\\cimfs".into(),
        device: cdo,
        driver: "\\Driver\\cimfs".into(),
    });
    // The filter manager: its frame, the report's filters, their volumes and instances.
    f.flt = crate::fltmgr::build(sys, fltmgr, ntfs, (flt_vol, ntfs_vol, volume))?;
    // Every user process holds a file object for its image on the system volume.
    for &p in user_procs {
        let name = format!("\\Windows\\System32\\{}", sys.processes[p].name);
        let fo = sys.file_object(volume, &name, 0x4_0042, (0, 0), 0)?;
        let handle = sys.add_handle(
            p,
            HandleRec {
                object: fo,
                access: 0x12_0089,
                attributes: 0,
            },
        );
        f.handles.push((sys.processes[p].pid, handle, fo, name));
    }
    Ok(io)
}

/// `count` more IRPs in flight: paging reads of one file on the system volume pending in NTFS
/// below the filter manager, on no thread's list (as IRPs a driver queued are).
pub(super) fn extra_irps(sys: &mut System, io: &mut Io, count: u32) -> Result<(), SimError> {
    if count == 0 {
        return Ok(());
    }
    let (flt, ntfs) = io.volume_devices;
    let fo = sys.file_object(
        io.volume,
        "\\pagefile.sys",
        0x4_0100,
        (0xffff_c000_1100_0170, 0),
        0,
    )?;
    for i in 0..u64::from(count) {
        let offset = i << 16;
        let irp = sys.irp(&IrpSpec {
            locations: vec![
                IrpLocation {
                    major: mj::READ,
                    control: 0xe1,
                    device: ntfs,
                    file: fo,
                    completion: Some(("FLTMGR!FltpPassThroughCompletion".into(), 0)),
                    args: [0x10000, 0, offset, 0],
                    ..IrpLocation::default()
                },
                IrpLocation {
                    major: mj::READ,
                    control: 0x01,
                    device: flt,
                    file: fo,
                    args: [0x10000, 0, offset, 0],
                    ..IrpLocation::default()
                },
            ],
            current: 1,
            flags: 0x43,
            pending_returned: true,
            status: (0x103, 0),
            original_file: fo,
            ..IrpSpec::default()
        })?;
        io.facts.irps.push(PlantedIrp {
            irp,
            thread: 0,
            stack: vec![
                (
                    mj::READ,
                    ntfs,
                    "\\FileSystem\\Ntfs".into(),
                    Some("FLTMGR!FltpPassThroughCompletion".into()),
                ),
                (mj::READ, flt, "\\FileSystem\\FltMgr".into(), None),
            ],
            current: 1,
            file: fo,
        });
    }
    Ok(())
}
