//! Tokenizers: HF `tokenizer.json` through the `tokenizers` crate, or built from GGUF metadata;
//! special tokens, chat templates and streaming detokenisation.
//!
//! - `hf`: reading and writing a HF folder (`tokenizer.json`, `tokenizer_config.json`).
//! - `from_gguf` / `pre_tokenizer`: a `tokenizer.json` assembled from `tokenizer.ggml.*`.
//! - `chat_template`: Jinja chat templates through minijinja.
//! - `stream`: [`StreamDecoder`], text from ids as they are generated.

mod chat_template;
mod from_gguf;
mod hf;
mod pre_tokenizer;
mod stream;

pub use chat_template::ChatMessage;

/// Renders a Jinja chat `template` for `messages` as [`Tokenizer::apply_chat_template`] does,
/// with the given BOS / EOS texts; for templates that come without a tokenizer (and the fuzz
/// targets under `fuzz/`).
pub fn render_chat_template(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    chat_template::render(
        template,
        messages,
        add_generation_prompt,
        bos_token,
        eos_token,
    )
}
pub use stream::StreamDecoder;

use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};

/// A special token: its id and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SpecialToken {
    id: u32,
    text: String,
}

/// A model's tokenizer with the special tokens and chat template that go with it.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Where it was read from (for messages).
    source: PathBuf,
    bos: Option<SpecialToken>,
    /// Tokens that end generation, the model's EOS first.
    eos: Vec<u32>,
    eos_token: Option<String>,
    pad: Option<SpecialToken>,
    /// Whether `encode(.., true)` starts with BOS.
    add_bos: bool,
    /// BOS is wanted (`add_bos_token`) but the post-processor does not add it: `encode` does.
    prepend_bos: bool,
    chat_template: Option<String>,
    warnings: Vec<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}

impl Tokenizer {
    fn err(&self, message: impl Into<String>) -> ModelError {
        ModelError::Tokenizer {
            path: self.source.clone(),
            message: message.into(),
        }
    }

    /// Reads a HF folder: `tokenizer.json`, and where present `tokenizer_config.json`,
    /// `chat_template.jinja`, `generation_config.json` and `config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        hf::from_dir(dir)
    }

    /// Builds the tokenizer from GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`).
    pub fn from_gguf(file: &crate::gguf::GgufFile) -> Result<Self> {
        from_gguf::from_gguf(file)
    }

    /// The tokenizer of a model given as a HF folder or a GGUF file (the weights are not read).
    pub fn load(path: &Path) -> Result<Self> {
        if path.is_dir() {
            Self::from_dir(path)
        } else if path.is_file() {
            Self::from_gguf(&crate::gguf::GgufFile::open(path)?)
        } else {
            Err(ModelError::Tokenizer {
                path: path.to_path_buf(),
                message: "no such file or folder (a GGUF file or a HF folder is expected)".into(),
            })
        }
    }

    /// Encodes `text`. With `add_special_tokens`, BOS is put first when the model's tokenizer
    /// does so; special tokens written in the text (`<|im_start|>`) are always recognised.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| self.err(format!("encoding failed: {e}")))?;
        let mut ids = encoding.get_ids().to_vec();
        if add_special_tokens && self.prepend_bos {
            if let Some(bos) = &self.bos {
                ids.insert(0, bos.id);
            }
        }
        Ok(ids)
    }

    /// Decodes `ids` to text (ids outside the vocabulary are skipped).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| self.err(format!("decoding failed: {e}")))
    }

    /// The text of one token decoded on its own (for per-token output); `None` outside the
    /// vocabulary. Half of a UTF-8 character comes out as U+FFFD.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)?;
        self.inner.decode(&[id], false).ok()
    }

    /// The id of a token given in its vocabulary spelling (`<|im_end|>`, `Ġthe`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The beginning-of-sequence token, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos.as_ref().map(|t| t.id)
    }

    /// Tokens that end generation: the model's EOS first, then other end-of-turn tokens.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    /// Whether `encode(.., true)` puts BOS first.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Number of token ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The Jinja chat template, if the model has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Renders `messages` with the model's chat template (special tokens written as text;
    /// encode the result with `add_special_tokens = false`).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| ModelError::ChatTemplate {
                message: format!("{} has no chat template", self.source.display()),
            })?;
        chat_template::render(
            template,
            messages,
            add_generation_prompt,
            self.bos.as_ref().map(|t| t.text.as_str()).unwrap_or(""),
            self.eos_token.as_deref().unwrap_or(""),
        )
    }

    /// The HF `tokenizer.json` text.
    pub fn to_tokenizer_json(&self) -> Result<String> {
        self.inner
            .to_string(true)
            .map_err(|e| self.err(format!("serialising tokenizer.json: {e}")))
    }

    /// The HF `tokenizer_config.json` for this tokenizer (special tokens, `add_bos_token`,
    /// chat template).
    pub fn tokenizer_config_json(&self) -> serde_json::Value {
        hf::tokenizer_config(self)
    }

    /// Writes `tokenizer.json`, `tokenizer_config.json` and `generation_config.json` (EOS ids)
    /// into `dir`, so that [`Tokenizer::from_dir`] reads back the same tokenizer.
    pub fn save_dir(&self, dir: &Path) -> Result<()> {
        hf::save_dir(self, dir)
    }

    /// An incremental detokenizer over this tokenizer.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder::new(self)
    }

    /// What loading had to guess (an unknown GGUF pre-tokenizer, an out-of-range token id).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The file it was read from (`tokenizer.json` or the GGUF file).
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}
