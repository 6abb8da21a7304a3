//! `two_hop` (Multi-hop QA): "The <key> is stored in box <word>." and "Box <word> holds
//! <number>." scattered through State of the Union text with 1-3 distractor pairs; the
//! question asks the number of the box that stores one key.

use flux_router::TaskCategory;

use crate::router_data::corpus::item;
use crate::router_data::draft::{Attempt, Draft, Gen};

const QUESTIONS: [&str; 3] = [
    "Which number is held by the box in which the {key} is stored?",
    "The {key} is stored in a box. What number does that box hold? Answer with the number only.",
    "Look up where the {key} is stored, then give the number held by that box.",
];

/// Builds one `two_hop` draft.
pub(crate) fn two_hop(g: &mut Gen) -> Attempt<Draft> {
    let pairs = g.below(2, 5);
    let words = g.words(3 * pairs)?;
    let numbers = g.numbers(pairs, 7);
    let mut statements = Vec::with_capacity(2 * pairs);
    let mut asked = Vec::new();
    for (p, w) in words.chunks(3).enumerate() {
        let key = format!("{} {}", w[0], w[1]);
        let a = format!("The {key} is stored in box {}.", w[2]);
        let b = format!("Box {} holds {}.", w[2], numbers[p]);
        if p == 0 {
            asked = vec![a.clone(), b.clone()];
        }
        statements.push(a);
        statements.push(b);
    }
    let key = format!("{} {}", words[0], words[1]);
    let question = g.pick(&QUESTIONS).replace("{key}", &key);
    let answer = numbers[0].to_string();
    let mut items = statements
        .iter()
        .map(|t| item(g, t))
        .collect::<Attempt<Vec<_>>>()?;
    g.shuffle(&mut items);
    g.haystack_draft(
        "two_hop",
        TaskCategory::MultiHopQa,
        items,
        &question,
        answer,
        asked,
    )
}
