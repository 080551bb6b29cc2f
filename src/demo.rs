//! `kdnet demo`: the whole story in under a minute, in one process over encrypted KDNET on
//! loopback. A simulated Windows Server 2022 machine runs healthy, then hangs (a PnP remove
//! waits on NDIS, which waits on the packets a NIC miniport never returns); the watcher samples
//! it, notices, breaks in, runs the built-in `hang.kds`, lets it go on, and prints the findings
//! and where the bundle is.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kdnet::target::TargetConfig;
use kdnet_live::{self as live, Listen, Session};
use kdnet_sim::SimConfig;

use crate::exit;
use crate::watch::{self, Control, config, hub::Hub};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// UDP port for the debugger end (0 = any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Where the bundle goes (default: a directory under the system's temporary one).
    #[arg(long)]
    out: Option<PathBuf>,
    /// How long the machine runs healthy before it hangs.
    #[arg(long, default_value = "5s", value_parser = crate::duration::parse)]
    hang_after: Duration,
    /// Stop ceilings of the watcher's break-ins, as `kdnet watch --max-stop` takes them (a
    /// sample takes a few hundredths of a second here; the default leaves room for a machine
    /// busy with other work).
    #[arg(long, default_value = "sample=2s")]
    pub max_stop: String,
}

pub async fn run(args: Args, verbose: bool) -> anyhow::Result<u8> {
    let start = Instant::now();
    let t = || format!("[{:7.3}s]", start.elapsed().as_secs_f64());
    let key = live::random_key();
    let bind: SocketAddr = SocketAddr::from(([127, 0, 0, 1], args.port));
    let listen = Listen {
        bind,
        key: key.clone(),
        target: None,
    };
    let host = Session::listen(listen.clone())
        .await
        .context("binding the debugger end")?;
    let mut config = SimConfig::demo();
    config.hang_after = Some(args.hang_after);
    outln!(
        "kdnet demo: a simulated Windows Server 2022 machine that hangs, and a watcher that catches it, over encrypted KDNET on loopback"
    );
    outln!(
        "{} building the machine: build {}, {} processors, {} executive resources; healthy for {:?}, then scenario {}",
        t(),
        config.build,
        config.cpus,
        config.resources,
        args.hang_after,
        config.scenario
    );
    let mut tc = TargetConfig::new("127.0.0.1:0".parse()?, host.local_addr(), key);
    tc.offer_interval = Duration::from_secs(1);
    let running = kdnet_sim::start(config, tc, None).await?;
    outln!(
        "{} built in {:.2?}; target {} offers to the watcher at {}",
        t(),
        running.build_time,
        running.target.local_addr(),
        host.local_addr()
    );
    let out = args
        .out
        .unwrap_or_else(|| std::env::temp_dir().join("kdnet-demo"));
    let common = config::Common {
        out: Some(out),
        sample_every: Some("2s".into()),
        max_stop: Some(args.max_stop.clone()),
        ..config::Common::default()
    };
    let spec =
        config::spec("demo", listen, vec!["demo".into()], &common).map_err(anyhow::Error::msg)?;
    outln!(
        "{} watching: a sample (!hangcheck) every 2 s; on a hang, capture with hang.kds and let the machine go on",
        t()
    );
    let hub = Arc::new(Hub::new(None).story(start));
    let code = watch::watch(
        vec![(spec, host.clone())],
        hub.clone(),
        Control::Off,
        watch::Limits {
            max_captures: Some(1),
            duration: Some(Duration::from_secs(50)),
            lease: Duration::from_secs(60),
        },
    )
    .await?;
    if code != exit::OK {
        return Ok(code);
    }
    let Some(bundle) = hub.list().into_iter().find_map(|s| s.last_bundle) else {
        eprintln!("kdnet demo: no capture within 50 s");
        return Ok(exit::FAILED);
    };
    // The capture ends with the machine let go; wait for it to say it runs.
    let mut state = host.watch();
    let _ = tokio::time::timeout(Duration::from_secs(5), state.wait_for(|s| s.running)).await;
    outln!(
        "{} the machine {}",
        t(),
        if host.status().running {
            "runs again"
        } else {
            "did not say it runs"
        }
    );
    let bundle = PathBuf::from(bundle);
    outln!("bundle: {}", bundle.display());
    outln!(
        "  open {} in a browser",
        bundle.join("report.html").display()
    );
    outln!(
        "  or offline: kdnet open {} -c \"!locks; !ndiskd.pendingnbls\"",
        bundle.join("snapshot.dmp").display()
    );
    outln!("what the findings mean:");
    for line in [
        "  nt!PiEngineLock: the PnP engine's lock, held by the thread removing the network \
         adapter; the other PnP work waits behind it",
        "  nt!IopDeviceTreeLock: the device tree lock, held shared by that same thread (nobody \
         waits on it: information only)",
        "  NBLs pending: packets (net buffer lists) NDIS handed the NIC's miniport driver that it \
         never returned; the remove waits for them to come back, so the miniport is the culprit",
        "  top pool tag Res: the pool of executive resources (ERESOURCE locks); the machine has \
         thousands of them, so it is the biggest user of pool, not a leak",
    ] {
        outln!("{line}");
    }
    let hs = host.traffic();
    let ts = running.target.shutdown().await;
    if !verbose {
        return Ok(exit::OK);
    }
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
