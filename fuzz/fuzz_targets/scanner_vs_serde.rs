#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| egresswatch_fuzz_targets::scanner_vs_serde(data));
