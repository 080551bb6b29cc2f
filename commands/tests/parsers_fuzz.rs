//! Malformed dumps and images never panic or hang: the real triage dump and driver images with
//! bytes changed, headers retyped and tails cut off are opened and then worked over the way the
//! commands do (module list, bugcheck, debugger data, unwinding the faulting stack).

mod common;

use std::sync::OnceLock;

use kdnet_model::dump::DumpFile;
use kdnet_model::nt::Kernel;
use kdnet_model::nt::unwind::Regs;
use kdnet_model::pe::{self, FileImage};
use kdnet_model::target::Target;
use kdnet_symbols::path::SymbolPath;
use proptest::prelude::*;

struct Inputs {
    dump: Vec<u8>,
    images: Vec<Vec<u8>>,
}

fn inputs() -> Option<&'static Inputs> {
    // Asked on every call, so each test that needs it is counted.
    let dir = common::shared()?;
    static I: OnceLock<Option<Inputs>> = OnceLock::new();
    I.get_or_init(|| {
        Some(Inputs {
            dump: std::fs::read(dir.join("dumps/triage_x64.dmp")).ok()?,
            images: vec![
                std::fs::read(dir.join("pdbs/amdppm.sys")).ok()?,
                std::fs::read(dir.join("pdbs/Wdf01000.sys")).ok()?,
            ],
        })
    })
    .as_ref()
}

fn mutate(base: &[u8], edits: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    let mut b = base.to_vec();
    for &(at, v) in edits {
        let i = at % b.len();
        b[i] = v;
    }
    if let Some(c) = cut {
        b.truncate(c % (b.len() + 1));
    }
    b
}

/// Everything a command session does first with a dump.
fn work_over(d: DumpFile) {
    let mut d = d;
    let _ = d.module_list();
    let _ = d.context(0);
    let mut buf = [0u8; 64];
    let _ = d.read_virtual_direct(0xffff_8504_2989_2120, &mut buf);
    let _ = d.read_physical(0x1ad000, &mut buf);
    let Ok(mut k) = Kernel::open(Box::new(d), SymbolPath::parse("")) else {
        return;
    };
    let _ = k.modules();
    let _ = k.bugcheck();
    let _ = k.kdbg();
    if let Ok(ctx) = k.processor_context(0) {
        let s = k.unwind(Regs::from_context(&ctx), None, true);
        assert!(s.frames.len() <= 256);
    }
    let _ = k.processes();
}

/// Header fields that steer the parse: counts, offsets and sizes of the triage sections and
/// the dump type.
const HOT: [usize; 12] = [
    0x34, 0x88, 0xF98, 0x2008, 0x2028, 0x202C, 0x2030, 0x2034, 0x2038, 0x2048, 0x2068, 0x2070,
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_dumps_never_panic(
        edits in prop::collection::vec((0usize..0x30000, any::<u8>()), 0..24),
        hot in prop::collection::vec((0usize..HOT.len(), 0usize..4, any::<u8>()), 0..4),
        retype in prop::option::of(prop::sample::select(vec![1u8, 2, 3, 5, 6, 7, 8])),
        cut in prop::option::of(any::<usize>()),
    ) {
        let Some(i) = inputs() else { return Ok(()) };
        let mut all = edits;
        all.extend(hot.iter().map(|(f, b, v)| (HOT[*f] + b, *v)));
        if let Some(t) = retype {
            all.push((0xF98, t));
        }
        let bytes = mutate(&i.dump, &all, cut);
        if let Ok(d) = DumpFile::from_bytes("fuzzed.dmp", bytes) {
            work_over(d);
        }
    }

    #[test]
    fn mutated_images_never_panic(
        which in 0usize..2,
        edits in prop::collection::vec((0usize..0x1000, any::<u8>()), 0..8),
        far in prop::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        cut in prop::option::of(any::<usize>()),
    ) {
        let Some(i) = inputs() else { return Ok(()) };
        let mut all = edits;
        all.extend(far);
        let bytes = mutate(&i.images[which], &all, cut);
        if let Ok(mut img) = FileImage::new(bytes) {
            let h = img.headers.clone();
            let _ = pe::codeview(&h, &mut img);
            let _ = pe::exports(&h, &mut img);
            if let Ok(t) = pe::pdata(&h, &mut img) {
                let _ = pe::lookup(&t, 0x334c);
            }
        }
    }
}

#[test]
fn the_unmutated_inputs_open() {
    let Some(i) = inputs() else { return };
    let d = DumpFile::from_bytes("triage.dmp", i.dump.clone()).unwrap();
    let mut k = Kernel::open(Box::new(d), SymbolPath::parse("")).unwrap();
    assert_eq!(k.modules().unwrap().len(), 151);
    for img in &i.images {
        let mut f = FileImage::new(img.clone()).unwrap();
        let h = f.headers.clone();
        assert!(pe::codeview(&h, &mut f).unwrap().is_some());
        assert!(!pe::pdata(&h, &mut f).unwrap().is_empty());
    }
}

struct Env0;

impl kdnet_commands::expr::Env for Env0 {
    fn symbol(&mut self, module: Option<&str>, name: &str) -> Option<u64> {
        (module.is_none() && name == "nt").then_some(0xfffff805_5c400000)
    }
    fn register(&mut self, name: &str) -> Result<u64, kdnet_commands::expr::ExprError> {
        (name == "rsp")
            .then_some(0x1000)
            .ok_or_else(|| kdnet_commands::expr::ExprError::BadRegister(name.into()))
    }
    fn read(&mut self, addr: u64, _size: u8) -> Option<u64> {
        (addr < 0x2000).then_some(addr)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn expressions_never_panic_and_errors_point_inside(
        text in prop_oneof![
            ".{0,80}",
            "[0-9a-fx`n()@!+*/%&|^~<>=-poiqwdbyrsptn ]{0,60}",
        ],
    ) {
        use kdnet_commands::expr::{self, ExprError};
        match expr::parse(&text) {
            Ok(e) => {
                let _ = expr::eval(&e, &mut Env0);
            }
            Err(ExprError::Syntax { column, .. }) => {
                prop_assert!(column >= 1 && column <= text.len() + 1, "{column} in {text:?}");
            }
            Err(other) => prop_assert!(false, "parse gave {other:?}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    /// The script language: any text parses or fails with a position inside the text; running
    /// substitution over it never panics either.
    #[test]
    fn scripts_parse_or_say_where(
        parts in prop::collection::vec(
            prop::sample::select(vec![
                "$x", "$x.held[0].owners", " = ", "!locks", ".foreach", " (", "t", " in ", ")",
                " {", "}", ".if", ".else", ".echo hi $t", ".time", " 5", ".snapshot", " a-b",
                ";", "\n", "$$ c\n", "\"", "==", " > ", "0n12", "é", "{{", "[", "]", "..",
            ]),
            0..40,
        )
    ) {
        let text: String = parts.concat();
        match kdnet_commands::script::parse(&text) {
            Ok(_) => {}
            Err(e) => {
                let lines = text.split('\n').count();
                prop_assert!(e.pos.line >= 1 && e.pos.line <= lines, "{e} in {text:?}");
                prop_assert!(e.pos.column >= 1, "{e}");
                let line = text.split('\n').nth(e.pos.line - 1).unwrap_or("");
                prop_assert!(e.pos.column <= line.chars().count() + 1, "{e} in {text:?}");
            }
        }
        let mut vars = std::collections::HashMap::new();
        vars.insert("x".to_string(), serde_json::json!({"held": [{"owners": [1, 2]}]}));
        let _ = kdnet_commands::script::substitute(&text, &vars);
    }
}
