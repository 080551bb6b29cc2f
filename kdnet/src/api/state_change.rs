//! DBGKD_WAIT_STATE_CHANGE64 for x64: the target reports that it stopped (exception, module
//! load/unload, command string). 0xF0 bytes, then extra data.

use kdnet_arch::le::Le;
use serde::Serialize;

use super::ApiError;

/// Bytes of the fixed part.
pub const STATE_CHANGE_LEN: usize = 0xF0;
/// NewState: exception.
pub const STATE_EXCEPTION: u32 = 0x3030;
/// NewState: load (or unload) symbols.
pub const STATE_LOAD_SYMBOLS: u32 = 0x3031;
/// NewState: command string.
pub const STATE_COMMAND_STRING: u32 = 0x3032;
/// Added to NewState when the report comes from an alternate source.
pub const STATE_ALTERNATE: u32 = 0x10000;

/// Name of a NewState value.
pub fn state_name(s: u32) -> &'static str {
    match s & !STATE_ALTERNATE {
        STATE_EXCEPTION => "DbgKdExceptionStateChange",
        STATE_LOAD_SYMBOLS => "DbgKdLoadSymbolsStateChange",
        STATE_COMMAND_STRING => "DbgKdCommandStringStateChange",
        _ => "unknown",
    }
}

/// AMD64_DBGKD_CONTROL_REPORT at 0xC0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ControlReport {
    /// Dr6.
    pub dr6: u64,
    /// Dr7.
    pub dr7: u64,
    /// EFlags.
    pub eflags: u32,
    /// Valid bytes in `instruction_stream`.
    pub instruction_count: u16,
    /// 1 = segments included, 2 = CS is the standard kernel CS.
    pub report_flags: u16,
    /// Bytes at the program counter (breakpoints removed).
    pub instruction_stream: [u8; 16],
    /// CS.
    pub seg_cs: u16,
    /// DS.
    pub seg_ds: u16,
    /// ES.
    pub seg_es: u16,
    /// FS.
    pub seg_fs: u16,
}

/// DBGKM_EXCEPTION64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exception64 {
    /// ExceptionCode.
    pub code: u32,
    /// ExceptionFlags.
    pub flags: u32,
    /// ExceptionRecord (chained record address).
    pub record: u64,
    /// ExceptionAddress.
    pub address: u64,
    /// ExceptionInformation[0..NumberParameters] (at most 15).
    pub parameters: Vec<u64>,
    /// FirstChance.
    pub first_chance: bool,
}

/// DBGKD_LOAD_SYMBOLS64 and the path that follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoadSymbols64 {
    /// BaseOfDll.
    pub base: u64,
    /// ProcessId.
    pub process_id: u64,
    /// CheckSum.
    pub checksum: u32,
    /// SizeOfImage.
    pub size: u32,
    /// UnloadSymbols.
    pub unload: bool,
    /// The image path.
    pub path: String,
}

/// What the state change reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StateEvent {
    /// An exception (breakpoint, bugcheck break, single step …).
    Exception(Exception64),
    /// A module was loaded or unloaded.
    LoadSymbols(LoadSymbols64),
    /// A command string (name and command).
    CommandString {
        /// Name.
        name: String,
        /// Command.
        command: String,
    },
    /// Unknown NewState; the union is kept raw.
    Other,
}

/// DBGKD_WAIT_STATE_CHANGE64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateChange64 {
    /// NewState.
    pub new_state: u32,
    /// ProcessorLevel.
    pub processor_level: u16,
    /// The reporting processor.
    pub processor: u16,
    /// NumberProcessors.
    pub number_processors: u32,
    /// KTHREAD of the current thread.
    pub thread: u64,
    /// ProgramCounter.
    pub program_counter: u64,
    /// The union, decoded.
    pub event: StateEvent,
    /// The control report.
    pub control: ControlReport,
}

/// A NUL-terminated ANSI string from `b` (lossy, bounded by the slice).
pub(crate) fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

impl StateChange64 {
    /// Decodes a state-change packet's data.
    pub fn decode(b: &[u8]) -> Result<StateChange64, ApiError> {
        if b.len() < STATE_CHANGE_LEN {
            return Err(ApiError::TooShort {
                what: "DBGKD_WAIT_STATE_CHANGE64",
                need: STATE_CHANGE_LEN,
                have: b.len(),
            });
        }
        let new_state = Le(b).u32(0);
        let extra = &b[STATE_CHANGE_LEN..];
        let event = match new_state & !STATE_ALTERNATE {
            STATE_EXCEPTION => {
                let n = (Le(b).u32(0x38) as usize).min(15);
                Exception64 {
                    code: Le(b).u32(0x20),
                    flags: Le(b).u32(0x24),
                    record: Le(b).u64(0x28),
                    address: Le(b).u64(0x30),
                    parameters: (0..n).map(|i| Le(b).u64(0x40 + 8 * i)).collect(),
                    first_chance: Le(b).u32(0xB8) != 0,
                }
                .into()
            }
            STATE_LOAD_SYMBOLS => {
                let len = (Le(b).u32(0x20) as usize).min(extra.len());
                StateEvent::LoadSymbols(LoadSymbols64 {
                    base: Le(b).u64(0x28),
                    process_id: Le(b).u64(0x30),
                    checksum: Le(b).u32(0x38),
                    size: Le(b).u32(0x3C),
                    unload: b[0x40] != 0,
                    path: c_string(&extra[..len]),
                })
            }
            STATE_COMMAND_STRING => {
                let name = c_string(extra);
                let rest = extra.get(name.len() + 1..).unwrap_or(&[]);
                StateEvent::CommandString {
                    name,
                    command: c_string(rest),
                }
            }
            _ => StateEvent::Other,
        };
        let mut stream = [0u8; 16];
        stream.copy_from_slice(&b[0xD8..0xE8]);
        Ok(StateChange64 {
            new_state,
            processor_level: Le(b).u16(4),
            processor: Le(b).u16(6),
            number_processors: Le(b).u32(8),
            thread: Le(b).u64(0x10),
            program_counter: Le(b).u64(0x18),
            event,
            control: ControlReport {
                dr6: Le(b).u64(0xC0),
                dr7: Le(b).u64(0xC8),
                eflags: Le(b).u32(0xD0),
                instruction_count: Le(b).u16(0xD4),
                report_flags: Le(b).u16(0xD6),
                instruction_stream: stream,
                seg_cs: Le(b).u16(0xE8),
                seg_ds: Le(b).u16(0xEA),
                seg_es: Le(b).u16(0xEC),
                seg_fs: Le(b).u16(0xEE),
            },
        })
    }

    /// Encodes the packet data (fixed part plus the path or strings).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; STATE_CHANGE_LEN];
        let put32 =
            |b: &mut Vec<u8>, o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_le_bytes());
        let put64 =
            |b: &mut Vec<u8>, o: usize, v: u64| b[o..o + 8].copy_from_slice(&v.to_le_bytes());
        put32(&mut b, 0, self.new_state);
        b[4..6].copy_from_slice(&self.processor_level.to_le_bytes());
        b[6..8].copy_from_slice(&self.processor.to_le_bytes());
        put32(&mut b, 8, self.number_processors);
        put64(&mut b, 0x10, self.thread);
        put64(&mut b, 0x18, self.program_counter);
        let mut extra = Vec::new();
        match &self.event {
            StateEvent::Exception(e) => {
                put32(&mut b, 0x20, e.code);
                put32(&mut b, 0x24, e.flags);
                put64(&mut b, 0x28, e.record);
                put64(&mut b, 0x30, e.address);
                let n = e.parameters.len().min(15);
                put32(&mut b, 0x38, n as u32);
                for (i, p) in e.parameters.iter().take(15).enumerate() {
                    put64(&mut b, 0x40 + 8 * i, *p);
                }
                put32(&mut b, 0xB8, u32::from(e.first_chance));
            }
            StateEvent::LoadSymbols(l) => {
                if !l.path.is_empty() {
                    extra.extend_from_slice(l.path.as_bytes());
                    extra.push(0);
                }
                put32(&mut b, 0x20, extra.len() as u32);
                put64(&mut b, 0x28, l.base);
                put64(&mut b, 0x30, l.process_id);
                put32(&mut b, 0x38, l.checksum);
                put32(&mut b, 0x3C, l.size);
                b[0x40] = u8::from(l.unload);
            }
            StateEvent::CommandString { name, command } => {
                extra.extend_from_slice(name.as_bytes());
                extra.push(0);
                extra.extend_from_slice(command.as_bytes());
                extra.push(0);
            }
            StateEvent::Other => {}
        }
        let c = &self.control;
        put64(&mut b, 0xC0, c.dr6);
        put64(&mut b, 0xC8, c.dr7);
        put32(&mut b, 0xD0, c.eflags);
        b[0xD4..0xD6].copy_from_slice(&c.instruction_count.to_le_bytes());
        b[0xD6..0xD8].copy_from_slice(&c.report_flags.to_le_bytes());
        b[0xD8..0xE8].copy_from_slice(&c.instruction_stream);
        b[0xE8..0xEA].copy_from_slice(&c.seg_cs.to_le_bytes());
        b[0xEA..0xEC].copy_from_slice(&c.seg_ds.to_le_bytes());
        b[0xEC..0xEE].copy_from_slice(&c.seg_es.to_le_bytes());
        b[0xEE..0xF0].copy_from_slice(&c.seg_fs.to_le_bytes());
        b.extend_from_slice(&extra);
        b
    }

    /// The exception, when this reports one.
    pub fn exception(&self) -> Option<&Exception64> {
        match &self.event {
            StateEvent::Exception(e) => Some(e),
            _ => None,
        }
    }
}

impl From<Exception64> for StateEvent {
    fn from(e: Exception64) -> StateEvent {
        StateEvent::Exception(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exception_round_trip() {
        let sc = StateChange64 {
            new_state: STATE_EXCEPTION,
            processor_level: 6,
            processor: 1,
            number_processors: 4,
            thread: 0xffff_8000_1234_0000,
            program_counter: 0xfffff802_6bd72b90,
            event: StateEvent::Exception(Exception64 {
                code: 0x8000_0003,
                flags: 0,
                record: 0,
                address: 0xfffff802_6bd72b90,
                parameters: vec![0],
                first_chance: true,
            }),
            control: ControlReport {
                dr6: 0xffff0ff0,
                dr7: 0x400,
                eflags: 0x202,
                instruction_count: 16,
                report_flags: 3,
                instruction_stream: [0xcc, 0xc3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                seg_cs: 0x10,
                seg_ds: 0x2b,
                seg_es: 0x2b,
                seg_fs: 0x53,
            },
        };
        let b = sc.encode();
        assert_eq!(b.len(), 0xF0);
        assert_eq!(StateChange64::decode(&b).unwrap(), sc);
    }

    #[test]
    fn load_symbols_path() {
        let sc = StateChange64 {
            new_state: STATE_LOAD_SYMBOLS,
            processor_level: 0,
            processor: 0,
            number_processors: 1,
            thread: 0,
            program_counter: 0xA79685,
            event: StateEvent::LoadSymbols(LoadSymbols64 {
                base: 0x96F000,
                process_id: u64::MAX,
                checksum: 0x149E3F,
                size: 0x17D000,
                unload: false,
                path: "winload.efi".into(),
            }),
            control: ControlReport::default(),
        };
        let b = sc.encode();
        // 0xF0 + "winload.efi\0", as in the captured 252-byte packet.
        assert_eq!(b.len(), 252);
        assert_eq!(StateChange64::decode(&b).unwrap(), sc);
        assert!(StateChange64::decode(&b[..0xEF]).is_err());
    }
}
