//! The HF normalizer / pre-tokenizer that goes with a GGUF `tokenizer.ggml.pre` name.
//!
//! llama.cpp names the pre-tokenizer of a byte-level BPE vocabulary (src/llama-vocab.cpp,
//! `LLAMA_VOCAB_PRE_TYPE_*`) and hard-codes its split regexes; the original `tokenizer.json`
//! files state the same splits as `Split` / `Digits` / `ByteLevel` pre-tokenizers. BPE only merges
//! within a chunk, so a wrong split gives different ids.

use serde_json::{json, Value};

/// Llama 3 (digits in runs of up to three).
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2 / Qwen2.5 / Qwen3 (single digits).
const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen3.5 (letters with combining marks).
const QWEN35: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Mistral's tekken.
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GPT-4o / Llama 4 (o200k).
const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// DeepSeek-V3 / R1: three splits in a row.
const DEEPSEEK3: [&str; 3] = [
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
];
/// DeepSeek-Coder: five splits in a row.
const DEEPSEEK_CODER: [&str; 5] = [
    r"[\r\n]",
    r"\s?\p{L}+",
    r"\s?\p{P}+",
    r"[一-龥ࠀ-一가-퟿]+",
    r"\p{N}",
];

/// What a `tokenizer.ggml.pre` name stands for.
pub(super) struct PreTokenization {
    /// HF `normalizer` (JSON null for none).
    pub normalizer: Value,
    /// HF `pre_tokenizer`.
    pub pre_tokenizer: Value,
    /// BPE `ignore_merges`: a chunk that is a whole vocabulary entry is taken as is.
    pub ignore_merges: bool,
    /// Whether llama.cpp adds BOS when the file has no `tokenizer.ggml.add_bos_token`.
    pub add_bos_default: bool,
    /// Set when the name is unknown and GPT-2's split stands in for it.
    pub warning: Option<String>,
}

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split(pattern: &str) -> Value {
    json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false})
}

/// `Split`s in order, then the byte-level mapping without GPT-2's regex.
fn splits(patterns: &[&str]) -> Value {
    let mut list: Vec<Value> = patterns.iter().map(|p| split(p)).collect();
    list.push(byte_level(false));
    json!({"type": "Sequence", "pretokenizers": list})
}

/// The normalizer and pre-tokenizer for llama.cpp's pre-tokenizer name `pre`, as the original
/// HF tokenizer.json files of those models have them.
pub(super) fn for_name(pre: &str) -> PreTokenization {
    let plain = |pre_tokenizer: Value| PreTokenization {
        normalizer: Value::Null,
        pre_tokenizer,
        ignore_merges: false,
        add_bos_default: false,
        warning: None,
    };
    let nfc = |pattern: &str| PreTokenization {
        normalizer: json!({"type": "NFC"}),
        ..plain(splits(&[pattern]))
    };
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2"
        | "jina-v5-nano" => PreTokenization {
            ignore_merges: true,
            add_bos_default: true,
            ..plain(splits(&[LLAMA3]))
        },
        "dbrx" | "smaug-bpe" | "glm4" | "chatglm-bpe" => plain(splits(&[LLAMA3])),
        // Qwen's tokenizer.json files normalise to NFC before splitting (llama.cpp does not).
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => nfc(QWEN2),
        "qwen35" => nfc(QWEN35),
        "stablelm2" | "hunyuan" => plain(splits(&[QWEN2])),
        "tekken" => PreTokenization {
            ignore_merges: true,
            add_bos_default: true,
            ..plain(splits(&[TEKKEN]))
        },
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => plain(splits(&[GPT4O])),
        "deepseek-v3" => plain(splits(&DEEPSEEK3)),
        "deepseek-coder" => plain(splits(&DEEPSEEK_CODER)),
        // Individual digits, then GPT-2's regex (SmolLM's and StarCoder's tokenizer.json).
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => plain(json!({
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]
        })),
        "gpt-2" | "gpt2" | "phi-2" | "jina-es" | "jina-de" | "jina-v2-es" | "jina-v2-de" | "jina-v1-en"
        | "jina-v2-code" | "roberta-bpe" | "gigachat" | "a.x-4.0" | "mellum" | "modern-bert" | "mpt" | "olmo"
        | "jais" | "exaone4" | "trillion" | "granite-docling" => plain(byte_level(true)),
        other => PreTokenization {
            warning: Some(format!(
                "`tokenizer.ggml.pre` = `{other}` is not a known pre-tokenizer; using GPT-2's split, \
                 which may tokenize differently from the original tokenizer"
            )),
            ..plain(byte_level(true))
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_compiles() {
        for pre in [
            "llama-bpe",
            "dbrx",
            "qwen2",
            "qwen35",
            "stablelm2",
            "tekken",
            "gpt-4o",
            "deepseek-v3",
            "deepseek-coder",
            "smollm",
            "gpt-2",
            "something-new",
        ] {
            let p = for_name(pre);
            let json = json!({
                "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
                "normalizer": p.normalizer, "pre_tokenizer": p.pre_tokenizer, "post_processor": null,
                "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
                "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
            });
            let tok: std::result::Result<tokenizers::Tokenizer, _> = json.to_string().parse();
            assert!(tok.is_ok(), "{pre}: {:?}", tok.err());
            assert_eq!(p.warning.is_some(), pre == "something-new");
        }
    }
}
