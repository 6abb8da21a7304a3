//! Built-in RULER-style suites over a real haystack (Moby-Dick, which router training never
//! sees): needles (single with number, word or UUID values, multi-key, multi-value,
//! multi-query), variable tracking, common-words extraction (its words drawn from the
//! haystack's vocabulary), frequent-words extraction (coded words) and a question whose answer
//! sits in the document itself (a chapter's title), in RULER's wording where RULER has one,
//! sized in tokens of the model's own tokenizer through its chat template, deterministic for a
//! seed.
//!
//! Needles sit at depths spread over the part of the haystack a sink + 2K window cannot see
//! from the question (the first `budget - 2.5K` tokens, when the budget allows): with RULER's
//! uniform depths a quarter to a half of the needles at 4K-8K would fall inside the window, and
//! all-sparse would "find" them.

use rand::{rngs::StdRng, seq::IndexedRandom, seq::SliceRandom, Rng, SeedableRng};

use super::run::prompt_ids;
use super::score::Scoring;
use super::task::EvalTask;
use crate::error::{ModelError, Result};
use crate::tokenizer::Tokenizer;

/// Tokens at the end of the haystack kept free of needles (sink + window and the question).
const NEEDLE_FREE_TAIL: usize = 2560;

/// The share of a `budget`-token haystack where needles go: all of it but the last
/// `NEEDLE_FREE_TAIL` tokens when the budget allows, else all of it.
fn reachable_share(budget: usize) -> f64 {
    if budget > NEEDLE_FREE_TAIL + 256 {
        (budget - NEEDLE_FREE_TAIL) as f64 / budget as f64
    } else {
        1.0
    }
}

/// A built-in suite. The discriminants seed each sample: fixed, so that adding a suite leaves
/// the others' files byte for byte as they were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    /// One needle, one question (a 7-digit number).
    NiahSingle = 0,
    /// One needle whose value is a word of the haystack's vocabulary.
    NiahSingleWord = 5,
    /// One needle whose value is a UUID.
    NiahSingleUuid = 6,
    /// Four needles under four keys; one is asked.
    NiahMultiKey = 1,
    /// Four values under one key; all are asked.
    NiahMultiValue = 2,
    /// Four needles under four keys; all four keys are asked at once.
    NiahMultiQuery = 7,
    /// A chain of five variables assigned one value; all names are asked.
    VariableTracking = 3,
    /// A numbered list of words: the ten that appear most often are asked (aggregation).
    CommonWords = 4,
    /// Coded words drawn from a Zipf distribution: the three most frequent are asked.
    FrequentWords = 8,
    /// QA over the real document: an excerpt of several chapters; the title of one whose
    /// heading lies beyond a sink + window's reach from the question is asked.
    ChapterTitle = 9,
}

impl Suite {
    /// Every suite.
    pub const ALL: [Suite; 10] = [
        Suite::NiahSingle,
        Suite::NiahSingleWord,
        Suite::NiahSingleUuid,
        Suite::NiahMultiKey,
        Suite::NiahMultiValue,
        Suite::NiahMultiQuery,
        Suite::VariableTracking,
        Suite::CommonWords,
        Suite::FrequentWords,
        Suite::ChapterTitle,
    ];

    /// The task name written in the files (`niah_single`, `niah_mk`, `niah_mv`, `vt`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Suite::NiahSingle => "niah_single",
            Suite::NiahSingleWord => "niah_single_word",
            Suite::NiahSingleUuid => "niah_single_uuid",
            Suite::NiahMultiKey => "niah_mk",
            Suite::NiahMultiValue => "niah_mv",
            Suite::NiahMultiQuery => "niah_mq",
            Suite::VariableTracking => "vt",
            Suite::CommonWords => "cwe",
            Suite::FrequentWords => "fwe",
            Suite::ChapterTitle => "qa_chapter",
        }
    }

    /// The suite called `name`.
    pub fn from_name(name: &str) -> Result<Suite> {
        Suite::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| ModelError::InvalidArgument {
                argument: "suite".into(),
                message: format!(
                    "unknown suite `{name}` (known: {})",
                    Suite::ALL.map(|s| s.name()).join(", ")
                ),
            })
    }

    fn max_new_tokens(self) -> usize {
        match self {
            Suite::NiahSingle
            | Suite::NiahSingleWord
            | Suite::NiahMultiKey
            | Suite::ChapterTitle => 32,
            Suite::NiahSingleUuid | Suite::FrequentWords => 50,
            Suite::NiahMultiValue | Suite::VariableTracking => 64,
            Suite::NiahMultiQuery => 96,
            Suite::CommonWords => 120,
        }
    }
}

/// How many samples of which lengths, from which seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuiteConfig {
    /// Prompt lengths in tokens (chat template and question included, generation excluded).
    pub lengths: Vec<usize>,
    /// Samples per length.
    pub samples: usize,
    /// Seed of keys, values, haystack offsets.
    pub seed: u64,
}

/// The haystack as sentences, and its distinct words (for word lists).
pub struct Haystack {
    sentences: Vec<String>,
    /// Lowercase alphabetic words of 4-10 letters, in order of first appearance.
    words: Vec<String>,
}

impl Haystack {
    /// Splits `text` into sentences (on `.`, `!`, `?` followed by white space), with white space
    /// runs folded; needs at least 100 sentences.
    pub fn new(text: &str) -> Result<Self> {
        let folded: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut sentences = Vec::new();
        let mut start = 0;
        let bytes = folded.as_bytes();
        for i in 0..bytes.len() {
            let end = matches!(bytes[i], b'.' | b'!' | b'?') && bytes.get(i + 1) == Some(&b' ');
            if end {
                sentences.push(folded[start..=i].to_string());
                start = i + 2;
            }
        }
        if sentences.len() < 100 {
            return Err(ModelError::InvalidArgument {
                argument: "haystack".into(),
                message: format!(
                    "{} sentences: a haystack needs at least 100",
                    sentences.len()
                ),
            });
        }
        let mut seen = std::collections::HashSet::new();
        let words = folded
            .split(|c: char| !c.is_ascii_alphabetic())
            .filter(|w| (4..=10).contains(&w.len()))
            .map(str::to_ascii_lowercase)
            .filter(|w| seen.insert(w.clone()))
            .collect();
        Ok(Self { sentences, words })
    }
}

const ADJECTIVES: [&str; 40] = [
    "amber", "ancient", "bitter", "brave", "bright", "calm", "clever", "cobalt", "crimson",
    "curious", "dusty", "eager", "faint", "fierce", "frozen", "gentle", "golden", "hollow",
    "humble", "icy", "jolly", "lively", "lucky", "marble", "mellow", "misty", "noble", "quiet",
    "rapid", "rusty", "scarlet", "silent", "silver", "sleepy", "smooth", "steady", "sturdy",
    "tender", "velvet", "witty",
];
const NOUNS: [&str; 40] = [
    "anchor", "apple", "badger", "beacon", "bridge", "candle", "canyon", "castle", "cedar",
    "comet", "crystal", "dragon", "falcon", "feather", "forest", "garden", "glacier", "harbor",
    "island", "kettle", "lantern", "meadow", "mirror", "orchard", "otter", "pepper", "pillow",
    "quartz", "raven", "river", "saddle", "signal", "spindle", "summit", "thistle", "tiger",
    "tunnel", "valley", "violin", "walnut",
];

fn key(rng: &mut StdRng) -> String {
    format!(
        "{}-{}",
        ADJECTIVES.choose(rng).expect("non-empty"),
        NOUNS.choose(rng).expect("non-empty")
    )
}

fn number(rng: &mut StdRng) -> String {
    rng.random_range(1_000_000..10_000_000u32).to_string()
}

fn uuid(rng: &mut StdRng) -> String {
    let hex = |rng: &mut StdRng, n: usize| -> String {
        (0..n)
            .map(|_| char::from_digit(rng.random_range(0..16u32), 16).expect("a hex digit"))
            .collect()
    };
    format!(
        "{}-{}-{}-{}-{}",
        hex(rng, 8),
        hex(rng, 4),
        hex(rng, 4),
        hex(rng, 4),
        hex(rng, 12)
    )
}

/// A word of 6-10 letters from the haystack's vocabulary.
fn word(rng: &mut StdRng, words: &[String]) -> String {
    let long: Vec<&String> = words.iter().filter(|w| w.len() >= 6).collect();
    long.choose(rng)
        .map(|w| w.to_string())
        .unwrap_or_else(|| key(rng))
}

fn variable(rng: &mut StdRng) -> String {
    (0..5)
        .map(|_| char::from(b'A' + rng.random_range(0..26u8)))
        .collect()
}

/// What a sample hides and asks.
struct Needles {
    intro: String,
    /// Inserted in this order at increasing depths.
    statements: Vec<String>,
    question: String,
    answers: Vec<String>,
}

/// What a needle suite hides and asks (`None` for a suite without needles).
fn needles(suite: Suite, rng: &mut StdRng, words: &[String]) -> Option<Needles> {
    let intro = |kind: &str| {
        format!("Some special magic {kind}s are hidden within the following text. Make sure to memorize it. I will quiz you about the {kind}s afterwards.")
    };
    let needle = |k: &str, v: &str| format!("One of the special magic numbers for {k} is: {v}.");
    Some(match suite {
        Suite::CommonWords | Suite::FrequentWords | Suite::ChapterTitle => return None,
        Suite::NiahSingle | Suite::NiahSingleWord | Suite::NiahSingleUuid => {
            // The key first: niah_single's files stay as they were.
            let k = key(rng);
            let (kind, v) = match suite {
                Suite::NiahSingleWord => ("word", word(rng, words)),
                Suite::NiahSingleUuid => ("uuid", uuid(rng)),
                _ => ("number", number(rng)),
            };
            Needles {
                intro: intro(kind),
                statements: vec![format!("One of the special magic {kind}s for {k} is: {v}.")],
                question: format!(
                    "What is the special magic {kind} for {k} mentioned in the provided text?"
                ),
                answers: vec![v],
            }
        }
        Suite::NiahMultiKey | Suite::NiahMultiQuery => {
            let mut keys: Vec<String> = Vec::new();
            while keys.len() < 4 {
                let k = key(rng);
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
            let values: Vec<String> = (0..4).map(|_| number(rng)).collect();
            let statements = keys
                .iter()
                .zip(&values)
                .map(|(k, v)| needle(k, v))
                .collect();
            if suite == Suite::NiahMultiQuery {
                Needles {
                    intro: intro("number"),
                    statements,
                    question: format!(
                        "What are all the special magic numbers for {}, {}, {} and {} mentioned in the provided text?",
                        keys[0], keys[1], keys[2], keys[3]
                    ),
                    answers: values,
                }
            } else {
                let asked = rng.random_range(0..4);
                Needles {
                    intro: intro("number"),
                    statements,
                    question: format!(
                        "What is the special magic number for {} mentioned in the provided text?",
                        keys[asked]
                    ),
                    answers: vec![values[asked].clone()],
                }
            }
        }
        Suite::NiahMultiValue => {
            let k = key(rng);
            let values: Vec<String> = (0..4).map(|_| number(rng)).collect();
            Needles {
                intro: intro("number"),
                statements: values.iter().map(|v| needle(&k, v)).collect(),
                question: format!(
                    "What are all the special magic numbers for {k} mentioned in the provided text?"
                ),
                answers: values,
            }
        }
        Suite::VariableTracking => {
            let mut names: Vec<String> = Vec::new();
            while names.len() < 5 {
                let n = variable(rng);
                if !names.contains(&n) {
                    names.push(n);
                }
            }
            let value = rng.random_range(10_000..100_000u32).to_string();
            let mut statements = vec![format!("VAR {} = {value}.", names[0])];
            for w in names.windows(2) {
                statements.push(format!("VAR {} = VAR {}.", w[1], w[0]));
            }
            Needles {
                intro: "Memorize and track the chain(s) of variable assignment hidden in the following text.".into(),
                statements,
                question: format!(
                    "Find all variables that are assigned the value {value} in the text above."
                ),
                answers: names,
            }
        }
    })
}

/// The tasks of `suite` over `haystack`, sized with `tokenizer` (through its chat template):
/// for each length, `config.samples` samples whose prompt fits the length.
pub fn make_suite(
    suite: Suite,
    haystack: &Haystack,
    tokenizer: &Tokenizer,
    config: &SuiteConfig,
) -> Result<Vec<EvalTask>> {
    let mut tasks = Vec::new();
    for &length in &config.lengths {
        if length < 512 {
            return Err(ModelError::InvalidArgument {
                argument: "lengths".into(),
                message: format!("{length} tokens: suites need at least 512"),
            });
        }
        for i in 0..config.samples {
            let seed = config
                .seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(((length as u64) << 20) ^ (i as u64) ^ ((suite as u64) << 56));
            let mut rng = StdRng::seed_from_u64(seed);
            // Depths spread evenly over the samples of a length, each needle of a sample
            // deeper than the previous.
            let depth = (i as f64 + 0.5) / config.samples as f64;
            if suite == Suite::CommonWords {
                tasks.push(common_words(haystack, tokenizer, length, i, &mut rng)?);
                continue;
            }
            if suite == Suite::FrequentWords {
                tasks.push(frequent_words(tokenizer, length, i, &mut rng)?);
                continue;
            }
            if suite == Suite::ChapterTitle {
                tasks.push(chapter_title(
                    haystack, tokenizer, length, i, depth, &mut rng,
                )?);
                continue;
            }
            tasks.push(sample(
                suite, haystack, tokenizer, length, i, depth, &mut rng,
            )?);
        }
    }
    Ok(tasks)
}

fn sample(
    suite: Suite,
    haystack: &Haystack,
    tokenizer: &Tokenizer,
    length: usize,
    index: usize,
    depth: f64,
    rng: &mut StdRng,
) -> Result<EvalTask> {
    let n = needles(suite, rng, &haystack.words).ok_or_else(|| ModelError::InvalidArgument {
        argument: "suite".into(),
        message: format!("{} has no needles", suite.name()),
    })?;
    let start = rng.random_range(0..haystack.sentences.len());
    let mut task = EvalTask {
        id: format!("{}-{length}-{index}", suite.name()),
        task: suite.name().into(),
        context: String::new(),
        question: n.question.clone(),
        answers: n.answers.clone(),
        max_new_tokens: suite.max_new_tokens(),
        chat: true,
        scoring: Scoring::MatchAll,
    };
    // The prompt without haystack: its overhead in tokens.
    task.context = format!("{}\n{}", n.intro, n.statements.join(" "));
    let overhead = prompt_ids(tokenizer, &task)?.len();
    if overhead + 64 > length {
        return Err(ModelError::InvalidArgument {
            argument: "lengths".into(),
            message: format!("{length} tokens cannot hold a {} sample", suite.name()),
        });
    }
    // Haystack sentences from `start` (wrapping) until the budget is met.
    let budget = length - overhead;
    let mut chosen: Vec<&str> = Vec::new();
    // Tokens of each chosen sentence (with its separating space).
    let mut counts: Vec<usize> = Vec::new();
    let mut k = start;
    while counts.iter().sum::<usize>() < budget {
        let s = &haystack.sentences[k % haystack.sentences.len()];
        counts.push(tokenizer.encode(s, false)?.len() + 1);
        chosen.push(s);
        k += 1;
    }
    // Needles at increasing depths within the part a sink + window cannot see from the end.
    let reachable = reachable_share(budget);
    let count = n.statements.len();
    // The last sentence dropped for being over, and how many of its words end the text (a
    // long sentence dropped whole can leave a short prompt well under the length).
    let mut dropped: Option<&str> = None;
    let mut tail_words = 0;
    loop {
        let total: usize = counts.iter().sum();
        // Statement j goes before the first sentence that starts at or after its depth (in
        // tokens): depth * (j + 1) / count of the reachable part.
        let mut starts = Vec::with_capacity(counts.len());
        let mut at_token = 0;
        for c in &counts {
            starts.push(at_token);
            at_token += c;
        }
        let mut parts: Vec<String> = chosen.iter().map(|s| s.to_string()).collect();
        for (j, statement) in n.statements.iter().enumerate().rev() {
            let target = depth * reachable * (j + 1) as f64 / count as f64 * total as f64;
            let at = starts
                .iter()
                .position(|&t| t as f64 >= target)
                .unwrap_or(parts.len());
            parts.insert(at, statement.clone());
        }
        let tail = |words: usize| -> String {
            let all: Vec<&str> = dropped.unwrap_or("").split(' ').collect();
            all[..words.min(all.len())].join(" ")
        };
        if tail_words > 0 {
            parts.push(tail(tail_words));
        }
        task.context = format!("{}\n{}", n.intro, parts.join(" "));
        let prompt = prompt_ids(tokenizer, &task)?.len();
        if prompt <= length && (prompt * 10 >= length * 9 || tail_words > 0) {
            return Ok(task);
        }
        if prompt <= length {
            let Some(sentence) = dropped else {
                return Ok(task);
            };
            // Under 90 %: the most words of the dropped sentence that still fit end the text.
            let base = task.context.clone();
            let lo = most_that_fit(0, sentence.split(' ').count(), |words| {
                task.context = format!("{base} {}", tail(words));
                Ok(prompt_ids(tokenizer, &task)?.len() <= length)
            })?;
            if lo == 0 {
                task.context = base;
                return Ok(task);
            }
            tail_words = lo;
            continue;
        }
        if chosen.len() <= 1 {
            return Ok(task);
        }
        // Over (sentences merge differently once joined): drop sentences from the end until
        // about that many tokens are gone.
        let mut over = prompt - length;
        while over > 0 && chosen.len() > 1 {
            over = over.saturating_sub(counts.pop().unwrap_or(0));
            dropped = chosen.pop();
        }
    }
}

/// RULER's common-words extraction: ten words repeated often and many words repeated three
/// times, shuffled into a numbered list that fills the length; the ten are asked.
fn common_words(
    haystack: &Haystack,
    tokenizer: &Tokenizer,
    length: usize,
    index: usize,
    rng: &mut StdRng,
) -> Result<EvalTask> {
    // Distinct words, none inside another (an answer must not be found inside another word).
    let mut pool: Vec<&String> = haystack.words.iter().collect();
    pool.shuffle(rng);
    let mut chosen: Vec<&str> = Vec::new();
    for w in pool {
        if !chosen
            .iter()
            .any(|c| c.contains(w.as_str()) || w.contains(c))
        {
            chosen.push(w);
        }
        if chosen.len() >= length / 4 + 10 {
            break;
        }
    }
    if chosen.len() < 20 {
        return Err(ModelError::InvalidArgument {
            argument: "haystack".into(),
            message: format!(
                "{} usable words: the cwe suite needs at least 20",
                chosen.len()
            ),
        });
    }
    let (common, rest) = chosen.split_at(10);
    // RULER repeats the common words 30 times and the others 3 times; shorter lists repeat less.
    let repeats = (length / 140).clamp(4, 30);
    let mut task = EvalTask {
        id: format!("cwe-{length}-{index}"),
        task: "cwe".into(),
        context: String::new(),
        question: "Question: What are the 10 most common words in the above list?".into(),
        answers: common.iter().map(|w| w.to_string()).collect(),
        max_new_tokens: Suite::CommonWords.max_new_tokens(),
        chat: true,
        scoring: Scoring::MatchAll,
    };
    let shuffle_seed: u64 = rng.random();
    let mut build = |others: usize| -> Result<usize> {
        let mut entries: Vec<&str> = Vec::new();
        for w in common {
            entries.extend(std::iter::repeat_n(*w, repeats));
        }
        for w in &rest[..others] {
            entries.extend(std::iter::repeat_n(*w, 3));
        }
        entries.shuffle(&mut StdRng::seed_from_u64(shuffle_seed));
        let list: Vec<String> = entries
            .iter()
            .enumerate()
            .map(|(i, w)| format!("{}. {w}", i + 1))
            .collect();
        task.context = format!(
            "Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones that appear most often.\n{}",
            list.join("\n")
        );
        Ok(prompt_ids(tokenizer, &task)?.len())
    };
    // The most other words that fit (prompt length grows with their number).
    if build(0)? > length {
        return Err(ModelError::InvalidArgument {
            argument: "lengths".into(),
            message: format!("{length} tokens cannot hold a cwe sample"),
        });
    }
    let others = most_that_fit(0, rest.len(), |n| Ok(build(n)? <= length))?;
    build(others)?;
    Ok(task)
}

/// The largest `n` in `lo..=hi` for which `fits(n)` holds, `fits` being monotone (true up to
/// some `n`, false after) and `fits(lo)` true; `lo` when none above it fits.
fn most_that_fit(
    mut lo: usize,
    mut hi: usize,
    mut fits: impl FnMut(usize) -> Result<bool>,
) -> Result<usize> {
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if fits(mid)? {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Ok(lo)
}

/// RULER's frequent-words extraction: coded words (random letter strings, none inside
/// another) drawn with Zipf frequencies (exponent 2) fill the length; the three most frequent
/// are asked.
fn frequent_words(
    tokenizer: &Tokenizer,
    length: usize,
    index: usize,
    rng: &mut StdRng,
) -> Result<EvalTask> {
    let mut vocab: Vec<String> = Vec::new();
    while vocab.len() < 500 {
        let len = rng.random_range(3..=7);
        let w: String = (0..len)
            .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
            .collect();
        if !vocab
            .iter()
            .any(|v| v.contains(w.as_str()) || w.contains(v.as_str()))
        {
            vocab.push(w);
        }
    }
    let weights: Vec<f64> = (0..vocab.len())
        .map(|r| 1.0 / ((r + 1) as f64).powi(2))
        .collect();
    let total_weight: f64 = weights.iter().sum();
    let mut task = EvalTask {
        id: format!("fwe-{length}-{index}"),
        task: "fwe".into(),
        context: String::new(),
        question: "Question: Do not provide any explanation. What are the three most frequently appeared words in the above coded text?".into(),
        answers: vocab[..3].to_vec(),
        max_new_tokens: Suite::FrequentWords.max_new_tokens(),
        chat: true,
        scoring: Scoring::MatchAll,
    };
    let shuffle_seed: u64 = rng.random();
    // `words` words in all, each rank `r` `floor(words * w_r / sum w)` times.
    let mut build = |words: usize| -> Result<usize> {
        let mut entries: Vec<&str> = Vec::new();
        for (w, weight) in vocab.iter().zip(&weights) {
            let n = (words as f64 * weight / total_weight).floor() as usize;
            entries.extend(std::iter::repeat_n(w.as_str(), n));
        }
        entries.shuffle(&mut StdRng::seed_from_u64(shuffle_seed));
        task.context = format!(
            "Read the following coded text and track the frequency of each coded word. Find the three most frequently appeared coded words.\n{}",
            entries.join(" ")
        );
        Ok(prompt_ids(tokenizer, &task)?.len())
    };
    // Below about 60 words the third and fourth ranks can tie.
    const FEWEST: usize = 60;
    if build(FEWEST)? > length {
        return Err(ModelError::InvalidArgument {
            argument: "lengths".into(),
            message: format!("{length} tokens cannot hold an fwe sample"),
        });
    }
    let words = most_that_fit(FEWEST, length * 2, |n| Ok(build(n)? <= length))?;
    build(words)?;
    Ok(task)
}

/// QA whose answer sits in the real document: an excerpt of the haystack holding chapter
/// headings (`CHAPTER N.` then the title), filled to the length; the title of chapter N is
/// asked, N chosen so that its heading lies at `depth` of the part a sink + window cannot see
/// from the question.
fn chapter_title(
    haystack: &Haystack,
    tokenizer: &Tokenizer,
    length: usize,
    index: usize,
    depth: f64,
    rng: &mut StdRng,
) -> Result<EvalTask> {
    let sentences = &haystack.sentences;
    let heading =
        |s: &str| -> Option<usize> { s.strip_prefix("CHAPTER ")?.strip_suffix('.')?.parse().ok() };
    let headings: Vec<usize> = (0..sentences.len().saturating_sub(1))
        .filter(|&i| heading(&sentences[i]).is_some())
        .collect();
    let Some(&h) = headings.choose(rng) else {
        return Err(ModelError::InvalidArgument {
            argument: "haystack".into(),
            message: "no `CHAPTER N.` heading: the qa_chapter suite needs a text in chapters"
                .into(),
        });
    };
    let number = heading(&sentences[h]).expect("a heading");
    let title = sentences[h + 1].trim_end_matches('.').to_string();
    let mut task = EvalTask {
        id: format!("qa_chapter-{length}-{index}"),
        task: "qa_chapter".into(),
        context: String::new(),
        question: format!(
            "What is the title of chapter {number} in the text above? Answer with the title only."
        ),
        answers: vec![title],
        max_new_tokens: Suite::ChapterTitle.max_new_tokens(),
        chat: true,
        scoring: Scoring::MatchAll,
    };
    const INTRO: &str =
        "Below is an excerpt of a novel, in chapters. Read it: I will ask you about it afterwards.";
    task.context = INTRO.into();
    let overhead = prompt_ids(tokenizer, &task)?.len();
    if overhead + 64 > length {
        return Err(ModelError::InvalidArgument {
            argument: "lengths".into(),
            message: format!("{length} tokens cannot hold a qa_chapter sample"),
        });
    }
    let budget = length - overhead;
    let reachable = reachable_share(budget);
    // Back from the heading until `depth` of the reachable part lies before it.
    let before = (depth * reachable * budget as f64) as usize;
    let (mut start, mut tokens) = (h, 0);
    while start > 0 && tokens < before {
        start -= 1;
        tokens += tokenizer.encode(&sentences[start], false)?.len() + 1;
    }
    let text = |n: usize, words: usize| -> String {
        let mut parts: Vec<String> = (start..start + n)
            .map(|i| sentences[i % sentences.len()].clone())
            .collect();
        if words > 0 {
            let next = &sentences[(start + n) % sentences.len()];
            parts.push(next.split(' ').take(words).collect::<Vec<_>>().join(" "));
        }
        format!("{INTRO}\n{}", parts.join(" "))
    };
    // The most whole sentences that fit (the heading and title at least), then the most words
    // of the next one.
    let fewest = h - start + 2;
    let mut fits = |n: usize, words: usize| -> Result<bool> {
        task.context = text(n, words);
        Ok(prompt_ids(tokenizer, &task)?.len() <= length)
    };
    if !fits(fewest, 0)? {
        return Err(ModelError::InvalidArgument {
            argument: "lengths".into(),
            message: format!("{length} tokens cannot hold chapter {number}'s heading"),
        });
    }
    let n = most_that_fit(fewest, budget, |n| fits(n, 0))?;
    let next_words = sentences[(start + n) % sentences.len()].split(' ').count();
    let words = most_that_fit(0, next_words, |w| fits(n, w))?;
    task.context = text(n, words);
    Ok(task)
}
