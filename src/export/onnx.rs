//! The fixed network in evaluation mode as an ONNX model (opset 17): input `input`
//! (batch × 3 × H × W, float32, dynamic batch), output `logits` (batch × classes); no auxiliary
//! head. BatchNorm is folded into the convolution before it unless asked to be kept.
//!
//! The graph comes from walking the network ([`crate::model::Network::trace`]); the protobuf
//! messages are the few parts of `onnx.proto` needed here, with its field numbers.
use std::collections::{HashMap, HashSet};

use prost::Message;
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::Network;
use crate::ops::trace::Trace;
use crate::ops::{BatchNorm2d, Conv2dSpec};

/// The default domain's operator set the graph is written for.
pub const OPSET: i64 = 17;
/// IR version 8 is the one that goes with opset 17.
const IR_VERSION: i64 = 8;
pub const INPUT: &str = "input";
pub const OUTPUT: &str = "logits";

/// Protobuf messages of `onnx.proto` (proto2): only the fields cnas writes.
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelProto {
        #[prost(int64, optional, tag = "1")]
        pub ir_version: Option<i64>,
        #[prost(message, repeated, tag = "8")]
        pub opset_import: Vec<OperatorSetIdProto>,
        #[prost(string, optional, tag = "2")]
        pub producer_name: Option<String>,
        #[prost(string, optional, tag = "3")]
        pub producer_version: Option<String>,
        #[prost(string, optional, tag = "6")]
        pub doc_string: Option<String>,
        #[prost(message, optional, tag = "7")]
        pub graph: Option<GraphProto>,
        #[prost(message, repeated, tag = "14")]
        pub metadata_props: Vec<StringStringEntryProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct OperatorSetIdProto {
        #[prost(string, optional, tag = "1")]
        pub domain: Option<String>,
        #[prost(int64, optional, tag = "2")]
        pub version: Option<i64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StringStringEntryProto {
        #[prost(string, optional, tag = "1")]
        pub key: Option<String>,
        #[prost(string, optional, tag = "2")]
        pub value: Option<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GraphProto {
        #[prost(message, repeated, tag = "1")]
        pub node: Vec<NodeProto>,
        #[prost(string, optional, tag = "2")]
        pub name: Option<String>,
        #[prost(message, repeated, tag = "5")]
        pub initializer: Vec<TensorProto>,
        #[prost(message, repeated, tag = "11")]
        pub input: Vec<ValueInfoProto>,
        #[prost(message, repeated, tag = "12")]
        pub output: Vec<ValueInfoProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NodeProto {
        #[prost(string, repeated, tag = "1")]
        pub input: Vec<String>,
        #[prost(string, repeated, tag = "2")]
        pub output: Vec<String>,
        #[prost(string, optional, tag = "3")]
        pub name: Option<String>,
        #[prost(string, optional, tag = "4")]
        pub op_type: Option<String>,
        #[prost(message, repeated, tag = "5")]
        pub attribute: Vec<AttributeProto>,
    }

    /// `AttributeProto.AttributeType` values used here.
    pub const ATTRIBUTE_FLOAT: i32 = 1;
    pub const ATTRIBUTE_INT: i32 = 2;
    pub const ATTRIBUTE_INTS: i32 = 7;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AttributeProto {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(int32, optional, tag = "20")]
        pub r#type: Option<i32>,
        #[prost(float, optional, tag = "2")]
        pub f: Option<f32>,
        #[prost(int64, optional, tag = "3")]
        pub i: Option<i64>,
        #[prost(int64, repeated, packed = "false", tag = "8")]
        pub ints: Vec<i64>,
    }

    /// `TensorProto.DataType` values used here.
    pub const FLOAT: i32 = 1;
    pub const INT64: i32 = 7;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorProto {
        #[prost(int64, repeated, packed = "false", tag = "1")]
        pub dims: Vec<i64>,
        #[prost(int32, optional, tag = "2")]
        pub data_type: Option<i32>,
        #[prost(string, optional, tag = "8")]
        pub name: Option<String>,
        #[prost(bytes = "vec", optional, tag = "9")]
        pub raw_data: Option<Vec<u8>>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueInfoProto {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(message, optional, tag = "2")]
        pub r#type: Option<TypeProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TypeProto {
        #[prost(message, optional, tag = "1")]
        pub tensor_type: Option<TensorTypeProto>,
    }

    /// `TypeProto.Tensor`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorTypeProto {
        #[prost(int32, optional, tag = "1")]
        pub elem_type: Option<i32>,
        #[prost(message, optional, tag = "2")]
        pub shape: Option<TensorShapeProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorShapeProto {
        #[prost(message, repeated, tag = "1")]
        pub dim: Vec<Dimension>,
    }

    /// `TensorShapeProto.Dimension`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dimension {
        #[prost(oneof = "DimensionValue", tags = "1, 2")]
        pub value: Option<DimensionValue>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum DimensionValue {
        #[prost(int64, tag = "1")]
        DimValue(i64),
        #[prost(string, tag = "2")]
        DimParam(String),
    }
}

/// What to write besides the graph itself.
#[derive(Debug, Clone)]
pub struct OnnxOptions {
    /// Keep BatchNormalization nodes instead of folding them into the convolutions.
    pub keep_bn: bool,
    /// Input height and width.
    pub image_size: i64,
    /// Key/value pairs for the model's `metadata_props`.
    pub metadata: Vec<(String, String)>,
}

fn attr_ints(name: &str, ints: &[i64]) -> proto::AttributeProto {
    proto::AttributeProto {
        name: Some(name.into()),
        r#type: Some(proto::ATTRIBUTE_INTS),
        ints: ints.to_vec(),
        ..Default::default()
    }
}

fn attr_int(name: &str, i: i64) -> proto::AttributeProto {
    proto::AttributeProto {
        name: Some(name.into()),
        r#type: Some(proto::ATTRIBUTE_INT),
        i: Some(i),
        ..Default::default()
    }
}

fn attr_float(name: &str, f: f32) -> proto::AttributeProto {
    proto::AttributeProto {
        name: Some(name.into()),
        r#type: Some(proto::ATTRIBUTE_FLOAT),
        f: Some(f),
        ..Default::default()
    }
}

struct Node {
    op_type: &'static str,
    inputs: Vec<String>,
    output: String,
    attributes: Vec<proto::AttributeProto>,
}

enum Constant {
    /// float32 (kept as a tensor so that BatchNorm folding can change it).
    Float(Tensor),
    Int64(Vec<i64>),
}

/// Builds the graph while the network is traced. Values are tensor names.
struct GraphBuilder {
    keep_bn: bool,
    nodes: Vec<Node>,
    constants: Vec<(String, Constant)>,
    constant_index: HashMap<String, usize>,
    /// Node index that produces each value.
    producer: HashMap<String, usize>,
    /// How many nodes read each value so far.
    readers: HashMap<String, usize>,
    /// Values known to be all zeros (the `none` operation): adding one changes nothing.
    zeros: HashSet<String>,
    /// Shared int64 constants (Slice arguments) by content.
    int_constants: HashMap<Vec<i64>, String>,
    zero_scalar: Option<String>,
    /// Relu of each value already computed: a state read by several edges is rectified once.
    relu_of: HashMap<String, String>,
    counter: usize,
}

impl GraphBuilder {
    fn new(keep_bn: bool) -> Self {
        GraphBuilder {
            keep_bn,
            nodes: Vec::new(),
            constants: Vec::new(),
            constant_index: HashMap::new(),
            producer: HashMap::new(),
            readers: HashMap::new(),
            zeros: HashSet::new(),
            int_constants: HashMap::new(),
            zero_scalar: None,
            relu_of: HashMap::new(),
            counter: 0,
        }
    }

    fn fresh(&mut self, what: &str) -> String {
        self.counter += 1;
        format!("{what}_{}", self.counter)
    }

    fn constant(&mut self, what: &str, t: &Tensor) -> String {
        let name = self.fresh(what);
        let t = t.detach().to_device(tch::Device::Cpu).to_kind(Kind::Float).contiguous();
        self.constant_index.insert(name.clone(), self.constants.len());
        self.constants.push((name.clone(), Constant::Float(t)));
        name
    }

    fn int_constant(&mut self, values: &[i64]) -> String {
        if let Some(name) = self.int_constants.get(values) {
            return name.clone();
        }
        let name = self.fresh("ints");
        self.constant_index.insert(name.clone(), self.constants.len());
        self.constants.push((name.clone(), Constant::Int64(values.to_vec())));
        self.int_constants.insert(values.to_vec(), name.clone());
        name
    }

    fn node(
        &mut self,
        op_type: &'static str,
        inputs: Vec<String>,
        attributes: Vec<proto::AttributeProto>,
    ) -> String {
        let output = self.fresh(op_type);
        for i in &inputs {
            *self.readers.entry(i.clone()).or_default() += 1;
        }
        self.producer.insert(output.clone(), self.nodes.len());
        self.nodes.push(Node { op_type, inputs, output: output.clone(), attributes });
        output
    }

    fn float_constant(&self, name: &str) -> Option<&Tensor> {
        match self.constants.get(*self.constant_index.get(name)?) {
            Some((_, Constant::Float(t))) => Some(t),
            _ => None,
        }
    }

    fn set_float_constant(&mut self, name: &str, t: Tensor) {
        if let Some(&i) = self.constant_index.get(name) {
            self.constants[i].1 = Constant::Float(t);
        }
    }

    /// The Conv node producing `value` when nothing but the BatchNorm about to be added reads
    /// it (`readers` is the count that one BatchNorm may account for).
    fn sole_conv(&self, value: &str, readers: usize) -> Option<usize> {
        let &i = self.producer.get(value)?;
        let node = &self.nodes[i];
        let unread = self.readers.get(value).copied().unwrap_or(0) == readers;
        (node.op_type == "Conv" && unread).then_some(i)
    }

    /// Folds the channels `from..from + n` of `bn` into Conv node `i` (n = its output
    /// channels): w' = w·γ/√(σ²+ε), b' = (b − μ)·γ/√(σ²+ε) + β, computed in float64.
    fn fold_into_conv(&mut self, i: usize, bn: &BatchNorm2d, from: i64) -> Result<()> {
        let weight_name = self.nodes[i].inputs[1].clone();
        let weight = self
            .float_constant(&weight_name)
            .ok_or_else(|| Error::BadOption("ONNX export: convolution weight is not a constant".into()))?
            .to_kind(Kind::Double);
        let n = weight.size()[0];
        let channels =
            |t: &Tensor| t.detach().to_device(tch::Device::Cpu).to_kind(Kind::Double).narrow(0, from, n);
        let mean = channels(&bn.running_mean);
        let var = channels(&bn.running_var);
        let gamma = bn.weight.as_ref().map(channels).unwrap_or_else(|| mean.ones_like());
        let beta = bn.bias.as_ref().map(channels).unwrap_or_else(|| mean.zeros_like());
        let scale = gamma / (var + BatchNorm2d::EPS).sqrt();
        let bias = match self.nodes[i].inputs.get(2).and_then(|b| self.float_constant(b)) {
            Some(b) => b.to_kind(Kind::Double),
            None => mean.zeros_like(),
        };
        let new_bias = (bias - mean) * &scale + beta;
        let new_weight = weight * scale.view([n, 1, 1, 1]);
        self.set_float_constant(&weight_name, new_weight.to_kind(Kind::Float));
        match self.nodes[i].inputs.get(2).cloned() {
            Some(b) => self.set_float_constant(&b, new_bias.to_kind(Kind::Float)),
            None => {
                let b = self.constant("bias", &new_bias);
                *self.readers.entry(b.clone()).or_default() += 1;
                self.nodes[i].inputs.push(b);
            }
        }
        Ok(())
    }

    /// BatchNorm folded into what produced `x` when that is a convolution (or a channel
    /// concatenation of convolutions) read by nothing else; None when it cannot be.
    fn try_fold(&mut self, x: &str, bn: &BatchNorm2d) -> Result<Option<String>> {
        if let Some(i) = self.sole_conv(x, 0) {
            self.fold_into_conv(i, bn, 0)?;
            return Ok(Some(x.to_string()));
        }
        let Some(&c) = self.producer.get(x) else { return Ok(None) };
        if self.nodes[c].op_type != "Concat" || self.readers.get(x).copied().unwrap_or(0) != 0 {
            return Ok(None);
        }
        let parts = self.nodes[c].inputs.clone();
        let distinct: HashSet<&String> = parts.iter().collect();
        let convs: Option<Vec<usize>> = parts.iter().map(|p| self.sole_conv(p, 1)).collect();
        let Some(convs) = convs.filter(|_| distinct.len() == parts.len()) else { return Ok(None) };
        let mut from = 0;
        for i in convs {
            let n = self.float_constant(&self.nodes[i].inputs[1]).map(|w| w.size()[0]).unwrap_or(0);
            self.fold_into_conv(i, bn, from)?;
            from += n;
        }
        Ok(Some(x.to_string()))
    }

    /// Drops nodes and constants that do not lead to `output` (the multiplications by zero
    /// of `none` edges that were summed away).
    fn prune(&mut self, output: &str) {
        let mut needed: HashSet<String> = HashSet::from([output.to_string()]);
        let mut keep = vec![false; self.nodes.len()];
        for (i, node) in self.nodes.iter().enumerate().rev() {
            if needed.contains(&node.output) {
                keep[i] = true;
                needed.extend(node.inputs.iter().cloned());
            }
        }
        let mut index = 0;
        self.nodes.retain(|_| {
            index += 1;
            keep[index - 1]
        });
        self.constants.retain(|(name, _)| needed.contains(name));
    }

    fn into_graph(mut self, output: &str, image_size: i64, classes: i64) -> Result<proto::GraphProto> {
        self.prune(output);
        let mut nodes = Vec::with_capacity(self.nodes.len());
        for (k, n) in self.nodes.into_iter().enumerate() {
            // The last node's output is the graph's output, under its public name.
            let out = if n.output == output { OUTPUT.to_string() } else { n.output };
            nodes.push(proto::NodeProto {
                input: n
                    .inputs
                    .into_iter()
                    .map(|i| if i == output { OUTPUT.to_string() } else { i })
                    .collect(),
                output: vec![out],
                name: Some(format!("{}_{k}", n.op_type)),
                op_type: Some(n.op_type.into()),
                attribute: n.attributes,
            });
        }
        let mut initializer = Vec::with_capacity(self.constants.len());
        for (name, c) in self.constants {
            let (dims, data_type, raw) = match c {
                Constant::Float(t) => {
                    let v: Vec<f32> = Vec::try_from(&t.flatten(0, -1))?;
                    (t.size(), proto::FLOAT, v.iter().flat_map(|x| x.to_le_bytes()).collect())
                }
                Constant::Int64(v) => {
                    (vec![v.len() as i64], proto::INT64, v.iter().flat_map(|x| x.to_le_bytes()).collect())
                }
            };
            initializer.push(proto::TensorProto {
                dims,
                data_type: Some(data_type),
                name: Some(name),
                raw_data: Some(raw),
            });
        }
        let value_info = |name: &str, dims: Vec<proto::DimensionValue>| proto::ValueInfoProto {
            name: Some(name.into()),
            r#type: Some(proto::TypeProto {
                tensor_type: Some(proto::TensorTypeProto {
                    elem_type: Some(proto::FLOAT),
                    shape: Some(proto::TensorShapeProto {
                        dim: dims.into_iter().map(|v| proto::Dimension { value: Some(v) }).collect(),
                    }),
                }),
            }),
        };
        use proto::DimensionValue::{DimParam, DimValue};
        let batch = || DimParam("batch".to_string());
        Ok(proto::GraphProto {
            node: nodes,
            name: Some("cnas".into()),
            initializer,
            input: vec![value_info(
                INPUT,
                vec![batch(), DimValue(3), DimValue(image_size), DimValue(image_size)],
            )],
            output: vec![value_info(OUTPUT, vec![batch(), DimValue(classes)])],
        })
    }
}

impl Trace for GraphBuilder {
    type Value = String;

    fn relu(&mut self, x: &String) -> String {
        if let Some(y) = self.relu_of.get(x) {
            return y.clone();
        }
        let y = self.node("Relu", vec![x.clone()], vec![]);
        self.relu_of.insert(x.clone(), y.clone());
        y
    }

    fn conv(&mut self, x: &String, weight: &Tensor, spec: &Conv2dSpec) -> String {
        let w = self.constant("weight", weight);
        let [ph, pw] = spec.padding;
        let attributes = vec![
            attr_ints("kernel_shape", &spec.kernel),
            attr_ints("strides", &spec.stride),
            attr_ints("pads", &[ph, pw, ph, pw]),
            attr_ints("dilations", &spec.dilation),
            attr_int("group", spec.groups),
        ];
        self.node("Conv", vec![x.clone(), w], attributes)
    }

    fn batch_norm(&mut self, x: &String, bn: &BatchNorm2d) -> String {
        if !self.keep_bn {
            match self.try_fold(x, bn) {
                Ok(Some(folded)) => return folded,
                Ok(None) => {}
                // Folding reads only tensors the network holds; should it fail, the
                // BatchNormalization node below is just as correct.
                Err(e) => tracing::debug!("BatchNorm kept: {e}"),
            }
        }
        let c = bn.running_mean.size()[0];
        let ones = Tensor::ones([c], (Kind::Float, tch::Device::Cpu));
        let scale = self.constant("bn_scale", bn.weight.as_ref().unwrap_or(&ones));
        let bias = self.constant("bn_bias", bn.bias.as_ref().unwrap_or(&ones.zeros_like()));
        let mean = self.constant("bn_mean", &bn.running_mean);
        let var = self.constant("bn_var", &bn.running_var);
        self.node(
            "BatchNormalization",
            vec![x.clone(), scale, bias, mean, var],
            vec![attr_float("epsilon", BatchNorm2d::EPS as f32)],
        )
    }

    fn max_pool(&mut self, x: &String, kernel: i64, stride: i64, padding: i64) -> String {
        let attributes = vec![
            attr_ints("kernel_shape", &[kernel, kernel]),
            attr_ints("strides", &[stride, stride]),
            attr_ints("pads", &[padding; 4]),
        ];
        self.node("MaxPool", vec![x.clone()], attributes)
    }

    fn avg_pool(&mut self, x: &String, kernel: i64, stride: i64, padding: i64) -> String {
        let attributes = vec![
            attr_ints("kernel_shape", &[kernel, kernel]),
            attr_ints("strides", &[stride, stride]),
            attr_ints("pads", &[padding; 4]),
            attr_int("count_include_pad", 0),
        ];
        self.node("AveragePool", vec![x.clone()], attributes)
    }

    fn shift(&mut self, x: &String) -> String {
        let starts = self.int_constant(&[1, 1]);
        let ends = self.int_constant(&[i64::MAX, i64::MAX]);
        let axes = self.int_constant(&[2, 3]);
        self.node("Slice", vec![x.clone(), starts, ends, axes], vec![])
    }

    fn zero(&mut self, x: &String, stride: i64) -> String {
        let mut source = x.clone();
        if stride != 1 {
            let starts = self.int_constant(&[0, 0]);
            let ends = self.int_constant(&[i64::MAX, i64::MAX]);
            let axes = self.int_constant(&[2, 3]);
            let steps = self.int_constant(&[stride, stride]);
            source = self.node("Slice", vec![source, starts, ends, axes, steps], vec![]);
        }
        let zero = match &self.zero_scalar {
            Some(z) => z.clone(),
            None => {
                let z = self.constant("zero", &Tensor::from(0f32));
                self.zero_scalar = Some(z.clone());
                z
            }
        };
        let out = self.node("Mul", vec![source, zero], vec![]);
        self.zeros.insert(out.clone());
        out
    }

    fn add(&mut self, a: &String, b: &String) -> String {
        // x + 0 is x: a `none` edge contributes nothing (its Mul is pruned if unused).
        if self.zeros.contains(b) {
            return a.clone();
        }
        if self.zeros.contains(a) {
            return b.clone();
        }
        self.node("Add", vec![a.clone(), b.clone()], vec![])
    }

    fn concat(&mut self, xs: &[String]) -> String {
        self.node("Concat", xs.to_vec(), vec![attr_int("axis", 1)])
    }

    fn global_avg_pool(&mut self, x: &String) -> String {
        let pooled = self.node("GlobalAveragePool", vec![x.clone()], vec![]);
        self.node("Flatten", vec![pooled], vec![attr_int("axis", 1)])
    }

    fn linear(&mut self, x: &String, weight: &Tensor, bias: &Tensor) -> String {
        let w = self.constant("weight", weight);
        let b = self.constant("bias", bias);
        self.node("Gemm", vec![x.clone(), w, b], vec![attr_int("transB", 1)])
    }
}

/// The serialised ONNX model of `network` (evaluation mode, logits only) and its node count.
pub fn model_bytes(network: &Network, options: &OnnxOptions) -> Result<(Vec<u8>, usize)> {
    let mut builder = GraphBuilder::new(options.keep_bn);
    let output = tch::no_grad(|| network.trace(&mut builder, &INPUT.to_string()));
    let graph = builder.into_graph(&output, options.image_size, network.config().num_classes)?;
    let nodes = graph.node.len();
    let model = proto::ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![proto::OperatorSetIdProto { domain: Some(String::new()), version: Some(OPSET) }],
        producer_name: Some("cnas".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        doc_string: Some("DARTS-family fixed network in evaluation mode; input normalised RGB".into()),
        graph: Some(graph),
        metadata_props: options
            .metadata
            .iter()
            .map(|(k, v)| proto::StringStringEntryProto { key: Some(k.clone()), value: Some(v.clone()) })
            .collect(),
    };
    Ok((model.encode_to_vec(), nodes))
}
