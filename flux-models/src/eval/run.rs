//! Running task files under routing plans: one greedy generation per (task, plan), scored, and
//! the summary table (accuracy per task x length x plan, sparsity, prefill and decode speed).

use std::collections::BTreeMap;

use flux_attention::FluxBackend;
use serde::{Deserialize, Serialize};

use super::score::score;
use super::task::EvalTask;
use crate::error::{ModelError, Result};
use crate::generation::{generate_routed, GenerationConfig};
use crate::model::{Model, Routing};
use crate::tokenizer::{ChatMessage, Tokenizer};

/// What one task scored under one plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleResult {
    /// The task's id.
    pub id: String,
    /// The task's name.
    pub task: String,
    /// The plan's name (as given to `eval`).
    pub plan: String,
    /// The length bucket of the prompt ([`length_bucket`]).
    pub length: usize,
    /// Prompt tokens (after the chat template).
    pub prompt_tokens: usize,
    /// The greedy output.
    pub output: String,
    /// The score in `[0, 1]`.
    pub score: f64,
    /// The plan the prefill ran: one `F` (full) or `S` (sparse) per layer.
    pub layers: String,
    /// Share of sparse layers.
    pub sparsity: f64,
    /// Seconds of the prefill (with the first token).
    pub prefill_seconds: f64,
    /// Seconds of the decode steps after the first token.
    pub decode_seconds: f64,
    /// Tokens generated.
    pub generated_tokens: usize,
}

/// The length column of a prompt of `tokens` tokens: the smallest of 1K, 2K, 4K, ... that holds
/// it (suites write prompts that fit their target length).
pub fn length_bucket(tokens: usize) -> usize {
    tokens.max(1024).next_power_of_two()
}

/// The token ids of `task`'s prompt: through the chat template (the context then the question
/// as one user message) when `task.chat`, else the raw text with the tokenizer's special tokens.
pub fn prompt_ids(tokenizer: &Tokenizer, task: &EvalTask) -> Result<Vec<u32>> {
    if task.chat {
        let text =
            tokenizer.apply_chat_template(&[ChatMessage::new("user", task.prompt())], true)?;
        // The template writes the special tokens itself.
        tokenizer.encode(&text, false)
    } else {
        tokenizer.encode(&task.prompt(), true)
    }
}

/// Runs `task` greedily under `routing` (named `plan`) and scores the output. A prompt that
/// does not fit the model's context with the tokens to generate is an error naming the task.
pub fn evaluate_task<B: FluxBackend>(
    model: &Model<B>,
    tokenizer: &Tokenizer,
    task: &EvalTask,
    plan: &str,
    routing: Routing<'_, B>,
) -> Result<SampleResult> {
    let ids = prompt_ids(tokenizer, task)?;
    let context = model.config().max_position_embeddings;
    if ids.len() + task.max_new_tokens > context {
        return Err(ModelError::InvalidArgument {
            argument: "tasks".into(),
            message: format!(
                "task {}: {} prompt tokens + {} to generate exceed the model's context of {context}",
                task.id,
                ids.len(),
                task.max_new_tokens
            ),
        });
    }
    let out = generate_routed(
        model,
        tokenizer,
        &ids,
        &GenerationConfig::greedy(task.max_new_tokens),
        routing,
        |_| {},
    )?;
    let layers = match &out.plan {
        Some(p) => p.layer_string(0),
        None => "F".repeat(model.config().num_layers),
    };
    let sparse = layers.chars().filter(|&c| c == 'S').count();
    Ok(SampleResult {
        id: task.id.clone(),
        task: task.task.clone(),
        plan: plan.to_string(),
        length: length_bucket(ids.len()),
        prompt_tokens: ids.len(),
        score: score(task.scoring, &out.text, &task.answers),
        output: out.text,
        sparsity: sparse as f64 / layers.len().max(1) as f64,
        layers,
        prefill_seconds: out.prefill_seconds,
        decode_seconds: out.decode_seconds,
        generated_tokens: out.tokens.len(),
    })
}

/// One cell of the summary: a task at a length under a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryRow {
    /// Task name.
    pub task: String,
    /// Length bucket.
    pub length: usize,
    /// Plan name.
    pub plan: String,
    /// Samples.
    pub samples: usize,
    /// Mean score x 100.
    pub accuracy: f64,
    /// Mean share of sparse layers.
    pub sparsity: f64,
    /// Prompt tokens per second of the prefills (total tokens over total time).
    pub prefill_tokens_per_second: f64,
    /// Generated tokens per second of the decode steps (total over total).
    pub decode_tokens_per_second: f64,
}

/// The summary of `results`: one row per (task, length, plan), in that order.
pub fn summarize(results: &[SampleResult]) -> Vec<SummaryRow> {
    #[derive(Default)]
    struct Sums {
        n: usize,
        score: f64,
        sparsity: f64,
        prompt_tokens: usize,
        prefill_seconds: f64,
        decode_tokens: usize,
        decode_seconds: f64,
    }
    let mut cells: BTreeMap<(String, usize, String), Sums> = BTreeMap::new();
    for r in results {
        let c = cells
            .entry((r.task.clone(), r.length, r.plan.clone()))
            .or_default();
        c.n += 1;
        c.score += r.score;
        c.sparsity += r.sparsity;
        c.prompt_tokens += r.prompt_tokens;
        c.prefill_seconds += r.prefill_seconds;
        // The first token comes from the prefill.
        c.decode_tokens += r.generated_tokens.saturating_sub(1);
        c.decode_seconds += r.decode_seconds;
    }
    cells
        .into_iter()
        .map(|((task, length, plan), c)| SummaryRow {
            task,
            length,
            plan,
            samples: c.n,
            accuracy: 100.0 * c.score / c.n as f64,
            sparsity: c.sparsity / c.n as f64,
            prefill_tokens_per_second: c.prompt_tokens as f64 / c.prefill_seconds.max(1e-9),
            decode_tokens_per_second: if c.decode_tokens == 0 {
                0.0
            } else {
                c.decode_tokens as f64 / c.decode_seconds.max(1e-9)
            },
        })
        .collect()
}

/// The summary as a markdown table: one row per (task, length), one accuracy column per plan
/// (in `plans` order), then each plan's mean sparsity and prefill speed over all its samples.
pub fn summary_markdown(rows: &[SummaryRow], plans: &[String]) -> String {
    let mut out = String::new();
    out.push_str("| task | length | n |");
    for p in plans {
        out.push_str(&format!(" {p} |"));
    }
    out.push_str("\n|---|---|---|");
    out.push_str(&"---|".repeat(plans.len()));
    out.push('\n');
    let mut keys: Vec<(String, usize)> = rows.iter().map(|r| (r.task.clone(), r.length)).collect();
    keys.dedup();
    for (task, length) in keys {
        let cell = |p: &String| {
            rows.iter()
                .find(|r| r.task == task && r.length == length && &r.plan == p)
        };
        let n = plans
            .iter()
            .filter_map(cell)
            .map(|r| r.samples)
            .max()
            .unwrap_or(0);
        out.push_str(&format!("| {task} | {length} | {n} |"));
        for p in plans {
            match cell(p) {
                Some(r) => out.push_str(&format!(" {:.1} |", r.accuracy)),
                None => out.push_str(" - |"),
            }
        }
        out.push('\n');
    }
    for (label, value) in [
        ("mean sparsity", 0usize),
        ("prefill tokens/s", 1),
        ("decode tokens/s", 2),
    ] {
        out.push_str(&format!("| {label} | | |"));
        for p in plans {
            let mine: Vec<&SummaryRow> = rows.iter().filter(|r| &r.plan == p).collect();
            let n: usize = mine.iter().map(|r| r.samples).sum();
            let mean = |f: &dyn Fn(&SummaryRow) -> f64| {
                mine.iter().map(|r| f(r) * r.samples as f64).sum::<f64>() / n.max(1) as f64
            };
            let v = match value {
                0 => format!("{:.2}", mean(&|r| r.sparsity)),
                1 => format!("{:.0}", mean(&|r| r.prefill_tokens_per_second)),
                _ => format!("{:.1}", mean(&|r| r.decode_tokens_per_second)),
            };
            out.push_str(&format!(" {v} |"));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(task: &str, plan: &str, tokens: usize, score: f64, sparsity: f64) -> SampleResult {
        SampleResult {
            id: format!("{task}-{tokens}"),
            task: task.into(),
            plan: plan.into(),
            length: length_bucket(tokens),
            prompt_tokens: tokens,
            output: String::new(),
            score,
            layers: String::new(),
            sparsity,
            prefill_seconds: tokens as f64 / 1000.0,
            decode_seconds: 1.0,
            generated_tokens: 11,
        }
    }

    #[test]
    fn lengths_are_bucketed_up_to_powers_of_two() {
        assert_eq!(length_bucket(10), 1024);
        assert_eq!(length_bucket(1024), 1024);
        assert_eq!(length_bucket(1025), 2048);
        assert_eq!(length_bucket(4000), 4096);
    }

    #[test]
    fn the_summary_averages_per_task_length_and_plan() {
        let results = vec![
            result("niah", "full", 4000, 1.0, 0.0),
            result("niah", "full", 3900, 0.5, 0.0),
            result("niah", "sparse", 4000, 0.0, 1.0),
            result("niah", "full", 8000, 1.0, 0.0),
            result("vt", "sparse", 4000, 0.25, 0.5),
        ];
        let rows = summarize(&results);
        assert_eq!(rows.len(), 4);
        let full4k = &rows[0];
        assert_eq!(
            (full4k.task.as_str(), full4k.length, full4k.plan.as_str()),
            ("niah", 4096, "full")
        );
        assert_eq!(full4k.samples, 2);
        assert!((full4k.accuracy - 75.0).abs() < 1e-9);
        assert!((full4k.prefill_tokens_per_second - 1000.0).abs() < 1e-6);
        assert!((full4k.decode_tokens_per_second - 10.0).abs() < 1e-9);
        let table = summary_markdown(&rows, &["full".into(), "sparse".into()]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "| task | length | n | full | sparse |");
        assert_eq!(lines[2], "| niah | 4096 | 2 | 75.0 | 0.0 |");
        assert_eq!(lines[3], "| niah | 8192 | 1 | 100.0 | - |");
        assert_eq!(lines[4], "| vt | 4096 | 1 | - | 25.0 |");
        assert_eq!(lines[5], "| mean sparsity | | | 0.00 | 0.75 |");
    }
}
