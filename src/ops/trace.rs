//! A read-only walk over what the layers compute in evaluation mode, for exporters: instead of
//! computing, each layer reports its steps (with its weights) to a [`Trace`].
use tch::Tensor;

use super::{
    BatchNorm2d, Conv2d, Conv2dSpec, DilConv, FactorizedConv, FactorizedReduce, Linear, Op, Preprocess,
    ReluConvBn, SepConv,
};

/// Receives an evaluation-mode forward pass step by step; `Value` names an intermediate result.
pub trait Trace {
    type Value: Clone;
    fn relu(&mut self, x: &Self::Value) -> Self::Value;
    /// A bias-free convolution; `weight` is out × in/groups × kh × kw.
    fn conv(&mut self, x: &Self::Value, weight: &Tensor, spec: &Conv2dSpec) -> Self::Value;
    /// Normalisation with the running statistics (eps [`BatchNorm2d::EPS`]).
    fn batch_norm(&mut self, x: &Self::Value, bn: &BatchNorm2d) -> Self::Value;
    /// Max pooling, square kernel, symmetric padding.
    fn max_pool(&mut self, x: &Self::Value, kernel: i64, stride: i64, padding: i64) -> Self::Value;
    /// Average pooling that does not count the padding.
    fn avg_pool(&mut self, x: &Self::Value, kernel: i64, stride: i64, padding: i64) -> Self::Value;
    /// `x[:, :, 1:, 1:]`.
    fn shift(&mut self, x: &Self::Value) -> Self::Value;
    /// Zeros shaped like `x[:, :, ::stride, ::stride]`.
    fn zero(&mut self, x: &Self::Value, stride: i64) -> Self::Value;
    fn add(&mut self, a: &Self::Value, b: &Self::Value) -> Self::Value;
    /// Concatenation along the channels.
    fn concat(&mut self, xs: &[Self::Value]) -> Self::Value;
    /// Global average pooling, flattened to N×C.
    fn global_avg_pool(&mut self, x: &Self::Value) -> Self::Value;
    fn linear(&mut self, x: &Self::Value, weight: &Tensor, bias: &Tensor) -> Self::Value;
}

impl Conv2d {
    /// The geometry this convolution was built with.
    pub fn spec(&self) -> Conv2dSpec {
        let w = self.weight.size();
        Conv2dSpec {
            kernel: [w[2], w[3]],
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            groups: self.groups,
        }
    }

    pub fn trace<T: Trace>(&self, t: &mut T, x: &T::Value) -> T::Value {
        t.conv(x, &self.weight, &self.spec())
    }
}

impl Linear {
    pub fn trace<T: Trace>(&self, t: &mut T, x: &T::Value) -> T::Value {
        t.linear(x, &self.weight, &self.bias)
    }
}

impl ReluConvBn {
    pub fn trace<T: Trace>(&self, t: &mut T, x: &T::Value) -> T::Value {
        let x = t.relu(x);
        let x = self.conv.trace(t, &x);
        t.batch_norm(&x, &self.bn)
    }
}

impl DilConv {
    pub fn trace<T: Trace>(&self, t: &mut T, x: &T::Value) -> T::Value {
        let x = t.relu(x);
        let x = self.depthwise.trace(t, &x);
        let x = self.pointwise.trace(t, &x);
        t.batch_norm(&x, &self.bn)
    }
}

impl SepConv {
    pub fn trace<T: Trace>(&self, t: &mut T, x: &T::Value) -> T::Value {
        let x = t.relu(x);
        let x = self.depthwise1.trace(t, &x);
        let x = self.pointwise1.trace(t, &x);
        let x = t.batch_norm(&x, &self.bn1);
        let x = t.relu(&x);
        let x = self.depthwise2.trace(t, &x);
        let x = self.pointwise2.trace(t, &x);
        t.batch_norm(&x, &self.bn2)
    }
}

impl FactorizedReduce {
    pub fn trace<T: Trace>(&self, t: &mut T, x: &T::Value) -> T::Value {
        let x = t.relu(x);
        let shifted = t.shift(&x);
        let a = self.conv_1.trace(t, &x);
        let b = self.conv_2.trace(t, &shifted);
        let out = t.concat(&[a, b]);
        t.batch_norm(&out, &self.bn)
    }
}

impl FactorizedConv {
    pub fn trace<T: Trace>(&self, t: &mut T, x: &T::Value) -> T::Value {
        let x = t.relu(x);
        let x = self.conv_a.trace(t, &x);
        let x = self.conv_b.trace(t, &x);
        t.batch_norm(&x, &self.bn)
    }
}

impl Preprocess {
    pub fn trace<T: Trace>(&self, t: &mut T, x: &T::Value) -> T::Value {
        match self {
            Preprocess::Conv(op) => op.trace(t, x),
            Preprocess::Reduce(op) => op.trace(t, x),
        }
    }
}

impl Op {
    pub fn trace<T: Trace>(&self, t: &mut T, x: &T::Value) -> T::Value {
        match self {
            Op::Zero { stride } => t.zero(x, *stride),
            Op::Identity => x.clone(),
            Op::MaxPool { kernel, stride } => t.max_pool(x, *kernel, *stride, kernel / 2),
            Op::AvgPool { stride } => t.avg_pool(x, 3, *stride, 1),
            Op::FactorizedReduce(op) => op.trace(t, x),
            Op::SepConv(op) => op.trace(t, x),
            Op::DilConv(op) => op.trace(t, x),
            Op::ReluConvBn(op) => op.trace(t, x),
            Op::FactorizedConv(op) => op.trace(t, x),
        }
    }
}
