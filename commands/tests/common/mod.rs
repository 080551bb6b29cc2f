//! Helpers shared by the commands crate's tests: the model's (the simulated machine on every
//! shared build), and a symbol server.
#![allow(dead_code)]

#[path = "../../../model/tests/common/mod.rs"]
mod sim;
#[allow(unused_imports)]
pub use sim::*;

/// The real triage dump of ../shared opened as a kernel with its PDBs on the symbol path, or
/// None (with a note) when ../shared is absent and not required.
pub fn triage_kernel() -> Option<kdnet_model::nt::Kernel> {
    let dir = shared()?;
    let d = kdnet_model::dump::DumpFile::open(&dir.join("dumps/triage_x64.dmp")).unwrap();
    Some(
        kdnet_model::nt::Kernel::open(
            Box::new(d),
            kdnet_symbols::path::SymbolPath::parse(&dir.join("pdbs").display().to_string()),
        )
        .unwrap(),
    )
}

/// A symbol server on loopback serving `files` (URL path → body) under `/symbols`; every other
/// path is a 404. Returns the base URL.
pub fn symbol_server(files: Vec<(String, Vec<u8>)>) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(64) {
            let Ok(mut s) = stream else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap_or(0);
            loop {
                let mut l = String::new();
                if r.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                    break;
                }
            }
            let wanted = line.split_whitespace().nth(1).unwrap_or("").to_string();
            match files.iter().find(|(p, _)| format!("/symbols{p}") == wanted) {
                Some((_, body)) => {
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(body);
                }
                None => {
                    let _ = write!(
                        s,
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                }
            }
        }
    });
    format!("http://{addr}/symbols")
}

/// Every registered command's examples as command lines for a scenario: `{lock}`, `{thread}`,
/// `{pool}`, `{special}` and `{miniport}` become what the scenario planted, `{dir}` the
/// directory `dir` (where examples write their files); an example that names something the
/// scenario did not plant is left out.
pub fn example_lines(
    f: &kdnet_sim::scenario::Facts,
    dir: &std::path::Path,
) -> Vec<(&'static kdnet_commands::registry::Command, String)> {
    let mut planted = std::collections::BTreeMap::new();
    if let Some(l) = f.held.first() {
        planted.insert("lock", l.address);
    }
    if let Some((t, _)) = f.hung_thread {
        planted.insert("thread", t);
    }
    if let Some(c) = &f.corruption {
        planted.insert("pool", c.victim_of_overrun);
        planted.insert("special", c.special);
    }
    if f.ndis.holder != 0 {
        planted.insert("miniport", f.ndis.holder);
    }
    if let Some(i) = &f.io.double_irp {
        planted.insert("irp", i.irp);
        planted.insert("file", i.file);
    }
    if let Some((pdo, _, node)) = f.io.nic {
        planted.insert("pdo", pdo);
        planted.insert("devnode", node);
    }
    if let Some(flt) = f.io.flt.filters.first() {
        planted.insert("filter", flt.filter);
        if let Some(i) = flt.instances.first() {
            planted.insert("instance", *i);
        }
    }
    if let Some(v) = f.io.flt.volumes.first() {
        planted.insert("fltvolume", v.volume);
    }
    if let Some(x) = &f.exception {
        planted.insert("cxr", x.context_record);
        planted.insert("exr", x.exception_record);
        planted.insert("trapframe", x.trap_frame);
    }
    if let Some(p) = &f.io.pended_create {
        planted.insert("irpctrl", p.irp_ctrl);
        planted.insert("cbd", p.cbd);
    }
    if let Some((pid, handle, _, _)) = f.io.handles.first() {
        planted.insert("pid", *pid);
        planted.insert("handle", *handle);
    }
    let mut out = Vec::new();
    for c in kdnet_commands::registry::COMMANDS {
        'examples: for x in c.examples {
            let mut line = x.to_string();
            while let Some(i) = line.find('{') {
                let j = line[i..]
                    .find('}')
                    .map(|j| j + i)
                    .unwrap_or_else(|| panic!("{x}: a '{{' without its '}}'"));
                let key = line[i + 1..j].to_string();
                if key == "dir" {
                    line.replace_range(i..=j, &dir.display().to_string());
                    continue;
                }
                match planted.get(key.as_str()) {
                    Some(v) => line.replace_range(i..=j, &format!("{v:x}")),
                    None => continue 'examples,
                }
            }
            out.push((c, line.trim().to_string()));
        }
    }
    out
}

/// A result with its 64-bit values (the JSON's `"0x…"` strings) as numbers again, for tests
/// that compare them with what the simulator planted. The strings' form is checked where it is
/// the subject (the hex unit tests, the published schemas, the jq test).
pub fn numbers(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => match kdnet_commands::hex::parse(&Value::String(s.clone())) {
            Some(n) if s.len() == 18 => Value::from(n),
            _ => Value::String(s),
        },
        Value::Array(a) => Value::Array(a.into_iter().map(numbers).collect()),
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, numbers(v))).collect()),
        v => v,
    }
}

/// A simulated machine served through `tamper`, which sees every read's address and the
/// bytes the machine gave (how many: its return) and may change them or cut the read short
/// (`physical` tells which kind of read it is).
pub struct Tampered<F> {
    pub machine: std::sync::Arc<std::sync::Mutex<kdnet_sim::Machine>>,
    pub tamper: F,
}

impl<F> kdnet::target::TargetHandler for Tampered<F>
where
    F: FnMut(bool, u64, &mut [u8], usize) -> usize + Send + 'static,
{
    fn version(&mut self) -> kdnet::api::GetVersion64 {
        self.machine.lock().unwrap().version()
    }
    fn read_virtual(&mut self, processor: u16, address: u64, buf: &mut [u8]) -> usize {
        let n = self
            .machine
            .lock()
            .unwrap()
            .read_virtual(processor, address, buf);
        (self.tamper)(false, address, buf, n)
    }
    fn read_physical(&mut self, address: u64, buf: &mut [u8]) -> usize {
        let n = self.machine.lock().unwrap().read_physical(address, buf);
        (self.tamper)(true, address, buf, n)
    }
    fn read_control_space(&mut self, processor: u16, index: u64, buf: &mut [u8]) -> Option<usize> {
        self.machine
            .lock()
            .unwrap()
            .read_control_space(processor, index, buf)
    }
    fn context(&mut self, processor: u16) -> Option<kdnet::api::Context> {
        self.machine.lock().unwrap().context(processor)
    }
    fn stop_report(&mut self, reason: kdnet::target::StopReason) -> kdnet::api::StateChange64 {
        self.machine.lock().unwrap().stop_report(reason)
    }
}
