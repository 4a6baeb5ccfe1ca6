//! Finding installed models and downloading them.
//!
//! A model is looked for, in order, in `--model-dir`, in `$VIDMUSICIAN_MODELS`, then in
//! the Hugging Face cache (`$HF_HUB_CACHE`, `$HF_HOME/hub`, or
//! `~/.cache/huggingface/hub`), so a model a user already has from Python is used as
//! it is. Nothing here reaches the network except [`pull`].

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The model the text engine uses unless told otherwise.
pub const DEFAULT_MODEL: &str = "facebook/musicgen-small";

/// The CLIP checkpoint the visual analysis uses unless told otherwise
/// (`openai/clip-vit-base-patch16` and `-large-patch14` load as well).
pub const DEFAULT_CLIP: &str = "openai/clip-vit-base-patch32";

/// What a model folder holds, from its `config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    MusicGen,
    Clip,
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::MusicGen => "MusicGen",
            ModelKind::Clip => "CLIP",
        }
    }

    /// The kind of the model in `dir`, if it is one VidMusician loads.
    pub fn of_dir(dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        let has = |k: &str| v.get(k).is_some_and(|x| x.is_object());
        if has("audio_encoder") && has("text_encoder") {
            Some(ModelKind::MusicGen)
        } else if v.get("model_type").and_then(|t| t.as_str()) == Some("clip")
            || (has("text_config") && has("vision_config"))
        {
            Some(ModelKind::Clip)
        } else {
            None
        }
    }
}

/// Where a model was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    ModelDir,
    Env,
    HfCache,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::ModelDir => "--model-dir",
            Origin::Env => "$VIDMUSICIAN_MODELS",
            Origin::HfCache => "Hugging Face cache",
        }
    }
}

/// A model folder found on disk.
#[derive(Debug, Clone)]
pub struct Installed {
    pub repo: String,
    pub kind: ModelKind,
    pub dir: PathBuf,
    pub origin: Origin,
    /// Total size of its files, bytes.
    pub bytes: u64,
    /// What a loadable model lacks, if anything (e.g. "tokenizer.json").
    pub missing: Vec<String>,
}

/// The licence of a model's weights, in words a user can act on: what the
/// model card's front matter (`license:` in README.md, when the folder has
/// one) says, else what we know of the repository. MusicGen's weights are
/// CC-BY-NC 4.0 (the code is MIT, the weights are not): not for commercial
/// use, which a user must know before relying on music made with them.
pub fn weights_licence(repo: &str, dir: Option<&Path>) -> Option<String> {
    let card = dir
        .and_then(|d| std::fs::read_to_string(d.join("README.md")).ok())
        .and_then(|text| card_licence(&text));
    let id = card.or_else(|| {
        let r = repo.to_ascii_lowercase();
        r.starts_with("facebook/musicgen")
            .then(|| "cc-by-nc-4.0".to_string())
    })?;
    Some(match id.as_str() {
        "cc-by-nc-4.0" => "CC-BY-NC 4.0: not for commercial use".to_string(),
        other => other.to_string(),
    })
}

/// `license:` from a model card's YAML front matter.
fn card_licence(text: &str) -> Option<String> {
    let mut lines = text.lines();
    if lines.next()?.trim() != "---" {
        return None;
    }
    lines
        .take_while(|l| l.trim() != "---")
        .find_map(|l| l.strip_prefix("license:"))
        .map(|v| v.trim().trim_matches(['"', '\'']).to_ascii_lowercase())
        .filter(|v| !v.is_empty())
}

/// The Hugging Face hub cache folder.
pub fn hf_cache_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return Some(PathBuf::from(p).join("hub"));
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(p).join("huggingface").join("hub"));
    }
    dirs::home_dir().map(|h| h.join(".cache").join("huggingface").join("hub"))
}

/// The roots searched, in order.
pub fn search_roots(model_dir: Option<&Path>) -> Vec<(Origin, PathBuf)> {
    let mut roots = Vec::new();
    if let Some(d) = model_dir {
        roots.push((Origin::ModelDir, d.to_path_buf()));
    }
    if let Some(d) = std::env::var_os("VIDMUSICIAN_MODELS") {
        roots.push((Origin::Env, PathBuf::from(d)));
    }
    if let Some(d) = hf_cache_dir() {
        roots.push((Origin::HfCache, d));
    }
    roots
}

/// An adapter file found in the model folders.
#[derive(Debug, Clone)]
pub struct FoundAdapter {
    pub path: PathBuf,
    pub info: crate::neural::conditioning::AdapterInfo,
    pub origin: Origin,
}

/// The adapters in `--model-dir` and `$VIDMUSICIAN_MODELS` (not the Hugging
/// Face cache, which holds no adapters): every `.safetensors` file directly
/// in them or in their `adapters` folder whose header is an adapter's.
pub fn find_adapters(model_dir: Option<&Path>) -> Vec<FoundAdapter> {
    let mut found = Vec::new();
    for (origin, root) in search_roots(model_dir) {
        if origin == Origin::HfCache {
            continue;
        }
        for dir in [root.clone(), root.join("adapters")] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "safetensors"))
                .collect();
            files.sort();
            for path in files {
                if let Ok(info) = crate::neural::conditioning::AdapterInfo::read(&path) {
                    found.push(FoundAdapter { path, info, origin });
                }
            }
        }
    }
    found
}

/// The adapter an engine uses for the MusicGen `repo` and a CLIP whose
/// features are `clip_width` wide when none is named: of those found for
/// both, a stage-2 one before a stage-1 one, then the most recently written.
/// (The base weights' hash is checked when the adapter loads: reading a whole
/// checkpoint is too slow for a choice.)
pub fn pick_adapter(
    repo: &str,
    clip_width: usize,
    model_dir: Option<&Path>,
) -> Option<FoundAdapter> {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    find_adapters(model_dir)
        .into_iter()
        .filter(|a| a.info.base_model == repo && a.info.config.clip_width == clip_width)
        .max_by(|a, b| {
            a.info
                .stage
                .cmp(&b.info.stage)
                .then_with(|| modified(&a.path).cmp(&modified(&b.path)))
        })
}

/// What a model folder lacks to be loaded.
pub fn missing_files(dir: &Path) -> Vec<String> {
    let mut missing = Vec::new();
    for f in ["config.json", "tokenizer.json"] {
        if !dir.join(f).is_file() {
            missing.push(f.to_string());
        }
    }
    if !dir.join("model.safetensors").is_file()
        && !dir.join("model.safetensors.index.json").is_file()
    {
        missing.push("model.safetensors".to_string());
    }
    missing
}

/// `models--org--name`, the cache's folder name for a repository.
fn cache_folder(repo: &str) -> String {
    format!("models--{}", repo.replace('/', "--"))
}

/// The snapshot a cache folder's `refs/main` points at, else the newest one.
fn snapshot(repo_dir: &Path) -> Option<PathBuf> {
    let snaps = repo_dir.join("snapshots");
    if let Ok(rev) = std::fs::read_to_string(repo_dir.join("refs").join("main")) {
        let rev = rev.trim();
        let p = snaps.join(rev);
        if !rev.is_empty() && !rev.contains(['/', '\\']) && p.is_dir() {
            return Some(p);
        }
    }
    std::fs::read_dir(&snaps)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("config.json").is_file())
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

/// Where `repo` would be under `root`, if it is there.
fn candidate(root: &Path, origin: Origin, repo: &str, kind: Option<ModelKind>) -> Option<PathBuf> {
    // A model folder given directly is the model, unless it is one of
    // another kind (a MusicGen folder when CLIP is sought).
    if origin == Origin::ModelDir
        && root.join("config.json").is_file()
        && kind.is_none_or(|k| ModelKind::of_dir(root) == Some(k))
    {
        return Some(root.to_path_buf());
    }
    let name = repo.rsplit('/').next().unwrap_or(repo);
    for p in [root.join(repo), root.join(name)] {
        if p.join("config.json").is_file() {
            return Some(p);
        }
    }
    snapshot(&root.join(cache_folder(repo)))
}

/// The folder of `repo`, from the first root that has a complete copy.
pub fn find_model(repo: &str, model_dir: Option<&Path>) -> Result<PathBuf> {
    find_model_of(repo, None, model_dir)
}

/// [`find_model`] for a model of `kind`: a model folder of another kind given
/// as `model_dir` is passed over rather than taken for `repo`.
pub fn find_model_of(
    repo: &str,
    kind: Option<ModelKind>,
    model_dir: Option<&Path>,
) -> Result<PathBuf> {
    let roots = search_roots(model_dir);
    let mut incomplete = Vec::new();
    for (origin, root) in &roots {
        if let Some(dir) = candidate(root, *origin, repo, kind) {
            let missing = missing_files(&dir);
            if missing.is_empty() {
                return Ok(dir);
            }
            incomplete.push(format!("{} lacks {}", dir.display(), missing.join(", ")));
        }
    }
    let searched = roots
        .iter()
        .map(|(o, p)| format!("{} ({})", p.display(), o.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    let mut hint = format!(
        "download it with `vidmusician models pull {repo}`, or point --model-dir or \
         $VIDMUSICIAN_MODELS at a folder holding it"
    );
    if !incomplete.is_empty() {
        hint = format!("{}; {hint}", incomplete.join("; "));
    }
    Err(Error::NoModel {
        model: repo.to_string(),
        searched,
        hint,
    })
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                // metadata() follows the cache's symlinks to the blobs
                .filter_map(|e| std::fs::metadata(e.path()).ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Every MusicGen and CLIP model found under the search roots.
pub fn list_installed(model_dir: Option<&Path>) -> Vec<Installed> {
    let mut found = Vec::new();
    let mut push = |repo: String, dir: PathBuf, origin: Origin| {
        if let Some(kind) = ModelKind::of_dir(&dir) {
            found.push(Installed {
                repo,
                kind,
                bytes: dir_size(&dir),
                missing: missing_files(&dir),
                dir,
                origin,
            });
        }
    };
    for (origin, root) in search_roots(model_dir) {
        if origin == Origin::ModelDir && root.join("config.json").is_file() {
            push(root.display().to_string(), root.clone(), origin);
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        for e in entries.filter_map(|e| e.ok()) {
            let path = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(rest) = name.strip_prefix("models--") {
                if let Some(snap) = snapshot(&path) {
                    push(rest.replacen("--", "/", 1), snap, origin);
                }
            } else if path.join("config.json").is_file() {
                push(name, path, origin);
            } else if path.is_dir() {
                // org/name layout
                for sub in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                    if sub.path().join("config.json").is_file() {
                        let repo = format!("{name}/{}", sub.file_name().to_string_lossy());
                        push(repo, sub.path(), origin);
                    }
                }
            }
        }
    }
    found
}

/// Checks that a repository id is `org/name` with characters the hub allows, so it
/// cannot name a path outside the cache.
pub fn check_repo_id(repo: &str) -> Result<()> {
    let ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    match repo.split_once('/') {
        Some((org, name)) if ok(org) && ok(name) => Ok(()),
        _ => Err(Error::InvalidSetting(format!(
            "`{repo}` is not a model id of the form org/name (e.g. {DEFAULT_MODEL})"
        ))),
    }
}

/// Progress of a download, per file.
pub trait PullProgress {
    fn file(&mut self, name: &str, bytes: u64);
    fn advance(&mut self, bytes: u64);
    fn done(&mut self);
}

struct Adapter<'a>(&'a mut dyn PullProgress);

impl hf_hub::api::Progress for Adapter<'_> {
    fn init(&mut self, size: usize, filename: &str) {
        self.0.file(filename, size as u64);
    }
    fn update(&mut self, size: usize) {
        self.0.advance(size as u64);
    }
    fn finish(&mut self) {
        self.0.done();
    }
}

/// The hub to download from: `$HF_ENDPOINT`, else huggingface.co.
pub fn endpoint_from_env() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| "https://huggingface.co".to_string())
}

/// Downloads `repo` (at `main`) from `endpoint` into the Hugging Face cache under
/// `cache_dir`: the config, the tokenizer, the weights (one file or the shards of an
/// index) and, where the model has them, `generation_config.json` (MusicGen) and
/// `preprocessor_config.json` (CLIP). Files already in the cache and intact are kept; an interrupted
/// download resumes where it stopped; each file is checked against the hash the hub
/// gave for it. Returns the snapshot folder.
pub fn pull(
    repo: &str,
    cache_dir: &Path,
    endpoint: &str,
    progress: &mut dyn PullProgress,
) -> Result<PathBuf> {
    check_repo_id(repo)?;
    let endpoint = endpoint.trim_end_matches('/');
    // hf-hub has `unwrap`s on odd server answers; none of them may take the
    // program down.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pull_inner(repo, cache_dir, endpoint, progress)
    }))
    .unwrap_or_else(|_| {
        Err(Error::Download {
            endpoint: endpoint.to_string(),
            what: repo.to_string(),
            reason: "the server gave an answer the downloader could not read".to_string(),
        })
    })
}

fn pull_inner(
    repo: &str,
    cache_dir: &Path,
    endpoint: &str,
    progress: &mut dyn PullProgress,
) -> Result<PathBuf> {
    let net = |e: hf_hub::api::sync::ApiError| download_error(repo, endpoint, cache_dir, e);
    let api = hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(cache_dir.into()))
        .with_endpoint(endpoint.to_string())
        .with_progress(false)
        .with_retries(2)
        .build()
        .map_err(net)?;
    let r = api.model(repo.to_string());
    let cached = hf_hub::Cache::new(cache_dir.into()).model(repo.to_string());
    let mut fetch = |name: &str, optional: bool| -> Result<Option<PathBuf>> {
        // A file already in the cache and intact is kept: pulling again after an
        // interruption fetches only what is missing.
        if let Some(p) = cached.get(name)
            && verify(&p, name).is_ok()
        {
            return Ok(Some(p));
        }
        match r.download_with_progress(name, Adapter(progress)) {
            Ok(p) => {
                verify(&p, name)?;
                Ok(Some(p))
            }
            Err(hf_hub::api::sync::ApiError::RequestError(e))
                if optional && matches!(*e, ureq::Error::Status(404, _)) =>
            {
                Ok(None)
            }
            Err(e) => Err(net(e)),
        }
    };
    let config = fetch("config.json", false)?.expect("required file");
    let dir = config
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| cache_dir.to_path_buf());
    // Known before the weights are fetched, so nobody downloads gigabytes of a model
    // that cannot be used; the kind says which optional files belong to it.
    let Some(kind) = ModelKind::of_dir(&dir) else {
        return Err(Error::model_file(
            dir.join("config.json"),
            format!("{repo} is neither a MusicGen nor a CLIP model"),
        ));
    };
    match kind {
        ModelKind::MusicGen => fetch("generation_config.json", true)?,
        ModelKind::Clip => fetch("preprocessor_config.json", true)?,
    };
    if fetch("tokenizer.json", true)?.is_none() {
        return Err(Error::Download {
            endpoint: endpoint.to_string(),
            what: repo.to_string(),
            reason: "the model has no tokenizer.json; VidMusician needs a checkpoint with a fast \
                     tokenizer"
                .to_string(),
        });
    }
    if fetch("model.safetensors", true)?.is_none() {
        let Some(index) = fetch("model.safetensors.index.json", true)? else {
            return Err(Error::Download {
                endpoint: endpoint.to_string(),
                what: repo.to_string(),
                reason: "the model has neither model.safetensors nor model.safetensors.index.json"
                    .to_string(),
            });
        };
        for shard in super::weights::shard_paths(&index)? {
            let name = shard.file_name().map(|n| n.to_string_lossy().to_string());
            fetch(&name.unwrap_or_default(), false)?;
        }
    }
    Ok(dir)
}

/// What went wrong in a download, in the user's terms: the network (no
/// connection, a name that does not resolve, a timeout: check the connection
/// and pull again), the hub's answer (an unknown model, a refusal), or the
/// local cache (a disk that cannot be written).
fn download_error(
    repo: &str,
    endpoint: &str,
    cache_dir: &Path,
    e: hf_hub::api::sync::ApiError,
) -> Error {
    use hf_hub::api::sync::ApiError;
    let download = |reason: String| Error::Download {
        endpoint: endpoint.to_string(),
        what: repo.to_string(),
        reason,
    };
    match e {
        ApiError::TooManyRetries(inner) => download_error(repo, endpoint, cache_dir, *inner),
        ApiError::RequestError(e) => match *e {
            ureq::Error::Status(404, _) => download(format!(
                "the hub has no model {repo} (404 not found); check the id, e.g. {DEFAULT_MODEL}"
            )),
            ureq::Error::Status(code @ (401 | 403), _) => download(format!(
                "the hub refused access ({code}); a gated model needs an account and a token"
            )),
            ureq::Error::Status(code, r) => {
                download(format!("the server answered {code} {}", r.status_text()))
            }
            ureq::Error::Transport(t) => Error::Network {
                endpoint: endpoint.to_string(),
                what: repo.to_string(),
                reason: format!(
                    "{} (check the connection, or $HF_ENDPOINT, and pull again: the download resumes)",
                    transport_reason(&t)
                ),
            },
        },
        // hf-hub reads the body with io::copy: a connection that breaks off
        // mid-file is an io error too, and is the network's, not the disk's.
        ApiError::IoError(io) if is_connection_error(io.kind()) => Error::Network {
            endpoint: endpoint.to_string(),
            what: repo.to_string(),
            reason: format!(
                "the connection broke off during the download: {io} (check the connection, or \
                 $HF_ENDPOINT, and pull again: the download resumes)"
            ),
        },
        ApiError::IoError(io) => Error::io(cache_dir, io),
        ApiError::LockAcquisition(p) => Error::io(
            p,
            std::io::Error::other("another download of this file is running"),
        ),
        ApiError::InvalidResume => download(
            "the partial download in the cache is damaged; delete it and pull again".to_string(),
        ),
        other => download(other.to_string()),
    }
}

/// Whether an io error of this kind comes from the connection (the server
/// went away, the network dropped) rather than from the local disk.
fn is_connection_error(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        kind,
        K::ConnectionReset
            | K::ConnectionAborted
            | K::ConnectionRefused
            | K::NotConnected
            | K::BrokenPipe
            | K::TimedOut
            | K::UnexpectedEof
    )
}

/// A transport failure in plain words, with the system's own detail.
fn transport_reason(t: &ureq::Transport) -> String {
    use ureq::ErrorKind as K;
    let what = match t.kind() {
        K::Dns => "the server's name does not resolve".to_string(),
        K::ConnectionFailed | K::ProxyConnect => "no connection to the server".to_string(),
        K::Io => "the connection failed".to_string(),
        K::TooManyRedirects => "too many redirects".to_string(),
        other => other.to_string(),
    };
    // ureq's message ("Connect error") and the system's reason ("Connection
    // refused"), each when there is one.
    let mut line = what;
    let source = std::error::Error::source(t).map(|s| s.to_string());
    for d in [t.message().map(str::to_string), source]
        .into_iter()
        .flatten()
    {
        if !d.is_empty() && !line.contains(&d) {
            line += &format!(": {d}");
        }
    }
    line
}

/// Checks a downloaded file against its blob name in the cache, which is the hash
/// the hub sent: SHA-256 for large (LFS) files, the git blob SHA-1 for small ones.
/// A file that does not match is removed, so the next pull fetches it again.
fn verify(pointer: &Path, name: &str) -> Result<()> {
    use sha1::Digest as _;
    let blob = std::fs::canonicalize(pointer).map_err(|e| Error::io(pointer, e))?;
    let expected = blob
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let is_hex = |n: usize| expected.len() == n && expected.chars().all(|c| c.is_ascii_hexdigit());
    let got = if is_hex(64) {
        let mut h = sha2::Sha256::new();
        read_chunks(&blob, &mut |b| h.update(b))?;
        hex(&h.finalize())
    } else if is_hex(40) {
        let len = std::fs::metadata(&blob)
            .map_err(|e| Error::io(&blob, e))?
            .len();
        let mut h = sha1::Sha1::new();
        h.update(format!("blob {len}\0").as_bytes());
        read_chunks(&blob, &mut |b| h.update(b))?;
        hex(&h.finalize())
    } else {
        // No hash to check against (a server that sends other tags).
        return Ok(());
    };
    if got.eq_ignore_ascii_case(&expected) {
        return Ok(());
    }
    let _ = std::fs::remove_file(&blob);
    let _ = std::fs::remove_file(pointer);
    Err(Error::model_file(
        pointer,
        format!(
            "{name} arrived damaged (hash {got}, expected {expected}); it was removed, pull again"
        ),
    ))
}

/// Feeds the file to `update` a mebibyte at a time: weights are gigabytes.
fn read_chunks(path: &Path, update: &mut dyn FnMut(&[u8])) -> Result<()> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            return Ok(());
        }
        update(&buf[..n]);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hf_hub::api::sync::ApiError;
    use std::io::{Error as IoError, ErrorKind};

    fn mapped(e: ApiError) -> Error {
        download_error("org/model", "http://hub", Path::new("/cache"), e)
    }

    #[test]
    fn a_connection_broken_mid_download_is_a_network_failure() {
        for kind in [
            ErrorKind::ConnectionReset,
            ErrorKind::ConnectionAborted,
            ErrorKind::ConnectionRefused,
            ErrorKind::NotConnected,
            ErrorKind::BrokenPipe,
            ErrorKind::TimedOut,
            ErrorKind::UnexpectedEof,
        ] {
            let io = || ApiError::IoError(IoError::new(kind, "gone"));
            for e in [io(), ApiError::TooManyRetries(Box::new(io()))] {
                let e = mapped(e);
                assert!(matches!(e, Error::Network { .. }), "{kind:?}: {e}");
                assert!(e.to_string().contains("broke off"), "{e}");
            }
        }
        // The disk's own failures stay the cache's.
        for kind in [ErrorKind::PermissionDenied, ErrorKind::Other] {
            let e = mapped(ApiError::IoError(IoError::new(kind, "disk")));
            assert!(matches!(e, Error::Io { .. }), "{kind:?}: {e}");
        }
    }
}
