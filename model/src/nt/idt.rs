//! A processor's interrupt descriptor table: its 256 gates (at `KPCR.IdtBase`), each decoded
//! (handler, selector, gate type, privilege, interrupt stack), the stack an IST index selects
//! (from the processor's `_KTSS64`), and the interrupt objects the KPRCB connects to each
//! vector (`InterruptObject[]`, chained through `InterruptListEntry`).

use super::{Kernel, ModelError};

/// Vectors in an IDT.
pub const VECTORS: usize = 256;
/// Most interrupt objects read from one vector's chain.
pub const MAX_CHAIN: usize = 64;

/// A connected interrupt object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterruptObject {
    /// The KINTERRUPT.
    pub address: u64,
    /// ServiceRoutine.
    pub service_routine: u64,
    /// ServiceContext.
    pub service_context: u64,
    /// Its IRQL.
    pub irql: u8,
}

/// One gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gate {
    /// The vector.
    pub vector: u8,
    /// Where it sends the processor.
    pub handler: u64,
    /// Its code selector.
    pub selector: u16,
    /// `interrupt` (0xE) or `trap` (0xF) gate; another type is said by number.
    pub kind: String,
    /// The lowest privilege that may raise it with `int`.
    pub dpl: u8,
    /// Its interrupt stack table index (0: none).
    pub ist: u8,
    /// That stack (the TSS's Ist entry), when it has one and it could be read.
    pub ist_stack: Option<u64>,
    /// The interrupt objects connected to the vector.
    pub interrupts: Vec<InterruptObject>,
}

/// A processor's IDT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idt {
    /// The processor.
    pub processor: u32,
    /// The IDT's base.
    pub base: u64,
    /// Its present gates, by vector.
    pub gates: Vec<Gate>,
    /// What could not be read.
    pub notes: Vec<String>,
    /// Whether everything was read.
    pub complete: bool,
}

impl Kernel {
    /// Processor `n`'s IDT.
    pub fn idt(&mut self, n: u32) -> Result<Idt, ModelError> {
        let nt = self.nt()?;
        let cpus = self.processors()?;
        let c = cpus.iter().find(|c| c.number == n).ok_or_else(|| {
            ModelError::Corrupt(format!("there is no processor {n} ({} in all)", cpus.len()))
        })?;
        let kpcr = self.view("_KPCR", c.kpcr)?;
        let base = kpcr.get("IdtBase")?;
        let tss = kpcr.get("TssBase")?;
        let raw = self.mem.kread(base, VECTORS * 16)?;
        let mut notes = Vec::new();
        let mut complete = true;
        // The stacks IST indexes select.
        let ist = match nt.offset("_KTSS64", "Ist") {
            Ok(off) if tss != 0 => match self.mem.kread(tss.wrapping_add(off), 8 * 8) {
                Ok(b) => Some(b),
                Err(err) => {
                    notes.push(format!("the TSS at {tss:#x} is unreadable: {err}"));
                    complete = false;
                    None
                }
            },
            _ => None,
        };
        // The interrupt objects connected, by vector.
        let objects = match nt.offset("_KPRCB", "InterruptObject") {
            Ok(off) => match self.mem.kread(c.prcb.wrapping_add(off), VECTORS * 8) {
                Ok(b) => Some(b),
                Err(err) => {
                    notes.push(format!(
                        "the KPRCB's interrupt objects are unreadable: {err}"
                    ));
                    complete = false;
                    None
                }
            },
            Err(_) => None,
        };
        let object_type = nt.enum_value("_KOBJECTS", "InterruptObject").unwrap_or(22) as u64;
        let mut gates = Vec::new();
        for v in 0..VECTORS {
            let g = &raw[16 * v..16 * v + 16];
            let attr = g[5];
            if attr & 0x80 == 0 {
                continue;
            }
            let handler = u64::from(u16::from_le_bytes([g[0], g[1]]))
                | u64::from(u16::from_le_bytes([g[6], g[7]])) << 16
                | u64::from(u32::from_le_bytes([g[8], g[9], g[10], g[11]])) << 32;
            let ist_index = g[4] & 7;
            let ist_stack = ist.as_ref().filter(|_| ist_index != 0).map(|b| {
                let o = 8 * usize::from(ist_index);
                u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]))
            });
            let mut interrupts = Vec::new();
            if let Some(b) = &objects {
                let first = u64::from_le_bytes(b[8 * v..8 * v + 8].try_into().unwrap_or([0; 8]));
                if first != 0 {
                    match self.interrupt_chain(first, object_type) {
                        Ok((list, note)) => {
                            interrupts = list;
                            if let Some(note) = note {
                                notes.push(format!("vector {v:#x}: {note}"));
                                complete = false;
                            }
                        }
                        Err(err) => {
                            notes
                                .push(format!("vector {v:#x}: interrupt object {first:#x}: {err}"));
                            complete = false;
                        }
                    }
                }
            }
            gates.push(Gate {
                vector: v as u8,
                handler,
                selector: u16::from_le_bytes([g[2], g[3]]),
                kind: match attr & 0xf {
                    0xe => "interrupt".to_string(),
                    0xf => "trap".to_string(),
                    t => format!("type {t:#x}"),
                },
                dpl: (attr >> 5) & 3,
                ist: ist_index,
                ist_stack,
                interrupts,
            });
        }
        Ok(Idt {
            processor: n,
            base,
            gates,
            notes,
            complete,
        })
    }

    /// An interrupt object and those chained to it (a shared vector), bounded.
    fn interrupt_chain(
        &mut self,
        first: u64,
        object_type: u64,
    ) -> Result<(Vec<InterruptObject>, Option<String>), ModelError> {
        let nt = self.nt()?;
        let link = nt.offset("_KINTERRUPT", "InterruptListEntry")?;
        let one = |k: &mut Kernel, at: u64| -> Result<InterruptObject, ModelError> {
            let v = k.view("_KINTERRUPT", at)?;
            let ty = v.get("Type")?;
            if ty != object_type {
                return Err(ModelError::Corrupt(format!(
                    "{at:#x} is not an interrupt object (type {ty:#x})"
                )));
            }
            Ok(InterruptObject {
                address: at,
                service_routine: v.get("ServiceRoutine")?,
                service_context: v.get("ServiceContext")?,
                irql: v.get("Irql")? as u8,
            })
        };
        let mut out = vec![one(self, first)?];
        // The others on the first one's list (its list head is its own entry).
        let walk = self.walk_list(first + link, None, MAX_CHAIN, false)?;
        for e in walk.entries {
            out.push(one(self, e.wrapping_sub(link))?);
        }
        Ok((out, walk.note))
    }
}
