//! The routers of a run folder's newest checkpoint, without training: for a run that was
//! killed (a device call's time limit) or whose router file was lost. Only the model file of
//! a checkpoint is needed (each is written whole, then renamed).

use std::path::Path;

use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use flux_attention::FluxBackend;
use flux_router::{LayerRouterConfig, RouterSet};

use super::checkpoint::latest_epoch_with;
use super::trainer::RouterTrainerRecord;
use super::{RunManifest, CHECKPOINT_EXTENSION};
use crate::error::{ModelError, Result};
use crate::model::Model;

/// The routers of the newest checkpoint in run folder `dir`, for `model` (the model
/// the run was started for: architecture, layers, heads, head_dim, hidden size and vocabulary
/// must match), and the number of checkpoint intervals that checkpoint completed.
pub fn checkpoint_routers<B: FluxBackend>(
    model: &Model<B>,
    dir: &Path,
) -> Result<(RouterSet<B>, usize)> {
    let fail = |message: String| ModelError::Training {
        path: dir.to_path_buf(),
        message,
    };
    let started = RunManifest::read(dir)?;
    let mine = RunManifest::new(
        model,
        &started.config,
        &started.train_data_sha256,
        started.train_samples,
    );
    if let Some(why) = started.mismatch(&mine) {
        return Err(fail(format!("cannot export: {why}")));
    }
    let checkpoints = dir.join("checkpoint");
    let epoch = latest_epoch_with(&checkpoints, CHECKPOINT_EXTENSION, &[]).ok_or_else(|| {
        fail(format!(
            "cannot export: no checkpoint in {}",
            checkpoints.display()
        ))
    })?;
    let path = checkpoints.join(format!("model-{epoch}"));
    let record: RouterTrainerRecord<B> = NamedMpkFileRecorder::<FullPrecisionSettings>::new()
        .load(path.clone(), model.device())
        .map_err(|e| {
            fail(format!(
                "cannot read {}.{CHECKPOINT_EXTENSION}: {e}",
                path.display()
            ))
        })?;
    let c = model.config();
    let config = LayerRouterConfig {
        head_dim: c.head_dim,
        pool_tokens: started.config.pool_tokens,
        full_bias: 4.5,
    };
    let routers = RouterSet::<B>::new(&config, c.num_layers, model.device());
    Ok((routers.load_record(record.routers), epoch))
}
