//! `!pool ADDR [FLAGS]`: the page around an address, its blocks and where its chain breaks.

use schemars::JsonSchema;
use serde::Serialize;

use crate::args::{Args, Syntax, expr, opt_expr};
use crate::engine::{CmdError, Engine};
use crate::registry::Render;
use kdnet_model::nt::pool::{self, PageKind, PoolAt};

/// `!pool ADDR [FLAGS]`.
pub const SYNTAX: Syntax = Syntax::params(&[expr("ADDR"), opt_expr("FLAGS")]);

/// What `!pool` found around an address.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PoolPage {
    /// The region the address lies in, as the memory manager records it (`Nonpaged pool`,
    /// `Paged pool`, `Special pool`, `Unknown`, …).
    pub region: String,
    /// How the memory there is organised.
    pub kind: Kind,
    /// The blocks: those of the page, or the one big allocation or special-pool block.
    pub chunks: Vec<Chunk>,
    /// Where the chain of headers breaks (null when it does not).
    pub corruption: Option<Corruption>,
    /// The address asked about (the text's first line).
    #[serde(skip)]
    pub address: u64,
    /// Flag 2: the text shows only the block holding the address.
    #[serde(skip)]
    pub only_block: bool,
    /// A special-pool page is pageable (the text says `pagable`).
    #[serde(skip)]
    pub paged: bool,
}

/// How the memory around an address is organised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A page of `_POOL_HEADER` chains (before 18362).
    Classic,
    /// A segment-heap LFH subsegment: blocks of one size.
    Lfh,
    /// A segment-heap VS subsegment: chunks of varying size.
    Vs,
    /// A heap segment whose page-range descriptor is broken (see `corruption`).
    Segment,
    /// An allocation from the big-page table.
    Big,
    /// A special-pool page.
    Special,
}

/// One block.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Chunk {
    /// The address of its header (of its data, for big and special-pool allocations).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub address: u64,
    /// Its bytes, header included.
    pub size: u64,
    /// The bytes of the block before it (0 where the heap does not keep it; absent for big and
    /// special-pool allocations).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_size: Option<u64>,
    /// Allocated or free.
    pub allocated: bool,
    /// Its pool tag (`Free` for a free segment-heap block).
    pub tag: String,
    /// Whether it holds the address asked about.
    pub contains: bool,
}

/// Where a chain of headers breaks.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Corruption {
    /// The header that does not fit.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub address: u64,
    /// Its offset in the page.
    pub page_offset: u64,
    /// What should be there.
    pub expected: String,
    /// The 16 bytes there, in hex (empty when the descriptor itself is wrong).
    pub found: String,
    /// The same bytes as text.
    pub found_text: String,
    /// The block before it, when there is one.
    pub previous_block: Option<Chunk>,
}

fn chunk(b: &pool::Block) -> Chunk {
    Chunk {
        address: b.address,
        size: b.size,
        previous_size: Some(b.previous_size),
        allocated: b.allocated,
        tag: b.tag.clone(),
        contains: b.contains,
    }
}

/// `!pool ADDR [FLAGS]`: flag 2 shows only the block holding ADDR.
pub fn run(e: &mut Engine, _verb: &str, args: &Args<'_>) -> Result<PoolPage, CmdError> {
    let a = args
        .expr(e, "ADDR")?
        .ok_or_else(|| CmdError::Usage("!pool ADDR [FLAGS]".into()))?;
    let flags = args.expr(e, "FLAGS")?.unwrap_or(0);
    let (region, at) = pool::pool_at(&mut e.kernel, a)?;
    let mut out = PoolPage {
        region,
        kind: Kind::Classic,
        chunks: Vec::new(),
        corruption: None,
        address: a,
        only_block: flags & 2 != 0,
        paged: false,
    };
    match at {
        PoolAt::Big {
            va,
            size,
            tag,
            free,
        } => {
            out.kind = Kind::Big;
            out.chunks.push(Chunk {
                address: va,
                size,
                previous_size: None,
                allocated: !free,
                tag,
                contains: true,
            });
        }
        PoolAt::Special {
            data,
            size,
            tag,
            paged,
        } => {
            out.kind = Kind::Special;
            out.paged = paged;
            out.chunks.push(Chunk {
                address: data,
                size,
                previous_size: None,
                allocated: true,
                tag,
                contains: true,
            });
        }
        PoolAt::Page {
            kind,
            blocks,
            corruption,
        } => {
            out.kind = match kind {
                PageKind::Classic => Kind::Classic,
                PageKind::Lfh => Kind::Lfh,
                PageKind::Vs => Kind::Vs,
                PageKind::Segment => Kind::Segment,
            };
            out.chunks = blocks.iter().map(chunk).collect();
            out.corruption = corruption.map(|c| Corruption {
                address: c.address,
                page_offset: c.page_offset,
                expected: c.expected,
                found: c.found,
                found_text: c.found_text,
                previous_block: c.previous_block.as_ref().map(chunk),
            });
        }
    }
    Ok(out)
}

impl Render for PoolPage {
    fn render(&self, out: &mut String) {
        out.push_str(&format!(
            "Pool page {:x} region is {}\n",
            self.address, self.region
        ));
        match self.kind {
            Kind::Big => {
                for c in &self.chunks {
                    out.push_str(&format!(
                        "*{:x} : {}large page allocation, tag is {}, size is {:#x} bytes\n",
                        c.address,
                        if c.allocated { "" } else { "free " },
                        c.tag,
                        c.size
                    ));
                }
            }
            Kind::Special => {
                for c in &self.chunks {
                    out.push_str(&format!(
                        "*{:x} size: {:x} {} special pool, Tag is {}\n",
                        c.address,
                        c.size,
                        if self.paged { "pagable" } else { "non-paged" },
                        c.tag
                    ));
                }
            }
            Kind::Classic | Kind::Lfh | Kind::Vs | Kind::Segment => {
                for b in &self.chunks {
                    if self.only_block && !b.contains {
                        continue;
                    }
                    out.push_str(&format!(
                        "{}{:x} size: {:4x} previous size: {:4x}  ({}) {}{}\n",
                        if b.contains { '*' } else { ' ' },
                        b.address,
                        b.size,
                        b.previous_size.unwrap_or(0),
                        if b.allocated { "Allocated" } else { "Free" },
                        if b.contains { "*" } else { " " },
                        b.tag
                    ));
                }
                if let Some(c) = &self.corruption {
                    out.push_str(&format!(
                        "\n*** Pool corruption at {:x} (offset {:#x} in the page): expected {}; found {} \"{}\"\n",
                        c.address, c.page_offset, c.expected, c.found, c.found_text
                    ));
                    if let Some(p) = &c.previous_block {
                        out.push_str(&format!(
                            "*** The block before it: {:x}, {:#x} bytes, {}, tag {}\n",
                            p.address,
                            p.size,
                            if p.allocated { "allocated" } else { "free" },
                            p.tag
                        ));
                    }
                }
            }
        }
    }
}
