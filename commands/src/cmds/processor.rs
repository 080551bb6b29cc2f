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
    // A context set with `.cxr`/`.trap` belongs to the processor it was set on.
    e.reset_scope();
    e.context(n)?;
    e.processor = n;
    Ok(Switched { processor: n })
}

impl Render for Switched {
    /// Nothing: WinDbg's prompt shows the processor.
    fn render(&self, _out: &mut String) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_number_is_decimal_and_may_be_missing() {
        let a = SYNTAX.parse("~Ns", "12").unwrap();
        assert_eq!(a.text("N"), Some("12"));
        assert_eq!(SYNTAX.parse("~Ns", "").unwrap().text("N"), None);
        let s = Switched { processor: 3 };
        let mut text = String::new();
        s.render(&mut text);
        assert!(text.is_empty());
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            serde_json::json!({"processor": 3})
        );
    }
}
