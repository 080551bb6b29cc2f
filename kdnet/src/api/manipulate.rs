//! DBGKD_MANIPULATE_STATE64: the debugger's requests and the target's replies.
//!
//! A 56-byte header (ApiNumber, ProcessorLevel, Processor, ReturnStatus, a 40-byte union) and
//! data after it. The target replies by copying the request's header and filling in the status
//! and the result fields, so one type serves both directions: the raw header is kept as it came
//! and fields are read and written at their offsets.

use std::fmt;

use serde::Serialize;

use super::ApiError;
use super::status;
use super::version::GetVersion64;

/// Bytes of the manipulate header.
pub const HEADER_LEN: usize = 0x38;
/// Largest memory transfer a target serves in one request (4000 − 56).
pub const MAX_TRANSFER: u32 = 3944;

macro_rules! apis {
    ($($name:ident = $value:expr, $text:expr;)*) => {
        /// Every manipulate ApiNumber, by its name in the debugger headers.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Api {
            $(
                #[doc = $text]
                $name,
            )*
        }

        impl Api {
            /// All of them.
            pub const ALL: &'static [Api] = &[$(Api::$name),*];

            /// The wire value.
            pub fn number(self) -> u32 {
                match self { $(Api::$name => $value,)* }
            }

            /// The name for a wire value.
            pub fn from_number(v: u32) -> Option<Api> {
                match v { $($value => Some(Api::$name),)* _ => None }
            }

            /// The header name, e.g. `DbgKdReadVirtualMemoryApi`.
            pub fn name(self) -> &'static str {
                match self { $(Api::$name => $text,)* }
            }
        }
    };
}

apis! {
    ReadVirtualMemory = 0x3130, "DbgKdReadVirtualMemoryApi";
    WriteVirtualMemory = 0x3131, "DbgKdWriteVirtualMemoryApi";
    GetContext = 0x3132, "DbgKdGetContextApi";
    SetContext = 0x3133, "DbgKdSetContextApi";
    WriteBreakPoint = 0x3134, "DbgKdWriteBreakPointApi";
    RestoreBreakPoint = 0x3135, "DbgKdRestoreBreakPointApi";
    Continue = 0x3136, "DbgKdContinueApi";
    ReadControlSpace = 0x3137, "DbgKdReadControlSpaceApi";
    WriteControlSpace = 0x3138, "DbgKdWriteControlSpaceApi";
    ReadIoSpace = 0x3139, "DbgKdReadIoSpaceApi";
    WriteIoSpace = 0x313A, "DbgKdWriteIoSpaceApi";
    Reboot = 0x313B, "DbgKdRebootApi";
    Continue2 = 0x313C, "DbgKdContinueApi2";
    ReadPhysicalMemory = 0x313D, "DbgKdReadPhysicalMemoryApi";
    WritePhysicalMemory = 0x313E, "DbgKdWritePhysicalMemoryApi";
    QuerySpecialCalls = 0x313F, "DbgKdQuerySpecialCallsApi";
    SetSpecialCall = 0x3140, "DbgKdSetSpecialCallApi";
    ClearSpecialCalls = 0x3141, "DbgKdClearSpecialCallsApi";
    SetInternalBreakPoint = 0x3142, "DbgKdSetInternalBreakPointApi";
    GetInternalBreakPoint = 0x3143, "DbgKdGetInternalBreakPointApi";
    ReadIoSpaceExtended = 0x3144, "DbgKdReadIoSpaceExtendedApi";
    WriteIoSpaceExtended = 0x3145, "DbgKdWriteIoSpaceExtendedApi";
    GetVersion = 0x3146, "DbgKdGetVersionApi";
    WriteBreakPointEx = 0x3147, "DbgKdWriteBreakPointExApi";
    RestoreBreakPointEx = 0x3148, "DbgKdRestoreBreakPointExApi";
    CauseBugCheck = 0x3149, "DbgKdCauseBugCheckApi";
    SwitchProcessor = 0x3150, "DbgKdSwitchProcessor";
    PageIn = 0x3151, "DbgKdPageInApi";
    ReadMachineSpecificRegister = 0x3152, "DbgKdReadMachineSpecificRegister";
    WriteMachineSpecificRegister = 0x3153, "DbgKdWriteMachineSpecificRegister";
    OldVlm1 = 0x3154, "OldVlm1";
    OldVlm2 = 0x3155, "OldVlm2";
    SearchMemory = 0x3156, "DbgKdSearchMemoryApi";
    GetBusData = 0x3157, "DbgKdGetBusDataApi";
    SetBusData = 0x3158, "DbgKdSetBusDataApi";
    CheckLowMemory = 0x3159, "DbgKdCheckLowMemoryApi";
    ClearAllInternalBreakpoints = 0x315A, "DbgKdClearAllInternalBreakpointsApi";
    FillMemory = 0x315B, "DbgKdFillMemoryApi";
    QueryMemory = 0x315C, "DbgKdQueryMemoryApi";
    SwitchPartition = 0x315D, "DbgKdSwitchPartition";
    WriteCustomBreakpoint = 0x315E, "DbgKdWriteCustomBreakpointApi";
    GetContextEx = 0x315F, "DbgKdGetContextExApi";
    SetContextEx = 0x3160, "DbgKdSetContextExApi";
    CustomBreakpointOrMaximum = 0x3161, "DbgKdMaximumManipulate";
    ReadPhysicalMemoryLong = 0x3162, "DbgKdReadPhysicalMemoryLong";
}

impl Api {
    /// Whether the target sends a reply packet for this API (it resumes, reboots or switches
    /// processors for the others).
    pub fn has_reply(self) -> bool {
        !matches!(
            self,
            Api::Continue
                | Api::Continue2
                | Api::Reboot
                | Api::CauseBugCheck
                | Api::SwitchProcessor
                | Api::ClearAllInternalBreakpoints
                | Api::SetSpecialCall
                | Api::ClearSpecialCalls
                | Api::SetInternalBreakPoint
        )
    }
}

impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The union of a manipulate packet, decoded for its API. Offsets are from the packet start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ApiBody {
    /// Read/write virtual, physical or control-space memory.
    Memory {
        /// TargetBaseAddress (0x10); for control space, the index.
        address: u64,
        /// TransferCount (0x18).
        transfer_count: u32,
        /// ActualBytesRead/Written (0x1C); in a physical read request, the caching flag.
        actual: u32,
    },
    /// GetContext: nothing in the union.
    GetContext,
    /// SetContext.
    SetContext {
        /// ContextFlags (0x10).
        context_flags: u32,
    },
    /// Get/SetContextEx.
    ContextEx {
        /// Offset into CONTEXT (0x10).
        offset: u32,
        /// Bytes asked for (0x14).
        byte_count: u32,
        /// Bytes copied (0x18).
        bytes_copied: u32,
    },
    /// WriteBreakPoint.
    WriteBreakPoint {
        /// Address (0x10).
        address: u64,
        /// Handle (0x18), filled by the target.
        handle: u32,
    },
    /// RestoreBreakPoint.
    RestoreBreakPoint {
        /// Handle (0x10).
        handle: u32,
    },
    /// Continue.
    Continue {
        /// ContinueStatus (0x10).
        status: u32,
    },
    /// Continue2 (AMD64 control set).
    Continue2 {
        /// ContinueStatus (0x10).
        status: u32,
        /// TraceFlag (0x14): non-zero single-steps.
        trace_flag: u32,
        /// Dr7 (0x18).
        dr7: u64,
        /// CurrentSymbolStart (0x20).
        symbol_start: u64,
        /// CurrentSymbolEnd (0x28).
        symbol_end: u64,
    },
    /// GetVersion.
    GetVersion(GetVersion64),
    /// Read/WriteMachineSpecificRegister.
    Msr {
        /// MSR number (0x10).
        msr: u32,
        /// Value (0x14 low, 0x18 high).
        value: u64,
    },
    /// SearchMemory.
    Search {
        /// SearchAddress / FoundAddress (0x10).
        address: u64,
        /// SearchLength (0x18).
        length: u64,
        /// PatternLength (0x20).
        pattern_length: u32,
    },
    /// QueryMemory.
    Query {
        /// Address (0x10).
        address: u64,
        /// AddressSpace (0x20).
        address_space: u32,
        /// Flags (0x24).
        flags: u32,
    },
    /// Read/WriteIoSpace.
    IoSpace {
        /// IoAddress (0x10).
        address: u64,
        /// DataSize (0x18).
        size: u32,
        /// DataValue (0x1C).
        value: u32,
    },
    /// CauseBugCheck.
    BugCheck {
        /// BugCheckCode (0x10).
        code: u32,
    },
    /// Anything else: the union is not interpreted.
    Other,
}

/// A manipulate packet.
#[derive(Clone, PartialEq, Eq)]
pub struct Manipulate {
    header: [u8; HEADER_LEN],
    /// The data after the header.
    pub data: Vec<u8>,
}

impl fmt::Debug for Manipulate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Api::from_number(self.api_number()).map_or("unknown", Api::name);
        write!(
            f,
            "Manipulate {{ {name} ({:#x}), cpu {}, status {:#x}, {:?}, {} data bytes }}",
            self.api_number(),
            self.processor(),
            self.return_status(),
            self.body(),
            self.data.len()
        )
    }
}

impl Manipulate {
    /// A request for `api` to processor `processor` with an empty union.
    pub fn new(api: Api, processor: u16) -> Manipulate {
        let mut m = Manipulate {
            header: [0; HEADER_LEN],
            data: Vec::new(),
        };
        m.set_u32(0, api.number());
        m.set_u16(6, processor);
        m.set_return_status(status::PENDING);
        m
    }

    /// Parses a manipulate packet's data.
    pub fn decode(bytes: &[u8]) -> Result<Manipulate, ApiError> {
        let header: [u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(ApiError::TooShort {
                what: "DBGKD_MANIPULATE_STATE64",
                need: HEADER_LEN,
                have: bytes.len(),
            })?;
        Ok(Manipulate {
            header,
            data: bytes[HEADER_LEN..].to_vec(),
        })
    }

    /// The packet data: header then data.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER_LEN + self.data.len());
        v.extend_from_slice(&self.header);
        v.extend_from_slice(&self.data);
        v
    }

    /// The raw 56-byte header.
    pub fn header(&self) -> &[u8; HEADER_LEN] {
        &self.header
    }

    /// A reply: the request's header copied, no data (as Windows does).
    pub fn reply(&self) -> Manipulate {
        Manipulate {
            header: self.header,
            data: Vec::new(),
        }
    }

    /// ApiNumber.
    pub fn api_number(&self) -> u32 {
        self.u32(0)
    }
    /// The API, when known.
    pub fn api(&self) -> Option<Api> {
        Api::from_number(self.api_number())
    }
    /// ProcessorLevel.
    pub fn processor_level(&self) -> u16 {
        self.u16(4)
    }
    /// Processor.
    pub fn processor(&self) -> u16 {
        self.u16(6)
    }
    /// ReturnStatus (NTSTATUS).
    pub fn return_status(&self) -> u32 {
        self.u32(8)
    }
    /// Sets ReturnStatus.
    pub fn set_return_status(&mut self, s: u32) {
        self.set_u32(8, s);
    }

    /// A u16 of the header at `off` (0 past the end).
    pub fn u16(&self, off: usize) -> u16 {
        self.header
            .get(off..off + 2)
            .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]))
    }
    /// A u32 of the header at `off`.
    pub fn u32(&self, off: usize) -> u32 {
        self.header
            .get(off..off + 4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// A u64 of the header at `off`.
    pub fn u64(&self, off: usize) -> u64 {
        self.header.get(off..off + 8).map_or(0, |b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    }
    /// Writes a u16 into the header (ignored past the end).
    pub fn set_u16(&mut self, off: usize, v: u16) {
        if let Some(b) = self.header.get_mut(off..off + 2) {
            b.copy_from_slice(&v.to_le_bytes());
        }
    }
    /// Writes a u32 into the header.
    pub fn set_u32(&mut self, off: usize, v: u32) {
        if let Some(b) = self.header.get_mut(off..off + 4) {
            b.copy_from_slice(&v.to_le_bytes());
        }
    }
    /// Writes a u64 into the header.
    pub fn set_u64(&mut self, off: usize, v: u64) {
        if let Some(b) = self.header.get_mut(off..off + 8) {
            b.copy_from_slice(&v.to_le_bytes());
        }
    }

    /// The union, decoded for this API.
    pub fn body(&self) -> ApiBody {
        use Api::*;
        match self.api() {
            Some(
                ReadVirtualMemory | WriteVirtualMemory | ReadPhysicalMemory | WritePhysicalMemory
                | ReadControlSpace | WriteControlSpace,
            ) => ApiBody::Memory {
                address: self.u64(0x10),
                transfer_count: self.u32(0x18),
                actual: self.u32(0x1C),
            },
            Some(GetContext) => ApiBody::GetContext,
            Some(SetContext) => ApiBody::SetContext {
                context_flags: self.u32(0x10),
            },
            Some(GetContextEx | SetContextEx) => ApiBody::ContextEx {
                offset: self.u32(0x10),
                byte_count: self.u32(0x14),
                bytes_copied: self.u32(0x18),
            },
            Some(WriteBreakPoint) => ApiBody::WriteBreakPoint {
                address: self.u64(0x10),
                handle: self.u32(0x18),
            },
            Some(RestoreBreakPoint) => ApiBody::RestoreBreakPoint {
                handle: self.u32(0x10),
            },
            Some(Continue) => ApiBody::Continue {
                status: self.u32(0x10),
            },
            Some(Continue2) => ApiBody::Continue2 {
                status: self.u32(0x10),
                trace_flag: self.u32(0x14),
                dr7: self.u64(0x18),
                symbol_start: self.u64(0x20),
                symbol_end: self.u64(0x28),
            },
            Some(GetVersion) => ApiBody::GetVersion(GetVersion64::decode(&self.header[0x10..0x38])),
            Some(ReadMachineSpecificRegister | WriteMachineSpecificRegister) => ApiBody::Msr {
                msr: self.u32(0x10),
                value: u64::from(self.u32(0x14)) | (u64::from(self.u32(0x18)) << 32),
            },
            Some(SearchMemory) => ApiBody::Search {
                address: self.u64(0x10),
                length: self.u64(0x18),
                pattern_length: self.u32(0x20),
            },
            Some(QueryMemory) => ApiBody::Query {
                address: self.u64(0x10),
                address_space: self.u32(0x20),
                flags: self.u32(0x24),
            },
            Some(ReadIoSpace | WriteIoSpace) => ApiBody::IoSpace {
                address: self.u64(0x10),
                size: self.u32(0x18),
                value: self.u32(0x1C),
            },
            Some(CauseBugCheck) => ApiBody::BugCheck {
                code: self.u32(0x10),
            },
            _ => ApiBody::Other,
        }
    }

    /// Whether `self` (a reply) answers `request`: same API and processor, and for memory,
    /// context-ex and MSR requests the same address, count or register.
    pub fn answers(&self, request: &Manipulate) -> bool {
        if self.api_number() != request.api_number() || self.processor() != request.processor() {
            return false;
        }
        match request.body() {
            ApiBody::Memory { .. } => self.header[0x10..0x1C] == request.header[0x10..0x1C],
            ApiBody::ContextEx { .. } => self.header[0x10..0x18] == request.header[0x10..0x18],
            ApiBody::Msr { .. } | ApiBody::RestoreBreakPoint { .. } => {
                self.u32(0x10) == request.u32(0x10)
            }
            ApiBody::WriteBreakPoint { .. } | ApiBody::Query { .. } => {
                self.u64(0x10) == request.u64(0x10)
            }
            _ => true,
        }
    }

    // ---- request builders ----

    fn memory(api: Api, processor: u16, address: u64, count: u32, data: Vec<u8>) -> Manipulate {
        let mut m = Manipulate::new(api, processor);
        m.set_u64(0x10, address);
        m.set_u32(0x18, count);
        m.data = data;
        m
    }

    /// ReadVirtualMemory of `count` bytes at `address`.
    pub fn read_virtual(address: u64, count: u32) -> Manipulate {
        Self::memory(Api::ReadVirtualMemory, 0, address, count, Vec::new())
    }
    /// WriteVirtualMemory.
    pub fn write_virtual(address: u64, data: Vec<u8>) -> Manipulate {
        let n = data.len() as u32;
        Self::memory(Api::WriteVirtualMemory, 0, address, n, data)
    }
    /// ReadPhysicalMemory (default caching).
    pub fn read_physical(address: u64, count: u32) -> Manipulate {
        Self::memory(Api::ReadPhysicalMemory, 0, address, count, Vec::new())
    }
    /// WritePhysicalMemory.
    pub fn write_physical(address: u64, data: Vec<u8>) -> Manipulate {
        let n = data.len() as u32;
        Self::memory(Api::WritePhysicalMemory, 0, address, n, data)
    }
    /// ReadControlSpace: `index` 0 KPCR, 1 KPRCB, 2 special registers, 3 current thread.
    pub fn read_control_space(processor: u16, index: u64, count: u32) -> Manipulate {
        Self::memory(Api::ReadControlSpace, processor, index, count, Vec::new())
    }
    /// WriteControlSpace.
    pub fn write_control_space(processor: u16, index: u64, data: Vec<u8>) -> Manipulate {
        let n = data.len() as u32;
        Self::memory(Api::WriteControlSpace, processor, index, n, data)
    }
    /// GetContext.
    pub fn get_context(processor: u16) -> Manipulate {
        Manipulate::new(Api::GetContext, processor)
    }
    /// GetContextEx for `count` bytes from `offset`.
    pub fn get_context_ex(processor: u16, offset: u32, count: u32) -> Manipulate {
        let mut m = Manipulate::new(Api::GetContextEx, processor);
        m.set_u32(0x10, offset);
        m.set_u32(0x14, count);
        m
    }
    /// SetContext with a full CONTEXT.
    pub fn set_context(processor: u16, context: Vec<u8>, flags: u32) -> Manipulate {
        let mut m = Manipulate::new(Api::SetContext, processor);
        m.set_u32(0x10, flags);
        m.data = context;
        m
    }
    /// SetContextEx.
    pub fn set_context_ex(processor: u16, offset: u32, data: Vec<u8>) -> Manipulate {
        let mut m = Manipulate::new(Api::SetContextEx, processor);
        m.set_u32(0x10, offset);
        m.set_u32(0x14, data.len() as u32);
        m.data = data;
        m
    }
    /// Continue.
    pub fn continue1(status: u32) -> Manipulate {
        let mut m = Manipulate::new(Api::Continue, 0);
        m.set_return_status(status);
        m.set_u32(0x10, status);
        m
    }
    /// Continue2: `trace` single-steps; `dr7` goes to every processor.
    pub fn continue2(status: u32, trace: bool, dr7: u64) -> Manipulate {
        let mut m = Manipulate::new(Api::Continue2, 0);
        m.set_return_status(status);
        m.set_u32(0x10, status);
        m.set_u32(0x14, u32::from(trace));
        m.set_u64(0x18, dr7);
        // CurrentSymbolStart = 1: "no change", as WinDbg sends.
        m.set_u64(0x20, 1);
        m
    }
    /// GetVersion.
    pub fn get_version() -> Manipulate {
        let mut m = Manipulate::new(Api::GetVersion, 0);
        m.set_u16(4, 0xffff);
        m.set_u16(6, 0xffff);
        m
    }
    /// WriteBreakPoint at `address`.
    pub fn write_breakpoint(address: u64) -> Manipulate {
        let mut m = Manipulate::new(Api::WriteBreakPoint, 0);
        m.set_u64(0x10, address);
        m
    }
    /// RestoreBreakPoint of `handle`.
    pub fn restore_breakpoint(handle: u32) -> Manipulate {
        let mut m = Manipulate::new(Api::RestoreBreakPoint, 0);
        m.set_u32(0x10, handle);
        m
    }
    /// ReadMachineSpecificRegister.
    pub fn read_msr(processor: u16, msr: u32) -> Manipulate {
        let mut m = Manipulate::new(Api::ReadMachineSpecificRegister, processor);
        m.set_u32(0x10, msr);
        m
    }
    /// WriteMachineSpecificRegister.
    pub fn write_msr(processor: u16, msr: u32, value: u64) -> Manipulate {
        let mut m = Manipulate::new(Api::WriteMachineSpecificRegister, processor);
        m.set_u32(0x10, msr);
        m.set_u32(0x14, value as u32);
        m.set_u32(0x18, (value >> 32) as u32);
        m
    }
    /// SearchMemory for `pattern` in `length` bytes from `address`.
    pub fn search_memory(address: u64, length: u64, pattern: Vec<u8>) -> Manipulate {
        let mut m = Manipulate::new(Api::SearchMemory, 0);
        m.set_u64(0x10, address);
        m.set_u64(0x18, length);
        m.set_u32(0x20, pattern.len() as u32);
        m.data = pattern;
        m
    }
    /// QueryMemory of a virtual address.
    pub fn query_memory(address: u64) -> Manipulate {
        let mut m = Manipulate::new(Api::QueryMemory, 0);
        m.set_u64(0x10, address);
        m
    }
    /// Reboot.
    pub fn reboot() -> Manipulate {
        Manipulate::new(Api::Reboot, 0)
    }
    /// CauseBugCheck.
    pub fn cause_bugcheck(code: u32) -> Manipulate {
        let mut m = Manipulate::new(Api::CauseBugCheck, 0);
        m.set_u32(0x10, code);
        m
    }

    /// The version block of a GetVersion reply.
    pub fn version(&self) -> GetVersion64 {
        GetVersion64::decode(&self.header[0x10..0x38])
    }

    /// Writes a version block (target side).
    pub fn set_version(&mut self, v: &GetVersion64) {
        self.header[0x10..0x38].copy_from_slice(&v.encode());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_numbers_and_names() {
        assert_eq!(Api::ReadVirtualMemory.number(), 0x3130);
        assert_eq!(Api::from_number(0x315F), Some(Api::GetContextEx));
        assert_eq!(Api::from_number(0x314A), None);
        assert_eq!(Api::GetVersion.name(), "DbgKdGetVersionApi");
        assert!(!Api::Continue2.has_reply());
        assert!(Api::ReadControlSpace.has_reply());
        for a in Api::ALL {
            assert_eq!(Api::from_number(a.number()), Some(*a));
        }
    }

    #[test]
    fn read_request_and_reply() {
        let req = Manipulate::read_virtual(0xfffff800_12345678, 0x800);
        let b = req.encode();
        assert_eq!(b.len(), HEADER_LEN);
        assert_eq!(&b[..4], &0x3130u32.to_le_bytes());
        assert_eq!(&b[8..12], &0x103u32.to_le_bytes());
        assert_eq!(&b[0x10..0x18], &0xfffff800_12345678u64.to_le_bytes());
        let mut reply = req.reply();
        reply.set_return_status(0);
        reply.set_u32(0x1C, 3);
        reply.data = vec![1, 2, 3];
        let back = Manipulate::decode(&reply.encode()).unwrap();
        assert!(back.answers(&req));
        assert_eq!(
            back.body(),
            ApiBody::Memory {
                address: 0xfffff800_12345678,
                transfer_count: 0x800,
                actual: 3
            }
        );
        assert!(!back.answers(&Manipulate::read_virtual(0xfffff800_12345679, 0x800)));
        assert!(Manipulate::decode(&b[..55]).is_err());
    }
}
