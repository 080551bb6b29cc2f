//! `s`: memory search on the simulated machine (searched on the target's side, run by run of
//! mapped pages) and on the real triage dump (read and searched here), against what is known
//! to be there.

mod common;

use common::sim_kernel;
use kdnet_commands::engine::Engine;
use kdnet_sim::Scenario;
use serde_json::Value;

fn one(e: &mut Engine, cmd: &str) -> (String, Value, u64) {
    let o = e.run(cmd);
    assert!(o.ok(), "{cmd}: {:?}", o.error);
    assert!(o.complete, "{cmd}: {:?}", o.incomplete);
    (o.text, common::numbers(o.result), o.cost.round_trips)
}

fn hits(j: &Value) -> Vec<u64> {
    j["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_u64().unwrap())
        .collect()
}

#[test]
fn search_on_the_simulated_machine() {
    let Some((k, p)) = sim_kernel(20348, Scenario::Deadlock) else {
        return;
    };
    let mut e = Engine::new(k);
    let base = p.kernel_base;
    // The image header, by bytes and by a character constant; addresses only with -[1].
    let (text, j, _) = one(&mut e, "s -[1]b nt L?1000 4d 5a");
    assert_eq!(hits(&j), [base]);
    assert_eq!(text, format!("{:08x}`{:08x}\n", base >> 32, base as u32));
    let (text, j, _) = one(&mut e, "s -w nt L?1000 'MZ'");
    assert_eq!(hits(&j), [] as [u64; 0], "'MZ' is 0x4d5a: the bytes 5a 4d");
    let (_, j, _) = one(&mut e, "s -w nt L?1000 'ZM'");
    assert_eq!(hits(&j), [base]);
    assert!(text.is_empty());

    // The current thread's address in its processor's block: each match holds it, and the
    // block's CurrentThread is among them.
    let (prcb, thread) = p.cpus[e.processor as usize];
    let (text, j, _) = one(&mut e, "s -q @$prcb L?8000 @$thread");
    let found = hits(&j);
    assert!(found.contains(&(prcb + 8)), "{found:x?}");
    for h in &found {
        assert_eq!(h % 8, 0);
        let (_, d, _) = one(&mut e, &format!("dq {h:#x} L1"));
        assert_eq!(d["values"][0].as_u64(), Some(thread));
    }
    assert_eq!(text.lines().count(), found.len(), "{text}");
    assert!(text.contains(&format!("  {:08x}`{:08x} ", thread >> 32, thread as u32)));

    // Aligned element searches find a subset of the byte search's matches.
    let pattern = thread.to_le_bytes()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ");
    let (_, bytes, _) = one(&mut e, &format!("s @$prcb L?8000 {pattern}"));
    let (_, dwords, _) = one(&mut e, &format!("s -d @$prcb L?8000 {:#x}", thread as u32));
    let (b, d) = (hits(&bytes), hits(&dwords));
    assert!(!d.is_empty() && d.iter().all(|h| h % 4 == 0 && b.contains(h)));

    // A string in the image, ASCII and UTF-16.
    let (_, j, _) = one(&mut e, "s -a nt L?1000 \"MZ\"");
    assert_eq!(hits(&j), [base]);

    // Unmapped memory is counted and not read; a range of it costs no memory read per page.
    let (text, j, _) = one(&mut e, "s -b 0 L?100000 1");
    assert!(hits(&j).is_empty());
    assert_eq!(j["unmapped_bytes"].as_u64(), Some(0x100000));
    assert!(text.contains("not mapped"));

    // A megabyte of the kernel image: searched on the target's side, a handful of requests
    // where reading it would take hundreds.
    let (_, _, searched) = one(&mut e, "s -q nt L?100000 0x1122334455667788");
    assert!(searched < 32, "{searched} round trips");

    for bad in [
        "s",
        "s nt",
        "s nt L10",
        "s -x nt L10 1",
        "s nt L?0 1",
        "s nt L20000000 1",
        "s -b nt L10 100",
        "s -w nt L10 10000",
        "s nt nt-1 1",
        "s -[9]b nt L10 1",
    ] {
        let o = e.run(bad);
        assert!(!o.ok(), "{bad}");
    }
}

#[test]
fn search_on_the_triage_dump() {
    let Some(k) = common::triage_kernel() else {
        return;
    };
    let mut e = Engine::new(k);
    // A value on the saved stack, found where it is.
    let (_, r, _) = one(&mut e, "r rsp");
    let rsp = r["rsp"].as_u64().unwrap();
    let (_, d, _) = one(&mut e, "dq @rsp+0x18 L1");
    let value = d["values"][0].as_u64().unwrap();
    let (_, j, _) = one(&mut e, &format!("s -q @rsp L?400 {value:#x}"));
    assert!(hits(&j).contains(&(rsp + 0x18)), "{j}");
    assert!(hits(&j).iter().all(|h| h % 8 == 0));
    // Far past the saved stack the dump holds nothing: those bytes were not searched, and the
    // result says it is not whole.
    let o = e.run(&format!("s -q @rsp L?1000000 {value:#x}"));
    assert!(o.ok(), "{:?}", o.error);
    assert!(
        !o.complete,
        "a search over memory the dump lacks is not whole"
    );
    assert!(
        o.incomplete.iter().any(|w| w.contains("were not searched")),
        "{:?}",
        o.incomplete
    );
}
