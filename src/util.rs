//! Small helpers shared by modules that write user artefacts.
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// reader (or a crash) never sees a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Versions a run records in its config.json.
pub fn versions() -> std::collections::BTreeMap<String, String> {
    std::collections::BTreeMap::from([
        ("cnas".to_string(), env!("CARGO_PKG_VERSION").to_string()),
        ("tch".to_string(), "0.24.0".to_string()),
        ("libtorch".to_string(), "2.11.0".to_string()),
    ])
}
