//! `dt`'s options on the simulated machine of every shared build, against what the simulator
//! planted: `-r`, `-b`, `-a`, `-l`, `-c`, `-v`, `-y`, `-o`, type patterns, lists and strings
//! shown inline, and the bounds that make a result say it is incomplete.

mod common;

use common::{BUILDS, sim_kernel};
use kdnet_commands::engine::Engine;
use kdnet_sim::Scenario;
use serde_json::Value;

fn one(e: &mut Engine, cmd: &str) -> (String, Value) {
    let o = e.run(cmd);
    assert!(o.ok(), "{cmd}: {:?}", o.error);
    assert!(o.complete, "{cmd}: {:?}", o.incomplete);
    (o.text, common::numbers(o.result))
}

fn field<'a>(fields: &'a Value, name: &str) -> &'a Value {
    fields
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {fields}"))
}

#[test]
fn dt_options_on_every_build() {
    for build in BUILDS {
        let Some((k, p)) = sim_kernel(build, Scenario::Deadlock) else {
            return;
        };
        let mut e = Engine::new(k);
        let cpu = e.processor as usize;
        let current = p.cpus[cpu].1;

        // -r1: the embedded ApcState's fields; its Process pointer is not followed at depth 1.
        let (text, j) = one(&mut e, "dt -r1 nt!_KTHREAD @$thread ApcState");
        let apc = &j["fields"][0];
        assert_eq!(apc["name"], "ApcState");
        let process = field(&apc["fields"], "Process");
        let eprocess = process["value"].as_u64().unwrap();
        assert!(process.get("fields").is_none(), "{build}: {process}");
        assert!(
            text.contains("\n      +0x"),
            "{build}: nested lines are indented\n{text}"
        );
        // -r2 follows it: the process's own fields, read where the pointer leads.
        let (_, j) = one(&mut e, "dt -r2 nt!_KTHREAD @$thread ApcState");
        let process = field(&j["fields"][0]["fields"], "Process");
        let dtb = field(&process["fields"], "DirectoryTableBase");
        let (_, d) = one(
            &mut e,
            &format!("dq {eprocess:#x}+{:#x} L1", dtb["offset"].as_u64().unwrap()),
        );
        assert_eq!(dtb["value"], d["values"][0], "{build}");

        // -a: each wait block on its line, with its fields; -a2 the first two.
        let (text, j) = one(&mut e, "dt -a nt!_KTHREAD @$thread WaitBlock");
        let blocks = j["fields"][0]["fields"].as_array().unwrap();
        assert_eq!(blocks.len(), 4, "{build}");
        assert_eq!(blocks[3]["name"], "[03]");
        assert!(
            blocks[0]["fields"]
                .as_array()
                .is_some_and(|f| !f.is_empty())
        );
        assert!(
            text.contains("\n       [01] _KWAIT_BLOCK\n"),
            "{build}\n{text}"
        );
        let (_, j) = one(&mut e, "dt -a2 nt!_KTHREAD @$thread WaitBlock");
        assert_eq!(j["fields"][0]["fields"].as_array().unwrap().len(), 2);

        // -l: the active process list from its first process, in the planted order, until it
        // comes back round (the list head is the last record, as WinDbg shows it).
        let (_, j) = one(&mut e, "dt nt!_EPROCESS ActiveProcessLinks");
        let links = j["fields"][0]["offset"].as_u64().unwrap();
        let (text, j) = one(
            &mut e,
            &format!(
                "dt nt!_EPROCESS -l ActiveProcessLinks.Flink poi(nt!PsActiveProcessHead)-{links:#x} \
                 UniqueProcessId ImageFileName"
            ),
        );
        let list = j["list"].as_array().unwrap();
        let names: Vec<&str> = list
            .iter()
            .map(|r| {
                field(&r["fields"], "ImageFileName")["value"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        // (The idle process is on no list.)
        let active: Vec<_> = p.facts.processes.iter().filter(|x| x.1 != 0).collect();
        let planted: Vec<&str> = active.iter().map(|x| x.2.as_str()).collect();
        assert_eq!(names[..names.len() - 1], planted[..], "{build}");
        assert_eq!(list[0]["address"].as_u64(), Some(active[0].0), "{build}");
        assert_eq!(
            field(&list[1]["fields"], "UniqueProcessId")["value"].as_u64(),
            Some(active[1].1)
        );
        assert!(text.contains(&format!(
            "ActiveProcessLinks.Flink at 0x{:08x}`{:08x}\n---",
            list[1]["address"].as_u64().unwrap() >> 32,
            list[1]["address"].as_u64().unwrap() as u32
        )));

        // An embedded list entry shows its links; a UNICODE_STRING its text.
        let entry = if e.run("dt nt!_KLDR_DATA_TABLE_ENTRY").ok() {
            "_KLDR_DATA_TABLE_ENTRY"
        } else {
            "_LDR_DATA_TABLE_ENTRY"
        };
        let (text, j) = one(
            &mut e,
            &format!("dt nt!{entry} poi(nt!PsLoadedModuleList) InLoadOrderLinks BaseDllName"),
        );
        let links = &j["fields"][0]["value"];
        let (_, d) = one(&mut e, "dq poi(nt!PsLoadedModuleList) L2");
        assert_eq!(links["flink"], d["values"][0], "{build}");
        assert_eq!(links["blink"], d["values"][1], "{build}");
        let name = p.modules[0].0.rsplit('\\').next().unwrap().to_string();
        assert_eq!(j["fields"][1]["value"], name.as_str(), "{build}");
        assert!(
            text.contains(&format!(": _UNICODE_STRING \"{name}\"")),
            "{text}"
        );
        assert!(text.contains(": _LIST_ENTRY [ 0x"), "{text}");

        // -y: fields starting with a name; several FIELD words.
        let (_, j) = one(&mut e, "dt nt!_EPROCESS @$proc -y Image");
        let fields = j["fields"].as_array().unwrap();
        assert!(
            fields
                .iter()
                .all(|f| f["name"].as_str().unwrap().starts_with("Image"))
        );
        assert!(fields.iter().any(|f| f["name"] == "ImageFileName"));
        let (_, j) = one(
            &mut e,
            &format!("dt nt!_EPROCESS {eprocess:#x} UniqueProcessId ImageFileName"),
        );
        assert_eq!(j["fields"].as_array().unwrap().len(), 2);

        // -c: one line for the structure; -o: no offsets; -v: sizes and member counts.
        let (text, _) = one(&mut e, "dt -c nt!_LIST_ENTRY poi(nt!PsLoadedModuleList)");
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains("+0x000 Flink 0x") && text.contains(" +0x008 Blink 0x"));
        let (text, _) = one(&mut e, "dt -o nt!_LIST_ENTRY");
        assert!(!text.contains("+0x"), "{text}");
        let (text, j) = one(&mut e, "dt -v nt!_LIST_ENTRY");
        assert_eq!(
            j["description"],
            "struct _LIST_ENTRY, 2 elements, 0x10 bytes"
        );
        assert!(text.contains(": Ptr64 to struct _LIST_ENTRY, 2 elements, 0x10 bytes"));

        // Type patterns list the types; an unreadable address is an error.
        let (text, j) = one(&mut e, "dt nt!_KTHREAD*");
        let types = j["types"].as_array().unwrap();
        assert!(
            types.iter().any(|t| t == "nt!_KTHREAD"),
            "{build}: {types:?}"
        );
        assert!(
            types
                .iter()
                .all(|t| t.as_str().unwrap().starts_with("nt!_KTHREAD"))
        );
        assert!(text.contains("          nt!_KTHREAD\n"));
        let o = e.run("dt nt!_LIST_ENTRY 0 -n Flink");
        assert!(!o.ok(), "address 0 is unreadable");

        // -b: the structure in full, arrays element by element.
        let (text, j) = one(&mut e, "dt -b nt!_KTHREAD @$thread WaitBlock");
        assert_eq!(j["fields"][0]["fields"].as_array().unwrap().len(), 4);
        assert!(text.contains("[00]"));
        assert_eq!(
            j["address"].as_u64(),
            Some(current),
            "{build}: @$thread is the planted thread"
        );
    }
}

#[test]
fn dt_says_when_a_bound_cut_it_and_refuses_what_it_cannot_do() {
    let Some((k, _)) = sim_kernel(20348, Scenario::Deadlock) else {
        return;
    };
    let mut e = Engine::new(k);
    // Nine levels of every pointer of a process: cut at a bound, and said so.
    let o = e.run("dt -r9 nt!_EPROCESS @$proc");
    assert!(o.ok(), "{:?}", o.error);
    assert!(!o.complete);
    assert!(
        o.incomplete.iter().any(|w| w.starts_with("dt: stopped")),
        "{:?}",
        o.incomplete
    );
    assert!(o.text.contains("INCOMPLETE: dt: stopped"));
    for bad in [
        "dt -r0 _KTHREAD",
        "dt -q _KTHREAD",
        "dt _KTHREAD -l",
        "dt _KTHREAD NoSuchField",
        "dt _EPROCESS -l ImageFileName @$proc",
        "dt _EPROCESS -l ActiveProcessLinks.Flink",
        "dt",
    ] {
        let o = e.run(bad);
        assert!(!o.ok(), "{bad}");
        assert!(!o.error.unwrap().is_empty());
    }
}
