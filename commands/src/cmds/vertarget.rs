//! `vertarget`: the target's build, processors, kernel base, module list and symbol source.

use schemars::JsonSchema;
use serde::Serialize;

use crate::args::Args;
use crate::engine::{CmdError, Engine, addr};
use crate::registry::Render;

/// Where every kernel maps KUSER_SHARED_DATA.
const KUSER_SHARED_DATA: u64 = 0xFFFF_F780_0000_0000;

/// What `vertarget` tells of the target.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Version {
    /// The Windows build number.
    pub build: u32,
    /// Where nt is loaded.
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "crate::hex::Hex")]
    pub kernel_base: u64,
    /// The address of `nt!PsLoadedModuleList` (null when not known).
    #[serde(serialize_with = "crate::hex::ser")]
    #[schemars(with = "Option<crate::hex::Hex>")]
    pub ps_loaded_module_list: Option<u64>,
    /// How many processors.
    pub processors: u32,
    /// Whether it is a live machine (false: a dump).
    pub live: bool,
    /// What the target is (the connection or the dump file).
    pub target: String,
    /// Where nt's symbols came from.
    pub symbols: String,
    /// The build lab string (`nt!NtBuildLab`: `20348.1.amd64fre.fe_release.210507-1500`;
    /// null when it could not be read).
    pub build_lab: Option<String>,
    /// Seconds since boot (null when the clock could not be read).
    pub uptime_seconds: Option<f64>,
    /// `nt!NtBuildNumber` as the kernel keeps it (the build, 0xF in the top nibble for a free
    /// build, 0xC for a checked one); null when it could not be read.
    pub nt_build_number: Option<u32>,
    /// The file version in the kernel image's version resource (`10.0.20348.288`; null when
    /// the image has none or it could not be read).
    pub image_version: Option<String>,
    /// The build KUSER_SHARED_DATA publishes (`NtBuildNumber`; null where the build's
    /// structure has no such member or it could not be read).
    pub shared_data_build: Option<u32>,
    /// Where the places a debugger reads the build disagree (the reply to GetVersion,
    /// `nt!NtBuildNumber`): the symbols may be another build's.
    pub warnings: Vec<String>,
}

pub(crate) fn run(e: &mut Engine, _verb: &str, _a: &Args<'_>) -> Result<Version, CmdError> {
    let info = e.kernel.mem.info().clone();
    let ps_loaded_module_list = info
        .ps_loaded_module_list
        .or_else(|| e.kernel.sym("PsLoadedModuleList").ok());
    // Both need the kernel's symbols and pages a triage dump may lack: said, not guessed.
    let build_lab = match e.kernel.sym("NtBuildLab") {
        Ok(at) => match e.kernel.mem.kread(at, 128) {
            Ok(b) => {
                let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
                Some(String::from_utf8_lossy(&b[..end]).into_owned())
            }
            Err(x) => {
                e.kernel
                    .note_incomplete(format!("nt!NtBuildLab could not be read: {x}"));
                None
            }
        },
        Err(_) => None,
    };
    // The kernel's own copy of its build, against the one the session was told.
    let mut warnings = Vec::new();
    let nt_build_number = match e.kernel.sym("NtBuildNumber") {
        Ok(at) => match e.kernel.mem.u32(at) {
            Ok(n) => {
                if n & 0xffff != e.kernel.build {
                    warnings.push(format!(
                        "nt!NtBuildNumber says build {} but the target reported {}: the \
                         kernel's symbols may be another build's",
                        n & 0xffff,
                        e.kernel.build
                    ));
                }
                Some(n)
            }
            Err(x) => {
                e.kernel
                    .note_incomplete(format!("nt!NtBuildNumber could not be read: {x}"));
                None
            }
        },
        Err(_) => None,
    };
    // The image's own version, and the copy KUSER_SHARED_DATA publishes.
    let image_version = match e.kernel.image_file_version(e.kernel.base) {
        Ok(Some(v)) => {
            if u32::from(v[2]) != e.kernel.build {
                warnings.push(format!(
                    "the kernel image's version resource says build {} but the target reported {}",
                    v[2], e.kernel.build
                ));
            }
            Some(format!("{}.{}.{}.{}", v[0], v[1], v[2], v[3]))
        }
        Ok(None) => None,
        Err(x) => {
            e.kernel.note_incomplete(format!(
                "the kernel image's version resource could not be read: {x}"
            ));
            None
        }
    };
    let shared_data_build = match e
        .kernel
        .nt()
        .ok()
        .and_then(|t| t.offset("_KUSER_SHARED_DATA", "NtBuildNumber").ok())
    {
        Some(off) => match e.kernel.mem.u32(KUSER_SHARED_DATA + off) {
            Ok(n) => {
                if n & 0xffff != e.kernel.build {
                    warnings.push(format!(
                        "KUSER_SHARED_DATA says build {} but the target reported {}",
                        n & 0xffff,
                        e.kernel.build
                    ));
                }
                Some(n)
            }
            Err(x) => {
                e.kernel
                    .note_incomplete(format!("KUSER_SHARED_DATA's build could not be read: {x}"));
                None
            }
        },
        None => None,
    };
    let uptime_seconds = match e.kernel.clocks() {
        Ok((_, interrupt, _)) => Some(interrupt as f64 / 1e7),
        Err(x) => {
            e.kernel
                .note_incomplete(format!("the uptime could not be read: {x}"));
            None
        }
    };
    Ok(Version {
        build_lab,
        image_version,
        shared_data_build,
        uptime_seconds,
        nt_build_number,
        warnings,
        build: e.kernel.build,
        kernel_base: e.kernel.base,
        ps_loaded_module_list,
        processors: info.processors,
        live: info.live,
        target: info.description,
        symbols: e.kernel.nt_source.clone(),
    })
}

impl Render for Version {
    fn render(&self, out: &mut String) {
        let product = match self.build {
            0..=7601 => "Windows 7",
            7602..=9600 => "Windows 8.1",
            _ => "Windows 10",
        };
        let kind = match self.nt_build_number.map(|n| n >> 28) {
            Some(0xC) => "Checked",
            _ => "Free",
        };
        out.push_str(&format!(
            "{product} Kernel Version {} MP ({} procs) {kind} x64\n",
            self.build, self.processors
        ));
        out.push_str(&format!(
            "Kernel base = 0x{} PsLoadedModuleList = 0x{}\n",
            addr(self.kernel_base),
            self.ps_loaded_module_list.map_or("?".into(), addr)
        ));
        if let Some(lab) = &self.build_lab {
            out.push_str(&format!("Built by: {lab}\n"));
        }
        if let Some(v) = &self.image_version {
            out.push_str(&format!("Kernel image version: {v}\n"));
        }
        if let Some(s) = self.uptime_seconds {
            out.push_str(&format!(
                "System Uptime: {}\n",
                super::session::uptime_text(s)
            ));
        }
        out.push_str(&format!("Target: {}\n", self.target));
        out.push_str(&format!("Symbols: {}\n", self.symbols));
        for w in &self.warnings {
            out.push_str(&format!("WARNING: {w}\n"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_product_from_the_build() {
        let mut v = Version {
            build: 7601,
            kernel_base: 0xfffff800_02a00000,
            ps_loaded_module_list: None,
            processors: 2,
            live: false,
            target: "memory.dmp".into(),
            symbols: "built-in".into(),
            build_lab: None,
            uptime_seconds: None,
            nt_build_number: None,
            image_version: None,
            shared_data_build: None,
            warnings: Vec::new(),
        };
        let mut text = String::new();
        v.render(&mut text);
        assert_eq!(
            text,
            "Windows 7 Kernel Version 7601 MP (2 procs) Free x64\n\
             Kernel base = 0xfffff800`02a00000 PsLoadedModuleList = 0x?\n\
             Target: memory.dmp\nSymbols: built-in\n"
        );
        v.build = 20348;
        v.ps_loaded_module_list = Some(0x10);
        let mut text = String::new();
        v.render(&mut text);
        assert!(text.starts_with("Windows 10 Kernel Version 20348 MP (2 procs)"));
        assert!(text.contains("PsLoadedModuleList = 0x00000000`00000010\n"));
        let j = serde_json::to_value(&v).unwrap();
        assert_eq!(j.as_object().unwrap().len(), 13);
        assert_eq!(j["ps_loaded_module_list"], "0x0000000000000010");
        v.nt_build_number = Some(0xC000_4E44);
        v.warnings = vec!["nt!NtBuildNumber says build 20036".into()];
        let mut text = String::new();
        v.render(&mut text);
        assert!(text.contains("(2 procs) Checked x64\n"), "{text}");
        assert!(text.ends_with("WARNING: nt!NtBuildNumber says build 20036\n"));
    }
}
