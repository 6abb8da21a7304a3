//! Router training data: labelled long-context samples built offline from public-domain text
//! (State of the Union addresses) and Rust sources of the cargo registry, tokenized with the
//! target model's tokenizer and chat template.
//!
//! Five task categories in equal shares (the sparsity loss is averaged per category):
//!
//! | category | target | families |
//! |---|---|---|
//! | Single-doc QA | 0.45 | `niah` (needles in SOTU text), `sotu_next` (which sentence follows a quote) |
//! | Multi-hop QA | 0.45 | `vt` (variable tracking), `two_hop` (key -> box -> number) |
//! | Summarization | 1.0 | `sotu_sum` (write the removed opening paragraph of the last address) |
//! | Code | 1.0 | `rs_lcc` (next lines of a crate's concatenated sources) |
//! | In-context learning | 1.0 | `icl_sort`, `icl_count`, `icl_base`, `icl_reverse` (many-shot) |
//!
//! Every sample fills 70-100% of a token budget drawn from [`DataConfig::lengths`]. Retrieval
//! targets (needles, chain links, the sentence to quote back) lie in the first 80% (70% for
//! `sotu_next`) of the context and, when the budget allows (always in samples of at least
//! [`SPARSE_REACH`] + 600 tokens), end more than [`SPARSE_REACH`] tokens before the end of the
//! sample, out of reach of sink + window sparse attention. Shorter samples fit in the sparse
//! window entirely, so for them full and sparse attention see the same tokens.
//!
//! The State of the Union files are one line each, so "paragraphs" are runs of whole sentences
//! of at least 80 words. Code and summarization prompts always start with their instruction
//! (as in the Flux reference) and end with a cue; QA and in-context-learning prompts put the
//! question before or after the context, 50/50.
//! Train and valid samples come from disjoint addresses and crates ([`assign_splits`]).
//! Samples are deterministic: each derives its seed from (seed, split, index)
//! ([`sample_seed`]); the same config, tokenizer and sources give byte-identical files.
//!
//! ```no_run
//! use flux_models::router_data::{build_router_data, write_router_data, DataConfig, Sources};
//! # fn main() -> flux_models::Result<()> {
//! let tok = flux_models::Tokenizer::from_dir("model".as_ref())?;
//! let sources = Sources::load("sotu".as_ref(), &flux_models::router_data::default_cargo_home())?;
//! let config = DataConfig { seed: 0, train: 600, valid: 60, lengths: vec![2048, 4096] };
//! let (train, valid) = build_router_data(&config, &tok, &sources)?;
//! let manifest = write_router_data("out".as_ref(), &config, &tok, &sources, &train, &valid)?;
//! # Ok(()) }
//! ```

mod builder;
mod chat;
mod config;
mod corpus;
mod draft;
mod families;
mod format;
mod manifest;
mod sample;
mod sources;
mod text;

use std::path::Path;

pub use builder::{build_router_data, build_split, sample_seed, SplitStats, MIN_FILL};
pub use chat::locate_text_end;
pub use config::{DataConfig, MAX_LENGTH, MIN_LENGTH};
pub use draft::SPARSE_REACH;
pub use families::FAMILIES;
pub use format::{read_split, write_split};
pub use manifest::{
    category_name, CrateInfo, DataManifest, SotuInfo, SourcesInfo, SplitInfo, TokenizerInfo,
};
pub use sample::RouterSample;
pub use sources::{
    assign_splits, default_cargo_home, CrateSource, CrateSpec, SotuAddress, SourceFile, Sources,
    Split, CODE_CRATES,
};

use crate::error::{ModelError, Result};
use crate::tokenizer::Tokenizer;

/// File name of the training split in a data folder.
pub const TRAIN_FILE: &str = "train.bin.gz";
/// File name of the validation split in a data folder.
pub const VALID_FILE: &str = "valid.bin.gz";
/// File name of the manifest in a data folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Writes `train.bin.gz`, `valid.bin.gz` and `manifest.json` into `out_dir` (created if
/// missing; each file written atomically) and returns the manifest.
pub fn write_router_data(
    out_dir: &Path,
    config: &DataConfig,
    tokenizer: &Tokenizer,
    sources: &Sources,
    train: &[RouterSample],
    valid: &[RouterSample],
) -> Result<DataManifest> {
    std::fs::create_dir_all(out_dir).map_err(|e| ModelError::io(out_dir, e))?;
    let mut manifest = DataManifest::new(config, tokenizer, sources)?;
    for (name, file, samples) in [("train", TRAIN_FILE, train), ("valid", VALID_FILE, valid)] {
        let sha = write_split(&out_dir.join(file), samples)?;
        manifest.add_split(name, file, samples, &sha);
    }
    manifest.write(&out_dir.join(MANIFEST_FILE))?;
    Ok(manifest)
}
