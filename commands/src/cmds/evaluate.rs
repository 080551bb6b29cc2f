//! `? EXPR`: evaluates an expression.

use schemars::JsonSchema;
use serde::Serialize;

use crate::args::{Args, Kind, Param, Syntax};
use crate::engine::{CmdError, Engine, addr};
use crate::registry::Render;

/// `? EXPR`.
pub(crate) const SYNTAX: Syntax = Syntax::params(&[Param {
    name: "EXPR",
    kind: Kind::Rest,
    optional: false,
}]);

/// What `? EXPR` evaluated to.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Evaluated {
    /// The value, as a 64-bit unsigned number.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub value: u64,
}

pub(crate) fn run(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<Evaluated, CmdError> {
    let text = a.text("EXPR").unwrap_or("");
    Ok(Evaluated {
        value: e.eval(text)?,
    })
}

impl Render for Evaluated {
    fn render(&self, out: &mut String) {
        out.push_str(&format!(
            "Evaluate expression: {} = {}\n",
            self.value as i64,
            addr(self.value)
        ));
    }
}
