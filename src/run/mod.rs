//! The run directory that search and training share: how a run claims it (new, forced over an
//! old run, or resumed) under its lock ([`lock`]: one writer at a time), its config file, its
//! checkpoint generations (the latest and the one before it), its metrics lines (appended per
//! epoch, cut back to the last checkpoint on resume), its TensorBoard folder, and the progress
//! bars its epochs draw. In a data-parallel run only rank 0 writes here. [`metrics`] holds the
//! types of the metrics lines; [`interrupt`] stops a run cleanly on Ctrl-C.
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::dist::DataParallel;
use crate::error::{Error, Result};

pub mod interrupt;
pub mod lock;
pub mod metrics;

pub use lock::RunLock;

/// Every option of the run, its data options and versions (JSON).
pub const CONFIG: &str = "config.json";
/// One JSON line per epoch (and phase).
pub const METRICS: &str = "metrics.jsonl";
/// TensorBoard event files.
pub const TENSORBOARD: &str = "tb";

/// How a run (a search or a training) is started in its directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartMode {
    /// A fresh run; refuses a run directory that holds another run.
    New,
    /// A fresh run, clearing what a previous run left in the directory.
    Force,
    /// Continue the run in the directory from its last checkpoint.
    Resume,
}

/// Whether this process writes the run directory: a single process, or rank 0.
pub fn is_writer(parallel: Option<&DataParallel>) -> bool {
    parallel.is_none_or(DataParallel::is_main)
}

/// The config of the run to resume in `run_dir`; `what` names the kind of run for the
/// messages ("search", "training run").
pub fn read_config<T: DeserializeOwned>(run_dir: &Path, what: &str) -> Result<T> {
    let path = run_dir.join(CONFIG);
    if !path.is_file() {
        return Err(Error::bad_file(run_dir, format!("no {what} to resume here (config.json is missing)")));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::bad_file(&path, format!("not a cnas {what} config: {e}")))
}

/// The kinds of run a config.json records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    Search,
    Train,
}

impl RunKind {
    /// What a config's JSON says it is: `"kind": "train"` for a training run, a `search`
    /// section for a search.
    pub fn of(config: &serde_json::Value) -> Option<RunKind> {
        if config.get("kind").and_then(|k| k.as_str()) == Some("train") {
            Some(RunKind::Train)
        } else if config.get("search").is_some_and(|s| s.is_object()) {
            Some(RunKind::Search)
        } else {
            None
        }
    }

    fn describe(self) -> (&'static str, &'static str) {
        match self {
            RunKind::Search => ("a search's", "cnas search"),
            RunKind::Train => ("a training run's", "cnas train"),
        }
    }
}

/// A recorded config.json (or the one in a run folder) read to start a new run from it
/// (`--config`): it must be `kind`'s, and every key known and of the right type, so that a
/// typo or a hand edit gone wrong is one line naming the key, never silently a default.
pub fn read_recorded_config<T: DeserializeOwned>(path: &Path, kind: RunKind) -> Result<T> {
    let path = if path.is_dir() { path.join(CONFIG) } else { path.to_path_buf() };
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::bad_file(&path, format!("not a JSON file: {e}")))?;
    match RunKind::of(&value) {
        Some(found) if found == kind => {}
        Some(found) => {
            let (what, command) = found.describe();
            return Err(Error::bad_file(
                &path,
                format!("this is {what} config; repeat it with `{command} --config`"),
            ));
        }
        None => {
            return Err(Error::bad_file(&path, "not the config.json of a cnas search or training run"));
        }
    }
    let mut unknown = Vec::new();
    let mut de = serde_json::Deserializer::from_str(&text);
    let parsed: T = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(
        &mut de,
        &mut |key: serde_ignored::Path<'_>| unknown.push(key.to_string()),
    ))
    .map_err(|e| {
        let at = e.path().to_string();
        let cause = e.into_inner();
        Error::bad_file(&path, if at == "." { cause.to_string() } else { format!("{at}: {cause}") })
    })?;
    if let Some(key) = unknown.first() {
        return Err(Error::bad_file(&path, format!("unknown key {key}")));
    }
    Ok(parsed)
}

/// Writes the run's config atomically.
pub fn write_config(run_dir: &Path, config: &impl Serialize) -> Result<()> {
    let json = serde_json::to_string_pretty(config)
        .map_err(|e| Error::Internal(format!("writing {CONFIG}: {e}")))?;
    crate::util::write_atomic(&run_dir.join(CONFIG), json.as_bytes())
}

/// Refuses to start a new run (`StartMode::New`) in a `run_dir` that holds another run (any
/// of `files`): called before anything is opened or written.
pub fn check_free(run_dir: &Path, start: StartMode, files: &[&str]) -> Result<()> {
    let occupied = files.iter().any(|f| run_dir.join(f).exists());
    if occupied && start == StartMode::New {
        return Err(Error::BadOption(format!(
            "{} holds another run: use --resume to continue it or --force to start over",
            run_dir.display()
        )));
    }
    Ok(())
}

/// Makes `run_dir` ready for a new run: refuses one that holds another run (any of `files`)
/// unless `start` is [`StartMode::Force`], which removes those files (and their previous
/// checkpoint generations), `dirs` (a trailing `*` matches a prefix, e.g. `stage-*`) and the
/// TensorBoard folder.
pub fn claim(run_dir: &Path, start: StartMode, files: &[&str], dirs: &[&str]) -> Result<()> {
    check_free(run_dir, start, files)?;
    std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
    let occupied = files.iter().any(|f| run_dir.join(f).exists());
    if !occupied && start != StartMode::Force {
        return Ok(());
    }
    for f in files {
        let _ = std::fs::remove_file(run_dir.join(f));
        let _ = std::fs::remove_file(previous_generation(&run_dir.join(f)));
    }
    let _ = std::fs::remove_dir_all(run_dir.join(TENSORBOARD));
    for pattern in dirs {
        match pattern.strip_suffix('*') {
            None => {
                let _ = std::fs::remove_dir_all(run_dir.join(pattern));
            }
            Some(prefix) => {
                for e in std::fs::read_dir(run_dir).into_iter().flatten().flatten() {
                    if e.file_name().to_string_lossy().starts_with(prefix) {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        }
    }
    Ok(())
}

/// The files cnas writes into a run directory (or its `stage-K/` folders) through a temporary
/// file and a rename; a kill between the two leaves `.NAME.tmpPID` behind.
const WRITTEN_ATOMICALLY: &[&str] = &[
    CONFIG,
    METRICS,
    "checkpoint.safetensors",
    "last.safetensors",
    "best.safetensors",
    "genotype.json",
    "candidates.json",
    "supernet.safetensors",
    "controllers.safetensors",
    "eval.json",
    "confusion.svg",
];

/// Removes the temporary files that a process killed between a write and its rename left in
/// `run_dir` and its `stage-K/` folders (as large as a checkpoint). Only the holder of the
/// run's lock calls it, so no live writer owns them; only cnas's own temporary names are
/// touched, wherever `-o` points.
pub fn remove_leftovers(run_dir: &Path) {
    let mut dirs = vec![run_dir.to_path_buf()];
    let stages = std::fs::read_dir(run_dir).into_iter().flatten().flatten();
    dirs.extend(stages.filter(|e| e.file_name().to_string_lossy().starts_with("stage-")).map(|e| e.path()));
    let mut removed = 0;
    for dir in dirs {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let ours = crate::util::is_temporary_name(&name)
                && WRITTEN_ATOMICALLY.iter().any(|f| name.starts_with(&format!(".{f}.tmp")));
            let is_file = entry.file_type().is_ok_and(|t| t.is_file());
            if ours && is_file && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
    }
    if removed > 0 {
        tracing::info!(
            "removed {removed} temporary file(s) an interrupted process left in {}",
            run_dir.display()
        );
    }
}

/// The previous generation of a checkpoint file: `NAME.previous.EXT` beside `NAME.EXT`.
pub fn previous_generation(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let previous = match name.rsplit_once('.') {
        Some((stem, ext)) => format!("{stem}.previous.{ext}"),
        None => format!("{name}.previous"),
    };
    path.with_file_name(previous)
}

/// Saves a checkpoint as safetensors (atomically), keeping the one it replaces as the previous
/// generation: a checkpoint that cannot be read later still leaves one to resume from.
pub fn save_checkpoint(
    path: &Path,
    tensors: &[(String, tch::Tensor)],
    metadata: std::collections::BTreeMap<String, String>,
) -> Result<()> {
    let bytes = crate::weights::encode(tensors, metadata)?;
    crate::util::write_atomic_keeping(path, &bytes, Some(&previous_generation(path)))
}

/// Resumes from the newest checkpoint generation that `load` can read: `path`, or, when it is
/// missing or unreadable (truncated, corrupt), its previous generation, with a warning.
/// `None`: there is no checkpoint yet. When neither loads, the latest's error is returned.
pub fn restore_checkpoint<T>(path: &Path, mut load: impl FnMut(&Path) -> Result<T>) -> Result<Option<T>> {
    let previous = previous_generation(path);
    if !path.exists() {
        if !previous.is_file() {
            return Ok(None);
        }
        tracing::warn!(
            "{} is missing (the run stopped while replacing it): resuming from the previous checkpoint, {}",
            path.display(),
            previous.display()
        );
        return load(&previous).map(Some);
    }
    match load(path) {
        Ok(v) => Ok(Some(v)),
        Err(latest) if previous.is_file() => {
            tracing::warn!(
                "the latest checkpoint cannot be read ({latest}): resuming from the previous one, {} \
                 (one epoch earlier)",
                previous.display()
            );
            load(&previous).map(Some).map_err(|e| {
                tracing::warn!("the previous checkpoint cannot be read either: {e}");
                latest
            })
        }
        Err(latest) => Err(latest),
    }
}

/// Keeps the first `lines` lines of a metrics file (an interrupted epoch may have written its
/// line before its checkpoint; it will be written again) and returns how many it kept.
pub fn truncate_lines(path: &Path, lines: usize) -> Result<usize> {
    let kept: Vec<String> = match std::fs::File::open(path) {
        Ok(f) => BufReader::new(f)
            .lines()
            .take(lines)
            .collect::<std::io::Result<_>>()
            .map_err(|e| Error::io(path, e))?,
        Err(_) => Vec::new(),
    };
    let mut text = kept.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    crate::util::write_atomic(path, text.as_bytes())?;
    Ok(kept.len())
}

/// Appends one metrics record as a JSON line.
pub fn append_line(path: &Path, record: &impl Serialize) -> Result<()> {
    let line = serde_json::to_string(record).map_err(|e| Error::Internal(format!("a metrics line: {e}")))?;
    let mut f = OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))?;
    writeln!(f, "{line}").map_err(|e| Error::io(path, e))
}

/// A progress bar for `len` steps (hidden when `quiet`): prefix, bar, position, message,
/// `extra` (e.g. `{per_sec}, `) and the ETA.
pub fn progress_bar(quiet: bool, len: u64, prefix: String, extra: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {{msg}} ({extra}eta {{eta}})"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(prefix);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claiming_refuses_another_run_unless_forced_and_clears_it() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        claim(&run, StartMode::New, &[CONFIG], &["stage-*"]).unwrap();
        std::fs::write(run.join(CONFIG), "{}").unwrap();
        std::fs::create_dir_all(run.join("stage-1")).unwrap();
        std::fs::create_dir_all(run.join(TENSORBOARD)).unwrap();
        std::fs::write(run.join("keep.txt"), "x").unwrap();
        let err = claim(&run, StartMode::New, &[CONFIG], &["stage-*"]).unwrap_err();
        assert!(err.is_user_error() && err.to_string().contains("holds another run"));
        claim(&run, StartMode::Force, &[CONFIG], &["stage-*"]).unwrap();
        assert!(
            !run.join(CONFIG).exists() && !run.join("stage-1").exists() && !run.join(TENSORBOARD).exists()
        );
        assert!(run.join("keep.txt").exists());
    }

    #[test]
    fn checkpoints_keep_one_previous_generation_to_fall_back_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint.safetensors");
        let previous = previous_generation(&path);
        assert_eq!(previous, dir.path().join("checkpoint.previous.safetensors"));
        let load = |p: &Path| {
            let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            text.parse::<u32>().map_err(|_| Error::bad_file(p, "unreadable"))
        };
        assert!(restore_checkpoint(&path, load).unwrap().is_none(), "no checkpoint yet");
        crate::util::write_atomic_keeping(&path, b"1", Some(&previous)).unwrap();
        assert!(!previous.exists());
        crate::util::write_atomic_keeping(&path, b"2", Some(&previous)).unwrap();
        assert_eq!(std::fs::read_to_string(&previous).unwrap(), "1");
        assert_eq!(restore_checkpoint(&path, load).unwrap(), Some(2));
        std::fs::write(&path, "truncat").unwrap();
        assert_eq!(restore_checkpoint(&path, load).unwrap(), Some(1), "falls back when unreadable");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(restore_checkpoint(&path, load).unwrap(), Some(1), "falls back when missing");
        std::fs::write(&path, "bad").unwrap();
        std::fs::write(&previous, "worse").unwrap();
        let err = restore_checkpoint(&path, load).unwrap_err();
        assert!(err.to_string().starts_with(&path.display().to_string()), "the latest's error: {err}");
    }

    #[test]
    fn leftover_temporary_files_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        std::fs::create_dir_all(run.join("stage-1")).unwrap();
        let leftovers =
            [".checkpoint.safetensors.tmp123", ".metrics.jsonl.tmp9", "stage-1/.genotype.json.tmp77"];
        std::fs::create_dir_all(run.join("other")).unwrap();
        let kept = [
            "checkpoint.safetensors",
            ".tmp12",
            ".x.tmp",
            "notes.tmp3",
            ".cnas.lock",
            "stage-1/a.json",
            ".notes.txt.tmp5",
            "other/.config.json.tmp1",
        ];
        for f in leftovers.iter().chain(&kept) {
            std::fs::write(run.join(f), "x").unwrap();
        }
        remove_leftovers(run);
        assert!(leftovers.iter().all(|f| !run.join(f).exists()));
        assert!(kept.iter().all(|f| run.join(f).exists()));
    }

    #[test]
    fn metrics_lines_are_appended_and_cut_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(METRICS);
        assert_eq!(truncate_lines(&path, 3).unwrap(), 0);
        for i in 0..3 {
            append_line(&path, &serde_json::json!({"epoch": i})).unwrap();
        }
        assert_eq!(truncate_lines(&path, 2).unwrap(), 2);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"epoch\":0}\n{\"epoch\":1}\n");
        let missing = read_config::<serde_json::Value>(dir.path(), "search").unwrap_err();
        assert!(missing.to_string().contains("no search to resume"));
    }
}
