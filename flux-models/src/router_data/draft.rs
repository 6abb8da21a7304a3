//! What a family generator works with (`Gen`: tokenizer, corpus, random numbers, budget) and
//! what it returns (`Draft`: the user content and the answer before tokenization).

use flux_router::TaskCategory;
use rand::rngs::StdRng;
use rand::Rng;

use super::chat::ChatFrame;
use super::corpus::SplitCorpus;
use crate::error::ModelError;
use crate::tokenizer::Tokenizer;

/// Tokens a sink + 2048-token window sparse attention reaches back from the answer (sink 128,
/// window 2048, and some slack): retrieval targets are placed farther back than this from the
/// end of the sample whenever the budget leaves room.
pub const SPARSE_REACH: usize = 2300;
/// Below this much room before the sparse reach, retrieval targets are only kept in the first
/// part of the context (the sample is short enough for the sparse window to see everything).
const MIN_FAR_ROOM: usize = 128;

/// Why one attempt at a sample did not produce it.
#[derive(Debug)]
pub(crate) enum Fail {
    /// This draw does not fit (budget, boundaries, a rare tokenization effect): draw again
    /// with the next attempt seed.
    Retry(String),
    /// A real error (tokenizer, template): stop.
    Error(ModelError),
}

impl From<ModelError> for Fail {
    fn from(e: ModelError) -> Self {
        Fail::Error(e)
    }
}

/// Result of one attempt.
pub(crate) type Attempt<T> = std::result::Result<T, Fail>;

/// A sample before tokenization.
#[derive(Debug, Clone)]
pub(crate) struct Draft {
    pub family: &'static str,
    pub category: TaskCategory,
    /// The user message (context and question).
    pub content: String,
    /// The assistant answer.
    pub answer: String,
    /// Texts of the content the answer depends on (needles, chain links, the quoted sentence).
    pub far_texts: Vec<String>,
    /// Whether `far_texts` must end more than [`SPARSE_REACH`] tokens before the end.
    pub enforce_far: bool,
}

/// The state one attempt draws from.
pub(crate) struct Gen<'a> {
    pub tok: &'a Tokenizer,
    pub frame: &'a ChatFrame,
    pub corpus: &'a SplitCorpus,
    pub rng: StdRng,
    /// Token budget of the whole sample.
    pub budget: usize,
    /// Tokens kept free for the difference between counting pieces and tokenizing the whole.
    pub margin: usize,
    /// Question before (true) or after the context.
    pub is_prefix: bool,
}

/// Tokens of the separator between context and question (`"\n\n"`, counted generously).
pub(crate) const SEP_TOKENS: usize = 2;

impl Gen<'_> {
    /// Token count of `text` on its own.
    pub fn count(&self, text: &str) -> Attempt<usize> {
        Ok(self.tok.encode(text, false)?.len())
    }

    /// Uniform in `lo..hi` (`lo` when empty).
    pub fn below(&mut self, lo: usize, hi: usize) -> usize {
        if hi <= lo + 1 {
            lo
        } else {
            self.rng.random_range(lo..hi)
        }
    }

    /// One of `items` (must not be empty).
    pub fn pick<'b, T>(&mut self, items: &'b [T]) -> &'b T {
        let i = self.below(0, items.len());
        &items[i]
    }

    /// Fisher-Yates shuffle (own implementation, so the order depends on the seed only).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(0, i + 1);
            items.swap(i, j);
        }
    }

    /// `k` distinct words of the split's word list.
    pub fn words(&mut self, k: usize) -> Attempt<Vec<String>> {
        let list = &self.corpus.words;
        if list.len() < 4 * k + 8 {
            return Err(Fail::Retry("word list too small".into()));
        }
        let mut out: Vec<String> = Vec::with_capacity(k);
        while out.len() < k {
            let w = &list[self.below(0, list.len())];
            if !out.contains(w) {
                out.push(w.clone());
            }
        }
        Ok(out)
    }

    /// `k` distinct random numbers of `digits` digits.
    pub fn numbers(&mut self, k: usize, digits: u32) -> Vec<u64> {
        let lo = 10u64.pow(digits - 1);
        let hi = 10u64.pow(digits);
        let mut out = Vec::with_capacity(k);
        while out.len() < k {
            let v = self.rng.random_range(lo..hi);
            if !out.contains(&v) {
                out.push(v);
            }
        }
        out
    }

    /// Tokens left for the context once the template, question, answer, separator and margin
    /// are counted.
    pub fn context_budget(&self, question_tokens: usize, answer_tokens: usize) -> Attempt<usize> {
        let fixed =
            self.frame.overhead() + question_tokens + answer_tokens + SEP_TOKENS + self.margin;
        match self.budget.checked_sub(fixed) {
            Some(c) if c >= 64 => Ok(c),
            _ => Err(Fail::Retry(format!(
                "budget {} leaves no room for a context",
                self.budget
            ))),
        }
    }

    /// The user message: question before or after the context.
    pub fn content(&self, context: &str, question: &str) -> String {
        if self.is_prefix {
            format!("{question}\n\n{context}")
        } else {
            format!("{context}\n\n{question}")
        }
    }

    /// Where retrieval targets may go, as token offsets into a context of `context_tokens`
    /// (targets included, `inserted` of them): up to `frac` of the context and, when the
    /// budget leaves room, more than [`SPARSE_REACH`] tokens before the estimated end of the
    /// sample. Returns the highest offset and whether the far rule applies.
    pub fn depth_limit(
        &self,
        context_tokens: usize,
        question_tokens: usize,
        answer_tokens: usize,
        inserted: usize,
        frac: f64,
    ) -> (usize, bool) {
        let by_frac = (context_tokens as f64 * frac) as usize;
        let before = self.frame.head_len()
            + if self.is_prefix {
                question_tokens + SEP_TOKENS
            } else {
                0
            };
        let total =
            self.frame.overhead() + question_tokens + answer_tokens + SEP_TOKENS + context_tokens;
        let slack = 32 + total / 64;
        match total.checked_sub(SPARSE_REACH + slack + before + inserted) {
            Some(far) if far >= MIN_FAR_ROOM => (by_frac.min(far), true),
            _ => (by_frac, false),
        }
    }
}
