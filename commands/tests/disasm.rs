//! Disassembly: `u`, `ub` and `uf` on the simulated machine of every shared build (whose code
//! agrees with its stacks and unwind data) and on the real triage dump, instruction by
//! instruction against binutils' objdump over the same bytes of the real amdppm.sys.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{BUILDS, sim_kernel_with};
use kdnet_commands::engine::Engine;
use kdnet_sim::Scenario;
use serde_json::Value;

fn run(e: &mut Engine, cmd: &str) -> Value {
    let o = e.run(cmd);
    assert!(o.ok(), "{cmd}: {:?}", o.error);
    assert!(o.incomplete.is_empty(), "{cmd}: {:?}", o.incomplete);
    common::numbers(o.result)
}

/// `module!function` of `module!function+0x…`.
fn function_of(site: &str) -> &str {
    site.split('+').next().unwrap_or(site)
}

/// The simulated images' `.pdata` records: (function start VA, end VA).
type Records = BTreeMap<u64, u64>;

#[test]
fn every_return_address_follows_a_call_to_the_frame_it_returns_from() {
    for build in BUILDS {
        for scenario in [Scenario::Deadlock, Scenario::IrpDoubleComplete] {
            let mut records = Records::new();
            let Some((k, p)) = sim_kernel_with(build, scenario, |m| {
                for rec in &m.system().modules {
                    for f in rec.image.frames.values() {
                        records.insert(
                            rec.image.base + u64::from(f.rva),
                            rec.image.base + u64::from(f.end),
                        );
                    }
                }
            }) else {
                return;
            };
            let mut e = Engine::new(k);
            let mut functions: BTreeSet<String> = BTreeSet::new();
            // Each return address, and the routines the stacks say are called from there.
            let mut callees: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
            for t in &p.threads {
                // A thread running on another processor is seen through that processor's
                // state, which the walk may leave early: its frames so far count.
                let j = if t.state == kdnet_sim::system::ThreadState::Running {
                    let o = e.run(&format!("!thread {:x}", t.ethread));
                    assert!(o.ok(), "{:?}", o.error);
                    common::numbers(o.result)
                } else {
                    run(&mut e, &format!("!thread {:x}", t.ethread))
                };
                let frames = j["frames"].as_array().unwrap().clone();
                for w in frames.windows(2) {
                    // w[0] returns into w[1]'s function, from a call to w[0]'s.
                    let callee = function_of(w[0]["call_site"].as_str().unwrap()).to_string();
                    if callee == "nt!RtlpBreakWithStatusInstruction" {
                        // A break-in stopped the processor here: no call was made.
                        continue;
                    }
                    let ret = w[0]["return_address"].as_u64().unwrap();
                    functions.insert(function_of(w[1]["call_site"].as_str().unwrap()).into());
                    callees.entry(ret).or_default().insert(callee);
                }
            }
            assert!(callees.len() > 8, "{build}: {}", callees.len());
            for (ret, called) in &callees {
                let u = run(&mut e, &format!("ub {ret:x} L1"));
                let i = &u["instructions"][0];
                assert_eq!(i["mnemonic"], "call", "{build} {scenario:?} {u}");
                let len = i["bytes"].as_str().unwrap().len() as u64 / 2;
                assert_eq!(
                    i["address"].as_u64().unwrap() + len,
                    *ret,
                    "{build}: the call ends at the return address"
                );
                if i["operands"] == "rax" {
                    // Only where the stacks call different routines from one place.
                    assert!(called.len() > 1, "{build} {ret:#x} {called:?}");
                    continue;
                }
                let target = i["target"].as_u64().unwrap();
                let name = if i["operands"].as_str().unwrap().starts_with("qword ptr [") {
                    // Through an import slot: it holds the callee's address.
                    let s = run(&mut e, &format!("dps {target:x} L1"));
                    s["symbols"][0].as_str().unwrap().to_string()
                } else {
                    i["target_symbol"].as_str().unwrap().to_string()
                };
                assert_eq!(
                    called.iter().collect::<Vec<_>>(),
                    [&name],
                    "{build} {scenario:?} at {ret:#x}"
                );
            }
            // Every function a stack passes through: `uf` covers exactly its `.pdata` record,
            // valid instructions from its prolog to its end.
            for f in &functions {
                let j = run(&mut e, &format!("uf {f}"));
                let begin = j["function"]["begin"].as_u64().unwrap();
                let end = j["function"]["end"].as_u64().unwrap();
                assert_eq!(records.get(&begin), Some(&end), "{build} {f}");
                let insns = j["instructions"].as_array().unwrap();
                let mut at = begin;
                for i in insns {
                    assert_eq!(i["address"].as_u64(), Some(at), "{build} {f}");
                    assert!(!i["invalid"].as_bool().unwrap(), "{build} {f} {i}");
                    at += i["bytes"].as_str().unwrap().len() as u64 / 2;
                }
                assert_eq!(at, end, "{build} {f}");
                // It ends in its epilog's `ret`, or (where its record is too short for one
                // after its last call) in that call.
                let last = insns.last().unwrap()["mnemonic"].as_str().unwrap();
                assert!(last == "ret" || last == "call", "{build} {f}: {last}");
                assert_eq!(insns[0]["label"], f.as_str());
            }
        }
    }
}

#[test]
fn unreadable_code_ends_the_listing_and_says_so() {
    let Some((k, p)) = sim_kernel_with(20348, Scenario::Deadlock, |_| {}) else {
        return;
    };
    let mut e = Engine::new(k);
    // 64 instructions; listed again, nothing is read again.
    let o = e.run("u nt!KiSwapThread L40");
    assert!(o.ok() && o.complete, "{:?}", o.error);
    assert!(o.cost.round_trips > 0);
    assert_eq!(
        common::numbers(o.result)["instructions"]
            .as_array()
            .unwrap()
            .len(),
        64
    );
    let again = e.run("u nt!KiSwapThread L40");
    assert_eq!(again.cost.round_trips, 0);
    // A page below the kernel that nothing maps.
    let hole = p.kernel_base - 0x10_0000;
    let o = e.run(&format!("u {hole:x}"));
    assert!(o.ok());
    assert!(!o.complete);
    assert!(o.text.contains("??              ???"), "{}", o.text);
    let j = common::numbers(o.result);
    assert_eq!(j["unreadable"].as_u64(), Some(hole));
    assert!(j["instructions"].as_array().unwrap().is_empty());
    // No unwind record covers the break instruction: uf says to use u.
    let o = e.run("uf nt!RtlpBreakWithStatusInstruction");
    assert!(!o.ok());
    assert!(o.error.unwrap().contains("use u"));
    // A plain `u` goes on where the last one stopped.
    let a = run(&mut e, "u nt!KiSwapContext L2");
    let b = run(&mut e, "u");
    assert_eq!(b["address"], a["next"]);
    // Before address 0 there is nothing to decode: said, not shown as an empty listing.
    let o = e.run("ub 0 L2");
    assert!(o.ok() && !o.complete, "{:?}", o.incomplete);
    assert!(
        o.incomplete
            .iter()
            .any(|w| w.contains("no run of valid instructions"))
    );
    // Bad lengths are refused.
    assert!(!e.run("u nt!KiSwapContext L0").ok());
    assert!(!e.run("u nt!KiSwapContext L100000").ok());
}

/// objdump's instructions over `bytes` at `va`: (address, length, mnemonic).
fn objdump(bytes: &[u8], va: u64) -> Option<Vec<(u64, u64, String)>> {
    let dir = std::env::temp_dir().join(format!("kdnet-objdump-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("code.bin");
    std::fs::write(&file, bytes).unwrap();
    let out = std::process::Command::new("objdump")
        .args(["-D", "-b", "binary", "-m", "i386:x86-64", "-M", "intel"])
        .arg(format!("--adjust-vma={va:#x}"))
        .arg(&file)
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = match out {
        Ok(o) if o.status.success() => o,
        _ => {
            assert!(
                std::env::var_os("KDNET_REQUIRE_OBJDUMP").is_none(),
                "KDNET_REQUIRE_OBJDUMP is set but objdump did not run"
            );
            eprintln!("objdump (binutils) is not installed: the comparison was skipped");
            return None;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut v: Vec<(u64, u64, String)> = Vec::new();
    for line in text.lines() {
        // "    1000:\t48 89 5c 24 08 \tmov    QWORD PTR [rsp+0x8],rbx"
        let mut parts = line.split('\t');
        let (Some(a), Some(b)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Some(a) = a.trim().strip_suffix(':') else {
            continue;
        };
        let Ok(addr) = u64::from_str_radix(a, 16) else {
            continue;
        };
        let n = b.split_whitespace().count() as u64;
        match parts.next() {
            Some(m) => {
                const PREFIXES: [&str; 9] = [
                    "lock", "rep", "repz", "repnz", "repe", "repne", "data16", "cs", "notrack",
                ];
                let mnemonic = m
                    .split_whitespace()
                    .find(|w| !PREFIXES.contains(w))
                    .unwrap_or("")
                    .to_string();
                v.push((addr, n, mnemonic));
            }
            // A continuation line of a long instruction's bytes.
            None => {
                if let Some(last) = v.last_mut() {
                    last.1 += n;
                }
            }
        }
    }
    Some(v)
}

#[test]
fn amdppm_faulting_function_matches_objdump_instruction_by_instruction() {
    let Some(k) = common::triage_kernel() else {
        return;
    };
    let mut e = Engine::new(k);
    let j = run(&mut e, "uf amdppm!WriteIoMemRawEx");
    let begin = j["function"]["begin"].as_u64().unwrap();
    let end = j["function"]["end"].as_u64().unwrap();
    let insns = j["instructions"].as_array().unwrap();
    let faulting = begin + 0x70;
    assert!(
        insns
            .iter()
            .any(|i| i["address"].as_u64() == Some(faulting)),
        "+0x70 is an instruction boundary"
    );
    // The same bytes (from the dump, or amdppm.sys on the symbol path where the dump lacks
    // them: said), given to objdump.
    let from_files = j["from_files"].as_array().unwrap();
    assert!(
        from_files.is_empty() || from_files[0] == "amdppm.sys",
        "{from_files:?}"
    );
    let hex: String = insns.iter().map(|i| i["bytes"].as_str().unwrap()).collect();
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    assert_eq!(bytes.len() as u64, end - begin);
    let Some(theirs) = objdump(&bytes, begin) else {
        return;
    };
    // The instruction's own name, past any prefix (`lock or` is `or`).
    let ours: Vec<(u64, u64, String)> = insns
        .iter()
        .map(|i| {
            let m = i["mnemonic"].as_str().unwrap();
            let m = m.split_whitespace().last().unwrap_or(m);
            (
                i["address"].as_u64().unwrap(),
                i["bytes"].as_str().unwrap().len() as u64 / 2,
                if m == "int" && i["operands"] == "3" {
                    "int3".into()
                } else {
                    m.to_string()
                },
            )
        })
        .collect();
    assert_eq!(ours.len(), theirs.len(), "{ours:#?}\n{theirs:#?}");
    for (o, t) in ours.iter().zip(&theirs) {
        assert_eq!((o.0, o.1), (t.0, t.1), "boundaries differ at {:#x}", o.0);
        assert_eq!(o.2, t.2, "mnemonics differ at {:#x}", o.0);
    }
    // `u` at the faulting address shows the instruction there first, labelled as WinDbg does.
    let u = run(&mut e, "u amdppm!WriteIoMemRawEx+0x70 L1");
    assert_eq!(u["instructions"][0]["label"], "amdppm!WriteIoMemRawEx+0x70");
    let t = &theirs.iter().find(|t| t.0 == faulting).unwrap().2;
    assert_eq!(u["instructions"][0]["mnemonic"], t.as_str());
}

#[test]
fn x_lists_the_matching_symbols_by_address() {
    let Some((k, p)) = sim_kernel_with(20348, Scenario::Deadlock, |_| {}) else {
        return;
    };
    let mut e = Engine::new(k);
    let j = run(&mut e, "x NT!kiswap*");
    let found = j["symbols"].as_array().unwrap();
    let names: Vec<&str> = found.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"nt!KiSwapContext"), "{names:?}");
    assert!(names.contains(&"nt!KiSwapThread"), "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| n.to_lowercase().starts_with("nt!kiswap"))
    );
    let addrs: Vec<u64> = found
        .iter()
        .map(|s| s["address"].as_u64().unwrap())
        .collect();
    assert!(addrs.windows(2).all(|w| w[0] <= w[1]), "by address");
    let at = run(&mut e, "? nt!KiSwapContext")["value"].as_u64();
    let i = names.iter().position(|n| *n == "nt!KiSwapContext").unwrap();
    assert_eq!(Some(addrs[i]), at);
    assert_eq!(found[i]["source"], "symbols");
    // A driver with exports only: its names come from them.
    let (file, base, _, exports) = p
        .modules
        .iter()
        .find(|m| !m.3.is_empty() && m.0 != "ntoskrnl.exe")
        .unwrap()
        .clone();
    let j = run(&mut e, &format!("x {file}!*"));
    let got = j["symbols"].as_array().unwrap();
    assert_eq!(got.len(), exports.len(), "{file}");
    assert!(got.iter().all(|s| s["source"] == "exports"));
    assert!(got.iter().all(|s| s["address"].as_u64().unwrap() > base));
    assert!(!e.run("x nosuchmodule!*").ok());
    assert!(!e.run("x KiSwapContext").ok());
}
