//! SVG plots for run reports: line charts (plotters, SVG backend) and the confusion matrix.
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{Error, Result};

/// One curve: a name for the legend and its points.
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(label: impl Into<String>) -> Self {
        Series { label: label.into(), points: Vec::new() }
    }
}

/// A shaded stretch of the x axis with a label at its top (a curriculum stage).
#[derive(Debug, Clone)]
pub struct Band {
    pub start: f64,
    pub end: f64,
    pub label: String,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

pub const CHART_WIDTH: u32 = 600;
pub const CHART_HEIGHT: u32 = 340;
const LEGEND_HEIGHT: u32 = 50;

fn plot_error(e: impl std::fmt::Display) -> Error {
    Error::io("plot", std::io::Error::other(e.to_string()))
}

/// The range a set of values spans, widened so that a constant or single value still shows.
fn span(values: impl Iterator<Item = f64>, pad: f64) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return None;
    }
    if hi - lo < 1e-12 {
        let d = if lo.abs() > 1e-12 { lo.abs() * 0.1 } else { 1.0 };
        return Some((lo - d, hi + d));
    }
    let d = (hi - lo) * pad;
    Some((lo - d, hi + d))
}

/// A line chart of `series` against `x_desc`, with `bands` shaded behind; `None` when no
/// series has a point.
pub fn line_chart(title: &str, x_desc: &str, series: &[Series], bands: &[Band]) -> Result<Option<String>> {
    let series: Vec<&Series> = series.iter().filter(|s| s.points.iter().any(|p| p.1.is_finite())).collect();
    let Some(axes) = Axes::of(&series, bands) else {
        return Ok(None);
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (CHART_WIDTH, CHART_HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        // The legend gets a strip of its own under the title, so it never covers a curve.
        let (head, body) = root.split_vertically(LEGEND_HEIGHT);
        draw_title_and_legend(&head, title, &series)?;
        let mut chart = ChartBuilder::on(&body)
            .margin_left(8)
            .margin_right(16)
            .margin_bottom(4)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(axes.x.0..axes.x.1, axes.y.0..axes.y.1)
            .map_err(plot_error)?;
        draw_mesh(&mut chart, x_desc, &axes)?;
        draw_bands(&mut chart, bands, axes.y)?;
        draw_curves(&mut chart, &series)?;
        root.present().map_err(plot_error)?;
    }
    Ok(Some(svg))
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The ranges a line chart's axes span (bands included), and whether x takes only whole
/// values (epochs, steps).
struct Axes {
    x: (f64, f64),
    y: (f64, f64),
    integer_x: bool,
}

impl Axes {
    /// `None` when the series have no point to show.
    fn of(series: &[&Series], bands: &[Band]) -> Option<Axes> {
        let (x0, x1) = span(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)), 0.02)?;
        let x = bands.iter().fold((x0, x1), |(a, b), band| (a.min(band.start), b.max(band.end)));
        let y = span(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)), 0.08)?;
        let integer_x = series.iter().flat_map(|s| s.points.iter()).all(|p| p.0.fract() == 0.0);
        Some(Axes { x, y, integer_x })
    }
}

/// The colour of the `i`-th series, in the legend and on the chart alike.
fn series_color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// The title, and under it one legend entry (a line and the label) per series, centred.
fn draw_title_and_legend(head: &Area, title: &str, series: &[&Series]) -> Result<()> {
    head.draw(&Text::new(
        title.to_string(),
        (CHART_WIDTH as i32 / 2, 6),
        ("sans-serif", 20).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Top)),
    ))
    .map_err(plot_error)?;
    let widths: Vec<i32> = series.iter().map(|s| 40 + 7 * s.label.chars().count() as i32).collect();
    let mut x = (CHART_WIDTH as i32 - widths.iter().sum::<i32>()) / 2;
    for (i, s) in series.iter().enumerate() {
        head.draw(&PathElement::new(vec![(x, 36), (x + 22, 36)], series_color(i).stroke_width(2)))
            .map_err(plot_error)?;
        head.draw(&Text::new(
            s.label.clone(),
            (x + 28, 36),
            ("sans-serif", 15).into_font().color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(plot_error)?;
        x += widths[i];
    }
    Ok(())
}

/// Grid, axes and their labels.
fn draw_mesh(chart: &mut Chart, x_desc: &str, axes: &Axes) -> Result<()> {
    let ((x0, x1), integer_x) = (axes.x, axes.integer_x);
    // Whole-number axes (epochs, steps) label whole numbers only: no "1.5" rounded to "2".
    let x_format = |v: &f64| match integer_x {
        true if (v - v.round()).abs() < 1e-9 => format!("{v:.0}"),
        true => String::new(),
        false => format!("{v}"),
    };
    let x_labels = if integer_x { ((x1 - x0).round() as usize + 1).clamp(2, 8) } else { 8 };
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .x_label_formatter(&x_format)
        .light_line_style(RGBColor(238, 238, 238))
        .bold_line_style(RGBColor(215, 215, 215))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .x_labels(x_labels)
        .y_labels(6)
        .draw()
        .map_err(plot_error)
}

/// Each band as a full-height rectangle, shaded in turn, with its label at the top.
fn draw_bands(chart: &mut Chart, bands: &[Band], (y0, y1): (f64, f64)) -> Result<()> {
    for (i, band) in bands.iter().enumerate() {
        let shade = if i % 2 == 0 { RGBColor(240, 244, 250) } else { RGBColor(250, 250, 250) };
        chart
            .draw_series(std::iter::once(Rectangle::new([(band.start, y0), (band.end, y1)], shade.filled())))
            .map_err(plot_error)?;
        chart
            .draw_series(std::iter::once(Text::new(
                band.label.clone(),
                ((band.start + band.end) / 2.0, y1),
                ("sans-serif", 13)
                    .into_font()
                    .color(&RGBColor(110, 110, 110))
                    .pos(Pos::new(HPos::Center, VPos::Top)),
            )))
            .map_err(plot_error)?;
    }
    Ok(())
}

/// Each series as a line through its finite points.
fn draw_curves(chart: &mut Chart, series: &[&Series]) -> Result<()> {
    for (i, s) in series.iter().enumerate() {
        let color = series_color(i);
        let points: Vec<(f64, f64)> = s.points.iter().copied().filter(|p| p.1.is_finite()).collect();
        chart.draw_series(LineSeries::new(points.clone(), color.stroke_width(2))).map_err(plot_error)?;
        // Few points (short runs) would hardly show as a line: mark them.
        if points.len() <= 80 {
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(plot_error)?;
        }
    }
    Ok(())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The confusion matrix as an SVG heat map: rows are true classes, columns predicted ones; the
/// shade is the share of the row's images (so classes of different sizes compare), the number
/// the count. Large matrices (ImageNet) drop the numbers and then the class names to stay legible.
pub fn confusion_svg(class_names: &[String], confusion: &[Vec<u64>]) -> String {
    let grid = Grid::new(class_names, confusion.len());
    let mut out = grid.opening();
    for (r, row) in confusion.iter().enumerate() {
        let total: u64 = row.iter().sum();
        for (c, &count) in row.iter().enumerate() {
            let share = if total > 0 { count as f64 / total as f64 } else { 0.0 };
            if !grid.large {
                out.push_str(&grid.cell(r, c, count, share));
            } else if count > 0 {
                out.push_str(&grid.bare_cell(r, c, share));
            }
        }
    }
    if grid.show_names {
        out.push_str(&grid.class_labels());
    }
    out.push_str("</svg>\n");
    out
}

/// The geometry of a confusion heat map, and what its size leaves room for.
struct Grid<'a> {
    class_names: &'a [String],
    /// Classes: rows and columns.
    n: usize,
    /// A cell's side, in pixels.
    cell: f64,
    show_names: bool,
    show_counts: bool,
    /// Past a hundred classes (ImageNet: a million cells) only the non-zero cells are written,
    /// without tooltips or grid, to keep the page a few megabytes.
    large: bool,
    /// Where the cells start.
    left: f64,
    top: f64,
    /// The side of the square of cells.
    side: f64,
}

impl<'a> Grid<'a> {
    fn new(class_names: &'a [String], rows: usize) -> Self {
        let n = rows.max(class_names.len()).max(1);
        let cell = (720.0 / n as f64).clamp(2.0, 44.0);
        let show_names = cell >= 10.0;
        let label_space = if show_names {
            let longest =
                (0..n).map(|i| class_name(class_names, i).chars().count()).max().unwrap_or(1) as f64;
            (longest * 7.0 + 12.0).min(160.0)
        } else {
            16.0
        };
        Grid {
            class_names,
            n,
            cell,
            show_names,
            show_counts: cell >= 26.0,
            large: n > 100,
            left: label_space + 22.0,
            top: label_space + 22.0,
            side: cell * n as f64,
        }
    }

    fn name(&self, i: usize) -> String {
        class_name(self.class_names, i)
    }

    /// The `<svg>` element's opening, the axis titles and (for a large grid) its frame.
    fn opening(&self) -> String {
        let Grid { left, top, side, .. } = *self;
        let (width, height) = (left + side + 10.0, top + side + 10.0);
        let mut out = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.1} {height:.1}\" font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        );
        out.push_str(&format!(
            "<text x=\"{:.1}\" y=\"12\" font-size=\"12\" text-anchor=\"middle\" fill=\"#333\">predicted</text>\n",
            left + side / 2.0
        ));
        out.push_str(&format!(
            "<text transform=\"translate(12 {:.1}) rotate(-90)\" font-size=\"12\" text-anchor=\"middle\" fill=\"#333\">true class</text>\n",
            top + side / 2.0
        ));
        if self.large {
            out.push_str(&format!(
                "<rect x=\"{left:.1}\" y=\"{top:.1}\" width=\"{side:.1}\" height=\"{side:.1}\" fill=\"white\" stroke=\"#cccccc\"/>\n"
            ));
        }
        out
    }

    /// The top-left corner of cell (`r`, `c`).
    fn corner(&self, r: usize, c: usize) -> (f64, f64) {
        (self.left + c as f64 * self.cell, self.top + r as f64 * self.cell)
    }

    /// Cell (`r`, `c`) of a small grid: shaded, with a grid line, a tooltip and maybe the count.
    fn cell(&self, r: usize, c: usize, count: u64, share: f64) -> String {
        let cell = self.cell;
        let (x, y) = self.corner(r, c);
        let mut out = format!(
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{cell:.1}\" height=\"{cell:.1}\" fill=\"{}\" stroke=\"#e4e4e4\" stroke-width=\"0.5\"><title>{} → {}: {count} ({:.1}%)</title></rect>\n",
            shade(share),
            escape(&self.name(r)),
            escape(&self.name(c)),
            share * 100.0
        );
        if self.show_counts {
            let color = if share > 0.5 { "white" } else { "#222" };
            out.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"{:.0}\" text-anchor=\"middle\" dominant-baseline=\"central\" fill=\"{color}\">{count}</text>\n",
                x + cell / 2.0,
                y + cell / 2.0,
                (cell * 0.3).min(12.0)
            ));
        }
        out
    }

    /// Cell (`r`, `c`) of a large grid: the shade alone.
    fn bare_cell(&self, r: usize, c: usize, share: f64) -> String {
        let cell = self.cell;
        let (x, y) = self.corner(r, c);
        format!(
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{cell:.1}\" height=\"{cell:.1}\" fill=\"{}\"/>\n",
            shade(share)
        )
    }

    /// Every class's name left of its row and above its column.
    fn class_labels(&self) -> String {
        let Grid { cell, left, top, .. } = *self;
        let size = (cell * 0.7).min(12.0);
        let mut out = String::new();
        for i in 0..self.n {
            let label = escape(&self.name(i));
            let mid = i as f64 * cell + cell / 2.0;
            out.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"{size:.0}\" text-anchor=\"end\" dominant-baseline=\"central\" fill=\"#333\">{label}</text>\n",
                left - 4.0,
                top + mid
            ));
            out.push_str(&format!(
                "<text transform=\"translate({:.1} {:.1}) rotate(-90)\" font-size=\"{size:.0}\" text-anchor=\"start\" dominant-baseline=\"central\" fill=\"#333\">{label}</text>\n",
                left + mid,
                top - 4.0
            ));
        }
        out
    }
}

/// Class `i`'s name, or its number when the names run out.
fn class_name(class_names: &[String], i: usize) -> String {
    class_names.get(i).cloned().unwrap_or_else(|| i.to_string())
}

/// White to a deep blue as `share` goes from 0 to 1.
fn shade(share: f64) -> String {
    let mix = |full: f64| (255.0 - (255.0 - full) * share).round() as u8;
    format!("rgb({},{},{})", mix(8.0), mix(48.0), mix(107.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_holds_its_series_and_bands() {
        let mut a = Series::new("train");
        a.points = vec![(1.0, 0.5), (2.0, 0.4), (3.0, 0.3)];
        let bands = [Band { start: 0.5, end: 2.5, label: "S1".into() }];
        let svg = line_chart("loss", "epoch", &[a, Series::new("empty")], &bands).unwrap().unwrap();
        // plotters writes each text on a line of its own
        assert!(svg.contains("<svg") && svg.contains("\nloss\n") && svg.contains("\ntrain\n"));
        assert!(svg.contains("\nS1\n"));
        assert!(!svg.contains("\nempty\n"), "a series with no point gets no legend entry");
        assert!(line_chart("none", "epoch", &[Series::new("x")], &[]).unwrap().is_none());
    }

    #[test]
    fn confusion_shades_by_row_share() {
        let names = vec!["cat".to_string(), "dog".to_string()];
        let svg = confusion_svg(&names, &[vec![9, 1], vec![0, 0]]);
        assert_eq!(svg.matches("<rect x=").count(), 4);
        assert!(svg.contains("cat → cat: 9 (90.0%)") && svg.contains("dog → cat: 0 (0.0%)"));
        assert!(svg.contains(">dog<"));
    }

    #[test]
    fn a_large_confusion_matrix_writes_only_non_zero_cells() {
        let n = 300;
        let confusion: Vec<Vec<u64>> =
            (0..n).map(|r| (0..n).map(|c| u64::from(r == c || c == (r + 1) % n)).collect()).collect();
        let svg = confusion_svg(&[], &confusion);
        // the frame, then 2 cells per row
        assert_eq!(svg.matches("<rect x=").count(), 1 + 2 * n);
        assert!(!svg.contains("<title>"));
    }
}
