//! SVG plots of a scenario's runs (plotters, no fonts needed).
//!
//! - `cdf`: latency CDF per contender (x logarithmic), all repetitions pooled;
//! - `p99`: p99 latency in 1 s windows over the run, per contender (first repetition);
//! - `share`: each backend's share of traffic in 1 s windows, one panel per contender
//!   (first repetition);
//! - `capacity` (only when the balancer has an `autoscale` block): the capacity signal over
//!   the run, per contender (first repetition, first replica): utilization above, the
//!   recommended backends below, each with the offered load for reference.

use std::path::Path;

use plotters::{coord::ranged1d::Ranged, prelude::*};

use crate::{
    lab::{
        report::{measured_from_start, WINDOW},
        runner::ScenarioRuns,
    },
    loadgen::latency_histogram,
};

/// The plots drawn for every scenario, by file suffix.
pub const KINDS: [&str; 3] = ["cdf", "p99", "share"];

const SIZE: (u32, u32) = (900, 520);

fn color(i: usize) -> RGBColor {
    const COLORS: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    COLORS[i % COLORS.len()]
}

/// Draws one kind of plot for a scenario into `path`.
pub fn draw(kind: &str, sr: &ScenarioRuns, path: &Path) -> std::io::Result<()> {
    let result = match kind {
        "cdf" => cdf(sr, path),
        "p99" => p99_over_time(sr, path),
        _ => share_over_time(sr, path),
    };
    result.map_err(|e| std::io::Error::other(e.to_string()))
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

fn cdf(sr: &ScenarioRuns, path: &Path) -> PlotResult {
    let mut curves = Vec::new();
    let (mut lo, mut hi) = (f64::INFINITY, 0f64);
    for (contender, runs) in &sr.runs {
        let mut h = latency_histogram();
        for run in runs {
            for s in run.measured() {
                h.saturating_record(s.latency.as_micros().max(1) as u64);
            }
        }
        if h.is_empty() {
            continue;
        }
        let points: Vec<(f64, f64)> = (0..=400)
            .map(|i| {
                let q = f64::from(i) / 400.0;
                (h.value_at_quantile(q).max(1) as f64 / 1e3, q)
            })
            .collect();
        lo = lo.min(points[0].0);
        hi = hi.max(points[points.len() - 1].0);
        curves.push((contender.name(), points));
    }
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let (lo, hi) = (lo.clamp(0.01, 1e6) * 0.9, hi.max(lo * 2.0).max(0.1) * 1.1);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: latency CDF", sr.scenario.name),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..1f64)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms, from intended send time)")
        .y_desc("fraction of requests")
        .draw()?;
    draw_lines(&mut chart, curves, SeriesLabelPosition::LowerRight)?;
    root.present()?;
    Ok(())
}

fn p99_over_time(sr: &ScenarioRuns, path: &Path) -> PlotResult {
    let mut series = Vec::new();
    let (mut lo, mut hi, mut t_max) = (f64::INFINITY, 0f64, 1f64);
    for (contender, runs) in &sr.runs {
        let Some(run) = runs.first() else { continue };
        let mut windows: Vec<hdrhistogram::Histogram<u64>> = Vec::new();
        for (t, s) in measured_from_start(run) {
            let w = (t.as_nanos() / WINDOW.as_nanos()) as usize;
            while windows.len() <= w {
                windows.push(latency_histogram());
            }
            windows[w].saturating_record(s.latency.as_micros().max(1) as u64);
        }
        let points: Vec<(f64, f64)> = windows
            .iter()
            .enumerate()
            .filter(|(_, h)| !h.is_empty())
            .map(|(w, h)| {
                let t = (w as f64 + 0.5) * WINDOW.as_secs_f64();
                (t, h.value_at_quantile(0.99).max(1) as f64 / 1e3)
            })
            .collect();
        for (t, v) in &points {
            lo = lo.min(*v);
            hi = hi.max(*v);
            t_max = t_max.max(*t + 0.5);
        }
        series.push((contender.name(), points));
    }
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let (lo, hi) = (lo.clamp(0.01, 1e6) * 0.8, hi.max(lo * 2.0).max(0.1) * 1.25);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: p99 latency per second", sr.scenario.name),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..t_max, (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("time since the end of warm-up (s)")
        .y_desc("p99 latency (ms)")
        .draw()?;
    draw_lines(&mut chart, series, SeriesLabelPosition::UpperRight)?;
    root.present()?;
    Ok(())
}

fn share_over_time(sr: &ScenarioRuns, path: &Path) -> PlotResult {
    let n = sr.runs.len().max(1);
    let cols = 2usize.min(n);
    let rows = n.div_ceil(cols);
    let root = SVGBackend::new(path, (SIZE.0, 260 * rows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((rows, cols));
    for ((contender, runs), panel) in sr.runs.iter().zip(panels.iter()) {
        let Some(run) = runs.first() else { continue };
        let backends = sr.backends.len();
        let mut counts: Vec<(u32, Vec<u32>)> = Vec::new();
        for (t, s) in measured_from_start(run) {
            let w = (t.as_nanos() / WINDOW.as_nanos()) as usize;
            while counts.len() <= w {
                counts.push((0, vec![0; backends]));
            }
            counts[w].0 += 1;
            if let Some(b) = s.backend.map(usize::from).filter(|b| *b < backends) {
                counts[w].1[b] += 1;
            }
        }
        let t_max = counts.len().max(1) as f64 * WINDOW.as_secs_f64();
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("{}: {}", sr.scenario.name, contender.name()),
                ("sans-serif", 16),
            )
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(45)
            .build_cartesian_2d(0f64..t_max, 0f64..1f64)?;
        chart.configure_mesh().x_desc("s").y_desc("share").draw()?;
        let lines = (0..backends)
            .map(|b| {
                let points = counts
                    .iter()
                    .enumerate()
                    .map(|(w, (total, per))| {
                        (
                            (w as f64 + 0.5) * WINDOW.as_secs_f64(),
                            f64::from(per[b]) / f64::from((*total).max(1)),
                        )
                    })
                    .collect();
                (format!("b{b}"), points)
            })
            .collect();
        draw_lines(&mut chart, lines, SeriesLabelPosition::UpperRight)?;
    }
    root.present()?;
    Ok(())
}

/// Draws the capacity signal of a scenario's runs into `path`.
pub fn capacity(sr: &ScenarioRuns, path: &Path) -> std::io::Result<()> {
    capacity_over_time(sr, path).map_err(|e| std::io::Error::other(e.to_string()))
}

fn capacity_over_time(sr: &ScenarioRuns, path: &Path) -> PlotResult {
    let series: Vec<_> = sr
        .runs
        .iter()
        .zip(&sr.capacity)
        .filter(|(_, points)| !points.is_empty())
        .map(|((contender, _), points)| (contender.name(), points))
        .collect();
    let Some((_, first)) = series.first() else {
        return Ok(());
    };
    let capacity = sr.scenario.capacity().max(1e-9);
    let slots = sr.scenario.total_slots() as f64;
    let (c, target) = (
        first[0].view.backend_concurrency as f64,
        first[0].view.target_utilization,
    );
    let t_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.t))
        .fold(1.0, f64::max);
    // Offered load as a fraction of capacity; its in-flight equivalent (Little's law with
    // the nominal service time) in backends at the target.
    let offered: Vec<(f64, f64)> = first.iter().map(|p| (p.t, p.offered / capacity)).collect();
    let needed: Vec<(f64, f64)> = offered
        .iter()
        .map(|&(t, f)| (t, f * slots / (c * target)))
        .collect();
    let top_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.view.utilization))
        .chain(offered.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.1;
    let bottom_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| f64::from(p.view.recommended)))
        .chain(needed.iter().map(|p| p.1))
        .fold(2.0, f64::max)
        * 1.15;
    let root = SVGBackend::new(path, (SIZE.0, 2 * 300)).into_drawing_area();
    root.fill(&WHITE)?;
    let (upper, lower) = root.split_vertically(300);
    let grey = RGBColor(150, 150, 150);

    let mut chart = ChartBuilder::on(&upper)
        .caption(
            format!("{}: pool utilization", sr.scenario.name),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..t_max, 0f64..top_max)?;
    chart
        .configure_mesh()
        .x_desc("time since the end of warm-up (s)")
        .y_desc("utilization")
        .draw()?;
    chart
        .draw_series(LineSeries::new(offered, grey.stroke_width(1)))?
        .label("offered load / capacity")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], grey.stroke_width(1)));
    let lines = series
        .iter()
        .map(|(name, p)| {
            let points = p.iter().map(|p| (p.t, p.view.utilization)).collect();
            (*name, points)
        })
        .collect();
    draw_lines(&mut chart, lines, SeriesLabelPosition::UpperRight)?;

    let mut chart = ChartBuilder::on(&lower)
        .caption(
            format!(
                "{}: recommended backends (target {target}, concurrency {c})",
                sr.scenario.name
            ),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..t_max, 0f64..bottom_max)?;
    chart
        .configure_mesh()
        .x_desc("time since the end of warm-up (s)")
        .y_desc("backends")
        .draw()?;
    chart
        .draw_series(LineSeries::new(needed, grey.stroke_width(1)))?
        .label("offered x service time / (concurrency x target)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], grey.stroke_width(1)));
    let lines = series
        .iter()
        .map(|(name, p)| {
            let points = p
                .iter()
                .map(|p| (p.t, f64::from(p.view.recommended)))
                .collect();
            (*name, points)
        })
        .collect();
    draw_lines(&mut chart, lines, SeriesLabelPosition::UpperRight)?;
    root.present()?;
    Ok(())
}

/// Draws one coloured line per series, with a legend at `position`.
fn draw_lines<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    series: Vec<(impl Into<String>, Vec<(f64, f64)>)>,
    position: SeriesLabelPosition,
) -> PlotResult
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (i, (name, points)) in series.into_iter().enumerate() {
        let c = color(i);
        chart
            .draw_series(LineSeries::new(points, c.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
