//! Reaching a live target: the connection options `run` and `repl` share (`--port`, the key,
//! `--target`, or WinDbg's `-k net:port=…,key=…[,target=…]`), and the wait for the handshake
//! with WinDbg's messages in substance.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use kdnet_live::{Key, Listen, Session};

use crate::exit;

/// How to reach a target.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnectArgs {
    /// UDP port the target sends to (the `port:` of `bcdedit /dbgsettings net`).
    #[arg(long)]
    pub port: Option<u16>,
    /// Local address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: IpAddr,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Accept only this target (address or address:port).
    #[arg(long)]
    pub target: Option<String>,
    /// WinDbg's connection string: `net:port=50000,key=a.b.c.d[,target=IP]`.
    #[arg(short = 'k', value_name = "net:port=P,key=K[,target=IP]")]
    pub kernel: Option<String>,
    /// How long to wait for the target to connect.
    #[arg(long, default_value = "60s", value_parser = crate::duration::parse)]
    pub connect_timeout: Duration,
}

/// Where the key comes from: a file, an environment variable, or the command line (which
/// shows in the process list). Every command that needs a key takes these.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct KeyArgs {
    /// File holding the key (`a.b.c.d`, as bcdedit printed it).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Environment variable holding the key.
    #[arg(long)]
    pub key_env: Option<String>,
    /// The key itself (it shows in the process list: prefer --key-file or --key-env).
    #[arg(long)]
    pub key: Option<String>,
}

impl KeyArgs {
    /// The key given, if one was: from the file, the variable, or the command line (`--key`,
    /// or `also`: a key given some other way on the command line, such as `-k net:…,key=…`),
    /// with a warning for the command line. More than one is an error; the error is for the
    /// user.
    pub fn given(&self, also: Option<&str>) -> Result<Option<Key>, String> {
        let count = [
            self.key_file.is_some(),
            self.key_env.is_some(),
            self.key.is_some(),
            also.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if count > 1 {
            return Err("give the key once: --key-file, --key-env, --key or -k net:…,key=…".into());
        }
        if let Some(f) = &self.key_file {
            let text = std::fs::read_to_string(f)
                .map_err(|e| format!("cannot read the key file {}: {e}", f.display()))?;
            return parse_key(&text, &f.display().to_string()).map(Some);
        }
        if let Some(v) = &self.key_env {
            let text = std::env::var(v).map_err(|_| format!("the variable {v} is not set"))?;
            return parse_key(&text, &format!("${v}")).map(Some);
        }
        if let Some(k) = self.key.as_deref().or(also) {
            eprintln!(
                "kdnet: warning: a key on the command line shows in the process list; prefer --key-file or --key-env"
            );
            return parse_key(k, "the command line").map(Some);
        }
        Ok(None)
    }

    /// The key given, else one typed at the terminal (without echo).
    pub fn resolve(&self, also: Option<&str>) -> Result<Key, String> {
        match self.given(also)? {
            Some(k) => Ok(k),
            None => parse_key(&read_key_from_terminal()?, "the prompt"),
        }
    }
}

/// The parts of a `-k net:…` string.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NetString {
    /// `port=`.
    pub port: Option<u16>,
    /// `key=`.
    pub key: Option<String>,
    /// `target=` (or `hostip=`'s counterpart on this side: the machine to accept).
    pub target: Option<String>,
}

/// Parses WinDbg's `net:port=…,key=…[,target=…]`.
pub fn parse_net(s: &str) -> Result<NetString, String> {
    let rest = s
        .strip_prefix("net:")
        .or_else(|| s.strip_prefix("NET:"))
        .ok_or_else(|| format!("-k {s:?}: only net:port=…,key=… connections are supported"))?;
    let mut out = NetString::default();
    for part in rest.split(',').filter(|p| !p.trim().is_empty()) {
        let (name, value) = part
            .split_once('=')
            .ok_or_else(|| format!("-k: {part:?} is not name=value"))?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "port" => {
                out.port = Some(
                    value
                        .parse()
                        .map_err(|_| format!("-k: port={value} is not a port number"))?,
                )
            }
            "key" => out.key = Some(value.to_string()),
            "target" => out.target = Some(value.to_string()),
            other => return Err(format!("-k: unknown setting {other:?} (port, key, target)")),
        }
    }
    if out.port.is_none() {
        return Err("-k: port= is required".into());
    }
    Ok(out)
}

fn read_key_from_terminal() -> Result<String, String> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err("give the key with --key-file, --key-env or -k net:…,key=…".into());
    }
    eprint!("Key (as bcdedit printed it): ");
    let _ = std::io::stderr().flush();
    let echo_off = hide_input(true);
    let mut line = String::new();
    let r = stdin.lock().read_line(&mut line);
    if echo_off {
        hide_input(false);
        eprintln!();
    }
    r.map_err(|e| format!("reading the key: {e}"))?;
    Ok(line.trim().to_string())
}

/// Turns terminal echo off or on (best effort, through `stty`).
fn hide_input(hide: bool) -> bool {
    if cfg!(unix) {
        std::process::Command::new("stty")
            .arg(if hide { "-echo" } else { "echo" })
            .stdin(std::process::Stdio::inherit())
            .status()
            .is_ok_and(|s| s.success())
    } else {
        false
    }
}

fn parse_key(text: &str, from: &str) -> Result<Key, String> {
    Key::parse(text.trim()).map_err(|e| format!("the key in {from}: {e}"))
}

impl ConnectArgs {
    /// Checks the options and finds the key; the error is for the user (exit code 3).
    pub fn resolve(&self) -> Result<Listen, String> {
        let net = self.kernel.as_deref().map(parse_net).transpose()?;
        let port = match (self.port, net.as_ref().and_then(|n| n.port)) {
            (Some(_), Some(_)) => return Err("give the port with --port or -k, not both".into()),
            (Some(p), None) | (None, Some(p)) => p,
            (None, None) => return Err("give the port: --port P or -k net:port=P,key=K".into()),
        };
        let net_key = net.as_ref().and_then(|n| n.key.clone());
        let key = self.keys.resolve(net_key.as_deref())?;
        let mut config = Listen {
            bind: SocketAddr::new(self.bind, port),
            key,
            target: None,
        };
        let target = match (
            self.target.clone(),
            net.as_ref().and_then(|n| n.target.clone()),
        ) {
            (Some(_), Some(_)) => {
                return Err("give the target with --target or -k, not both".into());
            }
            (Some(t), None) | (None, Some(t)) => Some(t),
            (None, None) => None,
        };
        if let Some(t) = target {
            config.target = Some(target_addr(&t, port)?);
        }
        Ok(config)
    }
}

fn target_addr(s: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, port))
        .map_err(|_| format!("target {s:?} is not an address"))
}

/// Checks the options and listens; Err holds the exit code (the reason is printed).
pub async fn bind(a: &ConnectArgs) -> Result<Session, u8> {
    let config = match a.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kdnet: {e}");
            return Err(exit::BAD_ARGUMENTS);
        }
    };
    let at = config.bind;
    Session::listen(config).await.map_err(|e| {
        eprintln!("kdnet: cannot listen on UDP {at}: {e}");
        exit::NO_CONNECTION
    })
}

/// Binds and waits for the handshake, printing what WinDbg prints. Err holds the exit code.
pub async fn connect(a: &ConnectArgs) -> Result<Session, u8> {
    let host = bind(a).await?;
    eprintln!("Using NET for debugging");
    eprintln!(
        "Waiting to reconnect... (UDP {}, up to {:?})",
        host.local_addr(),
        a.connect_timeout
    );
    match host.wait_connected(a.connect_timeout).await {
        Ok(peer) => {
            eprintln!(
                "Connected to target {} on port {} on local IP {}.",
                peer.ip(),
                host.local_addr().port(),
                host.local_addr().ip()
            );
            if let Some(said) = crate::recovery::recover(&host).await {
                eprintln!("{said}");
            }
            Ok(host)
        }
        Err(e) => {
            eprintln!("kdnet: no target connected: {e}");
            Err(exit::NO_CONNECTION)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_strings() {
        let n = parse_net("net:port=50000,key=1.2.3.4,target=10.0.0.5").unwrap();
        assert_eq!(n.port, Some(50000));
        assert_eq!(n.key.as_deref(), Some("1.2.3.4"));
        assert_eq!(n.target.as_deref(), Some("10.0.0.5"));
        assert!(parse_net("com:port=com1").is_err());
        assert!(parse_net("net:key=1.2.3.4").unwrap_err().contains("port"));
        assert!(parse_net("net:port=99999,key=1.2.3.4").is_err());
        assert!(
            parse_net("net:port=1,bogus=2")
                .unwrap_err()
                .contains("bogus")
        );
    }

    #[test]
    fn one_key_one_port() {
        let base = ConnectArgs {
            port: None,
            bind: "127.0.0.1".parse().unwrap(),
            keys: KeyArgs::default(),
            target: None,
            kernel: Some("net:port=5,key=1.2.3.4,target=10.1.1.1".into()),
            connect_timeout: Duration::from_secs(1),
        };
        let c = base.resolve().unwrap();
        assert_eq!(c.bind.port(), 5);
        assert_eq!(c.target, Some("10.1.1.1:5".parse().unwrap()));
        let mut two = base.clone();
        two.keys.key = Some("1.2.3.4".into());
        assert!(two.resolve().unwrap_err().contains("once"));
        let mut ports = base.clone();
        ports.port = Some(6);
        assert!(ports.resolve().is_err());
        let mut bad = base;
        bad.kernel = Some("net:port=5,key=1.2.3".into());
        assert!(bad.resolve().is_err());
    }
}
