//! `sotu_sum` (Summarization): one to three State of the Union addresses (more when they are
//! short), each trimmed at paragraph boundaries; the opening paragraph of the last one is
//! taken out and asked for.

use flux_router::TaskCategory;

use crate::router_data::draft::{Attempt, Draft, Fail, Gen, SEP_TOKENS};

/// The instruction, always at the head of the prompt (as the Flux reference prefixes its
/// summarization prompts).
pub(crate) const PREFIX: &str =
    "You are given one or more State of the Union addresses. Write the opening paragraph of the last one.";
/// The cue at the end of the prompt.
const CUE: &str = "Opening paragraph of the last address:";
/// Most tokens of the answer (cut at a sentence boundary).
const MAX_ANSWER_TOKENS: usize = 200;
/// Most addresses in one prompt.
const MAX_DOCS: usize = 12;

/// Builds one `sotu_sum` draft.
pub(crate) fn sotu_sum(g: &mut Gen) -> Attempt<Draft> {
    let corpus = g.corpus;
    let n_docs = corpus.addresses.len();
    if n_docs < 2 {
        return Err(Fail::Retry("too few addresses".into()));
    }
    let last = g.below(0, n_docs);
    let a = &corpus.addresses[last];
    if a.paragraphs.len() < 2 {
        return Err(Fail::Retry("address too short".into()));
    }
    // The answer: the opening paragraph, cut after the last sentence that fits.
    let mut answer = String::new();
    for i in a.paragraphs[0].clone() {
        let next = if answer.is_empty() {
            a.sentences[i].clone()
        } else {
            format!("{answer} {}", a.sentences[i])
        };
        if g.count(&next)? > MAX_ANSWER_TOKENS {
            break;
        }
        answer = next;
    }
    if answer.is_empty() {
        return Err(Fail::Retry(
            "first sentence longer than the answer limit".into(),
        ));
    }
    let fixed = g.count(PREFIX)? + g.count(CUE)? + SEP_TOKENS;
    let room = g.context_budget(fixed, g.count(&answer)?)?;
    // The addresses: 1-3 (more while their text falls short of the room), the asked one last.
    let mut docs = vec![last];
    let want = g.below(1, 4);
    let mut full = full_tokens(g, last, 1, room)?;
    while docs.len() < MAX_DOCS && (docs.len() < want || full < room) {
        let d = g.below(0, n_docs);
        if docs.contains(&d) {
            continue;
        }
        full += full_tokens(g, d, 0, room)?;
        docs.insert(0, d);
    }
    // Headers, then whole paragraphs round-robin over the addresses while they fit.
    let headers: Vec<String> = docs
        .iter()
        .enumerate()
        .map(|(k, &d)| {
            let a = &corpus.addresses[d];
            format!("Address {} ({}, {}):", k + 1, a.year, a.president)
        })
        .collect();
    let mut left = room;
    for h in &headers {
        left = left
            .checked_sub(g.count(h)? + SEP_TOKENS)
            .ok_or_else(|| Fail::Retry("headers do not fit".into()))?;
    }
    let mut taken: Vec<Vec<usize>> = vec![Vec::new(); docs.len()];
    let mut next: Vec<usize> = docs.iter().map(|&d| usize::from(d == last)).collect();
    loop {
        let mut progress = false;
        for (k, &d) in docs.iter().enumerate() {
            let p = next[k];
            if p >= corpus.addresses[d].paragraphs.len() {
                continue;
            }
            let t = corpus.paragraph_tokens(g.tok, d, p)?;
            if t <= left {
                left -= t;
                taken[k].push(p);
                next[k] += 1;
                progress = true;
            } else {
                // This address is trimmed here.
                next[k] = usize::MAX;
            }
        }
        if !progress {
            break;
        }
    }
    if taken.last().is_none_or(Vec::is_empty) {
        return Err(Fail::Retry("no room for the asked address".into()));
    }
    let mut parts = Vec::with_capacity(docs.len());
    for (k, &d) in docs.iter().enumerate() {
        if taken[k].is_empty() {
            continue;
        }
        let a = &corpus.addresses[d];
        let paras: Vec<String> = taken[k]
            .iter()
            .map(|&p| corpus.paragraph_text(d, p))
            .collect();
        parts.push(format!(
            "Address {} ({}, {}):\n\n{}",
            parts.len() + 1,
            a.year,
            a.president,
            paras.join("\n\n")
        ));
    }
    Ok(Draft {
        family: "sotu_sum",
        category: TaskCategory::Summarization,
        content: format!("{PREFIX}\n\n{}\n\n{CUE}", parts.join("\n\n")),
        answer,
        far_texts: Vec::new(),
        enforce_far: false,
    })
}

/// Tokens of address `d` from paragraph `from` on (counting stops past `cap`).
fn full_tokens(g: &Gen, d: usize, from: usize, cap: usize) -> Attempt<usize> {
    let mut n = 0;
    for p in from..g.corpus.addresses[d].paragraphs.len() {
        if n > cap {
            break;
        }
        n += g.corpus.paragraph_tokens(g.tok, d, p)?;
    }
    Ok(n)
}
