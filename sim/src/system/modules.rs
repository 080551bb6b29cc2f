//! Loaded modules: the images the simulator invents, the functions on their stacks, and the
//! loader list a debugger walks.

use crate::SimError;
use crate::image::{Frame, Gpr, Image, frame_for, switch_frame};
use crate::kernel::Region;
use crate::pool::{PoolKind, tag};

use super::{ModuleRec, System, invented_pdb};

impl System {
    /// Loads a driver module the simulator invents; returns its index.
    pub fn add_module(&mut self, file: &str, short: &str) -> usize {
        let prev = self
            .modules
            .last()
            .map_or(self.k.region_start(Region::Drivers), |m| {
                m.image.base + u64::from(m.image.size)
            });
        let base = if self.modules.len() == 1 {
            self.k.region_start(Region::Drivers)
        } else {
            (prev + 0x10000).div_ceil(0x10000) * 0x10000
        };
        let path = if file.ends_with(".dll") {
            format!("\\SystemRoot\\system32\\{file}")
        } else {
            format!("\\SystemRoot\\System32\\drivers\\{file}")
        };
        // ndis.sys is laid out with a real ndis.pdb's types and carries that file's identity,
        // so a debugger finds its symbols (on the symbol path, or the project's copy of its
        // layout), and is as large as its globals need; the other drivers have invented
        // identities (exports only).
        let fltmgr = file
            .eq_ignore_ascii_case("FLTMGR.SYS")
            .then(|| std::sync::Arc::new(kdnet_symbols::builtin::fltmgr()));
        let (pdb, code_end) = if let Some(t) = &fltmgr {
            let id = t.id.clone().unwrap_or_else(|| invented_pdb(file));
            let end = kdnet_symbols::fltmgr::FLT_GLOBALS_RVA + 0xe80 + 0x1000;
            (id, end as u32)
        } else if file.eq_ignore_ascii_case("ndis.sys") {
            let t = crate::ndis::ndis_table();
            let highest = crate::layout::NDIS_SYMBOLS
                .iter()
                .filter_map(|n| t.symbol(n))
                .max()
                .unwrap_or(0);
            let id = t.id.clone().unwrap_or_else(|| invented_pdb(file));
            (id, (highest as u32 + 0x1000).max(0x20000))
        } else {
            (invented_pdb(file), 0x20000)
        };
        let mut img = Image::new(
            file,
            &path,
            base,
            code_end,
            pdb,
            0x6100_0000 + self.modules.len() as u32 * 0x1357,
        );
        img.size = img.size.max(0x40000);
        self.modules.push(ModuleRec {
            image: img,
            short: short.to_string(),
            has_table: false,
            listed: true,
            ldr: 0,
            own: fltmgr,
        });
        self.modules.len() - 1
    }

    /// The module with a short name.
    pub fn module(&self, short: &str) -> Option<usize> {
        self.modules
            .iter()
            .position(|m| m.short.eq_ignore_ascii_case(short))
    }

    /// The address of `module!function` and its frame, registering the frame on first use.
    pub fn function(&mut self, module: &str, function: &str) -> Result<(u64, Frame), SimError> {
        let mi = self
            .module(module)
            .ok_or_else(|| SimError::Config(format!("no module {module}")))?;
        if self.modules[mi].has_table {
            let (rva, next) = self.k.function_rva(function)?;
            let rva = rva as u32;
            let next = next.unwrap_or(u64::from(rva) + 0x400) as u32;
            let end = next.min(rva + 0x800).max(rva + 0x10);
            let frame = match function {
                "KiSwapContext" => switch_frame(rva, end),
                // The routine a waiting thread's saved state stops in: its frame is the
                // thread's KSWITCH_FRAME (Rbp saved in it, the return into KiSwapContext
                // right above it).
                "SwapContext" if self.k.has("_KSWITCH_FRAME", "Return") => Frame {
                    rva,
                    end,
                    pushes: vec![],
                    alloc: self.k.off("_KSWITCH_FRAME", "Return")? as u32,
                    saves: vec![(Gpr::Rbp, self.k.off("_KSWITCH_FRAME", "Rbp")? as u32)],
                    machine_frame: false,
                    dummy_code: false,
                    unwind_rva: 0,
                },
                // An exception entry: the processor's machine frame and error code, RBP
                // pushed, the rest of the KTRAP_FRAME allocated below (the frame's body RSP is
                // the trap frame).
                "KiPageFault" | "KiGeneralProtectionFault" => {
                    self.trap_entry_frame(rva, end, false)?
                }
                // Interrupt entries: no error code from the processor.
                "KiInterruptDispatchNoLockNoEtw"
                | "KiInterruptDispatchNoLock"
                | "KiInterruptDispatch"
                | "KiDpcInterrupt"
                | "KiNmiInterrupt" => self.trap_entry_frame(rva, end, true)?,
                _ => with_min_alloc(frame_for(function, rva, end), function),
            };
            let f = self.modules[mi].image.add_frame(frame).clone();
            Ok((self.modules[mi].image.base + u64::from(rva), f))
        } else if let Some(rva) = self.modules[mi]
            .own
            .as_ref()
            .and_then(|t| t.symbol(function))
        {
            // Where the module's own table puts it (no export: its symbols name it).
            let rva = rva as u32;
            let img = &mut self.modules[mi].image;
            let frame = with_min_alloc(frame_for(function, rva, rva + 0x400), function);
            let f = img.add_frame(frame).clone();
            Ok((img.base + u64::from(rva), f))
        } else {
            let img = &mut self.modules[mi].image;
            let rva = img.define_function(function, 0x600);
            let frame = with_min_alloc(frame_for(function, rva, rva + 0x600), function);
            let f = img.add_frame(frame).clone();
            Ok((img.base + u64::from(rva), f))
        }
    }

    /// Loads (links into the loader's list) or unloads module `i`, one made with
    /// [`System::add_module`] and `listed` false; its image stays mapped. Returns what the
    /// debugger's load-symbols report carries: (base, size, path).
    pub fn set_module_loaded(
        &mut self,
        i: usize,
        loaded: bool,
    ) -> Result<(u64, u32, String), SimError> {
        let head = self.k.sym("PsLoadedModuleList")?;
        let ty = self.k.families.loader_entry;
        let m = self
            .modules
            .get(i)
            .ok_or_else(|| SimError::Config(format!("no module {i}")))?;
        let (ldr, was, image) = (m.ldr, m.listed, &m.image);
        let out = (image.base, image.size, image.path.clone());
        if ldr == 0 {
            return Err(SimError::Config(format!(
                "module {} has no loader entry",
                image.name
            )));
        }
        let links = ldr + self.k.off(ty, "InLoadOrderLinks")?;
        match (was, loaded) {
            (false, true) => self.k.list_append(head, links),
            (true, false) => self.k.list_remove(links),
            _ => {}
        }
        self.modules[i].listed = loaded;
        Ok(out)
    }

    pub(super) fn write_module_list(&mut self) -> Result<(), SimError> {
        let head = self.k.sym("PsLoadedModuleList")?;
        let ty = self.k.families.loader_entry;
        let size = self.k.size(ty)?;
        for i in 0..self.modules.len() {
            let (base, size_of_image, path, file) = {
                let m = &self.modules[i].image;
                (m.base, m.size, m.path.clone(), m.name.clone())
            };
            let e = self
                .pool
                .alloc(&mut self.k, PoolKind::NonPaged, size + 0x200, tag("MmLd"))?;
            let strings = e + size.div_ceil(16) * 16;
            self.modules[i].ldr = e;
            let listed = self.modules[i].listed;
            let k = &mut self.k;
            let links = e + k.off(ty, "InLoadOrderLinks")?;
            if listed {
                k.list_append(head, links);
            } else {
                k.list_init(links);
            }
            k.set(e, ty, "DllBase", base)?;
            k.set(e, ty, "EntryPoint", base + 0x1000)?;
            k.set(e, ty, "SizeOfImage", u64::from(size_of_image))?;
            k.unicode_string(e + k.off(ty, "FullDllName")?, strings, &path);
            let short_at = strings + (path.len() as u64 + 1) * 2;
            k.unicode_string(
                e + k.off(ty, "BaseDllName")?,
                short_at.div_ceil(8) * 8,
                &file,
            );
        }
        Ok(())
    }
}

impl System {
    /// The frame of an exception entry, laid out as the kernel's `_KTRAP_FRAME` says: RBP
    /// pushed into its `Rbp`, the error code and machine frame above at `ErrorCode` and `Rip`.
    fn trap_entry_frame(&self, rva: u32, end: u32, interrupt: bool) -> Result<Frame, SimError> {
        let rbp = self.k.off("_KTRAP_FRAME", "Rbp")?;
        let error = self.k.off("_KTRAP_FRAME", "ErrorCode")?;
        let rip = self.k.off("_KTRAP_FRAME", "Rip")?;
        if error != rbp + 8 || rip != rbp + 0x10 {
            return Err(SimError::Config(format!(
                "_KTRAP_FRAME has Rbp at {rbp:#x}, ErrorCode at {error:#x}, Rip at {rip:#x}: \
                 not the layout an exception entry pushes"
            )));
        }
        Ok(Frame {
            rva,
            end,
            pushes: vec![Gpr::Rbp],
            alloc: rbp as u32,
            saves: vec![],
            machine_frame: true,
            dummy_code: interrupt,
            unwind_rva: 0,
        })
    }
}

fn with_min_alloc(mut f: Frame, function: &str) -> Frame {
    // Frames that hold a structure in their locals get room for it.
    let min = match function {
        "ExpWaitForResource" => 0x60,
        "ExWaitForRundownProtectionReleaseCacheAware" => 0x50,
        // The exception record and exception frame of a dispatch, the context record built
        // from them.
        "KiExceptionDispatch" => 0x1d8,
        "KiDispatchException" => 0x5c0,
        _ => 0,
    };
    if f.alloc < min {
        f.alloc = min;
        if !(8 + f.size_to_return()).is_multiple_of(16) {
            f.alloc += 8;
        }
    }
    f
}
