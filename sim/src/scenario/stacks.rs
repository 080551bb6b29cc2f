//! Stack shapes the scenarios' threads share.

use crate::system::{Call, call};

/// The frames of `specs`, innermost first.
pub(super) fn stack(specs: &[&str]) -> Vec<Call> {
    specs.iter().map(|s| call(s)).collect()
}

const WAIT_TAIL: [&str; 3] = [
    "nt!KiSwapContext+0x76",
    "nt!KiSwapThread+0x2fd",
    "nt!KiCommitThreadWait+0x137",
];

/// A waiting thread's stack: the wait tail, then `rest`.
pub(super) fn waiting(rest: &[&str]) -> Vec<Call> {
    let mut v = stack(&WAIT_TAIL);
    v.extend(stack(rest));
    v
}

/// The outermost frames of a system worker thread.
pub(super) fn system_tail() -> [&'static str; 3] {
    [
        "nt!ExpWorkerThread+0x105",
        "nt!PspSystemThreadStartup+0x55",
        "nt!KiStartSystemThread+0x28",
    ]
}

/// The outermost frame of a thread that entered the kernel from user mode.
pub(super) fn user_tail() -> [&'static str; 1] {
    ["nt!KiSystemServiceCopyEnd+0x25"]
}
