//! `vt` (Multi-hop QA): variable tracking. A chain "VAR ABCDE = 40123.", "VAR QWXYZ = VAR
//! ABCDE.", ... of 3-5 hops (and half the time a second, distractor chain) scattered in order
//! through State of the Union text; the answer lists every variable holding the value.

use flux_router::TaskCategory;

use crate::router_data::corpus::item;
use crate::router_data::draft::{Attempt, Draft, Gen};

const QUESTIONS: [&str; 3] = [
    "Find all variables that are assigned the value {value}, directly or through other variables. List their names in the order they are assigned, separated by commas.",
    "Which variables end up holding the value {value}? Give the names in assignment order, separated by commas.",
    "Track the value {value} through the VAR assignments in the text. Answer with every variable name that holds it, in order, separated by commas.",
];

fn name(g: &mut Gen, taken: &mut Vec<String>) -> String {
    loop {
        let n: String = (0..5)
            .map(|_| (b'A' + g.below(0, 26) as u8) as char)
            .collect();
        if !taken.contains(&n) {
            taken.push(n.clone());
            return n;
        }
    }
}

fn chain(
    g: &mut Gen,
    hops: usize,
    value: u64,
    taken: &mut Vec<String>,
) -> (Vec<String>, Vec<String>) {
    let names: Vec<String> = (0..=hops).map(|_| name(g, taken)).collect();
    let mut lines = vec![format!("VAR {} = {value}.", names[0])];
    for w in names.windows(2) {
        lines.push(format!("VAR {} = VAR {}.", w[1], w[0]));
    }
    (names, lines)
}

/// Builds one `vt` draft.
pub(crate) fn vt(g: &mut Gen) -> Attempt<Draft> {
    let values = g.numbers(2, 5);
    let mut taken = Vec::new();
    let hops = g.below(3, 6);
    let (names, lines) = chain(g, hops, values[0], &mut taken);
    let distractor = if g.below(0, 2) == 1 {
        let h = g.below(2, 5);
        chain(g, h, values[1], &mut taken).1
    } else {
        Vec::new()
    };
    // Interleave the two chains at random, each kept in order.
    let mut labels: Vec<bool> = std::iter::repeat_n(true, lines.len())
        .chain(std::iter::repeat_n(false, distractor.len()))
        .collect();
    g.shuffle(&mut labels);
    let (mut a, mut b) = (lines.iter(), distractor.iter());
    let mut items = Vec::with_capacity(labels.len());
    for main in labels {
        let text = if main { a.next() } else { b.next() };
        if let Some(t) = text {
            items.push(item(g, t)?);
        }
    }
    let question = g
        .pick(&QUESTIONS)
        .replace("{value}", &values[0].to_string());
    let answer = names.join(", ");
    g.haystack_draft(
        "vt",
        TaskCategory::MultiHopQa,
        items,
        &question,
        answer,
        lines,
    )
}
