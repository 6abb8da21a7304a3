//! The numbers router training shows while it runs: LM loss, penalty, achieved sparsity per
//! category, each multiplier, the Gumbel temperature and the token rate. One metric type, one
//! instance per number.

use std::sync::Arc;

use burn::train::metric::{
    Adaptor, Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes,
    NumericEntry, SerializedEntry,
};
use flux_router::TaskCategory;

use super::trainer::RouterStepOutput;

impl Adaptor<RouterStepOutput> for RouterStepOutput {
    fn adapt(&self) -> RouterStepOutput {
        self.clone()
    }
}

/// Which number a [`RouterMetric`] follows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RouterMetricKind {
    /// Mean next-token loss over the answer tokens (token-weighted).
    LmLoss,
    /// The sparsity penalty.
    Penalty,
    /// Mean share of sparse layers over every sequence.
    Sparsity,
    /// Mean share of sparse layers over the sequences of one category.
    CategorySparsity(TaskCategory),
    /// `lambda1` of one category.
    Lambda1(TaskCategory),
    /// `lambda2` of one category.
    Lambda2(TaskCategory),
    /// Gumbel temperature.
    Tau,
    /// Tokens per second of the step (padding excluded).
    TokensPerSecond,
}

impl RouterMetricKind {
    /// Every number shown in training.
    pub fn training() -> Vec<Self> {
        let mut kinds = vec![Self::LmLoss, Self::Penalty, Self::Sparsity];
        kinds.extend(TaskCategory::ALL.map(Self::CategorySparsity));
        kinds.extend(TaskCategory::ALL.map(Self::Lambda1));
        kinds.extend(TaskCategory::ALL.map(Self::Lambda2));
        kinds.extend([Self::Tau, Self::TokensPerSecond]);
        kinds
    }

    /// Every number shown in validation.
    pub fn validation() -> Vec<Self> {
        let mut kinds = vec![Self::LmLoss, Self::Sparsity];
        kinds.extend(TaskCategory::ALL.map(Self::CategorySparsity));
        kinds
    }

    /// The metric's name (unique; also its log file's name).
    pub fn name(&self) -> String {
        let cat = |c: &TaskCategory| {
            serde_json::to_value(c)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        };
        match self {
            Self::LmLoss => "lm_loss".into(),
            Self::Penalty => "penalty".into(),
            Self::Sparsity => "sparsity".into(),
            Self::CategorySparsity(c) => format!("sparsity_{}", cat(c)),
            Self::Lambda1(c) => format!("lambda1_{}", cat(c)),
            Self::Lambda2(c) => format!("lambda2_{}", cat(c)),
            Self::Tau => "tau".into(),
            Self::TokensPerSecond => "tokens_per_second".into(),
        }
    }

    /// The value and its weight in `out`, if `out` has it.
    pub fn read(&self, out: &RouterStepOutput) -> Option<(f64, usize)> {
        let mean_of = |values: Vec<f64>| {
            (!values.is_empty()).then(|| {
                (
                    values.iter().sum::<f64>() / values.len() as f64,
                    values.len(),
                )
            })
        };
        match self {
            Self::LmLoss => Some((out.lm_loss, out.lm_tokens.max(1))),
            Self::Penalty => out.penalty.map(|p| (p, 1)),
            Self::Sparsity => mean_of(out.sparsity.iter().map(|(_, s)| *s).collect()),
            Self::CategorySparsity(c) => mean_of(
                out.sparsity
                    .iter()
                    .filter(|(k, _)| k == c)
                    .map(|(_, s)| *s)
                    .collect(),
            ),
            Self::Lambda1(c) => out
                .lambdas
                .as_ref()
                .map(|(l1, _)| (l1[c.index()] as f64, 1)),
            Self::Lambda2(c) => out
                .lambdas
                .as_ref()
                .map(|(_, l2)| (l2[c.index()] as f64, 1)),
            Self::Tau => out.tau.map(|t| (t, 1)),
            Self::TokensPerSecond => {
                (out.seconds > 0.0).then(|| (out.tokens as f64 / out.seconds, 1))
            }
        }
    }
}

/// A running (weighted) mean of one [`RouterMetricKind`] over an epoch.
#[derive(Debug, Clone)]
pub struct RouterMetric {
    kind: RouterMetricKind,
    name: MetricName,
    sum: f64,
    count: usize,
    current: f64,
    /// Weight of the last update (0: the last item did not have this number).
    last_weight: usize,
}

impl RouterMetric {
    /// A metric following `kind`.
    pub fn new(kind: RouterMetricKind) -> Self {
        Self {
            kind,
            name: Arc::new(kind.name()),
            sum: 0.0,
            count: 0,
            current: f64::NAN,
            last_weight: 0,
        }
    }

    fn running(&self) -> f64 {
        if self.count == 0 {
            f64::NAN
        } else {
            self.sum / self.count as f64
        }
    }
}

impl Metric for RouterMetric {
    type Input = RouterStepOutput;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn update(&mut self, item: &RouterStepOutput, _metadata: &MetricMetadata) -> SerializedEntry {
        let weight = match self.kind.read(item) {
            Some((value, weight)) if value.is_finite() => {
                self.sum += value * weight as f64;
                self.count += weight;
                self.current = value;
                weight
            }
            _ => 0,
        };
        self.last_weight = weight;
        let entry = NumericEntry::Aggregated {
            aggregated_value: if weight > 0 {
                self.current
            } else {
                self.running()
            },
            count: weight,
        };
        SerializedEntry::new(
            format!("epoch {:.4} - batch {:.4}", self.running(), self.current),
            entry.serialize(),
        )
    }

    fn clear(&mut self) {
        self.sum = 0.0;
        self.count = 0;
        self.current = f64::NAN;
        self.last_weight = 0;
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: None,
            higher_is_better: matches!(self.kind, RouterMetricKind::TokensPerSecond),
        }
        .into()
    }
}

impl Numeric for RouterMetric {
    fn value(&self) -> NumericEntry {
        NumericEntry::Aggregated {
            aggregated_value: self.current,
            count: self.last_weight,
        }
    }

    fn running_value(&self) -> NumericEntry {
        NumericEntry::Aggregated {
            aggregated_value: self.running(),
            count: self.count.max(1),
        }
    }
}
