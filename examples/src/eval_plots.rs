//! PNG plots of an `eval` summary: accuracy against prompt length per plan, accuracy against
//! sparsity (one point per plan, routers joined into a curve) and prefill speed-up over
//! all-full against prompt length.
//!
//! Every plot is a [`SIZE`] PNG: a title on top, the data in [`PLOT_AREA`], and a legend on the
//! right (one entry per plan, in the summary's plan order, each plan in the same colour in every
//! plot; routers, named `router:...` by `eval`, with triangle markers, other plans with circles).
//! Text is drawn with DejaVu Sans compiled into the program, so no system font is needed.
//! Non-finite values (and lengths of 0) are left out; a plot with nothing left to draw is skipped
//! and said so in [`Plots::skipped`].

use std::collections::BTreeMap;
use std::error::Error;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use flux_models::eval::SummaryRow;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Deserialize;

/// File name of the accuracy against prompt length plot.
pub const ACCURACY_VS_LENGTH: &str = "accuracy-vs-length.png";
/// File name of the accuracy against sparsity plot.
pub const ACCURACY_VS_SPARSITY: &str = "accuracy-vs-sparsity.png";
/// File name of the prefill speed-up against prompt length plot.
pub const SPEEDUP_VS_LENGTH: &str = "speedup-vs-length.png";
/// The plan that speed-ups are measured against.
pub const BASELINE_PLAN: &str = "all-full";

/// Width and height of every plot in pixels.
pub const SIZE: (u32, u32) = (1000, 600);
/// A rectangle in pixels (right and bottom exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelRect {
    /// First column.
    pub left: i32,
    /// First row.
    pub top: i32,
    /// One past the last column.
    pub right: i32,
    /// One past the last row.
    pub bottom: i32,
}

const TITLE_HEIGHT: u32 = 40;
const LEGEND_WIDTH: u32 = 260;
const MARGIN: u32 = 15;
const X_LABEL_AREA: u32 = 50;
const Y_LABEL_AREA: u32 = 70;

/// Where the data is drawn in every plot: the axes' ranges map linearly onto this rectangle
/// (y upwards). Fixed, so that the pixels of a data point can be found from its value.
pub const PLOT_AREA: PixelRect = PixelRect {
    left: (MARGIN + Y_LABEL_AREA) as i32,
    top: (TITLE_HEIGHT + MARGIN) as i32,
    right: (SIZE.0 - LEGEND_WIDTH - MARGIN) as i32,
    bottom: (SIZE.1 - MARGIN - X_LABEL_AREA) as i32,
};
/// The accuracy axis (percent), widened only when a value falls outside it.
pub const ACCURACY_AXIS: Range<f64> = -5.0..105.0;
/// The sparsity axis (share of sparse layers).
pub const SPARSITY_AXIS: Range<f64> = -0.05..1.05;
/// Lengths are drawn on a log2 axis, x = log2(length), ticked at whole octaves: from half an
/// octave below the shortest length's octave (log2 rounded down) to half an octave above the
/// longest's (rounded up), so that even one length that is no power of two lies between ticks.
pub const LENGTH_AXIS_PADDING: f64 = 0.5;

/// What the plots are drawn from: the plan names in the order of the run and the summary rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvalSummary {
    /// Plan names, in the order they were given to `eval` (plans only in `rows` follow).
    pub plans: Vec<String>,
    /// One row per task x length x plan ([`flux_models::eval::summarize`]).
    pub rows: Vec<SummaryRow>,
}

/// A row of `summary.json` as read back: values that are missing or `null` (serde_json writes
/// NaN so) become NaN rather than failing the whole file.
#[derive(Deserialize)]
struct RowInFile {
    task: String,
    length: usize,
    plan: String,
    #[serde(default)]
    samples: usize,
    accuracy: Option<f64>,
    sparsity: Option<f64>,
    prefill_tokens_per_second: Option<f64>,
    decode_tokens_per_second: Option<f64>,
}

#[derive(Deserialize)]
struct SummaryFile {
    #[serde(default)]
    plans: Vec<String>,
    rows: Vec<RowInFile>,
}

impl EvalSummary {
    /// Reads the `plans` and `rows` of a `summary.json` written by `eval`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the summary", path.display()))?;
        let file: SummaryFile = serde_json::from_str(&text)
            .with_context(|| format!("{}: not an eval summary", path.display()))?;
        let nan = |v: Option<f64>| v.unwrap_or(f64::NAN);
        Ok(Self {
            plans: file.plans,
            rows: file
                .rows
                .into_iter()
                .map(|r| SummaryRow {
                    task: r.task,
                    length: r.length,
                    plan: r.plan,
                    samples: r.samples,
                    accuracy: nan(r.accuracy),
                    sparsity: nan(r.sparsity),
                    prefill_tokens_per_second: nan(r.prefill_tokens_per_second),
                    decode_tokens_per_second: nan(r.decode_tokens_per_second),
                })
                .collect(),
        })
    }

    /// The plans to draw: `plans` without repeats, then those found only in `rows`.
    fn plan_order(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for p in self.plans.iter().chain(self.rows.iter().map(|r| &r.plan)) {
            if !out.contains(p) {
                out.push(p.clone());
            }
        }
        out
    }
}

/// What [`draw_plots`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plots {
    /// The PNG files written.
    pub written: Vec<PathBuf>,
    /// Why each plot not written was skipped (one line each, naming the file).
    pub skipped: Vec<String>,
}

/// Draws the three plots of `summary` into `dir` (created if missing):
/// [`ACCURACY_VS_LENGTH`] (one line per plan, the mean accuracy over tasks at each length),
/// [`ACCURACY_VS_SPARSITY`] (one labelled point per plan: its mean sparsity, weighted by
/// samples as in `summary.md`, against its mean accuracy over its task x length cells; the
/// routers joined by a dashed curve in order of sparsity) and [`SPEEDUP_VS_LENGTH`] (each
/// plan's prefill tokens/s over [`BASELINE_PLAN`]'s on the same task and length, averaged over
/// tasks; skipped when there is no such plan).
///
/// An empty summary is an error; so is a file that cannot be drawn or written (the message names
/// it).
pub fn draw_plots(summary: &EvalSummary, dir: &Path) -> Result<Plots> {
    if summary.rows.is_empty() {
        bail!(
            "{}: the summary has no rows, there is nothing to plot",
            dir.display()
        );
    }
    register_font()?;
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let plans = summary.plan_order();
    let mut out = Plots::default();
    let mut note = |name: &str, drawn: Result<Option<String>>| -> Result<()> {
        let path = dir.join(name);
        match drawn.with_context(|| format!("{}: cannot draw", path.display()))? {
            None => out.written.push(path),
            Some(why) => out
                .skipped
                .push(format!("{}: skipped: {why}", path.display())),
        }
        Ok(())
    };
    note(
        ACCURACY_VS_LENGTH,
        accuracy_vs_length(summary, &plans, &dir.join(ACCURACY_VS_LENGTH)),
    )?;
    note(
        ACCURACY_VS_SPARSITY,
        accuracy_vs_sparsity(summary, &plans, &dir.join(ACCURACY_VS_SPARSITY)),
    )?;
    note(
        SPEEDUP_VS_LENGTH,
        speedup_vs_length(summary, &plans, &dir.join(SPEEDUP_VS_LENGTH)),
    )?;
    Ok(out)
}

/// DejaVu Sans, registered once as plotters' "sans-serif" (plotters' own defaults use that
/// family too), so text needs no system font.
fn register_font() -> Result<()> {
    static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
                .map_err(|_| "the compiled-in DejaVu Sans font cannot be read".to_string())
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// Saturated colours (no greys: those are the axes and the grid), one per plan in turn.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(23, 190, 207),
    RGBColor(227, 119, 194),
    RGBColor(140, 86, 75),
    RGBColor(188, 189, 34),
    RGBColor(0, 0, 200),
];

fn is_router(plan: &str) -> bool {
    plan.starts_with("router:")
}

/// How one plan looks in every plot.
struct Look {
    color: RGBColor,
    router: bool,
}

fn look(plans: &[String], plan: &str) -> Look {
    let i = plans.iter().position(|p| p == plan).unwrap_or(0);
    Look {
        color: PALETTE[i % PALETTE.len()],
        router: is_router(plan),
    }
}

/// A legend line: a marker (or a dashed stroke), its colour and its text.
struct LegendEntry {
    label: String,
    color: RGBColor,
    marker: Marker,
    /// A stroke through the marker (plots with lines), or the marker alone (points).
    line: bool,
}

#[derive(Clone, Copy)]
enum Marker {
    Circle,
    Triangle,
    Dashed,
}

impl LegendEntry {
    fn plan(plan: &str, look: &Look, line: bool) -> Self {
        Self {
            label: plan.to_string(),
            color: look.color,
            marker: if look.router {
                Marker::Triangle
            } else {
                Marker::Circle
            },
            line,
        }
    }
}

/// Data points (x, y) of one plan.
type Points = Vec<(f64, f64)>;
type DrawResult<T> = std::result::Result<T, Box<dyn Error>>;
type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type Chart<'a> = ChartContext<'a, BitMapBackend<'a>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The mean of the finite values of `values`, if any.
fn mean(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// Per length (> 0) of `plan`'s rows, the mean over tasks of `value` (finite values only).
fn per_length(
    rows: &[SummaryRow],
    plan: &str,
    value: impl Fn(&SummaryRow) -> f64,
) -> Vec<(usize, f64)> {
    let mut by_length: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.plan == plan && r.length > 0) {
        by_length.entry(r.length).or_default().push(value(r));
    }
    by_length
        .into_iter()
        .filter_map(|(l, v)| mean(v).map(|m| (l, m)))
        .collect()
}

/// "4K" for 4096, "1M" for 2^20, else the number.
fn tokens_label(tokens: u64) -> String {
    if tokens >= 1 << 20 && tokens.is_multiple_of(1 << 20) {
        format!("{}M", tokens >> 20)
    } else if tokens >= 1024 && tokens.is_multiple_of(1024) {
        format!("{}K", tokens >> 10)
    } else {
        tokens.to_string()
    }
}

/// The log2 axis holding the log2 lengths `xs`.
fn length_axis(xs: impl Iterator<Item = f64>) -> Range<f64> {
    let (lo, hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    (lo.floor() - LENGTH_AXIS_PADDING)..(hi.ceil() + LENGTH_AXIS_PADDING)
}

/// `ACCURACY_AXIS`, widened to hold `values`.
fn accuracy_axis(values: impl Iterator<Item = f64>) -> Range<f64> {
    values.fold(ACCURACY_AXIS, |r, v| {
        r.start.min(v - 5.0)..r.end.max(v + 5.0)
    })
}

/// Draws one PNG: white, the title, the legend on the right, and `chart` into the rest.
fn draw_png(
    path: &Path,
    title: &str,
    legend: &[LegendEntry],
    chart: impl FnOnce(&Area) -> DrawResult<()>,
) -> DrawResult<()> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let (title_area, rest) = root.split_vertically(TITLE_HEIGHT);
    let (chart_area, legend_area) = rest.split_horizontally(SIZE.0 - LEGEND_WIDTH);
    title_area.draw_text(
        title,
        &TextStyle::from(("sans-serif", 22).into_font()).color(&BLACK),
        (MARGIN as i32, 10),
    )?;
    chart(&chart_area)?;
    draw_legend(&legend_area, legend)?;
    root.present()?;
    Ok(())
}

/// Legend entries from the top of `area`; those that do not fit are counted in a last line.
fn draw_legend(area: &Area, entries: &[LegendEntry]) -> DrawResult<()> {
    const ROW: i32 = 24;
    const MAX_CHARS: usize = 30;
    let style = TextStyle::from(("sans-serif", 15).into_font()).color(&BLACK);
    let fits = ((SIZE.1 - TITLE_HEIGHT) as i32 / ROW - 2).max(1) as usize;
    let shown = if entries.len() > fits {
        fits - 1
    } else {
        entries.len()
    };
    for (i, e) in entries.iter().take(shown).enumerate() {
        let y = MARGIN as i32 + 8 + i as i32 * ROW;
        let x = 10;
        match e.marker {
            Marker::Dashed => {
                for dx in [0, 10, 20] {
                    area.draw(&PathElement::new(
                        vec![(x + dx, y), (x + dx + 6, y)],
                        e.color.stroke_width(2),
                    ))?;
                }
            }
            marker => {
                if e.line {
                    area.draw(&PathElement::new(
                        vec![(x, y), (x + 26, y)],
                        e.color.stroke_width(2),
                    ))?;
                }
                if let Marker::Triangle = marker {
                    area.draw(&TriangleMarker::new((x + 13, y), 6, e.color.filled()))?;
                } else {
                    area.draw(&Circle::new((x + 13, y), 4, e.color.filled()))?;
                }
            }
        }
        let label = if e.label.chars().count() > MAX_CHARS {
            let head: String = e.label.chars().take(MAX_CHARS - 1).collect();
            format!("{head}…")
        } else {
            e.label.clone()
        };
        // plotters puts the baseline half the size below the given top: this centres the
        // lower-case letters on the marker.
        area.draw_text(&label, &style, (x + 36, y - 4))?;
    }
    if shown < entries.len() {
        let y = MARGIN as i32 + shown as i32 * ROW;
        area.draw_text(
            &format!("and {} more", entries.len() - shown),
            &style,
            (10, y),
        )?;
    }
    Ok(())
}

/// One series per plan: a line through `points` (sorted by x) with a marker at each.
fn draw_plan_lines<'a>(chart: &mut Chart<'a>, series: &[(Look, Points)]) -> DrawResult<()> {
    for (look, points) in series {
        chart.draw_series(LineSeries::new(
            points.iter().copied(),
            look.color.stroke_width(2),
        ))?;
        draw_markers(chart, look, points)?;
    }
    Ok(())
}

fn draw_markers<'a>(chart: &mut Chart<'a>, look: &Look, points: &[(f64, f64)]) -> DrawResult<()> {
    if look.router {
        chart.draw_series(
            points
                .iter()
                .map(|&p| TriangleMarker::new(p, 7, look.color.filled())),
        )?;
    } else {
        chart.draw_series(
            points
                .iter()
                .map(|&p| Circle::new(p, 5, look.color.filled())),
        )?;
    }
    Ok(())
}

fn label_font() -> TextStyle<'static> {
    TextStyle::from(("sans-serif", 15).into_font()).color(&BLACK)
}

fn axis_font() -> TextStyle<'static> {
    TextStyle::from(("sans-serif", 16).into_font()).color(&BLACK)
}

/// A chart over `x` and `y` laid out as [`PLOT_AREA`].
fn chart_on<'a>(area: &Area<'a>, x: Range<f64>, y: Range<f64>) -> DrawResult<Chart<'a>> {
    Ok(ChartBuilder::on(area)
        .margin(MARGIN)
        .x_label_area_size(X_LABEL_AREA)
        .y_label_area_size(Y_LABEL_AREA)
        .build_cartesian_2d(x, y)?)
}

/// Mesh of a log2 length axis: ticks at whole octaves, labelled in tokens.
fn configure_length_mesh<'a>(
    chart: &mut Chart<'a>,
    x: &Range<f64>,
    y_desc: &str,
    y_format: &dyn Fn(&f64) -> String,
) -> DrawResult<()> {
    let octaves = (x.end.floor() - x.start.ceil() + 1.0).clamp(1.0, 12.0) as usize;
    let label = |v: &f64| {
        let k = v.round();
        if (v - k).abs() < 1e-6 && (0.0..63.0).contains(&k) {
            tokens_label(1u64 << k as u32)
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .x_labels(octaves)
        .x_label_formatter(&label)
        .max_light_lines(1)
        .y_labels(8)
        .y_label_formatter(y_format)
        .label_style(label_font())
        .axis_desc_style(axis_font())
        .x_desc("prompt length (tokens, log scale)")
        .y_desc(y_desc)
        .draw()?;
    Ok(())
}

/// Accuracy against length; `Some(why)` when there is nothing to draw.
fn accuracy_vs_length(
    summary: &EvalSummary,
    plans: &[String],
    path: &Path,
) -> Result<Option<String>> {
    let series: Vec<(Look, Points)> = plans
        .iter()
        .map(|p| {
            let points = per_length(&summary.rows, p, |r| r.accuracy)
                .into_iter()
                .map(|(l, a)| ((l as f64).log2(), a))
                .collect();
            (look(plans, p), points)
        })
        .collect();
    let drawn: Vec<&String> = plans
        .iter()
        .zip(&series)
        .filter(|(_, (_, pts))| !pts.is_empty())
        .map(|(p, _)| p)
        .collect();
    if drawn.is_empty() {
        return Ok(Some("no finite accuracy at a length > 0".into()));
    }
    let all = || series.iter().flat_map(|(_, pts)| pts.iter());
    let x = length_axis(all().map(|&(x, _)| x));
    let y = accuracy_axis(all().map(|&(_, y)| y));
    let legend: Vec<LegendEntry> = drawn
        .iter()
        .map(|p| LegendEntry::plan(p, &look(plans, p), true))
        .collect();
    draw_png(
        path,
        "Accuracy vs prompt length (mean over tasks)",
        &legend,
        |area| {
            let mut chart = chart_on(area, x.clone(), y)?;
            configure_length_mesh(&mut chart, &x, "accuracy (%)", &|v| format!("{v:.0}"))?;
            draw_plan_lines(&mut chart, &series)
        },
    )
    .map_err(|e| anyhow!("{e}"))?;
    Ok(None)
}

/// Accuracy against sparsity, one point per plan; `Some(why)` when there is nothing to draw.
fn accuracy_vs_sparsity(
    summary: &EvalSummary,
    plans: &[String],
    path: &Path,
) -> Result<Option<String>> {
    let mut points: Vec<(&String, Look, (f64, f64))> = Vec::new();
    for p in plans {
        let mine: Vec<&SummaryRow> = summary.rows.iter().filter(|r| &r.plan == p).collect();
        let accuracy = mean(mine.iter().map(|r| r.accuracy));
        // Weighted by samples, as summary.md's mean sparsity.
        let (sum, weight) =
            mine.iter()
                .filter(|r| r.sparsity.is_finite())
                .fold((0.0, 0.0), |(s, w), r| {
                    let n = r.samples.max(1) as f64;
                    (s + r.sparsity * n, w + n)
                });
        if let (Some(a), true) = (accuracy, weight > 0.0) {
            points.push((p, look(plans, p), (sum / weight, a)));
        }
    }
    if points.is_empty() {
        return Ok(Some(
            "no plan has both a finite accuracy and sparsity".into(),
        ));
    }
    let mut routers: Points = points
        .iter()
        .filter(|(_, l, _)| l.router)
        .map(|(_, _, xy)| *xy)
        .collect();
    routers.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut legend: Vec<LegendEntry> = points
        .iter()
        .map(|(p, l, _)| LegendEntry::plan(p, l, false))
        .collect();
    if routers.len() > 1 {
        legend.push(LegendEntry {
            label: "routers, by sparsity".into(),
            color: RGBColor(90, 90, 90),
            marker: Marker::Dashed,
            line: true,
        });
    }
    let x = SPARSITY_AXIS;
    let y = accuracy_axis(points.iter().map(|(_, _, (_, a))| *a));
    draw_png(
        path,
        "Accuracy vs sparsity (mean over tasks and lengths)",
        &legend,
        |area| {
            let mut chart = chart_on(area, x, y)?;
            chart
                .configure_mesh()
                .x_labels(12)
                .y_labels(8)
                .max_light_lines(1)
                .y_label_formatter(&|v| format!("{v:.0}"))
                .label_style(label_font())
                .axis_desc_style(axis_font())
                .x_desc("mean sparsity (share of layers sparse)")
                .y_desc("accuracy (%)")
                .draw()?;
            if routers.len() > 1 {
                chart.draw_series(DashedLineSeries::new(
                    routers.iter().copied(),
                    8,
                    5,
                    RGBColor(90, 90, 90).stroke_width(2),
                ))?;
            }
            for (plan, look, xy) in &points {
                draw_markers(&mut chart, look, &[*xy])?;
                // A label that would leave the plot on the right runs leftwards instead.
                let (width, _) = area.estimate_text_size(plan, &label_font())?;
                let (px, _) = chart.backend_coord(xy);
                let (dx, anchor) = if px + 9 + width as i32 > PLOT_AREA.right {
                    (-9, HPos::Right)
                } else {
                    (9, HPos::Left)
                };
                chart.draw_series(std::iter::once(
                    EmptyElement::at(*xy)
                        + Text::new(
                            plan.to_string(),
                            (dx, -20),
                            label_font().pos(Pos::new(anchor, VPos::Top)),
                        ),
                ))?;
            }
            Ok(())
        },
    )
    .map_err(|e| anyhow!("{e}"))?;
    Ok(None)
}

/// Prefill speed-up over all-full against length; `Some(why)` when there is nothing to draw.
fn speedup_vs_length(
    summary: &EvalSummary,
    plans: &[String],
    path: &Path,
) -> Result<Option<String>> {
    if !plans.iter().any(|p| p == BASELINE_PLAN) {
        return Ok(Some(format!(
            "no {BASELINE_PLAN} plan to measure speed-ups against"
        )));
    }
    let baseline: BTreeMap<(&str, usize), f64> = summary
        .rows
        .iter()
        .filter(|r| r.plan == BASELINE_PLAN)
        .filter(|r| r.prefill_tokens_per_second.is_finite() && r.prefill_tokens_per_second > 0.0)
        .map(|r| ((r.task.as_str(), r.length), r.prefill_tokens_per_second))
        .collect();
    let series: Vec<(&String, Look, Points)> = plans
        .iter()
        .map(|p| {
            let points = per_length(&summary.rows, p, |r| {
                baseline
                    .get(&(r.task.as_str(), r.length))
                    .map_or(f64::NAN, |full| r.prefill_tokens_per_second / full)
            })
            .into_iter()
            .map(|(l, s)| ((l as f64).log2(), s))
            .collect();
            (p, look(plans, p), points)
        })
        .filter(|(_, _, pts): &(_, _, Vec<_>)| !pts.is_empty())
        .collect();
    if series.is_empty() {
        return Ok(Some(format!(
            "no finite prefill speed of {BASELINE_PLAN} and another plan at the same task and length"
        )));
    }
    let all = || series.iter().flat_map(|(_, _, pts)| pts.iter());
    let x = length_axis(all().map(|&(x, _)| x));
    let top = all().fold(1.0f64, |m, &(_, s)| m.max(s)) * 1.15;
    let legend: Vec<LegendEntry> = series
        .iter()
        .map(|(p, l, _)| LegendEntry::plan(p, l, true))
        .collect();
    let series: Vec<(Look, Points)> = series.into_iter().map(|(_, l, p)| (l, p)).collect();
    draw_png(
        path,
        "Prefill speed-up over all-full vs prompt length (mean over tasks)",
        &legend,
        |area| {
            let mut chart = chart_on(area, x.clone(), 0.0..top)?;
            configure_length_mesh(
                &mut chart,
                &x,
                "prefill speed-up (x all-full's tokens/s)",
                &|v| format!("{v:.1}"),
            )?;
            draw_plan_lines(&mut chart, &series)
        },
    )
    .map_err(|e| anyhow!("{e}"))?;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_labels_are_short() {
        assert_eq!(tokens_label(4096), "4K");
        assert_eq!(tokens_label(32768), "32K");
        assert_eq!(tokens_label(1 << 20), "1M");
        assert_eq!(tokens_label(700), "700");
        assert_eq!(tokens_label(1536), "1536");
    }

    #[test]
    fn means_leave_out_non_finite_values() {
        assert_eq!(mean([1.0, f64::NAN, 3.0, f64::INFINITY]), Some(2.0));
        assert_eq!(mean([f64::NAN]), None);
    }
}
