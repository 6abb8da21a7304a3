//! Scoring an output against a task's answers.
//!
//! - `match_all` (RULER's `string_match_all`): the fraction of the answers found in the output,
//!   case-insensitively.
//! - `last_number` (short math): 1 if the last number of the output equals the first answer's
//!   number (commas, `$` and a trailing `.` ignored), else 0.

use serde::{Deserialize, Serialize};

/// How an output is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scoring {
    /// The fraction of the answers found in the output (case-insensitive).
    #[default]
    MatchAll,
    /// Whether the output's last number equals the answer's.
    LastNumber,
}

impl Scoring {
    /// Whether this is the default rule (left out of task files).
    pub fn is_default(&self) -> bool {
        *self == Scoring::MatchAll
    }
}

/// The score of `output` for `answers` under `rule`, in `[0, 1]`.
pub fn score(rule: Scoring, output: &str, answers: &[String]) -> f64 {
    if answers.is_empty() {
        return 0.0;
    }
    match rule {
        Scoring::MatchAll => {
            let out = output.to_lowercase();
            let found = answers
                .iter()
                .filter(|a| out.contains(&a.to_lowercase()))
                .count();
            found as f64 / answers.len() as f64
        }
        Scoring::LastNumber => match (last_number(output), last_number(&answers[0])) {
            (Some(got), Some(want)) if (got - want).abs() <= 1e-6 * want.abs().max(1.0) => 1.0,
            _ => 0.0,
        },
    }
}

/// The last number written in `text` (`-1,234.5`, `$12`, `3.` read as -1234.5, 12, 3), if any.
pub fn last_number(text: &str) -> Option<f64> {
    let chars: Vec<char> = text.chars().collect();
    let mut last = None;
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let negative = i > 0 && chars[i - 1] == '-';
        let mut digits = String::new();
        while i < chars.len() {
            let c = chars[i];
            let next_is_digit = chars.get(i + 1).is_some_and(|n| n.is_ascii_digit());
            if c.is_ascii_digit() {
                digits.push(c);
            } else if c == ',' && next_is_digit {
                // thousands separator
            } else if c == '.' && next_is_digit && !digits.contains('.') {
                digits.push('.');
            } else {
                break;
            }
            i += 1;
        }
        if let Ok(v) = digits.parse::<f64>() {
            last = Some(if negative { -v } else { v });
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn match_all_counts_the_answers_found_case_insensitively() {
        let a = answers(&["8160734", "Ishmael", "whale"]);
        assert_eq!(
            score(Scoring::MatchAll, "The number is 8160734.", &a),
            1.0 / 3.0
        );
        assert_eq!(
            score(Scoring::MatchAll, "ISHMAEL saw the Whale: 8160734", &a),
            1.0
        );
        assert_eq!(score(Scoring::MatchAll, "", &a), 0.0);
        assert_eq!(
            score(Scoring::MatchAll, "816073", &answers(&["8160734"])),
            0.0
        );
        assert_eq!(score(Scoring::MatchAll, "anything", &[]), 0.0);
    }

    #[test]
    fn last_number_reads_the_final_number() {
        assert_eq!(last_number("So 3 + 4 = 7."), Some(7.0));
        assert_eq!(last_number("She pays $1,250 in total"), Some(1250.0));
        assert_eq!(last_number("#### 18"), Some(18.0));
        assert_eq!(
            last_number("temperature -12.5 degrees, then 3.25"),
            Some(3.25)
        );
        assert_eq!(last_number("it drops to -4"), Some(-4.0));
        assert_eq!(last_number("1,2,3"), Some(123.0));
        assert_eq!(last_number("no digits here"), None);
        assert_eq!(last_number("version 1.2.3"), Some(3.0));
    }

    #[test]
    fn last_number_scoring_compares_numerically() {
        let gold = answers(&["1250"]);
        assert_eq!(
            score(Scoring::LastNumber, "The answer is $1,250.", &gold),
            1.0
        );
        assert_eq!(score(Scoring::LastNumber, "1250 then 1251", &gold), 0.0);
        assert_eq!(score(Scoring::LastNumber, "1250.0", &gold), 1.0);
        assert_eq!(score(Scoring::LastNumber, "no answer", &gold), 0.0);
    }
}
