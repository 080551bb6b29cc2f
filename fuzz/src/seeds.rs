//! The seed corpora, made with the project's own code: datagrams sealed by the wire layer, KD
//! packets and DBGKD structures encoded by the protocol layer, dumps the dump writer writes, a
//! small PDB and ISF tables built here, the built-in demo table, and expressions. Written to
//! `fuzz/corpus/<target>/` by `KDNET_WRITE_FUZZ_CORPUS=1 cargo test --test fuzz_corpora`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use kdnet::api::state_change::{ControlReport, Exception64, LoadSymbols64, StateEvent};
use kdnet::api::{Context, DebugIo, FileIo, GetVersion64, Manipulate, StateChange64};
use kdnet::kd::{Packet, PacketType};
use kdnet::wire::datagram::{self, Channel, Direction};
use kdnet::wire::{Key, Offer, Response, data};
use kdnet_model::dump::{DumpHeader, WriteKind, write_dump};

/// One seed: the target it is for, a file name, the bytes.
pub type Seed = (&'static str, String, Vec<u8>);

/// Every seed of every target.
pub fn all() -> Vec<Seed> {
    let mut out = Vec::new();
    out.extend(datagrams());
    out.extend(kd_packets());
    out.extend(dbgkd());
    out.extend(dumps());
    out.push(("pdb", "types-and-publics.pdb".into(), small_pdb()));
    out.extend(isf());
    out.extend(expressions());
    out
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("an address")
}

fn manipulates() -> Vec<(&'static str, Manipulate)> {
    let mut read = Manipulate::read_virtual(0xfffff805_5c400000, 0x100).reply();
    read.data = vec![0x4d, 0x5a, 0x90, 0];
    vec![
        (
            "read-virtual",
            Manipulate::read_virtual(0xfffff805_5c400000, 0x100),
        ),
        ("read-virtual-reply", read),
        (
            "write-virtual",
            Manipulate::write_virtual(0x1000, vec![1, 2, 3, 4]),
        ),
        ("get-context", Manipulate::get_context(0)),
        ("get-context-ex", Manipulate::get_context_ex(1, 0, 0x4d0)),
        ("continue2", Manipulate::continue2(0x10001, false, 0)),
        (
            "write-breakpoint",
            Manipulate::write_breakpoint(0xfffff805_5c401000),
        ),
        (
            "write-physical",
            Manipulate::write_physical(0x1ad000, vec![0; 8]),
        ),
    ]
}

fn state_changes() -> Vec<(&'static str, StateChange64)> {
    let base = StateChange64 {
        new_state: 0x3030,
        processor_level: 6,
        processor: 0,
        number_processors: 4,
        thread: 0xffffc18a_00012080,
        program_counter: 0xfffff805_5c5f1230,
        event: StateEvent::Exception(Exception64 {
            code: 0x8000_0003,
            flags: 0,
            record: 0,
            address: 0xfffff805_5c5f1230,
            parameters: vec![0, 0xfffff805_5c5f1230],
            first_chance: true,
        }),
        control: ControlReport {
            dr7: 0x400,
            eflags: 0x246,
            instruction_count: 16,
            instruction_stream: [0xcc; 16],
            seg_cs: 0x10,
            seg_ds: 0x2b,
            seg_es: 0x2b,
            seg_fs: 0x53,
            ..ControlReport::default()
        },
    };
    let load = StateChange64 {
        new_state: 0x3031,
        event: StateEvent::LoadSymbols(LoadSymbols64 {
            base: 0xfffff805_60000000,
            process_id: 4,
            checksum: 0x1234,
            size: 0x2a000,
            unload: false,
            path: "\\SystemRoot\\system32\\drivers\\ndis.sys".into(),
        }),
        ..base.clone()
    };
    vec![("breakpoint", base), ("load-symbols", load)]
}

fn datagrams() -> Vec<Seed> {
    let key = Key::parse(crate::targets::KEY).expect("a valid key");
    let (ck, hk) = (key.bytes(), key.hmac_key());
    let offer = Offer {
        nonce: [7; 32],
        target: addr("192.168.2.72:51111"),
        configured_host: addr("192.168.2.1:51111"),
        debugger: addr("0.0.0.0:0"),
    };
    let response = Response {
        target_nonce: [7; 32],
        host_nonce: [9; 32],
    };
    let kd = Packet::data(
        PacketType::StateManipulate,
        0x8000_0000,
        Manipulate::read_virtual(0xfffff805_5c400000, 0x100).encode(),
    )
    .encode();
    let mut out = vec![
        ("offer", 0, Channel::Control, offer.encode()),
        ("response", 0, Channel::Control, response.encode().to_vec()),
        ("poke", 1, Channel::Control, Vec::new()),
        ("break-in", 5, Channel::Data, vec![0x62]),
        (
            "hello",
            1,
            Channel::Data,
            data::hello("192.168.2.1".parse().expect("an address")).to_vec(),
        ),
        ("kd-read", 2, Channel::Data, kd),
    ]
    .into_iter()
    .map(|(name, seq, channel, payload)| {
        let d = datagram::seal(4, channel, ck, &hk, seq, Direction::TargetToHost, &payload);
        ("datagram", format!("{name}.bin"), d)
    })
    .collect::<Vec<_>>();
    // A plaintext as the target treats it when it is not a datagram.
    out.push((
        "datagram",
        "plaintext.bin".into(),
        datagram::plaintext(3, Direction::HostToTarget, &[0x62]),
    ));
    out
}

fn kd_packets() -> Vec<Seed> {
    let mut out: Vec<Seed> = manipulates()
        .into_iter()
        .map(|(name, m)| {
            let p = Packet::data(PacketType::StateManipulate, 0x8000_0002, m.encode());
            ("kd_packet", format!("manipulate-{name}.bin"), p.encode())
        })
        .collect();
    for (name, s) in state_changes() {
        let p = Packet::data(PacketType::StateChange64, 1, s.encode());
        out.push(("kd_packet", format!("state-change-{name}.bin"), p.encode()));
    }
    let print = Packet::data(PacketType::DebugIo, 2, DebugIo::print(0, b"NDIS: hello\n"));
    out.push(("kd_packet", "debug-io-print.bin".into(), print.encode()));
    let file = Packet::data(
        PacketType::FileIo,
        3,
        FileIo::create_file("\\??\\C:\\x.sys"),
    );
    out.push(("kd_packet", "file-io-create.bin".into(), file.encode()));
    for (name, kind) in [
        ("ack", PacketType::Acknowledge),
        ("resend", PacketType::Resend),
        ("reset", PacketType::Reset),
    ] {
        let p = Packet::control(kind, 0x8000_0000);
        out.push(("kd_packet", format!("control-{name}.bin"), p.encode()));
    }
    out
}

fn dbgkd() -> Vec<Seed> {
    let tagged = |which: u8, b: &[u8]| {
        let mut v = vec![which];
        v.extend_from_slice(b);
        v
    };
    let mut out: Vec<Seed> = manipulates()
        .into_iter()
        .map(|(name, m)| {
            (
                "dbgkd",
                format!("manipulate-{name}.bin"),
                tagged(0, &m.encode()),
            )
        })
        .collect();
    for (name, s) in state_changes() {
        out.push((
            "dbgkd",
            format!("state-change-{name}.bin"),
            tagged(1, &s.encode()),
        ));
    }
    out.push((
        "dbgkd",
        "debug-io-print.bin".into(),
        tagged(2, &DebugIo::print(1, b"hello\n")),
    ));
    out.push((
        "dbgkd",
        "file-io-create.bin".into(),
        tagged(3, &FileIo::create_file("\\SystemRoot\\x.sys")),
    ));
    let mut ctx = Context::new();
    ctx.set_eflags(0x246);
    out.push(("dbgkd", "context.bin".into(), tagged(4, ctx.as_bytes())));
    let v = GetVersion64 {
        major_version: 0xf,
        minor_version: 20348,
        protocol_version: 6,
        machine_type: 0x8664,
        kern_base: 0xfffff805_5c400000,
        ps_loaded_module_list: 0xfffff805_5d02a1b0,
        debugger_data_list: 0xfffff805_5d012340,
        ..GetVersion64::default()
    };
    out.push(("dbgkd", "get-version.bin".into(), tagged(5, &v.encode())));
    out
}

fn dumps() -> Vec<Seed> {
    let mut pages = BTreeMap::new();
    for pfn in [0x10u64, 0x11, 0x40] {
        let mut p = vec![0u8; 0x1000];
        p[..8].copy_from_slice(&(pfn * 0x1000 + 0x63).to_le_bytes());
        pages.insert(pfn, p);
    }
    let mut ctx = Context::new();
    ctx.set_eflags(0x246);
    let header = DumpHeader {
        build: 20348,
        directory_table_base: 0x10000,
        ps_loaded_module_list: 0xfffff805_5d02a1b0,
        ps_active_process_head: 0xfffff805_5d01e3c0,
        kd_debugger_data_block: 0xfffff805_5d000000,
        processors: 2,
        bugcheck: (0x1000007e, [0xc0000005, 0xfffff805_5c5f1230, 0, 0]),
        context: ctx.as_bytes().to_vec(),
        comment: "kdnet fuzz seed".into(),
        ..DumpHeader::default()
    };
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("kdnet-fuzz-seeds-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let mut out = Vec::new();
    for (name, kind) in [("full", WriteKind::Full), ("bitmap", WriteKind::Bitmap)] {
        let p = dir.join(format!("{name}.dmp"));
        write_dump(&p, &header, kind, &pages).expect("the dump is written");
        out.push((
            "dump",
            format!("{name}.dmp"),
            std::fs::read(&p).expect("read back"),
        ));
    }
    std::fs::remove_dir_all(&dir).ok();
    out.push(("dump", "triage.dmp".into(), triage_dump()));
    out
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A small triage dump (DumpType 4): stack, a data block, a debugger data copy and a driver
/// list of one entry with its name in the string pool.
fn triage_dump() -> Vec<u8> {
    let mut b = vec![0u8; 0x3000];
    b[..4].copy_from_slice(b"PAGE");
    b[4..8].copy_from_slice(b"DU64");
    put32(&mut b, 0xC, 20348);
    put32(&mut b, 0x30, 0x8664);
    put32(&mut b, 0x34, 1);
    put32(&mut b, 0x38, 0x7e);
    put64(&mut b, 0x80, 0xfffff805_5d000000);
    put32(&mut b, 0xF98, 4);
    let t = 0x2000;
    put32(&mut b, t + 0x08, 0x2ffc);
    b[0x2ffc..].copy_from_slice(b"TRGD");
    // Stack: 0x100 bytes at 0x2100, top 0xfffff000_00001000.
    put32(&mut b, t + 0x28, 0x2100);
    put32(&mut b, t + 0x2C, 0x100);
    put64(&mut b, t + 0x48, 0xfffff000_00001000);
    // Debugger data copy: 0x100 bytes at 0x2200.
    put32(&mut b, t + 0x70, 0x2200);
    put32(&mut b, t + 0x74, 0x100);
    // One data block.
    put32(&mut b, t + 0x78, 0x2300);
    put32(&mut b, t + 0x7C, 1);
    put64(&mut b, 0x2300, 0xfffff805_5d010000);
    put32(&mut b, 0x2308, 0x2400);
    put32(&mut b, 0x230C, 0x40);
    // One driver: the entry at 0x2500 (stride 0x90), its name at 0x2600.
    put32(&mut b, t + 0x30, 0x2500);
    put32(&mut b, t + 0x34, 1);
    put32(&mut b, t + 0x38, 0x2590);
    put32(&mut b, t + 0x3C, 0x100);
    put32(&mut b, 0x2500, 0x2600);
    put64(&mut b, 0x2538, 0xfffff805_5c400000);
    put32(&mut b, 0x2548, 0x0100_0000);
    let name: Vec<u16> = "\\SystemRoot\\system32\\ntoskrnl.exe"
        .encode_utf16()
        .collect();
    put32(&mut b, 0x2600, name.len() as u32);
    for (i, u) in name.iter().enumerate() {
        put16(&mut b, 0x2604 + 2 * i, *u);
    }
    b
}

/// A small MSF 7.00 PDB (page size 512) holding a PDB information stream, a type stream
/// (a struct with a member list, an array of it, a pointer, a bitfield, an enum), a DBI stream
/// naming a symbol record stream and a section header stream, one public symbol, one section.
pub fn small_pdb() -> Vec<u8> {
    // Streams 0..=6.
    let mut info = Vec::new();
    for v in [20000404u32, 0x5eed, 1] {
        info.extend_from_slice(&v.to_le_bytes());
    }
    info.extend_from_slice(&[0x11; 16]);
    info.extend_from_slice(&0u32.to_le_bytes());
    let tpi = type_stream();
    let mut dbi = vec![0u8; 64];
    put32(&mut dbi, 0, u32::MAX);
    put32(&mut dbi, 4, 19990903);
    put32(&mut dbi, 8, 1);
    put16(&mut dbi, 12, 0xFFFF);
    put16(&mut dbi, 16, 0xFFFF);
    put16(&mut dbi, 20, 5);
    // The optional debug header: 11 stream numbers, the section headers (index 5) in 6.
    let mut debug = [0xFFFFu16; 11];
    debug[5] = 6;
    put32(&mut dbi, 48, 22);
    put16(&mut dbi, 58, 0x8664);
    for s in debug {
        dbi.extend_from_slice(&s.to_le_bytes());
    }
    let mut publics = Vec::new();
    let name = b"KdpFuzzSeed\0";
    let len = 2 + 4 + 4 + 2 + name.len();
    let pad = (4 - (len + 2) % 4) % 4;
    publics.extend_from_slice(&((len + pad) as u16).to_le_bytes());
    publics.extend_from_slice(&0x110eu16.to_le_bytes());
    publics.extend_from_slice(&0u32.to_le_bytes());
    publics.extend_from_slice(&0x10u32.to_le_bytes());
    publics.extend_from_slice(&1u16.to_le_bytes());
    publics.extend_from_slice(name);
    publics.resize(publics.len() + pad, 0);
    let mut section = vec![0u8; 40];
    section[..5].copy_from_slice(b".text");
    put32(&mut section, 8, 0x1000);
    put32(&mut section, 12, 0x1000);
    put32(&mut section, 16, 0x200);
    put32(&mut section, 20, 0x400);
    put32(&mut section, 36, 0x6000_0020);
    msf(&[&[], &info, &tpi, &dbi, &[], &publics, &section])
}

fn record(kind: u16, body: &[u8]) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(&((body.len() + 2) as u16).to_le_bytes());
    r.extend_from_slice(&kind.to_le_bytes());
    r.extend_from_slice(body);
    r
}

fn member(kind: u16, ty: u32, offset: u16, name: &str) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&kind.to_le_bytes());
    m.extend_from_slice(&3u16.to_le_bytes());
    if kind == 0x1502 {
        m.extend_from_slice(&offset.to_le_bytes());
    } else {
        m.extend_from_slice(&ty.to_le_bytes());
        m.extend_from_slice(&offset.to_le_bytes());
    }
    m.extend_from_slice(name.as_bytes());
    m.push(0);
    while m.len() % 4 != 0 {
        m.push(0xf0 | (4 - m.len() % 4) as u8);
    }
    m
}

fn type_stream() -> Vec<u8> {
    let udt = |kind: u16, fields: u32, size: u16, name: &str, fwd: bool| {
        let mut b = Vec::new();
        b.extend_from_slice(&2u16.to_le_bytes());
        b.extend_from_slice(&(if fwd { 0x80u16 } else { 0 }).to_le_bytes());
        b.extend_from_slice(&fields.to_le_bytes());
        if kind != 0x1506 {
            b.extend_from_slice(&[0; 8]);
        }
        b.extend_from_slice(&size.to_le_bytes());
        b.extend_from_slice(name.as_bytes());
        b.push(0);
        record(kind, &b)
    };
    let mut array = Vec::new();
    array.extend_from_slice(&0x1000u32.to_le_bytes());
    array.extend_from_slice(&0x23u32.to_le_bytes());
    array.extend_from_slice(&48u16.to_le_bytes());
    array.push(0);
    let mut pointer = Vec::new();
    pointer.extend_from_slice(&0x1000u32.to_le_bytes());
    pointer.extend_from_slice(&0x1000cu32.to_le_bytes());
    let mut bits = Vec::new();
    bits.extend_from_slice(&0x75u32.to_le_bytes());
    bits.extend_from_slice(&[5, 3]);
    let mut en = Vec::new();
    en.extend_from_slice(&2u16.to_le_bytes());
    en.extend_from_slice(&0u16.to_le_bytes());
    en.extend_from_slice(&0x74u32.to_le_bytes());
    en.extend_from_slice(&0x1007u32.to_le_bytes());
    en.extend_from_slice(b"_FUZZ_KIND\0");
    // 0x1000 forward _PAIR, 0x1001 its definition, 0x1002 members of _PAIR, 0x1003 _PAIR[4],
    // 0x1004 _PAIR*, 0x1005 bitfield, 0x1006 members of _OUTER, 0x1007 enum members,
    // 0x1008 _OUTER, 0x1009 _FUZZ_KIND.
    let records = [
        udt(0x1505, 0, 0, "_PAIR", true),
        udt(0x1505, 0x1002, 12, "_PAIR", false),
        record(
            0x1203,
            &[member(0x150d, 0x75, 0, "A"), member(0x150d, 0x0623, 4, "B")].concat(),
        ),
        record(0x1503, &array),
        record(0x1002, &pointer),
        record(0x1205, &bits),
        record(
            0x1203,
            &[
                member(0x150d, 0x1003, 0, "Pairs"),
                member(0x150d, 0x1004, 48, "Next"),
                member(0x150d, 0x1005, 56, "Flags"),
                member(0x150d, 0x1009, 60, "Kind"),
            ]
            .concat(),
        ),
        record(
            0x1203,
            &[
                member(0x1502, 0, 0, "FuzzNone"),
                member(0x1502, 0, 7, "FuzzSeven"),
            ]
            .concat(),
        ),
        udt(0x1505, 0x1006, 64, "_OUTER", false),
        record(0x1507, &en),
    ];
    let body: Vec<u8> = records.concat();
    let mut h = vec![0u8; 56];
    put32(&mut h, 0, 20040203);
    put32(&mut h, 4, 56);
    put32(&mut h, 8, 0x1000);
    put32(&mut h, 12, 0x1000 + records.len() as u32);
    put32(&mut h, 16, body.len() as u32);
    put16(&mut h, 20, 0xFFFF);
    put16(&mut h, 22, 0xFFFF);
    h.extend_from_slice(&body);
    h
}

/// An MSF 7.00 file (page size 512) of `streams`: superblock, free page maps, the directory's
/// page list, the directory, then the streams' pages.
fn msf(streams: &[&[u8]]) -> Vec<u8> {
    const PS: usize = 512;
    let mut pages: Vec<Vec<u8>> = vec![vec![0; PS]; 3];
    let mut sizes = Vec::new();
    let mut lists = Vec::new();
    for s in streams {
        sizes.extend_from_slice(&(s.len() as u32).to_le_bytes());
        for chunk in s.chunks(PS) {
            lists.extend_from_slice(&(pages.len() as u32).to_le_bytes());
            let mut p = chunk.to_vec();
            p.resize(PS, 0);
            pages.push(p);
        }
    }
    let mut dir = (streams.len() as u32).to_le_bytes().to_vec();
    dir.extend_from_slice(&sizes);
    dir.extend_from_slice(&lists);
    let mut dir_pages = Vec::new();
    for chunk in dir.chunks(PS) {
        dir_pages.extend_from_slice(&(pages.len() as u32).to_le_bytes());
        let mut p = chunk.to_vec();
        p.resize(PS, 0);
        pages.push(p);
    }
    let list_page = pages.len() as u32;
    let mut p = dir_pages.clone();
    p.resize(PS, 0);
    pages.push(p);
    let n = pages.len() as u32;
    let sb = &mut pages[0];
    sb[..32].copy_from_slice(b"Microsoft C/C++ MSF 7.00\r\n\x1aDS\0\0\0");
    for (i, v) in [PS as u32, 1, n, dir.len() as u32, 0, list_page]
        .iter()
        .enumerate()
    {
        sb[32 + 4 * i..36 + 4 * i].copy_from_slice(&v.to_le_bytes());
    }
    pages.concat()
}

fn isf() -> Vec<Seed> {
    let small = r#"{"metadata": {"format": "6.2.0", "windows": {"pdb": {"GUID": "11111111222233334444555566667777", "age": 1, "database": "fuzz.pdb"}}},
 "base_types": {"unsigned long": {"kind": "int", "size": 4, "signed": false, "endian": "little"},
                "pointer": {"kind": "int", "size": 8, "signed": false, "endian": "little"}},
 "user_types": {"_PAIR": {"kind": "struct", "size": 12, "fields": {
      "A": {"offset": 0, "type": {"kind": "base", "name": "unsigned long"}},
      "B": {"offset": 4, "type": {"kind": "pointer", "subtype": {"kind": "struct", "name": "_PAIR"}}}}},
   "_OUTER": {"kind": "union", "size": 64, "fields": {
      "Pairs": {"offset": 0, "type": {"kind": "array", "count": 4, "subtype": {"kind": "struct", "name": "_PAIR"}}},
      "Flags": {"offset": 0, "type": {"kind": "bitfield", "bit_position": 3, "bit_length": 5, "type": {"kind": "base", "name": "unsigned long"}}},
      "Kind": {"offset": 60, "type": {"kind": "enum", "name": "_KOBJECTS"}}}}},
 "enums": {"_KOBJECTS": {"base": "unsigned long", "size": 4, "constants": {"EventNotificationObject": 0, "MutantObject": 2}}},
 "symbols": {"KiWaitNever": {"address": 4096}, "KiWaitAlways": {"address": 4104}}}
"#;
    // A few types of the built-in demo table (the whole is 400 KB).
    let demo = kdnet_symbols::builtin::nt_demo()
        .subset(
            &["_ERESOURCE", "_KEVENT", "_KWAIT_BLOCK"],
            &[("_OWNER_ENTRY", "OwnerCount")],
            &["_KWAIT_REASON"],
            &["KiWaitNever", "ExpSystemResourcesList"],
        )
        .expect("the demo table has these");
    let demo = kdnet_symbols::isf::to_json(&demo);
    let mut out = vec![
        ("isf", "small.json".to_string(), small.as_bytes().to_vec()),
        ("isf", "demo-20348-part.json".to_string(), demo.into_bytes()),
    ];
    out.push(("isf", "small.json.xz".into(), xz_store(small.as_bytes())));
    out
}

/// `data` in an xz container whose LZMA2 chunks are stored uncompressed (the project carries no
/// compressor; this is enough for the decoder to see every part of the format).
fn xz_store(data: &[u8]) -> Vec<u8> {
    let crc = crc32;
    let mut out = vec![0xFD, b'7', b'z', b'X', b'Z', 0, 0, 0x01];
    let flags_crc = crc(&[0, 0x01]);
    out.extend_from_slice(&flags_crc.to_le_bytes());
    // Block header: size byte, flags (one filter), LZMA2 filter id 0x21, 1 property byte.
    let mut bh = vec![0x02, 0x00, 0x21, 0x01, 0x16, 0x00, 0x00, 0x00];
    let c = crc(&bh);
    bh.extend_from_slice(&c.to_le_bytes());
    let block_start = out.len();
    out.extend_from_slice(&bh);
    for (i, chunk) in data.chunks(0x10000).enumerate() {
        out.push(if i == 0 { 0x01 } else { 0x02 });
        out.extend_from_slice(&((chunk.len() - 1) as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out.push(0x00);
    let unpadded = out.len() - block_start;
    while (out.len() - block_start) % 4 != 0 {
        out.push(0);
    }
    out.extend_from_slice(&crc(data).to_le_bytes());
    let unpadded = unpadded + 4;
    // Index: indicator, one record (unpadded size, uncompressed size), padding, CRC32.
    let mut index = vec![0x00];
    varint(&mut index, 1);
    varint(&mut index, unpadded as u64);
    varint(&mut index, data.len() as u64);
    while index.len() % 4 != 0 {
        index.push(0);
    }
    let c = crc(&index);
    index.extend_from_slice(&c.to_le_bytes());
    let backward = (index.len() / 4 - 1) as u32;
    out.extend_from_slice(&index);
    let mut footer = backward.to_le_bytes().to_vec();
    footer.extend_from_slice(&[0, 0x01]);
    let c = crc(&footer);
    out.extend_from_slice(&c.to_le_bytes());
    out.extend_from_slice(&footer);
    out.extend_from_slice(b"YZ");
    out
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn expressions() -> Vec<Seed> {
    [
        "nt+0x1000",
        "poi(@rsp+8)*2",
        "nt!KiWaitNever",
        "(0n10 + 0x10) % 3 == 2",
        "dwo(0x100) & ~0xff | 1 << 4",
        "qwo(rsp) - 0x20 >= 0",
        "1 ? 2 : 3",
        "-(5 / 0)",
        "`fffff805`5c400000",
    ]
    .iter()
    .enumerate()
    .map(|(i, e)| ("expr", format!("expr-{i}.txt"), e.as_bytes().to_vec()))
    .collect()
}
