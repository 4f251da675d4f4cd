//! A weights file of any format (`.pth` zip or legacy, safetensors with cnas metadata), read
//! from a file as `--weights` reads it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let path = std::env::temp_dir().join(format!("cnas-fuzz-weights-{}", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    if let Ok(Some(metadata)) = cnas::weights::read_metadata(&path) {
        let _ = cnas::weights::network_from_metadata(&path, &metadata);
    }
    let _ = cnas::weights::read_all(&path);
});
