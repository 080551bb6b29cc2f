//! `db`/`dw`/`dd`/`dq`/`dp ADDR [END] [L COUNT]`: memory as bytes (with ASCII), words, dwords
//! or qwords; `dps`/`dqs`: pointers with the symbol each points at. Unreadable memory shows as
//! `??` (null in the JSON), and the rest still shows.

use std::ops::ControlFlow;

use kdnet_model::mem::Piece;
use schemars::JsonSchema;
use serde::Serialize;

use crate::args::{Args, Syntax, expr, opt_expr};
use crate::engine::{CmdError, Engine, addr};
use crate::registry::Render;

/// Most bytes one display command shows.
const MAX_DISPLAY: u64 = 0x10_0000;

/// `db ADDR [END] [L COUNT]`: from ADDR to END (inclusive), or COUNT units.
pub(crate) const SYNTAX: Syntax = Syntax {
    flags: &[],
    params: &[expr("ADDR"), opt_expr("END")],
    length: true,
};

/// Memory shown as bytes, words, dwords or qwords.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Memory {
    /// The first address shown.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub address: u64,
    /// The size of each value: 1, 2, 4 or 8.
    pub unit_bytes: u64,
    /// The values, in address order (null where the memory could not be read).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Vec<Option<crate::hex::Hex>>")]
    pub values: Vec<Option<u64>>,
}

/// Pointers shown with the symbol each points at (`dps`, `dqs`).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Pointers {
    /// The first address shown.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub address: u64,
    /// The size of each value: 8.
    pub unit_bytes: u64,
    /// The pointers, in address order (null where the memory could not be read).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Vec<Option<crate::hex::Hex>>")]
    pub values: Vec<Option<u64>>,
    /// For each pointer, `module!symbol+offset` it points at (null when it points into no
    /// module or could not be read).
    pub symbols: Vec<Option<String>>,
}

/// (bytes per unit, units per line, units shown without a length).
fn shape(verb: &str) -> (u64, usize, u64) {
    match verb {
        "db" => (1, 16, 128),
        "dw" => (2, 8, 64),
        "dd" => (4, 4, 32),
        "dps" | "dqs" => (8, 1, 16),
        _ => (8, 2, 16),
    }
}

/// Where to start and how many units to show.
fn range(e: &mut Engine, a: &Args<'_>, unit: u64, default: u64) -> Result<(u64, u64), CmdError> {
    let start = a
        .expr(e, "ADDR")?
        .ok_or_else(|| CmdError::Usage("an address is needed".into()))?;
    let length = a.length(e)?;
    let count = match (a.expr(e, "END")?, length) {
        (Some(_), Some(_)) => {
            return Err(CmdError::Usage(
                "give an end address or a length, not both".into(),
            ));
        }
        (Some(end), None) => {
            if end < start {
                return Err(CmdError::Usage("the end is before the start".into()));
            }
            return Ok((start, ((end - start) / unit + 1).min(MAX_DISPLAY / unit)));
        }
        (None, Some(n)) => n,
        (None, None) => default,
    };
    if count == 0 || count.saturating_mul(unit) > MAX_DISPLAY {
        return Err(CmdError::Usage(format!(
            "a length of {count} is out of range (at most {MAX_DISPLAY:#x} bytes)"
        )));
    }
    Ok((start, count))
}

/// Reads `count` units of `unit` bytes from `start` through the memory layer's long reads
/// (large pieces, so physically contiguous pages go out in full requests; a piece that fails is
/// read again in halves down to pages), so one unreadable page shows as unknown and the rest
/// still shows.
pub(crate) fn read(e: &mut Engine, start: u64, count: u64, unit: u64) -> Vec<Option<u64>> {
    let len = count * unit;
    let mut bytes: Vec<Option<u8>> = Vec::with_capacity(len as usize);
    e.kernel.mem.kread_range(start, len, |_, piece| {
        match piece {
            Piece::Read(b) => bytes.extend(b.iter().copied().map(Some)),
            Piece::Unreadable { len, .. } => bytes.extend(std::iter::repeat_n(None, len as usize)),
        }
        ControlFlow::Continue(())
    });
    bytes
        .chunks(unit as usize)
        .map(|c| {
            c.iter()
                .rev()
                .try_fold(0u64, |v, b| b.map(|b| (v << 8) | u64::from(b)))
        })
        .collect()
}

pub(crate) fn memory(e: &mut Engine, verb: &str, a: &Args<'_>) -> Result<Memory, CmdError> {
    let (unit, _, default) = shape(verb);
    let (address, count) = range(e, a, unit, default)?;
    let values = read(e, address, count, unit);
    e.last_shown = values.first().copied().flatten();
    Ok(Memory {
        address,
        unit_bytes: unit,
        values,
    })
}

pub(crate) fn pointers(e: &mut Engine, verb: &str, a: &Args<'_>) -> Result<Pointers, CmdError> {
    let (unit, _, default) = shape(verb);
    let (address, count) = range(e, a, unit, default)?;
    let values = read(e, address, count, unit);
    e.last_shown = values.first().copied().flatten();
    let symbols = values
        .iter()
        .map(|v| {
            let v = (*v)?;
            e.kernel.symbol_parts(v).map(|_| e.kernel.symbolize(v))
        })
        .collect();
    Ok(Pointers {
        address,
        unit_bytes: unit,
        values,
        symbols,
    })
}

/// One value as shown: `0000002a`, `????????`.
fn cell(v: Option<u64>, unit: u64) -> String {
    match (v, unit) {
        (Some(v), 8) => addr(v),
        (Some(v), 4) => format!("{v:08x}"),
        (Some(v), _) => format!("{v:04x}"),
        (None, 8) => "????????`????????".into(),
        (None, 4) => "????????".into(),
        (None, _) => "????".into(),
    }
}

/// The lines: the address of each line's first value, then its values (bytes with ASCII).
pub(crate) fn lines(
    out: &mut String,
    address: u64,
    unit: u64,
    values: &[Option<u64>],
    per_line: usize,
) {
    for (line, row) in values.chunks(per_line.max(1)).enumerate() {
        let at = address.wrapping_add((line * per_line) as u64 * unit);
        out.push_str(&addr(at));
        out.push_str("  ");
        if unit == 1 {
            let mut ascii = String::new();
            for col in 0..per_line {
                out.push_str(match col {
                    0 => "",
                    8 => "-",
                    _ => " ",
                });
                match row.get(col) {
                    Some(Some(b)) => {
                        out.push_str(&format!("{b:02x}"));
                        let b = *b as u8;
                        ascii.push(if (0x20..0x7f).contains(&b) {
                            b as char
                        } else {
                            '.'
                        });
                    }
                    Some(None) => {
                        out.push_str("??");
                        ascii.push('?');
                    }
                    None => out.push_str("  "),
                }
            }
            out.push_str("  ");
            out.push_str(&ascii);
        } else {
            let cells: Vec<String> = row.iter().map(|v| cell(*v, unit)).collect();
            out.push_str(&cells.join(" "));
        }
        out.push('\n');
    }
}

impl Render for Memory {
    fn render(&self, out: &mut String) {
        let per_line = match self.unit_bytes {
            1 => 16,
            2 => 8,
            4 => 4,
            _ => 2,
        };
        lines(out, self.address, self.unit_bytes, &self.values, per_line);
    }
}

impl Render for Pointers {
    fn render(&self, out: &mut String) {
        for (i, v) in self.values.iter().enumerate() {
            out.push_str(&addr(self.address.wrapping_add(i as u64 * self.unit_bytes)));
            out.push_str("  ");
            out.push_str(&cell(*v, self.unit_bytes));
            if let Some(Some(s)) = self.symbols.get(i) {
                out.push(' ');
                out.push_str(s);
            }
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_display_syntax() {
        let a = SYNTAX.parse("db", "@rsp L4").unwrap();
        assert_eq!((a.text("ADDR"), a.text("END")), (Some("@rsp"), None));
        let a = SYNTAX.parse("dq", "poi(@rsp) L2").unwrap();
        assert_eq!(a.text("ADDR"), Some("poi(@rsp)"));
        let a = SYNTAX.parse("dd", "1000 1010").unwrap();
        assert_eq!(
            (a.text("ADDR"), a.text("END")),
            (Some("1000"), Some("1010"))
        );
        assert!(SYNTAX.parse("db", "").is_err());
        assert!(SYNTAX.parse("db", "1000 1010 1020").is_err());
        assert_eq!(SYNTAX.usage(), "ADDR [END] [L COUNT]");
    }

    #[test]
    fn bytes_with_ascii_and_holes() {
        let mut values: Vec<Option<u64>> = b"Hello, world!\n\0\x7f"
            .iter()
            .map(|b| Some(u64::from(*b)))
            .collect();
        values.extend([None, Some(0x41)]);
        let m = Memory {
            address: 0xfffff805_5c400000,
            unit_bytes: 1,
            values,
        };
        let mut text = String::new();
        m.render(&mut text);
        assert_eq!(
            text,
            "fffff805`5c400000  48 65 6c 6c 6f 2c 20 77-6f 72 6c 64 21 0a 00 7f  Hello, world!...\n\
             fffff805`5c400010  ?? 41                  -                         ?A\n"
        );
    }

    #[test]
    fn words_dwords_qwords_pointers() {
        let mut text = String::new();
        Memory {
            address: 0x1000,
            unit_bytes: 4,
            values: vec![Some(0x2a), None, Some(0xffff_ffff), Some(1), Some(2)],
        }
        .render(&mut text);
        assert_eq!(
            text,
            "00000000`00001000  0000002a ???????? ffffffff 00000001\n\
             00000000`00001010  00000002\n"
        );
        let mut text = String::new();
        Memory {
            address: 0x1000,
            unit_bytes: 2,
            values: vec![Some(0x2a), None],
        }
        .render(&mut text);
        assert_eq!(text, "00000000`00001000  002a ????\n");
        let mut text = String::new();
        Pointers {
            address: 0x1000,
            unit_bytes: 8,
            values: vec![Some(0xfffff805_5c400010), None, Some(5)],
            symbols: vec![Some("nt!KiWaitNever".into()), None, None],
        }
        .render(&mut text);
        assert_eq!(
            text,
            "00000000`00001000  fffff805`5c400010 nt!KiWaitNever\n\
             00000000`00001008  ????????`????????\n\
             00000000`00001010  00000000`00000005\n"
        );
        let j = serde_json::to_value(Memory {
            address: 1,
            unit_bytes: 8,
            values: vec![None, Some(3)],
        })
        .unwrap();
        assert_eq!(
            j,
            serde_json::json!({
                "address": "0x0000000000000001", "unit_bytes": 8,
                "values": [null, "0x0000000000000003"]
            })
        );
    }
}
