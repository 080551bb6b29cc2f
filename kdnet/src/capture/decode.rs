//! Decoding a captured KDNET session: authenticate every datagram, follow the handshake to the
//! data key, and decode the KD packet and DBGKD structure each one carries.

use serde::Serialize;

use super::UdpDatagram;
use crate::api::{self, ApiBody, DebugIo, FileIo, Manipulate, StateChange64};
use crate::kd::{Packet, PacketType};
use crate::wire::datagram::{self, Channel, Direction, MAGIC};
use crate::wire::key::KEY_LEN;
use crate::wire::{ControlMessage, DataPayload, Key, control};

/// The control-channel message of a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ControlRecord {
    /// `offer`, `response` or `poke`.
    pub message: &'static str,
    /// Offer: the nonce counter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counter: Option<u64>,
    /// Offer: the target's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Offer: the configured host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub configured_host: Option<String>,
    /// Offer: the debugger the target accepted (`None` when port 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debugger: Option<String>,
}

/// One KDNET datagram, decoded as far as it goes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Record {
    /// 1-based index among the capture's KDNET datagrams.
    pub n: usize,
    /// Seconds since the first KDNET datagram.
    pub time: f64,
    /// Sender address.
    pub from: String,
    /// Receiver address.
    pub to: String,
    /// `control` or `data`.
    pub channel: &'static str,
    /// Version byte.
    pub version: u8,
    /// Whether the tag verified.
    pub authenticated: bool,
    /// `host_to_target` or `target_to_host` (authenticated datagrams only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<&'static str>,
    /// Inner sequence number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    /// What was wrong, for datagrams that did not decode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Control message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control: Option<ControlRecord>,
    /// `hello`, `break_in` or `kd` for data datagrams.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<&'static str>,
    /// The hello's host address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hello_host: Option<String>,
    /// KD packet leader.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kd_leader: Option<u32>,
    /// KD packet type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kd_type: Option<u16>,
    /// KD packet type name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kd_type_name: Option<&'static str>,
    /// KD packet id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kd_id: Option<u32>,
    /// KD data bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kd_byte_count: Option<usize>,
    /// Manipulate ApiNumber.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<u32>,
    /// Its name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_name: Option<&'static str>,
    /// Manipulate processor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processor: Option<u16>,
    /// Manipulate ReturnStatus.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u32>,
    /// Memory and control-space requests: address (or control-space index).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<u64>,
    /// Memory and control-space requests: TransferCount.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer_count: Option<u32>,
    /// Memory replies: bytes actually transferred.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actual: Option<u32>,
    /// The manipulate union, decoded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<ApiBody>,
    /// Bytes of data after the manipulate header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_len: Option<usize>,
    /// State change: NewState.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_state: Option<u32>,
    /// State change, decoded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_change: Option<StateChange64>,
    /// DbgPrint text (or DbgPrompt prompt).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// File I/O, decoded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_io: Option<FileIo>,
    /// The authenticated plaintext (inner header, payload, padding), for re-sealing.
    #[serde(skip)]
    pub plaintext: Option<Vec<u8>>,
    /// The captured datagram.
    #[serde(skip)]
    pub raw: Vec<u8>,
    /// Which data key opened it (index into [`DecodeSummary::data_keys`]).
    #[serde(skip)]
    pub data_key_index: Option<usize>,
}

/// Totals over a decoded capture.
#[derive(Debug, Clone, Default)]
pub struct DecodeSummary {
    /// UDP datagrams in the capture.
    pub udp: usize,
    /// KDNET datagrams (MDBG magic).
    pub kdnet: usize,
    /// Those that authenticated.
    pub authenticated: usize,
    /// Data keys derived from the handshakes, in order. Key material: never print it.
    pub data_keys: Vec<[u8; KEY_LEN]>,
}

impl DecodeSummary {
    /// A one-line hint when nothing authenticated.
    pub fn hint(&self) -> Option<String> {
        if self.kdnet > 0 && self.authenticated == 0 {
            Some(format!(
                "none of the {} KDNET datagrams authenticates: the key is probably wrong",
                self.kdnet
            ))
        } else if self.kdnet == 0 {
            Some(format!(
                "no KDNET datagrams among {} UDP datagrams",
                self.udp
            ))
        } else {
            None
        }
    }
}

/// Decodes the KDNET datagrams among `udp` with `key`.
pub fn decode_session(udp: &[UdpDatagram], key: &Key) -> (Vec<Record>, DecodeSummary) {
    let hmac = key.hmac_key();
    let mut summary = DecodeSummary {
        udp: udp.len(),
        ..DecodeSummary::default()
    };
    let mut records = Vec::new();
    let t0 = udp
        .iter()
        .find(|u| u.payload.starts_with(&MAGIC))
        .map_or(0, |u| u.time_ns);
    for u in udp.iter().filter(|u| u.payload.starts_with(&MAGIC)) {
        summary.kdnet += 1;
        let mut r = Record {
            n: summary.kdnet,
            time: u.time_ns.saturating_sub(t0) as f64 / 1e9,
            from: u.src.to_string(),
            to: u.dst.to_string(),
            raw: u.payload.clone(),
            ..Record::default()
        };
        decode_one(&mut r, key, &hmac, &mut summary, u.truncated);
        if r.authenticated {
            summary.authenticated += 1;
        }
        records.push(r);
    }
    (records, summary)
}

fn decode_one(
    r: &mut Record,
    key: &Key,
    hmac: &[u8; KEY_LEN],
    summary: &mut DecodeSummary,
    truncated: bool,
) {
    let d = r.raw.clone();
    r.version = d.get(4).copied().unwrap_or(0);
    r.channel = match d.get(5).copied().and_then(Channel::from_byte) {
        Some(c) => c.name(),
        None => "unknown",
    };
    if truncated {
        r.error = Some("the capture cut this datagram short".into());
        return;
    }
    let opened = match d.get(5).copied().and_then(Channel::from_byte) {
        Some(Channel::Control) => {
            datagram::open_plaintext(&d, key.bytes(), hmac).map(|o| (o, None))
        }
        Some(Channel::Data) => {
            if summary.data_keys.is_empty() {
                r.error = Some("no handshake seen yet, so no data key".into());
                return;
            }
            // The newest session first, then older ones.
            let mut result = Err(datagram::WireError::AuthenticationFailed);
            for (i, dk) in summary.data_keys.iter().enumerate().rev() {
                result = datagram::open_plaintext(&d, dk, hmac).map(|o| (o, Some(i)));
                if result.is_ok() {
                    break;
                }
            }
            result
        }
        None => Err(datagram::WireError::BadChannel(
            d.get(5).copied().unwrap_or(0),
        )),
    };
    let ((_, channel, plain), key_index) = match opened {
        Ok(o) => o,
        Err(e) => {
            r.error = Some(e.to_string());
            return;
        }
    };
    r.authenticated = true;
    r.data_key_index = key_index;
    r.plaintext = Some(plain.clone());
    let (header, payload) = match datagram::split_plaintext(&plain) {
        Ok(x) => x,
        Err(e) => {
            r.error = Some(e.to_string());
            return;
        }
    };
    r.sequence = Some(header.sequence);
    r.direction = Some(match header.direction {
        Direction::HostToTarget => "host_to_target",
        Direction::TargetToHost => "target_to_host",
    });
    match channel {
        Channel::Control => decode_control(r, key, payload, summary),
        Channel::Data => decode_data(r, payload),
    }
}

fn decode_control(r: &mut Record, key: &Key, payload: &[u8], summary: &mut DecodeSummary) {
    match ControlMessage::decode(payload) {
        Ok(ControlMessage::Offer(o)) => {
            r.control = Some(ControlRecord {
                message: "offer",
                counter: Some(o.counter()),
                target: Some(o.target.to_string()),
                configured_host: Some(o.configured_host.to_string()),
                debugger: o.has_debugger().then(|| o.debugger.to_string()),
            });
        }
        Ok(ControlMessage::Response(_)) => {
            summary.data_keys.push(control::data_key(key, payload));
            r.control = Some(ControlRecord {
                message: "response",
                counter: None,
                target: None,
                configured_host: None,
                debugger: None,
            });
        }
        Ok(ControlMessage::Poke) => {
            r.control = Some(ControlRecord {
                message: "poke",
                counter: None,
                target: None,
                configured_host: None,
                debugger: None,
            });
        }
        Err(e) => r.error = Some(e.to_string()),
    }
}

fn decode_data(r: &mut Record, payload: &[u8]) {
    let bytes = match DataPayload::classify(payload) {
        DataPayload::Hello { host } => {
            r.payload = Some("hello");
            r.hello_host = Some(host.to_string());
            return;
        }
        DataPayload::BreakIn => {
            r.payload = Some("break_in");
            return;
        }
        DataPayload::Kd(b) => b,
    };
    r.payload = Some("kd");
    let packet = match Packet::decode(bytes) {
        Ok(p) => p,
        Err(e) => {
            r.error = Some(e.to_string());
            return;
        }
    };
    r.kd_leader = Some(packet.leader);
    r.kd_type = Some(packet.kind.to_u16());
    r.kd_type_name = Some(packet.kind.name());
    r.kd_id = Some(packet.id);
    r.kd_byte_count = Some(packet.data.len());
    let result = match packet.kind {
        PacketType::StateManipulate => Manipulate::decode(&packet.data).map(|m| {
            r.api = Some(m.api_number());
            r.api_name = m.api().map(api::Api::name);
            r.processor = Some(m.processor());
            r.status = Some(m.return_status());
            let body = m.body();
            if let ApiBody::Memory {
                address,
                transfer_count,
                actual,
            } = body
            {
                r.address = Some(address);
                r.transfer_count = Some(transfer_count);
                r.actual = Some(actual);
            }
            r.data_len = Some(m.data.len());
            r.body = Some(body);
        }),
        PacketType::StateChange64 => StateChange64::decode(&packet.data).map(|s| {
            r.new_state = Some(s.new_state);
            r.state_change = Some(s);
        }),
        PacketType::DebugIo => DebugIo::decode(&packet.data).map(|io| match io {
            DebugIo::PrintString { text, .. } | DebugIo::GetString { prompt: text, .. } => {
                r.text = Some(text);
            }
            DebugIo::Other { .. } => {}
        }),
        PacketType::FileIo => FileIo::decode(&packet.data).map(|f| r.file_io = Some(f)),
        _ => Ok(()),
    };
    if let Err(e) = result {
        r.error = Some(e.to_string());
    }
}

impl Record {
    /// One line for people, in the spirit of a protocol analyser.
    pub fn line(&self) -> String {
        let mut s = format!(
            "#{:<4} {:>10.6} {} -> {} {:<7}",
            self.n, self.time, self.from, self.to, self.channel
        );
        if !self.authenticated {
            s.push_str(" NOT AUTHENTICATED");
            if let Some(e) = &self.error {
                s.push_str(&format!(" ({e})"));
            }
            return s;
        }
        if let Some(seq) = self.sequence {
            s.push_str(&format!(" seq {seq:<4}"));
        }
        if let Some(c) = &self.control {
            s.push_str(&format!(" {}", c.message.to_uppercase()));
            if let Some(n) = c.counter {
                s.push_str(&format!(" counter {n:#x}"));
            }
            if let Some(t) = &c.target {
                s.push_str(&format!(" target {t}"));
            }
            if c.message == "offer" {
                s.push_str(&format!(
                    " debugger {}",
                    c.debugger.as_deref().unwrap_or("none")
                ));
            }
        }
        match self.payload {
            Some("hello") => s.push_str(&format!(
                " hello (host {})",
                self.hello_host.as_deref().unwrap_or("?")
            )),
            Some("break_in") => s.push_str(" break-in"),
            _ => {}
        }
        if let (Some(name), Some(id)) = (self.kd_type_name, self.kd_id) {
            let short = name
                .trim_start_matches("PACKET_TYPE_")
                .trim_start_matches("KD_");
            s.push_str(&format!(" {short} id {id:#x}"));
        }
        if let Some(api) = self.api {
            s.push_str(&format!(
                " {} ({api:#x}) status {:#x}",
                self.api_name.unwrap_or("unknown api"),
                self.status.unwrap_or(0)
            ));
            match &self.body {
                Some(ApiBody::Memory {
                    address,
                    transfer_count,
                    actual,
                }) => s.push_str(&format!(
                    " addr {address:#x} count {transfer_count:#x} actual {actual:#x}"
                )),
                Some(ApiBody::GetVersion(v)) if self.direction == Some("target_to_host") => s
                    .push_str(&format!(
                        " build {} kernbase {:#x}",
                        v.minor_version, v.kern_base
                    )),
                Some(ApiBody::Continue2 { status, .. } | ApiBody::Continue { status }) => {
                    s.push_str(&format!(" continue {status:#x}"))
                }
                _ => {}
            }
        }
        if let Some(sc) = &self.state_change {
            s.push_str(&format!(
                " {} pc {:#x}",
                api::state_change::state_name(sc.new_state),
                sc.program_counter
            ));
            match &sc.event {
                api::StateEvent::Exception(e) => s.push_str(&format!(" exception {:#x}", e.code)),
                api::StateEvent::LoadSymbols(l) => s.push_str(&format!(
                    " {} {:?} base {:#x}",
                    if l.unload { "unload" } else { "load" },
                    l.path,
                    l.base
                )),
                _ => {}
            }
        }
        if let Some(t) = &self.text {
            s.push_str(&format!(" {t:?}"));
        }
        if let Some(f) = &self.file_io {
            match &f.op {
                api::FileOp::CreateFile { name, .. } => {
                    s.push_str(&format!(" CreateFile {name:?} status {:#x}", f.status))
                }
                op => s.push_str(&format!(" {op:?} status {:#x}", f.status)),
            }
        }
        if let Some(e) = &self.error {
            s.push_str(&format!(" error: {e}"));
        }
        s
    }
}
