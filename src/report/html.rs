//! `cnas report`: one self-contained HTML page for a search or training run.
//!
//! Everything is inline (styles, SVG plots, cell drawings): the page opens offline and can be
//! mailed as one file. A search run (config.json with a `search` key) gets its curves with the
//! curriculum stages shaded, every stage's derived cells and the final genotype measured in the
//! paper's CIFAR network (36 channels × 20 cells); a training run (config.json with
//! `"kind": "train"`) gets its curves, its network's size and, when eval.json exists, the
//! confusion matrix.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tch::Device;

use super::plot::{confusion_svg, line_chart, Band, Series};
use super::ArchInfo;
use crate::draw::{genotype_svg, Cells, Layout};
use crate::error::{Error, Result};
use crate::model::{NetworkConfig, NetworkKind};
use crate::run;
use crate::run::metrics::{
    self, ControllerEpoch, DeriveSummary, EpochMetrics, RandomRound, SearchLine, SearchRecord, WeightsEpoch,
};
use crate::space::Genotype;

/// The metrics lines of a run, by kind of run.
enum Metrics {
    Search(Vec<SearchLine>),
    Train(Vec<EpochMetrics>),
}

impl Metrics {
    fn len(&self) -> usize {
        match self {
            Metrics::Search(lines) => lines.len(),
            Metrics::Train(lines) => lines.len(),
        }
    }
}

/// What a run directory holds, read and checked.
struct Run {
    dir: PathBuf,
    config: Value,
    metrics: Metrics,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::bad_file(path, format!("not valid JSON: {e}")))
}

fn read_run(dir: &Path) -> Result<Run> {
    if !dir.is_dir() {
        return Err(Error::bad_file(dir, "not a run directory"));
    }
    let config_path = dir.join(run::CONFIG);
    if !config_path.is_file() {
        return Err(Error::bad_file(dir, "not a cnas run (config.json is missing)"));
    }
    let config = read_json(&config_path)?;
    let metrics_path = dir.join(run::METRICS);
    let metrics = if config.get("kind").and_then(Value::as_str) == Some("train") {
        Metrics::Train(metrics::read_lines(&metrics_path)?)
    } else if config.get("search").is_some() {
        Metrics::Search(metrics::read_lines(&metrics_path)?)
    } else {
        return Err(Error::bad_file(&config_path, "neither a search nor a training run configuration"));
    };
    if metrics.len() == 0 {
        return Err(Error::bad_file(dir, "no metrics yet (metrics.jsonl is missing or empty)"));
    }
    Ok(Run { dir: dir.to_path_buf(), config, metrics })
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// A fraction as a percentage, or a dash.
pub(super) fn pct(v: Option<f64>) -> String {
    v.map(|v| format!("{:.2}%", v * 100.0)).unwrap_or_else(|| "—".into())
}

pub(super) fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A chart wrapped in a figure (nothing when no series has a point).
pub(super) fn figure(
    out: &mut String,
    title: &str,
    x_desc: &str,
    series: &[Series],
    bands: &[Band],
) -> Result<()> {
    if let Some(svg) = line_chart(title, x_desc, series, bands)? {
        let _ = writeln!(out, "<figure class=\"plot\" data-plot=\"{}\">{svg}</figure>", escape(title));
    }
    Ok(())
}

/// The points `(x, y(record))` of `records` whose y is a finite number.
fn series<T>(label: &str, records: &[(f64, &T)], y: impl Fn(&T) -> Option<f64>) -> Series {
    let mut s = Series::new(label);
    s.points = records.iter().filter_map(|(x, r)| y(r).filter(|y| y.is_finite()).map(|y| (*x, y))).collect();
    s
}

/// A curriculum stage as the metrics show it: its number, its first and last x, its
/// operations and searched nodes.
struct StageSpan {
    stage: usize,
    first: f64,
    last: f64,
    ops: Vec<String>,
    nodes: usize,
}

/// The search's lines by phase, each at its x, and the stages they cover. x counts epochs and
/// derives over all stages (a controller line sits at the epoch it follows), as the TensorBoard
/// scalars' step does.
#[derive(Default)]
struct SearchPoints<'a> {
    warmup: Vec<(f64, &'a WeightsEpoch)>,
    weights: Vec<(f64, &'a WeightsEpoch)>,
    controller: Vec<(f64, &'a ControllerEpoch)>,
    derive: Vec<(f64, &'a DeriveSummary)>,
    random: Vec<(f64, &'a RandomRound)>,
    stages: Vec<StageSpan>,
}

impl<'a> SearchPoints<'a> {
    fn new(lines: &'a [SearchLine]) -> Self {
        let mut points = SearchPoints::default();
        let mut x = 0.0;
        for line in lines {
            match &line.record {
                SearchRecord::Warmup(r) => {
                    x += 1.0;
                    points.warmup.push((x, r));
                }
                SearchRecord::Weights(r) => {
                    x += 1.0;
                    points.weights.push((x, r));
                }
                SearchRecord::Derive(r) => {
                    x += 1.0;
                    points.derive.push((x, r));
                }
                SearchRecord::Random(r) => {
                    x += 1.0;
                    points.random.push((x, r));
                }
                SearchRecord::Controller(r) => points.controller.push((x, r)),
            }
            match points.stages.last_mut() {
                Some(last) if last.stage == line.stage => last.last = x,
                _ => points.stages.push(StageSpan {
                    stage: line.stage,
                    first: x,
                    last: x,
                    ops: line.ops.clone(),
                    nodes: line.nodes,
                }),
            }
        }
        points
    }
}

/// The search's curves, with the stages shaded; returns the stages.
fn search_curves(out: &mut String, lines: &[SearchLine]) -> Result<Vec<StageSpan>> {
    let p = SearchPoints::new(lines);
    let bands: Vec<Band> = p
        .stages
        .iter()
        .map(|s| Band { start: s.first - 0.5, end: s.last + 0.5, label: format!("S{}", s.stage) })
        .collect();
    let x = "epoch (all stages, derives included)";
    let mut supernet = p.warmup.clone();
    supernet.extend_from_slice(&p.weights);
    supernet.sort_by(|a, b| a.0.total_cmp(&b.0));
    let loss = |r: &WeightsEpoch| Some(r.loss);
    figure(
        out,
        "supernet loss",
        x,
        &[series("warm-up", &p.warmup, loss), series("search", &p.weights, loss)],
        &bands,
    )?;
    let accuracy = [
        series("supernet (train)", &supernet, |r| Some(r.acc)),
        series("best candidate", &p.derive, |r| Some(r.best_score)),
        series("controller samples", &p.derive, |r| Some(r.controller_mean)),
        series("uniform samples", &p.derive, |r| r.uniform_mean),
        series("random round mean", &p.random, |r| Some(r.mean)),
        series("random best so far", &p.random, |r| Some(r.best_so_far)),
    ];
    figure(out, "accuracy", x, &accuracy, &bands)?;
    let reward = [
        series("reward", &p.controller, |r| Some(r.reward)),
        series("baseline", &p.controller, |r| r.baseline),
    ];
    figure(out, "controller reward and baseline", x, &reward, &bands)?;
    let entropy = [
        series("nodes", &p.controller, |r| Some(r.node_entropy)),
        series("operations", &p.controller, |r| Some(r.op_entropy)),
    ];
    figure(out, "controller entropy", x, &entropy, &bands)?;
    figure(out, "weights learning rate", x, &[series("SGD", &supernet, |r| Some(r.lr))], &bands)?;
    let adam = [series("Adam", &p.controller, |r| Some(r.controller_lr))];
    figure(out, "controller learning rate", x, &adam, &bands)?;
    let speed = [
        series("weights", &supernet, |r| Some(r.images_per_s)),
        series("controller", &p.controller, |r| Some(r.images_per_s)),
        series("random scoring", &p.random, |r| Some(r.images_per_s)),
    ];
    figure(out, "images/s", x, &speed, &bands)?;
    Ok(p.stages)
}

fn train_curves(out: &mut String, metrics: &[EpochMetrics]) -> Result<()> {
    let lines: Vec<(f64, &EpochMetrics)> = metrics.iter().map(|m| (m.epoch as f64, m)).collect();
    let x = "epoch";
    let pct = |label: &str, y: fn(&EpochMetrics) -> Option<f64>| {
        series(label, &lines, move |m| y(m).map(|v| v * 100.0))
    };
    let loss =
        [series("train", &lines, |m| Some(m.train_loss)), series("validation", &lines, |m| m.val_loss)];
    figure(out, "loss", x, &loss, &[])?;
    let top1 = [pct("train", |m| Some(m.train_top1)), pct("validation", |m| m.val_top1)];
    figure(out, "top-1 accuracy (%)", x, &top1, &[])?;
    let top5 = [pct("train", |m| Some(m.train_top5)), pct("validation", |m| m.val_top5)];
    figure(out, "top-5 accuracy (%)", x, &top5, &[])?;
    figure(out, "learning rate", x, &[series("lr", &lines, |m| Some(m.lr))], &[])?;
    figure(out, "drop-path probability", x, &[series("drop path", &lines, |m| Some(m.drop_path_prob))], &[])?;
    figure(out, "images/s", x, &[series("train", &lines, |m| Some(m.images_per_sec))], &[])?;
    Ok(())
}

/// A genotype drawn inline, with its DARTS text.
pub(super) fn cells_block(out: &mut String, genotype: &Genotype, title: &str, layout: Layout) -> Result<()> {
    let svg = genotype_svg(genotype, Cells::Both, layout, None)?;
    let _ = writeln!(
        out,
        "<figure class=\"cells\" data-cells=\"{}\">{svg}<figcaption><code>{}</code></figcaption></figure>",
        escape(title),
        escape(&genotype.to_darts_string())
    );
    Ok(())
}

pub(super) fn read_genotype(path: &Path) -> Result<Genotype> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Genotype::parse_any(&text).map_err(|e| Error::bad_file(path, e.to_string()))
}

fn size_table(out: &mut String, info: &ArchInfo, note: &str) {
    let n = &info.network;
    let family = match n.kind {
        NetworkKind::Cifar => "CIFAR",
        NetworkKind::Imagenet => "ImageNet",
    };
    let _ = writeln!(
        out,
        "<table class=\"kv\"><tr><th>network</th><td>{family}, {} channels, {} cells, {} classes ({})</td></tr>\
         <tr><th>parameters</th><td>{:.2} M (auxiliary head excluded; {:.2} M with it)</td></tr>\
         <tr><th>multiply-adds</th><td>{:.1} M per {}×{} image</td></tr></table>",
        n.init_channels,
        n.layers,
        n.num_classes,
        escape(note),
        info.params_m,
        info.profile.params_total as f64 / 1e6,
        info.madds_m,
        info.profile.image_size,
        info.profile.image_size
    );
}

pub(super) const STYLE: &str =
    "body{font-family:sans-serif;margin:24px auto;max-width:1260px;color:#222;padding:0 12px}\
h1{font-size:24px}h2{font-size:19px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}\
h3{font-size:16px;margin:18px 0 6px}\
.plots{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0}figure.plot svg{border:1px solid #e6e6e6}\
figure.cells{overflow-x:auto;margin-bottom:10px}figure.cells svg{max-width:100%;height:auto}\
figcaption{font-size:12px;color:#555;margin-top:4px;word-break:break-all}\
pre{background:#f6f6f6;padding:10px;font-size:12px;max-height:420px;overflow:auto}\
table{border-collapse:collapse;font-size:14px}th,td{border:1px solid #ddd;padding:4px 8px;text-align:left}\
th{background:#f4f4f4}.muted{color:#777}";

/// The report of the run in `dir` as an HTML document. `device` builds the networks that are
/// measured (parameters, multiply-adds).
pub fn render(dir: &Path, layout: Layout, device: Device) -> Result<String> {
    let run = read_run(dir)?;
    let mut body = String::new();
    let title = match run.metrics {
        Metrics::Search(_) => "search run",
        Metrics::Train(_) => "training run",
    };
    let _ = writeln!(body, "<h1>cnas {title}: {}</h1>", escape(&run.dir.display().to_string()));
    let _ = writeln!(body, "<p class=\"muted\">{} metric lines.</p>", run.metrics.len());
    match &run.metrics {
        Metrics::Search(lines) => {
            let _ = writeln!(body, "<h2>Curves</h2>\n<div class=\"plots\">");
            let stages = search_curves(&mut body, lines)?;
            let _ = writeln!(body, "</div>");
            search_sections(&mut body, &run, &stages, layout, device)?;
        }
        Metrics::Train(lines) => {
            let _ = writeln!(body, "<h2>Curves</h2>\n<div class=\"plots\">");
            train_curves(&mut body, lines)?;
            let _ = writeln!(body, "</div>");
            train_sections(&mut body, &run, lines, layout, device)?;
        }
    }

    let config = serde_json::to_string_pretty(&run.config).unwrap_or_default();
    let _ = writeln!(body, "<h2>Configuration</h2>\n<pre>{}</pre>", escape(&config));
    Ok(format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>cnas {title}: {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n",
        escape(&run.dir.display().to_string())
    ))
}

fn search_sections(
    body: &mut String,
    run: &Run,
    stages: &[StageSpan],
    layout: Layout,
    device: Device,
) -> Result<()> {
    let final_path = run.dir.join("genotype.json");
    let _ = writeln!(body, "<h2>Final genotype</h2>");
    if final_path.is_file() {
        let genotype = read_genotype(&final_path)?;
        cells_block(body, &genotype, "final", layout)?;
        let info = ArchInfo::measure("final", NetworkConfig::paper(NetworkKind::Cifar, genotype), device)?;
        size_table(body, &info, "the paper's evaluation network");
    } else {
        let _ = writeln!(body, "<p class=\"muted\">The search has not finished: no genotype.json yet.</p>");
    }

    let _ = writeln!(body, "<h2>Stages</h2>");
    let _ = writeln!(
        body,
        "<table><tr><th>stage</th><th>operations</th><th>searched nodes</th><th>best held-out score</th></tr>"
    );
    for StageSpan { stage, ops, nodes, .. } in stages {
        let score = read_json(&run.dir.join(format!("stage-{stage}/candidates.json")))
            .ok()
            .and_then(|c| {
                c.as_array()?
                    .iter()
                    .filter_map(|c| num(c, "score"))
                    .fold(None, |m: Option<f64>, s| Some(m.map_or(s, |m| m.max(s))))
            })
            .map(|s| format!("{:.2}%", s * 100.0))
            .unwrap_or_else(|| "—".into());
        let _ = writeln!(
            body,
            "<tr><td>{stage}</td><td>{}</td><td>{nodes}</td><td>{score}</td></tr>",
            escape(&ops.join(", "))
        );
    }
    let _ = writeln!(body, "</table>");
    for (i, StageSpan { stage, ops, nodes, .. }) in stages.iter().enumerate() {
        let path = run.dir.join(format!("stage-{stage}/genotype.json"));
        if path.is_file() {
            // What this stage brought: an operation (op curriculum) or searched nodes (node).
            let added: Vec<&String> = match i.checked_sub(1).map(|p| &stages[p].ops) {
                Some(previous) => ops.iter().filter(|o| !previous.contains(o)).collect(),
                None if ops.len() == 1 => ops.iter().collect(),
                None => Vec::new(),
            };
            let what = match added.as_slice() {
                [] => format!("{nodes} searched node{}", if *nodes == 1 { "" } else { "s" }),
                added => format!("+{}", added.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", +")),
            };
            let _ = writeln!(body, "<h3>Stage {stage} ({})</h3>", escape(&what));
            cells_block(body, &read_genotype(&path)?, &format!("stage-{stage}"), layout)?;
        }
    }
    Ok(())
}

fn train_sections(
    body: &mut String,
    run: &Run,
    metrics: &[EpochMetrics],
    layout: Layout,
    device: Device,
) -> Result<()> {
    let _ = writeln!(body, "<h2>Network</h2>");
    let network = run.config.get("network").cloned().map(serde_json::from_value::<NetworkConfig>);
    match network {
        Some(Ok(network)) => {
            cells_block(body, &network.genotype, "network", layout)?;
            let name = run.config.get("arch").and_then(Value::as_str).unwrap_or("network").to_string();
            let info = ArchInfo::measure(name, network, device)?;
            size_table(body, &info, "this run's network");
        }
        Some(Err(e)) => {
            return Err(Error::bad_file(run.dir.join("config.json"), format!("bad network description: {e}")))
        }
        None => {
            let _ = writeln!(body, "<p class=\"muted\">config.json describes no network.</p>");
        }
    }
    let best = metrics
        .iter()
        .filter_map(|m| m.val_top1)
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    let last = metrics.last();
    let _ = writeln!(
        body,
        "<table class=\"kv\"><tr><th>epochs</th><td>{}</td></tr><tr><th>last train top-1</th><td>{}</td></tr>\
         <tr><th>last validation top-1</th><td>{}</td></tr><tr><th>best validation top-1</th><td>{}</td></tr></table>",
        metrics.len(),
        pct(last.map(|m| m.train_top1)),
        pct(last.and_then(|m| m.val_top1)),
        pct(best)
    );

    eval_section(body, &run.dir.join("eval.json"))
}

/// The evaluation's numbers, confusion matrix and per-class accuracy, when eval.json exists.
fn eval_section(body: &mut String, eval_path: &Path) -> Result<()> {
    if eval_path.is_file() {
        let eval = read_json(eval_path)?;
        let bad = |m: &str| Error::bad_file(eval_path, m.to_string());
        let names: Vec<String> = eval
            .get("class_names")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|n| n.as_str().unwrap_or("?").to_string()).collect())
            .unwrap_or_default();
        let confusion: Vec<Vec<u64>> = eval
            .get("confusion")
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| bad(&format!("bad confusion matrix: {e}")))?
            .ok_or_else(|| bad("no confusion matrix"))?;
        if confusion.iter().any(|row| row.len() != confusion.len()) {
            return Err(bad("the confusion matrix is not square"));
        }
        let _ = writeln!(body, "<h2>Evaluation</h2>");
        let _ = writeln!(
            body,
            "<table class=\"kv\"><tr><th>top-1</th><td>{}</td></tr><tr><th>top-5</th><td>{}</td></tr>\
             <tr><th>loss</th><td>{}</td></tr><tr><th>images</th><td>{}</td></tr></table>",
            pct(num(&eval, "top1")),
            pct(num(&eval, "top5")),
            num(&eval, "loss").map(|l| format!("{l:.4}")).unwrap_or_else(|| "—".into()),
            eval.get("images").and_then(Value::as_u64).map(|n| n.to_string()).unwrap_or_else(|| "—".into())
        );
        let _ = writeln!(
            body,
            "<h3>Confusion matrix</h3>\n<figure class=\"confusion\">{}</figure>",
            confusion_svg(&names, &confusion)
        );
        if let Some(per_class) = eval.get("per_class_accuracy").and_then(Value::as_array) {
            let _ =
                writeln!(body, "<h3>Per-class accuracy</h3>\n<table><tr><th>class</th><th>top-1</th></tr>");
            for (i, acc) in per_class.iter().enumerate() {
                let name = names.get(i).cloned().unwrap_or_else(|| i.to_string());
                let _ = writeln!(body, "<tr><td>{}</td><td>{}</td></tr>", escape(&name), pct(acc.as_f64()));
            }
            let _ = writeln!(body, "</table>");
        }
    }
    Ok(())
}

/// `cnas report`: writes the report of the run in `dir` to `out`.
pub fn write_report(dir: &Path, out: &Path, layout: Layout, device: Device) -> Result<()> {
    let html = render(dir, layout, device)?;
    std::fs::write(out, html).map_err(|e| Error::io(out, e))
}
