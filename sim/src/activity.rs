//! What the running machine does: a scenario's thread calls real routines planted in its
//! images, at a set rate, executed instruction by instruction ([`crate::cpu`]) over the
//! machine's memory. A debugger's breakpoints, single steps and debug registers take effect
//! where the code meets them, and the stop reports the thread, processor and registers of the
//! moment.
//!
//! The `bindflt-race` machine: a container's opener thread, inside the filter manager's create
//! path (`FLTMGR!FltpCreate`), calls bindflt's pre-create routine for each relative open;
//! bindflt sets the IRP's status and completes it through `nt!IofCompleteRequest` (which
//! jumps to `nt!IopfCompleteRequest`, as Windows' does), and returns the status. About one open
//! in a thousand fails with STATUS_INVALID_PARAMETER; which ones is fixed by the create's
//! number ([`fails`]). One in 2,500 has its IRP completed twice ([`completes_twice`]): the
//! second `IofCompleteRequest` finds it completed (CurrentLocation past its last stack
//! location), which a conditional breakpoint catches before anything is corrupted.
//!
//! A container filter, `wcnfs.sys` (name virtualization, loaded as containers start and
//! unloaded when the last one goes), loads while the machine runs and unloads again, by turns:
//! unloaded for the first [`LOADS_EVERY`] creates, loaded for the next as many, and so on. Each
//! load and unload is reported to the debugger (a load-symbols state change) as Windows reports
//! them; while it is loaded each create first calls `wcnfs!WcnPreCreate`, then bindflt's
//! routine.

use iced_x86::code_asm::{CodeAssembler, byte_ptr, dword_ptr, eax, edx, qword_ptr, rax, rbx, rcx};

use crate::SimError;
use crate::cpu::{Bus, Cpu, Step};
use crate::image::{Frame, Gpr};
use crate::kernel::Kernel;
use crate::system::{IrpLocation, IrpSpec, System};

/// STATUS_INVALID_PARAMETER.
pub const STATUS_INVALID_PARAMETER: u32 = 0xC000_000D;

/// Whether create number `n` (from 0) fails with STATUS_INVALID_PARAMETER: one in a thousand,
/// spread by a hash of the number.
pub fn fails(n: u64) -> bool {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)).is_multiple_of(1000)
}

/// Creates between the container filter's loads and unloads.
pub const LOADS_EVERY: u64 = 4000;

/// What the activity met that stops the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Met {
    /// The processor stopped inside a call.
    Step(Step),
    /// The container filter loaded (true) or unloaded.
    Module(bool),
}

/// Whether create number `n` (from 0) has its IRP completed twice by bindflt's routine (a
/// driver bug of the kind that ends in bugcheck 0x44, MULTIPLE_IRP_COMPLETE_REQUESTS): one in
/// 2,500, at fixed places (so any 10,000 creates in a row hold exactly four).
pub fn completes_twice(n: u64) -> bool {
    n % 2500 == 1249
}

/// Instructions one call may run before it is taken for a runaway (a bound on every walk).
const MAX_STEPS: u32 = 10_000;

/// What the activity planted (for tests and the facts).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Planted {
    /// `bindflt!BfPreCreate`.
    pub pre_create: u64,
    /// `nt!IofCompleteRequest`.
    pub complete: u64,
    /// `nt!IopfCompleteRequest`.
    pub complete_worker: u64,
    /// The IRP every create uses.
    pub irp: u64,
    /// The thread that runs the creates (its ETHREAD) and the processor it runs on.
    pub thread: u64,
    /// The processor.
    pub cpu: u16,
    /// Where its call into bindflt returns (inside `FLTMGR!FltpCreate`).
    pub return_address: u64,
    /// Creates per second of the machine's running time.
    pub rate: u32,
    /// Offsets the routines use: IRP IoStatus.Status, StackCount, CurrentLocation.
    pub irp_status: u64,
    /// `_IRP.StackCount`.
    pub irp_stack_count: u64,
    /// `_IRP.CurrentLocation`.
    pub irp_current_location: u64,
    /// What bindflt's routine keeps in non-paged pool (what a test reads back through the
    /// debugger): creates it saw, those it failed with STATUS_INVALID_PARAMETER, those whose
    /// IRP it completed twice ([`completes_twice`]); then the flag that tells it the create
    /// under way is one of those.
    pub counters: u64,
    /// `wcnfs!WcnPreCreate` (called while the container filter is loaded).
    pub module_routine: u64,
    /// The container filter's index among the machine's modules.
    pub module: usize,
}

/// A call under way (stopped in the debugger or between polls).
#[derive(Debug, Clone)]
struct Running {
    cpu: Cpu,
    steps: u32,
    /// The create's number.
    n: u64,
    /// This is the container filter's call: bindflt's follows.
    then_bindflt: bool,
}

/// The activity of a machine.
#[derive(Debug, Clone)]
pub struct Activity {
    /// What was planted.
    pub planted: Planted,
    /// The opener thread's index.
    thread: usize,
    /// Entry RSP of each call (the slot holding the return address into FltpCreate).
    entry_rsp: u64,
    /// Creates started so far.
    pub started: u64,
    /// Creates that returned, and those that returned STATUS_INVALID_PARAMETER.
    pub finished: u64,
    /// Failed creates.
    pub failed: u64,
    current: Option<Running>,
    /// Processor state the debugger may have changed, applied when the call goes on.
    pub pending: Option<Cpu>,
    /// The container filter is loaded.
    pub loaded: bool,
}

/// The bytes of a function: `frame`'s prolog at `ip`, then what `body` assembles, then the
/// epilog that undoes the prolog and returns.
fn function(
    ip: u64,
    frame: &Frame,
    what: &str,
    body: impl FnOnce(&mut CodeAssembler) -> Result<(), iced_x86::IcedError>,
) -> Result<Vec<u8>, SimError> {
    let err = |e: iced_x86::IcedError| SimError::Config(format!("assembling {what}: {e}"));
    let (mut bytes, _) =
        crate::code::prolog(ip, frame.lead(), &frame.pushes, frame.alloc, &frame.saves)?;
    let mut a = CodeAssembler::new(64).map_err(err)?;
    body(&mut a).map_err(err)?;
    if frame.alloc > 0 {
        a.add(iced_x86::code_asm::rsp, frame.alloc as i32)
            .map_err(err)?;
    }
    for r in frame.pushes.iter().rev() {
        a.pop(crate::code::reg64(*r)).map_err(err)?;
    }
    a.ret().map_err(err)?;
    let rest = a.assemble(ip + bytes.len() as u64).map_err(err)?;
    bytes.extend(rest);
    Ok(bytes)
}

impl Activity {
    /// Plants the `bindflt-race` activity: its routines' frames (before the images are
    /// written) and its IRP; [`Activity::write_code`] writes the code after.
    pub fn bindflt(sys: &mut System, opener: usize) -> Result<Activity, SimError> {
        let (pre_create, _) = sys.function("bindflt", "BfPreCreate")?;
        // The container filter: its image mapped, not in the loader's list until it loads.
        let module = sys.add_module("wcnfs.sys", "wcnfs");
        sys.modules[module].listed = false;
        let (module_routine, _) = sys.function("wcnfs", "WcnPreCreate")?;
        let (complete, _) = sys.function("nt", "IofCompleteRequest")?;
        let (worker, _) = sys.function("nt", "IopfCompleteRequest")?;
        let t = &sys.threads[opener];
        let caller = t
            .frames
            .iter()
            .find(|(c, _, _)| c.function == "FltpCreate")
            .ok_or_else(|| SimError::Config("the opener thread is not in FltpCreate".into()))?;
        let entry_rsp = caller.2 - 8;
        let return_address = sys.k.r64(entry_rsp);
        let (ethread, cpu) = (t.ethread, t.cpu);
        let counters = sys.pool.alloc(
            &mut sys.k,
            crate::pool::PoolKind::NonPaged,
            32,
            crate::pool::tag("BfCt"),
        )?;
        let irp = sys.irp(&IrpSpec {
            locations: vec![IrpLocation::default(), IrpLocation::default()],
            current: 2,
            thread: Some(opener),
            flags: 0x884,
            status: (0x103, 0),
            requestor_mode: 1,
            ..IrpSpec::default()
        })?;
        Ok(Activity {
            planted: Planted {
                pre_create,
                complete,
                complete_worker: worker,
                irp,
                thread: ethread,
                cpu,
                return_address,
                rate: 2000,
                irp_status: sys.k.off("_IRP", "IoStatus.Status")?,
                irp_stack_count: sys.k.off("_IRP", "StackCount")?,
                irp_current_location: sys.k.off("_IRP", "CurrentLocation")?,
                counters,
                module_routine,
                module,
            },
            thread: opener,
            entry_rsp,
            started: 0,
            finished: 0,
            failed: 0,
            current: None,
            pending: None,
            loaded: false,
        })
    }

    /// Writes the routines' code over what the image writer put there (same prolog, so the
    /// unwind data still describes it).
    pub fn write_code(&self, sys: &mut System) -> Result<(), SimError> {
        let p = self.planted.clone();
        let frame_of = |sys: &mut System, m: &str, f: &str| sys.function(m, f).map(|x| x.1);
        let status = p.irp_status as i32;
        let info = status + 8;
        let stack_count = p.irp_stack_count as i32;
        let current = p.irp_current_location as i32;
        let complete = p.complete;
        let counters = p.counters;
        let f = frame_of(sys, "bindflt", "BfPreCreate")?;
        let code = function(p.pre_create, &f, "BfPreCreate", |a| {
            let mut ok = a.create_label();
            a.mov(rbx, rcx)?;
            a.mov(rax, counters)?;
            a.add(qword_ptr(rax), 1)?;
            a.cmp(edx, STATUS_INVALID_PARAMETER as i32)?;
            a.jne(ok)?;
            a.add(qword_ptr(rax + 8), 1)?;
            a.set_label(&mut ok)?;
            a.mov(dword_ptr(rcx + status), edx)?;
            a.mov(qword_ptr(rcx + info), 0)?;
            a.xor(edx, edx)?;
            a.mov(rax, complete)?;
            a.call(rax)?;
            // The bug: for some creates the IRP is completed a second time.
            let mut once = a.create_label();
            a.mov(rax, counters)?;
            a.cmp(qword_ptr(rax + 24), 0)?;
            a.je(once)?;
            a.add(qword_ptr(rax + 16), 1)?;
            a.mov(rcx, rbx)?;
            a.xor(edx, edx)?;
            a.mov(rax, complete)?;
            a.call(rax)?;
            a.set_label(&mut once)?;
            a.mov(eax, dword_ptr(rbx + status))?;
            Ok(())
        })?;
        if !f.pushes.contains(&Gpr::Rbx) {
            return Err(SimError::Config(
                "BfPreCreate's frame does not save rbx".into(),
            ));
        }
        sys.k.write(p.pre_create, &code);
        // The container filter's routine looks at the IRP and lets the create go on.
        let f = frame_of(sys, "wcnfs", "WcnPreCreate")?;
        let code = function(p.module_routine, &f, "WcnPreCreate", |a| {
            a.mov(eax, dword_ptr(rcx + status))?;
            Ok(())
        })?;
        sys.k.write(p.module_routine, &code);
        let f = frame_of(sys, "nt", "IopfCompleteRequest")?;
        let code = function(p.complete_worker, &f, "IopfCompleteRequest", |a| {
            // Completed: no stack location holds it any more.
            a.movzx(eax, byte_ptr(rcx + stack_count))?;
            a.add(eax, 1)?;
            a.mov(byte_ptr(rcx + current), iced_x86::code_asm::al)?;
            Ok(())
        })?;
        sys.k.write(p.complete_worker, &code);
        // IofCompleteRequest is the exported stub that jumps to the worker.
        let mut a = CodeAssembler::new(64).map_err(|e| SimError::Config(e.to_string()))?;
        a.jmp(p.complete_worker)
            .map_err(|e| SimError::Config(e.to_string()))?;
        let stub = a
            .assemble(p.complete)
            .map_err(|e| SimError::Config(e.to_string()))?;
        sys.k.write(p.complete, &stub);
        Ok(())
    }

    /// The opener thread's index.
    pub fn thread(&self) -> usize {
        self.thread
    }

    /// Whether a call is under way (stopped inside it).
    pub fn in_call(&self) -> bool {
        self.current.is_some()
    }

    /// The processor state of the call under way.
    pub fn cpu(&self) -> Option<&Cpu> {
        self.current.as_ref().map(|r| &r.cpu)
    }

    /// Runs creates until `due` have started and finished, or something stops the processor
    /// (returned with the step that stopped it; the call stays under way), or the container
    /// filter loads or unloads (before the create that finds it so).
    pub fn run(&mut self, k: &mut Kernel, due: u64, dr7: u64, dr: [u64; 4]) -> Option<Met> {
        loop {
            if self.current.is_none() {
                if self.started >= due {
                    return None;
                }
                let n = self.started;
                let loaded = self.planted.module_routine != 0 && (n / LOADS_EVERY) % 2 == 1;
                if loaded != self.loaded {
                    self.loaded = loaded;
                    return Some(Met::Module(loaded));
                }
                self.started += 1;
                // The opener's state for the call: rcx the IRP, edx the status bindflt
                // decided, the return address into FltpCreate on its stack.
                let p = &self.planted;
                k.w8(p.irp + p.irp_current_location, 2);
                k.w32(p.irp + p.irp_status, 0x103);
                k.w64(p.counters + 24, u64::from(completes_twice(n)));
                self.current = Some(call(&self.planted, self.entry_rsp, n, loaded, dr7, dr));
            }
            let r = self.current.as_mut().expect("set above");
            if let Some(c) = self.pending.take() {
                r.cpu = c;
            }
            let mut bus = KernelBus {
                k,
                pages: std::collections::HashMap::new(),
            };
            loop {
                if r.cpu.rip == self.planted.return_address && r.cpu.rsp() == self.entry_rsp + 8 {
                    if r.then_bindflt {
                        // The container filter's routine returned: bindflt's is called next.
                        let (n, dr7, dr) = (r.n, r.cpu.dr7, r.cpu.dr);
                        *r = call(&self.planted, self.entry_rsp, n, false, dr7, dr);
                        continue;
                    }
                    self.finished += 1;
                    if r.cpu.regs[0] as u32 == STATUS_INVALID_PARAMETER {
                        self.failed += 1;
                    }
                    self.current = None;
                    break;
                }
                if r.steps >= MAX_STEPS {
                    let at = r.cpu.rip;
                    self.current = None;
                    return Some(Met::Step(Step::Fault(format!(
                        "the create ran {MAX_STEPS} instructions without returning (at {at:#x})"
                    ))));
                }
                r.steps += 1;
                match r.cpu.step(&mut bus) {
                    Step::Ran => {}
                    s => return Some(Met::Step(s)),
                }
            }
        }
    }
}

/// The call for create `n`: the container filter's routine first while it is loaded, else
/// bindflt's.
fn call(p: &Planted, entry_rsp: u64, n: u64, filter: bool, dr7: u64, dr: [u64; 4]) -> Running {
    let entry = if filter {
        p.module_routine
    } else {
        p.pre_create
    };
    let mut cpu = Cpu::new(entry, entry_rsp);
    cpu.regs[1] = p.irp;
    cpu.regs[2] = if fails(n) {
        u64::from(STATUS_INVALID_PARAMETER)
    } else {
        0
    };
    cpu.dr7 = dr7;
    cpu.dr = dr;
    Running {
        cpu,
        steps: 0,
        n,
        then_bindflt: filter,
    }
}

/// The kernel's memory as the processor sees it, each page translated once per run (the
/// mapping does not change while the processor runs).
struct KernelBus<'a> {
    k: &'a mut Kernel,
    pages: std::collections::HashMap<u64, Option<u64>>,
}

impl KernelBus<'_> {
    fn frame(&mut self, va: u64) -> Option<u64> {
        let page = va & !0xfff;
        if let Some(p) = self.pages.get(&page) {
            return *p;
        }
        let pa = self.k.space.translate(&self.k.mem, page).ok();
        self.pages.insert(page, pa);
        pa
    }

    /// The pieces of `[va, va + len)` within pages: (physical address, offset in the buffer,
    /// length); None when a page is not mapped.
    fn pieces(&mut self, va: u64, len: usize) -> Option<Vec<(u64, usize, usize)>> {
        let mut out = Vec::new();
        let mut done = 0;
        while done < len {
            let a = va.wrapping_add(done as u64);
            let n = (len - done).min(0x1000 - (a & 0xfff) as usize);
            out.push((self.frame(a)? + (a & 0xfff), done, n));
            done += n;
        }
        Some(out)
    }
}

impl Bus for KernelBus<'_> {
    fn read(&mut self, va: u64, buf: &mut [u8]) -> bool {
        let Some(pieces) = self.pieces(va, buf.len()) else {
            return false;
        };
        for (pa, at, n) in pieces {
            if self.k.mem.read(pa, &mut buf[at..at + n]) != n {
                return false;
            }
        }
        true
    }
    fn write(&mut self, va: u64, data: &[u8]) -> bool {
        let Some(pieces) = self.pieces(va, data.len()) else {
            return false;
        };
        for (pa, at, n) in pieces {
            self.k.mem.write(pa, &data[at..at + n]);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn about_one_create_in_a_thousand_fails() {
        let n = (0..100_000).filter(|&i| fails(i)).count();
        assert!((70..=130).contains(&n), "{n}");
    }
}
