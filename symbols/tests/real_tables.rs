//! The real kernel symbol tables in ../shared/symbols load and answer layout queries with the
//! values extensions.md lists for each build.

use std::path::PathBuf;

use kdnet_symbols::{TypeTable, isf};

fn shared() -> Option<PathBuf> {
    kdnet_testkit::shared("symbols")
}

fn load(guid: &str) -> Option<TypeTable> {
    let dir = shared()?;
    let p = dir.join(format!("symbols/ntkrnlmp.pdb/{guid}-1.json.xz"));
    Some(isf::load_file(&p).unwrap())
}

const B7601: &str = "339E74133576439CBCDF7E0229DA3773";
const B17763: &str = "A1E1C9A90091DA9805D0EBA0470BEC85";
const B20348: &str = "C2EADB24A615E9472CE47C8ADD31F130";

#[test]
fn layouts_per_build() {
    for (guid, owner_bits, state, ctx, big) in [
        (B7601, (2, 30), 0x164, 0x120, 0x18),
        (B17763, (3, 29), 0x184, 0x1f0, 0x18),
        (B20348, (3, 29), 0x184, 0x1f0, 0x20),
    ] {
        let Some(t) = load(guid) else { return };
        assert_eq!(t.id.as_ref().unwrap().guid, guid);
        assert_eq!(t.id.as_ref().unwrap().name, "ntkrnlmp.pdb");
        assert_eq!(t.size_of("_ERESOURCE").unwrap(), 0x68);
        assert_eq!(t.offset("_ERESOURCE", "ContentionCount").unwrap(), 0x44);
        assert_eq!(
            t.field("_OWNER_ENTRY", "OwnerCount").unwrap().bits(),
            Some(owner_bits)
        );
        assert_eq!(t.offset("_KTHREAD", "State").unwrap(), state);
        assert_eq!(t.offset("_ETHREAD", "Tcb.State").unwrap(), state);
        assert_eq!(
            t.offset("_KPRCB", "ProcessorState.ContextFrame").unwrap(),
            ctx
        );
        assert_eq!(
            t.offset("_KPRCB", "ProcessorState.ContextFrame.Rip")
                .unwrap(),
            ctx + 0xf8
        );
        assert_eq!(t.size_of("_POOL_TRACKER_BIG_PAGES").unwrap(), big);
        assert_eq!(t.enum_value("_KWAIT_REASON", "WrResource").unwrap(), 27);
        // 7601's table has no _KTHREAD_STATE enum at all; later ones do.
        assert_eq!(
            t.enum_name("_KTHREAD_STATE", 5),
            (guid != B7601).then_some("Waiting")
        );
        assert!(t.symbol("KdDebuggerDataBlock").is_some());
        let kwb = t.symbol("KeWaitForSingleObject").unwrap();
        assert_eq!(
            t.nearest(kwb + 0x19f),
            Some(("KeWaitForSingleObject", 0x19f))
        );
    }
}

#[test]
fn symbols_match_the_facts_sheet() {
    let Some(t) = load(B20348) else { return };
    assert_eq!(t.symbol("ExpSystemResourcesList"), Some(0xc1d3a0));
    assert_eq!(t.symbol("KiBugCheckData"), Some(0xc35de0));
    assert_eq!(t.symbol("MiSystemPartition"), Some(0xc5ed00));
    assert_eq!(
        t.offset("_MI_PARTITION", "Vp.ChargeCommitmentFailures")
            .unwrap(),
        0x4140 + 0x358
    );
    assert_eq!(
        t.offset("_KTHREAD", "WaitBlock[1].Object").unwrap(),
        0x140 + 0x30 + 0x20
    );
    let Some(t) = load(B7601) else { return };
    assert_eq!(t.symbol("MiChargeCommitmentFailures"), Some(0x222300));
    assert_eq!(t.offset("_KWAIT_BLOCK", "NextWaitBlock").unwrap(), 0x20);
}

#[test]
fn subset_round_trips_through_json() {
    let Some(t) = load(B20348) else { return };
    let s = t
        .subset(
            &["_ERESOURCE"],
            &[
                ("_KTHREAD", "WaitBlock"),
                ("_KPRCB", "ProcessorState.ContextFrame"),
            ],
            &["_KWAIT_REASON"],
            &["KiBugCheckData"],
        )
        .unwrap();
    let json = isf::to_json(&s);
    let back = isf::parse(json.as_bytes()).unwrap();
    assert_eq!(back.id, t.id);
    assert_eq!(
        back.offset("_KTHREAD", "WaitBlock[2].Object").unwrap(),
        t.offset("_KTHREAD", "WaitBlock[2].Object").unwrap()
    );
    assert_eq!(
        back.offset("_KPRCB", "ProcessorState.ContextFrame.Rsp")
            .unwrap(),
        0x1f0 + 0x98
    );
    assert_eq!(back.symbol("KiBugCheckData"), Some(0xc35de0));
    assert!(back.symbol("KeWaitForSingleObject").is_none());
    assert_eq!(isf::to_json(&back), json, "stable output");
}

#[test]
fn every_real_table_passes_the_bounds() {
    // The checks on sizes, offsets, bitfields and symbol addresses accept every real table,
    // including 17763's 264 MiB _MI_HYPER_SPACE.
    let Some(dir) = shared() else { return };
    let mut n = 0;
    for e in std::fs::read_dir(dir.join("symbols/ntkrnlmp.pdb")).unwrap() {
        let p = e.unwrap().path();
        let t = isf::load_file(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(t.counts().0 > 800, "{}", p.display());
        n += 1;
    }
    assert_eq!(n, 7);
    let t = load(B17763).unwrap();
    assert_eq!(t.size_of("_MI_HYPER_SPACE").unwrap(), 276_840_448);
}
