#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sandflow::fuzzing::set(data));
