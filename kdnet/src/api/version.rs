//! DBGKD_GET_VERSION64: what GetVersion returns (40 bytes at offset 0x10 of the reply).

use serde::Serialize;

/// Flag: multiprocessor kernel.
pub const VERS_FLAG_MP: u16 = 0x01;
/// Flag: KdDebuggerDataBlock is present.
pub const VERS_FLAG_DATA: u16 = 0x02;
/// Flag: 64-bit pointers.
pub const VERS_FLAG_PTR64: u16 = 0x04;
/// `MajorVersion` high byte for a Windows NT kernel.
pub const MAJOR_NT: u8 = 0;
/// `MajorVersion` high byte for the boot debugger.
pub const MAJOR_NTBD: u8 = 4;
/// x64 machine type.
pub const MACHINE_AMD64: u16 = 0x8664;

/// The version block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct GetVersion64 {
    /// High byte: DBGKD_MAJOR type; low byte 0x0F free build, 0x0C checked.
    pub major_version: u16,
    /// The build number.
    pub minor_version: u16,
    /// KD protocol version (6).
    pub protocol_version: u8,
    /// Secondary version (2 = current AMD64 context).
    pub kd_secondary_version: u8,
    /// DBGKD_VERS_FLAG_*.
    pub flags: u16,
    /// IMAGE_FILE_MACHINE_*.
    pub machine_type: u16,
    /// Highest packet type + 1.
    pub max_packet_type: u8,
    /// Number of state-change kinds.
    pub max_state_change: u8,
    /// Number of manipulate APIs.
    pub max_manipulate: u8,
    /// 0 = real machine.
    pub simulation: u8,
    /// Kernel base address.
    pub kern_base: u64,
    /// Address of PsLoadedModuleList.
    pub ps_loaded_module_list: u64,
    /// Address of the list whose first entry is KDDEBUGGER_DATA64.
    pub debugger_data_list: u64,
}

impl GetVersion64 {
    /// Decodes 40 bytes (missing bytes read as zero).
    pub fn decode(b: &[u8]) -> GetVersion64 {
        let mut a = [0u8; 40];
        let n = b.len().min(40);
        a[..n].copy_from_slice(&b[..n]);
        let u16_at = |o: usize| u16::from_le_bytes([a[o], a[o + 1]]);
        let u64_at = |o: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&a[o..o + 8]);
            u64::from_le_bytes(x)
        };
        GetVersion64 {
            major_version: u16_at(0),
            minor_version: u16_at(2),
            protocol_version: a[4],
            kd_secondary_version: a[5],
            flags: u16_at(6),
            machine_type: u16_at(8),
            max_packet_type: a[10],
            max_state_change: a[11],
            max_manipulate: a[12],
            simulation: a[13],
            kern_base: u64_at(16),
            ps_loaded_module_list: u64_at(24),
            debugger_data_list: u64_at(32),
        }
    }

    /// Encodes the 40 bytes.
    pub fn encode(&self) -> [u8; 40] {
        let mut a = [0u8; 40];
        a[0..2].copy_from_slice(&self.major_version.to_le_bytes());
        a[2..4].copy_from_slice(&self.minor_version.to_le_bytes());
        a[4] = self.protocol_version;
        a[5] = self.kd_secondary_version;
        a[6..8].copy_from_slice(&self.flags.to_le_bytes());
        a[8..10].copy_from_slice(&self.machine_type.to_le_bytes());
        a[10] = self.max_packet_type;
        a[11] = self.max_state_change;
        a[12] = self.max_manipulate;
        a[13] = self.simulation;
        a[16..24].copy_from_slice(&self.kern_base.to_le_bytes());
        a[24..32].copy_from_slice(&self.ps_loaded_module_list.to_le_bytes());
        a[32..40].copy_from_slice(&self.debugger_data_list.to_le_bytes());
        a
    }

    /// The build number (`MinorVersion`).
    pub fn build(&self) -> u16 {
        self.minor_version
    }

    /// The DBGKD_MAJOR type (0 NT, 4 boot debugger, …).
    pub fn major_type(&self) -> u8 {
        (self.major_version >> 8) as u8
    }

    /// Whether the target is 64-bit (taken from the machine type, as the boot debugger does not
    /// set the PTR64 flag).
    pub fn is_64bit(&self) -> bool {
        matches!(self.machine_type, MACHINE_AMD64 | 0xAA64) || self.flags & VERS_FLAG_PTR64 != 0
    }

    /// A version block as a Windows kernel of `build` reports it.
    pub fn windows_kernel(
        build: u16,
        kern_base: u64,
        module_list: u64,
        debugger_data_list: u64,
    ) -> GetVersion64 {
        GetVersion64 {
            major_version: u16::from(MAJOR_NT) << 8 | 0x0F,
            minor_version: build,
            protocol_version: 6,
            kd_secondary_version: 2,
            flags: VERS_FLAG_MP | VERS_FLAG_DATA | VERS_FLAG_PTR64,
            machine_type: MACHINE_AMD64,
            max_packet_type: 12,
            max_state_change: 3,
            max_manipulate: 0x31,
            simulation: 0,
            kern_base,
            ps_loaded_module_list: module_list,
            debugger_data_list,
        }
    }
}
