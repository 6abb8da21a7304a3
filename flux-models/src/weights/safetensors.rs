//! Hugging Face safetensors: one file, or shards listed by `model.safetensors.index.json`.
//! Files are memory-mapped; a tensor is converted to f32 only when it is read.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use super::{HostTensor, TensorSource};
use crate::error::{ModelError, Result};

/// Tensors of one or more memory-mapped safetensors files.
pub struct SafetensorsWeights {
    path: PathBuf,
    files: Vec<(PathBuf, Mmap)>,
    /// Tensor name -> index into `files`.
    index: BTreeMap<String, usize>,
}

impl SafetensorsWeights {
    /// Opens a `.safetensors` file, or a folder with `model.safetensors.index.json` (sharded),
    /// `model.safetensors`, or otherwise every `*.safetensors` file in it.
    pub fn open(path: &Path) -> Result<Self> {
        let files: Vec<PathBuf> = if path.is_dir() {
            let index = path.join("model.safetensors.index.json");
            if index.exists() {
                shards_from_index(&index)?
            } else if path.join("model.safetensors").exists() {
                vec![path.join("model.safetensors")]
            } else {
                let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                    .map_err(|e| ModelError::io(path, e))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                    .collect();
                found.sort();
                if found.is_empty() {
                    return Err(ModelError::io(
                        path.join("model.safetensors"),
                        std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            "no *.safetensors file in the folder",
                        ),
                    ));
                }
                found
            }
        } else {
            vec![path.to_path_buf()]
        };
        let mut mapped = Vec::with_capacity(files.len());
        let mut index = BTreeMap::new();
        for (i, file) in files.into_iter().enumerate() {
            let handle = File::open(&file).map_err(|e| ModelError::io(&file, e))?;
            // Safety: the file is opened read-only; like every mmap reader we assume nobody
            // truncates it while the model loads.
            let mmap = unsafe { Mmap::map(&handle) }.map_err(|e| ModelError::io(&file, e))?;
            let tensors = SafeTensors::deserialize(&mmap).map_err(|e| ModelError::Safetensors {
                path: file.clone(),
                message: e.to_string(),
            })?;
            for name in tensors.names() {
                index.insert(name.to_string(), i);
            }
            mapped.push((file, mmap));
        }
        Ok(Self {
            path: path.to_path_buf(),
            files: mapped,
            index,
        })
    }
}

fn shards_from_index(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| ModelError::io(index, e))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Json {
        path: index.to_path_buf(),
        message: e.to_string(),
    })?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ModelError::ConfigField {
            path: index.to_path_buf(),
            field: "weight_map".into(),
            message: "missing or not an object".into(),
        })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    // A set: a linear search per entry is quadratic in the size of the index.
    let mut shards = std::collections::BTreeSet::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| ModelError::ConfigField {
            path: index.to_path_buf(),
            field: format!("weight_map.{tensor}"),
            message: "not a file name".into(),
        })?;
        // Shards are files of the index's own folder: an absolute path or one with `..` (or any
        // separator) would read files elsewhere (`/dev/zero`, another model's weights).
        let plain = Path::new(file)
            .components()
            .map(|c| matches!(c, std::path::Component::Normal(_)))
            .collect::<Vec<_>>()
            == [true];
        if !plain || file.contains(['/', '\\']) {
            return Err(ModelError::ConfigField {
                path: index.to_path_buf(),
                field: format!("weight_map.{tensor}"),
                message: format!(
                    "`{file}` is not a file name in the index's folder (no path separators or `..`)"
                ),
            });
        }
        shards.insert(dir.join(file));
    }
    Ok(shards.into_iter().collect())
}

impl TensorSource for SafetensorsWeights {
    fn path(&self) -> &Path {
        &self.path
    }

    fn file_of(&self, name: &str) -> Option<PathBuf> {
        self.index.get(name).map(|&i| self.files[i].0.clone())
    }

    fn names(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }

    fn read(&self, name: &str) -> Result<Option<HostTensor>> {
        let Some(&i) = self.index.get(name) else {
            return Ok(None);
        };
        let (file, mmap) = &self.files[i];
        let safetensors_err = |message: String| ModelError::Safetensors {
            path: file.clone(),
            message,
        };
        let tensors = SafeTensors::deserialize(mmap).map_err(|e| safetensors_err(e.to_string()))?;
        let view = tensors
            .tensor(name)
            .map_err(|e| safetensors_err(format!("tensor `{name}`: {e}")))?;
        let bytes = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(ModelError::TensorDtype {
                    path: file.clone(),
                    tensor: name.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        Ok(Some(HostTensor {
            shape: view.shape().to_vec(),
            data,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder holding only `model.safetensors.index.json` with `index`.
    fn folder_with_index(tag: &str, index: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("flux-st-index-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model.safetensors.index.json"), index).unwrap();
        dir
    }

    // Found while fuzzing (fuzz/, target `safetensors_index`): shard names were joined to the
    // folder as they were, so an index could make flux map `/dev/zero` or another folder's file.
    #[test]
    fn shard_names_outside_the_folder_are_refused() {
        for (tag, name) in [
            ("abs", "/dev/zero"),
            ("up", "../model.safetensors"),
            ("sub", "sub/model.safetensors"),
            ("dot", "."),
            ("empty", ""),
        ] {
            let index = serde_json::json!({"weight_map": {"lm_head.weight": name}}).to_string();
            let dir = folder_with_index(tag, &index);
            let err = SafetensorsWeights::open(&dir)
                .err()
                .expect(name)
                .to_string();
            assert!(
                err.contains("field `weight_map.lm_head.weight`")
                    && err.contains(&format!(
                        "`{name}` is not a file name in the index's folder"
                    )),
                "{err}"
            );
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    // Found by fuzzing (fuzz/, target `safetensors_index`): a shard name with a newline made the
    // error for the missing shard two lines long.
    #[test]
    fn a_missing_shard_with_a_newline_in_its_name_is_a_one_line_error() {
        let index = r#"{"weight_map": {"w": "model-1.safet\nsors"}}"#;
        let dir = folder_with_index("newline", index);
        let err = SafetensorsWeights::open(&dir).err().unwrap().to_string();
        assert!(!err.contains('\n'), "{err}");
        assert!(
            err.ends_with("model-1.safet\\nsors: No such file or directory (os error 2)"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn shards_are_listed_once_each_in_order() {
        let index = r#"{"weight_map": {"a": "m-2.safetensors", "b": "m-1.safetensors", "c": "m-2.safetensors"}}"#;
        let dir = folder_with_index("order", index);
        let shards = shards_from_index(&dir.join("model.safetensors.index.json")).unwrap();
        assert_eq!(
            shards,
            [dir.join("m-1.safetensors"), dir.join("m-2.safetensors")]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
