//! `sotu_next` (Single-doc QA): State of the Union text from the start of an address; the
//! question quotes a sentence from the first 70% of it and asks for the sentence that follows.

use flux_router::TaskCategory;

use crate::router_data::corpus::{join, tokens};
use crate::router_data::draft::{Attempt, Draft, Fail, Gen};
use crate::router_data::text::word_count;

const QUESTIONS: [&str; 3] = [
    "Which sentence immediately follows: '{s}'?",
    "In the address, what is the sentence right after this one: '{s}'?",
    "Quote the sentence that comes directly after '{s}' in the text.",
];
/// Most tokens of the quoted sentence and of the answer sentence.
const MAX_SENTENCE_TOKENS: usize = 100;

fn clean(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_uppercase())
        && !s.contains(['[', ']', '\''])
        && s.ends_with(['.', '?', '!'])
}

/// Builds one `sotu_next` draft.
pub(crate) fn sotu_next(g: &mut Gen) -> Attempt<Draft> {
    let template = *g.pick(&QUESTIONS);
    let reserve = g.count(template)? + MAX_SENTENCE_TOKENS;
    let room = g.context_budget(reserve, MAX_SENTENCE_TOKENS)?;
    let n_docs = g.corpus.addresses.len();
    let doc = g.below(0, n_docs.max(1));
    let hay = g.haystack_from(doc, 0, room)?;
    let context_tokens = tokens(&hay);
    let template_tokens = g.count(template)?;
    let context = join(&hay);
    // Candidate (quoted, answer) pairs: consecutive sentences of one address, the answer
    // ending within the limit.
    let mut candidates = Vec::new();
    let mut offset = 0usize;
    for k in 0..hay.len().saturating_sub(1) {
        offset += hay[k].tokens;
        let end_of_next = offset + hay[k + 1].tokens;
        let (limit, enforce_far) = g.depth_limit(
            context_tokens,
            template_tokens + hay[k].tokens,
            hay[k + 1].tokens,
            0,
            0.7,
        );
        if end_of_next > limit {
            continue;
        }
        let (Some((d, i)), Some((d2, i2))) = (hay[k].origin, hay[k + 1].origin) else {
            continue;
        };
        if d != d2 || i2 != i + 1 {
            continue;
        }
        let a = &g.corpus.addresses[d];
        let (s, next) = (&a.sentences[i], &a.sentences[i2]);
        if clean(s)
            && clean(next)
            && (8..=60).contains(&word_count(s))
            && (5..=60).contains(&word_count(next))
            && hay[k].tokens <= MAX_SENTENCE_TOKENS
            && hay[k + 1].tokens <= MAX_SENTENCE_TOKENS
            && context.matches(s.as_str()).count() == 1
        {
            candidates.push((s.clone(), next.clone(), enforce_far));
        }
    }
    if candidates.is_empty() {
        return Err(Fail::Retry("no quotable sentence pair".into()));
    }
    let (s, next, enforce_far) = candidates[g.below(0, candidates.len())].clone();
    let question = template.replace("{s}", &s);
    Ok(Draft {
        family: "sotu_next",
        category: TaskCategory::SingleDocQa,
        content: g.content(&context, &question),
        answer: next.clone(),
        far_texts: vec![next],
        enforce_far,
    })
}
