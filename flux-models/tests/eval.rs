//! Evaluation on the real SmolLM2-135M-Instruct (ndarray): a needle task through the chat
//! template is answered at full attention and scored by the rule, a plan whose window cannot
//! see the needle is run on the same task, and the summary has a row per plan.

mod common;

use common::{cached, B};
use flux_attention::AttentionMode;
use flux_models::eval::{evaluate_task, summarize, summary_markdown, EvalTask, Scoring};
use flux_models::{load, Routing};
use flux_router::{ForcedPlan, RoutingPlan};

fn needle_task() -> EvalTask {
    let filler = "The ship sailed on through the grey water while the crew kept watch. ";
    let context = format!(
        "{}The special magic number for blue-apple is: 8160734. {}",
        filler.repeat(3),
        filler.repeat(40)
    );
    EvalTask {
        id: "niah-0".into(),
        task: "niah_single".into(),
        context,
        question: "What is the special magic number for blue-apple? Answer with the number only."
            .into(),
        answers: vec!["8160734".into()],
        max_new_tokens: 24,
        chat: true,
        scoring: Scoring::MatchAll,
    }
}

#[test]
fn a_needle_is_found_at_full_attention_and_every_plan_is_summarised() {
    let loaded = load::<B>(
        &cached("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"),
        &Default::default(),
    )
    .unwrap();
    let (model, tokenizer) = (&loaded.model, &loaded.tokenizer);
    let task = needle_task();
    let full = evaluate_task(model, tokenizer, &task, "all-full", Routing::Full).unwrap();
    assert_eq!(full.score, 1.0, "full attention output: {:?}", full.output);
    assert_eq!(full.layers, "F".repeat(30));
    assert_eq!(full.sparsity, 0.0);
    assert_eq!(full.length, 1024);
    assert!(full.prompt_tokens > 600 && full.generated_tokens >= 1);

    // Sink 4 + window 8: the needle sits about 600 tokens before the question, beyond what 30
    // stacked windows of 8 tokens can carry (240 tokens).
    let plan = RoutingPlan::forced(
        &"all-sparse".parse::<ForcedPlan>().unwrap(),
        30,
        AttentionMode::Streaming { sink: 4, window: 8 },
        1,
    )
    .unwrap();
    let sparse =
        evaluate_task(model, tokenizer, &task, "all-sparse", Routing::Plan(&plan)).unwrap();
    assert_eq!(sparse.layers, "S".repeat(30));
    assert_eq!(sparse.sparsity, 1.0);
    assert_eq!(sparse.prompt_tokens, full.prompt_tokens);
    assert!(
        !sparse.output.contains("8160734"),
        "an 8-token window cannot copy the needle: {:?}",
        sparse.output
    );
    assert_eq!(sparse.score, 0.0);

    let rows = summarize(&[full, sparse]);
    assert_eq!(rows.len(), 2);
    let table = summary_markdown(&rows, &["all-full".into(), "all-sparse".into()]);
    assert!(
        table.contains("| niah_single | 1024 | 1 | 100.0 | 0.0 |"),
        "{table}"
    );

    // A prompt longer than the context is refused with the task's id.
    let mut long = needle_task();
    long.id = "too-long".into();
    long.context = "word ".repeat(9000);
    let err = evaluate_task(model, tokenizer, &long, "all-full", Routing::Full)
        .unwrap_err()
        .to_string();
    assert!(err.contains("too-long") && err.contains("context"), "{err}");
}

#[test]
fn suites_are_deterministic_fit_their_length_and_hide_every_needle_where_stated() {
    use flux_models::eval::{make_suite, prompt_ids, Haystack, Suite, SuiteConfig};
    use flux_models::Tokenizer;
    let tokenizer = Tokenizer::load(&cached(
        "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf",
    ))
    .unwrap();
    let text = std::fs::read_to_string(cached("texts/moby-dick.txt")).unwrap();
    let haystack = Haystack::new(&text).unwrap();
    let config = SuiteConfig {
        lengths: vec![1024, 3500],
        samples: 3,
        seed: 7,
    };
    for suite in Suite::ALL {
        let tasks = make_suite(suite, &haystack, &tokenizer, &config).unwrap();
        let again = make_suite(suite, &haystack, &tokenizer, &config).unwrap();
        assert_eq!(tasks, again, "{suite:?} is not deterministic");
        let other = make_suite(
            suite,
            &haystack,
            &tokenizer,
            &SuiteConfig {
                seed: 8,
                ..config.clone()
            },
        )
        .unwrap();
        assert_ne!(tasks, other, "{suite:?} ignores the seed");
        assert_eq!(tasks.len(), 6);
        for t in &tasks {
            assert_eq!(t.task, suite.name());
            let length: usize = t.id.split('-').nth(1).unwrap().parse().unwrap();
            let tokens = prompt_ids(&tokenizer, t).unwrap().len();
            // Filled to within 10 % of the length, never beyond it.
            assert!(
                tokens <= length && tokens * 10 >= length * 9,
                "{}: {tokens} tokens",
                t.id
            );
            // Every answer is in the context (VT: the names, NIAH: the values).
            for a in &t.answers {
                assert!(t.context.contains(a.as_str()), "{}: {a} missing", t.id);
            }
            // Needles stay out of the last 2.5K tokens when the prompt allows (3.5K here),
            // i.e. in the first (3500 - 2560) / 3500 = 27 % of the text, plus the intro.
            if suite == Suite::NiahSingleUuid {
                let uuid = &t.answers[0];
                assert_eq!(uuid.len(), 36, "{uuid}");
                assert_eq!(uuid.matches('-').count(), 4, "{uuid}");
            }
            if suite == Suite::ChapterTitle {
                // The asked chapter's heading, then its title, are in the excerpt.
                let number = t
                    .question
                    .split("chapter ")
                    .nth(1)
                    .unwrap()
                    .split(' ')
                    .next()
                    .unwrap();
                let heading = format!("CHAPTER {number}. {}.", t.answers[0]);
                assert!(t.context.contains(&heading), "{}: {heading} missing", t.id);
            }
            if suite == Suite::NiahMultiQuery {
                assert_eq!(t.answers.len(), 4);
                assert_eq!(
                    t.question.matches('-').count(),
                    4,
                    "four keys asked: {}",
                    t.question
                );
            }
            if suite == Suite::CommonWords {
                // The ten answers are the most frequent entries of the list.
                let words = t
                    .context
                    .lines()
                    .skip(1)
                    .map(|l| l.split_once(". ").unwrap().1);
                assert_answers_are_the_most_frequent(&t.id, words, &t.answers);
            } else if suite == Suite::FrequentWords {
                // The three answers are the three most frequent coded words, in that order.
                let words = t.context.lines().nth(1).unwrap().split(' ');
                let counts = assert_answers_are_the_most_frequent(&t.id, words, &t.answers);
                assert!(
                    counts[0] > counts[1] && counts[1] > counts[2],
                    "{}: {counts:?}",
                    t.id
                );
            } else if length == 3500 {
                let first = t
                    .answers
                    .iter()
                    .map(|a| t.context.find(a.as_str()).unwrap())
                    .max()
                    .unwrap();
                let share = first as f64 / t.context.len() as f64;
                assert!(share < 0.32, "{}: a needle at {share:.2} of the text", t.id);
            }
        }
    }
    assert!(Suite::from_name("nope").is_err());
}

/// Asserts that every answer occurs more often among `words` than any other word; returns
/// the answers' counts.
fn assert_answers_are_the_most_frequent<'a>(
    id: &str,
    words: impl Iterator<Item = &'a str>,
    answers: &[String],
) -> Vec<usize> {
    let mut counts = std::collections::HashMap::<&str, usize>::new();
    for w in words {
        *counts.entry(w).or_default() += 1;
    }
    let of_answers: Vec<usize> = answers
        .iter()
        .map(|a| counts.get(a.as_str()).copied().unwrap_or(0))
        .collect();
    let most_other = counts
        .iter()
        .filter(|(w, _)| !answers.iter().any(|a| a == *w))
        .map(|(_, c)| *c)
        .max()
        .unwrap_or(0);
    let least = of_answers.iter().copied().min().unwrap_or(0);
    assert!(least > most_other, "{id}: {least} vs {most_other}");
    of_answers
}
