//! CIFAR-10 on the real copy in `../shared/data/cifar10`, plus error cases on generated files.
use std::path::{Path, PathBuf};

use cnas::data::cifar10::{self, Cifar10, Location, IMAGE_BYTES, RECORD_BYTES};
use cnas::data::{split_indices, Data, DataArgs, DatasetKind, LoaderOptions, Part, CIFAR10_MEAN};

use crate::common::{self, cifar10_dir as shared};

fn batches() -> PathBuf {
    shared().join("cifar-10-batches-bin")
}

#[test]
fn single_files_have_the_official_first_labels() {
    let (images, labels) = cifar10::read_records(&batches().join("data_batch_1.bin")).unwrap();
    assert_eq!(labels.len(), 10_000);
    assert_eq!(images.len(), 10_000 * IMAGE_BYTES);
    assert_eq!(&labels[..10], &[6, 9, 9, 4, 1, 1, 2, 7, 8, 3]);
    let (_, labels) = cifar10::read_records(&batches().join("test_batch.bin")).unwrap();
    assert_eq!(&labels[..10], &[3, 8, 8, 0, 6, 6, 1, 6, 3, 1]);
}

#[test]
fn whole_set_counts_balance_and_channel_means() {
    // Given the folder's parent: the usual --data.
    let cifar = Cifar10::open(&shared()).unwrap();
    assert_eq!(cifar.train.len(), 50_000);
    assert_eq!(cifar.test.len(), 10_000);
    let mut per_class = [0usize; 10];
    cifar.test.labels().iter().for_each(|&l| per_class[l as usize] += 1);
    assert_eq!(per_class, [1000; 10]);
    let mut per_class = [0usize; 10];
    cifar.train.labels().iter().for_each(|&l| per_class[l as usize] += 1);
    assert_eq!(per_class, [5000; 10]);
    assert_eq!(&cifar.train.labels()[..5], &[6, 9, 9, 4, 1]);
    // Records 10000.. come from data_batch_2.
    let (_, second) = cifar10::read_records(&batches().join("data_batch_2.bin")).unwrap();
    assert_eq!(&cifar.train.labels()[10_000..10_010], &second[..10]);

    // Mean of every training pixel per channel over all 50,000 images, computed by libtorch
    // (optimised even when the tests are not: about a second). The shared copy was rebuilt from
    // JPEGs, so its pixels are a few grey levels off, but its means stay within 1e-3.
    let pixels = tch::Tensor::from_slice(cifar.train.images()).view([50_000, 3, 1024]);
    let means = pixels.to_kind(tch::Kind::Float).mean_dim(&[0i64, 2][..], false, tch::Kind::Float) / 255.0;
    let means = Vec::<f32>::try_from(&means).unwrap().into_iter().map(f64::from).collect::<Vec<_>>();
    for c in 0..3 {
        assert!(
            (means[c] - CIFAR10_MEAN[c] as f64).abs() < 1e-3,
            "channel {c}: mean {} vs published {}",
            means[c],
            CIFAR10_MEAN[c]
        );
    }
}

#[test]
fn folder_itself_is_accepted() {
    assert_eq!(cifar10::locate(&batches()), Some(Location::Folder(batches())));
    assert_eq!(cifar10::locate(&shared()), Some(Location::Folder(shared().join("cifar-10-batches-bin"))));
}

/// `n` records with labels `0, 1, …` (mod 10) and pixels equal to the record number.
fn records(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * RECORD_BYTES);
    for i in 0..n {
        out.push((i % 10) as u8);
        out.extend(std::iter::repeat_n(i as u8, IMAGE_BYTES));
    }
    out
}

fn write_batches(dir: &Path, per_file: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for name in cifar10::TRAIN_FILES.iter().chain([&cifar10::TEST_FILE]) {
        std::fs::write(dir.join(name), records(per_file)).unwrap();
    }
}

#[test]
fn archive_and_its_parent_are_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write_batches(&src.join("cifar-10-batches-bin"), 3);
    let archive_dir = tmp.path().join("data");
    std::fs::create_dir_all(&archive_dir).unwrap();
    let archive = archive_dir.join("cifar-10-binary.tar.gz");
    let gz =
        flate2::write::GzEncoder::new(std::fs::File::create(&archive).unwrap(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.append_dir_all("cifar-10-batches-bin", src.join("cifar-10-batches-bin")).unwrap();
    tar.into_inner().unwrap().finish().unwrap();

    for path in [&archive, &archive_dir] {
        let c = Cifar10::open(path).unwrap();
        assert_eq!(c.train.len(), 15);
        assert_eq!(c.test.len(), 3);
        assert_eq!(c.train.labels()[..4], [0, 1, 2, 0]);
        assert!(c.train.image(2).iter().all(|&b| b == 2));
    }
}

#[test]
fn bad_files_are_user_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let odd = tmp.path().join("odd.bin");
    std::fs::write(&odd, vec![0u8; RECORD_BYTES + 1]).unwrap();
    common::assert_user_error_naming(cifar10::read_records(&odd).unwrap_err(), "odd.bin");

    let label = tmp.path().join("label.bin");
    let mut bytes = records(2);
    bytes[RECORD_BYTES] = 42;
    std::fs::write(&label, bytes).unwrap();
    let err = cifar10::read_records(&label).unwrap_err();
    assert!(err.to_string().contains("record 1 has label 42"), "{err}");

    common::assert_user_error_naming(
        cifar10::read_records(&tmp.path().join("nope.bin")).unwrap_err(),
        "nope.bin",
    );

    // A batches folder missing one file names that file.
    let dir = tmp.path().join("cifar-10-batches-bin");
    write_batches(&dir, 1);
    std::fs::remove_file(dir.join("test_batch.bin")).unwrap();
    common::assert_user_error_naming(Cifar10::open(tmp.path()).unwrap_err(), "test_batch.bin");

    // Something that is not CIFAR at all.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "hello").unwrap();
    common::assert_user_error_naming(Cifar10::open(&other).unwrap_err(), "no CIFAR-10 here");
    let args = DataArgs { data: other.clone(), ..Default::default() };
    common::assert_user_error_naming(Data::open(&args, false).unwrap_err(), "other");

    // A file that is not a tar.gz.
    common::assert_user_error_naming(Cifar10::open(&other.join("notes.txt")).unwrap_err(), "notes.txt");
}

#[test]
fn search_split_is_seeded_sized_and_disjoint() {
    let (w, h) = split_indices(50_000, 0.4, 7).unwrap();
    assert_eq!((w.len(), h.len()), (20_000, 30_000));
    let mut seen = vec![false; 50_000];
    for &i in w.iter().chain(&h) {
        assert!(!seen[i], "index {i} in both parts");
        seen[i] = true;
    }
    assert!(seen.iter().all(|&s| s));
    assert_eq!(split_indices(50_000, 0.4, 7).unwrap().0, w);
    assert_ne!(split_indices(50_000, 0.4, 8).unwrap().0, w);
    // Not simply the first 40%.
    assert_ne!(w, (0..20_000).collect::<Vec<_>>());
    assert!(split_indices(10, 0.0, 0).is_err());
    assert!(split_indices(10, 1.5, 0).is_err());
}

#[test]
fn data_open_describes_cifar_and_splits_the_training_set() {
    let args = DataArgs { data: shared(), workers: Some(1), seed: 3, ..Default::default() };
    let data = Data::open(&args, false).unwrap();
    let info = data.info();
    assert_eq!(info.kind, DatasetKind::Cifar10);
    assert_eq!((info.input_size, info.num_classes), (32, 10));
    assert_eq!(info.class_names[6], "frog");
    assert_eq!(data.len(Part::Train).unwrap(), 50_000);
    assert_eq!(data.len(Part::SearchWeights).unwrap(), 20_000);
    assert_eq!(data.len(Part::SearchHeldOut).unwrap(), 30_000);
    assert_eq!(data.len(Part::Test).unwrap(), 10_000);
    let held = data.loader(Part::SearchHeldOut, &LoaderOptions::eval(1000)).unwrap();
    assert_eq!(held.batches_per_epoch(), 30);
    let weights = data.loader(Part::SearchWeights, &LoaderOptions::eval(1000)).unwrap();
    let (a, b) = (weights.epoch_indices(0), held.epoch_indices(0));
    assert_eq!(a, split_indices(50_000, 0.4, 3).unwrap().0);
    assert_eq!(b, split_indices(50_000, 0.4, 3).unwrap().1);

    let (images, labels) =
        data.loader(Part::Test, &LoaderOptions::eval(4)).unwrap().epoch(0).next().unwrap().unwrap();
    assert_eq!(images.size(), [4, 3, 32, 32]);
    assert_eq!(Vec::<i64>::try_from(&labels).unwrap(), [3, 8, 8, 0]);

    assert_eq!("CIFAR-10".parse::<DatasetKind>().unwrap(), DatasetKind::Cifar10);
    assert_eq!("imagenet".parse::<DatasetKind>().unwrap(), DatasetKind::ImageNet);
    assert!("mnist".parse::<DatasetKind>().is_err());
    assert_eq!(DatasetKind::ImageNet.input_size(), 224);
    assert_eq!(DatasetKind::ImageNet.num_classes(), None);
}
