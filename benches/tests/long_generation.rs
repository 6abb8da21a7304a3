//! The long-generation check on ndarray, small: hundreds of decode steps past a 16-token window
//! with eviction on, for tiny random Llama-3 and Qwen3 models, each step's logits finite and the
//! last step's equal (f32) to a fresh prefill of the same tokens.

use std::process::Command;

fn run(config: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_long_generation"))
        .args([
            "--config",
            &format!(
                "{}/../flux-models/tests/fixtures/tiny-models/{config}/config.json",
                env!("CARGO_MANIFEST_DIR")
            ),
            "--random-weights",
            "--prompt-tokens",
            "40",
            "--decode-tokens",
            "300",
            "--sink",
            "4",
            "--window",
            "16",
            "--evict-kv",
            "--plans",
            "all-full,all-sparse,first:1",
            "--tolerance",
            "1e-4",
            "--dtype",
            "f32",
        ])
        .output()
        .expect("long_generation runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{config}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn decode_with_eviction_matches_a_fresh_prefill() {
    for config in ["tiny-llama3", "tiny-qwen3"] {
        let out = run(config);
        assert!(out.contains("every step finite"), "{out}");
        assert_eq!(out.matches("same argmax: true").count(), 3, "{out}");
    }
}

#[test]
fn refuses_more_positions_than_the_context() {
    let out = Command::new(env!("CARGO_BIN_EXE_long_generation"))
        .args([
            "--config",
            &format!(
                "{}/../flux-models/tests/fixtures/tiny-models/tiny-llama3/config.json",
                env!("CARGO_MANIFEST_DIR")
            ),
            "--random-weights",
            "--prompt-tokens",
            "10",
            "--decode-tokens",
            "100000000",
        ])
        .output()
        .expect("long_generation runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("max_position_embeddings"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
