//! The running machine's activity: bindflt's creates executed instruction by instruction on
//! every shared build, meeting an `int 3` where it was written, single-stepping by the real
//! lengths of the code, and keeping the counts a debugger can read back.

mod common;

use iced_x86::{Decoder, DecoderOptions};
use kdnet::api::{Reg, StateEvent, status};
use kdnet::target::{Resume, TargetHandler};
use kdnet_sim::activity::{LOADS_EVERY, STATUS_INVALID_PARAMETER, completes_twice, fails};
use kdnet_sim::{Machine, Scenario};

fn machine(build: u32) -> Option<Machine> {
    let c = common::config(build, Scenario::BindfltRace, 0)?;
    Some(Machine::build(c).expect("machine"))
}

fn read(m: &mut Machine, cpu: u16, a: u64, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    assert_eq!(m.read_virtual(cpu, a, &mut b), n, "read {a:#x}");
    b
}

fn q(m: &mut Machine, a: u64) -> u64 {
    u64::from_le_bytes(read(m, 0, a, 8).try_into().unwrap())
}

fn go(m: &mut Machine, trace: bool) {
    m.resumed_with(Resume {
        status: status::DBG_CONTINUE,
        trace,
        dr7: Some(0x400),
    });
}

#[test]
fn creates_run_through_bindflt_and_complete_through_iofcompleterequest() {
    for build in common::BUILDS {
        let Some(mut m) = machine(build) else { return };
        let p = m.facts().activity.clone().expect("planted");
        // The container filter loads before create 4000 (reported as Windows reports a
        // load); nothing else stops it.
        let sc = m.drive(5_000).expect("the filter's load");
        let StateEvent::LoadSymbols(l) = &sc.event else {
            panic!("{build}: {sc:?}")
        };
        assert!(
            !l.unload && l.path.ends_with("\\wcnfs.sys"),
            "{build}: {l:?}"
        );
        assert_eq!(sc.processor, p.cpu, "{build}");
        assert_eq!(m.activity().unwrap().finished, LOADS_EVERY, "{build}");
        go(&mut m, false);
        assert!(m.drive(1_000).is_none(), "{build}: nothing stops it");
        let failures = (0..5_000).filter(|&n| fails(n)).count() as u64;
        assert!(failures > 0);
        let a = m.activity().unwrap();
        assert_eq!((a.finished, a.failed), (5_000, failures), "{build}");
        // What bindflt's own code counted, in memory.
        assert_eq!(q(&mut m, p.counters), 5_000, "{build}");
        assert_eq!(q(&mut m, p.counters + 8), failures, "{build}");
        // Creates 1249 and 3749 had their IRP completed twice.
        assert_eq!(q(&mut m, p.counters + 16), 2, "{build}");
        assert_eq!((0..5_000).filter(|&n| completes_twice(n)).count(), 2);
        // The last IRP was completed: no stack location holds it.
        let irp = read(&mut m, 0, p.irp, 0x50);
        let (count, current) = (
            irp[p.irp_stack_count as usize],
            irp[p.irp_current_location as usize],
        );
        assert_eq!(current, count + 1, "{build}");
        // It unloads before create 8000, at the same base.
        let sc = m.drive(3_001).expect("the filter's unload");
        let StateEvent::LoadSymbols(u) = &sc.event else {
            panic!("{build}: {sc:?}")
        };
        assert!(
            u.unload && u.base == l.base && u.size == l.size,
            "{build}: {u:?}"
        );
        assert_eq!(m.activity().unwrap().finished, 2 * LOADS_EVERY, "{build}");
    }
}

#[test]
fn an_int3_stops_the_opener_there_and_single_steps_follow_the_code() {
    for build in common::BUILDS {
        let Some(mut m) = machine(build) else { return };
        let p = m.facts().activity.clone().expect("planted");
        let cpu = p.cpu;
        let original = read(&mut m, cpu, p.complete, 1)[0];
        assert_eq!(m.write_virtual(cpu, p.complete, &[0xCC]), 1);
        let sc = m.drive(10).expect("the breakpoint stops it");
        assert_eq!(sc.program_counter, p.complete, "{build}");
        assert_eq!(sc.thread, p.thread, "{build}: the opener's thread");
        assert_eq!(sc.processor, cpu, "{build}");
        let StateEvent::Exception(x) = &sc.event else {
            panic!("{sc:?}")
        };
        assert_eq!((x.code, x.address), (status::BREAKPOINT, p.complete));
        let c = m.context(cpu).unwrap();
        assert_eq!(c.reg(Reg::Rip), p.complete);
        assert_eq!(c.reg(Reg::Rcx), p.irp, "{build}: the IRP is the argument");
        // Called from bindflt: the return address is inside BfPreCreate.
        let ret = q(&mut m, c.reg(Reg::Rsp));
        assert!(
            (p.pre_create..p.pre_create + 0x100).contains(&ret),
            "{build}: {ret:#x}"
        );
        // The current thread of its processor is the opener.
        let mut cur = [0u8; 8];
        m.read_control_space(cpu, 3, &mut cur);
        assert_eq!(u64::from_le_bytes(cur), p.thread, "{build}");
        // Put the byte back and step: the stub's jmp lands on the worker, and each step after
        // moves by the length of the instruction there.
        assert_eq!(m.write_virtual(cpu, p.complete, &[original]), 1);
        go(&mut m, true);
        let sc = m.drive(0).expect("a step stops");
        assert_eq!(sc.program_counter, p.complete_worker, "{build}");
        let StateEvent::Exception(x) = &sc.event else {
            panic!()
        };
        assert_eq!(x.code, status::SINGLE_STEP);
        assert_ne!(sc.control.dr6 & 0x4000, 0, "DR6.BS");
        let mut at = p.complete_worker;
        for _ in 0..4 {
            let bytes = read(&mut m, cpu, at, 15);
            let len = Decoder::with_ip(64, &bytes, at, DecoderOptions::NONE)
                .decode()
                .len() as u64;
            go(&mut m, true);
            let sc = m.drive(0).expect("a step stops");
            assert_eq!(sc.program_counter, at + len, "{build}");
            at += len;
        }
        // Going on without the trap flag finishes the call and the ones after.
        go(&mut m, false);
        assert!(m.drive(100).is_none(), "{build}");
        let a = m.activity().unwrap();
        assert_eq!(a.finished, a.started, "{build}");
        assert!(a.finished >= 100);
        // The processor's thread is what it was before the stop.
        let mut cur = [0u8; 8];
        m.read_control_space(cpu, 3, &mut cur);
        assert_ne!(u64::from_le_bytes(cur), p.thread, "{build}");
    }
}

#[test]
fn a_failed_create_returns_status_invalid_parameter() {
    let Some(mut m) = machine(20348) else { return };
    let p = m.facts().activity.clone().unwrap();
    let first = (0..100_000).find(|&n| fails(n)).unwrap();
    assert!(m.drive(first).is_none());
    // Stop at the completion of the failing one and look at its IRP.
    let original = read(&mut m, p.cpu, p.complete, 1)[0];
    m.write_virtual(p.cpu, p.complete, &[0xCC]);
    m.drive(1).expect("stops");
    let c = m.context(p.cpu).unwrap();
    let st = u32::from_le_bytes(
        read(&mut m, p.cpu, c.reg(Reg::Rcx) + p.irp_status, 4)
            .try_into()
            .unwrap(),
    );
    assert_eq!(st, STATUS_INVALID_PARAMETER);
    m.write_virtual(p.cpu, p.complete, &[original]);
    go(&mut m, false);
    assert!(m.drive(0).is_none());
    assert_eq!(m.activity().unwrap().failed, 1);
}
