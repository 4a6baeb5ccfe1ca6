//! Reading checkpoint tensors from safetensors files in the Hugging Face layout
//! (`model.safetensors`, or shards listed by `model.safetensors.index.json`).
//!
//! Every tensor is fetched by name with the shape the model expects; a missing tensor
//! or a different shape is an error that names the tensor, the file and both shapes.
//! Nothing is ever initialised at random in place of a checkpoint tensor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

struct Files {
    /// One mapping per shard, with the path errors should name.
    shards: Vec<(PathBuf, MmapedSafetensors)>,
    /// Which shard holds each tensor.
    index: HashMap<String, usize>,
    /// Tensors held in memory (built by code, not read from a file).
    memory: HashMap<String, Tensor>,
    /// Answer every name with random values of the asked shape (benchmarks of a
    /// model's speed at its real size, where no checkpoint can be downloaded).
    random: Option<u64>,
    /// The names and shapes asked of a random checkpoint, in order.
    asked: parking_lot::Mutex<Vec<(String, Vec<usize>)>>,
}

/// A view of a checkpoint under a name prefix, like candle's `VarBuilder` but with
/// errors a user can act on.
#[derive(Clone)]
pub struct Weights {
    files: Arc<Files>,
    prefix: String,
    device: Device,
}

impl Weights {
    /// Opens the weights of the model in `dir`: `model.safetensors`, or the shards
    /// that `model.safetensors.index.json` lists.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let paths = if single.is_file() {
            vec![single]
        } else if index.is_file() {
            shard_paths(&index)?
        } else {
            return Err(Error::model_file(
                dir,
                "no model.safetensors or model.safetensors.index.json here",
            ));
        };
        Self::open(&paths)
    }

    /// Opens one or more safetensors files as a single checkpoint.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut shards = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        for path in paths {
            if !path.is_file() {
                return Err(Error::NotFound(path.clone()));
            }
            // SAFETY: the mapping is read-only; a checkpoint rewritten while it is
            // mapped is outside what any model loader can defend against, and the
            // safetensors header is validated against the file's length here.
            let file = unsafe { MmapedSafetensors::new(path) }.map_err(|e| {
                Error::model_file(path, format!("not a valid safetensors file: {e}"))
            })?;
            for (name, _) in file.tensors() {
                index.insert(name, shards.len());
            }
            shards.push((path.clone(), file));
        }
        Ok(Self {
            files: Arc::new(Files {
                shards,
                index,
                memory: HashMap::new(),
                random: None,
                asked: Default::default(),
            }),
            prefix: String::new(),
            device: Device::Cpu,
        })
    }

    /// A checkpoint made of tensors in memory (benchmarks, tests).
    pub fn from_tensors(tensors: HashMap<String, Tensor>) -> Self {
        Self {
            files: Arc::new(Files {
                shards: Vec::new(),
                index: HashMap::new(),
                memory: tensors,
                random: None,
                asked: Default::default(),
            }),
            prefix: String::new(),
            device: Device::Cpu,
        }
    }

    /// A checkpoint that has every tensor, with random values (std 0.02; norm scales
    /// 1): any model loads from it at its full size. For speed measurements only.
    pub fn random(seed: u64) -> Self {
        Self {
            files: Arc::new(Files {
                shards: Vec::new(),
                index: HashMap::new(),
                memory: HashMap::new(),
                random: Some(seed),
                asked: Default::default(),
            }),
            prefix: String::new(),
            device: Device::Cpu,
        }
    }

    /// Every tensor (full name and shape) a model loaded from a [`Weights::random`]
    /// checkpoint asked for: the layout of a real checkpoint of that model.
    pub fn asked(&self) -> Vec<(String, Vec<usize>)> {
        self.files.asked.lock().clone()
    }

    /// The same checkpoint seen under `prefix.`.
    pub fn pp(&self, prefix: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() {
            prefix.to_string()
        } else {
            format!("{}.{prefix}", self.prefix)
        };
        Self {
            files: self.files.clone(),
            prefix,
            device: self.device.clone(),
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The same checkpoint, its tensors read onto `device`.
    pub fn on(&self, device: &Device) -> Self {
        Self {
            files: self.files.clone(),
            prefix: self.prefix.clone(),
            device: device.clone(),
        }
    }

    fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// The file errors name: the shard holding `full`, or the first file.
    fn path_of(&self, full: &str) -> PathBuf {
        let i = self.files.index.get(full).copied().unwrap_or(0);
        self.files
            .shards
            .get(i)
            .map(|(p, _)| p.clone())
            .unwrap_or_default()
    }

    pub fn contains(&self, name: &str) -> bool {
        let full = self.full_name(name);
        self.files.random.is_some()
            || self.files.index.contains_key(&full)
            || self.files.memory.contains_key(&full)
    }

    /// The tensor `name` as f32, checked against `shape`.
    pub fn get(&self, shape: &[usize], name: &str) -> Result<Tensor> {
        let full = self.full_name(name);
        if let Some(seed) = self.files.random {
            self.files.asked.lock().push((full.clone(), shape.to_vec()));
            return random_tensor(seed, &full, shape, &self.device);
        }
        if let Some(t) = self.files.memory.get(&full) {
            if t.dims() != shape {
                return Err(Error::TensorShape {
                    path: PathBuf::from("(memory)"),
                    name: full,
                    expected: shape.to_vec(),
                    found: t.dims().to_vec(),
                });
            }
            return Ok(t.to_dtype(DType::F32)?.to_device(&self.device)?);
        }
        let Some(&i) = self.files.index.get(&full) else {
            return Err(Error::MissingTensor {
                path: self.path_of(&full),
                name: full,
            });
        };
        let (path, file) = &self.files.shards[i];
        let view = file.get(&full)?;
        if view.shape() != shape {
            return Err(Error::TensorShape {
                path: path.clone(),
                name: full,
                expected: shape.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        let t = file
            .load(&full, &self.device)
            .map_err(|e| Error::model_file(path, format!("tensor `{full}`: {e}")))?;
        release_pages(view.data());
        Ok(t.to_dtype(DType::F32)?)
    }

    /// The tensor `name`, checked against `shape`, lent to `f` as f32 values: read
    /// in place from the file's mapping when the checkpoint holds it as f32 (the
    /// usual case), converted otherwise. For loaders that keep their own form of
    /// a weight (quantised, stacked): the tensor and flat copies [`Weights::get`]
    /// would make first are most of the time such a load takes.
    pub fn with_f32<R>(
        &self,
        shape: &[usize],
        name: &str,
        f: impl FnOnce(&[f32]) -> Result<R>,
    ) -> Result<R> {
        let full = self.full_name(name);
        if let (None, false, Some(&i)) = (
            self.files.random,
            self.files.memory.contains_key(&full),
            self.files.index.get(&full),
        ) {
            let (path, file) = &self.files.shards[i];
            let view = file
                .get(&full)
                .map_err(|e| Error::model_file(path, format!("tensor `{full}`: {e}")))?;
            if view.shape() == shape
                && view.dtype() == safetensors::Dtype::F32
                && cfg!(target_endian = "little")
            {
                // Safetensors puts no alignment on a tensor's bytes; one that is
                // not 4-aligned takes the copying path below.
                if let Ok(values) = bytemuck::try_cast_slice::<u8, f32>(view.data()) {
                    let r = f(values);
                    release_pages(view.data());
                    return r;
                }
            }
        }
        let t = self.get(shape, name)?;
        f(&t.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Linear layers' weights `parts` (names and row counts, each `rows × inn` as
    /// PyTorch stores them, `(out, in)`), stacked along the output axis and
    /// transposed into one contiguous `(inn, Σ rows)` tensor, the layout the
    /// matmuls read. Transposed tile by tile as each is read: candle's strided
    /// copy of a transposed view goes element by element and was most of the
    /// time T5 and CLIP took to load.
    pub fn transposed(&self, parts: &[(&str, usize)], inn: usize) -> Result<Tensor> {
        let out: usize = parts.iter().map(|(_, rows)| rows).sum();
        let mut wt = vec![0f32; inn * out];
        let mut part = Vec::new();
        let mut at = 0;
        for &(name, rows) in parts {
            self.with_f32(&[rows, inn], name, |v| {
                if v.is_empty() {
                    // A part with no rows (or rows of nothing) adds no columns.
                } else if parts.len() == 1 {
                    transpose::transpose(v, &mut wt, inn, rows);
                } else {
                    part.resize(v.len(), 0.0);
                    transpose::transpose(v, &mut part, inn, rows);
                    for (dst, src) in wt.chunks_exact_mut(out).zip(part.chunks_exact(rows)) {
                        dst[at..at + rows].copy_from_slice(src);
                    }
                }
                Ok(())
            })?;
            at += rows;
        }
        Ok(Tensor::from_vec(wt, (inn, out), &self.device)?)
    }

    /// A hash of the tensors' contents (names, types, shapes and bytes, in name
    /// order), leaving out those under any of `skip` (name prefixes): the same
    /// weights give the same hash on any machine, however the files are split
    /// or named. Tensors built in memory or at random are not covered.
    pub fn content_hash(&self, skip: &[&str]) -> Result<String> {
        let mut names: Vec<&String> = self
            .files
            .index
            .keys()
            .filter(|n| !skip.iter().any(|s| n.starts_with(s)))
            .collect();
        names.sort();
        let mut h = blake3::Hasher::new();
        for name in names {
            let (path, file) = &self.files.shards[self.files.index[name]];
            let view = file
                .get(name)
                .map_err(|e| Error::model_file(path, format!("tensor `{name}`: {e}")))?;
            h.update(name.as_bytes());
            h.update(format!("{:?}{:?}", view.dtype(), view.shape()).as_bytes());
            h.update(view.data());
            release_pages(view.data());
        }
        Ok(h.finalize().to_hex()[..32].to_string())
    }

    /// The first of `names` that the checkpoint has, for tensors whose name changed
    /// between library versions. The error names the first (current) spelling.
    pub fn get_any(&self, shape: &[usize], names: &[&str]) -> Result<Tensor> {
        for name in names {
            if self.contains(name) {
                return self.get(shape, name);
            }
        }
        self.get(shape, names[0])
    }
}

/// Drops the pages of `bytes`, a range of a read-only file mapping that has just been
/// copied out, from this process: the file stays in the page cache (a later read
/// faults it back in), but resident memory no longer counts the checkpoint on top of
/// the copies made of it, which would double the peak while a model loads.
fn release_pages(bytes: &[u8]) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let start = bytes.as_ptr() as usize / page * page;
        let end = (bytes.as_ptr() as usize + bytes.len()).div_ceil(page) * page;
        if end > start {
            // SAFETY: the range lies in a read-only file mapping (whole pages of it,
            // rounded outwards, still inside the mapping, which is page-aligned and
            // page-sized); MADV_DONTNEED on such a mapping keeps its contents, which
            // are read again from the file on the next access. An error only means
            // the pages stay resident.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = bytes;
}

fn random_tensor(seed: u64, name: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
    use rand::{Rng, SeedableRng};
    let n: usize = shape.iter().product();
    if name.contains("norm") && name.ends_with("weight") {
        return Ok(Tensor::ones(shape, DType::F32, device)?);
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ blake3_u64(name));
    // Uniform with the standard deviation of N(0, 0.02): the speed of a kernel does
    // not depend on the distribution, only finite values matter.
    let a = 0.02f32 * 3f32.sqrt();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-a..a)).collect();
    Ok(Tensor::from_vec(v, shape, device)?)
}

fn blake3_u64(s: &str) -> u64 {
    let h = blake3::hash(s.as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or([0; 8]))
}

/// The shard files a `model.safetensors.index.json` lists, each a bare file name
/// in the index's folder.
pub(crate) fn shard_paths(index: &Path) -> Result<Vec<PathBuf>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let text = std::fs::read_to_string(index).map_err(|e| Error::opening(index, e))?;
    let parsed: Index = serde_json::from_str(&text)
        .map_err(|e| Error::model_file(index, format!("not a valid shard index: {e}")))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<&String> = parsed.weight_map.values().collect();
    files.sort();
    files.dedup();
    if files.is_empty() {
        return Err(Error::model_file(index, "the shard index lists no files"));
    }
    let mut paths = Vec::with_capacity(files.len());
    for f in files {
        // A shard name is a bare file name; anything else could point outside the
        // model folder.
        if Path::new(f).components().count() != 1 {
            return Err(Error::model_file(
                index,
                format!("shard `{f}` is not a file name in the model folder"),
            ));
        }
        paths.push(dir.join(f));
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two weights of 3 columns (4 and 2 rows) written to a safetensors file in `dtype`.
    fn checkpoint(dir: &Path, dtype: DType) -> (Tensor, Tensor) {
        let a = Tensor::arange(0f32, 12.0, &Device::Cpu)
            .unwrap()
            .reshape((4, 3))
            .unwrap();
        let b = (Tensor::arange(0f32, 6.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap()
            * -0.5)
            .unwrap();
        let tensors = HashMap::from([
            ("l.a.weight".to_string(), a.to_dtype(dtype).unwrap()),
            ("l.b.weight".to_string(), b.to_dtype(dtype).unwrap()),
        ]);
        candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
        (a, b)
    }

    #[test]
    fn stacked_weights_are_transposed_as_candle_transposes_them() {
        for dtype in [DType::F32, DType::F16] {
            let dir = tempfile::tempdir().unwrap();
            let (a, b) = checkpoint(dir.path(), dtype);
            let w = Weights::open_dir(dir.path()).unwrap().pp("l");
            let want = Tensor::cat(&[&a, &b], 0).unwrap().t().unwrap();
            let got = w
                .transposed(&[("a.weight", 4), ("b.weight", 2)], 3)
                .unwrap();
            assert_eq!(got.dims(), &[3, 6]);
            assert_eq!(
                got.to_vec2::<f32>().unwrap(),
                want.to_vec2::<f32>().unwrap(),
                "{dtype:?}"
            );
            let one = w.transposed(&[("b.weight", 2)], 3).unwrap();
            assert_eq!(
                one.to_vec2::<f32>().unwrap(),
                b.t().unwrap().to_vec2::<f32>().unwrap()
            );
            // Values lent in place equal those `get` copies.
            let lent = w.with_f32(&[4, 3], "a.weight", |v| Ok(v.to_vec())).unwrap();
            assert_eq!(lent, a.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
    }

    #[test]
    fn a_lent_tensor_of_another_shape_or_missing_is_the_same_error_as_get_gives() {
        let dir = tempfile::tempdir().unwrap();
        checkpoint(dir.path(), DType::F32);
        let w = Weights::open_dir(dir.path()).unwrap().pp("l");
        let err = w.with_f32(&[3, 4], "a.weight", |_| Ok(())).unwrap_err();
        assert!(
            matches!(&err, Error::TensorShape { expected, found, .. }
                if expected == &[3, 4] && found == &[4, 3]),
            "{err}"
        );
        let err = w.transposed(&[("c.weight", 2)], 3).unwrap_err();
        assert!(
            matches!(&err, Error::MissingTensor { name, .. } if name == "l.c.weight"),
            "{err}"
        );
    }
}
