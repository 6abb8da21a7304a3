//! `manifest.json`: what a data folder holds and what it was built from.

use std::collections::BTreeMap;
use std::path::Path;

use flux_router::TaskCategory;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::config::DataConfig;
use super::format::{hex, tmp_path};
use super::sample::RouterSample;
use super::sources::Sources;
use crate::error::{ModelError, Result};
use crate::tokenizer::Tokenizer;

/// The manifest of a router data folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataManifest {
    /// Always `"flux-router-data"`.
    pub format: String,
    /// Version of the split file format.
    pub format_version: u32,
    /// The tokenizer the ids belong to.
    pub tokenizer: TokenizerInfo,
    /// The seed of the set.
    pub seed: u64,
    /// The token budgets samples drew from.
    pub lengths: Vec<usize>,
    /// The split files.
    pub splits: Vec<SplitInfo>,
    /// The corpora.
    pub sources: SourcesInfo,
}

/// Identifies the tokenizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    /// File name of the tokenizer source (the GGUF file or `tokenizer.json`).
    pub file_name: String,
    /// Vocabulary size, added tokens included.
    pub vocab_size: usize,
    /// End-of-sequence ids.
    pub eos_ids: Vec<u32>,
    /// sha256 of the tokenizer's `tokenizer.json` serialisation and its chat template.
    pub sha256: String,
}

/// One split file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitInfo {
    /// `train` or `valid`.
    pub name: String,
    /// File name inside the data folder.
    pub file: String,
    /// Number of samples.
    pub samples: usize,
    /// Total token ids.
    pub tokens: usize,
    /// Total tokens of the scored answer ranges.
    pub answer_tokens: usize,
    /// sha256 of the file.
    pub sha256: String,
    /// Samples per task category (snake_case names).
    pub categories: BTreeMap<String, usize>,
    /// Samples per family.
    pub families: BTreeMap<String, usize>,
}

/// The corpora a data folder was built from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourcesInfo {
    /// The State of the Union addresses.
    pub sotu: SotuInfo,
    /// The code crates.
    pub crates: Vec<CrateInfo>,
}

/// The State of the Union addresses used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SotuInfo {
    /// Number of address files.
    pub files: usize,
    /// sha256 of the concatenated files in sorted order.
    pub sha256: String,
    /// The files of the validation split (all others are training files).
    pub valid_files: Vec<String>,
}

/// One code crate used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrateInfo {
    /// Crate name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Cargo.lock checksum of the `.crate` file.
    pub checksum: String,
    /// `train` or `valid`.
    pub split: String,
    /// Number of `.rs` files read.
    pub files: usize,
    /// sha256 of the files as read.
    pub sha256: String,
}

/// snake_case name of a category (as serde writes it).
pub fn category_name(c: TaskCategory) -> &'static str {
    match c {
        TaskCategory::Code => "code",
        TaskCategory::InContextLearning => "in_context_learning",
        TaskCategory::Summarization => "summarization",
        TaskCategory::SingleDocQa => "single_doc_qa",
        TaskCategory::MultiHopQa => "multi_hop_qa",
    }
}

impl DataManifest {
    /// A manifest without splits for `config`, `tokenizer` and `sources`.
    pub fn new(config: &DataConfig, tokenizer: &Tokenizer, sources: &Sources) -> Result<Self> {
        let mut h = Sha256::new();
        h.update(tokenizer.to_tokenizer_json()?.as_bytes());
        h.update([0]);
        h.update(tokenizer.chat_template().unwrap_or("").as_bytes());
        Ok(Self {
            format: "flux-router-data".into(),
            format_version: 1,
            tokenizer: TokenizerInfo {
                file_name: tokenizer
                    .source()
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                vocab_size: tokenizer.vocab_size(),
                eos_ids: tokenizer.eos_ids().to_vec(),
                sha256: hex(&h.finalize()),
            },
            seed: config.seed,
            lengths: config.lengths.clone(),
            splits: Vec::new(),
            sources: SourcesInfo {
                sotu: SotuInfo {
                    files: sources.addresses.len(),
                    sha256: sources.sotu_sha256.clone(),
                    valid_files: sources
                        .addresses_of(super::sources::Split::Valid)
                        .map(|a| a.file_name.clone())
                        .collect(),
                },
                crates: sources
                    .crates
                    .iter()
                    .map(|c| CrateInfo {
                        name: c.name.clone(),
                        version: c.version.clone(),
                        checksum: c.checksum.clone(),
                        split: c.split.name().into(),
                        files: c.files.len(),
                        sha256: c.sha256.clone(),
                    })
                    .collect(),
            },
        })
    }

    /// Adds a split written to `file` with `sha256`.
    pub fn add_split(&mut self, name: &str, file: &str, samples: &[RouterSample], sha256: &str) {
        let mut categories = BTreeMap::new();
        let mut families = BTreeMap::new();
        for s in samples {
            *categories
                .entry(category_name(s.category).to_string())
                .or_default() += 1;
            *families.entry(s.family.clone()).or_default() += 1;
        }
        self.splits.push(SplitInfo {
            name: name.into(),
            file: file.into(),
            samples: samples.len(),
            tokens: samples.iter().map(|s| s.ids.len()).sum(),
            answer_tokens: samples.iter().map(|s| s.answer.len()).sum(),
            sha256: sha256.into(),
            categories,
            families,
        });
    }

    /// Writes the manifest as pretty JSON (through `path.tmp` and a rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(|e| ModelError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let tmp = tmp_path(path);
        std::fs::write(&tmp, format!("{json}\n")).map_err(|e| ModelError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))
    }

    /// Reads a manifest.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| ModelError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }
}
