//! What training shows and keeps: every step's numbers appended to `metrics.jsonl` (the
//! source of the training curves), and either burn-train's terminal UI (when given one) or a
//! quiet line every N steps and after each validation.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use burn::train::metric::{MetricDefinition, MetricId};
use burn::train::renderer::{
    EvaluationName, EvaluationProgress, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining, ProgressType, TrainingProgress,
};
use burn::train::LearnerSummary;

/// Logs every step to a JSON-lines file and renders through `inner` or quiet lines.
pub struct MetricsLog {
    inner: Option<Box<dyn MetricsRenderer>>,
    file: Option<File>,
    names: HashMap<MetricId, String>,
    /// Values of the item being rendered.
    current: Vec<(String, f64)>,
    /// Validation sums of the epoch in progress: name -> (weighted sum, weight).
    valid: Vec<(String, f64, f64)>,
    valid_epoch: Option<usize>,
    micro_batches_per_epoch: usize,
    accumulation: usize,
    print_every: usize,
    /// The last optimizer step printed (each device of a data-parallel run reports it).
    printed_step: Option<usize>,
    started: std::time::Instant,
}

impl MetricsLog {
    /// Appends to `path` (created if missing). `micro_batches_per_epoch` and `accumulation`
    /// turn burn-train's (epoch, iteration) into the optimizer step; a quiet line is printed
    /// every `print_every` optimizer steps unless `inner` renders.
    pub fn new(
        path: &Path,
        inner: Option<Box<dyn MetricsRenderer>>,
        micro_batches_per_epoch: usize,
        accumulation: usize,
        print_every: usize,
    ) -> std::io::Result<Self> {
        drop_cut_line(path)?;
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            inner,
            file: Some(file),
            names: HashMap::new(),
            current: Vec::new(),
            valid: Vec::new(),
            valid_epoch: None,
            micro_batches_per_epoch: micro_batches_per_epoch.max(1),
            accumulation: accumulation.max(1),
            print_every: print_every.max(1),
            printed_step: None,
            started: std::time::Instant::now(),
        })
    }

    fn numeric(&self, state: &MetricState) -> Option<(String, f64, usize)> {
        match state {
            MetricState::Numeric(entry, value) => {
                let name = self.names.get(&entry.metric_id)?.clone();
                let (v, count) = match value {
                    burn::train::metric::NumericEntry::Value(v) => (*v, 1),
                    burn::train::metric::NumericEntry::Aggregated {
                        aggregated_value,
                        count,
                    } => (*aggregated_value, *count),
                };
                Some((name, v, count))
            }
            MetricState::Generic(_) => None,
        }
    }

    fn write(&mut self, line: serde_json::Value) {
        if let Some(f) = &mut self.file {
            // One write of the whole line: `writeln!` would issue a write per formatted piece,
            // and a process killed between them leaves half a line.
            let text = format!("{line}\n");
            if f.write_all(text.as_bytes())
                .and_then(|_| f.flush())
                .is_err()
            {
                eprintln!(
                    "train_router: cannot append to metrics.jsonl; metrics are no longer logged"
                );
                self.file = None;
            }
        }
    }

    fn flush_valid(&mut self) {
        let Some(epoch) = self.valid_epoch.take() else {
            return;
        };
        let mut line = serde_json::Map::new();
        line.insert("split".into(), "valid".into());
        line.insert("epoch".into(), epoch.into());
        let step = epoch * self.micro_batches_per_epoch / self.accumulation;
        line.insert("step".into(), step.into());
        let mut text = format!("valid after step {step}:");
        for (name, sum, weight) in self.valid.drain(..) {
            if weight > 0.0 {
                let mean = sum / weight;
                line.insert(name.clone(), mean.into());
                text.push_str(&format!(" {name} {mean:.4}"));
            }
        }
        if self.inner.is_none() {
            println!("{text}");
        }
        self.write(serde_json::Value::Object(line));
    }
}

impl MetricsRendererTraining for MetricsLog {
    fn update_train(&mut self, state: MetricState) {
        if let Some((name, v, count)) = self.numeric(&state) {
            if count > 0 && v.is_finite() {
                self.current.push((name, v));
            }
        }
        if let Some(inner) = &mut self.inner {
            inner.update_train(state);
        }
    }

    fn update_valid(&mut self, state: MetricState) {
        if let Some((name, v, count)) = self.numeric(&state) {
            if count > 0 && v.is_finite() {
                let w = count as f64;
                match self.valid.iter_mut().find(|(n, _, _)| *n == name) {
                    Some(entry) => {
                        entry.1 += v * w;
                        entry.2 += w;
                    }
                    None => self.valid.push((name, v * w, w)),
                }
            }
        }
        if let Some(inner) = &mut self.inner {
            inner.update_valid(state);
        }
    }

    fn render_train(&mut self, item: TrainingProgress, progress: Vec<ProgressType>) {
        self.flush_valid();
        let epoch = item.global_progress.items_processed;
        let iteration = item.iteration.unwrap_or(0);
        let micro = epoch.saturating_sub(1) * self.micro_batches_per_epoch + iteration;
        let step = micro.div_ceil(self.accumulation);
        let mut line = serde_json::Map::new();
        line.insert("split".into(), "train".into());
        line.insert("epoch".into(), epoch.into());
        line.insert("micro_batch".into(), micro.into());
        line.insert("step".into(), step.into());
        line.insert(
            "elapsed_s".into(),
            self.started.elapsed().as_secs_f64().into(),
        );
        let values: Vec<(String, f64)> = self.current.drain(..).collect();
        for (name, v) in &values {
            line.insert(name.clone(), (*v).into());
        }
        self.write(serde_json::Value::Object(line));
        if self.inner.is_none()
            && micro.is_multiple_of(self.print_every * self.accumulation)
            && self.printed_step != Some(step)
        {
            self.printed_step = Some(step);
            let get = |n: &str| values.iter().find(|(k, _)| k == n).map(|(_, v)| *v);
            println!(
                "step {step} (epoch {epoch}/{}): lm {:.4}  penalty {:.4}  sparsity {:.3}  tau {:.3}  lr {:.2e}  {:.0} tok/s",
                item.global_progress.items_total,
                get("lm_loss").unwrap_or(f64::NAN),
                get("penalty").unwrap_or(f64::NAN),
                get("sparsity").unwrap_or(f64::NAN),
                get("tau").unwrap_or(f64::NAN),
                get("Learning Rate").unwrap_or(f64::NAN),
                get("tokens_per_second").unwrap_or(f64::NAN),
            );
        }
        if let Some(inner) = &mut self.inner {
            inner.render_train(item, progress);
        }
    }

    fn render_valid(&mut self, item: TrainingProgress, progress: Vec<ProgressType>) {
        self.valid_epoch = Some(item.global_progress.items_processed);
        if let Some(inner) = &mut self.inner {
            inner.render_valid(item, progress);
        }
    }

    fn on_train_end(
        &mut self,
        summary: Option<LearnerSummary>,
    ) -> Result<(), Box<dyn core::error::Error>> {
        self.flush_valid();
        match &mut self.inner {
            Some(inner) => inner.on_train_end(summary),
            None => Ok(()),
        }
    }
}

impl MetricsRendererEvaluation for MetricsLog {
    fn update_test(&mut self, name: EvaluationName, state: MetricState) {
        if let Some(inner) = &mut self.inner {
            inner.update_test(name, state);
        }
    }

    fn render_test(&mut self, item: EvaluationProgress, progress: Vec<ProgressType>) {
        if let Some(inner) = &mut self.inner {
            inner.render_test(item, progress);
        }
    }
}

impl MetricsRenderer for MetricsLog {
    fn manual_close(&mut self) {
        if let Some(inner) = &mut self.inner {
            inner.manual_close();
        }
    }

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names
            .insert(definition.metric_id.clone(), definition.name.clone());
        if let Some(inner) = &mut self.inner {
            inner.register_metric(definition);
        }
    }
}

/// Truncates a metrics log after its last complete line: a run killed while appending (before
/// lines were written whole) may have left a cut one, which a resumed run must not extend.
fn drop_cut_line(path: &Path) -> std::io::Result<()> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if bytes.last().is_none_or(|&b| b == b'\n') {
        return Ok(());
    }
    let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(keep as u64)
}

#[cfg(test)]
mod tests {
    use super::drop_cut_line;

    #[test]
    fn a_cut_last_line_is_dropped_and_whole_logs_are_kept() {
        let dir = std::env::temp_dir().join(format!("flux-cut-line-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metrics.jsonl");
        for (before, after) in [
            ("{\"a\":1}\n{\"b\":2}\n{\"c\":", "{\"a\":1}\n{\"b\":2}\n"),
            ("{\"a\":1}\n", "{\"a\":1}\n"),
            ("{\"a\"", ""),
            ("", ""),
        ] {
            std::fs::write(&path, before).unwrap();
            drop_cut_line(&path).unwrap();
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                after,
                "from {before:?}"
            );
        }
        // A log that does not exist yet is left alone.
        std::fs::remove_file(&path).unwrap();
        drop_cut_line(&path).unwrap();
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
