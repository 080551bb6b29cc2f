//! The real Windows 10 (19041) kernel triage dump: header facts, the driver list, the faulting
//! context and its stack, unwound through amdppm.sys and Wdf01000.sys with amdppm.pdb's names.

mod common;

use std::path::PathBuf;

use kdnet::api::Reg;
use kdnet_model::dump::{DumpFile, DumpKind};
use kdnet_model::nt::unwind::Regs;
use kdnet_model::nt::{Kernel, ModuleSymbols};
use kdnet_model::target::Target;
use kdnet_symbols::path::SymbolPath;

fn triage() -> Option<(PathBuf, PathBuf)> {
    let dir = common::shared()?;
    Some((dir.join("dumps/triage_x64.dmp"), dir.join("pdbs")))
}

const PARAMS: [u64; 4] = [
    0xffff_ffff_c000_0005,
    0xffff_f804_8b58_334c,
    0xffff_8504_2989_1ee8,
    0xffff_8504_2989_1720,
];

#[test]
fn header_driver_list_and_bugcheck() {
    let Some((dump, _)) = triage() else { return };
    let mut d = DumpFile::open(&dump).unwrap();
    assert_eq!(d.kind, DumpKind::Triage);
    let info = d.info();
    assert_eq!(info.build, 19041);
    assert_eq!(info.processors, 16);
    assert!(!info.live);
    assert_eq!(info.bugcheck, Some((0x1000_007e, PARAMS)));
    let mods = d.module_list().unwrap();
    assert_eq!(mods.len(), 151);
    assert_eq!(mods[0].name, "ntoskrnl.exe");
    assert_eq!(Some(mods[0].base), info.kernel_base.or(Some(mods[0].base)));
    assert_eq!(mods[1].name, "hal.dll");
    let cimfs = mods.iter().find(|m| m.name == "CimFS.SYS").unwrap();
    assert!(cimfs.path.ends_with("CimFS.SYS"), "{}", cimfs.path);
    let amdppm = mods.iter().find(|m| m.name == "amdppm.sys").unwrap();
    // The image on the shared symbol path is this very build of the driver.
    let file = std::fs::read(dump.parent().unwrap().join("../pdbs/amdppm.sys")).unwrap();
    let img = kdnet_model::pe::FileImage::new(file).unwrap();
    assert_eq!(img.headers.size_of_image, amdppm.size);
    assert_eq!(img.headers.timestamp, amdppm.timestamp);
    // Every driver lies in the kernel half and none overlaps another.
    let mut spans: Vec<(u64, u64)> = mods
        .iter()
        .map(|m| (m.base, m.base + u64::from(m.size)))
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "{:x?}", w);
    }
    assert!(spans.iter().all(|s| s.0 >> 48 == 0xffff));

    // The faulting context: RIP is the exception address of the bugcheck.
    let ctx = d.context(0).unwrap();
    assert_eq!(ctx.reg(Reg::Rip), PARAMS[1]);
    assert_eq!(ctx.reg(Reg::Rsp), 0xffff_8504_2989_2120);
    assert!(d.context(16).is_err());
}

#[test]
fn faulting_stack_resolves_to_amdppm_pdb_names() {
    let Some((dump, pdbs)) = triage() else { return };
    let d = DumpFile::open(&dump).unwrap();
    let path = SymbolPath::parse(&pdbs.display().to_string());
    let mut k = Kernel::open(Box::new(d), path).unwrap();
    assert_eq!(k.build, 19041);
    assert_eq!(k.modules().unwrap().len(), 151);
    assert_eq!(k.bugcheck().unwrap(), Some((0x1000_007e, PARAMS)));
    // The debugger data block is in the dump, plain.
    let kdbg = k.kdbg().unwrap();
    assert!(!kdbg.was_encoded);
    assert_eq!(kdbg.field("KernBase"), Some(k.base));
    assert_eq!(
        kdbg.field("PsLoadedModuleList"),
        k.mem.info().ps_loaded_module_list
    );

    let ctx = k.mem.target().context(0).unwrap();
    let stack = k.unwind(Regs::from_context(&ctx), None, true);
    let sites: Vec<&str> = stack.frames.iter().map(|f| f.call_site.as_str()).collect();
    let want = [
        "amdppm!WriteIoMemRawEx+0x70",
        "amdppm!WriteGenAddrEx+0x6b",
        "amdppm!WriteGenAddrMaybeHiddenEx+0x18",
        "amdppm!InitAcpiCpc+0x317",
        "amdppm!ProcLibDeviceStart+0x886",
        "amdppm!EvtDevicePrepareHardware+0xd2",
    ];
    assert_eq!(&sites[..6], &want, "{sites:#?}");
    // The stack goes on through the framework (its image file on the path gives .pdata)
    // into the kernel, whose image is not in a triage dump: the walk ends there with a note.
    let wdf: Vec<_> = sites.iter().filter(|s| s.starts_with("Wdf01000")).collect();
    assert!(wdf.len() >= 5, "{sites:#?}");
    assert!(sites.last().unwrap().starts_with("nt+"), "{sites:#?}");
    assert!(stack.note.unwrap().contains("ntoskrnl.exe"));
    // Child-SPs rise; each return address is the next frame's RIP.
    for w in stack.frames.windows(2) {
        assert!(w[1].child_sp > w[0].child_sp);
        assert_eq!(w[0].return_address, w[1].ip);
    }
    let i = k.module_index(PARAMS[1]).unwrap();
    match k.module_symbols(i).as_deref() {
        Some(ModuleSymbols::Table { source, .. }) => assert!(source.contains("amdppm.pdb")),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        k.resolve("amdppm", "WriteIoMemRawEx").map(|a| a + 0x70),
        Some(PARAMS[1])
    );
}

#[test]
fn without_symbols_frames_fall_back_to_module_offsets() {
    let Some((dump, _)) = triage() else { return };
    let d = DumpFile::open(&dump).unwrap();
    let empty = tempdir();
    let mut k = Kernel::open(Box::new(d), SymbolPath::parse(&empty.display().to_string())).unwrap();
    let ctx = k.mem.target().context(0).unwrap();
    let stack = k.unwind(Regs::from_context(&ctx), None, true);
    // No image file, no .pdata: only the current frame, named by module offset.
    assert_eq!(stack.frames.len(), 1);
    assert_eq!(stack.frames[0].call_site, "amdppm+0x334c");
    assert!(stack.note.is_some());
    std::fs::remove_dir_all(empty).ok();
}

fn tempdir() -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let d = std::env::temp_dir().join(format!("kdnet-triage-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn images_and_pdbs_come_from_a_symbol_server_once() {
    let Some((dump, pdbs)) = triage() else { return };
    let sys = std::fs::read(pdbs.join("amdppm.sys")).unwrap();
    let pdb = std::fs::read(pdbs.join("amdppm.pdb")).unwrap();
    let img = kdnet_model::pe::FileImage::new(sys.clone()).unwrap();
    let id = kdnet_symbols::pdb::identity(pdb.clone(), "amdppm.pdb").unwrap();
    let image_key = format!(
        "{:08X}{:X}",
        img.headers.timestamp, img.headers.size_of_image
    );
    let url = common::symbol_server(vec![
        (format!("/amdppm.sys/{image_key}/amdppm.sys"), sys),
        (format!("/amdppm.pdb/{}/amdppm.pdb", id.key()), pdb),
    ]);
    let cache = tempdir().join("cache");
    let path = SymbolPath::parse(&format!("srv*{}*{url}", cache.display()));
    let mut k = Kernel::open(Box::new(DumpFile::open(&dump).unwrap()), path).unwrap();
    let ctx = k.mem.target().context(0).unwrap();
    let stack = k.unwind(Regs::from_context(&ctx), None, true);
    assert_eq!(stack.frames[3].call_site, "amdppm!InitAcpiCpc+0x317");
    // Both files are in the cache under the store layout; the next run needs no server.
    assert!(
        cache
            .join("amdppm.sys")
            .join(&image_key)
            .join("amdppm.sys")
            .is_file()
    );
    assert!(
        cache
            .join("amdppm.pdb")
            .join(id.key())
            .join("amdppm.pdb")
            .is_file()
    );
    let offline = SymbolPath::parse(&cache.display().to_string());
    let mut k = Kernel::open(Box::new(DumpFile::open(&dump).unwrap()), offline).unwrap();
    let stack = k.unwind(Regs::from_context(&ctx), None, true);
    assert_eq!(stack.frames[3].call_site, "amdppm!InitAcpiCpc+0x317");
    std::fs::remove_dir_all(cache.parent().unwrap()).ok();
}
