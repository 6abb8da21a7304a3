//! `rs_lcc` (Code): the files of one crate concatenated (each headed by `// file: <path>`,
//! sorted paths, starting at a random file), cut at a random non-blank line past 70% of the
//! budget; the answer is the next 1-3 non-blank lines, the first without its indentation
//! (LongBench LCC style).

use flux_router::TaskCategory;

use crate::router_data::draft::{Attempt, Draft, Fail, Gen, SEP_TOKENS};

/// The instruction at the head of the prompt (as in the Flux reference and LongBench LCC).
pub(crate) const PREFIX: &str = "Please complete the code given below.";
/// The cue at the end of the prompt.
const CUE: &str = "Next lines of code:";
/// Most tokens of the answer.
const MAX_ANSWER_TOKENS: usize = 128;
/// Smallest share of the budget the sample must fill.
const MIN_FILL: f64 = 0.72;

fn is_header(line: &str) -> bool {
    line.starts_with("// file: ")
}

/// Builds one `rs_lcc` draft.
pub(crate) fn rs_lcc(g: &mut Gen) -> Attempt<Draft> {
    let crates = &g.corpus.crates;
    if crates.is_empty() {
        return Err(Fail::Retry("no crates in this split".into()));
    }
    let c = &crates[g.below(0, crates.len())];
    let fixed = g.count(PREFIX)? + g.count(CUE)? + SEP_TOKENS;
    let room = g.context_budget(fixed, MAX_ANSWER_TOKENS)?;
    let lowest = ((g.budget as f64 * MIN_FILL) as usize).saturating_sub(fixed + g.frame.overhead());
    // Lines from a random file on, wrapping around once, until past the room (plus a few
    // lines for the answer).
    let first = c.file_starts[g.below(0, c.file_starts.len())];
    let n = c.lines.len();
    let mut lines: Vec<&str> = Vec::new();
    let mut cum = vec![0usize]; // tokens of lines[..k] joined by "\n"
    let mut extra = 0;
    for step in 0..n {
        let line = c.lines[(first + step) % n].as_str();
        if step > 0 && is_header(line) && lines.last().is_some_and(|l| !l.is_empty()) {
            lines.push(""); // blank line between files, also across the wrap
            cum.push(cum[cum.len() - 1] + 1);
        }
        let t = g.count(&format!("{line}\n"))?;
        lines.push(line);
        cum.push(cum[cum.len() - 1] + t);
        if cum[cum.len() - 1] > room {
            extra += 1;
            if extra > 40 {
                break;
            }
        }
    }
    // Cut points: a non-blank, non-header line k with the context lines[..k] in lowest..=room.
    let cuts: Vec<usize> = (1..lines.len())
        .filter(|&k| {
            !lines[k].trim().is_empty()
                && !is_header(lines[k])
                && cum[k] >= lowest
                && cum[k] <= room
        })
        .collect();
    if cuts.is_empty() {
        return Err(Fail::Retry("crate too short for the budget".into()));
    }
    let k = cuts[g.below(0, cuts.len())];
    let want = g.below(1, 4);
    let mut answer_lines: Vec<&str> = Vec::new();
    let mut non_blank = 0;
    for line in &lines[k..] {
        if is_header(line) || non_blank == want {
            break;
        }
        answer_lines.push(line);
        if !line.trim().is_empty() {
            non_blank += 1;
        }
    }
    // Fewer lines when they are long. The first line goes without its indentation (the
    // answer starts a chat turn; indentation after the template's newline would also
    // tokenize differently on its own than in the whole text).
    let answer = loop {
        let a = answer_lines.join("\n").trim().to_string();
        if g.count(&a)? <= MAX_ANSWER_TOKENS {
            break a;
        }
        answer_lines.pop();
        while answer_lines.last().is_some_and(|l| l.trim().is_empty()) {
            answer_lines.pop();
        }
        if answer_lines.is_empty() {
            return Err(Fail::Retry("next line too long".into()));
        }
    };
    let code = lines[..k].join("\n");
    Ok(Draft {
        family: "rs_lcc",
        category: TaskCategory::Code,
        content: format!("{PREFIX}\n\n{}\n\n{CUE}", code.trim_end()),
        answer,
        far_texts: Vec::new(),
        enforce_far: false,
    })
}
