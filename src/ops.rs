//! The operations an edge can carry, and the layers they are made of, with PyTorch semantics
//! and PyTorch parameter names (`op.1.weight`, `conv_1.weight`, `bn.running_mean`, ...).
//!
//! Layers are plain structs holding their tensors (registered in a `tch::nn::VarStore` under
//! the path they are built at) with a `forward` method; nothing is allocated per call beyond
//! the outputs libtorch produces.
use std::cell::{Cell as StdCell, OnceCell, RefCell};

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

/// How the layers' constructors create their variables (see [`build_within_memory`]).
enum Alloc {
    /// Registered in the VarStore as tch does it (which panics if libtorch cannot allocate):
    /// only code that builds layers directly, such as tests, runs this way.
    Plain,
    /// Registered, but the first failure is kept for the builder to report; the variables
    /// after it are left undefined and nothing more is allocated.
    Guarded(Option<tch::TchError>),
    /// Only counted: a dry run that allocates and registers nothing and draws no random numbers.
    Count(Footprint),
}

thread_local! {
    static ALLOC: RefCell<Alloc> = const { RefCell::new(Alloc::Plain) };
}

/// What a variable starts as.
#[derive(Clone, Copy)]
enum VarInit {
    Trainable(nn::Init),
    ZerosNoTrain,
    OnesNoTrain,
}

/// Creates variable `name` under `p` in the current [`Alloc`] mode.
fn variable(p: &nn::Path, name: &str, dims: &[i64], init: VarInit) -> Tensor {
    ALLOC.with(|mode| match &mut *mode.borrow_mut() {
        Alloc::Count(footprint) => {
            footprint.elements += dims.iter().map(|&d| d.max(0) as f64).product::<f64>();
            footprint.tensors += 1.0;
            Tensor::new()
        }
        Alloc::Guarded(Some(_)) => Tensor::new(),
        Alloc::Guarded(failure) => {
            let made = match init {
                VarInit::Trainable(i) => p.f_var(name, dims, i),
                VarInit::ZerosNoTrain => p.f_zeros_no_train(name, dims),
                VarInit::OnesNoTrain => p.f_ones_no_train(name, dims),
            };
            made.unwrap_or_else(|e| {
                *failure = Some(e);
                Tensor::new()
            })
        }
        Alloc::Plain => match init {
            VarInit::Trainable(i) => p.var(name, dims, i),
            VarInit::ZerosNoTrain => p.zeros_no_train(name, dims),
            VarInit::OnesNoTrain => p.ones_no_train(name, dims),
        },
    })
}

/// Runs `f` in allocation mode `mode` and returns its result with the mode it left; the
/// previous mode is back afterwards, also if `f` panics.
fn with_alloc<T>(mode: Alloc, f: impl FnOnce() -> T) -> (T, Alloc) {
    struct Restore(Option<Alloc>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some(previous) = self.0.take() {
                ALLOC.with(|m| *m.borrow_mut() = previous);
            }
        }
    }
    let mut restore = Restore(Some(ALLOC.with(|m| m.replace(mode))));
    let out = f();
    let left = ALLOC.with(|m| m.replace(Alloc::Plain));
    if let Some(previous) = restore.0.take() {
        ALLOC.with(|m| *m.borrow_mut() = previous);
    }
    (out, left)
}

/// How much memory some layers' variables take: counted by [`count_variables`].
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Footprint {
    /// float32 values.
    pub elements: f64,
    pub tensors: f64,
}

impl Footprint {
    /// libtorch's and the VarStore's bookkeeping per variable, roughly (tensor and storage
    /// objects, the name and its map entry): it dominates for very many tiny layers.
    const BYTES_PER_TENSOR: f64 = 256.0;

    pub fn bytes(self) -> f64 {
        4.0 * self.elements + Self::BYTES_PER_TENSOR * self.tensors
    }

    /// `n` copies.
    pub fn times(self, n: f64) -> Self {
        Footprint { elements: self.elements * n, tensors: self.tensors * n }
    }
}

impl std::ops::AddAssign for Footprint {
    fn add_assign(&mut self, other: Self) {
        self.elements += other.elements;
        self.tensors += other.tensors;
    }
}

/// The variables `build` would create, counted without allocating any (`build` runs on shapes
/// alone; what it returns holds undefined tensors and is dropped).
pub(crate) fn count_variables<T>(build: impl FnOnce() -> T) -> Footprint {
    match with_alloc(Alloc::Count(Footprint::default()), build).1 {
        Alloc::Count(footprint) => footprint,
        _ => Footprint::default(),
    }
}

/// Builds layers whose variables take about `footprint` on `device` (see [`count_variables`]):
/// refuses up front when that is more memory than the device has free (checked on the CPU,
/// from /proc/meminfo; libtorch does not tell a GPU's free memory cheaply), and turns an
/// allocation that fails all the same into an error rather than a panic. `what` names the
/// network in the messages.
pub(crate) fn build_within_memory<T>(
    device: tch::Device,
    footprint: Footprint,
    what: impl Fn() -> String,
    build: impl FnOnce() -> T,
) -> crate::error::Result<T> {
    let gib = |bytes: f64| {
        let g = bytes / (1u64 << 30) as f64;
        if g >= 1e6 {
            format!("{g:.1e} GiB")
        } else if g >= 10.0 {
            format!("{g:.0} GiB")
        } else {
            format!("{g:.1} GiB")
        }
    };
    let needed = footprint.bytes();
    if let Some(free) = available_bytes(device) {
        if needed > free as f64 {
            return Err(crate::error::Error::OutOfMemory(format!(
                "building {} needs about {} for its parameters, more than the {} of memory available",
                what(),
                gib(needed),
                gib(free as f64)
            )));
        }
    }
    match with_alloc(Alloc::Guarded(None), build) {
        (built, Alloc::Guarded(None)) => Ok(built),
        (_, Alloc::Guarded(Some(e))) => {
            let text = match &e {
                tch::TchError::Torch(m) => m.clone(),
                other => other.to_string(),
            };
            // libtorch's first line, without its source position ("[enforce fail at …] err == 0.").
            let first = text.lines().next().unwrap_or("");
            let first = match first.strip_prefix("[enforce fail") {
                Some(rest) => {
                    rest.split_once("] ").map_or(first, |(_, r)| r.trim_start_matches("err == 0. "))
                }
                None => first,
            };
            Err(crate::error::Error::OutOfMemory(format!(
                "building {} ({} of parameters) failed on {}: {first}",
                what(),
                gib(needed),
                match device {
                    tch::Device::Cpu => "the CPU".to_string(),
                    tch::Device::Cuda(n) => format!("cuda:{n}"),
                    other => format!("{other:?}"),
                }
            )))
        }
        (built, _) => Ok(built),
    }
}

/// Memory free for new allocations on `device`, when it can be told cheaply: the CPU's
/// `MemAvailable` on Linux.
fn available_bytes(device: tch::Device) -> Option<u64> {
    if device != tch::Device::Cpu {
        return None;
    }
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
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
        let fan_in = (c_in / spec.groups).saturating_mul(kh * kw);
        let init = VarInit::Trainable(fan_in_uniform(fan_in));
        let weight = variable(&p, "weight", &[c_out, c_in / spec.groups, kh, kw], init);
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
        let init = VarInit::Trainable(fan_in_uniform(c_in));
        let weight = variable(&p, "weight", &[c_out, c_in], init);
        let bias = variable(&p, "bias", &[c_out], init);
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
                Some(variable(&p, "weight", &[c], VarInit::Trainable(nn::Init::Const(1.0)))),
                Some(variable(&p, "bias", &[c], VarInit::Trainable(nn::Init::Const(0.0)))),
            )
        } else {
            (None, None)
        };
        BatchNorm2d {
            weight,
            bias,
            running_mean: variable(&p, "running_mean", &[c], VarInit::ZerosNoTrain),
            running_var: variable(&p, "running_var", &[c], VarInit::OnesNoTrain),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_allocation_is_an_error_not_a_panic() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let p = vs.root();
        // libtorch refuses the second layer's shape: what an allocation failure looks like to
        // the builder, without asking this machine for memory it does not have.
        let built = build_within_memory(
            tch::Device::Cpu,
            Footprint::default(),
            || "the layers".into(),
            || (Linear::new(&p / "a", 2, 3), Linear::new(&p / "b", 2, -3), Linear::new(&p / "c", 2, 3)),
        );
        let err = built.err().map(|e| (e.to_string(), e.exit_code()));
        let (text, code) = err.unwrap_or_default();
        assert!(
            text.starts_with("building the layers (0.0 GiB of parameters) failed on the CPU: "),
            "{text}"
        );
        assert_eq!(code, 1);
        // Nothing is allocated after the failure; outside a build, layers are plain again.
        assert_eq!(vs.variables().len(), 2);
        assert_eq!(Linear::new(&p / "d", 2, 3).weight.size(), [3, 2]);
    }

    #[test]
    fn a_build_larger_than_the_free_memory_is_refused_before_it_starts() {
        let huge = Footprint { elements: 1e15, tensors: 1.0 };
        let mut ran = false;
        let err =
            build_within_memory(tch::Device::Cpu, huge, || "the net (init channels 9)".into(), || ran = true);
        if available_bytes(tch::Device::Cpu).is_none() {
            return; // not Linux: no estimate of the free memory
        }
        let text = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(!ran);
        assert!(text.starts_with("building the net (init channels 9) needs about 3.7e6 GiB"), "{text}");
        assert!(text.contains("GiB of memory available"), "{text}");
    }

    #[test]
    fn counting_allocates_nothing_and_counts_every_variable() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let counted = count_variables(|| SepConv::new(vs.root() / "s", 4, 6, 3, 2, 1, true));
        assert!(vs.variables().is_empty());
        let real = SepConv::new(vs.root() / "s", 4, 6, 3, 2, 1, true);
        drop(real);
        let vars = vs.variables();
        let elements: i64 = vars.values().map(|t| t.numel() as i64).sum();
        assert_eq!(counted, Footprint { elements: elements as f64, tensors: vars.len() as f64 });
    }
}
