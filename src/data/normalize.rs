//! Per-channel normalisation constants (`(v/255 − mean) / std`), RGB order.

/// CIFAR-10 training-set channel means (as in the DARTS code).
pub const CIFAR10_MEAN: [f32; 3] = [0.49139968, 0.48215827, 0.44653124];
/// CIFAR-10 training-set channel standard deviations (as in the DARTS code).
pub const CIFAR10_STD: [f32; 3] = [0.24703233, 0.24348505, 0.26158768];
/// ImageNet channel means (torchvision's).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (torchvision's).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Normalises planar RGB bytes (`3 × H × W`, as in a CIFAR record) into `out`.
///
/// Panics if the lengths differ or are not a multiple of 3 (a caller's bug, not a user's).
pub fn planar_u8(src: &[u8], mean: &[f32; 3], std: &[f32; 3], out: &mut [f32]) {
    assert_eq!(src.len(), out.len(), "input and output sizes differ");
    assert_eq!(src.len() % 3, 0, "three planes expected");
    let plane = src.len() / 3;
    for c in 0..3 {
        let range = c * plane..(c + 1) * plane;
        for (o, &v) in out[range.clone()].iter_mut().zip(&src[range]) {
            *o = (v as f32 / 255.0 - mean[c]) / std[c];
        }
    }
}
