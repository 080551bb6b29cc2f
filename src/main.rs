//! `kdnet`: Windows kernel debugging over the network.

#[macro_use]
mod out;
mod analysis;
mod bench;
mod connect;
mod decode;
mod demo;
mod duration;
mod mcp;
mod open;
mod progress;
mod recovery;
mod repl;
mod run;
mod signals;
mod sim;
mod symbols;
mod sys;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit codes, as scripts expect them.
pub mod exit {
    /// Everything worked.
    pub const OK: u8 = 0;
    /// A command failed.
    pub const FAILED: u8 = 1;
    /// No target could be reached.
    pub const NO_CONNECTION: u8 = 2;
    /// The arguments were wrong.
    pub const BAD_ARGUMENTS: u8 = 3;
    /// Every command ran, but a result is incomplete (something it needed could not be read,
    /// or a walk stopped early): the output says what is missing.
    pub const INCOMPLETE: u8 = 4;

    /// How much a code outweighs others when several apply: no target, then bad arguments,
    /// then a failed command, then an incomplete result.
    fn weight(code: u8) -> u8 {
        match code {
            NO_CONNECTION => 4,
            BAD_ARGUMENTS => 3,
            FAILED => 2,
            INCOMPLETE => 1,
            OK => 0,
            // Unknown codes count as failures.
            _ => 2,
        }
    }

    /// The code that wins of `a` and `b`.
    pub fn worst(a: u8, b: u8) -> u8 {
        if weight(b) > weight(a) { b } else { a }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn precedence() {
            assert_eq!(worst(OK, INCOMPLETE), INCOMPLETE);
            assert_eq!(worst(INCOMPLETE, FAILED), FAILED);
            assert_eq!(worst(FAILED, INCOMPLETE), FAILED);
            assert_eq!(worst(FAILED, BAD_ARGUMENTS), BAD_ARGUMENTS);
            assert_eq!(worst(BAD_ARGUMENTS, NO_CONNECTION), NO_CONNECTION);
            assert_eq!(worst(NO_CONNECTION, BAD_ARGUMENTS), NO_CONNECTION);
            assert_eq!(worst(INCOMPLETE, OK), INCOMPLETE);
            // The numeric maximum would have let 4 win over 1, 2 and 3.
            assert_eq!(worst(INCOMPLETE, NO_CONNECTION), NO_CONNECTION);
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "kdnet",
    version,
    about = "Windows kernel debugging over the network (KDNET)",
    long_about = "kdnet speaks the KDNET protocol (UDP, AES-256-CBC, HMAC-SHA256, KD packets, DBGKD APIs) \
with a Windows machine booted with `bcdedit /dbgsettings net hostip:H port:P key:K`."
)]
struct Cli {
    /// More log output (-v info, -vv debug). Keys are never logged.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The built-in demo: a simulated Windows Server 2022 machine runs healthy, then hangs (a
    /// PnP remove waits on NDIS, which waits on packets a NIC miniport never returns); a watcher
    /// samples it over encrypted KDNET on loopback, notices, breaks in, captures a bundle
    /// (report.html, report.json, snapshot.dmp) and lets the machine go on. `-v` adds the
    /// protocol's counters.
    Demo(demo::Args),
    /// Decode a pcap/pcapng capture (gzip too) of a KDNET session.
    Decode(decode::Args),
    /// Run commands on a crash dump: `kdnet open memory.dmp -c "lm; k"`.
    Open(open::Args),
    /// Wait for a live target, break in, run commands, let it continue:
    /// `kdnet run --port 50000 --key-file key.txt -c "lm; k"`.
    Run(Box<run::Args>),
    /// The interactive prompt on a live target:
    /// `kdnet repl --port 50000 --key-file key.txt` (or `-k net:port=50000,key=…`).
    Repl(Box<repl::Args>),
    /// Watch targets; when one hangs (sampling, a failing probe, a DbgPrint line) or stops by
    /// itself (a bugcheck), capture a bundle and let it go on:
    /// `kdnet watch --port 50000 --key-file key.txt --out DIR` or `--config targets.toml`.
    Watch(Box<watch::Args>),
    /// Talk to a running watcher: `kdnet ctl list`, `events`, `capture NAME`, `break NAME`,
    /// `run NAME !locks`, `continue NAME`.
    Ctl(watch::control::CtlArgs),
    /// Ask a running watcher for a capture of NAME now: `kdnet capture web-01`.
    Capture(CaptureArgs),
    /// Serve the debugger to agents and programs over the Model Context Protocol (stdio, or
    /// Streamable HTTP): a running watcher's targets (`--watch-socket PATH`), a target it
    /// attaches (`--port P --key-file F`) or dumps (`--dump FILE`).
    Mcp(Box<mcp::Args>),
    /// Run a simulated Windows target (booted with network debugging) for a debugger to attach.
    Sim(Box<sim::Args>),
    /// Measure: datagram sealing and opening per second, and memory-read throughput over a
    /// loopback link with an injected delay, against the protocol limit.
    Bench(bench::Args),
}

#[derive(clap::Args, Debug)]
struct CaptureArgs {
    /// The target's name in the watcher.
    name: String,
    /// The watcher's control socket.
    #[arg(long)]
    control: Option<PathBuf>,
    /// Print the raw JSON answer.
    #[arg(long)]
    json: bool,
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KDNET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    exit::OK
                }
                _ => exit::BAD_ARGUMENTS,
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_logging(cli.verbose);
    let verbose = cli.verbose > 0;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kdnet: cannot start the runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo(a) => demo::run(a, verbose).await,
            Command::Decode(a) => decode::run(a),
            Command::Bench(a) => bench::run(a).await,
            Command::Sim(a) => sim::run(*a).await,
            Command::Open(a) => open::run(a, verbose).await,
            Command::Run(a) => run::run(*a, verbose).await,
            Command::Repl(a) => repl::run(*a, verbose).await,
            Command::Watch(a) => watch::run(*a).await,
            Command::Ctl(a) => watch::control::run(a).await,
            Command::Mcp(a) => mcp::run(*a).await,
            Command::Capture(a) => {
                watch::control::run(watch::control::CtlArgs::capture(a.name, a.control, a.json))
                    .await
            }
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("kdnet: {e:#}");
            ExitCode::from(exit::FAILED)
        }
    }
}
