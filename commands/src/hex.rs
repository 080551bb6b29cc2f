//! Addresses and other 64-bit values in the JSON: strings `"0x"` + 16 lower-case hex digits
//! (`"0xffffc18a00120638"`), because a JSON number past 2^53 is rounded by jq 1.6 and by every
//! JavaScript consumer, which hands back a plausible wrong address. Counts, sizes and flags stay
//! numbers.
//!
//! A result field opts in with `#[serde(serialize_with = "crate::hex::ser")]` and
//! `#[schemars(with = "crate::hex::Hex")]` (or `Option<Hex>`, `Vec<Hex>`, … matching its shape).

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Serialize, Serializer};

/// A 64-bit value written as a hex string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hex(pub u64);

impl Hex {
    /// The string it is written as.
    pub fn text(self) -> String {
        format!("0x{:016x}", self.0)
    }
}

impl Serialize for Hex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text())
    }
}

impl JsonSchema for Hex {
    fn schema_name() -> Cow<'static, str> {
        "Hex64".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^0x[0-9a-f]{1,16}$",
            "description": "a 64-bit value (an address, a pointer, a register) as \"0x\" and \
                            lower-case hex digits, 16 for addresses: JSON numbers past 2^53 do \
                            not survive every reader"
        })
    }
}

/// A value whose 64-bit numbers are written as [`Hex`] strings.
pub trait HexShape {
    /// The same shape with [`Hex`] in place of `u64`.
    type Out: Serialize;
    /// Converts.
    fn hex(&self) -> Self::Out;
}

impl HexShape for u64 {
    type Out = Hex;
    fn hex(&self) -> Hex {
        Hex(*self)
    }
}

impl<T: HexShape> HexShape for Option<T> {
    type Out = Option<T::Out>;
    fn hex(&self) -> Self::Out {
        self.as_ref().map(HexShape::hex)
    }
}

impl<T: HexShape> HexShape for Vec<T> {
    type Out = Vec<T::Out>;
    fn hex(&self) -> Self::Out {
        self.iter().map(HexShape::hex).collect()
    }
}

impl<T: HexShape, const N: usize> HexShape for [T; N] {
    type Out = Vec<T::Out>;
    fn hex(&self) -> Self::Out {
        self.iter().map(HexShape::hex).collect()
    }
}

impl<T: HexShape> HexShape for BTreeMap<String, T> {
    type Out = BTreeMap<String, T::Out>;
    fn hex(&self) -> Self::Out {
        self.iter().map(|(k, v)| (k.clone(), v.hex())).collect()
    }
}

/// `serialize_with` for any [`HexShape`].
pub fn ser<T: HexShape, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    v.hex().serialize(s)
}

/// The value of a JSON member written by [`ser`] (or a plain number, as older results and
/// other tools write them).
pub fn parse(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::String(s) => {
            let d = s.strip_prefix("0x")?;
            if d.is_empty() || d.len() > 16 {
                return None;
            }
            u64::from_str_radix(d, 16).ok()
        }
        v => v.as_u64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct S {
        #[serde(serialize_with = "ser")]
        a: u64,
        #[serde(serialize_with = "ser")]
        b: Option<u64>,
        #[serde(serialize_with = "ser")]
        c: Vec<Option<u64>>,
        #[serde(serialize_with = "ser")]
        d: [u64; 2],
        n: u64,
    }

    #[test]
    fn addresses_are_strings_counts_are_numbers() {
        let s = S {
            a: 0xffffc18a00120638,
            b: None,
            c: vec![Some(1), None],
            d: [2, 3],
            n: 7,
        };
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(
            j,
            serde_json::json!({
                "a": "0xffffc18a00120638", "b": null,
                "c": ["0x0000000000000001", null],
                "d": ["0x0000000000000002", "0x0000000000000003"], "n": 7
            })
        );
        assert_eq!(parse(&j["a"]), Some(0xffffc18a00120638));
        assert_eq!(parse(&j["n"]), Some(7));
        assert_eq!(parse(&serde_json::json!("0x")), None);
        assert_eq!(parse(&serde_json::json!("ffff")), None);
    }
}
