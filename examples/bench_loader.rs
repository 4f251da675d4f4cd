//! CIFAR-10 loader throughput: images per second with the training augmentation (crop, flip,
//! cutout 16), for each worker count asked, consuming batches as fast as they come.
//!
//! ```text
//! cargo run --release --example bench_loader -- --data ../shared/data/cifar10 --workers 1,2,4 --batch 96
//! ```
use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use cnas::data::{Data, DataArgs, DatasetKind, Loader, LoaderConfig, Part};

#[derive(Parser)]
struct Args {
    /// CIFAR-10 folder (batches folder, its parent or the archive).
    #[arg(long, default_value = "../shared/data/cifar10")]
    data: PathBuf,
    /// Worker counts to try, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    workers: Vec<usize>,
    #[arg(long, default_value_t = 96)]
    batch: usize,
    /// Epochs over the whole 50,000-image training set per worker count.
    #[arg(long, default_value_t = 1)]
    epochs: u64,
    /// Also time an ImageNet-style folder (train/<class>/*.JPEG): the paper's 224 training
    /// transform (random resized crop, flip, colour jitter), JPEG decoding included.
    #[arg(long, value_name = "DIR")]
    imagenet: Option<PathBuf>,
    /// Images of the ImageNet folder to time per worker count.
    #[arg(long, default_value_t = 2048)]
    imagenet_images: usize,
    /// Device the batches are meant for (pinned memory when CUDA).
    #[arg(long, default_value = "cpu")]
    device: cnas::device::DeviceChoice,
}

fn main() -> cnas::Result<()> {
    let args = Args::parse();
    let device = args.device.resolve()?;
    let t0 = Instant::now();
    let data = Data::open(&DataArgs { data: args.data.clone(), ..Default::default() }, false)?;
    println!(
        "read CIFAR-10 in {:.2} s; {} cores; device {device:?}",
        t0.elapsed().as_secs_f64(),
        cnas::data::loader::default_workers()
    );
    // The training source with cutout 16, as final training uses it; only the worker count
    // changes between runs.
    let source = data.source(Part::Train, true, 16)?;
    for &workers in &args.workers {
        let cfg = LoaderConfig { shuffle: true, workers, device, ..LoaderConfig::new(args.batch) };
        let loader = Loader::new(source.clone(), None, cfg)?;
        let start = Instant::now();
        let mut images = 0i64;
        for epoch in 0..args.epochs {
            for batch in loader.epoch(epoch) {
                let (x, _) = batch?;
                images += x.size()[0];
            }
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "workers {workers:>2}  batch {:>4}  {images} images in {secs:.2} s  {:>9.0} images/s",
            args.batch,
            images as f64 / secs
        );
    }
    if let Some(root) = &args.imagenet {
        let args_in = DataArgs { dataset: DatasetKind::ImageNet, data: root.clone(), ..Default::default() };
        let data = Data::open(&args_in, false)?;
        let source = data.source(Part::Train, true, 0)?;
        let n = args.imagenet_images.min(source.len());
        for &workers in &args.workers {
            let cfg = LoaderConfig { shuffle: true, workers, device, ..LoaderConfig::new(args.batch) };
            let loader = Loader::new(source.clone(), Some((0..n).collect()), cfg)?;
            let start = Instant::now();
            let mut images = 0i64;
            for batch in loader.epoch(0) {
                images += batch?.0.size()[0];
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "imagenet workers {workers:>2}  batch {:>4}  {images} images in {secs:.2} s  {:>7.0} images/s",
                args.batch,
                images as f64 / secs
            );
        }
    }
    Ok(())
}
