//! A run's report directory: `history.jsonl`, `nemesis.json`,
//! `results.json`, `latency.png`, `rate.png` and `index.html` tying them
//! together.

use std::fs;
use std::io::BufWriter;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::Context;
use plotters::prelude::*;
use serde_json::json;

use crate::history::{pair, write_jsonl, Op, OpType};
use crate::nemesis::Event;
use crate::run::Outcome;

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers a system font once for chart text; false if none is found.
fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        for p in FONT_PATHS {
            if let Ok(bytes) = fs::read(p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

fn color(kind: OpType) -> RGBColor {
    match kind {
        OpType::Ok => RGBColor(40, 160, 60),
        OpType::Fail => RGBColor(60, 90, 220),
        _ => RGBColor(220, 50, 40),
    }
}

pub fn write(
    dir: &Path,
    history: &[Op],
    events: &[Event],
    outcome: &Outcome,
) -> anyhow::Result<()> {
    write_jsonl(
        history,
        BufWriter::new(fs::File::create(dir.join("history.jsonl"))?),
    )?;
    fs::write(dir.join("nemesis.json"), serde_json::to_vec_pretty(events)?)?;
    fs::write(
        dir.join("results.json"),
        serde_json::to_vec_pretty(outcome)?,
    )?;
    let plotted = if font_ready() {
        latency_plot(&dir.join("latency.png"), history, events).context("latency.png")?;
        rate_plot(&dir.join("rate.png"), history, events).context("rate.png")?;
        true
    } else {
        false
    };
    fs::write(dir.join("index.html"), index_html(outcome, events, plotted))?;
    Ok(())
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn span(history: &[Op]) -> f64 {
    history.iter().map(|o| secs(o.time)).fold(1.0, f64::max)
}

fn shade<DB: DrawingBackend>(
    chart: &mut ChartContext<
        '_,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, impl Ranged<ValueType = f64>>,
    >,
    events: &[Event],
    y: (f64, f64),
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .draw_series(events.iter().map(|e| {
            Rectangle::new(
                [(secs(e.start), y.0), (secs(e.end), y.1)],
                RGBColor(250, 215, 215).filled(),
            )
        }))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// Draws the legend and writes the image.
fn finish<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    root: &DrawingArea<DB, plotters::coord::Shift>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

fn latency_plot(path: &Path, history: &[Op], events: &[Event]) -> anyhow::Result<()> {
    let paired = pair(history)?;
    let points: Vec<(f64, f64, OpType)> = paired
        .iter()
        .filter_map(|c| {
            let done = c.complete.as_ref()?;
            let ms = (done.time.saturating_sub(c.invoke.time)) as f64 / 1e6;
            Some((secs(c.invoke.time), ms.max(0.01), done.kind))
        })
        .collect();
    let max_ms = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.5;
    let root = BitMapBackend::new(path, (1200, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "latency per operation (red bands: nemesis active)",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..span(history), (0.01..max_ms).log_scale())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("latency (ms)")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    shade(&mut chart, events, (0.01, max_ms))?;
    for kind in [OpType::Ok, OpType::Fail, OpType::Info] {
        let c = color(kind);
        chart
            .draw_series(
                points
                    .iter()
                    .filter(|p| p.2 == kind)
                    .map(|p| Circle::new((p.0, p.1), 2, c.filled())),
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(format!("{kind:?}").to_lowercase())
            .legend(move |(x, y)| Circle::new((x, y), 4, c.filled()));
    }
    finish(&mut chart, &root)
}

fn rate_plot(path: &Path, history: &[Op], events: &[Event]) -> anyhow::Result<()> {
    let buckets = span(history).ceil() as usize + 1;
    let mut series = [
        vec![0u32; buckets],
        vec![0u32; buckets],
        vec![0u32; buckets],
    ];
    for op in history.iter().filter(|o| o.kind != OpType::Invoke) {
        let b = (secs(op.time) as usize).min(buckets - 1);
        let i = match op.kind {
            OpType::Ok => 0,
            OpType::Fail => 1,
            _ => 2,
        };
        series[i][b] += 1;
    }
    let max = series.iter().flatten().copied().max().unwrap_or(1).max(1) as f64 * 1.2;
    let root = BitMapBackend::new(path, (1200, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("completed operations per second", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..buckets as f64, 0.0..max)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("ops/s")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    shade(&mut chart, events, (0.0, max))?;
    for (i, kind) in [OpType::Ok, OpType::Fail, OpType::Info]
        .into_iter()
        .enumerate()
    {
        let c = color(kind);
        chart
            .draw_series(LineSeries::new(
                series[i]
                    .iter()
                    .enumerate()
                    .map(|(s, n)| (s as f64, *n as f64)),
                c.stroke_width(2),
            ))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(format!("{kind:?}").to_lowercase())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    finish(&mut chart, &root)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn index_html(o: &Outcome, events: &[Event], plotted: bool) -> String {
    let verdict = o.verdict.name().to_uppercase();
    let rows: String = events
        .iter()
        .map(|e| {
            format!(
                "<tr><td>{:.1}</td><td>{:.1}</td><td>{}</td><td>{}</td></tr>",
                secs(e.start),
                secs(e.end),
                escape(&serde_json::to_string(&e.fault).unwrap_or_default()),
                escape(&e.detail)
            )
        })
        .collect();
    let plots = if plotted {
        "<img src=\"latency.png\" width=\"1200\"><br><img src=\"rate.png\" width=\"1200\">"
            .to_string()
    } else {
        "<p>No plots: no font found (install fonts-dejavu-core).</p>".to_string()
    };
    let summary = json!({
        "counts": o.counts, "operations": o.operations, "nemesis_events": o.nemesis_events,
        "elections": o.elections, "heal_pause_ms": o.heal_pause_ms,
    });
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{w} / {n}: {verdict}</title>\
<style>body{{font-family:sans-serif;margin:2em}} td,th{{padding:2px 8px;text-align:left}} .v{{font-size:2em}}</style></head><body>\
<h1>{w} under {n}</h1><p class=\"v\">{verdict}</p>\
<p>seed {seed}, {nodes} nodes, {t} s. Reproduce with:<br><code>{cmd}</code></p>\
<pre>{summary}</pre>{plots}\
<h2>Nemesis</h2><table><tr><th>start (s)</th><th>end (s)</th><th>fault</th><th>detail</th></tr>{rows}</table>\
<h2>Files</h2><ul><li><a href=\"history.jsonl\">history.jsonl</a></li><li><a href=\"results.json\">results.json</a> (checker verdicts, anomalies)</li>\
<li><a href=\"nemesis.json\">nemesis.json</a></li><li>cluster/node-*.log</li></ul></body></html>\n",
        w = o.workload,
        n = escape(&o.nemesis),
        seed = o.seed,
        nodes = o.nodes,
        t = o.time_limit_s,
        cmd = escape(&o.command),
        summary = escape(&serde_json::to_string_pretty(&summary).unwrap_or_default()),
    )
}
