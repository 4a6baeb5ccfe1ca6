//! Project tasks: `cargo xtask demo | test | setup | bench`.
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
    run(cargo().args(["test", "--workspace"]).args(args))?;
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
