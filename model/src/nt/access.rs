//! Reading kernel structures: typed views by type name, guarded list walks and
//! UNICODE_STRINGs.

use std::collections::HashSet;

use kdnet_arch::le::Le;

use super::view::View;
use super::{Kernel, MAX_LIST, ModelError};

/// A list walked with every guard: an iteration cap, a visited set, Flink/Blink consistency,
/// canonical and aligned pointers, and unreadable entries reported instead of failing.
#[derive(Debug, Clone, Default)]
pub struct ListWalk {
    /// The entries (addresses of their LIST_ENTRY), in order.
    pub entries: Vec<u64>,
    /// Bytes read at each entry (`entry - link_offset`, `node_size` bytes), when asked for.
    pub nodes: Vec<Vec<u8>>,
    /// Why the walk ended early, if it did.
    pub note: Option<String>,
}

impl Kernel {
    /// Reads a whole `ty` at `addr` from kernel space.
    pub fn view(&mut self, ty: &str, addr: u64) -> Result<View, ModelError> {
        self.view_sized(ty, addr, None, false)
    }

    /// Reads a whole `ty` at `addr` with read-ahead (list walks).
    pub fn view_ahead(&mut self, ty: &str, addr: u64) -> Result<View, ModelError> {
        self.view_sized(ty, addr, None, true)
    }

    fn view_sized(
        &mut self,
        ty: &str,
        addr: u64,
        len: Option<usize>,
        ahead: bool,
    ) -> Result<View, ModelError> {
        let nt = self.nt()?;
        let size = match len {
            Some(l) => l,
            None => nt.size_of(ty)? as usize,
        };
        let bytes = if ahead {
            self.mem.kread_ahead(addr, size)?
        } else {
            self.mem.kread(addr, size)?
        };
        Ok(View::new(nt, ty, addr, bytes))
    }

    /// Walks a LIST_ENTRY list from `head`. With `node` = (link offset, size), the bytes of each
    /// containing structure are read too, in the same request as its links.
    pub fn walk_list(
        &mut self,
        head: u64,
        node: Option<(u64, usize)>,
        max: usize,
        ahead: bool,
    ) -> Result<ListWalk, ModelError> {
        let mut walk = ListWalk::default();
        let first = self.mem.u64(head)?;
        let mut prev = head;
        let mut cur = first;
        let mut seen = HashSet::new();
        let max = max.min(MAX_LIST);
        while cur != head {
            if walk.entries.len() >= max {
                walk.note = Some(format!(
                    "stopped after {} entries (limit)",
                    walk.entries.len()
                ));
                break;
            }
            if cur == 0 || cur % 8 != 0 || !crate::mem::canonical(cur, self.mem.paging_levels()) {
                walk.note = Some(format!(
                    "list broken after {prev:#x}: next pointer {cur:#x} is not a valid address"
                ));
                break;
            }
            if !seen.insert(cur) {
                walk.note = Some(format!("list loops back to {cur:#x}"));
                break;
            }
            let (start, len) = match node {
                Some((off, size)) => (cur.wrapping_sub(off), size.max(off as usize + 16)),
                None => (cur, 16),
            };
            let bytes = match if ahead {
                self.mem.kread_ahead(start, len)
            } else {
                self.mem.kread(start, len)
            } {
                Ok(b) => b,
                Err(e) => {
                    walk.note = Some(format!("entry {cur:#x} is unreadable: {e}"));
                    break;
                }
            };
            let lo = (cur - start) as usize;
            let flink = u64::from_le_bytes(bytes[lo..lo + 8].try_into().unwrap_or([0; 8]));
            let blink = u64::from_le_bytes(bytes[lo + 8..lo + 16].try_into().unwrap_or([0; 8]));
            if blink != prev {
                walk.note = Some(format!(
                    "list corrupted at {cur:#x}: its Blink is {blink:#x}, expected {prev:#x}"
                ));
                break;
            }
            walk.entries.push(cur);
            if node.is_some() {
                walk.nodes.push(bytes);
            }
            prev = cur;
            cur = flink;
        }
        Ok(walk)
    }

    /// The UNICODE_STRING `field` of a structure already read: only its buffer is read.
    pub fn unicode_string_in(&mut self, v: &View, field: &str) -> Result<String, ModelError> {
        let b = v.bytes_of(field, 16)?;
        let len = usize::from(Le(b).u16(0)).min(2048);
        let buf = Le(b).u64(8);
        if len == 0 || buf == 0 {
            return Ok(String::new());
        }
        let raw = self.mem.kread_ahead(buf, len & !1)?;
        Ok(kdnet_arch::le::utf16(&raw))
    }

    /// Reads a UNICODE_STRING at `at` (bounded to 1024 characters).
    pub fn unicode_string(&mut self, at: u64) -> Result<String, ModelError> {
        let b = self.mem.kread(at, 16)?;
        let len = usize::from(Le(&b).u16(0)).min(2048);
        let buf = Le(&b).u64(8);
        if len == 0 || buf == 0 {
            return Ok(String::new());
        }
        // Names usually sit right after their structure: read on to the page end.
        let raw = self.mem.kread_ahead(buf, len & !1)?;
        Ok(kdnet_arch::le::utf16(&raw))
    }
}
