//! Downloading CIFAR-10 from a local HTTP server (127.0.0.1, ephemeral port) that serves a small
//! generated archive: good, corrupt, cut short, without Range support, missing.
use cnas::data::cifar10::{self, Cifar10, IMAGE_BYTES, RECORD_BYTES};
use cnas::data::download::{download_cifar10, is_empty_for_download, locate_or_download};
use md5::{Digest, Md5};

use crate::common::http::{serve, Behaviour};
use crate::common::{self, entries};

/// The official archive's layout with 2 records per file.
fn small_archive() -> Vec<u8> {
    let mut records = Vec::new();
    for i in 0..2u8 {
        records.push(i + 3);
        records.extend(std::iter::repeat_n(i, IMAGE_BYTES));
    }
    assert_eq!(records.len(), 2 * RECORD_BYTES);
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut add = |name: &str, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, format!("cifar-10-batches-bin/{name}"), data).unwrap();
    };
    for name in cifar10::TRAIN_FILES.iter().chain([&cifar10::TEST_FILE]) {
        add(name, &records);
    }
    add("batches.meta.txt", b"airplane\n");
    tar.into_inner().unwrap().finish().unwrap()
}

/// Where the local server serves the archive.
const PATH: &str = "/cifar-10-binary.tar.gz";

fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn good_archive_is_verified_and_unpacked_in_one_step() {
    let body = small_archive();
    let server = serve(PATH, body.clone(), Behaviour::Good, 1);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Nothing there yet: the automatic path downloads.
    assert!(is_empty_for_download(&data));
    let found = locate_or_download(&data, &server.url, &md5_hex(&body), false).unwrap();
    assert_eq!(found, Some(cifar10::Location::Folder(data.join("cifar-10-batches-bin"))));
    assert_eq!(entries(&data), ["cifar-10-batches-bin"], "no .part or temporary folder left");
    let c = Cifar10::open(&data).unwrap();
    assert_eq!((c.train.len(), c.test.len()), (10, 2));
    assert_eq!(c.test.labels(), [3, 4]);
    // Second time: found, not fetched (the server answers one request only).
    assert!(locate_or_download(&data, &server.url, &md5_hex(&body), false).unwrap().is_some());
    // And an explicit download refuses to overwrite it.
    assert!(download_cifar10(&data, &server.url, &md5_hex(&body), false).is_err());
}

#[test]
fn corrupt_archive_fails_the_md5_and_leaves_nothing_that_looks_like_data() {
    let body = small_archive();
    let mut corrupt = body.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0xFF;
    let server = serve(PATH, corrupt, Behaviour::Good, 1);
    let tmp = tempfile::tempdir().unwrap();
    let err = download_cifar10(tmp.path(), &server.url, &md5_hex(&body), false).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("MD5") && text.contains(&md5_hex(&body)), "{text}");
    // A failed download: exit code 3, run again to retry.
    assert_eq!(err.exit_code(), 3);
    assert_eq!(entries(tmp.path()), Vec::<String>::new());
    assert_eq!(cifar10::locate(tmp.path()), None);
}

#[test]
fn cut_download_resumes_with_a_range_request() {
    let body = small_archive();
    let server = serve(PATH, body.clone(), Behaviour::CutOnceThenGood, 2);
    let tmp = tempfile::tempdir().unwrap();
    let err = download_cifar10(tmp.path(), &server.url, &md5_hex(&body), false).unwrap_err();
    assert!(err.to_string().contains("interrupted"), "{err}");
    // Only the .part is there, which is not taken for data, and a new run may fetch again.
    assert_eq!(entries(tmp.path()), ["cifar-10-binary.tar.gz.part"]);
    assert_eq!(cifar10::locate(tmp.path()), None);
    assert!(is_empty_for_download(tmp.path()));

    download_cifar10(tmp.path(), &server.url, &md5_hex(&body), false).unwrap();
    let ranges = server.ranges();
    assert_eq!(ranges, ["".to_string(), format!("bytes={}-", body.len() / 3)]);
    assert_eq!(entries(tmp.path()), ["cifar-10-batches-bin"]);
    assert_eq!(Cifar10::open(tmp.path()).unwrap().train.len(), 10);
}

#[test]
fn cut_download_restarts_when_the_server_ignores_range() {
    let body = small_archive();
    let server = serve(PATH, body.clone(), Behaviour::CutOnceThenNoRange, 2);
    let tmp = tempfile::tempdir().unwrap();
    assert!(download_cifar10(tmp.path(), &server.url, &md5_hex(&body), false).is_err());
    download_cifar10(tmp.path(), &server.url, &md5_hex(&body), false).unwrap();
    assert_eq!(server.requests(), 2);
    assert_eq!(Cifar10::open(tmp.path()).unwrap().test.len(), 2);
}

#[test]
fn missing_file_is_a_clear_error() {
    let server = serve(PATH, Vec::new(), Behaviour::NotFound, 1);
    let tmp = tempfile::tempdir().unwrap();
    let err = download_cifar10(tmp.path(), &server.url, "0", false).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("404") && text.contains(&server.url), "{text}");
    assert_eq!(entries(tmp.path()), Vec::<String>::new());
}

#[test]
fn a_folder_holding_other_things_is_not_downloaded_into() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("mine.txt"), "x").unwrap();
    assert!(!is_empty_for_download(tmp.path()));
    // No server at all: it must not even try.
    assert_eq!(locate_or_download(tmp.path(), "http://127.0.0.1:9/none", "0", false).unwrap(), None);
}

#[test]
fn cli_download_finds_an_existing_copy_without_the_network() {
    let shared = common::cifar10_dir();
    for data in [shared.clone(), shared.join("cifar-10-batches-bin")] {
        let out =
            common::cnas().args(["--quiet", "download", "cifar10", "--data"]).arg(&data).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(printed.trim().ends_with("cifar-10-batches-bin"), "{printed}");
    }
    let out = common::cnas().args(["download", "mnist"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
