//! Small helpers shared by modules that write user artefacts.
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// reader (or a crash) never sees a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_keeping(path, bytes, None)
}

/// [`write_atomic`] that first moves the file it replaces to `previous` (when given), once the
/// new bytes are safely on disk: a crash at any point leaves a readable `path` or `previous`.
pub fn write_atomic_keeping(path: &Path, bytes: &[u8], previous: Option<&Path>) -> Result<()> {
    let tmp = temporary_path(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        if let Some(previous) = previous.filter(|_| path.exists()) {
            std::fs::rename(path, previous)?;
        }
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Where [`write_atomic`] writes `path` before its rename: `.NAME.tmpPID` beside it.
fn temporary_path(path: &Path) -> std::path::PathBuf {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dir.join(format!(".{name}.tmp{}", std::process::id()))
}

/// Whether `name` is a temporary file [`write_atomic`] left behind (killed before its rename).
pub fn is_temporary_name(name: &str) -> bool {
    name.starts_with('.')
        && name.rsplit_once(".tmp").is_some_and(|(stem, pid)| {
            stem.len() > 1 && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())
        })
}

/// Versions a run records in its config.json.
pub fn versions() -> std::collections::BTreeMap<String, String> {
    std::collections::BTreeMap::from([
        ("cnas".to_string(), env!("CARGO_PKG_VERSION").to_string()),
        ("tch".to_string(), "0.24.0".to_string()),
        ("libtorch".to_string(), "2.11.0".to_string()),
    ])
}
