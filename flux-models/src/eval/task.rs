//! Evaluation tasks, one JSON object per line:
//!
//! ```json
//! {"id": "niah_single-4096-0", "task": "niah_single", "context": "...", "question": "...",
//!  "answers": ["8160734"], "max_new_tokens": 32, "chat": true}
//! ```
//!
//! The prompt is `context` then `question` (through the model's chat template when `chat` is
//! true); the greedy output is scored against `answers` ([`super::score`]). An optional
//! `"scoring"` field picks the rule (`"match_all"`, the default, or `"last_number"`).

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::score::Scoring;
use crate::error::{ModelError, Result};

/// The most tokens a task may ask to generate (a typo of a few zeros should not run for hours).
const MAX_NEW_TOKENS: usize = 4096;

/// One evaluation sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalTask {
    /// Unique within its file.
    pub id: String,
    /// The task it belongs to (rows of the summary table).
    pub task: String,
    /// The long part of the prompt.
    pub context: String,
    /// What is asked, after the context.
    pub question: String,
    /// What the output must contain (at least one).
    pub answers: Vec<String>,
    /// Tokens generated at most.
    pub max_new_tokens: usize,
    /// Whether the prompt goes through the model's chat template.
    pub chat: bool,
    /// How the output is scored (default: the fraction of `answers` found in it).
    #[serde(default, skip_serializing_if = "Scoring::is_default")]
    pub scoring: Scoring,
}

impl EvalTask {
    /// The prompt text before any chat template: the context, then the question.
    pub fn prompt(&self) -> String {
        if self.context.is_empty() {
            return self.question.clone();
        }
        format!("{}\n\n{}", self.context, self.question)
    }

    /// Why the task cannot be run, if it cannot.
    fn problem(&self) -> Option<String> {
        if self.id.trim().is_empty() {
            return Some("`id` is empty".into());
        }
        if self.task.trim().is_empty() {
            return Some(format!("task {}: `task` is empty", self.id));
        }
        if self.question.trim().is_empty() && self.context.trim().is_empty() {
            return Some(format!(
                "task {}: both `context` and `question` are empty",
                self.id
            ));
        }
        if self.answers.is_empty() || self.answers.iter().any(|a| a.trim().is_empty()) {
            return Some(format!(
                "task {}: `answers` must hold at least one non-empty answer",
                self.id
            ));
        }
        if self.max_new_tokens == 0 || self.max_new_tokens > MAX_NEW_TOKENS {
            return Some(format!(
                "task {}: `max_new_tokens` {} must be in 1..={MAX_NEW_TOKENS}",
                self.id, self.max_new_tokens
            ));
        }
        if self.scoring == Scoring::LastNumber && last_number_of_answers(&self.answers).is_none() {
            return Some(format!(
                "task {}: `last_number` scoring needs a number as the first answer",
                self.id
            ));
        }
        None
    }
}

fn last_number_of_answers(answers: &[String]) -> Option<f64> {
    answers.first().and_then(|a| super::score::last_number(a))
}

/// What to do with a malformed line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MalformedLines {
    /// Stop at the first one with an error naming the file and line.
    Reject,
    /// Leave it out and report it in [`TaskFile::skipped`].
    Skip,
}

/// The tasks of a file, and the lines left out.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskFile {
    /// The file read.
    pub path: PathBuf,
    /// The tasks, in file order.
    pub tasks: Vec<EvalTask>,
    /// `(line number, why)` of each malformed line left out ([`MalformedLines::Skip`]).
    pub skipped: Vec<(usize, String)>,
}

/// Reads a task file (blank lines are ignored). A malformed line (bad JSON, a missing or unknown
/// field, an empty answer list, a duplicate id, ...) is an error naming the file and the line,
/// or is left out and listed, as `malformed` says. A file with no task is an error.
pub fn read_tasks(path: &Path, malformed: MalformedLines) -> Result<TaskFile> {
    if path.is_dir() {
        return Err(ModelError::TaskFile {
            path: path.to_path_buf(),
            line: 0,
            message: "is a directory, not a task file (.jsonl)".into(),
        });
    }
    let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    read_tasks_from(BufReader::new(file), path, malformed)
}

/// [`read_tasks`] of task lines from any reader; `path` only names the file in messages. (The
/// fuzz targets under `fuzz/` read task files this way.)
pub fn read_tasks_from(
    reader: impl BufRead,
    path: &Path,
    malformed: MalformedLines,
) -> Result<TaskFile> {
    let mut out = TaskFile {
        path: path.to_path_buf(),
        tasks: Vec::new(),
        skipped: Vec::new(),
    };
    let mut ids = HashSet::new();
    for (index, line) in reader.lines().enumerate() {
        let number = index + 1;
        let line = line.map_err(|e| ModelError::TaskFile {
            path: path.to_path_buf(),
            line: number,
            message: format!("cannot read: {e}"),
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = serde_json::from_str::<EvalTask>(&line)
            .map_err(|e| format!("not a task: {e}"))
            .and_then(|t| match t.problem() {
                Some(p) => Err(p),
                None if !ids.insert(t.id.clone()) => Err(format!("duplicate id {}", t.id)),
                None => Ok(t),
            });
        match (parsed, malformed) {
            (Ok(t), _) => out.tasks.push(t),
            (Err(message), MalformedLines::Reject) => {
                return Err(ModelError::TaskFile {
                    path: path.to_path_buf(),
                    line: number,
                    message,
                })
            }
            (Err(message), MalformedLines::Skip) => out
                .skipped
                .push((number, crate::error::printable(&message).into_owned())),
        }
    }
    if out.tasks.is_empty() {
        return Err(ModelError::TaskFile {
            path: path.to_path_buf(),
            line: 0,
            message: "holds no task".into(),
        });
    }
    Ok(out)
}

/// Writes `tasks` as a task file, one line each, through a temporary file and a rename.
pub fn write_tasks(path: &Path, tasks: &[EvalTask]) -> Result<()> {
    let mut bytes = Vec::new();
    for t in tasks {
        let line = serde_json::to_string(t).map_err(|e| ModelError::TaskFile {
            path: path.to_path_buf(),
            line: 0,
            message: e.to_string(),
        })?;
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
    }
    crate::training::write_atomically(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn task(id: &str) -> EvalTask {
        EvalTask {
            id: id.into(),
            task: "niah_single".into(),
            context: "The magic number is 42.".into(),
            question: "What is the magic number?".into(),
            answers: vec!["42".into()],
            max_new_tokens: 16,
            chat: true,
            scoring: Scoring::MatchAll,
        }
    }

    // Found by fuzzing (fuzz/, target `task_file`): serde_json names an unknown field as it is,
    // so a field name with a newline (`"questi\n"` in the JSON) made a two-line error.
    #[test]
    fn malformed_lines_are_one_line_errors_even_with_control_characters() {
        let line = r#"{"id": "a", "questi\n\u001b[2J": 1}"#;
        let err = read_tasks_from(
            line.as_bytes(),
            Path::new("t.jsonl"),
            MalformedLines::Reject,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("t.jsonl:1: not a task: unknown field `questi\\n\\u{1b}[2J`"),
            "{err}"
        );
        let text = format!("{line}\n{}\n", serde_json::to_string(&task("b")).unwrap());
        let file =
            read_tasks_from(text.as_bytes(), Path::new("t.jsonl"), MalformedLines::Skip).unwrap();
        assert_eq!(file.tasks.len(), 1);
        assert_eq!(file.skipped.len(), 1);
        assert!(!file.skipped[0].1.contains('\n'), "{:?}", file.skipped);
    }

    fn temp(name: &str, text: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("flux-tasks-{}-{name}.jsonl", std::process::id()));
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        path
    }

    #[test]
    fn tasks_round_trip_through_a_file() {
        let mut math = task("b");
        math.scoring = Scoring::LastNumber;
        math.answers = vec!["1,250".into()];
        let path = temp("roundtrip", "");
        write_tasks(&path, &[task("a"), math.clone()]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.lines().next().unwrap().contains("scoring"),
            "default left out"
        );
        let read = read_tasks(&path, MalformedLines::Reject).unwrap();
        assert_eq!(read.tasks, vec![task("a"), math]);
        assert!(read.skipped.is_empty());
        assert_eq!(
            task("a").prompt(),
            "The magic number is 42.\n\nWhat is the magic number?"
        );
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn malformed_lines_are_named_by_number_and_rejected_or_skipped() {
        let good = serde_json::to_string(&task("a")).unwrap();
        let dup = good.clone();
        let mut no_answer = task("c");
        no_answer.answers.clear();
        let no_answer = serde_json::to_string(&no_answer).unwrap();
        let zero = serde_json::to_string(&EvalTask {
            max_new_tokens: 0,
            ..task("d")
        })
        .unwrap();
        let text = format!(
            "{good}\n\n{{\"id\": \"x\"\n{dup}\n{no_answer}\n{zero}\n{}\n",
            good.replace("\"chat\"", "\"unknown\":1,\"chat\"")
                .replace("\"a\"", "\"e\"")
        );
        let path = temp("bad", &text);
        let err = read_tasks(&path, MalformedLines::Reject)
            .unwrap_err()
            .to_string();
        assert!(err.contains(":3:") && err.contains("not a task"), "{err}");
        let read = read_tasks(&path, MalformedLines::Skip).unwrap();
        assert_eq!(read.tasks, vec![task("a")]);
        let lines: Vec<usize> = read.skipped.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, vec![3, 4, 5, 6, 7]);
        assert!(read.skipped[1].1.contains("duplicate id a"));
        assert!(read.skipped[2].1.contains("answers"));
        assert!(read.skipped[3].1.contains("max_new_tokens"));
        assert!(read.skipped[4].1.contains("unknown"));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn empty_files_and_directories_are_errors() {
        let path = temp("empty", "\n\n");
        let err = read_tasks(&path, MalformedLines::Skip)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no task"), "{err}");
        let _ = std::fs::remove_file(&path);
        let err = read_tasks(&std::env::temp_dir(), MalformedLines::Skip)
            .unwrap_err()
            .to_string();
        assert!(err.contains("directory"), "{err}");
        let err = read_tasks(Path::new("/nonexistent/tasks.jsonl"), MalformedLines::Skip)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/tasks.jsonl"), "{err}");
    }
}
