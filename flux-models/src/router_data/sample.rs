//! One training sequence of the router: token ids, the spans the trainer needs and its label.

use std::ops::Range;

use flux_router::TaskCategory;

/// One router training sample: a chat-formatted user turn and assistant answer, tokenized with
/// the target model's tokenizer, labelled with its task category.
#[derive(Debug, Clone, PartialEq)]
pub struct RouterSample {
    /// The chat-formatted prompt (system and user turn), the assistant answer and the
    /// end-of-turn token that closes it.
    pub ids: Vec<u32>,
    /// Token range of the user message content (context and question); the router pools the
    /// first and last 150 tokens of it.
    pub prompt_span: Range<usize>,
    /// Token range scored by the LM loss: the answer tokens and the end-of-turn token after
    /// them. `answer.start >= 1`, `answer.end <= ids.len()`.
    pub answer: Range<usize>,
    /// The task category (selects the sparsity target and multipliers).
    pub category: TaskCategory,
    /// The sparsity target, `category.default_target()`.
    pub target: f64,
    /// The generator family (`niah`, `sotu_next`, `vt`, `two_hop`, `sotu_sum`, `rs_lcc`,
    /// `icl_sort`, `icl_count`, `icl_base`, `icl_reverse`).
    pub family: String,
}

impl RouterSample {
    /// Checks the invariants every sample holds: non-empty ranges inside `ids`, the prompt
    /// before the answer, `answer.start >= 1`, ids below `vocab_size` (when given) and a finite
    /// target in `[0, 1]`. The message says what is wrong.
    pub fn check(&self, vocab_size: Option<usize>) -> std::result::Result<(), String> {
        let n = self.ids.len();
        let (p, a) = (&self.prompt_span, &self.answer);
        if p.start >= p.end || p.end > n {
            return Err(format!("prompt span {p:?} is empty or outside the {n} ids"));
        }
        if a.start >= a.end || a.end > n || a.start == 0 {
            return Err(format!(
                "answer range {a:?} is empty, starts at 0 or lies outside the {n} ids"
            ));
        }
        if p.end > a.start {
            return Err(format!("prompt span {p:?} overlaps answer range {a:?}"));
        }
        if !(self.target.is_finite() && (0.0..=1.0).contains(&self.target)) {
            return Err(format!("target {} is outside [0, 1]", self.target));
        }
        if let Some(vocab) = vocab_size {
            if let Some(&bad) = self.ids.iter().find(|&&id| id as usize >= vocab) {
                return Err(format!(
                    "token id {bad} is outside the vocabulary of {vocab}"
                ));
            }
        }
        Ok(())
    }
}
