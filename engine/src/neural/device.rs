//! Where the neural networks run: `--device auto|cpu|cuda[:N]`.
//!
//! The CPU is always there. CUDA needs a build with the `cuda` feature
//! (candle's CUDA backend) and, at run time, an NVIDIA driver and the CUDA
//! libraries.
//! `auto` takes the first CUDA device when the build has CUDA and a device
//! answers, and the CPU otherwise, and says which it took and why.
//!
//! A CPU build reaches a GPU through the GPU helper ([`super::helper`]), a
//! `cuda` build of `vidmusician` run as a process of its own, so that the
//! plugin and the CLI load on every machine.
//!
//! On a device, MusicGen's decoder runs as candle tensors
//! ([`crate::neural::models::musicgen::MusicgenDecoder::session`]): both
//! rows of guidance as one batch, the keys and values in buffers made once
//! per window.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use candle_core::{DType, Device};

use super::helper::{self, Helper};
use crate::{Error, Result};

/// The device a user asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum DeviceChoice {
    /// A CUDA device when there is one, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// The CUDA device of this ordinal.
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            _ => match t.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) if n < 64 => Ok(Self::Cuda(n)),
                _ => Err(Error::InvalidSetting(format!(
                    "unknown device `{s}`: use auto, cpu, cuda or cuda:N"
                ))),
            },
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl serde::Serialize for DeviceChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for DeviceChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How the decoder reaches its device.
#[derive(Clone)]
pub enum Backend {
    /// candle on this device, in this process: the CPU, or CUDA in a `cuda`
    /// build.
    Candle(Device),
    /// A GPU helper process holding the device (see [`super::helper`]).
    Helper(Arc<Helper>),
}

/// The device the networks run on, and why it was taken.
#[derive(Clone)]
pub struct Chosen {
    pub backend: Backend,
    /// `cpu` or `cuda:N`.
    pub name: String,
    /// One line for the user: which device, and for `auto` why.
    pub note: String,
}

impl fmt::Debug for Chosen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chosen")
            .field("name", &self.name)
            .field("note", &self.note)
            .finish_non_exhaustive()
    }
}

impl Chosen {
    pub fn cpu(note: String) -> Self {
        Self {
            backend: Backend::Candle(Device::Cpu),
            name: "cpu".into(),
            note,
        }
    }

    pub fn is_cpu(&self) -> bool {
        matches!(&self.backend, Backend::Candle(d) if d.is_cpu())
    }

    /// What a model on this device is told apart by: the name, marked for
    /// a helper (whose `cpu` test mode is not the CPU decoder).
    pub fn key(&self) -> String {
        match &self.backend {
            Backend::Candle(_) => self.name.clone(),
            Backend::Helper(h) => format!("helper:{}", h.device()),
        }
    }

    /// The candle device tensors live on in this process (the CPU when a
    /// helper holds the GPU).
    pub fn candle_device(&self) -> Device {
        match &self.backend {
            Backend::Candle(d) => d.clone(),
            Backend::Helper(_) => Device::Cpu,
        }
    }
}

/// A candle device's name as `--device` spells it: `cpu`, `cuda:N`.
pub fn candle_device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        other => format!("{other:?}"),
    }
}

/// Whether this build can run on CUDA devices in its own process.
pub fn cuda_built() -> bool {
    cfg!(feature = "cuda")
}

/// Opens the device `choice` names. `cuda` where it cannot be had is an
/// error naming what is missing; `auto` falls back to the CPU and says why.
pub fn choose(choice: DeviceChoice) -> Result<Chosen> {
    choose_with(choice, None)
}

/// [`choose`] with the GPU helper at `helper` (else [`helper::find`]) when
/// this build has no CUDA of its own.
pub fn choose_with(choice: DeviceChoice, helper: Option<&Path>) -> Result<Chosen> {
    match choice {
        DeviceChoice::Cpu => Ok(Chosen::cpu("running on the CPU (asked for)".into())),
        DeviceChoice::Cuda(n) => open_cuda(n, helper),
        // Without CUDA of its own or a helper to ask, `auto` says so in a
        // few words: what to do about it is in the error of `cuda`.
        DeviceChoice::Auto if !cuda_built() && helper.is_none() && helper::find().is_none() => {
            Ok(Chosen::cpu(
                "running on the CPU (auto: this build has no CUDA support and no GPU helper \
                 was found)"
                    .into(),
            ))
        }
        DeviceChoice::Auto => Ok(auto_from(open_cuda(0, helper))),
    }
}

/// What `auto` takes given the first CUDA device's opening: that device,
/// or the CPU saying why not.
fn auto_from(opened: Result<Chosen>) -> Chosen {
    match opened {
        Ok(mut c) => {
            c.note = format!("{} (auto: a CUDA device answered)", c.note);
            c
        }
        Err(e) => Chosen::cpu(format!(
            "running on the CPU (auto: {})",
            match e {
                Error::Device { reason, .. } => reason,
                other => other.to_string(),
            }
        )),
    }
}

/// [`choose`] for work that runs in this process only, never through the
/// GPU helper (training: its steps need the whole model and the optimiser
/// beside the data). `what` names that work in the messages.
pub fn choose_in_process(choice: DeviceChoice, what: &str) -> Result<Chosen> {
    match choice {
        DeviceChoice::Cpu => Ok(Chosen::cpu("running on the CPU (asked for)".into())),
        DeviceChoice::Cuda(n) if cuda_built() => open_in_process(n),
        DeviceChoice::Cuda(n) => Err(Error::Device {
            device: format!("cuda:{n}"),
            reason: format!(
                "this build of vidmusician has no CUDA support (it was built without the \
                 `cuda` feature), and {what} runs in this process, not through the GPU helper; \
                 build vidmusician with `--features cuda` on the GPU machine (see the README's \
                 GPU section), or use --device cpu"
            ),
        }),
        DeviceChoice::Auto if !cuda_built() => Ok(Chosen::cpu(format!(
            "running on the CPU (auto: this build has no CUDA support, and {what} does not go \
             through the GPU helper)"
        ))),
        DeviceChoice::Auto => Ok(auto_from(open_in_process(0))),
    }
}

/// CUDA device `n`: in this process in a `cuda` build, else through the
/// GPU helper.
fn open_cuda(n: usize, helper: Option<&Path>) -> Result<Chosen> {
    if cuda_built() {
        return open_in_process(n);
    }
    let Some(exe) = helper.map(Path::to_path_buf).or_else(helper::find) else {
        return Err(Error::Device {
            device: format!("cuda:{n}"),
            reason: format!(
                "this build of vidmusician has no CUDA support (it was built without the \
                 `cuda` feature) and no GPU helper was found ({} beside it or on the PATH, \
                 or ${}); `cargo xtask gpu-helper` builds one (see the README's GPU section), \
                 or use --device cpu",
                helper::HELPER_NAME,
                helper::HELPER_ENV
            ),
        });
    };
    let h = shared_helper(&exe, &format!("cuda:{n}"))?;
    Ok(Chosen {
        name: h.device().to_string(),
        note: format!("{} (through the GPU helper {})", h.note(), exe.display()),
        backend: Backend::Helper(h),
    })
}

/// The helpers this process runs, by program and device: engines of one
/// process (plugin instances on several tracks) share one per device, as
/// they share the models, rather than each holding the GPU's memory.
static HELPERS: parking_lot::Mutex<Vec<HeldHelper>> = parking_lot::Mutex::new(Vec::new());

/// A helper's program and device, and its slot: the helper while anything
/// holds it, locked while one is started.
type HeldHelper = ((std::path::PathBuf, String), HelperSlot);
type HelperSlot = Arc<parking_lot::Mutex<std::sync::Weak<Helper>>>;

/// The running helper `exe` on `device`, or a new one. A broken one (its
/// process ended) is replaced.
fn shared_helper(exe: &Path, device: &str) -> Result<Arc<Helper>> {
    let slot = {
        let mut held = HELPERS.lock();
        match held.iter().find(|((e, d), _)| e == exe && d == device) {
            Some((_, slot)) => slot.clone(),
            None => {
                let slot = HelperSlot::default();
                held.push(((exe.to_path_buf(), device.to_string()), slot.clone()));
                slot
            }
        }
    };
    // Only this helper's slot is held while it starts (up to its ready
    // timeout): two engines asking for it at once start one, and engines
    // asking for another device or program are not held up.
    let mut slot = slot.lock();
    if let Some(h) = slot.upgrade().filter(|h| !h.is_broken()) {
        return Ok(h);
    }
    let h = Arc::new(Helper::start(exe, device)?);
    *slot = Arc::downgrade(&h);
    Ok(h)
}

/// CUDA device `n` in this process: only a `cuda` build has it.
#[cfg(not(feature = "cuda"))]
pub fn open_in_process(n: usize) -> Result<Chosen> {
    Err(Error::Device {
        device: format!("cuda:{n}"),
        reason: "this build of vidmusician has no CUDA support (it was built without the \
                 `cuda` feature)"
            .into(),
    })
}

/// CUDA device `n` in this process.
#[cfg(feature = "cuda")]
pub fn open_in_process(n: usize) -> Result<Chosen> {
    // A panic inside the driver bindings must not take the process with it.
    let opened = std::panic::catch_unwind(|| Device::new_cuda(n));
    match opened {
        Ok(Ok(device)) => Ok(Chosen {
            backend: Backend::Candle(device),
            name: format!("cuda:{n}"),
            note: format!("running on CUDA device {n}"),
        }),
        Ok(Err(e)) => Err(Error::Device {
            device: format!("cuda:{n}"),
            reason: format!(
                "cannot open CUDA device {n}: {}; is an NVIDIA GPU there, with its driver \
                 (libcuda.so.1) and the CUDA 13 libraries?",
                // The driver's words, without the backtrace candle adds
                // under RUST_BACKTRACE: the reason is one line.
                without_backtrace(e)
            ),
        }),
        Err(_) => Err(Error::Device {
            device: format!("cuda:{n}"),
            reason: "the CUDA driver failed while opening the device; is the NVIDIA driver \
                     installed and loaded?"
                .into(),
        }),
    }
}

/// `e` without the backtraces candle wraps errors in.
#[cfg(feature = "cuda")]
fn without_backtrace(e: candle_core::Error) -> candle_core::Error {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => without_backtrace(*inner),
        e => e,
    }
}

/// The type the decoder's weights take on `chosen`: f32 on the CPU; on a
/// GPU `VIDMUSICIAN_DEVICE_DTYPE` (f32, f16 or bf16) or f32 until the
/// parity check has settled which half type holds MusicGen's accuracy.
pub fn dtype_for(chosen: &Chosen) -> Result<DType> {
    if chosen.is_cpu() {
        return Ok(DType::F32);
    }
    match std::env::var("VIDMUSICIAN_DEVICE_DTYPE").as_deref() {
        Err(_) | Ok("") => Ok(DType::F32),
        Ok(name) => parse_dtype(name)
            .map_err(|e| Error::InvalidSetting(format!("VIDMUSICIAN_DEVICE_DTYPE: {e}"))),
    }
}

/// `f32`, `f16` or `bf16`.
pub fn parse_dtype(name: &str) -> Result<DType> {
    match name.trim() {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => Err(Error::InvalidSetting(format!(
            "unknown type `{other}` (f32, f16 or bf16)"
        ))),
    }
}

/// The name [`parse_dtype`] reads back.
pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "f32",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_print_back() {
        for (s, c) in [
            ("auto", DeviceChoice::Auto),
            ("CPU", DeviceChoice::Cpu),
            ("cuda", DeviceChoice::Cuda(0)),
            ("cuda:3", DeviceChoice::Cuda(3)),
        ] {
            let parsed: DeviceChoice = s.parse().unwrap();
            assert_eq!(parsed, c);
            assert_eq!(parsed.to_string().parse::<DeviceChoice>().unwrap(), c);
        }
        for bad in [
            "", "cuda:", "cuda:x", "cuda:-1", "cuda:999", "metal", "tpu:0",
        ] {
            let e = bad.parse::<DeviceChoice>().unwrap_err().to_string();
            assert!(e.contains("auto, cpu, cuda or cuda:N"), "{bad}: {e}");
        }
    }

    #[test]
    fn cpu_is_always_there_and_auto_says_why_it_took_it() {
        let c = choose(DeviceChoice::Cpu).unwrap();
        assert!(c.is_cpu());
        if !cuda_built() && helper::find().is_none() {
            let a = choose(DeviceChoice::Auto).unwrap();
            assert!(a.is_cpu());
            assert!(a.note.contains("no CUDA support"), "{}", a.note);
            let e = choose(DeviceChoice::Cuda(1)).unwrap_err().to_string();
            assert!(e.starts_with("device cuda:1:"), "{e}");
            assert!(e.contains("without the `cuda` feature"), "{e}");
            assert!(e.contains("--device cpu"), "{e}");
        }
    }

    #[test]
    fn work_that_stays_in_this_process_never_takes_the_helper() {
        let c = choose_in_process(DeviceChoice::Cpu, "training").unwrap();
        assert!(c.is_cpu());
        if !cuda_built() {
            // Whether or not a helper is installed: training cannot use it.
            let a = choose_in_process(DeviceChoice::Auto, "training").unwrap();
            assert!(a.is_cpu());
            assert!(a.note.contains("no CUDA support"), "{}", a.note);
            assert!(
                a.note.contains("training does not go through"),
                "{}",
                a.note
            );
            let e = choose_in_process(DeviceChoice::Cuda(0), "training")
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("device cuda:0:"), "{e}");
            assert!(e.contains("training runs in this process"), "{e}");
            assert!(e.contains("--features cuda"), "{e}");
            assert!(e.contains("--device cpu"), "{e}");
        }
    }
}
