//! Throughput against thread count, one line per implementation, one SVG chart
//! per bench, drawn with `plotters` (SVG backend only). Both axes are
//! logarithmic: thread counts grow by factors, and throughputs span from the
//! naive file's tens of operations per second to memory's millions.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::common::BenchResult;
use crate::compare::cell::{Bench, Impl};
use crate::compare::run::Row;

/// Draws `compare-<bench>.svg` in `dir` for each bench of `rows` with at least
/// two thread counts; returns the files written.
pub(crate) fn draw_all(rows: &[Row], dir: &Path) -> BenchResult<Vec<PathBuf>> {
    let mut written = Vec::new();
    for bench in Bench::ALL {
        let of_bench: Vec<&Row> = rows.iter().filter(|r| r.bench == bench).collect();
        let mut threads: Vec<usize> = of_bench.iter().map(|r| r.threads).collect();
        threads.sort_unstable();
        threads.dedup();
        if threads.len() < 2 {
            continue;
        }
        let path = dir.join(format!("compare-{bench}.svg"));
        draw(bench, &of_bench, &path)?;
        written.push(path);
    }
    Ok(written)
}

/// One line per implementation with rows of `bench`.
fn draw(bench: Bench, rows: &[&Row], path: &Path) -> BenchResult {
    let failed = |e: &dyn std::fmt::Display| format!("chart {}: {e}", path.display());
    let max_threads = rows.iter().map(|r| r.threads).max().unwrap_or(1) as f64;
    let (low, high) = rows
        .iter()
        .map(|r| r.ops_per_s())
        .fold((f64::INFINITY, 0.0_f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| failed(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{bench}: throughput by thread count"),
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d(
            (1.0..max_threads * 1.1).log_scale(),
            (low / 2.0..high * 2.0).log_scale(),
        )
        .map_err(|e| failed(&e))?;
    chart
        .configure_mesh()
        .x_desc("threads")
        .y_desc("operations per second")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(|e| failed(&e))?;
    for (k, imp) in Impl::ALL.iter().enumerate() {
        let mut points: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.imp == *imp)
            .map(|r| (r.threads as f64, r.ops_per_s()))
            .collect();
        if points.is_empty() {
            continue;
        }
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let color = Palette99::pick(k).to_rgba();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)).point_size(4))
            .map_err(|e| failed(&e))?
            .label(imp.name())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| failed(&e))?;
    root.present().map_err(|e| failed(&e))?;
    Ok(())
}
