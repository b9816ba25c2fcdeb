//! Line plots as SVG (plotters), for `homi bench` and its GPU sweeps: a log2 x axis
//! ticked at the measured x values, one line per series, and optionally a whisker at
//! each point for the spread of its repetitions.

use std::path::Path;

use plotters::prelude::*;

/// One point: the value drawn and, when repeated, the range it was taken from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub range: Option<(f64, f64)>,
}

impl From<(f64, f64)> for Point {
    fn from((x, y): (f64, f64)) -> Self {
        Point { x, y, range: None }
    }
}

/// One line of a plot.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<Point>,
}

/// Titles of a plot.
pub struct Labels<'a> {
    pub title: &'a str,
    pub x: &'a str,
    pub y: &'a str,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(0x4a, 0x7a, 0xb5),
    RGBColor(0xd0, 0x6a, 0x2c),
    RGBColor(0x3a, 0x9a, 0x5b),
    RGBColor(0x8e, 0x4a, 0xa8),
    RGBColor(0xb8, 0x3a, 0x4b),
    RGBColor(0x6b, 0x6b, 0x6b),
];

/// Writes a line plot of `series` to `file`.
pub fn lines(file: &Path, labels: &Labels, series: &[Series]) -> anyhow::Result<()> {
    let pts = || series.iter().flat_map(|s| s.points.iter());
    let top = pts().map(|p| p.range.map_or(p.y, |r| r.1).max(p.y)).fold(0.0f64, f64::max);
    let mut xs: Vec<f64> = pts().map(|p| p.x).filter(|x| *x > 0.0).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    if xs.is_empty() {
        // An empty plot still gets axes.
        xs.push(1.0);
    }
    let (xmin, xmax) = (xs[0], xs[xs.len() - 1]);
    // Half a step of room either side of the outermost values, on the log scale.
    let x_range = (xmin / 1.3)..(xmax * 1.3);
    let root = SVGBackend::new(file, (760, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(labels.title, ("sans-serif", 17))
        .margin(14)
        .x_label_area_size(42)
        .y_label_area_size(64)
        // Room above the highest point for the legend.
        .build_cartesian_2d(x_range.log_scale().with_key_points(xs.clone()), 0.0..(top * 1.3).max(1e-9))?;
    chart
        .configure_mesh()
        .x_desc(labels.x)
        .y_desc(labels.y)
        .x_label_formatter(&|x| format!("{x}"))
        .y_label_formatter(&|y| format!("{y}"))
        .light_line_style(TRANSPARENT)
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        // Whiskers of different series at one x are set a little apart, to stay visible.
        let dodge = 1.0 + 0.03 * (i as f64 - (series.len() - 1) as f64 / 2.0);
        chart
            .draw_series(LineSeries::new(s.points.iter().map(|p| (p.x, p.y)), c.stroke_width(2)))?
            .label(s.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        chart.draw_series(s.points.iter().map(|p| Circle::new((p.x, p.y), 3, c.filled())))?;
        chart.draw_series(s.points.iter().filter_map(|p| {
            p.range.map(|(lo, hi)| PathElement::new(vec![(p.x * dodge, lo), (p.x * dodge, hi)], c.stroke_width(1)))
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 13))
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plot_has_a_line_and_a_legend_entry_per_series_and_whiskers() {
        let dir = std::env::temp_dir().join(format!("homi-plot-lines-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("p.svg");
        let series: Vec<Series> = ["alpha", "beta"]
            .iter()
            .enumerate()
            .map(|(i, l)| Series {
                label: l.to_string(),
                points: [1.0, 8.0, 32.0]
                    .iter()
                    .map(|&x| Point { x, y: x * (i + 1) as f64, range: Some((x * 0.9, x * 1.1 * (i + 1) as f64)) })
                    .collect(),
            })
            .collect();
        lines(&file, &Labels { title: "T", x: "QD", y: "IOPS" }, &series).unwrap();
        let svg = std::fs::read_to_string(&file).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("alpha") && svg.contains("beta"));
        // Per series: the data line and its legend sample and 3 whiskers (polylines).
        assert!(svg.matches("<polyline").count() >= 2 * (2 + 3), "{}", svg.matches("<polyline").count());
        // Ticks at the measured x values.
        let texts: Vec<&str> = svg.split("</text>").filter_map(|t| t.rsplit('>').next()).map(str::trim).collect();
        assert!(texts.contains(&"8") && texts.contains(&"32"), "{texts:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
