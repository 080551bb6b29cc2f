//! Processes: EPROCESS objects and their address spaces.

use crate::SimError;
use crate::mem::{PAGE, PTE_A, PTE_D, PTE_NX, PTE_RW, PTE_US, Space};
use crate::pool::{PoolKind, tag};

use super::{HandleRec, ProcessDetails, ProcessRec, System};

impl System {
    /// Creates a process. The System process (pid 4) shares the system address space.
    pub fn new_process(
        &mut self,
        name: &str,
        pid: Option<u64>,
        parent: u64,
    ) -> Result<usize, SimError> {
        let pid = pid.unwrap_or_else(|| {
            let p = self.next_pid;
            self.next_pid += self.cid_spacing * (1 + self.rng.below(8));
            p
        });
        let size = self.k.size("_EPROCESS")?;
        let header = self.k.off("_OBJECT_HEADER", "Body")?;
        let obj = self
            .pool
            .alloc(&mut self.k, PoolKind::NonPaged, header + size, tag("Proc"))?;
        let ep = obj + header;
        let space = if pid == 4 || pid == 0 {
            self.k.space
        } else {
            Space::new(&mut self.k.mem)
        };
        self.stamp(ep, "Process")?;
        let k = &mut self.k;
        k.set(obj, "_OBJECT_HEADER", "PointerCount", 0x1234)?;
        k.set(obj, "_OBJECT_HEADER", "HandleCount", 0x20)?;
        k.set(ep, "_EPROCESS", "Pcb.Header.Type", 3)?;
        k.set(
            ep,
            "_EPROCESS",
            "Pcb.Header.Size",
            (k.size("_KPROCESS")? / 4).min(0xff),
        )?;
        k.list_init(ep + k.off("_EPROCESS", "Pcb.Header.WaitListHead")?);
        k.set(ep, "_EPROCESS", "Pcb.DirectoryTableBase", space.cr3)?;
        k.list_init(ep + k.off("_EPROCESS", "Pcb.ThreadListHead")?);
        k.list_init(ep + k.off("_EPROCESS", "ThreadListHead")?);
        k.set(ep, "_EPROCESS", "UniqueProcessId", pid)?;
        k.set(ep, "_EPROCESS", "InheritedFromUniqueProcessId", parent)?;
        let mut image = [0u8; 15];
        for (i, b) in name.bytes().take(14).enumerate() {
            image[i] = b;
        }
        k.write(ep + k.off("_EPROCESS", "ImageFileName")?, &image);
        if pid > 4 {
            // The PEB, mapped in the process's own address space (user-mode, no-execute), with
            // its image's base.
            let peb = 0x0000_00a1_0000_0000 + pid * 0x1000;
            k.set(ep, "_EPROCESS", "Peb", peb)?;
            let pfn = k.mem.alloc(1, 1);
            space.map_4k(
                &mut k.mem,
                peb,
                pfn,
                PTE_RW | PTE_A | PTE_D | PTE_US | PTE_NX,
            );
            let image_base = 0x7ff6_0000_0000 + (pid << 20);
            let at = pfn * PAGE + k.off("_PEB", "ImageBaseAddress")?;
            k.mem.write(at, &image_base.to_le_bytes());
        }
        if pid != 0 {
            let head = k.sym("PsActiveProcessHead")?;
            k.list_append(head, ep + k.off("_EPROCESS", "ActiveProcessLinks")?);
        }
        self.processes.push(ProcessRec {
            eprocess: ep,
            pid,
            name: name.to_string(),
            space,
            threads: Vec::new(),
            details: Default::default(),
            handles: Vec::new(),
        });
        Ok(self.processes.len() - 1)
    }

    /// What `!process` shows of each process beyond its identity, written once the scenario
    /// is built (so nothing it planted moves): a handle table and its count (over
    /// `nt!ExpFreeListCount` free lists where the build has them), a primary token, a VAD tree
    /// root and count, working-set and virtual sizes, creation and run times, a device map;
    /// and one thread of lsass.exe impersonating a client.
    pub(super) fn write_process_details(&mut self) -> Result<(), SimError> {
        let per_list = self.k.has("_HANDLE_TABLE", "FreeLists");
        let lists: u64 = if per_list && self.k.has_sym("ExpFreeListCount") {
            2
        } else {
            1
        };
        if per_list && self.k.has_sym("ExpFreeListCount") {
            let at = self.k.sym("ExpFreeListCount")?;
            self.k.w32(at, lists as u32);
        }
        let list_size = if per_list {
            self.k.size("_HANDLE_TABLE_FREE_LIST")?
        } else {
            0
        };
        let token_size = self.k.size("_TOKEN")?;
        // The object body follows the header's fields (at Body), 16-byte aligned as an
        // EX_FAST_REF needs: its low four bits are a reference count.
        let header = self.k.off("_OBJECT_HEADER", "Body").unwrap_or(0x30);
        let device_map = self
            .pool
            .alloc(&mut self.k, PoolKind::Paged, 0x40, tag("Dmap"))?;
        let vad_type = if self.k.has("_MMVAD_SHORT", "StartingVpn") {
            "_MMVAD_SHORT"
        } else {
            "_MMVAD"
        };
        let vad_size = self.k.size(vad_type)?;
        for i in 0..self.processes.len() {
            let (ep, pid) = (self.processes[i].eprocess, self.processes[i].pid);
            if pid == 0 {
                continue;
            }
            let n = self.processes[i].threads.len() as u64;
            // Every process holds handles to its own threads and to a few events of its own.
            for t in self.processes[i].threads.clone() {
                let et = self.threads[t].ethread;
                self.add_handle(
                    i,
                    HandleRec {
                        object: et,
                        access: 0x1f_ffff,
                        attributes: 0,
                    },
                );
            }
            for _ in 0..2 + pid % 5 {
                let ev = self.event_object(None)?;
                self.add_handle(
                    i,
                    HandleRec {
                        object: ev,
                        access: 0x1f_0003,
                        attributes: 0,
                    },
                );
            }
            let table_size = self.k.size("_HANDLE_TABLE")? + list_size * (lists - 1);
            let table = self
                .pool
                .alloc(&mut self.k, PoolKind::Paged, table_size, tag("Obtb"))?;
            let handles = self.write_handle_table(i, table)?;
            let k = &mut self.k;
            if per_list {
                let first = k.off("_HANDLE_TABLE", "FreeLists")?;
                let count = k.off("_HANDLE_TABLE_FREE_LIST", "HandleCount")?;
                // The count is spread over the free lists, as the kernel keeps it.
                for l in 0..lists {
                    let share = if l == 0 {
                        handles - handles / 2
                    } else {
                        handles / 2
                    };
                    let share = if lists == 1 { handles } else { share };
                    k.w32(table + first + l * list_size + count, share as u32);
                }
            } else {
                k.set(table, "_HANDLE_TABLE", "HandleCount", handles)?;
            }
            if k.has("_HANDLE_TABLE", "UniqueProcessId") {
                k.set(table, "_HANDLE_TABLE", "UniqueProcessId", pid)?;
            }
            k.set(ep, "_EPROCESS", "ObjectTable", table)?;
            let obj = self.pool.alloc(
                &mut self.k,
                PoolKind::Paged,
                header + token_size,
                tag("Toke"),
            )?;
            let token = obj + header;
            self.stamp(token, "Token")?;
            let k = &mut self.k;
            k.set(obj, "_OBJECT_HEADER", "PointerCount", 0x10)?;
            // An EX_FAST_REF: the low four bits count cached references.
            k.set(ep, "_EPROCESS", "Token.Value", token | 0xb)?;
            let dm = if k.has("_EPROCESS", "DeviceMap.Value") {
                "DeviceMap.Value"
            } else {
                "DeviceMap"
            };
            k.set(
                ep,
                "_EPROCESS",
                dm,
                device_map | (u64::from(dm.ends_with("Value")) * 3),
            )?;
            let vads = 12 + pid % 40;
            let root = self
                .pool
                .alloc(&mut self.k, PoolKind::NonPaged, vad_size, tag("VadS"))?;
            let k = &mut self.k;
            if k.has("_EPROCESS", "VadRoot.Root") {
                k.set(ep, "_EPROCESS", "VadRoot.Root", root)?;
                k.set(ep, "_EPROCESS", "VadCount", vads)?;
            } else {
                k.set(ep, "_EPROCESS", "VadRoot.BalancedRoot.RightChild", root)?;
                k.set(ep, "_EPROCESS", "VadRoot.NumberGenericTableElements", vads)?;
            }
            let ws = (900 + pid * 3, 50, 345);
            let vm = if k.has("_EPROCESS", "Vm.Instance.WorkingSetSize") {
                "Vm.Instance."
            } else {
                "Vm."
            };
            k.set(ep, "_EPROCESS", &format!("{vm}WorkingSetSize"), ws.0)?;
            k.set(ep, "_EPROCESS", &format!("{vm}MinimumWorkingSetSize"), ws.1)?;
            k.set(ep, "_EPROCESS", &format!("{vm}MaximumWorkingSetSize"), ws.2)?;
            k.set(
                ep,
                "_EPROCESS",
                &format!("{vm}PeakWorkingSetSize"),
                ws.0 + 128,
            )?;
            k.set(
                ep,
                "_EPROCESS",
                &format!("{vm}PageFaultCount"),
                4000 + pid * 11,
            )?;
            let virtual_size = (0x80 + pid) << 20;
            k.set(ep, "_EPROCESS", "VirtualSize", virtual_size)?;
            k.set(
                ep,
                "_EPROCESS",
                "PeakVirtualSize",
                virtual_size + (16 << 20),
            )?;
            k.set(ep, "_EPROCESS", "NumberOfPrivatePages", 300 + pid)?;
            k.set(ep, "_EPROCESS", "ModifiedPageCount", 40 + pid % 64)?;
            // Created a few seconds after boot, in pid order.
            let created = super::shared_data::BOOT_TIME + (5 + pid) * 10_000_000;
            k.set(ep, "_EPROCESS", "CreateTime.QuadPart", created)?;
            k.set(ep, "_EPROCESS", "Pcb.UserTime", 30 + n)?;
            k.set(ep, "_EPROCESS", "Pcb.KernelTime", 300 + 7 * n)?;
            k.set(ep, "_EPROCESS", "Pcb.BasePriority", 8)?;
            self.processes[i].details = ProcessDetails {
                handle_table: table,
                handle_count: handles,
                token,
                vad_root: root,
                vad_count: vads,
                working_set: ws,
                virtual_size,
            };
        }
        // A service thread impersonating its client at impersonation level (2).
        if let Some(p) = self.processes.iter().find(|p| p.name == "lsass.exe")
            && let Some(&t) = p.threads.first()
        {
            let et = self.threads[t].ethread;
            let token = p.details.token;
            let k = &mut self.k;
            k.set(
                et,
                "_ETHREAD",
                "ClientSecurity.ImpersonationData",
                token | 2,
            )?;
            k.set(et, "_ETHREAD", "ActiveImpersonationInfo", 1)?;
            self.impersonating = Some((et, token, 2));
        }
        Ok(())
    }

    // ---- threads ----
}
