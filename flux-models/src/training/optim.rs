//! One optimizer step of router training: AdamW descent for the routers (after clipping their
//! gradients to a global norm) and ascent for the constraint multipliers (AdamW on the negated
//! gradient, as torch's `maximize=True`), at a multiple of the routers' learning rate. Both
//! optimizer states are part of the record, so checkpoints hold them.

use burn::module::{list_param_ids, AutodiffModule, Module, ModuleVisitor, Param, ParamId};
use burn::optim::{
    adaptor::OptimizerAdaptor, AdamW, AdamWConfig, GradientsParams, MultiGradientsParams, Optimizer,
};
use burn::tensor::{backend::AutodiffBackend, Tensor};
use flux_attention::FluxBackend;
use flux_router::{RouterSet, SparsityObjective};

use super::layerwise::scalar;
use super::trainer::RouterTrainer;

type RouterAdamW<B> = OptimizerAdaptor<AdamW, RouterSet<B>, B>;
type LambdaAdamW<B> = OptimizerAdaptor<AdamW, SparsityObjective<B>, B>;

/// Hyper-parameters of [`RouterOptimizer`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouterOptimizerConfig {
    /// Adam's beta2 (0.95 in the reference).
    pub beta_2: f32,
    /// Decoupled weight decay of the routers (0.1).
    pub weight_decay: f32,
    /// Adam's epsilon (1e-8).
    pub epsilon: f32,
    /// The multipliers' learning rate over the routers' (1e-3 / 5e-4 = 2).
    pub lambda_lr_ratio: f64,
    /// Global-norm clipping of the router gradients (5.0); `None`: off.
    pub max_grad_norm: Option<f64>,
}

impl Default for RouterOptimizerConfig {
    fn default() -> Self {
        Self {
            beta_2: 0.95,
            weight_decay: 0.1,
            epsilon: 1e-8,
            lambda_lr_ratio: 2.0,
            max_grad_norm: Some(5.0),
        }
    }
}

/// Router descent and multiplier ascent in one [`Optimizer`].
#[derive(Clone)]
pub struct RouterOptimizer<B: AutodiffBackend> {
    routers: RouterAdamW<B>,
    lambdas: LambdaAdamW<B>,
    config: RouterOptimizerConfig,
}

impl<B: AutodiffBackend> RouterOptimizer<B> {
    /// A fresh optimizer.
    pub fn new(config: RouterOptimizerConfig) -> Self {
        let routers = AdamWConfig::new()
            .with_beta_2(config.beta_2)
            .with_weight_decay(config.weight_decay)
            .with_epsilon(config.epsilon)
            .init();
        // No decay on the multipliers: it would pull them back while they enforce the target.
        let lambdas = AdamWConfig::new()
            .with_beta_2(config.beta_2)
            .with_weight_decay(0.0)
            .with_epsilon(config.epsilon)
            .init();
        Self {
            routers,
            lambdas,
            config,
        }
    }
}

/// Sum of squares of every registered gradient of the visited module (as a device scalar).
struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    total: Vec<f64>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            self.total.push(scalar(g.powi_scalar(2).sum()));
        }
    }
}

/// Multiplies every registered gradient of the visited module by `factor`.
struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads
                .register::<B::InnerBackend, D>(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// Clips the gradients of `module`'s parameters in `grads` to the global L2 norm `max`;
/// returns the norm before clipping.
pub fn clip_global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max: f64,
) -> f64 {
    let mut squares = SquaredNorm {
        grads,
        total: Vec::new(),
    };
    module.visit(&mut squares);
    let norm = squares.total.iter().sum::<f64>().sqrt();
    if norm.is_finite() && norm > max {
        module.visit(&mut Scale {
            grads,
            factor: max / norm,
        });
    }
    norm
}

impl<B> RouterOptimizer<B>
where
    B: AutodiffBackend + FluxBackend,
    B::InnerBackend: FluxBackend,
{
    fn update(
        &mut self,
        lr: f64,
        mut module: RouterTrainer<B>,
        mut grads: GradientsParams,
    ) -> RouterTrainer<B> {
        let device = module.backbone.model().device().clone();
        super::peers::trace(&device, format_args!("optimizer step starts"));
        let mut ascent = GradientsParams::new();
        for id in list_param_ids::<_, B>(&module.objective) {
            if let Some(g) = grads.remove::<B::InnerBackend, 1>(id) {
                ascent.register::<B::InnerBackend, 1>(id, g.neg());
            }
        }
        if let Some(max) = self.config.max_grad_norm {
            clip_global_norm(&module.routers, &mut grads, max);
        }
        module.routers = self.routers.step(lr, module.routers, grads);
        module.objective =
            self.lambdas
                .step(lr * self.config.lambda_lr_ratio, module.objective, ascent);
        super::peers::trace(&device, format_args!("optimizer step done"));
        module
    }
}

/// Moves the gradients of every parameter of `module` out of `multi` (summed over devices).
struct Gather<'a> {
    multi: &'a mut MultiGradientsParams,
    into: &'a mut GradientsParams,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Gather<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let id: ParamId = param.id;
        if let Some((g, _)) = self.multi.remove::<B::InnerBackend, D>(id) {
            self.into.register::<B::InnerBackend, D>(id, g);
        }
    }
}

impl<B> Optimizer<RouterTrainer<B>, B> for RouterOptimizer<B>
where
    B: AutodiffBackend + FluxBackend,
    B::InnerBackend: FluxBackend,
{
    type Record = (
        <RouterAdamW<B> as Optimizer<RouterSet<B>, B>>::Record,
        <LambdaAdamW<B> as Optimizer<SparsityObjective<B>, B>>::Record,
    );

    fn step(
        &mut self,
        lr: f64,
        module: RouterTrainer<B>,
        grads: GradientsParams,
    ) -> RouterTrainer<B> {
        self.update(lr, module, grads)
    }

    fn step_multi(
        &mut self,
        lr: f64,
        module: RouterTrainer<B>,
        mut grads: MultiGradientsParams,
    ) -> RouterTrainer<B> {
        let mut single = GradientsParams::new();
        module.visit(&mut Gather {
            multi: &mut grads,
            into: &mut single,
        });
        self.update(lr, module, single)
    }

    fn to_record(&self) -> Self::Record {
        (self.routers.to_record(), self.lambdas.to_record())
    }

    fn load_record(mut self, record: Self::Record) -> Self {
        self.routers = self.routers.load_record(record.0);
        self.lambdas = self.lambdas.load_record(record.1);
        self
    }
}
