//! Project tasks: `cargo xtask demo | test | setup | bench | bundle |
//! gpu-helper | gpu-cli | gpu-check`.
//!
//! `demo` and `test` first install the system packages the build needs
//! (Debian/Ubuntu, with apt-get) and say what they install.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Debian/Ubuntu packages needed to build and run VidMusician and its tests.
const PACKAGES: &[&str] = &[
    // Build: bindgen for FFmpeg's headers, pkg-config to find the libraries.
    "pkg-config",
    "clang",
    // The VST3 wrapper is C++.
    "g++",
    // `strip`, for release bundles.
    "binutils",
    "libclang-dev",
    // FFmpeg: decoding, encoding, muxing, scaling.
    "libavcodec-dev",
    "libavformat-dev",
    "libavutil-dev",
    "libswscale-dev",
    "libswresample-dev",
    // Plots: fonts for the axis labels.
    "libfontconfig1-dev",
    "libfreetype-dev",
    "fonts-dejavu-core",
];

/// What the tests need beyond the build: a real DAW that hosts the VST3
/// build headless, and an X server the editor opens in.
const TEST_PACKAGES: &[&str] = &[
    "ardour",
    // The editor's tests: an X server, and Mesa's software OpenGL (with the
    // X libraries baseview loads at run time).
    "xvfb",
    "libgl1-mesa-dri",
    "libgl1",
    "libegl1",
    "libx11-xcb1",
    "libxkbcommon-x11-0",
];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (task, rest) = args
        .split_first()
        .map_or(("help", &[][..]), |(t, r)| (t.as_str(), r));
    match task {
        "setup" => setup(),
        "demo" => {
            setup()?;
            demo(rest)
        }
        "test" => {
            setup()?;
            install(TEST_PACKAGES)?;
            test(rest)
        }
        "bench" => {
            setup()?;
            bench(rest)
        }
        "bundle" => {
            setup()?;
            bundle(rest).map(|_| ())
        }
        "gpu-helper" => {
            setup()?;
            gpu_helper().map(|p| println!("{}", p.display()))
        }
        "gpu-check" => {
            setup()?;
            gpu_check(rest)
        }
        "gpu-cli" => {
            setup()?;
            gpu_cli().map(|p| println!("{}", p.display()))
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <task>\n\n\
                 tasks:\n  \
                 demo [VIDEO]   build, compose music for VIDEO (or a generated demo video with known cuts),\n                 \
                 write target/demo/demo.wav and target/demo/demo.mp4\n  \
                 test [ARGS]    run every test (ARGS go to cargo test)\n  \
                 bench          release build, then the analysis and composer benchmarks\n  \
                 bundle vidmusician [--release]\n                 \
                 build the plugin, write target/bundled/debug/ (or release/) VidMusician.clap and .vst3\n  \
                 gpu-helper     build the GPU helper (vidmusician with --features cuda, the CUDA\n                 \
                 toolkit from PyPI): target/cuda/vidmusician-cuda\n  \
                 gpu-cli        vidmusician itself with --features cuda, for training on a GPU\n                 \
                 machine: target/cuda/vidmusician\n  \
                 gpu-check [DIR]\n                 \
                 build the helper and run the GPU check where `nvidia-smi` answers (else say\n                 \
                 how to run tools/gpu-check.sh on a GPU machine); the report goes to DIR\n  \
                 setup          install the system packages the build needs (Debian/Ubuntu)"
            );
            if task == "help" || task == "--help" || task == "-h" {
                Ok(())
            } else {
                bail!("unknown task {task:?}")
            }
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("PANIC: xtask lives one level below the workspace root")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{:?} failed ({status})", cmd.get_program());
    }
    Ok(())
}

fn is_debian_like() -> bool {
    std::fs::read_to_string("/etc/os-release").is_ok_and(|s| {
        s.lines().any(|l| {
            (l.starts_with("ID=") || l.starts_with("ID_LIKE="))
                && (l.contains("debian") || l.contains("ubuntu"))
        })
    })
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn setup() -> Result<()> {
    install(PACKAGES)
}

fn install(packages: &[&str]) -> Result<()> {
    if !is_debian_like() {
        eprintln!(
            "xtask: not Debian/Ubuntu; make sure these (or your system's equivalents) are installed:\n  {}",
            packages.join(" ")
        );
        return Ok(());
    }
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing system packages: {}", missing.join(" "));
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let apt = |args: &[&str]| -> Command {
        let mut c = if is_root {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.arg("apt-get");
            c
        };
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    run(&mut apt(&["update", "-qq"]))?;
    let mut install = apt(&["install", "-y", "-qq", "--no-install-recommends"]);
    install.args(&missing);
    run(&mut install)
}

fn demo(args: &[String]) -> Result<()> {
    let out = root().join("target").join("demo");
    std::fs::create_dir_all(&out)?;
    clear_demo_outputs(&out)?;
    eprintln!(
        "xtask: building vidmusician (the first build takes 15–20 minutes on 2 cores; \
         cargo shows its progress)"
    );
    run(cargo().args(["build", "-p", "vidmusician-engine", "--bin", "vidmusician"]))?;
    let exe = root().join("target").join("debug").join("vidmusician");
    let video = match args.first() {
        Some(v) => PathBuf::from(v),
        None => {
            let v = out.join("input.mp4");
            eprintln!(
                "xtask: making a 20 s demo video with known cuts: {}",
                v.display()
            );
            run(Command::new(&exe)
                .args(["synth-video", "--duration", "20", "--seed", "7"])
                .arg(&v))?;
            v
        }
    };
    let wav = out.join("demo.wav");
    let mp4 = out.join("demo.mp4");
    let png = out.join("analysis.png");
    run(Command::new(&exe)
        .arg("analyze")
        .arg(&video)
        .arg("--plot")
        .arg(&png))?;
    eprintln!("xtask: bundling the plugin");
    let (clap, vst3) = bundle(&[])?;
    run(Command::new(&exe)
        .arg("compose")
        .arg(&video)
        .arg("-o")
        .arg(&wav)
        .arg("--mux")
        .arg(&mp4))?;
    println!("\nmusic:          {}", wav.display());
    println!("video + music:  {}", mp4.display());
    println!("analysis plot:  {}", png.display());
    println!("CLAP plugin:    {}  (copy to ~/.clap/)", clap.display());
    println!("VST3 plugin:    {}  (copy to ~/.vst3/)", vst3.display());
    Ok(())
}

/// What the demo writes into its folder.
const DEMO_OUTPUTS: &[&str] = &["input.mp4", "demo.wav", "demo.mp4", "analysis.png"];

/// Removes an earlier demo run's files: they would sit beside this run's as
/// if they were its own (the demo video when scoring the user's, a plot of
/// another video). Nothing else in the folder is touched.
fn clear_demo_outputs(out: &Path) -> Result<()> {
    for old in DEMO_OUTPUTS {
        match std::fs::remove_file(out.join(old)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing the old {old}"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Where bundles of a build profile go: debug and release apart, so
/// neither replaces the other.
fn bundle_dir(profile: &str) -> PathBuf {
    root().join("target").join("bundled").join(profile)
}

fn test(args: &[String]) -> Result<()> {
    // The GPU build is compiled here too, so it cannot rot on machines
    // without a GPU, and the tests check that a machine without the NVIDIA
    // driver refuses it in words and plays on the CPU.
    let helper = gpu_helper()?;
    run(cargo()
        .args(["test", "--workspace"])
        .args(args)
        .env("VIDMUSICIAN_TEST_CUDA_HELPER", &helper))?;
    // Benchmarks are not run by tests, so compile them here (in the bench
    // profile, as `cargo bench` does) or one could rot unnoticed.
    eprintln!("xtask: compiling the benchmarks");
    run(cargo().args(["bench", "--workspace", "--no-run"]))
}

/// Bundle name of a package, from bundler.toml (`[package] name = "…"`).
fn bundle_name(package: &str) -> Result<String> {
    #[derive(serde::Deserialize)]
    struct Entry {
        name: String,
    }
    let text =
        std::fs::read_to_string(root().join("bundler.toml")).context("reading bundler.toml")?;
    let mut entries: std::collections::HashMap<String, Entry> =
        toml::from_str(&text).context("parsing bundler.toml")?;
    match entries.remove(package) {
        Some(e) => Ok(e.name),
        None => bail!("bundler.toml has no name for {package}"),
    }
}

/// Builds the plugin and lays out its CLAP and VST3 bundles; returns their
/// paths.
fn bundle(args: &[String]) -> Result<(PathBuf, PathBuf)> {
    let target = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map_or("vidmusician", String::as_str);
    if target != "vidmusician" {
        bail!("unknown bundle {target:?} (the one bundle is `vidmusician`)");
    }
    let release = args.iter().any(|a| a == "--release");
    let package = "vidmusician-plugin";
    let mut build = cargo();
    build.args(["build", "-p", package]);
    if release {
        build.arg("--release");
    }
    run(&mut build)?;
    let profile = if release { "release" } else { "debug" };
    let lib = root()
        .join("target")
        .join(profile)
        .join("libvidmusician_plugin.so");
    let name = bundle_name(package)?;
    let out = bundle_dir(profile);
    std::fs::create_dir_all(&out)?;
    // A CLAP bundle on Linux is the library itself.
    let clap = out.join(format!("{name}.clap"));
    std::fs::copy(&lib, &clap).with_context(|| format!("copying {}", lib.display()))?;
    if release {
        // Shipped without symbols (the release profile keeps line tables
        // for profiling builds, which users do not need).
        run(Command::new("strip").arg("--strip-unneeded").arg(&clap))?;
    }
    // A VST3 bundle is a folder with the library per architecture.
    let vst3 = out.join(format!("{name}.vst3"));
    let arch = format!("{}-linux", std::env::consts::ARCH);
    let so_dir = vst3.join("Contents").join(arch);
    std::fs::create_dir_all(&so_dir)?;
    std::fs::copy(&clap, so_dir.join(format!("{name}.so")))?;
    println!("{}\n{}", clap.display(), vst3.display());
    Ok((clap, vst3))
}

fn bench(args: &[String]) -> Result<()> {
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "vidmusician-engine",
        "--bin",
        "vidmusician",
    ]))?;
    let exe = root().join("target").join("release").join("vidmusician");
    for what in ["analysis", "composer"] {
        run(Command::new(&exe).args(["bench", what]).args(args))?;
    }
    Ok(())
}

/// The CUDA version the GPU build is made with: candle 0.11's cudarc takes
/// up to 13.0, and the `-cu12` wheels carry no `nvcc`.
const CUDA_TOOLKIT: &str = "cuda-toolkit[nvcc,nvvm,crt,cudart,cccl,cublas,curand,nvrtc]==13.0.2";
/// The GPUs the kernels are compiled for (Hopper: H100, H200).
const CUDA_COMPUTE_CAP: &str = "90";
/// The largest the stripped helper may be: it is carried to GPU machines.
const HELPER_MAX_BYTES: u64 = 60 << 20;

/// A CUDA home for the build, under target/cuda-toolkit: the toolkit's
/// wheels from PyPI (nvcc, headers, the libraries the link needs) and a
/// link-time stand-in for `libcuda`, which only a driver provides. The
/// stand-in is never shipped: it only lets the linker resolve the driver's
/// entry points, which a GPU machine's real `libcuda.so.1` provides.
fn cuda_home() -> Result<PathBuf> {
    let base = root().join("target").join("cuda-toolkit");
    let py = base.join("py");
    let cu13 = py.join("nvidia").join("cu13");
    if !cu13.join("bin").join("nvcc").is_file() {
        eprintln!(
            "xtask: installing the CUDA 13.0 toolkit from PyPI into {}",
            py.display()
        );
        let _ = std::fs::remove_dir_all(&py);
        run(Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(&py)
            .arg(CUDA_TOOLKIT))
        .context("installing the CUDA toolkit with pip (python3 -m pip)")?;
    }
    let lib = base.join("lib");
    std::fs::create_dir_all(&lib)?;
    for (name, real) in [
        ("libcublas.so", "libcublas.so.13"),
        ("libcublasLt.so", "libcublasLt.so.13"),
        ("libcudart.so", "libcudart.so.13"),
        ("libnvrtc.so", "libnvrtc.so.13"),
        ("libcurand.so", "libcurand.so.10"),
    ] {
        let target = cu13.join("lib").join(real);
        if !target.is_file() {
            bail!("the CUDA toolkit has no {}", target.display());
        }
        let link = lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link)?;
    }
    let stub = lib.join("libcuda.so");
    if !stub.is_file() {
        cuda_stub(&stub)?;
    }
    let home = base.join("home");
    std::fs::create_dir_all(&home)?;
    for (name, target) in [
        ("bin", cu13.join("bin")),
        ("include", cu13.join("include")),
        ("nvvm", cu13.join("nvvm")),
        ("lib", lib.clone()),
    ] {
        let link = home.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link)?;
    }
    Ok(home)
}

/// Writes the link-time `libcuda.so` stand-in: every driver entry point
/// cudarc declares, each answering CUDA_ERROR_STUB_LIBRARY (34).
fn cuda_stub(out: &Path) -> Result<()> {
    let meta = cargo()
        .args([
            "metadata",
            "--format-version",
            "1",
            "--features",
            "vidmusician-engine/cuda",
        ])
        .output()
        .context("running cargo metadata")?;
    if !meta.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&meta.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&meta.stdout)?;
    let manifest = v["packages"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "cudarc"))
        .and_then(|p| p["manifest_path"].as_str())
        .context("cudarc is not among the `cuda` feature's packages")?;
    let sys = Path::new(manifest)
        .parent()
        .context("cudarc's manifest has no folder")?
        .join("src/driver/sys/mod.rs");
    let text =
        std::fs::read_to_string(&sys).with_context(|| format!("reading {}", sys.display()))?;
    // The declarations of the linked (not loaded) bindings: `fn cuXxx(`.
    let mut names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("fn "))
        .filter_map(|l| l.split_once('(').map(|(n, _)| n))
        .filter(|n| n.starts_with("cu") && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .collect();
    names.sort_unstable();
    names.dedup();
    if names.len() < 100 {
        bail!(
            "found only {} driver entry points in {}",
            names.len(),
            sys.display()
        );
    }
    let mut c = String::from("/* Link-time stand-in for libcuda; never shipped. */\n");
    for n in &names {
        c += &format!("int {n}(void) {{ return 34; }}\n");
    }
    let src = out.with_extension("c");
    std::fs::write(&src, c)?;
    run(Command::new("cc")
        .args(["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o"])
        .arg(out)
        .arg(&src))
}

/// Builds the GPU helper: the engine's `vidmusician-cuda` with the `cuda`
/// feature, in a release build of its own (target/cuda), stripped and
/// copied to target/cuda/vidmusician-cuda. Returns its path.
fn gpu_helper() -> Result<PathBuf> {
    eprintln!("xtask: building the GPU helper (the first build takes 20–30 minutes on 2 cores)");
    let built = cuda_build("vidmusician-cuda")?;
    let helper = root().join("target").join("cuda").join("vidmusician-cuda");
    std::fs::copy(&built, &helper).with_context(|| format!("copying {}", built.display()))?;
    run(Command::new("strip").arg("--strip-unneeded").arg(&helper))?;
    let size = std::fs::metadata(&helper)?.len();
    if size > HELPER_MAX_BYTES {
        bail!(
            "{} is {:.1} MB stripped, past the {} MB a GPU machine is sent",
            helper.display(),
            size as f64 / 1e6,
            HELPER_MAX_BYTES >> 20
        );
    }
    eprintln!("xtask: {} ({:.1} MB)", helper.display(), size as f64 / 1e6);
    Ok(helper)
}

/// Builds `vidmusician` itself with the `cuda` feature, for the GPU machine
/// that trains (training runs in its own process, not through the helper),
/// copied to target/cuda/vidmusician. Returns its path.
fn gpu_cli() -> Result<PathBuf> {
    eprintln!(
        "xtask: building vidmusician with CUDA (the first build takes 20–30 minutes on 2 cores)"
    );
    let built = cuda_build("vidmusician")?;
    let out = root().join("target").join("cuda").join("vidmusician");
    std::fs::copy(&built, &out).with_context(|| format!("copying {}", built.display()))?;
    eprintln!("xtask: {}", out.display());
    Ok(out)
}

/// The engine's binary `bin` built in release with the `cuda` feature, in
/// target/cuda, against the CUDA toolkit of [`cuda_home`].
fn cuda_build(bin: &str) -> Result<PathBuf> {
    let home = cuda_home()?;
    let target = root().join("target").join("cuda");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![home.join("bin")];
    paths.extend(std::env::split_paths(&path));
    let mut build = cargo();
    build
        .args([
            "build",
            "--release",
            "-p",
            "vidmusician-engine",
            "--bin",
            bin,
            "--features",
            "cuda",
            "--target-dir",
        ])
        .arg(&target)
        .env("CUDA_HOME", &home)
        .env("CUDA_PATH", &home)
        .env("PATH", std::env::join_paths(paths)?)
        .env("LIBRARY_PATH", home.join("lib"));
    if std::env::var_os("CUDA_COMPUTE_CAP").is_none() {
        build.env("CUDA_COMPUTE_CAP", CUDA_COMPUTE_CAP);
    }
    run(&mut build)?;
    Ok(target.join("release").join(bin))
}

/// Builds the helper, then runs tools/gpu-check.sh with it where a GPU
/// answers; elsewhere says how to run it on a GPU machine.
fn gpu_check(args: &[String]) -> Result<()> {
    let helper = gpu_helper()?;
    let out = args
        .first()
        .map_or_else(|| root().join("target").join("gpu-check"), PathBuf::from);
    let script = root().join("tools").join("gpu-check.sh");
    let has_gpu = Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_gpu {
        eprintln!(
            "xtask: no NVIDIA GPU answers here (nvidia-smi). On a machine with one, run\n  \
             {} {} {}\n(the helper needs the NVIDIA driver and the CUDA 13 libraries: \
             libcublas, libcublasLt, libcurand, libnvrtc, libcudart)",
            script.display(),
            helper.display(),
            out.display()
        );
        return Ok(());
    }
    run(Command::new(&script).arg(&helper).arg(&out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_earlier_demo_runs_files_are_cleared_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("xtask-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in DEMO_OUTPUTS.iter().chain(&["notes.txt"]) {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        clear_demo_outputs(&dir).unwrap();
        for f in DEMO_OUTPUTS {
            assert!(!dir.join(f).exists(), "{f} left behind");
        }
        assert!(dir.join("notes.txt").exists());
        // Again, with nothing to clear.
        clear_demo_outputs(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn debug_and_release_bundles_go_to_folders_of_their_own() {
        assert_ne!(bundle_dir("debug"), bundle_dir("release"));
        assert!(bundle_dir("release").ends_with("target/bundled/release"));
    }
}
