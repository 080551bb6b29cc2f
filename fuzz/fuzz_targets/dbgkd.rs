#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kdnet_fuzz::targets::dbgkd(data));
