//! The two ends of the KDNET wire as sans-IO state machines: they take datagrams (with the
//! sender's address) and hand back datagrams to send and what happened. No sockets, no clocks
//! beyond what the caller passes in.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::control::{ControlMessage, NONCE_LEN, NONCE_TAIL, Offer, Response};
use super::data;
use super::datagram::{self, Channel, Direction, MAX_SEQUENCE, WireError};
use super::key::{KEY_LEN, Key};

/// A datagram to send and where to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub to: SocketAddr,
    /// The sealed datagram.
    pub datagram: Vec<u8>,
}

/// Why the host (re)ran the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeReason {
    /// No session existed.
    First,
    /// The offer came from a new boot of the target (new nonce).
    Rebooted,
    /// Same boot, but the target reported no debugger (it lost or dropped the session).
    Rekeyed,
}

/// Why a datagram was dropped without being an error of the peer's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Direction bit says it was sent by our own side.
    WrongDirection,
    /// Sequence number not above the highest accepted one (a replay or a duplicate).
    Replay,
    /// From an address other than the session's peer.
    OtherPeer,
    /// A control message this end does not act on (e.g. an offer sent to a target).
    UnexpectedControl,
    /// A response whose nonce is not this boot's.
    StaleResponse,
    /// A data datagram arrived before any handshake gave us a data key.
    NoSession,
    /// Not KDNET at all (no magic).
    NotKdnet,
}

/// What the host end made of one datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostWireEvent {
    /// An offer was answered: send `reply`; the data channel now runs under the new key.
    Handshake {
        /// The target's address.
        peer: SocketAddr,
        /// Why.
        reason: HandshakeReason,
        /// The RESPONSE datagram to send to `peer`.
        reply: Transmit,
        /// The offer answered.
        offer: Offer,
    },
    /// An offer from the current boot of the session's target; nothing to do.
    KeepAlive {
        /// Set when the target now sends from a new address (the session follows it).
        moved_from: Option<SocketAddr>,
    },
    /// An authenticated data payload from the target.
    Data(Vec<u8>),
    /// A well-formed KDNET datagram that does not authenticate: most likely a wrong key.
    NotAuthenticated {
        /// Its channel.
        channel: Channel,
    },
    /// Dropped for a reason other than authentication.
    Dropped(Dropped),
    /// Not a valid KDNET datagram.
    Malformed(WireError),
}

#[derive(Debug, Clone)]
struct HostSession {
    peer: SocketAddr,
    version: u8,
    data_key: [u8; KEY_LEN],
    boot_id: [u8; 24],
    tx_seq: u64,
    rx_high: u64,
    /// Nonce counter of the offer answered last; older or repeated offers are not answered.
    answered: u64,
    /// Data datagrams from the peer that failed to authenticate since the last good one.
    bad_data: u32,
}

/// After this many data datagrams from the target fail to authenticate in a row, the next offer
/// is answered again (the two ends disagree on the data key, e.g. a response was lost).
pub const REKEY_AFTER_BAD_DATA: u32 = 3;

fn newer(counter: u64, than: u64) -> bool {
    (counter.wrapping_sub(than) as i64) > 0
}

/// The debugger's end of the wire.
#[derive(Debug)]
pub struct HostWire {
    key: Key,
    hmac: [u8; KEY_LEN],
    session: Option<HostSession>,
    only_from: Option<IpAddr>,
}

impl HostWire {
    /// A host end for `key`. With `only_from`, offers from any other address are ignored
    /// (WinDbg's `target=`).
    pub fn new(key: Key, only_from: Option<IpAddr>) -> HostWire {
        let hmac = key.hmac_key();
        HostWire {
            key,
            hmac,
            session: None,
            only_from,
        }
    }

    /// The target's address, once a handshake happened.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.session.as_ref().map(|s| s.peer)
    }

    /// The version byte the target uses (echoed in everything we send).
    pub fn version(&self) -> Option<u8> {
        self.session.as_ref().map(|s| s.version)
    }

    /// Forgets the session (a later offer starts a new one).
    pub fn forget(&mut self) {
        self.session = None;
    }

    /// Handles one received datagram. `host_nonce` is called only when a handshake is made.
    pub fn handle(
        &mut self,
        from: SocketAddr,
        dgram: &[u8],
        host_nonce: &mut dyn FnMut() -> [u8; NONCE_LEN],
    ) -> HostWireEvent {
        let channel = match datagram::peek(dgram) {
            Ok((_, c)) => c,
            Err(WireError::BadMagic) => return HostWireEvent::Dropped(Dropped::NotKdnet),
            Err(e) => return HostWireEvent::Malformed(e),
        };
        match channel {
            Channel::Control => self.handle_control(from, dgram, host_nonce),
            Channel::Data => self.handle_data(from, dgram),
        }
    }

    fn handle_control(
        &mut self,
        from: SocketAddr,
        dgram: &[u8],
        host_nonce: &mut dyn FnMut() -> [u8; NONCE_LEN],
    ) -> HostWireEvent {
        let opened = match datagram::open(dgram, self.key.bytes(), &self.hmac) {
            Ok(o) => o,
            Err(WireError::AuthenticationFailed) => {
                return HostWireEvent::NotAuthenticated {
                    channel: Channel::Control,
                };
            }
            Err(e) => return HostWireEvent::Malformed(e),
        };
        if opened.header.direction != Direction::TargetToHost {
            return HostWireEvent::Dropped(Dropped::WrongDirection);
        }
        let offer = match ControlMessage::decode(&opened.payload) {
            Ok(ControlMessage::Offer(o)) => o,
            Ok(_) => return HostWireEvent::Dropped(Dropped::UnexpectedControl),
            Err(_) => return HostWireEvent::Dropped(Dropped::UnexpectedControl),
        };
        if let Some(ip) = self.only_from
            && ip != from.ip()
        {
            return HostWireEvent::Dropped(Dropped::OtherPeer);
        }
        let reason = match &self.session {
            None => HandshakeReason::First,
            Some(s) if s.peer.ip() != from.ip() => {
                return HostWireEvent::Dropped(Dropped::OtherPeer);
            }
            Some(s) if s.boot_id[..] != *offer.boot_id() => HandshakeReason::Rebooted,
            Some(s)
                if newer(offer.counter(), s.answered)
                    && (!offer.has_debugger() || s.bad_data >= REKEY_AFTER_BAD_DATA) =>
            {
                HandshakeReason::Rekeyed
            }
            Some(_) => {
                let s = self.session.as_mut().expect("checked above");
                let moved_from = (s.peer != from).then_some(s.peer);
                s.peer = from;
                return HostWireEvent::KeepAlive { moved_from };
            }
        };
        let response = Response {
            target_nonce: offer.nonce,
            host_nonce: host_nonce(),
        };
        let data_key = response.data_key(&self.key);
        let reply = datagram::seal(
            opened.version,
            Channel::Control,
            self.key.bytes(),
            &self.hmac,
            opened.header.sequence,
            Direction::HostToTarget,
            &response.encode(),
        );
        let mut boot_id = [0u8; 24];
        boot_id.copy_from_slice(offer.boot_id());
        self.session = Some(HostSession {
            peer: from,
            version: opened.version,
            data_key,
            boot_id,
            tx_seq: 0,
            rx_high: 0,
            answered: offer.counter(),
            bad_data: 0,
        });
        HostWireEvent::Handshake {
            peer: from,
            reason,
            reply: Transmit {
                to: from,
                datagram: reply,
            },
            offer,
        }
    }

    fn handle_data(&mut self, from: SocketAddr, dgram: &[u8]) -> HostWireEvent {
        let Some(s) = self.session.as_mut() else {
            return HostWireEvent::Dropped(Dropped::NoSession);
        };
        if s.peer.ip() != from.ip() {
            return HostWireEvent::Dropped(Dropped::OtherPeer);
        }
        let opened = match datagram::open(dgram, &s.data_key, &self.hmac) {
            Ok(o) => o,
            Err(WireError::AuthenticationFailed) => {
                s.bad_data = s.bad_data.saturating_add(1);
                return HostWireEvent::NotAuthenticated {
                    channel: Channel::Data,
                };
            }
            Err(e) => return HostWireEvent::Malformed(e),
        };
        if opened.header.direction != Direction::TargetToHost {
            return HostWireEvent::Dropped(Dropped::WrongDirection);
        }
        s.bad_data = 0;
        if opened.header.sequence <= s.rx_high {
            return HostWireEvent::Dropped(Dropped::Replay);
        }
        s.rx_high = opened.header.sequence;
        s.peer = from;
        HostWireEvent::Data(opened.payload)
    }

    /// Seals a data payload for the target; `None` before the first handshake.
    pub fn seal_data(&mut self, payload: &[u8]) -> Option<Transmit> {
        let s = self.session.as_mut()?;
        s.tx_seq = (s.tx_seq + 1) & MAX_SEQUENCE;
        Some(Transmit {
            to: s.peer,
            datagram: datagram::seal(
                s.version,
                Channel::Data,
                &s.data_key,
                &self.hmac,
                s.tx_seq,
                Direction::HostToTarget,
                payload,
            ),
        })
    }

    /// An empty control datagram that asks a target for an offer right away.
    pub fn poke(&self, to: SocketAddr, version: u8) -> Transmit {
        Transmit {
            to,
            datagram: datagram::seal(
                version,
                Channel::Control,
                self.key.bytes(),
                &self.hmac,
                0,
                Direction::HostToTarget,
                &[],
            ),
        }
    }
}

/// What the target end made of one datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetWireEvent {
    /// A debugger answered our offer: the data channel runs under the new key. Send `hello`.
    Connected {
        /// The debugger.
        debugger: SocketAddr,
        /// The hello datagram to send to it.
        hello: Transmit,
    },
    /// The host asked for an offer now (empty control datagram).
    Poked {
        /// Who asked.
        from: SocketAddr,
    },
    /// An authenticated data payload from the debugger.
    Data(Vec<u8>),
    /// A KDNET datagram that does not authenticate.
    NotAuthenticated {
        /// Its channel.
        channel: Channel,
    },
    /// Dropped for another reason.
    Dropped(Dropped),
    /// Not a valid KDNET datagram.
    Malformed(WireError),
}

#[derive(Debug, Clone)]
struct TargetSession {
    debugger: SocketAddr,
    data_key: [u8; KEY_LEN],
    tx_seq: u64,
    rx_high: u64,
}

/// Settings of a target end.
#[derive(Debug, Clone)]
pub struct TargetWireConfig {
    /// The key.
    pub key: Key,
    /// Version byte to send (4 in the Windows 10 capture, 2 from Windows 8.1).
    pub version: u8,
    /// The target's own address, reported in offers.
    pub local: SocketAddr,
    /// The debugger address configured with bcdedit (`hostip:`/`port:`); offers go there.
    pub host: SocketAddr,
}

/// The target's end of the wire.
#[derive(Debug)]
pub struct TargetWire {
    config: TargetWireConfig,
    hmac: [u8; KEY_LEN],
    nonce: [u8; NONCE_LEN],
    boot: Instant,
    session: Option<TargetSession>,
}

impl TargetWire {
    /// A target end that booted at `boot`. `boot_nonce` seeds the 32-byte nonce: its first 8
    /// bytes are the starting counter, the rest identify this boot.
    pub fn new(config: TargetWireConfig, boot: Instant, boot_nonce: [u8; NONCE_LEN]) -> TargetWire {
        let hmac = config.key.hmac_key();
        TargetWire {
            config,
            hmac,
            nonce: boot_nonce,
            boot,
            session: None,
        }
    }

    /// The debugger, once one answered.
    pub fn debugger(&self) -> Option<SocketAddr> {
        self.session.as_ref().map(|s| s.debugger)
    }

    /// The settings.
    pub fn config(&self) -> &TargetWireConfig {
        &self.config
    }

    /// A new boot: new nonce, no debugger, offers start again.
    pub fn reboot(&mut self, now: Instant, boot_nonce: [u8; NONCE_LEN]) {
        self.nonce = boot_nonce;
        self.boot = now;
        self.session = None;
    }

    /// Drops the data channel (the target forgets its debugger).
    pub fn disconnect(&mut self) {
        self.session = None;
    }

    /// The next offer, for `to` (normally the configured host). Advances the nonce counter.
    pub fn offer(&mut self, now: Instant, to: SocketAddr) -> Transmit {
        let counter =
            u64::from_le_bytes(self.nonce[..8].try_into().expect("8 bytes")).wrapping_add(1);
        self.nonce[..8].copy_from_slice(&counter.to_le_bytes());
        let debugger = self
            .session
            .as_ref()
            .map(|s| s.debugger)
            .unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
        let offer = Offer {
            nonce: self.nonce,
            target: self.config.local,
            configured_host: self.config.host,
            debugger,
        };
        // The control sequence is a seconds-since-boot counter.
        let seq = now.saturating_duration_since(self.boot).as_secs().max(1) & MAX_SEQUENCE;
        Transmit {
            to,
            datagram: datagram::seal(
                self.config.version,
                Channel::Control,
                self.config.key.bytes(),
                &self.hmac,
                seq,
                Direction::TargetToHost,
                &offer.encode(),
            ),
        }
    }

    /// Time between offers.
    pub const OFFER_INTERVAL: Duration = Duration::from_secs(3);

    /// Handles one received datagram.
    pub fn handle(&mut self, from: SocketAddr, dgram: &[u8]) -> TargetWireEvent {
        let channel = match datagram::peek(dgram) {
            Ok((_, c)) => c,
            Err(WireError::BadMagic) => return TargetWireEvent::Dropped(Dropped::NotKdnet),
            Err(e) => return TargetWireEvent::Malformed(e),
        };
        match channel {
            Channel::Control => self.handle_control(from, dgram),
            Channel::Data => self.handle_data(from, dgram),
        }
    }

    fn handle_control(&mut self, from: SocketAddr, dgram: &[u8]) -> TargetWireEvent {
        let opened = match datagram::open(dgram, self.config.key.bytes(), &self.hmac) {
            Ok(o) => o,
            Err(WireError::AuthenticationFailed) => {
                return TargetWireEvent::NotAuthenticated {
                    channel: Channel::Control,
                };
            }
            Err(e) => return TargetWireEvent::Malformed(e),
        };
        if opened.header.direction != Direction::HostToTarget {
            return TargetWireEvent::Dropped(Dropped::WrongDirection);
        }
        match ControlMessage::decode(&opened.payload) {
            Ok(ControlMessage::Poke) => TargetWireEvent::Poked { from },
            Ok(ControlMessage::Response(r)) => {
                // kdnet.dll matches the nonce after its counter.
                if r.target_nonce[NONCE_TAIL] != self.nonce[NONCE_TAIL] {
                    return TargetWireEvent::Dropped(Dropped::StaleResponse);
                }
                let data_key = r.data_key(&self.config.key);
                self.session = Some(TargetSession {
                    debugger: from,
                    data_key,
                    tx_seq: 0,
                    rx_high: 0,
                });
                let host_v4 = match from.ip() {
                    IpAddr::V4(v4) => v4,
                    IpAddr::V6(v6) => v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
                };
                let hello = self
                    .seal_data(&data::hello(host_v4))
                    .expect("session was just set");
                TargetWireEvent::Connected {
                    debugger: from,
                    hello,
                }
            }
            _ => TargetWireEvent::Dropped(Dropped::UnexpectedControl),
        }
    }

    fn handle_data(&mut self, from: SocketAddr, dgram: &[u8]) -> TargetWireEvent {
        let Some(s) = self.session.as_mut() else {
            return TargetWireEvent::Dropped(Dropped::NoSession);
        };
        if s.debugger.ip() != from.ip() {
            return TargetWireEvent::Dropped(Dropped::OtherPeer);
        }
        let opened = match datagram::open(dgram, &s.data_key, &self.hmac) {
            Ok(o) => o,
            Err(WireError::AuthenticationFailed) => {
                return TargetWireEvent::NotAuthenticated {
                    channel: Channel::Data,
                };
            }
            Err(e) => return TargetWireEvent::Malformed(e),
        };
        if opened.header.direction != Direction::HostToTarget {
            return TargetWireEvent::Dropped(Dropped::WrongDirection);
        }
        if opened.header.sequence <= s.rx_high {
            return TargetWireEvent::Dropped(Dropped::Replay);
        }
        s.rx_high = opened.header.sequence;
        s.debugger = from;
        TargetWireEvent::Data(opened.payload)
    }

    /// Seals a data payload for the debugger; `None` without one.
    pub fn seal_data(&mut self, payload: &[u8]) -> Option<Transmit> {
        let s = self.session.as_mut()?;
        s.tx_seq = (s.tx_seq + 1) & MAX_SEQUENCE;
        Some(Transmit {
            to: s.debugger,
            datagram: datagram::seal(
                self.config.version,
                Channel::Data,
                &s.data_key,
                &self.hmac,
                s.tx_seq,
                Direction::TargetToHost,
                payload,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::data::DataPayload;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn pair(key: &str) -> (HostWire, TargetWire, Instant) {
        let now = Instant::now();
        let host = HostWire::new(Key::parse(key).unwrap(), None);
        let target = TargetWire::new(
            TargetWireConfig {
                key: Key::parse("1.2.3.4").unwrap(),
                version: 4,
                local: addr("10.0.0.2:50000"),
                host: addr("10.0.0.1:50000"),
            },
            now,
            [0x11; 32],
        );
        (host, target, now)
    }

    #[test]
    fn handshake_both_directions_and_replay() {
        let (mut host, mut target, now) = pair("1.2.3.4");
        let t_addr = addr("10.0.0.2:50000");
        let h_addr = addr("10.0.0.1:50000");
        let offer = target.offer(now + Duration::from_secs(3), h_addr);
        let ev = host.handle(t_addr, &offer.datagram, &mut || [0x22; 32]);
        let HostWireEvent::Handshake { reply, reason, .. } = ev else {
            panic!("{ev:?}")
        };
        assert_eq!(reason, HandshakeReason::First);
        assert_eq!(reply.to, t_addr);
        let ev = target.handle(h_addr, &reply.datagram);
        let TargetWireEvent::Connected { hello, debugger } = ev else {
            panic!("{ev:?}")
        };
        assert_eq!(debugger, h_addr);
        let HostWireEvent::Data(p) = host.handle(t_addr, &hello.datagram, &mut || [0; 32]) else {
            panic!()
        };
        assert_eq!(
            DataPayload::classify(&p),
            DataPayload::Hello {
                host: Ipv4Addr::new(10, 0, 0, 1)
            }
        );
        // The same datagram again is a replay.
        assert_eq!(
            host.handle(t_addr, &hello.datagram, &mut || [0; 32]),
            HostWireEvent::Dropped(Dropped::Replay)
        );
        // Host → target data.
        let d = host.seal_data(b"\x62").unwrap();
        assert_eq!(
            target.handle(h_addr, &d.datagram),
            TargetWireEvent::Data(vec![0x62])
        );
        assert_eq!(
            target.handle(h_addr, &d.datagram),
            TargetWireEvent::Dropped(Dropped::Replay)
        );
        // A later offer from the same boot, now naming the debugger: keepalive.
        let offer = target.offer(now + Duration::from_secs(6), h_addr);
        assert_eq!(
            host.handle(t_addr, &offer.datagram, &mut || [0; 32]),
            HostWireEvent::KeepAlive { moved_from: None }
        );
    }

    #[test]
    fn reboot_makes_a_new_session() {
        let (mut host, mut target, now) = pair("1.2.3.4");
        let t_addr = addr("10.0.0.2:50000");
        let h_addr = addr("10.0.0.1:50000");
        let offer = target.offer(now, h_addr);
        let HostWireEvent::Handshake { reply, .. } =
            host.handle(t_addr, &offer.datagram, &mut || [1; 32])
        else {
            panic!()
        };
        target.handle(h_addr, &reply.datagram);
        let old = target.seal_data(b"old").unwrap();
        target.reboot(now, [0x33; 32]);
        let offer = target.offer(now + Duration::from_secs(3), h_addr);
        let ev = host.handle(t_addr, &offer.datagram, &mut || [2; 32]);
        let HostWireEvent::Handshake { reason, reply, .. } = ev else {
            panic!("{ev:?}")
        };
        assert_eq!(reason, HandshakeReason::Rebooted);
        assert!(matches!(
            target.handle(h_addr, &reply.datagram),
            TargetWireEvent::Connected { .. }
        ));
        // Data sealed under the old session's key no longer authenticates.
        assert_eq!(
            host.handle(t_addr, &old.datagram, &mut || [0; 32]),
            HostWireEvent::NotAuthenticated {
                channel: Channel::Data
            }
        );
    }

    #[test]
    fn a_repeated_offer_does_not_rekey_and_a_key_split_heals() {
        let (mut host, mut target, now) = pair("1.2.3.4");
        let t_addr = addr("10.0.0.2:50000");
        let h_addr = addr("10.0.0.1:50000");
        let offer = target.offer(now, h_addr);
        let HostWireEvent::Handshake { reply, .. } =
            host.handle(t_addr, &offer.datagram, &mut || [1; 32])
        else {
            panic!()
        };
        // The same offer again (duplicated on the link) is not answered a second time.
        assert_eq!(
            host.handle(t_addr, &offer.datagram, &mut || [2; 32]),
            HostWireEvent::KeepAlive { moved_from: None }
        );
        assert!(matches!(
            target.handle(h_addr, &reply.datagram),
            TargetWireEvent::Connected { .. }
        ));
        // Split the keys: the target accepts a response the host never made.
        let stray = Response {
            target_nonce: {
                let mut n = [0x11; 32];
                n[..8].copy_from_slice(&2u64.to_le_bytes());
                n
            },
            host_nonce: [9; 32],
        };
        let hk = Key::parse("1.2.3.4").unwrap();
        let d = datagram::seal(
            4,
            Channel::Control,
            hk.bytes(),
            &hk.hmac_key(),
            1,
            Direction::HostToTarget,
            &stray.encode(),
        );
        assert!(matches!(
            target.handle(h_addr, &d),
            TargetWireEvent::Connected { .. }
        ));
        for _ in 0..REKEY_AFTER_BAD_DATA {
            let t = target.seal_data(b"x").unwrap();
            assert!(matches!(
                host.handle(t_addr, &t.datagram, &mut || [0; 32]),
                HostWireEvent::NotAuthenticated { .. }
            ));
        }
        // The target's next offer names a debugger, but the host answers it to heal the split.
        let offer = target.offer(now + Duration::from_secs(3), h_addr);
        let ev = host.handle(t_addr, &offer.datagram, &mut || [3; 32]);
        let HostWireEvent::Handshake { reason, reply, .. } = ev else {
            panic!("{ev:?}")
        };
        assert_eq!(reason, HandshakeReason::Rekeyed);
        assert!(matches!(
            target.handle(h_addr, &reply.datagram),
            TargetWireEvent::Connected { .. }
        ));
        let t = target.seal_data(b"ok").unwrap();
        assert_eq!(
            host.handle(t_addr, &t.datagram, &mut || [0; 32]),
            HostWireEvent::Data(b"ok".to_vec())
        );
    }

    #[test]
    fn wrong_key_is_not_authenticated() {
        let (mut host, mut target, now) = pair("1.2.3.5");
        let offer = target.offer(now, addr("10.0.0.1:50000"));
        assert_eq!(
            host.handle(addr("10.0.0.2:50000"), &offer.datagram, &mut || [0; 32]),
            HostWireEvent::NotAuthenticated {
                channel: Channel::Control
            }
        );
    }

    #[test]
    fn stale_response_is_refused() {
        let (mut host, mut target, now) = pair("1.2.3.4");
        let offer = target.offer(now, addr("10.0.0.1:50000"));
        let HostWireEvent::Handshake { reply, .. } =
            host.handle(addr("10.0.0.2:50000"), &offer.datagram, &mut || [1; 32])
        else {
            panic!()
        };
        target.reboot(now, [0x44; 32]);
        assert_eq!(
            target.handle(addr("10.0.0.1:50000"), &reply.datagram),
            TargetWireEvent::Dropped(Dropped::StaleResponse)
        );
    }
}
