//! `!ndiskd.pendingnbls` and `!ndiskd.miniport`: NDIS as ndis.sys's own symbols describe it
//! ([`kdnet_model::nt::ndis`]), shown as the ndiskd extension shows it.

use std::collections::BTreeMap;
use std::sync::Arc;

use kdnet_symbols::TypeTable;
use schemars::JsonSchema;
use serde::Serialize;

use crate::args::{Args, Syntax, opt_expr};
use crate::engine::{CmdError, Engine};
use crate::registry::Render;
use kdnet_model::nt::Kernel;
use kdnet_model::nt::ndis as model;

pub use kdnet_model::nt::ndis::{Nbls, walk_nbls};

/// ndis.sys's base and table.
pub(crate) fn ndis(k: &mut Kernel) -> Result<(u64, Arc<TypeTable>), CmdError> {
    ndis_with_source(k).map(|(base, t, _)| (base, t))
}

/// ndis.sys's base, table, and where the table came from (an ndis.pdb along the symbol path,
/// or `built-in`: the project's copy of a real ndis.pdb's layout).
pub(crate) fn ndis_with_source(k: &mut Kernel) -> Result<(u64, Arc<TypeTable>, String), CmdError> {
    super::module_table(k, "ndis", "ndis.sys", "ndis.pdb")
}

/// What `!ndiskd.pendingnbls` found.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum PendingNbls {
    /// Owner tracking is off: who holds an NBL cannot be told.
    Untracked(Untracked),
    /// The NBL pools walked.
    Tracked(Tracked),
}

/// Owner tracking is off.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Untracked {
    /// Whether NBL owner tracking is on (false).
    pub tracking: bool,
    /// Not known (null).
    pub pending: (),
    /// Not known (null).
    pub total: (),
    /// None known (empty).
    pub holders: Vec<Holder>,
}

/// The NBLs away from home and who holds them.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Tracked {
    /// Whether NBL owner tracking is on (true).
    pub tracking: bool,
    /// Where ndis.sys's layout came from: an ndis.pdb along the symbol path, or `built-in` (the
    /// project's copy of a real ndis.pdb's layout, used when the file is not on the path).
    pub symbols: String,
    /// NBL pools on the global pool list.
    pub pools: usize,
    /// NBLs on the pools' lookaside lists (freed).
    pub freed: u64,
    /// NBLs away from home.
    pub pending: usize,
    /// NBLs allocated from the pools.
    pub total: u64,
    /// The components holding pending NBLs, the most NBLs first.
    pub holders: Vec<Holder>,
    /// Each pending NBL and its holder.
    pub nbls: Vec<PendingNbl>,
    /// Why a walk stopped early.
    pub notes: Vec<String>,
}

/// A component holding NBLs.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Holder {
    /// Its handle (miniport, filter or open block).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub handle: u64,
    /// Its name (null when it could not be read).
    pub name: Option<String>,
    /// Why its name could not be read (null when it could).
    pub name_error: Option<String>,
    /// `NetAdapter`, `Filter`, `Protocol` or `Unknown`.
    pub kind: String,
    /// The NBLs it holds.
    pub count: u64,
}

/// A pending NBL.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PendingNbl {
    /// The NBL.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub nbl: u64,
    /// The handle of the component holding it.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub holder: u64,
}

/// `!ndiskd.pendingnbls`.
pub const PENDINGNBLS: Syntax = Syntax::NONE;

/// `!ndiskd.pendingnbls`.
pub fn pendingnbls(e: &mut Engine, _verb: &str, _args: &Args<'_>) -> Result<PendingNbls, CmdError> {
    let (base, t, symbols) = ndis_with_source(&mut e.kernel)?;
    let nbls = walk_nbls(&mut e.kernel, &t, base)?;
    if !nbls.tracking {
        return Ok(PendingNbls::Untracked(Untracked {
            tracking: false,
            pending: (),
            total: (),
            holders: Vec::new(),
        }));
    }
    let mut names: BTreeMap<u64, (Result<String, String>, &'static str)> = BTreeMap::new();
    let mut by_holder: BTreeMap<u64, u64> = BTreeMap::new();
    for (_, h) in &nbls.pending {
        *by_holder.entry(*h).or_default() += 1;
        if !names.contains_key(h) {
            // A holder is named by the tracker its NBLs' slots name.
            let c = match nbls.trackers.get(h) {
                Some(tr) => model::component(&mut e.kernel, &t, *tr),
                None => (Ok(String::new()), "Unknown"),
            };
            if let Err(why) = &c.0 {
                e.kernel
                    .note_incomplete(format!("the name of NBL holder {h:x} is unreadable: {why}"));
            }
            names.insert(*h, c);
        }
    }
    let mut holders: Vec<(u64, u64)> = by_holder.into_iter().collect();
    holders.sort_by_key(|(h, c)| (std::cmp::Reverse(*c), *h));
    Ok(PendingNbls::Tracked(Tracked {
        tracking: true,
        symbols,
        pools: nbls.pools,
        freed: nbls.freed,
        pending: nbls.pending.len(),
        total: nbls.total,
        holders: holders
            .iter()
            .map(|(h, c)| {
                let (name, kind) = names.get(h).cloned().unwrap_or((Ok(String::new()), ""));
                Holder {
                    handle: *h,
                    name: name.as_ref().ok().cloned(),
                    name_error: name.err(),
                    kind: kind.to_string(),
                    count: *c,
                }
            })
            .collect(),
        nbls: nbls
            .pending
            .iter()
            .map(|(nbl, holder)| PendingNbl {
                nbl: *nbl,
                holder: *holder,
            })
            .collect(),
        notes: nbls.notes,
    }))
}

impl Holder {
    /// Its name as the text shows it.
    fn shown(&self) -> String {
        match (&self.name, &self.name_error) {
            (Some(n), _) => n.clone(),
            (None, Some(why)) => format!("(name unreadable: {why})"),
            (None, None) => String::new(),
        }
    }
}

impl Render for PendingNbls {
    fn render(&self, out: &mut String) {
        let t = match self {
            PendingNbls::Untracked(_) => {
                out.push_str(
                    "NBL owner tracking is not enabled on this target, so pending NBLs cannot be \
attributed to the component holding them.\n\nTo enable it, set the DWORD registry value\n    \
HKLM\\SYSTEM\\CurrentControlSet\\Services\\NDIS\\Parameters\\TrackNblOwner = 1\nand restart the \
computer (servers default to 0; clients to 1).\n",
                );
                return;
            }
            PendingNbls::Tracked(t) => t,
        };
        out.push_str(&format!("ndis.sys layout from: {}\n", t.symbols));
        out.push_str(&format!(
            "PHASE 1/3: Found {} NBL pool(s).\nPHASE 2/3: Found {} freed NBL(s).\n\n    Pending Nbl        Currently held by\n",
            t.pools, t.freed
        ));
        for n in &t.nbls {
            let (name, kind) = match t.holders.iter().find(|h| h.handle == n.holder) {
                Some(h) => (h.shown(), h.kind.as_str()),
                None => (String::new(), ""),
            };
            out.push_str(&format!(
                "    {:x}   {:x} - {name}  [{kind}]\n",
                n.nbl, n.holder
            ));
        }
        out.push_str(&format!(
            "\nPHASE 3/3: Found {} pending NBL(s) of {} total NBL(s).\nSearch complete.\n",
            t.pending, t.total
        ));
        if !t.holders.is_empty() {
            out.push_str("\nHeld by:\n");
            for h in &t.holders {
                out.push_str(&format!(
                    "    {:>6}  {:x} - {}  [{}]\n",
                    h.count,
                    h.handle,
                    h.shown(),
                    h.kind
                ));
            }
        }
        for n in &t.notes {
            out.push_str(&format!("NOTE: {n}\n"));
        }
    }
}

/// `!ndiskd.miniport [HANDLE]`.
pub const MINIPORT: Syntax = Syntax::params(&[opt_expr("HANDLE")]);

/// What `!ndiskd.miniport` shows.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Miniports {
    /// Without a handle: every miniport.
    List(MiniportList),
    /// With a handle: its state block.
    One(Box<Miniport>),
}

/// Every miniport.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct MiniportList {
    /// The miniports, in the order of ndis.sys's list.
    pub miniports: Vec<MiniportRow>,
}

/// A miniport in the list.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct MiniportRow {
    /// Its block (the handle `!ndiskd.miniport` takes).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub miniport: u64,
    /// Its driver's block.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub driver: u64,
    /// Its name.
    pub name: String,
}

/// A miniport's state block.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Miniport {
    /// Its block.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub miniport: u64,
    /// Its name.
    pub name: String,
    /// Its driver's block.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub driver: u64,
    /// The driver's service name.
    pub service: String,
    /// The medium (`NdisMedium802_3`, …).
    pub media_type: String,
    /// PnP device state.
    pub pnp_state: String,
    /// Miniport state.
    pub miniport_state: String,
    /// Operational status.
    pub operational_status: String,
    /// Media connect state.
    pub media_connect_state: String,
    /// The current MAC address (`00-15-5d-…`; empty when the miniport has no general
    /// attributes).
    pub mac_address: String,
    /// Flags.
    pub flags: u64,
    /// PnP flags.
    pub pnp_flags: u64,
    /// References.
    pub references: u64,
    /// The OID request pending (null: none).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub pending_oid_request: Option<u64>,
    /// The driver's NDIS version, major and minor (the text's `Driver` line).
    #[serde(skip)]
    pub ndis_version: (u64, u64),
    /// Its device object (the text's `Device object` line).
    #[serde(skip)]
    pub device_object: u64,
}

/// `!ndiskd.miniport [HANDLE]`.
pub fn miniport(e: &mut Engine, _verb: &str, args: &Args<'_>) -> Result<Miniports, CmdError> {
    let (base, t) = ndis(&mut e.kernel)?;
    let list = model::miniports(&mut e.kernel, &t, base)?;
    let Some(handle) = args.expr(e, "HANDLE")? else {
        let mut rows = Vec::new();
        for m in list {
            let m = model::miniport_entry(&mut e.kernel, &t, m)?;
            rows.push(MiniportRow {
                miniport: m.miniport,
                driver: m.driver,
                name: m.name,
            });
        }
        return Ok(Miniports::List(MiniportList { miniports: rows }));
    };
    let m = model::miniport(&mut e.kernel, &t, base, handle)?
        .ok_or_else(|| CmdError::Usage(format!("{handle:x} is not a miniport block")))?;
    Ok(Miniports::One(Box::new(Miniport {
        miniport: m.handle,
        name: m.name,
        driver: m.driver,
        service: m.service,
        media_type: m.media_type,
        pnp_state: m.pnp_state,
        miniport_state: m.miniport_state,
        operational_status: m.operational_status,
        media_connect_state: m.media_connect_state,
        mac_address: m.mac_address,
        flags: m.flags,
        pnp_flags: m.pnp_flags,
        references: m.references,
        pending_oid_request: (m.pending_oid_request != 0).then_some(m.pending_oid_request),
        ndis_version: m.ndis_version,
        device_object: m.device_object,
    })))
}

impl Render for Miniports {
    fn render(&self, out: &mut String) {
        match self {
            Miniports::List(l) => {
                out.push_str("    Driver             Miniport            Name\n");
                for m in &l.miniports {
                    out.push_str(&format!(
                        "    {:x}   {:x}    {}\n",
                        m.driver, m.miniport, m.name
                    ));
                }
            }
            Miniports::One(m) => out.push_str(&format!(
                "MINIPORT\n\n    {}\n\n    Ndis handle            {:x}\n    Driver                 {:x} - {}  v{}.{}\n    Media type             {}\n    Device object          {:x}\n    MAC address            {}\n\nSTATE\n\n    Miniport               {}\n    Device PnP             {}\n    Operational status     {}\n    Media                  {}\n    Flags                  {:08x}\n    PnP flags              {:08x}\n    References             {}\n    Pending OID request    {}\n",
                m.name,
                m.miniport,
                m.driver,
                m.service,
                m.ndis_version.0,
                m.ndis_version.1,
                m.media_type,
                m.device_object,
                m.mac_address,
                m.miniport_state,
                m.pnp_state,
                m.operational_status,
                m.media_connect_state,
                m.flags,
                m.pnp_flags,
                m.references,
                m.pending_oid_request
                    .map_or_else(|| "[None]".to_string(), |r| format!("{r:x}")),
            )),
        }
    }
}
