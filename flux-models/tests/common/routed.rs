//! Helpers of the routed-model tests: tiny models, token tensors, seeded router weights.

use burn::module::{ModuleMapper, Param};
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use flux_models::{load_weights, Model};
use rand::{rngs::StdRng, Rng, SeedableRng};

use super::fixture;

pub fn tiny<Bk: Backend>(name: &str) -> Model<Bk> {
    load_weights::<Bk>(
        &fixture(&format!("tiny-models/{name}")),
        &Default::default(),
    )
    .unwrap()
}

pub fn tokens<Bk: Backend>(rows: &[Vec<u32>]) -> Tensor<Bk, 2, Int> {
    let n = rows[0].len();
    let flat: Vec<i64> = rows.iter().flatten().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), n]), &Default::default())
}

pub fn values<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f64> {
    t.into_data().convert::<f64>().into_vec().unwrap()
}

/// Replaces every float parameter with values drawn from a seeded generator (the backend's own
/// generator is shared by concurrent tests): weights uniform in `±gain / sqrt(fan_in)`, biases
/// in `±gain / 4`.
pub struct Randomize<Bk> {
    rng: StdRng,
    gain: f32,
    _backend: std::marker::PhantomData<Bk>,
}

impl<Bk> Randomize<Bk> {
    pub fn new(seed: u64, gain: f32) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            gain,
            _backend: Default::default(),
        }
    }
}

impl<Bk: Backend> ModuleMapper<Bk> for Randomize<Bk> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<Bk, D>>) -> Param<Tensor<Bk, D>> {
        let (rng, gain) = (&mut self.rng, self.gain);
        param.map(|t| {
            let shape = t.shape();
            let scale = if D == 2 {
                gain / (shape[0] as f32).sqrt()
            } else {
                gain / 4.0
            };
            let n = shape.num_elements();
            let values: Vec<f32> = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
            let values = TensorData::new(values, [n]).convert::<Bk::FloatElem>();
            // A fresh leaf: a parameter must not be the output of another op.
            Tensor::<Bk, 1>::from_data(values, &t.device())
                .reshape(shape)
                .require_grad()
        })
    }
}

/// Samples of random tokens: a prompt and a short answer, every category in turn.
pub fn random_samples(
    n: usize,
    seed: u64,
    len: std::ops::Range<usize>,
) -> Vec<flux_models::router_data::RouterSample> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let total = rng.random_range(len.clone());
            let ids: Vec<u32> = (0..total).map(|_| rng.random_range(3..500)).collect();
            let category = flux_router::TaskCategory::ALL[i % flux_router::TaskCategory::ALL.len()];
            flux_models::router_data::RouterSample {
                ids,
                prompt_span: 1..total - 4,
                answer: total - 4..total,
                category,
                target: category.default_target(),
                family: "synthetic".into(),
            }
        })
        .collect()
}
