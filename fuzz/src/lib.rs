//! The bodies of flux's fuzz targets: one function per file loader, taking the bytes of a file.
//!
//! Each is called by a libFuzzer binary (`fuzz_targets/<name>.rs`, `cargo +nightly fuzz run
//! <name> --features libfuzzer`) and by the stable replay test (`tests/replay.rs`, part of the
//! workspace tests), which runs every committed corpus file and a seeded mutation loop through
//! the same function. A target returns normally for any input the loader accepts or refuses with
//! an error; it panics (a finding) when the loader panics, or when an error is not one
//! non-empty line, or when an accepted file breaks a property the loader promises.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use burn::tensor::Tensor;
use flux_attention::AttentionMode;
use flux_models::eval::{last_number, read_tasks_from, score, MalformedLines};
use flux_models::gguf::dequant::{dequantize, is_supported};
use flux_models::gguf::{GgmlType, GgufFile};
use flux_models::tokenizer::{render_chat_template, ChatMessage};
use flux_models::weights::{config_from_gguf, GgufWeights, SafetensorsWeights, TensorSource};
use flux_models::{RopeScaling, Tokenizer, TransformerConfig};
use flux_router::{RouterMeta, RouterSet};

/// A target: its name (of `fuzz_targets/<name>.rs` and `corpus/<name>/`) and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: &[Target] = &[
    ("gguf", gguf),
    ("dequant", dequant),
    ("safetensors", safetensors),
    ("safetensors_index", safetensors_index),
    ("config", config),
    ("gguf_tokenizer", gguf_tokenizer),
    ("chat_template", chat_template),
    ("router", router),
    ("task_file", task_file),
];

/// Separates the files of one `safetensors_index` input: the index, then the shards.
pub const FILE_SEPARATOR: &[u8] = b"\n#flux-fuzz-next-file#\n";

/// An error must be one non-empty line (it names the file and what is wrong with it).
fn check_error(e: &dyn std::fmt::Display) {
    let message = e.to_string();
    assert!(!message.trim().is_empty(), "empty error message");
    assert!(
        !message.contains('\n'),
        "error message of several lines: {message:?}"
    );
}

/// Reads every tensor of a GGUF file (dequantised where the type is supported).
fn read_gguf_tensors(file: &GgufFile) {
    for t in file.tensors() {
        match file.tensor_data(&t.name) {
            Ok((info, bytes)) => assert_eq!(
                Some(bytes.len() as u64),
                info.ggml_type.bytes_for(info.n_elements())
            ),
            Err(e) => check_error(&e),
        }
        match file.tensor_f32(&t.name) {
            Ok((shape, values)) => {
                assert!(is_supported(t.ggml_type));
                assert_eq!(shape.iter().product::<usize>(), values.len());
            }
            Err(e) => check_error(&e),
        }
    }
}

/// The GGUF reader: header, metadata, tensor table, every tensor's data, and the model config
/// and HF-named tensors (`GgufWeights`) read from it.
pub fn gguf(data: &[u8]) {
    let file = match GgufFile::from_bytes(Path::new("fuzz.gguf"), data.to_vec()) {
        Ok(f) => f,
        Err(e) => return check_error(&e),
    };
    for key in file.metadata().keys() {
        let _ = file.get_str(key).map_err(|e| check_error(&e));
        let _ = file.get_u64(key).map_err(|e| check_error(&e));
        let _ = file.get_f64(key).map_err(|e| check_error(&e));
    }
    read_gguf_tensors(&file);
    match config_from_gguf(&file) {
        Ok(c) => c.validate(Path::new("fuzz.gguf")).unwrap(),
        Err(e) => check_error(&e),
    }
    match GgufWeights::from_file(file) {
        Ok(w) => {
            for name in w.names() {
                match w.read(&name) {
                    Ok(Some(t)) => assert_eq!(t.shape.iter().product::<usize>(), t.data.len()),
                    Ok(None) => panic!("`{name}` is listed but not read"),
                    Err(e) => check_error(&e),
                }
            }
        }
        Err(e) => check_error(&e),
    }
}

/// The dequantisers, through their public entry point: byte 0 picks the type, byte 1 how the
/// element count relates to the data (exact, off by one, or taken from the input), the rest is
/// the tensor data.
pub fn dequant(data: &[u8]) {
    use GgmlType::*;
    const TYPES: [GgmlType; 14] = [
        F32,
        F16,
        BF16,
        Q4_0,
        Q4_1,
        Q5_0,
        Q5_1,
        Q8_0,
        Q4_K,
        Q5_K,
        Q6_K,
        Q2_K,
        IQ4_XS,
        Other(200),
    ];
    let [sel, mode, rest @ ..] = data else {
        return;
    };
    let ty = TYPES[*sel as usize % TYPES.len()];
    let whole = match (ty.block_size(), ty.type_size()) {
        (Some(bs), Some(ts)) => rest.len() as u64 / ts * bs,
        _ => rest.len() as u64,
    };
    let n = match mode % 4 {
        0 => whole,
        1 => whole + 1,
        2 => whole.saturating_sub(1),
        _ => rest
            .get(..8)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap())),
    };
    let fits = ty.bytes_for(n) == Some(rest.len() as u64);
    match dequantize(Path::new("fuzz.gguf"), "t", ty, rest, n) {
        Ok(values) => {
            assert!(is_supported(ty) && fits);
            assert_eq!(values.len() as u64, n);
        }
        Err(e) => {
            assert!(
                !(is_supported(ty) && fits),
                "refused a well-sized {ty} tensor: {e}"
            );
            check_error(&e);
        }
    }
}

/// A per-process scratch folder for the targets that need files on disk, emptied (in memory,
/// under /dev/shm, where there is one: a disk folder costs most of the time of a run).
fn scratch(name: &str) -> PathBuf {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("flux-fuzz-{}-{name}", std::process::id()));
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Err(_) => std::fs::create_dir_all(&dir).expect("create the scratch folder"),
    }
    dir
}

/// Opens `path` as safetensors weights and reads every tensor.
fn read_safetensors(path: &Path) {
    let weights = match SafetensorsWeights::open(path) {
        Ok(w) => w,
        Err(e) => return check_error(&e),
    };
    for name in weights.names() {
        assert!(weights.file_of(&name).is_some());
        match weights.read(&name) {
            Ok(Some(t)) => assert_eq!(t.shape.iter().product::<usize>(), t.data.len()),
            Ok(None) => panic!("`{name}` is listed but not read"),
            Err(e) => check_error(&e),
        }
    }
}

/// The safetensors loader on one file.
pub fn safetensors(data: &[u8]) {
    let dir = scratch("safetensors");
    let path = dir.join("model.safetensors");
    std::fs::write(&path, data).expect("write the input");
    read_safetensors(&path);
}

/// The safetensors loader on a sharded folder: the input is `model.safetensors.index.json`,
/// then the shards `model-0000k-of-0000n.safetensors`, separated by [`FILE_SEPARATOR`].
pub fn safetensors_index(data: &[u8]) {
    let dir = scratch("safetensors_index");
    let parts = split(data, FILE_SEPARATOR);
    let n = parts.len() - 1;
    std::fs::write(dir.join("model.safetensors.index.json"), parts[0]).expect("write the index");
    for (k, shard) in parts[1..].iter().enumerate() {
        let name = format!("model-{:05}-of-{n:05}.safetensors", k + 1);
        std::fs::write(dir.join(name), shard).expect("write a shard");
    }
    read_safetensors(&dir);
}

fn split<'a>(data: &'a [u8], sep: &[u8]) -> Vec<&'a [u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(sep.len()).position(|w| w == sep) {
        parts.push(&rest[..at]);
        rest = &rest[at + sep.len()..];
    }
    parts.push(rest);
    parts
}

/// `config.json` parsing; an accepted config written back as HF JSON reads back the same.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("config.json");
    match TransformerConfig::from_json_str(text, path) {
        Ok(c) => {
            let mut again = TransformerConfig::from_json_str(&c.to_hf_json().to_string(), path)
                .expect("an accepted config, written back, reads back");
            // serde_json's default float parsing may be 1 ulp off (1e-45 reads as
            // 1.0000000000000001e-45): floats must agree to 1e-12 relative, the rest exactly.
            for (a, b) in floats_mut(&mut again).into_iter().zip(floats(&c)) {
                assert!(
                    *a == b || (*a - b).abs() <= 1e-12 * a.abs().max(b.abs()),
                    "{a} read back as {b}"
                );
                *a = b;
            }
            assert_eq!(c, again);
        }
        Err(e) => check_error(&e),
    }
}

fn floats(c: &TransformerConfig) -> Vec<f64> {
    let mut c = c.clone();
    floats_mut(&mut c).into_iter().map(|x| *x).collect()
}

fn floats_mut(c: &mut TransformerConfig) -> Vec<&mut f64> {
    let mut out = vec![&mut c.rms_norm_eps, &mut c.rope_theta];
    match &mut c.rope_scaling {
        RopeScaling::None => {}
        RopeScaling::Linear { factor } => out.push(factor),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => out.extend([
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        ]),
    }
    out
}

fn messages(extra: &str) -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", "You are terse."),
        ChatMessage::new("user", "Hello <|im_end|> {{ x }} \u{fffd}"),
        ChatMessage::new("assistant", "Hi."),
        ChatMessage::new("user", extra),
    ]
}

/// The tokenizer built from GGUF metadata: build it, encode, decode, render its chat template.
pub fn gguf_tokenizer(data: &[u8]) {
    let file = match GgufFile::from_bytes(Path::new("fuzz.gguf"), data.to_vec()) {
        Ok(f) => f,
        Err(e) => return check_error(&e),
    };
    let tok = match Tokenizer::from_gguf(&file) {
        Ok(t) => t,
        Err(e) => return check_error(&e),
    };
    let text = "Hello world, 1234 <|im_end|>\n\u{e9}\u{4e2d} \u{1f600}";
    for special in [false, true] {
        match tok.encode(text, special) {
            Ok(ids) => {
                let _ = tok.decode(&ids, false).map_err(|e| check_error(&e));
                let _ = tok.decode(&ids, true).map_err(|e| check_error(&e));
                for &id in ids.iter().take(8) {
                    let _ = tok.token_text(id);
                }
            }
            Err(e) => check_error(&e),
        }
    }
    let mut stream = tok.stream_decoder();
    for id in 0..tok.vocab_size().min(16) as u32 {
        let _ = stream.push(id);
    }
    if tok.chat_template().is_some() {
        let _ = tok.apply_chat_template(&messages("Bye."), true);
    }
    let _ = tok.to_tokenizer_json().map_err(|e| check_error(&e));
}

/// The chat template renderer: the input up to the first NUL is the template, the rest the
/// last user message.
pub fn chat_template(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (template, extra) = text.split_once('\0').unwrap_or((&text, "Bye."));
    for add_generation_prompt in [false, true] {
        match render_chat_template(
            template,
            &messages(extra),
            add_generation_prompt,
            "<s>",
            "</s>",
        ) {
            Ok(_) => {}
            Err(e) => check_error(&e),
        }
    }
}

/// The model the router inputs are loaded for (the seeds are routers of this shape).
pub fn router_model() -> RouterMeta {
    RouterMeta {
        architecture: "LlamaForCausalLM".into(),
        num_layers: 2,
        num_heads: 2,
        head_dim: 4,
        pool_tokens: 2,
        sparse_mode: AttentionMode::default(),
    }
}

/// Router files (flux-router's safetensors with metadata): metadata, load for a model, and one
/// forward pass of each loaded router.
pub fn router(data: &[u8]) {
    let path = Path::new("routers.safetensors");
    if let Err(e) = RouterSet::<NdArray>::meta_from_bytes(data, path) {
        check_error(&e);
    }
    let device = Default::default();
    let model = router_model();
    match RouterSet::<NdArray>::from_bytes(data, path, &model, &device) {
        Ok((set, meta)) => {
            assert_eq!(set.num_layers(), model.num_layers);
            assert_eq!(meta.head_dim, model.head_dim);
            for r in &set.routers {
                let q =
                    Tensor::<NdArray, 4>::ones([1, model.num_heads, 5, model.head_dim], &device);
                let logits = r.forward(q, None).expect("forward of a loaded router");
                assert_eq!(logits.dims(), [1, 2]);
            }
        }
        Err(e) => check_error(&e),
    }
}

/// The eval task-file (JSONL) reader, rejecting and skipping malformed lines, and the scoring
/// of an output against each task read.
pub fn task_file(data: &[u8]) {
    let path = Path::new("tasks.jsonl");
    for malformed in [MalformedLines::Reject, MalformedLines::Skip] {
        match read_tasks_from(Cursor::new(data), path, malformed) {
            Ok(file) => {
                assert!(!file.tasks.is_empty());
                for t in &file.tasks {
                    let prompt = t.prompt();
                    let s = score(t.scoring, &prompt, &t.answers);
                    assert!((0.0..=1.0).contains(&s), "score {s} out of [0, 1]");
                    let _ = last_number(&t.question);
                }
                for (line, why) in &file.skipped {
                    assert!(*line >= 1);
                    check_error(why);
                }
            }
            Err(e) => check_error(&e),
        }
    }
}
