//! The KDNET key: the `a.b.c.d` string that `bcdedit /dbgsettings net key:` sets.
//!
//! Four groups of base-36 digits (`0-9a-z`), each an unsigned 64-bit number. The 32-byte control
//! key is the four values written little-endian one after another. The HMAC key is its bitwise
//! NOT. Upper-case digits are accepted (folded to lower case).

use std::fmt;
use std::str::FromStr;

/// Length of the control key, the data key and the HMAC key, in bytes.
pub const KEY_LEN: usize = 32;

/// Why a key string was refused. Groups are numbered from 1, as a person counts them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The string was empty (or only white space).
    #[error("the key is empty; expected four groups such as 1.2.3.4")]
    Empty,
    /// Not exactly four groups.
    #[error("the key has {found} group(s); expected four groups separated by '.', such as 1.2.3.4")]
    GroupCount {
        /// How many groups the string had.
        found: usize,
    },
    /// A group between two dots was empty.
    #[error("group {group} of the key is empty")]
    EmptyGroup {
        /// 1-based group number.
        group: usize,
    },
    /// A character outside `0-9a-z` (upper case allowed).
    #[error("group {group} of the key has the character {ch:?}; only 0-9 and a-z are allowed")]
    BadCharacter {
        /// 1-based group number.
        group: usize,
        /// The offending character.
        ch: char,
    },
    /// The group's value does not fit in 64 bits.
    #[error("group {group} of the key is larger than 2^64-1 (3w5e11264sgsf)")]
    Overflow {
        /// 1-based group number.
        group: usize,
    },
}

/// The 32-byte control key. Its `Debug` form never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; KEY_LEN]);

impl Key {
    /// Parses `a.b.c.d` (see the module documentation).
    pub fn parse(text: &str) -> Result<Key, KeyError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(KeyError::Empty);
        }
        let groups: Vec<&str> = text.split('.').collect();
        if groups.len() != 4 {
            return Err(KeyError::GroupCount {
                found: groups.len(),
            });
        }
        let mut bytes = [0u8; KEY_LEN];
        for (i, group) in groups.iter().enumerate() {
            let value = parse_group(group, i + 1)?;
            bytes[i * 8..i * 8 + 8].copy_from_slice(&value.to_le_bytes());
        }
        Ok(Key(bytes))
    }

    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Key {
        Key(bytes)
    }

    /// The control key bytes (AES key of the control channel).
    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The HMAC key: every byte of the control key inverted. Used on both channels.
    pub fn hmac_key(&self) -> [u8; KEY_LEN] {
        let mut out = self.0;
        for b in &mut out {
            *b = !*b;
        }
        out
    }

    /// The four group values, as `bcdedit` shows them (lower-case base 36).
    pub fn to_key_string(&self) -> String {
        let mut parts = Vec::with_capacity(4);
        for chunk in self.0.chunks_exact(8) {
            let mut v = [0u8; 8];
            v.copy_from_slice(chunk);
            parts.push(to_base36(u64::from_le_bytes(v)));
        }
        parts.join(".")
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

impl FromStr for Key {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Key, KeyError> {
        Key::parse(s)
    }
}

fn parse_group(group: &str, number: usize) -> Result<u64, KeyError> {
    if group.is_empty() {
        return Err(KeyError::EmptyGroup { group: number });
    }
    let mut value: u64 = 0;
    for ch in group.chars() {
        let digit = ch
            .to_ascii_lowercase()
            .to_digit(36)
            .ok_or(KeyError::BadCharacter { group: number, ch })?;
        value = value
            .checked_mul(36)
            .and_then(|v| v.checked_add(u64::from(digit)))
            .ok_or(KeyError::Overflow { group: number })?;
    }
    Ok(value)
}

fn to_base36(mut v: u64) -> String {
    if v == 0 {
        return "0".into();
    }
    let mut digits = Vec::new();
    while v > 0 {
        let d = (v % 36) as u32;
        digits.push(char::from_digit(d, 36).unwrap_or('?'));
        v /= 36;
    }
    digits.iter().rev().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn eight_eight_eight_eight() {
        let k = Key::parse("8.8.8.8").unwrap();
        assert_eq!(
            hex(k.bytes()),
            "0800000000000000080000000000000008000000000000000800000000000000"
        );
        assert_eq!(
            hex(&k.hmac_key()),
            "f7fffffffffffffff7fffffffffffffff7fffffffffffffff7ffffffffffffff"
        );
    }

    #[test]
    fn bcdedit_example_is_little_endian_per_group() {
        let k = Key::parse("2steg4fzbj2sz.23418vzkd4ko3.1g34ou07z4pev.1sp3yo9yz874p").unwrap();
        assert_eq!(
            hex(k.bytes()),
            "f3dbceb8325327b8a32e9a5b5f793389a758a22d8f99245f19313cfbfe782d76"
        );
        // Upper case, as bcdedit prints it, gives the same key.
        let upper = Key::parse("2STEG4FZBJ2SZ.23418VZKD4KO3.1G34OU07Z4PEV.1SP3YO9YZ874P").unwrap();
        assert_eq!(k, upper);
        assert_eq!(
            k.to_key_string(),
            "2steg4fzbj2sz.23418vzkd4ko3.1g34ou07z4pev.1sp3yo9yz874p"
        );
    }

    #[test]
    fn group_values() {
        let k = Key::parse("1.z.10.3w5e11264sgsf").unwrap();
        let v: Vec<u64> = k
            .bytes()
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(v, vec![1, 35, 36, u64::MAX]);
    }

    #[test]
    fn bad_keys_name_the_group() {
        assert_eq!(Key::parse(""), Err(KeyError::Empty));
        assert_eq!(Key::parse("  "), Err(KeyError::Empty));
        assert_eq!(Key::parse("1.2.3"), Err(KeyError::GroupCount { found: 3 }));
        assert_eq!(
            Key::parse("1.2.3.4.5"),
            Err(KeyError::GroupCount { found: 5 })
        );
        assert_eq!(Key::parse("1..3.4"), Err(KeyError::EmptyGroup { group: 2 }));
        assert_eq!(
            Key::parse("1.2.3.!"),
            Err(KeyError::BadCharacter { group: 4, ch: '!' })
        );
        assert_eq!(
            Key::parse("1.2.3.3w5e11264sgsg"),
            Err(KeyError::Overflow { group: 4 })
        );
        assert_eq!(
            Key::parse("zzzzzzzzzzzzzz.1.1.1"),
            Err(KeyError::Overflow { group: 1 })
        );
        let msg = Key::parse("1.2.x-y.4").unwrap_err().to_string();
        assert!(msg.contains("group 3"), "{msg}");
    }

    #[test]
    fn debug_never_shows_the_key() {
        let k = Key::parse("8.8.8.8").unwrap();
        assert_eq!(format!("{k:?}"), "Key(<redacted>)");
    }
}
