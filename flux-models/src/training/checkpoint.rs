//! Crash-safe checkpoints: every file burn-train's checkpointer writes goes to a temporary
//! name, is synced, then renamed, so a checkpoint file is either whole or absent; a resume
//! takes the newest epoch whose three files (model, optimizer, scheduler) all exist.

use std::fs::File;
use std::path::{Path, PathBuf};

use burn::record::{FileRecorder, Recorder, RecorderError};
use burn::tensor::backend::Backend;
use serde::{de::DeserializeOwned, Serialize};

/// A file recorder that writes through a temporary file and a rename.
#[derive(Debug, Clone, Default)]
pub struct AtomicRecorder<R> {
    inner: R,
}

impl<R> AtomicRecorder<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self { inner }
    }
}

impl<B: Backend, R: FileRecorder<B>> Recorder<B> for AtomicRecorder<R> {
    type Settings = R::Settings;
    type RecordArgs = PathBuf;
    type RecordOutput = ();
    type LoadArgs = PathBuf;

    fn save_item<I: Serialize>(&self, item: I, file: PathBuf) -> Result<(), RecorderError> {
        let ext = <R as FileRecorder<B>>::file_extension();
        let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // The inner recorder appends its extension; a leading dot keeps the stem intact.
        let partial = dir.join(format!(".partial-{name}"));
        self.inner.save_item(item, partial.clone())?;
        let written = dir.join(format!(".partial-{name}.{ext}"));
        let target = dir.join(format!("{name}.{ext}"));
        let io = |e: std::io::Error| RecorderError::Unknown(format!("{}: {e}", target.display()));
        File::open(&written)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        std::fs::rename(&written, &target).map_err(io)?;
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    fn load_item<I: DeserializeOwned>(&self, file: &mut PathBuf) -> Result<I, RecorderError> {
        self.inner.load_item(file)
    }
}

impl<B: Backend, R: FileRecorder<B>> FileRecorder<B> for AtomicRecorder<R> {
    fn file_extension() -> &'static str {
        R::file_extension()
    }
}

/// The newest epoch of `checkpoint_dir` (burn-train's `<dir>/checkpoint`) for which the model,
/// optimizer and scheduler files all exist, with extension `ext`.
pub fn latest_complete_epoch(checkpoint_dir: &Path, ext: &str) -> Option<usize> {
    latest_epoch_with(checkpoint_dir, ext, &["optim", "scheduler"])
}

/// The newest epoch with a model file and a file of each of `kinds` in `checkpoint_dir`.
pub(crate) fn latest_epoch_with(checkpoint_dir: &Path, ext: &str, kinds: &[&str]) -> Option<usize> {
    let entries = std::fs::read_dir(checkpoint_dir).ok()?;
    let suffix = format!(".{ext}");
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("model-")?
                .strip_suffix(&suffix)?
                .parse::<usize>()
                .ok()
        })
        .filter(|epoch| {
            kinds.iter().all(|kind| {
                checkpoint_dir
                    .join(format!("{kind}-{epoch}{suffix}"))
                    .is_file()
            })
        })
        .max()
}
