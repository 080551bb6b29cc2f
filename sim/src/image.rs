//! Module images in memory: PE headers, a CodeView (RSDS) record naming the PDB, an export
//! directory, and `.pdata`/`.xdata` describing the frames of every function that appears on a
//! simulated stack, with matching prolog bytes and call instructions before return addresses.

use std::collections::BTreeMap;

use kdnet_symbols::PdbId;

use crate::SimError;
use crate::kernel::Kernel;

/// x64 register numbers as unwind codes use them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[allow(missing_docs)]
pub enum Gpr {
    Rax = 0,
    Rcx,
    Rdx,
    Rbx,
    Rsp,
    Rbp,
    Rsi,
    Rdi,
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
    R14,
    R15,
}

const NONVOLATILE: [Gpr; 8] = [
    Gpr::Rbx,
    Gpr::Rbp,
    Gpr::Rsi,
    Gpr::Rdi,
    Gpr::R12,
    Gpr::R13,
    Gpr::R14,
    Gpr::R15,
];

/// How a function's prolog builds its frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Function start (RVA).
    pub rva: u32,
    /// Function end (RVA, exclusive).
    pub end: u32,
    /// Registers pushed, in push order.
    pub pushes: Vec<Gpr>,
    /// Bytes subtracted from RSP after the pushes.
    pub alloc: u32,
    /// Registers saved with `mov [rsp+off], reg` after the allocation.
    pub saves: Vec<(Gpr, u32)>,
    /// An interrupt or exception entry: the processor pushed a machine frame and an error code
    /// before the first instruction (its unwind data begins with UWOP_PUSH_MACHFRAME), and
    /// the pushes and allocation after it make the rest of a KTRAP_FRAME.
    pub machine_frame: bool,
    /// An interrupt entry: the processor pushed no error code, so the entry makes the slot
    /// itself (`sub rsp, 8` first; its machine frame is unwound without one).
    pub dummy_code: bool,
    /// RVA of its UNWIND_INFO, once written.
    pub unwind_rva: u32,
}

impl Frame {
    /// Bytes between the body RSP and the return address.
    pub fn size_to_return(&self) -> u64 {
        u64::from(self.alloc) + 8 * self.pushes.len() as u64
    }

    /// The prolog's bytes and its UNWIND_CODE slots (latest operation first, extra slots
    /// after each).
    fn prolog(&self) -> Result<(Vec<u8>, Vec<[u8; 2]>), SimError> {
        let (bytes, mut ops) =
            crate::code::prolog(0, self.lead(), &self.pushes, self.alloc, &self.saves)?;
        if self.machine_frame {
            // UWOP_PUSH_MACHFRAME, with the error code the processor pushed or without,
            // before any instruction.
            ops.insert(0, (0, 10, u8::from(!self.dummy_code), vec![]));
        }
        let mut slots: Vec<[u8; 2]> = Vec::new();
        for (off, op, info, extra) in ops.into_iter().rev() {
            slots.push([off, op | (info << 4)]);
            for e in extra {
                slots.push(e.to_le_bytes());
            }
        }
        Ok((bytes, slots))
    }

    /// Bytes the prolog allocates before its pushes (an interrupt entry's error-code slot).
    pub fn lead(&self) -> u32 {
        if self.machine_frame && self.dummy_code {
            8
        } else {
            0
        }
    }

    /// The UNWIND_INFO bytes.
    pub fn unwind_info(&self) -> Result<Vec<u8>, SimError> {
        let (prolog, slots) = self.prolog()?;
        let mut u = vec![1u8, prolog.len() as u8, slots.len() as u8, 0];
        for s in &slots {
            u.extend_from_slice(s);
        }
        if slots.len() % 2 == 1 {
            u.extend_from_slice(&[0, 0]);
        }
        Ok(u)
    }

    /// The prolog's length in bytes.
    pub fn prolog_len(&self) -> u32 {
        self.prolog().map_or(0, |(b, _)| b.len() as u32)
    }
}

/// Picks a frame shape for a function from its name (deterministic, aligned: the return
/// address slot + pushes + allocation keep RSP 16-byte aligned).
pub fn frame_for(name: &str, rva: u32, end: u32) -> Frame {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    let npush = 1 + (h % 4) as usize;
    let pushes: Vec<Gpr> = NONVOLATILE
        .iter()
        .copied()
        .cycle()
        .skip((h >> 8) as usize % 8)
        .take(npush)
        .collect();
    let mut alloc = 0x20 + 8 * ((h >> 16) % 40) as u32;
    if !(8 + 8 * npush as u32 + alloc).is_multiple_of(16) {
        alloc += 8;
    }
    Frame {
        rva,
        end,
        pushes,
        alloc,
        saves: vec![],
        machine_frame: false,
        dummy_code: false,
        unwind_rva: 0,
    }
}

/// The frame of the context-switch routine: a large allocation holding the saved
/// non-volatile registers (as KiSwapContext's KEXCEPTION_FRAME does).
pub fn switch_frame(rva: u32, end: u32) -> Frame {
    Frame {
        rva,
        end,
        pushes: vec![],
        alloc: 0x138,
        saves: vec![
            (Gpr::Rbp, 0x100),
            (Gpr::Rbx, 0xe0),
            (Gpr::Rdi, 0xe8),
            (Gpr::Rsi, 0xf0),
            (Gpr::R12, 0xf8),
            (Gpr::R13, 0x108),
            (Gpr::R14, 0x110),
            (Gpr::R15, 0x118),
        ],
        machine_frame: false,
        dummy_code: false,
        unwind_rva: 0,
    }
}

/// A module image being built.
#[derive(Debug)]
pub struct Image {
    /// File name (`ntoskrnl.exe`).
    pub name: String,
    /// Full path as the loader records it.
    pub path: String,
    /// Base address.
    pub base: u64,
    /// SizeOfImage.
    pub size: u32,
    /// PDB identity for the CodeView record.
    pub pdb: PdbId,
    /// TimeDateStamp.
    pub timestamp: u32,
    /// Functions with frames, by RVA.
    pub frames: BTreeMap<u32, Frame>,
    /// Exported names.
    pub exports: Vec<(String, u32)>,
    /// Where the tail sections (.pdata, .rdata) start.
    tail: u32,
    /// Call sites (the return address's RVA, the callee's address where known).
    calls: Vec<(u32, Option<u64>)>,
    /// RVAs where an instruction must start (a stopped processor's or thread's RIP).
    instructions: Vec<u32>,
    /// RVAs where a 64-bit load through a register must be (a faulting instruction).
    loads: Vec<(u32, Gpr, i32)>,
    /// RVAs where a processor spins (`pause`, then a jump back).
    spins: Vec<u32>,
    /// Symbols defined by the simulator for modules without a table (name → (rva, size)).
    pub own_functions: BTreeMap<String, (u32, u32)>,
    next_own: u32,
    /// The file version its version resource carries (major, minor, build, revision), if it
    /// has one.
    pub version: Option<[u16; 4]>,
}

/// The RVA where the simulator places functions of modules it invents.
const OWN_TEXT: u32 = 0x1000;

/// Bytes reserved after the code for global data.
pub const DATA_RESERVE: u32 = 0x4000;

impl Image {
    /// A module at `base` whose symbols end below `code_end` (RVA).
    pub fn new(
        name: &str,
        path: &str,
        base: u64,
        code_end: u32,
        pdb: PdbId,
        timestamp: u32,
    ) -> Image {
        // A page of slack, then room for the module's global data (ndis keeps its lists there)
        // before the exception table and read-only data.
        let tail = code_end.div_ceil(0x1000) * 0x1000 + 0x1000 + DATA_RESERVE;
        Image {
            name: name.to_string(),
            path: path.to_string(),
            base,
            size: tail + 0x10000,
            pdb,
            timestamp,
            frames: BTreeMap::new(),
            exports: Vec::new(),
            tail,
            calls: Vec::new(),
            instructions: Vec::new(),
            loads: Vec::new(),
            spins: Vec::new(),
            own_functions: BTreeMap::new(),
            next_own: OWN_TEXT,
            version: None,
        }
    }

    /// Defines a function of an invented module (no symbol table): it gets an RVA, a size and an
    /// export.
    pub fn define_function(&mut self, name: &str, size: u32) -> u32 {
        if let Some((rva, _)) = self.own_functions.get(name) {
            return *rva;
        }
        let rva = self.next_own;
        self.next_own += size.div_ceil(0x10) * 0x10 + 0x10;
        self.own_functions.insert(name.to_string(), (rva, size));
        self.exports.push((name.to_string(), rva));
        rva
    }

    /// Registers a frame for a function.
    pub fn add_frame(&mut self, f: Frame) -> &Frame {
        self.frames.entry(f.rva).or_insert(f)
    }

    /// Records a call site whose return address is `ret_rva`, calling `callee` where known.
    pub fn add_call(&mut self, ret_rva: u32, callee: Option<u64>) {
        self.calls.push((ret_rva, callee));
    }

    /// Records that an instruction starts at `rva`.
    pub fn add_instruction(&mut self, rva: u32) {
        self.instructions.push(rva);
    }

    /// Records that a spin loop starts at `rva` (where a processor is stuck).
    pub fn add_spin(&mut self, rva: u32) {
        self.spins.push(rva);
    }

    /// Records that `mov rax, qword ptr [base+disp]` is at `rva` (where a scenario's thread
    /// faults).
    pub fn add_load(&mut self, rva: u32, base: Gpr, disp: i32) {
        self.loads.push((rva, base, disp));
    }

    /// Appends the export directory (its functions, names, ordinals and strings) to `rdata`,
    /// which starts at `rdata_rva`; returns the directory's RVA and size.
    fn append_exports(&self, rdata: &mut Vec<u8>, rdata_rva: u32) -> (u32, u32) {
        // Export directory.
        while !rdata.len().is_multiple_of(8) {
            rdata.push(0);
        }
        let mut exports = self.exports.clone();
        exports.sort();
        exports.dedup_by(|a, b| a.0 == b.0);
        let export_rva = rdata_rva + rdata.len() as u32;
        let n = exports.len() as u32;
        let funcs_rva = export_rva + 40;
        let names_rva = funcs_rva + 4 * n;
        let ords_rva = names_rva + 4 * n;
        let strings_rva = ords_rva + 2 * n;
        let mut strings: Vec<u8> = Vec::new();
        let dll_name_rva = strings_rva;
        strings.extend_from_slice(self.name.as_bytes());
        strings.push(0);
        let mut name_ptrs = Vec::new();
        for (name, _) in &exports {
            name_ptrs.push(strings_rva + strings.len() as u32);
            strings.extend_from_slice(name.as_bytes());
            strings.push(0);
        }
        let mut dir = vec![0u8; 40];
        dir[4..8].copy_from_slice(&self.timestamp.to_le_bytes());
        dir[12..16].copy_from_slice(&dll_name_rva.to_le_bytes());
        dir[16..20].copy_from_slice(&1u32.to_le_bytes());
        dir[20..24].copy_from_slice(&n.to_le_bytes());
        dir[24..28].copy_from_slice(&n.to_le_bytes());
        dir[28..32].copy_from_slice(&funcs_rva.to_le_bytes());
        dir[32..36].copy_from_slice(&names_rva.to_le_bytes());
        dir[36..40].copy_from_slice(&ords_rva.to_le_bytes());
        rdata.extend_from_slice(&dir);
        for (_, rva) in &exports {
            rdata.extend_from_slice(&rva.to_le_bytes());
        }
        for p in &name_ptrs {
            rdata.extend_from_slice(&p.to_le_bytes());
        }
        for i in 0..n {
            rdata.extend_from_slice(&(i as u16).to_le_bytes());
        }
        rdata.extend_from_slice(&strings);
        let export_size = rdata_rva + rdata.len() as u32 - export_rva;
        (export_rva, export_size)
    }

    /// Appends the debug directory and its CodeView RSDS record to `rdata`, which starts at
    /// `rdata_rva`; returns the directory's RVA.
    fn append_debug(&self, rdata: &mut Vec<u8>, rdata_rva: u32) -> u32 {
        // Debug directory + CodeView RSDS record.
        while !rdata.len().is_multiple_of(8) {
            rdata.push(0);
        }
        let debug_rva = rdata_rva + rdata.len() as u32;
        let cv_rva = debug_rva + 0x1C;
        let mut cv = b"RSDS".to_vec();
        let guid = PdbId::guid_to_bytes(&self.pdb.guid).unwrap_or([0; 16]);
        cv.extend_from_slice(&guid);
        cv.extend_from_slice(&self.pdb.age.to_le_bytes());
        cv.extend_from_slice(self.pdb.name.as_bytes());
        cv.push(0);
        let mut dd = vec![0u8; 0x1C];
        dd[4..8].copy_from_slice(&self.timestamp.to_le_bytes());
        dd[0xC..0x10].copy_from_slice(&2u32.to_le_bytes()); // IMAGE_DEBUG_TYPE_CODEVIEW
        dd[0x10..0x14].copy_from_slice(&(cv.len() as u32).to_le_bytes());
        dd[0x14..0x18].copy_from_slice(&cv_rva.to_le_bytes());
        dd[0x18..0x1C].copy_from_slice(&cv_rva.to_le_bytes());
        rdata.extend_from_slice(&dd);
        rdata.extend_from_slice(&cv);
        debug_rva
    }

    /// Appends a resource directory holding one version resource (`VS_VERSIONINFO`: the fixed
    /// file information and the `FileVersion` and `ProductVersion` strings) to `rdata`, which
    /// starts at `rdata_rva`; returns the directory's RVA and size.
    fn append_version(&self, v: [u16; 4], rdata: &mut Vec<u8>, rdata_rva: u32) -> (u32, u32) {
        while !rdata.len().is_multiple_of(8) {
            rdata.push(0);
        }
        let dir_rva = rdata_rva + rdata.len() as u32;
        // Three one-entry directories (type RT_VERSION, name 1, language 0x409), the data
        // entry, then the data.
        let dir = |id: u32, to: u32, leaf: bool| {
            let mut d = vec![0u8; 16];
            d[14..16].copy_from_slice(&1u16.to_le_bytes());
            d.extend_from_slice(&id.to_le_bytes());
            let off = if leaf { to } else { 0x8000_0000 | to };
            d.extend_from_slice(&off.to_le_bytes());
            d
        };
        let blob = version_info(v);
        let mut tree = dir(16, 24, false);
        tree.extend(dir(1, 48, false));
        tree.extend(dir(0x409, 72, true));
        let data_rva = dir_rva + 88;
        tree.extend_from_slice(&data_rva.to_le_bytes());
        tree.extend_from_slice(&(blob.len() as u32).to_le_bytes());
        tree.extend_from_slice(&[0u8; 8]);
        tree.extend_from_slice(&blob);
        rdata.extend_from_slice(&tree);
        (dir_rva, tree.len() as u32)
    }

    /// Writes headers, sections, exports, debug directory, .pdata/.xdata, prologs and call
    /// sites into memory.
    pub fn write(&mut self, k: &mut Kernel) -> Result<(), SimError> {
        let base = self.base;
        // --- tail layout: .pdata, then .rdata with xdata, export directory, debug data.
        let pdata_rva = self.tail;
        let pdata_size = 12 * self.frames.len() as u32;
        let mut rdata_rva = (pdata_rva + pdata_size).div_ceil(0x1000) * 0x1000;
        if rdata_rva == pdata_rva {
            rdata_rva += 0x1000;
        }
        let mut rdata: Vec<u8> = Vec::new();
        for f in self.frames.values_mut() {
            while !rdata.len().is_multiple_of(4) {
                rdata.push(0);
            }
            f.unwind_rva = rdata_rva + rdata.len() as u32;
            rdata.extend_from_slice(&f.unwind_info()?);
        }
        let (export_rva, export_size) = self.append_exports(&mut rdata, rdata_rva);
        let debug_rva = self.append_debug(&mut rdata, rdata_rva);
        let resources = self
            .version
            .map(|v| self.append_version(v, &mut rdata, rdata_rva));
        // Import slots: the address of each function in another module this one calls.
        while !rdata.len().is_multiple_of(8) {
            rdata.push(0);
        }
        let (lo, hi) = (base, base + u64::from(self.size.max(self.tail)));
        let mut slots: BTreeMap<u64, u64> = BTreeMap::new();
        for (_, callee) in &self.calls {
            if let Some(c) = *callee
                && !(lo..hi).contains(&c)
                && !slots.contains_key(&c)
            {
                slots.insert(c, base + u64::from(rdata_rva) + rdata.len() as u64);
                rdata.extend_from_slice(&c.to_le_bytes());
            }
        }
        let rdata_size = rdata.len() as u32;
        self.size = (rdata_rva + rdata_size).div_ceil(0x1000) * 0x1000;

        // Every function with a frame: real code over its whole `.pdata` range, on pages of
        // `int 3` as far as nothing else lives there.
        let mut pages: std::collections::BTreeSet<u64> = std::collections::BTreeSet::new();
        for f in self.frames.values() {
            let (a, b) = (base + u64::from(f.rva), base + u64::from(f.end));
            pages.extend((a & !0xfff..b).step_by(0x1000));
        }
        for p in pages {
            if !k.is_mapped(p) {
                k.map(p, 0x1000, false);
                k.write(p, &[0xcc; 0x1000]);
            }
        }
        let mut sites: BTreeMap<u32, Vec<(u64, crate::code::Site)>> = BTreeMap::new();
        let owner = |rva: u32| {
            self.frames
                .range(..=rva)
                .next_back()
                .filter(|(_, f)| rva <= f.end)
                .map(|(s, _)| *s)
        };
        for (ret, callee) in &self.calls {
            if let Some(f) = owner(*ret) {
                sites.entry(f).or_default().push((
                    base + u64::from(*ret),
                    crate::code::Site::CallReturningTo(*callee),
                ));
            }
        }
        for at in &self.instructions {
            if let Some(f) = owner(*at).filter(|f| *at < self.frames[f].end) {
                sites
                    .entry(f)
                    .or_default()
                    .push((base + u64::from(*at), crate::code::Site::Instruction));
            }
        }
        for (at, r, disp) in &self.loads {
            if let Some(f) = owner(*at).filter(|f| *at < self.frames[f].end) {
                sites
                    .entry(f)
                    .or_default()
                    .push((base + u64::from(*at), crate::code::Site::Load(*r, *disp)));
            }
        }
        for at in &self.spins {
            if let Some(f) = owner(*at).filter(|f| *at < self.frames[f].end) {
                sites
                    .entry(f)
                    .or_default()
                    .push((base + u64::from(*at), crate::code::Site::Spin));
            }
        }
        let mut ends: BTreeMap<u32, u32> = BTreeMap::new();
        for f in self.frames.values() {
            let ip = base + u64::from(f.rva);
            let here = sites.remove(&f.rva).unwrap_or_default();
            let (code, own, skipped) = crate::code::function(
                ip,
                base + u64::from(f.end),
                &f.pushes,
                f.alloc,
                &f.saves,
                f.machine_frame,
                f.lead(),
                &here,
                |c| slots.get(&c).copied(),
            )?;
            if let Some(at) = skipped.first() {
                tracing::debug!(
                    image = %self.name,
                    at = format_args!("{at:#x}"),
                    "a call site or stopped instruction overlaps another: left out"
                );
            }
            k.map(ip, code.len() as u64, false);
            k.write(ip, &code);
            // The record covers the function's own code; the padding after it is outside.
            ends.insert(f.rva, f.rva + own as u32);
        }
        let mut pdata: Vec<u8> = Vec::new();
        for f in self.frames.values_mut() {
            f.end = ends.get(&f.rva).copied().unwrap_or(f.end);
            pdata.extend_from_slice(&f.rva.to_le_bytes());
            pdata.extend_from_slice(&f.end.to_le_bytes());
            pdata.extend_from_slice(&f.unwind_rva.to_le_bytes());
        }

        // --- headers
        let mut h = vec![0u8; 0x400];
        h[0..2].copy_from_slice(b"MZ");
        h[0x3C..0x40].copy_from_slice(&0x100u32.to_le_bytes());
        let pe = 0x100;
        h[pe..pe + 4].copy_from_slice(b"PE\0\0");
        let fh = pe + 4;
        h[fh..fh + 2].copy_from_slice(&0x8664u16.to_le_bytes());
        h[fh + 2..fh + 4].copy_from_slice(&3u16.to_le_bytes()); // sections
        h[fh + 4..fh + 8].copy_from_slice(&self.timestamp.to_le_bytes());
        h[fh + 16..fh + 18].copy_from_slice(&0xF0u16.to_le_bytes());
        h[fh + 18..fh + 20].copy_from_slice(&0x22u16.to_le_bytes());
        let oh = fh + 20;
        h[oh..oh + 2].copy_from_slice(&0x20Bu16.to_le_bytes());
        h[oh + 4..oh + 8].copy_from_slice(&(self.tail - 0x1000).to_le_bytes()); // SizeOfCode
        h[oh + 16..oh + 20].copy_from_slice(&0x1000u32.to_le_bytes()); // AddressOfEntryPoint
        h[oh + 20..oh + 24].copy_from_slice(&0x1000u32.to_le_bytes()); // BaseOfCode
        h[oh + 24..oh + 32].copy_from_slice(&base.to_le_bytes());
        h[oh + 32..oh + 36].copy_from_slice(&0x1000u32.to_le_bytes());
        h[oh + 36..oh + 40].copy_from_slice(&0x200u32.to_le_bytes());
        h[oh + 40..oh + 42].copy_from_slice(&10u16.to_le_bytes());
        h[oh + 48..oh + 50].copy_from_slice(&10u16.to_le_bytes());
        h[oh + 56..oh + 60].copy_from_slice(&self.size.to_le_bytes());
        h[oh + 60..oh + 64].copy_from_slice(&0x400u32.to_le_bytes());
        h[oh + 68..oh + 70].copy_from_slice(&1u16.to_le_bytes()); // native
        h[oh + 108..oh + 112].copy_from_slice(&16u32.to_le_bytes());
        let dd0 = oh + 112;
        let put_dir = |h: &mut Vec<u8>, i: usize, rva: u32, size: u32| {
            h[dd0 + 8 * i..dd0 + 8 * i + 4].copy_from_slice(&rva.to_le_bytes());
            h[dd0 + 8 * i + 4..dd0 + 8 * i + 8].copy_from_slice(&size.to_le_bytes());
        };
        put_dir(&mut h, 0, export_rva, export_size);
        put_dir(&mut h, 3, pdata_rva, pdata_size);
        put_dir(&mut h, 6, debug_rva, 0x1C);
        if let Some((rva, size)) = resources {
            put_dir(&mut h, 2, rva, size);
        }
        let sh = oh + 0xF0;
        let sections: [(&[u8], u32, u32, u32); 3] = [
            (b".text", 0x1000, self.tail - 0x1000, 0x6000_0020),
            (b".pdata", pdata_rva, pdata_size.max(1), 0x4000_0040),
            (b".rdata", rdata_rva, rdata_size, 0x4000_0040),
        ];
        for (i, (name, rva, size, ch)) in sections.iter().enumerate() {
            let s = sh + 40 * i;
            h[s..s + name.len()].copy_from_slice(name);
            h[s + 8..s + 12].copy_from_slice(&size.to_le_bytes());
            h[s + 12..s + 16].copy_from_slice(&rva.to_le_bytes());
            h[s + 16..s + 20]
                .copy_from_slice(&size.div_ceil(0x200).wrapping_mul(0x200).to_le_bytes());
            h[s + 20..s + 24].copy_from_slice(&rva.to_le_bytes());
            h[s + 36..s + 40].copy_from_slice(&ch.to_le_bytes());
        }
        k.map(base, 0x1000, false);
        k.write(base, &h);
        k.map(
            base + u64::from(pdata_rva),
            u64::from(pdata_size.max(1)),
            true,
        );
        k.write(base + u64::from(pdata_rva), &pdata);
        k.map(base + u64::from(rdata_rva), u64::from(rdata_size), true);
        k.write(base + u64::from(rdata_rva), &rdata);
        Ok(())
    }
}

/// A `VS_VERSIONINFO` block for file version `v`: the fixed information, then a
/// StringFileInfo with the English (US, Unicode) table's FileVersion and ProductVersion.
fn version_info(v: [u16; 4]) -> Vec<u8> {
    // Each block: length, value length, type (0 binary, 1 text), key, padding to 4 bytes,
    // value, padding, children; the length covers all of it.
    fn block(key: &str, text: bool, value: &[u8], value_len: u16, children: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 6];
        b[2..4].copy_from_slice(&value_len.to_le_bytes());
        b[4..6].copy_from_slice(&u16::from(text).to_le_bytes());
        for u in key.encode_utf16().chain([0]) {
            b.extend_from_slice(&u.to_le_bytes());
        }
        while !b.len().is_multiple_of(4) {
            b.push(0);
        }
        b.extend_from_slice(value);
        if !children.is_empty() {
            while !b.len().is_multiple_of(4) {
                b.push(0);
            }
            b.extend_from_slice(children);
        }
        let len = b.len() as u16;
        b[0..2].copy_from_slice(&len.to_le_bytes());
        while !b.len().is_multiple_of(4) {
            b.push(0);
        }
        b
    }
    let text = format!("{}.{}.{}.{}", v[0], v[1], v[2], v[3]);
    let string = |key: &str| {
        let units: Vec<u16> = text.encode_utf16().chain([0]).collect();
        let bytes: Vec<u8> = units.iter().flat_map(|u| u.to_le_bytes()).collect();
        block(key, true, &bytes, units.len() as u16, &[])
    };
    let mut strings = string("FileVersion");
    strings.extend(string("ProductVersion"));
    let table = block("040904B0", true, &[], 0, &strings);
    let file_info = block("StringFileInfo", true, &[], 0, &table);
    let ms = (u32::from(v[0]) << 16) | u32::from(v[1]);
    let ls = (u32::from(v[2]) << 16) | u32::from(v[3]);
    let mut fixed = Vec::with_capacity(52);
    for d in [
        0xFEEF_04BD, // signature
        0x0001_0000, // structure version
        ms,
        ls,
        ms,
        ls,
        0x3F,        // flags mask
        0,           // flags (a release build)
        0x0004_0004, // VOS_NT_WINDOWS32
        3,           // VFT_DRV
        7,           // VFT2_DRV_SYSTEM
        0,
        0,
    ] {
        fixed.extend_from_slice(&u32::to_le_bytes(d));
    }
    block("VS_VERSION_INFO", false, &fixed, 52, &file_info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_aligned_and_unwind_codes_describe_them() {
        for name in ["KeWaitForSingleObject", "KiSwapThread", "FlPnpEvent", "x"] {
            let f = frame_for(name, 0x1000, 0x1400);
            assert_eq!((8 + f.size_to_return()) % 16, 0, "{name}");
            let u = f.unwind_info().unwrap();
            assert_eq!(u[0], 1);
            assert_eq!(u[1] as u32, f.prolog_len());
            // The first code is the allocation (latest operation), ending at the prolog end.
            assert_eq!(u[4], u[1]);
        }
        let s = switch_frame(0x2000, 0x2200);
        let u = s.unwind_info().unwrap();
        // 8 saves (2 slots each) + large alloc (2 slots).
        assert_eq!(u[2], 18);
        assert_eq!(u[5] & 0xf, 4, "latest op is a SAVE_NONVOL");
    }
}
