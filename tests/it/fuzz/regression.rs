//! The exact inputs that made a reader panic, overflow its stack, hang or allocate without
//! bound before it was fixed; each must now be refused as a bad file, quickly and within the
//! fuzzing's allocation bound.
use std::path::{Path, PathBuf};

use cnas::space::Genotype;

use super::bounded;
use super::craft::{self, legacy_file, state_dict, zip_file, Pickle};

fn write(name: &str, bytes: &[u8]) -> PathBuf {
    let path = super::harness::work_dir("regression").join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Reads `path` as weights and requires a bad-file error containing `needle`.
fn refused(path: &Path, needle: &str) {
    let len = std::fs::metadata(path).unwrap().len() as usize;
    let err = bounded(len, || cnas::weights::read_all(path)).expect_err("read, but should be refused");
    let msg = err.to_string();
    assert!(matches!(err, cnas::Error::BadFile { .. }), "{msg}");
    assert!(msg.contains(needle), "{msg:?} does not say {needle:?}");
}

/// Both formats around the same pickle: each must be refused saying `needle`.
fn refused_in_both_formats(name: &str, contents: &[u8], needle: &str) {
    refused(&write(&format!("{name}_legacy.pth"), &legacy_file(contents, &[])), needle);
    refused(&write(&format!("{name}_zip.pth"), &zip_file(contents, &[])), needle);
}

#[test]
fn regression_crafted_files_read_as_written() {
    let contents = state_dict("w", |p| {
        p.tensor("0", 6, 0, &[2, 3], &[3, 1]);
    });
    let legacy = write("good_legacy.pth", &legacy_file(&contents, &[("0", 6)]));
    let zip = write("good_zip.pth", &zip_file(&contents, &[("0", vec![0; 24])]));
    for path in [legacy, zip] {
        let tensors = cnas::weights::read_all(&path).unwrap();
        assert_eq!(tensors.len(), 1);
        assert_eq!(tensors[0].1.size(), [2, 3]);
    }
}

/// candle's tensor description took its arguments by `Vec::remove`: a short tuple panicked.
#[test]
fn regression_pth_tensor_with_too_few_arguments() {
    let contents = state_dict("w", |p| {
        p.global("torch._utils", "_rebuild_tensor_v2").op(b")R");
    });
    refused_in_both_formats("short_rebuild", &contents, "holds no tensors");
}

/// candle decodes LONG1 by shifting `i * 8` bits for each of its up to 255 bytes: past 8 bytes
/// the shift overflowed (a panic in debug builds).
#[test]
fn regression_pth_integer_of_32_bytes() {
    let contents = state_dict("w", |p| {
        p.op(&[0x8a, 32]).op(&[1; 32]);
    });
    refused_in_both_formats("long1", &contents, "32-byte integer");
}

/// A string whose length field says 4 GiB: candle reserved it before reading a byte.
#[test]
fn regression_pth_string_longer_than_the_file() {
    let contents = state_dict("w", |p| {
        p.op(b"X").op(&0xFFFF_FFF0u32.to_le_bytes()).op(b"abc");
    });
    refused_in_both_formats("long_string", &contents, "truncated pickle");
}

/// Forty bytes of memo copies doubling an object: 2^40 objects (a "pickle bomb").
#[test]
fn regression_pth_memo_doubling() {
    let mut p = Pickle::default();
    p.op(b"}").string("w").op(b"]q\x00");
    for _ in 0..40 {
        p.op(b"h\x00h\x00\x86q\x00");
    }
    let contents = p.op(b"s.").0.clone();
    refused_in_both_formats("memo_bomb", &contents, "expands to more than");
}

/// A 100 kB string copied 60,000 times through the memo: 6 GB from 220 kB.
#[test]
fn regression_pth_memo_copies_of_a_long_string() {
    let mut p = Pickle::default();
    p.op(b"}").string("w").string(&"a".repeat(100_000)).op(b"q\x00(");
    for _ in 0..60_000 {
        p.op(b"h\x00");
    }
    let contents = p.op(b"ts.").0.clone();
    refused_in_both_formats("string_copies", &contents, "expands to more than");
}

/// 200,000 nested one-element tuples: dropping the object overflowed the stack.
#[test]
fn regression_pth_deep_nesting() {
    let contents = state_dict("w", |p| {
        p.op(b"N").op(&[0x85; 200_000]);
    });
    refused_in_both_formats("deep", &contents, "more than 100 deep");
}

/// A 2^20 × 2^20 view with zero strides of a one-element storage: made contiguous, 4 TiB.
#[test]
fn regression_pth_view_larger_than_its_storage() {
    let contents = state_dict("w", |p| {
        p.tensor("0", 1, 0, &[1 << 20, 1 << 20], &[0, 0]);
    });
    refused(
        &write("broadcast_legacy.pth", &legacy_file(&contents, &[("0", 1)])),
        "reaches past the 1 elements",
    );
    refused(
        &write("broadcast_zip.pth", &zip_file(&contents, &[("0", vec![0; 4])])),
        "reaches past the 1 elements",
    );
    // A plain shape larger than the storage present: candle allocated it before reading.
    let contents = state_dict("w", |p| {
        p.tensor("0", 6, 0, &[1 << 20, 1 << 20], &[1 << 20, 1]);
    });
    refused(
        &write("huge_zip.pth", &zip_file(&contents, &[("0", vec![0; 24])])),
        "reaches past the 6 elements",
    );
}

/// A legacy storage claiming 2^62 - 1 floats: the data's end overflowed (a panic in debug).
#[test]
fn regression_legacy_storage_count_overflowing() {
    let contents = state_dict("w", |p| {
        p.tensor("0", 6, 0, &[2, 3], &[3, 1]);
    });
    let mut bytes = legacy_file(&contents, &[("0", 6)]);
    let count_at = bytes.len() - 24 - 8;
    bytes[count_at..count_at + 8].copy_from_slice(&0x3FFF_FFFF_FFFF_FFFFu64.to_le_bytes());
    refused(&write("count_legacy.pth", &bytes), "claims 4611686018427387903 elements");
}

/// A safetensors header announced at 100 MiB in a 10-byte file: the buffer was made first.
#[test]
fn regression_safetensors_header_longer_than_the_file() {
    let mut bytes = ((100u64 << 20) - 1).to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    let path = write("long_header.safetensors", &bytes);
    let err = bounded(bytes.len(), || cnas::weights::read_metadata(&path)).unwrap_err();
    assert!(err.to_string().contains("truncated safetensors header"), "{err}");
}

/// `[[[[…` 100,000 deep: the recursive descent overflowed the stack.
#[test]
fn regression_darts_text_deep_nesting() {
    let text = format!("Genotype(normal={}", "[".repeat(100_000));
    let err = bounded(text.len(), || Genotype::from_darts_str(&text)).unwrap_err();
    assert!(err.to_string().contains("nested more than"), "{err}");
}

/// `range(2, 2^63 - 1)` for a concat: expanded into a list before any check.
#[test]
fn regression_darts_text_huge_concat_range() {
    let darts = cnas::space::published("DARTS_V2").unwrap().to_darts_string();
    let text = darts.replacen("range(2, 6)", "range(2, 9223372036854775807)", 1);
    assert_ne!(text, darts);
    let err = bounded(text.len(), || Genotype::from_darts_str(&text)).unwrap_err();
    assert!(err.to_string().contains("names more nodes than the cell has"), "{err}");
}

/// A tar entry claiming 8 GiB: the buffer for it was reserved from the header's word.
#[test]
fn regression_cifar_archive_entry_claiming_8_gib() {
    let tar = craft::tar_claiming("cifar-10-batches-bin/data_batch_1.bin", 0o77777777777, &[0; 3073]);
    let path = write("claims_8_gib.tar.gz", &craft::gzip(&tar));
    let err = bounded(tar.len(), || cnas::data::cifar10::Cifar10::open_archive(&path)).unwrap_err();
    assert!(err.to_string().contains("more than a CIFAR-10 batch"), "{err}");
}

/// A well-formed cell of 40,000 edges: checking it counted each node's edges over all edges
/// (quadratic: 8·10^8 steps here); cells are now bounded before they are checked.
#[test]
fn regression_genotype_with_40000_edges() {
    let edges: Vec<String> = (0..40_000).map(|i| format!("[\"none\", 0, {}]", 2 + i / 2)).collect();
    let edges = edges.join(",");
    let cell = format!("{{\"edges\": [{edges}], \"concat\": [2]}}");
    let text = format!("{{\"normal\": {cell}, \"reduce\": {cell}}}");
    let started = std::time::Instant::now();
    let err = Genotype::parse_any(&text).unwrap_err();
    assert!(err.to_string().contains("at most 1024"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "took {:?}", started.elapsed());
}
