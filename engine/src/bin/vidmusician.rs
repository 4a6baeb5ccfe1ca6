//! `vidmusician`: music for a video, from the command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use vidmusician_engine::analysis::{self, Analysis, StatsEncoder};
use vidmusician_engine::audio::{self, check_writable};
use vidmusician_engine::metrics;
use vidmusician_engine::neural::device::DeviceChoice;
use vidmusician_engine::service::{
    CutSource, CutsRequest, Engine, EngineChoice, EngineConfig, Event, Request, Stage,
};
use vidmusician_engine::sketch::{self, SketchSettings};
use vidmusician_engine::video::{self, count, synth};

#[path = "vidmusician/train.rs"]
mod train;

#[derive(Parser)]
#[command(
    name = "vidmusician",
    version,
    about = "Background music for a video, with its accents on the cuts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `--engine`: every engine the service knows, by name, with what it does.
fn engine_parser() -> impl clap::builder::TypedValueParser<Value = EngineChoice> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new(
        EngineChoice::ALL.map(|e| PossibleValue::new(e.as_str()).help(e.describe())),
    )
    // Only the names above get this far, and each reads back.
    .map(|s| s.parse::<EngineChoice>().unwrap_or_default())
}

#[derive(Subcommand)]
enum Command {
    /// Compose music for VIDEO and write it as a WAV and/or muxed into a copy of the video.
    Compose(Box<ComposeArgs>),
    /// Serve as the GPU helper of a build without CUDA: the engine starts
    /// it and speaks to it on stdin/stdout (see the README's GPU section).
    #[command(hide = true)]
    GpuServe {
        /// The device to hold (cuda, cuda:N; cpu runs the same code on the
        /// CPU, for tests and diagnosis).
        #[arg(long, default_value = "cuda")]
        device: DeviceChoice,
    },
    /// Analyse VIDEO: cuts, motion, rhythm curve, suggested tempo.
    Analyze {
        video: PathBuf,
        /// Print the whole analysis as JSON (curves included) on stdout.
        #[arg(long)]
        json: bool,
        /// Write a PNG plot of the rhythm curve with the cuts marked.
        #[arg(long, value_name = "PNG")]
        plot: Option<PathBuf>,
        /// Also tag each section with the zero-shot engine's vocabulary
        /// (needs a CLIP model: see `vidmusician models`).
        #[arg(long)]
        tags: bool,
        /// With --tags: the vocabulary file (the built-in one if unset).
        #[arg(long, value_name = "FILE", requires = "tags")]
        vocabulary: Option<PathBuf>,
        /// With --tags: look here first for the CLIP model.
        #[arg(long, value_name = "DIR", requires = "tags")]
        model_dir: Option<PathBuf>,
        /// With --tags: the CLIP checkpoint.
        #[arg(long, default_value = vidmusician_engine::neural::hub::DEFAULT_CLIP)]
        clip_model: String,
    },
    /// Rhythm scores of a piece of music against a video's cuts and,
    /// optionally, reference music (Beat Coverage / Beat Hit).
    Eval {
        /// The music (WAV).
        music: PathBuf,
        /// The video whose cuts the music should hit.
        #[arg(long)]
        video: Option<PathBuf>,
        /// Reference music (WAV) for Beat Coverage / Beat Hit.
        #[arg(long)]
        reference: Option<PathBuf>,
        /// Bin width for Beat Coverage / Beat Hit, seconds (LORIS uses 1).
        #[arg(long, default_value_t = 1.0)]
        bin: f64,
        /// The music was made for the video from this time (compose's
        /// --start): only the cuts from here on count, and the music's time
        /// 0 is this time of the video.
        #[arg(long, value_name = "SECONDS")]
        start: Option<f64>,
        /// The music was made for the video up to this time (compose's --end).
        #[arg(long, value_name = "SECONDS")]
        end: Option<f64>,
    },
    /// Write a synthetic test video with cuts at known times.
    SynthVideo {
        output: PathBuf,
        #[arg(long, default_value_t = 20.0)]
        duration: f64,
        /// Cut times in seconds, comma separated (`--cuts ''` for one shot
        /// with no cut); by default irregular cuts every 1–3 s.
        #[arg(long, value_name = "T1,T2,…", value_parser = parse_cuts)]
        cuts: Option<CutList>,
        #[arg(long, default_value_t = 1280)]
        width: u32,
        #[arg(long, default_value_t = 720)]
        height: u32,
        #[arg(long, default_value_t = 30)]
        fps: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Give the video a sound track: a sine of this frequency (AAC).
        #[arg(long, value_name = "HZ")]
        tone: Option<f32>,
    },
    /// Train an adapter of the VidMusician method (stage 1, then 2) on a
    /// folder of videos with their music.
    Train(Box<train::TrainArgs>),
    /// Models: what is installed, and downloading more.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Benchmarks: speed of analysis and composition on this machine.
    Bench {
        #[arg(value_enum)]
        what: BenchWhat,
        /// Analyse this video instead of a generated 1080p30 H.264 clip
        /// (clip: the zero-shot reading's video).
        #[arg(long)]
        video: Option<PathBuf>,
        /// Length of the generated material, seconds.
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
        /// Repetitions (the best and the mean are reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// neural: code frames generated per run (50 per second of audio).
        #[arg(long, default_value_t = 250)]
        frames: usize,
        /// neural: a Python with torch and transformers, to run the reference in
        /// the same conditions (see tools/bench_transformers.py for its set-up).
        #[arg(long, value_name = "PYTHON")]
        python: Option<PathBuf>,
        /// device: where the decoder runs (auto, cpu, cuda, cuda:N); train:
        /// where the steps run (CUDA in a `cuda` build only).
        #[arg(long, default_value = "auto", value_name = "DEVICE")]
        device: DeviceChoice,
        /// device: the types its weights are timed in, comma-separated (f32,
        /// f16, bf16).
        #[arg(long, default_value = "f32", value_name = "LIST")]
        dtypes: String,
        /// device: musicgen-medium's shape too.
        #[arg(long)]
        medium: bool,
        /// device: also a MusicGen checkpoint folder with its own weights
        /// (e.g. engine/tests/fixtures/musicgen-tiny).
        #[arg(long, value_name = "DIR")]
        checkpoint: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// List the MusicGen and CLIP models found (--model-dir, $VIDMUSICIAN_MODELS,
    /// the Hugging Face cache), each with its kind.
    List {
        #[arg(long, value_name = "DIR")]
        model_dir: Option<PathBuf>,
    },
    /// Download a model from the Hugging Face hub ($HF_ENDPOINT) into the Hugging
    /// Face cache. Resumes an interrupted download.
    Pull {
        /// Hub id, e.g. facebook/musicgen-small or openai/clip-vit-base-patch32.
        #[arg(default_value = vidmusician_engine::neural::hub::DEFAULT_MODEL)]
        model: String,
        /// Hugging Face cache folder (default: $HF_HUB_CACHE, $HF_HOME/hub or
        /// ~/.cache/huggingface/hub).
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
    },
}

#[derive(Args)]
struct ComposeArgs {
    /// The video to score (any container and codec FFmpeg reads). Without one,
    /// `--engine text --duration N` makes music from the prompt alone.
    video: Option<PathBuf>,
    /// Length of the music, seconds, when there is no video.
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Write the music as a 32-bit float WAV here.
    #[arg(short, long, value_name = "OUT.wav")]
    output: Option<PathBuf>,
    /// Also write a copy of the video with the music as its audio track
    /// (video stream copied, not re-encoded; container from the extension).
    #[arg(long, value_name = "OUT.mp4")]
    mux: Option<PathBuf>,
    /// With --mux, what becomes of the video's own sound: `mix` keeps it and
    /// puts the music beneath it; `replace` leaves the music alone; `tracks`
    /// writes two audio streams, the original sound and the music. A video
    /// without sound gets the music alone.
    #[arg(long, value_enum, value_name = "MODE")]
    audio: Option<AudioArg>,
    /// With --mux (mix): the music's level under the video's sound, dB. The
    /// music is mastered to −14 LUFS; the default −12 dB puts it near −26
    /// LUFS, beneath speech. The mix is limited to −1 dBFS peaks.
    #[arg(long, value_name = "DB", allow_hyphen_values = true)]
    music_gain: Option<f32>,
    /// Tempo in beats per minute; by default the tempo that lands the
    /// most cuts on beats.
    #[arg(long, value_name = "N")]
    bpm: Option<f64>,
    /// What the music should be like, in words (e.g. "calm documentary",
    /// "energetic promo", "dark and tense"). The embedded composer reads its
    /// energy, mood and pace.
    #[arg(long, default_value = "")]
    prompt: String,
    /// How strongly the music marks the cuts: 0 (no accents) to 1 (an
    /// impact and a crash on every cut).
    #[arg(long, default_value_t = 1.0, value_name = "0..1")]
    rhythm_strength: f32,
    /// How much what the pictures show decides the music's mood, energy and
    /// sections: 0 (the prompt alone) to 1.
    #[arg(long, default_value_t = 1.0, value_name = "0..1")]
    semantic_strength: f32,
    /// Time signature of the music's bars, e.g. 3/4 or 6/8.
    #[arg(long, default_value = "4/4", value_parser = parse_meter)]
    meter: sketch::Meter,
    /// Random seed: the same video, settings and seed give the same music;
    /// another seed gives another piece.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Which engine writes the music.
    #[arg(long, default_value = "auto", value_parser = engine_parser())]
    engine: EngineChoice,
    /// The cuts of your edit, used instead of the detected ones: a CMX3600
    /// EDL, an OpenTimelineIO .otio, a Final Cut Pro .fcpxml, or a .csv/.txt
    /// list of times (seconds or timecodes, one per line). Times are of the
    /// video, from its start.
    #[arg(long, value_name = "FILE")]
    cuts: Option<PathBuf>,
    /// Use the cuts of --cuts together with the detected ones.
    #[arg(long, requires = "cuts")]
    cuts_merge: bool,
    /// Sample rate of the output, Hz.
    #[arg(long, default_value_t = 48_000, value_name = "HZ")]
    sample_rate: u32,
    /// Score only from this time of the video, seconds.
    #[arg(long, value_name = "SECONDS")]
    start: Option<f64>,
    /// Score only up to this time of the video, seconds.
    #[arg(long, value_name = "SECONDS")]
    end: Option<f64>,
    /// The video plays this many times as fast where the music goes (an
    /// edit's speed change): the music lasts its length divided by this.
    #[arg(long, default_value_t = 1.0, value_name = "RATE")]
    playrate: f64,
    /// Do not read or write the audio cache.
    #[arg(long)]
    no_cache: bool,
    /// Look here first for models (a model folder, or a folder of them).
    #[arg(long, value_name = "DIR")]
    model_dir: Option<PathBuf>,
    /// The MusicGen checkpoint of the neural engines.
    #[arg(long, default_value = vidmusician_engine::neural::hub::DEFAULT_MODEL)]
    model: String,
    /// The CLIP checkpoint the zero-shot and vidmusician engines read the
    /// pictures with.
    #[arg(long, default_value = vidmusician_engine::neural::hub::DEFAULT_CLIP)]
    clip_model: String,
    /// The vidmusician engine's adapter (from `vidmusician train`); by
    /// default the newest found for --model in the model folders.
    #[arg(long, value_name = "FILE")]
    adapter: Option<PathBuf>,
    /// Zero-shot engine: the words the pictures are scored against (a file
    /// in the format of engine/data/vocabulary.txt; the built-in one if unset).
    #[arg(long, value_name = "FILE")]
    vocabulary: Option<PathBuf>,
    /// Zero-shot engine: the rhythm curve (cuts, motion) from CLIP's patch
    /// tokens at 25 fps instead of the weight-free encoder; much slower on a CPU.
    #[arg(long)]
    clip_rhythm: bool,
    /// Neural engines: classifier-free guidance (the model's default, 3, if unset).
    #[arg(long, value_name = "SCALE")]
    guidance: Option<f64>,
    /// Neural engines: sampling temperature (default 1).
    #[arg(long)]
    temperature: Option<f64>,
    /// Neural engines: sample among the K most likely tokens (default 250).
    #[arg(long, value_name = "K")]
    top_k: Option<usize>,
    /// Neural engines: decoder weights in f32 (as trained) or 8 bits (about 2.6×
    /// faster, logits within a few hundredths).
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    precision: PrecisionArg,
    /// Neural engines: where the decoder runs: auto (a CUDA GPU when this
    /// build has CUDA and one answers, else the CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    device: DeviceChoice,
}

#[derive(Clone, Copy, ValueEnum)]
enum AudioArg {
    /// The video's sound with the music beneath it (the default).
    Mix,
    /// The music alone.
    Replace,
    /// The original sound and the music as two audio streams.
    Tracks,
}

/// The shortest music worth making, seconds: below it there is no room for a
/// bar of music at any tempo the composer writes, and the loudness meter
/// (400 ms blocks) has too little to measure.
const MIN_MUSIC_SECONDS: f64 = 1.0;

#[derive(Clone, Copy, ValueEnum)]
enum PrecisionArg {
    F32,
    Q8,
}

#[derive(Clone, Copy, ValueEnum)]
enum BenchWhat {
    /// Decode + analysis, as a multiple of real time.
    Analysis,
    /// The embedded composer (arrange + synthesise + master), as a multiple of real time.
    Composer,
    /// The neural engine at musicgen-small's size (random weights): decoder steps per
    /// second with and without guidance, EnCodec speed, peak memory; and the same
    /// through Hugging Face transformers when --python names an env that has it.
    Neural,
    /// CLIP's vision tower at clip-vit-base-patch32's size (random weights) on the
    /// frames of a synthetic video: global features at 1 fps and the 25 fps pass of
    /// the rhythm curve, as multiples of real time (--seconds of video).
    Clip,
    /// The zero-shot engine end to end at musicgen-small's and clip-vit-base-patch32's
    /// sizes (random weights written to a temporary folder), 8-bit decoder weights,
    /// on --seconds of a synthetic video: seconds of work per second of music, by stage.
    ZeroShot,
    /// The decoder as candle tensors on --device (a CUDA GPU in a `cuda` build;
    /// the CPU elsewhere) at musicgen-small's shape (random weights), in each of
    /// --dtypes: its logits against the CPU decoder's and steps per second with
    /// and without guidance; musicgen-medium's shape too with --medium.
    Device,
    /// Training the adapters (random weights): steps per second on the test fixtures'
    /// tiny shape, and one stage-2 step on musicgen-small's shape over a 10 s window
    /// (time and peak memory).
    Train,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Compose(args) => compose(*args),
        Command::Analyze {
            video,
            json,
            plot,
            tags,
            vocabulary,
            model_dir,
            clip_model,
        } => {
            let tags = tags.then_some(TagArgs {
                vocabulary,
                model_dir,
                clip_model,
            });
            analyze(&video, json, plot.as_deref(), tags.as_ref())
        }
        Command::Eval {
            music,
            video,
            reference,
            bin,
            start,
            end,
        } => eval(
            &music,
            video.as_deref(),
            reference.as_deref(),
            bin,
            (start, end),
        ),
        Command::SynthVideo {
            output,
            duration,
            cuts,
            width,
            height,
            fps,
            seed,
            tone,
        } => synth_video(
            &output,
            duration,
            cuts.map(|c| c.0),
            (width, height, fps),
            seed,
            tone,
        ),
        Command::Models { command } => models(command),
        Command::Train(args) => train::train(*args),
        Command::GpuServe { device } => {
            vidmusician_engine::neural::helper::serve(device).map_err(anyhow::Error::from)
        }
        Command::Bench {
            what: BenchWhat::Neural,
            frames,
            python,
            ..
        } => bench_neural(frames.max(1), python.as_deref()),
        Command::Bench {
            what: BenchWhat::Clip,
            seconds,
            video,
            ..
        } => bench_clip(seconds, video.as_deref()),
        Command::Bench {
            what: BenchWhat::Device,
            frames,
            device,
            dtypes,
            medium,
            checkpoint,
            ..
        } => bench_device(
            device,
            frames.max(1),
            &dtypes,
            medium,
            checkpoint.as_deref(),
        ),
        Command::Bench {
            what: BenchWhat::ZeroShot,
            seconds,
            ..
        } => bench_zero_shot(seconds),
        Command::Bench {
            what: BenchWhat::Train,
            device,
            ..
        } => bench_train(device),
        Command::Bench {
            what,
            video,
            seconds,
            runs,
            ..
        } => bench(what, video.as_deref(), seconds, runs.max(1)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each said once: many errors
/// already quote their source in their own message (thiserror's
/// `{source}`), and printing the chain after it would repeat it.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        let text = text.trim();
        if text.is_empty() || line.contains(text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(text);
    }
    // One line, whatever a cause's text holds.
    line.lines().map(str::trim).collect::<Vec<_>>().join(" ")
}

fn bar(len: u64, msg: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {percent:>3}% {elapsed_precise}")
            .expect("PANIC: constant template")
            .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

fn compose(a: ComposeArgs) -> Result<()> {
    if a.output.is_none() && a.mux.is_none() {
        bail!("nothing to write: give -o OUT.wav and/or --mux OUT.mp4");
    }
    if a.mux.is_some() && a.video.is_none() {
        bail!("--mux needs a video to put the music into");
    }
    if a.mux.is_some() && a.playrate != 1.0 {
        bail!("--mux copies the video at its own speed, so it takes no --playrate");
    }
    if a.video.is_none() && a.duration.is_none() {
        bail!("give a video to score, or --duration SECONDS for music from the prompt alone");
    }
    if a.video.is_none() && a.cuts.is_some() {
        bail!("--cuts gives the cuts of a video: give the video");
    }
    if a.video.is_none() && a.engine == EngineChoice::Sketch {
        bail!("the sketch engine scores a video: give one, or use --engine text");
    }
    if (a.start.is_some() || a.end.is_some()) && a.video.is_none() {
        bail!("--start/--end choose a part of a video: give the video");
    }
    if a.mux.is_none() && (a.audio.is_some() || a.music_gain.is_some()) {
        bail!(
            "--audio and --music-gain set the sound of the copy --mux writes: give --mux OUT.mp4"
        );
    }
    let sound = match a.audio.unwrap_or(AudioArg::Mix) {
        AudioArg::Mix => video::SoundMode::Mix,
        AudioArg::Replace => video::SoundMode::Replace,
        AudioArg::Tracks => video::SoundMode::Tracks,
    };
    if let Some(g) = a.music_gain {
        if sound != video::SoundMode::Mix {
            bail!(
                "--music-gain sets the music's level in a mix; it does not apply to --audio replace or tracks"
            );
        }
        if !(g.is_finite() && (-60.0..=12.0).contains(&g)) {
            bail!("--music-gain must be between -60 and +12 dB (got {g})");
        }
    }
    // Everything that can be known wrong about the outputs is refused before
    // minutes of work: an output that is an input (first: that one destroys
    // data), the format, a folder that cannot be written.
    let inputs: Vec<(&str, &Path)> = a
        .video
        .iter()
        .map(|v| ("input video", v.as_path()))
        .collect();
    for p in a.output.iter().chain(a.mux.iter()) {
        refuse_same_file(p, &inputs)?;
    }
    if let (Some(o), Some(m)) = (&a.output, &a.mux) {
        refuse_same_file(m, &[("-o output", o.as_path())])?;
    }
    if let Some(o) = &a.output {
        check_extension(
            o,
            "wav",
            "-o writes the music as a WAV file",
            Some("--mux OUT.mp4 writes a copy of the video with the music"),
        )?;
    }
    if let Some(m) = a.mux.as_deref().filter(|m| !m.is_dir()) {
        video::check_mux_output(m, None)?;
    }
    for p in a.output.iter().chain(a.mux.iter()) {
        check_writable(p)?;
    }
    let mut range_in_music = None;
    let mut req = match &a.video {
        Some(v) => {
            let info = video::probe(v)?;
            if let Some(m) = &a.mux {
                video::check_mux_output(m, Some(&info))?;
                // A sound to mix that FFmpeg cannot decode fails now, not
                // after the music is made and -o written.
                video::check_mux_sound(v, m, sound, a.sample_rate)?;
            }
            // A duration of 0 is one the container does not state: the
            // decode finds the end, and the checks on it have nothing to go on.
            let known = info.duration > 0.0;
            let ranged = a.start.is_some() || a.end.is_some();
            if ranged && !known && a.end.is_none() {
                bail!("{} does not state its length: give --end", v.display());
            }
            let (start, end) = (a.start.unwrap_or(0.0), a.end.unwrap_or(info.duration));
            if !(start.is_finite() && end.is_finite() && start >= 0.0) {
                bail!("--start and --end must be times in seconds, from 0");
            }
            if known && start >= info.duration {
                bail!(
                    "--start {start} s is past the end of {} ({:.2} s)",
                    v.display(),
                    info.duration
                );
            }
            if ranged && end <= start {
                bail!("--end ({end} s) must come after --start ({start} s)");
            }
            let end = if known { end.min(info.duration) } else { end };
            let seconds = (end - start) / a.playrate;
            if known && seconds < MIN_MUSIC_SECONDS {
                let what = if ranged {
                    format!("the range {start:.2}–{end:.2} s of {}", v.display())
                } else {
                    v.display().to_string()
                };
                bail!(
                    "{what}: too short to score: the music would last {seconds:.2} s; at least {MIN_MUSIC_SECONDS} s is needed"
                );
            }
            let mut req = Request::new(v);
            req.range = match (a.start, a.end) {
                (None, None) => None,
                _ => {
                    range_in_music = Some((start / a.playrate, end / a.playrate));
                    Some((start, end))
                }
            };
            req.duration = a.duration;
            req
        }
        None => {
            let d = a.duration.unwrap_or(0.0);
            if !(d.is_finite() && d >= MIN_MUSIC_SECONDS) {
                bail!(
                    "--duration {d}: too short to score; at least {MIN_MUSIC_SECONDS} s is needed"
                );
            }
            Request::text(&a.prompt, d)
        }
    };
    let mut config = EngineConfig {
        model_dir: a.model_dir.clone(),
        text_model: a.model.clone(),
        clip_model: a.clip_model.clone(),
        precision: match a.precision {
            PrecisionArg::F32 => vidmusician_engine::neural::Precision::F32,
            PrecisionArg::Q8 => vidmusician_engine::neural::Precision::Q8,
        },
        adapter: a.adapter.clone(),
        device: a.device,
        ..EngineConfig::default()
    };
    // A device asked for by name must be there: better said now than after
    // the analysis. `auto` is settled by the engine, which says what it took.
    // The device is held until the end: the engine's engine thread then
    // shares the same GPU helper rather than starting a second.
    let _device = match a.device {
        DeviceChoice::Cuda(_) => Some(vidmusician_engine::neural::device::choose(a.device)?),
        _ => None,
    };
    if a.no_cache {
        config.cache_dir = None;
    }
    let engine = Engine::start(config)?;
    req.tempo = a.bpm;
    req.seed = a.seed;
    req.prompt = a.prompt.clone();
    req.rhythm_strength = a.rhythm_strength;
    req.semantic_strength = a.semantic_strength;
    req.playrate = a.playrate;
    req.meter = a.meter;
    req.sample_rate = a.sample_rate;
    req.guidance = a.guidance;
    req.temperature = a.temperature;
    req.top_k = a.top_k;
    req.engine = a.engine;
    req.vocabulary = a.vocabulary.clone();
    req.clip_rhythm = a.clip_rhythm;
    req.cuts = a.cuts.as_ref().map(|f| CutsRequest {
        source: CutSource::File(f.clone()),
        merge: a.cuts_merge,
    });
    let t0 = Instant::now();
    let (id, _) = engine.submit(req)?;
    let pb = bar(1000, "starting");
    let mut stage = None;
    let done = engine.wait(id, |ev| {
        if let Event::Progress {
            stage: s, fraction, ..
        } = ev
        {
            if stage != Some(*s) {
                stage = Some(*s);
                pb.set_message(match (s, a.video.is_some()) {
                    (Stage::Analysing, true) => "analysing",
                    (Stage::Analysing, false) => "loading",
                    (Stage::Composing, _) => "composing",
                    (Stage::Finishing, _) => "finishing",
                });
            }
            pb.set_position((fraction * 1000.0) as u64);
        }
    });
    pb.finish_and_clear();
    let done = done?;
    if let Some(an) = &done.analysis {
        warn_damage(&an.video);
    }
    match &done.why {
        Some(why) if a.engine == EngineChoice::Auto => {
            eprintln!("engine: {} ({why})", done.engine.as_str());
        }
        _ => {}
    }
    if let Some(device) = &done.device {
        eprintln!("device: {device}");
    }
    for s in done.tags.iter().flatten() {
        let tags: Vec<&str> = s.tags.iter().map(|t| t.tag.as_str()).collect();
        eprintln!("  {:>7.2}–{:.2} s: {}", s.start, s.end, tags.join(", "));
    }
    if let Some(out) = &a.output {
        audio::write_wav(out, &done.audio)?;
        eprintln!("wrote {}", out.display());
    }
    if let (Some(out), Some(v)) = (&a.mux, &a.video) {
        let opts = video::MuxOptions {
            sound,
            music_gain_db: a.music_gain.unwrap_or(video::DEFAULT_MUSIC_GAIN_DB),
            music_start: a.start.unwrap_or(0.0),
        };
        let report = video::mux_audio(v, &done.audio, out, &opts)?;
        eprintln!("wrote {}", out.display());
        eprintln!("{}", sound_line(&report, &opts));
    }
    let mut line = format!("{:.2} s of music", done.audio.duration());
    if let Some(bpm) = done.bpm {
        line += &format!(" at {bpm:.1} BPM");
    }
    line += &format!(" in {:.2} s", t0.elapsed().as_secs_f64());
    if let Some(an) = &done.analysis {
        // Only the cuts the music was made for: those inside the range.
        let n = an
            .cuts
            .iter()
            .filter(|c| range_in_music.is_none_or(|(s, e)| c.time >= s && c.time < e))
            .count();
        line += &format!(", {}", count(n, "cut", "cuts"));
        if let Some(f) = &a.cuts {
            let name = f.file_name().unwrap_or(f.as_os_str()).to_string_lossy();
            line += &if a.cuts_merge {
                format!(" (from {name} and the pictures)")
            } else {
                format!(" (from {name})")
            };
        }
    }
    if let Some(l) = done.loudness {
        line += &format!(
            ", {:.1} LUFS, {:.1} dBTP",
            l.integrated_lufs, l.true_peak_dbtp
        );
    }
    if done.cached {
        line += " (from the cache)";
    }
    eprintln!("{line}");
    Ok(())
}

/// Refuses a name whose extension is not `ext`: what `flag` writes cannot
/// take another form, and finding out after the analysis wastes minutes.
fn check_extension(path: &Path, ext: &str, what: &str, other: Option<&str>) -> Result<()> {
    // A folder is no file at all: `check_writable` says so.
    let ok = path.is_dir()
        || path
            .extension()
            .is_some_and(|e| e.to_string_lossy().eq_ignore_ascii_case(ext));
    if !ok {
        bail!(
            "{}: {what}: give a name ending in .{ext}{}",
            path.display(),
            other.map(|o| format!(" ({o})")).unwrap_or_default()
        );
    }
    Ok(())
}

/// Refuses to write `output` when it is the same file as one of `others`
/// (what, path): the same name, or another name for the same file through a
/// symbolic or hard link. Writing there would destroy it.
fn refuse_same_file(output: &Path, others: &[(&str, &Path)]) -> Result<()> {
    for (what, other) in others {
        let same = match same_file::is_same_file(output, other) {
            Ok(same) => same,
            // One of them does not exist yet: then only the same name in the
            // same folder (followed through links) is the same file.
            Err(_) => resolved(output).is_some_and(|o| Some(o) == resolved(other)),
        };
        if same {
            let alias = if output == *other {
                String::new()
            } else {
                format!(" {} (another name for it)", other.display())
            };
            bail!(
                "{}: this output is the same file as the {what}{alias}: writing it would destroy that file; choose another name",
                output.display()
            );
        }
    }
    Ok(())
}

/// `path` with its folder resolved through links, for comparing names of
/// files that may not exist yet.
fn resolved(path: &Path) -> Option<PathBuf> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Some(std::fs::canonicalize(dir).ok()?.join(path.file_name()?))
}

/// What `--mux` did with the video's sound, in one line.
fn sound_line(r: &video::MuxReport, opts: &video::MuxOptions) -> String {
    if !r.had_sound {
        return "sound: the video has none, so the music is its only audio track".to_string();
    }
    match r.sound {
        video::SoundMode::Replace => {
            "sound: the music replaces the video's own sound (--audio replace)".to_string()
        }
        video::SoundMode::Tracks => format!(
            "sound: two audio streams, the video's own sound ({}) first, then the music",
            if r.original_copied {
                "copied as it was"
            } else {
                "re-encoded to AAC for this container"
            }
        ),
        video::SoundMode::Mix => {
            let lufs = |l: Option<f64>| l.map_or("silence".to_string(), |l| format!("{l:.1} LUFS"));
            let mut line = format!(
                "sound: the video's own sound ({}) with the music beneath it at {:+.1} dB ({}; --music-gain sets it)",
                lufs(r.original_lufs),
                opts.music_gain_db,
                lufs(r.music_lufs),
            );
            if r.limited_db > 0.05 {
                line += &format!(
                    "; peaks of the mix limited by up to {:.1} dB to stay under {} dBFS",
                    r.limited_db,
                    video::MIX_CEILING_DB
                );
            }
            line
        }
    }
}

fn models(command: ModelsCommand) -> Result<()> {
    use vidmusician_engine::neural::hub;
    match command {
        ModelsCommand::List { model_dir } => {
            let found = hub::list_installed(model_dir.as_deref());
            if found.is_empty() {
                let roots = hub::search_roots(model_dir.as_deref())
                    .iter()
                    .map(|(_, p)| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                println!("no MusicGen or CLIP model found (looked in: {roots})");
                println!(
                    "get one with: vidmusician models pull {} (CLIP: vidmusician models pull {})",
                    hub::DEFAULT_MODEL,
                    hub::DEFAULT_CLIP
                );
                return Ok(());
            }
            for m in found {
                let state = if m.missing.is_empty() {
                    String::from("ready")
                } else {
                    format!("incomplete: lacks {}", m.missing.join(", "))
                };
                let size = if m.bytes >= 1_000_000_000 {
                    format!("{:.2} GB", m.bytes as f64 / 1e9)
                } else {
                    format!("{:.1} MB", m.bytes as f64 / 1e6)
                };
                let licence = hub::weights_licence(&m.repo, Some(&m.dir))
                    .map(|l| format!("\tweights licence: {l}"))
                    .unwrap_or_default();
                println!(
                    "{}\t{}\t{size}\t{}\t{} ({}){licence}",
                    m.repo,
                    m.kind.as_str(),
                    state,
                    m.dir.display(),
                    m.origin.as_str()
                );
            }
            // An adapter carries its base model's licence: it is trained from it.
            for a in hub::find_adapters(model_dir.as_deref()) {
                let licence = hub::weights_licence(&a.info.base_model, None)
                    .map(|l| format!("\tweights licence: {l}"))
                    .unwrap_or_default();
                println!(
                    "{}\tadapter (stage {}) for {}\t{}\t{} ({}){licence}",
                    a.path
                        .file_stem()
                        .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                    a.info.stage,
                    a.info.base_model,
                    std::fs::metadata(&a.path)
                        .map(|m| format!("{:.1} MB", m.len() as f64 / 1e6))
                        .unwrap_or_default(),
                    a.path.display(),
                    a.origin.as_str()
                );
            }
            Ok(())
        }
        ModelsCommand::Pull { model, cache_dir } => {
            let cache = cache_dir
                .or_else(hub::hf_cache_dir)
                .context("no home folder to put the Hugging Face cache in: give --cache-dir")?;
            hub::check_repo_id(&model)?;
            let endpoint = hub::endpoint_from_env();
            // Said before the download, so nobody builds on weights they may
            // not use.
            if let Some(l) = hub::weights_licence(&model, None) {
                eprintln!(
                    "licence: the weights of {model} are {l} (see {}/{model})",
                    endpoint.trim_end_matches('/')
                );
            }
            eprintln!(
                "downloading {model} from {endpoint} into {}",
                cache.display()
            );
            let mut progress = PullBar { bar: None };
            let dir = hub::pull(&model, &cache, &endpoint, &mut progress)?;
            eprintln!("ready: {}", dir.display());
            Ok(())
        }
    }
}

struct PullBar {
    bar: Option<ProgressBar>,
}

impl vidmusician_engine::neural::hub::PullProgress for PullBar {
    fn file(&mut self, name: &str, bytes: u64) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        let b = ProgressBar::new(bytes);
        b.set_style(
            ProgressStyle::with_template(
                "{msg:>24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .expect("PANIC: constant template")
            .progress_chars("=> "),
        );
        b.set_message(name.to_string());
        self.bar = Some(b);
    }
    fn advance(&mut self, bytes: u64) {
        if let Some(b) = &self.bar {
            b.inc(bytes);
        }
    }
    fn done(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
    }
}

/// Says how much of a video could not be decoded, if any (more than half
/// is refused by the analysis itself).
fn warn_damage(info: &video::VideoInfo) {
    if info.undecodable_frames > 0 {
        eprintln!(
            "warning: {}: {} of {} frames ({:.1}%) could not be decoded (the file is damaged there); the analysis holds the last good picture over them",
            info.path.display(),
            info.undecodable_frames,
            info.video_packets,
            info.undecodable_frames as f64 * 100.0 / info.video_packets.max(1) as f64
        );
    }
}

fn run_analysis(video_path: &Path) -> Result<Analysis> {
    let pb = bar(1000, "analysing");
    let a = analysis::analyze(
        video_path,
        &mut StatsEncoder::default(),
        &AtomicBool::new(false),
        &mut |f| pb.set_position((f * 1000.0) as u64),
    );
    pb.finish_and_clear();
    let a = a?;
    warn_damage(&a.video);
    Ok(a)
}

/// What `analyze --tags` needs.
struct TagArgs {
    vocabulary: Option<PathBuf>,
    model_dir: Option<PathBuf>,
    clip_model: String,
}

fn analyze(
    video_path: &Path,
    as_json: bool,
    plot: Option<&Path>,
    tag_args: Option<&TagArgs>,
) -> Result<()> {
    if let Some(p) = plot {
        refuse_same_file(p, &[("input video", video_path)])?;
        check_extension(p, "png", "--plot draws a PNG image", None)?;
        check_writable(p)?;
    }
    // A vocabulary that cannot be read is refused before the analysis.
    if let Some(v) = tag_args.and_then(|t| t.vocabulary.as_deref()) {
        vidmusician_engine::analysis::tags::Vocabulary::load(v)?;
    }
    let a = run_analysis(video_path)?;
    if let Some(p) = plot {
        analysis::plot_analysis(&a, p)?;
        eprintln!("wrote {}", p.display());
    }
    let tags = match tag_args {
        Some(t) => {
            let config = EngineConfig {
                model_dir: t.model_dir.clone(),
                clip_model: t.clip_model.clone(),
                ..EngineConfig::default()
            };
            let cancel = std::sync::atomic::AtomicBool::new(false);
            let pb = bar(1000, "reading the pictures");
            let tags = vidmusician_engine::service::video_tags(
                &config,
                video_path,
                t.vocabulary.as_deref(),
                &a,
                &cancel,
                &mut |f| pb.set_position((f * 1000.0) as u64),
            );
            pb.finish_and_clear();
            Some(tags?)
        }
        None => None,
    };
    if as_json {
        let mut j = serde_json::to_value(&a)?;
        if let Some(t) = &tags {
            j["tags"] = serde_json::to_value(t)?;
        }
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    let (w, h) = a.video.display_size();
    println!(
        "{}: {:.2} s, {w}×{h}, {:.2} fps, {}{}",
        a.video.path.display(),
        a.duration,
        a.video.frame_rate,
        a.video.codec,
        if a.video.rotation != 0 {
            format!(", rotated {}°", a.video.rotation)
        } else {
            String::new()
        }
    );
    if a.cuts.is_empty() {
        println!("cuts: none");
    } else {
        println!(
            "cuts: {} ({:.1} per minute)",
            a.cuts.len(),
            a.summary.cuts_per_minute
        );
    }
    for c in &a.cuts {
        println!("  {:>8.3} s  strength {:.3}", c.time, c.strength);
    }
    // A share of no cuts means nothing: say where the tempo came from instead.
    let fit = match a.cuts.len() {
        0 => "from the motion alone (no cuts to fit)".to_string(),
        1 => format!(
            "the cut {} a beat",
            if a.tempo.cut_fit > 0.5 { "on" } else { "off" }
        ),
        n => format!("{:.0}% of the {n} cuts on beats", a.tempo.cut_fit * 100.0),
    };
    println!(
        "suggested tempo: {:.1} BPM (beat at {:.3} s), {fit}",
        a.tempo.bpm, a.tempo.phase,
    );
    let s = &a.summary;
    println!(
        "picture: brightness {:.2}, contrast {:.2}, saturation {:.2}, colourfulness {:.2}, warmth {:+.2}, motion {:.4}",
        s.brightness, s.contrast, s.saturation, s.colourfulness, s.warmth, s.motion
    );
    for section in tags.iter().flatten() {
        println!("tags {:.2}–{:.2} s:", section.start, section.end);
        for t in &section.tags {
            println!("  {:<12} {:<16} {:.2}", t.category, t.tag, t.score);
        }
    }
    Ok(())
}

fn eval(
    music: &Path,
    video_path: Option<&Path>,
    reference: Option<&Path>,
    bin: f64,
    range: (Option<f64>, Option<f64>),
) -> Result<()> {
    if !(bin.is_finite() && bin > 0.0) {
        bail!("--bin must be a positive number of seconds");
    }
    let ranged = range.0.is_some() || range.1.is_some();
    if ranged && video_path.is_none() {
        bail!("--start/--end say which part of a video the music was made for: give --video");
    }
    let (start, end) = (range.0.unwrap_or(0.0), range.1.unwrap_or(f64::INFINITY));
    if !(start.is_finite() && start >= 0.0 && end > start) {
        bail!("--start and --end must be times in seconds, from 0, with --end after --start");
    }
    let m = audio::read_wav(music)?;
    let cfg = metrics::OnsetConfig::default();
    let onsets = metrics::detect_onsets(&m.mono(), m.sample_rate, &cfg);
    let mut out = json!({
        "music": music,
        "duration": m.duration(),
        "onsets": onsets.len(),
        "loudness": audio::measure(&m)?,
    });
    if let Some(v) = video_path {
        let a = run_analysis(v)?;
        if start >= a.duration {
            bail!(
                "--start {start} s is past the end of {} ({:.2} s)",
                v.display(),
                a.duration
            );
        }
        // The music starts at the range's start: the cuts inside the range,
        // on the music's clock.
        let cuts: Vec<f64> = a
            .cuts
            .iter()
            .filter(|c| c.time >= start && c.time < end)
            .map(|c| c.time - start)
            .collect();
        out["cuts"] = json!(cuts.len());
        // With no cuts there is nothing to hit: no rate, rather than 100%.
        out["cut_hit_rate"] = if cuts.is_empty() {
            serde_json::Value::Null
        } else {
            json!(metrics::cut_hit_rate(&onsets, &cuts, 0.05))
        };
        if ranged {
            out["range"] = json!([start, end.min(a.duration)]);
        }
    }
    if let Some(r) = reference {
        let ra = audio::read_wav(r)?;
        let ro = metrics::detect_onsets(&ra.mono(), ra.sample_rate, &cfg);
        let s = metrics::beat_scores(&onsets, &ro, m.duration().min(ra.duration()), bin);
        out["beat_coverage"] = json!(s.coverage);
        out["beat_hit"] = json!(s.hit);
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn default_cuts(duration: f64, seed: u64) -> Vec<f64> {
    // Irregular shots of 1–3 s, deterministic for the seed.
    let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let mut t = 0.0;
    let mut cuts = Vec::new();
    loop {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        t += 1.0 + 2.0 * ((s >> 33) as f64 / (1u64 << 31) as f64);
        if t >= duration - 0.5 {
            return cuts;
        }
        cuts.push((t * 100.0).round() / 100.0);
    }
}

fn synth_video(
    output: &Path,
    duration: f64,
    cuts: Option<Vec<f64>>,
    (width, height, fps): (u32, u32, u32),
    seed: u64,
    tone: Option<f32>,
) -> Result<()> {
    if tone.is_some_and(|hz| !(hz.is_finite() && hz > 0.0 && hz < 20_000.0)) {
        bail!("--tone must be a frequency between 0 and 20000 Hz");
    }
    if !(duration.is_finite() && duration > 0.0 && duration <= 3600.0) {
        bail!("--duration must be between 0 and 3600 seconds");
    }
    if fps == 0 || fps > 240 || width == 0 || height == 0 || width > 7680 || height > 4320 {
        bail!("--fps must be 1–240 and the size at most 7680×4320");
    }
    let cuts = cuts.unwrap_or_else(|| default_cuts(duration, seed));
    let mut spec = synth::SynthSpec::new(width, height, fps, duration, cuts);
    spec.seed = seed;
    spec.tone = tone;
    // The engine's errors name the file already.
    synth::write_video(output, &spec)?;
    let times: Vec<String> = spec
        .cut_frame_times()
        .iter()
        .map(|t| format!("{t:.3}"))
        .collect();
    println!(
        "{}",
        json!({ "video": output, "cuts": spec.cut_frame_times() })
    );
    if times.is_empty() {
        eprintln!("wrote {}, one shot with no cuts", output.display());
    } else {
        eprintln!(
            "wrote {} with {} at {}",
            output.display(),
            count(times.len(), "cut", "cuts"),
            times.join(", ")
        );
    }
    Ok(())
}

/// Times `runs` calls of `f`; prints the best and mean speed as a multiple
/// of real time for `media_s` seconds of media, with `facts`.
fn report_runs(
    runs: usize,
    media_s: f64,
    mut facts: serde_json::Value,
    mut f: impl FnMut(u64) -> vidmusician_engine::Result<()>,
) -> Result<()> {
    let mut times = Vec::new();
    for run in 0..runs as u64 {
        let t = Instant::now();
        f(run)?;
        times.push(t.elapsed());
    }
    let best = times
        .iter()
        .min()
        .copied()
        .unwrap_or_default()
        .as_secs_f64();
    let mean = times.iter().map(Duration::as_secs_f64).sum::<f64>() / times.len() as f64;
    facts["threads"] = json!(std::thread::available_parallelism().map_or(1, |n| n.get()));
    facts["runs"] = json!(runs);
    facts["best_x_realtime"] = json!((media_s / best * 10.0).round() / 10.0);
    facts["mean_x_realtime"] = json!((media_s / mean * 10.0).round() / 10.0);
    println!("{facts}");
    Ok(())
}

fn analyse_quietly(path: &Path) -> vidmusician_engine::Result<Analysis> {
    analysis::analyze(
        path,
        &mut StatsEncoder::default(),
        &AtomicBool::new(false),
        &mut |_| {},
    )
}

fn bench(what: BenchWhat, video_path: Option<&Path>, seconds: f64, runs: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    match what {
        BenchWhat::Analysis => {
            let path = match video_path {
                Some(p) => p.to_path_buf(),
                None => {
                    let p = dir.path().join("bench-1080p30.mp4");
                    eprintln!("generating a {seconds:.0} s 1080p30 H.264 clip…");
                    let spec =
                        synth::SynthSpec::new(1920, 1080, 30, seconds, default_cuts(seconds, 3));
                    synth::write_video(&p, &spec)?;
                    p
                }
            };
            let info = video::probe(&path)?;
            let facts = json!({
                "bench": "decode+analysis",
                "video": format!("{}x{} {:.2} fps {} {:.1} s", info.width, info.height, info.frame_rate, info.codec, info.duration),
            });
            report_runs(runs, info.duration, facts, |_| {
                analyse_quietly(&path).map(|_| ())
            })
        }
        BenchWhat::Composer => {
            let p = dir.path().join("bench-small.mp4");
            let spec = synth::SynthSpec::new(320, 240, 25, seconds, default_cuts(seconds, 5));
            synth::write_video(&p, &spec)?;
            let a = analyse_quietly(&p)?;
            let facts = json!({ "bench": "sketch composer", "music_seconds": a.duration });
            report_runs(runs, a.duration, facts, |seed| {
                let settings = SketchSettings {
                    seed,
                    ..Default::default()
                };
                sketch::compose(&a, &settings, &AtomicBool::new(false), &mut |_| {}).map(|_| ())
            })
        }
        BenchWhat::Neural => bench_neural(250, None),
        BenchWhat::Device => bench_device(DeviceChoice::Auto, 250, "f32", false, None),
        BenchWhat::Clip => bench_clip(seconds, video_path),
        BenchWhat::ZeroShot => bench_zero_shot(seconds),
        BenchWhat::Train => bench_train(DeviceChoice::Auto),
    }
}

fn bench_train(device: DeviceChoice) -> Result<()> {
    let chosen = vidmusician_engine::neural::device::choose_in_process(device, "training")?;
    eprintln!("{}", chosen.note);
    let r = vidmusician_engine::train::bench::run_on(&chosen.candle_device(), &mut |m| {
        eprintln!("{m}…")
    })?;
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(())
}

fn bench_zero_shot(seconds: f64) -> Result<()> {
    if !(seconds.is_finite() && (1.0..=300.0).contains(&seconds)) {
        bail!("--seconds must be between 1 and 300 (got {seconds})");
    }
    let dir = tempfile::tempdir()?;
    let models = dir.path().join("models");
    let (mg, clip) = (
        models.join("musicgen-small"),
        models.join("clip-vit-base-patch32"),
    );
    std::fs::create_dir_all(&mg)?;
    std::fs::create_dir_all(&clip)?;
    eprintln!("writing random checkpoints…");
    vidmusician_engine::neural::bench::write_random_checkpoint(&mg)?;
    vidmusician_engine::neural::models::clip::bench::write_random_checkpoint(&clip)?;
    let video = dir.path().join("bench.mp4");
    let cuts = default_cuts(seconds, 3);
    synth::write_video(&video, &synth::SynthSpec::new(640, 360, 25, seconds, cuts))?;
    let engine = Engine::start(EngineConfig {
        cache_dir: None,
        model_dir: Some(models),
        precision: vidmusician_engine::neural::Precision::Q8,
        ..EngineConfig::default()
    })?;
    let mut req = Request::new(&video);
    req.engine = EngineChoice::ZeroShot;
    req.sample_rate = 48_000;
    // Chunks as a player takes them: the first one is the first sound.
    req.chunk_frames = 4800;
    req.max_chunks = (seconds * 10.0).ceil() as usize + 2;
    eprintln!("the zero-shot engine on {seconds:.0} s of video…");
    let t0 = Instant::now();
    let (id, reader) = engine.submit(req.clone())?;
    let mut reader = reader.context("no chunk reader")?;
    let mut first_sound = None;
    let mut entered: Vec<(Stage, f64)> = Vec::new();
    let done = engine.wait(id, |ev| {
        if let Event::Progress { stage, .. } = ev
            && entered.last().is_none_or(|(s, _)| s != stage)
        {
            entered.push((*stage, t0.elapsed().as_secs_f64()));
        }
        if first_sound.is_none() && reader.pop().is_some() {
            first_sound = Some(t0.elapsed().as_secs_f64());
        }
    })?;
    let total = t0.elapsed().as_secs_f64();
    // The text engine on the same model, loaded already: its first sound is
    // the generation's alone.
    let mut text = Request::text("", seconds);
    text.engine = EngineChoice::Text;
    text.sample_rate = 48_000;
    text.chunk_frames = req.chunk_frames;
    text.max_chunks = req.max_chunks;
    eprintln!("the text engine, {seconds:.0} s of music…");
    let t1 = Instant::now();
    let (tid, treader) = engine.submit(text)?;
    let mut treader = treader.context("no chunk reader")?;
    let mut text_first = None;
    engine.wait(tid, |_| {
        if text_first.is_none() && treader.pop().is_some() {
            text_first = Some(t1.elapsed().as_secs_f64());
        }
    })?;
    let music = done.audio.duration();
    let mut stages = serde_json::Map::new();
    for (k, (stage, at)) in entered.iter().enumerate() {
        let end = entered.get(k + 1).map_or(total, |e| e.1);
        stages.insert(format!("{stage:?}").to_lowercase(), json!(end - at));
    }
    let report = json!({
        "bench": "zero-shot engine, musicgen-small + clip-vit-base-patch32 shapes, random weights, 8-bit decoder",
        "threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "music_seconds": music,
        "wall_seconds": total,
        "seconds_per_second_of_music": total / music.max(1e-9),
        "stage_seconds": stages,
        "first_sound_seconds": first_sound,
        "text_engine_first_sound_seconds_model_loaded": text_first,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn bench_clip(seconds: f64, video: Option<&Path>) -> Result<()> {
    if !(seconds.is_finite() && (1.0..=600.0).contains(&seconds)) {
        bail!("--seconds must be between 1 and 600 (got {seconds})");
    }
    let r = vidmusician_engine::neural::models::clip::bench::run(seconds, video, &mut |m| {
        eprintln!("{m}…")
    })?;
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(())
}

fn bench_device(
    device: DeviceChoice,
    frames: usize,
    dtypes: &str,
    medium: bool,
    checkpoint: Option<&Path>,
) -> Result<()> {
    let dtypes = dtypes
        .split(',')
        .map(vidmusician_engine::neural::device::parse_dtype)
        .collect::<std::result::Result<Vec<_>, _>>()
        .context("--dtypes")?;
    let r = vidmusician_engine::neural::bench::device(
        device,
        frames,
        &dtypes,
        medium,
        checkpoint,
        &mut |m| eprintln!("{m}…"),
    )?;
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(())
}

fn bench_neural(frames: usize, python: Option<&Path>) -> Result<()> {
    use vidmusician_engine::neural::bench;
    let ours = bench::run(frames, &mut |m| eprintln!("{m}…"))?;
    let mut report = json!({ "bench": "neural (musicgen-small shape, random weights, f32)", "vidmusician": ours });
    if let Some(py) = python {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/bench_transformers.py");
        eprintln!("the same through transformers ({})…", py.display());
        let out = std::process::Command::new(py)
            .arg(&script)
            .args(["--frames", &frames.to_string()])
            .args(["--threads", &ours.threads.to_string()])
            .output()
            .with_context(|| format!("cannot run {}", py.display()))?;
        if !out.status.success() {
            bail!(
                "the transformers benchmark failed: {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            );
        }
        let theirs: serde_json::Value = serde_json::from_slice(&out.stdout)
            .context("the transformers benchmark printed no JSON")?;
        if let Some(t) = theirs["guided_steps_per_s"].as_f64() {
            report["speedup_guided"] = json!(ours.guided_steps_per_s / t);
        }
        if let Some(t) = theirs["encodec_s_per_10s_audio"].as_f64() {
            report["speedup_encodec"] = json!(t / ours.encodec_s_per_10s_audio);
        }
        report["transformers"] = theirs;
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// The times given to `synth-video --cuts`; a type of its own so that clap
/// takes the whole list as one value (an empty one included).
#[derive(Clone)]
struct CutList(Vec<f64>);

fn parse_cuts(text: &str) -> std::result::Result<CutList, String> {
    text.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| format!("`{t}` is not a time in seconds"))
        })
        .collect::<std::result::Result<_, _>>()
        .map(CutList)
}

fn parse_meter(text: &str) -> std::result::Result<sketch::Meter, String> {
    sketch::Meter::parse(text).map_err(|e| e.to_string())
}
