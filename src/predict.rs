//! `cnas predict`: class probabilities of a trained fixed network for some inputs.
//!
//! Inputs may be PNG/JPEG images, CIFAR-10 `.bin` record files and `.npy` arrays. Images get the dataset's evaluation transform (CIFAR: 32×32; ImageNet: shorter side to
//! 256/224 of the target, centre crop) and its normalisation; `.npy` arrays must already be
//! normalised float32 N×3×H×W.
use std::path::Path;

use image::imageops::FilterType;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::data::{CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD};
use crate::error::{Error, Result};
use crate::model::{Network, NetworkKind};

/// One input ready for the network.
pub struct Sample {
    /// What to call it in the output: the file, with `#i` for records of a multi-sample file.
    pub name: String,
    /// The true class when the file says it (CIFAR records).
    pub label: Option<i64>,
    /// Normalised 3×H×W float tensor.
    pub image: Tensor,
}

/// Reads every sample `path` holds, choosing the reader by extension.
pub fn read_samples(path: &Path, kind: NetworkKind, image_size: i64) -> Result<Vec<Sample>> {
    if !path.exists() {
        return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")));
    }
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "bin" => read_cifar_bin(path, kind, image_size),
        "npy" => read_npy(path),
        _ => Ok(vec![read_image(path, kind, image_size)?]),
    }
}

fn normalise(chw: Tensor, kind: NetworkKind) -> Tensor {
    let (mean, std) = match kind {
        NetworkKind::Cifar => (CIFAR10_MEAN, CIFAR10_STD),
        NetworkKind::Imagenet => (IMAGENET_MEAN, IMAGENET_STD),
    };
    let mean = Tensor::from_slice(&mean).view([3, 1, 1]);
    let std = Tensor::from_slice(&std).view([3, 1, 1]);
    (chw.to_kind(Kind::Float) / 255.0 - mean) / std
}

fn read_image(path: &Path, kind: NetworkKind, size: i64) -> Result<Sample> {
    let img = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| Error::io(path, e))?
        .decode()
        .map_err(|e| Error::bad_file(path, format!("not a readable PNG or JPEG image: {e}")))?
        .to_rgb8();
    let size_u = size as u32;
    let img = match kind {
        NetworkKind::Cifar => {
            if img.dimensions() == (size_u, size_u) {
                img
            } else {
                image::imageops::resize(&img, size_u, size_u, FilterType::Triangle)
            }
        }
        NetworkKind::Imagenet => {
            // Resize the shorter side to size·256/224, then take the central size×size crop.
            let short = (size as f64 * 256.0 / 224.0).round() as u32;
            let (w, h) = img.dimensions();
            let (nw, nh) = if w <= h {
                (short, ((h as f64) * short as f64 / w as f64).round().max(1.0) as u32)
            } else {
                (((w as f64) * short as f64 / h as f64).round().max(1.0) as u32, short)
            };
            let resized = image::imageops::resize(&img, nw, nh, FilterType::Triangle);
            let (x, y) = ((nw - size_u) / 2, (nh - size_u) / 2);
            image::imageops::crop_imm(&resized, x, y, size_u, size_u).to_image()
        }
    };
    let (w, h) = img.dimensions();
    let hwc = Tensor::from_slice(img.as_raw()).view([h as i64, w as i64, 3]);
    Ok(Sample {
        name: path.display().to_string(),
        label: None,
        image: normalise(hwc.permute([2, 0, 1]), kind),
    })
}

fn read_cifar_bin(path: &Path, kind: NetworkKind, size: i64) -> Result<Vec<Sample>> {
    let (images, labels) = crate::data::cifar10::read_records(path)?;
    let n = labels.len() as i64;
    let all = Tensor::from_slice(&images).view([n, 3, 32, 32]);
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n {
        let mut image = normalise(all.get(i), kind);
        if size != 32 {
            image = image.unsqueeze(0).upsample_bilinear2d([size, size], false, None, None).squeeze_dim(0);
        }
        out.push(Sample {
            name: format!("{}#{i}", path.display()),
            label: Some(labels[i as usize] as i64),
            image,
        });
    }
    Ok(out)
}

fn read_npy(path: &Path) -> Result<Vec<Sample>> {
    let t = Tensor::read_npy(path).map_err(|e| {
        Error::bad_file(path, format!("unreadable .npy file: {}", e.to_string().lines().next().unwrap_or("")))
    })?;
    if t.kind() != Kind::Float {
        return Err(Error::bad_file(path, format!("expected a float32 array, found {:?}", t.kind())));
    }
    let size = t.size();
    if size.len() != 4 || size[1] != 3 {
        return Err(Error::bad_file(path, format!("expected an N×3×H×W array, found shape {size:?}")));
    }
    Ok((0..size[0])
        .map(|i| Sample { name: format!("{}#{i}", path.display()), label: None, image: t.get(i) })
        .collect())
}

/// Refuses samples the network cannot take (a side it would have to halve while odd, see
/// [`crate::model::NetworkConfig::check_input_shape`]), naming the first such sample, before
/// libtorch fails inside the network.
pub fn check_sizes(net: &Network, samples: &[Sample]) -> Result<()> {
    let mut seen: Vec<(i64, i64)> = Vec::new();
    for sample in samples {
        let size = sample.image.size();
        let (h, w) = (size[size.len() - 2], size[size.len() - 1]);
        if seen.contains(&(h, w)) {
            continue;
        }
        net.config()
            .check_input_shape(h, w, false)
            .map_err(|e| Error::bad_file(&sample.name, e.to_string()))?;
        seen.push((h, w));
    }
    Ok(())
}

/// One class and its probability.
#[derive(Debug, Clone, Serialize)]
pub struct ClassScore {
    pub class: i64,
    pub name: String,
    pub prob: f64,
}

/// The network's answer for one sample.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub input: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<i64>,
    pub top: Vec<ClassScore>,
    pub logits: Vec<f32>,
}

/// The name of class `i` for a network with `num_classes` outputs: CIFAR-10's and ImageNet's
/// names where the count says which, otherwise `class i`.
pub fn class_name(kind: NetworkKind, num_classes: i64, i: i64) -> String {
    match (kind, num_classes) {
        (NetworkKind::Cifar, 10) => crate::data::CIFAR10_CLASSES[i as usize].to_string(),
        (NetworkKind::Imagenet, 1000) => tch::vision::imagenet::CLASSES[i as usize].to_string(),
        _ => format!("class {i}"),
    }
}

/// Runs `net` in inference mode over `samples` in batches of `batch_size`; `top` best classes each.
pub fn predict(
    net: &Network,
    samples: &[Sample],
    device: Device,
    batch_size: usize,
    top: usize,
) -> Vec<Prediction> {
    let config = net.config();
    let mut out = Vec::with_capacity(samples.len());
    for chunk in samples.chunks(batch_size.max(1)) {
        // Images of different sizes (npy arrays) go one by one; the usual case is one batch.
        let same_size = chunk.windows(2).all(|w| w[0].image.size() == w[1].image.size());
        let groups: Vec<&[Sample]> = if same_size { vec![chunk] } else { chunk.chunks(1).collect() };
        for group in groups {
            let images: Vec<&Tensor> = group.iter().map(|s| &s.image).collect();
            let x = Tensor::stack(&images, 0).to_device(device);
            let logits = tch::no_grad(|| net.forward_t(&x, false).logits).to_device(Device::Cpu);
            let probs = logits.softmax(-1, Kind::Float);
            let k = (top as i64).min(config.num_classes);
            let (values, indices) = probs.topk(k, -1, true, true);
            for (i, sample) in group.iter().enumerate() {
                let i = i as i64;
                let values: Vec<f64> = Vec::try_from(values.get(i).to_kind(Kind::Double)).unwrap_or_default();
                let indices: Vec<i64> = Vec::try_from(indices.get(i)).unwrap_or_default();
                let top = indices
                    .iter()
                    .zip(values)
                    .map(|(&class, prob)| ClassScore {
                        class,
                        name: class_name(config.kind, config.num_classes, class),
                        prob,
                    })
                    .collect();
                out.push(Prediction {
                    input: sample.name.clone(),
                    label: sample.label,
                    top,
                    logits: Vec::try_from(logits.get(i)).unwrap_or_default(),
                });
            }
        }
    }
    out
}
