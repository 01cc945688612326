//! The PNG charts of a [`Summary`]: delivered msgs/s and broker CPU per message of the
//! open-loop scenarios (grouped bars), and latency against offered load of the fixed-rate
//! scenarios (lines). Text is drawn with an embedded DejaVu Sans (`benches/assets/`), so
//! no system font or C library is needed.

use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, register_font};

use super::ChartError;
use super::results::{Pick, Summary};

/// Delivered msgs/s per open-loop scenario and broker.
pub const THROUGHPUT: &str = "throughput.png";
/// Broker CPU µs per delivered message per open-loop scenario and broker.
pub const CPU: &str = "cpu.png";
/// p50 and p99 latency against the offered rate of the fixed-rate scenarios.
pub const LATENCY: &str = "latency.png";

const DEJAVU_SANS: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
const FONT: &str = "sans-serif";
const WIDTH: u32 = 1280;
const HEIGHT: u32 = 720;
const HEADER_HEIGHT: u32 = 84;
const LEGEND_WIDTH: u32 = 220;
const GREY: RGBColor = RGBColor(90, 90, 90);
/// Okabe-Ito colours (readable with colour blindness), for brokers without a colour of their own.
const PALETTE: [RGBColor; 4] = [
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
    RGBColor(240, 228, 66),
];

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type DrawResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Writes [`THROUGHPUT`], [`CPU`] and [`LATENCY`] into `dir` (created if missing), with
/// `commit` named under the titles; returns their paths. A chart without data (e.g. no
/// fixed-rate scenario) says so in place of the plot, so that links to it still work.
///
/// # Errors
///
/// When the folder cannot be created, the font cannot be loaded, or a chart cannot be
/// drawn or written.
pub fn render_all(
    summary: &Summary,
    dir: &Path,
    commit: Option<&str>,
) -> Result<Vec<PathBuf>, ChartError> {
    load_font()?;
    fs::create_dir_all(dir).map_err(|source| ChartError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let rounds = summary.rounds();
    let origin = match commit {
        Some(commit) => format!("benches/compare.sh at commit {commit}"),
        None => "benches/compare.sh".to_owned(),
    };
    let common = format!(
        "{origin}, median of {rounds} round{}",
        if rounds == 1 { "" } else { "s" }
    );
    let charts = [
        (
            THROUGHPUT,
            "Throughput, open loop (higher is better)",
            "QoS 1, each publisher keeps its window of unacknowledged messages full",
            Plot::Bars(Bars {
                y_desc: "delivered msgs/s",
                value: |m| m.delivered_per_s,
                digits: 0,
                what: "open-loop runs",
            }),
        ),
        (
            CPU,
            "Broker CPU per delivered message, open loop (lower is better)",
            "user + system time of the broker process (/proc, 10 ms ticks)",
            Plot::Bars(Bars {
                y_desc: "broker CPU µs per delivered message",
                value: |m| m.cpu_us_per_delivered,
                digits: 1,
                what: "open-loop runs with deliveries",
            }),
        ),
        (
            LATENCY,
            "Latency against offered load (lower is better)",
            "fixed-rate scenarios, publish to delivery; p50 solid, p99 dashed",
            Plot::Latency,
        ),
    ];
    let mut written = Vec::with_capacity(charts.len());
    for (name, title, note, plot) in charts {
        let path = dir.join(name);
        let subtitle = format!("{common}; {note}");
        let body = |area: &Area| match &plot {
            Plot::Bars(spec) => bars(area, summary, spec),
            Plot::Latency => latency(area, summary),
        };
        render(&path, title, &subtitle, &body).map_err(|source| ChartError::Draw {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

/// Registers the embedded font under [`FONT`], once per process.
fn load_font() -> Result<(), ChartError> {
    static LOADED: OnceLock<bool> = OnceLock::new();
    let loaded = LOADED.get_or_init(|| register_font(FONT, FontStyle::Normal, DEJAVU_SANS).is_ok());
    if *loaded {
        Ok(())
    } else {
        Err(ChartError::Font)
    }
}

/// One PNG: a white canvas, the title and subtitle, then `body` below them.
fn render(
    path: &Path,
    title: &str,
    subtitle: &str,
    body: &dyn Fn(&Area) -> DrawResult,
) -> DrawResult {
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let (header, rest) = root.split_vertically(HEADER_HEIGHT);
    let centre = i32::try_from(WIDTH / 2)?;
    let top = Pos::new(HPos::Center, VPos::Top);
    header.draw(&Text::new(title, (centre, 14), text(28.0, &BLACK).pos(top)))?;
    header.draw(&Text::new(
        subtitle,
        (centre, 54),
        text(17.0, &GREY).pos(top),
    ))?;
    body(&rest)?;
    root.present()?;
    Ok(())
}

fn text(size: f64, colour: &RGBColor) -> TextStyle<'static> {
    (FONT, size).into_font().color(colour)
}

/// The colour of a broker: fixed for the three compare.sh runs, from [`PALETTE`] otherwise.
fn colour_of(broker: &str, index: usize) -> RGBColor {
    match broker {
        "edgehub" => RGBColor(0, 114, 178),
        "mosquitto" => RGBColor(230, 159, 0),
        "rumqttd" => RGBColor(0, 158, 115),
        _ => PALETTE[index % PALETTE.len()],
    }
}

/// A centred message in place of a plot.
fn no_data(area: &Area, message: &str) -> DrawResult {
    let (width, height) = area.dim_in_pixel();
    let centre = (i32::try_from(width / 2)?, i32::try_from(height / 2)?);
    let style = text(22.0, &GREY).pos(Pos::new(HPos::Center, VPos::Center));
    area.draw(&Text::new(message, centre, style))?;
    Ok(())
}

/// How a legend entry shows its series.
#[derive(Debug, Clone, Copy)]
enum Swatch {
    Bar,
    Solid,
    Dashed,
}

/// The legend, in its own column right of the plot, so that it never covers data.
fn legend(area: &Area, entries: &[(String, RGBColor, Swatch)]) -> DrawResult {
    let (x, mut y) = (8, 40);
    let label = text(18.0, &BLACK).pos(Pos::new(HPos::Left, VPos::Center));
    for (name, colour, swatch) in entries {
        let line = colour.stroke_width(3);
        match swatch {
            Swatch::Bar => area.draw(&Rectangle::new(
                [(x, y - 9), (x + 36, y + 9)],
                colour.filled(),
            ))?,
            Swatch::Solid => area.draw(&PathElement::new([(x, y), (x + 36, y)], line))?,
            Swatch::Dashed => {
                for start in [x, x + 14, x + 28] {
                    area.draw(&PathElement::new([(start, y), (start + 8, y)], line))?;
                }
            }
        }
        area.draw(&Text::new(name.as_str(), (x + 46, y), label.clone()))?;
        y += 32;
    }
    Ok(())
}

/// What a chart shows below its title.
enum Plot {
    /// Grouped bars of one value of the open-loop scenarios.
    Bars(Bars),
    /// Latency against offered load of the fixed-rate scenarios.
    Latency,
}

/// A grouped bar chart of one value of the open-loop scenarios.
struct Bars {
    /// The y axis description, with its unit.
    y_desc: &'static str,
    /// The value of one bar.
    value: Pick,
    /// Decimals of the value printed above each bar.
    digits: usize,
    /// What is missing when there is no bar.
    what: &'static str,
}

fn bars(area: &Area, summary: &Summary, spec: &Bars) -> DrawResult {
    let scenarios = summary.open_loop();
    let value = |scenario: &str, broker: &str| summary.get(scenario, broker).and_then(spec.value);
    let highest = scenarios
        .iter()
        .flat_map(|s| summary.brokers.iter().filter_map(|b| value(&s.name, b)))
        .fold(0.0, f64::max);
    if highest <= 0.0 {
        return no_data(area, &format!("no {} in these results", spec.what));
    }
    let (plot, legend_area) = area.split_horizontally(WIDTH - LEGEND_WIDTH);
    let mut chart = ChartBuilder::on(&plot)
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(110)
        .build_cartesian_2d(Slots(scenarios.len()), 0.0..highest * 1.1)?;
    let scenario_at = |x: &f64| {
        let index = x.floor() as usize;
        scenarios
            .get(index)
            .map_or_else(String::new, |s| s.name.clone())
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_max_light_lines(4)
        .x_label_formatter(&scenario_at)
        .y_label_formatter(&|y| thousands(*y, 0))
        .x_desc("scenario")
        .y_desc(spec.y_desc)
        .label_style(text(17.0, &BLACK))
        .axis_desc_style(text(19.0, &BLACK))
        .draw()?;

    // Each group spans 80 % of its scenario's slot, one bar per broker.
    let width = 0.8 / summary.brokers.len() as f64;
    let above = text(14.0, &BLACK).pos(Pos::new(HPos::Center, VPos::Bottom));
    let mut entries = Vec::new();
    for (j, broker) in summary.brokers.iter().enumerate() {
        let colour = colour_of(broker, j);
        let placed: Vec<(f64, f64)> = scenarios
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i as f64 + 0.1 + j as f64 * width, value(&s.name, broker)?)))
            .collect();
        chart.draw_series(placed.iter().map(|&(left, v)| {
            let gap = width * 0.06;
            Rectangle::new(
                [(left + gap, 0.0), (left + width - gap, v)],
                colour.filled(),
            )
        }))?;
        chart.draw_series(placed.iter().map(|&(left, v)| {
            Text::new(
                thousands(v, spec.digits),
                (left + width / 2.0, v),
                above.clone(),
            )
        }))?;
        entries.push((broker.clone(), colour, Swatch::Bar));
    }
    legend(&legend_area, &entries)
}

/// The x axis of the bar charts: one slot of width 1 per scenario, labelled at its centre.
#[derive(Debug, Clone, Copy)]
struct Slots(usize);

impl Ranged for Slots {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let span = f64::from(limit.1 - limit.0);
        limit.0 + (span * value / self.0.max(1) as f64).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        (0..self.0).map(|i| i as f64 + 0.5).collect()
    }

    fn range(&self) -> Range<f64> {
        0.0..self.0 as f64
    }
}

/// p50 (solid) and p99 (dashed) latency against the offered rate, one colour per broker,
/// both axes logarithmic.
fn latency(area: &Area, summary: &Summary) -> DrawResult {
    let percentiles: [(&str, Pick, Swatch); 2] = [
        ("p50", |m| m.p50_us, Swatch::Solid),
        ("p99", |m| m.p99_us, Swatch::Dashed),
    ];
    let mut lines = Vec::new();
    for (j, broker) in summary.brokers.iter().enumerate() {
        for (name, pick, swatch) in percentiles {
            let points: Vec<(f64, f64)> = summary
                .by_offered_rate(broker, pick)
                .into_iter()
                .filter(|&(x, y)| x > 0.0 && y > 0.0)
                .collect();
            if !points.is_empty() {
                lines.push((
                    format!("{broker} {name}"),
                    colour_of(broker, j),
                    swatch,
                    points,
                ));
            }
        }
    }
    let all = || lines.iter().flat_map(|line| line.3.iter().copied());
    let Some((x_min, x_max, y_min, y_max)) = all().fold(None, |bounds, (x, y)| {
        let (x0, x1, y0, y1) = bounds.unwrap_or((x, x, y, y));
        Some((x0.min(x), x1.max(x), y0.min(y), y1.max(y)))
    }) else {
        return no_data(area, "no fixed-rate runs with deliveries in these results");
    };
    let mut offered: Vec<f64> = all().map(|(x, _)| x).collect();
    offered.sort_by(f64::total_cmp);
    offered.dedup();

    let (plot, legend_area) = area.split_horizontally(WIDTH - LEGEND_WIDTH);
    let mut chart = ChartBuilder::on(&plot)
        .margin(16)
        .margin_right(40)
        .x_label_area_size(48)
        .y_label_area_size(110)
        .build_cartesian_2d(
            (x_min / 1.5..x_max * 1.5)
                .log_scale()
                .with_key_points(offered),
            (y_min / 2.0..y_max * 2.0).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_label_formatter(&|x| thousands(*x, 0))
        .y_label_formatter(&|y| duration(*y))
        .x_desc("offered load, msgs/s (log scale)")
        .y_desc("latency (log scale)")
        .label_style(text(17.0, &BLACK))
        .axis_desc_style(text(19.0, &BLACK))
        .draw()?;
    let mut entries = Vec::new();
    for (name, colour, swatch, points) in lines {
        let line = colour.stroke_width(3);
        match swatch {
            Swatch::Dashed => {
                chart.draw_series(DashedLineSeries::new(points.clone(), 12, 8, line))?;
                chart.draw_series(points.iter().map(|&p| Circle::new(p, 6, line)))?;
            }
            Swatch::Solid | Swatch::Bar => {
                chart.draw_series(LineSeries::new(points.clone(), line))?;
                chart.draw_series(points.iter().map(|&p| Circle::new(p, 6, colour.filled())))?;
            }
        }
        entries.push((name, colour, swatch));
    }
    legend(&legend_area, &entries)
}

/// `value` with `digits` decimals and a comma every three digits: `27,788` or `25.5`.
fn thousands(value: f64, digits: usize) -> String {
    let formatted = format!("{value:.digits$}");
    let (sign, unsigned) = match formatted.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", formatted.as_str()),
    };
    let (whole, fraction) = unsigned.split_at(unsigned.find('.').unwrap_or(unsigned.len()));
    let mut grouped = String::new();
    for (i, digit) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    format!("{sign}{grouped}{fraction}")
}

/// A latency in µs as a short duration: `500 µs`, `2.5 ms`, `1 s`.
fn duration(us: f64) -> String {
    let (value, unit) = if us >= 1e6 {
        (us / 1e6, "s")
    } else if us >= 1e3 {
        (us / 1e3, "ms")
    } else {
        (us, "µs")
    };
    let formatted = format!("{value:.1}");
    let trimmed = formatted.strip_suffix(".0").unwrap_or(&formatted);
    format!("{trimmed} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chart::results::tests::line;
    use crate::chart::results::{Run, read_runs};

    #[test]
    fn numbers_and_durations_read_well() {
        assert_eq!(thousands(27_788.4, 0), "27,788");
        assert_eq!(thousands(280_125.0, 0), "280,125");
        assert_eq!(thousands(1_234_567.891, 1), "1,234,567.9");
        assert_eq!(thousands(25.46, 1), "25.5");
        assert_eq!(thousands(0.0, 0), "0");
        assert_eq!(thousands(-1500.0, 0), "-1,500");
        assert_eq!(duration(500.0), "500 µs");
        assert_eq!(duration(2_500.0), "2.5 ms");
        assert_eq!(duration(1_000_000.0), "1 s");
    }

    /// Width and height from the IHDR chunk, after checking the PNG signature.
    fn png_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
        const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
        if !bytes.starts_with(SIGNATURE) || bytes.get(12..16)? != b"IHDR" {
            return None;
        }
        let be = |at: usize| Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
        Some((be(16)?, be(20)?))
    }

    fn check_pngs(paths: &[PathBuf]) {
        for path in paths {
            let bytes = fs::read(path).expect("chart written");
            assert_eq!(
                png_dimensions(&bytes),
                Some((WIDTH, HEIGHT)),
                "{}",
                path.display()
            );
        }
    }

    #[test]
    fn renders_the_three_charts_from_a_results_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let results = dir.path().join("results.jsonl");
        let mut lines = Vec::new();
        for round in 1..=3 {
            for (broker, speed) in [("edgehub", 1.0), ("mosquitto", 1.2), ("rumqttd", 3.0)] {
                let r = f64::from(round);
                for (scenario, rate) in [
                    ("qos1-1to1", None),
                    ("qos1-4to4", None),
                    ("qos1-fanout-1to4", None),
                    ("qos1-rate-2000", Some(2000)),
                    ("qos1-rate-20000", Some(20000)),
                    ("qos1-rate-50000", Some(50000)),
                ] {
                    let delivered = rate.map_or(30_000.0 * speed + r, f64::from);
                    let p50 = 300.0 * f64::from(rate.unwrap_or(1000)) / 1000.0 / speed + r;
                    lines.push(line(
                        scenario,
                        broker,
                        round,
                        rate,
                        delivered,
                        p50,
                        20.0 / speed,
                    ));
                }
            }
        }
        fs::write(&results, lines.join("\n")).expect("write results");

        let summary = Summary::of(&read_runs(&results).expect("runs"));
        let out = dir.path().join("charts");
        let written = render_all(&summary, &out, Some("abc1234")).expect("charts");
        let names: Vec<_> = written
            .iter()
            .map(|p| p.file_name().expect("name"))
            .collect();
        assert_eq!(names, [THROUGHPUT, CPU, LATENCY]);
        check_pngs(&written);
    }

    #[test]
    fn a_chart_without_data_still_renders() {
        let runs: Vec<Run> = [line("qos1-1to1", "other", 1, None, 100.0, 50.0, 10.0)]
            .iter()
            .map(|l| serde_json::from_str(l).expect("fixture"))
            .collect();
        let dir = tempfile::tempdir().expect("temp dir");
        let written = render_all(&Summary::of(&runs), dir.path(), None).expect("charts");
        check_pngs(&written);
    }
}
