//! `cnas compare`: many search and training runs side by side, as a NAS comparison needs them.
//!
//! Each search run gives a row: its mode and seed, what it spent (weight-training images,
//! held-out images, seconds), the held-out score of its final genotype, and the final test
//! top-1 of every training run of that genotype. Per mode, the mean and standard deviation
//! over its runs (seeds). A training run belongs to a search when the genotype file it was
//! started from (`--arch`, recorded in its config.json) lies in the search's directory, or,
//! for runs that do not record one, when its genotype is the search's final genotype.
//!
//! The retrained figure is the *final* network's test top-1 (eval.json), never the best epoch's:
//! picking the best epoch on the test split would select on it.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::html::{cells_block, escape, figure, pct, read_genotype, STYLE};
use super::plot::Series;
use crate::draw::Layout;
use crate::error::{Error, Result};
use crate::run::metrics::{self, EpochMetrics, SearchLine, SearchRecord};
use crate::run::{self, CONFIG, METRICS};
use crate::search::RunConfig;
use crate::space::Genotype;
use crate::train::TrainConfig;

/// A mean and a sample standard deviation (n - 1) over `n` values; `None` where undefined.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub n: usize,
    pub mean: Option<f64>,
    pub std: Option<f64>,
}

impl Spread {
    pub fn of(values: &[f64]) -> Self {
        let n = values.len();
        let mean = (n > 0).then(|| values.iter().sum::<f64>() / n as f64);
        let std = mean.filter(|_| n > 1).map(|m| {
            let ss: f64 = values.iter().map(|v| (v - m) * (v - m)).sum();
            (ss / (n - 1) as f64).sqrt()
        });
        Spread { n, mean, std }
    }
}

/// One search run.
#[derive(Debug, Clone, Serialize)]
pub struct SearchRow {
    pub run: PathBuf,
    pub mode: String,
    pub seed: u64,
    /// Whether the search has written its final genotype.
    pub finished: bool,
    pub stages: usize,
    /// Images the supernet was trained on (all stages, warm-up included, every rank).
    pub weight_images: u64,
    /// Held-out images the search plans to put through the supernet to choose its genotype
    /// (REINFORCE batches and scored candidates; config.json's budget), when recorded.
    pub heldout_images: Option<u64>,
    /// Seconds of all its epochs, derives and rounds.
    pub seconds: f64,
    /// The held-out score of the final genotype and its standard error.
    pub score: Option<f64>,
    pub score_std_error: Option<f64>,
    /// The final genotype, as DARTS text.
    pub genotype: Option<String>,
    /// Final test top-1 of each training run of the final genotype, and those runs.
    pub retrained_top1: Vec<f64>,
    pub retrained_runs: Vec<PathBuf>,
    #[serde(skip)]
    dir: PathBuf,
    #[serde(skip)]
    final_genotype: Option<Genotype>,
    #[serde(skip)]
    lines: Vec<SearchLine>,
}

/// One training run.
#[derive(Debug, Clone, Serialize)]
pub struct TrainingRow {
    pub run: PathBuf,
    /// What `--arch` named.
    pub arch: String,
    /// The search it came from, and how that was found ("arch file" or "genotype").
    pub search: Option<PathBuf>,
    pub matched_by: Option<String>,
    /// Whether its genotype is that search's final genotype (not a stage's or a candidate's).
    pub final_genotype: bool,
    pub epochs: usize,
    pub finished: bool,
    /// Test images of its final evaluation.
    pub test_images: Option<usize>,
    /// The final network's test top-1 (eval.json, or the last epoch's validation).
    pub final_top1: Option<f64>,
    /// The best epoch's (selected on the test split: shown, not compared).
    pub best_top1: Option<f64>,
    pub seconds: f64,
    #[serde(skip)]
    lines: Vec<EpochMetrics>,
}

/// One mode over its runs.
#[derive(Debug, Clone, Serialize)]
pub struct ModeSummary {
    pub mode: String,
    pub searches: usize,
    pub score: Spread,
    /// Over searches with at least one training run of their genotype (each search counts
    /// once, with the mean of its runs).
    pub retrained_top1: Spread,
    pub seconds: Spread,
    pub images: Spread,
}

/// What `cnas compare` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub searches: Vec<SearchRow>,
    pub trainings: Vec<TrainingRow>,
    pub modes: Vec<ModeSummary>,
}

/// The numbers of eval.json that a comparison needs.
#[derive(Deserialize)]
struct EvalNumbers {
    top1: f64,
    images: usize,
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// A path made absolute and free of `..` and links where it exists (else as it is).
fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

enum Loaded {
    Search(SearchRow),
    Training(TrainingRow, Genotype, Option<PathBuf>),
}

fn load(dir: &Path) -> Result<Loaded> {
    if !dir.is_dir() {
        return Err(Error::bad_file(dir, "not a run directory"));
    }
    let config_path = dir.join(CONFIG);
    if !config_path.is_file() {
        return Err(Error::bad_file(dir, "not a cnas run (config.json is missing)"));
    }
    let value: serde_json::Value = serde_json::from_str(&read_text(&config_path)?)
        .map_err(|e| Error::bad_file(&config_path, format!("not valid JSON: {e}")))?;
    if value.get("kind").and_then(serde_json::Value::as_str) == Some("train") {
        let config: TrainConfig = run::read_config(dir, "training run")?;
        load_training(dir, config).map(|(row, g, file)| Loaded::Training(row, g, file))
    } else if value.get("search").is_some() {
        let config: RunConfig = run::read_config(dir, "search run")?;
        load_search(dir, config).map(Loaded::Search)
    } else {
        Err(Error::bad_file(&config_path, "neither a search nor a training run configuration"))
    }
}

fn load_search(dir: &Path, config: RunConfig) -> Result<SearchRow> {
    let lines: Vec<SearchLine> = metrics::read_lines(&dir.join(METRICS))?;
    let mut weight_images = 0u64;
    let mut seconds = 0.0;
    let mut last_derive = None;
    for line in &lines {
        match &line.record {
            SearchRecord::Warmup(r) | SearchRecord::Weights(r) => weight_images += r.images as u64,
            SearchRecord::Derive(r) => last_derive = Some(r),
            _ => {}
        }
        // A line that did not time itself (random mode's closing derive) adds nothing.
        let time_s = line.record.time_s();
        if time_s.is_finite() {
            seconds += time_s;
        }
    }
    let genotype_path = dir.join("genotype.json");
    let final_genotype = if genotype_path.is_file() { Some(read_genotype(&genotype_path)?) } else { None };
    let finished = final_genotype.is_some();
    // The final genotype is the last derive's best (its score is the one to show).
    let (score, score_std_error) = match (last_derive, finished) {
        (Some(d), true) => (Some(d.best_score), Some(d.best_std_error)),
        _ => (None, None),
    };
    Ok(SearchRow {
        run: dir.to_path_buf(),
        mode: serde_json::to_value(config.search.mode)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        seed: config.search.seed,
        finished,
        stages: lines.iter().map(|l| l.stage).max().unwrap_or(0),
        weight_images,
        heldout_images: config.budget.map(|b| b.heldout_images as u64),
        seconds,
        score,
        score_std_error,
        genotype: final_genotype.as_ref().map(Genotype::to_darts_string),
        retrained_top1: Vec::new(),
        retrained_runs: Vec::new(),
        dir: canonical(dir),
        final_genotype,
        lines,
    })
}

fn load_training(dir: &Path, config: TrainConfig) -> Result<(TrainingRow, Genotype, Option<PathBuf>)> {
    let lines: Vec<EpochMetrics> = metrics::read_lines(&dir.join(METRICS))?;
    let eval_path = dir.join("eval.json");
    let eval: Option<EvalNumbers> = if eval_path.is_file() {
        Some(
            serde_json::from_str(&read_text(&eval_path)?)
                .map_err(|e| Error::bad_file(&eval_path, format!("not a cnas evaluation: {e}")))?,
        )
    } else {
        None
    };
    let last_val = lines.iter().rev().find(|m| m.val_top1.is_some());
    let finished = eval.is_some();
    let (final_top1, test_images) = match &eval {
        Some(e) => (Some(e.top1), Some(e.images)),
        None => (last_val.and_then(|m| m.val_top1), last_val.and_then(|m| m.val_images)),
    };
    let best_top1 = lines
        .iter()
        .filter_map(|m| m.val_top1)
        .fold(None, |b: Option<f64>, v| Some(b.map_or(v, |b| b.max(v))));
    // Where the genotype came from: recorded by this cnas; for older runs, the --arch text
    // when it still names a file.
    let source = config
        .arch_file
        .clone()
        .or_else(|| Some(PathBuf::from(&config.arch)).filter(|p| p.is_file()))
        .map(|p| canonical(&p));
    let row = TrainingRow {
        run: dir.to_path_buf(),
        arch: config.arch.clone(),
        search: None,
        matched_by: None,
        final_genotype: false,
        epochs: lines.len(),
        finished,
        test_images,
        final_top1,
        best_top1,
        seconds: lines.iter().map(|m| m.epoch_time_s).filter(|t| t.is_finite()).sum(),
        lines,
    };
    Ok((row, config.network.genotype, source))
}

/// Reads every run in `dirs` (search and training runs, any order; a directory given twice
/// counts once) and puts them side by side.
pub fn compare(dirs: &[PathBuf]) -> Result<Comparison> {
    if dirs.is_empty() {
        return Err(Error::BadOption("cnas compare needs at least one run directory".into()));
    }
    let mut searches: Vec<SearchRow> = Vec::new();
    let mut trainings: Vec<(TrainingRow, Genotype, Option<PathBuf>)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for dir in dirs {
        if !seen.insert(canonical(dir)) {
            continue;
        }
        match load(dir)? {
            Loaded::Search(row) => searches.push(row),
            Loaded::Training(row, genotype, source) => trainings.push((row, genotype, source)),
        }
    }
    let mut rows = Vec::with_capacity(trainings.len());
    for (mut row, genotype, source) in trainings {
        // By the file it was started from: the search directory holding it (its genotype.json
        // or a stage's, or any file the user wrote there).
        let by_file = source
            .as_ref()
            .and_then(|file| searches.iter().position(|s| file.starts_with(&s.dir)))
            .map(|i| (i, "arch file"));
        // Else by genotype, when exactly one search ended with it.
        let by_genotype = || {
            let same: Vec<usize> = (0..searches.len())
                .filter(|&i| searches[i].final_genotype.as_ref() == Some(&genotype))
                .collect();
            (same.len() == 1).then(|| (same[0], "genotype"))
        };
        if let Some((i, how)) = by_file.or_else(by_genotype) {
            let search = &mut searches[i];
            row.search = Some(search.run.clone());
            row.matched_by = Some(how.to_string());
            row.final_genotype = search.final_genotype.as_ref() == Some(&genotype);
            // An unfinished training is listed, not counted.
            if row.final_genotype && row.finished {
                if let Some(top1) = row.final_top1 {
                    search.retrained_top1.push(top1);
                    search.retrained_runs.push(row.run.clone());
                }
            }
        }
        rows.push(row);
    }

    let mut by_mode: BTreeMap<(usize, String), Vec<&SearchRow>> = BTreeMap::new();
    for s in &searches {
        by_mode.entry((mode_rank(&s.mode), s.mode.clone())).or_default().push(s);
    }
    let modes = by_mode
        .into_iter()
        .map(|((_, mode), runs)| {
            let finished: Vec<&&SearchRow> = runs.iter().filter(|s| s.finished).collect();
            let retrained: Vec<f64> = finished
                .iter()
                .filter(|s| !s.retrained_top1.is_empty())
                .map(|s| s.retrained_top1.iter().sum::<f64>() / s.retrained_top1.len() as f64)
                .collect();
            ModeSummary {
                mode,
                searches: runs.len(),
                score: Spread::of(&finished.iter().filter_map(|s| s.score).collect::<Vec<_>>()),
                retrained_top1: Spread::of(&retrained),
                seconds: Spread::of(&finished.iter().map(|s| s.seconds).collect::<Vec<_>>()),
                images: Spread::of(
                    &finished
                        .iter()
                        .filter_map(|s| s.heldout_images.map(|h| (s.weight_images + h) as f64))
                        .collect::<Vec<_>>(),
                ),
            }
        })
        .collect();
    Ok(Comparison { searches, trainings: rows, modes })
}

/// The curriculum modes first, in the paper's order, then the baselines.
fn mode_rank(mode: &str) -> usize {
    ["op", "node", "fixed", "random"].iter().position(|m| *m == mode).unwrap_or(4)
}

/// `mean ± std` in percent, with n when `with_n`.
fn pct_spread(s: &Spread, with_n: bool) -> String {
    let body = match (s.mean, s.std) {
        (Some(m), Some(d)) => format!("{:.2} ± {:.2}%", m * 100.0, d * 100.0),
        (Some(m), None) => format!("{:.2}%", m * 100.0),
        _ => return "—".into(),
    };
    if with_n {
        format!("{body} (n={})", s.n)
    } else {
        body
    }
}

fn minutes(seconds: f64) -> String {
    format!("{:.1} min", seconds / 60.0)
}

/// An integer with thousands separators.
fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl SearchRow {
    fn cells(&self) -> [String; 9] {
        let score = match (self.score, self.score_std_error) {
            (Some(s), Some(e)) => format!("{:.2} ± {:.2}%", s * 100.0, e * 100.0),
            (s, _) => pct(s),
        };
        let retrained = if self.retrained_top1.is_empty() {
            "—".into()
        } else {
            self.retrained_top1.iter().map(|v| format!("{:.2}%", v * 100.0)).collect::<Vec<_>>().join(", ")
        };
        let state = if self.finished { String::new() } else { " (unfinished)".into() };
        [
            self.run.display().to_string(),
            format!("{}{state}", self.mode),
            self.seed.to_string(),
            self.stages.to_string(),
            count(self.weight_images),
            self.heldout_images.map(count).unwrap_or_else(|| "—".into()),
            minutes(self.seconds),
            score,
            retrained,
        ]
    }
}

const SEARCH_HEAD: [&str; 9] = [
    "run",
    "mode",
    "seed",
    "stages",
    "weight images",
    "held-out images",
    "search time",
    "held-out score ± s.e.",
    "retrained test top-1",
];
const MODE_HEAD: [&str; 5] = ["mode", "searches", "held-out score", "retrained test top-1", "search time"];
const TRAIN_HEAD: [&str; 8] = [
    "run",
    "arch",
    "from search",
    "its final genotype",
    "epochs",
    "test images",
    "final test top-1",
    "best epoch's",
];

impl ModeSummary {
    fn cells(&self) -> [String; 5] {
        let time = match (self.seconds.mean, self.seconds.std) {
            (Some(m), Some(d)) => format!("{:.1} ± {:.1} min", m / 60.0, d / 60.0),
            (Some(m), None) => minutes(m),
            _ => "—".into(),
        };
        [
            self.mode.clone(),
            self.searches.to_string(),
            pct_spread(&self.score, false),
            pct_spread(&self.retrained_top1, true),
            time,
        ]
    }
}

impl TrainingRow {
    /// Test top-1 (%) per validated epoch.
    fn test_curve(&self) -> Vec<(f64, f64)> {
        self.lines.iter().filter_map(|m| m.val_top1.map(|v| (m.epoch as f64, v * 100.0))).collect()
    }

    fn cells(&self) -> [String; 8] {
        let state = if self.finished { "" } else { " (unfinished)" };
        [
            format!("{}{state}", self.run.display()),
            self.arch.clone(),
            self.search
                .as_ref()
                .map(|s| format!("{} (by {})", s.display(), self.matched_by.as_deref().unwrap_or("?")))
                .unwrap_or_else(|| "—".into()),
            if self.search.is_none() {
                "—"
            } else if self.final_genotype {
                "yes"
            } else {
                "no"
            }
            .into(),
            self.epochs.to_string(),
            self.test_images.map(|n| count(n as u64)).unwrap_or_else(|| "—".into()),
            pct(self.final_top1),
            pct(self.best_top1),
        ]
    }
}

fn markdown_table(out: &mut String, head: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let cell = |s: &str| s.replace('|', "\\|");
    let _ = writeln!(out, "| {} |", head.iter().map(|h| cell(h)).collect::<Vec<_>>().join(" | "));
    let _ = writeln!(out, "|{}", " --- |".repeat(head.len()));
    for row in rows {
        let _ = writeln!(out, "| {} |", row.iter().map(|c| cell(c)).collect::<Vec<_>>().join(" | "));
    }
}

impl Comparison {
    /// The tables as Markdown (what `cnas compare` prints).
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        if !self.searches.is_empty() {
            let _ = writeln!(out, "Searches:\n");
            markdown_table(&mut out, &SEARCH_HEAD, self.searches.iter().map(|s| s.cells().to_vec()));
            let _ =
                writeln!(out, "\nPer mode (mean ± sample standard deviation over its finished searches):\n");
            markdown_table(&mut out, &MODE_HEAD, self.modes.iter().map(|m| m.cells().to_vec()));
        }
        if !self.trainings.is_empty() {
            if !out.is_empty() {
                out.push('\n');
            }
            let _ = writeln!(out, "Training runs:\n");
            markdown_table(&mut out, &TRAIN_HEAD, self.trainings.iter().map(|t| t.cells().to_vec()));
        }
        out
    }

    /// The comparison as one self-contained HTML page, in the look of `cnas report`.
    pub fn html(&self, layout: Layout) -> Result<String> {
        let mut body = String::new();
        let _ = writeln!(
            body,
            "<h1>cnas comparison: {} search run{}, {} training run{}</h1>",
            self.searches.len(),
            plural(self.searches.len()),
            self.trainings.len(),
            plural(self.trainings.len())
        );
        if !self.searches.is_empty() {
            let _ = writeln!(body, "<h2>Per mode</h2>");
            let _ = writeln!(
                body,
                "<p class=\"muted\">Mean ± sample standard deviation over each mode's finished searches; \
                 the retrained figure is each search's final genotype trained from scratch, its final \
                 network's test top-1 (n: searches with a training run).</p>"
            );
            html_table(&mut body, &MODE_HEAD, self.modes.iter().map(|m| m.cells().to_vec()));
            let _ = writeln!(body, "<h2>Searches</h2>");
            html_table(&mut body, &SEARCH_HEAD, self.searches.iter().map(|s| s.cells().to_vec()));
        }
        if !self.trainings.is_empty() {
            let _ = writeln!(body, "<h2>Training runs</h2>");
            html_table(&mut body, &TRAIN_HEAD, self.trainings.iter().map(|t| t.cells().to_vec()));
        }
        self.curves(&mut body)?;
        let finished: Vec<&SearchRow> = self.searches.iter().filter(|s| s.final_genotype.is_some()).collect();
        if !finished.is_empty() {
            let _ = writeln!(body, "<h2>Final cells</h2>");
            for s in finished {
                let title = format!("{} seed {}: {}", s.mode, s.seed, s.run.display());
                let _ = writeln!(body, "<h3>{}</h3>", escape(&title));
                if let Some(g) = &s.final_genotype {
                    cells_block(&mut body, g, &title, layout)?;
                }
            }
        }
        Ok(format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>cnas comparison</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n"
        ))
    }

    /// Per mode, every run's curves overlaid: the supernet's training accuracy and the best
    /// held-out score of each derive or random round (searches), test top-1 per epoch
    /// (training runs of that mode's genotypes).
    fn curves(&self, out: &mut String) -> Result<()> {
        if self.searches.is_empty() && self.trainings.is_empty() {
            return Ok(());
        }
        let _ = writeln!(out, "<h2>Curves</h2>");
        let mut modes: Vec<&str> = Vec::new();
        for s in &self.searches {
            if !modes.contains(&s.mode.as_str()) {
                modes.push(&s.mode);
            }
        }
        modes.sort_by_key(|m| mode_rank(m));
        for mode in &modes {
            let runs: Vec<&SearchRow> = self.searches.iter().filter(|s| s.mode == *mode).collect();
            let label = |s: &SearchRow| format!("seed {}", s.seed);
            let supernet: Vec<Series> = runs
                .iter()
                .map(|s| {
                    let mut series = Series::new(label(s));
                    let epochs = s.lines.iter().filter_map(|l| match &l.record {
                        SearchRecord::Warmup(r) | SearchRecord::Weights(r) => Some(r.acc),
                        _ => None,
                    });
                    series.points = epochs
                        .enumerate()
                        .filter(|(_, a)| a.is_finite())
                        .map(|(i, a)| ((i + 1) as f64, a * 100.0))
                        .collect();
                    series
                })
                .collect();
            let heldout: Vec<Series> = runs
                .iter()
                .map(|s| {
                    // Against the search's time so far: the one axis every mode shares.
                    let mut series = Series::new(label(s));
                    let mut best = f64::NEG_INFINITY;
                    let mut minutes = 0.0;
                    for l in &s.lines {
                        let time_s = l.record.time_s();
                        if time_s.is_finite() {
                            minutes += time_s / 60.0;
                        }
                        match &l.record {
                            SearchRecord::Derive(d) if d.best_score.is_finite() && d.samples > 0 => {
                                series.points.push((minutes, d.best_score * 100.0))
                            }
                            SearchRecord::Random(r) if r.round_best.is_finite() => {
                                best = best.max(r.round_best);
                                series.points.push((minutes, best * 100.0))
                            }
                            _ => {}
                        }
                    }
                    series
                })
                .collect();
            let _ = writeln!(out, "<h3>{}</h3>\n<div class=\"plots\">", escape(mode));
            figure(
                out,
                &format!("{mode}: supernet training top-1 (%)"),
                "weight epoch (all stages)",
                &supernet,
                &[],
            )?;
            figure(
                out,
                &format!("{mode}: best held-out score (%)"),
                "search time (min); derives, or random rounds' best so far",
                &heldout,
                &[],
            )?;
            let trained: Vec<Series> = self
                .trainings
                .iter()
                .filter(|t| t.final_genotype && runs.iter().any(|s| t.search.as_ref() == Some(&s.run)))
                .map(|t| {
                    let seed = runs.iter().find(|s| t.search.as_ref() == Some(&s.run)).map(|s| s.seed);
                    let mut series =
                        Series::new(format!("seed {}: {}", seed.unwrap_or_default(), t.run.display()));
                    series.points = t.test_curve();
                    series
                })
                .collect();
            figure(out, &format!("{mode}: retrained test top-1 (%)"), "epoch", &trained, &[])?;
            let _ = writeln!(out, "</div>");
        }
        // Training runs that belong to no search given (or to a stage's genotype).
        let other: Vec<Series> = self
            .trainings
            .iter()
            .filter(|t| !t.final_genotype)
            .map(|t| {
                let mut series = Series::new(t.run.display().to_string());
                series.points = t.test_curve();
                series
            })
            .collect();
        if other.iter().any(|s| !s.points.is_empty()) {
            let _ = writeln!(out, "<h3>Other training runs</h3>\n<div class=\"plots\">");
            figure(out, "test top-1 (%)", "epoch", &other, &[])?;
            let _ = writeln!(out, "</div>");
        }
        Ok(())
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn html_table(out: &mut String, head: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let _ = write!(out, "<table><tr>");
    for h in head {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    let _ = writeln!(out, "</tr>");
    for row in rows {
        let _ = write!(out, "<tr>");
        for c in row {
            let _ = write!(out, "<td>{}</td>", escape(&c));
        }
        let _ = writeln!(out, "</tr>");
    }
    let _ = writeln!(out, "</table>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_the_sample_mean_and_standard_deviation() {
        let s = Spread::of(&[0.5, 0.7, 0.6]);
        assert_eq!(s.n, 3);
        assert!((s.mean.unwrap() - 0.6).abs() < 1e-12);
        assert!((s.std.unwrap() - 0.1).abs() < 1e-12);
        assert_eq!(Spread::of(&[0.4]), Spread { n: 1, mean: Some(0.4), std: None });
        assert_eq!(Spread::of(&[]), Spread { n: 0, mean: None, std: None });
        assert_eq!(pct_spread(&Spread::of(&[0.5, 0.7, 0.6]), true), "60.00 ± 10.00% (n=3)");
    }

    #[test]
    fn counts_get_thousands_separators() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1234567), "1,234,567");
    }

    #[test]
    fn markdown_cells_cannot_break_the_table() {
        let mut out = String::new();
        markdown_table(&mut out, &["a", "b"], std::iter::once(vec!["x|y".to_string(), "z".to_string()]));
        assert_eq!(out, "| a | b |\n| --- | --- |\n| x\\|y | z |\n");
    }
}
