//! Long-context evaluation: the task file format (one JSON object per line, the stable
//! interface between suites and the `eval` program), the scoring rules, and running tasks
//! under routing plans into per-sample results and a summary table.

mod math;
mod run;
mod score;
mod suites;
mod task;

pub use math::{make_math_suite, read_math_problems, MathProblem, MATH_SUITE};
pub use run::{
    evaluate_task, length_bucket, prompt_ids, summarize, summary_markdown, SampleResult, SummaryRow,
};
pub use score::{last_number, score, Scoring};
pub use suites::{make_suite, Haystack, Suite, SuiteConfig};
pub use task::{read_tasks, read_tasks_from, write_tasks, EvalTask, MalformedLines, TaskFile};
