//! In-context learning (many-shot): K demonstrations "Input: ... / Output: ..." of one
//! synthetic task fill the budget, then one query; the answer is the query's output.
//! Tasks: `icl_sort` (sort 4-8 words alphabetically), `icl_count` (count a letter in a word),
//! `icl_base` (decimal to binary), `icl_reverse` (reverse a word).

use flux_router::TaskCategory;

use crate::router_data::draft::{Attempt, Draft, Fail, Gen};

/// The ICL tasks, with their family names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IclTask {
    Sort,
    Count,
    Base,
    Reverse,
}

impl IclTask {
    pub const ALL: [IclTask; 4] = [Self::Sort, Self::Count, Self::Base, Self::Reverse];

    pub fn family(self) -> &'static str {
        match self {
            Self::Sort => "icl_sort",
            Self::Count => "icl_count",
            Self::Base => "icl_base",
            Self::Reverse => "icl_reverse",
        }
    }

    /// One (input, output) example.
    fn example(self, g: &mut Gen) -> Attempt<(String, String)> {
        Ok(match self {
            Self::Sort => {
                let k = g.below(4, 9);
                let words = g.words(k)?;
                let mut sorted = words.clone();
                sorted.sort();
                (words.join(", "), sorted.join(", "))
            }
            Self::Count => {
                let word = g.words(1)?.remove(0);
                let letter = if g.below(0, 10) < 7 {
                    let bytes = word.as_bytes();
                    bytes[g.below(0, bytes.len())] as char
                } else {
                    (b'a' + g.below(0, 26) as u8) as char
                };
                let n = word.chars().filter(|&c| c == letter).count();
                (format!("letter \"{letter}\" in \"{word}\""), n.to_string())
            }
            Self::Base => {
                let n = g.below(0, 4096);
                (n.to_string(), format!("{n:b}"))
            }
            Self::Reverse => {
                let word = g.words(1)?.remove(0);
                let rev: String = word.chars().rev().collect();
                (word, rev)
            }
        })
    }
}

const INSTRUCTIONS: [&str; 3] = [
    "Each example maps an input to an output. Work out the rule and give the output for the last input.",
    "Learn the task from the examples, then answer the final input the same way.",
    "Follow the pattern of the input/output examples and write the output of the last input only.",
];

/// Builds one in-context learning draft of `task`.
pub(crate) fn icl(g: &mut Gen, task: IclTask) -> Attempt<Draft> {
    let instruction = *g.pick(&INSTRUCTIONS);
    let (query_in, answer) = task.example(g)?;
    let query = format!("\n\nInput: {query_in}\nOutput:");
    let q_tok = g.count(instruction)? + g.count(&query)?;
    let room = g.context_budget(q_tok, g.count(&answer)?)?;
    let mut demos = String::new();
    let mut used = 0usize;
    let mut misses = 0;
    while misses < 8 {
        let (input, output) = task.example(g)?;
        if input == query_in {
            continue;
        }
        let demo = format!("\n\nInput: {input}\nOutput: {output}");
        let t = g.count(&demo)?;
        if used + t > room {
            misses += 1;
            continue;
        }
        used += t;
        demos.push_str(&demo);
    }
    if demos.is_empty() {
        return Err(Fail::Retry("no room for demonstrations".into()));
    }
    let context = format!("{}{query}", demos.trim_start());
    Ok(Draft {
        family: task.family(),
        category: TaskCategory::InContextLearning,
        content: g.content(&context, instruction),
        answer,
        far_texts: Vec::new(),
        enforce_far: false,
    })
}
