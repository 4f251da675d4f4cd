//! ImageNet-style folders, generated in a temporary directory: layouts, label files, non-RGB
//! inputs, corrupt files.
use std::path::{Path, PathBuf};

use cnas::data::folder::{decode_rgb, ImageFolder, ImageNet};
use cnas::data::{Data, DataArgs, DatasetKind, LoaderOptions, Part};
use image::{GrayImage, ImageFormat, Luma, Rgb, RgbImage, Rgba, RgbaImage};

use crate::common;

fn rgb(w: u32, h: u32, colour: [u8; 3]) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| Rgb([colour[0], colour[1].wrapping_add((x + y) as u8), colour[2]]))
}

fn save_jpeg(img: &RgbImage, path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save_with_format(path, ImageFormat::Jpeg).unwrap();
}

fn save_cmyk_jpeg(path: &Path, w: u16, h: u16) {
    // Plain (non-inverted) CMYK of a saturated cyan: no magenta, yellow or black.
    let data: Vec<u8> = (0..w as usize * h as usize).flat_map(|_| [255u8, 0, 0, 0]).collect();
    let enc = jpeg_encoder::Encoder::new_file(path, 90).unwrap();
    enc.encode(&data, w, h, jpeg_encoder::ColorType::Cmyk).unwrap();
}

/// train/{cat,dog,eel}/ with 2 images each (dog's in unusual formats), val/{cat,dog}/ one each.
fn make_tree(root: &Path) {
    let t = root.join("train");
    save_jpeg(&rgb(40, 30, [200, 10, 10]), &t.join("cat/c1.JPEG"));
    save_jpeg(&rgb(25, 50, [200, 10, 10]), &t.join("cat/c0.jpeg"));
    // Greyscale JPEG and a CMYK JPEG.
    std::fs::create_dir_all(t.join("dog")).unwrap();
    GrayImage::from_pixel(33, 33, Luma([90]))
        .save_with_format(t.join("dog/grey.JPEG"), ImageFormat::Jpeg)
        .unwrap();
    save_cmyk_jpeg(&t.join("dog/cmyk.JPEG"), 20, 24);
    // A PNG (with alpha) named .JPEG, and a stray non-image file that must be ignored.
    std::fs::create_dir_all(t.join("eel")).unwrap();
    RgbaImage::from_pixel(30, 30, Rgba([0, 0, 250, 128]))
        .save_with_format(t.join("eel/e0.JPEG"), ImageFormat::Png)
        .unwrap();
    save_jpeg(&rgb(64, 48, [10, 10, 200]), &t.join("eel/e1.JPEG"));
    std::fs::write(t.join("eel/notes.txt"), "not an image").unwrap();
    save_jpeg(&rgb(36, 36, [200, 10, 10]), &root.join("val/cat/v0.JPEG"));
    save_jpeg(&rgb(36, 36, [10, 10, 10]), &root.join("val/dog/v1.JPEG"));
}

fn args(root: &Path) -> DataArgs {
    DataArgs {
        dataset: DatasetKind::ImageNet,
        data: root.to_path_buf(),
        workers: Some(2),
        image_size: Some(16),
        ..Default::default()
    }
}

#[test]
fn class_folders_load_in_sorted_order_with_any_colour_type() {
    let tmp = tempfile::tempdir().unwrap();
    make_tree(tmp.path());
    let net = ImageNet::open(tmp.path(), None).unwrap();
    assert_eq!(net.classes, ["cat", "dog", "eel"]);
    let train = net.train.as_ref().unwrap();
    let names: Vec<(String, u32)> = train
        .samples()
        .iter()
        .map(|(p, l)| (p.file_name().unwrap().to_string_lossy().into_owned(), *l))
        .collect();
    let expected =
        [("c0.jpeg", 0), ("c1.JPEG", 0), ("cmyk.JPEG", 1), ("grey.JPEG", 1), ("e0.JPEG", 2), ("e1.JPEG", 2)];
    assert_eq!(names, expected.map(|(n, l)| (n.to_string(), l)));
    assert_eq!(net.val.as_ref().unwrap().len(), 2);

    let data = Data::open(&args(tmp.path()), false).unwrap();
    assert_eq!((data.info().num_classes, data.info().input_size), (3, 16));
    for (part, opts, n) in
        [(Part::Train, LoaderOptions::train(4), 6), (Part::Test, LoaderOptions::eval(4), 2)]
    {
        let loader = data.loader(part, &opts).unwrap();
        let mut seen = 0;
        for batch in loader.epoch(0) {
            let (images, labels) = batch.unwrap();
            assert_eq!(images.size()[1..], [3, 16, 16]);
            assert!(images.isfinite().all().int64_value(&[]) == 1);
            seen += labels.size()[0];
        }
        assert_eq!(seen, n);
    }
    // Evaluation order is file order: val labels 0 then 1.
    let (_, labels) =
        data.loader(Part::Test, &LoaderOptions::eval(2)).unwrap().epoch(0).next().unwrap().unwrap();
    assert_eq!(Vec::<i64>::try_from(&labels).unwrap(), [0, 1]);
}

#[test]
fn non_rgb_files_decode_to_rgb() {
    let tmp = tempfile::tempdir().unwrap();
    make_tree(tmp.path());
    let t = tmp.path().join("train");

    let grey = decode_rgb(&t.join("dog/grey.JPEG")).unwrap();
    assert_eq!(grey.dimensions(), (33, 33));
    assert!(grey.pixels().all(|p| p[0] == p[1] && p[1] == p[2] && (p[0] as i32 - 90).abs() <= 2));

    let cmyk = decode_rgb(&t.join("dog/cmyk.JPEG")).unwrap();
    assert_eq!(cmyk.dimensions(), (20, 24));
    // Full cyan, no magenta, yellow or black: RGB (0, 255, 255).
    assert!(cmyk.pixels().all(|q| q.0.iter().zip([0, 255, 255]).all(|(a, b)| (*a as i32 - b).abs() <= 3)));

    let png = decode_rgb(&t.join("eel/e0.JPEG")).unwrap();
    assert_eq!(png.get_pixel(3, 3), &Rgb([0, 0, 250]));
}

#[test]
fn corrupt_images_fail_by_name_or_are_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    make_tree(tmp.path());
    let bad = tmp.path().join("train/cat/broken.JPEG");
    std::fs::write(&bad, b"\xFF\xD8\xFF\xE0 this is not really a jpeg").unwrap();
    let truncated = tmp.path().join("train/eel/truncated.JPEG");
    let good = std::fs::read(tmp.path().join("train/eel/e1.JPEG")).unwrap();
    std::fs::write(&truncated, &good[..good.len() / 3]).unwrap();

    common::assert_user_error_naming(decode_rgb(&bad).unwrap_err(), "broken.JPEG");

    let data = Data::open(&args(tmp.path()), false).unwrap();
    let loader = data.loader(Part::Train, &LoaderOptions::eval(8)).unwrap();
    let err = loader.epoch(0).find_map(|b| b.err()).expect("an error");
    common::assert_user_error_naming(err, "broken.JPEG");

    let lenient = Data::open(&DataArgs { skip_bad_images: true, ..args(tmp.path()) }, false).unwrap();
    let loader = lenient.loader(Part::Train, &LoaderOptions::eval(8)).unwrap();
    let mut epoch = loader.epoch(0);
    let n: i64 = epoch.by_ref().map(|b| b.unwrap().1.size()[0]).sum();
    // A truncated JPEG may still decode (the decoder fills the missing rows); the garbage one
    // never does.
    assert!(
        epoch.skipped() >= 1 && n + epoch.skipped() as i64 == 8,
        "{n} images, {} skipped",
        epoch.skipped()
    );
}

#[test]
fn layout_mistakes_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    make_tree(tmp.path());
    std::fs::create_dir_all(tmp.path().join("train/fox")).unwrap();
    std::fs::write(tmp.path().join("train/fox/readme.txt"), "no images").unwrap();
    common::assert_user_error_naming(ImageNet::open(tmp.path(), None).unwrap_err(), "fox");

    let missing = tmp.path().join("nowhere");
    common::assert_user_error_naming(Data::open(&args(&missing), false).unwrap_err(), "nowhere");

    let empty = tempfile::tempdir().unwrap();
    common::assert_user_error_naming(
        ImageNet::open(empty.path(), None).unwrap_err(),
        "neither train/ nor val/",
    );
    std::fs::create_dir_all(empty.path().join("train")).unwrap();
    common::assert_user_error_naming(ImageNet::open(empty.path(), None).unwrap_err(), "no class folders");

    // A val class the training set does not have.
    let odd = tempfile::tempdir().unwrap();
    make_tree(odd.path());
    save_jpeg(&rgb(8, 8, [1, 2, 3]), &odd.path().join("val/yak/y.JPEG"));
    common::assert_user_error_naming(ImageNet::open(odd.path(), None).unwrap_err(), "yak");

    // A training folder alone is fine for training; asking for val/ names it.
    let only_train = tempfile::tempdir().unwrap();
    make_tree(only_train.path());
    std::fs::remove_dir_all(only_train.path().join("val")).unwrap();
    let data = Data::open(&args(only_train.path()), false).unwrap();
    assert!(data.loader(Part::Train, &LoaderOptions::eval(2)).is_ok());
    common::assert_user_error_naming(data.loader(Part::Test, &LoaderOptions::eval(2)).unwrap_err(), "val");
}

/// A flat val/ with images a.JPEG, b.JPEG, c.JPEG (file-name order).
fn flat_val(root: &Path) -> PathBuf {
    make_tree(root);
    std::fs::remove_dir_all(root.join("val")).unwrap();
    for name in ["c", "a", "b"] {
        save_jpeg(&rgb(20, 20, [50, 50, 50]), &root.join(format!("val/{name}.JPEG")));
    }
    root.join("val")
}

fn labels_of(folder: &ImageFolder) -> Vec<u32> {
    folder.samples().iter().map(|s| s.1).collect()
}

#[test]
fn flat_val_with_label_files() {
    let tmp = tempfile::tempdir().unwrap();
    let val = flat_val(tmp.path());
    let classes: Vec<String> = ["cat", "dog", "eel"].map(String::from).to_vec();

    // Without a label file: a clear error that says how to give one.
    common::assert_user_error_naming(ImageNet::open(tmp.path(), None).unwrap_err(), "--val-labels");

    // One label per line, names and numbers mixed, comments and blank lines ignored; found by
    // its default name beside val/.
    std::fs::write(tmp.path().join("val_labels.txt"), "# a, b, c\neel\n\n0\ndog\n").unwrap();
    let net = ImageNet::open(tmp.path(), None).unwrap();
    assert_eq!(labels_of(net.val.as_ref().unwrap()), [2, 0, 1]);
    let data = Data::open(&args(tmp.path()), false).unwrap();
    let (_, labels) =
        data.loader(Part::Test, &LoaderOptions::eval(3)).unwrap().epoch(0).next().unwrap().unwrap();
    assert_eq!(Vec::<i64>::try_from(&labels).unwrap(), [2, 0, 1]);

    // file,label lines in any order, with a header and extra words (Kaggle's CSV form), names
    // with or without the extension.
    let csv = tmp.path().join("solution.csv");
    std::fs::write(&csv, "ImageId,PredictionString\nb,dog 1 2 3 4\nc.JPEG,cat 5 6 7 8\na,2\nzzz,cat\n")
        .unwrap();
    let flat = ImageFolder::open_flat(&val, &csv, &classes).unwrap();
    assert_eq!(labels_of(&flat), [2, 1, 0]);

    // Wrong count, unknown class, missing file line: each named.
    let short = tmp.path().join("short.txt");
    std::fs::write(&short, "cat\ndog\n").unwrap();
    common::assert_user_error_naming(
        ImageFolder::open_flat(&val, &short, &classes).unwrap_err(),
        "2 labels for 3 images",
    );
    let unknown = tmp.path().join("unknown.txt");
    std::fs::write(&unknown, "cat\nwolf\n7\n").unwrap();
    common::assert_user_error_naming(
        ImageFolder::open_flat(&val, &unknown, &classes).unwrap_err(),
        "line 2: 'wolf'",
    );
    let partial = tmp.path().join("partial.csv");
    std::fs::write(&partial, "a,cat\nb,dog\n").unwrap();
    common::assert_user_error_naming(
        ImageFolder::open_flat(&val, &partial, &classes).unwrap_err(),
        "no label for c.JPEG",
    );
    common::assert_user_error_naming(
        ImageFolder::open_flat(&val, &tmp.path().join("absent.txt"), &classes).unwrap_err(),
        "absent.txt",
    );
    // Given explicitly, it wins over the default name.
    let net = ImageNet::open(tmp.path(), Some(&csv)).unwrap();
    assert_eq!(labels_of(net.val.as_ref().unwrap()), [2, 1, 0]);
}

#[cfg(unix)]
#[test]
fn symbolic_links_to_images_and_class_folders_are_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    save_jpeg(&rgb(12, 12, [1, 2, 3]), &store.join("x.JPEG"));
    save_jpeg(&rgb(12, 12, [1, 2, 3]), &store.join("kiwi/k.JPEG"));
    let train = tmp.path().join("data/train");
    std::fs::create_dir_all(train.join("apple")).unwrap();
    std::os::unix::fs::symlink(store.join("x.JPEG"), train.join("apple/a.JPEG")).unwrap();
    std::os::unix::fs::symlink(store.join("kiwi"), train.join("kiwi")).unwrap();
    let net = ImageNet::open(&tmp.path().join("data"), None).unwrap();
    assert_eq!(net.classes, ["apple", "kiwi"]);
    assert_eq!(labels_of(net.train.as_ref().unwrap()), [0, 1]);
}
