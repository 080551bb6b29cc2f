//! Property tests over hostile input: every decoder of bytes that come from the network or a
//! file returns a value or an error, never panics. Case counts are bounded so CI stays fast;
//! `PROPTEST_CASES` raises them for a longer run.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use kdnet::api::{Context, DebugIo, FileIo, Manipulate, StateChange64};
use kdnet::capture;
use kdnet::kd::{HostKd, HostKdConfig, Packet, TargetKd, TargetKdConfig};
use kdnet::wire::datagram::{self, Channel, Direction};
use kdnet::wire::{ControlMessage, HostWire, Key, TargetWire, TargetWireConfig};

fn cases(n: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n.max(5000));
    ProptestConfig::with_cases(n)
}

fn key() -> Key {
    Key::parse("8.8.8.8").unwrap()
}

proptest! {
    #![proptest_config(cases(2000))]

    #[test]
    fn key_parser(s in ".{0,80}") {
        let _ = Key::parse(&s);
    }

    #[test]
    fn key_parser_near_misses(groups in prop::collection::vec("[0-9a-zA-Z!.]{0,15}", 0..7)) {
        let s = groups.join(".");
        if let Ok(k) = Key::parse(&s) {
            // Whatever parses prints back to something that parses to the same key.
            prop_assert_eq!(Key::parse(&k.to_key_string()).unwrap(), k);
        }
    }

    #[test]
    fn datagram_open(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let k = key();
        let _ = datagram::open(&bytes, k.bytes(), &k.hmac_key());
    }

    #[test]
    fn datagram_open_with_magic(tail in prop::collection::vec(any::<u8>(), 0..600), v in any::<u8>(), c in 0u8..3) {
        let mut d = b"MDBG".to_vec();
        d.push(v);
        d.push(c);
        d.extend_from_slice(&tail);
        let k = key();
        let _ = datagram::open(&d, k.bytes(), &k.hmac_key());
    }

    /// A valid datagram with any bytes inside (bad pad counts, reserved bits) opens or errs.
    #[test]
    fn sealed_garbage_plaintext(mut plain in prop::collection::vec(any::<u8>(), 1..40)) {
        plain.resize(plain.len().div_ceil(16) * 16, 0);
        let k = key();
        let d = datagram::seal_plaintext(4, Channel::Data, k.bytes(), &k.hmac_key(), &plain);
        let _ = datagram::open(&d, k.bytes(), &k.hmac_key());
    }

    #[test]
    fn control_messages(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = ControlMessage::decode(&bytes);
    }

    #[test]
    fn kd_packet(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = Packet::decode(&bytes);
    }

    #[test]
    fn kd_packet_with_valid_header(kind in any::<u16>(), count in any::<u16>(), id in any::<u32>(), data in prop::collection::vec(any::<u8>(), 0..300), leader in prop::sample::select(vec![0x30303030u32, 0x69696969])) {
        let mut b = leader.to_le_bytes().to_vec();
        b.extend_from_slice(&kind.to_le_bytes());
        b.extend_from_slice(&count.to_le_bytes());
        b.extend_from_slice(&id.to_le_bytes());
        b.extend_from_slice(&kdnet::kd::checksum(&data).to_le_bytes());
        b.extend_from_slice(&data);
        let _ = Packet::decode(&b);
    }

    #[test]
    fn dbgkd_structures(bytes in prop::collection::vec(any::<u8>(), 0..1500)) {
        if let Ok(m) = Manipulate::decode(&bytes) {
            let _ = m.body();
            let _ = m.answers(&m);
            let _ = format!("{m:?}");
        }
        let _ = StateChange64::decode(&bytes);
        let _ = DebugIo::decode(&bytes);
        let _ = FileIo::decode(&bytes);
        let _ = Context::from_bytes(&bytes);
        let _ = DebugIo::get_string_reply(&bytes, b"answer");
        let _ = FileIo::no_such_file_reply(&bytes);
    }

    #[test]
    fn capture_files(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let _ = capture::parse(&bytes);
    }

    #[test]
    fn capture_files_with_valid_magic(fmt in 0usize..3, tail in prop::collection::vec(any::<u8>(), 0..2000)) {
        let mut d: Vec<u8> = match fmt {
            0 => vec![0x0a, 0x0d, 0x0d, 0x0a],
            1 => vec![0xd4, 0xc3, 0xb2, 0xa1],
            _ => vec![0x1f, 0x8b, 8, 0],
        };
        d.extend_from_slice(&tail);
        if let Ok(udp) = capture::parse(&d) {
            let _ = capture::decode_session(&udp, &key());
        }
    }

    /// The sans-IO endpoints and KD machines eat arbitrary datagrams without panicking.
    #[test]
    fn state_machines_eat_garbage(datagrams in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..20)) {
        let now = Instant::now();
        let from: SocketAddr = "10.0.0.2:50000".parse().unwrap();
        let mut host = HostWire::new(key(), None);
        let mut target = TargetWire::new(TargetWireConfig { key: key(), version: 4, local: from, host: "10.0.0.1:50000".parse().unwrap() }, now, [3; 32]);
        let mut hk = HostKd::new(HostKdConfig::default());
        let mut tk = TargetKd::new(TargetKdConfig::default());
        for d in &datagrams {
            let _ = host.handle(from, d, now, &mut || [0; 32]);
            let _ = target.handle(from, d);
            hk.handle(d, now);
            tk.handle(d, now);
            hk.handle_timeout(now + Duration::from_secs(1));
            tk.handle_timeout(now + Duration::from_secs(1));
            while hk.poll_transmit().is_some() || hk.poll_event().is_some() {}
            while tk.poll_transmit().is_some() || tk.poll_event().is_some() {}
        }
    }
}

/// Truncating a real sealed datagram at every length gives an error, never a panic; so does
/// flipping any single bit of it.
#[test]
fn every_truncation_and_bit_flip_of_a_datagram() {
    let k = key();
    let d = datagram::seal(
        4,
        Channel::Data,
        k.bytes(),
        &k.hmac_key(),
        5,
        Direction::HostToTarget,
        &[7u8; 100],
    );
    for n in 0..d.len() {
        assert!(datagram::open(&d[..n], k.bytes(), &k.hmac_key()).is_err());
    }
    for i in 0..d.len() * 8 {
        let mut bad = d.clone();
        bad[i / 8] ^= 1 << (i % 8);
        assert!(
            datagram::open(&bad, k.bytes(), &k.hmac_key()).is_err(),
            "bit {i}"
        );
    }
}
