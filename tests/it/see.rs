//! `cnas draw`, `cnas report` and the search's TensorBoard scalars, end to end: drawings whose
//! labels do not overlap, reports that headless Chromium renders without errors, event files
//! that TensorBoard's own reader reads back equal to metrics.jsonl.
use std::path::Path;
use std::process::{Command, Output};

use cnas::draw::{genotype_svg, Cells, Layout};

use crate::common::{self, cnas_quiet as cnas, ok};

/// A user error: exit code 2 and one line on stderr naming the problem.
fn user_error(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "expected exit 2, got {:?}: {err}", out.status.code());
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.contains(needle), "{needle:?} not in {err}");
}

fn layouts() -> Vec<Layout> {
    let mut layouts = vec![Layout::Builtin];
    if cnas::draw::graphviz_available() {
        layouts.push(Layout::Dot);
    } else {
        eprintln!("Graphviz dot is not installed: only the built-in layout is tested");
    }
    layouts
}

/// The boxes of every text of an SVG document as laid out with real fonts, with their strings.
fn text_boxes(svg: &str) -> Vec<(String, resvg::usvg::Rect)> {
    fn walk(group: &resvg::usvg::Group, out: &mut Vec<(String, resvg::usvg::Rect)>) {
        for node in group.children() {
            match node {
                resvg::usvg::Node::Group(g) => walk(g, out),
                resvg::usvg::Node::Text(t) => {
                    let s: String = t.chunks().iter().map(|c| c.text()).collect();
                    out.push((s, t.abs_bounding_box()));
                }
                _ => {}
            }
        }
    }
    let options = cnas::draw::svg_options().unwrap();
    let tree = resvg::usvg::Tree::from_str(svg, &options).unwrap();
    let mut out = Vec::new();
    walk(tree.root(), &mut out);
    out
}

#[test]
fn labels_of_published_cells_never_overlap() {
    for layout in layouts() {
        for name in cnas::space::PUBLISHED {
            let genotype = cnas::space::published(name).unwrap();
            let svg = genotype_svg(&genotype, Cells::Both, layout, Some(name)).unwrap();
            let boxes = text_boxes(&svg);
            // Title, two captions, 4 node names and the output per cell, one label per edge.
            let cells = [&genotype.normal, &genotype.reduce];
            let nodes: usize =
                cells.iter().map(|c| c.edges.iter().map(|e| e.to.max(e.from) + 1).max().unwrap() + 1).sum();
            let edges: usize = cells.iter().map(|c| c.edges.len()).sum();
            assert_eq!(boxes.len(), 3 + nodes + edges, "{name} ({layout:?}): {boxes:?}");
            for (i, (a, ra)) in boxes.iter().enumerate() {
                assert!(ra.width() > 1.0, "{name}: text {a:?} has no width (no font?)");
                for (b, rb) in &boxes[i + 1..] {
                    let overlap_x = ra.right().min(rb.right()) - ra.left().max(rb.left());
                    let overlap_y = ra.bottom().min(rb.bottom()) - ra.top().max(rb.top());
                    assert!(
                        overlap_x <= 0.5 || overlap_y <= 0.5,
                        "{name} ({layout:?}): labels {a:?} {ra:?} and {b:?} {rb:?} overlap"
                    );
                }
            }
        }
    }
}

#[test]
fn draw_writes_svg_png_and_dot() {
    let dir = tempfile::tempdir().unwrap();
    for layout in layouts() {
        let layout_arg = if layout == Layout::Dot { "dot" } else { "builtin" };
        let svg = dir.path().join(format!("cnas-{layout_arg}.svg"));
        ok(&cnas(&["draw", "--arch", "CNAS", "-o", svg.to_str().unwrap(), "--layout", layout_arg]));
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.starts_with("<svg") && text.contains("normal cell") && text.contains("reduction cell"));
        let png = dir.path().join(format!("reduce-{layout_arg}.png"));
        ok(&cnas(&["draw", "--arch", "DARTS_V2", "-o", png.to_str().unwrap(), "--layout", layout_arg]));
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let image = image::load_from_memory(&bytes).unwrap();
        assert!(image.width() > 400 && image.height() > 100, "{}x{}", image.width(), image.height());
    }
    // A genotype file, one cell, DOT text by --format whatever the extension.
    let genotype = dir.path().join("g.json");
    std::fs::write(&genotype, cnas::space::published("ENAS").unwrap().to_json_pretty()).unwrap();
    let out = dir.path().join("cell.txt");
    ok(&cnas(&[
        "draw",
        "--arch",
        genotype.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--format",
        "dot",
        "--cell",
        "reduce",
    ]));
    let dot = std::fs::read_to_string(&out).unwrap();
    assert!(dot.starts_with("digraph") && dot.contains("cluster_reduce") && !dot.contains("cluster_normal"));
    assert_eq!(dot.matches("[label=\"").count(), 7 + 1 + 10, "7 nodes, the output, 10 edges:\n{dot}");
}

#[test]
fn draw_errors_are_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("x.svg");
    user_error(&cnas(&["draw", "--arch", "NOPE", "-o", svg.to_str().unwrap()]), "unknown architecture");
    user_error(&cnas(&["draw", "--arch", "CNAS", "-o", dir.path().join("x.jpg").to_str().unwrap()]), "x.jpg");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"normal\": 3}").unwrap();
    user_error(&cnas(&["draw", "--arch", bad.to_str().unwrap(), "-o", svg.to_str().unwrap()]), "bad.json");
    let unwritable = dir.path().join("missing/dir/x.svg");
    user_error(&cnas(&["draw", "--arch", "CNAS", "-o", unwritable.to_str().unwrap()]), "missing/dir/x.svg");
    // Without Graphviz on PATH: --layout dot is refused, auto falls back to the built-in layout.
    let no_dot = |layout: &str| {
        common::cnas()
            .env("PATH", dir.path())
            .args(["--device", "cpu", "--quiet", "draw", "--arch", "CNAS", "-o", svg.to_str().unwrap()])
            .args(["--layout", layout])
            .output()
            .unwrap()
    };
    user_error(&no_dot("dot"), "Graphviz");
    ok(&no_dot("auto"));
    let builtin = cnas::draw::genotype_svg(
        &cnas::space::published("CNAS").unwrap(),
        Cells::Both,
        Layout::Builtin,
        Some("CNAS"),
    )
    .unwrap();
    assert_eq!(std::fs::read_to_string(&svg).unwrap(), builtin);
}

/// A training run as `cnas train` writes it (config.json, metrics.jsonl, eval.json).
fn fake_training_run(dir: &Path) {
    let genotype = cnas::space::published("DARTS_V2").unwrap();
    let mut network = cnas::model::NetworkConfig::paper(cnas::model::NetworkKind::Cifar, genotype);
    network.init_channels = 16;
    network.layers = 8;
    let config = serde_json::json!({
        "kind": "train",
        "arch": "DARTS_V2",
        "network": network,
        "options": {"epochs": 3, "lr": 0.05},
        "data": {"dataset": "cifar10", "seed": 0},
        "versions": {"cnas": "0.1.0"},
    });
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let mut metrics = String::new();
    for epoch in 1..=3u32 {
        let e = f64::from(epoch);
        let mut line = serde_json::json!({
            "epoch": epoch, "lr": 0.05 / e, "drop_path_prob": 0.2 * (e - 1.0) / 3.0,
            "train_loss": 2.0 / e, "train_top1": 0.3 * e, "train_top5": 0.5 + 0.1 * e,
            "val_loss": 2.2 / e, "val_top1": 0.25 * e, "val_top5": 0.45 + 0.1 * e,
            "images_per_sec": 900.0 + e, "epoch_time_s": 50.0,
        });
        if epoch == 2 {
            // Validation did not run this epoch.
            for key in ["val_loss", "val_top1", "val_top5"] {
                line[key] = serde_json::Value::Null;
            }
        }
        metrics.push_str(&format!("{line}\n"));
    }
    std::fs::write(dir.join("metrics.jsonl"), metrics).unwrap();
    let names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];
    let confusion: Vec<Vec<u64>> = (0..10)
        .map(|r| (0..10).map(|c| if r == c { 80 } else { ((r * 3 + c) % 5) as u64 }).collect())
        .collect();
    let eval = serde_json::json!({
        "top1": 0.8, "top5": 0.98, "loss": 0.61, "images": 1000,
        "class_names": names, "per_class_accuracy": vec![0.8; 10], "confusion": confusion,
    });
    std::fs::write(dir.join("eval.json"), serde_json::to_string(&eval).unwrap()).unwrap();
}

/// Renders `html` in headless Chromium: no console message (the page has no script, so any is
/// an error), and the DOM it built holds `plots` plots and `cells` cell drawings. Skips when
/// Chromium is missing, except under CI, where it must be there.
pub(crate) fn check_in_chromium(html: &Path, plots: usize, cells: usize) {
    let Some(chromium) = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
    else {
        assert!(std::env::var_os("CI").is_none(), "Chromium is missing (scripts/setup.sh installs it)");
        eprintln!("chromium not found: skipping the browser check of {}", html.display());
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let shot = html.with_extension("png");
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=3000",
            "--window-size=1280,4000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", html.canonicalize().unwrap().display()))
        .output()
        .expect("run chromium");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chromium failed: {stderr}");
    let console: Vec<&str> = stderr.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(dom.contains("</html>"), "no DOM dumped: {dom}");
    assert_eq!(dom.matches("data-plot=").count(), plots, "plots in the DOM");
    assert_eq!(dom.matches("data-cells=").count(), cells, "cell drawings in the DOM");
    // Every figure's SVG made it into the DOM (one per plot, one per cell panel plus its frame).
    assert!(dom.matches("<svg").count() >= plots + 3 * cells, "SVG elements missing from the DOM");
}

/// What a page may not do to be self-contained: load anything.
fn assert_self_contained(html: &str) {
    // In-page references (SVG markers) are fine.
    let stripped = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "").replace("url(#", "");
    for needle in ["http://", "https://", "<script", "<link", "src=", "url("] {
        assert!(!stripped.contains(needle), "the report refers to {needle}");
    }
}

#[test]
fn report_of_a_training_run() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("train-run");
    fake_training_run(&run);
    let html_path = dir.path().join("report.html");
    let stdout = ok(&cnas(&["report", run.to_str().unwrap(), "-o", html_path.to_str().unwrap()]));
    assert!(stdout.contains("report.html"));
    let html = std::fs::read_to_string(&html_path).unwrap();
    assert_self_contained(&html);
    assert!(html.contains("cnas training run"));
    // loss, top-1, top-5, learning rate, drop path, images/s
    assert_eq!(html.matches("data-plot=").count(), 6);
    assert!(html.contains("class=\"confusion\"") && html.contains("truck → truck: 80"));
    assert!(html.contains("16 channels, 8 cells"), "the run's own network is measured");
    // Epoch 2 has no validation: the validation curve has two points.
    let top1 =
        html.split("data-plot=\"top-1 accuracy (%)\"").nth(1).unwrap().split("</figure>").next().unwrap();
    assert_eq!(top1.matches("<circle").count(), 3 + 2, "train 3 points, validation 2");
    check_in_chromium(&html_path, 6, 1);

    // Without eval.json there is no confusion matrix, and the report goes into RUN_DIR by default;
    // the built-in layout draws the cells.
    std::fs::remove_file(run.join("eval.json")).unwrap();
    ok(&cnas(&["report", run.to_str().unwrap(), "--layout", "builtin"]));
    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(!html.contains("class=\"confusion\""));
    assert_self_contained(&html);
    check_in_chromium(&run.join("report.html"), 6, 1);
}

#[test]
fn report_errors_are_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.html");
    let out_arg = out.to_str().unwrap();
    let missing = dir.path().join("nothing-here");
    user_error(&cnas(&["report", missing.to_str().unwrap(), "-o", out_arg]), "nothing-here");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    user_error(&cnas(&["report", empty.to_str().unwrap(), "-o", out_arg]), "config.json is missing");
    let run = dir.path().join("run");
    fake_training_run(&run);
    std::fs::write(run.join("metrics.jsonl"), "").unwrap();
    user_error(&cnas(&["report", run.to_str().unwrap(), "-o", out_arg]), "no metrics yet");
    std::fs::write(run.join("metrics.jsonl"), "{\"epoch\": 1, \"train_loss\": 2.0}\nnot json\n").unwrap();
    user_error(&cnas(&["report", run.to_str().unwrap(), "-o", out_arg]), "line 2");
    fake_training_run(&run);
    let unwritable = dir.path().join("no/such/dir/r.html");
    user_error(&cnas(&["report", run.to_str().unwrap(), "-o", unwritable.to_str().unwrap()]), "no/such/dir");
    std::fs::write(run.join("config.json"), "{\"something\": 1}").unwrap();
    user_error(&cnas(&["report", run.to_str().unwrap(), "-o", out_arg]), "neither a search nor a training");
}

/// What the event files should hold for metrics.jsonl: every number of every line, tagged
/// search/<phase>/<key>, at a step that counts epochs and derives (a controller line shares
/// its weights epoch's step).
fn expected_scalars(run: &Path) -> std::collections::BTreeMap<String, Vec<(i64, f64)>> {
    let mut expected: std::collections::BTreeMap<String, Vec<(i64, f64)>> = Default::default();
    let mut step = 0;
    for line in std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let phase = v["phase"].as_str().unwrap().to_string();
        if phase != "controller" {
            step += 1;
        }
        for (key, value) in v.as_object().unwrap() {
            if let (Some(x), true) = (value.as_f64(), key != "epoch") {
                expected.entry(format!("search/{phase}/{key}")).or_default().push((step, x));
            }
        }
    }
    expected
}

/// A tiny search (2 stages of node curriculum) interrupted twice, once as if killed between
/// writing an epoch's metrics and its checkpoint: TensorBoard must show each epoch once, with
/// the values of metrics.jsonl; then the report of that run renders.
#[test]
fn search_scalars_read_back_by_tensorboard_and_its_report() {
    // A folder of its own: a fixed path would be shared by test runs of several checkouts
    // with one target folder.
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let run = tmp.path().join("see-search");
    let data = common::cifar10_dir();
    let search = |extra: &[&str]| {
        let mut cmd = common::cnas();
        cmd.args(["--device", "cpu", "--quiet", "search", "--data"]).arg(&data).arg("-o").arg(&run);
        cmd.args(["--force", "--preset", "quick", "--mode", "node", "--nodes", "2", "--init-channels", "4"]);
        cmd.args(["--layers", "3", "--max-images", "64", "--batch-size", "16", "--controller-steps", "3"]);
        cmd.args(["--derive-rounds", "2", "--derive-samples", "2", "--workers", "2"]);
        ok(&cmd.args(extra).output().unwrap());
    };
    let resume = |extra: &[&str]| {
        let mut cmd = common::cnas();
        cmd.args(["--device", "cpu", "--quiet", "search", "--resume"]).arg(&run).args(extra);
        ok(&cmd.output().unwrap());
    };
    search(&["--stop-after-epochs", "2"]);
    let checkpoint = std::fs::read(run.join("checkpoint.safetensors")).unwrap();
    resume(&["--stop-after-epochs", "1"]);
    // Back to the checkpoint of 2 epochs: the third epoch's line and scalars were written, its
    // checkpoint was not.
    std::fs::write(run.join("checkpoint.safetensors"), checkpoint).unwrap();
    resume(&[]);
    assert_eq!(std::fs::read_dir(run.join("tb")).unwrap().count(), 3, "one event file per process");

    let read = common::read_tensorboard(&run.join("tb"));
    let expected = expected_scalars(&run);
    let tags: Vec<&String> = read.as_object().unwrap().keys().collect();
    assert_eq!(tags, expected.keys().collect::<Vec<_>>());
    for tag in
        ["search/warmup/loss", "search/weights/acc", "search/controller/reward", "search/derive/best_score"]
    {
        assert!(expected.contains_key(tag), "{tag} missing");
    }
    for (tag, points) in &expected {
        let got: Vec<(i64, f64)> = read[tag]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap()))
            .collect();
        assert_eq!(got.len(), points.len(), "{tag}: {got:?} vs {points:?}");
        for ((gs, gv), (es, ev)) in got.iter().zip(points) {
            assert_eq!(gs, es, "{tag}");
            // TensorBoard keeps 32-bit floats; timings differ between processes.
            if !tag.ends_with("time_s") && !tag.ends_with("images_per_s") {
                assert!((gv - ev).abs() <= 1e-6 * ev.abs().max(1.0), "{tag} at {gs}: {gv} vs {ev}");
            }
        }
    }

    let html_path = run.join("report.html");
    ok(&cnas(&["report", run.to_str().unwrap(), "-o", html_path.to_str().unwrap()]));
    let html = std::fs::read_to_string(&html_path).unwrap();
    assert_self_contained(&html);
    // loss, accuracy, reward and baseline, entropies, two learning rates, images/s
    assert_eq!(html.matches("data-plot=").count(), 7);
    // the final genotype and each stage's
    assert_eq!(html.matches("data-cells=").count(), 3);
    assert!(
        html.contains("\nS1\n</text>") && html.contains("\nS2\n</text>"),
        "stages marked on the time axis"
    );
    assert!(html.contains("36 channels, 20 cells"), "measured in the paper's network");
    check_in_chromium(&html_path, 7, 3);
}
