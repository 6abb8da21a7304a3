//! What trained routers learned, on the validation split of router data: per task category,
//! the achieved sparsity (hard decisions, as at inference) and the answer loss, against full
//! attention, all-sparse, and a static plan with the same number of sparse layers chosen as
//! the layers whose sparsification costs least on training samples.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Parser;
use flux_attention::FluxBackend;
use flux_examples::dtype_args::DTypeArgs;
use flux_models::backend::{run_on, BackendChoice, BackendTask};
use flux_models::router_data::{read_split, RouterSample};
use flux_models::training::{
    cheapest_layers_plan, layer_sparsification_costs, mean_loss, SampleScore,
};
use flux_models::{load_as, Routing};
use flux_router::{ForcedPlan, RouterSet, RoutingPlan, TaskCategory};
use indicatif::{ProgressBar, ProgressStyle};

/// Compare trained routers with full attention, all-sparse and a calibrated static plan.
#[derive(Parser, Clone)]
struct Args {
    /// Model folder or GGUF file.
    #[arg(long)]
    model: PathBuf,
    /// Router data folder (train.bin.gz for calibration, valid.bin.gz for the comparison).
    #[arg(long)]
    data: PathBuf,
    /// Trained routers.
    #[arg(long)]
    router: PathBuf,
    /// Validation samples scored (at most).
    #[arg(long, default_value_t = 60)]
    max_valid: usize,
    /// Training samples used to rank the layers for the static plan.
    #[arg(long, default_value_t = 16)]
    calibration: usize,
    /// Drop samples longer than this many tokens.
    #[arg(long)]
    seq_len: Option<usize>,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Backend to run on.
    #[arg(long, default_value_t = BackendChoice::Ndarray)]
    backend: BackendChoice,
    #[command(flatten)]
    dtype: DTypeArgs,
}

/// Per-category mean of the sparsity and token-weighted answer loss of `scores`.
fn by_category(
    samples: &[&RouterSample],
    scores: &[SampleScore],
) -> BTreeMap<String, (f64, f64, usize)> {
    let mut acc: BTreeMap<String, (f64, f64, usize, usize)> = BTreeMap::new();
    for (s, score) in samples.iter().zip(scores) {
        let name = serde_json::to_value(s.category)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let e = acc.entry(name).or_default();
        e.0 += score.sparsity;
        e.1 += score.nll_sum;
        e.2 += score.tokens;
        e.3 += 1;
    }
    acc.into_iter()
        .map(|(k, (sp, nll, tok, n))| (k, (sp / n as f64, nll / tok.max(1) as f64, n)))
        .collect()
}

impl BackendTask for Args {
    type Output = ();
    type Error = anyhow::Error;

    fn run<B: FluxBackend>(self, device: B::Device) -> Result<()> {
        let keep = |mut v: Vec<RouterSample>| {
            if let Some(max) = self.seq_len {
                v.retain(|s| s.ids.len() <= max);
            }
            v
        };
        let valid = keep(read_split(&self.data.join("valid.bin.gz"))?);
        let train = keep(read_split(&self.data.join("train.bin.gz"))?);
        let valid: Vec<&RouterSample> = valid.iter().take(self.max_valid).collect();
        let calibration: Vec<&RouterSample> = train.iter().take(self.calibration).collect();
        if valid.is_empty() || calibration.is_empty() {
            bail!(
                "{}: no validation or no calibration sample left",
                self.data.display()
            );
        }
        let model = load_as::<B>(
            &self.model,
            &device,
            self.dtype.resolve::<B>(self.backend, &device)?,
        )?
        .model;
        let file_meta = RouterSet::<B>::read_meta(&self.router)?;
        let expected = model.router_meta(file_meta.sparse_mode, file_meta.pool_tokens);
        let (routers, meta) = RouterSet::<B>::load(&self.router, &expected, &device)?;
        let mode = meta.sparse_mode;
        let layers = model.num_layers();
        let total = (valid.len() * 4 + calibration.len() * (layers + 1)) as u64;
        let bar = ProgressBar::new(total).with_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed} eta {eta}")?
                .progress_chars("=> "),
        );
        bar.set_message("router report");
        let tick = || bar.inc(1);

        let (router_loss, router_scores) = mean_loss(
            &model,
            &valid,
            Routing::Routers {
                routers: &routers,
                sparse_mode: mode,
            },
            tick,
        )?;
        let (full_loss, full_scores) = mean_loss(&model, &valid, Routing::Full, tick)?;
        let all_sparse = RoutingPlan::forced(&ForcedPlan::AllSparse, layers, mode, 1)?;
        let (sparse_loss, sparse_scores) =
            mean_loss(&model, &valid, Routing::Plan(&all_sparse), tick)?;
        let costs = layer_sparsification_costs(&model, &calibration, mode, tick)?;
        let mean_sparsity =
            router_scores.iter().map(|s| s.sparsity).sum::<f64>() / router_scores.len() as f64;
        let k = (mean_sparsity * layers as f64).round() as usize;
        let static_plan = cheapest_layers_plan(&costs, k, mode)?;
        let (static_loss, static_scores) =
            mean_loss(&model, &valid, Routing::Plan(&static_plan), tick)?;
        bar.finish_and_clear();

        let cats = |scores: &[SampleScore]| by_category(&valid, scores);
        let (r, f, s, st) = (
            cats(&router_scores),
            cats(&full_scores),
            cats(&sparse_scores),
            cats(&static_scores),
        );
        println!(
            "routers {} on {} validation samples ({} layers, {}); static plan {} ({k} sparse layers, ranked on {} training samples)",
            self.router.display(),
            valid.len(),
            layers,
            mode,
            static_plan.layer_string(0),
            calibration.len()
        );
        println!("| category | n | target | router sparsity | loss full | loss router | loss static | loss all-sparse | router vs full |");
        println!("|---|---|---|---|---|---|---|---|---|");
        let mut rows = Vec::new();
        for (name, (sp, loss, n)) in &r {
            let target = TaskCategory::ALL
                .iter()
                .find(|c| {
                    serde_json::to_value(c)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .as_deref()
                        == Some(name.as_str())
                })
                .map(|c| c.default_target())
                .unwrap_or(f64::NAN);
            let lf = f.get(name).map_or(f64::NAN, |v| v.1);
            let ls = st.get(name).map_or(f64::NAN, |v| v.1);
            let la = s.get(name).map_or(f64::NAN, |v| v.1);
            println!(
                "| {name} | {n} | {target:.2} | {sp:.3} | {lf:.4} | {loss:.4} | {ls:.4} | {la:.4} | {:+.1} % |",
                100.0 * (loss / lf - 1.0)
            );
            rows.push(serde_json::json!({
                "category": name, "samples": n, "target": target, "router_sparsity": sp,
                "loss_full": lf, "loss_router": loss, "loss_static": ls, "loss_all_sparse": la,
            }));
        }
        println!(
            "| all | {} | | {mean_sparsity:.3} | {full_loss:.4} | {router_loss:.4} | {static_loss:.4} | {sparse_loss:.4} | {:+.1} % |",
            valid.len(),
            100.0 * (router_loss / full_loss - 1.0)
        );
        if let Some(path) = &self.json {
            let report = serde_json::json!({
                "router": self.router.display().to_string(),
                "model": self.model.display().to_string(),
                "sparse_mode": mode.to_string(),
                "valid_samples": valid.len(),
                "calibration_samples": calibration.len(),
                "layer_costs": costs,
                "static_plan": static_plan.layer_string(0),
                "router_mean_sparsity": mean_sparsity,
                "loss": {"full": full_loss, "router": router_loss, "static": static_loss, "all_sparse": sparse_loss},
                "categories": rows,
                "router_routes": router_scores.iter().map(|s| s.routes.iter().map(|r| if *r == flux_router::LayerRoute::Full { 'F' } else { 'S' }).collect::<String>()).collect::<Vec<_>>(),
            });
            flux_models::training::write_atomically(
                path,
                serde_json::to_string_pretty(&report)?.as_bytes(),
            )?;
        }
        Ok(())
    }
}

fn main() {
    let args = Args::parse();
    flux_examples::exit::exit_on_error("router_report", || run_on(args.backend, args.clone()));
}
