//! The run directory that search and training share: how a run claims it (new, forced over an
//! old run, or resumed), its config file, its metrics lines (appended per epoch, cut back to the
//! last checkpoint on resume), its TensorBoard folder, and the progress bars its epochs draw.
//! In a data-parallel run only rank 0 writes here. [`metrics`] holds the types of the metrics
//! lines.
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::dist::DataParallel;
use crate::error::{Error, Result};

pub mod metrics;

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

/// Writes the run's config atomically.
pub fn write_config(run_dir: &Path, config: &impl Serialize) -> Result<()> {
    let json = serde_json::to_string_pretty(config)
        .map_err(|e| Error::Internal(format!("writing {CONFIG}: {e}")))?;
    crate::util::write_atomic(&run_dir.join(CONFIG), json.as_bytes())
}

/// Makes `run_dir` ready for a new run: refuses one that holds another run (any of `files`)
/// unless `start` is [`StartMode::Force`], which removes those files, `dirs` (a trailing `*`
/// matches a prefix, e.g. `stage-*`) and the TensorBoard folder.
pub fn claim(run_dir: &Path, start: StartMode, files: &[&str], dirs: &[&str]) -> Result<()> {
    let occupied = files.iter().any(|f| run_dir.join(f).exists());
    if occupied && start == StartMode::New {
        return Err(Error::BadOption(format!(
            "{} holds another run: use --resume to continue it or --force to start over",
            run_dir.display()
        )));
    }
    std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
    if !occupied && start != StartMode::Force {
        return Ok(());
    }
    for f in files {
        let _ = std::fs::remove_file(run_dir.join(f));
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
