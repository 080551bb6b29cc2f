//! `kdnet bench`: figures measured side by side in one run.
//!
//! 1. Datagram sealing and opening on one core (datagrams per second, MB/s), for the sizes that
//!    dominate a session: a 102-byte manipulate request and a 1334-byte CONTEXT reply.
//! 2. Memory reads between a host and a target on loopback through a link with an injected
//!    one-way delay: round trips, bytes per round trip, and throughput as a fraction of the
//!    protocol limit (3,944 bytes per round trip ÷ the measured round-trip time), for each
//!    transfer size the host can use.
//! 3. A walk of a 10,000-entry kernel list (the executive resource list of the simulated
//!    kernel) over the same link: one read per node, as a plain extension does it, beside the
//!    kernel model's walk (host-side translation, page cache, read-ahead along physically
//!    contiguous pages); round trips per entry and bytes read against the bytes the nodes hold.
//! 4. The analysis commands on the simulated nbl-hang machine (84,372 resources) over the same
//!    link, each from a cold cache: round trips, bytes, and the ratio to the least any reader
//!    needs (per page touched, the span of bytes asked for over the largest transfer).
//! 5. The watcher's samples over the same link: on the simulated machine of each scenario, a
//!    sample from the threads beside one walking the resource list (as samples did before):
//!    time stopped, round trips of the stop and of the sample, whether they find the same; then
//!    both over 2,000, 84,372 and 1,000,000 resources. Then the watcher on the nbl-hang machine:
//!    a sample (`!hangcheck`) beside the capture it triggers (`hang.kds`, bundle written): time
//!    the target stays stopped, round trips, bytes, bundle size; then host CPU per watched idle
//!    target, against the same simulated machines running with nobody watching.
//! 6. Long memory reads on the simulated machine over the same link: 8 MiB of the kernel image
//!    read page by page (two requests a page: 3,944 + 152 bytes) beside the same range through
//!    `.writemem` and 1 MiB through `dq` (long reads: full requests over physically contiguous
//!    pages): round trips, bytes per round trip and its ratio to the 3,944-byte limit; and
//!    whole dumps of the machine through `.dump /f` (every page of its RAM) and `.dump /k`.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use kdnet::api::{Context, GetVersion64, StateChange64, StateEvent, status};
use kdnet::host::{Host, HostConfig, TRANSFER_STEPS};
use kdnet::link::{LinkConfig, Relay};
use kdnet::target::{StopReason, TargetConfig, TargetHandle, TargetHandler};
use kdnet::wire::Key;
use kdnet::wire::datagram::{self, Channel, Direction};

use crate::exit;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// One-way delay of the link, in microseconds (500 gives a 1 ms round trip).
    #[arg(long, default_value_t = 500)]
    delay_us: u64,
    /// Bytes to read per transfer size.
    #[arg(long, default_value_t = 1 << 20)]
    bytes: usize,
    /// Datagrams to seal and open in the wire benchmark.
    #[arg(long, default_value_t = 50_000)]
    datagrams: usize,
    /// Entries of the list walked in the list benchmark.
    #[arg(long, default_value_t = 10_000)]
    list_entries: u32,
    /// Executive resources of the machine in the commands benchmark.
    #[arg(long, default_value_t = kdnet_sim::scenario::NBL_HANG_RESOURCES)]
    resources: u32,
    /// Only the protocol benchmarks (wire, session machines, transfer sizes).
    #[arg(long)]
    protocol_only: bool,
    /// Only the commands benchmark.
    #[arg(long)]
    commands_only: bool,
    /// Only the watcher benchmark.
    #[arg(long)]
    watch_only: bool,
    /// Only the MCP benchmark: what `kdnet mcp`'s `run` adds over the same command run as
    /// `kdnet run` runs it, and a long result's size before and after paging.
    #[arg(long)]
    mcp_only: bool,
    /// Only the long memory reads benchmark.
    #[arg(long)]
    memory_only: bool,
    /// Only the breakpoint benchmark: the cost of a breakpoint hit (a condition judged and the
    /// target let go on; a stop), in round trips and time, and the hits a session judges a
    /// second.
    #[arg(long)]
    breakpoints_only: bool,
    /// Idle targets in the watcher's CPU benchmark.
    #[arg(long, default_value_t = 8)]
    idle_targets: usize,
    /// A directory of kernel tables (`ntkrnlmp.pdb/<GUID>-<age>.json.xz`, as `kdnet sim
    /// --symbols` takes): the commands benchmark then runs on builds 7601, 14393 and 22000 as
    /// well as on the built-in 20348.
    #[arg(long)]
    tables: Option<std::path::PathBuf>,
}

struct Flat;

impl TargetHandler for Flat {
    fn version(&mut self) -> GetVersion64 {
        GetVersion64::windows_kernel(20348, 0xfffff800_00000000, 0, 0)
    }
    fn read_virtual(&mut self, _cpu: u16, address: u64, buf: &mut [u8]) -> usize {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (address.wrapping_add(i as u64) % 251) as u8;
        }
        buf.len()
    }
    fn read_physical(&mut self, address: u64, buf: &mut [u8]) -> usize {
        self.read_virtual(0, address, buf)
    }
    fn read_control_space(&mut self, _cpu: u16, _index: u64, _buf: &mut [u8]) -> Option<usize> {
        None
    }
    fn context(&mut self, _cpu: u16) -> Option<Context> {
        Some(Context::new())
    }
    fn stop_report(&mut self, _reason: StopReason) -> StateChange64 {
        StateChange64 {
            new_state: 0x3030,
            processor_level: 0,
            processor: 0,
            number_processors: 1,
            thread: 0,
            program_counter: 0,
            event: StateEvent::Other,
            control: Default::default(),
        }
    }
}

fn wire_bench(n: usize) {
    let key = Key::from_bytes(kdnet::rng::os_random_32());
    let hk = key.hmac_key();
    outln!("wire: sealing and opening on one core ({n} datagrams each)");
    outln!(
        "  {:>9}  {:>14}  {:>14}  {:>10}",
        "payload",
        "sealed/s",
        "opened/s",
        "MB/s open"
    );
    for payload_len in [56 + 16 + 8, 1288 + 16] {
        let payload = vec![0x5au8; payload_len];
        let t0 = Instant::now();
        let mut sealed = Vec::with_capacity(n);
        for i in 0..n {
            sealed.push(datagram::seal(
                4,
                Channel::Data,
                key.bytes(),
                &hk,
                i as u64 + 1,
                Direction::TargetToHost,
                &payload,
            ));
        }
        let seal_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let mut ok = 0;
        for d in &sealed {
            ok += usize::from(datagram::open(d, key.bytes(), &hk).is_ok());
        }
        let open_s = t1.elapsed().as_secs_f64();
        assert_eq!(ok, n);
        let bytes = sealed.first().map_or(0, Vec::len);
        outln!(
            "  {:>5} B→{:>4}  {:>14.0}  {:>14.0}  {:>10.1}",
            payload_len,
            bytes,
            n as f64 / seal_s,
            n as f64 / open_s,
            (n * bytes) as f64 / open_s / 1e6
        );
    }
}

pub async fn run(args: Args) -> anyhow::Result<u8> {
    if args.commands_only {
        commands_bench(
            Duration::from_micros(args.delay_us),
            args.resources,
            args.tables.as_deref(),
        )
        .await?;
        return Ok(exit::OK);
    }
    if args.memory_only {
        memory_bench(Duration::from_micros(args.delay_us)).await?;
        return Ok(exit::OK);
    }
    if args.breakpoints_only {
        breakpoint_bench(Duration::from_micros(args.delay_us)).await?;
        return Ok(exit::OK);
    }
    if args.mcp_only {
        mcp_bench(Duration::from_micros(args.delay_us), args.resources).await?;
        return Ok(exit::OK);
    }
    if args.watch_only {
        watch_bench(
            Duration::from_micros(args.delay_us),
            args.resources,
            args.idle_targets,
        )
        .await?;
        return Ok(exit::OK);
    }
    wire_bench(args.datagrams);
    machine_bench(20_000);
    let key = Key::from_bytes(kdnet::rng::os_random_32());
    let host = Host::bind(HostConfig::new("127.0.0.1:0".parse()?, key.clone())).await?;
    let delay = Duration::from_micros(args.delay_us);
    let relay = Relay::start(
        LinkConfig {
            latency: delay,
            ..LinkConfig::default()
        },
        host.local_addr(),
    )
    .await?;
    let mut tc = TargetConfig::new("127.0.0.1:0".parse()?, relay.target_side(), key);
    tc.offer_interval = Duration::from_millis(500);
    let target = TargetHandle::spawn(tc, Box::new(Flat)).await?;
    host.wait_connected(Duration::from_secs(10)).await?;
    host.break_in(Duration::from_secs(10))
        .await
        .context("break-in")?;
    // The round trip as the protocol sees it: tiny reads, one request each.
    let probes = 200;
    let t0 = Instant::now();
    for i in 0..probes {
        host.read_virtual(0x1000 + 8 * i, 8).await?;
    }
    let rtt = t0.elapsed() / probes as u32;
    let limit = 3944.0 / rtt.as_secs_f64();
    outln!(
        "\nlink: one-way delay {:?} (nominal RTT {:?}); measured request RTT {:?} over {probes} 8-byte reads",
        delay,
        delay * 2,
        rtt
    );
    outln!(
        "  protocol limit = 3944 bytes per round trip / {:?} = {:.2} MB/s",
        rtt,
        limit / 1e6
    );
    outln!(
        "  {:>9}  {:>11}  {:>10}  {:>13}  {:>9}  {:>10}  {:>14}",
        "transfer",
        "round trips",
        "bytes/RT",
        "datagrams",
        "time",
        "MB/s",
        "ratio to limit"
    );
    for size in TRANSFER_STEPS {
        host.set_max_transfer(size).await;
        let before = host.stats();
        let t = Instant::now();
        let data = host.read_virtual(0x10_0000, args.bytes).await?;
        let took = t.elapsed();
        anyhow::ensure!(data.len() == args.bytes, "short read");
        let after = host.stats();
        let rts = after.round_trips - before.round_trips;
        let dgrams = (after.datagrams_sent - before.datagrams_sent)
            + (after.datagrams_received - before.datagrams_received);
        let rate = args.bytes as f64 / took.as_secs_f64();
        outln!(
            "  {:>9}  {:>11}  {:>10.0}  {:>13}  {:>8.3}s  {:>10.2}  {:>14.2}",
            size,
            rts,
            args.bytes as f64 / rts as f64,
            dgrams,
            took.as_secs_f64(),
            rate / 1e6,
            rate / limit
        );
    }
    host.resume(status::DBG_CONTINUE).await?;
    let ts = target.shutdown().await;
    // The session ends with its target, before the next benchmark.
    drop(host);
    outln!(
        "\ntarget served {} requests; link delivered {} datagrams",
        ts.round_trips(),
        relay.stats().delivered
    );
    if args.protocol_only {
        return Ok(exit::OK);
    }
    list_bench(delay, args.list_entries).await?;
    commands_bench(delay, args.resources, args.tables.as_deref()).await?;
    memory_bench(delay).await?;
    watch_bench(delay, args.resources, args.idle_targets).await?;
    mcp_bench(delay, args.resources).await?;
    Ok(exit::OK)
}

/// The session machines alone: a host and a target machine exchanging `reads` small reads
/// through memory with a virtual clock, all datagrams sealed and opened: the CPU one read costs
/// both ends (the protocol's own work, without sockets).
fn machine_bench(reads: u32) {
    use kdnet::machine::{HostMachine, HostMachineConfig, Op, Output, TargetMachine};
    let key = Key::from_bytes(kdnet::rng::os_random_32());
    let (h_addr, t_addr): (std::net::SocketAddr, std::net::SocketAddr) = (
        "10.0.0.1:50000".parse().expect("address"),
        "10.0.0.2:50000".parse().expect("address"),
    );
    let start = Instant::now();
    let mut now = start;
    let mut host = HostMachine::new(
        HostMachineConfig::new(key.clone()),
        now,
        Box::new(kdnet::rng::os_random_32),
    );
    let mut target = TargetMachine::new(
        TargetConfig::new(t_addr, h_addr, key),
        t_addr,
        Box::new(Flat),
        now,
        Box::new(kdnet::rng::os_random_32),
    );
    let datagrams = std::cell::Cell::new(0u64);
    // Moves everything in flight (no delay, no loss) and fires due timers.
    let turn = |host: &mut HostMachine, target: &mut TargetMachine, now: Instant| {
        loop {
            let mut moved = false;
            while let Some(t) = host.poll_transmit() {
                target.handle_datagram(h_addr, &t.datagram, now);
                datagrams.set(datagrams.get() + 1);
                moved = true;
            }
            while let Some(t) = target.poll_transmit() {
                host.handle_datagram(t_addr, &t.datagram, now);
                datagrams.set(datagrams.get() + 1);
                moved = true;
            }
            if !moved {
                break;
            }
        }
        if host.poll_timeout().is_some_and(|t| t <= now) {
            host.handle_timeout(now);
        }
        if target.poll_timeout() <= now {
            target.handle_timeout(now);
        }
    };
    let wait = |host: &mut HostMachine, target: &mut TargetMachine, now: &mut Instant, id| {
        for _ in 0..10_000 {
            turn(host, target, *now);
            while let Some(o) = host.poll_output() {
                if let Output::Completed { id: x, result } = o
                    && x == id
                {
                    return result.is_ok();
                }
            }
            let next = host
                .poll_timeout()
                .unwrap_or(*now)
                .min(target.poll_timeout());
            *now = (*now).max(next).max(*now + Duration::from_micros(1));
        }
        false
    };
    let id = host.submit(
        Op::BreakIn {
            timeout: Duration::from_secs(30),
        },
        now,
    );
    if !wait(&mut host, &mut target, &mut now, id) {
        outln!("\nsession machines: the pair did not connect");
        return;
    }
    let before = datagrams.get();
    let cpu = cpu_time();
    let mut ok = 0u32;
    for i in 0..reads {
        let id = host.submit(
            Op::ReadMemory {
                physical: false,
                address: 0x1000 + u64::from(i) * 64,
                len: 64,
            },
            now,
        );
        ok += u32::from(wait(&mut host, &mut target, &mut now, id));
    }
    let used = cpu_time().saturating_sub(cpu);
    outln!(
        "\nsession machines (host and target, no sockets): {reads} reads of 64 bytes, {ok} answered, {} datagrams ({:.1} per read), {:.1} µs of CPU per read, both ends",
        datagrams.get() - before,
        (datagrams.get() - before) as f64 / f64::from(reads),
        used.as_secs_f64() * 1e6 / f64::from(reads)
    );
}

/// CPU time this process has used (user + system).
fn cpu_time() -> Duration {
    #[cfg(unix)]
    if let Some(t) = crate::sys::cpu_time() {
        return t;
    }
    Duration::ZERO
}

/// The watcher over the link: a sample beside the capture it triggers, then the host CPU an
/// idle watched target costs.
async fn watch_bench(delay: Duration, resources: u32, idle: usize) -> anyhow::Result<()> {
    use crate::watch::{self, Control, config, hub::Hub};
    use kdnet_live::Listen;
    samples_bench(delay, resources).await?;
    ceilings_bench(delay, resources).await?;
    let mut sim_config = kdnet_sim::SimConfig::demo();
    sim_config.resources = resources;
    let (hc, host, sim) = listening_sim(sim_config, delay).await?;
    let out = std::env::temp_dir().join(format!("kdnet-bench-{}", std::process::id()));
    let common = config::Common {
        out: Some(out.clone()),
        sample_every: Some("1s".into()),
        // The whole sample, to show what the capture reuses of it.
        max_stop: Some("sample=10s".into()),
        ..config::Common::default()
    };
    let spec = config::spec("bench", hc, Vec::new(), &common).map_err(anyhow::Error::msg)?;
    let hub = std::sync::Arc::new(Hub::new(None).silent());
    let mut events = hub.subscribe();
    let timeline = tokio::spawn(async move {
        let mut marks: Vec<(String, Instant, serde_json::Value)> = Vec::new();
        while let Ok(v) = events.recv().await {
            let state = v["state"].as_str().unwrap_or("").to_string();
            let done = state == "captured" || state == "capture-failed";
            marks.push((state, Instant::now(), v));
            if done {
                break;
            }
        }
        marks
    });
    watch::watch(
        vec![(spec, host.clone())],
        hub,
        Control::Off,
        watch::Limits {
            max_captures: Some(1),
            duration: Some(Duration::from_secs(300)),
            lease: Duration::from_secs(60),
        },
    )
    .await?;
    let marks = timeline.await?;
    // Baseline: the same script on its own, from a cold cache, as a separate run would do it.
    host.break_in(Duration::from_secs(10)).await?;
    let rt = tokio::runtime::Handle::current();
    let h = host.clone();
    let (base_rts, base_bytes, base_time) =
        tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, u64, Duration)> {
            let t = Instant::now();
            let mut e =
                kdnet_commands::engine::Engine::new(h.open(rt, crate::symbols::path(None))?);
            e.kernel.mem.invalidate();
            let stmts = kdnet_commands::script::parse(watch::bundle::HANG_SCRIPT)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let before = e.kernel.mem.stats();
            let dir = std::env::temp_dir();
            kdnet_commands::script::Runner::new(&mut e, dir).run(&stmts, &mut |_| {});
            let c = e.kernel.mem.stats().since(&before);
            Ok((c.transport.round_trips, c.transport.bytes, t.elapsed()))
        })
        .await??;
    let _ = std::fs::remove_file(std::env::temp_dir().join("hang.dmp"));
    host.go().await?;
    sim.target.shutdown().await;
    let at = |s: &str| marks.iter().find(|m| m.0 == s).map(|m| m.1);
    let captured = marks
        .iter()
        .find(|m| m.0 == "captured")
        .map(|m| m.2.clone())
        .context("no capture")?;
    let bundle = std::path::PathBuf::from(captured["bundle"].as_str().unwrap_or(""));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("report.json"))?)?;
    let size = |f: &str| std::fs::metadata(bundle.join(f)).map_or(0, |m| m.len());
    let (Some(sampling), Some(capturing), Some(done)) =
        (at("sampling"), at("capturing"), at("captured"))
    else {
        anyhow::bail!("the watcher's timeline is incomplete: {marks:?}");
    };
    let sample_rts = report["trigger"]["sample"]["round_trips"]
        .as_u64()
        .unwrap_or(0);
    let capture_rts = captured["round_trips"].as_u64().unwrap_or(0);
    let capture_bytes = captured["bytes"].as_u64().unwrap_or(0);
    let sample_time = capturing - sampling;
    let capture_time = done - capturing;
    outln!(
        "\nwatcher on the simulated nbl-hang machine ({resources} resources), RTT {:?}: a sample finds the hang, hang.kds captures it",
        delay * 2
    );
    outln!(
        "  {:<44} {:>9} {:>11} {:>12}",
        "",
        "stopped",
        "round trips",
        "bytes"
    );
    let row = |name: &str, t: Duration, rts: u64, bytes: String| {
        outln!(
            "  {:<44} {:>8.2}s {:>11} {:>12}",
            name,
            t.as_secs_f64(),
            rts,
            bytes
        );
    };
    row(
        "sample (break in, kernel model, !hangcheck)",
        sample_time,
        sample_rts,
        "-".into(),
    );
    row(
        "capture (hang.kds, bundle written)",
        capture_time,
        capture_rts,
        capture_bytes.to_string(),
    );
    row(
        "trigger to bundle, in all",
        done - sampling,
        sample_rts + capture_rts,
        "-".into(),
    );
    row(
        "baseline: hang.kds alone from a cold cache",
        base_time,
        base_rts,
        base_bytes.to_string(),
    );
    outln!(
        "  ratio in all / baseline: {:.2} round trips, {:.2} time (the capture reuses what the sample read)",
        (sample_rts + capture_rts) as f64 / base_rts.max(1) as f64,
        (done - sampling).as_secs_f64() / base_time.as_secs_f64().max(1e-9)
    );
    outln!(
        "  bundle: report.txt {} B, report.json {} B, report.html {} B, snapshot.dmp {} B",
        size("report.txt"),
        size("report.json"),
        size("report.html"),
        size("snapshot.dmp")
    );
    let _ = std::fs::remove_dir_all(&out);

    // Host CPU per idle watched target: the same machines with nobody watching, then watched.
    let window = Duration::from_secs(8);
    // The ports are held by plain sockets nobody reads while the machines run unwatched.
    let mut held = Vec::new();
    let mut sims = Vec::new();
    let mut specs = Vec::new();
    for i in 0..idle {
        let key = Key::from_bytes(kdnet::rng::os_random_32());
        let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let addr = sock.local_addr()?;
        held.push(sock);
        let mut c = kdnet_sim::SimConfig::demo();
        c.scenario = kdnet_sim::Scenario::Healthy;
        c.resources = 500;
        c.print_every = Duration::from_secs(3600);
        let tc = TargetConfig::new("127.0.0.1:0".parse()?, addr, key.clone());
        sims.push(kdnet_sim::start(c, tc, None).await?);
        specs.push(
            config::spec(
                &format!("idle{i}"),
                Listen {
                    bind: addr,
                    key,
                    target: None,
                },
                Vec::new(),
                &config::Common::default(),
            )
            .map_err(anyhow::Error::msg)?,
        );
    }
    let c0 = cpu_time();
    tokio::time::sleep(window).await;
    let unwatched = cpu_time() - c0;
    drop(held);
    let hosts = match watch::bind_all(&specs).await {
        Ok(h) => h,
        Err(_) => anyhow::bail!("cannot listen for the idle targets"),
    };
    let hub = std::sync::Arc::new(Hub::new(None).silent());
    let targets: Vec<_> = specs.into_iter().zip(hosts.iter().cloned()).collect();
    let watcher = tokio::spawn(watch::watch(
        targets,
        hub,
        Control::Off,
        watch::Limits {
            max_captures: None,
            duration: Some(window + Duration::from_secs(6)),
            lease: Duration::from_secs(60),
        },
    ));
    for h in &hosts {
        h.wait_connected(Duration::from_secs(10)).await?;
    }
    let c1 = cpu_time();
    tokio::time::sleep(window).await;
    let watched = cpu_time() - c1;
    let _ = watcher.await;
    for s in sims {
        s.target.shutdown().await;
    }
    let per = (watched.as_secs_f64() - unwatched.as_secs_f64()) / idle.max(1) as f64;
    outln!(
        "\nidle targets ({idle} healthy machines in this process, no sampling), {:?} each: process CPU {:.3} s with nobody listening, {:.3} s watched",
        window,
        unwatched.as_secs_f64(),
        watched.as_secs_f64()
    );
    outln!(
        "  watcher cost per idle target: {:+.3} ms CPU per second ({:+.4} % of a core){}",
        per * 1000.0 / window.as_secs_f64(),
        per * 100.0 / window.as_secs_f64(),
        if per <= 0.0 {
            "; below this run's noise (the machines' own timers dominate)"
        } else {
            ""
        }
    );
    Ok(())
}

/// What one sample cost and found.
struct SampleRun {
    /// From the break-in request to the target running again.
    stopped: Duration,
    /// Requests of the whole stop (break-in, kernel model, sample, continue).
    stop_rts: u64,
    /// Requests of the sample itself (as the watcher's events count them).
    sample_rts: u64,
    /// The sample, for the next one to go on from.
    sample: kdnet_commands::ext::hangcheck::Sample,
    /// What it found, compared with the sample before it (and the notes, which say how it was
    /// taken).
    findings: Vec<String>,
    notes: Vec<String>,
}

impl SampleRun {
    /// The costlier of two runs' costs (the findings are the later run's).
    fn worst(a: &SampleRun, b: SampleRun) -> SampleRun {
        SampleRun {
            stopped: a.stopped.max(b.stopped),
            stop_rts: a.stop_rts.max(b.stop_rts),
            sample_rts: a.sample_rts.max(b.sample_rts),
            ..b
        }
    }
}

/// One sample as the watcher takes it: break in, open the kernel model, the watcher's sample
/// (from the threads, a window of the NBLs) or the reference one (walking the resource list and
/// every NBL), compared with `prev`, then let the target go on.
async fn sample_once(
    host: &kdnet_live::Session,
    thread_first: bool,
    prev: Option<&SampleRun>,
) -> anyhow::Result<SampleRun> {
    use kdnet_commands::ext::hangcheck;
    let rts0 = host.traffic().round_trips;
    let t0 = Instant::now();
    host.break_in(Duration::from_secs(10)).await?;
    let rt = tokio::runtime::Handle::current();
    let h = host.clone();
    let nbls = prev.and_then(|p| p.sample.nbls.clone());
    let (sample_rts, sample) =
        tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, hangcheck::Sample)> {
            let mut e =
                kdnet_commands::engine::Engine::new(h.open(rt, crate::symbols::path(None))?);
            e.budget = Some(Duration::from_secs(600));
            let before = e.kernel.mem.stats();
            let th = hangcheck::Thresholds::default();
            let s = if thread_first {
                hangcheck::watch_sample(&mut e, &th, nbls.as_ref())
            } else {
                hangcheck::sample_reference(&mut e, &th, nbls.as_ref())
            }
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok((e.kernel.mem.stats().since(&before).transport.round_trips, s))
        })
        .await??;
    host.go().await?;
    Ok(SampleRun {
        stopped: t0.elapsed(),
        stop_rts: host.traffic().round_trips - rts0,
        sample_rts,
        // The NBL finding's counts differ by how much each sample looked at; the rest match
        // word for word.
        findings: hangcheck::judge(prev.map(|p| &p.sample), &sample)
            .into_iter()
            .map(|f| {
                if f.kind == "nbls-not-draining" {
                    f.kind.to_string()
                } else {
                    f.summary
                }
            })
            .collect(),
        notes: sample.notes.clone(),
        sample,
    })
}

/// The request round trip of this link as the watcher's reads see it: 100 reads of 8 bytes,
/// one request each, with the target stopped.
async fn request_rtt(host: &kdnet_live::Session) -> anyhow::Result<Duration> {
    host.break_in(Duration::from_secs(10)).await?;
    let rt = tokio::runtime::Handle::current();
    let h = host.clone();
    let took = tokio::task::spawn_blocking(move || -> anyhow::Result<Duration> {
        let mut k = h.open(rt, crate::symbols::path(None))?;
        let base = k.mem.info().kernel_base.context("no kernel base")?;
        let space = k.mem.kernel_space()?;
        let pa = k.mem.translate(space, base)?;
        let mut buf = [0u8; 8];
        let t = Instant::now();
        for _ in 0..100 {
            k.mem.target().read_physical(pa, &mut buf)?;
        }
        Ok(t.elapsed() / 100)
    })
    .await;
    // Let it go on whatever the reads did.
    host.go().await?;
    took?
}

/// Two samples in a row, the second compared with the first (as a watcher takes them): their
/// costlier cost and the second's findings.
async fn two_samples(host: &kdnet_live::Session, thread_first: bool) -> anyhow::Result<SampleRun> {
    let first = sample_once(host, thread_first, None).await?;
    let second = sample_once(host, thread_first, Some(&first)).await?;
    Ok(SampleRun::worst(&first, second))
}

/// A simulated machine of `config` over a link with `delay` each way, connected and running.
async fn running_sim(
    config: kdnet_sim::SimConfig,
    delay: Duration,
) -> anyhow::Result<(kdnet_live::Session, kdnet_sim::Running)> {
    let (_, host, sim) = listening_sim(config, delay).await?;
    Ok((host, sim))
}

/// A simulated machine of `config` behind a link of `delay` each way, connected to a session
/// listening on loopback: where the session listens (what a watcher's spec takes), the session
/// and the machine.
async fn listening_sim(
    config: kdnet_sim::SimConfig,
    delay: Duration,
) -> anyhow::Result<(kdnet_live::Listen, kdnet_live::Session, kdnet_sim::Running)> {
    let key = Key::from_bytes(kdnet::rng::os_random_32());
    let listen = kdnet_live::Listen {
        bind: "127.0.0.1:0".parse()?,
        key: key.clone(),
        target: None,
    };
    let host = kdnet_live::Session::listen(listen.clone()).await?;
    let mut tc = TargetConfig::new("127.0.0.1:0".parse()?, host.local_addr(), key);
    tc.offer_interval = Duration::from_millis(500);
    let link = LinkConfig {
        latency: delay,
        ..LinkConfig::default()
    };
    let sim = kdnet_sim::start(config, tc, Some(link)).await?;
    host.wait_connected(Duration::from_secs(30)).await?;
    Ok((listen, host, sim))
}

/// A sample of each scenario from the threads beside the sample that walks the resource list
/// (as every sample did before), then the curve of both over the number of resources.
async fn samples_bench(delay: Duration, resources: u32) -> anyhow::Result<()> {
    let machine = |scenario: kdnet_sim::Scenario, resources: u32| {
        let mut c = kdnet_sim::SimConfig::demo();
        c.scenario = scenario;
        c.resources = resources;
        c.print_every = Duration::from_secs(3600);
        // The bugcheck scenario's machine as it runs before its crash.
        c.bugcheck_after = Some(Duration::from_secs(3600));
        c
    };
    outln!(
        "\nwatcher samples on the simulated machine of each scenario (build 20348, {resources} resources), RTT {:?}: from the threads with a window of the NBLs, beside walking the resource list and every NBL (before); two samples in a row, the costlier shown, the findings of the second",
        delay * 2
    );
    outln!(
        "  {:<16} {:>29}   {:>29}   {}",
        "",
        "from the threads",
        "walking the resource list",
        "findings"
    );
    outln!(
        "  {:<16} {:>9} {:>9} {:>9}   {:>9} {:>9} {:>9}",
        "scenario",
        "stopped",
        "stop RTs",
        "sample",
        "stopped",
        "stop RTs",
        "sample"
    );
    let mut worst = (0u64, Duration::ZERO);
    let mut rtt = None;
    for scenario in kdnet_sim::Scenario::ALL {
        let (host, sim) = running_sim(machine(scenario, resources), delay).await?;
        if rtt.is_none() {
            rtt = Some(request_rtt(&host).await?);
        }
        let fast = two_samples(&host, true).await?;
        let full = two_samples(&host, false).await?;
        sim.target.shutdown().await;
        worst = (worst.0.max(fast.sample_rts), worst.1.max(fast.stopped));
        outln!(
            "  {:<16} {:>8.3}s {:>9} {:>9}   {:>8.3}s {:>9} {:>9}   {} {}{}",
            scenario.name(),
            fast.stopped.as_secs_f64(),
            fast.stop_rts,
            fast.sample_rts,
            full.stopped.as_secs_f64(),
            full.stop_rts,
            full.sample_rts,
            fast.findings.len(),
            if fast.findings == full.findings {
                "(the same)"
            } else {
                "(DIFFERENT)"
            },
            if fast.notes.iter().any(|n| n.contains("resource list")) {
                " (the resource list was walked)"
            } else {
                ""
            }
        );
    }
    outln!(
        "  from the threads, the most of any scenario: {} round trips for the sample, stopped {:.3} s",
        worst.0,
        worst.1.as_secs_f64()
    );
    if let Some(rtt) = rtt {
        outln!(
            "  one request's round trip on this link, measured: {:.2} ms (nominal {:?}; the simulated link's timers and both ends' scheduling add the rest)",
            rtt.as_secs_f64() * 1e3,
            delay * 2
        );
    }
    outln!(
        "\nthe curve over the number of resources (nbl-hang, build 20348), RTT {:?}",
        delay * 2
    );
    outln!(
        "  {:>10}   {:>29}   {:>29}",
        "",
        "from the threads",
        "walking the resource list"
    );
    outln!(
        "  {:>10}   {:>9} {:>9} {:>9}   {:>9} {:>9} {:>9}   {:>8}",
        "resources",
        "stopped",
        "stop RTs",
        "sample",
        "stopped",
        "stop RTs",
        "sample",
        "built in"
    );
    for n in [2_000u32, kdnet_sim::scenario::NBL_HANG_RESOURCES, 1_000_000] {
        let t = Instant::now();
        let (host, sim) = running_sim(machine(kdnet_sim::Scenario::NblHang, n), delay).await?;
        let built = t.elapsed();
        let fast = two_samples(&host, true).await?;
        let full = two_samples(&host, false).await?;
        sim.target.shutdown().await;
        outln!(
            "  {:>10}   {:>8.3}s {:>9} {:>9}   {:>8.3}s {:>9} {:>9}   {:>7.1}s{}",
            n,
            fast.stopped.as_secs_f64(),
            fast.stop_rts,
            fast.sample_rts,
            full.stopped.as_secs_f64(),
            full.stop_rts,
            full.sample_rts,
            built.as_secs_f64(),
            if fast.findings == full.findings {
                ""
            } else {
                " (findings DIFFERENT)"
            }
        );
    }
    Ok(())
}

/// The watcher with tight stop ceilings on the nbl-hang machine: every stop it makes, on the
/// machine's own clock, against the ceiling plus one round trip; the samples and captures it
/// cut; a cut capture gone on with by the next.
async fn ceilings_bench(delay: Duration, resources: u32) -> anyhow::Result<()> {
    use crate::watch::{self, Control, config, hub::Hub};
    let (sample_ceiling, capture_ceiling) = (Duration::from_millis(250), Duration::from_secs(2));
    let mut c = kdnet_sim::SimConfig::demo();
    c.resources = resources;
    c.print_every = Duration::from_secs(3600);
    let (host, sim) = running_sim(c, delay).await?;
    let out = std::env::temp_dir().join(format!("kdnet-bench-ceilings-{}", std::process::id()));
    let common = config::Common {
        out: Some(out.clone()),
        sample_every: Some("1s".into()),
        cooldown: Some("1s".into()),
        max_per_hour: Some(100),
        max_stop: Some(format!(
            "sample={}ms,capture={}ms",
            sample_ceiling.as_millis(),
            capture_ceiling.as_millis()
        )),
        ..config::Common::default()
    };
    // The spec's own connection settings are not used: the session is given.
    let listen = kdnet_live::Listen {
        bind: host.local_addr(),
        key: Key::from_bytes(kdnet::rng::os_random_32()),
        target: None,
    };
    let spec = config::spec("ceilings", listen, Vec::new(), &common).map_err(anyhow::Error::msg)?;
    let hub = std::sync::Arc::new(Hub::new(None).silent());
    let mut events = hub.subscribe();
    let watched = tokio::spawn(async move {
        let mut seen: Vec<serde_json::Value> = Vec::new();
        while let Ok(v) = events.recv().await {
            seen.push(v);
        }
        seen
    });
    let stats_before = sim.target.stats();
    watch::watch(
        vec![(spec, host.clone())],
        hub,
        Control::Off,
        watch::Limits {
            max_captures: Some(3),
            duration: Some(Duration::from_secs(120)),
            lease: Duration::from_secs(60),
        },
    )
    .await?;
    let st = sim.target.stats();
    sim.target.shutdown().await;
    let seen = watched.await.unwrap_or_default();
    let _ = std::fs::remove_dir_all(&out);
    // A sample that finds something says what it cost in the capture's event.
    let samples: Vec<&serde_json::Value> = seen
        .iter()
        .filter(|e| {
            matches!(
                e["state"].as_str(),
                Some("sampled" | "sample-cut" | "capturing")
            )
        })
        .filter_map(|e| e.get("sample"))
        .collect();
    let captures: Vec<&serde_json::Value> =
        seen.iter().filter(|e| e["state"] == "captured").collect();
    let rtt = delay * 2;
    outln!(
        "\nstop ceilings on the watched nbl-hang machine ({resources} resources), RTT {rtt:?}: --max-stop sample={}s,capture={}s",
        sample_ceiling.as_secs_f64(),
        capture_ceiling.as_secs_f64()
    );
    outln!(
        "  samples: {}, {} cut at the ceiling; captures: {}, {} cut, {} going on from a cut one",
        samples.len(),
        samples.iter().filter(|s| s["cut"] == true).count(),
        captures.len(),
        captures.iter().filter(|c| c["cut"] == true).count(),
        captures
            .iter()
            .filter(|c| !c["continues"].is_null())
            .count()
    );
    let over = st.longest_stop.saturating_sub(capture_ceiling);
    outln!(
        "  the machine's stops (its own clock): {}, the longest {:.3} s: the capture ceiling + {:.1} ms (one round trip is {:.1} ms; the rest is this host's timers and scheduling)",
        st.stops_ended - stats_before.stops_ended,
        st.longest_stop.as_secs_f64(),
        over.as_secs_f64() * 1e3,
        rtt.as_secs_f64() * 1e3
    );
    Ok(())
}

/// A simulated machine over a link with `delay` each way, connected and stopped.
async fn stopped_sim(
    config: kdnet_sim::SimConfig,
    delay: Duration,
) -> anyhow::Result<(Host, kdnet_sim::Running)> {
    let key = Key::from_bytes(kdnet::rng::os_random_32());
    let host = Host::bind(HostConfig::new("127.0.0.1:0".parse()?, key.clone())).await?;
    let mut tc = TargetConfig::new("127.0.0.1:0".parse()?, host.local_addr(), key);
    tc.offer_interval = Duration::from_millis(500);
    let link = LinkConfig {
        latency: delay,
        ..LinkConfig::default()
    };
    let sim = kdnet_sim::start(config, tc, Some(link)).await?;
    host.wait_connected(Duration::from_secs(10)).await?;
    host.break_in(Duration::from_secs(10))
        .await
        .context("break-in")?;
    Ok((host, sim))
}

/// One command's figures: name, round trips, bytes, least round trips, pages, time, success.
type CommandRow = (String, u64, u64, u64, usize, Duration, bool);

/// Runs the analysis commands on a simulated nbl-hang machine over the link, each from a cold
/// cache, and prints what each cost against the least it could: on the built-in 20348 machine,
/// and with `tables` on 7601, 14393 and 22000 too, with a line comparing the builds.
async fn commands_bench(
    delay: Duration,
    resources: u32,
    tables: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    // (build, where the simulator's table comes from, the debugger's symbol path)
    let mut machines = vec![(20348, kdnet_sim::TableSource::Builtin, String::new())];
    if let Some(dir) = tables {
        for build in [7601, 14393, 22000] {
            let table = kdnet_sim::TableSource::Dir(dir.to_path_buf());
            machines.push((build, table, dir.display().to_string()));
        }
    }
    let mut totals = Vec::new();
    for (build, table, path) in machines {
        let mut config = kdnet_sim::SimConfig::demo();
        config.resources = resources;
        config.build = build;
        config.table = table;
        let rows = commands_on(config, delay, path, nbl_hang_commands).await?;
        outln!(
            "\ncommands on the simulated nbl-hang machine ({resources} resources, build {build}), RTT {:?}, each from a cold cache",
            delay * 2
        );
        print_rows(&rows, &mut totals, build);
    }
    // The I/O path at scale: the 0x44 machine with 10,000 more IRPs in flight.
    let mut config = kdnet_sim::SimConfig::demo();
    config.scenario = kdnet_sim::Scenario::IrpDoubleComplete;
    config.resources = resources.min(20_000);
    config.irps = IO_BENCH_IRPS;
    let rows = commands_on(config, delay, String::new(), io_commands).await?;
    outln!(
        "\nthe I/O path on the simulated irp-double-complete machine with {IO_BENCH_IRPS} more IRPs in flight (build 20348), RTT {:?}, each from a cold cache",
        delay * 2
    );
    let mut io_totals = Vec::new();
    print_rows(&rows, &mut io_totals, 20348);
    outln!(
        "  least RTs: per page touched, the span of bytes asked for over 3,944 bytes (a request cannot span two pages that are not physically adjacent)"
    );
    if totals.len() > 1 {
        outln!("  all nbl-hang commands, by build (round trips / least):");
        for (build, sum, least) in totals {
            outln!(
                "    {build:>5}  {sum:>7} / {least:>7} = {:.2}",
                sum as f64 / least.max(1) as f64
            );
        }
    }
    Ok(())
}

/// IRPs the I/O benchmark adds to the scenario's own.
const IO_BENCH_IRPS: u32 = 10_000;

/// The commands run on the nbl-hang machine.
fn nbl_hang_commands(f: &kdnet_sim::scenario::Facts) -> Vec<String> {
    let (hung, _) = f.hung_thread.unwrap_or((0, 0));
    let pdo = f.io.nic.map_or(0, |n| n.0);
    vec![
        "lm".to_string(),
        "k".into(),
        format!("!thread {hung:x}"),
        "!process 0 0".into(),
        "!running".into(),
        "!locks".into(),
        "!vm".into(),
        "!analyze".into(),
        format!("!pool {hung:x}"),
        "!poolused 2".into(),
        "!ndiskd.miniport".into(),
        "!ndiskd.pendingnbls".into(),
        "!deadlock".into(),
        "!stacks".into(),
        "!object \\Driver".into(),
        "!drvobj \\Driver\\myeth1g 7".into(),
        format!("!devstack {pdo:x}"),
        "!devnode 0 1".into(),
        "!handle 0 f 4".into(),
        "u nt!KiSwapThread L40".into(),
        "uf nt!KiSwapThread".into(),
        "!ready".into(),
        "!dpcs".into(),
        "!timer".into(),
        "!exqueue".into(),
        "!idt".into(),
        "!analyze -hang".into(),
        format!("!pte {hung:x}"),
        format!(
            "!pte {:x}",
            f.not_resident.first().map_or(hung, |&(va, _)| va)
        ),
        format!("!vtop 0 {hung:x}"),
    ]
}

/// The commands run on the irp-double-complete machine.
fn io_commands(f: &kdnet_sim::scenario::Facts) -> Vec<String> {
    let irp = f.io.double_irp.as_ref().map_or(0, |i| i.irp);
    let file = f.io.double_irp.as_ref().map_or(0, |i| i.file);
    vec![
        format!("!irp {irp:x} 1"),
        "!irpfind".into(),
        format!("!irpfind 0 0 fileobject {file:x}"),
        format!("!fileobj {file:x}"),
        "!drvobj \\Driver\\cimfs 7".into(),
        "!devstack \\Device\\CimfsVolume1".into(),
        "!object \\FileSystem\\Filters".into(),
        "!fltkd.filters".into(),
        "!fltkd.volumes".into(),
    ]
}

/// Prints one machine's rows and adds its totals.
fn print_rows(rows: &[CommandRow], totals: &mut Vec<(u32, u64, u64)>, build: u32) {
    {
        outln!(
            "  {:<22} {:>11} {:>11} {:>7} {:>11} {:>9} {:>9}",
            "command",
            "round trips",
            "bytes",
            "pages",
            "least RTs",
            "ratio",
            "time"
        );
        let (mut sum, mut least_sum) = (0u64, 0u64);
        for (c, rts, bytes, least, pages, took, ok) in rows.iter().cloned() {
            sum += rts;
            least_sum += least;
            outln!(
                "  {:<22} {:>11} {:>11} {:>7} {:>11} {:>9.2} {:>8.2}s{}",
                c.chars().take(22).collect::<String>(),
                rts,
                bytes,
                pages,
                least,
                rts as f64 / least.max(1) as f64,
                took.as_secs_f64(),
                if ok { "" } else { "  (failed)" }
            );
        }
        totals.push((build, sum, least_sum));
    }
}

/// The commands of the benchmark on one simulated machine, each from a cold cache.
async fn commands_on(
    config: kdnet_sim::SimConfig,
    delay: Duration,
    symbols: String,
    commands: fn(&kdnet_sim::scenario::Facts) -> Vec<String>,
) -> anyhow::Result<Vec<CommandRow>> {
    let key = Key::from_bytes(kdnet::rng::os_random_32());
    let host = Host::bind(HostConfig::new("127.0.0.1:0".parse()?, key.clone())).await?;
    let mut tc = TargetConfig::new("127.0.0.1:0".parse()?, host.local_addr(), key);
    tc.offer_interval = Duration::from_millis(500);
    let link = LinkConfig {
        latency: delay,
        ..LinkConfig::default()
    };
    let sim = kdnet_sim::start(config, tc, Some(link)).await?;
    let commands = commands(&sim.facts);
    host.wait_connected(Duration::from_secs(10)).await?;
    host.break_in(Duration::from_secs(10))
        .await
        .context("break-in")?;
    let rt = tokio::runtime::Handle::current();
    let h = host.clone();
    let rows = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<CommandRow>> {
        let target = kdnet_live::LiveTarget::new(h, rt)?;
        let k = kdnet_model::nt::Kernel::open(
            Box::new(target),
            kdnet_sim::symbols::symbol_path(&symbols),
        )?;
        let mut e = kdnet_commands::engine::Engine::new(k);
        // Symbols, module headers and exception tables are loaded once in a session: a first
        // pass warms them, the measured pass starts each command with a cold memory cache.
        for c in &commands {
            e.run(c);
        }
        let mut rows = Vec::new();
        for c in commands {
            e.kernel.mem.invalidate();
            e.kernel.mem.reset_needed();
            let t = Instant::now();
            let o = e.run(&c);
            let took = t.elapsed();
            rows.push((
                c,
                o.cost.round_trips,
                o.cost.bytes,
                e.kernel.mem.least_round_trips(),
                e.kernel.mem.needed_pages(),
                took,
                o.ok(),
            ));
        }
        Ok(rows)
    })
    .await??;
    host.resume(status::DBG_CONTINUE).await?;
    sim.target.shutdown().await;
    Ok(rows)
}

/// What the model's walk measured: entries, round trips, bytes fetched, time, (pages, least
/// round trips possible).
type WalkFigures = (usize, u64, u64, Duration, (usize, u64));

/// Walks ExpSystemResourcesList of a simulated kernel with `entries` resources, twice: a read
/// per node, then the kernel model.
async fn list_bench(delay: Duration, entries: u32) -> anyhow::Result<()> {
    let mut config = kdnet_sim::SimConfig::demo();
    config.scenario = kdnet_sim::Scenario::Healthy;
    config.resources = entries;
    let (host, sim) = stopped_sim(config, delay).await?;
    let nt = kdnet_symbols::builtin::nt_demo();
    let v = host.get_version().await?;
    let head = v.kern_base + nt.require_symbol("ExpSystemResourcesList")?;
    let link_off = nt.offset("_ERESOURCE", "SystemResourcesList")?;
    let node = nt.size_of("_ERESOURCE")? as usize;

    // A read per node, through the target's own translation.
    let before = host.stats();
    let t = Instant::now();
    let mut cur = u64::from_le_bytes(
        host.read_virtual(head, 8)
            .await?
            .try_into()
            .unwrap_or([0; 8]),
    );
    let mut naive = 0u64;
    while cur != head && naive < u64::from(entries) * 2 {
        let b = host.read_virtual(cur - link_off, node).await?;
        let at = link_off as usize;
        cur = u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]));
        naive += 1;
    }
    let naive_time = t.elapsed();
    let after = host.stats();
    let naive_rts = after.round_trips - before.round_trips;
    // Memory bytes the reads carried: each node, and the head's first link.
    let naive_bytes = naive * node as u64 + 8;

    // The kernel model.
    let rt = tokio::runtime::Handle::current();
    let h = host.clone();
    let (walked, model_rts, model_bytes, model_time, (pages, least)) =
        tokio::task::spawn_blocking(move || -> anyhow::Result<WalkFigures> {
            let target = kdnet_live::LiveTarget::new(h, rt)?;
            let path = kdnet_sim::symbols::symbol_path("");
            let mut k = kdnet_model::nt::Kernel::open(Box::new(target), path)?;
            let before = k.mem.stats();
            let t = Instant::now();
            let w = k.walk_list(head, Some((link_off, node)), entries as usize * 2, true)?;
            let took = t.elapsed();
            anyhow::ensure!(w.note.is_none(), "walk stopped: {:?}", w.note);
            let s = k.mem.stats().since(&before);
            // The least a walk can cost: each page the nodes lie on is a separate request
            // (pages here are not physically adjacent), and within a page the span from the
            // first to the last byte needed takes ceil(span / largest transfer) requests.
            let max = k.mem.target().max_transfer() as u64;
            let mut spans: std::collections::BTreeMap<u64, (u64, u64)> = Default::default();
            for e in &w.entries {
                let (mut a, end) = (e - link_off, e - link_off + node as u64);
                while a < end {
                    let page_end = (a | 0xfff) + 1;
                    let b = end.min(page_end);
                    let s = spans
                        .entry(a >> 12)
                        .or_insert((a & 0xfff, b - (a & !0xfff)));
                    s.0 = s.0.min(a & 0xfff);
                    s.1 = s.1.max(b - (a & !0xfff));
                    a = b;
                }
            }
            let least: u64 = spans.values().map(|(lo, hi)| (hi - lo).div_ceil(max)).sum();
            let pages = (spans.len(), least);
            Ok((
                w.entries.len(),
                s.transport.round_trips,
                s.bytes_fetched,
                took,
                pages,
            ))
        })
        .await??;
    anyhow::ensure!(
        walked as u64 == naive,
        "the walks disagree: {walked} vs {naive}"
    );
    host.resume(status::DBG_CONTINUE).await?;
    sim.target.shutdown().await;
    let needed = walked as u64 * node as u64;
    outln!(
        "\nlist walk: {walked} ERESOURCEs ({node} bytes each) on nt!ExpSystemResourcesList of the simulated kernel, RTT {:?}",
        delay * 2
    );
    outln!(
        "  {:<34}  {:>11}  {:>9}  {:>11}  {:>13}  {:>9}",
        "method",
        "round trips",
        "RT/entry",
        "bytes read",
        "read/needed",
        "time"
    );
    for (name, rts, bytes, time) in [
        (
            "a read per node (plain extension)",
            naive_rts,
            naive_bytes,
            naive_time,
        ),
        (
            "kernel model (cache, read-ahead)",
            model_rts,
            model_bytes,
            model_time,
        ),
    ] {
        outln!(
            "  {:<34}  {:>11}  {:>9.4}  {:>11}  {:>13.2}  {:>8.3}s",
            name,
            rts,
            rts as f64 / walked as f64,
            bytes,
            bytes as f64 / needed as f64,
            time.as_secs_f64()
        );
    }
    outln!(
        "  bytes needed: {needed} on {pages} pages; the least any walk needs is {least} round trips \
(a request per page, {} bytes at most each); the model used {:.2}x that, page tables included, and ran {:.1}x faster than a read per node",
        kdnet::api::MAX_TRANSFER,
        model_rts as f64 / least as f64,
        naive_time.as_secs_f64() / model_time.as_secs_f64()
    );
    Ok(())
}

/// One way of reading a range: name, bytes, round trips, time, success.
type ReadRow = (String, u64, u64, Duration, bool);

/// Reads the simulated kernel's image over the link, each from a cold cache: page by page (the
/// way `d*` read before long reads), then through `dq` and `.writemem`.
async fn memory_bench(delay: Duration) -> anyhow::Result<()> {
    const RANGE: u64 = 8 << 20;
    const DISPLAY: u64 = 1 << 20;
    let mut config = kdnet_sim::SimConfig::demo();
    config.scenario = kdnet_sim::Scenario::Healthy;
    config.resources = 500;
    let (host, sim) = stopped_sim(config, delay).await?;
    let out = std::env::temp_dir().join(format!("kdnet-bench-mem-{}", std::process::id()));
    std::fs::create_dir_all(&out)?;
    let file = out.join("nt.bin");
    let rt = tokio::runtime::Handle::current();
    let h = host.clone();
    let f = file.clone();
    let dir = out.clone();
    let (base, rows) =
        tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, Vec<ReadRow>)> {
            let target = kdnet_live::LiveTarget::new(h, rt)?;
            let k = kdnet_model::nt::Kernel::open(
                Box::new(target),
                kdnet_sim::symbols::symbol_path(""),
            )?;
            let mut e = kdnet_commands::engine::Engine::new(k);
            let base = e
                .kernel
                .mem
                .info()
                .kernel_base
                .context("the target names no kernel base")?;
            let mut rows = Vec::new();
            // Page by page, as `d*` read before: a read per page, each cut at 3,944 bytes.
            for len in [RANGE, DISPLAY] {
                e.kernel.mem.invalidate();
                let before = e.kernel.mem.stats();
                let t = Instant::now();
                let mut ok = true;
                for page in 0..len / 0x1000 {
                    ok &= e.kernel.mem.kread(base + page * 0x1000, 0x1000).is_ok();
                }
                let took = t.elapsed();
                let s = e.kernel.mem.stats().since(&before);
                rows.push((
                    format!("page by page, {} KiB", len >> 10),
                    len,
                    s.transport.round_trips,
                    took,
                    ok,
                ));
            }
            for (line, len) in [
                (format!("dq {base:x} L{:x}", DISPLAY / 8), DISPLAY),
                (
                    format!(".writemem {} {base:x} L?{RANGE:x}", f.display()),
                    RANGE,
                ),
            ] {
                e.kernel.mem.invalidate();
                let t = Instant::now();
                let o = e.run(&line);
                let took = t.elapsed();
                let name = line.split(' ').next().unwrap_or("").to_string();
                rows.push((
                    format!("{name}, {} KiB", len >> 10),
                    len,
                    o.cost.round_trips,
                    took,
                    o.ok() && o.complete,
                ));
            }
            // Whole dumps: every page of RAM (/f), the kernel's pages (/k), each page read
            // once past the cache.
            for (option, name) in [("/f", "complete.dmp"), ("/k", "kernel.dmp")] {
                e.kernel.mem.invalidate();
                let line = format!(".dump /o {option} {}", dir.join(name).display());
                let t = Instant::now();
                let o = e.run(&line);
                let took = t.elapsed();
                let pages = o.result["pages_read"].as_u64().unwrap_or(0);
                rows.push((
                    format!(".dump {option}, {pages} pages"),
                    pages * 0x1000,
                    o.cost.round_trips,
                    took,
                    o.ok() && o.complete,
                ));
            }
            Ok((base, rows))
        })
        .await??;
    let written = std::fs::metadata(&file).map_or(0, |m| m.len());
    let _ = std::fs::remove_dir_all(&out);
    host.resume(status::DBG_CONTINUE).await?;
    sim.target.shutdown().await;
    outln!(
        "\nlong reads of the simulated kernel image (from nt {base:#x}, mapped with 2 MB pages) and whole dumps of the machine, RTT {:?}, each from a cold cache",
        delay * 2
    );
    outln!(
        "  {:<24} {:>11} {:>11} {:>9} {:>15} {:>9}",
        "read",
        "bytes",
        "round trips",
        "bytes/RT",
        "ratio to 3,944",
        "time"
    );
    for (name, bytes, rts, took, ok) in rows {
        let per = bytes as f64 / rts.max(1) as f64;
        outln!(
            "  {:<24} {:>11} {:>11} {:>9.0} {:>15.3} {:>8.2}s{}",
            name,
            bytes,
            rts,
            per,
            per / f64::from(kdnet::api::MAX_TRANSFER),
            took.as_secs_f64(),
            if ok { "" } else { "  (failed)" }
        );
    }
    outln!(
        "  round trips include the page tables; .writemem wrote {written} bytes; the least possible is {} round trips for 8 MiB",
        RANGE.div_ceil(u64::from(kdnet::api::MAX_TRANSFER))
    );
    outln!(
        "  .dump rows: bytes are the pages read; round trips include the kernel's records (and for /k the page-table walk)"
    );
    Ok(())
}

/// What `kdnet mcp`'s `run` costs over the same command run as `kdnet run` runs it (break in,
/// open the kernel, run, let go on), on one simulated nbl-hang machine over the link: time and
/// round trips of each, side by side, and a long result's size whole and as the tool returns it
/// (stored, its first lines given). The tool is called through the server's handler with a
/// watcher of its own reached through its control socket, as `kdnet mcp --port` does; the
/// JSON-RPC framing of stdio or HTTP is not in the figures.
/// The cost of breakpoint hits on the bindflt-race machine, whose opener reaches
/// `nt!IofCompleteRequest` for every create: a condition on three fields of the IRP judged at
/// each hit (false but for the failed creates and the second completions) and the target let
/// go on, and a plain stop per `g`.
async fn breakpoint_bench(delay: Duration) -> anyhow::Result<()> {
    let mut c = kdnet_sim::SimConfig::demo();
    c.scenario = kdnet_sim::Scenario::BindfltRace;
    c.resources = 2000;
    c.print_every = Duration::from_secs(3600);
    let (host, sim) = running_sim(c, delay).await?;
    let planted = sim
        .facts
        .activity
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the bindflt-race machine has no activity"))?;
    // A failed create, or an IRP completed already (CurrentLocation past StackCount): three
    // fields of the IRP read at each hit.
    let condition = format!(
        "bp /w \"(dwo(@rcx+0x30) == 0xc000000d) | (by(@rcx+{:#x}) == by(@rcx+{:#x}) + 1)\" nt!IofCompleteRequest",
        planted.irp_current_location, planted.irp_stack_count
    );
    host.break_in(Duration::from_secs(10)).await?;
    let rt = tokio::runtime::Handle::current();
    let h = host.clone();
    let (judged, stops) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut e = kdnet_commands::engine::Engine::new(h.open(rt, crate::symbols::path(None))?);
        let run = |e: &mut kdnet_commands::engine::Engine,
                   c: &str|
         -> anyhow::Result<serde_json::Value> {
            let o = e.run(c);
            anyhow::ensure!(o.ok(), "{c}: {:?}", o.error);
            Ok(o.result)
        };
        // Judged hits: a condition read at each, false but for the failed creates and the
        // second completions.
        run(&mut e, &condition)?;
        let before = h.traffic();
        let t = Instant::now();
        let (mut passed, mut hits) = (0u64, 0u64);
        while passed < 2_000 && t.elapsed() < Duration::from_secs(120) {
            let g = run(&mut e, "g --max-seconds 60")?;
            passed += g["passed"].as_u64().unwrap_or(0);
            hits += u64::from(g["stops"][0]["reason"] == "breakpoint");
        }
        let judged = (
            passed + hits,
            h.traffic().round_trips - before.round_trips,
            t.elapsed(),
            hits,
        );
        // Plain stops: a `g` that stops at the first hit, and the next `g`.
        run(&mut e, "bc *")?;
        run(&mut e, "bp nt!IofCompleteRequest")?;
        run(&mut e, "g")?;
        let before = h.traffic();
        let t = Instant::now();
        let n = 50u64;
        for _ in 0..n {
            run(&mut e, "g")?;
        }
        let stops = (n, h.traffic().round_trips - before.round_trips, t.elapsed());
        run(&mut e, "bc *")?;
        Ok((judged, stops))
    })
    .await??;
    host.go().await?;
    let (n, rts, took, hits) = judged;
    outln!(
        "\nBreakpoint hits on the bindflt-race machine (its opener reaches nt!IofCompleteRequest for every create), RTT {:?}",
        delay * 2
    );
    outln!(
        "  {:<44} {:>8} {:>12} {:>8} {:>12} {:>10}",
        "",
        "hits",
        "round trips",
        "per hit",
        "time per hit",
        "hits/s"
    );
    outln!(
        "  {:<44} {:>8} {:>12} {:>8.2} {:>10.2} ms {:>10.0}",
        "condition of 3 fields judged, let go (least 5)",
        n,
        rts,
        rts as f64 / n.max(1) as f64,
        took.as_secs_f64() * 1e3 / n.max(1) as f64,
        n as f64 / took.as_secs_f64()
    );
    let (m, srts, stook) = stops;
    outln!(
        "  {:<44} {:>8} {:>12} {:>8.2} {:>10.2} ms {:>10.0}",
        "a stop shown per g (least 4)",
        m,
        srts,
        srts as f64 / m.max(1) as f64,
        stook.as_secs_f64() * 1e3 / m.max(1) as f64,
        m as f64 / stook.as_secs_f64()
    );
    outln!("  ({hits} of the judged hits were failed creates or second completions and stopped)");
    watcher_hits_bench(delay).await
}

/// What a watcher's breakpoint sustains on the bindflt-race machine: its hits per second, the
/// round trips of each and the share of the time the target was stopped, counting only and
/// capturing each failed create.
async fn watcher_hits_bench(delay: Duration) -> anyhow::Result<()> {
    use crate::watch::{self, Control, config, hub::Hub};
    const CONDITION: &str = "bp /w \"dwo(@rcx+0x30) == 0xc000000d\" nt!IofCompleteRequest";
    outln!(
        "\nA watcher's breakpoint on the same machine, {CONDITION}, 10 s each (RTT {:?})",
        delay * 2
    );
    outln!(
        "  {:<34} {:>8} {:>8} {:>9} {:>8} {:>10} {:>10}",
        "",
        "judged",
        "stopped",
        "bundles",
        "hits/s",
        "RT per hit",
        "held"
    );
    for capture in [false, true] {
        let mut c = kdnet_sim::SimConfig::demo();
        c.scenario = kdnet_sim::Scenario::BindfltRace;
        c.resources = 2000;
        c.print_every = Duration::from_secs(3600);
        let (hc, host, _sim) = listening_sim(c, delay).await?;
        let out = std::env::temp_dir().join(format!("kdnet-bench-bp-{}", std::process::id()));
        let script = out.join("hit.kds");
        std::fs::create_dir_all(&out)?;
        std::fs::write(&script, "k\n")?;
        let (list, counted) = if capture {
            (Some(vec![CONDITION.to_string()]), None)
        } else {
            (None, Some(vec![CONDITION.to_string()]))
        };
        let common = config::Common {
            out: Some(out.clone()),
            script: Some(script),
            breakpoints: list,
            count_breakpoints: counted,
            max_hit_stop: Some("100%".into()),
            max_per_hour: Some(1_000_000),
            cooldown: Some("0s".into()),
            ..config::Common::default()
        };
        let spec = config::spec("bench", hc, Vec::new(), &common).map_err(anyhow::Error::msg)?;
        let hub = std::sync::Arc::new(Hub::new(None).silent());
        let mut events = hub.subscribe();
        let last = tokio::spawn(async move {
            let mut last = serde_json::Value::Null;
            let mut armed_at = None;
            while let Ok(v) = events.recv().await {
                if v["note"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("breakpoints set"))
                {
                    armed_at.get_or_insert_with(Instant::now);
                }
                if v["note"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("breakpoint hits"))
                {
                    last = v;
                }
            }
            (last, armed_at)
        });
        let before = host.traffic();
        watch::watch(
            vec![(spec, host.clone())],
            hub,
            Control::Off,
            watch::Limits {
                max_captures: None,
                duration: Some(Duration::from_secs(10)),
                lease: Duration::from_secs(60),
            },
        )
        .await?;
        let rts = host.traffic().round_trips - before.round_trips;
        let (last, armed_at) = last.await?;
        let took = armed_at.map_or(Duration::from_secs(10), |t| t.elapsed());
        let b = &last["breakpoints"][0];
        let n = |k: &str| b[k].as_u64().unwrap_or(0);
        let (stopped, judged) = (
            n("captured") + n("counted") + n("skipped"),
            n("captured") + n("counted") + n("skipped") + n("passed"),
        );
        let held = last["held_seconds"].as_f64().unwrap_or(0.0);
        outln!(
            "  {:<34} {:>8} {:>8} {:>9} {:>8.0} {:>10.2} {:>9.0}%",
            if capture {
                "capture each failed create"
            } else {
                "count the failed creates"
            },
            judged,
            stopped,
            n("captured"),
            judged as f64 / took.as_secs_f64(),
            rts as f64 / judged.max(1) as f64,
            held * 100.0 / took.as_secs_f64()
        );
        let _ = std::fs::remove_dir_all(&out);
    }
    outln!(
        "  (round trips per hit include arming, the captures' and the ending's; held: the share of the time hits kept the target stopped, as the watcher measures it)"
    );
    Ok(())
}

async fn mcp_bench(delay: Duration, resources: u32) -> anyhow::Result<()> {
    use crate::mcp::server::{Server, Settings};
    use crate::mcp::sources::{Events, Watcher};
    use crate::watch::{self, Control, config, hub::Hub};
    let mut sim_config = kdnet_sim::SimConfig::demo();
    sim_config.resources = resources;
    let (host, _sim) = running_sim(sim_config, delay).await?;
    let commands = ["!locks", "!process 0 7"];
    // As `kdnet run` does it.
    let mut direct = Vec::new();
    for c in commands {
        let before = host.traffic();
        let t = Instant::now();
        host.break_in(Duration::from_secs(10)).await?;
        let rt = tokio::runtime::Handle::current();
        let h = host.clone();
        let text_len = tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
            let mut e =
                kdnet_commands::engine::Engine::new(h.open(rt, crate::symbols::path(None))?);
            let o = e.run(c);
            anyhow::ensure!(o.ok(), "{c}: {:?}", o.error);
            Ok(serde_json::to_string(&o.result)?.len() + o.text.len())
        })
        .await??;
        host.go().await?;
        let rts = host.traffic().round_trips - before.round_trips;
        direct.push((rts, t.elapsed(), text_len));
    }
    // Through the MCP server, its watcher holding the same session.
    let dir = std::env::temp_dir().join(format!("kdnet-bench-mcp-{}", std::process::id()));
    let sock = dir.join("control.sock");
    let common = config::Common {
        out: Some(dir.join("bundles")),
        ..config::Common::default()
    };
    let hc = kdnet_live::Listen {
        bind: host.local_addr(),
        key: Key::from_bytes([0; 32]),
        target: None,
    };
    let spec = config::spec("bench", hc, Vec::new(), &common).map_err(anyhow::Error::msg)?;
    let hub = std::sync::Arc::new(Hub::new(None).silent());
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let watcher = tokio::spawn(watch::watch_until(
        vec![(spec, host.clone())],
        hub,
        Control::At(sock.clone()),
        watch::Limits {
            max_captures: None,
            duration: Some(Duration::from_secs(600)),
            lease: Duration::ZERO,
        },
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
    ));
    let t = Instant::now();
    while !sock.exists() {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(10),
            "the watcher did not start"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let server = Server::new(
        Settings {
            allow_control: false,
            max_result_bytes: 64 * 1024,
            symbols: None,
            bundle_dirs: Vec::new(),
            remote: false,
        },
        vec![std::sync::Arc::new(Watcher::new(sock.clone()))],
        Vec::new(),
        std::sync::Arc::new(std::sync::Mutex::new(Events::default())),
    );
    // The watcher's target is running once it has looked at it.
    let t = Instant::now();
    loop {
        let v = server.call_json("targets", serde_json::json!({})).await;
        if v.as_ref()
            .is_ok_and(|v| v["targets"][0]["state"] == "running")
        {
            break;
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(30),
            "the target did not come up: {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    outln!(
        "\nMCP `run` against `kdnet run` on one nbl-hang machine ({resources} resources), RTT {:?}: each breaks in, runs, lets go on",
        delay * 2
    );
    outln!(
        "  {:<14} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9} {:>12} {:>12} {:>9}",
        "command",
        "run RTs",
        "mcp RTs",
        "run time",
        "mcp time",
        "+RTs",
        "+ms",
        "whole bytes",
        "given bytes",
        "~tokens"
    );
    for (c, (rts, took, whole)) in commands.iter().zip(direct) {
        let before = host.traffic();
        let t = Instant::now();
        let v = server
            .call_json(
                "run",
                serde_json::json!({ "target": "bench", "command": c, "timeout_ms": 120000 }),
            )
            .await
            .map_err(anyhow::Error::msg)?;
        let mcp_took = t.elapsed();
        let mcp_rts = host.traffic().round_trips - before.round_trips;
        anyhow::ensure!(v["results"][0]["ok"] == true, "{c}: {v}");
        let given = v.to_string().len();
        let whole = v["stored"]["bytes"].as_u64().map_or(whole, |b| b as usize);
        outln!(
            "  {:<14} {:>10} {:>10} {:>9.3}s {:>9.3}s {:>9} {:>9.1} {:>12} {:>12} {:>9}",
            c,
            rts,
            mcp_rts,
            took.as_secs_f64(),
            mcp_took.as_secs_f64(),
            mcp_rts as i64 - rts as i64,
            (mcp_took.as_secs_f64() - took.as_secs_f64()) * 1e3,
            whole,
            given,
            given / 4
        );
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(30), watcher).await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
