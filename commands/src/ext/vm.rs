//! `!vm [FLAGS]`: the memory manager's counters ([`kdnet_model::nt::vm`]) as WinDbg shows
//! them: page files, memory and pool counters, the commit breakdown and its derived lines, the
//! commit-failure banner, warnings, and the per-process commit table.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;

use crate::args::{Args, Syntax, opt_expr};
use crate::engine::{CmdError, Engine};
use crate::registry::Render;
pub use kdnet_model::nt::vm::{banner_failures, failure_counts};

/// `!vm [FLAGS]`.
pub const SYNTAX: Syntax = Syntax::params(&[opt_expr("FLAGS")]);

/// What `!vm` shows. Counts are in 4 KB pages.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct VirtualMemory {
    /// Failed commit requests, as the banner counts them (ChargeCommitmentFailures[0] + [1]).
    pub commit_failures: u64,
    /// The four ChargeCommitmentFailures counters.
    pub commit_failure_counts: [u32; 4],
    /// Commit charged.
    pub committed_pages: u64,
    /// The commit limit.
    pub commit_limit_pages: u64,
    /// What the commit limit can grow to (null when the build does not keep it).
    pub commit_limit_maximum_pages: Option<u64>,
    /// The peak commit (null when the build does not keep it).
    pub peak_commit_pages: Option<u64>,
    /// The system's commit lines summed (`Sum System Commit`).
    pub sum_system_commit_pages: u64,
    /// The processes' commit summed (`Total Private`).
    pub total_private_pages: u64,
    /// Committed minus the two sums above (`Misc/Transient Commit`; negative when they exceed
    /// it).
    pub misc_transient_pages: i64,
    /// The page files (null when the list could not be read).
    pub paging_files: Option<Vec<PagingFile>>,
    /// Each counter line the build has, by its label in lower case with `_` for spaces
    /// (`physical_memory`, `available_pages`, `nonpagedpool_usage`, `process_commit`, …): null
    /// when the build does not keep it or it could not be read.
    pub counters: BTreeMap<String, Option<u64>>,
    /// The warnings, as the text's `**********` lines say them.
    pub warnings: Vec<String>,
    /// Each process's commit, the most first.
    pub processes: Vec<ProcessCommit>,
    /// When the page files could not all be read: why, and those that were.
    #[serde(skip)]
    pub unreadable_paging_files: Option<(String, Vec<PagingFile>)>,
    /// Whether the text shows the process table (flag 1 leaves it out).
    #[serde(skip)]
    pub show_processes: bool,
}

/// A page file.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PagingFile {
    /// Its name.
    pub name: String,
    /// Its current size.
    pub current_pages: u64,
    /// Its free space.
    pub free_pages: u64,
    /// Its minimum size.
    pub minimum_pages: u64,
    /// Its maximum size.
    pub maximum_pages: u64,
}

/// One process's commit.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ProcessCommit {
    /// Its id.
    pub pid: u64,
    /// Its image name.
    pub image: String,
    /// Its commit charge.
    pub commit_pages: u64,
}

fn kb(pages: u64) -> u64 {
    pages.saturating_mul(4)
}

fn line(label: &str, pages: u64) -> String {
    format!(
        "{:<26}{:>10} ({:>12} Kb)\n",
        format!("{label}:"),
        pages,
        kb(pages)
    )
}

/// A counter's member name in `counters`.
fn key(label: &str) -> String {
    label.to_ascii_lowercase().replace([' ', '/'], "_")
}

/// Lines that are not commit, in display order (every build lists them in this order).
const MEMORY: [&str; 11] = [
    "Physical Memory",
    "Available Pages",
    "ResAvail Pages",
    "Free System PTEs",
    "Modified Pages",
    "Modified PF Pages",
    "Modified No Write Pages",
    "NonPagedPool Usage",
    "NonPagedPool Max",
    "PagedPool Usage",
    "PagedPool Maximum",
];

/// Lines that are commit charged to the system (summed into `Sum System Commit`).
const SYSTEM_COMMIT: [&str; 13] = [
    "Shared Commit",
    "Special Pool",
    "Kernel Stacks",
    "Pages For MDLs",
    "NonPagedPool Commit",
    "PagedPool Commit",
    "Driver Commit",
    "Boot Commit",
    "PFN Array Commit",
    "System PageTables",
    "ProcessLockedFilePages",
    "Pagefile Hash Pages",
    "Process Commit",
];

/// `!vm [FLAGS]`: flag 1 leaves out the process table.
pub fn run(e: &mut Engine, _verb: &str, args: &Args<'_>) -> Result<VirtualMemory, CmdError> {
    let flags = args.expr(e, "FLAGS")?.unwrap_or(0);
    let vm = kdnet_model::nt::vm::read(&mut e.kernel)?;
    let get = |name: &str| vm.lines.iter().find(|l| l.0 == name).and_then(|l| l.1);
    let sum = SYSTEM_COMMIT
        .iter()
        .filter_map(|l| get(l))
        .fold(0u64, |a, v| a.saturating_add(v));
    let private: u64 = vm.processes.iter().fold(0u64, |a, p| a.saturating_add(p.2));
    let misc = (vm.committed as i64)
        .wrapping_sub(sum as i64)
        .wrapping_sub(private as i64);
    // Warnings, as the classic extension raised them.
    let mut warnings = Vec::new();
    let failed = banner_failures(&vm.failures);
    if failed > 0 {
        warnings.push(format!("{failed} commit requests have failed"));
    }
    if misc < 0 {
        warnings.push(format!(
            "Sum of individual system commit + Process commit exceeds overall commit by {} Kb",
            misc.saturating_mul(-4)
        ));
    }
    if vm.committed.saturating_add(100) > vm.limit && vm.limit > 0 {
        warnings.push("Number of committed pages is near limit".into());
    }
    if let Some(n) = vm.pool_failures.filter(|n| *n > 0) {
        warnings.push(format!("{n} pool allocations have failed"));
    }
    if let (Some(used), Some(max)) = (get("NonPagedPool Usage"), get("NonPagedPool Max"))
        && max > 0
        && u128::from(used) * 100 > u128::from(max) * 80
    {
        warnings.push("Excessive NonPaged Pool Usage".into());
    }
    if let (Some(used), Some(max)) = (get("PagedPool Usage"), get("PagedPool Maximum"))
        && max > 0
        && u128::from(used) * 100 > u128::from(max) * 95
    {
        warnings.push("Excessive Paged Pool Usage".into());
    }
    if get("Free System PTEs").is_some_and(|p| p < 1024) {
        warnings.push("Running out of system PTEs".into());
    }
    if get("Available Pages").is_some_and(|a| a < 50)
        && get("Modified Pages").is_some_and(|m| m > 200)
    {
        warnings.push("High Number Of Modified Pages".into());
    }
    let files: Vec<PagingFile> = vm
        .paging_files
        .iter()
        .map(|(name, cur, free, min, max)| PagingFile {
            name: name.clone(),
            current_pages: *cur,
            free_pages: *free,
            minimum_pages: *min,
            maximum_pages: *max,
        })
        .collect();
    let (paging_files, unreadable_paging_files) = match &vm.paging_files_unreadable {
        // Not known (null) rather than none when the list could not be read.
        Some(why) => (None, Some((why.clone(), files))),
        None => (Some(files), None),
    };
    Ok(VirtualMemory {
        commit_failures: failed,
        commit_failure_counts: vm.failures,
        committed_pages: vm.committed,
        commit_limit_pages: vm.limit,
        commit_limit_maximum_pages: vm.limit_maximum,
        peak_commit_pages: vm.peak,
        sum_system_commit_pages: sum,
        total_private_pages: private,
        misc_transient_pages: misc,
        paging_files,
        counters: vm.lines.iter().map(|(l, v)| (key(l), *v)).collect(),
        warnings,
        processes: vm
            .processes
            .iter()
            .map(|(pid, image, commit)| ProcessCommit {
                pid: *pid,
                image: image.clone(),
                commit_pages: *commit,
            })
            .collect(),
        unreadable_paging_files,
        show_processes: flags & 1 == 0,
    })
}

impl Render for VirtualMemory {
    fn render(&self, out: &mut String) {
        let get = |label: &str| self.counters.get(&key(label)).copied().flatten();
        let files = match (&self.unreadable_paging_files, &self.paging_files) {
            (Some((why, read)), _) => {
                out.push_str(&format!("Page File: ? ({why})\n"));
                read.as_slice()
            }
            (None, Some(files)) => files.as_slice(),
            (None, None) => &[],
        };
        for f in files {
            out.push_str(&format!(
                "Page File: {}\n  Current: {:>11} Kb  Free Space: {:>11} Kb\n  Minimum: {:>11} Kb  Maximum:    {:>11} Kb\n",
                f.name,
                kb(f.current_pages),
                kb(f.free_pages),
                kb(f.minimum_pages),
                kb(f.maximum_pages)
            ));
        }
        for label in MEMORY.iter().chain(SYSTEM_COMMIT.iter()) {
            if let Some(v) = get(label) {
                out.push_str(&line(label, v));
            }
        }
        let misc = self.misc_transient_pages;
        out.push_str(&line("Sum System Commit", self.sum_system_commit_pages));
        out.push_str(&line("Total Private", self.total_private_pages));
        out.push_str(&format!(
            "{:<26}{:>10} ({:>12} Kb)\n",
            "Misc/Transient Commit:",
            misc,
            misc.saturating_mul(4)
        ));
        out.push_str(&line("Committed pages", self.committed_pages));
        out.push_str(&line("Commit limit", self.commit_limit_pages));
        if let Some(p) = self.peak_commit_pages {
            out.push_str(&line("Peak commit", p));
        }
        if let Some(m) = self.commit_limit_maximum_pages {
            out.push_str(&line("Commit limit maximum", m));
        }
        for w in &self.warnings {
            out.push_str(&format!("\n\t********** {w} **********\n"));
        }
        if self.show_processes {
            out.push_str(&format!(
                "\n{:>8} {:<32}{:>14} {:>16}\n",
                "Pid", "ImageName", "Commit", "(Kb)"
            ));
            for p in &self.processes {
                out.push_str(&format!(
                    "{:>8} {:<32}{:>14} ({:>10} Kb)\n",
                    format!("{:04x}", p.pid),
                    p.image,
                    p.commit_pages,
                    kb(p.commit_pages)
                ));
            }
        }
    }
}
