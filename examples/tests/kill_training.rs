//! Crash safety of `train_router` (issue 14 item 3): runs killed with SIGKILL at seeded random
//! moments leave no half-written file (JSON, JSON lines, router files), their newest complete
//! checkpoint always exports on its own and resumes (given only its paths: the settings come
//! from the run's run.json), and the resumed run completes from exactly that checkpoint and ends
//! where an uninterrupted run with the same seed does. A setting given with the resume that
//! differs from the run's is refused.
//!
//! Tiny random Llama-3 checkpoint (flux-models' test fixture) and random-token router data, on
//! ndarray.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use flux_models::router_data::{write_split, RouterSample};
use flux_models::training::{latest_complete_epoch, CHECKPOINT_EXTENSION};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Killed runs (each at its own random moment).
const KILLS: usize = 6;

mod common;

/// The tiny Llama-3 checkpoint with the Llama-3 tokenizer of scripts/fetch-models.sh beside it
/// (train_router loads a model folder whole), assembled in `root`.
fn model_in(root: &Path) -> PathBuf {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../flux-models/tests/fixtures");
    let dir = root.join("tiny-llama3");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["config.json", "generation_config.json", "model.safetensors"] {
        std::fs::copy(
            fixtures.join("tiny-models/tiny-llama3").join(name),
            dir.join(name),
        )
        .unwrap();
    }
    std::fs::copy(
        fixtures.join("tokenizer/llama3/tokenizer_config.json"),
        dir.join("tokenizer_config.json"),
    )
    .unwrap();
    let tokenizer = common::models_dir().join("tokenizers/llama3/tokenizer.json");
    assert!(
        tokenizer.exists(),
        "{} is missing: run scripts/fetch-models.sh",
        tokenizer.display()
    );
    std::fs::copy(tokenizer, dir.join("tokenizer.json")).unwrap();
    dir
}

fn samples(n: usize, seed: u64) -> Vec<RouterSample> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let total = rng.random_range(20..40);
            let ids: Vec<u32> = (0..total).map(|_| rng.random_range(3..500)).collect();
            let category = flux_router::TaskCategory::ALL[i % flux_router::TaskCategory::ALL.len()];
            RouterSample {
                ids,
                prompt_span: 1..total - 4,
                answer: total - 4..total,
                category,
                target: category.default_target(),
                family: "synthetic".into(),
            }
        })
        .collect()
}

/// The training flags every run shares (a run folder or `--resume` is added per run).
fn flags(model: &Path, data: &Path, out: &Path) -> Vec<String> {
    [
        "--model",
        &model.display().to_string(),
        "--data",
        &data.display().to_string(),
        "--out",
        &out.display().to_string(),
        "--steps",
        "160",
        "--checkpoint-every",
        "2",
        "--batch",
        "2",
        "--lr",
        "5e-2",
        "--lambda-init",
        "0.5",
        "--sink",
        "2",
        "--window",
        "6",
        "--max-valid",
        "2",
        "--standardize-samples",
        "4",
        "--seed",
        "3",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn train_router(args: &[String]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_train_router"));
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    cmd
}

fn run_ok(args: &[String], what: &str) {
    let out = train_router(args).output().unwrap();
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn manifest(out: &Path) -> serde_json::Value {
    let path = out.with_extension("manifest.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every JSON file of a folder parses, every line of every JSON-lines file parses, and no
/// temporary file of an atomic write is left as if it were the real one.
fn assert_whole_files(dir: &Path, run: usize) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            assert_whole_files(&path, run);
        } else if name.ends_with(".json") {
            let text = std::fs::read_to_string(&path).unwrap();
            serde_json::from_str::<serde_json::Value>(&text)
                .unwrap_or_else(|e| panic!("kill {run}: {} is half-written: {e}", path.display()));
        } else if name.ends_with(".jsonl") {
            for (i, line) in std::fs::read_to_string(&path).unwrap().lines().enumerate() {
                serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| {
                    panic!(
                        "kill {run}: {} line {} is half-written: {e}",
                        path.display(),
                        i + 1
                    )
                });
            }
        }
    }
}

#[test]
fn killed_runs_resume_from_their_newest_checkpoint() {
    let root = std::env::temp_dir().join(format!("flux-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_split(&data.join("train.bin.gz"), &samples(40, 1)).unwrap();
    write_split(&data.join("valid.bin.gz"), &samples(4, 2)).unwrap();
    let model = model_in(&root);

    // The uninterrupted run, and how long it takes.
    let reference = root.join("reference.safetensors");
    let mut args = flags(&model, &data, &reference);
    args.extend([
        "--run-dir".into(),
        root.join("run-reference").display().to_string(),
    ]);
    let start = Instant::now();
    run_ok(&args, "uninterrupted run");
    let full = start.elapsed();
    let want = manifest(&reference);
    assert_whole_safetensors(&reference);

    let mut rng = StdRng::seed_from_u64(14);
    let mut resumed_from_a_checkpoint = 0;
    for run in 0..KILLS {
        let dir = root.join(format!("run-{run}"));
        let out = root.join(format!("routers-{run}.safetensors"));
        let mut args = flags(&model, &data, &out);
        args.extend(["--run-dir".into(), dir.display().to_string()]);
        let mut child = train_router(&args).spawn().unwrap();
        let at = full.mul_f64(rng.random_range(0.15..0.9));
        std::thread::sleep(at);
        // SIGKILL on unix: no handler runs, whatever was being written stays as it is.
        let _ = child.kill();
        let _ = child.wait();
        if dir.exists() {
            assert_whole_files(&dir, run);
        }
        if out.exists() {
            manifest(&out);
            assert_whole_safetensors(&out);
        }

        let checkpoint = latest_complete_epoch(&dir.join("checkpoint"), CHECKPOINT_EXTENSION);
        let final_out = root.join(format!("final-{run}.safetensors"));
        let mut finish = flags(&model, &data, &final_out);
        if checkpoint.is_some() {
            resumed_from_a_checkpoint += 1;
            // The newest checkpoint exports on its own, then the run resumes from it.
            let export = root.join(format!("export-{run}.safetensors"));
            run_ok(
                &[
                    "--model".into(),
                    model.display().to_string(),
                    "--out".into(),
                    export.display().to_string(),
                    "--resume".into(),
                    dir.display().to_string(),
                    "--export".into(),
                ],
                &format!("kill {run} at {at:?}: export of checkpoint {checkpoint:?}"),
            );
            assert_whole_safetensors(&export);
            // Only the paths: the run's settings come from its run.json.
            finish = [
                "--model",
                &model.display().to_string(),
                "--data",
                &data.display().to_string(),
                "--out",
                &final_out.display().to_string(),
                "--quiet",
                "--resume",
                &dir.display().to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
        } else {
            // Killed before its first checkpoint: nothing to resume, a fresh run in a new folder.
            finish.extend([
                "--run-dir".into(),
                root.join(format!("run-{run}-again")).display().to_string(),
            ]);
        }
        run_ok(&finish, &format!("kill {run} at {at:?}: finishing the run"));
        let got = manifest(&final_out);
        assert_eq!(got["completed"], true, "kill {run}: {got}");
        assert_eq!(got["steps_done"], want["steps_done"], "kill {run}");
        assert_eq!(
            got["resumed_from_checkpoint_interval"].as_u64().unwrap() as usize,
            checkpoint.unwrap_or(0),
            "kill {run}: resumed from another checkpoint than the newest complete one"
        );
        assert_whole_safetensors(&final_out);
        // The finished run ends where the uninterrupted one did (same seed, other process).
        for key in ["final_validation", "final_multipliers"] {
            assert!(!want[key].is_null(), "the manifest has no {key}");
            close_json(
                &got[key],
                &want[key],
                &format!("kill {run} at {at:?}: {key}"),
            );
        }
    }
    // A setting given with --resume that differs from the run's is refused, not adopted.
    let mut other_seed = flags(&model, &data, &root.join("other.safetensors"));
    let seed_at = other_seed.iter().position(|a| a == "--seed").unwrap() + 1;
    other_seed[seed_at] = "4".into();
    other_seed.extend([
        "--resume".into(),
        root.join("run-reference").display().to_string(),
    ]);
    let out = train_router(&other_seed).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the run was started with other settings"),
        "{err}"
    );
    assert!(
        resumed_from_a_checkpoint >= KILLS / 2,
        "only {resumed_from_a_checkpoint} of {KILLS} kills came after a checkpoint: the test proves little"
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// A router file parses whole (header and every tensor's bytes).
fn assert_whole_safetensors(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap_or_else(|e| panic!("{} is not whole: {e}", path.display()));
    assert!(!tensors.is_empty(), "{} holds no tensor", path.display());
}

/// Numbers within 1e-4 (relative), everything else equal; timings are skipped.
fn close_json(got: &serde_json::Value, want: &serde_json::Value, what: &str) {
    use serde_json::Value;
    match (got, want) {
        (Value::Number(a), Value::Number(b)) => {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                "{what}: {a} against {b} uninterrupted"
            );
        }
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                if k != "elapsed_s" && k != "tokens_per_second" {
                    close_json(&a[k], v, &format!("{what}.{k}"));
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{what}");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                close_json(x, y, &format!("{what}[{i}]"));
            }
        }
        (a, b) => assert_eq!(a, b, "{what}"),
    }
}
