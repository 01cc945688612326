//! The soak's chart: the hub's RSS (top) and its disk (bottom: the data folder, and the
//! filesystem's used bytes with the filler) over time, each fault a vertical line.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use super::{FaultEvent, Sample, SoakReport};
use crate::chart::ChartError;

/// The chart's file name.
pub const SOAK_PNG: &str = "soak.png";

const DEJAVU_SANS: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
const FONT: &str = "sans-serif";
const MIB: f64 = 1024.0 * 1024.0;

fn load_font() -> Result<(), ChartError> {
    static LOADED: OnceLock<bool> = OnceLock::new();
    if *LOADED.get_or_init(|| register_font(FONT, FontStyle::Normal, DEJAVU_SANS).is_ok()) {
        Ok(())
    } else {
        Err(ChartError::Font)
    }
}

/// The colour of a fault's line.
fn fault_colour(kind: &str) -> RGBColor {
    match kind {
        "module_restart" => RGBColor(0, 158, 115),
        "sigterm" => RGBColor(86, 180, 233),
        "sigkill" => RGBColor(213, 94, 0),
        _ => RGBColor(204, 121, 167),
    }
}

type DrawResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Draws the chart to `path`.
///
/// # Errors
///
/// When the font cannot be loaded or the PNG cannot be drawn or written.
pub fn draw(
    path: &Path,
    samples: &[Sample],
    events: &[FaultEvent],
    report: &SoakReport,
) -> Result<(), ChartError> {
    load_font()?;
    draw_png(path, samples, events, report).map_err(|source| ChartError::Draw {
        path: path.to_owned(),
        source,
    })
}

#[allow(clippy::cast_precision_loss)]
fn draw_png(
    path: &Path,
    samples: &[Sample],
    events: &[FaultEvent],
    report: &SoakReport,
) -> DrawResult {
    let root = BitMapBackend::new(path, (1280, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let (header, body) = root.split_vertically(70);
    header.draw_text(
        &format!(
            "edgehub soak: {:.0} min, {} pairs at {:.0} msgs/s, {} faults",
            report.duration_s / 60.0,
            report.pairs,
            report.rate_per_s,
            report.events.len()
        ),
        &(FONT, 26).into_font().color(&BLACK),
        (20, 10),
    )?;
    header.draw_text(
        &format!(
            "published {}, acknowledged {}, delivered {}, lost {}, duplicated {}   \
             (lines: green module restart, blue SIGTERM, orange SIGKILL, pink full disk)",
            report.published, report.acknowledged, report.delivered, report.lost, report.duplicated
        ),
        &(FONT, 16).into_font().color(&RGBColor(90, 90, 90)),
        (20, 44),
    )?;
    let (top, bottom) = body.split_vertically(365);
    let minutes = |t: f64| t / 60.0;
    let x_max = samples
        .last()
        .map_or(1.0, |s| minutes(s.t_s))
        .max(minutes(report.duration_s))
        .max(0.1);
    let rss: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.rss_bytes > 0)
        .map(|s| (minutes(s.t_s), s.rss_bytes as f64 / MIB))
        .collect();
    let data: Vec<(f64, f64)> = samples
        .iter()
        .map(|s| (minutes(s.t_s), s.data_bytes as f64 / MIB))
        .collect();
    let used: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.fs_used_bytes > 0)
        .map(|s| (minutes(s.t_s), s.fs_used_bytes as f64 / MIB))
        .collect();
    panel(
        &top,
        "hub RSS (MiB)",
        x_max,
        &[("RSS", RGBColor(0, 114, 178), &rss)],
        events,
    )?;
    panel(
        &bottom,
        "disk (MiB)",
        x_max,
        &[
            ("data folder", RGBColor(0, 114, 178), &data),
            (
                "filesystem used (filler included)",
                RGBColor(150, 150, 150),
                &used,
            ),
        ],
        events,
    )?;
    root.present()?;
    Ok(())
}

type Series<'a> = (&'a str, RGBColor, &'a [(f64, f64)]);

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    y_desc: &str,
    x_max: f64,
    series: &[Series<'_>],
    events: &[FaultEvent],
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let y_max = series
        .iter()
        .flat_map(|(_, _, points)| points.iter().map(|p| p.1))
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("minutes")
        .y_desc(y_desc)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .draw()?;
    for event in events {
        let x = event.t_s / 60.0;
        chart.draw_series(LineSeries::new(
            [(x, 0.0), (x, y_max)],
            fault_colour(event.kind).stroke_width(2),
        ))?;
    }
    for (name, colour, points) in series {
        let colour = *colour;
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                colour.stroke_width(2),
            ))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font((FONT, 14))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    Ok(())
}
