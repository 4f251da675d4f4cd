//! The bytes of a CIFAR-10 batch file.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = cnas::data::cifar10::parse_records(bytes, std::path::Path::new("fuzz.bin"));
});
