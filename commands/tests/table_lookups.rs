//! What the commands look up in the kernel's symbol table is recorded, not kept by hand: every
//! registered command's examples, and the bundled scripts (`scripts/*.kds`, which the watcher
//! and the demo run), run on the simulator in every scenario over the real table of every build
//! in ../shared/symbols, with the table recording its lookups. The union is
//! `sim/command-lookups.txt`, from which the simulator's compact built-in table is cut (with
//! what the simulator itself writes); this test fails when the file differs from what the
//! commands look up. `KDNET_BLESS=1` rewrites it; then regenerate the built-in table
//! (`scripts/gen-builtin-tables.sh`, checked by kdnet-sim's `builtin_table` test).

use std::path::{Path, PathBuf};

use kdnet_commands::engine::Engine;
use kdnet_commands::script::{Runner, parse};
use kdnet_model::nt::Kernel;
use kdnet_sim::scenario::Facts;
use kdnet_sim::{Machine, Scenario, SimConfig, TableSource};
use kdnet_symbols::path::{SymbolPath, Tables};
use kdnet_symbols::{Lookups, PdbId, TypeTable, isf};
use kdnet_testkit::local::LocalTarget;

mod common;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The kernel table, handed to the model through the symbol path (it records what is asked).
#[derive(Debug)]
struct Recorded(TypeTable);

impl Tables for Recorded {
    fn source(&self) -> &str {
        "recorded"
    }

    fn table(&self, id: &PdbId) -> Option<TypeTable> {
        (self.0.id.as_ref() == Some(id)).then(|| self.0.clone())
    }
}

/// Every example of every command, then every bundled script, on `e`.
fn run_everything(e: &mut Engine, facts: &Facts, scratch: &Path) {
    for (_, line) in common::example_lines(facts, scratch) {
        let _ = e.run(&line);
    }
    for name in ["hang.kds", "network-hang.kds", "bugcheck.kds"] {
        let text = std::fs::read_to_string(repo().join("scripts").join(name)).unwrap();
        let stmts = parse(&text).unwrap_or_else(|err| panic!("{name}: {err}"));
        Runner::new(e, scratch.to_path_buf()).run(&stmts, &mut |_| {});
    }
}

/// The builds of ../shared/symbols the simulator builds a machine for (9600 and 14393 lack
/// what it writes: `MmPagedPoolCommit`, `_MI_PARTITION.Vp.SharedCommit`, `_KWAIT_CHAIN_ENTRY`'s
/// `Thread`). A build that starts working, or stops, fails the test.
const SIMULATED: &[u32] = &[7601, 9600, 14393, 17763, 19041, 20348, 22000];

/// The lookups of the commands over the real table `file`, in every scenario; None when the
/// simulator does not build that build.
fn lookups_over(file: &Path, scratch: &Path) -> Option<Lookups> {
    let mut table = isf::load_file(file).unwrap();
    let sim_table = table.clone();
    let recording = table.record();
    let recorded = std::sync::Arc::new(Recorded(table));
    for scenario in Scenario::ALL {
        let config = SimConfig {
            build: build_of(file),
            table: TableSource::File(file.to_path_buf()),
            scenario,
            cpus: 4,
            resources: 300,
            hang_after: None,
            bugcheck_after: None,
            seed: 11,
            print_every: std::time::Duration::from_secs(3600),
            booted_nodebug: false,
            irps: 0,
            bugcheck_at_break_in: None,
        };
        let machine = match Machine::build_with_table(config, sim_table.clone()) {
            Ok(m) => m,
            Err(err) if !SIMULATED.contains(&build_of(file)) => {
                eprintln!(
                    "NOTE: the simulator does not build {} ({err}); its lookups are not recorded",
                    build_of(file)
                );
                return None;
            }
            Err(err) => panic!("{} {scenario}: {err}", file.display()),
        };
        let facts = machine.facts().clone();
        let cpus = machine.system().cpus.len() as u32;
        let path = SymbolPath::parse("").with_tables(recorded.clone());
        let kernel = Kernel::open(Box::new(LocalTarget::new(machine, cpus)), path).unwrap();
        assert_eq!(kernel.nt_source, "recorded", "{}", file.display());
        let mut e = Engine::new(kernel);
        run_everything(&mut e, &facts, scratch);
    }
    Some(recording.lookups())
}

/// The build of a kernel table, from the version in its file name's GUID as ../shared lists it.
fn build_of(file: &Path) -> u32 {
    let name = file.file_name().unwrap().to_string_lossy().to_string();
    const BUILDS: &[(&str, u32)] = &[
        ("339E74133576439CBCDF7E0229DA3773", 7601),
        ("22597D0B40394E23936F6A24C6C52D5B", 9600),
        ("517E128F7B7C4EA79491DE6B9B9CE190", 14393),
        ("A1E1C9A90091DA9805D0EBA0470BEC85", 17763),
        ("BBED7C2955FBE4522AAA23F4B8677AD9", 19041),
        ("C2EADB24A615E9472CE47C8ADD31F130", 20348),
        ("32C1A669D5FFEFD41091F636CFDB6E99", 22000),
    ];
    BUILDS
        .iter()
        .find(|(g, _)| name.starts_with(g))
        .map(|b| b.1)
        .unwrap_or_else(|| panic!("{name}: a kernel table of a build this test does not know"))
}

const HEADER: &str = "\
# What the commands look up in the kernel's table, recorded by running every registered command's
# examples and bundled scripts on the simulator over the real tables of ../shared/symbols
# (every build the simulator builds; commands/tests/table_lookups.rs).
# Generated: rerun that test with KDNET_BLESS=1 to rewrite it, never edit. The simulator's compact
# built-in table (symbols/builtin) carries what of this the 20348 table has.
";

#[test]
fn the_simulators_list_of_lookups_is_what_the_commands_look_up() {
    let Some(shared) = kdnet_testkit::shared("symbols") else {
        return;
    };
    let dir = shared.join("symbols/ntkrnlmp.pdb");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".json.xz"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 7, "the seven builds of ../shared/symbols");
    let scratch = std::env::temp_dir().join(format!("kdnet-table-lookups-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let mut all = Lookups::default();
    let mut recorded = Vec::new();
    for f in &files {
        if let Some(l) = lookups_over(f, &scratch) {
            all.merge(&l);
            recorded.push(build_of(f));
        }
    }
    recorded.sort();
    assert_eq!(recorded, SIMULATED, "the builds the simulator builds");
    let _ = std::fs::remove_dir_all(&scratch);
    let fresh = format!("{HEADER}{}", all.to_lines());
    let file = repo().join("sim/command-lookups.txt");
    let on_disk = std::fs::read_to_string(&file).unwrap_or_default();
    if on_disk == fresh {
        return;
    }
    if std::env::var_os("KDNET_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&file, fresh).unwrap();
        return;
    }
    let old = Lookups::parse(&on_disk).unwrap_or_default();
    let added = Lookups::parse(&fresh).unwrap();
    let only = |a: &Lookups, b: &Lookups| {
        let mut d = a.clone();
        d.types.retain(|x| !b.types.contains(x));
        d.fields.retain(|x| !b.fields.contains(x));
        d.enums.retain(|x| !b.enums.contains(x));
        d.symbols.retain(|x| !b.symbols.contains(x));
        d.to_lines()
    };
    panic!(
        "sim/command-lookups.txt differs from what the commands look up (rerun with \
         KDNET_BLESS=1 to rewrite it, then scripts/gen-builtin-tables.sh)\n\
         looked up but not listed:\n{}\nlisted but not looked up:\n{}",
        only(&added, &old),
        only(&old, &added)
    );
}
