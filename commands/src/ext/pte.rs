//! `!pte Address` and `!vtop PFN Address`: an address's page-table entries, each level decoded
//! (valid entries with their frame and flags, large pages, and entries that are not valid as
//! the memory manager means them: page file, transition, prototype, demand zero), and the
//! translation step by step.

use kdnet_model::mem::WalkEnd;
use kdnet_model::nt::pte::{EntryState, PteLevel};
use schemars::JsonSchema;
use serde::Serialize;

use crate::args::{Args, Syntax, expr};
use crate::engine::{CmdError, Engine};
use crate::registry::Render;

/// `!pte Address`.
pub(crate) const PTE_SYNTAX: Syntax = Syntax::params(&[expr("Address")]);
/// `!vtop PFN Address`.
pub(crate) const VTOP_SYNTAX: Syntax = Syntax::params(&[expr("PFN"), expr("Address")]);

/// A level's name as the debugger prints it (level 0 the PTE).
fn level_name(level: u8) -> &'static str {
    match level {
        0 => "PTE",
        1 => "PDE",
        2 => "PPE",
        3 => "PXE",
        _ => "PML5E",
    }
}

/// A valid entry's flags as the debugger prints them, one column each: copy-on-write, global,
/// large page, dirty, accessed, cache disabled, write-through, user or kernel, writable or
/// read-only, executable, valid (`---DA--KWEV`).
pub fn hardware_flags(v: u64, level: u8) -> String {
    let bit = |n: u32| v >> n & 1 == 1;
    let mut s = String::with_capacity(11);
    s.push(if bit(9) { 'C' } else { '-' });
    s.push(if bit(8) { 'G' } else { '-' });
    s.push(if (level == 1 || level == 2) && bit(7) {
        'L'
    } else {
        '-'
    });
    s.push(if bit(6) { 'D' } else { '-' });
    s.push(if bit(5) { 'A' } else { '-' });
    s.push(if bit(4) { 'N' } else { '-' });
    s.push(if bit(3) { 'T' } else { '-' });
    s.push(if bit(2) { 'U' } else { 'K' });
    // The processor's write bit, or the memory manager's (bit 11) on a page not yet written.
    s.push(if bit(1) || bit(11) { 'W' } else { 'R' });
    s.push(if bit(63) { '-' } else { 'E' });
    s.push(if bit(0) { 'V' } else { '-' });
    s
}

/// A memory-manager protection (`MM_*`, five bits) in words.
pub fn protection_name(p: u8) -> String {
    let base = match p & 7 {
        0 => "NoAccess",
        1 => "Readonly",
        2 => "Execute",
        3 => "ExecuteRead",
        4 => "ReadWrite",
        5 => "WriteCopy",
        6 => "ExecuteReadWrite",
        _ => "ExecuteWriteCopy",
    };
    let extra = match p & 0x18 {
        0x08 => " NoCache",
        0x10 => " Guard",
        0x18 => " WriteCombine",
        _ => "",
    };
    format!("{base}{extra}")
}

/// One level's entry as shown.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EntryShown {
    /// `PXE`, `PPE`, `PDE`, `PTE` (`PML5E` above the PXE with 5-level paging).
    pub level: String,
    /// Where the entry is in virtual memory (the page tables' self-map), when known.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub address: Option<u64>,
    /// Where it is in physical memory.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub physical: u64,
    /// What it holds, as stored.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub contains: u64,
    /// Whether it was stored swizzled (XORed with the invalid-PTE mask).
    pub swizzled: bool,
    /// What it holds with the swizzling undone (equal to `contains` otherwise).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub value: u64,
    /// `valid`, `zero`, `demand-zero`, `page-file`, `transition`, `prototype` or `undecoded`.
    pub state: String,
    /// The frame: a valid entry's (a large page's first), or a transition page's.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub pfn: Option<u64>,
    /// A valid entry's flags (`---DA--KWEV`).
    pub flags: Option<String>,
    /// A PDE or PPE that maps a large page itself.
    pub large_page: bool,
    /// A page-file entry's page file.
    pub page_file: Option<u8>,
    /// A page-file entry's offset in it, in pages.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub page_file_offset: Option<u64>,
    /// A prototype entry's prototype PTE.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub prototype: Option<u64>,
    /// An entry's memory-manager protection, when it is not valid.
    pub protection: Option<u8>,
    /// That protection in words.
    pub protection_name: Option<String>,
}

impl EntryShown {
    fn of(l: &PteLevel) -> EntryShown {
        let mut s = EntryShown {
            level: level_name(l.level).into(),
            address: l.entry_va,
            physical: l.entry_pa,
            contains: l.raw,
            swizzled: l.swizzled,
            value: l.value,
            state: String::new(),
            pfn: None,
            flags: None,
            large_page: false,
            page_file: None,
            page_file_offset: None,
            prototype: None,
            protection: None,
            protection_name: None,
        };
        let prot = |s: &mut EntryShown, p: u8| {
            s.protection = Some(p);
            s.protection_name = Some(protection_name(p));
        };
        s.state = match l.state {
            EntryState::Valid { pfn, large } => {
                s.pfn = Some(pfn);
                s.flags = Some(hardware_flags(l.raw, l.level));
                s.large_page = large;
                "valid"
            }
            EntryState::Zero => "zero",
            EntryState::DemandZero { protection } => {
                prot(&mut s, protection);
                "demand-zero"
            }
            EntryState::PageFile {
                file,
                offset,
                protection,
            } => {
                s.page_file = Some(file);
                s.page_file_offset = Some(offset);
                prot(&mut s, protection);
                "page-file"
            }
            EntryState::Transition { pfn, protection } => {
                s.pfn = Some(pfn);
                prot(&mut s, protection);
                "transition"
            }
            EntryState::Prototype {
                address,
                protection,
            } => {
                s.prototype = Some(address);
                prot(&mut s, protection);
                "prototype"
            }
            EntryState::Undecoded => "undecoded",
        }
        .into();
        s
    }
}

/// `!pte`'s result.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PteShown {
    /// The virtual address.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub va: u64,
    /// When the address asked for is a paging-structure entry (in the self-map): it; `va` is
    /// then the address that entry maps.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub entry_asked: Option<u64>,
    /// The address space's root (CR3).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub directory_base: u64,
    /// The page tables' self-map base, when known.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub pte_base: Option<u64>,
    /// Every level's entry address in the self-map, top level first (empty when the base is
    /// not known).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Vec<crate::hex::Hex>")]
    pub entry_addresses: Vec<u64>,
    /// The entries read, top level first; the last is where the walk ended.
    pub entries: Vec<EntryShown>,
    /// Where the address lands, when every level is valid.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub physical: Option<u64>,
    /// The size of the page it is in (4 KB, 2 MB, 1 GB), when mapped.
    pub page_size: Option<u64>,
    /// The invalid-PTE mask an entry was unswizzled with.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub invalid_pte_mask: Option<u64>,
    /// What could not be read or decoded.
    pub notes: Vec<String>,
}

/// `!pte Address`.
pub(crate) fn pte(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<PteShown, CmdError> {
    let addr = a
        .expr(e, "Address")?
        .ok_or_else(|| CmdError::Usage("!pte: an address is needed".into()))?;
    let r = e.kernel.pte(addr)?;
    let (physical, page_size) = match r.end {
        WalkEnd::Mapped { pa, page_size } => (Some(pa), Some(page_size)),
        WalkEnd::NotPresent { .. } => (None, None),
    };
    Ok(PteShown {
        va: r.va,
        entry_asked: r.entry_asked,
        directory_base: r.dtb,
        pte_base: r.pte_base,
        entry_addresses: r.entry_vas.clone(),
        entries: r.entries.iter().map(EntryShown::of).collect(),
        physical,
        page_size,
        invalid_pte_mask: r.invalid_pte_mask,
        notes: r.notes,
    })
}

/// One column of the table, 27 characters as the debugger lays them out.
fn column(out: &mut String, text: &str) {
    out.push_str(&format!("{text:<27}"));
}

impl Render for PteShown {
    fn render(&self, out: &mut String) {
        let levels = self.entry_addresses.len().max(self.entries.len());
        out.push_str(&format!("{:>43}VA {:016x}\n", "", self.va));
        // The entries' addresses: every level's, read or not.
        let mut line = String::new();
        for i in 0..levels {
            let level = (levels - 1 - i) as u8;
            let name = level_name(level);
            match (self.entry_addresses.get(i), self.entries.get(i)) {
                (Some(a), _) => column(&mut line, &format!("{name} at {a:016X}")),
                (None, Some(en)) => column(&mut line, &format!("{name} phys {:016X}", en.physical)),
                (None, None) => column(&mut line, &format!("{name} at ?")),
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
        let mut line = String::new();
        for en in &self.entries {
            column(&mut line, &format!("contains {:016X}", en.contains));
        }
        out.push_str(line.trim_end());
        out.push('\n');
        let mut line = String::new();
        let mut detail = Vec::new();
        for en in &self.entries {
            match (en.state.as_str(), en.pfn, &en.flags) {
                ("valid", Some(pfn), Some(flags)) => {
                    column(&mut line, &format!("pfn {pfn:<10x}{flags}"));
                    if en.large_page {
                        let within = self.physical.map_or(pfn, |pa| pa >> 12);
                        column(&mut line, &format!("LARGE PAGE pfn {within:x}"));
                    }
                }
                _ => {
                    column(&mut line, "not valid");
                    if en.swizzled {
                        match self.invalid_pte_mask {
                            Some(m) => detail.push(format!(
                                " Swizzled: {:016X} with the invalid-PTE mask {m:016X}",
                                en.value
                            )),
                            None => detail.push(
                                " Swizzled, with an invalid-PTE mask not known: read as stored"
                                    .to_string(),
                            ),
                        }
                    }
                    match en.state.as_str() {
                        "page-file" => {
                            detail.push(format!(" PageFile:  {}", en.page_file.unwrap_or(0)));
                            detail.push(format!(" Offset: {:x}", en.page_file_offset.unwrap_or(0)));
                        }
                        "transition" => {
                            detail.push(format!(" Transition: {:x}", en.pfn.unwrap_or(0)))
                        }
                        "prototype" => {
                            detail.push(format!(" Proto: {:016X}", en.prototype.unwrap_or(0)))
                        }
                        "demand-zero" => detail.push(" DemandZero".into()),
                        "undecoded" => {
                            detail.push(" (not decoded: the symbol table gives no layout)".into())
                        }
                        _ => {}
                    }
                    if let (Some(p), Some(n)) = (en.protection, &en.protection_name) {
                        detail.push(format!(" Protect: {p:x} - {n}"));
                    }
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
        for d in detail {
            out.push_str(&d);
            out.push('\n');
        }
        if let Some(a) = self.entry_asked {
            let what = self.entries.last().map_or("an entry", |e| e.level.as_str());
            out.push_str(&format!(
                "({a:016x} is the {what} of VA {:016x}: that address's entries are shown)\n",
                self.va
            ));
        }
        for n in &self.notes {
            out.push_str(&format!("NOTE: {n}\n"));
        }
    }
}

/// One step of `!vtop`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct VtopStep {
    /// `PML5E`, `PML4E`, `PDPE`, `PDE`, `PTE`.
    pub level: String,
    /// The entry's physical address.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub physical: u64,
    /// What it holds.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub contains: u64,
}

/// `!vtop`'s result.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct VtopShown {
    /// The virtual address.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub va: u64,
    /// The root used.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub directory_base: u64,
    /// How the first argument was taken (`frame 0x1aa`, `directory base 0x1aa000`, `the
    /// current address space`).
    pub directory_base_from: String,
    /// Whether the root was seen to be one (its self-map entry points back at it).
    pub directory_base_checked: bool,
    /// Each entry on the way, top level first.
    pub steps: Vec<VtopStep>,
    /// The physical address, when the address translates.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub physical: Option<u64>,
    /// The size of the page it is in, when it translates.
    pub page_size: Option<u64>,
    /// Why it does not translate, when it does not.
    pub fails: Option<String>,
}

fn vtop_level_name(level: u8) -> &'static str {
    match level {
        0 => "PTE",
        1 => "PDE",
        2 => "PDPE",
        3 => "PML4E",
        _ => "PML5E",
    }
}

/// `!vtop PFN Address`.
pub(crate) fn vtop(e: &mut Engine, _verb: &str, a: &Args<'_>) -> Result<VtopShown, CmdError> {
    let pfn = a.expr(e, "PFN")?.ok_or_else(|| {
        CmdError::Usage("!vtop: a directory base's frame (or 0) is needed".into())
    })?;
    let va = a
        .expr(e, "Address")?
        .ok_or_else(|| CmdError::Usage("!vtop: an address is needed".into()))?;
    let base = e.kernel.directory_base(pfn)?;
    if !base.checked {
        e.kernel.note_incomplete(format!(
            "!vtop: {} was not seen to be a page-table root (its self-map entry does not point back at it, or the self-map is not known)",
            base.how
        ));
    }
    let space = kdnet_model::mem::Space { dtb: base.dtb };
    let w = e.kernel.mem.page_walk(space, va)?;
    let steps = w
        .entries
        .iter()
        .map(|s| VtopStep {
            level: vtop_level_name(s.level).into(),
            physical: s.entry_pa,
            contains: s.value,
        })
        .collect();
    let (physical, page_size, fails) = match w.end {
        WalkEnd::Mapped { pa, page_size } => (Some(pa), Some(page_size), None),
        WalkEnd::NotPresent { level } => {
            let raw = w.entries.last().map_or(0, |s| s.value);
            let what = if raw == 0 {
                format!("zero {}", vtop_level_name(level))
            } else {
                format!("{} not present ({raw:#x})", vtop_level_name(level))
            };
            (None, None, Some(what))
        }
    };
    Ok(VtopShown {
        va,
        directory_base: base.dtb,
        directory_base_from: base.how,
        directory_base_checked: base.checked,
        steps,
        physical,
        page_size,
        fails,
    })
}

impl Render for VtopShown {
    fn render(&self, out: &mut String) {
        out.push_str(&format!(
            "Amd64VtoP: Virt {:016x}, pagedir {:016x}\n",
            self.va, self.directory_base
        ));
        for s in &self.steps {
            out.push_str(&format!("Amd64VtoP: {} {:016x}\n", s.level, s.physical));
        }
        match (self.physical, self.page_size, &self.fails) {
            (Some(pa), Some(size), _) => {
                let kind = match size {
                    0x1000 => "Mapped phys",
                    0x20_0000 => "Large page mapped phys",
                    _ => "Huge page mapped phys",
                };
                out.push_str(&format!("Amd64VtoP: {kind} {pa:016x}\n"));
                out.push_str(&format!(
                    "Virtual address {:x} translates to physical address {pa:x}.\n",
                    self.va
                ));
            }
            (_, _, Some(why)) => {
                out.push_str(&format!("Amd64VtoP: {why}\n"));
                out.push_str(&format!(
                    "Virtual address {:x} translation fails: {why}.\n",
                    self.va
                ));
            }
            _ => {}
        }
        if !self.directory_base_checked {
            out.push_str(&format!(
                "NOTE: {} was not seen to be a page-table root\n",
                self.directory_base_from
            ));
        }
    }
}
