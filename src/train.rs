//! Training building blocks shared by `cnas train` and the search's weight phase.
use tch::Tensor;

/// Rescales the gradients of `params` so their global L2 norm is at most `max_norm`, like
/// PyTorch's `clip_grad_norm_`, and returns the norm before clipping as a 0-dim tensor.
/// Everything stays on the device: no host sync, so it can run inside the training step.
pub fn clip_grad_norm(params: &[Tensor], max_norm: f64) -> Tensor {
    tch::no_grad(|| {
        let grads: Vec<Tensor> = params.iter().map(Tensor::grad).filter(Tensor::defined).collect();
        if grads.is_empty() {
            return Tensor::from(0f32);
        }
        let norms: Vec<Tensor> = grads.iter().map(|g| g.norm()).collect();
        let total = Tensor::stack(&norms, 0).norm();
        let coef = (max_norm / (&total + 1e-6)).clamp_max(1.0);
        for mut g in grads {
            let _ = g.g_mul_(&coef);
        }
        total
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clips_to_the_global_norm_and_leaves_small_gradients_alone() {
        let a = Tensor::from_slice(&[3f32, 0.0]).set_requires_grad(true);
        let b = Tensor::from_slice(&[0f32, 4.0]).set_requires_grad(true);
        (&a * &a + &b * &b).sum(tch::Kind::Float).backward(); // grads 6,0 and 0,8: norm 10
        let total = clip_grad_norm(&[a.shallow_clone(), b.shallow_clone()], 5.0);
        assert!((total.double_value(&[]) - 10.0).abs() < 1e-5);
        assert!((a.grad().double_value(&[0]) - 3.0).abs() < 1e-4);
        assert!((b.grad().double_value(&[1]) - 4.0).abs() < 1e-4);
        let _ = clip_grad_norm(&[a.shallow_clone(), b.shallow_clone()], 100.0);
        assert!((b.grad().double_value(&[1]) - 4.0).abs() < 1e-4);
    }
}
