//! DBGKD_DEBUG_IO (DbgPrint / DbgPrompt) and DBGKD_FILE_IO (kdfiles).

use kdnet_arch::le::Le;
use serde::Serialize;

use super::ApiError;
use super::status;

/// DEBUG_IO ApiNumber: print a string.
pub const PRINT_STRING: u32 = 0x3230;
/// DEBUG_IO ApiNumber: prompt and read a string.
pub const GET_STRING: u32 = 0x3231;
/// Bytes of the DEBUG_IO header.
pub const DEBUG_IO_HEADER: usize = 16;

/// A decoded DEBUG_IO packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DebugIo {
    /// DbgPrint output.
    PrintString {
        /// The processor that printed.
        processor: u16,
        /// The text (not NUL-terminated on the wire).
        text: String,
    },
    /// DbgPrompt: the target waits for a string.
    GetString {
        /// The processor.
        processor: u16,
        /// The prompt.
        prompt: String,
        /// Longest answer the target accepts.
        max_length: u32,
    },
    /// Another ApiNumber.
    Other {
        /// ApiNumber.
        api: u32,
    },
}

impl DebugIo {
    /// Decodes DEBUG_IO packet data.
    pub fn decode(b: &[u8]) -> Result<DebugIo, ApiError> {
        if b.len() < DEBUG_IO_HEADER {
            return Err(ApiError::TooShort {
                what: "DBGKD_DEBUG_IO",
                need: DEBUG_IO_HEADER,
                have: b.len(),
            });
        }
        let api = Le(b).u32(0);
        let processor = u16::from_le_bytes([b[6], b[7]]);
        let body = &b[DEBUG_IO_HEADER..];
        let len = (Le(b).u32(8) as usize).min(body.len());
        let text = String::from_utf8_lossy(&body[..len]).into_owned();
        Ok(match api {
            PRINT_STRING => DebugIo::PrintString { processor, text },
            GET_STRING => DebugIo::GetString {
                processor,
                prompt: text,
                max_length: Le(b).u32(12),
            },
            api => DebugIo::Other { api },
        })
    }

    /// A PrintString packet (target side).
    pub fn print(processor: u16, text: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; DEBUG_IO_HEADER];
        b[0..4].copy_from_slice(&PRINT_STRING.to_le_bytes());
        b[6..8].copy_from_slice(&processor.to_le_bytes());
        b[8..12].copy_from_slice(&(text.len() as u32).to_le_bytes());
        b.extend_from_slice(text);
        b
    }

    /// The debugger's answer to a GetString: `answer`, cut to what the target accepts.
    pub fn get_string_reply(request: &[u8], answer: &[u8]) -> Vec<u8> {
        let max = request
            .get(12..16)
            .map_or(0, |x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]));
        let n = answer.len().min(max as usize);
        let mut b = vec![0u8; DEBUG_IO_HEADER];
        let head = request.len().min(8);
        b[..head].copy_from_slice(&request[..head]);
        b[8..12].copy_from_slice(&0u32.to_le_bytes());
        b[12..16].copy_from_slice(&(n as u32).to_le_bytes());
        b.extend_from_slice(&answer[..n]);
        b
    }
}

/// FILE_IO ApiNumber: CreateFile.
pub const CREATE_FILE: u32 = 0x3430;
/// FILE_IO ApiNumber: ReadFile.
pub const READ_FILE: u32 = 0x3431;
/// FILE_IO ApiNumber: WriteFile.
pub const WRITE_FILE: u32 = 0x3432;
/// FILE_IO ApiNumber: CloseFile.
pub const CLOSE_FILE: u32 = 0x3433;
/// Bytes of the FILE_IO header.
pub const FILE_IO_HEADER: usize = 64;

/// A decoded FILE_IO packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileIo {
    /// ApiNumber.
    pub api: u32,
    /// Status (the debugger's reply).
    pub status: u32,
    /// The operation.
    pub op: FileOp,
}

/// The FILE_IO union.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FileOp {
    /// Open a file on the debugger's side.
    CreateFile {
        /// DesiredAccess.
        desired_access: u32,
        /// FileAttributes.
        file_attributes: u32,
        /// ShareAccess.
        share_access: u32,
        /// CreateDisposition.
        create_disposition: u32,
        /// CreateOptions.
        create_options: u32,
        /// Handle (reply).
        handle: u64,
        /// File size (reply).
        length: u64,
        /// The UTF-16 name after the header.
        name: String,
    },
    /// Read from an open file.
    ReadFile {
        /// Handle.
        handle: u64,
        /// Offset.
        offset: u64,
        /// Length.
        length: u32,
    },
    /// Write to an open file.
    WriteFile {
        /// Handle.
        handle: u64,
        /// Offset.
        offset: u64,
        /// Length.
        length: u32,
    },
    /// Close.
    CloseFile {
        /// Handle.
        handle: u64,
    },
    /// Unknown ApiNumber.
    Other,
}

impl FileIo {
    /// Decodes FILE_IO packet data.
    pub fn decode(b: &[u8]) -> Result<FileIo, ApiError> {
        if b.len() < FILE_IO_HEADER {
            return Err(ApiError::TooShort {
                what: "DBGKD_FILE_IO",
                need: FILE_IO_HEADER,
                have: b.len(),
            });
        }
        let api = Le(b).u32(0);
        let op = match api {
            CREATE_FILE => {
                let name = kdnet_arch::le::utf16(&b[FILE_IO_HEADER..]);
                FileOp::CreateFile {
                    desired_access: Le(b).u32(0x08),
                    file_attributes: Le(b).u32(0x0C),
                    share_access: Le(b).u32(0x10),
                    create_disposition: Le(b).u32(0x14),
                    create_options: Le(b).u32(0x18),
                    handle: Le(b).u64(0x20),
                    length: Le(b).u64(0x28),
                    name: name.split('\0').next().unwrap_or("").to_string(),
                }
            }
            READ_FILE => FileOp::ReadFile {
                handle: Le(b).u64(0x08),
                offset: Le(b).u64(0x10),
                length: Le(b).u32(0x18),
            },
            WRITE_FILE => FileOp::WriteFile {
                handle: Le(b).u64(0x08),
                offset: Le(b).u64(0x10),
                length: Le(b).u32(0x18),
            },
            CLOSE_FILE => FileOp::CloseFile {
                handle: Le(b).u64(0x08),
            },
            _ => FileOp::Other,
        };
        Ok(FileIo {
            api,
            status: Le(b).u32(4),
            op,
        })
    }

    /// The debugger's "no such file" answer to a request: the 64-byte header echoed with
    /// Status = STATUS_NO_SUCH_FILE, no data (as WinDbg answers when no kdfiles map exists).
    pub fn no_such_file_reply(request: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; FILE_IO_HEADER];
        let n = request.len().min(FILE_IO_HEADER);
        b[..n].copy_from_slice(&request[..n]);
        b[4..8].copy_from_slice(&status::NO_SUCH_FILE.to_le_bytes());
        b
    }

    /// A CreateFile request (target side) for `name`.
    pub fn create_file(name: &str) -> Vec<u8> {
        let mut b = vec![0u8; FILE_IO_HEADER];
        b[0..4].copy_from_slice(&CREATE_FILE.to_le_bytes());
        b[0x08..0x0C].copy_from_slice(&0x0012_0089u32.to_le_bytes());
        b[0x0C..0x10].copy_from_slice(&0x80u32.to_le_bytes());
        b[0x10..0x14].copy_from_slice(&1u32.to_le_bytes());
        b[0x14..0x18].copy_from_slice(&1u32.to_le_bytes());
        for u in name.encode_utf16().chain(std::iter::once(0)) {
            b.extend_from_slice(&u.to_le_bytes());
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print_round_trip() {
        let b = DebugIo::print(2, b"BD: Boot Debugger Initialized\n");
        assert_eq!(
            DebugIo::decode(&b).unwrap(),
            DebugIo::PrintString {
                processor: 2,
                text: "BD: Boot Debugger Initialized\n".into()
            }
        );
        assert!(DebugIo::decode(&b[..15]).is_err());
    }

    #[test]
    fn create_file_and_no_such_file() {
        let req = FileIo::create_file("\\Windows\\system32\\ntkrnlmp.chk");
        let d = FileIo::decode(&req).unwrap();
        let FileOp::CreateFile {
            name,
            desired_access,
            ..
        } = &d.op
        else {
            panic!()
        };
        assert_eq!(name, "\\Windows\\system32\\ntkrnlmp.chk");
        assert_eq!(*desired_access, 0x120089);
        let reply = FileIo::no_such_file_reply(&req);
        assert_eq!(reply.len(), 64);
        let r = FileIo::decode(&reply).unwrap();
        assert_eq!(r.status, status::NO_SUCH_FILE);
        assert_eq!(r.api, CREATE_FILE);
    }
}
