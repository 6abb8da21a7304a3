//! The `eval` program end to end on the real SmolLM2 (ndarray): a built-in suite is written
//! deterministically, then one of its tasks runs under two plans and the outputs appear.

use std::path::PathBuf;
use std::process::Command;

mod common;
use common::{models_dir, smollm2};

/// Asserts that `out` is a success (its stderr otherwise).
fn assert_ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `dir/summary.json`.
fn read_summary(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

fn eval(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_eval"))
        .args(args)
        .output()
        .expect("eval runs")
}

#[test]
fn eval_writes_a_suite_then_results_and_tables() {
    let model = smollm2();
    let model = model.as_str();
    let dir = std::env::temp_dir().join(format!("flux-eval-program-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let suite = dir.join("vt.jsonl");
    let suite_s = suite.to_str().unwrap();
    let make = |out: &str| {
        eval(&[
            "--make-suite",
            "vt",
            "--model",
            model,
            "--lengths",
            "700",
            "--samples",
            "2",
            "--seed",
            "3",
            "--out",
            out,
        ])
    };
    let out = make(suite_s);
    assert_ok(&out);
    let again = dir.join("again.jsonl");
    assert!(make(again.to_str().unwrap()).status.success());
    assert_eq!(
        std::fs::read(&suite).unwrap(),
        std::fs::read(&again).unwrap(),
        "the same seed writes the same bytes"
    );
    // And the bytes of earlier commits (since 2026-11-30's fill to within 10 % of the length):
    // a change to the generator that moves them must say so.
    use sha2::{Digest, Sha256};
    assert_eq!(
        format!("{:x}", Sha256::digest(std::fs::read(&suite).unwrap())),
        "5bc6de3aa48467146ba64fcbebddd56a7f4f64b8c62268d5f423d50aa1b1d993"
    );

    let results = dir.join("out");
    let out = eval(&[
        "--model",
        model,
        "--tasks",
        suite_s,
        "--samples",
        "1",
        "--plan",
        "all-full",
        "--plan",
        "all-sparse",
        "--sink",
        "4",
        "--window",
        "32",
        "--out",
        results.to_str().unwrap(),
    ]);
    assert_ok(&out);
    let samples = std::fs::read_to_string(results.join("samples.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = samples
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "one task under two plans");
    assert_eq!(lines[0]["plan"], "all-full");
    assert_eq!(lines[1]["layers"], "S".repeat(30));
    for l in &lines {
        let score = l["score"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&score));
    }
    let table = std::fs::read_to_string(results.join("summary.md")).unwrap();
    assert!(
        table.starts_with("| task | length | n | all-full | all-sparse |"),
        "{table}"
    );
    assert!(table.contains("| vt | 1024 | 1 |"), "{table}");
    let summary: serde_json::Value = read_summary(&results);
    assert_eq!(summary["rows"].as_array().unwrap().len(), 2);
    for plot in [
        "accuracy-vs-length.png",
        "accuracy-vs-sparsity.png",
        "speedup-vs-length.png",
    ] {
        let path = results.join(plot);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(path.to_str().unwrap()),
            "{plot} is not printed"
        );
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{}", path.display());
    }

    // A malformed line is named by its number; the run stops with exit code 1.
    let bad = dir.join("bad.jsonl");
    let first = std::fs::read_to_string(&suite)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    std::fs::write(&bad, format!("{first}\n{{not json\n")).unwrap();
    let out = eval(&[
        "--model",
        model,
        "--tasks",
        bad.to_str().unwrap(),
        "--out",
        results.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.jsonl:2:"), "{err}");

    // A prompt beyond the model's context is skipped and listed; the rest still runs.
    let mut long: serde_json::Value = serde_json::from_str(&first).unwrap();
    long["id"] = "too-long".into();
    long["context"] = "word ".repeat(9000).into();
    let with_long = dir.join("long.jsonl");
    std::fs::write(&with_long, format!("{first}\n{long}\n")).unwrap();
    let results = dir.join("out-long");
    let out = eval(&[
        "--model",
        model,
        "--tasks",
        with_long.to_str().unwrap(),
        "--plan",
        "all-full",
        "--out",
        results.to_str().unwrap(),
    ]);
    assert_ok(&out);
    let summary: serde_json::Value = read_summary(&results);
    let skipped = summary["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0].as_str().unwrap().contains("too-long"));
    let samples = std::fs::read_to_string(results.join("samples.jsonl")).unwrap();
    assert_eq!(samples.lines().count(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn baselines_follow_a_router_with_its_number_of_sparse_layers_and_a_calibrated_plan() {
    use flux_models::router_data::{write_split, RouterSample};
    use flux_router::TaskCategory;
    let model = smollm2();
    let model = model.as_str();
    let router = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../routers/smollm2-135m-instruct/routers.safetensors");
    let dir = std::env::temp_dir().join(format!("flux-eval-baselines-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let suite = dir.join("niah.jsonl");
    let out = eval(&[
        "--make-suite",
        "niah_single",
        "--model",
        model,
        "--lengths",
        "600",
        "--samples",
        "1",
        "--out",
        suite.to_str().unwrap(),
    ]);
    assert_ok(&out);
    // A calibration set of one short sample (ids inside SmolLM2's vocabulary).
    let calibration = dir.join("calibration");
    std::fs::create_dir_all(&calibration).unwrap();
    let ids: Vec<u32> = (0..48).map(|i| 100 + 37 * i).collect();
    let sample = RouterSample {
        ids,
        prompt_span: 1..40,
        answer: 40..48,
        category: TaskCategory::SingleDocQa,
        target: TaskCategory::SingleDocQa.default_target(),
        family: "test".into(),
    };
    write_split(&calibration.join("train.bin.gz"), &[sample]).unwrap();
    let results = dir.join("out");
    let out = eval(&[
        "--model",
        model,
        "--tasks",
        suite.to_str().unwrap(),
        "--router",
        router.to_str().unwrap(),
        "--baselines",
        "--calibration",
        calibration.to_str().unwrap(),
        "--calibration-samples",
        "1",
        "--out",
        results.to_str().unwrap(),
    ]);
    assert_ok(&out);
    let summary: serde_json::Value = read_summary(&results);
    let baseline = &summary["baselines"]["router:routers.safetensors"];
    // The router keeps 21 of 30 layers sparse for every prompt (its manifest).
    assert_eq!(baseline["sparse_layers"], 21);
    let plans: Vec<&str> = baseline["plans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(
        plans,
        ["first:21", "last:21", "fraction:0.700", "calibrated:21"]
    );
    let calibrated = baseline["calibrated_layers"].as_str().unwrap().to_string();
    assert_eq!(calibrated.len(), 30);
    assert_eq!(calibrated.matches('S').count(), 21);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(results.join("samples.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let layers_of = |plan: &str| {
        lines.iter().find(|l| l["plan"] == plan).unwrap()["layers"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(layers_of("calibrated:21"), calibrated);
    assert_eq!(
        layers_of("first:21"),
        format!("{}{}", "S".repeat(21), "F".repeat(9))
    );
    assert_eq!(
        layers_of("last:21"),
        format!("{}{}", "F".repeat(9), "S".repeat(21))
    );
    assert_eq!(layers_of("fraction:0.700").matches('S').count(), 21);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The short-math suite from the problem files of scripts/fetch-models.sh: every one of the 100
/// problems becomes a task whose gold answer is the number after `####` of its worked solution
/// (read here with a plain line search, not the library's TOML reader), in file order for seed
/// 0, shuffled but the same set for another seed.
#[test]
fn math_suite_asks_every_gsm_problem_with_its_gold_number() {
    let problems = models_dir().join("texts/gsm-symbolic-eng");
    assert!(
        problems.is_dir(),
        "{} is missing: run scripts/fetch-models.sh",
        problems.display()
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(&problems)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 100);
    let gold: Vec<String> = files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            let line = text.lines().find(|l| l.starts_with("#### ")).unwrap();
            line[5..].trim().replace(',', "")
        })
        .collect();
    let dir = std::env::temp_dir().join(format!("flux-eval-math-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let read = |seed: &str| -> Vec<serde_json::Value> {
        let out = dir.join(format!("math-{seed}.jsonl"));
        let run = eval(&[
            "--make-suite",
            "math_gsm",
            "--seed",
            seed,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_ok(&run);
        std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let tasks = read("0");
    assert_eq!(tasks.len(), 100);
    for (task, want) in tasks.iter().zip(&gold) {
        assert_eq!(task["answers"][0].as_str().unwrap(), want);
        assert_eq!(task["scoring"], "last_number");
        assert_eq!(task["task"], "math_gsm");
    }
    let first = std::fs::read_to_string(&files[0]).unwrap();
    let question = task_question_line(&first);
    assert!(tasks[0]["question"].as_str().unwrap().ends_with(&question));
    let shuffled = read("3");
    let ids = |t: &[serde_json::Value]| {
        let mut ids: Vec<String> = t
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect();
        let order = ids.clone();
        ids.sort();
        (order, ids)
    };
    let (order0, set0) = ids(&tasks);
    let (order3, set3) = ids(&shuffled);
    assert_eq!(set0, set3);
    assert_ne!(order0, order3);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The `question = "..."` value of a problem file (one line, as the package writes it).
fn task_question_line(toml: &str) -> String {
    let line = toml
        .lines()
        .find(|l| l.starts_with("question = \""))
        .unwrap();
    line["question = \"".len()..line.len() - 1].replace("\\\"", "\"")
}
