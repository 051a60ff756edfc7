#![no_main]
use tenpak_fuzz as _; // the bounded allocator
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tenpak_pack::fuzzing::safetensors(data);
});
