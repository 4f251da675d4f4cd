//! Weight files: cnas's own format round-trips with its metadata, and a load that does not fit
//! names every missing, unexpected and mis-shaped tensor and changes nothing.
use std::collections::BTreeMap;

use cnas::model::{Network, NetworkConfig, NetworkKind};
use tch::{nn, Device, Kind, Tensor};

use crate::common;

fn small(genotype: &str, channels: i64) -> NetworkConfig {
    NetworkConfig {
        kind: NetworkKind::Cifar,
        genotype: cnas::space::published(genotype).unwrap(),
        init_channels: channels,
        layers: 3,
        num_classes: 10,
        auxiliary: false,
    }
}

#[test]
fn own_format_round_trips_weights_and_network_description() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let _rng = common::seed_torch(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let config = small("CNAS", 4);
    let net = Network::new(&vs.root(), config.clone()).unwrap();
    let metadata = BTreeMap::from([
        ("format".to_string(), "cnas".to_string()),
        ("network".to_string(), serde_json::to_string(&config).unwrap()),
    ]);
    cnas::weights::save(&vs, &path, metadata.clone()).unwrap();

    let read_back = cnas::weights::read_metadata(&path).unwrap().unwrap();
    assert_eq!(read_back, metadata);
    let config_back: NetworkConfig = serde_json::from_str(&read_back["network"]).unwrap();
    assert_eq!(config_back, config);

    tch::manual_seed(2);
    let vs2 = nn::VarStore::new(Device::Cpu);
    let net2 = Network::new(&vs2.root(), config_back).unwrap();
    let report = cnas::weights::load_into(&vs2, &cnas::weights::read(&path).unwrap()).unwrap();
    assert_eq!(report.loaded, vs.variables().len());
    let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    let a = tch::no_grad(|| net.forward_t(&x, false).logits);
    let b = tch::no_grad(|| net2.forward_t(&x, false).logits);
    assert!(a.equal(&b));
}

#[test]
fn mismatched_weights_are_refused_with_every_kind_of_difference_named() {
    let vs = nn::VarStore::new(Device::Cpu);
    let _net = common::with_torch_rng(|| Network::new(&vs.root(), small("CNAS", 4))).unwrap();
    let before: Vec<(String, Tensor)> = vs.variables().into_iter().map(|(n, t)| (n, t.copy())).collect();

    let mut tensors: Vec<(String, Tensor)> = vs.variables().into_iter().map(|(n, t)| (n, t.copy())).collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let removed = tensors.remove(0).0;
    tensors.push(("cells.0.extra.weight".into(), Tensor::zeros([3], (Kind::Float, Device::Cpu))));
    let (name, t) = tensors.iter_mut().find(|(n, _)| n == "classifier.weight").unwrap();
    *t = Tensor::zeros([3, 3], (Kind::Float, Device::Cpu));
    let name = name.clone();
    for (_, t) in tensors.iter_mut() {
        *t = t.ones_like();
    }

    let err = cnas::weights::load_into(&vs, &tensors).unwrap_err();
    assert!(err.is_user_error());
    let msg = err.to_string();
    assert!(msg.contains(&format!("missing {removed}")), "{msg}");
    assert!(msg.contains("unexpected cells.0.extra.weight"), "{msg}");
    assert!(msg.contains(&format!("wrong shape {name} (file [3, 3]")), "{msg}");
    assert_eq!(msg.lines().count(), 1);
    // Nothing was copied.
    let after = vs.variables();
    for (n, t) in before {
        assert!(after[&n].equal(&t), "{n} changed");
    }
}

#[test]
fn not_a_weights_file_is_a_user_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.pth");
    std::fs::write(&path, b"hello world, not weights").unwrap();
    let err = cnas::weights::read(&path).unwrap_err();
    assert!(err.is_user_error());
    assert!(err.to_string().contains("w.pth"));
    let empty = dir.path().join("empty.pth");
    std::fs::write(&empty, b"").unwrap();
    assert!(cnas::weights::read(&empty).unwrap_err().to_string().contains("empty"));
}
