//! Image transforms. Each one is split in two: a `draw` that takes every random choice from the
//! sample's own generator, and a pure function that applies those choices, so tests can check the
//! arithmetic against hand-computed expectations without going through a generator.
//!
//! All of them write normalised `f32` images in CHW order (`3 × H × W`), ready to be a slice of
//! an `N × 3 × H × W` batch.
use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use rand::Rng;

/// Side of a CIFAR image.
pub const CIFAR_SIDE: usize = 32;
/// Pixels in one colour plane of a CIFAR image.
pub const CIFAR_PLANE: usize = CIFAR_SIDE * CIFAR_SIDE;

/// Uniform draw in `[lo, hi)` that tolerates `lo == hi` (where `random_range` would panic).
fn uniform(rng: &mut impl Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

// ---------------------------------------------------------------------------------------------
// CIFAR-10: pad + random crop, horizontal flip, cutout (DARTS' training transform).

/// Training augmentation for 32×32 CIFAR images, as in the DARTS code: random crop of 32 from the
/// image padded by `padding` zero pixels, horizontal flip with probability ½ (when `flip`), and,
/// when `cutout > 0`, one `cutout × cutout` square zeroed after normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CifarAugment {
    pub padding: usize,
    pub flip: bool,
    pub cutout: usize,
}

impl Default for CifarAugment {
    fn default() -> Self {
        CifarAugment { padding: 4, flip: true, cutout: 0 }
    }
}

/// The square that cutout zeroes: centred at pixel (`y`, `x`), side `length`, clipped at the
/// borders (rows `y - length/2 .. y + length/2`, integer division, as DARTS does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutout {
    pub y: usize,
    pub x: usize,
    pub length: usize,
}

impl Cutout {
    /// Rows and columns zeroed: `(y0..y1, x0..x1)` on a `side × side` image.
    pub fn bounds(&self, side: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let half = self.length / 2;
        let rows = self.y.saturating_sub(half)..(self.y + half).min(side);
        let cols = self.x.saturating_sub(half)..(self.x + half).min(side);
        (rows, cols)
    }
}

/// The random choices of [`CifarAugment`] for one image. The output pixel (y, x) is the source
/// pixel (y + dy − padding, x' + dx − padding), where x' = 31 − x when flipped and x otherwise;
/// sources outside the image are the zero padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CifarDraw {
    pub padding: usize,
    pub dy: usize,
    pub dx: usize,
    pub flip: bool,
    pub cutout: Option<Cutout>,
}

impl CifarDraw {
    /// No augmentation: the image as it is.
    pub const IDENTITY: CifarDraw = CifarDraw { padding: 0, dy: 0, dx: 0, flip: false, cutout: None };
}

impl CifarAugment {
    /// Draws the crop offset (0..=2·padding each way), the flip and the cutout centre, in that
    /// order.
    pub fn draw(&self, rng: &mut impl Rng) -> CifarDraw {
        let dy = rng.random_range(0..=2 * self.padding);
        let dx = rng.random_range(0..=2 * self.padding);
        let flip = self.flip && rng.random_bool(0.5);
        let cutout = (self.cutout > 0).then(|| Cutout {
            y: rng.random_range(0..CIFAR_SIDE),
            x: rng.random_range(0..CIFAR_SIDE),
            length: self.cutout,
        });
        CifarDraw { padding: self.padding, dy, dx, flip, cutout }
    }
}

/// Writes one CIFAR image (3072 bytes: R, G, B planes of 32×32) into `out` (3072 floats, CHW) as
/// `(v/255 − mean) / std`, after the crop and flip of `draw`; padding pixels are 0 before
/// normalisation (as torchvision pads the PIL image), and the cutout square is 0 after it.
///
/// Panics if `src` or `out` is not 3072 long: callers size both, users never do.
pub fn cifar_to_chw(src: &[u8], draw: &CifarDraw, mean: &[f32; 3], std: &[f32; 3], out: &mut [f32]) {
    assert_eq!(src.len(), 3 * CIFAR_PLANE, "a CIFAR image is 3072 bytes");
    assert_eq!(out.len(), 3 * CIFAR_PLANE, "a CIFAR output is 3072 floats");
    let side = CIFAR_SIDE as isize;
    let pad = draw.padding as isize;
    for c in 0..3 {
        let plane = &src[c * CIFAR_PLANE..(c + 1) * CIFAR_PLANE];
        let dst = &mut out[c * CIFAR_PLANE..(c + 1) * CIFAR_PLANE];
        let (m, s) = (mean[c], std[c]);
        let zero = -m / s;
        for y in 0..CIFAR_SIDE {
            let sy = y as isize + draw.dy as isize - pad;
            let row = &mut dst[y * CIFAR_SIDE..(y + 1) * CIFAR_SIDE];
            if !(0..side).contains(&sy) {
                row.fill(zero);
                continue;
            }
            let src_row = &plane[sy as usize * CIFAR_SIDE..(sy as usize + 1) * CIFAR_SIDE];
            for (x, v) in row.iter_mut().enumerate() {
                let xx = if draw.flip { CIFAR_SIDE - 1 - x } else { x } as isize;
                let sx = xx + draw.dx as isize - pad;
                *v = if (0..side).contains(&sx) {
                    (src_row[sx as usize] as f32 / 255.0 - m) / s
                } else {
                    zero
                };
            }
        }
    }
    if let Some(cut) = draw.cutout {
        let (rows, cols) = cut.bounds(CIFAR_SIDE);
        for c in 0..3 {
            for y in rows.clone() {
                let start = c * CIFAR_PLANE + y * CIFAR_SIDE;
                out[start + cols.start..start + cols.end].fill(0.0);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ImageNet-style images: random resized crop, flip, colour jitter; resize + centre crop.

/// A rectangle of the source image, in source pixels (fractional for the evaluation crop).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropBox {
    pub left: f64,
    pub top: f64,
    pub width: f64,
    pub height: f64,
}

/// torchvision's `RandomResizedCrop.get_params`: up to ten tries at a box whose area is a
/// uniform fraction in `scale` of the image and whose log aspect ratio is uniform in
/// log(`ratio`); when all fail, the largest centred box whose ratio is clamped into `ratio`.
pub fn random_resized_crop_box(
    width: u32,
    height: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut impl Rng,
) -> CropBox {
    let (w, h) = (width as i64, height as i64);
    let area = (w * h) as f64;
    let (log_lo, log_hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * uniform(rng, scale.0, scale.1);
        let aspect = uniform(rng, log_lo, log_hi).exp();
        let cw = (target * aspect).sqrt().round() as i64;
        let ch = (target / aspect).sqrt().round() as i64;
        if 0 < cw && cw <= w && 0 < ch && ch <= h {
            let top = rng.random_range(0..=h - ch);
            let left = rng.random_range(0..=w - cw);
            return CropBox { left: left as f64, top: top as f64, width: cw as f64, height: ch as f64 };
        }
    }
    let in_ratio = w as f64 / h as f64;
    let (cw, ch) = if in_ratio < ratio.0.min(ratio.1) {
        (w, ((w as f64) / ratio.0.min(ratio.1)).round() as i64)
    } else if in_ratio > ratio.0.max(ratio.1) {
        (((h as f64) * ratio.0.max(ratio.1)).round() as i64, h)
    } else {
        (w, h)
    };
    let (cw, ch) = (cw.clamp(1, w), ch.clamp(1, h));
    CropBox { left: ((w - cw) / 2) as f64, top: ((h - ch) / 2) as f64, width: cw as f64, height: ch as f64 }
}

/// The part of a `width × height` image that torchvision's `Resize(resize)` followed by
/// `CenterCrop(crop)` keeps, in source pixels: the shorter side is scaled to `resize` (the longer
/// one truncated as torchvision does), then the centred `crop × crop` square is taken. Resizing
/// this box straight to `crop × crop` does both steps at once.
pub fn center_crop_box(width: u32, height: u32, resize: usize, crop: usize) -> CropBox {
    let (w, h) = (width as f64, height as f64);
    let (new_w, new_h) = if width <= height {
        (resize as f64, (resize as f64 * h / w).floor())
    } else {
        ((resize as f64 * w / h).floor(), resize as f64)
    };
    // Python's round(), which torchvision uses, rounds halves to even.
    let top = ((new_h - crop as f64) / 2.0).round_ties_even();
    let left = ((new_w - crop as f64) / 2.0).round_ties_even();
    let (sx, sy) = (w / new_w, h / new_h);
    CropBox { left: left * sx, top: top * sy, width: crop as f64 * sx, height: crop as f64 * sy }
}

/// torchvision's `ColorJitter`: each factor is drawn uniformly from `[max(0, 1 − v), 1 + v]`
/// (hue: `[−v, v]`), and the four adjustments run in a random order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ColorJitter {
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    pub hue: f32,
}

impl ColorJitter {
    /// The jitter the paper (after DARTS) used for ImageNet training.
    pub const PAPER: ColorJitter = ColorJitter { brightness: 0.4, contrast: 0.4, saturation: 0.4, hue: 0.2 };

    pub fn draw(&self, rng: &mut impl Rng) -> JitterDraw {
        let mut order = [0usize, 1, 2, 3];
        for i in (1..4).rev() {
            let j = rng.random_range(0..=i);
            order.swap(i, j);
        }
        let mut factor =
            |v: f32| (v > 0.0).then(|| uniform(rng, (1.0 - v as f64).max(0.0), 1.0 + v as f64) as f32);
        let brightness = factor(self.brightness);
        let contrast = factor(self.contrast);
        let saturation = factor(self.saturation);
        let hue = (self.hue > 0.0).then(|| uniform(rng, -self.hue as f64, self.hue as f64) as f32);
        JitterDraw { order, brightness, contrast, saturation, hue }
    }
}

/// The choices of one [`ColorJitter`]: `order` lists the adjustments by number (0 brightness,
/// 1 contrast, 2 saturation, 3 hue); a `None` factor leaves that adjustment out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JitterDraw {
    pub order: [usize; 4],
    pub brightness: Option<f32>,
    pub contrast: Option<f32>,
    pub saturation: Option<f32>,
    pub hue: Option<f32>,
}

fn gray(p: &[f32]) -> f32 {
    0.2989 * p[0] + 0.587 * p[1] + 0.114 * p[2]
}

/// Applies `draw` to an interleaved RGB image with values in [0, 1], as torchvision does on
/// float tensors (each blend clamped to [0, 1]).
pub fn apply_jitter(draw: &JitterDraw, rgb: &mut [f32]) {
    for step in draw.order {
        match step {
            0 => {
                if let Some(f) = draw.brightness {
                    rgb.iter_mut().for_each(|v| *v = (*v * f).clamp(0.0, 1.0));
                }
            }
            1 => {
                if let Some(f) = draw.contrast {
                    let pixels = (rgb.len() / 3).max(1) as f32;
                    let mean = rgb.chunks_exact(3).map(gray).sum::<f32>() / pixels;
                    rgb.iter_mut().for_each(|v| *v = (f * *v + (1.0 - f) * mean).clamp(0.0, 1.0));
                }
            }
            2 => {
                if let Some(f) = draw.saturation {
                    for p in rgb.chunks_exact_mut(3) {
                        let g = gray(p);
                        p.iter_mut().for_each(|v| *v = (f * *v + (1.0 - f) * g).clamp(0.0, 1.0));
                    }
                }
            }
            _ => {
                if let Some(shift) = draw.hue {
                    rgb.chunks_exact_mut(3).for_each(|p| shift_hue(p, shift));
                }
            }
        }
    }
}

/// RGB → HSV, hue moved by `shift` turns (mod 1), → RGB. Written without data-dependent
/// branches (selects only), since which channel is largest changes from pixel to pixel and
/// mispredictions dominated the cost.
fn shift_hue(p: &mut [f32], shift: f32) {
    let (r, g, b) = (p[0], p[1], p[2]);
    let max = r.max(g).max(b);
    let delta = max - r.min(g).min(b);
    if delta <= 0.0 {
        return; // grey: hue has no effect
    }
    let inv = 1.0 / delta;
    // Hue in sixths of a turn, [-1, 5) before the shift.
    let from_r = (g - b) * inv;
    let from_g = (b - r) * inv + 2.0;
    let from_b = (r - g) * inv + 4.0;
    let mut h6 = if max == r {
        from_r
    } else if max == g {
        from_g
    } else {
        from_b
    };
    h6 += 6.0 * shift;
    h6 = if h6 < 0.0 { h6 + 6.0 } else { h6 };
    h6 = if h6 >= 6.0 { h6 - 6.0 } else { h6 };
    if !(0.0..6.0).contains(&h6) {
        h6 -= 6.0 * (h6 / 6.0).floor(); // shifts beyond half a turn
    }
    // HSV → RGB as f(n) = V − V·S·clamp(min(k, 4 − k), 0, 1), k = (n + h6) mod 6, where
    // V·S = delta.
    let channel = |n: f32| {
        let k = n + h6;
        let k = if k >= 6.0 { k - 6.0 } else { k };
        max - delta * k.min(4.0 - k).clamp(0.0, 1.0)
    };
    p[0] = channel(5.0);
    p[1] = channel(3.0);
    p[2] = channel(1.0);
}

/// Training transform for image folders: random resized crop to `size`, horizontal flip with
/// probability ½ (when `flip`), colour jitter (when `jitter` is set).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FolderAugment {
    pub size: usize,
    pub scale: (f64, f64),
    pub ratio: (f64, f64),
    pub flip: bool,
    pub jitter: Option<ColorJitter>,
}

impl FolderAugment {
    /// The paper's ImageNet training transform at output side `size` (224 there).
    pub fn paper(size: usize) -> Self {
        FolderAugment {
            size,
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            flip: true,
            jitter: Some(ColorJitter::PAPER),
        }
    }
}

/// What to do with a decoded image before it joins a batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FolderTransform {
    Train(FolderAugment),
    /// Resize the shorter side to `resize`, then take the centred `crop × crop` square
    /// (256 and 224 for ImageNet).
    Eval {
        resize: usize,
        crop: usize,
    },
}

impl FolderTransform {
    /// Side of the square images this transform outputs.
    pub fn output_size(&self) -> usize {
        match self {
            FolderTransform::Train(a) => a.size,
            FolderTransform::Eval { crop, .. } => *crop,
        }
    }

    /// Transforms `img` and writes it, normalised, into `out` (`3 × size × size`, CHW). The only
    /// error is the resizer refusing the image, reported as text for the caller to attach the
    /// file name.
    pub fn apply(
        &self,
        img: RgbImage,
        rng: &mut impl Rng,
        mean: &[f32; 3],
        std: &[f32; 3],
        out: &mut [f32],
    ) -> Result<(), String> {
        let (w, h) = img.dimensions();
        match self {
            FolderTransform::Train(aug) => {
                let bx = random_resized_crop_box(w, h, aug.scale, aug.ratio, rng);
                let flip = aug.flip && rng.random_bool(0.5);
                let jitter = aug.jitter.map(|j| j.draw(rng));
                let pixels = resize_box(img, bx, aug.size)?;
                match jitter {
                    // Jitter mixes channels and needs the whole image (contrast), so it runs on
                    // floats; the flip commutes with it.
                    Some(d) => {
                        let mut rgb = to_unit_hwc(&pixels, aug.size, flip);
                        apply_jitter(&d, &mut rgb);
                        hwc_to_chw_normalised(&rgb, aug.size, mean, std, out);
                    }
                    None => bytes_to_chw(&pixels, aug.size, flip, mean, std, out),
                }
            }
            FolderTransform::Eval { resize, crop } => {
                let bx = center_crop_box(w, h, *resize, *crop);
                let pixels = resize_box(img, bx, *crop)?;
                bytes_to_chw(&pixels, *crop, false, mean, std, out);
            }
        }
        Ok(())
    }
}

/// Resamples the box `bx` of `img` to `size × size` with an antialiased bilinear filter (what
/// PIL's bilinear resize does for torchvision); returns interleaved RGB bytes.
pub fn resize_box(img: RgbImage, bx: CropBox, size: usize) -> Result<Vec<u8>, String> {
    let (w, h) = img.dimensions();
    let src = Image::from_vec_u8(w, h, img.into_raw(), PixelType::U8x3).map_err(|e| e.to_string())?;
    let mut dst = Image::new(size as u32, size as u32, PixelType::U8x3);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .crop(bx.left, bx.top, bx.width, bx.height);
    Resizer::new().resize(&src, &mut dst, &options).map_err(|e| e.to_string())?;
    Ok(dst.into_vec())
}

/// Interleaved RGB bytes → normalised CHW floats through a 3×256 table, mirrored when `flip`.
fn bytes_to_chw(pixels: &[u8], size: usize, flip: bool, mean: &[f32; 3], std: &[f32; 3], out: &mut [f32]) {
    let mut table = [[0f32; 256]; 3];
    for (c, t) in table.iter_mut().enumerate() {
        for (v, e) in t.iter_mut().enumerate() {
            *e = (v as f32 / 255.0 - mean[c]) / std[c];
        }
    }
    let plane = size * size;
    let (r, rest) = out[..3 * plane].split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (y, row) in pixels.chunks_exact(size * 3).enumerate() {
        let o = y * size;
        let (r, g, b) = (&mut r[o..o + size], &mut g[o..o + size], &mut b[o..o + size]);
        for (x, p) in row.chunks_exact(3).enumerate() {
            let d = if flip { size - 1 - x } else { x };
            r[d] = table[0][p[0] as usize];
            g[d] = table[1][p[1] as usize];
            b[d] = table[2][p[2] as usize];
        }
    }
}

/// Interleaved RGB bytes → interleaved floats in [0, 1], mirrored when `flip`.
fn to_unit_hwc(pixels: &[u8], size: usize, flip: bool) -> Vec<f32> {
    let mut rgb = vec![0f32; size * size * 3];
    for (src, dst) in pixels.chunks_exact(size * 3).zip(rgb.chunks_exact_mut(size * 3)) {
        for (x, p) in src.chunks_exact(3).enumerate() {
            let d = 3 * if flip { size - 1 - x } else { x };
            dst[d] = p[0] as f32 / 255.0;
            dst[d + 1] = p[1] as f32 / 255.0;
            dst[d + 2] = p[2] as f32 / 255.0;
        }
    }
    rgb
}

fn hwc_to_chw_normalised(rgb: &[f32], size: usize, mean: &[f32; 3], std: &[f32; 3], out: &mut [f32]) {
    let plane = size * size;
    let scale = std.map(|s| 1.0 / s);
    let bias = [0, 1, 2].map(|c| -mean[c] * scale[c]);
    for c in 0..3 {
        let dst = &mut out[c * plane..(c + 1) * plane];
        for (o, p) in dst.iter_mut().zip(rgb.chunks_exact(3)) {
            *o = p[c] * scale[c] + bias[c];
        }
    }
}
