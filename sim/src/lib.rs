//! A simulated Windows kernel target for kdnet.
//!
//! The machine's memory is laid out from a real kernel symbol table (Volatility 3 ISF): every
//! structure is placed with the field offsets and global addresses of that table. It holds real
//! x64 page tables, a kernel image whose CodeView record names the table's PDB, `.pdata`/`.xdata`
//! for the functions on its threads' stacks, a `KdDebuggerDataBlock` (plain, as under a
//! debugger, or encoded), processes, threads, executive resources, pool, memory-manager
//! counters and NDIS state, arranged into the hang scenarios users report. It answers the KD
//! protocol through [`kdnet::target`].
//!
//! What is the simulator's own (not from a kernel table) is documented where it is built:
//! `KDDEBUGGER_DATA64` (public SDK layout, see `kdnet_symbols::builtin`), the modules other than
//! nt and ndis.sys (invented images with exports), and choices the facts leave open (pool
//! in-use bit, resource wait chains on 17763+, how NDIS keeps its NBL pools: see [`ndis`]).
//! ndis.sys is laid out with a real ndis.pdb's types (the project's copy of that layout).

pub mod activity;
pub mod code;
pub mod cpu;
pub mod families;
pub mod fltmgr;
pub mod image;
pub mod kernel;
pub mod layout;
pub mod machine;
pub mod mem;
pub mod ndis;
pub mod pool;
pub mod scenario;
pub mod symbols;
pub mod system;

use std::path::PathBuf;
use std::time::Duration;

pub use machine::Machine;
pub use scenario::Scenario;

/// Errors building a simulated machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// The symbol table lacks something the simulator needs, or could not be read.
    #[error("symbol table: {0}")]
    Symbols(#[from] kdnet_symbols::SymError),
    /// A setting makes no sense.
    #[error("{0}")]
    Config(String),
}

/// Where the kernel layout comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableSource {
    /// The compact table the project carries (build 20348 only).
    Builtin,
    /// An ISF file.
    File(PathBuf),
    /// A directory holding `ntkrnlmp.pdb/<GUID>-<age>.json[.xz]` tables (found by build).
    Dir(PathBuf),
}

/// How to build the machine.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Windows build the machine reports, whose real table is used: one of
    /// [`layout::KNOWN_BUILDS`] from a table directory, any with an explicit table.
    pub build: u32,
    /// Where the layout comes from.
    pub table: TableSource,
    /// The scenario.
    pub scenario: Scenario,
    /// Processors.
    pub cpus: u16,
    /// Executive resources in existence (84,372 in the reported nbl-hang).
    pub resources: u32,
    /// Run healthy this long, then the scenario's hang begins.
    pub hang_after: Option<Duration>,
    /// For the bugcheck scenario: stop with the bugcheck this long after start.
    pub bugcheck_after: Option<Duration>,
    /// Seed of every random choice (keys, addresses jitter).
    pub seed: u64,
    /// How often the running machine prints its scenario's line (as a busy kernel's drivers do).
    pub print_every: Duration,
    /// The machine booted without a kernel debugger (its memory read some other way, as from a
    /// raw memory image): the kernel encoded its debugger data block at boot (9200 and later)
    /// and `KdpBootedNodebug` says so. A machine booted with the debugger, as every KDNET
    /// target is, keeps the block plain.
    pub booted_nodebug: bool,
    /// IRPs in flight beyond the scenario's own: reads pending in NTFS on the system volume,
    /// in non-paged pool with the IRP tag and on no thread's list (at most
    /// [`scenario::MAX_EXTRA_IRPS`]).
    pub irps: u32,
    /// The machine bugchecks with this code in the instant a debugger breaks in for the n-th
    /// time (from 1), and the bugcheck's stop is what the debugger gets (the race every
    /// debugger that breaks in meets now and then, made to happen at will).
    pub bugcheck_at_break_in: Option<(u32, u64)>,
}

impl SimConfig {
    /// The demo configuration: built-in table, nbl-hang, 4 processors.
    pub fn demo() -> SimConfig {
        SimConfig {
            build: 20348,
            table: TableSource::Builtin,
            scenario: Scenario::NblHang,
            cpus: 4,
            resources: scenario::NBL_HANG_RESOURCES,
            hang_after: None,
            bugcheck_after: None,
            seed: 0x006b_646e_6574,
            print_every: Duration::from_secs(10),
            booted_nodebug: false,
            irps: 0,
            bugcheck_at_break_in: None,
        }
    }
}

/// A simulated machine serving KDNET.
#[derive(Debug)]
pub struct Running {
    /// The target end.
    pub target: kdnet::target::TargetHandle,
    /// What the scenario planted.
    pub facts: scenario::Facts,
    /// The impaired link in front of it, if any.
    pub relay: Option<kdnet::link::Relay>,
    /// How long building the machine took.
    pub build_time: Duration,
}

/// Builds the machine for `config` and starts serving it as a KDNET target configured by
/// `target` (its `host` is the debugger's address). With `link`, traffic goes through an
/// impaired relay.
pub async fn start(
    config: SimConfig,
    mut target: kdnet::target::TargetConfig,
    link: Option<kdnet::link::LinkConfig>,
) -> Result<Running, StartError> {
    let t = std::time::Instant::now();
    let machine = tokio::task::spawn_blocking(move || Machine::build(config))
        .await
        .map_err(|e| StartError::Build(SimError::Config(e.to_string())))??;
    let build_time = t.elapsed();
    let facts = machine.facts().clone();
    let relay = match link {
        Some(l) => {
            let r = kdnet::link::Relay::start(l, target.host)
                .await
                .map_err(StartError::Io)?;
            target.host = r.target_side();
            Some(r)
        }
        None => None,
    };
    let handle = kdnet::target::TargetHandle::spawn(target, Box::new(machine))
        .await
        .map_err(StartError::Io)?;
    Ok(Running {
        target: handle,
        facts,
        relay,
        build_time,
    })
}

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Building the machine failed.
    #[error("building the simulated machine: {0}")]
    Build(#[from] SimError),
    /// The network end failed.
    #[error("network: {0}")]
    Io(std::io::Error),
}
