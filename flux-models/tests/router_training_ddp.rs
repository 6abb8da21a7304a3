//! Router training through burn-train's data-parallel (DDP) strategy, on wgpu with the same
//! adapter standing in for two devices (the gradient exchange is ours, through host memory, so
//! no NCCL is needed): the run trains, logs one line per device and micro-batch, checkpoints,
//! and a time limit stops every device at the same checkpoint without hanging.
//!
//! Built only with the `distributed` and `wgpu` features (burn's autodiff then needs a
//! distributed backend, which ndarray is not):
//! `cargo test -p flux-models --no-default-features --features wgpu,distributed --test router_training_ddp`
#![cfg(all(feature = "distributed", feature = "wgpu"))]

mod common;

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use burn::backend::{Autodiff, Wgpu};
use common::routed::{random_samples, tiny};
use flux_attention::AttentionMode;
use flux_models::training::{
    latest_complete_epoch, train_routers_data_parallel, TrainConfig, TrainDisplay, TrainOutcome,
    CHECKPOINT_EXTENSION,
};

type AD = Autodiff<Wgpu>;

fn config(steps: usize, every: usize, time_limit: Option<f64>) -> TrainConfig {
    TrainConfig {
        steps,
        checkpoint_every: every,
        batch_size: 2,
        devices: 2,
        lr: 5e-2,
        warmup_fraction: 0.0,
        lambda_init: (0.5, 0.5),
        sparse_mode: AttentionMode::Streaming { sink: 2, window: 6 },
        pool_tokens: 4,
        seed: 3,
        max_valid: 2,
        time_limit,
        ..TrainConfig::default()
    }
}

fn run_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flux-ddp-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Runs a two-device training in a thread and fails the test if it does not finish in time
/// (a device waiting for another that left is a hang, not an error).
fn train_with_watchdog(config: TrainConfig, dir: PathBuf) -> TrainOutcome<Wgpu> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let model = tiny::<AD>("tiny-llama3");
        let device = model.device().clone();
        let out = train_routers_data_parallel(
            model,
            random_samples(24, 1, 20..40),
            random_samples(2, 2, 20..40),
            "test-data",
            &config,
            &dir,
            false,
            TrainDisplay::Quiet { every: 1000 },
            vec![device.clone(), device],
        );
        let _ = tx.send(out);
    });
    rx.recv_timeout(Duration::from_secs(300))
        .expect("the two-device run hung")
        .expect("the two-device run failed")
}

#[test]
fn two_devices_train_log_checkpoint_and_stop_together_at_the_time_limit() {
    let dir = run_dir("full");
    let out = train_with_watchdog(config(4, 2, None), dir.clone());
    assert!(out.completed);
    assert_eq!(out.steps_run, 4);
    assert!(out.tokens_trained > 0);
    let ckpt = dir.join("checkpoint");
    assert_eq!(latest_complete_epoch(&ckpt, CHECKPOINT_EXTENSION), Some(2));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let train: Vec<_> = lines.iter().filter(|l| l["split"] == "train").collect();
    // One line per device and micro-batch, numbered by optimizer step.
    assert_eq!(train.len(), 4 * 2);
    for (i, l) in train.iter().enumerate() {
        assert_eq!(l["step"].as_u64(), Some(i as u64 / 2 + 1), "{l}");
        assert!(l["lm_loss"].as_f64().unwrap().is_finite());
    }
    assert_eq!(lines.iter().filter(|l| l["split"] == "valid").count(), 2);
    let _ = std::fs::remove_dir_all(&dir);

    // A limit already past: every device stops at the first checkpoint boundary, together.
    let dir = run_dir("limit");
    let out = train_with_watchdog(config(6, 2, Some(0.0)), dir.clone());
    assert!(!out.completed);
    assert_eq!(out.epochs_done, 1);
    assert_eq!(out.steps_run, 2);
    let _ = std::fs::remove_dir_all(&dir);
}
