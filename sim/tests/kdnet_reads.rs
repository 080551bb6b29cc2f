//! The host attaches to the simulator over real UDP on loopback, for each build and scenario,
//! and checks with raw reads — offsets from the symbol table, no analysis code — that memory
//! decodes to what the scenario planted.

mod common;

use std::time::Duration;

use kdnet::host::{Host, HostConfig};
use kdnet::kd::HostKdConfig;
use kdnet::target::TargetConfig;
use kdnet::wire::Key;
use kdnet_sim::scenario::Facts;
use kdnet_sim::{Scenario, SimConfig};
use kdnet_symbols::{TypeTable, builtin, isf};

struct Session {
    host: Host,
    nt: TypeTable,
    facts: Facts,
    _running: kdnet_sim::Running,
    build: u32,
}

impl Session {
    async fn u64(&self, a: u64) -> u64 {
        u64::from_le_bytes(
            self.host
                .read_virtual(a, 8)
                .await
                .unwrap()
                .try_into()
                .unwrap(),
        )
    }
    async fn u32(&self, a: u64) -> u32 {
        u32::from_le_bytes(
            self.host
                .read_virtual(a, 4)
                .await
                .unwrap()
                .try_into()
                .unwrap(),
        )
    }
    async fn phys_u64(&self, a: u64) -> u64 {
        u64::from_le_bytes(
            self.host
                .read_physical(a, 8)
                .await
                .unwrap()
                .try_into()
                .unwrap(),
        )
    }
    fn off(&self, ty: &str, path: &str) -> u64 {
        self.nt.offset(ty, path).unwrap_or_else(|e| panic!("{e}"))
    }
    fn sym(&self, base: u64, s: &str) -> u64 {
        base + self.nt.symbol(s).unwrap_or_else(|| panic!("no {s}"))
    }
    /// Reads a field (by the table's width and bit position).
    async fn field(&self, addr: u64, ty: &str, path: &str) -> u64 {
        let f = self.nt.field(ty, path).unwrap();
        let raw = self.u64(addr + f.offset).await;
        match f.bits() {
            Some((pos, len)) => (raw >> pos) & ((1u64 << len) - 1),
            None => {
                let size = self.nt.ty_size(&f.ty).unwrap();
                if size >= 8 {
                    raw
                } else {
                    raw & ((1u64 << (8 * size)) - 1)
                }
            }
        }
    }
    /// Walks a LIST_ENTRY from `head`, returning the entry addresses (bounded).
    async fn list(&self, head: u64, cap: usize) -> Vec<u64> {
        let mut out = Vec::new();
        let mut e = self.u64(head).await;
        while e != head && out.len() < cap {
            out.push(e);
            e = self.u64(e).await;
        }
        out
    }
}

async fn attach(build: u32, scenario: Scenario) -> Option<Session> {
    let config = common::config(build, scenario, 1500)?;
    attach_config(config).await
}

async fn attach_config(config: SimConfig) -> Option<Session> {
    let dir = common::shared()?;
    let nt = match &config.table {
        kdnet_sim::TableSource::Builtin => builtin::nt_demo(),
        _ => {
            let (_, guid, age, _) = kdnet_sim::layout::KNOWN_BUILDS
                .iter()
                .find(|b| b.0 == config.build)
                .unwrap();
            isf::load_file(&dir.join(format!("symbols/ntkrnlmp.pdb/{guid}-{age}.json.xz"))).unwrap()
        }
    };
    let key = Key::parse("4.3.2.1").unwrap();
    let mut hc = HostConfig::new("127.0.0.1:0".parse().unwrap(), key.clone());
    hc.kd = HostKdConfig {
        initial_rto: Duration::from_millis(50),
        min_rto: Duration::from_millis(10),
        max_rto: Duration::from_millis(500),
        max_sends: 20,
        reply_nudges: 2,
    };
    let host = Host::bind(hc).await.unwrap();
    let mut tc = TargetConfig::new("127.0.0.1:0".parse().unwrap(), host.local_addr(), key);
    tc.offer_interval = Duration::from_millis(200);
    let build = config.build;
    let bugcheck = config.scenario == Scenario::Bugcheck;
    let running = kdnet_sim::start(config, tc, None).await.unwrap();
    host.wait_connected(Duration::from_secs(10)).await.unwrap();
    if bugcheck {
        host.wait_stopped(Duration::from_secs(10)).await.unwrap();
    } else {
        host.break_in(Duration::from_secs(10)).await.unwrap();
    }
    Some(Session {
        host,
        nt,
        facts: running.facts.clone(),
        _running: running,
        build,
    })
}

/// The fixed file information of the image at `base`'s version resource, found as a debugger
/// finds it: the resource data directory, the RT_VERSION entry, its first name and language,
/// the data entry, and the VS_FIXEDFILEINFO after the VS_VERSION_INFO key.
async fn version_resource(s: &Session, base: u64) -> [u32; 13] {
    let pe = base + u64::from(s.u32(base + 0x3c).await);
    let dir = base + u64::from(s.u32(pe + 24 + 112 + 2 * 8).await);
    assert_ne!(dir, base, "the image has a resource directory");
    let mut at = dir;
    for want in [Some(16u32), None, None] {
        let named = s.u32(at + 12).await & 0xffff;
        let ids = s.u32(at + 12).await >> 16;
        assert!(ids >= 1, "an id entry");
        let entry = at + 16 + 8 * u64::from(named);
        if let Some(w) = want {
            assert_eq!(s.u32(entry).await, w, "RT_VERSION");
        }
        let off = s.u32(entry + 4).await;
        at = dir + u64::from(off & 0x7fff_ffff);
        if off & 0x8000_0000 == 0 {
            break;
        }
    }
    let data = base + u64::from(s.u32(at).await);
    let size = s.u32(at + 4).await as usize;
    let blob = s.host.read_virtual(data, size.min(0x1000)).await.unwrap();
    let key: Vec<u8> = "VS_VERSION_INFO"
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    assert_eq!(&blob[6..6 + key.len()], &key[..]);
    let value = (6 + key.len() + 2).div_ceil(4) * 4;
    let mut fixed = [0u32; 13];
    for (i, d) in fixed.iter_mut().enumerate() {
        let o = value + 4 * i;
        *d = u32::from_le_bytes(blob[o..o + 4].try_into().unwrap());
    }
    assert_eq!(fixed[0], 0xFEEF_04BD, "VS_FIXEDFILEINFO signature");
    fixed
}

/// What every machine must show: version, image identity, KDBG, page tables, processes,
/// resources.
async fn common_checks(s: &Session) {
    let v = s.host.get_version().await.unwrap();
    assert_eq!(u32::from(v.minor_version), s.build);
    assert!(v.is_64bit());
    let base = v.kern_base;
    assert_eq!(v.ps_loaded_module_list, s.sym(base, "PsLoadedModuleList"));
    // The build where debuggers read it: nt!NtBuildNumber (a free build: 0xF in the top
    // nibble), and where a process walk starts: nt!PsInitialSystemProcess, the System process.
    let number = s.u32(s.sym(base, "NtBuildNumber")).await;
    assert_eq!((number & 0xffff, number >> 28), (s.build, 0xF));
    if let Ok(o) = s.nt.offset("_KUSER_SHARED_DATA", "NtBuildNumber") {
        assert_eq!(
            s.u32(0xFFFF_F780_0000_0000 + o).await,
            s.build,
            "KUSER_SHARED_DATA"
        );
    }
    // The version KUSER_SHARED_DATA publishes, the lab strings, and the image's version
    // resource all name the same build.
    let (major, minor) = kdnet_sim::layout::nt_version(s.build);
    let kuser = |f| 0xFFFF_F780_0000_0000 + s.off("_KUSER_SHARED_DATA", f);
    assert_eq!(s.u32(kuser("NtMajorVersion")).await, major);
    assert_eq!(s.u32(kuser("NtMinorVersion")).await, minor);
    for lab in ["NtBuildLab", "NtBuildLabEx"] {
        if let Some(at) = s.nt.symbol(lab) {
            let text = s.host.read_virtual(base + at, 16).await.unwrap();
            assert!(
                text.starts_with(format!("{}.", s.build).as_bytes()),
                "{lab}: {}",
                String::from_utf8_lossy(&text)
            );
        }
    }
    let fixed = version_resource(s, base).await;
    assert_eq!(
        (fixed[2] >> 16, fixed[2] & 0xffff, fixed[3] >> 16),
        (major, minor, s.build),
        "the image's file version"
    );
    let system = s.u64(s.sym(base, "PsInitialSystemProcess")).await;
    let pid4 = s.facts.processes.iter().find(|p| p.1 == 4).unwrap().0;
    assert_eq!(system, pid4);
    // The model-specific registers a debugger reads: long mode on in EFER, the system-call
    // entry in LSTAR, the KPCR in GS base.
    let efer = s.host.read_msr(0, 0xC000_0080).await.unwrap();
    assert_eq!(efer & 0x500, 0x500, "LME and LMA");
    assert_eq!(
        s.host.read_msr(0, 0xC000_0082).await.unwrap(),
        s.sym(base, "KiSystemCall64")
    );
    let gs = s.host.read_msr(0, 0xC000_0101).await.unwrap();
    assert_eq!(s.u64(gs + s.off("_KPCR", "Self")).await, gs);
    // The image names its PDB: MZ → PE → debug directory → RSDS GUID/age of the table.
    let mz = s.host.read_virtual(base, 0x40).await.unwrap();
    assert_eq!(&mz[..2], b"MZ");
    let pe = base + u64::from(u32::from_le_bytes(mz[0x3c..0x40].try_into().unwrap()));
    assert_eq!(s.u32(pe).await, 0x4550);
    let opt = pe + 24;
    let dbg_rva = s.u32(opt + 112 + 6 * 8).await;
    let dd = s
        .host
        .read_virtual(base + u64::from(dbg_rva), 0x1c)
        .await
        .unwrap();
    assert_eq!(
        u32::from_le_bytes(dd[12..16].try_into().unwrap()),
        2,
        "CODEVIEW"
    );
    let cv_rva = u32::from_le_bytes(dd[0x14..0x18].try_into().unwrap());
    let cv = s
        .host
        .read_virtual(base + u64::from(cv_rva), 24 + 13)
        .await
        .unwrap();
    assert_eq!(&cv[..4], b"RSDS");
    let guid = kdnet_symbols::PdbId::guid_from_bytes(cv[4..20].try_into().unwrap());
    let id = s.nt.id.as_ref().unwrap();
    assert_eq!(guid, id.guid);
    assert_eq!(u32::from_le_bytes(cv[20..24].try_into().unwrap()), id.age);
    assert_eq!(&cv[24..36], b"ntkrnlmp.pdb");
    // KDBG through DebuggerDataList, plain: the machine booted with the debugger (a kernel
    // booted without one encodes it, and says so in KdpDataBlockEncoded and KdpBootedNodebug).
    let head = v.debugger_data_list;
    let kdbg = s.u64(head).await;
    assert_eq!(kdbg, s.sym(base, "KdDebuggerDataBlock"));
    // (The compact built-in table carries neither flag: nothing reads them on a plain block.)
    for flag in ["KdpDataBlockEncoded", "KdpBootedNodebug"] {
        if let Some(at) = s.nt.symbol(flag) {
            assert_eq!(
                s.host.read_virtual(base + at, 1).await.unwrap()[0],
                0,
                "{flag}"
            );
        }
    }
    assert_eq!(s.u64(kdbg + 0x10).await as u32, builtin::KDBG_TAG, "plain");
    let w2 = s.u64(kdbg + 0x10).await;
    assert_eq!(w2 as u32, builtin::KDBG_TAG, "OwnerTag 'KDBG'");
    // The block's size and the families the simulator chose, from each real table's contents
    // (what these builds are known to have).
    let (size, pool, waiters) = match s.build {
        7601 => (0x340, "classic", "an event and a semaphore"),
        9600 => (0x360, "classic", "an event and a semaphore"),
        14393 => (0x368, "classic", "inside the resource"),
        17763 => (0x380, "classic", "wait chains"),
        _ => (0x380, "segment heap", "wait chains"),
    };
    assert_eq!(w2 >> 32, size, "the debugger data block's size");
    let families = s.facts.families.join("; ");
    assert!(families.contains(&format!("pool: {pool} (")), "{families}");
    assert!(families.contains(waiters), "{families}");
    assert_eq!(s.u64(kdbg + 0x18).await, base, "KernBase");
    assert_eq!(s.u64(kdbg + 0x50).await, s.sym(base, "PsActiveProcessHead"));
    assert_eq!(
        s.u64(kdbg + 0x60).await,
        s.sym(base, "ExpSystemResourcesList")
    );
    let offs = s.u64(kdbg + 0x2a0).await;
    assert_eq!(
        (offs >> 16) & 0xffff,
        s.off("_KTHREAD", "State"),
        "OffsetKThreadState"
    );
    // Translate the kernel base over physical reads: CR3 from control space, 4 levels, a large
    // page for the image.
    let special = s.host.read_control_space(0, 2, 0xe0).await.unwrap();
    let cr3 = u64::from_le_bytes(special[0x10..0x18].try_into().unwrap());
    let mask = 0x000f_ffff_ffff_f000u64;
    let pml4e = s.phys_u64((cr3 & mask) + 8 * ((base >> 39) & 0x1ff)).await;
    assert_eq!(pml4e & 1, 1);
    let pdpte = s
        .phys_u64((pml4e & mask) + 8 * ((base >> 30) & 0x1ff))
        .await;
    let pde = s
        .phys_u64((pdpte & mask) + 8 * ((base >> 21) & 0x1ff))
        .await;
    assert_eq!(pde & 0x81, 0x81, "the kernel image is on a large page");
    let pa = (pde & mask & !0x1f_ffff) | (base & 0x1f_ffff);
    assert_eq!(s.host.read_physical(pa, 2).await.unwrap(), b"MZ");
    // Processes on PsActiveProcessHead (the Idle process is not on it).
    let links = s.off("_EPROCESS", "ActiveProcessLinks");
    let procs = s.list(s.sym(base, "PsActiveProcessHead"), 1000).await;
    assert_eq!(procs.len(), s.facts.processes.len() - 1);
    let names_at = s.off("_EPROCESS", "ImageFileName");
    let first = procs[0] - links;
    assert_eq!(
        s.host.read_virtual(first + names_at, 6).await.unwrap(),
        b"System"
    );
    assert_eq!(s.field(first, "_EPROCESS", "UniqueProcessId").await, 4);
    // Every resource on the list.
    let res = s.list(s.sym(base, "ExpSystemResourcesList"), 100_000).await;
    assert_eq!(res.len() as u32, s.facts.total_resources);
    // Non-resident memory: reads fail, and the PTE says why (page file / transition).
    for (page, transition) in s
        .facts
        .paged_out
        .iter()
        .map(|p| (*p, false))
        .chain(s.facts.transition.iter().map(|p| (*p, true)))
    {
        assert!(
            s.host.read_virtual(page, 8).await.is_err(),
            "{page:#x} reads"
        );
        let mut table = cr3 & mask;
        let mut pte = 0;
        for level in (0..4).rev() {
            pte = s
                .phys_u64(table + 8 * ((page >> (12 + 9 * level)) & 0x1ff))
                .await;
            if level > 0 {
                assert_eq!(pte & 1, 1, "upper levels present");
                table = pte & mask;
            }
        }
        assert_eq!(pte & 1, 0, "not present");
        assert_ne!(pte, 0);
        assert_eq!(pte & (1 << 11) != 0, transition, "transition bit");
    }
    let swapped = s.facts.swapped_stack_thread.unwrap();
    assert_eq!(s.field(swapped, "_KTHREAD", "KernelStackResident").await, 0);
    let ks = s.field(swapped, "_KTHREAD", "KernelStack").await;
    assert!(
        s.host.read_virtual(ks, 8).await.is_err(),
        "the swapped stack does not read"
    );
    // KUSER_SHARED_DATA's tick count is the simulated uptime.
    let tick = s
        .field(
            0xfffff780_00000000,
            "_KUSER_SHARED_DATA",
            "TickCount.LowPart",
        )
        .await;
    assert!(tick > 4 * 3600 * 64, "{tick}");
}

async fn held_locks(s: &Session) {
    for h in &s.facts.held {
        let r = h.address;
        let active = s.field(r, "_ERESOURCE", "ActiveCount").await;
        let flag = s.field(r, "_ERESOURCE", "Flag").await;
        let owner = s.field(r, "_ERESOURCE", "OwnerEntry.OwnerThread").await;
        match h.exclusive_owner {
            Some(t) => {
                assert_eq!(active, 1);
                assert_eq!(flag & 0x80, 0x80);
                assert_eq!(owner, t);
            }
            None => {
                assert_eq!(active as usize, h.shared_owners.len());
                assert_eq!(flag & 0x80, 0);
                assert_eq!(owner, h.shared_owners[0]);
            }
        }
        assert_eq!(
            s.field(r, "_ERESOURCE", "ContentionCount").await,
            u64::from(h.contention)
        );
        assert_eq!(
            s.field(r, "_ERESOURCE", "NumberOfExclusiveWaiters").await as usize,
            h.exclusive_waiters.len()
        );
        assert_eq!(
            s.field(r, "_ERESOURCE", "NumberOfSharedWaiters").await as usize,
            h.shared_waiters.len()
        );
        // Each exclusive waiter waits for the resource (WrResource) on an object tied to it.
        for w in &h.exclusive_waiters {
            assert_eq!(s.field(*w, "_KTHREAD", "State").await, 5);
            assert_eq!(s.field(*w, "_KTHREAD", "WaitReason").await, 27);
            let wb = s.field(*w, "_KTHREAD", "WaitBlockList").await;
            let obj = s.field(wb, "_KWAIT_BLOCK", "Object").await;
            assert_eq!(s.field(wb, "_KWAIT_BLOCK", "Thread").await, *w);
            let waiters = s.field(r, "_ERESOURCE", "ExclusiveWaiters").await;
            // The resource's own event where the table makes ExclusiveWaiters point at a
            // KEVENT (7601, 9600, 14393), a wait-chain entry after.
            if !s.nt.has_field("_KWAIT_CHAIN_ENTRY", "Thread") {
                assert_eq!(obj, waiters, "waits on the resource's event");
                assert_eq!(
                    s.host.read_virtual(obj, 1).await.unwrap()[0],
                    1,
                    "SynchronizationEvent"
                );
            } else {
                // A wait-chain entry on the waiter's stack: its Event is the wait object.
                let entry = obj - s.off("_KWAIT_CHAIN_ENTRY", "Event");
                assert_eq!(s.field(entry, "_KWAIT_CHAIN_ENTRY", "Thread").await, *w);
                let mut e = waiters;
                let mut found = false;
                for _ in 0..64 {
                    if e == entry {
                        found = true;
                        break;
                    }
                    e = s.u64(e).await;
                    if e == waiters {
                        break;
                    }
                }
                assert!(found, "the waiter's entry is on the resource's chain");
                let stack_limit = s.field(*w, "_KTHREAD", "StackLimit").await;
                let stack_base = s.field(*w, "_KTHREAD", "StackBase").await;
                assert!(
                    (stack_limit..stack_base).contains(&entry),
                    "the entry is on the waiter's stack"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbl_hang() {
    for build in common::BUILDS {
        let Some(s) = attach(build, Scenario::NblHang).await else {
            return;
        };
        common_checks(&s).await;
        held_locks(&s).await;
        let base = s.host.get_version().await.unwrap().kern_base;
        assert_eq!(s.facts.held[0].address, s.sym(base, "PiEngineLock"));
        assert_eq!(s.facts.held[1].address, s.sym(base, "IopDeviceTreeLock"));
        let (t, secs) = s.facts.hung_thread.unwrap();
        assert_eq!(s.field(t, "_KTHREAD", "WaitReason").await, 0, "Executive");
        let now = s
            .field(
                0xfffff780_00000000,
                "_KUSER_SHARED_DATA",
                "TickCount.LowPart",
            )
            .await;
        let since = s.field(t, "_KTHREAD", "WaitTime").await;
        assert!(
            now - since >= 4 * 60 * 64 && secs >= 240,
            "waited {} ticks",
            now - since
        );
        assert_eq!(s.facts.ndis.pending, 1854);
        assert_eq!(s.facts.ndis.total, 3005);
        assert_eq!(s.facts.ndis.pools, 20);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlock() {
    for build in common::BUILDS {
        let Some(s) = attach(build, Scenario::Deadlock).await else {
            return;
        };
        common_checks(&s).await;
        held_locks(&s).await;
        let d = s.facts.deadlock.clone().unwrap();
        // The mutant is owned by the first thread of the cycle; the third thread waits on it.
        assert_eq!(
            s.field(d.mutant, "_KMUTANT", "OwnerThread").await,
            d.threads[0]
        );
        let wb = s.field(d.mutant_waiter, "_KTHREAD", "WaitBlockList").await;
        assert_eq!(s.field(wb, "_KWAIT_BLOCK", "Object").await, d.mutant);
        assert_eq!(d.queued.len(), 20);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_corruption() {
    for build in common::BUILDS {
        let Some(s) = attach(build, Scenario::PoolCorruption).await else {
            return;
        };
        common_checks(&s).await;
        let c = s.facts.corruption.clone().unwrap();
        assert_eq!(
            s.host.read_virtual(c.smashed_header, 16).await.unwrap(),
            c.found
        );
        assert_eq!(&c.found[..8], b"ACMEFLT!");
        // The block before it is intact and tagged by the driver.
        let tag = s.u32(c.victim_of_overrun - 16 + 4).await;
        assert_eq!(&tag.to_le_bytes(), b"AcBf");
        // The special pool allocation ends at its page end; the next page is a guard page.
        assert_eq!((c.special + 0x40) & 0xfff, 0);
        assert!(s.host.read_virtual(c.special + 0x40, 1).await.is_err());
        assert_eq!(
            &s.u32((c.special & !0xfff) + 4).await.to_le_bytes(),
            b"AcSp"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_failures() {
    for build in common::BUILDS {
        let Some(s) = attach(build, Scenario::CommitFailures).await else {
            return;
        };
        common_checks(&s).await;
        let base = s.host.get_version().await.unwrap().kern_base;
        // A global array where the table has one (7601, 9600), the system partition's after.
        let (f0, f1) = if s.nt.symbol("MiChargeCommitmentFailures").is_some() {
            let a = s.sym(base, "MiChargeCommitmentFailures");
            (s.u32(a).await, s.u32(a + 4).await)
        } else {
            let p = s.sym(base, "MiSystemPartition");
            let a = p + s.off("_MI_PARTITION", "Vp.ChargeCommitmentFailures");
            (s.u32(a).await, s.u32(a + 4).await)
        };
        assert_eq!(u64::from(f0) + u64::from(f1), 48_440);
        assert_eq!(s.facts.commit_failures, 48_440);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bugcheck_and_healthy() {
    for build in common::BUILDS {
        let Some(s) = attach(build, Scenario::Bugcheck).await else {
            return;
        };
        common_checks(&s).await;
        let base = s.host.get_version().await.unwrap().kern_base;
        let data = s
            .host
            .read_virtual(s.sym(base, "KiBugCheckData"), 40)
            .await
            .unwrap();
        let q = |i: usize| u64::from_le_bytes(data[8 * i..8 * i + 8].try_into().unwrap());
        let (code, params) = s.facts.bugcheck.unwrap();
        assert_eq!(q(0), u64::from(code));
        assert_eq!(code, 0x44);
        assert_eq!([q(1), q(2), q(3), q(4)], params);
        // The IRP is on the crashing thread's IRP list.
        let irp = params[0];
        let cur = u64::from_le_bytes(
            s.host
                .read_control_space(0, 3, 8)
                .await
                .unwrap()
                .try_into()
                .unwrap(),
        );
        let head = cur + s.off("_ETHREAD", "IrpList");
        assert_eq!(s.u64(head).await, irp + s.off("_IRP", "ThreadListEntry"));
        let Some(h) = attach(build, Scenario::Healthy).await else {
            return;
        };
        common_checks(&h).await;
        let base = h.host.get_version().await.unwrap().kern_base;
        assert_eq!(h.u64(h.sym(base, "KiBugCheckData")).await, 0);
        assert!(h.facts.held.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_demo_table_attaches() {
    if common::shared().is_none() {
        return;
    }
    let mut c = SimConfig::demo();
    c.resources = 1500;
    let Some(s) = attach_config(c).await else {
        return;
    };
    common_checks(&s).await;
    held_locks(&s).await;
}

/// A break-in stops processor 0 in the break instruction its state change reports, called from
/// where the processor was (the idle loop): the context, the state change and the stack agree,
/// and a second break-in after a continue stops the same way, not one call deeper.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_break_in_stops_at_the_break_instruction_its_state_change_reports() {
    use kdnet::api::context::Reg;
    let mut c = SimConfig::demo();
    c.resources = 500;
    c.scenario = Scenario::Healthy;
    let nt = builtin::nt_demo();
    let key = Key::parse("4.3.2.5").unwrap();
    let host = Host::bind(HostConfig::new("127.0.0.1:0".parse().unwrap(), key.clone()))
        .await
        .unwrap();
    let mut tc = TargetConfig::new("127.0.0.1:0".parse().unwrap(), host.local_addr(), key);
    tc.offer_interval = Duration::from_millis(200);
    let _running = kdnet_sim::start(c, tc, None).await.unwrap();
    host.wait_connected(Duration::from_secs(10)).await.unwrap();
    let mut sc = host.break_in(Duration::from_secs(10)).await.unwrap();
    let base = host.get_version().await.unwrap().kern_base;
    let sym = |s: &str| base + nt.symbol(s).unwrap_or_else(|| panic!("no {s}"));
    let brk = sym("RtlpBreakWithStatusInstruction");
    let mut stacks = Vec::new();
    for round in 0..2 {
        if round > 0 {
            sc = host.break_in(Duration::from_secs(10)).await.unwrap();
        }
        assert_eq!(sc.program_counter, brk);
        let ctx = host.get_context(sc.processor).await.unwrap();
        assert_eq!(
            ctx.reg(Reg::Rip),
            brk,
            "the context agrees with the state change"
        );
        let rsp = ctx.reg(Reg::Rsp);
        let ret = u64::from_le_bytes(host.read_virtual(rsp, 8).await.unwrap().try_into().unwrap());
        assert_eq!(ret, sym("PoIdle") + 0x33a, "called from the idle loop");
        stacks.push(rsp);
        host.resume(kdnet::api::status::DBG_CONTINUE).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stacks[0], stacks[1], "the continue returned from the break");
}
