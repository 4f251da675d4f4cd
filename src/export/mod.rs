//! `cnas export`: a trained fixed network's weights as a PyTorch `state_dict` (`.pth`), as
//! safetensors (cnas's own format, with the network description), as an ONNX inference graph,
//! or as a TorchScript module (weights and traced forward pass in one file).
//!
//! The input is any weights file cnas reads ([`crate::weights::read`]); the network is the
//! one its metadata describes (cnas files) or the one the caller gives. The weights are loaded
//! into that network first, so a file that does not fit it is refused before anything is
//! written, and every output is written atomically.
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use tch::{nn, Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::{NetworkConfig, NetworkKind};
use crate::weights::{self, NamedTensors};

pub mod onnx;
pub mod pth;
pub mod torchscript;

/// What `cnas export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// ONNX graph of the network in evaluation mode (no auxiliary head).
    Onnx,
    /// PyTorch state_dict, as torch.save writes it.
    Pth,
    /// safetensors with cnas's network description in its metadata.
    Safetensors,
    /// TorchScript module (torch.jit.load): the weights as named parameters and the evaluation
    /// forward pass, traced.
    #[value(name = "torchscript")]
    TorchScript,
}

impl ExportFormat {
    /// The format a file name implies: `.onnx`, `.pth`/`.pt`, `.safetensors`, `.torchscript`
    /// (`.pt` stays a state_dict, as before; give `--format torchscript` for a `.pt` module).
    pub fn from_extension(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_string_lossy().to_ascii_lowercase();
        match ext.as_str() {
            "onnx" => Some(ExportFormat::Onnx),
            "pth" | "pt" => Some(ExportFormat::Pth),
            "safetensors" => Some(ExportFormat::Safetensors),
            "torchscript" => Some(ExportFormat::TorchScript),
            _ => None,
        }
    }
}

impl fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExportFormat::Onnx => "onnx",
            ExportFormat::Pth => "pth",
            ExportFormat::Safetensors => "safetensors",
            ExportFormat::TorchScript => "torchscript",
        })
    }
}

/// How to export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// None: from the output's extension.
    pub format: Option<ExportFormat>,
    /// The network the weights belong to, used when `network_given` is set or the file does
    /// not describe its own network (PyTorch and plain safetensors files).
    pub network: NetworkConfig,
    pub network_given: bool,
    /// Leave the auxiliary head out of `.pth`, safetensors and TorchScript exports (ONNX never
    /// has it; a TorchScript module keeps its weights but its forward pass never runs it).
    pub drop_auxiliary: bool,
    /// ONNX: keep BatchNormalization nodes instead of folding them into the convolutions.
    pub keep_bn: bool,
    /// ONNX and TorchScript input height and width [the family's: 32 for CIFAR, 224 for
    /// ImageNet].
    pub image_size: Option<i64>,
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    pub path: PathBuf,
    pub format: ExportFormat,
    pub config: NetworkConfig,
    /// Tensors written (`.pth`, safetensors) or graph nodes (ONNX).
    pub items: usize,
}

impl fmt::Display for Exported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.format == ExportFormat::Onnx { "nodes" } else { "tensors" };
        write!(
            f,
            "wrote {} ({}, {} {what}; {} channels × {} cells, {} classes{})",
            self.path.display(),
            self.format,
            self.items,
            self.config.init_channels,
            self.config.layers,
            self.config.num_classes,
            if self.config.auxiliary { ", auxiliary head" } else { "" }
        )
    }
}

/// Exports the weights in `input` to `output`; see the module docs.
pub fn export(input: &Path, output: &Path, options: &ExportOptions) -> Result<Exported> {
    if output.is_dir() {
        return Err(Error::bad_file(output, "is a folder; give the file to write"));
    }
    let format = match options.format.or_else(|| ExportFormat::from_extension(output)) {
        Some(f) => f,
        None => {
            return Err(Error::BadOption(format!(
                "cannot tell the format from '{}'; give --format onnx, pth, safetensors or torchscript",
                output.display()
            )))
        }
    };
    let keep_auxiliary = !options.drop_auxiliary && format != ExportFormat::Onnx;
    let image_size = std::cell::Cell::new(0);
    let weights::OpenedNetwork { vs, mut network, tensors } =
        weights::open_network(input, Device::Cpu, keep_auxiliary, |described| {
            let config = match described {
                Some(config) if !options.network_given => config,
                _ => options.network.clone(),
            };
            image_size.set(options.image_size.unwrap_or_else(|| config.kind.default_image_size()));
            if matches!(format, ExportFormat::Onnx | ExportFormat::TorchScript) {
                config.check_input_size(image_size.get(), false)?;
            }
            Ok(config)
        })?;
    network.channels_last = false;
    let (config, image_size) = (network.config().clone(), image_size.get());
    let items = match format {
        ExportFormat::Safetensors => {
            let metadata = BTreeMap::from([
                ("format".to_string(), "cnas".to_string()),
                ("network".to_string(), network_json(&config)?),
            ]);
            weights::save(&vs, output, metadata)?;
            vs.variables().len()
        }
        ExportFormat::Pth => {
            let state_dict = state_dict(&vs, &tensors, true);
            pth::write_state_dict(&state_dict, output)?;
            state_dict.len()
        }
        ExportFormat::TorchScript => {
            // The variables themselves, not copies: the tracer knows them by identity.
            let entries = state_dict(&vs, &tensors, false);
            let (mean, std) = input_normalisation(config.kind);
            let description = serde_json::json!({
                "format": "cnas",
                "network": config,
                "input": {
                    "shape": ["N", 3, image_size, image_size],
                    "pixels": "RGB in [0, 1], then (x - mean) / std per channel",
                    "mean_rgb": mean,
                    "std_rgb": std,
                },
                "output": "N×num_classes logits (evaluation mode: no auxiliary head, no drop-path)",
            });
            let is_buffer = |name: &str| {
                ["running_mean", "running_var", "num_batches_tracked"].iter().any(|b| name.ends_with(b))
            };
            torchscript::write(&network, &entries, is_buffer, image_size, &description.to_string(), output)?;
            entries.len()
        }
        ExportFormat::Onnx => {
            let (mean, std) = input_normalisation(config.kind);
            let onnx_options = onnx::OnnxOptions {
                keep_bn: options.keep_bn,
                image_size,
                metadata: vec![
                    ("network".to_string(), network_json(&config)?),
                    ("input_mean_rgb".to_string(), format!("{mean:?}")),
                    ("input_std_rgb".to_string(), format!("{std:?}")),
                ],
            };
            let (bytes, nodes) = onnx::model_bytes(&network, &onnx_options)?;
            crate::util::write_atomic(output, &bytes)?;
            nodes
        }
    };
    Ok(Exported { path: output.to_path_buf(), format, config, items })
}

/// The per-channel mean and standard deviation the network's inputs are normalised with.
fn input_normalisation(kind: NetworkKind) -> ([f32; 3], [f32; 3]) {
    match kind {
        NetworkKind::Cifar => (crate::data::CIFAR10_MEAN, crate::data::CIFAR10_STD),
        NetworkKind::Imagenet => (crate::data::IMAGENET_MEAN, crate::data::IMAGENET_STD),
    }
}

fn network_json(config: &NetworkConfig) -> Result<String> {
    serde_json::to_string(config).map_err(|e| Error::BadOption(format!("cannot describe the network: {e}")))
}

/// The network's variables plus BatchNorm's `num_batches_tracked` counters (taken from the
/// input when it has them, else 0), in PyTorch's module order; `detach`: copies of the
/// variables' handles without their autograd history, else the variables themselves.
fn state_dict(vs: &nn::VarStore, input: &NamedTensors, detach: bool) -> Vec<(String, Tensor)> {
    let counters: BTreeMap<&str, &Tensor> = input
        .iter()
        .filter(|(n, _)| n.ends_with(".num_batches_tracked"))
        .map(|(n, t)| (n.strip_prefix("module.").unwrap_or(n), t))
        .collect();
    let mut out: Vec<(String, Tensor)> = Vec::new();
    for (name, t) in vs.variables() {
        if let Some(module) = name.strip_suffix(".running_mean") {
            let counter = format!("{module}.num_batches_tracked");
            let value = counters
                .get(counter.as_str())
                .map(|t| t.to_kind(Kind::Int64).reshape(Vec::<i64>::new()))
                .unwrap_or_else(|| Tensor::from(0i64));
            out.push((counter, value));
        }
        out.push((name, if detach { t.detach() } else { t }));
    }
    out.sort_by(|a, b| pth::pytorch_order(&a.0, &b.0));
    out
}
