//! A `cifar-10-binary.tar.gz`, read from a file.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let path = std::env::temp_dir().join(format!("cnas-fuzz-cifar-{}.tar.gz", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    let _ = cnas::data::cifar10::Cifar10::open_archive(&path);
});
