//! The hang scenarios, each from a real report, on a common base system.

mod base;
mod bindflt_race;
mod bugcheck;
mod deadlock;
mod dpc_watchdog;
mod facts;
mod healthy;
mod io_base;
mod irp_double;
mod mm;
mod nbl_hang;
mod pool_corruption;
mod service_exception;
mod stacks;
mod verifier_apc;
mod watchdog_1ca;

pub use base::MODULES;
pub use bugcheck::write_bugcheck;
pub use facts::{
    Corruption, Deadlock, Facts, HeldLock, IoFacts, NamedDevice, PendedCreate, PlantedException,
    PlantedIrp, PlantedTimer, StuckDpc,
};
pub use irp_double::PULLS;
pub use mm::MmFigures;
pub use service_exception::WINFSP;
pub use verifier_apc::{VERIFIED_DRIVER, VERIFIER_LEVEL, VerifierFacts};
pub use watchdog_1ca::WatchdogFacts;

use kdnet::api::GetVersion64;

use crate::SimError;
use crate::ndis::{self, NdisSetup};
use crate::system::{System, ThreadState};
use crate::{SimConfig, layout};

use base::base_system;
use bindflt_race::bindflt_race;
use bugcheck::bugcheck;
use deadlock::deadlock;
use dpc_watchdog::dpc_watchdog;
use healthy::healthy;
use io_base::io_base;
use irp_double::irp_double_complete;
use mm::write_mm;
use nbl_hang::nbl_hang;
use pool_corruption::pool_corruption;
use service_exception::service_exception;
use stacks::{stack, user_tail, waiting};
use verifier_apc::verifier_apc;
use watchdog_1ca::watchdog_1ca;

/// ERESOURCEs in existence in the reported PnP/NBL hang.
pub const NBL_HANG_RESOURCES: u32 = 84_372;
/// Most IRPs [`SimConfig::irps`] adds.
pub const MAX_EXTRA_IRPS: u32 = 200_000;

/// Commit requests that failed in the reported commit exhaustion.
pub const COMMIT_FAILURES: u64 = 48_440;

/// The scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// A PnP remove blocked on a NIC miniport holding every NBL.
    NblHang,
    /// Commit exhausted: charges failing, page file at its maximum.
    CommitFailures,
    /// A driver overran a pool allocation into the next one's header.
    PoolCorruption,
    /// Two workers each own a resource the other waits for.
    Deadlock,
    /// A fatal error: 0x44 MULTIPLE_IRP_COMPLETE_REQUESTS.
    Bugcheck,
    /// Busy but fine.
    Healthy,
    /// 0x44 on a container host pulling twenty images: an IRP CimFS completed twice, twenty
    /// reads pending below the filters.
    IrpDoubleComplete,
    /// Relative-path creates in a process-isolated container racing through bindflt; one
    /// pended in bindflt's pre-create.
    BindfltRace,
    /// Driver Verifier's I/O verification on a driver whose image-load notification routine
    /// reads with special kernel APCs disabled: its read's completion APC can never run.
    VerifierApc,
    /// 0x3B SYSTEM_SERVICE_EXCEPTION: a file system's close path read through a freed
    /// pointer (WinFsp's FspPropagateTopFlags ← FspClose ← IRP_MJ_CLOSE).
    ServiceException,
    /// 0x133 DPC_WATCHDOG_VIOLATION: a storage miniport's DPC spinning past its time allotment
    /// on processor 0.
    DpcWatchdog,
    /// 0x1CA SYNTHETIC_WATCHDOG_TIMEOUT on a container host pulling images: the clock
    /// processor spinning with interrupts off for a spin lock in CimFS.
    Watchdog1ca,
}

impl Scenario {
    /// All scenarios.
    pub const ALL: [Scenario; 12] = [
        Scenario::NblHang,
        Scenario::CommitFailures,
        Scenario::PoolCorruption,
        Scenario::Deadlock,
        Scenario::Bugcheck,
        Scenario::Healthy,
        Scenario::IrpDoubleComplete,
        Scenario::BindfltRace,
        Scenario::VerifierApc,
        Scenario::ServiceException,
        Scenario::DpcWatchdog,
        Scenario::Watchdog1ca,
    ];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::NblHang => "nbl-hang",
            Scenario::CommitFailures => "commit-failures",
            Scenario::PoolCorruption => "pool-corruption",
            Scenario::Deadlock => "deadlock",
            Scenario::Bugcheck => "bugcheck",
            Scenario::Healthy => "healthy",
            Scenario::IrpDoubleComplete => "irp-double-complete",
            Scenario::BindfltRace => "bindflt-race",
            Scenario::VerifierApc => "verifier-apc",
            Scenario::ServiceException => "service-exception",
            Scenario::DpcWatchdog => "dpc-watchdog",
            Scenario::Watchdog1ca => "watchdog-1ca",
        }
    }

    /// By name.
    pub fn parse(s: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|x| x.name() == s)
    }

    /// Whether the scenario can begin after a healthy period.
    pub fn can_delay(self) -> bool {
        !matches!(self, Scenario::Healthy) && !self.bugchecks()
    }

    /// Whether the machine stops with a bugcheck.
    pub fn bugchecks(self) -> bool {
        matches!(
            self,
            Scenario::Bugcheck
                | Scenario::IrpDoubleComplete
                | Scenario::ServiceException
                | Scenario::DpcWatchdog
                | Scenario::Watchdog1ca
        )
    }
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
/// What the kernel prints to the debugger as it stops with a bugcheck.
fn fatal_banner(code: u32, p: [u64; 4]) -> String {
    format!(
        "\n*** Fatal System Error: 0x{code:08x}\n                       (0x{:016X},0x{:016X},0x{:016X},0x{:016X})\n\n",
        p[0], p[1], p[2], p[3]
    )
}

/// Fills the resource list to `total` with unheld pool resources.
fn fill_resources(sys: &mut System, total: u32) -> Result<(), SimError> {
    while (sys.resources.len() as u32) < total {
        sys.resource()?;
    }
    Ok(())
}

/// Builds the machine for `config`: the system, what was planted, the GetVersion block.
pub fn build(config: &SimConfig) -> Result<(System, Facts, GetVersion64), SimError> {
    let nt = layout::load(config.build, &config.table)?;
    build_with_table(config, nt)
}

/// Builds the machine with an already loaded nt table.
pub fn build_with_table(
    config: &SimConfig,
    nt: kdnet_symbols::TypeTable,
) -> Result<(System, Facts, GetVersion64), SimError> {
    let (mut sys, base) = base_system(config, nt)?;
    sys.booted_nodebug = config.booted_nodebug;
    let mut io = io_base(&mut sys, &base.user_procs)?;
    let mut facts = Facts {
        scenario: config.scenario.name().into(),
        build: config.build,
        heartbeat: String::new(),
        ..Facts::default()
    };
    let mut mm = MmFigures::healthy();
    let mut commits: Vec<(usize, u64)> = base
        .user_procs
        .iter()
        .enumerate()
        .map(|(i, p)| (*p, 900 + 613 * i as u64))
        .collect();
    let mut ndis_setup = NdisSetup {
        tracking: false,
        hang: false,
    };
    let resources_wanted = config.resources.max(sys.resources.len() as u32 + 64);
    match config.scenario {
        Scenario::NblHang => {
            ndis_setup = NdisSetup {
                tracking: true,
                hang: true,
            };
            nbl_hang(&mut sys, &base, &mut facts)?;
            // The NIC's device node is being removed.
            let queried = sys
                .k
                .enum_value("_PNP_DEVNODE_STATE", "DeviceNodeQueryRemoved")?;
            let started = sys
                .k
                .enum_value("_PNP_DEVNODE_STATE", "DeviceNodeStarted")?;
            sys.k
                .set(io.nic_devnode, "_DEVICE_NODE", "State", queried as u64)?;
            sys.k.set(
                io.nic_devnode,
                "_DEVICE_NODE",
                "PreviousState",
                started as u64,
            )?;
            facts.heartbeat = "ndis: miniport \"My Ethernet 1Gb 4-port Adapter\" pause pending: waiting for 1854 outstanding send NBLs\n".into();
            facts.prints_when_hung = vec!["PnP: query-remove of PCI\\VEN_8086&DEV_1521 vetoed? no — removal in progress, waiting for NDIS bindings to close\n".into()];
        }
        Scenario::CommitFailures => {
            mm = MmFigures::exhausted();
            let hog =
                sys.new_process("leakyapp.exe", None, sys.processes[base.user_procs[3]].pid)?;
            let ev = sys.event("EventNotificationObject", "Even")?;
            let mut calls = waiting(&[
                "nt!KeWaitForSingleObject+0x233",
                "nt!NtWaitForSingleObject+0x118",
            ]);
            calls.extend(stack(&user_tail()));
            let t = sys.new_thread(
                hog,
                "nt!KiStartSystemThread",
                &calls,
                ThreadState::Waiting,
                0,
            )?;
            sys.wait(t, &[ev], "UserRequest", 12)?;
            commits.push((hog, 6_512_003));
            facts.heartbeat = "Memory: commit charge at limit (8175615 / 8175677 pages)\n".into();
        }
        Scenario::PoolCorruption => {
            facts.corruption = Some(pool_corruption(&mut sys)?);
            // Verifier's view: special pool (level 0x1) for the driver that overran.
            verifier_apc::verify(&mut sys, 0x1, "acmeflt.sys")?;
            mm.special_pool = 2;
        }
        Scenario::Deadlock => {
            facts.deadlock = Some(deadlock(&mut sys, &base, &mut facts)?);
            facts.heartbeat =
                "vmcompute: container 5f1c0a: waiting for CimFS mount (retry 3)\n".into();
        }
        Scenario::Bugcheck => {
            let (code, params) = bugcheck(&mut sys, &base)?;
            facts.bugcheck = Some((code, params));
            facts.prints_when_hung = vec![fatal_banner(code, params)];
        }
        Scenario::IrpDoubleComplete => {
            let (code, params) = irp_double_complete(&mut sys, &base, &mut io)?;
            facts.bugcheck = Some((code, params));
            facts.prints_when_hung = vec![fatal_banner(code, params)];
        }
        Scenario::ServiceException => {
            let (x, code, params) = service_exception(&mut sys, &base, &mut io)?;
            facts.exception = Some(x);
            facts.bugcheck = Some((code, params));
            facts.prints_when_hung = vec![fatal_banner(code, params)];
        }
        Scenario::Watchdog1ca => {
            let (w, code, params) = watchdog_1ca(&mut sys, &base)?;
            facts.watchdog = Some(w);
            facts.bugcheck = Some((code, params));
            facts.prints_when_hung = vec![fatal_banner(code, params)];
        }
        Scenario::DpcWatchdog => {
            let (d, code, params) = dpc_watchdog(&mut sys, &base)?;
            facts.stuck_dpc = Some(d);
            facts.bugcheck = Some((code, params));
            facts.prints_when_hung = vec![fatal_banner(code, params)];
        }
        Scenario::BindfltRace => {
            bindflt_race(&mut sys, &base, &mut io, &mut facts)?;
            facts.heartbeat =
                "dotnet: open of config\\settings7.json relative to the current directory failed: 0xC000000D (STATUS_INVALID_PARAMETER)\n".into();
        }
        Scenario::VerifierApc => {
            let v = verifier_apc(&mut sys, &base, &io)?;
            facts.left_out.extend(v.left_out.iter().cloned());
            facts.verifier = Some(v);
            facts.heartbeat = "setup: still waiting for image load of payload.dll\n".into();
        }
        Scenario::Healthy => {
            healthy(&mut sys, &base)?;
            facts.heartbeat = "svchost: periodic maintenance finished\n".into();
        }
    }
    io_base::extra_irps(&mut sys, &mut io, config.irps.min(MAX_EXTRA_IRPS))?;
    // A scenario's worker threads are busy with their items.
    facts.busy_workers = sys.attach_busy_workers(&base.work_queues[0])?;
    facts.work_queues = base.work_queues.iter().map(|q| q.address).collect();
    facts.work_items = base.work_items.clone();
    facts.ready = base.ready.clone();
    facts.dpcs = base.dpcs.clone();
    facts.timers = base.timers.clone();
    io.facts.nic_state = if config.scenario == Scenario::NblHang {
        "DeviceNodeQueryRemoved".into()
    } else {
        "DeviceNodeStarted".into()
    };
    facts.io = io.facts;
    facts.nbl_tracking = ndis_setup.tracking;
    facts.ndis = ndis::build(&mut sys, ndis_setup)?;
    fill_resources(&mut sys, resources_wanted)?;
    facts.total_resources = sys.resources.len() as u32;
    facts.commit_failures = u64::from(mm.failures[0]) + u64::from(mm.failures[1]);
    facts.committed = mm.committed;
    facts.commit_limit = mm.limit;
    facts.left_out.extend(write_mm(&mut sys, &mm, &commits)?);
    facts.families = sys.k.families.why.clone();
    let version = sys.finish()?;
    if let Some(a) = sys.activity.clone() {
        a.write_code(&mut sys)?;
        facts.activity = Some(a.planted.clone());
    }
    facts.processes = sys
        .processes
        .iter()
        .map(|p| (p.eprocess, p.pid, p.name.clone()))
        .collect();
    facts.process_details = sys.processes.iter().map(|p| p.details.clone()).collect();
    facts.impersonating = sys.impersonating;
    facts.threads = sys.threads.len();
    facts.processors = sys.cpus.len();
    facts.paged_out = base.paged_out.clone();
    facts.transition = base.transition.clone();
    facts.not_resident = sys.k.not_resident.iter().map(|(&v, &n)| (v, n)).collect();
    facts.invalid_pte_mask = sys.k.invalid_pte_mask;
    facts.swapped_stack_thread = base.swapped;
    Ok((sys, facts, version))
}
