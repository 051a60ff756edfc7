//! The sweep's figure: perplexity (y) against bits per weight on the block linears (x); TenPak's
//! points joined as a curve, other tools' points as labelled markers, the baseline perplexity as
//! a dashed line, a legend and the protocol as a caption below.
//!
//! Drawn by plotters twice. The SVG's text is laid out by whatever shows it, so writing it needs
//! no font (text sizes are estimated when none is registered). The PNG's text is rasterized from
//! a TrueType font read at run time, [`DEFAULT_FONT`] or `$TENPAK_FONT`: nothing is embedded in
//! the binary, and a missing font fails the PNG alone, naming the path and the package.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tenpak_error::{Result, bail, err};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters_backend::{BackendColor, BackendCoord, BackendTextStyle, DrawingErrorKind};

use super::{Source, SweepRow};
use tenpak_error::Kind;

/// The x axis's label.
pub const X_LABEL: &str = "bits per weight (block linears)";
/// The y axis's label.
pub const Y_LABEL: &str = "perplexity";
/// The font the PNG's text is drawn with, unless `$TENPAK_FONT` names another: DejaVu Sans, from
/// the Debian package `fonts-dejavu-core`.
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// The environment variable naming another font file for the PNG.
pub const FONT_VAR: &str = "TENPAK_FONT";
/// A point whose linears average this many bits or more is a float file (f16, f32): drawn as a
/// labelled horizontal line at its perplexity, not at an x that would squeeze the rest.
pub const FLOAT_BITS: f64 = 16.0;

const FAMILY: &str = "sans-serif";
const TENPAK: RGBColor = RGBColor(31, 119, 180);
const OTHER: RGBColor = RGBColor(214, 39, 40);
const REFERENCE: RGBColor = RGBColor(110, 110, 110);
const FLOAT: RGBColor = RGBColor(160, 110, 40);
/// Height of the strip under the chart holding the legend and the caption.
const FOOTER: u32 = 56;

/// What the figure says besides its points, and its size.
#[derive(Clone, Debug, PartialEq)]
pub struct PlotOptions {
    /// The title above the chart.
    pub title: String,
    /// The line under the chart: how the points were measured.
    pub caption: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl Default for PlotOptions {
    fn default() -> Self {
        Self { title: "perplexity against bits per weight".into(), caption: String::new(), width: 1000, height: 640 }
    }
}

/// Draw `rows` as an SVG file at `path`. Needs no font.
pub fn write_svg(rows: &[SweepRow], options: &PlotOptions, path: &Path) -> Result<()> {
    let points = Points::of(rows)?;
    let root = EstimatedText(SVGBackend::new(path, (options.width, options.height))).into_drawing_area();
    draw(&root, &points, options).map_err(|e| err!("{}: cannot draw the figure: {e}", path.display()))?;
    root.present().map_err(|e| err!("{}: cannot write the figure: {e}", path.display()))
}

/// Draw `rows` as a PNG file at `path`, its text in the font [`register_font`] loads.
pub fn write_png(rows: &[SweepRow], options: &PlotOptions, path: &Path) -> Result<()> {
    let points = Points::of(rows)?;
    register_font()?;
    let root = BitMapBackend::new(path, (options.width, options.height)).into_drawing_area();
    draw(&root, &points, options).map_err(|e| err!("{}: cannot draw the figure: {e}", path.display()))?;
    root.present().map_err(|e| err!("{}: cannot write the figure: {e}", path.display()))
}

/// The font file for the PNG: `$TENPAK_FONT` if set, else [`DEFAULT_FONT`].
pub fn font_path() -> PathBuf {
    std::env::var_os(FONT_VAR).filter(|v| !v.is_empty()).map_or_else(|| PathBuf::from(DEFAULT_FONT), PathBuf::from)
}

/// Register the PNG's font with plotters, once per process (the first call's outcome stands).
/// A missing file is [`Kind::NotFound`], with the path and the package to install.
pub fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    let outcome = REGISTERED.get_or_init(|| {
        let path = font_path();
        let bytes = std::fs::read(&path).map_err(|e| {
            format!(
                "no font for the PNG's text at {} ({e}): install the Debian package fonts-dejavu-core, or set {FONT_VAR} \
                 to a TrueType font file",
                path.display()
            )
        })?;
        // plotters keeps a registered font by reference for the rest of the process: the bytes
        // are leaked once, on purpose.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font(FAMILY, FontStyle::Normal, bytes)
            .map_err(|_| format!("{}: not a TrueType or OpenType font (set {FONT_VAR} to one)", path.display()))
    });
    outcome.clone().map_err(|message| Kind::NotFound.error(message))
}

/// The rows as the figure groups them, and the axes' ranges.
struct Points<'a> {
    /// TenPak's points, by bits per weight.
    tenpak: Vec<&'a SweepRow>,
    /// Other tools' quantized points, by bits per weight.
    others: Vec<&'a SweepRow>,
    /// Other tools' float files, drawn as lines.
    floats: Vec<&'a SweepRow>,
    baseline: Option<f64>,
    x: Range<f64>,
    y: Range<f64>,
}

impl<'a> Points<'a> {
    fn of(rows: &'a [SweepRow]) -> Result<Self> {
        let finite: Vec<&SweepRow> = rows.iter().filter(|r| r.ppl.is_finite() && r.bpw_linears.is_finite()).collect();
        if finite.is_empty() {
            bail!("nothing to plot: no point has a finite perplexity and bits per weight");
        }
        let mut tenpak: Vec<&SweepRow> = finite.iter().copied().filter(|r| r.source == Source::Tenpak).collect();
        tenpak.sort_by(|a, b| a.bpw_linears.total_cmp(&b.bpw_linears));
        let external = finite.iter().copied().filter(|r| r.source != Source::Tenpak);
        let (floats, mut others): (Vec<&SweepRow>, Vec<&SweepRow>) = external.partition(|r| r.bpw_linears >= FLOAT_BITS);
        others.sort_by(|a, b| a.bpw_linears.total_cmp(&b.bpw_linears));
        let baseline = rows.iter().find_map(|r| r.baseline_ppl).filter(|b| b.is_finite());
        let xs: Vec<f64> = tenpak.iter().chain(&others).map(|r| r.bpw_linears).collect();
        let ys: Vec<f64> = finite.iter().map(|r| r.ppl).chain(baseline).collect();
        let x = if xs.is_empty() { 2.0..8.0 } else { padded(&xs, 0.25) };
        let y = padded(&ys, 0.01 * ys.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-3));
        Ok(Self { tenpak, others, floats, baseline, x, y })
    }
}

/// The range of `values` widened by 6% of its span on each side, and at least by `least`.
fn padded(values: &[f64], least: f64) -> Range<f64> {
    let (lo, hi) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let pad = (0.06 * (hi - lo)).max(least);
    lo - pad..hi + pad
}

fn text_style(size: u32, color: RGBColor) -> TextStyle<'static> {
    (FAMILY, size).into_font().color(&color)
}

type DrawResult<DB> = std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, points: &Points, options: &PlotOptions) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let (_, height) = root.dim_in_pixel();
    let (upper, footer) = root.split_vertically(height.saturating_sub(FOOTER));
    let mut chart = ChartBuilder::on(&upper)
        .caption(&options.title, (FAMILY, 20))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(points.x.clone(), points.y.clone())?;
    chart
        .configure_mesh()
        .x_desc(X_LABEL)
        .y_desc(Y_LABEL)
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 16))
        .x_label_formatter(&|x| format!("{x:.1}"))
        .y_label_formatter(&|y| format!("{y:.2}"))
        .light_line_style(RGBColor(236, 236, 236))
        .draw()?;
    let (x0, x1) = (points.x.start, points.x.end);
    let label = |size: u32, color: RGBColor, h: HPos| text_style(size, color).pos(Pos::new(h, VPos::Top));
    if let Some(b) = points.baseline {
        chart.draw_series(DashedLineSeries::new([(x0, b), (x1, b)], 8, 6, REFERENCE.stroke_width(2)))?;
        let text = Text::new(format!("baseline {b:.3}"), (6, -18), label(13, REFERENCE, HPos::Left));
        chart.draw_series(std::iter::once(EmptyElement::at((x0, b)) + text))?;
    }
    for row in &points.floats {
        chart.draw_series(DashedLineSeries::new([(x0, row.ppl), (x1, row.ppl)], 3, 4, FLOAT.stroke_width(1)))?;
        let text = Text::new(format!("{} ({:.0} bits)", row.label, row.bpw_linears), (-6, -18), label(13, FLOAT, HPos::Right));
        chart.draw_series(std::iter::once(EmptyElement::at((x1, row.ppl)) + text))?;
    }
    let curve = points.tenpak.iter().map(|r| (r.bpw_linears, r.ppl));
    chart.draw_series(LineSeries::new(curve, TENPAK.stroke_width(2)))?;
    chart.draw_series(points.tenpak.iter().map(|r| {
        let (dx, side) = label_side(r.bpw_linears, &points.x);
        EmptyElement::at((r.bpw_linears, r.ppl))
            + Circle::new((0, 0), 4, TENPAK.filled())
            + Text::new(r.label.clone(), (dx, -18), label(13, TENPAK, side))
    }))?;
    // TenPak's labels sit above its markers; the others' alternate below and above along x, so
    // that neighbours stay legible.
    chart.draw_series(points.others.iter().enumerate().map(|(i, r)| {
        let (dx, side) = label_side(r.bpw_linears, &points.x);
        let dy = if i % 2 == 0 { 4 } else { -18 };
        EmptyElement::at((r.bpw_linears, r.ppl))
            + TriangleMarker::new((0, 0), 6, OTHER.filled())
            + Text::new(r.label.clone(), (dx, dy), label(13, OTHER, side))
    }))?;
    draw_footer(&footer, points, options)
}

/// Where the label of a point at `x` goes: right of its marker, or left of it in the right
/// quarter of the axis, so that it stays inside the chart.
fn label_side(x: f64, axis: &Range<f64>) -> (i32, HPos) {
    if x > axis.start + 0.75 * (axis.end - axis.start) { (-8, HPos::Right) } else { (8, HPos::Left) }
}

/// The legend and, under it, the caption.
fn draw_footer<DB: DrawingBackend>(footer: &DrawingArea<DB, Shift>, points: &Points, options: &PlotOptions) -> DrawResult<DB> {
    let style = text_style(13, BLACK).pos(Pos::new(HPos::Left, VPos::Center));
    let mut x = 80;
    let mut item = |element: &dyn Fn(i32) -> DrawResult<DB>| -> DrawResult<DB> {
        element(x)?;
        x += 230;
        Ok(())
    };
    item(&|x| {
        footer.draw(&PathElement::new(vec![(x - 12, 10), (x + 12, 10)], TENPAK.stroke_width(2)))?;
        footer.draw(&Circle::new((x, 10), 4, TENPAK.filled()))?;
        footer.draw_text("TenPak (packed by the sweep)", &style, (x + 18, 10))
    })?;
    if !points.others.is_empty() {
        item(&|x| {
            footer.draw(&TriangleMarker::new((x, 10), 6, OTHER.filled()))?;
            footer.draw_text("llama.cpp GGUF (same protocol)", &style, (x + 18, 10))
        })?;
    }
    if points.baseline.is_some() {
        item(&|x| {
            footer.draw(&PathElement::new(vec![(x - 12, 10), (x - 2, 10)], REFERENCE.stroke_width(2)))?;
            footer.draw(&PathElement::new(vec![(x + 3, 10), (x + 12, 10)], REFERENCE.stroke_width(2)))?;
            footer.draw_text("baseline (uncompressed)", &style, (x + 18, 10))
        })?;
    }
    footer.draw_text(&options.caption, &text_style(12, REFERENCE).pos(Pos::new(HPos::Left, VPos::Center)), (16, 36))
}

/// A backend whose text sizes fall back to an estimate when the font cannot say (none is
/// registered): plotters sizes tick labels through the font, but an SVG's text is laid out by its
/// viewer, so the estimate only places labels.
struct EstimatedText<DB>(DB);

impl<DB: DrawingBackend> DrawingBackend for EstimatedText<DB> {
    type ErrorType = DB::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.0.get_size()
    }
    fn ensure_prepared(&mut self) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.ensure_prepared()
    }
    fn present(&mut self) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.present()
    }
    fn draw_pixel(&mut self, point: BackendCoord, color: BackendColor) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_pixel(point, color)
    }
    fn draw_line<S: plotters_backend::BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_line(from, to, style)
    }
    fn draw_rect<S: plotters_backend::BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_rect(upper_left, bottom_right, style, fill)
    }
    fn draw_path<S: plotters_backend::BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_path(path, style)
    }
    fn draw_circle<S: plotters_backend::BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_circle(center, radius, style, fill)
    }
    fn fill_polygon<S: plotters_backend::BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.fill_polygon(vert, style)
    }
    fn draw_text<S: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_text(text, style, pos)
    }
    fn estimate_text_size<S: BackendTextStyle>(
        &self,
        text: &str,
        style: &S,
    ) -> std::result::Result<(u32, u32), DrawingErrorKind<Self::ErrorType>> {
        // About the advance of DejaVu Sans: 0.55 em a character, one em high.
        self.0
            .estimate_text_size(text, style)
            .or_else(|_| Ok(((0.55 * style.size() * text.chars().count() as f64).round() as u32, style.size().round() as u32)))
    }
    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        size: (u32, u32),
        src: &[u8],
    ) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.blit_bitmap(pos, size, src)
    }
}
