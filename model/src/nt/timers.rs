//! The kernel's timer tables: each processor's `_KTIMER_TABLE` (in its KPRCB) holds 256 lists
//! of timers (two sets of 256 on builds whose `TimerEntries` is `[2][256]`), each a LIST_ENTRY
//! through `_KTIMER.TimerListEntry`, indexed by due time over the clock increment. A timer's
//! `Dpc` is stored encoded with `KiWaitNever`/`KiWaitAlways` and the timer's own address (the
//! same transform as the debugger data block's); a timer without a DPC is one a thread waits
//! on, found through its dispatcher header's wait list. Every walk is bounded and says where
//! it stopped.

use kdnet_symbols::Ty;

use super::kdbg::decode_word;
use super::{Kernel, ModelError};

/// Most timers read from one list.
pub const MAX_LIST: usize = 10_000;
/// Most timers read from one processor's table.
pub const MAX_TABLE: usize = 100_000;

/// One timer in a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    /// Which set of lists (0 on builds with one; 0 or 1 where `TimerEntries` is `[2][256]`).
    pub table: u8,
    /// The list's index in its set.
    pub list: u16,
    /// The KTIMER.
    pub timer: u64,
    /// Header.Type (8 notification, 9 synchronization).
    pub kind: u8,
    /// DueTime: the interrupt time (100 ns since boot) it fires at.
    pub due: u64,
    /// Period in milliseconds (0: one-shot).
    pub period_ms: u32,
    /// The KDPC it queues (decoded), if any.
    pub dpc: Option<u64>,
    /// That DPC's DeferredRoutine.
    pub routine: Option<u64>,
    /// The thread the first wait block on its wait list belongs to, if any.
    pub waiter: Option<u64>,
}

/// A processor's timer table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimerTable {
    /// The processor.
    pub processor: u32,
    /// The `_KTIMER_TABLE`.
    pub address: u64,
    /// How many sets of lists it has (1 or 2).
    pub sets: u8,
    /// Lists per set.
    pub lists: u16,
    /// Its timers, in list order.
    pub timers: Vec<Timer>,
    /// The longest list.
    pub max_list: usize,
    /// Where a list was not read whole, or a timer was not what it should be.
    pub notes: Vec<String>,
    /// Whether every list was read whole and every timer understood.
    pub complete: bool,
}

/// Every processor's timer table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timers {
    /// KUSER_SHARED_DATA's interrupt time when they were read.
    pub interrupt_time: u64,
    /// Its system time (a FILETIME, UTC).
    pub system_time: u64,
    /// Its time-zone bias (UTC minus local, 100 ns).
    pub bias: i64,
    /// The tables, by processor.
    pub tables: Vec<TimerTable>,
}

impl Kernel {
    /// Every processor's timer table, walked.
    pub fn timer_tables(&mut self) -> Result<Timers, ModelError> {
        let nt = self.nt()?;
        let (system_time, interrupt_time, bias) = self.clocks()?;
        let table_at = nt.offset("_KPRCB", "TimerTable")?;
        let entries_at = nt.offset("_KTIMER_TABLE", "TimerEntries")?;
        let field = nt.field("_KTIMER_TABLE", "TimerEntries")?;
        // [256] of entries, or [2][256].
        let (sets, lists) = match &field.ty {
            Ty::Array { count, elem } => match elem.as_ref() {
                Ty::Array { count: inner, .. } => (*count, *inner),
                _ => (1, *count),
            },
            other => {
                return Err(ModelError::Corrupt(format!(
                    "_KTIMER_TABLE.TimerEntries is {other:?}, not an array"
                )));
            }
        };
        if !(1..=2).contains(&sets) || !(1..=1024).contains(&lists) {
            return Err(ModelError::Corrupt(format!(
                "_KTIMER_TABLE.TimerEntries is [{sets}][{lists}]"
            )));
        }
        let entry_size = nt.size_of("_KTIMER_TABLE_ENTRY")?;
        let entry_list = nt.offset("_KTIMER_TABLE_ENTRY", "Entry")?;
        // The keys the Dpc pointer is encoded with (every x64 build that has them).
        let keys = match (self.sym("KiWaitNever"), self.sym("KiWaitAlways")) {
            (Ok(n), Ok(a)) => Some((self.mem.u64(n)?, self.mem.u64(a)?)),
            _ => None,
        };
        let cpus = self.processors()?;
        let mut tables = Vec::new();
        for c in &cpus {
            let address = c.prcb.wrapping_add(table_at);
            let span = (sets * lists * entry_size) as usize;
            let raw = self.mem.kread(address.wrapping_add(entries_at), span)?;
            let mut t = TimerTable {
                processor: c.number,
                address,
                sets: sets as u8,
                lists: lists as u16,
                timers: Vec::new(),
                max_list: 0,
                notes: Vec::new(),
                complete: true,
            };
            'sets: for set in 0..sets {
                for list in 0..lists {
                    let i = set * lists + list;
                    let o = (i * entry_size + entry_list) as usize;
                    let flink = u64::from_le_bytes(raw[o..o + 8].try_into().unwrap_or([0; 8]));
                    let head = address.wrapping_add(entries_at + o as u64);
                    if flink == head {
                        continue;
                    }
                    if t.timers.len() >= MAX_TABLE {
                        t.notes
                            .push(format!("stopped after {MAX_TABLE} timers (limit)"));
                        t.complete = false;
                        break 'sets;
                    }
                    let n = self.timer_list(&mut t, set as u8, list as u16, head, keys)?;
                    t.max_list = t.max_list.max(n);
                }
            }
            tables.push(t);
        }
        Ok(Timers {
            interrupt_time,
            system_time,
            bias,
            tables,
        })
    }

    /// Walks one list into `t`; returns how many timers it held.
    fn timer_list(
        &mut self,
        t: &mut TimerTable,
        set: u8,
        list: u16,
        head: u64,
        keys: Option<(u64, u64)>,
    ) -> Result<usize, ModelError> {
        let nt = self.nt()?;
        let link = nt.offset("_KTIMER", "TimerListEntry")?;
        let size = nt.size_of("_KTIMER")? as usize;
        let walk = self.walk_list(head, Some((link, size)), MAX_LIST, false)?;
        let where_ = if t.sets > 1 {
            format!("list {set}:{list}")
        } else {
            format!("list {list}")
        };
        if let Some(n) = &walk.note {
            t.notes.push(format!("{where_}: {n}"));
            t.complete = false;
        }
        let timer_types = [
            nt.enum_value("_KOBJECTS", "TimerNotificationObject")
                .unwrap_or(8),
            nt.enum_value("_KOBJECTS", "TimerSynchronizationObject")
                .unwrap_or(9),
        ];
        let n = walk.entries.len();
        for (entry, bytes) in walk.entries.iter().zip(walk.nodes) {
            let timer = entry.wrapping_sub(link);
            let v = super::view::View::new(nt.clone(), "_KTIMER", timer, bytes);
            let kind = v.get("Header.Type")? as u8;
            if !timer_types.contains(&i64::from(kind)) {
                t.notes.push(format!(
                    "{where_}: {timer:#x} is not a timer (its type is {kind:#x}); the list \
                     was not read further"
                ));
                t.complete = false;
                break;
            }
            let raw_dpc = v.get("Dpc")?;
            let dpc = match keys {
                Some((never, always)) => decode_word(raw_dpc, never, always, timer),
                None => raw_dpc,
            };
            let mut tm = Timer {
                table: set,
                list,
                timer,
                kind,
                due: v.get("DueTime.QuadPart")?,
                period_ms: v.get("Period")? as u32,
                dpc: (dpc != 0).then_some(dpc),
                routine: None,
                waiter: None,
            };
            if dpc != 0 {
                match self.timer_dpc(dpc) {
                    Ok(r) => tm.routine = Some(r),
                    Err(why) => {
                        t.notes.push(format!("timer {timer:#x}: {why}"));
                        t.complete = false;
                    }
                }
            } else {
                let wl = v.get("Header.WaitListHead.Flink")?;
                let wl_head = v.addr_of("Header.WaitListHead")?;
                if wl != wl_head {
                    match self.timer_waiter(wl) {
                        Ok(th) => tm.waiter = Some(th),
                        Err(why) => {
                            t.notes.push(format!("timer {timer:#x}: {why}"));
                            t.complete = false;
                        }
                    }
                }
            }
            t.timers.push(tm);
        }
        Ok(n)
    }

    /// The thread of the first wait block on a timer's wait list (its `WaitListEntry` at
    /// `entry`): a wait block of a thread's wait (WaitAll or WaitAny; the others put a queue
    /// or a DPC where the thread is), whose thread is a thread; or why it is not.
    fn timer_waiter(&mut self, entry: u64) -> Result<u64, String> {
        let nt = self.nt().map_err(|e| e.to_string())?;
        if entry == 0
            || !entry.is_multiple_of(8)
            || !crate::mem::canonical(entry, self.mem.paging_levels())
        {
            return Err(format!(
                "its wait list points at {entry:#x}, not a wait block"
            ));
        }
        let link = nt
            .offset("_KWAIT_BLOCK", "WaitListEntry")
            .map_err(|e| e.to_string())?;
        let wb = entry.wrapping_sub(link);
        let v = self
            .view("_KWAIT_BLOCK", wb)
            .map_err(|e| format!("its wait block {wb:#x} is unreadable: {e}"))?;
        let wait_type = v.get("WaitType").map_err(|e| e.to_string())?;
        let all = nt.enum_value("_WAIT_TYPE", "WaitAll").unwrap_or(0) as u64;
        let any = nt.enum_value("_WAIT_TYPE", "WaitAny").unwrap_or(1) as u64;
        if wait_type != all && wait_type != any {
            return Err(format!(
                "its wait block {wb:#x} is not a thread's wait (wait type {wait_type})"
            ));
        }
        let thread = v.get("Thread").map_err(|e| e.to_string())?;
        let ty = self
            .mem
            .u8(thread)
            .map_err(|e| format!("the thread {thread:#x} of its wait block is unreadable: {e}"))?;
        let thread_type = nt.enum_value("_KOBJECTS", "ThreadObject").unwrap_or(6) as u8;
        if ty != thread_type {
            return Err(format!(
                "its wait block's thread {thread:#x} is not a thread (type {ty:#x})"
            ));
        }
        Ok(thread)
    }

    /// The routine of a timer's (decoded) DPC, or why it is not a DPC.
    fn timer_dpc(&mut self, dpc: u64) -> Result<u64, String> {
        if !crate::mem::canonical(dpc, self.mem.paging_levels()) || !dpc.is_multiple_of(8) {
            return Err(format!("its DPC decodes to {dpc:#x}, not an address"));
        }
        let v = self
            .view("_KDPC", dpc)
            .map_err(|e| format!("its DPC {dpc:#x} is unreadable: {e}"))?;
        let ty = v.get("Type").map_err(|e| e.to_string())?;
        // DpcObject 0x13, ThreadedDpcObject 0x1a.
        if ty != 0x13 && ty != 0x1a {
            return Err(format!(
                "its DPC decodes to {dpc:#x}, which is not a DPC (type {ty:#x})"
            ));
        }
        v.get("DeferredRoutine").map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::decode_word;

    /// Known answers, computed apart from the simulator's encoder with the transform
    /// KeSetTimer applies (`N ^ ror(T ^ bswap(W ^ Dpc), N)`): a timer's Dpc and a timer
    /// without one (which the kernel encodes too, as zero).
    #[test]
    fn a_timer_s_dpc_decodes() {
        let (never, always) = (0x4f1e_92a3_7c05_d14b, 0x9d33_0e7a_1b26_c8f5);
        let timer = 0xffff_c18a_0013_24d0;
        assert_eq!(
            decode_word(0x5951_d0fd_ee3b_cad6, never, always, timer),
            0xffff_c18a_0013_2570
        );
        assert_eq!(decode_word(0xa6bf_d45f_8e2a_92e9, never, always, timer), 0);
        // The same word under another timer's address is noise.
        assert_ne!(
            decode_word(0x5951_d0fd_ee3b_cad6, never, always, timer + 0x40),
            0xffff_c18a_0013_2570
        );
    }
}
