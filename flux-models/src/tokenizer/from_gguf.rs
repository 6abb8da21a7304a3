//! A HF `tokenizer.json` built from GGUF metadata (`tokenizer.ggml.*`), for byte-level BPE
//! vocabularies (`tokenizer.ggml.model = "gpt2"`: Llama 3, SmolLM2, Qwen, Mistral tekken, ...).
//! SentencePiece vocabularies (`"llama"`) are refused with a clear error.

use std::collections::HashSet;
use std::path::Path;

use serde_json::{json, Map, Value};

use super::{pre_tokenizer, SpecialToken, Tokenizer};
use crate::error::{ModelError, Result};
use crate::gguf::{GgufFile, GgufValue};

/// GGUF token types (llama.cpp `llama_token_type`).
const TOKEN_TYPE_NORMAL: i64 = 1;
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Token texts llama.cpp treats as end of generation when they are in the vocabulary
/// (`llama_vocab::impl::load`), besides the ids the file names.
const END_OF_GENERATION: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "<|end_of_text|>",
];

fn tokenizer_err(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::Tokenizer {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The string array under `key`; errors name the key (and the element at fault).
fn strings<'a>(file: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    let path = file.path();
    let value = file
        .get(key)
        .ok_or_else(|| tokenizer_err(path, format!("metadata key `{key}` is missing")))?;
    let array = value.as_array().ok_or_else(|| {
        tokenizer_err(
            path,
            format!(
                "metadata key `{key}` is a {}, expected an array of strings",
                value.type_name()
            ),
        )
    })?;
    array
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str().ok_or_else(|| {
                tokenizer_err(
                    path,
                    format!("`{key}`[{i}] is a {}, expected a string", v.type_name()),
                )
            })
        })
        .collect()
}

/// GPT-2's byte <-> printable character table (`bytes_to_unicode`).
fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let printable =
            (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        let code = if printable {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(code).unwrap_or('\0');
    }
    table
}

pub(super) fn from_gguf(file: &GgufFile) -> Result<Tokenizer> {
    let path = file.path();
    let model_key = "tokenizer.ggml.model";
    let model = match file.get(model_key) {
        None => {
            return Err(tokenizer_err(
                path,
                format!("metadata key `{model_key}` is missing"),
            ))
        }
        Some(v) => v.as_str().ok_or_else(|| {
            tokenizer_err(
                path,
                format!(
                    "metadata key `{model_key}` is a {}, expected a string",
                    v.type_name()
                ),
            )
        })?,
    };
    match model {
        "gpt2" => byte_level_bpe(file),
        "llama" => Err(tokenizer_err(
            path,
            "`tokenizer.ggml.model` = `llama` (SentencePiece) is not supported; only byte-level BPE \
             (`gpt2`) vocabularies can be built from GGUF metadata. Use the model's HF folder \
             (tokenizer.json) instead",
        )),
        other => Err(tokenizer_err(
            path,
            format!("`tokenizer.ggml.model` = `{other}` is not supported (only byte-level BPE, `gpt2`)"),
        )),
    }
}

fn byte_level_bpe(file: &GgufFile) -> Result<Tokenizer> {
    let path = file.path();
    let mut warnings = Vec::new();
    let tokens = strings(file, "tokenizer.ggml.tokens")?;
    if tokens.is_empty() {
        return Err(tokenizer_err(
            path,
            "metadata key `tokenizer.ggml.tokens` is an empty array",
        ));
    }
    let merges = strings(file, "tokenizer.ggml.merges")?;
    let types: Vec<i64> = match file
        .get("tokenizer.ggml.token_type")
        .and_then(GgufValue::as_array)
    {
        Some(a) => a
            .iter()
            .map(|v| v.as_i64().unwrap_or(TOKEN_TYPE_NORMAL))
            .collect(),
        None => Vec::new(),
    };
    let type_of = |id: usize| types.get(id).copied().unwrap_or(TOKEN_TYPE_NORMAL);
    let pre_key = "tokenizer.ggml.pre";
    let pre = file
        .get(pre_key)
        .and_then(GgufValue::as_str)
        .unwrap_or("default");
    let pre = pre_tokenizer::for_name(pre);
    warnings.extend(pre.warning.clone());

    // Vocabulary in GPT-2's byte-level spelling, which the merges use. llama.cpp writes control
    // and user-defined tokens as plain text (they become added tokens, matched before BPE); a
    // normal token outside the byte-level alphabet is respelled from its UTF-8 bytes (as
    // transformers does), unless that spelling is taken.
    let table = byte_chars();
    let alphabet: HashSet<char> = table.iter().copied().collect();
    let spelled: HashSet<&str> = tokens.iter().copied().collect();
    let mut vocab = Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (id, &token) in tokens.iter().enumerate() {
        let ty = type_of(id);
        let mut key = token.to_string();
        if ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED {
            added.push(
                json!({"id": id, "content": token, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": ty == TOKEN_TYPE_CONTROL}),
            );
        } else if !token.chars().all(|c| alphabet.contains(&c)) {
            let respelled: String = token.bytes().map(|b| table[b as usize]).collect();
            if !spelled.contains(respelled.as_str()) {
                key = respelled;
            }
        }
        // A repeated token keeps its first id (later copies are unreachable through merges anyway).
        vocab.entry(key).or_insert_with(|| json!(id));
    }

    let id_key = |key: &str, warnings: &mut Vec<String>| -> Option<u32> {
        let id = file.get(key)?.as_u64()?;
        match u32::try_from(id)
            .ok()
            .filter(|&i| (i as usize) < tokens.len())
        {
            Some(id) => Some(id),
            None => {
                warnings.push(format!(
                    "`{key}` = {id} is outside the vocabulary ({} tokens); ignored",
                    tokens.len()
                ));
                None
            }
        }
    };
    let special = |id: u32| SpecialToken {
        id,
        text: tokens[id as usize].to_string(),
    };
    let bos = id_key("tokenizer.ggml.bos_token_id", &mut warnings).map(special);
    let pad = id_key("tokenizer.ggml.padding_token_id", &mut warnings).map(special);
    let eos_id = id_key("tokenizer.ggml.eos_token_id", &mut warnings);
    let flag = |key: &str| file.get(key).and_then(GgufValue::as_bool);
    let mut add_bos = flag("tokenizer.ggml.add_bos_token").unwrap_or(pre.add_bos_default);
    if add_bos && bos.is_none() {
        warnings.push(
            "the file asks for a BOS token but names none (`tokenizer.ggml.bos_token_id`)".into(),
        );
        add_bos = false;
    }
    let add_eos = flag("tokenizer.ggml.add_eos_token").unwrap_or(false) && eos_id.is_some();

    // BOS / EOS around each sequence, as transformers' TemplateProcessing for Llama writes it.
    let bos_id = bos.as_ref().map(|b| b.id).filter(|_| add_bos);
    let eos_added = eos_id.filter(|_| add_eos);
    let post_processor = if bos_id.is_some() || eos_added.is_some() {
        let special = |id: u32, type_id: u32| json!({"SpecialToken": {"id": tokens[id as usize], "type_id": type_id}});
        let template = |seq: &str, type_id: u32| -> Vec<Value> {
            let sequence = json!({"Sequence": {"id": seq, "type_id": type_id}});
            let before = bos_id.map(|id| special(id, type_id));
            let after = eos_added.map(|id| special(id, type_id));
            before.into_iter().chain([sequence]).chain(after).collect()
        };
        let single = template("A", 0);
        let pair: Vec<Value> = single.iter().cloned().chain(template("B", 1)).collect();
        let specials: Map<String, Value> = bos_id
            .into_iter()
            .chain(eos_added)
            .map(|id| {
                let text = tokens[id as usize];
                (
                    text.to_string(),
                    json!({"id": text, "ids": [id], "tokens": [text]}),
                )
            })
            .collect();
        json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
    } else {
        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false})
    };
    let json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": pre.normalizer,
        "pre_tokenizer": pre.pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": pre.ignore_merges, "vocab": vocab, "merges": merges},
    });
    let inner: tokenizers::Tokenizer = json.to_string().parse().map_err(|e| {
        tokenizer_err(
            path,
            format!("building the tokenizer from `tokenizer.ggml.tokens` / `tokenizer.ggml.merges`: {e}"),
        )
    })?;

    // EOS first, then the other end-of-turn tokens llama.cpp stops on.
    let mut eos: Vec<u32> = eos_id.into_iter().collect();
    for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
        eos.extend(id_key(key, &mut warnings));
    }
    for (id, token) in tokens.iter().enumerate() {
        let ty = type_of(id);
        if (ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED)
            && END_OF_GENERATION.contains(token)
        {
            eos.push(id as u32);
        }
    }
    let mut seen = HashSet::new();
    eos.retain(|id| seen.insert(*id));
    let eos_token = eos.first().map(|&id| tokens[id as usize].to_string());
    let template_key = "tokenizer.chat_template";
    let chat_template = match file.get(template_key) {
        None => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                warnings.push(format!(
                    "`{template_key}` is a {}, not a string; ignored",
                    v.type_name()
                ));
                None
            }
        },
    };
    Ok(Tokenizer {
        inner,
        source: path.to_path_buf(),
        bos,
        eos,
        eos_token,
        pad,
        add_bos,
        prepend_bos: false,
        chat_template,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_gpt2s() {
        let t = byte_chars();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[0xa0], 'ł');
        assert_eq!(t[0xad], 'Ń');
        assert_eq!(t.iter().collect::<HashSet<_>>().len(), 256);
    }
}
