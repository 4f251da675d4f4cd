//! CIFAR-10 in the official binary layout.
//!
//! `cifar-10-batches-bin/` holds `data_batch_1.bin` … `data_batch_5.bin` (training, 50,000
//! images) and `test_batch.bin` (10,000). Each file is a run of 3,073-byte records: one label
//! byte (0–9), then the 1,024 red, 1,024 green and 1,024 blue bytes of a 32×32 image, each plane
//! row-major. [`Cifar10::open`] takes that folder, its parent, or `cifar-10-binary.tar.gz`.
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::loader::Source;
use super::normalize::{CIFAR10_MEAN, CIFAR10_STD};
use super::rng::SampleRng;
use super::transforms::{cifar_to_chw, CifarAugment, CifarDraw, CIFAR_SIDE};
use crate::error::{Error, Result};

/// Class names in label order.
pub const CIFAR10_CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];
/// Bytes of one image (3 planes of 32×32).
pub const IMAGE_BYTES: usize = 3 * 32 * 32;
/// Bytes of one record: the label byte and the image.
pub const RECORD_BYTES: usize = 1 + IMAGE_BYTES;
/// The folder the official archive unpacks to.
pub const BATCHES_DIR: &str = "cifar-10-batches-bin";
/// The official archive's file name.
pub const ARCHIVE_NAME: &str = "cifar-10-binary.tar.gz";
/// Training files, in the order their records are concatenated.
pub const TRAIN_FILES: [&str; 5] =
    ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];
pub const TEST_FILE: &str = "test_batch.bin";
/// Bytes of one official batch file (10,000 records).
const MAX_BATCH_BYTES: u64 = 10_000 * RECORD_BYTES as u64;

/// Reads one `.bin` file: `(images, labels)` with `images.len() == 3072 * labels.len()`, each
/// image planar RGB as stored.
pub fn read_records(path: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_records(&bytes, path)
}

/// Splits the bytes of a `.bin` file into images and labels; `name` is used in errors.
pub fn parse_records(bytes: &[u8], name: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
    if bytes.is_empty() || bytes.len() % RECORD_BYTES != 0 {
        return Err(Error::bad_file(
            name,
            format!(
                "{} bytes is not a whole number of CIFAR-10 records ({RECORD_BYTES} bytes each: 1 label + 3072 pixels)",
                bytes.len()
            ),
        ));
    }
    let n = bytes.len() / RECORD_BYTES;
    let mut images = Vec::with_capacity(n * IMAGE_BYTES);
    let mut labels = Vec::with_capacity(n);
    for (i, record) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        if record[0] as usize >= CIFAR10_CLASSES.len() {
            return Err(Error::bad_file(
                name,
                format!("record {i} has label {} (CIFAR-10 labels are 0 to 9)", record[0]),
            ));
        }
        labels.push(record[0]);
        images.extend_from_slice(&record[1..]);
    }
    Ok((images, labels))
}

/// Images and labels of one part of CIFAR-10, shared cheaply between loaders.
#[derive(Clone)]
pub struct CifarSet {
    images: Arc<Vec<u8>>,
    labels: Arc<Vec<u8>>,
}

impl std::fmt::Debug for CifarSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CifarSet({} images)", self.len())
    }
}

impl CifarSet {
    /// `images` holds `labels.len()` planar 3072-byte images.
    pub fn new(images: Vec<u8>, labels: Vec<u8>) -> Result<Self> {
        if images.len() != labels.len() * IMAGE_BYTES {
            return Err(Error::BadOption(format!(
                "{} image bytes for {} labels (3072 bytes per image expected)",
                images.len(),
                labels.len()
            )));
        }
        Ok(CifarSet { images: Arc::new(images), labels: Arc::new(labels) })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Image `i`, 3072 planar bytes. Panics when `i >= len()`.
    pub fn image(&self, i: usize) -> &[u8] {
        &self.images[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES]
    }

    pub fn label(&self, i: usize) -> u8 {
        self.labels[i]
    }

    pub fn images(&self) -> &[u8] {
        &self.images
    }

    pub fn labels(&self) -> &[u8] {
        &self.labels
    }
}

/// Where CIFAR-10 was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A `cifar-10-batches-bin` folder (or any folder holding the six `.bin` files).
    Folder(PathBuf),
    /// The official `.tar.gz`.
    Archive(PathBuf),
}

/// Finds CIFAR-10 at `path`: the batches folder itself, a folder holding it (or holding the
/// archive), or the archive. `None` when nothing there looks like CIFAR-10.
pub fn locate(path: &Path) -> Option<Location> {
    if path.is_file() {
        return Some(Location::Archive(path.to_path_buf()));
    }
    if !path.is_dir() {
        return None;
    }
    if looks_like_batches(path) {
        return Some(Location::Folder(path.to_path_buf()));
    }
    let inner = path.join(BATCHES_DIR);
    if inner.is_dir() {
        return Some(Location::Folder(inner));
    }
    let archive = path.join(ARCHIVE_NAME);
    if archive.is_file() {
        return Some(Location::Archive(archive));
    }
    None
}

/// Any of the six files present is enough to call it the batches folder; a missing one is then
/// reported by name rather than as "nothing here".
fn looks_like_batches(dir: &Path) -> bool {
    TRAIN_FILES.iter().chain([&TEST_FILE]).any(|f| dir.join(f).is_file())
}

/// The whole data set in memory (about 180 MB).
#[derive(Debug, Clone)]
pub struct Cifar10 {
    pub train: CifarSet,
    pub test: CifarSet,
}

impl Cifar10 {
    /// Reads CIFAR-10 from the batches folder, its parent, or the `.tar.gz`.
    pub fn open(path: &Path) -> Result<Self> {
        match locate(path) {
            Some(Location::Folder(dir)) => Self::open_folder(&dir),
            Some(Location::Archive(file)) => Self::open_archive(&file),
            None if !path.exists() => Err(Error::bad_file(path, "no such file or folder")),
            None => Err(Error::bad_file(
                path,
                format!(
                    "no CIFAR-10 here: expected {BATCHES_DIR}/ (data_batch_1.bin … test_batch.bin), a folder holding it, or {ARCHIVE_NAME}"
                ),
            )),
        }
    }

    /// Reads the six `.bin` files of a batches folder.
    pub fn open_folder(dir: &Path) -> Result<Self> {
        let read = |name: &str| {
            let file = dir.join(name);
            if !file.is_file() {
                // Something else by that name is not "missing": say what it is.
                let what = match fs::metadata(&file) {
                    Ok(m) if m.is_dir() => "is a folder, not a file",
                    Ok(_) => "is not a regular file",
                    Err(_) => "missing",
                };
                return Err(Error::bad_file(
                    file,
                    format!(
                        "{what} (a CIFAR-10 batches folder needs the files data_batch_1.bin … data_batch_5.bin and test_batch.bin)"
                    ),
                ));
            }
            read_records(&file)
        };
        let mut parts = Vec::with_capacity(TRAIN_FILES.len());
        for name in TRAIN_FILES {
            parts.push(read(name)?);
        }
        let train = concat(parts)?;
        let (images, labels) = read(TEST_FILE)?;
        Ok(Cifar10 { train, test: CifarSet::new(images, labels)? })
    }

    /// Reads the six `.bin` files straight out of the `.tar.gz` (wherever they sit inside it).
    pub fn open_archive(file: &Path) -> Result<Self> {
        let bad = |e: std::io::Error| Error::bad_file(file, format!("not a readable .tar.gz: {e}"));
        let reader = fs::File::open(file).map_err(|e| Error::io(file, e))?;
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(reader)));
        let wanted: Vec<&str> = TRAIN_FILES.iter().copied().chain([TEST_FILE]).collect();
        let mut found: Vec<Option<(Vec<u8>, Vec<u8>)>> = vec![None; wanted.len()];
        for entry in archive.entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            let inner = entry.path().map_err(bad)?.into_owned();
            let Some(slot) = inner.file_name().and_then(|n| wanted.iter().position(|w| n == *w)) else {
                continue;
            };
            // The size is the archive's word: a batch is 10,000 records; more is refused before
            // anything is reserved or read.
            if entry.size() > MAX_BATCH_BYTES {
                return Err(Error::bad_file(
                    file.join(&inner),
                    format!("{} bytes, more than a CIFAR-10 batch ({MAX_BATCH_BYTES})", entry.size()),
                ));
            }
            let mut bytes = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut bytes).map_err(bad)?;
            found[slot] = Some(parse_records(&bytes, &file.join(&inner))?);
        }
        let mut parts = Vec::with_capacity(wanted.len());
        for (name, part) in wanted.iter().zip(found) {
            parts.push(part.ok_or_else(|| Error::bad_file(file, format!("the archive holds no {name}")))?);
        }
        let (images, labels) = parts.pop().ok_or_else(|| Error::bad_file(file, "empty archive"))?;
        Ok(Cifar10 { train: concat(parts)?, test: CifarSet::new(images, labels)? })
    }
}

fn concat(parts: Vec<(Vec<u8>, Vec<u8>)>) -> Result<CifarSet> {
    let n: usize = parts.iter().map(|p| p.1.len()).sum();
    let mut images = Vec::with_capacity(n * IMAGE_BYTES);
    let mut labels = Vec::with_capacity(n);
    for (i, l) in parts {
        images.extend_from_slice(&i);
        labels.extend_from_slice(&l);
    }
    CifarSet::new(images, labels)
}

/// A CIFAR set as a loader [`Source`], with the training augmentation or none.
#[derive(Debug, Clone)]
pub struct CifarSource {
    set: CifarSet,
    augment: Option<CifarAugment>,
    mean: [f32; 3],
    std: [f32; 3],
}

impl CifarSource {
    /// `augment: None` gives the images as they are (evaluation); normalised with the CIFAR-10
    /// constants.
    pub fn new(set: CifarSet, augment: Option<CifarAugment>) -> Self {
        CifarSource { set, augment, mean: CIFAR10_MEAN, std: CIFAR10_STD }
    }

    /// Same, with other normalisation constants.
    pub fn with_normalization(mut self, mean: [f32; 3], std: [f32; 3]) -> Self {
        self.mean = mean;
        self.std = std;
        self
    }
}

impl Source for CifarSource {
    fn len(&self) -> usize {
        self.set.len()
    }

    fn image_size(&self) -> (usize, usize) {
        (CIFAR_SIDE, CIFAR_SIDE)
    }

    fn get(&self, index: usize, rng: &mut SampleRng, out: &mut [f32]) -> Result<i64> {
        let draw = match &self.augment {
            Some(aug) => aug.draw(rng),
            None => CifarDraw::IDENTITY,
        };
        cifar_to_chw(self.set.image(index), &draw, &self.mean, &self.std, out);
        Ok(self.set.label(index) as i64)
    }
}
