//! Genotype text as `--arch FILE` reads it: JSON or DARTS text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(text) = std::str::from_utf8(bytes) {
        if let Ok(g) = cnas::space::Genotype::parse_any(text) {
            // What parses survives a round trip through both forms.
            assert_eq!(cnas::space::Genotype::parse_any(&g.to_json_pretty()).ok(), Some(g.clone()));
            assert_eq!(cnas::space::Genotype::from_darts_str(&g.to_darts_string()).ok(), Some(g));
        }
    }
});
