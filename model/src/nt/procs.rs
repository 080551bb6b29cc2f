//! Processes, threads, processors and what threads wait on.

use serde::Serialize;

use super::view::View;
use super::{Kernel, ModelError};
use crate::target::TargetError;

/// KUSER_SHARED_DATA's kernel address.
pub const KUSER_SHARED_DATA: u64 = 0xfffff780_00000000;

/// A process.
#[derive(Debug, Clone, Serialize)]
pub struct Process {
    /// EPROCESS.
    pub eprocess: u64,
    /// UniqueProcessId.
    pub pid: u64,
    /// ImageFileName.
    pub name: String,
    /// DirectoryTableBase.
    pub dtb: u64,
    /// InheritedFromUniqueProcessId.
    pub parent: u64,
    /// Peb.
    pub peb: u64,
    /// ObjectTable.
    pub object_table: u64,
    /// Session pointer.
    pub session: u64,
    /// CommitCharge (pages).
    pub commit: u64,
}

/// What `!process` with flag 1 shows of a process beyond its identity; `None` where the
/// build's EPROCESS lacks the field.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessDetails {
    /// Handles in use (the handle table's count, summed over its free lists on 8.1 and later);
    /// `None` without a handle table.
    pub handle_count: Option<u64>,
    /// The root node of the VAD tree.
    pub vad_root: Option<u64>,
    /// VADs in the tree.
    pub vad_count: Option<u64>,
    /// CloneRoot (forked address spaces).
    pub clone_root: Option<u64>,
    /// NumberOfPrivatePages.
    pub private_pages: Option<u64>,
    /// ModifiedPageCount.
    pub modified_pages: Option<u64>,
    /// NumberOfLockedPages.
    pub locked_pages: Option<u64>,
    /// DeviceMap.
    pub device_map: Option<u64>,
    /// The primary token (EX_FAST_REF's object).
    pub token: Option<u64>,
    /// CreateTime (a FILETIME, UTC).
    pub create_time: Option<u64>,
    /// Pcb.UserTime and Pcb.KernelTime, in clock ticks.
    pub user_ticks: Option<u64>,
    /// Pcb.KernelTime, in clock ticks.
    pub kernel_ticks: Option<u64>,
    /// Working-set pages (now, minimum, maximum).
    pub working_set: Option<(u64, u64, u64)>,
    /// Peak working set (pages).
    pub peak_working_set: Option<u64>,
    /// VirtualSize (bytes).
    pub virtual_size: Option<u64>,
    /// PeakVirtualSize (bytes).
    pub peak_virtual_size: Option<u64>,
    /// Page faults.
    pub page_faults: Option<u64>,
    /// Pcb.BasePriority.
    pub base_priority: Option<i64>,
    /// Job.
    pub job: Option<u64>,
}

/// Most handle-table free lists summed (nt!ExpFreeListCount is one per processor group node).
const MAX_FREE_LISTS: u64 = 1024;

/// Thread states by value (`_KTHREAD_STATE`, stable; 7601's table lacks the enum).
pub const THREAD_STATES: [&str; 10] = [
    "Initialized",
    "Ready",
    "Running",
    "Standby",
    "Terminated",
    "Waiting",
    "Transition",
    "DeferredReady",
    "GateWaitObsolete",
    "WaitingForProcessInSwap",
];

/// Dispatcher object types by value (`_KOBJECTS`).
pub const OBJECT_TYPES: [&str; 26] = [
    "NotificationEvent",
    "SynchronizationEvent",
    "Mutant",
    "ProcessObject",
    "QueueObject",
    "Semaphore",
    "Thread",
    "Gate",
    "NotificationTimer",
    "SynchronizationTimer",
    "Spare2",
    "Spare3",
    "Spare4",
    "Spare5",
    "Spare6",
    "Spare7",
    "Spare8",
    "ProfileCallbackObject",
    "ApcObject",
    "DpcObject",
    "DeviceQueueObject",
    "PriQueueObject",
    "InterruptObject",
    "ProfileObject",
    "Timer2NotificationObject",
    "Timer2SynchronizationObject",
];

/// An object a thread waits on.
#[derive(Debug, Clone, Serialize)]
pub struct WaitObject {
    /// Its address.
    pub object: u64,
    /// DISPATCHER_HEADER.Type.
    pub type_code: u8,
    /// Its type name.
    pub type_name: String,
    /// The owner, for a mutant.
    pub owner: Option<u64>,
    /// Wait type (0 WaitAll, 1 WaitAny …).
    pub wait_type: u8,
}

/// A thread.
#[derive(Debug, Clone, Serialize)]
pub struct Thread {
    /// ETHREAD.
    pub ethread: u64,
    /// Owning EPROCESS.
    pub process: u64,
    /// Cid.UniqueProcess.
    pub pid: u64,
    /// Cid.UniqueThread.
    pub tid: u64,
    /// State value.
    pub state: u8,
    /// State name.
    pub state_name: String,
    /// WaitReason value.
    pub wait_reason: u8,
    /// WaitReason name.
    pub wait_reason_name: String,
    /// WaitMode (0 kernel, 1 user).
    pub wait_mode: u8,
    /// Alertable wait.
    pub alertable: bool,
    /// WaitTime (tick count at the start of the wait).
    pub wait_tick: u64,
    /// Ticks waited so far, when waiting.
    pub wait_ticks: Option<u64>,
    /// Seconds waited so far.
    pub wait_seconds: Option<f64>,
    /// Active wait blocks' objects.
    pub waits: Vec<WaitObject>,
    /// InitialStack.
    pub initial_stack: u64,
    /// StackLimit.
    pub stack_limit: u64,
    /// StackBase.
    pub stack_base: u64,
    /// KernelStack (saved RSP).
    pub kernel_stack: u64,
    /// Whether the kernel stack is resident.
    pub stack_resident: bool,
    /// Teb.
    pub teb: u64,
    /// Win32Thread.
    pub win32_thread: u64,
    /// StartAddress.
    pub start_address: u64,
    /// Win32StartAddress.
    pub win32_start_address: u64,
    /// Priority.
    pub priority: i64,
    /// BasePriority.
    pub base_priority: i64,
    /// ContextSwitches.
    pub context_switches: u64,
    /// KernelTime (ticks).
    pub kernel_time: u64,
    /// UserTime (ticks).
    pub user_time: u64,
    /// NextProcessor.
    pub processor: u64,
    /// Attached process (ApcState.Process) when different.
    pub attached_process: Option<u64>,
    /// IRPs on the thread's list.
    pub irps: Vec<u64>,
    /// KernelApcDisable (negative: normal kernel APCs disabled).
    pub kernel_apc_disable: i64,
    /// SpecialApcDisable (negative: special kernel APCs, I/O completion among them, disabled).
    pub special_apc_disable: i64,
    /// Kernel-mode APCs queued to it: (KAPC, KernelRoutine).
    pub kernel_apcs: Vec<(u64, u64)>,
    /// The client token it impersonates and the level (0 anonymous, 1 identification, 2
    /// impersonation, 3 delegation), when it does.
    pub impersonation: Option<(u64, u64)>,
}

/// A processor.
#[derive(Debug, Clone, Serialize)]
pub struct Processor {
    /// Number.
    pub number: u32,
    /// KPCR.
    pub kpcr: u64,
    /// KPRCB.
    pub prcb: u64,
    /// CurrentThread.
    pub current: u64,
    /// NextThread.
    pub next: u64,
    /// IdleThread.
    pub idle: u64,
}

impl Kernel {
    /// The clock: (KUSER_SHARED_DATA tick count, 100 ns per tick).
    pub fn clock(&mut self) -> Result<(u64, u64), ModelError> {
        let nt = self.nt()?;
        let f = nt.field("_KUSER_SHARED_DATA", "TickCount")?;
        let b = self.mem.kread(KUSER_SHARED_DATA + f.offset, 8)?;
        let low = u64::from(u32::from_le_bytes(b[..4].try_into().unwrap_or([0; 4])));
        let high = u64::from(u32::from_le_bytes(b[4..8].try_into().unwrap_or([0; 4])));
        let tick = (high << 32) | low;
        let inc = match self.sym("KeMaximumIncrement") {
            Ok(a) => u64::from(self.mem.u32(a)?),
            Err(_) => 156_250,
        };
        Ok((tick, if inc == 0 { 156_250 } else { inc }))
    }

    /// The target's clocks from KUSER_SHARED_DATA, in 100 ns units: (system time as a
    /// FILETIME (UTC), interrupt time (since boot), time-zone bias (UTC minus local)).
    pub fn clocks(&mut self) -> Result<(u64, u64, i64), ModelError> {
        let nt = self.nt()?;
        let read = |k: &mut Kernel, field: &str| -> Result<u64, ModelError> {
            let f = nt.field("_KUSER_SHARED_DATA", field)?;
            let b = k.mem.kread(KUSER_SHARED_DATA + f.offset, 12)?;
            let q = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
            // KSYSTEM_TIME: LowPart, High1Time, High2Time (equal unless read mid-update).
            let (low, high1, high2) = (q(0), q(4), q(8));
            if high1 != high2 {
                return Err(ModelError::Corrupt(format!(
                    "KUSER_SHARED_DATA.{field} was being updated (High1Time {high1:#x}, \
                     High2Time {high2:#x})"
                )));
            }
            Ok((u64::from(high1) << 32) | u64::from(low))
        };
        let system = read(self, "SystemTime")?;
        let interrupt = read(self, "InterruptTime")?;
        let bias = read(self, "TimeZoneBias")? as i64;
        Ok((system, interrupt, bias))
    }

    /// Every process on PsActiveProcessHead.
    pub fn processes(&mut self) -> Result<(Vec<Process>, Option<String>), ModelError> {
        let nt = self.nt()?;
        let head = match self.mem.info().ps_active_process_head {
            Some(h) => h,
            None => self.sym("PsActiveProcessHead")?,
        };
        let links = nt.offset("_EPROCESS", "ActiveProcessLinks")?;
        let size = nt.size_of("_EPROCESS")? as usize;
        let walk = self.walk_list(head, Some((links, size)), 100_000, false)?;
        let mut out = Vec::new();
        for (entry, bytes) in walk.entries.iter().zip(walk.nodes) {
            let v = View::new(nt.clone(), "_EPROCESS", entry - links, bytes);
            out.push(process_from(&v)?);
        }
        Ok((out, walk.note))
    }

    /// A process at an EPROCESS address.
    pub fn process(&mut self, eprocess: u64) -> Result<Process, ModelError> {
        let v = self.view("_EPROCESS", eprocess)?;
        process_from(&v)
    }

    /// What `!process` with flag 1 shows of the process at `eprocess` beyond its identity.
    pub fn process_details(&mut self, eprocess: u64) -> Result<ProcessDetails, ModelError> {
        let v = self.view("_EPROCESS", eprocess)?;
        let opt = |path: &str| v.has(path).then(|| v.get(path).ok()).flatten();
        let any = |paths: &[&str]| paths.iter().find_map(|p| opt(p));
        // Vm is _MMSUPPORT (7601 to 14393) or _MMSUPPORT_FULL with Instance (later).
        let vm = if v.has("Vm.Instance.WorkingSetSize") {
            "Vm.Instance."
        } else {
            "Vm."
        };
        let vm_field = |f: &str| opt(&format!("{vm}{f}"));
        let working_set = match (
            vm_field("WorkingSetSize"),
            vm_field("MinimumWorkingSetSize"),
            vm_field("MaximumWorkingSetSize"),
        ) {
            (Some(a), Some(b), Some(c)) => Some((a, b, c)),
            _ => None,
        };
        let table = v.get("ObjectTable")?;
        let handle_count = self.handle_count(table)?;
        Ok(ProcessDetails {
            handle_count,
            vad_root: any(&["VadRoot.Root", "VadRoot.BalancedRoot.RightChild"]),
            vad_count: any(&["VadCount", "VadRoot.NumberGenericTableElements"]),
            clone_root: opt("CloneRoot"),
            private_pages: opt("NumberOfPrivatePages"),
            modified_pages: opt("ModifiedPageCount"),
            locked_pages: opt("NumberOfLockedPages"),
            device_map: any(&["DeviceMap.Value", "DeviceMap"]).map(|d| d & !0xf),
            token: opt("Token.Value").map(|t| t & !0xf),
            create_time: opt("CreateTime.QuadPart"),
            user_ticks: opt("Pcb.UserTime"),
            kernel_ticks: opt("Pcb.KernelTime"),
            working_set,
            peak_working_set: vm_field("PeakWorkingSetSize"),
            virtual_size: opt("VirtualSize"),
            peak_virtual_size: opt("PeakVirtualSize"),
            page_faults: vm_field("PageFaultCount"),
            base_priority: v
                .has("Pcb.BasePriority")
                .then(|| v.get_signed("Pcb.BasePriority").ok())
                .flatten(),
            job: opt("Job"),
        })
    }

    /// Handles in use in the handle table at `table` (none: `None`): its HandleCount (7601),
    /// or the sum over its nt!ExpFreeListCount free lists (8.1 and later).
    pub fn handle_count(&mut self, table: u64) -> Result<Option<u64>, ModelError> {
        if table == 0 {
            return Ok(None);
        }
        let nt = self.nt()?;
        if nt.has_field("_HANDLE_TABLE", "HandleCount") {
            let at = table + nt.offset("_HANDLE_TABLE", "HandleCount")?;
            return Ok(Some(u64::from(self.mem.u32(at)?)));
        }
        if !nt.has_field("_HANDLE_TABLE", "FreeLists") {
            return Ok(None);
        }
        let lists = match self.sym("ExpFreeListCount") {
            Ok(at) => u64::from(self.mem.u32(at)?),
            Err(_) => 1,
        };
        if lists == 0 || lists > MAX_FREE_LISTS {
            return Err(ModelError::Corrupt(format!(
                "nt!ExpFreeListCount is {lists} (1 to {MAX_FREE_LISTS})"
            )));
        }
        let first = nt.offset("_HANDLE_TABLE", "FreeLists")?;
        let size = nt.size_of("_HANDLE_TABLE_FREE_LIST")?;
        let count = nt.offset("_HANDLE_TABLE_FREE_LIST", "HandleCount")?;
        let bytes = self.mem.kread(table + first, (lists * size) as usize)?;
        let sum = (0..lists)
            .filter_map(|i| {
                let o = (i * size + count) as usize;
                bytes
                    .get(o..o + 4)
                    .map(|b| u64::from(u32::from_le_bytes(b.try_into().unwrap_or([0; 4]))))
            })
            .sum();
        Ok(Some(sum))
    }

    /// The threads of a process (EPROCESS.ThreadListHead).
    pub fn threads_of(
        &mut self,
        eprocess: u64,
    ) -> Result<(Vec<Thread>, Option<String>), ModelError> {
        let (views, note) = self.thread_views_of(eprocess)?;
        self.prefetch_wait_objects(&views);
        Ok((self.threads_from(views)?, note))
    }

    /// A process's ETHREADs as read from its thread list, not yet looked at.
    pub(crate) fn thread_views_of(
        &mut self,
        eprocess: u64,
    ) -> Result<(Vec<View>, Option<String>), ModelError> {
        let nt = self.nt()?;
        let head = eprocess + nt.offset("_EPROCESS", "ThreadListHead")?;
        let links = nt.offset("_ETHREAD", "ThreadListEntry")?;
        let size = nt.size_of("_ETHREAD")? as usize;
        let walk = self.walk_list(head, Some((links, size)), 100_000, false)?;
        let views = walk
            .entries
            .iter()
            .zip(walk.nodes)
            .map(|(entry, bytes)| View::new(nt.clone(), "_ETHREAD", entry - links, bytes))
            .collect();
        Ok((views, walk.note))
    }

    /// Threads from their ETHREADs.
    pub(crate) fn threads_from(&mut self, views: Vec<View>) -> Result<Vec<Thread>, ModelError> {
        views.into_iter().map(|v| self.thread_from(v)).collect()
    }

    /// A thread at an ETHREAD address.
    pub fn thread(&mut self, ethread: u64) -> Result<Thread, ModelError> {
        let v = self.view("_ETHREAD", ethread)?;
        let ty = v.get("Tcb.Header.Type")? as u8;
        if ty != 6 {
            return Err(ModelError::Corrupt(format!(
                "{ethread:#x} is not a thread (dispatcher type {ty})"
            )));
        }
        self.thread_from(v)
    }

    fn thread_from(&mut self, v: View) -> Result<Thread, ModelError> {
        let nt = v.table.clone();
        let state = v.get("Tcb.State")? as u8;
        let wait_reason = v.get("Tcb.WaitReason")? as u8;
        let wait_tick = v.get("Tcb.WaitTime")?;
        let (wait_ticks, wait_seconds) = if state == 5 {
            match self.clock() {
                Ok((now, inc)) => {
                    let t = now.saturating_sub(wait_tick) & 0xffff_ffff;
                    (Some(t), Some(t as f64 * inc as f64 / 1e7))
                }
                Err(_) => (None, None),
            }
        } else {
            (None, None)
        };
        let waits = if state == 5 {
            self.wait_objects(&v)?
        } else {
            Vec::new()
        };
        let process = v.get("Tcb.Process")?;
        let apc_process = v.get("Tcb.ApcState.Process")?;
        let irp_head = v.addr_of("IrpList")?;
        let irps = match self.walk_list(irp_head, None, 256, false) {
            Ok(w) => {
                if let Some(n) = &w.note {
                    self.note_incomplete(format!("IRP list of thread {:#x}: {n}", v.addr));
                }
                let off = nt.offset("_IRP", "ThreadListEntry")?;
                w.entries.iter().map(|e| e - off).collect()
            }
            Err(e) => {
                self.note_incomplete(format!("IRP list of thread {:#x} unreadable: {e}", v.addr));
                Vec::new()
            }
        };
        // Kernel-mode APCs queued (ApcListHead[KernelMode]): read only when the list is not
        // empty, which the thread's own bytes tell.
        let apc_head = v.addr_of("Tcb.ApcState.ApcListHead")?;
        let mut kernel_apcs = Vec::new();
        if v.get("Tcb.ApcState.ApcListHead")? != apc_head {
            let link = nt.offset("_KAPC", "ApcListEntry")?;
            let routine = nt.offset("_KAPC", "KernelRoutine")?;
            match self.walk_list(
                apc_head,
                Some((link, nt.size_of("_KAPC")? as usize)),
                64,
                false,
            ) {
                Ok(w) => {
                    if let Some(n) = &w.note {
                        self.note_incomplete(format!("APC list of thread {:#x}: {n}", v.addr));
                    }
                    for (e, bytes) in w.entries.iter().zip(&w.nodes) {
                        let r = bytes
                            .get(routine as usize..routine as usize + 8)
                            .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
                        kernel_apcs.push((e - link, r));
                    }
                }
                Err(e) => self
                    .note_incomplete(format!("APC list of thread {:#x} unreadable: {e}", v.addr)),
            }
        }
        Ok(Thread {
            kernel_apc_disable: v.get_signed("Tcb.KernelApcDisable")?,
            special_apc_disable: v.get_signed("Tcb.SpecialApcDisable")?,
            kernel_apcs,
            ethread: v.addr,
            process,
            pid: v.get("Cid.UniqueProcess")?,
            tid: v.get("Cid.UniqueThread")?,
            state,
            state_name: nt
                .enum_name("_KTHREAD_STATE", i64::from(state))
                .map(str::to_string)
                .unwrap_or_else(|| {
                    THREAD_STATES
                        .get(usize::from(state))
                        .unwrap_or(&"Unknown")
                        .to_string()
                }),
            wait_reason,
            wait_reason_name: nt
                .enum_name("_KWAIT_REASON", i64::from(wait_reason))
                .unwrap_or("Unknown")
                .to_string(),
            wait_mode: v.get("Tcb.WaitMode")? as u8,
            alertable: v.get("Tcb.Alertable")? != 0,
            wait_tick,
            wait_ticks,
            wait_seconds,
            waits,
            initial_stack: v.get("Tcb.InitialStack")?,
            stack_limit: v.get("Tcb.StackLimit")?,
            stack_base: v.get("Tcb.StackBase")?,
            kernel_stack: v.get("Tcb.KernelStack")?,
            stack_resident: v.get("Tcb.KernelStackResident")? != 0,
            teb: v.get("Tcb.Teb")?,
            win32_thread: v.get("Tcb.Win32Thread")?,
            start_address: v.get("StartAddress")?,
            win32_start_address: v.get("Win32StartAddress")?,
            priority: v.get_signed("Tcb.Priority")?,
            base_priority: v.get_signed("Tcb.BasePriority")?,
            context_switches: v.get("Tcb.ContextSwitches")?,
            kernel_time: v.get("Tcb.KernelTime")?,
            user_time: v.get("Tcb.UserTime")?,
            processor: v.get("Tcb.NextProcessor")?,
            attached_process: (apc_process != process && apc_process != 0).then_some(apc_process),
            irps,
            impersonation: (v.get("ActiveImpersonationInfo")? == 1)
                .then(|| v.get("ClientSecurity.ImpersonationData").ok())
                .flatten()
                .map(|d| (d & !7, d & 3)),
        })
    }

    /// A waiting thread's active wait blocks, (object, wait type): the 7601 chain through
    /// NextWaitBlock, or the 8.1+ array of WaitBlockCount blocks.
    fn active_waits(&mut self, v: &View) -> Result<Vec<(u64, u8)>, ModelError> {
        let nt = v.table.clone();
        let list = v.get("Tcb.WaitBlockList")?;
        if list == 0 {
            return Ok(Vec::new());
        }
        let wbsize = nt.size_of("_KWAIT_BLOCK")?;
        let active = nt.enum_value("_KWAIT_BLOCK_STATE", "WaitBlockActive")? as u64;
        let chained = nt.has_field("_KWAIT_BLOCK", "NextWaitBlock");
        let count = if chained {
            64
        } else {
            v.get("Tcb.WaitBlockCount")?.clamp(1, 64)
        };
        let mut out = Vec::new();
        let mut wb = list;
        for i in 0..count {
            let b = self.view("_KWAIT_BLOCK", wb)?;
            if b.get("BlockState")? == active {
                let object = b.get("Object")?;
                if object != 0 {
                    out.push((object, b.get("WaitType")? as u8));
                }
            }
            if chained {
                wb = b.get("NextWaitBlock")?;
                if wb == list || wb == 0 {
                    break;
                }
            } else {
                wb = list + (i + 1) * wbsize;
            }
        }
        Ok(out)
    }

    /// Reads ahead what looking at each of these threads reads one by one: the objects their
    /// waits are on (each read for its type), in as few requests as their pages allow. Objects
    /// on a thread's own stack are read with the stack and left out; what cannot be read here
    /// is read (and its failure told) when the thread is looked at.
    pub(crate) fn prefetch_wait_objects(&mut self, threads: &[View]) {
        let mut objects = Vec::new();
        for v in threads {
            if v.get("Tcb.State").ok() != Some(5) {
                continue;
            }
            let Ok(waits) = self.active_waits(v) else {
                continue;
            };
            let (limit, base) = (v.get_or("Tcb.StackLimit", 0), v.get_or("Tcb.StackBase", 0));
            objects.extend(
                waits
                    .into_iter()
                    .map(|w| w.0)
                    .filter(|o| !(limit..base).contains(o))
                    .map(|o| o & !7),
            );
        }
        objects.sort_unstable();
        objects.dedup();
        let _ = self.mem.gather_u64(&objects);
    }

    /// The objects of a waiting thread's active wait blocks, their types and (for mutants)
    /// owners.
    fn wait_objects(&mut self, v: &View) -> Result<Vec<WaitObject>, ModelError> {
        let nt = v.table.clone();
        let mut out = Vec::new();
        for (object, wait_type) in self.active_waits(v)? {
            // An object in a frame of the thread's own stack (a wait-chain entry's
            // event, a local event) is read with the stack from the saved RSP on:
            // whoever looks at the wait next walks that stack and reads around the
            // object, and one request brings all of it.
            let (limit, base, ks) = (
                v.get("Tcb.StackLimit")?,
                v.get("Tcb.StackBase")?,
                v.get("Tcb.KernelStack")?,
            );
            let on_stack = (limit..base).contains(&object)
                && (limit..=object).contains(&ks)
                && object - ks < 0x800;
            let ty = if on_stack {
                self.mem
                    .kread_ahead(ks, (object - ks + 1) as usize)
                    .map(|b| b.last().copied().unwrap_or(0))
            } else {
                self.mem.u8(object)
            };
            let ty = match ty {
                Ok(t) => t,
                Err(e) => {
                    self.note_incomplete(format!(
                                "the type of object {object:#x} waited on by thread {:#x} is unreadable: {e}",
                                v.addr
                            ));
                    0xff
                }
            };
            let owner = if ty == 2 {
                match self.mem.u64(object + nt.offset("_KMUTANT", "OwnerThread")?) {
                    Ok(o) => Some(o).filter(|o| *o != 0),
                    Err(e) => {
                        self.note_incomplete(format!(
                            "the owner of mutant {object:#x} is unreadable: {e}"
                        ));
                        None
                    }
                }
            } else {
                None
            };
            out.push(WaitObject {
                object,
                type_code: ty,
                // WinDbg's names for the dispatcher types.
                type_name: OBJECT_TYPES
                    .get(usize::from(ty))
                    .map(|n| n.to_string())
                    .or_else(|| {
                        nt.enum_name("_KOBJECTS", i64::from(ty))
                            .map(|n| n.trim_end_matches("Object").to_string())
                    })
                    .unwrap_or_else(|| "Unknown".to_string()),
                owner,
                wait_type,
            });
        }
        Ok(out)
    }

    /// The processors: KiProcessorBlock entries.
    pub fn processors(&mut self) -> Result<Vec<Processor>, ModelError> {
        let nt = self.nt()?;
        let n = match self.sym("KeNumberProcessors") {
            Ok(a) => self.mem.u32(a)?,
            Err(_) => self.mem.info().processors,
        }
        .clamp(1, 2048);
        let block = self.sym("KiProcessorBlock")?;
        let prcb_off = nt.offset("_KPCR", "Prcb")?;
        let mut out = Vec::new();
        // The whole pointer array in one read.
        let ptrs = self.mem.kread(block, 8 * n as usize)?;
        for i in 0..u64::from(n) {
            let o = 8 * i as usize;
            let prcb = u64::from_le_bytes(ptrs[o..o + 8].try_into().unwrap_or([0; 8]));
            if prcb == 0 {
                continue;
            }
            let v = self.view_prefix("_KPRCB", prcb, 0x40)?;
            out.push(Processor {
                number: v.get("Number")? as u32,
                kpcr: prcb - prcb_off,
                prcb,
                current: v.get("CurrentThread")?,
                next: v.get("NextThread")?,
                idle: v.get("IdleThread")?,
            });
        }
        Ok(out)
    }

    /// Reads only the first `len` bytes of a large structure.
    pub fn view_prefix(&mut self, ty: &str, addr: u64, len: usize) -> Result<View, ModelError> {
        let nt = self.nt()?;
        let bytes = self.mem.kread(addr, len)?;
        Ok(View::new(nt, ty, addr, bytes))
    }

    /// A processor's registers: from the target itself on a live session; from a dump, the
    /// CONTEXT saved in the processor's KPRCB (the header's context for processor 0 when the
    /// KPRCB cannot be read, as in a triage dump).
    pub fn processor_context(&mut self, n: u32) -> Result<kdnet_arch::Context, ModelError> {
        if self.mem.info().live {
            return Ok(self.mem.context(n)?);
        }
        let saved = self.processors().and_then(|cpus| {
            let prcb = cpus
                .iter()
                .find(|c| c.number == n)
                .map(|c| c.prcb)
                .ok_or(ModelError::Target(TargetError::NoSuchProcessor(n)))?;
            self.saved_context(prcb)
        });
        use kdnet_arch::Reg;
        match saved {
            // A KPRCB whose context frame was never filled (the processor stopped without saving
            // it there): the dump's own context record stands for the processor it was taken on.
            Ok(c) if n == 0 && c.reg(Reg::Rip) == 0 && c.reg(Reg::Rsp) == 0 => {
                Ok(self.mem.context(0).unwrap_or(c))
            }
            Ok(c) => Ok(c),
            Err(e) if n == 0 => self.mem.context(0).map_err(|_| e),
            Err(e) => Err(e),
        }
    }

    /// A processor's saved CONTEXT from its KPRCB (dumps, and every processor at a break-in).
    pub fn saved_context(&mut self, prcb: u64) -> Result<kdnet_arch::Context, ModelError> {
        let nt = self.nt()?;
        let at = prcb + nt.offset("_KPRCB", "ProcessorState.ContextFrame")?;
        let b = self.mem.kread(at, kdnet_arch::CONTEXT_LEN)?;
        kdnet_arch::Context::from_bytes(&b).map_err(|e| ModelError::Corrupt(e.to_string()))
    }
}

fn process_from(v: &View) -> Result<Process, ModelError> {
    let name = v.bytes_of("ImageFileName", 15)?;
    let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
    Ok(Process {
        eprocess: v.addr,
        pid: v.get("UniqueProcessId")?,
        name: String::from_utf8_lossy(&name[..end]).into_owned(),
        dtb: v.get("Pcb.DirectoryTableBase")?,
        parent: v.get("InheritedFromUniqueProcessId")?,
        peb: v.get("Peb")?,
        object_table: v.get("ObjectTable")?,
        session: v.get("Session")?,
        commit: v.get("CommitCharge")?,
    })
}
