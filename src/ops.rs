//! The operations an edge can carry, and the layers they are made of, with PyTorch semantics
//! and PyTorch parameter names (`op.1.weight`, `conv_1.weight`, `bn.running_mean`, ...).
//!
//! Layers are plain structs holding their tensors (registered in a `tch::nn::VarStore` under
//! the path they are built at) with a `forward` method; nothing is allocated per call beyond
//! the outputs libtorch produces.
use std::cell::{Cell as StdCell, OnceCell};

use tch::{nn, Tensor};

use crate::space::Primitive;

pub mod trace;

thread_local! {
    /// Multiply-adds counter used by [`crate::profile`]: `Some` only while a profiling pass
    /// runs, so normal forward passes pay one thread-local read per convolution.
    static MADDS: StdCell<Option<u64>> = const { StdCell::new(None) };
}

/// Runs `f` with multiply-add counting switched on and returns its result with the count.
pub(crate) fn count_madds<T>(f: impl FnOnce() -> T) -> (T, u64) {
    MADDS.with(|c| c.set(Some(0)));
    let out = f();
    let n = MADDS.with(|c| c.replace(None)).unwrap_or(0);
    (out, n)
}

fn add_madds(n: u64) {
    MADDS.with(|c| {
        if let Some(total) = c.get() {
            c.set(Some(total + n));
        }
    });
}

/// Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for Conv2d and Linear weights
/// (kaiming_uniform with a = sqrt(5)) and biases.
fn fan_in_uniform(fan_in: i64) -> nn::Init {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    nn::Init::Uniform { lo: -bound, up: bound }
}

/// `nn.Conv2d(..., bias=False)`.
#[derive(Debug)]
pub struct Conv2d {
    pub weight: Tensor,
    stride: [i64; 2],
    padding: [i64; 2],
    dilation: [i64; 2],
    groups: i64,
    /// A 1×1 kernel with stride above 1 and no padding (see [`Conv2d::forward`]).
    strided_pointwise: bool,
}

/// Geometry of a convolution; `Conv2dSpec::new(k)` is a square kernel, stride 1, no padding.
#[derive(Debug, Clone, Copy)]
pub struct Conv2dSpec {
    pub kernel: [i64; 2],
    pub stride: [i64; 2],
    pub padding: [i64; 2],
    pub dilation: [i64; 2],
    pub groups: i64,
}

impl Conv2dSpec {
    pub fn new(kernel: i64) -> Self {
        Conv2dSpec { kernel: [kernel, kernel], stride: [1, 1], padding: [0, 0], dilation: [1, 1], groups: 1 }
    }
    pub fn stride(mut self, s: i64) -> Self {
        self.stride = [s, s];
        self
    }
    pub fn padding(mut self, p: i64) -> Self {
        self.padding = [p, p];
        self
    }
    pub fn dilation(mut self, d: i64) -> Self {
        self.dilation = [d, d];
        self
    }
    pub fn groups(mut self, g: i64) -> Self {
        self.groups = g;
        self
    }
}

impl Conv2d {
    pub fn new(p: nn::Path, c_in: i64, c_out: i64, spec: Conv2dSpec) -> Self {
        let [kh, kw] = spec.kernel;
        let fan_in = c_in / spec.groups * kh * kw;
        let weight = p.var("weight", &[c_out, c_in / spec.groups, kh, kw], fan_in_uniform(fan_in));
        Conv2d {
            weight,
            stride: spec.stride,
            padding: spec.padding,
            dilation: spec.dilation,
            groups: spec.groups,
            strided_pointwise: spec.kernel == [1, 1] && spec.padding == [0, 0] && spec.stride != [1, 1],
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let y = if self.strided_pointwise && x.device() == tch::Device::Cpu {
            // A 1×1 convolution with stride s reads every s-th pixel, so subsampling first gives
            // the same output. On AVX-512 CPUs oneDNN's strided 1×1 backward corrupts the heap
            // for small channel counts (PyTorch 2.11, e.g. 8 → 4 channels at 56×56; see
            // tests/it/reference.rs), and the stride-1 kernel does not.
            let [sh, sw] = self.stride;
            let x = x.slice(2, 0, None, sh).slice(3, 0, None, sw);
            x.conv2d(&self.weight, None::<&Tensor>, [1, 1], [0, 0], [1, 1], self.groups)
        } else {
            x.conv2d(&self.weight, None::<&Tensor>, self.stride, self.padding, self.dilation, self.groups)
        };
        if MADDS.with(|c| c.get().is_some()) {
            let w = self.weight.size();
            let o = y.size();
            // per image: output positions × output channels × (input channels per group × kernel)
            add_madds((o[1] * o[2] * o[3] * w[1] * w[2] * w[3]) as u64);
        }
        y
    }
}

/// `nn.Linear`.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Linear {
    pub fn new(p: nn::Path, c_in: i64, c_out: i64) -> Self {
        let weight = p.var("weight", &[c_out, c_in], fan_in_uniform(c_in));
        let bias = p.var("bias", &[c_out], fan_in_uniform(c_in));
        Linear { weight, bias }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        if MADDS.with(|c| c.get().is_some()) {
            let w = self.weight.size();
            add_madds((w[0] * w[1]) as u64);
        }
        x.linear(&self.weight, Some(&self.bias))
    }
}

/// `nn.BatchNorm2d(C, affine=...)`, eps 1e-5, momentum 0.1. Running statistics live in the
/// VarStore as non-trainable variables so they are saved and loaded with the weights.
#[derive(Debug)]
pub struct BatchNorm2d {
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
    pub running_mean: Tensor,
    pub running_var: Tensor,
}

impl BatchNorm2d {
    pub const EPS: f64 = 1e-5;
    pub const MOMENTUM: f64 = 0.1;

    pub fn new(p: nn::Path, c: i64, affine: bool) -> Self {
        let (weight, bias) = if affine {
            (
                Some(p.var("weight", &[c], nn::Init::Const(1.0))),
                Some(p.var("bias", &[c], nn::Init::Const(0.0))),
            )
        } else {
            (None, None)
        };
        BatchNorm2d {
            weight,
            bias,
            running_mean: p.zeros_no_train("running_mean", &[c]),
            running_var: p.ones_no_train("running_var", &[c]),
        }
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        // Synchronised over the ranks of a data-parallel run when it asked for it (`--sync-bn`).
        if train {
            let (w, b, m, v) =
                (self.weight.as_ref(), self.bias.as_ref(), &self.running_mean, &self.running_var);
            if let Some(y) = crate::dist::sync_batch_norm(x, w, b, m, v, Self::MOMENTUM, Self::EPS) {
                return y;
            }
        }
        Tensor::batch_norm(
            x,
            self.weight.as_ref(),
            self.bias.as_ref(),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            Self::MOMENTUM,
            Self::EPS,
            true,
        )
    }
}

/// A state of a cell (or a cell's output) with its ReLU computed at most once. Several edges
/// read the same state and a cell's output feeds the next two cells' preprocessing; most
/// readers start with a ReLU, so sharing it saves one activation pass forward and one backward
/// per extra reader (autograd sums the readers' gradients into the one ReLU).
#[derive(Debug)]
pub struct Activation {
    x: Tensor,
    relu: OnceCell<Tensor>,
}

impl Activation {
    pub fn new(x: Tensor) -> Self {
        Activation { x, relu: OnceCell::new() }
    }

    pub fn tensor(&self) -> &Tensor {
        &self.x
    }

    /// `relu(x)`, computed on first use.
    pub fn relu(&self) -> &Tensor {
        self.relu.get_or_init(|| self.x.relu())
    }

    pub fn into_tensor(self) -> Tensor {
        self.x
    }
}

/// ReLU → Conv → BN (`op.0`, `op.1`, `op.2` in PyTorch's Sequential).
#[derive(Debug)]
pub struct ReluConvBn {
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl ReluConvBn {
    pub fn new(p: nn::Path, c_in: i64, c_out: i64, spec: Conv2dSpec, affine: bool) -> Self {
        let op = p / "op";
        ReluConvBn {
            conv: Conv2d::new(&op / 1, c_in, c_out, spec),
            bn: BatchNorm2d::new(&op / 2, c_out, affine),
        }
    }

    /// On an input already passed through the ReLU (callers share it, see [`Activation`]).
    pub fn forward_relu(&self, x_relu: &Tensor, train: bool) -> Tensor {
        self.bn.forward_t(&self.conv.forward(x_relu), train)
    }
}

/// Dilated depthwise-separable convolution: ReLU, depthwise (dilation 2), pointwise, BN.
#[derive(Debug)]
pub struct DilConv {
    depthwise: Conv2d,
    pointwise: Conv2d,
    bn: BatchNorm2d,
}

impl DilConv {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        p: nn::Path,
        c_in: i64,
        c_out: i64,
        kernel: i64,
        stride: i64,
        padding: i64,
        dilation: i64,
        affine: bool,
    ) -> Self {
        let op = p / "op";
        let dw = Conv2dSpec::new(kernel).stride(stride).padding(padding).dilation(dilation).groups(c_in);
        DilConv {
            depthwise: Conv2d::new(&op / 1, c_in, c_in, dw),
            pointwise: Conv2d::new(&op / 2, c_in, c_out, Conv2dSpec::new(1)),
            bn: BatchNorm2d::new(&op / 3, c_out, affine),
        }
    }

    /// On an input already passed through the ReLU.
    pub fn forward_relu(&self, x_relu: &Tensor, train: bool) -> Tensor {
        self.bn.forward_t(&self.pointwise.forward(&self.depthwise.forward(x_relu)), train)
    }
}

/// Separable convolution: two stacked (ReLU, depthwise, pointwise, BN) blocks, the first one
/// carrying the stride (`op.0..op.3` and `op.4..op.7`).
#[derive(Debug)]
pub struct SepConv {
    depthwise1: Conv2d,
    pointwise1: Conv2d,
    bn1: BatchNorm2d,
    depthwise2: Conv2d,
    pointwise2: Conv2d,
    bn2: BatchNorm2d,
}

impl SepConv {
    pub fn new(
        p: nn::Path,
        c_in: i64,
        c_out: i64,
        kernel: i64,
        stride: i64,
        padding: i64,
        affine: bool,
    ) -> Self {
        let op = p / "op";
        let dw = Conv2dSpec::new(kernel).padding(padding).groups(c_in);
        SepConv {
            depthwise1: Conv2d::new(&op / 1, c_in, c_in, dw.stride(stride)),
            pointwise1: Conv2d::new(&op / 2, c_in, c_in, Conv2dSpec::new(1)),
            bn1: BatchNorm2d::new(&op / 3, c_in, affine),
            depthwise2: Conv2d::new(&op / 5, c_in, c_in, dw),
            pointwise2: Conv2d::new(&op / 6, c_in, c_out, Conv2dSpec::new(1)),
            bn2: BatchNorm2d::new(&op / 7, c_out, affine),
        }
    }

    /// On an input already passed through the ReLU.
    pub fn forward_relu(&self, x_relu: &Tensor, train: bool) -> Tensor {
        let mut x = self.bn1.forward_t(&self.pointwise1.forward(&self.depthwise1.forward(x_relu)), train);
        // In place: BatchNorm's backward keeps its input and statistics, not its output, and
        // this saves allocating and writing a fresh tensor.
        let _ = x.relu_();
        self.bn2.forward_t(&self.pointwise2.forward(&self.depthwise2.forward(&x)), train)
    }
}

/// Stride-2 skip: two 1×1 stride-2 convolutions, the second on the input shifted by one pixel,
/// concatenated and normalised, so no pixel is simply dropped.
#[derive(Debug)]
pub struct FactorizedReduce {
    conv_1: Conv2d,
    conv_2: Conv2d,
    bn: BatchNorm2d,
}

impl FactorizedReduce {
    pub fn new(p: nn::Path, c_in: i64, c_out: i64, affine: bool) -> Self {
        let spec = Conv2dSpec::new(1).stride(2);
        FactorizedReduce {
            conv_1: Conv2d::new(&p / "conv_1", c_in, c_out / 2, spec),
            conv_2: Conv2d::new(&p / "conv_2", c_in, c_out / 2, spec),
            bn: BatchNorm2d::new(&p / "bn", c_out, affine),
        }
    }

    /// On an input already passed through the ReLU.
    pub fn forward_relu(&self, x: &Tensor, train: bool) -> Tensor {
        let shifted = x.narrow(2, 1, x.size()[2] - 1).narrow(3, 1, x.size()[3] - 1);
        let out = Tensor::cat(&[self.conv_1.forward(x), self.conv_2.forward(&shifted)], 1);
        self.bn.forward_t(&out, train)
    }
}

/// ReLU, a 1×k then a k×1 convolution (stride split between them), BN: NASNet's
/// `conv_7x1_1x7` and `conv_1x3_3x1`. PyTorch builds it as a bare Sequential (`1`, `2`, `3`).
#[derive(Debug)]
pub struct FactorizedConv {
    conv_a: Conv2d,
    conv_b: Conv2d,
    bn: BatchNorm2d,
}

impl FactorizedConv {
    pub fn new(p: nn::Path, c: i64, k: i64, stride: i64, affine: bool) -> Self {
        let half = k / 2;
        let a = Conv2dSpec {
            kernel: [1, k],
            stride: [1, stride],
            padding: [0, half],
            dilation: [1, 1],
            groups: 1,
        };
        let b = Conv2dSpec {
            kernel: [k, 1],
            stride: [stride, 1],
            padding: [half, 0],
            dilation: [1, 1],
            groups: 1,
        };
        FactorizedConv {
            conv_a: Conv2d::new(&p / 1, c, c, a),
            conv_b: Conv2d::new(&p / 2, c, c, b),
            bn: BatchNorm2d::new(&p / 3, c, affine),
        }
    }

    /// On an input already passed through the ReLU.
    pub fn forward_relu(&self, x_relu: &Tensor, train: bool) -> Tensor {
        self.bn.forward_t(&self.conv_b.forward(&self.conv_a.forward(x_relu)), train)
    }
}

/// The input of a cell's first state (`preprocess0`): a 1×1 ReLU-conv-BN, or a factorized
/// reduce when the cell before last had twice this cell's input resolution.
#[derive(Debug)]
pub enum Preprocess {
    Conv(ReluConvBn),
    Reduce(FactorizedReduce),
}

impl Preprocess {
    pub fn new(p: nn::Path, c_in: i64, c_out: i64, reduction_prev: bool, affine: bool) -> Self {
        if reduction_prev {
            Preprocess::Reduce(FactorizedReduce::new(p, c_in, c_out, affine))
        } else {
            Preprocess::Conv(ReluConvBn::new(p, c_in, c_out, Conv2dSpec::new(1), affine))
        }
    }

    /// Both kinds start with a ReLU: they read `x`'s shared one.
    pub fn forward_t(&self, x: &Activation, train: bool) -> Tensor {
        match self {
            Preprocess::Conv(op) => op.forward_relu(x.relu(), train),
            Preprocess::Reduce(op) => op.forward_relu(x.relu(), train),
        }
    }
}

/// One operation on one edge.
#[derive(Debug)]
pub enum Op {
    Zero {
        stride: i64,
    },
    Identity,
    MaxPool {
        kernel: i64,
        stride: i64,
    },
    /// 3×3 average pooling that does not count the padding.
    AvgPool {
        stride: i64,
    },
    FactorizedReduce(FactorizedReduce),
    SepConv(SepConv),
    DilConv(DilConv),
    ReluConvBn(ReluConvBn),
    FactorizedConv(FactorizedConv),
}

impl Op {
    /// Builds `primitive` for `c` channels at `stride` (1 or 2) under path `p`, exactly as the
    /// PyTorch OPS table does.
    pub fn new(p: nn::Path, primitive: Primitive, c: i64, stride: i64, affine: bool) -> Op {
        use Primitive as P;
        match primitive {
            P::None => Op::Zero { stride },
            P::SkipConnect if stride == 1 => Op::Identity,
            P::SkipConnect => Op::FactorizedReduce(FactorizedReduce::new(p, c, c, affine)),
            P::MaxPool3x3 => Op::MaxPool { kernel: 3, stride },
            P::MaxPool5x5 => Op::MaxPool { kernel: 5, stride },
            P::MaxPool7x7 => Op::MaxPool { kernel: 7, stride },
            P::AvgPool3x3 => Op::AvgPool { stride },
            P::SepConv3x3 => Op::SepConv(SepConv::new(p, c, c, 3, stride, 1, affine)),
            P::SepConv5x5 => Op::SepConv(SepConv::new(p, c, c, 5, stride, 2, affine)),
            P::SepConv7x7 => Op::SepConv(SepConv::new(p, c, c, 7, stride, 3, affine)),
            P::DilConv3x3 => Op::DilConv(DilConv::new(p, c, c, 3, stride, 2, 2, affine)),
            P::DilConv5x5 => Op::DilConv(DilConv::new(p, c, c, 5, stride, 4, 2, affine)),
            P::Conv1x1 => Op::ReluConvBn(ReluConvBn::new(p, c, c, Conv2dSpec::new(1).stride(stride), affine)),
            P::Conv3x3 => {
                Op::ReluConvBn(ReluConvBn::new(p, c, c, Conv2dSpec::new(3).stride(stride).padding(1), affine))
            }
            P::Conv5x5 => {
                Op::ReluConvBn(ReluConvBn::new(p, c, c, Conv2dSpec::new(5).stride(stride).padding(2), affine))
            }
            P::Conv7x1_1x7 => Op::FactorizedConv(FactorizedConv::new(p, c, 7, stride, affine)),
            P::Conv1x3_3x1 => Op::FactorizedConv(FactorizedConv::new(p, c, 3, stride, affine)),
        }
    }

    /// True for the parameter-free identity; drop-path skips it (as the reference does).
    pub fn is_identity(&self) -> bool {
        matches!(self, Op::Identity)
    }

    /// True for `none`, whose output is all zeros: a sum over edges can leave it out.
    pub fn is_zero(&self) -> bool {
        matches!(self, Op::Zero { .. })
    }

    /// The op on a state whose ReLU other readers may share (see [`Activation`]).
    pub fn forward_shared(&self, input: &Activation, train: bool) -> Tensor {
        let x = input.tensor();
        match self {
            Op::Zero { stride: 1 } => x.zeros_like(),
            Op::Zero { stride } => {
                let s = *stride;
                x.slice(2, 0, None, s).slice(3, 0, None, s).zeros_like()
            }
            Op::Identity => x.shallow_clone(),
            Op::MaxPool { kernel, stride } => {
                x.max_pool2d([*kernel, *kernel], [*stride, *stride], [kernel / 2, kernel / 2], [1, 1], false)
            }
            Op::AvgPool { stride } => {
                x.avg_pool2d([3, 3], [*stride, *stride], [1, 1], false, false, None::<i64>)
            }
            Op::FactorizedReduce(op) => op.forward_relu(input.relu(), train),
            Op::SepConv(op) => op.forward_relu(input.relu(), train),
            Op::DilConv(op) => op.forward_relu(input.relu(), train),
            Op::ReluConvBn(op) => op.forward_relu(input.relu(), train),
            Op::FactorizedConv(op) => op.forward_relu(input.relu(), train),
        }
    }
}

/// The same N×C×H×W tensor stored channels-last (NHWC strides). Convolutions, BatchNorm and
/// pooling keep that layout for their outputs, and oneDNN's depthwise and dilated convolutions
/// run markedly faster in it on the CPU (tch has no memory-format API; the strides say it).
pub fn to_channels_last(x: &Tensor) -> Tensor {
    if x.dim() != 4 {
        return x.shallow_clone();
    }
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// Whether networks on `device` run channels-last by default: measured faster on the CPU
/// (see BENCHMARKS.md); on CUDA the contiguous layout stays until measured there.
pub fn channels_last_default(device: tch::Device) -> bool {
    device == tch::Device::Cpu
}

/// The layout for a run with or without bf16 autocast: on the CPU, bf16 kernels measured about
/// twice as fast contiguous as channels-last (BENCHMARKS.md), so autocast keeps the contiguous
/// layout there.
pub fn channels_last_for(device: tch::Device, amp: bool) -> bool {
    channels_last_default(device) && !amp
}

/// Drop-path as in the reference code: zero whole samples with probability `prob`, scale the
/// rest by 1/(1-prob). Draws its mask exactly as PyTorch's `empty(N,1,1,1).bernoulli_(keep)`,
/// so the same seed drops the same samples.
pub fn drop_path(x: &Tensor, prob: f64) -> Tensor {
    let keep = 1.0 - prob;
    let mut mask = Tensor::empty([x.size()[0], 1, 1, 1], (x.kind(), x.device()));
    let _ = mask.bernoulli_float_(keep);
    x / keep * mask
}
