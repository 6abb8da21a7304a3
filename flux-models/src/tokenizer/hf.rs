//! The HF tokenizer files of a model folder: reading (`tokenizer.json`, `tokenizer_config.json`,
//! `chat_template.jinja`, `generation_config.json`, `config.json`) and writing.

use std::path::Path;

use serde_json::{json, Value};

use super::{SpecialToken, Tokenizer};
use crate::error::{ModelError, Result};

/// A JSON file of the folder, `None` when absent.
fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ModelError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// A token given as `"<s>"` or as an AddedToken object `{"content": "<s>", ...}`.
fn token_string(v: &Value) -> Option<String> {
    v.as_str()
        .map(str::to_string)
        .or_else(|| v.get("content")?.as_str().map(str::to_string))
}

/// A token id field (`eos_token_id`): an integer or a list of them.
fn token_ids(v: Option<&Value>) -> Vec<u32> {
    let one = |x: &Value| x.as_u64().and_then(|n| u32::try_from(n).ok());
    match v {
        Some(Value::Array(a)) => a.iter().filter_map(one).collect(),
        Some(x) => one(x).into_iter().collect(),
        None => Vec::new(),
    }
}

fn push_unique(list: &mut Vec<u32>, ids: impl IntoIterator<Item = u32>) {
    for id in ids {
        if !list.contains(&id) {
            list.push(id);
        }
    }
}

pub(super) fn from_dir(dir: &Path) -> Result<Tokenizer> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        let message = if dir.is_dir() {
            "file not found (a HF model folder needs tokenizer.json)".to_string()
        } else {
            format!(
                "file not found: the folder {} does not exist",
                dir.display()
            )
        };
        return Err(ModelError::Tokenizer { path, message });
    }
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    let inner: tokenizers::Tokenizer = text.parse().map_err(|e| ModelError::Tokenizer {
        path: path.clone(),
        message: format!("malformed tokenizer.json: {e}"),
    })?;
    drop(text);
    let config = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
    let generation = read_json(&dir.join("generation_config.json"))?.unwrap_or(Value::Null);
    let model_config = read_json(&dir.join("config.json"))?.unwrap_or(Value::Null);

    // A special token: from tokenizer_config.json (where `null` means none), else from the id in
    // generation_config.json / config.json.
    let special = |name: &str| -> Option<SpecialToken> {
        match config.get(name) {
            Some(v) => {
                let text = token_string(v)?;
                let id = inner.token_to_id(&text)?;
                Some(SpecialToken { id, text })
            }
            None => {
                let key = format!("{name}_id");
                let id = token_ids(generation.get(&key))
                    .into_iter()
                    .chain(token_ids(model_config.get(&key)))
                    .next()?;
                Some(SpecialToken {
                    id,
                    text: inner.id_to_token(id)?,
                })
            }
        }
    };
    let bos = special("bos_token");
    let eos_token = special("eos_token");
    let pad = special("pad_token");
    let mut eos: Vec<u32> = eos_token.iter().map(|t| t.id).collect();
    push_unique(&mut eos, token_ids(generation.get("eos_token_id")));
    push_unique(&mut eos, token_ids(model_config.get("eos_token_id")));

    // Whether encode(.., true) adds BOS is the post-processor's business; `add_bos_token: true`
    // without such a post-processor (older LlamaTokenizer files) is honoured by encode itself.
    let post_processor_adds_bos = bos.as_ref().is_some_and(|b| {
        let first = |special| {
            inner
                .encode("a", special)
                .ok()
                .and_then(|e| e.get_ids().first().copied())
        };
        first(true) == Some(b.id) && first(false) != Some(b.id)
    });
    let prepend_bos = !post_processor_adds_bos
        && bos.is_some()
        && config.get("add_bos_token").and_then(Value::as_bool) == Some(true);

    // transformers 5 keeps the template in chat_template.jinja; older files inline it (a string,
    // or a list of named templates of which "default" is used) or put it in chat_template.json.
    let jinja = dir.join("chat_template.jinja");
    let chat_template = if jinja.is_file() {
        Some(std::fs::read_to_string(&jinja).map_err(|e| ModelError::io(&jinja, e))?)
    } else {
        let inline = match config.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .or_else(|| list.first())
                .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
            _ => None,
        };
        match inline {
            Some(t) => Some(t),
            None => read_json(&dir.join("chat_template.json"))?
                .and_then(|v| v.get("chat_template")?.as_str().map(str::to_string)),
        }
    };
    Ok(Tokenizer {
        inner,
        source: path,
        eos_token: eos_token.map(|t| t.text),
        bos,
        eos,
        pad,
        add_bos: post_processor_adds_bos || prepend_bos,
        prepend_bos,
        chat_template,
        warnings: Vec::new(),
    })
}

pub(super) fn tokenizer_config(tokenizer: &Tokenizer) -> Value {
    let text = |t: &Option<SpecialToken>| t.as_ref().map(|t| t.text.clone());
    let mut config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": tokenizer.add_bos,
        "bos_token": text(&tokenizer.bos),
        "eos_token": tokenizer.eos_token.clone(),
        "pad_token": text(&tokenizer.pad),
        // tokenizers' decode does no clean-up; transformers should not either.
        "clean_up_tokenization_spaces": false,
    });
    if let Some(template) = &tokenizer.chat_template {
        config["chat_template"] = json!(template);
    }
    config
}

pub(super) fn save_dir(tokenizer: &Tokenizer, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| ModelError::io(&path, e))
    };
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    write("tokenizer.json", tokenizer.to_tokenizer_json()?)?;
    write(
        "tokenizer_config.json",
        pretty(&tokenizer_config(tokenizer)),
    )?;
    // from_dir prefers chat_template.jinja: one already there must not shadow ours.
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        match &tokenizer.chat_template {
            Some(t) => write("chat_template.jinja", t.clone())?,
            None => std::fs::remove_file(&jinja).map_err(|e| ModelError::io(&jinja, e))?,
        }
    }
    // EOS ids beyond eos_token (end-of-turn tokens) live in generation_config.json; other keys
    // of an existing one are kept.
    let generation_path = dir.join("generation_config.json");
    let mut generation = match read_json(&generation_path)? {
        Some(Value::Object(map)) => Value::Object(map),
        _ => json!({}),
    };
    generation["bos_token_id"] = json!(tokenizer.bos_id());
    generation["eos_token_id"] = match tokenizer.eos.as_slice() {
        [] => Value::Null,
        [one] => json!(one),
        many => json!(many),
    };
    write("generation_config.json", pretty(&generation))
}
