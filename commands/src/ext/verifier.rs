//! `!verifier [FLAGS]`: Driver Verifier's level and verified drivers; with FLAGS 0x100 its IRP
//! log ([`kdnet_model::nt::verifier`]).

use schemars::JsonSchema;
use serde::Serialize;

use crate::args::{Args, Syntax, opt_expr};
use crate::engine::{CmdError, Engine};
use crate::registry::Render;

use super::io::bits;

const LEVEL_FLAGS: &[(u32, &str)] = &[
    (0x1, "Special pool"),
    (0x2, "Force IRQL checking"),
    (0x4, "Low resources simulation"),
    (0x8, "Pool tracking"),
    (0x10, "I/O verification"),
    (0x20, "Deadlock detection"),
    (0x80, "DMA checking"),
    (0x100, "Security checks"),
    (0x200, "Force pending I/O requests"),
    (0x400, "IRP logging"),
    (0x800, "Miscellaneous checks"),
];

/// `!verifier [FLAGS]`.
pub const SYNTAX: Syntax = Syntax::params(&[opt_expr("FLAGS")]);

/// An IRP verifier logged.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct LoggedIrp {
    /// The IRP.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub irp: u64,
    /// The thread that issued it.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub thread: u64,
    /// KernelApcDisable when it was issued.
    pub kernel_apc_disable: i16,
    /// SpecialApcDisable when it was issued (negative: its completion APC cannot run on that
    /// thread until they are enabled again).
    pub special_apc_disable: i16,
    /// IRQL when it was issued.
    pub irql: u8,
    /// Where it was issued from, innermost first, symbolised.
    pub stack: Vec<String>,
}

/// What `!verifier` shows.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct VerifierResult {
    /// MmVerifyDriverLevel.
    pub level: u32,
    /// Its flags' names.
    pub level_names: Vec<String>,
    /// The drivers verified.
    pub drivers: Vec<String>,
    /// With FLAGS 0x100: the IRP log, oldest first (null without it, or where the build
    /// keeps none).
    pub irp_log: Option<Vec<LoggedIrp>>,
    /// The log's slots and next index.
    pub irp_log_slots: (u32, u32),
    /// Why the log is not shown though asked for.
    pub note: Option<String>,
}

/// `!verifier`.
pub fn run(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<VerifierResult, CmdError> {
    let flags = a.expr(e, "FLAGS")?.unwrap_or(0);
    let want_log = flags & 0x100 != 0;
    let v = e.kernel.verifier(want_log)?;
    let note = (want_log && v.log.is_none())
        .then(|| "this build's symbols describe no IRP log (_IOV_IRP_TRACE)".to_string());
    let irp_log = v.log.map(|log| {
        log.into_iter()
            .map(|t| LoggedIrp {
                irp: t.irp,
                thread: t.thread,
                kernel_apc_disable: t.kernel_apc_disable,
                special_apc_disable: t.special_apc_disable,
                irql: t.irql,
                stack: t.stack.iter().map(|r| e.kernel.symbolize(*r)).collect(),
            })
            .collect()
    });
    Ok(VerifierResult {
        level: v.level,
        level_names: bits(v.level, LEVEL_FLAGS),
        drivers: v.drivers,
        irp_log,
        irp_log_slots: v.log_slots,
        note,
    })
}

impl Render for VerifierResult {
    fn render(&self, out: &mut String) {
        out.push_str(&format!(
            "Verify Flags Level 0x{:08x}\n\n  STANDARD FLAGS:\n",
            self.level
        ));
        for (b, n) in LEVEL_FLAGS {
            out.push_str(&format!(
                "    [{}] (0x{b:08x}) {n}\n",
                if self.level & b != 0 { "X" } else { " " }
            ));
        }
        out.push_str("\n  Verified drivers:\n");
        for d in &self.drivers {
            out.push_str(&format!("    {d}\n"));
        }
        if let Some(log) = &self.irp_log {
            out.push_str(&format!(
                "\nIRP log: {} entries ({} slots, next index {})\n",
                log.len(),
                self.irp_log_slots.0,
                self.irp_log_slots.1
            ));
            for l in log {
                out.push_str(&format!(
                    "\nIrp {:016x}  Thread {:016x}  KernelApcDisable {}  SpecialApcDisable {}  Irql {}\n",
                    l.irp, l.thread, l.kernel_apc_disable, l.special_apc_disable, l.irql
                ));
                for f in &l.stack {
                    out.push_str(&format!("    {f}\n"));
                }
            }
        }
        if let Some(n) = &self.note {
            out.push_str(&format!("NOTE: {n}\n"));
        }
    }
}
