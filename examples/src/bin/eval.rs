//! Long-context evaluation: runs a task file (JSON lines, see the README) under several routing
//! plans, so that every plan sees the same samples, and writes the per-sample results and a
//! summary table (accuracy per task x length x plan, sparsity, prefill and decode speed).
//! `--make-suite NAME` writes a built-in suite as such a file instead. The summary is also
//! drawn as PNG plots; `--plots-from DIR` redraws them from DIR/summary.json without a model.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use flux_attention::{AttentionMode, FluxBackend};
use flux_examples::dtype_args::DTypeArgs;
use flux_examples::eval_plots::{draw_plots, EvalSummary};
use flux_examples::routing_args::SparseModeArgs;
use flux_models::backend::{run_on, BackendChoice, BackendTask};
use flux_models::eval::{
    evaluate_task, make_math_suite, make_suite, prompt_ids, read_math_problems, read_tasks,
    summarize, summary_markdown, write_tasks, EvalTask, Haystack, MalformedLines, SampleResult,
    Suite, SuiteConfig, MATH_SUITE,
};
use flux_models::router_data::{read_split, RouterSample};
use flux_models::training::{cheapest_layers_plan, layer_sparsification_costs};
use flux_models::{load_as, Model, ModelError, Routing, Tokenizer};
use flux_router::{ForcedPlan, RouterSet, RoutingPlan};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

/// Evaluate routing plans and trained routers on a task file.
#[derive(Parser, Clone)]
struct Args {
    /// Model folder (config.json, *.safetensors, tokenizer.json) or GGUF file.
    #[arg(long, required_unless_present_any = ["plots_from", "make_suite"])]
    model: Option<PathBuf>,
    /// Task file (JSON lines).
    #[arg(long, required_unless_present_any = ["make_suite", "plots_from"])]
    tasks: Option<PathBuf>,
    /// Only redraw the PNG plots from DIR/summary.json (of an earlier run, e.g. on another
    /// machine) into DIR, or into --out when given; no model is loaded.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["tasks", "make_suite", "model"])]
    plots_from: Option<PathBuf>,
    /// Write a built-in suite (niah_single, niah_single_word, niah_single_uuid, niah_mk, niah_mv,
    /// niah_mq, vt, cwe, fwe, qa_chapter) to --out (a .jsonl file), sized
    /// with --model's tokenizer, instead of evaluating; or math_gsm, the short-math suite
    /// (GSM8K problems; no model or lengths needed).
    #[arg(long)]
    make_suite: Option<String>,
    /// Problem files of math_gsm (default: texts/gsm-symbolic-eng from scripts/fetch-models.sh).
    #[arg(long, value_name = "DIR")]
    math_dir: Option<PathBuf>,
    /// Haystack text of --make-suite (default: Moby-Dick from scripts/fetch-models.sh).
    #[arg(long)]
    haystack: Option<PathBuf>,
    /// Prompt lengths in tokens of --make-suite.
    #[arg(long, value_delimiter = ',', default_value = "4096,8192")]
    lengths: Vec<usize>,
    /// Seed of --make-suite (math_gsm: 0 keeps the problems' order, others shuffle it).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A forced plan to evaluate (repeatable): all-full, all-sparse, first:K, last:K,
    /// fraction:F or layers:A,B,... Without --plan and --router: all-full and all-sparse.
    #[arg(long = "plan")]
    plans: Vec<String>,
    /// Trained routers to evaluate (repeatable), named by their file name.
    #[arg(long = "router")]
    routers: Vec<PathBuf>,
    /// At most this many samples of each task (the first ones of the file); with
    /// --make-suite, the samples per length (default 20; math_gsm: all 100).
    #[arg(long)]
    samples: Option<usize>,
    /// After the plans and routers, run static plans with as many sparse layers as each router
    /// chose on average: the first K, the last K, and K spread evenly (fraction).
    #[arg(long)]
    baselines: bool,
    /// With --baselines, also the calibrated static plan: the K layers whose sparsification
    /// alone costs least (answer-token loss) on the first --calibration-samples training
    /// samples of this router data folder (make_router_data; never the eval tasks).
    #[arg(long, requires = "baselines")]
    calibration: Option<PathBuf>,
    /// Samples of --calibration.
    #[arg(long, default_value_t = 8)]
    calibration_samples: usize,
    /// Leave out malformed task lines (listed on stderr) instead of stopping at the first.
    #[arg(long)]
    skip_malformed: bool,
    /// Output folder (samples.jsonl, summary.json, summary.md and the PNG plots), or the suite
    /// file of --make-suite.
    #[arg(long, required_unless_present = "plots_from")]
    out: Option<PathBuf>,
    /// Backend to run on.
    #[arg(long, default_value_t = BackendChoice::Ndarray)]
    backend: BackendChoice,
    #[command(flatten)]
    dtype: DTypeArgs,
    #[command(flatten)]
    sparse: SparseModeArgs,
}

/// How one evaluated plan routes.
enum PlanSetup<B: FluxBackend> {
    Forced(RoutingPlan),
    Full,
    Routers(RouterSet<B>, AttentionMode),
}

impl<B: FluxBackend> PlanSetup<B> {
    fn routing(&self) -> Routing<'_, B> {
        match self {
            PlanSetup::Full => Routing::Full,
            PlanSetup::Forced(plan) => Routing::Plan(plan),
            PlanSetup::Routers(routers, sparse_mode) => Routing::Routers {
                routers,
                sparse_mode: *sparse_mode,
            },
        }
    }
}

impl Args {
    /// The plans to run, named, in command-line order (plans, then routers).
    fn plans<B: FluxBackend>(&self, model: &Model<B>) -> Result<Vec<(String, PlanSetup<B>)>> {
        let layers = model.config().num_layers;
        let mode = self.sparse.mode();
        mode.validate()?;
        let mut names: Vec<String> = self.plans.clone();
        if names.is_empty() && self.routers.is_empty() {
            names = vec!["all-full".into(), "all-sparse".into()];
        }
        let mut out = Vec::new();
        for name in names {
            let forced: ForcedPlan = name.parse().with_context(|| format!("--plan {name}"))?;
            let plan = RoutingPlan::forced(&forced, layers, mode, 1)?;
            let setup = if plan.sparse_layers(0) == 0 {
                PlanSetup::Full
            } else {
                PlanSetup::Forced(plan)
            };
            out.push((name, setup));
        }
        for path in &self.routers {
            let meta = RouterSet::<B>::read_meta(path)?;
            let sparse_mode = match self.sparse.sparse_mode {
                Some(choice) => self.sparse.mode_of(choice),
                None => meta.sparse_mode,
            };
            let expected = model.router_meta(sparse_mode, meta.pool_tokens);
            let (routers, _) = RouterSet::load(path, &expected, model.device())?;
            let name = format!(
                "router:{}",
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            );
            out.push((name, PlanSetup::Routers(routers, sparse_mode)));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some((dup, _)) = out.iter().find(|(n, _)| !seen.insert(n.clone())) {
            bail!("plan {dup} is given twice");
        }
        Ok(out)
    }
}

/// The first `limit` tasks of each task name, in file order.
fn first_of_each(tasks: Vec<EvalTask>, limit: Option<usize>) -> Vec<EvalTask> {
    let Some(limit) = limit else {
        return tasks;
    };
    let mut taken: HashMap<String, usize> = HashMap::new();
    tasks
        .into_iter()
        .filter(|t| {
            let n = taken.entry(t.task.clone()).or_default();
            *n += 1;
            *n <= limit
        })
        .collect()
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    flux_models::training::write_atomically(path, text.as_bytes())?;
    Ok(())
}

/// Where results go as they come: `samples.jsonl` (appended and flushed, so an interrupted run
/// keeps what it measured) and memory.
struct SampleLog {
    file: File,
    path: PathBuf,
    results: Vec<SampleResult>,
    skipped: Vec<String>,
}

/// Every task under every plan, task by task (a stopped run has compared the plans on the same
/// samples so far). A prompt too long for the model is skipped and listed.
fn run_plans<B: FluxBackend>(
    model: &Model<B>,
    tokenizer: &Tokenizer,
    tasks: &[EvalTask],
    plans: &[(String, PlanSetup<B>)],
    bar: &ProgressBar,
    log: &mut SampleLog,
) -> Result<()> {
    let context = model.config().max_position_embeddings;
    let fits = |task: &EvalTask| -> Result<bool> {
        Ok(prompt_ids(tokenizer, task)?.len() + task.max_new_tokens <= context)
    };
    // Kernels compile on their first call: one untimed short run of the first task under each
    // plan keeps compilation out of the timings of whichever plan would run first.
    let mut warm_up = None;
    for task in tasks {
        if fits(task)? {
            warm_up = Some(task);
            break;
        }
    }
    if let Some(task) = warm_up {
        let mut short = task.clone();
        short.max_new_tokens = short.max_new_tokens.min(2);
        for (name, setup) in plans {
            bar.set_message(format!("warm-up / {name}"));
            evaluate_task(model, tokenizer, &short, name, setup.routing())
                .with_context(|| format!("warm-up on task {}, plan {name}", task.id))?;
        }
    }
    for task in tasks {
        let prompt = prompt_ids(tokenizer, task)?.len();
        if prompt + task.max_new_tokens > context {
            let message = format!(
                "task {}: {prompt} prompt tokens + {} to generate exceed the model's context of {context}",
                task.id, task.max_new_tokens
            );
            bar.println(format!("eval: skipped: {message}"));
            if !log.skipped.contains(&message) {
                log.skipped.push(message);
            }
            bar.inc(plans.len() as u64);
            continue;
        }
        for (name, setup) in plans {
            bar.set_message(format!("{} / {name}", task.id));
            let r = evaluate_task(model, tokenizer, task, name, setup.routing())
                .with_context(|| format!("task {}, plan {name}", task.id))?;
            writeln!(log.file, "{}", serde_json::to_string(&r)?)
                .and_then(|_| log.file.flush())
                .map_err(|e| ModelError::io(&log.path, e))?;
            log.results.push(r);
            bar.inc(1);
        }
    }
    Ok(())
}

impl BackendTask for Args {
    type Output = ();
    type Error = anyhow::Error;

    fn run<B: FluxBackend>(self, device: B::Device) -> Result<()> {
        let malformed = if self.skip_malformed {
            MalformedLines::Skip
        } else {
            MalformedLines::Reject
        };
        // The task file first: a bad file should not wait for the model to load.
        let tasks_path = self.tasks.clone().context("--tasks is required")?;
        let model_path = self.model.clone().context("--model is required")?;
        let out = self.out.clone().context("--out is required")?;
        let file = read_tasks(&tasks_path, malformed)?;
        for (line, why) in &file.skipped {
            eprintln!("eval: {}:{line}: skipped: {why}", tasks_path.display());
        }
        if self.samples == Some(0) {
            bail!("--samples must be at least 1");
        }
        let tasks = first_of_each(file.tasks, self.samples);
        std::fs::create_dir_all(&out).map_err(|e| ModelError::io(&out, e))?;
        let loaded = load_as::<B>(
            &model_path,
            &device,
            self.dtype.resolve::<B>(self.backend, &device)?,
        )?;
        let plans = self.plans(&loaded.model)?;
        let plan_names: Vec<String> = plans.iter().map(|(n, _)| n.clone()).collect();
        eprintln!(
            "eval: {} tasks x {} plans ({}) on {}",
            tasks.len(),
            plans.len(),
            plan_names.join(", "),
            model_path.display()
        );

        let samples_path = out.join("samples.jsonl");
        let mut log = SampleLog {
            file: File::create(&samples_path).map_err(|e| ModelError::io(&samples_path, e))?,
            path: samples_path.clone(),
            results: Vec::new(),
            skipped: Vec::new(),
        };
        let bar = ProgressBar::new((tasks.len() * plans.len()) as u64).with_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed} eta {eta}")?
                .progress_chars("=> "),
        );
        run_plans(
            &loaded.model,
            &loaded.tokenizer,
            &tasks,
            &plans,
            &bar,
            &mut log,
        )?;
        // Static plans with as many sparse layers as each router chose on average.
        let mut plan_names = plan_names;
        let mut baselines = serde_json::Map::new();
        if self.baselines {
            let layers = loaded.model.config().num_layers;
            let calibration = match &self.calibration {
                Some(dir) => {
                    let path = dir.join("train.bin.gz");
                    let samples = read_split(&path)?;
                    let context = loaded.model.config().max_position_embeddings;
                    let kept: Vec<RouterSample> = samples
                        .into_iter()
                        .filter(|s| s.ids.len() <= context)
                        .take(self.calibration_samples)
                        .collect();
                    if kept.is_empty() {
                        bail!(
                            "--calibration {}: no training sample fits the model's context of {context}",
                            dir.display()
                        );
                    }
                    Some(kept)
                }
                None => None,
            };
            // Per sparse mode: what making each layer alone sparse costs on the calibration set.
            let mut costs: HashMap<String, Vec<f64>> = HashMap::new();
            let mut extra = Vec::new();
            for (name, setup) in &plans {
                // The baselines use the router's own sparse mode.
                let PlanSetup::Routers(_, mode) = setup else {
                    continue;
                };
                let mine: Vec<f64> = log
                    .results
                    .iter()
                    .filter(|r| &r.plan == name)
                    .map(|r| r.sparsity)
                    .collect();
                let k = (mine.iter().sum::<f64>() / mine.len().max(1) as f64 * layers as f64)
                    .round() as usize;
                let mut names = Vec::new();
                if k > 0 {
                    for plan in [
                        format!("first:{k}"),
                        format!("last:{k}"),
                        // Three decimals name the same K again (`fraction` rounds).
                        format!("fraction:{:.3}", k as f64 / layers as f64),
                    ] {
                        if !plan_names.contains(&plan) && !extra.iter().any(|(n, _)| n == &plan) {
                            let forced: ForcedPlan = plan.parse()?;
                            let routing = RoutingPlan::forced(&forced, layers, *mode, 1)?;
                            extra.push((plan.clone(), PlanSetup::Forced(routing)));
                        }
                        names.push(plan);
                    }
                }
                let mut calibrated = None;
                if let (Some(samples), true) = (&calibration, k > 0) {
                    let key = mode.to_string();
                    if !costs.contains_key(&key) {
                        let refs: Vec<&RouterSample> = samples.iter().collect();
                        bar.set_message(format!("calibrating layers ({key})"));
                        let c = layer_sparsification_costs(&loaded.model, &refs, *mode, || {})?;
                        costs.insert(key.clone(), c);
                    }
                    let plan = cheapest_layers_plan(&costs[&key], k, *mode)?;
                    let label = format!("calibrated:{k}");
                    calibrated = Some(plan.layer_string(0));
                    if !extra.iter().any(|(n, _)| n == &label) {
                        extra.push((label.clone(), PlanSetup::Forced(plan)));
                    }
                    names.push(label);
                }
                baselines.insert(
                    name.clone(),
                    serde_json::json!({"sparse_layers": k, "plans": names, "calibrated_layers": calibrated,
                        "calibration_samples": calibration.as_ref().map(Vec::len)}),
                );
            }
            if !extra.is_empty() {
                bar.inc_length((tasks.len() * extra.len()) as u64);
                run_plans(
                    &loaded.model,
                    &loaded.tokenizer,
                    &tasks,
                    &extra,
                    &bar,
                    &mut log,
                )?;
                plan_names.extend(extra.iter().map(|(n, _)| n.clone()));
            }
        }
        let SampleLog {
            results, skipped, ..
        } = log;
        bar.finish_and_clear();
        if results.is_empty() {
            bail!("no task could be run ({} skipped)", skipped.len());
        }
        let rows = summarize(&results);
        let table = summary_markdown(&rows, &plan_names);
        let summary = serde_json::json!({
            "model": model_path.display().to_string(),
            "tasks_file": tasks_path.display().to_string(),
            "plans": plan_names,
            "sparse_mode": self.sparse.mode().to_string(),
            "backend": self.backend.to_string(),
            "dtype": flux_models::dtype_name(loaded.model.dtype()),
            "rows": rows,
            "skipped": skipped,
            "baselines": baselines,
        });
        write_file(
            &out.join("summary.json"),
            &serde_json::to_string_pretty(&summary)?,
        )?;
        write_file(&out.join("summary.md"), &table)?;
        println!("{table}");
        eprintln!(
            "eval: wrote {}, summary.json and summary.md in {}",
            samples_path.display(),
            out.display()
        );
        // The measured results are on disk already: a plot that cannot be drawn is a warning
        // (redraw with --plots-from), not a failed run.
        let summary = EvalSummary {
            plans: plan_names,
            rows,
        };
        if let Err(e) = print_plots(&summary, &out) {
            eprintln!("eval: warning: no plots: {e:#}");
        }
        Ok(())
    }
}

/// The cache of `scripts/fetch-models.sh` (`$FLUX_MODELS_DIR`, else ~/.cache/flux-models).
fn models_cache() -> PathBuf {
    match std::env::var_os("FLUX_MODELS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/flux-models")
        }
    }
}

/// `--make-suite`: the suite's tasks, sized with the model's tokenizer, written to `--out`.
fn make_suite_file(args: &Args, name: &str) -> Result<()> {
    let out = args.out.as_ref().context("--out is required")?;
    if args.samples == Some(0) {
        bail!("--samples must be at least 1");
    }
    let (tasks, described) = if name == MATH_SUITE {
        let dir = args
            .math_dir
            .clone()
            .unwrap_or_else(|| models_cache().join("texts/gsm-symbolic-eng"));
        let problems = read_math_problems(&dir).with_context(|| {
            format!("the problems of {MATH_SUITE} (scripts/fetch-models.sh fetches them; or pass --math-dir)")
        })?;
        let tasks = make_math_suite(&problems, args.samples, args.seed);
        (tasks, format!("seed {}", args.seed))
    } else {
        let suite = Suite::from_name(name).map_err(|_| {
            anyhow::anyhow!(
                "--make-suite: unknown suite `{name}` (known: {}, {MATH_SUITE})",
                Suite::ALL.map(|s| s.name()).join(", ")
            )
        })?;
        let haystack_path = args
            .haystack
            .clone()
            .unwrap_or_else(|| models_cache().join("texts/moby-dick.txt"));
        let text = std::fs::read_to_string(&haystack_path).with_context(|| {
            format!(
                "{}: cannot read the haystack (scripts/fetch-models.sh fetches Moby-Dick; or pass --haystack)",
                haystack_path.display()
            )
        })?;
        let haystack = Haystack::new(&text).with_context(|| haystack_path.display().to_string())?;
        let tokenizer = Tokenizer::load(args.model.as_ref().context("--model is required")?)?;
        let config = SuiteConfig {
            lengths: args.lengths.clone(),
            samples: args.samples.unwrap_or(20),
            seed: args.seed,
        };
        let tasks = make_suite(suite, &haystack, &tokenizer, &config)?;
        (
            tasks,
            format!("lengths {:?}, seed {}", config.lengths, config.seed),
        )
    };
    write_tasks(out, &tasks)?;
    let bytes = std::fs::read(out).map_err(|e| ModelError::io(out, e))?;
    eprintln!(
        "eval: wrote {} ({} tasks of {name}, {described}), sha256 {:x}",
        out.display(),
        tasks.len(),
        Sha256::digest(&bytes)
    );
    Ok(())
}

/// Draws the plots of `summary` into `dir` and prints the paths written (stdout) and the
/// plots skipped (stderr).
fn print_plots(summary: &EvalSummary, dir: &Path) -> Result<()> {
    let plots = draw_plots(summary, dir)?;
    for why in &plots.skipped {
        eprintln!("eval: {why}");
    }
    for path in &plots.written {
        println!("{}", path.display());
    }
    Ok(())
}

/// `--plots-from DIR`: the plots of DIR/summary.json, into `--out` or DIR.
fn plots_from(dir: &Path, out: Option<&Path>) -> Result<()> {
    let summary = EvalSummary::read(&dir.join("summary.json"))?;
    print_plots(&summary, out.unwrap_or(dir))
}

fn main() {
    let args = Args::parse();
    let result = match (&args.plots_from, &args.make_suite) {
        (Some(dir), _) => plots_from(dir, args.out.as_deref()),
        (None, Some(name)) => make_suite_file(&args, name),
        (None, None) => run_on(args.backend, args.clone()),
    };
    flux_examples::exit::exit_on_error("eval", || result);
}
