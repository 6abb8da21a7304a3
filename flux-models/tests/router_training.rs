//! Router training with the burn-train loop on tiny checkpoints (ndarray, f32): it trains, logs,
//! writes checkpoints atomically, resumes exactly, refuses bad runs and never touches the
//! backbone. (The layer-wise gradients are checked in float64 in `router_gradients.rs`.)

mod common;

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, NdArray};
use burn::module::Module;
use burn::tensor::Tensor;
use common::routed::{random_samples, tiny, values};
use flux_attention::AttentionMode;
use flux_models::training::{
    latest_complete_epoch, train_routers, TrainConfig, TrainDisplay, CHECKPOINT_EXTENSION,
};
use flux_models::{Model, Routing};
use flux_router::{RouterSet, TaskCategory};

type AD = Autodiff<NdArray<f32>>;

fn config(steps: usize, every: usize) -> TrainConfig {
    TrainConfig {
        steps,
        checkpoint_every: every,
        batch_size: 2,
        accumulation: 2,
        lr: 5e-2,
        warmup_fraction: 0.0,
        lambda_lr_ratio: 4.0,
        lambda_init: (0.5, 0.5),
        sparse_mode: AttentionMode::Streaming { sink: 2, window: 6 },
        pool_tokens: 4,
        seed: 3,
        max_valid: 4,
        ..TrainConfig::default()
    }
}

fn run_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flux-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn train(
    model: &Model<AD>,
    config: &TrainConfig,
    dir: &Path,
    resume: bool,
) -> flux_models::Result<flux_models::training::TrainOutcome<NdArray<f32>>> {
    train_routers(
        model.clone(),
        random_samples(40, 1, 20..40),
        random_samples(4, 2, 20..40),
        "test-data",
        config,
        dir,
        resume,
        TrainDisplay::Quiet { every: 1000 },
    )
}

fn router_values(r: &RouterSet<NdArray<f32>>) -> Vec<f64> {
    let q = Tensor::<NdArray<f32>, 4>::ones([1, 4, 10, 16], &Default::default());
    r.routers
        .iter()
        .flat_map(|l| values(l.forward(q.clone(), None).unwrap()))
        .collect()
}

fn metric_lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn burn_train_loop_trains_checkpoints_and_resumes_exactly() {
    let model = tiny::<AD>("tiny-llama3");
    let reference = values(
        model
            .forward(
                common::routed::tokens(&[(5..30).collect()]),
                &mut model.new_cache(),
            )
            .unwrap(),
    );
    // Uninterrupted: 3 checkpoint intervals of 2 steps.
    let full_dir = run_dir("full");
    let full = train(&model, &config(6, 2), &full_dir, false).unwrap();
    assert_eq!(full.steps_run, 6);
    let ckpt = full_dir.join("checkpoint");
    assert_eq!(latest_complete_epoch(&ckpt, CHECKPOINT_EXTENSION), Some(3));
    // No temporary file is left behind.
    for e in std::fs::read_dir(&ckpt).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.starts_with(".partial"),
            "{name} left in {}",
            ckpt.display()
        );
    }

    // Killed right after the first checkpoint: its run.json and checkpoint 1 only.
    let killed = run_dir("killed");
    std::fs::create_dir_all(killed.join("checkpoint")).unwrap();
    std::fs::copy(full_dir.join("run.json"), killed.join("run.json")).unwrap();
    for kind in ["model", "optim", "scheduler"] {
        let name = format!("{kind}-1.{CHECKPOINT_EXTENSION}");
        std::fs::copy(ckpt.join(&name), killed.join("checkpoint").join(&name)).unwrap();
    }
    let resumed = train(&model, &config(6, 2), &killed, true).unwrap();
    assert_eq!(resumed.resumed_from_epoch, 1);
    assert_eq!(resumed.steps_run, 4);
    let (a, b) = (
        router_values(&full.routers),
        router_values(&resumed.routers),
    );
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    assert!(diff < 1e-5, "resumed routers differ by {diff}");
    assert_eq!(full.multipliers, resumed.multipliers);

    // The multipliers rose for every category below its target (all start all-full).
    for (l1, l2) in full.multipliers.0.iter().zip(&full.multipliers.1) {
        assert!(
            *l1 > 0.5 && *l2 > 0.5,
            "lambda1 {l1}, lambda2 {l2} did not rise"
        );
    }
    // The step log has every step and a validation line per interval.
    let lines = metric_lines(&full_dir);
    let train_lines = lines.iter().filter(|l| l["split"] == "train").count();
    let valid_lines = lines.iter().filter(|l| l["split"] == "valid").count();
    assert_eq!(train_lines, 6 * 2, "one line per micro-batch");
    assert_eq!(valid_lines, 3);
    assert!(lines[0]["lm_loss"].as_f64().unwrap().is_finite());

    // The backbone computes what it computed before.
    let after = values(
        model
            .forward(
                common::routed::tokens(&[(5..30).collect()]),
                &mut model.new_cache(),
            )
            .unwrap(),
    );
    assert_eq!(reference, after);

    // A finished run, a run folder reused without --resume, another model: clear errors.
    let err = train(&model, &config(6, 2), &full_dir, true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("complete"), "{err}");
    let err = train(&model, &config(6, 2), &full_dir, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--resume"), "{err}");
    let other = tiny::<AD>("tiny-qwen3");
    let err = train_routers(
        other,
        random_samples(40, 1, 20..40),
        random_samples(4, 2, 20..40),
        "test-data",
        &config(6, 2),
        &killed,
        true,
        TrainDisplay::Quiet { every: 1000 },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("another model"), "{err}");
    let err = train(&model, &config(8, 2), &killed, true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("other settings"), "{err}");
    let _ = std::fs::remove_dir_all(&full_dir);
    let _ = std::fs::remove_dir_all(&killed);
}

#[test]
fn sparsity_rises_toward_the_target_and_the_router_file_changes_the_plan() {
    let model = tiny::<AD>("tiny-llama3");
    let dir = run_dir("sparsity");
    let mut cfg = config(16, 8);
    cfg.lr = 0.1;
    cfg.lambda_init = (2.0, 2.0);
    let out = train_routers(
        model.clone(),
        random_samples(40, 1, 20..40)
            .into_iter()
            .map(|mut s| {
                s.category = TaskCategory::Code;
                s.target = 1.0;
                s
            })
            .collect(),
        random_samples(4, 2, 20..40),
        "test-data",
        &cfg,
        &dir,
        false,
        TrainDisplay::Quiet { every: 1000 },
    )
    .unwrap();
    let lines = metric_lines(&dir);
    let sparsity: Vec<f64> = lines
        .iter()
        .filter(|l| l["split"] == "train")
        .filter_map(|l| l["sparsity_code"].as_f64())
        .collect();
    let (first, last) = (
        sparsity[..4].iter().sum::<f64>(),
        sparsity[sparsity.len() - 4..].iter().sum::<f64>(),
    );
    assert!(
        last > first + 1.0,
        "sparsity of code went from {first} to {last} (sums of 4 steps)"
    );
    // Saved, loaded and used at prefill: the routers now choose sparse layers.
    let path = dir.join("routers.safetensors");
    let inner = tiny::<NdArray<f32>>("tiny-llama3");
    let meta = inner.router_meta(cfg.sparse_mode, cfg.pool_tokens);
    out.routers
        .save_as(&meta, &path, flux_router::Dtype::BF16)
        .unwrap();
    let (loaded, _) = RouterSet::<NdArray<f32>>::load(&path, &meta, &Default::default()).unwrap();
    let mut cache = inner.new_cache();
    let prompt = common::routed::tokens::<NdArray<f32>>(&[(5..35).collect()]);
    inner
        .forward_routed(
            prompt,
            None,
            &mut cache,
            Routing::Routers {
                routers: &loaded,
                sparse_mode: cfg.sparse_mode,
            },
        )
        .unwrap();
    let plan = cache.plan().unwrap();
    assert!(plan.sparse_layers(0) > 0, "plan {}", plan.layer_string(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_non_finite_loss_stops_training_with_a_clear_error_and_no_checkpoint() {
    let model = tiny::<AD>("tiny-llama3");
    let dir = run_dir("nan");
    let mut cfg = config(4, 2);
    cfg.lambda_init = (f32::NAN, 0.0);
    let err = train(&model, &cfg, &dir, false).unwrap_err().to_string();
    assert!(err.contains("not finite"), "{err}");
    assert_eq!(
        latest_complete_epoch(&dir.join("checkpoint"), CHECKPOINT_EXTENSION),
        None
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_qwen3_checkpoint_trains_through_the_same_loop() {
    // q/k norms and head_dim 32: the other architecture family of the tiny checkpoints.
    let model = tiny::<AD>("tiny-qwen3");
    let dir = run_dir("qwen3");
    let out = train(&model, &config(4, 2), &dir, false).unwrap();
    assert!(out.completed);
    assert_eq!(out.epochs_done, 2);
    assert_eq!(out.routers.num_layers(), 2);
    assert_eq!(out.routers.routers[0].head_dim(), 32);
    let lines = metric_lines(&dir);
    assert!(lines
        .iter()
        .filter(|l| l["split"] == "train")
        .all(|l| l["lm_loss"].as_f64().is_some_and(f64::is_finite)));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn router_inputs_are_standardised_before_the_first_step() {
    use flux_models::training::{router_input_statistics, standardize_routers};
    type Nd = NdArray<f32>;
    let model = tiny::<Nd>("tiny-llama3");
    let samples = random_samples(6, 9, 20..40);
    let refs: Vec<_> = samples.iter().collect();
    let pool = 4;
    let stats = router_input_statistics(&model, &refs, pool).unwrap();
    // Per prompt, what each layer's router sees; then mean and spread in float64.
    let per_prompt: Vec<Vec<Vec<f64>>> = samples
        .iter()
        .map(|s| {
            let tokens = common::routed::tokens::<Nd>(std::slice::from_ref(&s.ids));
            model
                .router_inputs(tokens, std::slice::from_ref(&s.prompt_span), pool)
                .unwrap()
                .into_iter()
                .map(values)
                .collect()
        })
        .collect();
    let layers = per_prompt[0].len();
    assert_eq!(stats.mean.len(), layers);
    for l in 0..layers {
        for j in 0..per_prompt[0][l].len() {
            let xs: Vec<f64> = per_prompt.iter().map(|p| p[l][j]).collect();
            let m = xs.iter().sum::<f64>() / xs.len() as f64;
            let sd = (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / xs.len() as f64).sqrt();
            assert!((stats.mean[l][j] - m).abs() < 1e-5 * (1.0 + m.abs()));
            assert!((stats.std[l][j] - sd).abs() < 1e-4 * (1.0 + sd));
        }
    }
    // Two prompts of one length in one batch see what they see alone.
    let (a, b) = (&samples[0], &samples[1]);
    let n = a.ids.len().min(b.ids.len());
    let rows = vec![a.ids[..n].to_vec(), b.ids[..n].to_vec()];
    let spans = [1..n - 2, 3..n];
    let batched = model
        .router_inputs(common::routed::tokens::<Nd>(&rows), &spans, pool)
        .unwrap();
    for (i, row) in rows.iter().enumerate() {
        let alone = model
            .router_inputs(
                common::routed::tokens::<Nd>(std::slice::from_ref(row)),
                std::slice::from_ref(&spans[i]),
                pool,
            )
            .unwrap();
        for l in 0..layers {
            let got = values(batched[l].clone().narrow(0, i, 1));
            let want = values(alone[l].clone());
            assert!(
                common::max_abs_diff(&got, &want) < 1e-5,
                "layer {l}, prompt {i}"
            );
        }
    }
    // Folded into random routers: each router now computes on the raw inputs what it computed
    // on the standardised ones.
    let routers = RouterSet::<Nd>::new(
        &flux_router::LayerRouterConfig::new(16),
        layers,
        &Default::default(),
    )
    .map(&mut common::routed::Randomize::<Nd>::new(4, 1.0));
    let folded = standardize_routers(routers.clone(), &stats).unwrap();
    for l in 0..layers {
        for p in &per_prompt {
            let raw = Tensor::<Nd, 2>::from_data(
                burn::tensor::TensorData::new(p[l].iter().map(|&x| x as f32).collect(), [1, 16]),
                &Default::default(),
            );
            let floor = 0.01 * (stats.std[l].iter().map(|s| s * s).sum::<f64>() / 16.0).sqrt();
            let z: Vec<f32> = p[l]
                .iter()
                .zip(&stats.mean[l])
                .zip(&stats.std[l])
                .map(|((x, m), s)| ((x - m) / s.max(floor)) as f32)
                .collect();
            let z = Tensor::<Nd, 2>::from_data(
                burn::tensor::TensorData::new(z, [1, 16]),
                &Default::default(),
            );
            let want = values(routers.routers[l].forward_pooled(z));
            let got = values(folded.routers[l].forward_pooled(raw));
            assert!(
                common::max_abs_diff(&got, &want) < 1e-3,
                "layer {l}: {got:?} vs {want:?}"
            );
        }
    }
    // A run with standardisation trains; one prompt cannot give a spread.
    let dir = run_dir("standardize");
    let mut cfg = config(2, 2);
    cfg.standardize_samples = 8;
    let out = train(&tiny::<AD>("tiny-llama3"), &cfg, &dir, false).unwrap();
    // The routers of the run's last checkpoint, exported without training, are the trained ones.
    let (exported, epochs) =
        flux_models::training::checkpoint_routers(&tiny::<Nd>("tiny-llama3"), &dir).unwrap();
    assert_eq!(epochs, 1);
    assert_eq!(router_values(&exported), router_values(&out.routers));
    // ... and only for the model the run was started for.
    let err = flux_models::training::checkpoint_routers(&tiny::<Nd>("tiny-qwen3"), &dir)
        .unwrap_err()
        .to_string();
    assert!(err.contains("another model"), "{err}");
    cfg.standardize_samples = 1;
    let err = train(
        &tiny::<AD>("tiny-llama3"),
        &cfg,
        &run_dir("standardize-1"),
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--standardize-samples"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
