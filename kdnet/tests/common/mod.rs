//! What the protocol's integration tests share: a target whose memory is a hash of the
//! address, so every byte read can be checked.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Instant;

use kdnet::api::{
    Context, ControlReport, Exception64, GetVersion64, Reg, StateChange64, StateEvent, status,
};
use kdnet::target::{Activity, StopReason, TargetHandler};

pub const BASE: u64 = 0xffff_f800_0000_0000;
pub const SIZE: u64 = 16 << 20;

/// The byte at `a`: a hash of the address, so every read can be checked.
pub fn pattern(a: u64) -> u8 {
    let mut z = a.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z ^= z >> 29;
    (z.wrapping_mul(0xbf58_476d_1ce4_e5b9) >> 56) as u8
}

pub struct PatternTarget {
    pub prints: Arc<Mutex<Vec<String>>>,
    pub rip: u64,
}

impl TargetHandler for PatternTarget {
    fn version(&mut self) -> GetVersion64 {
        GetVersion64::windows_kernel(20348, BASE, BASE + 0x1000, 0)
    }
    fn read_virtual(&mut self, _cpu: u16, address: u64, buf: &mut [u8]) -> usize {
        let mut n = 0;
        for (i, b) in buf.iter_mut().enumerate() {
            let a = address.wrapping_add(i as u64);
            if !(BASE..BASE + SIZE).contains(&a) {
                break;
            }
            *b = pattern(a);
            n += 1;
        }
        n
    }
    fn read_physical(&mut self, address: u64, buf: &mut [u8]) -> usize {
        self.read_virtual(0, address + BASE, buf)
    }
    fn read_control_space(&mut self, _cpu: u16, index: u64, buf: &mut [u8]) -> Option<usize> {
        let v: u64 = match index {
            0 => BASE + 0x10_0000,
            1 => BASE + 0x10_0180,
            3 => BASE + 0x20_0000,
            _ => return None,
        };
        let n = buf.len().min(8);
        buf[..n].copy_from_slice(&v.to_le_bytes()[..n]);
        Some(n)
    }
    fn context(&mut self, _cpu: u16) -> Option<Context> {
        let mut c = Context::new();
        c.set_reg(Reg::Rip, self.rip);
        c.set_reg(Reg::Rsp, BASE + 0x8000);
        Some(c)
    }
    fn set_context(&mut self, _cpu: u16, c: &Context) -> bool {
        self.rip = c.reg(Reg::Rip);
        true
    }
    fn stop_report(&mut self, _reason: StopReason) -> StateChange64 {
        breakpoint(self.rip)
    }
    fn poll(&mut self, _now: Instant) -> Option<Activity> {
        let mut p = self.prints.lock().unwrap();
        (!p.is_empty()).then(|| Activity::Print(p.remove(0)))
    }
}

pub fn breakpoint(pc: u64) -> StateChange64 {
    StateChange64 {
        new_state: 0x3030,
        processor_level: 6,
        processor: 0,
        number_processors: 1,
        thread: BASE + 0x20_0000,
        program_counter: pc,
        event: StateEvent::Exception(Exception64 {
            code: status::BREAKPOINT,
            flags: 0,
            record: 0,
            address: pc,
            parameters: vec![0],
            first_chance: true,
        }),
        control: ControlReport::default(),
    }
}
