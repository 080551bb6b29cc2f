//! NTSTATUS and continue values used on the wire.

/// STATUS_SUCCESS.
pub const SUCCESS: u32 = 0x0000_0000;
/// STATUS_PENDING: WinDbg puts it in ReturnStatus of its requests.
pub const PENDING: u32 = 0x0000_0103;
/// STATUS_UNSUCCESSFUL: the generic target failure.
pub const UNSUCCESSFUL: u32 = 0xC000_0001;
/// STATUS_INVALID_PARAMETER.
pub const INVALID_PARAMETER: u32 = 0xC000_000D;
/// STATUS_NO_SUCH_DEVICE.
pub const NO_SUCH_DEVICE: u32 = 0xC000_000E;
/// STATUS_NO_SUCH_FILE: the debugger's answer to a file request it does not map.
pub const NO_SUCH_FILE: u32 = 0xC000_000F;
/// STATUS_ACCESS_DENIED.
pub const ACCESS_DENIED: u32 = 0xC000_0022;
/// STATUS_NOT_FOUND (a search that found nothing).
pub const NOT_FOUND: u32 = 0xC000_0225;
/// STATUS_DATATYPE_MISALIGNMENT.
pub const DATATYPE_MISALIGNMENT: u32 = 0x8000_0002;
/// STATUS_BREAKPOINT.
pub const BREAKPOINT: u32 = 0x8000_0003;
/// STATUS_SINGLE_STEP.
pub const SINGLE_STEP: u32 = 0x8000_0004;
/// STATUS_WAKE_SYSTEM_DEBUGGER.
pub const WAKE_SYSTEM_DEBUGGER: u32 = 0x8000_0007;
/// DBG_EXCEPTION_HANDLED.
pub const DBG_EXCEPTION_HANDLED: u32 = 0x0001_0001;
/// DBG_CONTINUE.
pub const DBG_CONTINUE: u32 = 0x0001_0002;
/// DBG_EXCEPTION_NOT_HANDLED.
pub const DBG_EXCEPTION_NOT_HANDLED: u32 = 0x8001_0001;

/// Whether an NTSTATUS is a success or informational code.
pub fn is_success(s: u32) -> bool {
    s < 0x8000_0000
}

/// The name of a status value, when it is one of these.
pub fn name(s: u32) -> Option<&'static str> {
    Some(match s {
        SUCCESS => "STATUS_SUCCESS",
        PENDING => "STATUS_PENDING",
        UNSUCCESSFUL => "STATUS_UNSUCCESSFUL",
        INVALID_PARAMETER => "STATUS_INVALID_PARAMETER",
        NO_SUCH_DEVICE => "STATUS_NO_SUCH_DEVICE",
        NO_SUCH_FILE => "STATUS_NO_SUCH_FILE",
        ACCESS_DENIED => "STATUS_ACCESS_DENIED",
        NOT_FOUND => "STATUS_NOT_FOUND",
        DATATYPE_MISALIGNMENT => "STATUS_DATATYPE_MISALIGNMENT",
        BREAKPOINT => "STATUS_BREAKPOINT",
        SINGLE_STEP => "STATUS_SINGLE_STEP",
        WAKE_SYSTEM_DEBUGGER => "STATUS_WAKE_SYSTEM_DEBUGGER",
        DBG_EXCEPTION_HANDLED => "DBG_EXCEPTION_HANDLED",
        DBG_CONTINUE => "DBG_CONTINUE",
        DBG_EXCEPTION_NOT_HANDLED => "DBG_EXCEPTION_NOT_HANDLED",
        _ => return None,
    })
}
