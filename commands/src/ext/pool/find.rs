//! `!poolfind TAG [0|1]`: the blocks with a tag, from the big-page table and the pool regions.

use schemars::JsonSchema;
use serde::Serialize;

use crate::args::{Args, Syntax, opt_word, word};
use crate::engine::{CmdError, Engine};
use crate::registry::Render;
use kdnet_model::nt::pool;

/// `!poolfind TAG [0|1]` (0 non-paged, 1 paged).
pub const SYNTAX: Syntax = Syntax::params(&[word("TAG"), opt_word("0|1")]);

/// Most blocks reported.
const LIMIT: usize = 10_000;

/// What `!poolfind` found.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PoolFind {
    /// The tag searched for.
    pub tag: String,
    /// The allocated blocks with it, by address.
    pub matches: Vec<Match>,
    /// Why the search is not whole (it stopped at its limit).
    pub notes: Vec<String>,
    /// The tag's value (the text's first line).
    #[serde(skip)]
    pub value: u32,
}

/// One block.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Match {
    /// Its header (its start, for a big allocation).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub address: u64,
    /// Its bytes.
    pub size: u64,
    /// In paged pool.
    pub paged: bool,
}

/// `!poolfind TAG [0|1]`.
pub fn run(e: &mut Engine, _verb: &str, args: &Args<'_>) -> Result<PoolFind, CmdError> {
    let t = args
        .text("TAG")
        .ok_or_else(|| CmdError::Usage("!poolfind TAG [0|1]".into()))?;
    let tag = pool::tag_value(t.trim_matches('\''))
        .ok_or_else(|| CmdError::Usage(format!("{t:?} is not a pool tag (1 to 4 characters)")))?;
    let want = match args.text("0|1") {
        Some("0") => Some(false),
        Some("1") => Some(true),
        Some(other) => return Err(CmdError::Usage(format!("pool type {other}: use 0 or 1"))),
        None => None,
    };
    let (hits, notes) = pool::find_tag(&mut e.kernel, tag, want, LIMIT)?;
    Ok(PoolFind {
        tag: pool::tag_text(tag),
        matches: hits
            .into_iter()
            .map(|(address, size, paged, _, _)| Match {
                address,
                size,
                paged,
            })
            .collect(),
        notes,
        value: tag,
    })
}

impl Render for PoolFind {
    fn render(&self, out: &mut String) {
        out.push_str(&format!(
            "Scanning large pool allocation table and pool ranges for tag {} ({:08x})\n\n",
            self.tag, self.value
        ));
        for m in &self.matches {
            out.push_str(&format!(
                "{:x} : tag {}, size {:#7x}, {}\n",
                m.address,
                self.tag,
                m.size,
                if m.paged {
                    "Paged pool"
                } else {
                    "Nonpaged pool"
                }
            ));
        }
        out.push_str(&format!("\n{} allocation(s) found\n", self.matches.len()));
        for n in &self.notes {
            out.push_str(&format!("NOTE: {n}\n"));
        }
    }
}
