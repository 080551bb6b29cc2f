//! Processes: EPROCESS objects and their address spaces.

use crate::SimError;
use crate::mem::{PAGE, PTE_A, PTE_D, PTE_NX, PTE_RW, PTE_US, Space};
use crate::pool::{PoolKind, tag};

use super::{ProcessRec, System};

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
        let header = self.k.size("_OBJECT_HEADER").unwrap_or(0x30);
        let obj = self
            .pool
            .alloc(&mut self.k, PoolKind::NonPaged, header + size, tag("Proc"))?;
        let ep = obj + header;
        let space = if pid == 4 || pid == 0 {
            self.k.space
        } else {
            Space::new(&mut self.k.mem)
        };
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
        });
        Ok(self.processes.len() - 1)
    }

    // ---- threads ----
}
