//! Diagrams of cells: `cnas draw`.
//!
//! A cell becomes a DOT graph (inputs `c_{k-2}`, `c_{k-1}`, intermediate nodes `0..n-1`, one
//! edge per genotype edge labelled with its operation, the output `c_{k}` fed by the concatenated
//! nodes). The graph is laid out by Graphviz `dot` when it is installed (it places edge labels
//! as ranked objects, so they never overlap), otherwise by the pure-Rust `layout-rs` crate, which
//! does the same by turning each labelled edge into a node of its own. Both cells of a genotype
//! go side by side in one SVG; PNG is that SVG rasterised by `resvg`.
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::{Error, Result};
use crate::space::{Cell, Genotype};

/// Who lays the graph out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// Graphviz `dot` when it is on PATH, otherwise the built-in layout.
    Auto,
    /// Graphviz `dot` (an error when it is missing).
    Dot,
    /// The pure-Rust layout of the `layout-rs` crate.
    Builtin,
}

/// What `cnas draw` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Svg,
    Png,
    /// The DOT text, before layout.
    Dot,
}

impl Format {
    /// The format an output file's extension asks for.
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "svg" => Some(Format::Svg),
            "png" => Some(Format::Png),
            "dot" | "gv" => Some(Format::Dot),
            _ => None,
        }
    }
}

/// Which cells of a genotype to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Cells {
    Normal,
    Reduce,
    Both,
}

const FONT: &str = "sans-serif";
const INPUT_FILL: &str = "#cfe8cf";
const NODE_FILL: &str = "#cfe0f5";
const OUTPUT_FILL: &str = "#f5e6b8";
const LABEL_COLOR: &str = "#333333";

/// Node ids inside a DOT graph, prefixed so two cells can share one graph.
fn node_id(prefix: &str, node: usize) -> String {
    format!("{prefix}n{node}")
}

fn node_label(node: usize) -> String {
    match node {
        0 => "c_{k-2}".to_string(),
        1 => "c_{k-1}".to_string(),
        n => (n - 2).to_string(),
    }
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The statements of one cell (nodes and edges), ids prefixed with `prefix`.
fn cell_statements(cell: &Cell, prefix: &str, indent: &str) -> String {
    let mut out = String::new();
    let nodes = cell.edges.iter().map(|e| e.to.max(e.from) + 1).max().unwrap_or(2).max(2);
    let output = format!("{prefix}out");
    let mut line = |s: String| {
        out.push_str(indent);
        out.push_str(&s);
        out.push('\n');
    };
    for node in 0..nodes {
        let fill = if node < 2 { INPUT_FILL } else { NODE_FILL };
        line(format!(
            "{} [label={}, shape=box, style=\"rounded,filled\", fillcolor={}, fontname=\"{FONT}\", fontsize=14];",
            node_id(prefix, node),
            quote(&node_label(node)),
            quote(fill)
        ));
    }
    line(format!(
        "{output} [label=\"c_{{k}}\", shape=box, style=\"rounded,filled\", fillcolor={}, fontname=\"{FONT}\", fontsize=14];",
        quote(OUTPUT_FILL)
    ));
    for e in cell.edges_by_node() {
        line(format!(
            "{} -> {} [label={}, fontname=\"{FONT}\", fontsize=12, fontcolor={}];",
            node_id(prefix, e.from),
            node_id(prefix, e.to),
            quote(e.op.name()),
            quote(LABEL_COLOR)
        ));
    }
    for &c in &cell.concat {
        line(format!("{} -> {output} [color=\"#888888\"];", node_id(prefix, c)));
    }
    out
}

/// One cell as a DOT graph, left to right.
pub fn cell_dot(cell: &Cell) -> String {
    format!("digraph cell {{\n  rankdir=LR;\n{}}}\n", cell_statements(cell, "", "  "))
}

/// The chosen cells of a genotype as one DOT graph, each cell a cluster.
pub fn genotype_dot(genotype: &Genotype, cells: Cells) -> String {
    let mut out = String::from("digraph genotype {\n  rankdir=LR;\n  fontname=\"sans-serif\";\n");
    for (key, title, cell) in chosen(genotype, cells) {
        out.push_str(&format!("  subgraph cluster_{key} {{\n    label={};\n", quote(title)));
        out.push_str(&cell_statements(cell, &format!("{key}_"), "    "));
        out.push_str("  }\n");
    }
    out.push_str("}\n");
    out
}

fn chosen(genotype: &Genotype, cells: Cells) -> Vec<(&'static str, &'static str, &Cell)> {
    let normal = ("normal", "normal cell", &genotype.normal);
    let reduce = ("reduce", "reduction cell", &genotype.reduce);
    match cells {
        Cells::Normal => vec![normal],
        Cells::Reduce => vec![reduce],
        Cells::Both => vec![normal, reduce],
    }
}

/// True when Graphviz `dot` runs.
pub fn graphviz_available() -> bool {
    Command::new("dot")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The layout `auto` stands for on this machine.
pub fn resolve_layout(layout: Layout) -> Result<Layout> {
    match layout {
        Layout::Auto if graphviz_available() => Ok(Layout::Dot),
        Layout::Auto => Ok(Layout::Builtin),
        Layout::Dot if !graphviz_available() => Err(Error::BadOption(
            "--layout dot: Graphviz `dot` is not on PATH (install graphviz, or use --layout builtin)".into(),
        )),
        other => Ok(other),
    }
}

/// Runs `dot -Tsvg` on `dot_text`.
fn dot_to_svg(dot_text: &str) -> Result<String> {
    let path = Path::new("dot");
    let mut child = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(path, e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(dot_text.as_bytes()).map_err(|e| Error::io(path, e))?;
    }
    let out = child.wait_with_output().map_err(|e| Error::io(path, e))?;
    if !out.status.success() {
        let message = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(Error::io(path, std::io::Error::other(format!("dot failed: {message}"))));
    }
    String::from_utf8(out.stdout)
        .map_err(|_| Error::io(path, std::io::Error::other("dot wrote SVG that is not UTF-8")))
}

/// Lays a cell out with `layout-rs`. Each operation label becomes a node of its own between
/// the edge's two halves, so the layout keeps labels apart from each other and from the nodes
/// (the crate's own edge labels may land away from their edge).
fn builtin_svg(cell: &Cell) -> String {
    use layout::core::base::Orientation;
    use layout::core::color::Color;
    use layout::core::style::{LineStyleKind, StyleAttr};
    use layout::std_shapes::render::get_shape_size;
    use layout::std_shapes::shapes::{Arrow, Element, LineEndKind, ShapeKind};

    let dir = Orientation::LeftToRight;
    let mut graph = layout::topo::layout::VisualGraph::new(dir);
    let color = |c: &str| Color::fast(c);
    let node =
        |graph: &mut layout::topo::layout::VisualGraph, label: String, fill: &str, line: &str, size| {
            let shape = ShapeKind::Box(label);
            // Shapes take the flipped graph direction, as in the crate's own DOT builder.
            let extent = get_shape_size(dir.flip(), &shape, size, false);
            let look = StyleAttr::new(color(line), 1, Some(color(fill)), 6, size);
            graph.add_node(Element::create(shape, look, dir.flip(), extent))
        };
    let nodes = cell.edges.iter().map(|e| e.to.max(e.from) + 1).max().unwrap_or(2).max(2);
    let handles: Vec<_> = (0..nodes)
        .map(|n| node(&mut graph, node_label(n), if n < 2 { INPUT_FILL } else { NODE_FILL }, "black", 14))
        .collect();
    let output = node(&mut graph, "c_{k}".to_string(), OUTPUT_FILL, "black", 14);
    let line = |c: &str, end: LineEndKind| {
        let look = StyleAttr::new(color(c), 1, None, 0, 12);
        Arrow::new(LineEndKind::None, end, LineStyleKind::Normal, "", &look, &None, &None)
    };
    for e in cell.edges_by_node() {
        let label = node(&mut graph, e.op.name().to_string(), "white", "white", 12);
        graph.add_edge(line("black", LineEndKind::None), handles[e.from], label);
        graph.add_edge(line("black", LineEndKind::Arrow), label, handles[e.to]);
    }
    for &c in &cell.concat {
        if let Some(&h) = handles.get(c) {
            graph.add_edge(line("#888888", LineEndKind::Arrow), h, output);
        }
    }
    let mut svg = layout::backends::svg::SVGWriter::new();
    graph.do_it(false, false, false, &mut svg);
    // The crate hard-codes a serif face; use the same face as the rest of the drawing.
    let svg = svg.finalize().replace("font-family: Times, serif;", &format!("font-family: {FONT};"));
    sort_style_rules(&svg)
}

/// Sorts the rules of the first `<style>` block, one per line: `layout-rs` writes them in hash
/// order, and the same cell should give the same file every time.
fn sort_style_rules(svg: &str) -> String {
    let (Some(open), Some(close)) = (svg.find("<style>"), svg.find("</style>")) else {
        return svg.to_string();
    };
    let start = open + "<style>".len();
    if close < start {
        return svg.to_string();
    }
    let mut rules: Vec<&str> = svg[start..close].lines().filter(|l| !l.trim().is_empty()).collect();
    rules.sort_unstable();
    format!("{}\n{}\n{}", &svg[..start], rules.join("\n"), &svg[close..])
}

/// An SVG document's root element: its attributes' text and its content.
struct SvgParts<'a> {
    body: &'a str,
    width: f64,
    height: f64,
    view_box: String,
}

/// Splits an SVG document (what `dot` or `layout-rs` wrote) into its root's size and content,
/// dropping the XML prolog and doctype so it can be nested or inlined in HTML.
fn svg_parts(svg: &str) -> Result<SvgParts<'_>> {
    let bad = || Error::io("svg", std::io::Error::other("the layout produced no SVG root element"));
    let start = svg.find("<svg").ok_or_else(bad)?;
    let open_end = start + svg[start..].find('>').ok_or_else(bad)?;
    let close = svg.rfind("</svg>").ok_or_else(bad)?;
    let tag = &svg[start..open_end];
    let attr = |name: &str| -> Option<&str> {
        let key = format!(" {name}=\"");
        let at = tag.find(&key)? + key.len();
        let len = tag[at..].find('"')?;
        Some(&tag[at..at + len])
    };
    let view_box = attr("viewBox").ok_or_else(bad)?.to_string();
    let numbers: Vec<f64> =
        view_box.split([' ', ',']).filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect();
    if numbers.len() != 4 {
        return Err(bad());
    }
    Ok(SvgParts { body: &svg[open_end + 1..close], width: numbers[2], height: numbers[3], view_box })
}

/// Removes `id="..."` attributes: Graphviz numbers its elements the same way in every graph,
/// and two cells in one document (or many in one HTML page) must not repeat ids.
fn strip_ids(svg: &str) -> String {
    let mut out = String::with_capacity(svg.len());
    let mut rest = svg;
    while let Some(at) = rest.find(" id=\"") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 5..];
        match after.find('"') {
            Some(end) => rest = &after[end + 1..],
            None => {
                rest = after;
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

/// One cell laid out as an SVG document.
pub fn cell_svg(cell: &Cell, layout: Layout) -> Result<String> {
    match resolve_layout(layout)? {
        Layout::Dot => Ok(strip_ids(&dot_to_svg(&cell_dot(cell))?)),
        _ => Ok(builtin_svg(cell)),
    }
}

fn escape_xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The chosen cells of a genotype side by side in one SVG document, each under its title;
/// `title`, when given, goes above both.
pub fn genotype_svg(
    genotype: &Genotype,
    cells: Cells,
    layout: Layout,
    title: Option<&str>,
) -> Result<String> {
    let layout = resolve_layout(layout)?;
    const GAP: f64 = 32.0;
    const CAPTION: f64 = 28.0;
    let top = if title.is_some() { 34.0 } else { 0.0 };
    let mut panels = Vec::new();
    for (_, caption, cell) in chosen(genotype, cells) {
        panels.push((caption, cell_svg(cell, layout)?));
    }
    let mut body = String::new();
    let (mut x, mut height) = (0.0f64, 0.0f64);
    for (caption, svg) in &panels {
        let parts = svg_parts(svg)?;
        body.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" font-family=\"{FONT}\" font-size=\"16\" font-weight=\"bold\" fill=\"#222222\">{}</text>\n",
            x + 4.0,
            top + 18.0,
            escape_xml(caption)
        ));
        body.push_str(&format!(
            "<svg x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" viewBox=\"{}\">{}</svg>\n",
            top + CAPTION,
            parts.width,
            parts.height,
            parts.view_box,
            parts.body
        ));
        x += parts.width + GAP;
        height = height.max(parts.height);
    }
    let width = (x - GAP).max(1.0);
    let height = top + CAPTION + height;
    let heading = title
        .map(|t| {
            format!(
                "<text x=\"4\" y=\"22\" font-family=\"{FONT}\" font-size=\"18\" font-weight=\"bold\" fill=\"#111111\">{}</text>\n",
                escape_xml(t)
            )
        })
        .unwrap_or_default();
    Ok(format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.1} {height:.1}\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{heading}{body}</svg>\n"
    ))
}

/// SVG reading options with the system's fonts, generic families pointed at faces that exist
/// here (fontdb's defaults name faces by guess, and a missing face would drop the text).
pub fn svg_options() -> Result<resvg::usvg::Options<'static>> {
    let mut options = resvg::usvg::Options::default();
    let fonts = options.fontdb_mut();
    fonts.load_system_fonts();
    if fonts.is_empty() {
        return Err(Error::BadOption(
            "no system fonts found to draw the labels of a PNG (install fonts-dejavu-core, or write SVG)"
                .into(),
        ));
    }
    let families: Vec<String> =
        fonts.faces().flat_map(|f| f.families.iter().map(|(name, _)| name.clone())).collect();
    let pick = |wanted: &[&str]| {
        wanted
            .iter()
            .find(|w| families.iter().any(|f| f == *w))
            .map(|w| w.to_string())
            .or_else(|| families.first().cloned())
    };
    if let Some(sans) = pick(&["DejaVu Sans", "Liberation Sans", "Noto Sans", "Arial", "Helvetica"]) {
        fonts.set_sans_serif_family(sans);
    }
    if let Some(serif) = pick(&["DejaVu Serif", "Liberation Serif", "Noto Serif", "Times New Roman"]) {
        fonts.set_serif_family(serif);
    }
    Ok(options)
}

/// Rasterises an SVG document at `zoom` times its size, with the system's fonts.
pub fn svg_to_png(svg: &str, zoom: f32) -> Result<Vec<u8>> {
    let png_err = |m: String| Error::io("png", std::io::Error::other(m));
    let options = svg_options()?;
    let tree = resvg::usvg::Tree::from_str(svg, &options).map_err(|e| png_err(format!("bad SVG: {e}")))?;
    let size = tree.size().to_int_size().scale_by(zoom).ok_or_else(|| png_err("empty drawing".into()))?;
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height())
        .ok_or_else(|| png_err("drawing too large".into()))?;
    pixmap.fill(resvg::tiny_skia::Color::WHITE);
    resvg::render(&tree, resvg::tiny_skia::Transform::from_scale(zoom, zoom), &mut pixmap.as_mut());
    pixmap.encode_png().map_err(|e| png_err(e.to_string()))
}

/// What `cnas draw` asked for.
#[derive(Debug, Clone)]
pub struct DrawRequest {
    /// A published name or a genotype file.
    pub arch: String,
    pub out: std::path::PathBuf,
    /// The format; by default from `out`'s extension.
    pub format: Option<Format>,
    pub layout: Layout,
    pub cells: Cells,
}

/// `cnas draw`: reads the architecture, draws it and writes the file. Returns the format written.
pub fn draw(request: &DrawRequest) -> Result<Format> {
    let format = match request.format.or_else(|| Format::from_path(&request.out)) {
        Some(f) => f,
        None => {
            return Err(Error::BadOption(format!(
                "{}: cannot tell the format from the extension; use .svg, .png or .dot, or --format",
                request.out.display()
            )))
        }
    };
    let (name, genotype) = crate::space::resolve_arch(&request.arch)?;
    let bytes = match format {
        Format::Dot => genotype_dot(&genotype, request.cells).into_bytes(),
        Format::Svg => genotype_svg(&genotype, request.cells, request.layout, Some(&name))?.into_bytes(),
        Format::Png => {
            svg_to_png(&genotype_svg(&genotype, request.cells, request.layout, Some(&name))?, 2.0)?
        }
    };
    std::fs::write(&request.out, bytes).map_err(|e| Error::io(&request.out, e))?;
    Ok(format)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn darts_v2() -> Genotype {
        crate::space::published("DARTS_V2").unwrap()
    }

    #[test]
    fn dot_has_every_node_and_one_labelled_edge_per_genotype_edge() {
        let g = darts_v2();
        let dot = cell_dot(&g.normal);
        for label in ["c_{k-2}", "c_{k-1}", "\"0\"", "\"3\"", "c_{k}"] {
            assert!(dot.contains(label), "{label} missing in\n{dot}");
        }
        assert_eq!(dot.matches("[label=\"sep_conv_3x3\"").count(), 5);
        assert_eq!(dot.matches("-> out").count(), g.normal.concat.len());
        let both = genotype_dot(&g, Cells::Both);
        assert!(both.contains("subgraph cluster_normal") && both.contains("subgraph cluster_reduce"));
        assert_eq!(both.matches(" -> ").count(), 2 * (8 + 4));
    }

    #[test]
    fn builtin_layout_draws_every_label() {
        let svg = genotype_svg(&darts_v2(), Cells::Both, Layout::Builtin, Some("DARTS_V2")).unwrap();
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches(">max_pool_3x3<").count(), 5, "{svg}");
        assert!(svg.contains("normal cell") && svg.contains("reduction cell"));
        assert!(!svg.contains("<?xml"));
    }

    #[test]
    fn style_rules_are_sorted() {
        let svg = "<svg><style>\n.b { x }\n.a { y }\n</style><g/></svg>";
        assert_eq!(sort_style_rules(svg), "<svg><style>\n.a { y }\n.b { x }\n</style><g/></svg>");
    }

    #[test]
    fn ids_are_stripped() {
        assert_eq!(strip_ids("<g id=\"a\"><g class=\"x\" id=\"b\">"), "<g><g class=\"x\">");
    }

    #[test]
    fn format_from_extension() {
        assert_eq!(Format::from_path(Path::new("a/cell.SVG")), Some(Format::Svg));
        assert_eq!(Format::from_path(Path::new("cell.png")), Some(Format::Png));
        assert_eq!(Format::from_path(Path::new("cell.gv")), Some(Format::Dot));
        assert_eq!(Format::from_path(Path::new("cell")), None);
    }
}
