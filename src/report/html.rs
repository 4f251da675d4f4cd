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
use crate::space::Genotype;

/// The two kinds of run a report covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    Search,
    Train,
}

/// What a run directory holds, read and checked.
struct Run {
    dir: PathBuf,
    kind: RunKind,
    config: Value,
    metrics: Vec<Value>,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::bad_file(path, format!("not valid JSON: {e}")))
}

fn read_run(dir: &Path) -> Result<Run> {
    if !dir.is_dir() {
        return Err(Error::bad_file(dir, "not a run directory"));
    }
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(Error::bad_file(dir, "not a cnas run (config.json is missing)"));
    }
    let config = read_json(&config_path)?;
    let kind = if config.get("kind").and_then(Value::as_str) == Some("train") {
        RunKind::Train
    } else if config.get("search").is_some() {
        RunKind::Search
    } else {
        return Err(Error::bad_file(&config_path, "neither a search nor a training run configuration"));
    };
    let metrics_path = dir.join("metrics.jsonl");
    let text = match std::fs::read_to_string(&metrics_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io(&metrics_path, e)),
    };
    let mut metrics = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let value: Value = serde_json::from_str(line)
            .map_err(|e| Error::bad_file(&metrics_path, format!("line {}: not valid JSON: {e}", i + 1)))?;
        metrics.push(value);
    }
    if metrics.is_empty() {
        return Err(Error::bad_file(dir, "no metrics yet (metrics.jsonl is missing or empty)"));
    }
    Ok(Run { dir: dir.to_path_buf(), kind, config, metrics })
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// A chart wrapped in a figure (nothing when no series has a point).
fn figure(out: &mut String, title: &str, x_desc: &str, series: &[Series], bands: &[Band]) -> Result<()> {
    if let Some(svg) = line_chart(title, x_desc, series, bands)? {
        let _ = writeln!(out, "<figure class=\"plot\" data-plot=\"{}\">{svg}</figure>", escape(title));
    }
    Ok(())
}

/// Points of `key` over the metric lines `lines` (each with its x).
fn series(label: &str, lines: &[(f64, &Value)], key: &str) -> Series {
    let mut s = Series::new(label);
    s.points = lines.iter().filter_map(|(x, v)| num(v, key).map(|y| (*x, y))).collect();
    s
}

/// The search's curves: x counts epochs and derives over all stages (a controller line sits at
/// the epoch it follows), as the TensorBoard scalars' step does.
fn search_curves(out: &mut String, metrics: &[Value]) -> Result<Vec<(usize, Vec<String>, usize)>> {
    let mut step = 0.0;
    let mut weights = Vec::new();
    let mut warmup = Vec::new();
    let mut controller = Vec::new();
    let mut derive = Vec::new();
    let mut stages: Vec<(usize, f64, f64, Vec<String>, usize)> = Vec::new();
    for line in metrics {
        let phase = line.get("phase").and_then(Value::as_str).unwrap_or("");
        if matches!(phase, "warmup" | "weights" | "derive") {
            step += 1.0;
        }
        match phase {
            "warmup" => warmup.push((step, line)),
            "weights" => weights.push((step, line)),
            "controller" => controller.push((step, line)),
            "derive" => derive.push((step, line)),
            _ => {}
        }
        if let Some(stage) = line.get("stage").and_then(Value::as_u64) {
            let stage = stage as usize;
            match stages.last_mut() {
                Some(last) if last.0 == stage => last.2 = step,
                _ => {
                    let ops = line
                        .get("ops")
                        .and_then(Value::as_array)
                        .map(|a| a.iter().filter_map(|o| o.as_str().map(String::from)).collect())
                        .unwrap_or_default();
                    let nodes = line.get("nodes").and_then(Value::as_u64).unwrap_or(0) as usize;
                    stages.push((stage, step, step, ops, nodes));
                }
            }
        }
    }
    let bands: Vec<Band> = stages
        .iter()
        .map(|(stage, first, last, _, _)| Band {
            start: first - 0.5,
            end: last + 0.5,
            label: format!("S{stage}"),
        })
        .collect();
    let x = "epoch (all stages, derives included)";
    let mut supernet = warmup.clone();
    supernet.extend_from_slice(&weights);
    supernet.sort_by(|p, q| p.0.total_cmp(&q.0));
    figure(
        out,
        "supernet loss",
        x,
        &[series("warm-up", &warmup, "loss"), series("search", &weights, "loss")],
        &bands,
    )?;
    figure(
        out,
        "accuracy",
        x,
        &[
            series("supernet (train)", &supernet, "acc"),
            series("best candidate", &derive, "best_score"),
            series("controller samples", &derive, "controller_mean"),
            series("uniform samples", &derive, "uniform_mean"),
        ],
        &bands,
    )?;
    figure(
        out,
        "controller reward and baseline",
        x,
        &[series("reward", &controller, "reward"), series("baseline", &controller, "baseline")],
        &bands,
    )?;
    figure(
        out,
        "controller entropy",
        x,
        &[series("nodes", &controller, "node_entropy"), series("operations", &controller, "op_entropy")],
        &bands,
    )?;
    figure(out, "weights learning rate", x, &[series("SGD", &supernet, "lr")], &bands)?;
    figure(out, "controller learning rate", x, &[series("Adam", &controller, "controller_lr")], &bands)?;
    figure(
        out,
        "images/s",
        x,
        &[series("weights", &supernet, "images_per_s"), series("controller", &controller, "images_per_s")],
        &bands,
    )?;
    Ok(stages.into_iter().map(|(stage, _, _, ops, nodes)| (stage, ops, nodes)).collect())
}

fn train_curves(out: &mut String, metrics: &[Value]) -> Result<()> {
    let lines: Vec<(f64, &Value)> =
        metrics.iter().enumerate().map(|(i, v)| (num(v, "epoch").unwrap_or(i as f64 + 1.0), v)).collect();
    let x = "epoch";
    let pct = |label: &str, key: &str| {
        let mut s = series(label, &lines, key);
        s.points.iter_mut().for_each(|p| p.1 *= 100.0);
        s
    };
    figure(
        out,
        "loss",
        x,
        &[series("train", &lines, "train_loss"), series("validation", &lines, "val_loss")],
        &[],
    )?;
    figure(out, "top-1 accuracy (%)", x, &[pct("train", "train_top1"), pct("validation", "val_top1")], &[])?;
    figure(out, "top-5 accuracy (%)", x, &[pct("train", "train_top5"), pct("validation", "val_top5")], &[])?;
    figure(out, "learning rate", x, &[series("lr", &lines, "lr")], &[])?;
    figure(out, "drop-path probability", x, &[series("drop path", &lines, "drop_path_prob")], &[])?;
    figure(out, "images/s", x, &[series("train", &lines, "images_per_sec")], &[])?;
    Ok(())
}

/// A genotype drawn inline, with its DARTS text.
fn cells_block(out: &mut String, genotype: &Genotype, title: &str, layout: Layout) -> Result<()> {
    let svg = genotype_svg(genotype, Cells::Both, layout, None)?;
    let _ = writeln!(
        out,
        "<figure class=\"cells\" data-cells=\"{}\">{svg}<figcaption><code>{}</code></figcaption></figure>",
        escape(title),
        escape(&genotype.to_darts_string())
    );
    Ok(())
}

fn read_genotype(path: &Path) -> Result<Genotype> {
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

const STYLE: &str =
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
    let title = match run.kind {
        RunKind::Search => "search run",
        RunKind::Train => "training run",
    };
    let _ = writeln!(body, "<h1>cnas {title}: {}</h1>", escape(&run.dir.display().to_string()));
    let _ = writeln!(body, "<p class=\"muted\">{} metric lines.</p>", run.metrics.len());

    let _ = writeln!(body, "<h2>Curves</h2>\n<div class=\"plots\">");
    let stages = match run.kind {
        RunKind::Search => search_curves(&mut body, &run.metrics)?,
        RunKind::Train => {
            train_curves(&mut body, &run.metrics)?;
            Vec::new()
        }
    };
    let _ = writeln!(body, "</div>");

    match run.kind {
        RunKind::Search => search_sections(&mut body, &run, &stages, layout, device)?,
        RunKind::Train => train_sections(&mut body, &run, layout, device)?,
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
    stages: &[(usize, Vec<String>, usize)],
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
    for (stage, ops, nodes) in stages {
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
    for (i, (stage, ops, nodes)) in stages.iter().enumerate() {
        let path = run.dir.join(format!("stage-{stage}/genotype.json"));
        if path.is_file() {
            // What this stage brought: an operation (op curriculum) or searched nodes (node).
            let added: Vec<&String> = match i.checked_sub(1).map(|p| &stages[p].1) {
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

fn train_sections(body: &mut String, run: &Run, layout: Layout, device: Device) -> Result<()> {
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
    let last = run.metrics.last().cloned().unwrap_or(Value::Null);
    let best = run
        .metrics
        .iter()
        .filter_map(|m| num(m, "val_top1"))
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    let pct = |v: Option<f64>| v.map(|v| format!("{:.2}%", v * 100.0)).unwrap_or_else(|| "—".into());
    let _ = writeln!(
        body,
        "<table class=\"kv\"><tr><th>epochs</th><td>{}</td></tr><tr><th>last train top-1</th><td>{}</td></tr>\
         <tr><th>last validation top-1</th><td>{}</td></tr><tr><th>best validation top-1</th><td>{}</td></tr></table>",
        run.metrics.len(),
        pct(num(&last, "train_top1")),
        pct(num(&last, "val_top1")),
        pct(best)
    );

    let eval_path = run.dir.join("eval.json");
    if eval_path.is_file() {
        let eval = read_json(&eval_path)?;
        let bad = |m: &str| Error::bad_file(&eval_path, m.to_string());
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
