//! Proof on real KDNET traffic: the WinDbg ↔ Windows 10 capture (key 8.8.8.8) and the
//! Windows 8.1 sample datagrams (key 1.1.1.1) from `../shared/captures`.
//!
//! The shared directory sits beside the repository (CI has it). Without it these tests say so
//! and pass, unless `KDNET_REQUIRE_SHARED=1` (set by CI), in which case they fail.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kdnet::api::{Api, ApiBody, Context, Reg, StateEvent, context, status};
use kdnet::capture::{self, Record};
use kdnet::kd::{Packet, PacketType};
use kdnet::wire::datagram::{self, Channel};
use kdnet::wire::{ControlMessage, Key};

fn shared() -> Option<PathBuf> {
    kdnet_testkit::shared("captures")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

struct Session {
    records: Vec<Record>,
    summary: capture::DecodeSummary,
    key: Key,
}

fn windbg_session() -> Option<Session> {
    let dir = shared()?;
    let udp = capture::read_file(&dir.join("captures/windbg-uncut.pcapng.gz")).unwrap();
    let key = Key::parse("8.8.8.8").unwrap();
    let (records, summary) = capture::decode_session(&udp, &key);
    Some(Session {
        records,
        summary,
        key,
    })
}

const HOST: &str = "192.168.2.1:51111";
const TARGET: &str = "192.168.2.72:51111";

fn kd(r: &Record) -> Packet {
    let plain = r.plaintext.as_ref().unwrap();
    let (_, payload) = datagram::split_plaintext(plain).unwrap();
    Packet::decode(payload).unwrap()
}

#[test]
fn every_datagram_authenticates_and_reseals_byte_for_byte() {
    let Some(s) = windbg_session() else { return };
    assert_eq!(s.summary.kdnet, 955);
    assert_eq!(s.summary.authenticated, 955);
    assert!(s.records.iter().all(|r| r.version == 4));
    // The one data key, derived from the handshake in the capture.
    assert_eq!(s.summary.data_keys.len(), 1);
    assert_eq!(
        hex(&s.summary.data_keys[0]),
        "6bd91c57bd6a551ad30b509c05c0c95b32cc5e47a0866907eaf0b1583384f660"
    );
    let hmac = s.key.hmac_key();
    for r in &s.records {
        let plain = r.plaintext.as_ref().unwrap();
        let (channel, cipher_key) = match r.channel {
            "control" => (Channel::Control, *s.key.bytes()),
            _ => (
                Channel::Data,
                s.summary.data_keys[r.data_key_index.unwrap()],
            ),
        };
        let again = datagram::seal_plaintext(r.version, channel, &cipher_key, &hmac, plain);
        assert_eq!(again, r.raw, "datagram #{} reseals exactly", r.n);
        // And the inner header's pad count matches zero bytes at the end.
        datagram::split_plaintext(plain).unwrap();
    }
    // Sizes: the largest datagram is a 1334-byte CONTEXT transfer.
    assert_eq!(s.records.iter().map(|r| r.raw.len()).max(), Some(1334));
}

#[test]
fn who_sent_what() {
    let Some(s) = windbg_session() else { return };
    let mut by: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for r in &s.records {
        let who = if r.from == TARGET { "target" } else { "host" };
        *by.entry((who, r.channel)).or_default() += 1;
        // The direction bit agrees with the address.
        let expect = if r.from == TARGET {
            "target_to_host"
        } else {
            "host_to_target"
        };
        assert_eq!(r.direction, Some(expect), "#{}", r.n);
    }
    assert_eq!(by[&("target", "control")], 427);
    assert_eq!(by[&("host", "control")], 1);
    assert_eq!(by[&("target", "data")], 265);
    assert_eq!(by[&("host", "data")], 262);
    // Data sequence numbers run 1.. without a gap in each direction.
    for (who, n) in [(TARGET, 265u64), (HOST, 262)] {
        let seqs: Vec<u64> = s
            .records
            .iter()
            .filter(|r| r.channel == "data" && r.from == who)
            .map(|r| r.sequence.unwrap())
            .collect();
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "{who}");
    }
}

#[test]
fn handshake_offers_and_response() {
    let Some(s) = windbg_session() else { return };
    let first = &s.records[0];
    let plain = first.plaintext.as_ref().unwrap();
    assert_eq!(plain.len(), 352);
    assert_eq!(hex(&plain[..8]), "0000000000000300");
    let (_, payload) = datagram::split_plaintext(plain).unwrap();
    let ControlMessage::Offer(offer) = ControlMessage::decode(payload).unwrap() else {
        panic!("datagram 1 is an offer")
    };
    assert_eq!(
        hex(&offer.nonce),
        "c19792dfac7aa1dfe007010018000b00240005000000070088f7570043a12600"
    );
    assert_eq!(offer.target.to_string(), TARGET);
    assert_eq!(offer.configured_host.to_string(), HOST);
    assert!(!offer.has_debugger());

    let resp = &s.records[1];
    let plain = resp.plaintext.as_ref().unwrap();
    assert_eq!(
        hex(&plain[..8]),
        "0000000000000386",
        "same seq, host bit, pad 6"
    );
    let (_, payload) = datagram::split_plaintext(plain).unwrap();
    let ControlMessage::Response(r) = ControlMessage::decode(payload).unwrap() else {
        panic!("datagram 2 is a response")
    };
    assert_eq!(r.target_nonce, offer.nonce, "the nonce is echoed");
    assert_eq!(
        hex(&r.host_nonce),
        "41b4fa1b2ddd14ee3eeb8db987c0c7257ce62eef126ab74ef212136c100c540b"
    );
    assert_eq!(
        hex(&resp.raw[resp.raw.len() - 16..]),
        "1496556d614cc01df246bf79e6332aad"
    );
    assert_eq!(r.data_key(&s.key), s.summary.data_keys[0]);

    // 427 offers, seq +3 each (a ~1 Hz counter), nonce counter +1, rest of the nonce constant,
    // ~3.017 s apart, and after the handshake they name WinDbg as the debugger.
    let offers: Vec<&Record> = s
        .records
        .iter()
        .filter(|r| r.control.as_ref().is_some_and(|c| c.message == "offer"))
        .collect();
    assert_eq!(offers.len(), 427);
    let seqs: Vec<u64> = offers.iter().map(|r| r.sequence.unwrap()).collect();
    assert_eq!(seqs, (1..=427).map(|i| 3 * i).collect::<Vec<_>>());
    let counters: Vec<u64> = offers
        .iter()
        .map(|r| r.control.as_ref().unwrap().counter.unwrap())
        .collect();
    assert!(counters.windows(2).all(|w| w[1] == w[0] + 1));
    assert_eq!(counters[0] & 0xffff, 0x97c1);
    assert_eq!(counters[426] & 0xffff, 0x996b);
    for w in offers.windows(2).skip(1) {
        let dt = w[1].time - w[0].time;
        assert!((3.0..3.03).contains(&dt), "offer interval {dt}");
    }
    assert!(
        offers[1..]
            .iter()
            .all(|r| r.control.as_ref().unwrap().debugger.as_deref() == Some(HOST))
    );
    // WinDbg answered the first offer only.
    assert_eq!(
        s.records
            .iter()
            .filter(|r| r.control.as_ref().is_some_and(|c| c.message == "response"))
            .count(),
        1
    );
}

#[test]
fn kd_packets_ids_and_types() {
    let Some(s) = windbg_session() else { return };
    let hello = &s.records[2];
    assert_eq!(hello.payload, Some("hello"));
    let (_, p) = datagram::split_plaintext(hello.plaintext.as_ref().unwrap()).unwrap();
    assert_eq!(hex(p), "0000000000000000".to_owned() + "0102a8c0");
    assert_eq!(hello.hello_host.as_deref(), Some("192.168.2.1"));

    let mut counts: BTreeMap<(bool, u16), usize> = BTreeMap::new();
    let mut target_ids = Vec::new();
    let mut host_ids = Vec::new();
    let mut controls = Vec::new();
    let mut kd_packets = 0;
    for r in s.records.iter().filter(|r| r.payload == Some("kd")) {
        kd_packets += 1;
        let p = kd(r);
        let from_host = r.from == HOST;
        *counts.entry((from_host, p.kind.to_u16())).or_default() += 1;
        if p.is_data() {
            if from_host {
                host_ids.push(p.id)
            } else {
                target_ids.push(p.id)
            }
        } else if p.kind != PacketType::Acknowledge {
            controls.push((r.n, from_host, p.kind, p.id));
        }
    }
    // Every KD packet parsed with a valid checksum (Packet::decode checks it).
    assert_eq!(kd_packets, 526);
    let c = |h: bool, t: PacketType| counts.get(&(h, t.to_u16())).copied().unwrap_or(0);
    assert_eq!(c(true, PacketType::StateManipulate), 95);
    assert_eq!(c(true, PacketType::FileIo), 33);
    assert_eq!(c(true, PacketType::Acknowledge), 132);
    assert_eq!(c(false, PacketType::StateManipulate), 92);
    assert_eq!(c(false, PacketType::DebugIo), 7);
    assert_eq!(c(false, PacketType::StateChange64), 3);
    assert_eq!(c(false, PacketType::FileIo), 33);
    assert_eq!(c(false, PacketType::Acknowledge), 127);
    assert_eq!(
        controls,
        vec![
            (5, true, PacketType::Resend, 0),
            (198, false, PacketType::Resend, 0),
            (202, true, PacketType::Reset, 0x8000_0060),
            (203, false, PacketType::Reset, 0x62),
        ]
    );
    // Target ids from 0 by 2, host ids from 0x80000000 by 2; only retransmissions repeat.
    assert_eq!(target_ids.first(), Some(&0));
    assert_eq!(target_ids.last(), Some(&0x108));
    assert_eq!(target_ids.len(), 135);
    let mut distinct = target_ids.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 133);
    assert!(
        target_ids
            .windows(2)
            .all(|w| w[1] == w[0] || w[1] == w[0] + 2)
    );
    assert_eq!(host_ids.first(), Some(&0x8000_0000));
    assert_eq!(host_ids.last(), Some(&0x8000_00fc));
    assert_eq!(host_ids.len(), 128);
    assert!(
        host_ids
            .windows(2)
            .all(|w| w[1] == w[0] || w[1] == w[0] + 2)
    );
}

#[test]
fn manipulate_requests_get_version_and_reads() {
    let Some(s) = windbg_session() else { return };
    let mut requests: BTreeMap<u32, usize> = BTreeMap::new();
    for r in s
        .records
        .iter()
        .filter(|r| r.from == HOST && r.api.is_some())
    {
        *requests.entry(r.api.unwrap()).or_default() += 1;
    }
    let expect: BTreeMap<u32, usize> = [
        (0x3130, 44),
        (0x3132, 5),
        (0x3133, 2),
        (0x3135, 32),
        (0x3136, 1),
        (0x3137, 3),
        (0x3138, 2),
        (0x313c, 2),
        (0x3146, 1),
        (0x315f, 3),
    ]
    .into_iter()
    .collect();
    assert_eq!(requests, expect);

    // GetVersion: the reply (datagram 12, KD id 4).
    let gv = &s.records[11];
    assert_eq!(gv.kd_id, Some(4));
    assert_eq!(gv.api, Some(Api::GetVersion.number()));
    let Some(ApiBody::GetVersion(v)) = &gv.body else {
        panic!()
    };
    assert_eq!(v.major_version, 0x040F);
    assert_eq!(v.major_type(), 4, "the boot debugger");
    assert_eq!(v.minor_version, 10586);
    assert_eq!((v.protocol_version, v.kd_secondary_version), (6, 2));
    assert_eq!(v.flags, 0x0002);
    assert_eq!(v.machine_type, 0x8664);
    assert!(v.is_64bit());
    assert_eq!(
        (
            v.max_packet_type,
            v.max_state_change,
            v.max_manipulate,
            v.simulation
        ),
        (12, 0x32, 0x59, 0)
    );
    assert_eq!(v.kern_base, 0x96F000);
    assert_eq!(v.ps_loaded_module_list, 0xAD5E60);
    assert_eq!(v.debugger_data_list, 0);
    // The request asked for every processor (0xffff) with STATUS_PENDING.
    let req = &s.records[9];
    assert_eq!(req.processor, Some(0xffff));
    assert_eq!(req.status, Some(status::PENDING));

    // Each read reply answers its request: same address and count, data as long as claimed.
    let mut last_request = None;
    let mut replies = Vec::new();
    for r in &s.records {
        if r.api != Some(Api::ReadVirtualMemory.number()) {
            continue;
        }
        if r.from == HOST {
            last_request = Some((r.address.unwrap(), r.transfer_count.unwrap()));
        } else {
            let (a, n) = last_request.take().expect("reply follows a request");
            assert_eq!((r.address.unwrap(), r.transfer_count.unwrap()), (a, n));
            let m = kdnet::api::Manipulate::decode(&kd(r).data).unwrap();
            assert_eq!(m.data.len() as u32, r.actual.unwrap());
            replies.push((a, r.status.unwrap(), m.data));
        }
    }
    assert_eq!(replies.len(), 44);
    // The first read is the module list head GetVersion named.
    assert_eq!(replies[0].0, v.ps_loaded_module_list);
    assert_eq!(replies[0].2.len(), 16);
    let flink = u64::from_le_bytes(replies[0].2[..8].try_into().unwrap());
    assert!(
        flink >> 47 == 0x1ffff,
        "Flink {flink:#x} is a kernel address"
    );
    // WinDbg read the image header at KernBase: "MZ", then the PE header e_lfanew points at.
    let mz = replies.iter().find(|(a, ..)| *a == v.kern_base).unwrap();
    assert_eq!(&mz.2[..2], b"MZ");
    let e_lfanew = u32::from_le_bytes(mz.2[0x3c..0x40].try_into().unwrap());
    let pe = replies
        .iter()
        .find(|(a, ..)| *a == v.kern_base + u64::from(e_lfanew))
        .unwrap();
    assert_eq!(&pe.2[..4], b"PE\0\0");
    assert_eq!(u16::from_le_bytes([pe.2[4], pe.2[5]]), 0x8664);
    // KUSER_SHARED_DATA was not mapped in the boot environment: the read failed.
    let ksd = replies
        .iter()
        .find(|(a, ..)| *a == 0xfffff780_000003d8)
        .unwrap();
    assert_eq!(ksd.1, status::UNSUCCESSFUL);
    assert!(ksd.2.is_empty());
}

#[test]
fn contexts_control_space_and_the_skipped_trap() {
    let Some(s) = windbg_session() else { return };
    // Special registers (control space index 2): CR3 of the boot environment.
    let cs = s
        .records
        .iter()
        .find(|r| r.from == TARGET && r.api == Some(Api::ReadControlSpace.number()))
        .unwrap();
    assert_eq!(cs.address, Some(2));
    assert_eq!(cs.actual, Some(0xE0));
    let m = kdnet::api::Manipulate::decode(&kd(cs).data).unwrap();
    let u64_at = |o: usize| u64::from_le_bytes(m.data[o..o + 8].try_into().unwrap());
    assert_eq!(u64_at(context::SPECIAL_CR3), 0x1AB000);
    assert_eq!(u64_at(context::SPECIAL_CR0), 0x8000_0013);
    assert_eq!(u64_at(context::SPECIAL_GDTR_BASE), 0x1A9000);
    // The host stepped over the target's own int3: SetContext carries the GetContext Rip + 1.
    let get = s
        .records
        .iter()
        .find(|r| r.n == 204 && r.api == Some(Api::GetContext.number()))
        .unwrap();
    let got =
        Context::from_bytes(&kdnet::api::Manipulate::decode(&kd(get).data).unwrap().data).unwrap();
    let set = &s.records[213];
    assert_eq!(set.api, Some(Api::SetContext.number()));
    let put =
        Context::from_bytes(&kdnet::api::Manipulate::decode(&kd(set).data).unwrap().data).unwrap();
    assert_eq!(put.reg(Reg::Rip), got.reg(Reg::Rip) + 1);
    assert_eq!(put.reg(Reg::Rsp), got.reg(Reg::Rsp));
    assert_eq!(got.cs(), 0x10);
    assert_eq!(set.raw.len(), 1334);
}

#[test]
fn state_changes_prints_and_file_io() {
    let Some(s) = windbg_session() else { return };
    let changes: Vec<&Record> = s
        .records
        .iter()
        .filter(|r| r.state_change.is_some())
        .collect();
    assert_eq!(changes.len(), 3);
    let sc = changes[0].state_change.as_ref().unwrap();
    assert_eq!(changes[0].n, 8);
    assert_eq!(sc.program_counter, 0xA79685);
    assert_eq!(&sc.control.instruction_stream[..2], &[0xcc, 0xc3]);
    let StateEvent::LoadSymbols(l) = &sc.event else {
        panic!()
    };
    assert_eq!(l.path, "winload.efi");
    assert_eq!((l.base, l.size, l.checksum), (0x96F000, 0x17D000, 0x149E3F));
    assert!(!l.unload);
    let sc = changes[1].state_change.as_ref().unwrap();
    assert_eq!(changes[1].n, 378);
    let e = sc.exception().unwrap();
    assert_eq!(e.code, status::BREAKPOINT);
    assert_eq!(e.address, 0x9CF07D);
    assert_eq!(sc.program_counter, 0x9CF07E);
    assert!(e.first_chance);
    let StateEvent::LoadSymbols(l) = &changes[2].state_change.as_ref().unwrap().event else {
        panic!()
    };
    assert!(l.unload);
    assert_eq!(changes[2].n, 952);

    let prints: Vec<&str> = s
        .records
        .iter()
        .filter(|r| r.kd_type == Some(PacketType::DebugIo.to_u16()))
        .map(|r| r.text.as_deref().unwrap())
        .collect();
    assert_eq!(prints.len(), 7);
    assert_eq!(prints[0], "BD: Boot Debugger Initialized\n");
    assert_eq!(prints[1], prints[0], "resent after the host's RESEND");
    assert!(prints[2].contains("ntkrnlmp.chk"));

    // 33 file opens by the target, each refused by WinDbg with STATUS_NO_SUCH_FILE.
    let opens: Vec<&Record> = s
        .records
        .iter()
        .filter(|r| r.from == TARGET && r.file_io.is_some())
        .collect();
    let refusals: Vec<&Record> = s
        .records
        .iter()
        .filter(|r| r.from == HOST && r.file_io.is_some())
        .collect();
    assert_eq!((opens.len(), refusals.len()), (33, 33));
    assert!(
        refusals
            .iter()
            .all(|r| r.file_io.as_ref().unwrap().status == status::NO_SUCH_FILE)
    );
    let kdnet::api::FileOp::CreateFile {
        name,
        desired_access,
        ..
    } = &opens[0].file_io.as_ref().unwrap().op
    else {
        panic!()
    };
    assert!(name.ends_with("winload.efi.MUI"), "{name}");
    assert_eq!(*desired_access, 0x120089);
    // Our own refusal matches WinDbg's header bytes except where WinDbg left garbage.
    let ours = kdnet::api::FileIo::no_such_file_reply(&kd(opens[0]).data);
    let theirs = kd(refusals[0]).data;
    assert_eq!(ours[..8], theirs[..8]);
}

#[test]
fn wrong_key_reports_no_authentication() {
    let Some(dir) = shared() else { return };
    let udp = capture::read_file(&dir.join("captures/windbg-uncut.pcapng.gz")).unwrap();
    let (records, summary) = capture::decode_session(&udp, &Key::parse("8.8.8.9").unwrap());
    assert_eq!(summary.authenticated, 0);
    assert!(records.iter().all(|r| !r.authenticated));
    assert!(summary.hint().unwrap().contains("key is probably wrong"));
}

#[test]
fn damaged_capture_names_the_offset() {
    let Some(dir) = shared() else { return };
    let raw = std::fs::read(dir.join("captures/windbg-uncut.pcapng.gz")).unwrap();
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2_decoder(&raw), &mut plain).unwrap();
    // Cut it in the middle of a block.
    let cut = &plain[..plain.len() / 2];
    let err = capture::parse(cut).unwrap_err().to_string();
    assert!(err.contains("byte offset"), "{err}");
    // Garble the length of the first packet block (after the section and interface blocks).
    let len_at = |at: usize| u32::from_le_bytes(plain[at + 4..at + 8].try_into().unwrap()) as usize;
    let first_packet = len_at(0) + len_at(len_at(0));
    let mut bad = plain.clone();
    bad[first_packet + 4..first_packet + 8].copy_from_slice(&0x30u32.to_le_bytes());
    let err = capture::parse(&bad).unwrap_err().to_string();
    assert!(
        err.contains(&format!("byte offset {}", first_packet + 0x30 - 4)),
        "{err}"
    );
    // A truncated gzip stream is an error too.
    assert!(capture::parse(&raw[..raw.len() / 3]).is_err());
}

fn flate2_decoder(raw: &[u8]) -> impl std::io::Read + '_ {
    flate2::read::GzDecoder::new(raw)
}

#[test]
fn windows_81_samples() {
    let Some(dir) = shared() else { return };
    let text = std::fs::read_to_string(dir.join("captures/win81-samples.hex")).unwrap();
    let samples: BTreeMap<&str, Vec<u8>> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, h) = l.split_once(' ').unwrap();
            (name, unhex(h.trim()))
        })
        .collect();
    assert_eq!(samples.len(), 19);
    let key = Key::parse("1.1.1.1").unwrap();
    let hmac = key.hmac_key();
    let resp = datagram::open(&samples["poke_resp"], key.bytes(), &hmac).unwrap();
    assert_eq!(resp.version, 2);
    assert_eq!(resp.header.sequence, 2694);
    let ControlMessage::Response(r) = ControlMessage::decode(&resp.payload).unwrap() else {
        panic!()
    };
    let dk = r.data_key(&key);
    assert_eq!(
        hex(&dk),
        "6d41dd0561a9f887afd8e82b2527e19ff800011075ff2ee6904553abbec778f2"
    );
    let mut ok = 0;
    for (name, d) in &samples {
        let k = if d.get(5) == Some(&1) {
            *key.bytes()
        } else {
            dk
        };
        match datagram::open(d, &k, &hmac) {
            Ok(o) => {
                ok += 1;
                assert_eq!(o.version, 2, "{name}");
                let again = datagram::seal(
                    o.version,
                    o.channel,
                    &k,
                    &hmac,
                    o.header.sequence,
                    o.header.direction,
                    &o.payload,
                );
                assert_eq!(&again, d, "{name} reseals exactly");
            }
            Err(_) => assert!(matches!(*name, "next" | "unciphered_go"), "{name}"),
        }
    }
    assert_eq!(ok, 17);
    let open = |n: &str| datagram::open(&samples[n], &dk, &hmac).unwrap();
    assert_eq!(hex(&open("conncheck").payload), "00000000000000000b00a8c0");
    let brk = open("break_data");
    assert_eq!(brk.payload, vec![0x62]);
    assert_eq!((brk.header.sequence, brk.header.pad), (2, 7));
    let sc = Packet::decode(&open("wait_state").payload).unwrap();
    assert_eq!(sc.kind, PacketType::StateChange64);
    assert_eq!(sc.id, 0x926);
    let sc = kdnet::api::StateChange64::decode(&sc.data).unwrap();
    let e = sc.exception().unwrap();
    assert_eq!(e.code, status::BREAKPOINT);
    assert_eq!(e.address, sc.program_counter);
    assert_eq!(sc.program_counter, 0xFFFFF8026BD72B90);
    assert_eq!(&sc.control.instruction_stream[..2], &[0xcc, 0xc3]);
    let reset = Packet::decode(&open("reset").payload).unwrap();
    assert_eq!((reset.kind, reset.id), (PacketType::Reset, 0x8000_0000));
    let gv = Packet::decode(&open("get_version_api_resp").payload).unwrap();
    let v = kdnet::api::Manipulate::decode(&gv.data).unwrap().version();
    assert_eq!(
        (v.major_version, v.minor_version, v.flags),
        (0x000F, 9600, 7)
    );
    assert_eq!((v.max_state_change, v.max_manipulate), (3, 0x31));
    assert_eq!(v.kern_base, 0xFFFFF8026BC18000);
    assert_eq!(v.ps_loaded_module_list, 0xFFFFF8026BEE22D0);
    assert_eq!(v.debugger_data_list, 0xFFFFF8026BEF91F0);
    let ctx = Packet::decode(&open("get_register_resp").payload).unwrap();
    let m = kdnet::api::Manipulate::decode(&ctx.data).unwrap();
    assert_eq!(m.api(), Some(Api::GetContextEx));
    assert_eq!(
        m.body(),
        ApiBody::ContextEx {
            offset: 0,
            byte_count: 1232,
            bytes_copied: 1232
        }
    );
    let c = Context::from_bytes(&m.data).unwrap();
    assert_eq!(c.flags(), 0x10001F);
    // The break-in stopped the kernel at DbgBreakPointWithStatus's int 3, called with
    // DBG_STATUS_CONTROL_C: rcx holds 1 (what tells a break-in from a bugcheck's break there).
    assert_eq!(c.reg(Reg::Rip), sc.program_counter);
    assert_eq!(c.reg(Reg::Rcx), 1);
}
