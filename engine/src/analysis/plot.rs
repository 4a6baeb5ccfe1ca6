//! A PNG of the rhythm curve and motion energy with the cuts marked.

use std::path::Path;

use plotters::prelude::*;

use super::{Analysis, CURVE_HZ, LOCAL_FPS};
use crate::audio::atomic_output;
use crate::error::{Error, Result};
use crate::video::count;

pub fn plot_analysis(analysis: &Analysis, path: &Path) -> Result<()> {
    atomic_output(path, |tmp| {
        draw(analysis, tmp).map_err(|e| Error::output(path, e))
    })
}

fn draw(a: &Analysis, path: &Path) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::new(path, (1400, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let ymax = a
        .rhythm_50hz
        .iter()
        .skip(1)
        .fold(0.05f32, |m, &v| m.max(v))
        .min(2.0)
        * 1.1;
    let title = format!(
        "{} — {}, {:.0} BPM suggested",
        a.video
            .path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        count(a.cuts.len(), "cut", "cuts"),
        a.tempo.bpm
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..a.duration.max(0.1), 0f32..ymax)?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("d = 1 − cos(patches)")
        .draw()?;
    for c in &a.cuts {
        chart.draw_series(LineSeries::new(
            [(c.time, 0.0), (c.time, ymax)],
            RED.mix(0.6).stroke_width(1),
        ))?;
    }
    chart
        .draw_series(LineSeries::new(
            a.rhythm_50hz
                .iter()
                .enumerate()
                .skip(1)
                .map(|(i, &v)| (i as f64 / CURVE_HZ, v.min(ymax))),
            BLUE.stroke_width(1),
        ))?
        .label("rhythm curve (50 Hz)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(
            a.motion
                .iter()
                .enumerate()
                .map(|(i, &v)| (i as f64 / LOCAL_FPS, v.min(ymax))),
            GREEN.stroke_width(2),
        ))?
        .label("motion energy")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], GREEN));
    chart
        .draw_series(std::iter::once(PathElement::new(
            [(0.0, -1.0), (0.0, -1.0)],
            RED,
        )))?
        .label("cuts")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
