//! `kdnet sim`: a simulated Windows target booted with network debugging.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use kdnet::link::LinkConfig;
use kdnet::target::TargetConfig;
use kdnet::wire::Key;
use kdnet_sim::{Scenario, SimConfig, TableSource};

use crate::connect::KeyArgs;
use crate::{duration, exit};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The debugger's address (bcdedit hostip:/port:).
    #[arg(long, default_value = "127.0.0.1:50000")]
    host: SocketAddr,
    /// The key (`--key-file`, `--key-env` or `--key`); without one a random key is made and
    /// printed.
    #[command(flatten)]
    keys: KeyArgs,
    /// Windows build the machine reports. Without it: the build of the `--isf` table (told by
    /// its PDB's GUID, for the builds the project knows), otherwise 20348 (the built-in table,
    /// or the table for 20348 under `--symbols`).
    #[arg(long)]
    build: Option<u32>,
    /// A Volatility 3 symbol table (ISF) for the kernel.
    #[arg(long)]
    isf: Option<PathBuf>,
    /// A directory of tables laid out as ntkrnlmp.pdb/<GUID>-<age>.json.xz.
    #[arg(long)]
    symbols: Option<PathBuf>,
    /// nbl-hang, commit-failures, pool-corruption, deadlock, bugcheck, healthy,
    /// irp-double-complete, bindflt-race, verifier-apc, service-exception, dpc-watchdog or
    /// watchdog-1ca.
    #[arg(long, default_value = "nbl-hang")]
    scenario: String,
    /// Processors.
    #[arg(long, default_value_t = 4)]
    cpus: u16,
    /// Executive resources in existence.
    #[arg(long, default_value_t = kdnet_sim::scenario::NBL_HANG_RESOURCES)]
    resources: u32,
    /// IRPs in flight beyond the scenario's own: reads pending in NTFS on the system volume,
    /// each in non-paged pool with the IRP tag (to see `!irpfind` at scale).
    #[arg(long, default_value_t = 0)]
    irps: u32,
    /// Run healthy for this long, then the scenario begins.
    #[arg(long, value_parser = duration::parse)]
    hang_after: Option<Duration>,
    /// For the bugcheck scenario: crash this long after start.
    #[arg(long = "after", value_parser = duration::parse)]
    bugcheck_after: Option<Duration>,
    /// Bugcheck with this code (hex) in the instant a debugger first breaks in: the debugger
    /// gets the bugcheck's stop for its break-in (the race, on demand).
    #[arg(long, value_parser = hex_u32)]
    bugcheck_at_break_in: Option<u32>,
    /// How often the running machine prints its scenario's DbgPrint line.
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
    print_every: Duration,
    /// Reboot this long after start.
    #[arg(long, value_parser = duration::parse)]
    reboot_after: Option<Duration>,
    /// Drop datagrams larger than this (a stack that sends one frame at most).
    #[arg(long)]
    max_datagram: Option<usize>,
    /// One-way link latency.
    #[arg(long, value_parser = duration::parse)]
    latency: Option<Duration>,
    /// Extra random delay per datagram, up to this.
    #[arg(long, value_parser = duration::parse)]
    jitter: Option<Duration>,
    /// Probability a datagram is lost.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Probability a datagram is duplicated.
    #[arg(long, default_value_t = 0.0)]
    duplicate: f64,
    /// Probability a datagram is held back so later ones pass it.
    #[arg(long, default_value_t = 0.0)]
    reorder: f64,
    /// Seed of the machine and the link.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Local address to send from.
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_parser = duration::parse)]
    duration: Option<Duration>,
}

fn probability(name: &str, p: f64) -> anyhow::Result<f64> {
    anyhow::ensure!((0.0..=1.0).contains(&p), "--{name} must be between 0 and 1");
    Ok(p)
}

pub async fn run(a: Args) -> anyhow::Result<u8> {
    let Some(scenario) = Scenario::parse(&a.scenario) else {
        eprintln!(
            "kdnet sim: unknown scenario {:?}; choose one of {}",
            a.scenario,
            Scenario::ALL.map(|s| s.name()).join(", ")
        );
        return Ok(exit::BAD_ARGUMENTS);
    };
    let key = match a.keys.given(None) {
        Ok(Some(k)) => k,
        Ok(None) => {
            let k = Key::from_bytes(kdnet::rng::os_random_32());
            outln!("key: {} (made for this run)", k.to_key_string());
            k
        }
        Err(e) => {
            eprintln!("kdnet sim: {e}");
            return Ok(exit::BAD_ARGUMENTS);
        }
    };
    let table = match (&a.isf, &a.symbols) {
        (Some(p), _) => TableSource::File(p.clone()),
        (None, Some(d)) => TableSource::Dir(d.clone()),
        (None, None) => TableSource::Builtin,
    };
    // The build: given, or the table's own when the project knows its PDB.
    let (build, told) = match (a.build, &a.isf) {
        (Some(b), _) => (b, "given"),
        (None, Some(p)) => {
            let t = match kdnet_symbols::isf::load_file(p) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("kdnet sim: {}: {e}", p.display());
                    return Ok(exit::BAD_ARGUMENTS);
                }
            };
            match kdnet_sim::layout::build_of(&t) {
                Some(b) => (b, "the table's PDB GUID"),
                None => {
                    eprintln!(
                        "kdnet sim: {} is a table of a build the project does not know by its PDB GUID ({}): give --build N",
                        p.display(),
                        t.id.as_ref()
                            .map(|i| format!("{}-{}", i.guid, i.age))
                            .unwrap_or_else(|| "none".into())
                    );
                    return Ok(exit::BAD_ARGUMENTS);
                }
            }
        }
        (None, None) => (20348, "default"),
    };
    let config = SimConfig {
        build,
        table,
        scenario,
        cpus: a.cpus.clamp(1, 64),
        resources: a.resources,
        hang_after: a.hang_after,
        bugcheck_after: a.bugcheck_after,
        seed: a.seed,
        print_every: a.print_every,
        booted_nodebug: false,
        irps: a.irps.min(kdnet_sim::scenario::MAX_EXTRA_IRPS),
        bugcheck_at_break_in: a.bugcheck_at_break_in.map(|code| (code, 1)),
    };
    let link = if a.latency.is_some()
        || a.jitter.is_some()
        || a.loss > 0.0
        || a.duplicate > 0.0
        || a.reorder > 0.0
    {
        Some(LinkConfig {
            latency: a.latency.unwrap_or_default(),
            jitter: a.jitter.unwrap_or_default(),
            loss: probability("loss", a.loss)?,
            duplicate: probability("duplicate", a.duplicate)?,
            reorder: probability("reorder", a.reorder)?,
            corrupt: 0.0,
            seed: a.seed,
        })
    } else {
        None
    };
    let mut tc = TargetConfig::new(a.bind, a.host, key);
    tc.max_datagram = a.max_datagram;
    let running = match kdnet_sim::start(config.clone(), tc, link).await {
        Ok(r) => r,
        Err(kdnet_sim::StartError::Build(e)) => {
            eprintln!("kdnet sim: {e}");
            return Ok(exit::BAD_ARGUMENTS);
        }
        Err(e) => return Err(e.into()),
    };
    let f = &running.facts;
    outln!(
        "simulated Windows {} (build {}, {}), scenario {}, {} processors: {} processes, {} threads, {} executive resources; built in {:.2?}",
        kdnet_sim::layout::version_string(build).unwrap_or("?"),
        build,
        told,
        scenario,
        f.processors,
        f.processes.len(),
        f.threads,
        f.total_resources,
        running.build_time
    );
    outln!(
        "target {} offers to {} every 3 s{}",
        running.target.local_addr(),
        a.host,
        match &running.relay {
            Some(r) => format!(" (through an impaired link at {})", r.target_side()),
            None => String::new(),
        }
    );
    outln!("families, from the table: {}", f.families.join("; "));
    if !f.left_out.is_empty() {
        outln!(
            "this build's table has no place for (left out of the machine): {}",
            f.left_out.join(", ")
        );
    }
    if let Some(h) = a.hang_after {
        outln!("the {scenario} condition begins after {h:?}");
    }
    let started = std::time::Instant::now();
    let mut rebooted = false;
    let mut reboot_signal = reboot_signal()?;
    let mut stops_told = 0;
    loop {
        let tick = tokio::time::sleep(Duration::from_millis(200));
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick => {}
            Some(()) = reboot_signal.recv() => {
                outln!("rebooting (SIGUSR1)");
                running.target.reboot().await;
            }
        }
        // How long each stop a debugger made lasted, on the machine's clock (the cost its
        // users felt).
        let st = running.target.stats();
        if st.stops_ended > stops_told {
            stops_told = st.stops_ended;
            outln!(
                "running again after a stop of {:.3} s (stops so far {}, longest {:.3} s)",
                st.last_stop.as_secs_f64(),
                st.stops_ended,
                st.longest_stop.as_secs_f64()
            );
        }
        if let Some(d) = a.duration
            && started.elapsed() >= d
        {
            break;
        }
        if let Some(r) = a.reboot_after
            && !rebooted
            && started.elapsed() >= r
        {
            rebooted = true;
            outln!("rebooting");
            running.target.reboot().await;
        }
    }
    let stats = running.target.shutdown().await;
    outln!("target counters:\n{}", stats.report());
    if let Some(r) = &running.relay {
        outln!("link: {:?}", r.stats());
    }
    Ok(exit::OK)
}

/// SIGUSR1 reboots the simulated machine (a reboot at a moment a test chooses).
fn reboot_signal() -> anyhow::Result<tokio::sync::mpsc::Receiver<()>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut s =
            anyhow::Context::context(signal(SignalKind::user_defined1()), "catching SIGUSR1")?;
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                if tx.send(()).await.is_err() {
                    break;
                }
            }
        });
    }
    #[cfg(not(unix))]
    drop(tx);
    Ok(rx)
}

/// A number in hex, with or without `0x` (`44`, `0x1ca`).
fn hex_u32(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    u32::from_str_radix(t, 16).map_err(|e| format!("`{s}` is not a hex number: {e}"))
}

#[cfg(test)]
mod tests {
    use super::hex_u32;

    #[test]
    fn a_bugcheck_code_is_hex_with_or_without_0x_and_nothing_else() {
        assert_eq!(hex_u32("44"), Ok(0x44));
        assert_eq!(hex_u32("0x1CA"), Ok(0x1ca));
        for bad in ["", "0x", "xyz", "1_0", "123456789"] {
            let e = hex_u32(bad).unwrap_err();
            assert!(e.contains("is not a hex number"), "{bad}: {e}");
        }
    }
}
