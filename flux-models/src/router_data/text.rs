//! Plain-text helpers: sentences, paragraphs and a word list from the addresses.

use std::collections::BTreeSet;
use std::ops::Range;

/// Words that end with a period without ending the sentence.
const ABBREVIATIONS: &[&str] = &[
    "Mr", "Mrs", "Ms", "Messrs", "Dr", "St", "Jr", "Sr", "Gen", "Gov", "Hon", "Rev", "Lt", "Col",
    "Capt", "Cmdr", "Adm", "Sen", "Sens", "Rep", "Reps", "No", "Nos", "vs", "Mt", "Ft", "Co",
    "Inc", "Jan", "Feb", "Aug", "Sept", "Oct", "Nov", "Dec", "Art", "Sec", "Stat", "ch", "viz",
    "pp", "p", "cf",
];

/// Splits `text` (one line of prose) into sentences: a sentence ends at `.`, `?` or `!`
/// (closing quotes and brackets included) followed by white space and a capital letter, an
/// opening quote or bracket, unless the word before the period is an abbreviation or an
/// initial. A bracketed remark that opens a sentence (`[Applause]`) is a sentence of its own.
pub(crate) fn split_sentences(text: &str) -> Vec<String> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut out = Vec::new();
    let mut start = 0usize; // byte offset of the current sentence
    let mut i = 0usize;
    let push = |out: &mut Vec<String>, s: &str| {
        let s = s.trim();
        if !s.is_empty() {
            out.push(s.to_string());
        }
    };
    while i < chars.len() {
        let (pos, c) = chars[i];
        let closes_remark =
            c == ']' && text[start..pos].starts_with('[') && !text[start..pos].contains(']');
        if matches!(c, '.' | '?' | '!') || closes_remark {
            let mut j = i + 1;
            while j < chars.len()
                && matches!(chars[j].1, '"' | '\'' | ')' | ']' | '\u{201d}' | '\u{2019}')
            {
                j += 1;
            }
            if j < chars.len() && chars[j].1.is_whitespace() {
                let mut k = j;
                while k < chars.len() && chars[k].1.is_whitespace() {
                    k += 1;
                }
                let opens = k < chars.len() && {
                    let n = chars[k].1;
                    n.is_uppercase() || matches!(n, '"' | '[' | '(' | '\u{201c}' | '\'')
                };
                if opens && !(c == '.' && ends_with_abbreviation(&text[start..pos])) {
                    push(&mut out, &text[start..chars[j].0]);
                    start = chars[k].0;
                    i = k;
                    continue;
                }
            }
        }
        i += 1;
    }
    push(&mut out, &text[start..]);
    out
}

/// Whether the word before a period (at the end of `before`) is an abbreviation or initial.
fn ends_with_abbreviation(before: &str) -> bool {
    let word = before
        .rsplit(|c: char| c.is_whitespace())
        .next()
        .unwrap_or("")
        .trim_start_matches(|c: char| !c.is_alphanumeric());
    if word.is_empty() {
        return false;
    }
    let mut letters = word.chars();
    let single = letters.next().is_some_and(|c| c.is_uppercase()) && letters.next().is_none();
    single || word.contains('.') || ABBREVIATIONS.contains(&word)
}

/// Groups sentences into paragraphs: runs of whole sentences of at least `min_words` words
/// (the last one may be shorter). Returns sentence index ranges.
pub(crate) fn paragraphs(sentences: &[String], min_words: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut words = 0;
    for (i, s) in sentences.iter().enumerate() {
        words += s.split_whitespace().count();
        if words >= min_words {
            out.push(start..i + 1);
            start = i + 1;
            words = 0;
        }
    }
    if start < sentences.len() {
        out.push(start..sentences.len());
    }
    out
}

/// The distinct lowercase ASCII words of `min..=max` letters in `texts`, sorted.
pub(crate) fn word_list<'a>(
    texts: impl IntoIterator<Item = &'a str>,
    min: usize,
    max: usize,
) -> Vec<String> {
    let mut set = BTreeSet::new();
    for text in texts {
        for word in text.split(|c: char| !c.is_alphabetic()) {
            if (min..=max).contains(&word.len()) && word.bytes().all(|b| b.is_ascii_lowercase()) {
                set.insert(word.to_string());
            }
        }
    }
    set.into_iter().collect()
}

/// Number of white-space separated words.
pub(crate) fn word_count(s: &str) -> usize {
    s.split_whitespace().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences() {
        let s = split_sentences(
            "Mr. Speaker, the U.S. Navy grew. It is strong! Is it? [Applause] Thank you. \"Yes,\" he said.",
        );
        assert_eq!(
            s,
            vec![
                "Mr. Speaker, the U.S. Navy grew.",
                "It is strong!",
                "Is it?",
                "[Applause]",
                "Thank you.",
                "\"Yes,\" he said."
            ]
        );
    }

    #[test]
    fn paragraph_groups() {
        let s: Vec<String> = ["a b c", "d e", "f g h i", "j"].map(String::from).to_vec();
        assert_eq!(paragraphs(&s, 5), vec![0..2, 2..4]);
        assert_eq!(paragraphs(&s, 4), vec![0..2, 2..3, 3..4]);
    }
}
