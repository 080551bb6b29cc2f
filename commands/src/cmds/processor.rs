//! `~Ns`: makes processor N (decimal) the current one; `r` and `k` then show its registers and
//! stack.

use schemars::JsonSchema;
use serde::Serialize;

use crate::args::{Args, Syntax, opt_word};
use crate::engine::{CmdError, Engine};
use crate::registry::Render;

/// `~Ns`: the engine passes N (what stands between `~` and `s`).
pub(crate) const SYNTAX: Syntax = Syntax::params(&[opt_word("N")]);

/// The processor switched to.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Switched {
    /// The current processor now.
    pub processor: u32,
}

pub(crate) fn run(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<Switched, CmdError> {
    let n = a.text("N").unwrap_or("");
    let n: u32 = n
        .parse()
        .map_err(|_| CmdError::Usage(format!("~{n}s: not a processor number")))?;
    let count = e.kernel.mem.info().processors.max(1);
    if n >= count {
        return Err(CmdError::Usage(format!(
            "~{n}s: there are {count} processors (0 to {})",
            count - 1
        )));
    }
    e.context(n)?;
    e.processor = n;
    Ok(Switched { processor: n })
}

impl Render for Switched {
    /// Nothing: WinDbg's prompt shows the processor.
    fn render(&self, _out: &mut String) {}
}
