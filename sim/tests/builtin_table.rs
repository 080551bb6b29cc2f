//! The compact built-in table (build 20348) is exactly what the simulator needs: the demo
//! builds from it alone, the result is byte-identical to building from the full real table, and
//! the committed file is what the generator makes from the real table.

mod common;

use kdnet_sim::{Machine, Scenario, SimConfig, TableSource};

#[test]
fn demo_builds_from_the_builtin_table() {
    for sc in Scenario::ALL {
        let mut c = SimConfig::demo();
        c.scenario = sc;
        c.resources = 300;
        let m = Machine::build(c).unwrap_or_else(|e| panic!("{sc}: {e}"));
        assert_eq!(m.facts().total_resources, 300);
    }
}

#[test]
fn builtin_and_full_tables_build_the_same_machine() {
    let Some(dir) = common::shared() else { return };
    for sc in Scenario::ALL {
        let mut a = SimConfig::demo();
        a.scenario = sc;
        a.resources = 500;
        let mut b = a.clone();
        b.table = TableSource::Dir(dir.join("symbols"));
        let ma = Machine::build(a).unwrap();
        let mb = Machine::build(b).unwrap();
        assert_eq!(
            ma.system().k.mem.digest(),
            mb.system().k.mem.digest(),
            "{sc}"
        );
    }
}

#[test]
fn committed_table_is_what_the_generator_makes() {
    let Some(dir) = common::shared() else { return };
    let full = dir.join("symbols/ntkrnlmp.pdb/C2EADB24A615E9472CE47C8ADD31F130-1.json.xz");
    let fresh = kdnet_sim::layout::demo_table_json(&full).unwrap();
    assert!(
        fresh == kdnet_symbols::builtin::NT_DEMO_JSON,
        "symbols/builtin/ntkrnlmp-20348-demo.json is stale or edited: run scripts/gen-builtin-tables.sh"
    );
}
