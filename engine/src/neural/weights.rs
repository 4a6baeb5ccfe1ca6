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
            files: Arc::new(Files { shards, index }),
            prefix: String::new(),
            device: Device::Cpu,
        })
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
        self.files.index.contains_key(&self.full_name(name))
    }

    /// The tensor `name` as f32, checked against `shape`.
    pub fn get(&self, shape: &[usize], name: &str) -> Result<Tensor> {
        let full = self.full_name(name);
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
        Ok(t.to_dtype(DType::F32)?)
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

fn shard_paths(index: &Path) -> Result<Vec<PathBuf>> {
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
