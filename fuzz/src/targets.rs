//! The fuzz targets' entry points: each takes arbitrary bytes, feeds them to one decoder or file
//! reader the way the tool does, and asserts what must hold for any input (no panic, no abort,
//! round trips where the format has them, errors that point inside the input). The libFuzzer
//! targets in `fuzz_targets/` call these; `tests/fuzz_corpora.rs` runs every corpus file
//! through them on the stable toolchain.

use kdnet::api::{Context, DebugIo, FileIo, GetVersion64, Manipulate, StateChange64};
use kdnet::kd::Packet;
use kdnet::wire::datagram::{self, Channel};
use kdnet::wire::{ControlMessage, DataPayload, Key};
use kdnet_commands::expr::{self, ExprError};
use kdnet_model::dump::DumpFile;
use kdnet_model::nt::Kernel;
use kdnet_model::nt::unwind::Regs;
use kdnet_model::target::Target;
use kdnet_symbols::path::SymbolPath;
use kdnet_symbols::{TypeTable, isf, pdb};

/// The key the datagram seeds are sealed with.
pub const KEY: &str = "1.2.3.4";

/// KDNET datagrams: the outer framing (`peek`, `open`) on the raw bytes; then the bytes as the
/// plaintext of a datagram sealed with the key, which must open to exactly what splitting the
/// plaintext gives (inner header, padding, payload); the control-message decoder and the data
/// classifier on the payload.
pub fn datagram(data: &[u8]) {
    let key = Key::parse(KEY).expect("a valid key");
    let (ck, hk) = (key.bytes(), key.hmac_key());
    let _ = datagram::peek(data);
    if let Ok(o) = datagram::open(data, ck, &hk) {
        payload(&o.payload, o.channel);
    }
    if !data.is_empty() && data.len() <= 1488 {
        let mut plain = data.to_vec();
        plain.resize(plain.len().div_ceil(16) * 16, 0);
        for channel in [Channel::Control, Channel::Data] {
            let sealed = datagram::seal_plaintext(4, channel, ck, &hk, &plain);
            assert_eq!(datagram::peek(&sealed), Ok((4, channel)));
            let opened = datagram::open(&sealed, ck, &hk);
            let split = datagram::split_plaintext(&plain);
            match (opened, split) {
                (Ok(o), Ok((h, p))) => {
                    assert_eq!((o.header, o.payload.as_slice()), (h, p));
                    payload(p, channel);
                }
                (Err(a), Err(b)) => assert_eq!(a, b),
                (a, b) => panic!("open and split disagree: {a:?} / {b:?}"),
            }
        }
    }
    payload(data, Channel::Control);
    payload(data, Channel::Data);
}

fn payload(p: &[u8], channel: Channel) {
    match channel {
        Channel::Control => {
            if let Ok(m) = ControlMessage::decode(p) {
                assert_eq!(ControlMessage::decode(&m.encode()), Ok(m.clone()));
            }
        }
        _ => {
            if let DataPayload::Kd(b) = DataPayload::classify(p) {
                kd_packet(b);
            }
        }
    }
}

/// KD packets: a packet that decodes encodes back to a packet that decodes the same; the data
/// of a data packet goes to the DBGKD decoders.
pub fn kd_packet(data: &[u8]) {
    let _ = Packet::decode_unchecked(data);
    if let Ok(p) = Packet::decode(data) {
        let again = Packet::decode(&p.encode()).expect("an encoded packet decodes");
        assert!(again == p, "a packet changed through encode and decode");
        if p.is_data() {
            dbgkd_all(&p.data);
        }
    }
}

/// DBGKD structures: the first byte chooses the decoder (Manipulate, StateChange64, DebugIo,
/// FileIo, Context, GetVersion64), the rest is its input.
pub fn dbgkd(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 6 {
        0 => manipulate(rest),
        1 => state_change(rest),
        2 => {
            let _ = DebugIo::decode(rest);
            let _ = DebugIo::get_string_reply(rest, b"answer");
        }
        3 => {
            let _ = FileIo::decode(rest);
            let _ = FileIo::no_such_file_reply(rest);
        }
        4 => {
            if let Ok(c) = Context::from_bytes(rest) {
                let back = Context::from_bytes(c.as_bytes()).expect("a context decodes");
                assert!(back == c, "a context changed through its bytes");
            }
        }
        _ => {
            let v = GetVersion64::decode(rest);
            assert_eq!(GetVersion64::decode(&v.encode()), v);
        }
    }
}

fn dbgkd_all(data: &[u8]) {
    manipulate(data);
    state_change(data);
    let _ = DebugIo::decode(data);
    let _ = FileIo::decode(data);
}

fn manipulate(data: &[u8]) {
    if let Ok(m) = Manipulate::decode(data) {
        let _ = m.body();
        let _ = m.answers(&m);
        let _ = format!("{m:?}");
        assert!(Manipulate::decode(&m.encode()).as_ref() == Ok(&m));
    }
}

fn state_change(data: &[u8]) {
    if let Ok(s) = StateChange64::decode(data) {
        let _ = StateChange64::decode(&s.encode()).expect("an encoded state change decodes");
    }
}

/// Dump files: opened from memory, then worked over as a command session starts (module list,
/// context, reads, the kernel model, its modules, bugcheck, debugger data, the stack).
pub fn dump(data: &[u8]) {
    let Ok(mut d) = DumpFile::from_bytes("fuzzed.dmp", data.to_vec()) else {
        return;
    };
    let _ = d.module_list();
    let _ = d.context(0);
    let _ = d.special_registers(0);
    let _ = d.page_count();
    let mut buf = [0u8; 64];
    for a in [0u64, 0x1000, 0x10_000, 0x1ad000, u64::MAX - 7, u64::MAX] {
        let _ = d.read_physical(a, &mut buf);
    }
    for a in [0xffff_8504_2989_2120u64, 0xfffff800_00000000, u64::MAX - 7] {
        let _ = d.read_virtual_direct(a, &mut buf);
    }
    let Ok(mut k) = Kernel::open(Box::new(d), SymbolPath::parse("")) else {
        return;
    };
    let _ = k.modules();
    let _ = k.bugcheck();
    let _ = k.kdbg();
    if let Ok(ctx) = k.processor_context(0) {
        let s = k.unwind(Regs::from_context(&ctx), None, true);
        assert!(s.frames.len() <= 256);
    }
}

/// PDB files: the identity, then the whole table, then every query a command makes.
pub fn pdb(data: &[u8]) {
    let _ = pdb::identity(data.to_vec(), "fuzzed.pdb");
    if let Ok(t) = pdb::parse(data.to_vec(), "fuzzed.pdb") {
        exercise(&t);
    }
}

/// ISF tables, plain or xz: parsed, queried, and written back out as JSON that parses again to
/// a table of the same size.
pub fn isf(data: &[u8]) {
    let json = if data.starts_with(&[0xFD, b'7', b'z', b'X', b'Z', 0]) {
        match isf::decompress_xz(data) {
            Ok(j) => j,
            Err(_) => return,
        }
    } else {
        data.to_vec()
    };
    if let Ok(t) = isf::parse(&json) {
        exercise(&t);
        let back = isf::parse(isf::to_json(&t).as_bytes()).expect("a written table parses");
        assert_eq!(back.counts(), t.counts());
    }
}

/// Asks a table everything a command would.
fn exercise(t: &TypeTable) {
    let mut names: Vec<&str> = t.type_names().collect();
    names.sort_unstable();
    for n in names.into_iter().take(100) {
        let _ = t.size_of(n);
        if let Ok(udt) = t.udt(n) {
            for f in udt.fields.iter().take(40) {
                let _ = t.ty_size(&f.ty);
                let _ = t.offset(n, &f.name);
                let _ = t.field(n, &format!("{}.x", f.name));
                let _ = t.field(n, &format!("{}[3]", f.name));
                let _ = t.field(n, &format!("{}[0x7fffffff].y", f.name));
            }
        }
    }
    let mut syms: Vec<&str> = t.symbol_names().collect();
    syms.sort_unstable();
    for n in syms.into_iter().take(100) {
        if let Some(a) = t.symbol(n) {
            let _ = t.nearest(a.wrapping_add(3));
            let _ = t.next_symbol(a);
        }
    }
    let _ = t.nearest(u64::MAX);
    let _ = t.enum_name("_KOBJECTS", 2);
}

struct Env;

impl expr::Env for Env {
    fn symbol(&mut self, module: Option<&str>, name: &str) -> Option<u64> {
        match (module, name) {
            (None, "nt") => Some(0xfffff805_5c400000),
            (Some("nt"), "KiWaitNever") => Some(0xfffff805_5d000000),
            _ => None,
        }
    }
    fn register(&mut self, name: &str) -> Result<u64, kdnet_commands::expr::ExprError> {
        (name == "rsp")
            .then_some(0x1000)
            .ok_or_else(|| kdnet_commands::expr::ExprError::BadRegister(name.into()))
    }
    fn read(&mut self, addr: u64, _size: u8) -> Option<u64> {
        (addr < 0x2000).then_some(addr)
    }
}

/// Expressions: text parses or fails with a column inside the text (or just past it); what
/// parses evaluates to a value or an error.
pub fn expr(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match expr::parse(&text) {
        Ok(e) => {
            let _ = expr::eval(&e, &mut Env);
        }
        Err(ExprError::Syntax { column, .. }) => {
            assert!(
                column >= 1 && column <= text.len() + 1,
                "column {column} in {text:?}"
            );
        }
        Err(other) => panic!("parse gave {other:?}"),
    }
}
