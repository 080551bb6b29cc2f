//! `kdnet demo`: the simulated Windows kernel (built-in layout, nbl-hang scenario) and this
//! debugger in one process, over encrypted KDNET on loopback.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kdnet::api::{Reg, status};
use kdnet::host::{Host, HostConfig, HostEvent};
use kdnet::target::TargetConfig;
use kdnet::wire::Key;
use kdnet_sim::SimConfig;

use crate::exit;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// UDP port for the debugger end (0 = any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
}

fn t(start: Instant) -> String {
    format!("[{:7.3}s]", start.elapsed().as_secs_f64())
}

fn addr(a: u64) -> String {
    format!("{:08x}`{:08x}", a >> 32, a as u32)
}

pub async fn run(args: Args) -> anyhow::Result<u8> {
    let start = Instant::now();
    let key = Key::from_bytes(kdnet::rng::os_random_32());
    let bind: SocketAddr = SocketAddr::from(([127, 0, 0, 1], args.port));
    let host = Host::bind(HostConfig::new(bind, key.clone()))
        .await
        .context("binding the debugger end")?;
    let mut events = host.subscribe();
    let config = SimConfig::demo();
    outln!(
        "kdnet demo: a simulated Windows Server 2022 kernel and this debugger in one process, over encrypted KDNET on loopback"
    );
    outln!(
        "{} building the simulated machine: build {}, scenario {}, {} processors, {} executive resources",
        t(start),
        config.build,
        config.scenario,
        config.cpus,
        config.resources
    );
    let mut tc = TargetConfig::new("127.0.0.1:0".parse()?, host.local_addr(), key);
    tc.offer_interval = Duration::from_secs(3);
    let running = kdnet_sim::start(config, tc, None).await?;
    outln!(
        "{} built in {:.2?}; target {} sends its offers to the debugger at {} every 3 s",
        t(start),
        running.build_time,
        running.target.local_addr(),
        host.local_addr()
    );
    let peer = match host.wait_connected(Duration::from_secs(10)).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("kdnet demo: {e}");
            return Ok(exit::NO_CONNECTION);
        }
    };
    outln!(
        "{} handshake with {peer}: data key derived, KD session up",
        t(start)
    );
    if let Ok(Some(text)) = tokio::time::timeout(Duration::from_millis(1500), async {
        loop {
            match events.recv().await {
                Ok(HostEvent::DebugPrint { text, .. }) => return Some(text),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    })
    .await
    {
        outln!("{} DbgPrint: {}", t(start), text.trim_end());
    }
    let sc = host.break_in(Duration::from_secs(5)).await?;
    outln!(
        "{} break-in: exception {:#010x} at {} on processor {} of {}, thread {}",
        t(start),
        sc.exception().map_or(0, |e| e.code),
        addr(sc.program_counter),
        sc.processor,
        sc.number_processors,
        addr(sc.thread)
    );
    let v = host.get_version().await?;
    outln!(
        "Windows 10 Kernel Version {} MP ({} procs) Free x64",
        v.minor_version,
        sc.number_processors
    );
    outln!(
        "Kernel base = 0x{} PsLoadedModuleList = 0x{}",
        addr(v.kern_base),
        addr(v.ps_loaded_module_list)
    );
    // The module list, walked with raw reads and the built-in layout.
    let nt = kdnet_symbols::builtin::nt_demo();
    let dll_base = nt.offset("_KLDR_DATA_TABLE_ENTRY", "DllBase")?;
    let name_off = nt.offset("_KLDR_DATA_TABLE_ENTRY", "BaseDllName")?;
    let mut names = Vec::new();
    let mut link = u64::from_le_bytes(
        host.read_virtual(v.ps_loaded_module_list, 8)
            .await?
            .try_into()
            .unwrap_or([0; 8]),
    );
    while link != v.ps_loaded_module_list && names.len() < 1024 {
        let entry = host.read_virtual(link, (name_off + 16) as usize).await?;
        let base = u64::from_le_bytes(entry[dll_base as usize..dll_base as usize + 8].try_into()?);
        let len = u16::from_le_bytes(entry[name_off as usize..name_off as usize + 2].try_into()?)
            as usize;
        let buf =
            u64::from_le_bytes(entry[name_off as usize + 8..name_off as usize + 16].try_into()?);
        let raw = host.read_virtual(buf, len.min(512)).await?;
        let units: Vec<u16> = raw
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        names.push((base, String::from_utf16_lossy(&units)));
        link = u64::from_le_bytes(entry[..8].try_into()?);
    }
    outln!("{} loaded modules:", names.len());
    for chunk in names.chunks(4) {
        let line: Vec<String> = chunk
            .iter()
            .map(|(b, n)| format!("{} {:<14}", addr(*b), n))
            .collect();
        outln!("  {}", line.join("  "));
    }
    let ctx = host.get_context(0).await?;
    outln!(
        "processor 0: rip {} rsp {}",
        addr(ctx.reg(Reg::Rip)),
        addr(ctx.reg(Reg::Rsp))
    );
    host.resume(status::DBG_CONTINUE).await?;
    outln!("{} continued: the target runs again", t(start));
    let hs = host.stats();
    let ts = running.target.shutdown().await;
    outln!(
        "debugger: round trips {}, datagrams sent {} received {}, bytes sent {} received {}",
        hs.round_trips,
        hs.datagrams_sent,
        hs.datagrams_received,
        hs.bytes_sent,
        hs.bytes_received
    );
    out!("target counters: {}", ts.report());
    Ok(exit::OK)
}
