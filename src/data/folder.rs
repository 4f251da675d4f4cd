//! ImageNet and any other data set stored as image files in class folders.
//!
//! Layout under the data folder:
//!
//! ```text
//! train/<class>/*.JPEG        one folder per class; classes sorted by folder name, label = rank
//! val/<class>/*.JPEG          the same layout (class names must be among train's), or
//! val/*.JPEG + a label file   the official flat validation layout
//! ```
//!
//! or, as torchvision's `ImageFolder` reads it, the class folders themselves (`<class>/*.jpg`,
//! no `train/` and no `val/`): they are the training set, and there is no validation set. A
//! search holds out part of the training set (`--train-portion`), so it runs on either layout;
//! training and evaluation need `val/`.
//!
//! Image files are those ending in `.jpeg`, `.jpg` or `.png` (any case); other files and hidden
//! entries are ignored. The content decides the decoder, so a PNG named `.JPEG` reads fine;
//! greyscale, CMYK and images with alpha are converted to RGB.
//!
//! **Label file for a flat `val/`** (given with `--val-labels`, or found as `val_labels.txt`,
//! `val_labels.csv` or `LOC_val_solution.csv` beside `val/`, or `labels.txt` inside it). Blank
//! lines and lines starting with `#` are ignored. Two forms:
//! - one label per line, matched to the images of `val/` sorted by file name (the devkit's
//!   `ILSVRC2012_validation_ground_truth.txt` layout); there must be exactly one line per image;
//! - `file,label` lines, where `file` is an image's name with or without its extension and the
//!   label is the first word after the comma (so Kaggle's `LOC_val_solution.csv` works as it is;
//!   a first line whose label is not a class is taken for a header). Every image needs a line;
//!   lines for absent files are ignored.
//!
//! A label is a class folder name (e.g. `n01440764`) or a 0-based class number in sorted-folder
//! order. Note that the devkit's 1-based ILSVRC2012 ids follow a different order than sorted
//! WordNet ids: convert them to folder names first.
use std::collections::HashMap;
use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::{ImageReader, RgbImage};

use super::loader::Source;
use super::normalize::{IMAGENET_MEAN, IMAGENET_STD};
use super::rng::SampleRng;
use super::transforms::FolderTransform;
use crate::error::{Error, Result};

/// File extensions taken for images (compared without case).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["jpeg", "jpg", "png"];
/// Label files looked for beside (or inside) a flat `val/`, in this order.
pub const LABEL_FILE_NAMES: [&str; 4] =
    ["val_labels.txt", "val_labels.csv", "LOC_val_solution.csv", "val/labels.txt"];

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.to_string_lossy().starts_with('.')
}

/// Sorted visible sub-folders and sorted image files of `dir`.
fn list_dir(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let (mut dirs, mut files) = (Vec::new(), Vec::new());
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if is_hidden(&entry.file_name()) {
            continue;
        }
        let path = entry.path();
        // The entry's own type costs no extra system call (a million of them on ImageNet);
        // symbolic links, common in prepared data folders, are followed.
        let kind = entry.file_type().map_err(|e| Error::io(&path, e))?;
        let (is_dir, is_file) =
            if kind.is_symlink() { (path.is_dir(), path.is_file()) } else { (kind.is_dir(), kind.is_file()) };
        if is_dir {
            dirs.push(path);
        } else if is_file && is_image(&path) {
            files.push(path);
        }
    }
    dirs.sort();
    files.sort();
    Ok((dirs, files))
}

fn folder_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Image files with labels, and the class names the labels index.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    root: PathBuf,
    classes: Arc<Vec<String>>,
    samples: Vec<(PathBuf, u32)>,
}

impl ImageFolder {
    /// A folder of class folders; the classes are the sorted folder names.
    pub fn open(dir: &Path) -> Result<Self> {
        let (dirs, _) = list_dir(dir)?;
        if dirs.is_empty() {
            return Err(Error::bad_file(
                dir,
                "holds no class folders (expected one folder of images per class)",
            ));
        }
        let classes: Vec<String> = dirs.iter().map(|d| folder_name(d)).collect();
        Self::open_with_classes(dir, &classes)
    }

    /// A folder of class folders whose names must all be among `classes` (e.g. the training
    /// set's), which the labels index.
    pub fn open_with_classes(dir: &Path, classes: &[String]) -> Result<Self> {
        let (dirs, _) = list_dir(dir)?;
        if dirs.is_empty() {
            return Err(Error::bad_file(
                dir,
                "holds no class folders (expected one folder of images per class)",
            ));
        }
        let index: HashMap<&str, u32> =
            classes.iter().enumerate().map(|(i, c)| (c.as_str(), i as u32)).collect();
        let mut samples = Vec::new();
        for class_dir in dirs {
            let name = folder_name(&class_dir);
            let Some(&label) = index.get(name.as_str()) else {
                return Err(Error::bad_file(&class_dir, "is not one of the training classes"));
            };
            let (_, files) = list_dir(&class_dir)?;
            if files.is_empty() {
                return Err(Error::bad_file(
                    &class_dir,
                    "class folder holds no images (.jpeg, .jpg or .png)",
                ));
            }
            samples.extend(files.into_iter().map(|f| (f, label)));
        }
        Ok(ImageFolder { root: dir.to_path_buf(), classes: Arc::new(classes.to_vec()), samples })
    }

    /// A flat folder of images labelled by `label_file` (see the module docs for its forms).
    pub fn open_flat(dir: &Path, label_file: &Path, classes: &[String]) -> Result<Self> {
        let (_, files) = list_dir(dir)?;
        if files.is_empty() {
            return Err(Error::bad_file(dir, "holds no images (.jpeg, .jpg or .png)"));
        }
        let labels = read_label_file(label_file, &files, classes)?;
        Ok(ImageFolder {
            root: dir.to_path_buf(),
            classes: Arc::new(classes.to_vec()),
            samples: files.into_iter().zip(labels).collect(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// `(file, label)` pairs, class by class, files sorted by name.
    pub fn samples(&self) -> &[(PathBuf, u32)] {
        &self.samples
    }
}

fn parse_label(word: &str, index: &HashMap<&str, u32>, classes: usize) -> Option<u32> {
    if let Some(&l) = index.get(word) {
        return Some(l);
    }
    word.parse::<u32>().ok().filter(|&l| (l as usize) < classes)
}

/// Labels for `files` (sorted by name) from a label file; see the module docs.
pub fn read_label_file(label_file: &Path, files: &[PathBuf], classes: &[String]) -> Result<Vec<u32>> {
    let text = fs::read_to_string(label_file).map_err(|e| Error::io(label_file, e))?;
    let index: HashMap<&str, u32> = classes.iter().enumerate().map(|(i, c)| (c.as_str(), i as u32)).collect();
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let unknown = |no: usize, word: &str| {
        Error::bad_file(
            label_file,
            format!(
                "line {no}: '{word}' is neither a class folder name nor a class number below {}",
                classes.len()
            ),
        )
    };

    if !lines.iter().any(|(_, l)| l.contains(',')) {
        if lines.len() != files.len() {
            return Err(Error::bad_file(
                label_file,
                format!(
                    "{} labels for {} images (one line per image, in file-name order)",
                    lines.len(),
                    files.len()
                ),
            ));
        }
        return lines
            .iter()
            .map(|&(no, l)| parse_label(l, &index, classes.len()).ok_or_else(|| unknown(no, l)))
            .collect();
    }

    let mut by_name: HashMap<String, u32> = HashMap::new();
    for (k, &(no, line)) in lines.iter().enumerate() {
        let Some((file, rest)) = line.split_once(',') else {
            return Err(Error::bad_file(label_file, format!("line {no}: expected 'file,label'")));
        };
        let word = rest.split_whitespace().next().unwrap_or("").trim_matches(',');
        match parse_label(word, &index, classes.len()) {
            Some(l) => {
                by_name.insert(file.trim().to_string(), l);
            }
            None if k == 0 => continue, // a header such as "ImageId,PredictionString"
            None => return Err(unknown(no, word)),
        }
    }
    files
        .iter()
        .map(|f| {
            let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let stem = f.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            by_name
                .get(&name)
                .or_else(|| by_name.get(&stem))
                .copied()
                .ok_or_else(|| Error::bad_file(label_file, format!("has no label for {name}")))
        })
        .collect()
}

/// An ImageNet-style data folder: `train/` and/or `val/`, or a folder of class folders (the
/// training set alone).
#[derive(Debug, Clone)]
pub struct ImageNet {
    pub root: PathBuf,
    /// Class names (sorted folder names of `train/`, or of `val/` when there is no `train/`).
    pub classes: Vec<String>,
    pub train: Option<ImageFolder>,
    pub val: Option<ImageFolder>,
}

impl ImageNet {
    /// Scans `root/train` and `root/val`; `val_labels` names the label file of a flat `val/`
    /// (otherwise one of [`LABEL_FILE_NAMES`] is looked for). A root with neither but with class
    /// folders is the training set itself (torchvision's `ImageFolder` layout).
    pub fn open(root: &Path, val_labels: Option<&Path>) -> Result<Self> {
        if !root.is_dir() {
            return Err(Error::bad_file(
                root,
                "no such folder (expected one folder of images per class, or train/ and val/ with one folder per class)",
            ));
        }
        let (train_dir, val_dir) = (root.join("train"), root.join("val"));
        if !train_dir.is_dir() && !val_dir.is_dir() && !list_dir(root)?.0.is_empty() {
            let train = ImageFolder::open(root)?;
            let classes = train.classes().to_vec();
            return Ok(ImageNet { root: root.to_path_buf(), classes, train: Some(train), val: None });
        }
        let train = if train_dir.is_dir() { Some(ImageFolder::open(&train_dir)?) } else { None };
        let val = if val_dir.is_dir() {
            let (dirs, _) = list_dir(&val_dir)?;
            Some(match (&train, dirs.is_empty()) {
                (Some(t), false) => ImageFolder::open_with_classes(&val_dir, t.classes())?,
                (None, false) => ImageFolder::open(&val_dir)?,
                (Some(t), true) => {
                    let labels = match val_labels {
                        Some(p) => p.to_path_buf(),
                        None => LABEL_FILE_NAMES.iter().map(|n| root.join(n)).find(|p| p.is_file()).ok_or_else(|| {
                            Error::bad_file(
                                &val_dir,
                                format!(
                                    "holds images but no class folders, and no label file was found (give --val-labels, or put one of {} in {})",
                                    LABEL_FILE_NAMES.join(", "),
                                    root.display()
                                ),
                            )
                        })?,
                    };
                    ImageFolder::open_flat(&val_dir, &labels, t.classes())?
                }
                (None, true) => {
                    return Err(Error::bad_file(
                        &val_dir,
                        "is flat (no class folders), so train/ must sit beside it to define the classes",
                    ))
                }
            })
        } else {
            None
        };
        let classes = match (&train, &val) {
            (Some(t), _) => t.classes().to_vec(),
            (None, Some(v)) => v.classes().to_vec(),
            (None, None) => {
                return Err(Error::bad_file(
                    root,
                    "holds neither train/ nor val/ nor class folders (one folder of images per class)",
                ))
            }
        };
        Ok(ImageNet { root: root.to_path_buf(), classes, train, val })
    }
}

/// Reads an image file as RGB whatever its colour type or extension (JPEG or PNG content).
pub fn decode_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::bad_file(path, format!("cannot read image: {e}")))?;
    if reader.format().is_none() {
        return Err(Error::bad_file(path, "not a JPEG or PNG image"));
    }
    let img = reader.decode().map_err(|e| Error::bad_file(path, format!("cannot decode image: {e}")))?;
    Ok(img.into_rgb8())
}

/// An [`ImageFolder`] as a loader [`Source`].
#[derive(Debug, Clone)]
pub struct FolderSource {
    folder: Arc<ImageFolder>,
    transform: FolderTransform,
    mean: [f32; 3],
    std: [f32; 3],
}

impl FolderSource {
    /// Normalised with the ImageNet constants.
    pub fn new(folder: Arc<ImageFolder>, transform: FolderTransform) -> Self {
        FolderSource { folder, transform, mean: IMAGENET_MEAN, std: IMAGENET_STD }
    }

    pub fn with_normalization(mut self, mean: [f32; 3], std: [f32; 3]) -> Self {
        self.mean = mean;
        self.std = std;
        self
    }
}

impl Source for FolderSource {
    fn len(&self) -> usize {
        self.folder.len()
    }

    fn image_size(&self) -> (usize, usize) {
        let s = self.transform.output_size();
        (s, s)
    }

    fn get(&self, index: usize, rng: &mut SampleRng, out: &mut [f32]) -> Result<i64> {
        let (path, label) = &self.folder.samples[index];
        let img = decode_rgb(path)?;
        let (w, h) = img.dimensions();
        if w == 0 || h == 0 {
            return Err(Error::bad_file(path, "image has no pixels"));
        }
        self.transform
            .apply(img, rng, &self.mean, &self.std, out)
            .map_err(|e| Error::bad_file(path, format!("cannot resize image: {e}")))?;
        Ok(*label as i64)
    }
}
