//! The run's log: one JSON object per line (each step's loss, and the
//! held-out loss when it is measured), appended as the run goes so that a
//! resumed run continues it, and a PNG of both losses drawn from it.

use std::io::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::audio::atomic_output;
use crate::{Error, Result};

/// One line of the log.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub step: usize,
    /// The training batch's loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_out: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps_per_s: Option<f64>,
}

/// Appends `entry` to the log at `path`.
pub fn append(path: &Path, entry: &Entry) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::output(path, e))?;
    let line = serde_json::to_string(entry).map_err(|e| Error::output(path, e))?;
    writeln!(f, "{line}").map_err(|e| Error::output(path, e))
}

/// The log's entries up to and including step `upto` (a resumed run drops
/// what an interrupted one logged after its last checkpoint); lines that do
/// not parse (a line cut short by a crash) are left out.
pub fn read(path: &Path, upto: usize) -> Vec<Entry> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Entry>(l).ok())
        .filter(|e| e.step <= upto)
        .collect()
}

/// Rewrites the log at `path` with `entries` only.
pub fn rewrite(path: &Path, entries: &[Entry]) -> Result<()> {
    let mut text = String::new();
    for e in entries {
        text.push_str(&serde_json::to_string(e).map_err(|e| Error::output(path, e))?);
        text.push('\n');
    }
    atomic_output(path, |tmp| {
        std::fs::write(tmp, &text).map_err(|e| Error::output(path, e))
    })
}

/// Draws the training and held-out losses of `entries` against the step.
pub fn plot(entries: &[Entry], title: &str, path: &Path) -> Result<()> {
    atomic_output(path, |tmp| {
        draw(entries, title, tmp).map_err(|e| Error::output(path, e))
    })
}

fn draw(
    entries: &[Entry],
    title: &str,
    path: &Path,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let train: Vec<(f64, f64)> = entries
        .iter()
        .filter_map(|e| Some((e.step as f64, e.loss?)))
        .filter(|(_, l)| l.is_finite())
        .collect();
    let held: Vec<(f64, f64)> = entries
        .iter()
        .filter_map(|e| Some((e.step as f64, e.held_out?)))
        .filter(|(_, l)| l.is_finite())
        .collect();
    let last = entries.iter().map(|e| e.step).max().unwrap_or(1).max(1) as f64;
    let top = train
        .iter()
        .chain(&held)
        .map(|p| p.1)
        .fold(0.1f64, f64::max)
        * 1.05;
    let root = BitMapBackend::new(path, (1000, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..last, 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("cross-entropy")
        .draw()?;
    chart
        .draw_series(LineSeries::new(train, BLUE.mix(0.7).stroke_width(1)))?
        .label("training batch")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(held.clone(), RED.stroke_width(2)))?
        .label("held out")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
    chart.draw_series(held.iter().map(|&p| Circle::new(p, 3, RED.filled())))?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
