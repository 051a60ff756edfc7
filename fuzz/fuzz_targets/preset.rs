#![no_main]
// tenpak_fuzz: the bounded allocator and the built-in registry
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tenpak_pack::fuzzing::preset(data, tenpak_fuzz::registry());
});
