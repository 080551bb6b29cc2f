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

/// Why the host's session (re)started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeReason {
    /// No session existed.
    First,
    /// The target proved a new boot (a new nonce tail).
    Rebooted,
    /// The same boot of the target took a new data key (it had lost its session, or it now
    /// sends from another address).
    Rekeyed,
}

/// Why a datagram was dropped. Every drop is counted by its cause ([`Drops`]); none of them
/// changes the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Direction bit says it was sent by our own side.
    WrongDirection,
    /// A data datagram whose sequence number is not above the highest accepted one (a replay or
    /// a duplicate).
    Replay,
    /// An offer that is not newer than one already seen from that boot (a replay or a
    /// duplicate).
    StaleOffer,
    /// From an address that is neither the session's peer nor a handshake in progress.
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

/// Datagrams the host dropped, by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Drops {
    /// Not KDNET (no `MDBG` magic).
    pub not_kdnet: u64,
    /// KDNET framing that does not parse (short, unaligned, bad inner header or padding).
    pub malformed: u64,
    /// Control datagrams whose tag does not verify under the key (a wrong key, or forged).
    pub unauthenticated_control: u64,
    /// Data datagrams that open under no data key we hold (forged, or from an older key).
    pub unauthenticated_data: u64,
    /// Data datagrams replayed or duplicated (sequence number not above the highest seen).
    pub replayed_data: u64,
    /// Offers replayed or duplicated (nonce counter not above the highest seen for the boot).
    pub stale_offers: u64,
    /// Data from an address that is neither the target's nor a handshake in progress.
    pub other_address: u64,
    /// Authenticated datagrams with our own direction bit, or control messages a host does
    /// not take (responses, pokes).
    pub unexpected: u64,
    /// Data before any session existed.
    pub no_session: u64,
    /// Authenticated data payloads that are not KD packets (bad checksum, truncated).
    pub malformed_kd: u64,
}

impl Drops {
    /// All drops.
    pub fn total(&self) -> u64 {
        self.not_kdnet
            + self.malformed
            + self.unauthenticated_control
            + self.unauthenticated_data
            + self.replayed_data
            + self.stale_offers
            + self.other_address
            + self.unexpected
            + self.no_session
            + self.malformed_kd
    }

    /// The non-zero causes, largest first, as (name, count).
    pub fn causes(&self) -> Vec<(&'static str, u64)> {
        let mut v: Vec<(&'static str, u64)> = [
            ("not KDNET", self.not_kdnet),
            ("malformed", self.malformed),
            ("unauthenticated control", self.unauthenticated_control),
            ("unauthenticated data", self.unauthenticated_data),
            ("replayed data", self.replayed_data),
            ("stale offers", self.stale_offers),
            ("from another address", self.other_address),
            ("unexpected", self.unexpected),
            ("before a session", self.no_session),
            ("malformed KD", self.malformed_kd),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect();
        v.sort_by_key(|c| std::cmp::Reverse(c.1));
        v
    }

    /// `"none"`, or `"7 (4 replayed data, 3 stale offers)"`.
    pub fn summary(&self) -> String {
        let total = self.total();
        if total == 0 {
            return "none".to_string();
        }
        let parts: Vec<String> = self
            .causes()
            .iter()
            .map(|(name, n)| format!("{n} {name}"))
            .collect();
        format!("{total} ({})", parts.join(", "))
    }

    /// The drops counted since `earlier` (counters only grow).
    pub fn since(&self, earlier: &Drops) -> Drops {
        Drops {
            not_kdnet: self.not_kdnet.saturating_sub(earlier.not_kdnet),
            malformed: self.malformed.saturating_sub(earlier.malformed),
            unauthenticated_control: self
                .unauthenticated_control
                .saturating_sub(earlier.unauthenticated_control),
            unauthenticated_data: self
                .unauthenticated_data
                .saturating_sub(earlier.unauthenticated_data),
            replayed_data: self.replayed_data.saturating_sub(earlier.replayed_data),
            stale_offers: self.stale_offers.saturating_sub(earlier.stale_offers),
            other_address: self.other_address.saturating_sub(earlier.other_address),
            unexpected: self.unexpected.saturating_sub(earlier.unexpected),
            no_session: self.no_session.saturating_sub(earlier.no_session),
            malformed_kd: self.malformed_kd.saturating_sub(earlier.malformed_kd),
        }
    }

    fn count(&mut self, d: Dropped) {
        match d {
            Dropped::WrongDirection | Dropped::UnexpectedControl | Dropped::StaleResponse => {
                self.unexpected += 1
            }
            Dropped::Replay => self.replayed_data += 1,
            Dropped::StaleOffer => self.stale_offers += 1,
            Dropped::OtherPeer => self.other_address += 1,
            Dropped::NoSession => self.no_session += 1,
            Dropped::NotKdnet => self.not_kdnet += 1,
        }
    }
}

/// What the host end made of one datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostWireEvent {
    /// An authenticated offer was answered: send `reply`. This commits the host to nothing: the
    /// session starts (or moves, or re-keys) only when the target proves it derived the data
    /// key from this reply's fresh host nonce, by sealing data under it ([`HostWireEvent::Connected`]).
    Answered {
        /// Where the offer came from (and the reply goes).
        to: SocketAddr,
        /// The RESPONSE datagram.
        reply: Transmit,
        /// The offer answered.
        offer: Offer,
    },
    /// A target proved an answered offer: it sealed `payload` (normally its hello) under the
    /// data key of our reply. The session now runs with it at `peer`.
    Connected {
        /// The target's address.
        peer: SocketAddr,
        /// Why the session (re)started.
        reason: HandshakeReason,
        /// The session's address before, when it moved.
        moved_from: Option<SocketAddr>,
        /// The data payload that proved it.
        payload: Vec<u8>,
    },
    /// A fresh offer from the session's target (its nonce counter is new): it is alive.
    KeepAlive,
    /// An authenticated, fresh data payload from the session's target.
    Data(Vec<u8>),
    /// A well-formed KDNET datagram that does not authenticate: most likely a wrong key (on the
    /// control channel) or forged.
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
    /// Highest offer counter seen from this boot; offers not above it are replays.
    offers_seen: u64,
    /// The debugger the target named in its offers once it had taken our key.
    debugger: Option<SocketAddr>,
}

/// An answered offer waiting for its proof.
#[derive(Debug, Clone)]
struct Candidate {
    peer: SocketAddr,
    version: u8,
    data_key: [u8; KEY_LEN],
    boot_id: [u8; 24],
    counter: u64,
    answered_at: Instant,
}

/// Handshakes in progress at once (from different addresses or boots); the oldest is dropped
/// for a new one.
pub const MAX_CANDIDATES: usize = 64;

/// Handshakes in progress from one IP address.
pub const MAX_CANDIDATES_PER_ADDRESS: usize = 4;

/// How long an answered offer waits for its proof.
pub const CANDIDATE_LIFETIME: Duration = Duration::from_secs(30);

fn newer(counter: u64, than: u64) -> bool {
    (counter.wrapping_sub(than) as i64) > 0
}

fn boot_id_of(offer: &Offer) -> [u8; 24] {
    let mut b = [0u8; 24];
    b.copy_from_slice(offer.boot_id());
    b
}

/// The debugger's end of the wire.
///
/// Binding rules (nothing on the network without the key can steer it):
/// - an authenticated offer that is fresh is answered with a new random host nonce, but only
///   remembered as a candidate; many can be in flight;
/// - a candidate becomes the session only when data sealed under its data key arrives from the
///   address the reply went to: only a holder of the key that received this reply now can make
///   it, so a recorded offer replayed from anywhere proves nothing;
/// - an established session moves to another address, re-keys or rolls over to a new boot only
///   by the same proof;
/// - data is taken only from the session's exact address, under its key, with a sequence number
///   above every one seen; offers from the session's boot only when their counter is new;
/// - datagrams that fail any check are counted by cause and change nothing.
#[derive(Debug)]
pub struct HostWire {
    key: Key,
    hmac: [u8; KEY_LEN],
    session: Option<HostSession>,
    candidates: Vec<Candidate>,
    only_from: Option<IpAddr>,
    drops: Drops,
    answered: u64,
    proven: u64,
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
            candidates: Vec::new(),
            only_from,
            drops: Drops::default(),
            answered: 0,
            proven: 0,
        }
    }

    /// The target's address, once a handshake was proven.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.session.as_ref().map(|s| s.peer)
    }

    /// The version byte the target uses (echoed in everything we send).
    pub fn version(&self) -> Option<u8> {
        self.session.as_ref().map(|s| s.version)
    }

    /// Drops so far, by cause.
    pub fn drops(&self) -> Drops {
        self.drops
    }

    /// Counts a drop found above this layer (a data payload that is not a KD packet).
    pub fn count_malformed_kd(&mut self) {
        self.drops.malformed_kd += 1;
    }

    /// Offers answered, and answers proven by the target (handshakes completed).
    pub fn handshakes(&self) -> (u64, u64) {
        (self.answered, self.proven)
    }

    /// Handshakes in progress.
    pub fn pending_handshakes(&self) -> usize {
        self.candidates.len()
    }

    /// Forgets the session and every handshake in progress (a later offer starts anew).
    pub fn forget(&mut self) {
        self.session = None;
        self.candidates.clear();
    }

    /// Handles one received datagram at `now`. `host_nonce` is called only when an offer is
    /// answered.
    pub fn handle(
        &mut self,
        from: SocketAddr,
        dgram: &[u8],
        now: Instant,
        host_nonce: &mut dyn FnMut() -> [u8; NONCE_LEN],
    ) -> HostWireEvent {
        self.candidates
            .retain(|c| now.saturating_duration_since(c.answered_at) < CANDIDATE_LIFETIME);
        let ev = match datagram::peek(dgram) {
            Ok((_, Channel::Control)) => self.handle_control(from, dgram, now, host_nonce),
            Ok((_, Channel::Data)) => self.handle_data(from, dgram),
            Err(WireError::BadMagic) => HostWireEvent::Dropped(Dropped::NotKdnet),
            Err(e) => HostWireEvent::Malformed(e),
        };
        match &ev {
            HostWireEvent::Dropped(d) => self.drops.count(*d),
            HostWireEvent::Malformed(_) => self.drops.malformed += 1,
            HostWireEvent::NotAuthenticated {
                channel: Channel::Control,
            } => self.drops.unauthenticated_control += 1,
            HostWireEvent::NotAuthenticated {
                channel: Channel::Data,
            } => self.drops.unauthenticated_data += 1,
            _ => {}
        }
        ev
    }

    fn handle_control(
        &mut self,
        from: SocketAddr,
        dgram: &[u8],
        now: Instant,
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
        let Ok(ControlMessage::Offer(offer)) = ControlMessage::decode(&opened.payload) else {
            return HostWireEvent::Dropped(Dropped::UnexpectedControl);
        };
        if let Some(ip) = self.only_from
            && ip != from.ip()
        {
            return HostWireEvent::Dropped(Dropped::OtherPeer);
        }
        let boot_id = boot_id_of(&offer);
        let counter = offer.counter();
        // Freshness against the session's boot: a counter already seen is a replay, from
        // whatever address it comes.
        let mut answer = true;
        if let Some(s) = self.session.as_mut()
            && s.boot_id == boot_id
        {
            if !newer(counter, s.offers_seen) {
                return HostWireEvent::Dropped(Dropped::StaleOffer);
            }
            if from == s.peer {
                s.offers_seen = counter;
                let unproven = self
                    .candidates
                    .iter()
                    .any(|c| c.peer == from && c.boot_id == boot_id);
                let named = offer.has_debugger().then_some(offer.debugger);
                if s.debugger.is_none() {
                    s.debugger = named;
                }
                // Answer only when the target says it has no data channel, names another
                // debugger than the one it named with our key, or an answer of ours is still
                // unproven (its hello was lost): otherwise it is a keepalive, and answering
                // would re-key a session that works.
                answer = named.is_none() || named != s.debugger || unproven;
                if !answer {
                    return HostWireEvent::KeepAlive;
                }
            }
        }
        // Freshness against the handshakes in progress: this boot already answered at this
        // address with this counter or a newer one.
        if self
            .candidates
            .iter()
            .any(|c| c.peer == from && c.boot_id == boot_id && !newer(counter, c.counter))
        {
            return HostWireEvent::Dropped(Dropped::StaleOffer);
        }
        debug_assert!(answer);
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
        // Room: one machine holds at most a few slots, so a flood of replays from one address
        // cannot push out the handshake of another.
        let same_ip: Vec<usize> = (0..self.candidates.len())
            .filter(|&i| self.candidates[i].peer.ip() == from.ip())
            .collect();
        if same_ip.len() >= MAX_CANDIDATES_PER_ADDRESS {
            self.candidates.remove(same_ip[0]);
        } else if self.candidates.len() >= MAX_CANDIDATES {
            self.candidates.remove(0);
        }
        self.candidates.push(Candidate {
            peer: from,
            version: opened.version,
            data_key,
            boot_id,
            counter,
            answered_at: now,
        });
        self.answered += 1;
        HostWireEvent::Answered {
            to: from,
            reply: Transmit {
                to: from,
                datagram: reply,
            },
            offer,
        }
    }

    fn handle_data(&mut self, from: SocketAddr, dgram: &[u8]) -> HostWireEvent {
        let at_peer = self.session.as_ref().is_some_and(|s| s.peer == from);
        let candidates: Vec<usize> = (0..self.candidates.len())
            .filter(|&i| self.candidates[i].peer == from)
            .collect();
        if !at_peer && candidates.is_empty() {
            return HostWireEvent::Dropped(if self.session.is_none() {
                Dropped::NoSession
            } else {
                Dropped::OtherPeer
            });
        }
        if at_peer {
            let s = self.session.as_mut().expect("checked");
            match datagram::open(dgram, &s.data_key, &self.hmac) {
                Ok(opened) => {
                    if opened.header.direction != Direction::TargetToHost {
                        return HostWireEvent::Dropped(Dropped::WrongDirection);
                    }
                    if opened.header.sequence <= s.rx_high {
                        return HostWireEvent::Dropped(Dropped::Replay);
                    }
                    s.rx_high = opened.header.sequence;
                    return HostWireEvent::Data(opened.payload);
                }
                Err(WireError::AuthenticationFailed) => {}
                Err(e) => return HostWireEvent::Malformed(e),
            }
        }
        // Newest candidate first: the proof of the latest answer wins.
        for &i in candidates.iter().rev() {
            let c = &self.candidates[i];
            let opened = match datagram::open(dgram, &c.data_key, &self.hmac) {
                Ok(o) => o,
                Err(WireError::AuthenticationFailed) => continue,
                Err(e) => return HostWireEvent::Malformed(e),
            };
            if opened.header.direction != Direction::TargetToHost {
                return HostWireEvent::Dropped(Dropped::WrongDirection);
            }
            let c = self.candidates.remove(i);
            return self.promote(c, opened.header.sequence, opened.payload);
        }
        HostWireEvent::NotAuthenticated {
            channel: Channel::Data,
        }
    }

    fn promote(&mut self, c: Candidate, sequence: u64, payload: Vec<u8>) -> HostWireEvent {
        let (reason, moved_from) = match &self.session {
            None => (HandshakeReason::First, None),
            Some(s) if s.boot_id != c.boot_id => (HandshakeReason::Rebooted, None),
            Some(s) => (
                HandshakeReason::Rekeyed,
                (s.peer != c.peer).then_some(s.peer),
            ),
        };
        // Handshakes of this boot answered before the proven one are moot.
        self.candidates
            .retain(|o| o.boot_id != c.boot_id || newer(o.counter, c.counter));
        self.proven += 1;
        let peer = c.peer;
        self.session = Some(HostSession {
            peer,
            version: c.version,
            data_key: c.data_key,
            boot_id: c.boot_id,
            tx_seq: 0,
            rx_high: sequence,
            offers_seen: c.counter,
            debugger: None,
        });
        HostWireEvent::Connected {
            peer,
            reason,
            moved_from,
            payload,
        }
    }

    /// Seals a data payload for the target; `None` before the first proven handshake.
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

    const T: &str = "10.0.0.2:50000";
    const H: &str = "10.0.0.1:50000";
    const EVIL: &str = "10.0.0.66:50000";

    fn target(now: Instant, boot: u8) -> TargetWire {
        TargetWire::new(
            TargetWireConfig {
                key: Key::parse("1.2.3.4").unwrap(),
                version: 4,
                local: addr(T),
                host: addr(H),
            },
            now,
            [boot; 32],
        )
    }

    fn host(key: &str) -> HostWire {
        HostWire::new(Key::parse(key).unwrap(), None)
    }

    fn nonce() -> impl FnMut() -> [u8; 32] {
        let mut n = 0u8;
        move || {
            n = n.wrapping_add(1);
            [n; 32]
        }
    }

    /// Offer → answer → the target takes it → its hello proves it: the session starts.
    fn connect(host: &mut HostWire, target: &mut TargetWire, now: Instant) -> HostWireEvent {
        let offer = target.offer(now, addr(H));
        let HostWireEvent::Answered { reply, .. } =
            host.handle(addr(T), &offer.datagram, now, &mut nonce())
        else {
            panic!("the offer is answered")
        };
        let TargetWireEvent::Connected { hello, .. } = target.handle(addr(H), &reply.datagram)
        else {
            panic!("the target takes the answer")
        };
        host.handle(addr(T), &hello.datagram, now, &mut nonce())
    }

    #[test]
    fn an_answered_offer_commits_to_nothing_until_proven() {
        let now = Instant::now();
        let (mut host, mut target) = (host("1.2.3.4"), target(now, 0x11));
        let offer = target.offer(now, addr(H));
        let HostWireEvent::Answered { reply, to, .. } =
            host.handle(addr(T), &offer.datagram, now, &mut nonce())
        else {
            panic!()
        };
        assert_eq!(to, addr(T));
        assert_eq!(host.peer(), None, "no session before the proof");
        assert!(host.seal_data(b"x").is_none());
        let TargetWireEvent::Connected { hello, debugger } =
            target.handle(addr(H), &reply.datagram)
        else {
            panic!()
        };
        assert_eq!(debugger, addr(H));
        let ev = host.handle(addr(T), &hello.datagram, now, &mut nonce());
        let HostWireEvent::Connected {
            peer,
            reason,
            payload,
            moved_from,
        } = ev
        else {
            panic!("{ev:?}")
        };
        assert_eq!(
            (peer, reason, moved_from),
            (addr(T), HandshakeReason::First, None)
        );
        assert_eq!(
            DataPayload::classify(&payload),
            DataPayload::Hello {
                host: Ipv4Addr::new(10, 0, 0, 1)
            }
        );
        assert_eq!(host.handshakes(), (1, 1));
        // The hello again is a replay.
        assert_eq!(
            host.handle(addr(T), &hello.datagram, now, &mut nonce()),
            HostWireEvent::Dropped(Dropped::Replay)
        );
        // Host → target data.
        let d = host.seal_data(b"\x62").unwrap();
        assert_eq!(d.to, addr(T));
        assert_eq!(
            target.handle(addr(H), &d.datagram),
            TargetWireEvent::Data(vec![0x62])
        );
        // A later offer of the same boot naming this debugger: a keepalive, not answered.
        let offer = target.offer(now + Duration::from_secs(3), addr(H));
        assert_eq!(
            host.handle(addr(T), &offer.datagram, now, &mut nonce()),
            HostWireEvent::KeepAlive
        );
        // That offer again, from anywhere, is stale.
        for from in [T, EVIL, "10.0.0.2:50001"] {
            assert_eq!(
                host.handle(addr(from), &offer.datagram, now, &mut nonce()),
                HostWireEvent::Dropped(Dropped::StaleOffer)
            );
        }
        assert_eq!(host.drops().stale_offers, 3);
        assert_eq!(host.drops().replayed_data, 1);
    }

    #[test]
    fn a_recorded_offer_replayed_from_elsewhere_wins_nothing() {
        let now = Instant::now();
        // An offer recorded from an earlier boot.
        let mut old = target(now, 0x55);
        let recorded = old.offer(now, addr(H));
        let (mut host, mut target) = (host("1.2.3.4"), target(now, 0x11));
        // Replayed before the target's own offer: answered (it authenticates), to the sender.
        let HostWireEvent::Answered { to, .. } =
            host.handle(addr(EVIL), &recorded.datagram, now, &mut nonce())
        else {
            panic!()
        };
        assert_eq!(to, addr(EVIL));
        assert_eq!(host.peer(), None);
        // The attacker cannot prove it: data under any key it could make does not open.
        let forged = datagram::seal(
            4,
            Channel::Data,
            &[7; KEY_LEN],
            &Key::parse("1.2.3.4").unwrap().hmac_key(),
            1,
            Direction::TargetToHost,
            b"hello",
        );
        assert_eq!(
            host.handle(addr(EVIL), &forged, now, &mut nonce()),
            HostWireEvent::NotAuthenticated {
                channel: Channel::Data
            }
        );
        // The real target connects all the same.
        let ev = connect(&mut host, &mut target, now);
        assert!(
            matches!(ev, HostWireEvent::Connected { peer, reason: HandshakeReason::First, .. } if peer == addr(T)),
            "{ev:?}"
        );
        // Old-boot offers replayed at the established session, from the attacker and from the
        // target's own address: answered at most, never a reboot.
        for from in [EVIL, T] {
            let ev = host.handle(addr(from), &recorded.datagram, now, &mut nonce());
            assert!(
                matches!(
                    ev,
                    HostWireEvent::Answered { .. } | HostWireEvent::Dropped(Dropped::StaleOffer)
                ),
                "{ev:?}"
            );
            assert_eq!(host.peer(), Some(addr(T)));
        }
        // The answer to the target's address is refused by the target: another boot's nonce.
        let HostWireEvent::Answered { reply, .. } = host.handle(
            addr(T),
            &old.offer(now + Duration::from_secs(3), addr(H)).datagram,
            now,
            &mut nonce(),
        ) else {
            panic!()
        };
        assert_eq!(
            target.handle(addr(H), &reply.datagram),
            TargetWireEvent::Dropped(Dropped::StaleResponse)
        );
        // Data keeps flowing with the real target.
        let d = target.seal_data(b"still").unwrap();
        assert_eq!(
            host.handle(addr(T), &d.datagram, now, &mut nonce()),
            HostWireEvent::Data(b"still".to_vec())
        );
    }

    #[test]
    fn data_from_another_port_is_not_taken_and_does_not_move_the_session() {
        let now = Instant::now();
        let (mut host, mut target) = (host("1.2.3.4"), target(now, 0x11));
        connect(&mut host, &mut target, now);
        let d = target.seal_data(b"one").unwrap();
        // Replayed (or raced) from another port of the same machine.
        assert_eq!(
            host.handle(addr("10.0.0.2:50001"), &d.datagram, now, &mut nonce()),
            HostWireEvent::Dropped(Dropped::OtherPeer)
        );
        assert_eq!(host.peer(), Some(addr(T)));
        assert_eq!(host.seal_data(b"x").unwrap().to, addr(T));
        assert_eq!(
            host.handle(addr(T), &d.datagram, now, &mut nonce()),
            HostWireEvent::Data(b"one".to_vec())
        );
        // Junk with bad tags from the target's own address is counted, and changes nothing.
        for i in 0..20u8 {
            let mut junk = d.datagram.clone();
            let n = junk.len();
            junk[n - 1] ^= i + 1;
            assert_eq!(
                host.handle(addr(T), &junk, now, &mut nonce()),
                HostWireEvent::NotAuthenticated {
                    channel: Channel::Data
                }
            );
        }
        assert_eq!(host.drops().unauthenticated_data, 20);
        let offer = target.offer(now + Duration::from_secs(3), addr(H));
        assert_eq!(
            host.handle(addr(T), &offer.datagram, now, &mut nonce()),
            HostWireEvent::KeepAlive,
            "no re-key for junk"
        );
        let d = target.seal_data(b"two").unwrap();
        assert_eq!(
            host.handle(addr(T), &d.datagram, now, &mut nonce()),
            HostWireEvent::Data(b"two".to_vec())
        );
    }

    #[test]
    fn a_target_that_moved_is_followed_on_proof() {
        let now = Instant::now();
        let (mut host, mut target) = (host("1.2.3.4"), target(now, 0x11));
        connect(&mut host, &mut target, now);
        // The target now sends from another port (NAT, a restarted stack): its fresh offer is
        // answered there; the session moves when the target proves the answer.
        let moved = addr("10.0.0.2:50007");
        let offer = target.offer(now + Duration::from_secs(3), addr(H));
        let HostWireEvent::Answered { reply, .. } =
            host.handle(moved, &offer.datagram, now, &mut nonce())
        else {
            panic!()
        };
        assert_eq!(host.peer(), Some(addr(T)), "not before the proof");
        let TargetWireEvent::Connected { hello, .. } = target.handle(addr(H), &reply.datagram)
        else {
            panic!()
        };
        let ev = host.handle(moved, &hello.datagram, now, &mut nonce());
        assert!(
            matches!(ev, HostWireEvent::Connected { reason: HandshakeReason::Rekeyed, moved_from: Some(f), .. } if f == addr(T)),
            "{ev:?}"
        );
        assert_eq!(host.peer(), Some(moved));
    }

    #[test]
    fn reboot_is_recognised_on_proof() {
        let now = Instant::now();
        let (mut host, mut target) = (host("1.2.3.4"), target(now, 0x11));
        connect(&mut host, &mut target, now);
        let old = target.seal_data(b"old").unwrap();
        target.reboot(now, [0x33; 32]);
        let ev = connect(&mut host, &mut target, now + Duration::from_secs(3));
        assert!(
            matches!(
                ev,
                HostWireEvent::Connected {
                    reason: HandshakeReason::Rebooted,
                    ..
                }
            ),
            "{ev:?}"
        );
        // Data sealed under the old session's key no longer authenticates.
        assert_eq!(
            host.handle(addr(T), &old.datagram, now, &mut nonce()),
            HostWireEvent::NotAuthenticated {
                channel: Channel::Data
            }
        );
    }

    #[test]
    fn a_lost_hello_heals_at_the_next_offer() {
        let now = Instant::now();
        let (mut host, mut target) = (host("1.2.3.4"), target(now, 0x11));
        connect(&mut host, &mut target, now);
        // The target lost its session (its debugger transport restarted): its offer says so.
        target.disconnect();
        let offer = target.offer(now + Duration::from_secs(3), addr(H));
        let HostWireEvent::Answered { reply, .. } =
            host.handle(addr(T), &offer.datagram, now, &mut nonce())
        else {
            panic!()
        };
        // The target takes the answer; its hello is lost.
        assert!(matches!(
            target.handle(addr(H), &reply.datagram),
            TargetWireEvent::Connected { .. }
        ));
        // Its next offer names a debugger, but the answer is unproven: answered again.
        let offer = target.offer(now + Duration::from_secs(6), addr(H));
        let HostWireEvent::Answered { reply, .. } =
            host.handle(addr(T), &offer.datagram, now, &mut nonce())
        else {
            panic!("an unproven answer is repeated")
        };
        let TargetWireEvent::Connected { hello, .. } = target.handle(addr(H), &reply.datagram)
        else {
            panic!()
        };
        let ev = host.handle(addr(T), &hello.datagram, now, &mut nonce());
        assert!(
            matches!(
                ev,
                HostWireEvent::Connected {
                    reason: HandshakeReason::Rekeyed,
                    moved_from: None,
                    ..
                }
            ),
            "{ev:?}"
        );
        let d = target.seal_data(b"ok").unwrap();
        assert_eq!(
            host.handle(addr(T), &d.datagram, now, &mut nonce()),
            HostWireEvent::Data(b"ok".to_vec())
        );
    }

    #[test]
    fn handshakes_expire_and_one_address_cannot_crowd_out_another() {
        let now = Instant::now();
        let mut host = host("1.2.3.4");
        // Many recorded offers of many boots, replayed from many ports of one machine.
        for boot in 0..40u8 {
            let mut t = target(now, 0x80 + boot);
            let o = t.offer(now, addr(H));
            let from = SocketAddr::new(addr(EVIL).ip(), 40000 + u16::from(boot));
            host.handle(from, &o.datagram, now, &mut nonce());
        }
        assert_eq!(host.pending_handshakes(), MAX_CANDIDATES_PER_ADDRESS);
        let mut target = target(now, 0x11);
        assert!(matches!(
            connect(&mut host, &mut target, now),
            HostWireEvent::Connected { .. }
        ));
        // Unproven answers expire.
        let later = now + CANDIDATE_LIFETIME + Duration::from_secs(1);
        host.handle(addr(T), b"not kdnet", later, &mut nonce());
        assert_eq!(host.pending_handshakes(), 0);
        assert_eq!(host.drops().not_kdnet, 1);
    }

    #[test]
    fn wrong_key_is_not_authenticated() {
        let now = Instant::now();
        let (mut host, mut target) = (host("1.2.3.5"), target(now, 0x11));
        let offer = target.offer(now, addr(H));
        assert_eq!(
            host.handle(addr(T), &offer.datagram, now, &mut nonce()),
            HostWireEvent::NotAuthenticated {
                channel: Channel::Control
            }
        );
        assert_eq!(host.drops().unauthenticated_control, 1);
    }

    #[test]
    fn stale_response_is_refused() {
        let now = Instant::now();
        let (mut host, mut target) = (host("1.2.3.4"), target(now, 0x11));
        let offer = target.offer(now, addr(H));
        let HostWireEvent::Answered { reply, .. } =
            host.handle(addr(T), &offer.datagram, now, &mut nonce())
        else {
            panic!()
        };
        target.reboot(now, [0x44; 32]);
        assert_eq!(
            target.handle(addr(H), &reply.datagram),
            TargetWireEvent::Dropped(Dropped::StaleResponse)
        );
    }

    #[test]
    fn drop_summary_names_causes() {
        let d = Drops {
            replayed_data: 4,
            stale_offers: 3,
            ..Drops::default()
        };
        assert_eq!(d.total(), 7);
        assert_eq!(d.summary(), "7 (4 replayed data, 3 stale offers)");
        assert_eq!(Drops::default().summary(), "none");
    }
}
