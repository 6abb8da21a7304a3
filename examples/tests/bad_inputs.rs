//! Every program against bad inputs (the table below): each ends with exit code 1 and a
//! one-line `PROGRAM: ...` error naming the file, tensor or argument at fault, or, for usage
//! errors, clap's message and exit code 2; never a panic or a backtrace.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::smollm2;

fn repo(relative: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
        .display()
        .to_string()
}

/// One bad invocation and what its error must say.
struct Case {
    program: &'static str,
    args: Vec<String>,
    code: i32,
    /// Substrings of the error line (case-sensitive).
    says: Vec<String>,
}

fn binary(program: &str) -> &'static str {
    match program {
        "generate" => env!("CARGO_BIN_EXE_generate"),
        "perplexity" => env!("CARGO_BIN_EXE_perplexity"),
        "convert" => env!("CARGO_BIN_EXE_convert"),
        "eval" => env!("CARGO_BIN_EXE_eval"),
        "make_router_data" => env!("CARGO_BIN_EXE_make_router_data"),
        "train_router" => env!("CARGO_BIN_EXE_train_router"),
        "router_report" => env!("CARGO_BIN_EXE_router_report"),
        other => panic!("no program {other}"),
    }
}

fn case(program: &'static str, args: &[&str], code: i32, says: &[&str]) -> Case {
    Case {
        program,
        args: args.iter().map(|s| s.to_string()).collect(),
        code,
        says: says.iter().map(|s| s.to_string()).collect(),
    }
}

/// Files to be bad with, in a fresh folder.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("flux-bad-inputs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let gguf = std::fs::read(smollm2()).unwrap();
        std::fs::write(dir.join("empty.gguf"), b"").unwrap();
        std::fs::write(dir.join("truncated.gguf"), &gguf[..4096]).unwrap();
        let mut magic = gguf[..4096].to_vec();
        magic[..4].copy_from_slice(b"GGUX");
        std::fs::write(dir.join("magic.gguf"), magic).unwrap();
        std::fs::write(dir.join("q2k.gguf"), with_first_tensor_as_q2_k(&gguf)).unwrap();
        std::fs::write(dir.join("notes.txt"), "plain text, not a model\n").unwrap();
        std::fs::write(dir.join("bad.jsonl"), "{\"id\": \"a\"\n").unwrap();
        // A model folder whose config does not match its tensors.
        let tiny = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../flux-models/tests/fixtures/tiny-models/tiny-llama3");
        let shape = dir.join("shape");
        std::fs::create_dir_all(&shape).unwrap();
        for f in ["model.safetensors", "generation_config.json"] {
            std::fs::copy(tiny.join(f), shape.join(f)).unwrap();
        }
        let config = std::fs::read_to_string(tiny.join("config.json")).unwrap();
        let mut config: serde_json::Value = serde_json::from_str(&config).unwrap();
        let wide = config["intermediate_size"].as_u64().unwrap() + 8;
        config["intermediate_size"] = wide.into();
        std::fs::write(shape.join("config.json"), config.to_string()).unwrap();
        Files { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// `gguf` with its first quantised tensor's type set to Q2_K (id 10; flux reads the type but
/// does not dequantise it). Its bytes shrink (84 bytes per 256 values against Q4_1's 24 per 32),
/// so they stay inside the data section; the loader must refuse the tensor by name.
fn with_first_tensor_as_q2_k(gguf: &[u8]) -> Vec<u8> {
    let mut out = gguf.to_vec();
    let mut at = 8; // magic, version
    let read_u64 = |b: &[u8], at: &mut usize| {
        let v = u64::from_le_bytes(b[*at..*at + 8].try_into().unwrap());
        *at += 8;
        v
    };
    let read_u32 = |b: &[u8], at: &mut usize| {
        let v = u32::from_le_bytes(b[*at..*at + 4].try_into().unwrap());
        *at += 4;
        v
    };
    let tensors = read_u64(gguf, &mut at);
    let kvs = read_u64(gguf, &mut at);
    // Fixed sizes of GGUF value types 0..=12 (8 = string, 9 = array: variable).
    let size_of = |t: u32| [1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8][t as usize];
    fn skip_value(b: &[u8], at: &mut usize, t: u32, size_of: &dyn Fn(u32) -> usize) {
        let u64_at = |at: &mut usize| {
            let v = u64::from_le_bytes(b[*at..*at + 8].try_into().unwrap());
            *at += 8;
            v as usize
        };
        match t {
            8 => {
                let n = u64_at(at);
                *at += n;
            }
            9 => {
                let inner = u32::from_le_bytes(b[*at..*at + 4].try_into().unwrap());
                *at += 4;
                let n = u64_at(at);
                for _ in 0..n {
                    skip_value(b, at, inner, size_of);
                }
            }
            t => *at += size_of(t),
        }
    }
    for _ in 0..kvs {
        skip_value(gguf, &mut at, 8, &size_of); // the key
        let t = read_u32(gguf, &mut at);
        skip_value(gguf, &mut at, t, &size_of);
    }
    for _ in 0..tensors {
        skip_value(gguf, &mut at, 8, &size_of); // the name
        let dims = read_u32(gguf, &mut at);
        at += 8 * dims as usize;
        let type_at = at;
        let t = read_u32(gguf, &mut at);
        at += 8; // offset
        if t == 3 {
            out[type_at..type_at + 4].copy_from_slice(&10u32.to_le_bytes());
            return out;
        }
    }
    panic!("no Q4_1 tensor in the SmolLM2 GGUF");
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn every_bad_input_is_one_line_naming_what_is_wrong() {
    let f = Files::new();
    let smol = smollm2();
    let missing = f.path("missing.gguf");
    let dir = f.dir.display().to_string();
    let (empty, truncated, magic) = (
        f.path("empty.gguf"),
        f.path("truncated.gguf"),
        f.path("magic.gguf"),
    );
    let notes = f.path("notes.txt");
    let q2k = f.path("q2k.gguf");
    let shape = f.path("shape");
    let qwen_routers = repo("routers/qwen2.5-coder-0.5b-instruct/routers.safetensors");
    let long_prompt = "whale ".repeat(9000);
    let out = f.path("out");
    let cases = [
        // Model files.
        case(
            "generate",
            &["--model", &missing, "--prompt", "hi"],
            1,
            &[&missing],
        ),
        case("generate", &["--model", &dir, "--prompt", "hi"], 1, &[&dir]),
        case(
            "generate",
            &["--model", &empty, "--prompt", "hi"],
            1,
            &[&empty],
        ),
        case(
            "perplexity",
            &["--model", &truncated, "--file", &notes],
            1,
            &[&truncated],
        ),
        case(
            "generate",
            &["--model", &magic, "--prompt", "hi"],
            1,
            &[&magic, "magic"],
        ),
        case("convert", &["--gguf", &notes, "--out", &out], 1, &[&notes]),
        // A quantisation flux does not dequantise.
        case(
            "generate",
            &["--model", &q2k, "--prompt", "hi"],
            1,
            &[&q2k, "Q2_K"],
        ),
        case(
            "generate",
            &["--model", &shape, "--prompt", "hi"],
            1,
            &["mlp.gate_proj.weight", "shape"],
        ),
        // Router file for another model.
        case(
            "generate",
            &[
                "--model",
                &smol,
                "--prompt",
                "hi",
                "--router",
                &qwen_routers,
            ],
            1,
            &[&qwen_routers],
        ),
        case(
            "generate",
            &["--model", &smol, "--prompt", "hi", "--router", &notes],
            1,
            &[&notes],
        ),
        // Longer than the model's context (8192 for SmolLM2).
        case(
            "generate",
            &["--model", &smol, "--prompt", &long_prompt],
            1,
            &["context", "8192"],
        ),
        // Arguments out of range.
        case(
            "generate",
            &["--model", &smol, "--prompt", "hi", "--temperature=-1"],
            1,
            &["--temperature"],
        ),
        case(
            "generate",
            &["--model", &smol, "--prompt", "hi", "--max-new-tokens=-3"],
            2,
            &["--max-new-tokens"],
        ),
        case(
            "perplexity",
            &["--model", &smol, "--file", &notes, "--context", "0"],
            1,
            &["context"],
        ),
        case(
            "eval",
            &[
                "--make-suite",
                "vt",
                "--model",
                &smol,
                "--lengths",
                "0",
                "--out",
                &out,
            ],
            1,
            &["lengths", "512"],
        ),
        case(
            "eval",
            &[
                "--make-suite",
                "vt",
                "--model",
                &smol,
                "--samples",
                "0",
                "--out",
                &out,
            ],
            1,
            &["--samples"],
        ),
        case(
            "eval",
            &["--make-suite", "nope", "--model", &smol, "--out", &out],
            1,
            &["nope", "niah_single", "math_gsm"],
        ),
        case(
            "eval",
            &[
                "--model",
                &smol,
                "--tasks",
                &f.path("bad.jsonl"),
                "--out",
                &out,
            ],
            1,
            &["bad.jsonl:1"],
        ),
        case(
            "eval",
            &["--model", &smol, "--tasks", &missing, "--out", &out],
            1,
            &[&missing],
        ),
        case(
            "train_router",
            &[
                "--model", &smol, "--data", &dir, "--out", &out, "--steps", "0",
            ],
            1,
            &["steps"],
        ),
        case(
            "train_router",
            &["--model", &smol, "--data", &dir, "--out", &out],
            1,
            &[&dir],
        ),
        case(
            "make_router_data",
            &["--tokenizer", &smol, "--sotu", &missing, "--out", &out],
            1,
            &[&missing],
        ),
        case(
            "make_router_data",
            &[
                "--tokenizer",
                &smol,
                "--sotu",
                &dir,
                "--out",
                &out,
                "--lengths",
                "0",
            ],
            1,
            &["lengths"],
        ),
        case(
            "router_report",
            &["--model", &smol, "--data", &dir, "--router", &notes],
            1,
            &["valid.bin.gz"],
        ),
        // Unknown backend or dtype: usage errors.
        case(
            "generate",
            &["--model", &smol, "--prompt", "hi", "--backend", "tpu"],
            2,
            &["tpu"],
        ),
        case(
            "eval",
            &[
                "--model", &smol, "--tasks", &notes, "--out", &out, "--dtype", "fp8",
            ],
            2,
            &["fp8"],
        ),
        case(
            "generate",
            &["--model", &smol, "--prompt", "hi", "--dtype", "bf16"],
            1,
            &["bf16", "ndarray"],
        ),
    ];
    let mut failures = Vec::new();
    for c in &cases {
        let run = Command::new(binary(c.program))
            .args(&c.args)
            .env("RUST_BACKTRACE", "1")
            .output()
            .expect("the program starts");
        let stderr = String::from_utf8_lossy(&run.stderr);
        let shown: Vec<String> = c
            .args
            .iter()
            .map(|a| a.chars().take(60).collect())
            .collect();
        let what = format!("{} {}", c.program, shown.join(" "));
        let code = run.status.code();
        let error_line = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .to_string();
        let problem = if code != Some(c.code) {
            Some(format!("exit code {code:?}, expected {}", c.code))
        } else if stderr.contains("panicked") || stderr.contains("stack backtrace") {
            Some("panicked".into())
        } else if c.code == 1 && !error_line.starts_with(&format!("{}: ", c.program)) {
            Some("the last line is not the program's error".into())
        } else if c.code == 1
            && stderr
                .lines()
                .filter(|l| l.starts_with(&format!("{}: ", c.program)))
                .count()
                != 1
        {
            Some("not a one-line error".into())
        } else {
            let text = if c.code == 1 {
                error_line.clone()
            } else {
                stderr.to_string()
            };
            c.says
                .iter()
                .find(|s| !text.contains(s.as_str()))
                .map(|s| format!("does not say `{}`", s.chars().take(60).collect::<String>()))
        };
        if let Some(problem) = problem {
            failures.push(format!(
                "{what}\n    {problem}\n    stderr: {}",
                stderr.chars().take(600).collect::<String>()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
