//! The demo's timeline picture: committed records per second per task,
//! with each kill marked (part of the `streamshield-runtime` binary).

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

fn register_font() -> bool {
    FONT_PATHS.iter().any(|p| match std::fs::read(p) {
        Ok(bytes) => {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
        }
        Err(_) => false,
    })
}

/// `series[t]` holds task `t`'s records per second, one value per
/// `bucket_s`; `marks` are `(second, label)`.
pub fn draw(
    path: &Path,
    series: &[Vec<f64>],
    bucket_s: f64,
    marks: &[(f64, String)],
) -> anyhow::Result<()> {
    if !register_font() {
        return Err(anyhow!(
            "no font for the picture's text (install fonts-dejavu-core)"
        ));
    }
    let len = series.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let span = len as f64 * bucket_s;
    let top = series.iter().flatten().copied().fold(1.0, f64::max) * 1.15;
    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "committed input records per second, per task (red: kills)",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..span, 0.0..top)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("records/s")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (at, label) in marks {
        chart
            .draw_series(LineSeries::new(
                [(*at, 0.0), (*at, top)],
                RGBColor(220, 40, 40).stroke_width(2),
            ))
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .draw_series(std::iter::once(Text::new(
                label.clone(),
                (*at + span / 200.0, top * 0.97),
                ("sans-serif", 14).into_font().color(&RGBColor(220, 40, 40)),
            )))
            .map_err(|e| anyhow!("{e}"))?;
    }
    for (t, s) in series.iter().enumerate() {
        let color = Palette99::pick(t).to_rgba();
        chart
            .draw_series(LineSeries::new(
                s.iter()
                    .enumerate()
                    .map(|(i, v)| ((i as f64 + 0.5) * bucket_s, *v)),
                color.stroke_width(2),
            ))
            .map_err(|e| anyhow!("{e}"))?
            .label(format!("task {t}"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
