//! `vidmusician-cuda`: the GPU helper, a `cuda` build holding an NVIDIA GPU
//! for the engines of CPU builds (the `vidmusician` CLI, the plugin), which
//! start it and speak to it on stdin/stdout; see
//! `vidmusician_engine::neural::helper`. Kept to what it serves, and the
//! benchmark of the device it runs on, so that it stays small enough to
//! carry to a GPU machine.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vidmusician_engine::neural::device::{DeviceChoice, parse_dtype};

#[derive(Parser)]
#[command(name = "vidmusician-cuda", version, about = "VidMusician's GPU helper")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the engine that started this process (it speaks on stdin and
    /// stdout; not for people).
    GpuServe {
        /// cuda, cuda:N (cpu runs the same code on the CPU).
        #[arg(long, default_value = "cuda")]
        device: DeviceChoice,
    },
    /// The decoder on the device against the CPU decoder: logits and steps
    /// per second at musicgen-small's shape (random weights), in each of
    /// --dtypes; musicgen-medium's too with --medium, and a checkpoint's.
    BenchDevice {
        #[arg(long, default_value = "cuda")]
        device: DeviceChoice,
        /// Code frames generated per timing (50 per second of audio).
        #[arg(long, default_value_t = 500)]
        frames: usize,
        /// Comma-separated: f32, f16, bf16.
        #[arg(long, default_value = "f32,f16,bf16")]
        dtypes: String,
        #[arg(long)]
        medium: bool,
        /// A MusicGen checkpoint folder (e.g. engine/tests/fixtures/musicgen-tiny).
        #[arg(long, value_name = "DIR")]
        checkpoint: Option<PathBuf>,
        /// Also time musicgen-small through this program run as the helper
        /// (`gpu-serve`), as a CPU build's engine drives it.
        #[arg(long)]
        through_helper: bool,
    },
    /// Training on the device: the same steps on the CPU and on the device
    /// (losses and trained values after --steps steps, the test fixtures'
    /// shape), then steps per second there (that shape, and one 10 s window
    /// at musicgen-small's), from random weights.
    BenchTrain {
        #[arg(long, default_value = "cuda")]
        device: DeviceChoice,
        #[arg(long, default_value_t = 10)]
        steps: usize,
    },
    /// CLIP's vision tower on the device against the CPU's (random
    /// clip-vit-base-patch32 weights): embeddings' agreement and frames per
    /// second in batches of 16, in each of --dtypes.
    BenchClip {
        #[arg(long, default_value = "cuda")]
        device: DeviceChoice,
        /// Comma-separated: f32, f16, bf16.
        #[arg(long, default_value = "f32,f16,bf16")]
        dtypes: String,
        /// Batches of 16 frames timed per type.
        #[arg(long, default_value_t = 20)]
        batches: usize,
    },
    /// EnCodec's decoder on the device against the CPU's kernels
    /// (musicgen-small's codec, random weights): the audio's agreement and
    /// the time to decode --frames code frames (50 a second).
    BenchCodec {
        #[arg(long, default_value = "cuda")]
        device: DeviceChoice,
        #[arg(long, default_value_t = 500)]
        frames: usize,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::GpuServe { device } => {
            vidmusician_engine::neural::helper::serve(device).map_err(anyhow::Error::from)
        }
        Command::BenchDevice {
            device,
            frames,
            dtypes,
            medium,
            checkpoint,
            through_helper,
        } => bench(
            device,
            frames.max(1),
            &dtypes,
            medium,
            checkpoint,
            through_helper,
        ),
        Command::BenchTrain { device, steps } => bench_train(device, steps.max(1)),
        Command::BenchClip {
            device,
            dtypes,
            batches,
        } => bench_clip(device, &dtypes, batches.max(1)),
        Command::BenchCodec { device, frames } => bench_codec(device, frames.max(1)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn bench(
    device: DeviceChoice,
    frames: usize,
    dtypes: &str,
    medium: bool,
    checkpoint: Option<PathBuf>,
    through_helper: bool,
) -> anyhow::Result<()> {
    let dtypes = dtypes
        .split(',')
        .map(parse_dtype)
        .collect::<Result<Vec<_>, _>>()?;
    use vidmusician_engine::neural::bench;
    let mut r = bench::device(
        device,
        frames,
        &dtypes,
        medium,
        checkpoint.as_deref(),
        &mut |m| eprintln!("{m}…"),
    )?;
    if through_helper {
        let exe = std::env::current_exe()?;
        let t = bench::through_helper(&exe, &device.to_string(), frames, &mut |m| {
            eprintln!("{m}…")
        })?;
        r.through_helper_guided_steps_per_s = Some(t.steps_per_s);
        r.through_helper_decoding_steps_per_s = Some(t.decoding_steps_per_s);
        r.through_helper_decoded_x_real_time = Some(t.decoded_x_real_time);
    }
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(())
}

fn bench_train(device: DeviceChoice, steps: usize) -> anyhow::Result<()> {
    use vidmusician_engine::train::bench;
    let chosen = vidmusician_engine::neural::device::choose_in_process(device, "training")?;
    eprintln!("{}", chosen.note);
    let device = chosen.candle_device();
    eprintln!("parity: {steps} steps on the CPU and on {}…", chosen.name);
    let parity = bench::parity(&device, steps)?;
    let speed = bench::run_on(&device, &mut |m| eprintln!("{m}…"))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({ "parity": parity, "speed": speed }))?
    );
    Ok(())
}

fn bench_clip(device: DeviceChoice, dtypes: &str, batches: usize) -> anyhow::Result<()> {
    let dtypes = dtypes
        .split(',')
        .map(parse_dtype)
        .collect::<Result<Vec<_>, _>>()?;
    let chosen = vidmusician_engine::neural::device::choose_in_process(device, "CLIP")?;
    eprintln!("{}", chosen.note);
    let r = vidmusician_engine::neural::models::clip::bench::device(
        &chosen.candle_device(),
        &dtypes,
        16,
        batches,
        &mut |m| eprintln!("{m}…"),
    )?;
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(())
}

fn bench_codec(device: DeviceChoice, frames: usize) -> anyhow::Result<()> {
    let chosen = vidmusician_engine::neural::device::choose_in_process(device, "EnCodec")?;
    eprintln!("{}", chosen.note);
    let r = vidmusician_engine::neural::bench::codec_device(
        &chosen.candle_device(),
        frames,
        &mut |m| eprintln!("{m}…"),
    )?;
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(())
}
