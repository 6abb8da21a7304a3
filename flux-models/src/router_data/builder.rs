//! The builder: one sample per index, categories in turn, each from its own seed.

use std::collections::BTreeMap;

use flux_router::TaskCategory;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use super::chat::{locate_text_end, ChatFrame};
use super::config::DataConfig;
use super::corpus::SplitCorpus;
use super::draft::{Attempt, Draft, Fail, Gen, SPARSE_REACH};
use super::families::Family;
use super::sample::RouterSample;
use super::sources::{Sources, Split};
use crate::error::{ModelError, Result};
use crate::tokenizer::Tokenizer;

/// Attempts per sample before the builder gives up.
const MAX_ATTEMPTS: u32 = 32;
/// Smallest share of its budget a sample fills.
pub const MIN_FILL: f64 = 0.7;

/// How a split's build went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SplitStats {
    /// Attempts that were drawn again, by reason.
    pub redraws: BTreeMap<String, usize>,
}

/// The seed of attempt `attempt` (`u32::MAX`: the plan) of sample `index` of `split`: the
/// first 8 bytes (little-endian) of `sha256("flux-router-data|seed|split|index|attempt")`.
pub fn sample_seed(seed: u64, split: Split, index: usize, attempt: u32) -> u64 {
    let h = Sha256::digest(format!(
        "flux-router-data|{seed}|{}|{index}|{attempt}",
        split.name()
    ));
    u64::from_le_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]])
}

/// Builds the training and validation samples: `config.train` and `config.valid` of them,
/// the five task categories in turn (equal shares), each sample drawn from its own seed, from
/// the sources of its split only. The same config, tokenizer and sources give the same samples.
pub fn build_router_data(
    config: &DataConfig,
    tokenizer: &Tokenizer,
    sources: &Sources,
) -> Result<(Vec<RouterSample>, Vec<RouterSample>)> {
    let train = build_split(config, tokenizer, sources, Split::Train, &mut |_| {})?.0;
    let valid = build_split(config, tokenizer, sources, Split::Valid, &mut |_| {})?.0;
    Ok((train, valid))
}

/// Builds one split (`config.train` or `config.valid` samples), calling `progress` with the
/// number of samples done after each.
pub fn build_split(
    config: &DataConfig,
    tokenizer: &Tokenizer,
    sources: &Sources,
    split: Split,
    progress: &mut dyn FnMut(usize),
) -> Result<(Vec<RouterSample>, SplitStats)> {
    config.validate()?;
    let count = match split {
        Split::Train => config.train,
        Split::Valid => config.valid,
    };
    let frame = ChatFrame::new(tokenizer)?;
    let corpus = SplitCorpus::new(sources, split);
    let no_source = |what: &str| ModelError::DataSource {
        path: sources.sotu_dir.clone(),
        message: format!("no {what} in the {} split", split.name()),
    };
    if count > 0 && corpus.addresses.len() < 2 {
        return Err(no_source("State of the Union addresses (need 2)"));
    }
    if count > 0 && corpus.crates.is_empty() {
        return Err(no_source("code crates"));
    }
    let mut stats = SplitStats::default();
    let mut samples = Vec::with_capacity(count);
    for index in 0..count {
        let category = TaskCategory::ALL[index % TaskCategory::ALL.len()];
        let mut plan = StdRng::seed_from_u64(sample_seed(config.seed, split, index, u32::MAX));
        let budget = config.lengths[plan.random_range(0..config.lengths.len())];
        let is_prefix = plan.random_bool(0.5);
        let family = Family::choose(category, plan.random_range(0..100));
        let mut last = String::new();
        let mut done = None;
        for attempt in 0..MAX_ATTEMPTS {
            let mut g = Gen {
                tok: tokenizer,
                frame: &frame,
                corpus: &corpus,
                rng: StdRng::seed_from_u64(sample_seed(config.seed, split, index, attempt)),
                budget,
                margin: (8 + budget / 64) * (2 + attempt as usize) / 2,
                is_prefix,
            };
            match family.generate(&mut g).and_then(|d| finish(&g, d)) {
                Ok(sample) => {
                    done = Some(sample);
                    break;
                }
                Err(Fail::Retry(reason)) => {
                    *stats.redraws.entry(reason.clone()).or_default() += 1;
                    last = reason;
                }
                Err(Fail::Error(e)) => return Err(e),
            }
        }
        let sample = done.ok_or_else(|| ModelError::InvalidArgument {
            argument: "sources".into(),
            message: format!(
                "{} sample {index} ({family:?}, {budget} tokens): no draw fits in \
                 {MAX_ATTEMPTS} attempts (last: {last})",
                split.name()
            ),
        })?;
        samples.push(sample);
        progress(index + 1);
    }
    Ok((samples, stats))
}

/// Tokenizes a draft and checks it: length within 70-100% of the budget, the answer range
/// decodes to the answer, every far text is in the user content and, where the rule applies,
/// ends more than [`SPARSE_REACH`] tokens before the end.
fn finish(g: &Gen, d: Draft) -> Attempt<RouterSample> {
    let a = g.frame.assemble(g.tok, &d.content, &d.answer)?;
    let n = a.ids.len();
    if n > g.budget {
        return Err(Fail::Retry("over the budget".into()));
    }
    if (n as f64) < MIN_FILL * g.budget as f64 {
        return Err(Fail::Retry("under 70% of the budget".into()));
    }
    let decoded = g
        .tok
        .decode(&a.ids[a.answer.start..a.answer.end - 1], true)?;
    if decoded.trim() != d.answer.trim() {
        return Err(Fail::Retry("answer does not decode to itself".into()));
    }
    for text in &d.far_texts {
        match locate_text_end(g.tok, &a.ids, a.prompt_span.clone(), text)? {
            None => return Err(Fail::Retry("far text not found in the content".into())),
            Some(end) if d.enforce_far && end + SPARSE_REACH > n => {
                return Err(Fail::Retry("far text within the sparse reach".into()))
            }
            Some(_) => {}
        }
    }
    let sample = RouterSample {
        ids: a.ids,
        prompt_span: a.prompt_span,
        answer: a.answer,
        category: d.category,
        target: d.category.default_target(),
        family: d.family.to_string(),
    };
    sample
        .check(Some(g.tok.vocab_size()))
        .map_err(|m| Fail::Retry(format!("invalid sample: {m}")))?;
    Ok(sample)
}
