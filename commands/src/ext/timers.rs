//! `!timer`: every processor's timer table, each timer with its due time (interrupt time and
//! wall clock), period, and the DPC routine it queues or the thread that waits on it; timers
//! already due are marked.

use schemars::JsonSchema;
use serde::Serialize;

use crate::args::Args;
use crate::engine::{CmdError, Engine};
use crate::registry::Render;

/// One timer as shown.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TimerShown {
    /// The processor whose table holds it.
    pub processor: u32,
    /// The set of lists (0; 0 or 1 on builds whose table has two).
    pub set: u8,
    /// The list's index in its set.
    pub list: u16,
    /// The KTIMER.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub timer: u64,
    /// `Notification` or `Synchronization`.
    pub kind: String,
    /// DueTime: the interrupt time (100 ns since boot) it fires at.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub due_time: u64,
    /// When that is on the target's clock, UTC, ISO 8601.
    pub fire_time: String,
    /// The same as WinDbg writes it.
    #[serde(skip)]
    #[schemars(skip)]
    pub fire_time_text: String,
    /// Seconds from the target's interrupt time to it (negative: already due).
    pub seconds_from_now: f64,
    /// Due at or before the target's interrupt time (the clock interrupt has not yet taken it
    /// off its list).
    pub expired: bool,
    /// Period in milliseconds (0: once).
    pub period_ms: u32,
    /// The KDPC it queues (decoded from the timer), null when none.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub dpc: Option<u64>,
    /// That DPC's routine.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub routine: Option<u64>,
    /// It as `module!function`.
    pub routine_symbol: Option<String>,
    /// The thread waiting on it, when it has no DPC.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub thread: Option<u64>,
}

/// A processor's table.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TimerTableShown {
    /// The processor.
    pub processor: u32,
    /// Its `_KTIMER_TABLE`.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub address: u64,
    /// Sets of lists it has (1, or 2 where `TimerEntries` is `[2][256]`).
    pub sets: u8,
    /// Timers in it.
    pub timers: usize,
    /// Its longest list.
    pub max_list: usize,
    /// Where it was not read whole, or a timer was not what it should be.
    pub notes: Vec<String>,
}

/// `!timer`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TimerReport {
    /// The target's interrupt time (100 ns since boot).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub interrupt_time: u64,
    /// The target's clock, UTC, ISO 8601.
    pub system_time: String,
    /// The same as WinDbg writes it.
    #[serde(skip)]
    #[schemars(skip)]
    pub system_time_text: String,
    /// Every timer: by processor and set, then by due time.
    pub timers: Vec<TimerShown>,
    /// Each processor's table.
    pub tables: Vec<TimerTableShown>,
    /// Timers in all.
    pub total: usize,
    /// Of those, already due.
    pub expired: usize,
    /// The longest list of any table.
    pub max_list: usize,
}

/// A FILETIME (100 ns since 1601) as `YYYY-MM-DDTHH:MM:SS.mmmZ` and as WinDbg's
/// `M/D/YYYY HH:MM:SS.mmm`.
fn times(filetime: i128) -> (String, String) {
    let (y, mo, d, h, mi, s, ms) = crate::calendar::parts(filetime);
    (
        crate::calendar::iso(filetime),
        format!("{mo:2}/{d:2}/{y} {h:02}:{mi:02}:{s:02}.{ms:03}"),
    )
}

/// `!timer`.
pub(crate) fn timer(e: &mut Engine, _verb: &str, _a: &Args<'_>) -> Result<TimerReport, CmdError> {
    let t = e.kernel.timer_tables()?;
    let synchronization = e
        .kernel
        .nt()?
        .enum_value("_KOBJECTS", "TimerSynchronizationObject")
        .unwrap_or(9);
    let mut timers = Vec::new();
    let mut tables = Vec::new();
    for table in t.tables {
        if !table.complete {
            e.kernel.note_incomplete(format!(
                "processor {}'s timer table was not read whole: {}",
                table.processor,
                table.notes.join("; ")
            ));
        }
        let mut mine: Vec<TimerShown> = Vec::new();
        for tm in &table.timers {
            let delta = i128::from(tm.due) - i128::from(t.interrupt_time);
            let (fire_time, fire_time_text) = times(i128::from(t.system_time) + delta);
            mine.push(TimerShown {
                processor: table.processor,
                set: tm.table,
                list: tm.list,
                timer: tm.timer,
                kind: if i64::from(tm.kind) == synchronization {
                    "Synchronization"
                } else {
                    "Notification"
                }
                .into(),
                due_time: tm.due,
                fire_time,
                fire_time_text,
                seconds_from_now: delta as f64 / 1e7,
                expired: tm.due <= t.interrupt_time,
                period_ms: tm.period_ms,
                dpc: tm.dpc,
                routine: tm.routine,
                routine_symbol: tm.routine.map(|r| e.kernel.symbolize(r)),
                thread: tm.waiter,
            });
        }
        mine.sort_by_key(|x| (x.set, x.due_time, x.timer));
        tables.push(TimerTableShown {
            processor: table.processor,
            address: table.address,
            sets: table.sets,
            timers: mine.len(),
            max_list: table.max_list,
            notes: table.notes,
        });
        timers.extend(mine);
    }
    let (system_time, system_time_text) = times(i128::from(t.system_time));
    Ok(TimerReport {
        interrupt_time: t.interrupt_time,
        system_time,
        system_time_text,
        total: timers.len(),
        expired: timers.iter().filter(|x| x.expired).count(),
        max_list: tables.iter().map(|x| x.max_list).max().unwrap_or(0),
        timers,
        tables,
    })
}

impl Render for TimerReport {
    fn render(&self, out: &mut String) {
        out.push_str("Dump system timers\n\n");
        out.push_str(&format!(
            "Interrupt time: {:08x} {:08x} [{}] (UTC)\n\n",
            self.interrupt_time & 0xffff_ffff,
            self.interrupt_time >> 32,
            self.system_time_text
        ));
        for table in &self.tables {
            for set in 0..table.sets {
                let kind = if table.sets > 1 {
                    format!(" - Type {set}")
                } else {
                    String::new()
                };
                out.push_str(&format!(
                    "PROCESSOR {} (nt!_KTIMER_TABLE {:016x}{kind})\n",
                    table.processor, table.address
                ));
                out.push_str(
                    "List Timer             Interrupt Low/High     Fire Time              \
                     DPC/thread\n",
                );
                for tm in self
                    .timers
                    .iter()
                    .filter(|x| x.processor == table.processor && x.set == set)
                {
                    let flags = format!(
                        "{}{}",
                        if tm.period_ms != 0 { "P" } else { " " },
                        if tm.expired { "X" } else { " " }
                    );
                    let what = match (&tm.routine_symbol, tm.dpc, tm.thread) {
                        (Some(s), Some(d), _) => format!("{s} (DPC @ {d:016x})"),
                        (None, Some(d), _) => format!("(DPC @ {d:016x}, not readable)"),
                        (_, None, Some(th)) => format!("thread {th:016x}"),
                        _ => String::new(),
                    };
                    out.push_str(&format!(
                        "{:3} {:016x} {flags} {:08x} {:08x} [{}]  {what}\n",
                        tm.list,
                        tm.timer,
                        tm.due_time & 0xffff_ffff,
                        tm.due_time >> 32,
                        tm.fire_time_text
                    ));
                }
            }
            for n in &table.notes {
                out.push_str(&format!("NOTE: processor {}: {n}\n", table.processor));
            }
        }
        out.push_str(&format!(
            "\nTotal Timers: {}, Expired: {}, Maximum List: {}\n",
            self.total, self.expired, self.max_list
        ));
    }
}
