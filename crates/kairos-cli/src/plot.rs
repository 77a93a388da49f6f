//! Plots of sigma schedules: log sigma against step, several schedules on one chart.

use std::path::Path;

use anyhow::{bail, Context};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::commands::schedule::Built;

/// DejaVu Sans, subset to Latin, σ, ±, arrows (see assets/DejaVuSans-LICENSE.txt): the machine
/// may have no system fonts, so plotters' ab_glyph backend gets this one.
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");
const SIZE: (u32, u32) = (960, 600);
/// Tableau 10: distinct colours that stay readable on white (unlike a rainbow's yellow).
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Plots `schedules` to `path` (`.png` or `.svg`). The final sigma 0 of a schedule has no
/// logarithm, so each curve stops at its last non-zero sigma.
pub(crate) fn schedules(path: &Path, title: &str, schedules: &[Built]) -> anyhow::Result<()> {
    register_font("sans-serif", FontStyle::Normal, FONT).map_err(|_| anyhow::anyhow!("the bundled font is invalid"))?;
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("png") => {
            let root = BitMapBackend::new(path, SIZE).into_drawing_area();
            draw(&root, title, schedules)?;
            root.present().with_context(|| format!("writing {}", path.display()))?;
        }
        Some("svg") => {
            let root = SVGBackend::new(path, SIZE).into_drawing_area();
            draw(&root, title, schedules)?;
            root.present().with_context(|| format!("writing {}", path.display()))?;
        }
        _ => bail!("plot file `{}` must end in .png or .svg", path.display()),
    }
    Ok(())
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, title: &str, schedules: &[Built]) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let curves: Vec<(&str, Vec<(f64, f64)>)> = schedules
        .iter()
        .map(|b| {
            let pts = b.sigmas.iter().enumerate().filter(|(_, s)| **s > 0.0).map(|(i, s)| (i as f64, *s)).collect();
            (b.schedule.as_str(), pts)
        })
        .collect();
    let all = curves.iter().flat_map(|(_, p)| p.iter());
    let (mut lo, mut hi, mut last) = (f64::INFINITY, 0.0f64, 1.0f64);
    for &(i, s) in all {
        lo = lo.min(s);
        hi = hi.max(s);
        last = last.max(i);
    }
    if !lo.is_finite() {
        bail!("nothing to plot: every sigma is 0");
    }
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(0.0..last, (lo * 0.8..hi * 1.25).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc("σ (log scale)")
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 18))
        .draw()?;
    for (k, (name, pts)) in curves.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
