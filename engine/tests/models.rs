//! Finding and downloading models: `models pull` against a loopback HTTP server that
//! answers like the Hugging Face hub and serves the tiny checkpoint.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha1::Digest as _;
use vidmusician_engine::neural::MusicGen;
use vidmusician_engine::neural::hub::{self, PullProgress};

const REPO: &str = "tiny/musicgen-test";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/musicgen-tiny")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct File {
    body: Vec<u8>,
    /// What the server claims the file hashes to.
    etag: String,
    lfs: bool,
}

#[derive(Default)]
struct Log {
    /// `(path, range header)` of every request.
    requests: Vec<(String, Option<String>)>,
}

/// A hub with `files` for [`REPO`]; returns its address and the request log.
fn serve(files: HashMap<String, File>) -> (String, Arc<Mutex<Log>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Log::default()));
    let files = Arc::new(files);
    let log2 = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let files = files.clone();
            let log = log2.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut first = String::new();
                if reader.read_line(&mut first).is_err() {
                    return;
                }
                let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
                let mut range = None;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':')
                        && k.eq_ignore_ascii_case("range")
                    {
                        range = Some(v.trim().to_string());
                    }
                }
                log.lock()
                    .unwrap()
                    .requests
                    .push((path.clone(), range.clone()));
                let prefix = format!("/{REPO}/resolve/main/");
                let file = path.strip_prefix(&prefix).and_then(|f| files.get(f));
                let Some(file) = file else {
                    let _ = stream.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    return;
                };
                let size = file.body.len();
                let (start, end) = range
                    .as_deref()
                    .and_then(|r| r.strip_prefix("bytes="))
                    .and_then(|r| r.split_once('-'))
                    .map(|(a, b)| {
                        let a: usize = a.parse().unwrap_or(0);
                        let b: usize = b.parse().map(|b: usize| b + 1).unwrap_or(size);
                        (a.min(size), b.min(size))
                    })
                    .unwrap_or((0, size));
                let tag = if file.lfs { "X-Linked-Etag" } else { "ETag" };
                let head = format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {}-{}/{}\r\n\
                     {tag}: \"{}\"\r\nX-Repo-Commit: {COMMIT}\r\nConnection: close\r\n\r\n",
                    end - start,
                    start,
                    end.saturating_sub(1),
                    size,
                    file.etag
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&file.body[start..end]);
            });
        }
    });
    (addr, log)
}

fn checkpoint_files() -> HashMap<String, File> {
    files_of(
        &fixture(),
        &[
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "model.safetensors",
        ],
    )
}

/// `names` from the folder `dir`, as the hub would serve them.
fn files_of(dir: &Path, names: &[&str]) -> HashMap<String, File> {
    let mut files = HashMap::new();
    for &name in names {
        let body = std::fs::read(dir.join(name)).unwrap();
        let lfs = name.ends_with(".safetensors");
        let etag = if lfs {
            hex(&sha2::Sha256::digest(&body))
        } else {
            let mut h = sha1::Sha1::new();
            h.update(format!("blob {}\0", body.len()).as_bytes());
            h.update(&body);
            hex(&h.finalize())
        };
        files.insert(name.to_string(), File { body, etag, lfs });
    }
    files
}

#[derive(Default)]
struct Count {
    files: Vec<String>,
    bytes: u64,
}

impl PullProgress for Count {
    fn file(&mut self, name: &str, _bytes: u64) {
        self.files.push(name.to_string());
    }
    fn advance(&mut self, bytes: u64) {
        self.bytes += bytes;
    }
    fn done(&mut self) {}
}

#[test]
fn pull_downloads_a_loadable_model_into_the_hf_cache_layout() {
    let (endpoint, log) = serve(checkpoint_files());
    let cache = tempfile::tempdir().unwrap();
    let mut progress = Count::default();
    let dir = hub::pull(REPO, cache.path(), &endpoint, &mut progress).unwrap();
    assert_eq!(
        dir,
        cache
            .path()
            .join("models--tiny--musicgen-test/snapshots")
            .join(COMMIT)
    );
    assert!(progress.files.iter().any(|f| f == "model.safetensors"));
    assert!(progress.bytes > 1_000_000, "{}", progress.bytes);
    MusicGen::load(&dir).unwrap();
    // The search finds it where Python's hub client would have put it.
    assert_eq!(hub::find_model(REPO, Some(cache.path())).unwrap(), dir);
    let listed = hub::list_installed(Some(cache.path()));
    let entry = listed.iter().find(|m| m.repo == REPO).expect("listed");
    assert!(entry.missing.is_empty() && entry.bytes > 1_000_000);

    // A second pull finds everything in place and downloads nothing again.
    let before = log.lock().unwrap().requests.len();
    hub::pull(REPO, cache.path(), &endpoint, &mut Count::default()).unwrap();
    assert_eq!(log.lock().unwrap().requests.len(), before);
}

#[test]
fn an_interrupted_download_resumes_where_it_stopped() {
    let files = checkpoint_files();
    let weights = &files["model.safetensors"];
    let half = weights.body.len() / 2;
    let cache = tempfile::tempdir().unwrap();
    let blobs = cache.path().join("models--tiny--musicgen-test/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(
        blobs.join(format!("{}.part", weights.etag)),
        &weights.body[..half],
    )
    .unwrap();
    let (endpoint, log) = serve(files);
    let dir = hub::pull(REPO, cache.path(), &endpoint, &mut Count::default()).unwrap();
    let asked = format!("bytes={half}-");
    assert!(
        log.lock()
            .unwrap()
            .requests
            .iter()
            .any(|(p, r)| p.ends_with("model.safetensors") && r.as_deref() == Some(&asked)),
        "the rest of the file was asked for"
    );
    MusicGen::load(&dir).unwrap();
}

#[test]
fn a_damaged_download_is_refused_and_removed() {
    let mut files = checkpoint_files();
    let w = files.get_mut("model.safetensors").unwrap();
    let n = w.body.len();
    w.body[n / 2] ^= 0xff;
    let (endpoint, _) = serve(files);
    let cache = tempfile::tempdir().unwrap();
    let err = hub::pull(REPO, cache.path(), &endpoint, &mut Count::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("damaged") && msg.contains("model.safetensors"),
        "{msg}"
    );
    let blobs = cache.path().join("models--tiny--musicgen-test/blobs");
    let left: Vec<_> = std::fs::read_dir(&blobs)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let mut b = Vec::new();
            std::fs::File::open(e.path())
                .and_then(|mut f| f.read_to_end(&mut b))
                .is_ok()
                && b.len() == n
        })
        .collect();
    assert!(left.is_empty(), "the damaged weights were removed");
}

#[test]
fn unknown_repositories_and_bad_ids_are_clear_errors() {
    let (endpoint, _) = serve(HashMap::new());
    let cache = tempfile::tempdir().unwrap();
    let msg = hub::pull(REPO, cache.path(), &endpoint, &mut Count::default())
        .unwrap_err()
        .to_string();
    assert!(msg.contains(REPO) && msg.contains("404"), "{msg}");
    for bad in ["../etc", "noslash", "a/b/c", "a/..", "a b/c"] {
        let msg = hub::pull(bad, cache.path(), &endpoint, &mut Count::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("org/name"), "{bad}: {msg}");
    }
}

#[test]
fn no_installed_model_says_how_to_get_one() {
    let empty = tempfile::tempdir().unwrap();
    // A name no real cache holds, so the user's own models cannot answer.
    let msg = hub::find_model("vidmusician-test/not-installed", Some(empty.path()))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("vidmusician models pull vidmusician-test/not-installed"),
        "{msg}"
    );
    assert!(msg.contains(&empty.path().display().to_string()), "{msg}");
}

#[test]
fn a_model_folder_given_directly_or_by_name_is_found() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("vidmusician-test/musicgen");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(fixture().join(f), dir.join(f)).unwrap();
    }
    assert_eq!(
        hub::find_model("vidmusician-test/musicgen", Some(root.path())).unwrap(),
        dir
    );
    assert_eq!(
        hub::find_model("vidmusician-test/musicgen", Some(&dir)).unwrap(),
        dir
    );
    // An incomplete copy is named with what it lacks.
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let msg = hub::find_model("vidmusician-test/musicgen", Some(root.path()))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("lacks tokenizer.json"), "{msg}");
}

#[test]
fn pull_fetches_a_clip_checkpoint_with_its_preprocessor_config() {
    use vidmusician_engine::neural::hub::ModelKind;
    use vidmusician_engine::neural::models::clip::Clip;
    let clip = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip-tiny");
    let (endpoint, log) = serve(files_of(
        &clip,
        &[
            "config.json",
            "preprocessor_config.json",
            "tokenizer.json",
            "model.safetensors",
        ],
    ));
    let cache = tempfile::tempdir().unwrap();
    let dir = hub::pull(REPO, cache.path(), &endpoint, &mut Count::default()).unwrap();
    assert!(dir.join("preprocessor_config.json").is_file());
    Clip::load(&dir).unwrap();
    // MusicGen's optional file is not asked of a CLIP checkpoint.
    let asked = |name: &str| {
        log.lock()
            .unwrap()
            .requests
            .iter()
            .any(|(p, _)| p.ends_with(name))
    };
    assert!(!asked("generation_config.json"));
    let listed = hub::list_installed(Some(cache.path()));
    let entry = listed.iter().find(|m| m.repo == REPO).expect("listed");
    assert_eq!(entry.kind, ModelKind::Clip);
    let before = log.lock().unwrap().requests.len();
    hub::pull(REPO, cache.path(), &endpoint, &mut Count::default()).unwrap();
    assert_eq!(log.lock().unwrap().requests.len(), before);
}

#[test]
fn pull_refuses_a_model_of_another_kind_before_fetching_its_weights() {
    let mut files = checkpoint_files();
    let body = br#"{"model_type": "bert", "hidden_size": 8}"#.to_vec();
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", body.len()).as_bytes());
    h.update(&body);
    let etag = hex(&h.finalize());
    files.insert(
        "config.json".to_string(),
        File {
            body,
            etag,
            lfs: false,
        },
    );
    let (endpoint, log) = serve(files);
    let cache = tempfile::tempdir().unwrap();
    let err = hub::pull(REPO, cache.path(), &endpoint, &mut Count::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("neither a MusicGen nor a CLIP model"),
        "{err}"
    );
    let fetched_weights = log
        .lock()
        .unwrap()
        .requests
        .iter()
        .any(|(p, _)| p.ends_with("model.safetensors"));
    assert!(!fetched_weights);
}
