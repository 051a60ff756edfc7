#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tenpak_host::fuzzing::safetensors(data);
});
