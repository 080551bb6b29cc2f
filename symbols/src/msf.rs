//! The MSF 7.00 container of a PDB file, checked against the file before anything in it is
//! trusted.
//!
//! A PDB is a file of fixed-size pages holding numbered streams. The superblock (page 0) gives
//! the page size, the number of pages and the size of the stream directory; a list of page
//! numbers right after the superblock names the pages that hold the directory's own page list;
//! the directory gives every stream's size and its pages. Every one of these numbers comes from
//! the file, so [`Msf::open`] checks each against the file before it is used: the page size is a
//! power of two the format allows, every page referenced lies whole within the file, the
//! directory fits in the file and holds every page list it claims, no stream is larger than the
//! file, and all streams together use no more pages than the file has. A stream read through
//! [`Msf::stream`] therefore never asks for more bytes than the file holds.

use kdnet_arch::le::u32_at;

/// The signature of an MSF 7.00 file (the "big" MSF of every PDB since Visual C++ 7).
pub const MAGIC: &[u8; 32] = b"Microsoft C/C++ MSF 7.00\r\n\x1aDS\0\0\0";
/// The signature of the MSF 2.00 files of Visual C++ 6 and earlier, which are not read.
const OLD_MAGIC: &[u8] = b"Microsoft C/C++ program database 2.00\r\n\x1aJG\0\0";
/// Size of the superblock fields (signature and six numbers).
const SUPERBLOCK: usize = 56;
/// Offset of the list of the directory's page-list pages.
const DIRECTORY_PAGE_LIST: usize = 52;
/// Bytes the PDB reader behind this module maps as the superblock page.
const HEADER_VIEW: usize = 4096;
/// A stream size meaning "no such stream".
const NIL_STREAM: u32 = u32::MAX;

/// A checked MSF container over the bytes of a PDB file.
#[derive(Debug)]
pub struct Msf<'a> {
    data: &'a [u8],
    page_size: usize,
    directory: Vec<u32>,
    streams: Vec<Option<StreamDesc>>,
}

#[derive(Debug)]
struct StreamDesc {
    size: usize,
    pages: Vec<u32>,
}

impl<'a> Msf<'a> {
    /// Checks the container of `data` (a whole PDB file).
    pub fn open(data: &'a [u8]) -> Result<Msf<'a>, String> {
        if data.starts_with(OLD_MAGIC) {
            return Err("an MSF 2.00 PDB (Visual C++ 6 or older) is not read".into());
        }
        if data.len() < SUPERBLOCK || &data[..32] != MAGIC {
            return Err("no MSF 7.00 signature".into());
        }
        let field = |i: usize| u32_at(data, 32 + 4 * i).unwrap_or(0);
        let page_size = field(0);
        let num_pages = field(2);
        let directory_size = field(3);
        if !page_size.is_power_of_two() || !(512..=65536).contains(&page_size) {
            return Err(format!(
                "page size {page_size} (a power of two from 512 to 65536 is expected)"
            ));
        }
        let page_size = page_size as usize;
        let len = data.len() as u64;
        let file_pages = len / page_size as u64;
        if u64::from(num_pages) > file_pages {
            return Err(format!(
                "the superblock counts {num_pages} pages of {page_size} bytes but the file holds {file_pages}"
            ));
        }
        let mut msf = Msf {
            data,
            page_size,
            directory: Vec::new(),
            streams: Vec::new(),
        };
        // A page number is usable when it is not the superblock, is within the page count and
        // the whole page lies within the file.
        let check_page = |p: u32, what: &str| -> Result<u32, String> {
            if p == 0 || p >= num_pages {
                Err(format!(
                    "{what} names page {p}; the file's data pages are 1 to {}",
                    num_pages.saturating_sub(1)
                ))
            } else {
                Ok(p)
            }
        };
        if u64::from(directory_size) > len || directory_size < 4 {
            return Err(format!(
                "stream directory of {directory_size} bytes in a file of {len} bytes"
            ));
        }
        let directory_size = directory_size as usize;
        let dir_pages = directory_size.div_ceil(page_size);
        let list_pages = (dir_pages * 4).div_ceil(page_size);
        let header_room = page_size.min(HEADER_VIEW);
        if DIRECTORY_PAGE_LIST + 4 * list_pages > header_room {
            return Err(format!(
                "the directory's page list needs {list_pages} pages, more than the superblock can name"
            ));
        }
        // The directory's page list, then the directory itself.
        let mut list_bytes = Vec::with_capacity(list_pages * page_size);
        for i in 0..list_pages {
            let p = check_page(
                field(5 + i),
                "the superblock's list of directory page-list pages",
            )?;
            list_bytes.extend_from_slice(msf.page(p));
        }
        let mut directory = Vec::with_capacity(dir_pages * page_size);
        for i in 0..dir_pages {
            let p = u32_at(&list_bytes, 4 * i).unwrap_or(0);
            let p = check_page(p, "the directory's page list")?;
            directory.extend_from_slice(msf.page(p));
            msf.directory.push(p);
        }
        directory.truncate(directory_size);
        // The directory: stream count, every stream's size, then every stream's pages.
        let count = u32_at(&directory, 0).unwrap_or(0) as usize;
        if count > (directory_size - 4) / 4 {
            return Err(format!(
                "the directory counts {count} streams but has room for {}",
                (directory_size - 4) / 4
            ));
        }
        let mut at = 4 + 4 * count;
        let mut used_pages = 0u64;
        let mut streams = Vec::with_capacity(count);
        for i in 0..count {
            let size = u32_at(&directory, 4 + 4 * i).unwrap_or(0);
            if size == NIL_STREAM {
                streams.push(None);
                continue;
            }
            if u64::from(size) > len {
                return Err(format!(
                    "stream {i} claims {size} bytes, more than the file's {len}"
                ));
            }
            let size = size as usize;
            let n = size.div_ceil(page_size);
            used_pages += n as u64;
            if used_pages > file_pages {
                return Err(format!(
                    "the streams up to {i} claim {used_pages} pages, more than the file's {file_pages}"
                ));
            }
            if at + 4 * n > directory_size {
                return Err(format!(
                    "the directory ends inside the page list of stream {i}"
                ));
            }
            let mut pages = Vec::with_capacity(n);
            for j in 0..n {
                let p = u32_at(&directory, at + 4 * j).unwrap_or(0);
                pages.push(check_page(p, &format!("stream {i}"))?);
            }
            at += 4 * n;
            streams.push(Some(StreamDesc { size, pages }));
        }
        msf.streams = streams;
        Ok(msf)
    }

    fn page(&self, p: u32) -> &'a [u8] {
        let start = p as usize * self.page_size;
        &self.data[start..start + self.page_size]
    }

    /// The page size.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Number of streams in the directory (nil streams included).
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// The size of stream `i`, or `None` when it does not exist.
    pub fn stream_len(&self, i: usize) -> Option<usize> {
        self.streams.get(i)?.as_ref().map(|s| s.size)
    }

    /// Where byte `at` of stream `i` lies in the file.
    pub fn file_offset(&self, i: usize, at: usize) -> Option<usize> {
        let s = self.streams.get(i)?.as_ref()?;
        (at < s.size).then(|| self.offset_in(&s.pages, at))?
    }

    /// Where byte `at` of the stream directory lies in the file.
    pub fn directory_offset(&self, at: usize) -> Option<usize> {
        self.offset_in(&self.directory, at)
    }

    fn offset_in(&self, pages: &[u32], at: usize) -> Option<usize> {
        let p = *pages.get(at / self.page_size)? as usize;
        Some(p * self.page_size + at % self.page_size)
    }

    /// The bytes of stream `i` (empty when it does not exist). Never more than the file holds.
    pub fn stream(&self, i: usize) -> Vec<u8> {
        let Some(Some(s)) = self.streams.get(i) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(s.size);
        for &p in &s.pages {
            let take = (s.size - out.len()).min(self.page_size);
            out.extend_from_slice(&self.page(p)[..take]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small MSF with page size 512: superblock, directory page list at page 3, directory at
    /// page 4, and the given streams from page 5 on.
    pub(crate) fn build(streams: &[&[u8]]) -> Vec<u8> {
        let ps = 512usize;
        let mut pages: Vec<Vec<u8>> = vec![vec![0; ps]; 5];
        let mut dir = Vec::new();
        dir.extend_from_slice(&(streams.len() as u32).to_le_bytes());
        for s in streams {
            dir.extend_from_slice(&(s.len() as u32).to_le_bytes());
        }
        for s in streams {
            for chunk in s.chunks(ps) {
                dir.extend_from_slice(&(pages.len() as u32).to_le_bytes());
                let mut p = chunk.to_vec();
                p.resize(ps, 0);
                pages.push(p);
            }
        }
        assert!(dir.len() <= ps);
        pages[4][..dir.len()].copy_from_slice(&dir);
        pages[3][..4].copy_from_slice(&4u32.to_le_bytes());
        let sb = &mut pages[0];
        sb[..32].copy_from_slice(MAGIC);
        let n = pages.len() as u32;
        for (i, v) in [ps as u32, 1, n, dir.len() as u32, 0, 3].iter().enumerate() {
            pages[0][32 + 4 * i..36 + 4 * i].copy_from_slice(&v.to_le_bytes());
        }
        pages.concat()
    }

    #[test]
    fn streams_read_back() {
        let a: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let file = build(&[b"one", &a, b""]);
        let m = Msf::open(&file).unwrap();
        assert_eq!(m.stream_count(), 3);
        assert_eq!(m.stream(0), b"one");
        assert_eq!(m.stream(1), a);
        assert_eq!(m.stream_len(2), Some(0));
        assert!(m.stream(7).is_empty());
        assert_eq!(file[m.file_offset(1, 999).unwrap()], a[999]);
        assert_eq!(m.file_offset(1, 1000), None);
        let size_of_1 = m.directory_offset(8).unwrap();
        assert_eq!(file[size_of_1..size_of_1 + 4], 1000u32.to_le_bytes());
    }

    #[test]
    fn every_number_is_checked_against_the_file() {
        let file = build(&[b"one", &[7u8; 700]]);
        let set = |at: usize, v: u32| {
            let mut f = file.clone();
            f[at..at + 4].copy_from_slice(&v.to_le_bytes());
            Msf::open(&f).unwrap_err()
        };
        assert!(set(32, 1000).contains("page size"));
        assert!(set(32, 1 << 20).contains("page size"));
        assert!(set(40, 1_000_000).contains("pages"));
        assert!(set(44, 0x8000_0000).contains("directory"));
        assert!(set(52, 0).contains("page 0"));
        assert!(set(52, 9999).contains("page 9999"));
        // The directory: stream count, sizes, pages.
        let dir = 4 * 512;
        assert!(set(dir, 0x4000_0000).contains("streams"));
        assert!(set(dir + 8, 0xFFFF_FFF0).contains("claims"));
        assert!(set(dir + 8, 600_000).contains("claims"));
        assert!(set(dir + 12, 77).contains("stream 0"));
        let mut short = file.clone();
        short.truncate(6 * 512);
        assert!(
            Msf::open(&short)
                .unwrap_err()
                .contains("superblock counts 8 pages")
        );
        assert!(Msf::open(b"Microsoft C/C++ program database 2.00\r\n\x1aJG\0\0....").is_err());
        assert!(Msf::open(b"short").is_err());
    }
}
