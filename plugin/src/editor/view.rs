//! The editor's drawing: an egui app on baseview's window thread. It reads
//! the [`View`] snapshot and the parameters, draws them, and turns what the
//! user does into [`Command`]s and parameter edits. Nothing here waits on
//! the engine or the plugin's locks.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crossbeam_channel::{Receiver, TryRecvError};
use egui::{
    Align2, Color32, ColorImage, FontId, Pos2, Rect, Sense, Stroke, TextureHandle, TextureOptions,
    Ui, pos2, vec2,
};
use vidmusician_engine::neural::device::DeviceChoice;
use vidmusician_engine::service::{EngineChoice, Stage, VideoOverview};

use super::model::{Command, EditorModel, Status, View};
use crate::params::{PARAMS, ParamId};

/// Colours of the timeline's lanes.
const CURVE: Color32 = Color32::from_rgb(90, 170, 255);
const CUT: Color32 = Color32::from_rgb(255, 120, 60);
const WAVE: Color32 = Color32::from_rgb(120, 210, 140);
const ONSET: Color32 = Color32::from_rgb(230, 230, 120);
const PLAYHEAD: Color32 = Color32::from_rgb(255, 255, 255);
const SECTION: Color32 = Color32::from_rgb(200, 140, 255);
const BAR: Color32 = Color32::from_rgb(110, 110, 130);

pub(crate) struct EditorApp {
    model: Arc<EditorModel>,
    /// The thumbnails as textures, for the overview they were made from.
    textures: Option<(Arc<VideoOverview>, Vec<TextureHandle>)>,
    /// What the user is typing; taken from the view when it changes and the
    /// field is not being edited.
    path_text: String,
    prompt_text: String,
    seen: Option<Arc<View>>,
    /// A file picker running on a thread of its own.
    picker: Option<Receiver<Result<Option<PathBuf>, String>>>,
    picker_error: Option<String>,
    /// The stretch dragged over on the timeline, seconds of the video
    /// (where the drag started, where it is).
    selection: Option<(f64, f64)>,
    /// Whether the host has a timeline to take the video from (REAPER).
    timeline_host: bool,
}

impl EditorApp {
    pub(crate) fn new(model: Arc<EditorModel>, timeline_host: bool) -> Self {
        Self {
            model,
            textures: None,
            path_text: String::new(),
            prompt_text: String::new(),
            seen: None,
            picker: None,
            picker_error: None,
            selection: None,
            timeline_host,
        }
    }

    fn sync_texts(&mut self, view: &Arc<View>, editing: bool) {
        if self.seen.as_ref().is_some_and(|s| Arc::ptr_eq(s, view)) || editing {
            return;
        }
        self.path_text = view
            .video
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        self.prompt_text = view.prompt.clone();
        self.seen = Some(view.clone());
    }

    fn poll_picker(&mut self) {
        let Some(rx) = &self.picker else { return };
        match rx.try_recv() {
            Ok(Ok(Some(path))) => {
                self.model.send(Command::SetVideo(path));
                self.picker = None;
            }
            Ok(Ok(None)) | Err(TryRecvError::Disconnected) => self.picker = None,
            Ok(Err(e)) => {
                self.picker_error = Some(e);
                self.picker = None;
            }
            Err(TryRecvError::Empty) => {}
        }
    }

    fn video_row(&mut self, ui: &mut Ui, view: &View) {
        ui.horizontal(|ui| {
            ui.label("Video");
            let field = ui.add(
                egui::TextEdit::singleline(&mut self.path_text)
                    .hint_text("path of the video to score")
                    .desired_width(ui.available_width() - 260.0),
            );
            let r = field.rect;
            self.model
                .drawn
                .video_field
                .set([r.left(), r.top(), r.right(), r.bottom()]);
            if field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter)) {
                let p = PathBuf::from(self.path_text.trim());
                if !p.as_os_str().is_empty() {
                    self.model.send(Command::SetVideo(p));
                }
            }
            let browsing = self.picker.is_some();
            if ui
                .add_enabled(!browsing, egui::Button::new("Choose…"))
                .clicked()
            {
                self.picker_error = None;
                self.picker = Some(spawn_picker(self.model.clone()));
            }
            if self.timeline_host && view.overridden && ui.button("Follow timeline").clicked() {
                self.model.send(Command::FollowTimeline);
            }
        });
        if view.from_timeline {
            ui.small("From the video item on the host's timeline. Choose a file to override it.");
        }
        if let Some(e) = &self.picker_error {
            ui.colored_label(CUT, e);
        }
    }

    fn prompt_row(&mut self, ui: &mut Ui) {
        ui.horizontal(|ui| {
            ui.label("Prompt");
            let field = ui.add(
                egui::TextEdit::singleline(&mut self.prompt_text)
                    .hint_text("what the music should be, e.g. calm piano, slow strings")
                    .desired_width(ui.available_width()),
            );
            if field.lost_focus() {
                self.model
                    .send(Command::SetPrompt(self.prompt_text.clone()));
            }
        });
    }

    fn engine_row(&mut self, ui: &mut Ui, view: &View) {
        let params = &self.model.params;
        ui.horizontal(|ui| {
            ui.label("Engine");
            let current = params.get(ParamId::Engine) as usize;
            let mut chosen = current;
            egui::ComboBox::from_id_salt("engine")
                .selected_text(
                    EngineChoice::from_index(current)
                        .unwrap_or_default()
                        .as_str(),
                )
                .show_ui(ui, |ui| {
                    for e in EngineChoice::ALL {
                        ui.selectable_value(&mut chosen, e.index(), e.as_str())
                            .on_hover_text(e.describe());
                    }
                });
            if chosen != current {
                self.model.edit(ParamId::Engine, chosen as f64);
            }
            if let Some(e) = view.engine {
                ui.label(format!("in use: {}", e.as_str()));
            }
        });
        if let Some(why) = &view.why {
            ui.small(why);
        }
        ui.horizontal(|ui| {
            ui.label("Device");
            let mut chosen = view.device;
            egui::ComboBox::from_id_salt("device")
                .selected_text(device_label(view.device))
                .show_ui(ui, |ui| {
                    for d in [DeviceChoice::Auto, DeviceChoice::Cpu, DeviceChoice::Cuda(0)] {
                        ui.selectable_value(&mut chosen, d, device_label(d));
                    }
                })
                .response
                .on_hover_text(
                    "Where the neural engines run. A GPU needs an NVIDIA driver and the \
                     vidmusician-cuda helper beside the plugin; auto uses it when it answers.",
                );
            if chosen != view.device {
                self.model.send(Command::SetDevice(chosen));
            }
            if let Some(note) = &view.device_note {
                ui.small(note);
            }
        });
    }

    fn params_row(&mut self, ui: &mut Ui) {
        let params = &self.model.params;
        ui.horizontal_wrapped(|ui| {
            ui.spacing_mut().slider_width = 110.0;
            for id in [
                ParamId::RhythmStrength,
                ParamId::SemanticStrength,
                ParamId::Guidance,
                ParamId::Gain,
            ] {
                let spec = &PARAMS[id as usize];
                let mut v = params.get(id);
                let slider = egui::Slider::new(&mut v, spec.min..=spec.max)
                    .text(spec.name)
                    .suffix(if spec.unit.is_empty() {
                        String::new()
                    } else {
                        format!(" {}", spec.unit)
                    });
                // A setting that needs new music takes effect when the drag
                // ends, not at every step of it; until then it only moves.
                let r = ui.add(slider);
                if r.drag_started() {
                    self.model.begin_gesture(id);
                }
                if r.changed() && spec.regenerates && r.dragged() {
                    params.set(id, v);
                } else if r.changed() || (spec.regenerates && r.drag_stopped()) {
                    self.model.edit(id, v);
                }
                if r.drag_stopped() {
                    self.model.end_gesture(id);
                }
            }
            let mut follow = params.get(ParamId::FollowTempo) >= 0.5;
            if ui.checkbox(&mut follow, "Follow host tempo").changed() {
                self.model
                    .edit(ParamId::FollowTempo, if follow { 1.0 } else { 0.0 });
            }
            ui.label(format!("Seed {}", params.get(ParamId::Seed) as u64));
        });
    }

    fn actions_row(&mut self, ui: &mut Ui, view: &View) {
        ui.horizontal(|ui| {
            let working = matches!(view.status, Status::Working { .. });
            let has_video = view.video.is_some();
            let generate = ui.add_enabled(has_video, egui::Button::new("Generate"));
            let r = generate.rect;
            self.model
                .drawn
                .generate
                .set([r.left(), r.top(), r.right(), r.bottom()]);
            if generate.clicked() {
                self.model.send(Command::Generate);
            }
            if ui
                .add_enabled(has_video, egui::Button::new("New take"))
                .on_hover_text("the same settings with the next seed")
                .clicked()
            {
                self.model.send(Command::NewTake);
            }
            if ui
                .add_enabled(working, egui::Button::new("Cancel"))
                .clicked()
            {
                self.model.send(Command::Cancel);
            }
            // The selection, as seconds of music.
            let chosen = self
                .selection
                .map(|(a, b)| {
                    let rate = view.playrate.max(1e-9);
                    (
                        (a.min(b) - view.start) / rate,
                        (a.max(b) - view.start) / rate,
                    )
                })
                .filter(|(a, b)| b - a > 0.05 && *b > 0.0);
            let host_loop = self.model.loop_range();
            if ui
                .add_enabled(host_loop.is_some(), egui::Button::new("Select loop"))
                .on_hover_text("select the host's loop range")
                .clicked()
                && let Some((a, b)) = host_loop
            {
                let to_video = |t: f64| view.start + t * view.playrate;
                self.selection = Some((to_video(a.max(0.0)), to_video(b)));
            }
            let again = ui
                .add_enabled(
                    chosen.is_some() && view.music.is_some(),
                    egui::Button::new("Make selection again"),
                )
                .on_hover_text("a new take of the selected bars; the rest stays as it is");
            let r = again.rect;
            self.model
                .drawn
                .again
                .set([r.left(), r.top(), r.right(), r.bottom()]);
            if again.clicked()
                && let Some((start, end)) = chosen
            {
                self.model.send(Command::RegenerateSection {
                    start: start.max(0.0),
                    end,
                });
                self.selection = None;
            }
            let undo = ui.add_enabled(!view.sections.is_empty(), egui::Button::new("Undo section"));
            let r = undo.rect;
            self.model
                .drawn
                .undo
                .set([r.left(), r.top(), r.right(), r.bottom()]);
            if undo.clicked() {
                self.model.send(Command::UndoSection);
            }
            match &view.status {
                Status::Idle if !has_video => {
                    ui.label("Choose a video to score.");
                }
                Status::Idle => {
                    ui.label("Ready.");
                }
                Status::Working { stage, fraction } => {
                    let what = match stage {
                        None => "Waiting for the engine",
                        Some(Stage::Analysing) => "Reading the pictures",
                        Some(Stage::Composing) => "Making the music",
                        Some(Stage::Finishing) => "Finishing",
                    };
                    ui.add(
                        egui::ProgressBar::new(*fraction as f32)
                            .desired_width(220.0)
                            .text(format!("{what} {:.0} %", fraction * 100.0)),
                    );
                }
                Status::Finished { cached } => {
                    ui.label(if *cached {
                        "Done (from the cache)."
                    } else {
                        "Done."
                    });
                }
                Status::Cancelled => {
                    ui.label("Cancelled; the music made so far plays.");
                }
                Status::Failed { what, .. } => {
                    ui.colored_label(CUT, what);
                }
            }
        });
        if let Status::Failed { fix, .. } = &view.status {
            ui.label(fix);
        }
    }

    /// Thumbnails, the rhythm curve with the cuts, the waveform with its
    /// onsets, the bar lines and the playhead, all on the video's time axis.
    fn timeline(&mut self, ui: &mut Ui, view: &View) {
        let size = vec2(ui.available_width(), ui.available_height().max(120.0));
        let (response, painter) = ui.allocate_painter(size, Sense::drag());
        let area = response.rect;
        self.model
            .drawn
            .timeline
            .set([area.left(), area.top(), area.right(), area.bottom()]);
        painter.rect_filled(area, 2.0, Color32::from_rgb(24, 24, 30));
        let model = self.model.clone();
        let report = &model.drawn;
        let Some(video) = view.video_overview.clone() else {
            let text = match (&view.overview_error, &view.video) {
                (Some(e), _) => e.as_str(),
                (None, Some(_)) => "Reading the video…",
                (None, None) => "No video",
            };
            painter.text(
                area.center(),
                Align2::CENTER_CENTER,
                text,
                FontId::proportional(16.0),
                Color32::GRAY,
            );
            for a in [
                &report.thumbnails,
                &report.curve_points,
                &report.cuts,
                &report.waveform_columns,
                &report.onsets,
                &report.bar_lines,
            ] {
                a.store(0, Ordering::Release);
            }
            report.playhead.store(false, Ordering::Release);
            return;
        };
        let duration = video.duration.max(1e-3);
        let x_of = |t: f64| area.left() + (t / duration) as f32 * area.width();
        let t_of =
            |x: f32| (f64::from((x - area.left()) / area.width()) * duration).clamp(0.0, duration);
        // Dragging selects a stretch to make again.
        // The stretch runs from where the button went down to where it is
        // (or was let go): a slow frame sees a drag start only once the
        // pointer has moved on, and its release together with the last moves.
        if let Some(p) = response.interact_pointer_pos() {
            if response.drag_started() {
                let from = ui.input(|i| i.pointer.press_origin()).unwrap_or(p);
                self.selection = Some((t_of(from.x), t_of(p.x)));
            } else if (response.dragged() || response.drag_stopped())
                && let Some((a, _)) = self.selection
            {
                self.selection = Some((a, t_of(p.x)));
            }
        }
        let thumbs_h = (area.height() * 0.28).min(72.0);
        let rest = area.height() - thumbs_h;
        let lanes = [
            Rect::from_min_size(area.min, vec2(area.width(), thumbs_h)),
            Rect::from_min_size(
                pos2(area.left(), area.top() + thumbs_h),
                vec2(area.width(), rest * 0.45),
            ),
            Rect::from_min_size(
                pos2(area.left(), area.top() + thumbs_h + rest * 0.45),
                vec2(area.width(), rest * 0.55),
            ),
        ];

        // Bar lines behind everything else.
        let mut bars = 0u32;
        if let Some(b) = view.bars.filter(|b| b.bar > 0.0) {
            // Song time → seconds of music → seconds of video.
            let to_video = |song: f64| view.start + (song - b.offset) * view.playrate;
            let first = ((b.offset - b.downbeat) / b.bar).floor() as i64 - 1;
            for k in first.. {
                let t = to_video(b.downbeat + k as f64 * b.bar);
                if t > duration || bars > 2000 {
                    break;
                }
                if t >= 0.0 {
                    let x = x_of(t);
                    painter.line_segment(
                        [pos2(x, lanes[1].top()), pos2(x, area.bottom())],
                        Stroke::new(1.0, BAR),
                    );
                    bars += 1;
                }
            }
        }
        report.bar_lines.store(bars, Ordering::Release);

        // Thumbnails, one per stretch of the video.
        let textures = self.thumbnail_textures(ui.ctx(), &video);
        let mut shown = 0u32;
        for (i, (t, tex)) in video.thumbnails.iter().zip(textures).enumerate() {
            let next = video
                .thumbnails
                .get(i + 1)
                .map_or(duration, |n| n.time)
                .max(t.time);
            let r = Rect::from_min_max(
                pos2(x_of(t.time), lanes[0].top()),
                pos2(x_of(next).max(x_of(t.time) + 1.0), lanes[0].bottom()),
            );
            painter.image(
                tex.id(),
                r,
                Rect::from_min_max(Pos2::ZERO, pos2(1.0, 1.0)),
                Color32::WHITE,
            );
            shown += 1;
        }
        report.thumbnails.store(shown, Ordering::Release);

        // The rhythm curve, scaled to its own largest value, and the cuts.
        let lane = lanes[1].shrink2(vec2(0.0, 4.0));
        let peak = video.curve.iter().copied().fold(0.0f32, f32::max).max(1e-6);
        let step = (video.curve.len() as f32 / lane.width().max(1.0)).max(1.0);
        let mut points = Vec::with_capacity(lane.width() as usize + 1);
        let mut i = 0.0f32;
        while (i as usize) < video.curve.len() {
            let start = i as usize;
            let end = ((i + step) as usize).min(video.curve.len()).max(start + 1);
            let v = video.curve[start..end].iter().copied().fold(0.0, f32::max);
            let t = start as f64 / video.curve_rate;
            points.push(pos2(x_of(t), lane.bottom() - v / peak * lane.height()));
            i += step;
        }
        report
            .curve_points
            .store(points.len() as u32, Ordering::Release);
        painter.add(egui::Shape::line(points, Stroke::new(1.5, CURVE)));
        for c in &video.cuts {
            let x = x_of(c.time);
            painter.line_segment(
                [pos2(x, lanes[0].top()), pos2(x, lanes[1].bottom())],
                Stroke::new(2.0, CUT),
            );
        }
        report
            .cuts
            .store(video.cuts.len() as u32, Ordering::Release);

        // The music: min/max per pixel column, and its onsets.
        let lane = lanes[2].shrink2(vec2(0.0, 4.0));
        let mid = lane.center().y;
        let (mut columns, mut onsets) = (0u32, 0u32);
        if let Some(m) = &view.music {
            let per_second = vidmusician_engine::service::overview::PEAKS_PER_SECOND;
            let half = lane.height() / 2.0;
            // One filled column per pixel: the extremes of the peaks that
            // fall in it.
            let mut column: Option<(f32, f32, f32)> = None;
            let mut draw = |x: f32, lo: f32, hi: f32, width: f32| {
                painter.rect_filled(
                    Rect::from_min_max(
                        pos2(x, mid - hi.clamp(-1.0, 1.0) * half),
                        pos2(x + width, mid - lo.clamp(-1.0, 1.0) * half + 1.0),
                    ),
                    0.0,
                    WAVE,
                );
                columns += 1;
            };
            let step = (x_of(m.video_time(1.0 / per_second)) - x_of(m.video_time(0.0))).max(1.0);
            for (k, &[lo, hi]) in m.peaks.iter().enumerate() {
                let x = x_of(m.video_time(k as f64 / per_second)).floor();
                match column {
                    Some((cx, clo, chi)) if cx == x => {
                        column = Some((cx, clo.min(lo), chi.max(hi)))
                    }
                    Some((cx, clo, chi)) => {
                        draw(cx, clo, chi, (x - cx).min(step));
                        column = Some((x, lo, hi));
                    }
                    None => column = Some((x, lo, hi)),
                }
            }
            if let Some((cx, clo, chi)) = column {
                draw(cx, clo, chi, step);
            }
            for &o in &m.onsets {
                let x = x_of(m.video_time(o));
                painter.line_segment(
                    [pos2(x, lane.bottom() - 6.0), pos2(x, lane.bottom())],
                    Stroke::new(1.0, ONSET),
                );
                onsets += 1;
            }
        } else {
            painter.text(
                lane.center(),
                Align2::CENTER_CENTER,
                "no music yet",
                FontId::proportional(14.0),
                Color32::GRAY,
            );
        }
        report.waveform_columns.store(columns, Ordering::Release);
        report.onsets.store(onsets, Ordering::Release);

        // The stretches made again, and the selection.
        let to_video = |t: f64| view.start + t * view.playrate;
        // Where the engine changed the music (on bar lines) once the piece
        // is in; until then, the stretches asked for.
        let edited: Vec<(f64, f64)> = match &view.music {
            Some(m) if m.sections.len() == view.sections.len() => m.sections.clone(),
            _ => view.sections.iter().map(|s| (s.start, s.end)).collect(),
        };
        for &(a, b) in &edited {
            let r = Rect::from_min_max(
                pos2(x_of(to_video(a)), lanes[2].top()),
                pos2(x_of(to_video(b)), lanes[2].bottom()),
            );
            painter.rect_filled(r, 0.0, Color32::from_rgba_unmultiplied(255, 255, 255, 18));
            painter.line_segment([r.left_top(), r.right_top()], Stroke::new(2.0, SECTION));
        }
        report
            .sections
            .store(edited.len() as u32, Ordering::Release);
        let selected = self.selection.filter(|(a, b)| (a - b).abs() > 1e-3);
        let mut drawn = [0.0; 4];
        if let Some((a, b)) = selected {
            let r = Rect::from_min_max(
                pos2(x_of(a.min(b)), area.top()),
                pos2(x_of(a.max(b)), area.bottom()),
            );
            painter.rect_filled(r, 0.0, Color32::from_rgba_unmultiplied(120, 160, 255, 40));
            drawn = [r.left(), r.top(), r.right(), r.bottom()];
        }
        report.selected.set(drawn);
        report
            .selection
            .store(selected.is_some(), Ordering::Release);

        // The playhead.
        let at = self
            .model
            .playhead()
            .map(|s| view.start + s * view.playrate)
            .filter(|t| (0.0..=duration).contains(t));
        if let Some(t) = at {
            let x = x_of(t);
            painter.line_segment(
                [pos2(x, area.top()), pos2(x, area.bottom())],
                Stroke::new(1.5, PLAYHEAD),
            );
        }
        report.playhead.store(at.is_some(), Ordering::Release);
        painter.text(
            area.right_bottom() + vec2(-4.0, -4.0),
            Align2::RIGHT_BOTTOM,
            format!("{duration:.1} s"),
            FontId::monospace(11.0),
            Color32::GRAY,
        );
    }

    fn thumbnail_textures(
        &mut self,
        ctx: &egui::Context,
        video: &Arc<VideoOverview>,
    ) -> Vec<TextureHandle> {
        if let Some((v, t)) = &self.textures
            && Arc::ptr_eq(v, video)
        {
            return t.clone();
        }
        let textures: Vec<TextureHandle> = video
            .thumbnails
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let side = t.side as usize;
                ctx.load_texture(
                    format!("thumbnail-{i}"),
                    ColorImage::from_rgb([side, side], &t.rgb),
                    TextureOptions::LINEAR,
                )
            })
            .collect();
        self.textures = Some((video.clone(), textures.clone()));
        textures
    }
}

impl egui_baseview::App for EditorApp {
    fn ui(&mut self, ui: &mut Ui, _frame: &mut egui_baseview::Frame) {
        self.poll_picker();
        let view = self.model.view();
        let editing = ui.ctx().memory(|m| m.focused().is_some());
        self.sync_texts(&view, editing);
        let screen = ui.ctx().content_rect();
        let model = self.model.clone();
        let report = &model.drawn;
        report
            .width
            .store(screen.width().round() as u32, Ordering::Release);
        report
            .height
            .store(screen.height().round() as u32, Ordering::Release);
        egui::Panel::top("controls").show(ui, |ui| {
            ui.add_space(4.0);
            self.video_row(ui, &view);
            self.prompt_row(ui);
            self.engine_row(ui, &view);
            self.params_row(ui);
            self.actions_row(ui, &view);
            ui.add_space(4.0);
        });
        egui::CentralPanel::default().show(ui, |ui| self.timeline(ui, &view));
        report.status.store(
            match view.status {
                Status::Idle => 0,
                Status::Working { .. } => 1,
                Status::Finished { .. } => 2,
                Status::Cancelled => 3,
                Status::Failed { .. } => 4,
            },
            Ordering::Release,
        );
        report.frames.fetch_add(1, Ordering::AcqRel);
    }
}

/// Runs the desktop's file chooser (zenity, else kdialog) on a thread of
/// its own; the answer comes back on the channel. The editor keeps
/// drawing meanwhile, and a missing chooser is said in plain words.
fn spawn_picker(model: Arc<EditorModel>) -> Receiver<Result<Option<PathBuf>, String>> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let spawned = std::thread::Builder::new()
        .name("vidmusician-pick".into())
        .spawn(move || {
            let _ = tx.send(pick_file());
            model.repaint.request_repaint();
        });
    if let Err(e) = spawned {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let _ = tx.send(Err(format!("cannot open a file chooser: {e}")));
        return rx;
    }
    rx
}

fn pick_file() -> Result<Option<PathBuf>, String> {
    use std::process::Command as Cmd;
    let choosers: [(&str, &[&str]); 2] = [
        (
            "zenity",
            &[
                "--file-selection",
                "--title=Choose the video to score",
                "--file-filter=Videos | *.mp4 *.mov *.mkv *.webm *.avi *.m4v *.mxf",
                "--file-filter=All files | *",
            ],
        ),
        (
            "kdialog",
            &[
                "--title",
                "Choose the video to score",
                "--getopenfilename",
                ".",
                "video/*",
            ],
        ),
    ];
    for (program, args) in choosers {
        match Cmd::new(program).args(args).output() {
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
                // Cancelled: the chooser exits non-zero with no path.
                return Ok((out.status.success() && !text.is_empty()).then(|| PathBuf::from(text)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("the file chooser {program} failed: {e}")),
        }
    }
    Err("No file chooser found (zenity or kdialog): type the video's path and press Enter.".into())
}

/// A device as the editor names it.
fn device_label(d: DeviceChoice) -> String {
    match d {
        DeviceChoice::Auto => "auto".into(),
        DeviceChoice::Cpu => "CPU".into(),
        DeviceChoice::Cuda(n) => format!("GPU (cuda:{n})"),
    }
}
