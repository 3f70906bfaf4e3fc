//! `plot.svg`: throughput (accepted/s and delivered/s) above, each stream's latency p50 and p99 below, one point
//! per second of the timeline.

use std::collections::BTreeSet;
use std::path::Path;

use plotters::prelude::*;

use crate::timeline::Second;

const SIZE: (u32, u32) = (1100, 760);
const COLORS: [RGBColor; 6] = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];

pub fn write(path: &Path, title: &str, timeline: &[Second]) -> Result<(), String> {
    draw(path, title, timeline).map_err(|e| format!("drawing {}: {e:?}", path.display()))
}

fn draw(path: &Path, title: &str, timeline: &[Second]) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let (upper, lower) = root.split_vertically(SIZE.1 / 2 - 20);
    let first = timeline.first().map_or(0, |s| s.second);
    let last = timeline.last().map_or(1, |s| s.second).max(first + 1);
    let xs = first as f64..(last + 1) as f64;

    let top = timeline.iter().map(|s| s.accepted.max(s.delivered)).max().unwrap_or(1).max(1) as f64 * 1.1;
    let mut chart = ChartBuilder::on(&upper)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(xs.clone(), 0.0..top)?;
    chart.configure_mesh().x_desc("second").y_desc("per second").draw()?;
    let series = [
        ("accepted/s", BLUE, timeline.iter().map(|s| (s.second as f64, s.accepted as f64)).collect::<Vec<_>>()),
        ("delivered/s", RED, timeline.iter().map(|s| (s.second as f64, s.delivered as f64)).collect()),
    ];
    for (label, color, points) in series {
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;

    let streams: BTreeSet<&str> = timeline.iter().flat_map(|s| s.latency.keys().map(String::as_str)).collect();
    let highest = timeline.iter().flat_map(|s| s.latency.values().map(|l| l.p99_ms)).fold(1.0_f64, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&lower)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(xs, 0.0..highest)?;
    chart.configure_mesh().x_desc("second (when sent or due)").y_desc("latency, ms").draw()?;
    for (i, stream) in streams.into_iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        for (quantile, width) in [("p50", 1), ("p99", 3)] {
            let points: Vec<(f64, f64)> = timeline
                .iter()
                .filter_map(|s| {
                    let l = s.latency.get(stream)?;
                    Some((s.second as f64, if quantile == "p50" { l.p50_ms } else { l.p99_ms }))
                })
                .collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(width)))?
                .label(format!("{stream} {quantile}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width)));
        }
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::timeline::SecondLatency;

    #[test]
    fn the_plot_is_an_svg_with_both_charts() {
        let dir = std::env::temp_dir().join(format!("herald-loadtest-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("plot.svg");
        let timeline: Vec<Second> = (0..5)
            .map(|s| Second {
                second: s,
                accepted: 100,
                delivered: 90 + s as u64,
                latency: BTreeMap::from([("steady".to_string(), SecondLatency { p50_ms: 2.0, p99_ms: 9.5 })]),
            })
            .collect();
        write(&path, "steady", &timeline).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(100)]);
        for label in ["delivered/s", "accepted/s", "steady p99", "latency, ms"] {
            assert!(svg.contains(label), "no {label} in the plot");
        }
        write(&dir.join("empty.svg"), "empty", &[]).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
