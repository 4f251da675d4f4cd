//! Fetching CIFAR-10 from its official address, and the published pretrained CNAS weights.
//!
//! Steps, each safe to interrupt:
//! 1. the archive is streamed to `DIR/cifar-10-binary.tar.gz.part`; a later run that finds a
//!    `.part` asks the server for the rest (HTTP `Range`), and starts over when the server does
//!    not honour it;
//! 2. the complete `.part` is checked against the published MD5; on a mismatch it is deleted;
//! 3. it is unpacked into a hidden temporary folder `DIR/.cifar-10-extract-*`, the six `.bin`
//!    files are checked, and `cifar-10-batches-bin` is renamed into `DIR` in one step;
//! 4. the `.part` and the temporary folder are removed.
//!
//! So `DIR/cifar-10-batches-bin` either does not exist or is complete; nothing else a download
//! leaves behind is taken for data.
//!
//! A download that fails (no connection, an HTTP error status, a body cut short, a checksum
//! that is not the published one) is an [`Error::Download`]: exit code 3, run again to retry.
//!
//! Two processes downloading into the same folder at once would share the `.part`: for
//! multi-process training, run `cnas download cifar10 --data DIR` once first.
//!
//! Pretrained weights ([`download_weights`]) take the same resumable path into `NAME.part`,
//! are checked against the SHA-256 prefix their file name carries (torch.hub's `NAME-HASH.pth`
//! convention, e.g. `cnas-imagenet-602b7057.pth`) and renamed to `NAME` in one step.
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use md5::{Digest, Md5};

use super::cifar10::{self, Cifar10, ARCHIVE_NAME, BATCHES_DIR, RECORD_BYTES, TEST_FILE, TRAIN_FILES};
use crate::error::{Error, Result};

/// The official binary distribution.
pub const CIFAR10_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
/// Its published MD5.
pub const CIFAR10_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";

/// The CNAS authors' ImageNet network (CNAS cell, 48 channels, 14 cells, auxiliary head) as a
/// PyTorch state_dict, from the release of their code (the address their `cnas_imagenet()`
/// loads).
pub const CNAS_IMAGENET_URL: &str =
    "https://github.com/guoyongcs/CNAS/releases/download/models/cnas-imagenet-602b7057.pth";

const EXTRACT_PREFIX: &str = ".cifar-10-extract-";

/// What `cnas download` can fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DownloadTarget {
    /// The CIFAR-10 binary distribution (about 163 MB).
    #[value(name = "cifar10", alias = "cifar-10")]
    Cifar10,
    /// The published CNAS ImageNet weights (cnas-imagenet-602b7057.pth, a PyTorch state_dict).
    #[value(name = "pretrained")]
    Pretrained,
}

/// `cnas download WHAT [--data DIR]`: fetches `what` into `data_dir` unless it is already there.
pub fn download(what: DownloadTarget, data_dir: &Path, progress: bool) -> Result<PathBuf> {
    download_from(what, data_dir, None, progress)
}

/// [`download`] from `url` instead of the official address when one is given.
pub fn download_from(
    what: DownloadTarget,
    data_dir: &Path,
    url: Option<&str>,
    progress: bool,
) -> Result<PathBuf> {
    let cifar10_url = url.unwrap_or(CIFAR10_URL);
    match what {
        DownloadTarget::Pretrained => download_weights(data_dir, url.unwrap_or(CNAS_IMAGENET_URL), progress),
        DownloadTarget::Cifar10 => match cifar10::locate(data_dir) {
            Some(cifar10::Location::Folder(dir)) => {
                check_batches(&dir)?;
                tracing::info!("CIFAR-10 is already in {}", dir.display());
                Ok(dir)
            }
            Some(cifar10::Location::Archive(file)) => {
                // Read it through once, so a stray file is not taken for the data set.
                Cifar10::open_archive(&file)?;
                tracing::info!("CIFAR-10 is already in {} (cnas reads the archive as it is)", file.display());
                Ok(file)
            }
            None => download_cifar10(data_dir, cifar10_url, CIFAR10_MD5, progress),
        },
    }
}

/// True when `dir` holds nothing but what an interrupted download leaves (or does not exist):
/// the condition for fetching CIFAR-10 without being asked.
pub fn is_empty_for_download(dir: &Path) -> bool {
    match fs::read_dir(dir) {
        Err(e) => e.kind() == io::ErrorKind::NotFound,
        Ok(entries) => entries.flatten().all(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name == part_name() || name.starts_with(EXTRACT_PREFIX)
        }),
    }
}

fn part_name() -> String {
    format!("{ARCHIVE_NAME}.part")
}

/// Downloads the CIFAR-10 archive from `url`, checks it against `md5_hex`, and unpacks it as
/// `data_dir/cifar-10-batches-bin`, which it returns. See the module docs for the steps.
pub fn download_cifar10(data_dir: &Path, url: &str, md5_hex: &str, progress: bool) -> Result<PathBuf> {
    let target = data_dir.join(BATCHES_DIR);
    if target.exists() {
        return Err(Error::bad_file(&target, "already exists; remove it first to download CIFAR-10 again"));
    }
    fs::create_dir_all(data_dir).map_err(|e| Error::io(data_dir, e))?;
    remove_stale_extractions(data_dir);
    let part = data_dir.join(part_name());
    fetch(url, &part, "CIFAR-10", progress)?;

    let digest = md5_of(&part)?;
    if !digest.eq_ignore_ascii_case(md5_hex.trim()) {
        // A bad archive must not be resumed or unpacked by a later run.
        let _ = fs::remove_file(&part);
        return Err(Error::download(
            url,
            format!(
                "downloaded file has MD5 {digest}, expected {md5_hex}; it was deleted, run again to retry"
            ),
        ));
    }

    let temp = data_dir.join(format!("{EXTRACT_PREFIX}{}", std::process::id()));
    let _ = fs::remove_dir_all(&temp);
    let result = extract_into(&part, &temp)
        .and_then(|inner| fs::rename(&inner, &target).map_err(|e| Error::io(&target, e)));
    let _ = fs::remove_dir_all(&temp);
    result?;
    let _ = fs::remove_file(&part);
    tracing::info!("CIFAR-10 is in {}", target.display());
    Ok(target)
}

/// Temporary folders of runs that were killed mid-extraction.
fn remove_stale_extractions(data_dir: &Path) {
    if let Ok(entries) = fs::read_dir(data_dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(EXTRACT_PREFIX) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Unpacks the archive into `temp` and returns the checked batches folder inside it.
fn extract_into(archive: &Path, temp: &Path) -> Result<PathBuf> {
    fs::create_dir_all(temp).map_err(|e| Error::io(temp, e))?;
    let file = File::open(archive).map_err(|e| Error::io(archive, e))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(io::BufReader::new(file)));
    // `unpack` refuses entries that would land outside `temp`.
    tar.unpack(temp).map_err(|e| Error::bad_file(archive, format!("cannot unpack the archive: {e}")))?;
    let inner = temp.join(BATCHES_DIR);
    if !inner.is_dir() {
        return Err(Error::bad_file(archive, format!("the archive holds no {BATCHES_DIR}/ folder")));
    }
    check_batches(&inner)?;
    Ok(inner)
}

/// Every file present with a whole number of records: cheap, and catches a damaged folder.
fn check_batches(dir: &Path) -> Result<()> {
    for name in TRAIN_FILES.iter().chain([&TEST_FILE]) {
        let file = dir.join(name);
        let len = fs::metadata(&file).map_err(|e| Error::io(&file, e))?.len() as usize;
        if len == 0 || len % RECORD_BYTES != 0 {
            return Err(Error::bad_file(
                &file,
                format!("{len} bytes is not a whole number of {RECORD_BYTES}-byte CIFAR-10 records"),
            ));
        }
    }
    Ok(())
}

fn md5_of(path: &Path) -> Result<String> {
    hex_digest_of::<Md5>(path)
}

/// The hex digest of a file's bytes, read in 1 MiB pieces.
fn hex_digest_of<D: Digest>(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = D::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// A request that got no answer: a failed download (exit code 3), never a local file's error.
fn net_error(url: &str, err: ureq::Error) -> Error {
    let text = match err {
        // The underlying error as it is, without ureq's "io:" wrapping.
        ureq::Error::Io(e) => e.to_string(),
        ureq::Error::HostNotFound => "host not found".to_string(),
        ureq::Error::ConnectionFailed => "connection failed".to_string(),
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        other => other.to_string(),
    };
    Error::download(url, text)
}

/// Streams `url` into `part`, continuing an existing `part` when the server allows it.
fn fetch(url: &str, part: &Path, label: &str, progress: bool) -> Result<()> {
    let have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let mut request = http_agent().get(url);
    if have > 0 {
        request = request.header("Range", format!("bytes={have}-"));
    }
    let response = request.call().map_err(|e| net_error(url, e))?;
    let Some((start, total)) = body_placement(url, &response, have)? else {
        return restart(url, part, label, progress);
    };
    let file = if start == 0 { File::create(part) } else { OpenOptions::new().append(true).open(part) }
        .map_err(|e| Error::io(part, e))?;
    let bar = progress_bar(progress, label, start, total);
    let mut sink = PartFile { url, part, file, written: start, total };
    let outcome = sink.append(response.into_body().into_reader(), &bar);
    bar.finish_and_clear();
    sink.close(outcome)
}

fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// Where the response's body goes in a `.part` already `have` bytes long, and the whole
/// file's length when known: `(start, total)`. `None` when the `.part` cannot be continued
/// and must be dropped; an error when the server refused.
fn body_placement(
    url: &str,
    response: &ureq::http::Response<ureq::Body>,
    have: u64,
) -> Result<Option<(u64, Option<u64>)>> {
    let status = response.status().as_u16();
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let length: Option<u64> = header("content-length").and_then(|v| v.trim().parse().ok());
    match status {
        206 => match header("content-range").as_deref().and_then(parse_content_range) {
            Some((from, total)) if from == have => Ok(Some((have, total.or(length.map(|l| have + l))))),
            // A range we did not ask for: do not splice it in.
            _ => Ok(None),
        },
        200 => Ok(Some((0, length))),
        // The `.part` is already as long as (or longer than) the file.
        416 if have > 0 => Ok(None),
        _ => {
            let reason = response.status().canonical_reason().unwrap_or("");
            Err(Error::download(url, format!("the server answered HTTP {status} {reason}")))
        }
    }
}

/// A bar from `start` towards `total` bytes when `progress` is set, else a hidden one.
fn progress_bar(progress: bool, label: &str, start: u64, total: Option<u64>) -> indicatif::ProgressBar {
    if !progress {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total.unwrap_or(0));
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(label.to_string());
    bar.set_position(start);
    bar
}

/// The `.part` file a download writes into, `written` bytes long, `total` when complete.
struct PartFile<'a> {
    url: &'a str,
    part: &'a Path,
    file: File,
    written: u64,
    total: Option<u64>,
}

impl PartFile<'_> {
    /// Appends all of `body`, moving `bar` along.
    fn append(&mut self, mut body: impl Read, bar: &indicatif::ProgressBar) -> Result<()> {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match body.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    self.file.write_all(&buf[..n]).map_err(|e| Error::io(self.part, e))?;
                    self.written += n as u64;
                    bar.set_position(self.written);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(interrupted(self.url, self.written, self.total, &e.to_string())),
            }
        }
    }

    /// Flushes the file to disk (whatever `outcome` was, so a resume finds what was written),
    /// then reports `outcome`, or a body shorter than announced.
    fn close(self, outcome: Result<()>) -> Result<()> {
        let flushed = self.file.sync_all().map_err(|e| Error::io(self.part, e));
        outcome?;
        flushed?;
        if let Some(total) = self.total {
            if self.written != total {
                return Err(interrupted(self.url, self.written, Some(total), "connection closed early"));
            }
        }
        Ok(())
    }
}

/// Drops the `.part` and downloads from the start, once.
fn restart(url: &str, part: &Path, label: &str, progress: bool) -> Result<()> {
    tracing::warn!("cannot resume {}; downloading it again from the start", part.display());
    fs::remove_file(part).map_err(|e| Error::io(part, e))?;
    fetch(url, part, label, progress)
}

fn interrupted(url: &str, written: u64, total: Option<u64>, why: &str) -> Error {
    let of = total.map(|t| format!(" of {t}")).unwrap_or_default();
    Error::download(
        url,
        format!("download interrupted after {written}{of} bytes ({why}); run again to resume"),
    )
}

/// The SHA-256 prefix a file name carries as torch.hub writes it: the first `-HEX.` in the
/// name (lower-case hex), as in `cnas-imagenet-602b7057.pth`.
pub fn hash_prefix(file_name: &str) -> Option<&str> {
    file_name.match_indices('-').find_map(|(i, _)| {
        let rest = &file_name[i + 1..];
        let hex = rest.bytes().take_while(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)).count();
        (hex > 0 && rest[hex..].starts_with('.')).then(|| &rest[..hex])
    })
}

fn sha256_of(path: &Path) -> Result<String> {
    hex_digest_of::<sha2::Sha256>(path)
}

/// Downloads a weights file from `url` into `data_dir` under the name the URL ends with,
/// resumable, checked against the SHA-256 prefix in that name when it has one (see the module
/// docs), or else readable as weights; returns its path. A file already there with the right hash
/// is kept as it is.
pub fn download_weights(data_dir: &Path, url: &str, progress: bool) -> Result<PathBuf> {
    let name = url.split(['?', '#']).next().unwrap_or("").rsplit('/').next().unwrap_or("").to_string();
    if name.is_empty() || name == "." || name == ".." {
        return Err(Error::BadOption(format!("{url}: the address does not end with a file name")));
    }
    let target = data_dir.join(&name);
    let prefix = hash_prefix(&name);
    let check = |file: &Path| -> Result<Option<String>> {
        match prefix {
            None => Ok(None),
            Some(p) => {
                let digest = sha256_of(file)?;
                Ok((!digest.starts_with(p)).then_some(digest))
            }
        }
    };
    if target.exists() {
        if let Some(digest) = check(&target)? {
            return Err(Error::bad_file(
                &target,
                format!(
                    "already exists but its SHA-256 {digest} does not start with {}; remove it to download again",
                    prefix.unwrap_or_default()
                ),
            ));
        }
        tracing::info!("{} is already there", target.display());
        return Ok(target);
    }
    fs::create_dir_all(data_dir).map_err(|e| Error::io(data_dir, e))?;
    let part = data_dir.join(format!("{name}.part"));
    fetch(url, &part, &name, progress)?;
    let verdict = check(&part).and_then(|bad| match bad {
        Some(digest) => Err(Error::download(
            url,
            format!(
                "downloaded file has SHA-256 {digest}, expected one starting with {} (its name says so); \
                 it was deleted, run again to retry",
                prefix.unwrap_or_default()
            ),
        )),
        // Without a hash, at least refuse what is not weights (an error page, say); a file
        // whose hash matches is kept even if this cnas cannot read its format.
        None if prefix.is_none() => crate::weights::read(&part).map(|_| ()).map_err(|e| {
            Error::download(url, format!("the downloaded file is not weights ({e}); it was deleted"))
        }),
        None => Ok(()),
    });
    if let Err(e) = verdict {
        // A bad file must not be resumed or taken for weights by a later run.
        let _ = fs::remove_file(&part);
        return Err(e);
    }
    if prefix.is_none() {
        tracing::warn!("{name} carries no hash in its name; it was not verified");
    }
    fs::rename(&part, &target).map_err(|e| Error::io(&target, e))?;
    tracing::info!("pretrained weights are in {}", target.display());
    Ok(target)
}

/// `bytes FROM-TO/TOTAL` → (FROM, TOTAL), TOTAL `None` when `*`.
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (from, _) = range.split_once('-')?;
    Some((from.trim().parse().ok()?, total.trim().parse().ok()))
}

/// What [`super::Data::open`] does with `--data` for CIFAR-10 (with the official `url` and
/// `md5_hex`): where CIFAR-10 is, after fetching it when the folder is missing or holds nothing
/// but leftovers of an interrupted download; `None` when the folder holds something else.
pub fn locate_or_download(
    data_dir: &Path,
    url: &str,
    md5_hex: &str,
    progress: bool,
) -> Result<Option<cifar10::Location>> {
    if let Some(found) = cifar10::locate(data_dir) {
        return Ok(Some(found));
    }
    if !is_empty_for_download(data_dir) {
        return Ok(None);
    }
    tracing::info!("{} holds no CIFAR-10; downloading it from {url}", data_dir.display());
    let dir = download_cifar10(data_dir, url, md5_hex, progress)?;
    Ok(Some(cifar10::Location::Folder(dir)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_forms() {
        assert_eq!(parse_content_range("bytes 100-199/200"), Some((100, Some(200))));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }

    #[test]
    fn hash_prefix_as_torch_hub_reads_it() {
        assert_eq!(hash_prefix("cnas-imagenet-602b7057.pth"), Some("602b7057"));
        assert_eq!(hash_prefix("resnet18-f37072fd.pth"), Some("f37072fd"));
        assert_eq!(hash_prefix("weights.pth"), None);
        assert_eq!(hash_prefix("net-ABCD.pth"), None);
        assert_eq!(hash_prefix("a-.pth"), None);
    }
}
