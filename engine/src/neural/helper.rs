//! The GPU helper: MusicGen's decoder, EnCodec's decoder and CLIP's vision tower on
//! a CUDA device, in a process of its own that the engine thread drives over pipes.
//!
//! Why a process and not a library: candle's CUDA backend links `libcuda`,
//! cuBLAS, cuRAND, NVRTC and the CUDA runtime when it is built, so a binary
//! or plugin built with it does not even load where those libraries are
//! missing, which is every machine without an NVIDIA driver. The shipped
//! `vidmusician` and the plugin are CPU builds that load everywhere; the
//! helper is the same `vidmusician` built with `--features cuda` and
//! installed as `vidmusician-cuda`. Run as `vidmusician-cuda gpu-serve`, it
//! holds the device, the decoder's weights on it and the keys and values of
//! the window; the engine sends it a window to generate and gets the frames
//! back as they become final. It holds EnCodec's decoder too, and decodes
//! the audio of the pieces it generates ([`AudioPlan`]): it keeps each
//! piece's frames and the codec's state between its windows and sends each
//! hand-over's samples with the step that settles them, so a GPU's
//! generation is not held to the speed of the CPU's codec. It also holds
//! CLIP's vision tower ([`HelperFrames`]): the engine sends it a video's
//! frames, decoded and scaled here, and gets their embeddings and patch
//! tokens back. A helper that cannot start (no driver, no
//! CUDA libraries: the loader's own message names the missing one) is a
//! clear error and the work stays on the CPU; a GPU fault or an
//! out-of-memory abort ends the helper, not the host; and the device's
//! memory is surely given back when the helper ends, which it does when the
//! engine lets go of it (its input closes) or is killed.
//!
//! The wire: each message is a little-endian `u32` length and a postcard
//! body ([`ToHelper`], [`FromHelper`]). The tokens are drawn in the helper
//! with the same code and seed as on the CPU.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use candle_core::{DType, Tensor};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::encodec::{EncodecDecoder, SpanDecoder};
use super::generate::{Frames, Progress, Sampling};
use super::models::clip::{ClipConfig, Encoded, FrameEncoder, PreprocessConfig, RgbImage};
use crate::{Error, Result};

/// The helper's file name, beside `vidmusician` or the plugin.
pub const HELPER_NAME: &str = "vidmusician-cuda";
/// The environment variable that names the helper's path.
pub const HELPER_ENV: &str = "VIDMUSICIAN_CUDA_HELPER";

/// Longest a helper may take to open its device (CUDA's first start can
/// take seconds).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest a helper may take to load a checkpoint onto its device.
const LOAD_TIMEOUT: Duration = Duration::from_secs(900);
/// Longest a step may take: far beyond any real step, so only a hung
/// device or helper reaches it.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a helper has to stop after a cancel before it is killed.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest message taken from the wire (the biggest real one, a window's
/// in-attention inputs for musicgen-medium, is about 0.5 GB).
const MAX_MESSAGE: usize = 2 << 30;

/// Frames this process has had CLIP read in GPU helpers (tests check that
/// an engine on a helper reads its pictures there).
static FRAMES_SENT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Frames this process has had CLIP read in GPU helpers so far.
pub fn frames_sent() -> usize {
    FRAMES_SENT.load(Ordering::Relaxed)
}

/// Samples of music this process has had decoded in GPU helpers (tests
/// check that a piece made on a helper is decoded there).
static SAMPLES_DECODED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Samples of music this process has had decoded in GPU helpers so far.
pub fn samples_decoded() -> usize {
    SAMPLES_DECODED.load(Ordering::Relaxed)
}

/// Codecs a helper keeps loaded (one per MusicGen checkpoint in use; a
/// few tens of megabytes each).
const MAX_CODECS: usize = 2;
/// Pieces a helper keeps decoding between their windows (one per engine
/// generating on it: a finished, cancelled or failed piece is let go at
/// once); the oldest is let go past this. A piece holds its frames (under
/// a megabyte for minutes of music) and the codec's state.
const MAX_PIECES: usize = 32;

/// What the engine asks of the helper.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToHelper {
    /// Load the decoder of the MusicGen checkpoint in `dir` onto the device,
    /// in `dtype` (`f32`, `f16`, `bf16`).
    Load {
        dir: PathBuf,
        dtype: String,
    },
    Generate(Box<Window>),
    /// Stop the generation under way.
    Cancel,
    /// Load the vision tower of the CLIP checkpoint in `dir` onto the
    /// device, in `dtype`, beside the decoder.
    LoadClip {
        dir: PathBuf,
        dtype: String,
    },
    /// Encode `side`×`side` RGB frames (`images` holds them one after the
    /// other) with the CLIP that [`ToHelper::LoadClip`] gave it; with
    /// `patches`, their patch tokens too.
    Encode {
        side: u32,
        images: Vec<u8>,
        patches: bool,
    },
    /// Load the EnCodec decoder of the MusicGen checkpoint in `dir` onto the
    /// device (in f32, checked there against the CPU's), to decode the
    /// pieces whose windows ask for their audio ([`Window::audio`]).
    LoadCodec {
        dir: PathBuf,
    },
}

/// One window of generation; see [`super::generate::generate_on`].
#[derive(Debug, Serialize, Deserialize)]
pub struct Window {
    /// The conditional sequence's states (`len × hidden`, f32), `len`, and
    /// its mask.
    pub cross: Option<(Vec<f32>, usize, Vec<u32>)>,
    pub layer_inputs: Vec<Option<Vec<f32>>>,
    pub prompt: Frames,
    pub frames: usize,
    pub sampling: Sampling,
    /// When set, the helper also decodes the piece's audio and hands it
    /// over with the frames.
    pub audio: Option<AudioPlan>,
}

/// How a window's audio is handed over when the helper decodes it: the
/// piece it belongs to, and when the engine would have decoded itself
/// (the same rule, so the audio comes in the same stretches).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AudioPlan {
    /// The piece's number (the engine's own): the helper keeps its frames
    /// and the codec's state from one of its windows to the next.
    pub piece: u64,
    /// The MusicGen checkpoint whose codec decodes it ([`ToHelper::LoadCodec`]).
    pub codec: PathBuf,
    /// Frames of the piece before this window's new ones (0: its first
    /// window), and in the whole piece (the window reaching it completes it).
    pub before: usize,
    pub total: usize,
    /// The piece's first hand-over once this many frames have settled, in
    /// its first window; after it, one every `every` final frames.
    pub first_settled: usize,
    pub every: usize,
}

/// What the helper answers.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromHelper {
    /// The device is open.
    Ready {
        device: String,
        note: String,
    },
    Loaded,
    /// A step is done; `fresh` are the frames that became final with it.
    /// `audio`: for a window whose audio the helper decodes, the piece's
    /// samples that settled since its last hand-over, when one is due.
    Step {
        step: usize,
        steps: usize,
        complete: usize,
        fresh: Frames,
        audio: Option<Vec<f32>>,
    },
    /// The window's new frames, and (when the helper decodes the audio) the
    /// samples that settled with them (all the rest, at the piece's end).
    Done {
        frames: Frames,
        audio: Option<Vec<f32>>,
    },
    Cancelled,
    /// The frames of an [`ToHelper::Encode`].
    Encoded(Encoded),
    /// `device`: the device failed (no memory, a fault); otherwise the
    /// request was wrong.
    Failed {
        reason: String,
        device: bool,
    },
}

fn write_message<T: Serialize>(w: &mut impl Write, m: &T) -> std::io::Result<()> {
    let body = postcard::to_stdvec(m).map_err(std::io::Error::other)?;
    let len = u32::try_from(body.len()).map_err(std::io::Error::other)?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(&body)?;
    w.flush()
}

/// The next message, `None` at the end of the stream.
fn read_message<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(std::io::Error::other(format!(
            "a message of {len} bytes is past the {MAX_MESSAGE} allowed"
        )));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    postcard::from_bytes(&body)
        .map(Some)
        .map_err(std::io::Error::other)
}

/// Runs `f` with SIGPIPE blocked on this thread, so that a write to a pipe
/// whose reader ended fails with `EPIPE` rather than ending the process
/// (Rust programs ignore SIGPIPE, hosts loading the plugin may not). A
/// SIGPIPE raised meanwhile is taken off this thread before it is unblocked.
#[cfg(target_os = "linux")]
fn without_sigpipe<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: plain calls on signal sets this function owns; the thread's
    // mask is restored before returning.
    unsafe {
        let mut pipe: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut pipe);
        libc::sigaddset(&mut pipe, libc::SIGPIPE);
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, &pipe, &mut old);
        let r = f();
        let mut pending: libc::sigset_t = std::mem::zeroed();
        libc::sigpending(&mut pending);
        if libc::sigismember(&pending, libc::SIGPIPE) == 1 {
            let zero = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            libc::sigtimedwait(&pipe, std::ptr::null_mut(), &zero);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        r
    }
}

#[cfg(not(target_os = "linux"))]
fn without_sigpipe<T>(f: impl FnOnce() -> T) -> T {
    f()
}

/// Where the helper is: `$VIDMUSICIAN_CUDA_HELPER`, else `vidmusician-cuda`
/// beside this program, beside the plugin (see [`set_plugin_dir`]), or on
/// the `PATH`.
pub fn find() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(HELPER_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let beside_exe = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf));
    let plugin = PLUGIN_DIR.lock().clone();
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    beside_exe
        .into_iter()
        .chain(plugin)
        .chain(path_dirs)
        .map(|d| d.join(HELPER_NAME))
        .find(|p| p.is_file())
}

static PLUGIN_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The folder the plugin was loaded from, where its helper is looked for.
pub fn set_plugin_dir(dir: &Path) {
    *PLUGIN_DIR.lock() = Some(dir.to_path_buf());
}

/// A running helper, holding one device.
pub struct Helper {
    exe: PathBuf,
    device: String,
    note: String,
    proc: Mutex<Proc>,
}

/// A window as [`Helper::generate`] is asked for it: the conditional
/// states and mask, the in-attention inputs, the prompt, the frames to make
/// and the sampling.
type AskedWindow<'a> = (
    Option<(&'a Tensor, &'a Tensor)>,
    &'a [Option<Vec<f32>>],
    &'a [Vec<u32>],
    usize,
    &'a Sampling,
);

/// What [`Helper::generate_piece`] calls at each step: the progress, the
/// frames final so far, and the audio of a hand-over when one comes with
/// the step; `false` cancels.
pub type OnPieceStep<'a> = dyn FnMut(Progress, &[Vec<u32>], Option<Vec<f32>>) -> bool + 'a;

/// What a helper holds on its device.
#[derive(Clone, Copy)]
enum Held {
    Decoder,
    Clip,
    Codec,
}

struct Proc {
    child: Child,
    stdin: Option<BufWriter<ChildStdin>>,
    rx: Receiver<std::io::Result<FromHelper>>,
    /// The last lines the helper wrote to its error stream.
    stderr: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
    /// The checkpoint and type its decoder holds.
    loaded: Option<(PathBuf, String)>,
    /// The checkpoint and type of the CLIP vision tower it holds.
    clip: Option<(PathBuf, String)>,
    /// The checkpoint of the codec last asked for (the helper keeps a few).
    codec: Option<(PathBuf, String)>,
    /// Set once the helper stopped answering or died: every later call
    /// fails at once.
    broken: Option<String>,
}

impl Helper {
    /// Starts `exe gpu-serve --device DEVICE` and waits until it holds the
    /// device. A helper that cannot start or open the device is an
    /// [`Error::Device`] with its reason (the loader's message for a missing
    /// CUDA library).
    pub fn start(exe: &Path, device: &str) -> Result<Self> {
        let fail = |reason: String| Error::Device {
            device: device.to_string(),
            reason,
        };
        let mut child = Command::new(exe)
            .args(["gpu-serve", "--device", device])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                fail(format!(
                    "cannot start the GPU helper {}: {e}",
                    exe.display()
                ))
            })?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail("the GPU helper's pipes could not be opened".into()));
        };
        let (tx, rx) = crossbeam_channel::unbounded();
        let reader = std::thread::Builder::new()
            .name("vidmusician-gpu-reader".into())
            .spawn(move || {
                let mut r = BufReader::new(stdout);
                loop {
                    match read_message::<FromHelper>(&mut r) {
                        Ok(Some(m)) => {
                            if tx.send(Ok(m)).is_err() {
                                return;
                            }
                        }
                        Ok(None) => return,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                }
            })
            .map_err(|e| fail(format!("cannot start a thread: {e}")))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let kept = lines.clone();
        let errors = std::thread::Builder::new()
            .name("vidmusician-gpu-stderr".into())
            .spawn(move || {
                use std::io::BufRead;
                for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                    let mut k = kept.lock();
                    k.push(line);
                    let n = k.len();
                    if n > 20 {
                        k.drain(..n - 20);
                    }
                }
            })
            .map_err(|e| fail(format!("cannot start a thread: {e}")))?;
        let mut proc = Proc {
            child,
            stdin: Some(BufWriter::new(stdin)),
            rx,
            stderr: lines,
            threads: vec![reader, errors],
            loaded: None,
            clip: None,
            codec: None,
            broken: None,
        };
        match proc.next(READY_TIMEOUT) {
            Ok(FromHelper::Ready { device: name, note }) => Ok(Self {
                exe: exe.to_path_buf(),
                device: name,
                note,
                proc: Mutex::new(proc),
            }),
            Ok(FromHelper::Failed { reason, .. }) => {
                proc.stop();
                Err(fail(reason))
            }
            Ok(other) => {
                proc.stop();
                Err(fail(format!("the GPU helper began with {other:?}")))
            }
            Err(reason) => {
                proc.stop();
                let why = match reason.strip_prefix("the GPU helper stopped") {
                    Some(rest) => rest.to_string(),
                    None => format!(": {reason}"),
                };
                Err(fail(format!(
                    "the GPU helper {} could not start{why}",
                    exe.display()
                )))
            }
        }
    }

    /// The device it holds (`cuda:0`) and its own line about it.
    pub fn device(&self) -> &str {
        &self.device
    }

    pub fn note(&self) -> &str {
        &self.note
    }

    pub fn exe(&self) -> &Path {
        &self.exe
    }

    /// The helper's operating-system process id, while it runs.
    pub fn pid(&self) -> u32 {
        self.proc.lock().child.id()
    }

    /// Whether it stopped answering or ended: every call now fails. Does
    /// not wait for a call under way.
    pub fn is_broken(&self) -> bool {
        self.proc.try_lock().is_some_and(|p| p.broken.is_some())
    }

    fn fail(&self, reason: String) -> Error {
        Error::Device {
            device: self.device.clone(),
            reason,
        }
    }

    /// Has the helper hold the decoder of the checkpoint in `dir` in
    /// `dtype` (a no-op when it already does).
    pub fn load(&self, dir: &Path, dtype: DType) -> Result<()> {
        self.hold(Held::Decoder, dir, dtype)
    }

    /// Has the helper hold the vision tower of the CLIP checkpoint in `dir`
    /// in `dtype` (a no-op when it already does).
    pub fn load_clip(&self, dir: &Path, dtype: DType) -> Result<()> {
        self.hold(Held::Clip, dir, dtype)
    }

    /// Has the helper hold the EnCodec decoder of the MusicGen checkpoint in
    /// `dir` (in f32), so that it can decode the pieces it generates. An
    /// [`Error::Device`] when the device cannot hold it or decodes
    /// differently there than the CPU.
    pub fn load_codec(&self, dir: &Path) -> Result<()> {
        self.hold(Held::Codec, dir, DType::F32)
    }

    /// Has the helper hold `what` of the checkpoint in `dir` in `dtype`.
    fn hold(&self, what: Held, dir: &Path, dtype: DType) -> Result<()> {
        let mut p = self.proc.lock();
        self.hold_locked(&mut p, what, dir, dtype)
    }

    /// [`Helper::hold`] with the helper already locked: a request that
    /// needs a model asks for it under the same lock, so that another
    /// engine of the process cannot have the helper load another between.
    fn hold_locked(&self, p: &mut Proc, what: Held, dir: &Path, dtype: DType) -> Result<()> {
        let dtype = super::device::dtype_name(dtype);
        if p.held(what)
            .as_ref()
            .is_some_and(|(d, t)| d == dir && t == dtype)
        {
            return Ok(());
        }
        let (dir, dtype) = (dir.to_path_buf(), dtype.to_string());
        let ask = match what {
            Held::Decoder => ToHelper::Load {
                dir: dir.clone(),
                dtype: dtype.clone(),
            },
            Held::Clip => ToHelper::LoadClip {
                dir: dir.clone(),
                dtype: dtype.clone(),
            },
            Held::Codec => ToHelper::LoadCodec { dir: dir.clone() },
        };
        p.send(&ask).map_err(|r| self.fail(r))?;
        match p.next(LOAD_TIMEOUT).map_err(|r| self.fail(r))? {
            FromHelper::Loaded => {
                *p.held(what) = Some((dir, dtype));
                Ok(())
            }
            FromHelper::Failed { reason, .. } => {
                *p.held(what) = None;
                Err(self.fail(reason))
            }
            other => Err(self.fail(p.broke(format!("answered {ask:?} with {other:?}")))),
        }
    }

    /// Frames through the CLIP vision tower [`Helper::load_clip`] gave it.
    /// Waits for a window another engine of the process is generating on
    /// the same helper (each of its steps is bounded by the step timeout).
    pub fn encode(&self, images: &[RgbImage], patches: bool) -> Result<Encoded> {
        self.encode_with(None, images, patches)
    }

    /// [`Helper::encode`] by the vision tower of the CLIP in `dir` in
    /// `dtype`, which the helper is made to hold first if it does not (an
    /// engine on another CLIP may have had it load that one).
    pub fn encode_for(
        &self,
        dir: &Path,
        dtype: DType,
        images: &[RgbImage],
        patches: bool,
    ) -> Result<Encoded> {
        self.encode_with(Some((dir, dtype)), images, patches)
    }

    fn encode_with(
        &self,
        model: Option<(&Path, DType)>,
        images: &[RgbImage],
        patches: bool,
    ) -> Result<Encoded> {
        let Some(first) = images.first() else {
            return Err(Error::InvalidSetting("no images to encode".into()));
        };
        let side = first.width;
        let mut bytes = Vec::with_capacity(images.len() * side * side * 3);
        for img in images {
            if (img.width, img.height) != (side, side) || img.rgb.len() != side * side * 3 {
                return Err(Error::InvalidSetting(format!(
                    "the GPU helper takes square frames of one size: {}×{} among {side}×{side}",
                    img.width, img.height
                )));
            }
            bytes.extend_from_slice(img.rgb);
        }
        let mut p = self.proc.lock();
        if let Some((dir, dtype)) = model {
            self.hold_locked(&mut p, Held::Clip, dir, dtype)?;
        }
        if p.clip.is_none() {
            return Err(self.fail("the GPU helper holds no CLIP".into()));
        }
        p.send(&ToHelper::Encode {
            side: side as u32,
            images: bytes,
            patches,
        })
        .map_err(|r| self.fail(r))?;
        match p.next(STEP_TIMEOUT).map_err(|r| self.fail(r))? {
            FromHelper::Encoded(e) => {
                let n = images.len();
                let rows = [e.pooled.len(), e.projected.len()];
                if rows != [n, n] || (patches && e.patches.len() != n) {
                    return Err(self.fail(p.broke(format!(
                        "sent {rows:?} rows and {} patch rows for {n} frames",
                        e.patches.len()
                    ))));
                }
                FRAMES_SENT.fetch_add(n, Ordering::Relaxed);
                Ok(e)
            }
            FromHelper::Failed {
                reason,
                device: true,
            } => Err(self.fail(reason)),
            FromHelper::Failed { reason, .. } => Err(Error::InvalidSetting(reason)),
            other => Err(self.fail(p.broke(format!("answered frames with {other:?}")))),
        }
    }

    /// [`super::generate::generate_on`] in the helper, with the decoder
    /// [`Helper::load`] gave it. `on_step` sees every step with the frames
    /// final so far; returning `false` cancels (the helper stops within a
    /// step, or is stopped).
    #[allow(clippy::too_many_arguments)]
    pub fn generate(
        &self,
        cross: Option<(&Tensor, &Tensor)>,
        layer_inputs: &[Option<Vec<f32>>],
        prompt: &[Vec<u32>],
        frames: usize,
        sampling: &Sampling,
        on_step: &mut dyn FnMut(Progress, &[Vec<u32>]) -> bool,
    ) -> Result<Frames> {
        let window = (cross, layer_inputs, prompt, frames, sampling);
        let (frames, _) = self.generate_with(None, window, None, &mut |p, c, _| on_step(p, c))?;
        Ok(frames)
    }

    /// [`Helper::generate`] by the decoder of the checkpoint in `dir` in
    /// `dtype`, which the helper is made to hold first if it does not (an
    /// engine on another model may have had it load that one). With a
    /// `plan`, the window's audio is decoded in the helper too, by the codec
    /// of `plan.codec` (which it is made to hold): `on_step` gets each
    /// hand-over's samples with the step that brings it, and the window's
    /// last ones come back with its frames.
    #[allow(clippy::too_many_arguments)]
    pub fn generate_piece(
        &self,
        dir: &Path,
        dtype: DType,
        cross: Option<(&Tensor, &Tensor)>,
        layer_inputs: &[Option<Vec<f32>>],
        prompt: &[Vec<u32>],
        frames: usize,
        sampling: &Sampling,
        plan: Option<AudioPlan>,
        on_step: &mut OnPieceStep<'_>,
    ) -> Result<(Frames, Option<Vec<f32>>)> {
        let window = (cross, layer_inputs, prompt, frames, sampling);
        self.generate_with(Some((dir, dtype)), window, plan, on_step)
    }

    fn generate_with(
        &self,
        model: Option<(&Path, DType)>,
        window: AskedWindow<'_>,
        plan: Option<AudioPlan>,
        on_step: &mut OnPieceStep<'_>,
    ) -> Result<(Frames, Option<Vec<f32>>)> {
        let (cross, layer_inputs, prompt, frames, sampling) = window;
        let cross = match cross {
            Some((states, mask)) => {
                let len = states.dim(1)?;
                Some((
                    states.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
                    len,
                    mask.to_dtype(DType::U32)?.flatten_all()?.to_vec1()?,
                ))
            }
            None => None,
        };
        let window = Window {
            cross,
            layer_inputs: layer_inputs.to_vec(),
            prompt: prompt.to_vec(),
            frames,
            sampling: sampling.clone(),
            audio: plan,
        };
        let decodes = window.audio.as_ref().map(|a| a.codec.clone());
        // Another engine of the process may be running a window on the
        // shared helper: wait for it, still cancellable (`on_step` is asked,
        // with nothing done yet).
        let mut p = loop {
            if let Some(p) = self.proc.try_lock_for(Duration::from_millis(50)) {
                break p;
            }
            let waiting = Progress {
                step: 0,
                steps: frames.max(1),
                complete: 0,
            };
            if !on_step(waiting, &[], None) {
                return Err(Error::Cancelled);
            }
        };
        if let Some((dir, dtype)) = model {
            self.hold_locked(&mut p, Held::Decoder, dir, dtype)?;
        }
        if let Some(dir) = &decodes {
            self.hold_locked(&mut p, Held::Codec, dir, DType::F32)?;
        }
        if p.loaded.is_none() {
            return Err(self.fail("the GPU helper holds no model".into()));
        }
        p.send(&ToHelper::Generate(Box::new(window)))
            .map_err(|r| self.fail(r))?;
        let mut done: Frames = Vec::with_capacity(frames);
        let mut cancelled = false;
        loop {
            let wait = if cancelled {
                CANCEL_TIMEOUT
            } else {
                STEP_TIMEOUT
            };
            match p.next(wait).map_err(|r| self.fail(r))? {
                FromHelper::Step {
                    step,
                    steps,
                    complete,
                    fresh,
                    audio,
                } => {
                    done.extend(fresh);
                    if cancelled {
                        continue;
                    }
                    if done.len() != complete {
                        return Err(self.fail(
                            p.broke(format!("sent {} final frames for {complete}", done.len())),
                        ));
                    }
                    let progress = Progress {
                        step,
                        steps,
                        complete,
                    };
                    if audio.is_some() && decodes.is_none() {
                        return Err(self.fail(p.broke("sent audio that was not asked for".into())));
                    }
                    if let Some(a) = &audio {
                        SAMPLES_DECODED.fetch_add(a.len(), Ordering::Relaxed);
                    }
                    if !on_step(progress, &done, audio) {
                        cancelled = true;
                        p.send(&ToHelper::Cancel).map_err(|r| self.fail(r))?;
                    }
                }
                FromHelper::Done { frames: got, audio } => {
                    if cancelled {
                        return Err(Error::Cancelled);
                    }
                    if got.len() != frames {
                        return Err(self.fail(p.broke(format!(
                            "sent {} frames for a window of {frames}",
                            got.len()
                        ))));
                    }
                    if audio.is_some() != decodes.is_some() {
                        return Err(self.fail(p.broke(format!(
                            "sent a window {} its audio when asked {}",
                            if audio.is_some() { "with" } else { "without" },
                            if decodes.is_some() {
                                "for it"
                            } else {
                                "for its frames only"
                            },
                        ))));
                    }
                    if let Some(a) = &audio {
                        SAMPLES_DECODED.fetch_add(a.len(), Ordering::Relaxed);
                    }
                    return Ok((got, audio));
                }
                FromHelper::Cancelled => return Err(Error::Cancelled),
                FromHelper::Failed {
                    reason,
                    device: true,
                } => return Err(self.fail(reason)),
                FromHelper::Failed { reason, .. } => return Err(Error::InvalidSetting(reason)),
                other => {
                    return Err(self.fail(p.broke(format!("answered a window with {other:?}"))));
                }
            }
        }
    }
}

/// CLIP's vision tower in a GPU helper, as a [`FrameEncoder`]: the frames
/// are sent over the pipe (about 150 KB each at 224×224) and their rows come
/// back. The configuration is read here, the weights only there.
pub struct HelperFrames {
    helper: Arc<Helper>,
    dir: PathBuf,
    dtype: DType,
    cfg: ClipConfig,
    preprocess: PreprocessConfig,
    arithmetic: &'static str,
}

impl HelperFrames {
    /// The vision tower of the CLIP checkpoint in `dir`, loaded in `helper`
    /// in `dtype`.
    pub fn new(helper: Arc<Helper>, dir: &Path, dtype: DType) -> Result<Self> {
        let (cfg, preprocess) = super::models::clip::configs(dir)?;
        helper.load_clip(dir, dtype)?;
        Ok(Self {
            helper,
            dir: dir.to_path_buf(),
            dtype,
            cfg,
            preprocess,
            arithmetic: super::device::dtype_name(dtype),
        })
    }
}

impl FrameEncoder for HelperFrames {
    fn config(&self) -> &ClipConfig {
        &self.cfg
    }

    fn preprocessing(&self) -> &PreprocessConfig {
        &self.preprocess
    }

    fn arithmetic(&self) -> &'static str {
        self.arithmetic
    }

    fn encode(&self, images: &[RgbImage], patches: bool) -> Result<Encoded> {
        self.helper
            .encode_for(&self.dir, self.dtype, images, patches)
    }
}

impl Proc {
    /// The checkpoint and type of what it holds of `what`.
    fn held(&mut self, what: Held) -> &mut Option<(PathBuf, String)> {
        match what {
            Held::Decoder => &mut self.loaded,
            Held::Clip => &mut self.clip,
            Held::Codec => &mut self.codec,
        }
    }

    fn send(&mut self, m: &ToHelper) -> std::result::Result<(), String> {
        if let Some(b) = &self.broken {
            return Err(b.clone());
        }
        if let Ok(Some(_)) = self.child.try_wait() {
            let why = self.why_gone();
            return Err(self.broke(format!("the GPU helper stopped{why}")));
        }
        let Some(w) = self.stdin.as_mut() else {
            return Err(self.broke("the GPU helper's input is closed".into()));
        };
        // A helper that ended while this writes must not take the host with
        // it: the write fails instead of raising SIGPIPE.
        if let Err(e) = without_sigpipe(|| write_message(w, m)) {
            let why = self.why_gone();
            return Err(self.broke(format!("the GPU helper stopped ({e}){why}")));
        }
        Ok(())
    }

    /// The next message within `wait`; a helper that ends or stays silent
    /// is stopped, and the reason given.
    fn next(&mut self, wait: Duration) -> std::result::Result<FromHelper, String> {
        if let Some(b) = &self.broken {
            return Err(b.clone());
        }
        match self.rx.recv_timeout(wait) {
            Ok(Ok(m)) => Ok(m),
            Ok(Err(e)) => Err(self.broke(format!("the GPU helper sent a broken message: {e}"))),
            Err(RecvTimeoutError::Disconnected) => {
                let why = self.why_gone();
                Err(self.broke(format!("the GPU helper stopped{why}")))
            }
            Err(RecvTimeoutError::Timeout) => {
                let _ = self.child.kill();
                Err(self.broke(format!(
                    "the GPU helper did not answer in {} s and was stopped",
                    wait.as_secs()
                )))
            }
        }
    }

    /// `: <exit status>: <its last error lines>` once the helper has ended.
    fn why_gone(&mut self) -> String {
        let mut status = None;
        for _ in 0..50 {
            if let Ok(Some(s)) = self.child.try_wait() {
                status = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The error stream's last lines arrive on their own thread.
        std::thread::sleep(Duration::from_millis(50));
        let lines = self.stderr.lock();
        let said: Vec<&str> = lines
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .collect();
        let mut why = String::new();
        if let Some(s) = status {
            why += &format!(" ({s})");
        }
        if let Some(last) = said.last() {
            why += &format!(": {last}");
        }
        why
    }

    fn broke(&mut self, reason: String) -> String {
        self.broken = Some(reason.clone());
        reason
    }

    /// Closes the helper's input (it ends by itself), and kills it when it
    /// does not end in time.
    fn stop(&mut self) {
        self.stdin = None;
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.proc.lock().stop();
    }
}

/// The helper's side: answers the engine on stdin/stdout until its input
/// closes. `device` is opened in this process (a `cuda` build; `cpu` runs
/// the same code on the CPU, for tests and diagnosis).
pub fn serve(device: super::device::DeviceChoice) -> Result<()> {
    use super::device::DeviceChoice;
    use super::generate::generate_on;
    use super::models::musicgen::MusicgenDecoder;

    let mut out = BufWriter::new(std::io::stdout().lock());
    let send = |out: &mut BufWriter<_>, m: &FromHelper| {
        write_message(out, m).map_err(|e| Error::io(Path::new("<the engine's pipe>"), e))
    };
    let opened = match device {
        DeviceChoice::Cpu => Ok(super::device::Chosen::cpu(
            "running on the CPU in the GPU helper".into(),
        )),
        DeviceChoice::Cuda(n) => super::device::open_in_process(n),
        DeviceChoice::Auto => Err(Error::InvalidSetting(
            "the GPU helper needs a device: cuda, cuda:N or cpu".into(),
        )),
    };
    let chosen = match opened {
        Ok(c) => c,
        Err(e) => {
            let reason = match e {
                Error::Device { reason, .. } => reason,
                other => other.to_string(),
            };
            send(
                &mut out,
                &FromHelper::Failed {
                    reason: reason.clone(),
                    device: true,
                },
            )?;
            return Err(Error::InvalidSetting(reason));
        }
    };
    let dev = chosen.candle_device();
    send(
        &mut out,
        &FromHelper::Ready {
            device: chosen.name.clone(),
            note: chosen.note.clone(),
        },
    )?;
    // A thread of its own reads the engine's messages, so a cancel reaches
    // the generation under way.
    let cancel = Arc::new(AtomicBool::new(false));
    let (tx, rx) = crossbeam_channel::unbounded::<ToHelper>();
    let flag = cancel.clone();
    std::thread::spawn(move || {
        let mut input = BufReader::new(std::io::stdin().lock());
        while let Ok(Some(m)) = read_message::<ToHelper>(&mut input) {
            match m {
                ToHelper::Cancel => flag.store(true, Ordering::Relaxed),
                other => {
                    if matches!(other, ToHelper::Generate(_)) {
                        flag.store(false, Ordering::Relaxed);
                    }
                    if tx.send(other).is_err() {
                        return;
                    }
                }
            }
        }
        // The engine let go: a window under way stops at its next step.
        flag.store(true, Ordering::Relaxed);
    });
    let mut decoder: Option<MusicgenDecoder> = None;
    let mut clip: Option<super::models::clip::ClipFrames> = None;
    let mut codecs: Vec<(PathBuf, Arc<EncodecDecoder>)> = Vec::new();
    let mut pieces: Vec<(u64, Piece)> = Vec::new();
    for m in rx {
        match m {
            ToHelper::LoadCodec { dir } => {
                let answer = if codecs.iter().any(|(d, _)| *d == dir) {
                    FromHelper::Loaded
                } else {
                    match super::model::codec_for(&dir, &dev) {
                        Ok(c) => {
                            codecs.push((dir, Arc::new(c)));
                            if codecs.len() > MAX_CODECS {
                                codecs.remove(0);
                            }
                            FromHelper::Loaded
                        }
                        Err(e) => FromHelper::Failed {
                            reason: format!(
                                "cannot decode with the codec of {}: {e}",
                                dir.display()
                            ),
                            device: true,
                        },
                    }
                };
                send(&mut out, &answer)?;
            }
            ToHelper::LoadClip { dir, dtype } => {
                clip = None;
                let loaded = super::device::parse_dtype(&dtype)
                    .and_then(|dtype| super::models::clip::ClipFrames::load(&dir, &dev, dtype));
                let answer = match loaded {
                    Ok(c) => {
                        clip = Some(c);
                        FromHelper::Loaded
                    }
                    Err(e) => FromHelper::Failed {
                        reason: format!("cannot load {}: {e}", dir.display()),
                        device: true,
                    },
                };
                send(&mut out, &answer)?;
            }
            ToHelper::Encode {
                side,
                images,
                patches,
            } => {
                let answer = match clip.as_ref() {
                    None => refused("no CLIP is loaded".into()),
                    Some(c) => match encode_frames(c, side as usize, &images, patches) {
                        Ok(e) => FromHelper::Encoded(e),
                        Err(e) => failed(e),
                    },
                };
                send(&mut out, &answer)?;
            }
            ToHelper::Load { dir, dtype } => {
                decoder = None;
                let loaded = (|| -> Result<MusicgenDecoder> {
                    let dtype = super::device::parse_dtype(&dtype)?;
                    let cfg = super::config::MusicgenConfig::load(&dir.join("config.json"))?;
                    let w = super::weights::Weights::open_dir(&dir)?;
                    MusicgenDecoder::load(&w.pp("decoder"), &cfg.decoder)?.to_device(&dev, dtype)
                })();
                match loaded {
                    Ok(d) => {
                        decoder = Some(d);
                        send(&mut out, &FromHelper::Loaded)?;
                    }
                    Err(e) => send(
                        &mut out,
                        &FromHelper::Failed {
                            reason: format!("cannot load {}: {e}", dir.display()),
                            device: true,
                        },
                    )?,
                }
            }
            ToHelper::Generate(w) => {
                let Some(d) = decoder.as_ref() else {
                    send(&mut out, &refused("no model is loaded".into()))?;
                    continue;
                };
                let h = d.config().hidden_size;
                let cross = match &w.cross {
                    Some((states, len, mask)) => {
                        let cpu = &candle_core::Device::Cpu;
                        match (
                            Tensor::from_slice(states, (1, *len, h), cpu),
                            Tensor::from_slice(mask, (1, *len), cpu),
                        ) {
                            (Ok(s), Ok(m)) => Some((s, m)),
                            _ => {
                                let reason = format!(
                                    "conditioning states of {} values for {len} × {h}",
                                    states.len()
                                );
                                send(&mut out, &refused(reason))?;
                                continue;
                            }
                        }
                    }
                    None => None,
                };
                // The piece whose audio this window decodes, taken out of
                // those kept while the window runs.
                let mut piece = match &w.audio {
                    None => None,
                    Some(plan) => match Piece::take(&mut pieces, plan, &codecs, &w.prompt) {
                        Ok(p) => Some((p, plan)),
                        Err(reason) => {
                            send(&mut out, &refused(reason))?;
                            continue;
                        }
                    },
                };
                let mut handed = 0usize;
                let mut undecoded = None;
                let mut sent = 0usize;
                let mut lost = None;
                let result = generate_on(
                    d,
                    cross.as_ref().map(|(s, m)| (s, m)),
                    &w.layer_inputs,
                    &w.prompt,
                    w.frames,
                    &w.sampling,
                    &mut |p: Progress, complete: &[Vec<u32>]| {
                        let fresh = complete[sent..].to_vec();
                        sent = complete.len();
                        // A hand-over where the engine would make one
                        // (`MusicGen`'s window loop): the same stretches.
                        let mut audio = None;
                        if let Some((piece, plan)) = &mut piece {
                            let due = if plan.before == 0 && handed == 0 {
                                piece.codec.settled(p.complete, false) >= plan.first_settled
                            } else {
                                p.complete >= handed + plan.every
                            };
                            if due && p.complete < w.frames {
                                handed = p.complete;
                                match piece.hand_over(complete, false) {
                                    Ok(a) => audio = Some(a),
                                    Err(e) => {
                                        undecoded = Some(e);
                                        return false;
                                    }
                                }
                            }
                        }
                        let m = FromHelper::Step {
                            step: p.step,
                            steps: p.steps,
                            complete: p.complete,
                            fresh,
                            audio,
                        };
                        if let Err(e) = send(&mut out, &m) {
                            lost = Some(e);
                            return false;
                        }
                        !cancel.load(Ordering::Relaxed)
                    },
                );
                if let Some(e) = lost {
                    return Err(e);
                }
                let result = match undecoded {
                    Some(e) => Err(e),
                    None => result,
                };
                let answer = match (result, piece) {
                    (Ok(frames), None) => FromHelper::Done {
                        frames,
                        audio: None,
                    },
                    (Ok(frames), Some((mut piece, plan))) => {
                        piece.frames.extend_from_slice(&frames);
                        let end = piece.frames.len() >= plan.total;
                        match piece.hand_over(&[], end) {
                            Ok(audio) => {
                                if !end {
                                    pieces.push((plan.piece, piece));
                                    if pieces.len() > MAX_PIECES {
                                        pieces.remove(0);
                                    }
                                }
                                FromHelper::Done {
                                    frames,
                                    audio: Some(audio),
                                }
                            }
                            Err(e) => failed(e),
                        }
                    }
                    (Err(Error::Cancelled), _) => FromHelper::Cancelled,
                    (Err(e), _) => failed(e),
                };
                send(&mut out, &answer)?;
            }
            ToHelper::Cancel => {}
        }
    }
    Ok(())
}

/// A piece whose audio a helper decodes: its codec, its frames so far
/// (before the window under way) and the codec's state.
struct Piece {
    codec: Arc<EncodecDecoder>,
    frames: Frames,
    spans: SpanDecoder,
}

impl Piece {
    /// The piece `plan` continues, out of `pieces` (a new one for its first
    /// window), checked against the window's `prompt`: the last frames the
    /// helper has of it.
    fn take(
        pieces: &mut Vec<(u64, Piece)>,
        plan: &AudioPlan,
        codecs: &[(PathBuf, Arc<EncodecDecoder>)],
        prompt: &[Vec<u32>],
    ) -> std::result::Result<Piece, String> {
        let kept = pieces
            .iter()
            .position(|(id, _)| *id == plan.piece)
            .map(|i| pieces.remove(i).1);
        if plan.before == 0 {
            let Some((_, codec)) = codecs.iter().find(|(d, _)| *d == plan.codec) else {
                return Err(format!("no codec of {} is loaded", plan.codec.display()));
            };
            return Ok(Piece {
                codec: codec.clone(),
                frames: Vec::with_capacity(plan.total),
                spans: SpanDecoder::default(),
            });
        }
        let Some(piece) = kept else {
            return Err(format!("piece {} is not held here (any more)", plan.piece));
        };
        let n = piece.frames.len();
        if n != plan.before || prompt.len() > n || piece.frames[n - prompt.len()..] != *prompt {
            return Err(format!(
                "piece {} goes on from frame {} with other frames than the {n} held here",
                plan.piece, plan.before
            ));
        }
        Ok(piece)
    }

    /// The audio that settled with `more` frames after those held (all of
    /// it when `end`), as the engine's own [`SpanDecoder`] would give it.
    fn hand_over(&mut self, more: &[Vec<u32>], end: bool) -> Result<Vec<f32>> {
        let mut so_far = Vec::with_capacity(self.frames.len() + more.len());
        so_far.extend_from_slice(&self.frames);
        so_far.extend_from_slice(more);
        let codes = super::model::codes_tensor(&so_far)?;
        Ok(match self.spans.next(&self.codec, &codes, end)? {
            Some(a) => a.flatten_all()?.to_vec1()?,
            None => Vec::new(),
        })
    }
}

/// A request refused as wrong (the engine's own error, in words; the
/// helper goes on).
fn refused(reason: String) -> FromHelper {
    FromHelper::Failed {
        reason,
        device: false,
    }
}

/// A request's failure as the engine is told it: a wrong request (the
/// engine's own error, in words), or the device's.
fn failed(e: Error) -> FromHelper {
    FromHelper::Failed {
        device: !matches!(e, Error::InvalidSetting(_)),
        reason: e.to_string(),
    }
}

/// The helper's side of [`ToHelper::Encode`]: `bytes` cut into `side`×`side`
/// frames and encoded.
fn encode_frames(
    clip: &super::models::clip::ClipFrames,
    side: usize,
    bytes: &[u8],
    patches: bool,
) -> Result<Encoded> {
    let frame = side
        .checked_mul(side)
        .and_then(|n| n.checked_mul(3))
        .unwrap_or(0);
    if frame == 0 || bytes.is_empty() || !bytes.len().is_multiple_of(frame) {
        return Err(Error::InvalidSetting(format!(
            "{} bytes are not whole {side}×{side} RGB frames",
            bytes.len()
        )));
    }
    let images = bytes
        .chunks_exact(frame)
        .map(|rgb| RgbImage::new(side, side, rgb))
        .collect::<Result<Vec<_>>>()?;
    clip.encode(&images, patches)
}
