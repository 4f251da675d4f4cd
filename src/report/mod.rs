//! Human- and machine-readable summaries of architectures and runs.
use serde::Serialize;
use tch::{nn, Device};

use crate::error::Result;
use crate::model::{Network, NetworkConfig};
use crate::profile::{profile, Profile};

/// What `cnas info` prints: the genotype and the size of the network built from it.
#[derive(Debug, Clone, Serialize)]
pub struct ArchInfo {
    /// The published name or the file the genotype came from.
    pub arch: String,
    #[serde(flatten)]
    pub network: NetworkConfig,
    #[serde(flatten)]
    pub profile: Profile,
    /// Parameters in millions, auxiliary head excluded.
    pub params_m: f64,
    /// Multiply-adds in millions.
    pub madds_m: f64,
}

impl ArchInfo {
    /// Builds the network on `device` (with its auxiliary head, which is counted separately)
    /// and measures it at the family's evaluation input size.
    pub fn measure(arch: impl Into<String>, network: NetworkConfig, device: Device) -> Result<Self> {
        let vs = nn::VarStore::new(device);
        let net = Network::new(&vs.root(), network.clone())?;
        let profile = profile(&vs, &net, network.kind.default_image_size());
        Ok(ArchInfo {
            arch: arch.into(),
            network,
            params_m: profile.params as f64 / 1e6,
            madds_m: profile.madds as f64 / 1e6,
            profile,
        })
    }
}

impl std::fmt::Display for ArchInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = &self.network;
        let family = match n.kind {
            crate::model::NetworkKind::Cifar => "CIFAR",
            crate::model::NetworkKind::Imagenet => "ImageNet",
        };
        writeln!(
            f,
            "{}: {family} network, {} channels, {} cells, {} classes",
            self.arch, n.init_channels, n.layers, n.num_classes
        )?;
        writeln!(f, "{}", n.genotype)?;
        writeln!(
            f,
            "params: {:.2} M (auxiliary head excluded; {:.2} M with it)",
            self.params_m,
            self.profile.params_total as f64 / 1e6
        )?;
        write!(
            f,
            "multiply-adds: {:.1} M per {}×{} image",
            self.madds_m, self.profile.image_size, self.profile.image_size
        )
    }
}

pub mod compare;
pub mod html;
pub mod plot;
