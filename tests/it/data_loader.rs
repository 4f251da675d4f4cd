//! The loader (order, sharding, determinism, errors) and the augmentations, against
//! hand-computed expectations.
use std::collections::HashSet;
use std::sync::Arc;

use cnas::data::transforms::{
    apply_jitter, center_crop_box, cifar_to_chw, random_resized_crop_box, CifarAugment, CifarDraw, CropBox,
    Cutout, FolderTransform, JitterDraw,
};
use cnas::data::{
    sample_rng, Data, DataArgs, Loader, LoaderConfig, LoaderOptions, Part, SampleRng, Source, CIFAR10_MEAN,
    CIFAR10_STD,
};
use cnas::{Error, Result};
use tch::Tensor;

// ---------------------------------------------------------------------------------------------
// CIFAR augmentation

/// R = 8·y, G = 8·x, B = 100: every pixel tells where it came from.
fn coordinate_image() -> Vec<u8> {
    let mut img = vec![100u8; 3072];
    for y in 0..32 {
        for x in 0..32 {
            img[y * 32 + x] = (8 * y) as u8;
            img[1024 + y * 32 + x] = (8 * x) as u8;
        }
    }
    img
}

fn norm(c: usize, v: u8) -> f32 {
    (v as f32 / 255.0 - CIFAR10_MEAN[c]) / CIFAR10_STD[c]
}

fn at(out: &[f32], c: usize, y: usize, x: usize) -> f32 {
    out[c * 1024 + y * 32 + x]
}

#[test]
fn crop_offsets_padding_and_flip_match_hand_computed_pixels() {
    let img = coordinate_image();
    let mut out = vec![0f32; 3072];

    // dy = 0, dx = 8 with padding 4: output (y, x) = source (y − 4, x + 4).
    let draw = CifarDraw { padding: 4, dy: 0, dx: 8, flip: false, cutout: None };
    cifar_to_chw(&img, &draw, &CIFAR10_MEAN, &CIFAR10_STD, &mut out);
    assert_eq!(at(&out, 0, 0, 0), norm(0, 0), "row 0 comes from padding");
    assert_eq!(at(&out, 1, 3, 5), norm(1, 0), "padding is 0 before normalisation");
    assert_eq!(at(&out, 0, 4, 0), norm(0, 0)); // source row 0
    assert_eq!(at(&out, 1, 4, 0), norm(1, 32)); // source column 4
    assert_eq!(at(&out, 0, 10, 27), norm(0, 48)); // source (6, 31)
    assert_eq!(at(&out, 1, 10, 27), norm(1, 248));
    assert_eq!(at(&out, 1, 10, 28), norm(1, 0), "column 32 is padding");

    // The same crop flipped: output (y, x) = cropped (y, 31 − x).
    let flipped = CifarDraw { flip: true, ..draw };
    let mut out2 = vec![0f32; 3072];
    cifar_to_chw(&img, &flipped, &CIFAR10_MEAN, &CIFAR10_STD, &mut out2);
    for y in 0..32 {
        for x in 0..32 {
            for c in 0..3 {
                assert_eq!(at(&out2, c, y, x), at(&out, c, y, 31 - x));
            }
        }
    }

    // Identity: plain normalisation.
    cifar_to_chw(&img, &CifarDraw::IDENTITY, &CIFAR10_MEAN, &CIFAR10_STD, &mut out);
    assert_eq!(at(&out, 0, 31, 2), norm(0, 248));
    assert_eq!(at(&out, 2, 7, 7), norm(2, 100));
}

#[test]
fn cutout_zeroes_the_clipped_square_after_normalisation() {
    let img = coordinate_image();
    let mut out = vec![0f32; 3072];
    // (centre, length, expected zeroed pixels per channel): DARTS' y ± length/2, clipped.
    let cases =
        [((16, 16), 16, 256), ((0, 0), 16, 64), ((31, 5), 16, 9 * 13), ((10, 20), 5, 16), ((3, 3), 1, 0)];
    for ((y, x), length, area) in cases {
        let draw = CifarDraw { cutout: Some(Cutout { y, x, length }), ..CifarDraw::IDENTITY };
        cifar_to_chw(&img, &draw, &CIFAR10_MEAN, &CIFAR10_STD, &mut out);
        for c in 0..3 {
            // No normalised pixel of this image is exactly 0, so zeros are the cutout.
            let zeros = out[c * 1024..(c + 1) * 1024].iter().filter(|&&v| v == 0.0).count();
            assert_eq!(zeros, area, "centre ({y}, {x}) length {length} channel {c}");
        }
        let (rows, cols) = Cutout { y, x, length }.bounds(32);
        if area > 0 {
            assert_eq!(at(&out, 1, rows.start, cols.start), 0.0);
            assert_eq!(at(&out, 2, rows.end - 1, cols.end - 1), 0.0);
        }
    }
}

#[test]
fn cifar_draws_cover_their_ranges() {
    let aug = CifarAugment { padding: 4, flip: true, cutout: 16 };
    let (mut offsets, mut flips, mut centres) = (HashSet::new(), 0, HashSet::new());
    for i in 0..2000 {
        let d = aug.draw(&mut sample_rng(1, 0, i));
        assert!(d.dy <= 8 && d.dx <= 8);
        offsets.insert((d.dy, d.dx));
        flips += d.flip as usize;
        let c = d.cutout.unwrap();
        assert!(c.y < 32 && c.x < 32 && c.length == 16);
        centres.insert(c.y);
    }
    assert_eq!(offsets.len(), 81);
    assert!((800..1200).contains(&flips), "{flips} flips of 2000");
    assert_eq!(centres.len(), 32);
    assert_eq!(CifarAugment { cutout: 0, ..aug }.draw(&mut sample_rng(1, 0, 0)).cutout, None);
}

// ---------------------------------------------------------------------------------------------
// ImageNet augmentation

#[test]
fn random_resized_crop_stays_inside_and_respects_scale_and_ratio() {
    for i in 0..500 {
        let b = random_resized_crop_box(100, 60, (0.08, 1.0), (0.75, 4.0 / 3.0), &mut sample_rng(2, 0, i));
        assert!(b.left >= 0.0 && b.top >= 0.0 && b.width >= 1.0 && b.height >= 1.0);
        assert!(b.left + b.width <= 100.0 && b.top + b.height <= 60.0, "{b:?}");
        let (area, ratio) = (b.width * b.height / 6000.0, b.width / b.height);
        // Whole pixels: allow a little rounding around the limits.
        assert!((0.06..=1.0).contains(&area), "{b:?}");
        assert!((0.7..=1.4).contains(&ratio), "{b:?}");
    }
    // Ten failed tries (no box of 99% of the area fits a 4/3 ratio in a 1000×10 strip): the
    // fallback is the centred 13×10 box, 13 = round(10 · 4/3).
    let b = random_resized_crop_box(1000, 10, (0.99, 1.0), (0.75, 4.0 / 3.0), &mut sample_rng(0, 0, 0));
    assert_eq!(b, CropBox { left: 493.0, top: 0.0, width: 13.0, height: 10.0 });
    let b = random_resized_crop_box(10, 1000, (0.99, 1.0), (0.75, 4.0 / 3.0), &mut sample_rng(0, 0, 0));
    assert_eq!(b, CropBox { left: 0.0, top: 493.0, width: 10.0, height: 13.0 });
}

#[test]
fn eval_box_is_resize_then_centre_crop() {
    // 500×375 → 341×256 (torchvision truncates), crop offsets round(58.5) = 58 (half to even)
    // and 16, mapped back to source pixels.
    let b = center_crop_box(500, 375, 256, 224);
    let (sx, sy) = (500.0 / 341.0, 375.0 / 256.0);
    let close = |a: f64, e: f64| (a - e).abs() < 1e-9;
    assert!(close(b.left, 58.0 * sx) && close(b.top, 16.0 * sy), "{b:?}");
    assert!(close(b.width, 224.0 * sx) && close(b.height, 224.0 * sy), "{b:?}");
    // A square image keeps the central 224/256 of each side.
    let b = center_crop_box(512, 512, 256, 224);
    assert_eq!(b, CropBox { left: 32.0, top: 32.0, width: 448.0, height: 448.0 });
}

#[test]
fn colour_jitter_steps_match_their_definitions() {
    let only = |order: [usize; 4]| JitterDraw {
        order,
        brightness: None,
        contrast: None,
        saturation: None,
        hue: None,
    };
    let mut px = vec![0.2f32, 0.4, 0.8, 1.0, 0.5, 0.0];
    apply_jitter(&JitterDraw { brightness: Some(0.5), ..only([0, 1, 2, 3]) }, &mut px);
    assert_eq!(px, [0.1, 0.2, 0.4, 0.5, 0.25, 0.0]);

    // Contrast 0: every value becomes the mean grey level of the image.
    let mut px = vec![1.0f32, 0.0, 0.0, 0.0, 0.0, 1.0];
    apply_jitter(&JitterDraw { contrast: Some(0.0), ..only([1, 0, 2, 3]) }, &mut px);
    let mean = (0.2989 + 0.114) / 2.0;
    assert!(px.iter().all(|v| (v - mean).abs() < 1e-6), "{px:?}");

    // Saturation 0: each pixel becomes its own grey level.
    let mut px = vec![0.0f32, 1.0, 0.0];
    apply_jitter(&JitterDraw { saturation: Some(0.0), ..only([2, 0, 1, 3]) }, &mut px);
    assert!(px.iter().all(|v| (v - 0.587).abs() < 1e-6), "{px:?}");

    // Hue +1/3 turn: red → green → blue; grey stays grey.
    let mut px = vec![1.0f32, 0.0, 0.0, 0.0, 0.6, 0.0, 0.5, 0.5, 0.5];
    apply_jitter(&JitterDraw { hue: Some(1.0 / 3.0), ..only([3, 0, 1, 2]) }, &mut px);
    let want = [0.0, 1.0, 0.0, 0.0, 0.0, 0.6, 0.5, 0.5, 0.5];
    assert!(px.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5), "{px:?}");
}

#[test]
fn folder_transforms_output_the_normalised_square() {
    let img = image::RgbImage::from_pixel(50, 30, image::Rgb([255, 0, 128]));
    let mean = [0.5, 0.5, 0.5];
    let std = [0.5, 0.5, 0.5];
    let mut out = vec![9f32; 3 * 16 * 16];
    FolderTransform::Eval { resize: 18, crop: 16 }
        .apply(img.clone(), &mut sample_rng(0, 0, 0), &mean, &std, &mut out)
        .unwrap();
    let expect = [1.0, -1.0, 128.0 / 255.0 * 2.0 - 1.0];
    for c in 0..3 {
        // Within one grey level (2/255 here) of the fixed-point resampler.
        assert!(out[c * 256..(c + 1) * 256].iter().all(|v| (v - expect[c]).abs() < 0.01), "channel {c}");
    }
    let train = cnas::data::transforms::FolderAugment {
        jitter: None,
        ..cnas::data::transforms::FolderAugment::paper(16)
    };
    FolderTransform::Train(train).apply(img, &mut sample_rng(0, 0, 1), &mean, &std, &mut out).unwrap();
    assert!((out[0] - 1.0).abs() < 0.01 && (out[256] + 1.0).abs() < 0.01);
}

// ---------------------------------------------------------------------------------------------
// The loader

/// Label = index; the image is filled with the index plus one augmentation draw, so both order
/// and per-sample seeding show in the output. Fails on the indices in `bad`.
struct Counting {
    n: usize,
    bad: Vec<usize>,
}

impl Source for Counting {
    fn len(&self) -> usize {
        self.n
    }
    fn image_size(&self) -> (usize, usize) {
        (2, 2)
    }
    fn get(&self, index: usize, rng: &mut SampleRng, out: &mut [f32]) -> Result<i64> {
        if self.bad.contains(&index) {
            return Err(Error::bad_file(format!("img{index}.JPEG"), "cannot decode image"));
        }
        let noise: f32 = rand::Rng::random(rng);
        out.fill(index as f32 + noise);
        Ok(index as i64)
    }
}

fn cfg(batch: usize, workers: usize) -> LoaderConfig {
    LoaderConfig { shuffle: true, seed: 11, workers, ..LoaderConfig::new(batch) }
}

fn labels_of(loader: &Loader, epoch: u64) -> Vec<Vec<i64>> {
    loader.epoch(epoch).map(|b| Vec::<i64>::try_from(&b.unwrap().1).unwrap()).collect()
}

#[test]
fn shards_cover_every_index_once_with_equal_counts() {
    for (n, ws) in [(100, 4), (103, 4), (7, 3), (10, 1)] {
        let source: Arc<dyn Source> = Arc::new(Counting { n, bad: vec![] });
        let mut all = Vec::new();
        for rank in 0..ws {
            let c = LoaderConfig { rank, world_size: ws, ..cfg(3, 2) };
            let loader = Loader::new(Arc::clone(&source), None, c).unwrap();
            let mine = loader.epoch_indices(5);
            assert_eq!(mine.len(), n / ws, "n {n} world {ws}");
            assert_eq!(loader.samples_per_epoch(), n / ws);
            // What the batches hold is exactly that list, in that order.
            let got: Vec<usize> = labels_of(&loader, 5).concat().into_iter().map(|l| l as usize).collect();
            assert_eq!(got, mine);
            all.extend(mine);
        }
        let distinct: HashSet<usize> = all.iter().copied().collect();
        assert_eq!(distinct.len(), all.len(), "an index was seen twice");
        assert_eq!(all.len(), n - n % ws);
    }
    // Another epoch is another order; the same epoch, the same order.
    let loader = Loader::new(Arc::new(Counting { n: 50, bad: vec![] }), None, cfg(50, 1)).unwrap();
    assert_ne!(loader.epoch_indices(0), loader.epoch_indices(1));
    assert_eq!(loader.epoch_indices(1), loader.epoch_indices(1));
}

#[test]
fn evaluation_shards_together_hold_every_index_exactly_once() {
    for (n, ws) in [(103, 4), (7, 3), (2, 3), (12, 4)] {
        let source: Arc<dyn Source> = Arc::new(Counting { n, bad: vec![] });
        let mut all = Vec::new();
        for rank in 0..ws {
            let c = LoaderConfig { rank, world_size: ws, every_sample: true, ..cfg(3, 2) };
            let loader = Loader::new(Arc::clone(&source), None, c).unwrap();
            let mine = loader.epoch_indices(0);
            // The first n % ws ranks take one sample more.
            let expected = n / ws + usize::from(rank < n % ws);
            assert_eq!(mine.len(), expected, "n {n} world {ws} rank {rank}");
            assert_eq!(loader.samples_per_epoch(), expected);
            assert_eq!(loader.batches_per_epoch(), expected.div_ceil(3));
            let got: Vec<usize> = labels_of(&loader, 0).concat().into_iter().map(|l| l as usize).collect();
            assert_eq!(got, mine);
            all.extend(mine);
        }
        all.sort_unstable();
        assert_eq!(all, (0..n).collect::<Vec<_>>(), "n {n} world {ws}");
    }
}

#[test]
fn last_partial_batch_is_kept_or_dropped() {
    let source: Arc<dyn Source> = Arc::new(Counting { n: 10, bad: vec![] });
    let keep = Loader::new(Arc::clone(&source), None, LoaderConfig::new(4)).unwrap();
    assert_eq!(keep.batches_per_epoch(), 3);
    assert_eq!(labels_of(&keep, 0), [vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]);
    let drop = Loader::new(
        source,
        Some(vec![9, 1, 2, 3, 4]),
        LoaderConfig { drop_last: true, ..LoaderConfig::new(2) },
    )
    .unwrap();
    assert_eq!(drop.batches_per_epoch(), 2);
    assert_eq!(labels_of(&drop, 0), [vec![9, 1], vec![2, 3]]);
}

fn batches(loader: &Loader, epoch: u64, take: usize) -> Vec<(Tensor, Tensor)> {
    loader.epoch(epoch).take(take).map(|b| b.unwrap()).collect()
}

fn same(a: &[(Tensor, Tensor)], b: &[(Tensor, Tensor)]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.0.equal(&y.0) && x.1.equal(&y.1))
}

#[test]
fn same_seed_same_batches_whatever_the_worker_count() {
    let source: Arc<dyn Source> = Arc::new(Counting { n: 40, bad: vec![] });
    let runs: Vec<_> = [0, 1, 3]
        .iter()
        .map(|&w| batches(&Loader::new(Arc::clone(&source), None, cfg(4, w)).unwrap(), 2, 10))
        .collect();
    assert!(same(&runs[0], &runs[1]) && same(&runs[1], &runs[2]));

    // The real thing: augmented CIFAR-10 (crop, flip, cutout), 1 vs 3 workers, two batches.
    let shared = crate::common::cifar10_dir();
    let with = |workers| {
        let args = DataArgs {
            data: shared.clone(),
            workers: Some(workers),
            seed: 5,
            cutout: Some(16),
            ..Default::default()
        };
        let data = Data::open(&args, false).unwrap();
        let loader = data.loader(Part::SearchWeights, &LoaderOptions::train(32)).unwrap();
        (batches(&loader, 1, 2), batches(&loader, 2, 1))
    };
    let (one, one_next) = with(1);
    let (three, _) = with(3);
    assert!(same(&one, &three), "1 and 3 workers differ");
    assert_eq!(one[0].0.size(), [32, 3, 32, 32]);
    assert_eq!(one[0].1.kind(), tch::Kind::Int64);
    assert!(!same(&one[..1], &one_next), "epochs 1 and 2 gave the same first batch");
    // Cutout 16 on every image: at least 8×8 exact zeros per channel each.
    let zeros = one[0].0.eq(0.0).sum(tch::Kind::Int64).int64_value(&[]);
    assert!(zeros >= 32 * 3 * 64, "{zeros} zeros");
}

#[test]
fn bad_images_fail_by_name_or_are_skipped_and_counted() {
    let source: Arc<dyn Source> = Arc::new(Counting { n: 12, bad: vec![5, 9] });
    let strict =
        Loader::new(Arc::clone(&source), None, LoaderConfig { workers: 2, ..LoaderConfig::new(4) }).unwrap();
    let results: Vec<_> = strict.epoch(0).collect();
    assert_eq!(results.len(), 2, "stops after the error");
    let err = results[1].as_ref().unwrap_err();
    assert!(err.to_string().contains("img5.JPEG") && err.is_user_error(), "{err}");

    let lenient =
        Loader::new(source, None, LoaderConfig { workers: 2, skip_bad_images: true, ..LoaderConfig::new(4) })
            .unwrap();
    let mut epoch = lenient.epoch(0);
    let got: Vec<Vec<i64>> = epoch.by_ref().map(|b| Vec::<i64>::try_from(&b.unwrap().1).unwrap()).collect();
    assert_eq!(got, [vec![0, 1, 2, 3], vec![4, 6, 7], vec![8, 10, 11]]);
    assert_eq!(epoch.skipped(), 2);
    drop(epoch);
    assert_eq!(lenient.skipped_total(), 2);
}

#[test]
fn dropping_an_epoch_early_stops_its_workers() {
    let source: Arc<dyn Source> = Arc::new(Counting { n: 10_000, bad: vec![] });
    let loader =
        Loader::new(source, None, LoaderConfig { workers: 3, prefetch: 1, ..LoaderConfig::new(8) }).unwrap();
    for _ in 0..3 {
        let mut e = loader.epoch(0);
        assert!(e.next().unwrap().is_ok());
    } // each drop must return promptly (workers blocked on full queues hang up)
    assert!(
        Loader::new(Arc::new(Counting { n: 3, bad: vec![] }), Some(vec![3]), LoaderConfig::new(1)).is_err()
    );
    assert!(Loader::new(
        Arc::new(Counting { n: 3, bad: vec![] }),
        None,
        LoaderConfig { rank: 2, world_size: 2, ..LoaderConfig::new(1) }
    )
    .is_err());
    assert!(Loader::new(Arc::new(Counting { n: 3, bad: vec![] }), None, LoaderConfig::new(0)).is_err());
}

#[test]
fn batches_are_pinned_only_for_a_visible_gpu() {
    let device = tch::Device::cuda_if_available();
    let source: Arc<dyn Source> = Arc::new(Counting { n: 4, bad: vec![] });
    let loader = Loader::new(source, None, LoaderConfig { device, ..LoaderConfig::new(4) }).unwrap();
    let (images, labels) = loader.epoch(0).next().unwrap().unwrap();
    assert_eq!(images.device(), tch::Device::Cpu);
    if device.is_cuda() {
        assert!(images.is_pinned(device) && labels.is_pinned(device));
    }
}

/// Python colorsys-style HSV round trip, the plain way, as a reference for the hue step.
fn hue_reference(p: [f32; 3], shift: f32) -> [f32; 3] {
    let [r, g, b] = p.map(f64::from);
    let (max, min) = (r.max(g).max(b), r.min(g).min(b));
    if max == min {
        return p;
    }
    let (s, v) = ((max - min) / max, max);
    let (rc, gc, bc) = ((max - r) / (max - min), (max - g) / (max - min), (max - b) / (max - min));
    let h = if r == max {
        bc - gc
    } else if g == max {
        2.0 + rc - bc
    } else {
        4.0 + gc - rc
    };
    let h = ((h / 6.0) + shift as f64).rem_euclid(1.0);
    let i = (h * 6.0).floor();
    let f = h * 6.0 - i;
    let (pp, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    let out = match i as i32 % 6 {
        0 => [v, t, pp],
        1 => [q, v, pp],
        2 => [pp, v, t],
        3 => [pp, q, v],
        4 => [t, pp, v],
        _ => [v, pp, q],
    };
    out.map(|x| x as f32)
}

#[test]
fn hue_shift_matches_a_plain_hsv_round_trip() {
    let mut rng = sample_rng(9, 9, 9);
    for _ in 0..5000 {
        let p: [f32; 3] =
            [rand::Rng::random(&mut rng), rand::Rng::random(&mut rng), rand::Rng::random(&mut rng)];
        let shift = (rand::Rng::random::<f32>(&mut rng) - 0.5) * 1.6; // beyond half a turn too
        let mut got = p.to_vec();
        let draw = JitterDraw {
            order: [3, 0, 1, 2],
            brightness: None,
            contrast: None,
            saturation: None,
            hue: Some(shift),
        };
        apply_jitter(&draw, &mut got);
        let want = hue_reference(p, shift);
        assert!(
            got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-4),
            "{p:?} shift {shift}: {got:?} vs {want:?}"
        );
    }
}

#[test]
fn limited_loader_is_a_seeded_subset_in_loader_order() {
    let source: Arc<dyn Source> = Arc::new(Counting { n: 100, bad: vec![] });
    let loader = Loader::new(source, Some((0..100).rev().collect()), LoaderConfig::new(8)).unwrap();
    let small = loader.limited(10).unwrap();
    let picked = small.epoch_indices(0);
    assert_eq!(picked.len(), 10);
    // The loader's own order (descending here) is kept.
    assert!(picked.windows(2).all(|w| w[0] > w[1]));
    assert_ne!(picked, (90..100).rev().collect::<Vec<_>>());
    assert_eq!(loader.limited(10).unwrap().epoch_indices(0), picked);
    assert_eq!(loader.limited(1000).unwrap().samples_per_epoch(), 100);
    assert!(loader.limited(0).is_err());
}
