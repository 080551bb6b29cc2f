//! Hostile input at the simulator: garbage datagrams, a wrong key, replayed datagrams, truncated
//! KD packets, reads of unmapped and absurd ranges. It never panics, answers as Windows does
//! (an error status or a dropped packet), counts each, and keeps serving.

use std::time::Duration;

use kdnet::api::{ApiBody, Manipulate, status};
use kdnet::host::{Host, HostConfig, HostError};
use kdnet::kd::{Packet, PacketType};
use kdnet::target::TargetConfig;
use kdnet::wire::{HostWire, HostWireEvent, Key};
use kdnet_sim::SimConfig;
use tokio::net::UdpSocket;

async fn recv(sock: &UdpSocket) -> (Vec<u8>, std::net::SocketAddr) {
    let mut buf = vec![0u8; 65536];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("a datagram within 5 s")
        .unwrap();
    buf.truncate(n);
    (buf, from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_datagrams_are_counted_and_survived() {
    let key = Key::parse("6.6.6.6").unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut config = SimConfig::demo();
    config.resources = 200;
    let mut tc = TargetConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        sock.local_addr().unwrap(),
        key.clone(),
    );
    tc.offer_interval = Duration::from_millis(300);
    let running = kdnet_sim::start(config, tc, None).await.unwrap();
    let target = running.target.local_addr();

    // Handshake by hand.
    let mut wire = HostWire::new(key.clone(), None);
    let (offer, from) = recv(&sock).await;
    let now = std::time::Instant::now();
    let HostWireEvent::Answered { reply, .. } = wire.handle(from, &offer, now, &mut || [9; 32])
    else {
        panic!("expected an offer")
    };
    sock.send_to(&reply.datagram, reply.to).await.unwrap();
    loop {
        let (d, from) = recv(&sock).await;
        if let HostWireEvent::Connected { payload, .. } =
            wire.handle(from, &d, now, &mut || [9; 32])
        {
            assert_eq!(payload.len(), 12, "the hello");
            break;
        }
    }

    // Garbage of every kind.
    let mut rng = kdnet::rng::SplitMix64::new(1);
    for i in 0..200 {
        let len = rng.below(400) as usize;
        let mut junk: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        if i % 2 == 0 && junk.len() >= 6 {
            junk[..4].copy_from_slice(b"MDBG");
            junk[5] = (i % 3) as u8;
        }
        sock.send_to(&junk, target).await.unwrap();
        // Paced, so the target's socket buffer does not overflow on a loaded machine and drop
        // what follows (loopback UDP drops too).
        if i % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The wrong key, on both channels.
    let wrong = Key::parse("6.6.6.7").unwrap();
    for channel in [kdnet::wire::Channel::Control, kdnet::wire::Channel::Data] {
        let d = kdnet::wire::datagram::seal(
            4,
            channel,
            wrong.bytes(),
            &wrong.hmac_key(),
            50,
            kdnet::wire::Direction::HostToTarget,
            b"\x62",
        );
        sock.send_to(&d, target).await.unwrap();
    }
    // A truncated KD packet: the header claims 56 bytes that are not there.
    let mut p = Packet::data(PacketType::StateManipulate, 0x8000_0000, vec![0; 56]).encode();
    p.truncate(30);
    let t = wire.seal_data(&p).unwrap();
    sock.send_to(&t.datagram, target).await.unwrap();
    // A datagram, then the same bytes again (a replay).
    let b = wire.seal_data(&[0x62]).unwrap();
    sock.send_to(&b.datagram, target).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    sock.send_to(&b.datagram, target).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let s = running.target.stats();
    assert!(s.malformed >= 100, "{}", s.report());
    assert!(s.unauthenticated >= 2, "{}", s.report());
    assert!(s.replays >= 1, "{}", s.report());
    assert_eq!(s.break_ins, 1, "the one genuine break-in, once");

    // Still alive: the next offer authenticates and names this debugger.
    loop {
        let (d, from) = recv(&sock).await;
        match wire.handle(from, &d, now, &mut || [9; 32]) {
            HostWireEvent::KeepAlive => break,
            HostWireEvent::Data(_) => continue,
            other => panic!("{other:?}"),
        }
    }
    running.target.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmapped_and_absurd_reads_get_error_statuses() {
    let key = Key::parse("6.6.6.8").unwrap();
    let host = Host::bind(HostConfig::new("127.0.0.1:0".parse().unwrap(), key.clone()))
        .await
        .unwrap();
    let mut config = SimConfig::demo();
    config.resources = 200;
    let mut tc = TargetConfig::new("127.0.0.1:0".parse().unwrap(), host.local_addr(), key);
    tc.offer_interval = Duration::from_millis(200);
    let running = kdnet_sim::start(config, tc, None).await.unwrap();
    host.wait_connected(Duration::from_secs(5)).await.unwrap();
    host.break_in(Duration::from_secs(5)).await.unwrap();
    let v = host.get_version().await.unwrap();
    // Unmapped kernel space, a non-canonical address, user space with no mapping.
    for a in [0xffff_8000_0000_0000u64, 0x0000_8000_0000_0000, 0x1000] {
        match host.read_virtual(a, 16).await {
            Err(HostError::Memory {
                status: st, read, ..
            }) => {
                assert_eq!(st, status::UNSUCCESSFUL);
                assert!(read.is_empty());
            }
            other => panic!("{a:#x}: {other:?}"),
        }
    }
    // A request for 4 GB is clamped to the protocol's 3,944 bytes.
    let r = host
        .request(Manipulate::read_virtual(v.kern_base, u32::MAX))
        .await
        .unwrap();
    let ApiBody::Memory { actual, .. } = r.body() else {
        panic!()
    };
    assert_eq!(actual, 3944);
    assert_eq!(r.data.len(), 3944);
    // Beyond physical memory.
    assert!(host.read_physical(1 << 50, 8).await.is_err());
    // An invalid processor and control-space index.
    assert!(host.read_control_space(200, 0, 8).await.is_err());
    assert!(host.read_control_space(0, 9, 8).await.is_err());
    // An unknown API number.
    let mut m = Manipulate::get_version();
    m.set_u32(0, 0x31ff);
    assert_eq!(
        host.request(m).await.unwrap().return_status(),
        status::UNSUCCESSFUL
    );
    // Still serving.
    assert_eq!(&host.read_virtual(v.kern_base, 2).await.unwrap(), b"MZ");
    let s = running.target.shutdown().await;
    assert!(s.failed_requests >= 5, "{}", s.report());
}
