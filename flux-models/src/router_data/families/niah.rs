//! `niah` (Single-doc QA): 1-4 needles "The secret code of <key> is <number>." hidden in
//! State of the Union text; the question asks for one key's number.

use flux_router::TaskCategory;

use crate::router_data::corpus::item;
use crate::router_data::draft::{Attempt, Draft, Gen};

const QUESTIONS: [&str; 3] = [
    "What is the secret code of {key}? Answer with the number only.",
    "The text contains several secret codes. Which number is the secret code of {key}?",
    "Find the secret code of {key} in the document and reply with just that number.",
];

/// Builds one `niah` draft.
pub(crate) fn niah(g: &mut Gen) -> Attempt<Draft> {
    let n = g.below(1, 5);
    let words = g.words(2 * n)?;
    let keys: Vec<String> = words
        .chunks(2)
        .map(|w| format!("{} {}", w[0], w[1]))
        .collect();
    let values = g.numbers(n, 7);
    let needles: Vec<String> = keys
        .iter()
        .zip(&values)
        .map(|(k, v)| format!("The secret code of {k} is {v}."))
        .collect();
    let ask = g.below(0, n);
    let question = g.pick(&QUESTIONS).replace("{key}", &keys[ask]);
    let answer = values[ask].to_string();
    let mut items = needles
        .iter()
        .map(|t| item(g, t))
        .collect::<Attempt<Vec<_>>>()?;
    g.shuffle(&mut items);
    g.haystack_draft(
        "niah",
        TaskCategory::SingleDocQa,
        items,
        &question,
        answer,
        needles,
    )
}
