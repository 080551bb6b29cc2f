//! PE32+ images, read piecewise by RVA (from target memory or a file): headers, the CodeView
//! record naming the PDB, exports, and the exception directory (`.pdata`). Every count and
//! offset read from the image is bounded before it is used.

use kdnet_arch::le::{u16_at, u32_at};
use kdnet_symbols::PdbId;

/// Why an image could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeError {
    /// Bytes at an RVA could not be read.
    #[error("image bytes at RVA {rva:#x} are not readable")]
    Unreadable {
        /// The RVA.
        rva: u32,
    },
    /// The headers are not a PE32+ image.
    #[error("not a PE32+ image: {0}")]
    NotPe(&'static str),
    /// A directory is malformed.
    #[error("malformed {0}")]
    Malformed(&'static str),
}

/// Reads an image by RVA.
pub trait ImageReader {
    /// `len` bytes at `rva`.
    fn read(&mut self, rva: u32, len: usize) -> Result<Vec<u8>, PeError>;
}

/// A section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Name.
    pub name: String,
    /// RVA.
    pub rva: u32,
    /// Size in memory.
    pub virtual_size: u32,
    /// Offset in the file.
    pub raw_offset: u32,
    /// Size in the file.
    pub raw_size: u32,
}

/// The parts of the headers analysis needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Headers {
    /// Machine.
    pub machine: u16,
    /// TimeDateStamp.
    pub timestamp: u32,
    /// SizeOfImage.
    pub size_of_image: u32,
    /// AddressOfEntryPoint (an RVA).
    pub entry_point: u32,
    /// CheckSum.
    pub checksum: u32,
    /// Data directories (RVA, size).
    pub directories: Vec<(u32, u32)>,
    /// Sections.
    pub sections: Vec<Section>,
}

/// Data directory indices.
pub const DIR_EXPORT: usize = 0;
/// Exception directory.
pub const DIR_EXCEPTION: usize = 3;
/// Debug directory.
pub const DIR_DEBUG: usize = 6;
/// Resource directory.
pub const DIR_RESOURCE: usize = 2;

/// The resource type of a version resource (`RT_VERSION`).
const RT_VERSION: u32 = 16;
/// Most entries looked at in one resource directory.
const MAX_RESOURCE_ENTRIES: usize = 4096;
/// Largest version resource read.
const MAX_VERSION_BYTES: usize = 64 << 10;

/// Parses the headers from the first bytes of an image (at least the header page).
pub fn headers(h: &[u8]) -> Result<Headers, PeError> {
    if h.get(..2) != Some(b"MZ") {
        return Err(PeError::NotPe("no MZ signature"));
    }
    let pe = u32_at(h, 0x3c).ok_or(PeError::NotPe("short DOS header"))? as usize;
    if pe > 0x800 || h.get(pe..pe + 4) != Some(b"PE\0\0") {
        return Err(PeError::NotPe("no PE signature"));
    }
    let fh = pe + 4;
    let machine = u16_at(h, fh).ok_or(PeError::NotPe("short file header"))?;
    let nsec = usize::from(u16_at(h, fh + 2).unwrap_or(0)).min(96);
    let timestamp = u32_at(h, fh + 4).unwrap_or(0);
    let opt_size = usize::from(u16_at(h, fh + 16).unwrap_or(0));
    let oh = fh + 20;
    if u16_at(h, oh) != Some(0x20B) {
        return Err(PeError::NotPe("not a PE32+ optional header"));
    }
    let size_of_image = u32_at(h, oh + 56).ok_or(PeError::NotPe("short optional header"))?;
    let entry_point = u32_at(h, oh + 16).unwrap_or(0);
    let checksum = u32_at(h, oh + 64).unwrap_or(0);
    let ndirs = (u32_at(h, oh + 108).unwrap_or(0) as usize).min(16);
    let mut directories = Vec::with_capacity(ndirs);
    for i in 0..ndirs {
        let o = oh + 112 + 8 * i;
        directories.push((u32_at(h, o).unwrap_or(0), u32_at(h, o + 4).unwrap_or(0)));
    }
    let sh = oh + opt_size;
    let mut sections = Vec::with_capacity(nsec);
    for i in 0..nsec {
        let s = sh + 40 * i;
        let Some(raw) = h.get(s..s + 40) else { break };
        let name_end = raw[..8].iter().position(|&c| c == 0).unwrap_or(8);
        sections.push(Section {
            name: String::from_utf8_lossy(&raw[..name_end]).into_owned(),
            virtual_size: u32_at(raw, 8).unwrap_or(0),
            rva: u32_at(raw, 12).unwrap_or(0),
            raw_size: u32_at(raw, 16).unwrap_or(0),
            raw_offset: u32_at(raw, 20).unwrap_or(0),
        });
    }
    Ok(Headers {
        machine,
        timestamp,
        size_of_image,
        entry_point,
        checksum,
        directories,
        sections,
    })
}

impl Headers {
    /// A data directory (RVA, size), if present and non-empty.
    pub fn directory(&self, i: usize) -> Option<(u32, u32)> {
        self.directories
            .get(i)
            .copied()
            .filter(|(r, s)| *r != 0 && *s != 0)
    }

    /// The file offset of an RVA (for images read from files).
    pub fn file_offset(&self, rva: u32) -> Option<u32> {
        if rva < 0x1000 {
            return Some(rva);
        }
        self.sections.iter().find_map(|s| {
            let size = s.virtual_size.max(s.raw_size);
            (rva >= s.rva && rva < s.rva.saturating_add(size)).then(|| s.raw_offset + (rva - s.rva))
        })
    }
}

/// The PDB identity from the debug directory's CodeView (RSDS) record.
pub fn codeview(h: &Headers, r: &mut dyn ImageReader) -> Result<Option<PdbId>, PeError> {
    let Some((rva, size)) = h.directory(DIR_DEBUG) else {
        return Ok(None);
    };
    let n = (size / 0x1c).min(32) as usize;
    let dir = r.read(rva, n * 0x1c)?;
    for i in 0..n {
        let e = &dir[i * 0x1c..(i + 1) * 0x1c];
        if u32_at(e, 0xc) != Some(2) {
            continue;
        }
        let len = (u32_at(e, 0x10).unwrap_or(0) as usize).clamp(24, 1024);
        let at = u32_at(e, 0x14).unwrap_or(0);
        let cv = r.read(at, len)?;
        if cv.get(..4) != Some(b"RSDS") {
            continue;
        }
        let guid: [u8; 16] = cv[4..20]
            .try_into()
            .map_err(|_| PeError::Malformed("CodeView record"))?;
        let age = u32_at(&cv, 20).unwrap_or(0);
        let name_end = cv[24..]
            .iter()
            .position(|&c| c == 0)
            .map_or(cv.len(), |p| 24 + p);
        let name = String::from_utf8_lossy(&cv[24..name_end]).into_owned();
        let file = name.rsplit(['\\', '/']).next().unwrap_or(&name).to_string();
        return Ok(Some(PdbId {
            guid: PdbId::guid_from_bytes(&guid),
            age,
            name: file,
        }));
    }
    Ok(None)
}

/// The file version (major, minor, build, revision) of the image's version resource: the
/// `RT_VERSION` entry of the resource directory, its first name and language, and the
/// `VS_FIXEDFILEINFO` after the `VS_VERSION_INFO` key. `None` when the image has no version
/// resource; an error when one is there but cannot be read or is malformed.
pub fn file_version(h: &Headers, r: &mut dyn ImageReader) -> Result<Option<[u16; 4]>, PeError> {
    let Some((root, _)) = h.directory(DIR_RESOURCE) else {
        return Ok(None);
    };
    let mut dir = root;
    for level in 0..3 {
        let d = r.read(dir, 16)?;
        let named = usize::from(u16_at(&d, 12).unwrap_or(0));
        let ids = usize::from(u16_at(&d, 14).unwrap_or(0));
        let n = (named + ids).min(MAX_RESOURCE_ENTRIES);
        if n == 0 {
            return Ok(None);
        }
        let e = r.read(dir + 16, 8 * n)?;
        // The type level is searched for RT_VERSION among the id entries; the name and
        // language levels take their first entry.
        let pick = if level == 0 {
            (named..n).find(|&i| u32_at(&e, 8 * i) == Some(RT_VERSION))
        } else {
            Some(0)
        };
        let Some(i) = pick else {
            return Ok(None);
        };
        let off = u32_at(&e, 8 * i + 4).ok_or(PeError::Malformed("resource directory"))?;
        let next = root
            .checked_add(off & 0x7fff_ffff)
            .ok_or(PeError::Malformed("resource directory"))?;
        let is_dir = off & 0x8000_0000 != 0;
        if level < 2 && !is_dir || level == 2 && is_dir {
            return Err(PeError::Malformed("resource directory"));
        }
        dir = next;
    }
    let entry = r.read(dir, 16)?;
    let data = u32_at(&entry, 0).ok_or(PeError::Malformed("resource data entry"))?;
    let size = u32_at(&entry, 4).unwrap_or(0) as usize;
    if !(6 + 32 + 52..=MAX_VERSION_BYTES).contains(&size) {
        return Err(PeError::Malformed("version resource"));
    }
    let blob = r.read(data, size.min(0x200))?;
    let key: Vec<u8> = "VS_VERSION_INFO"
        .encode_utf16()
        .chain([0])
        .flat_map(|u| u.to_le_bytes())
        .collect();
    if blob.get(6..6 + key.len()) != Some(&key[..]) {
        return Err(PeError::Malformed("version resource"));
    }
    let fixed = (6 + key.len()).div_ceil(4) * 4;
    if u32_at(&blob, fixed) != Some(0xFEEF_04BD) {
        return Err(PeError::Malformed("version resource"));
    }
    let ms = u32_at(&blob, fixed + 8).ok_or(PeError::Malformed("version resource"))?;
    let ls = u32_at(&blob, fixed + 12).ok_or(PeError::Malformed("version resource"))?;
    Ok(Some([
        (ms >> 16) as u16,
        ms as u16,
        (ls >> 16) as u16,
        ls as u16,
    ]))
}

/// Limits on export tables.
const MAX_EXPORTS: usize = 1 << 16;

/// Exported names and their RVAs, sorted by RVA.
pub fn exports(h: &Headers, r: &mut dyn ImageReader) -> Result<Vec<(String, u32)>, PeError> {
    let Some((rva, _)) = h.directory(DIR_EXPORT) else {
        return Ok(Vec::new());
    };
    let d = r.read(rva, 40)?;
    let nfunc = (u32_at(&d, 20).unwrap_or(0) as usize).min(MAX_EXPORTS);
    let nnames = (u32_at(&d, 24).unwrap_or(0) as usize).min(MAX_EXPORTS);
    let funcs_rva = u32_at(&d, 28).unwrap_or(0);
    let names_rva = u32_at(&d, 32).unwrap_or(0);
    let ords_rva = u32_at(&d, 36).unwrap_or(0);
    if nnames == 0 || nfunc == 0 {
        return Ok(Vec::new());
    }
    let funcs = r.read(funcs_rva, 4 * nfunc)?;
    let names = r.read(names_rva, 4 * nnames)?;
    let ords = r.read(ords_rva, 2 * nnames)?;
    let mut out = Vec::with_capacity(nnames);
    for i in 0..nnames {
        let name_rva = u32_at(&names, 4 * i).unwrap_or(0);
        let ord = usize::from(u16_at(&ords, 2 * i).unwrap_or(0));
        let Some(f) = u32_at(&funcs, 4 * ord) else {
            continue;
        };
        let raw = match r.read(name_rva, 128) {
            Ok(b) => b,
            Err(_) => r.read(name_rva, 32).unwrap_or_default(),
        };
        let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
        let name = String::from_utf8_lossy(&raw[..end]).into_owned();
        if !name.is_empty() {
            out.push((name, f));
        }
    }
    out.sort_by_key(|(_, a)| *a);
    Ok(out)
}

/// A `.pdata` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeFunction {
    /// Start RVA.
    pub begin: u32,
    /// End RVA (exclusive).
    pub end: u32,
    /// RVA of the UNWIND_INFO (low bit may mark chained data).
    pub unwind: u32,
}

/// Largest exception directory read (entries).
const MAX_PDATA: usize = 1 << 20;

/// The exception directory, sorted by start.
pub fn pdata(h: &Headers, r: &mut dyn ImageReader) -> Result<Vec<RuntimeFunction>, PeError> {
    let Some((rva, size)) = h.directory(DIR_EXCEPTION) else {
        return Ok(Vec::new());
    };
    let n = (size as usize / 12).min(MAX_PDATA);
    let b = r.read(rva, n * 12)?;
    let mut v: Vec<RuntimeFunction> = (0..n)
        .filter_map(|i| {
            Some(RuntimeFunction {
                begin: u32_at(&b, 12 * i)?,
                end: u32_at(&b, 12 * i + 4)?,
                unwind: u32_at(&b, 12 * i + 8)?,
            })
        })
        .filter(|f| f.end > f.begin)
        .collect();
    v.sort_by_key(|f| f.begin);
    Ok(v)
}

/// The record covering `rva`, by binary search.
pub fn lookup(table: &[RuntimeFunction], rva: u32) -> Option<RuntimeFunction> {
    let i = table.partition_point(|f| f.begin <= rva);
    let f = *table.get(i.checked_sub(1)?)?;
    (rva < f.end).then_some(f)
}

/// An image held in a file's bytes.
#[derive(Debug)]
pub struct FileImage {
    bytes: Vec<u8>,
    /// Its headers.
    pub headers: Headers,
}

impl FileImage {
    /// Parses a PE file.
    pub fn new(bytes: Vec<u8>) -> Result<FileImage, PeError> {
        let headers = headers(&bytes)?;
        Ok(FileImage { bytes, headers })
    }
}

impl ImageReader for FileImage {
    fn read(&mut self, rva: u32, len: usize) -> Result<Vec<u8>, PeError> {
        let off = self
            .headers
            .file_offset(rva)
            .ok_or(PeError::Unreadable { rva })? as usize;
        let end = off.checked_add(len).ok_or(PeError::Unreadable { rva })?;
        self.bytes
            .get(off..end.min(self.bytes.len()))
            .filter(|b| !b.is_empty())
            .map(|b| {
                let mut v = b.to_vec();
                v.resize(len, 0);
                v
            })
            .ok_or(PeError::Unreadable { rva })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_not_a_pe() {
        assert!(headers(b"hello").is_err());
        let mut h = vec![0u8; 0x400];
        h[..2].copy_from_slice(b"MZ");
        h[0x3c..0x40].copy_from_slice(&0xfffff0u32.to_le_bytes());
        assert!(headers(&h).is_err());
        assert!(lookup(&[], 5).is_none());
    }

    #[test]
    fn lookup_finds_covering_function() {
        let t = [
            RuntimeFunction {
                begin: 0x1000,
                end: 0x1100,
                unwind: 1,
            },
            RuntimeFunction {
                begin: 0x1200,
                end: 0x1300,
                unwind: 2,
            },
        ];
        assert_eq!(lookup(&t, 0x10ff).map(|f| f.unwind), Some(1));
        assert_eq!(lookup(&t, 0x1100), None);
        assert_eq!(lookup(&t, 0x1250).map(|f| f.unwind), Some(2));
        assert_eq!(lookup(&t, 0xfff), None);
    }
}
