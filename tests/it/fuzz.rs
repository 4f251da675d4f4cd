//! Fuzzing the readers of untrusted files: genotypes (JSON and DARTS text), weights (`.pth` zip
//! and legacy, safetensors with cnas metadata), CIFAR-10 (batch files and the `.tar.gz`).
//!
//! Each `fuzz_*` test mutates the real files of `tests/fuzz-corpus/<target>/` for a bounded
//! time and requires that no input makes its reader panic, hang or allocate without bound
//! (see `harness`); every seed itself must be accepted, so the mutants start deep inside the
//! formats. 48 s in all by default, split between the targets (they run in parallel);
//! `CNAS_FUZZ_SECS=600 cargo test --test it fuzz::` runs longer, `CNAS_FUZZ_SEED=N` replays.
//! The `regression_*` tests are the exact inputs the fuzzing (or reading the readers) found.
use std::path::{Path, PathBuf};

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use cnas::space::Genotype;
use harness::{fuzz, peak_bytes, Target, Verdict};
use mutate::{mutate_bytes, mutate_bytes_in_place, mutate_text};

mod craft;
mod harness;
mod mutate;
mod regression;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus").join(target)
}

/// The seeds of `target` whose names end with `ending`, sorted by name.
fn seeds(target: &str, ending: &str) -> Vec<Vec<u8>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(corpus_dir(target))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(ending))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no {ending} seeds in {}", corpus_dir(target).display());
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn verdict<T, E>(r: &Result<T, E>) -> Verdict {
    if r.is_ok() {
        Verdict::Accepted
    } else {
        Verdict::Refused
    }
}

/// Parses a genotype the ways the CLI does; what parses must also survive a round trip.
fn check_genotype(_: &Path, bytes: &[u8]) -> Verdict {
    let Ok(text) = std::str::from_utf8(bytes) else { return Verdict::Refused };
    let _ = Genotype::from_json_str(text);
    let _ = Genotype::from_darts_str(text);
    let parsed = Genotype::parse_any(text);
    if let Ok(g) = &parsed {
        assert_eq!(&Genotype::parse_any(&g.to_json_pretty()).unwrap(), g);
        assert_eq!(&Genotype::from_darts_str(&g.to_darts_string()).unwrap(), g);
    }
    verdict(&parsed)
}

#[test]
fn fuzz_genotype_json() {
    let seeds = seeds("genotype", ".json");
    fuzz(Target { name: "genotype_json", seeds, mutate: mutate_text, check: check_genotype, share: 0.12 });
}

#[test]
fn fuzz_genotype_darts_text() {
    let seeds = seeds("genotype", ".txt");
    fuzz(Target { name: "genotype_darts", seeds, mutate: mutate_text, check: check_genotype, share: 0.12 });
}

/// Reads a weights file as `eval`, `export` and training's resume do.
fn check_weights(path: &Path, _: &[u8]) -> Verdict {
    if let Ok(Some(metadata)) = cnas::weights::read_metadata(path) {
        let _ = cnas::weights::network_from_metadata(path, &metadata);
    }
    let tensors = cnas::weights::read_all(path);
    if let Ok(tensors) = &tensors {
        // What is read is whole: every tensor's bytes can be copied out.
        for (_, t) in tensors {
            let _ = t.sum(t.kind());
        }
    }
    verdict(&tensors)
}

/// Half of the time, the safetensors JSON header is mutated as text (its length kept right).
fn mutate_safetensors(rng: &mut ChaCha8Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut v = mutate::mutate_bytes(rng, seeds);
    if rng.random_bool(0.5) {
        let seed = &seeds[rng.random_range(0..seeds.len())];
        let len = u64::from_le_bytes(seed[..8].try_into().unwrap()) as usize;
        let header = mutate_text(rng, &[seed[8..8 + len].to_vec()]);
        v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(&header);
        v.extend_from_slice(&seed[8 + len..]);
    }
    v
}

#[test]
fn fuzz_safetensors() {
    let seeds = seeds("safetensors", ".safetensors");
    fuzz(Target {
        name: "safetensors",
        seeds,
        mutate: mutate_safetensors,
        check: check_weights,
        share: 0.14,
    });
}

/// Mostly one entry of the archive mutated (the pickle most often) and the archive rebuilt,
/// so the mutants pass the zip layer and its checksums; else the zip's own bytes.
fn mutate_pth_zip(rng: &mut ChaCha8Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    if rng.random_bool(0.3) {
        return mutate_bytes(rng, seeds);
    }
    let mut entries = craft::unzip(&seeds[rng.random_range(0..seeds.len())]);
    let pickles: Vec<Vec<u8>> =
        entries.iter().filter(|(n, _)| n.ends_with("data.pkl")).map(|e| e.1.clone()).collect();
    let i = if rng.random_bool(0.7) {
        entries.iter().position(|(n, _)| n.ends_with("data.pkl")).unwrap_or(0)
    } else {
        rng.random_range(0..entries.len())
    };
    match rng.random_range(0..10) {
        0 => drop(entries.remove(i)),
        1 => entries[i].0.push('x'),
        _ => mutate_bytes_in_place(rng, &mut entries[i].1, &pickles),
    }
    craft::zip_of(&entries)
}

#[test]
fn fuzz_pth_zip() {
    let seeds = seeds("pth", "zip.pth");
    fuzz(Target { name: "pth_zip", seeds, mutate: mutate_pth_zip, check: check_weights, share: 0.2 });
}

#[test]
fn fuzz_pth_legacy() {
    let seeds = seeds("pth", "legacy.pth");
    fuzz(Target { name: "pth_legacy", seeds, mutate: mutate_bytes, check: check_weights, share: 0.2 });
}

fn check_cifar_records(path: &Path, bytes: &[u8]) -> Verdict {
    let parsed = cnas::data::cifar10::parse_records(bytes, path);
    if let Ok((images, labels)) = &parsed {
        assert_eq!(images.len(), 3072 * labels.len());
    }
    verdict(&parsed)
}

#[test]
fn fuzz_cifar_records() {
    let seeds = seeds("cifar10", ".bin");
    fuzz(Target {
        name: "cifar_records",
        seeds,
        mutate: mutate_bytes,
        check: check_cifar_records,
        share: 0.04,
    });
}

/// The tar inside is mutated (its octal sizes as text too), then compressed again; now and
/// then the compressed bytes themselves.
fn mutate_cifar_archive(rng: &mut ChaCha8Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    if rng.random_bool(0.1) {
        return mutate_bytes(rng, seeds);
    }
    let tars: Vec<Vec<u8>> = seeds.iter().map(|s| craft::gunzip(s)).collect();
    let tar = if rng.random_bool(0.5) { mutate_bytes(rng, &tars) } else { mutate_text(rng, &tars) };
    craft::gzip(&tar)
}

fn check_cifar_archive(path: &Path, _: &[u8]) -> Verdict {
    verdict(&cnas::data::cifar10::Cifar10::open_archive(path))
}

#[test]
fn fuzz_cifar_archive() {
    let seeds = seeds("cifar10", ".tar.gz");
    fuzz(Target {
        name: "cifar_archive",
        seeds,
        mutate: mutate_cifar_archive,
        check: check_cifar_archive,
        share: 0.18,
    });
}

/// Writes the seeds cnas makes itself: every published genotype as cnas writes it (JSON) and
/// as DARTS text, one in the ordinal JSON form, and safetensors files (plain, and a
/// checkpoint-like one with cnas metadata). Run by hand when the formats change.
#[test]
#[ignore]
fn write_corpus() {
    use cnas::model::{NetworkConfig, NetworkKind};
    use tch::{Kind, Tensor};
    let dir = corpus_dir("genotype");
    for name in cnas::space::PUBLISHED {
        let g = cnas::space::published(name).unwrap();
        std::fs::write(dir.join(format!("{name}.json")), g.to_json_pretty()).unwrap();
        std::fs::write(dir.join(format!("{name}.txt")), g.to_darts_string()).unwrap();
    }
    let darts = cnas::space::published("DARTS_V2").unwrap();
    let ordinal = serde_json::to_string(&darts.to_json_ordinal().unwrap()).unwrap();
    std::fs::write(dir.join("DARTS_V2_ordinal.json"), ordinal).unwrap();

    let dir = corpus_dir("safetensors");
    let tensors = vec![
        ("conv.weight".to_string(), Tensor::arange(24, (Kind::Float, tch::Device::Cpu)).view([2, 3, 2, 2])),
        ("bn.num_batches_tracked".to_string(), Tensor::from(3i64)),
        ("fc.bias".to_string(), Tensor::from_slice(&[0.5f32, -1.0, 2.0])),
    ];
    cnas::weights::save_tensors(&tensors, &dir.join("plain.safetensors"), Default::default()).unwrap();
    let config = NetworkConfig {
        kind: NetworkKind::Cifar,
        genotype: darts,
        init_channels: 4,
        layers: 3,
        num_classes: 10,
        auxiliary: false,
    };
    let metadata = [
        ("format".to_string(), "cnas".to_string()),
        ("network".to_string(), serde_json::to_string(&config).unwrap()),
        ("epoch".to_string(), "3".to_string()),
    ];
    cnas::weights::save_tensors(
        &tensors,
        &dir.join("checkpoint.safetensors"),
        metadata.into_iter().collect(),
    )
    .unwrap();
    let pth = cnas::export::pth::state_dict_bytes(&tensors).unwrap();
    std::fs::write(corpus_dir("pth").join("cnas_export_zip.pth"), pth).unwrap();
}

/// Runs `f`, requiring it to stay within the fuzzing's allocation bound for `len` input bytes.
fn bounded<T>(len: usize, f: impl FnOnce() -> T) -> T {
    let (out, peak) = peak_bytes(f);
    assert!(peak <= harness::allocation_limit(len), "allocated {peak} bytes for {len} input bytes");
    out
}
