//! A structure read in one go and decoded field by field with offsets from the symbol table.

use std::sync::Arc;

use kdnet_symbols::{SymError, Ty, TypeTable};

/// Why a field could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    /// The table lacks the type or field.
    #[error(transparent)]
    Symbols(#[from] SymError),
    /// The field lies outside the bytes read.
    #[error("{ty}.{path} lies outside the {have} bytes read")]
    Short {
        /// Type.
        ty: String,
        /// Field.
        path: String,
        /// Bytes available.
        have: usize,
    },
}

/// Bytes of a `ty` at `addr`.
#[derive(Debug, Clone)]
pub struct View {
    /// The table.
    pub table: Arc<TypeTable>,
    /// The type.
    pub ty: String,
    /// Where it was read.
    pub addr: u64,
    /// The bytes.
    pub bytes: Vec<u8>,
}

impl View {
    /// Wraps bytes read at `addr`.
    pub fn new(table: Arc<TypeTable>, ty: &str, addr: u64, bytes: Vec<u8>) -> View {
        View {
            table,
            ty: ty.to_string(),
            addr,
            bytes,
        }
    }

    /// The address of a field.
    pub fn addr_of(&self, path: &str) -> Result<u64, ViewError> {
        Ok(self.addr + self.table.offset(&self.ty, path)?)
    }

    /// Whether the field exists on this build.
    pub fn has(&self, path: &str) -> bool {
        self.table.has_field(&self.ty, path)
    }

    /// An integer field (pointer, enum, bitfield …), zero-extended.
    pub fn get(&self, path: &str) -> Result<u64, ViewError> {
        let f = self.table.field(&self.ty, path)?;
        let (size, bits) = match &f.ty {
            Ty::Bitfield { pos, len, base } => {
                (self.table.ty_size(base).unwrap_or(4), Some((*pos, *len)))
            }
            t => (self.table.ty_size(t).unwrap_or(8).clamp(1, 8), None),
        };
        let off = f.offset as usize;
        let raw = self
            .bytes
            .get(off..off + size as usize)
            .ok_or_else(|| ViewError::Short {
                ty: self.ty.clone(),
                path: path.to_string(),
                have: self.bytes.len(),
            })?;
        let mut b = [0u8; 8];
        b[..raw.len()].copy_from_slice(raw);
        let v = u64::from_le_bytes(b);
        Ok(match bits {
            Some((pos, len)) => {
                let v = v >> pos;
                if len >= 64 {
                    v
                } else {
                    v & ((1u64 << len) - 1)
                }
            }
            None => v,
        })
    }

    /// A field read as signed.
    pub fn get_signed(&self, path: &str) -> Result<i64, ViewError> {
        let f = self.table.field(&self.ty, path)?;
        let size = self.table.ty_size(&f.ty).unwrap_or(8).clamp(1, 8);
        let v = self.get(path)?;
        let shift = 64 - 8 * size;
        Ok(((v << shift) as i64) >> shift)
    }

    /// The bytes of a field.
    pub fn bytes_of(&self, path: &str, len: usize) -> Result<&[u8], ViewError> {
        let off = self.table.offset(&self.ty, path)? as usize;
        self.bytes
            .get(off..off + len)
            .ok_or_else(|| ViewError::Short {
                ty: self.ty.clone(),
                path: path.to_string(),
                have: self.bytes.len(),
            })
    }

    /// A field, or `default` when the build lacks it.
    pub fn get_or(&self, path: &str, default: u64) -> u64 {
        self.get(path).unwrap_or(default)
    }
}
