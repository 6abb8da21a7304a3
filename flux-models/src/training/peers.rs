//! Agreement between the devices of a data-parallel run: whether all of them go on, and the
//! mean of their gradients.
//!
//! burn-train's DDP runs one thread per device (each with its copy of the routers and of the
//! frozen model, and its share of every batch). burn all-reduces gradients over NCCL inside
//! each backward pass; the layer-wise step runs one backward pass per layer, and with that
//! burn 0.21's in-backward all-reduce hung on two H200s (benches/RESULTS.md). So the step
//! builds its graphs from untracked copies of the parameters (burn never syncs them) and the
//! devices average the finished router and multiplier gradients here, through host memory
//! (they are small: the routers, not the model). Every device must take part in every
//! exchange: one that stopped alone would leave the others waiting, so a step first asks
//! whether all of them go on, and a stop is final for everyone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};

/// Per parameter: the sum of the devices' gradients, and its shape.
type Sums = HashMap<ParamId, (Vec<f64>, Vec<usize>)>;

/// The devices of one run (threads of one process) deciding together to go on or stop.
#[derive(Clone)]
pub struct PeerAgreement {
    barrier: Arc<Barrier>,
    stopped: Arc<AtomicBool>,
    sums: Arc<Mutex<Sums>>,
    peers: usize,
}

impl PeerAgreement {
    /// An agreement between `peers` devices (1: a single device, which never waits).
    pub fn new(peers: usize) -> Self {
        let peers = peers.max(1);
        Self {
            barrier: Arc::new(Barrier::new(peers)),
            stopped: Arc::new(AtomicBool::new(false)),
            sums: Arc::new(Mutex::new(HashMap::new())),
            peers,
        }
    }

    /// Devices taking part.
    pub fn peers(&self) -> usize {
        self.peers
    }

    /// Whether every device may go on, given whether this one may: waits until each device
    /// has asked the same question. Once a device says no, the answer is no for all of them,
    /// now and after.
    pub fn all_go_on(&self, this_one: bool) -> bool {
        if !this_one {
            self.stopped.store(true, Ordering::SeqCst);
        }
        if self.peers == 1 {
            return !self.stopped.load(Ordering::SeqCst);
        }
        self.barrier.wait();
        let go_on = !self.stopped.load(Ordering::SeqCst);
        // No device may start the next round (and stop it) before every device has read.
        self.barrier.wait();
        go_on
    }

    /// Replaces each device's gradients of `module`'s parameters in `grads` by their mean over
    /// the devices (a parameter without a gradient counts as zero). Every device must call it
    /// once per step, with the same module structure; a single device returns at once.
    pub fn average<B: AutodiffBackend, M: Module<B>>(
        &self,
        module: &M,
        grads: &mut GradientsParams,
    ) {
        if self.peers == 1 {
            return;
        }
        module.visit(&mut Contribute::<B> {
            grads,
            sums: &self.sums,
            _backend: std::marker::PhantomData,
        });
        self.barrier.wait();
        module.visit(&mut TakeMean::<B> {
            grads,
            sums: &self.sums,
            peers: self.peers as f64,
            _backend: std::marker::PhantomData,
        });
        // Every device has read; one clears the sums before any starts the next exchange.
        if self.barrier.wait().is_leader() {
            if let Ok(mut sums) = self.sums.lock() {
                sums.clear();
            }
        }
        self.barrier.wait();
    }

    /// Whether some device stopped the run.
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }
}

/// Adds this device's gradient of every visited parameter into the shared sums.
struct Contribute<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    sums: &'a Mutex<Sums>,
    _backend: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Contribute<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let shape = param.val().dims().to_vec();
        let values: Vec<f64> = match self.grads.remove::<B::InnerBackend, D>(param.id) {
            Some(g) => g
                .into_data()
                .convert::<f64>()
                .into_vec()
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let n = shape.iter().product::<usize>();
        let Ok(mut sums) = self.sums.lock() else {
            return;
        };
        let (sum, _) = sums
            .entry(param.id)
            .or_insert_with(|| (vec![0.0; n], shape));
        for (s, v) in sum.iter_mut().zip(values) {
            *s += v;
        }
    }
}

/// Puts the mean over the devices of every visited parameter's gradient into `grads`.
struct TakeMean<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    sums: &'a Mutex<Sums>,
    peers: f64,
    _backend: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for TakeMean<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some((mean, shape)) = self.sums.lock().ok().and_then(|sums| {
            sums.get(&param.id).map(|(sum, shape)| {
                let mean: Vec<f32> = sum.iter().map(|s| (s / self.peers) as f32).collect();
                (mean, shape.clone())
            })
        }) else {
            return;
        };
        let device = param.val().inner().device();
        let data =
            TensorData::new(mean, shape).convert::<burn::tensor::ops::FloatElem<B::InnerBackend>>();
        self.grads
            .register::<B::InnerBackend, D>(param.id, Tensor::from_data(data, &device));
    }
}

/// Whether `FLUX_TRACE_TRAINING` is set: each device then prints where its step is (forward,
/// agreement, every backward pass) to stderr, which shows where a multi-GPU run stalls.
pub fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("FLUX_TRACE_TRAINING").is_some())
}

/// Prints `what` for `device` when [`tracing`] is on.
pub fn trace(device: &dyn std::fmt::Debug, what: std::fmt::Arguments<'_>) {
    if tracing() {
        eprintln!(
            "[trace {device:?} {:?}] {what}",
            std::thread::current().id()
        );
    }
}

impl std::fmt::Debug for PeerAgreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerAgreement")
            .field("peers", &self.peers)
            .field("stopped", &self.stopped())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_end_with_the_mean_of_their_gradients() {
        use burn::backend::{Autodiff, NdArray};
        use flux_router::{LayerRouterConfig, RouterSet};
        type B = Autodiff<NdArray>;
        let config = LayerRouterConfig {
            head_dim: 8,
            pool_tokens: 4,
            full_bias: 1.0,
        };
        let routers = RouterSet::<B>::new(&config, 2, &Default::default());
        let ids: Vec<ParamId> = burn::module::list_param_ids(&routers);
        // Device d's gradient of every parameter: its shape filled with d + 1 (device 2 has
        // none for the first parameter, which counts as zero).
        let grads_of = |d: usize| {
            let mut g = GradientsParams::new();
            struct Fill<'a> {
                g: &'a mut GradientsParams,
                value: f32,
                skip: Option<ParamId>,
            }
            impl ModuleVisitor<B> for Fill<'_> {
                fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
                    if Some(p.id) != self.skip {
                        let t = Tensor::<NdArray, D>::full(
                            p.val().dims(),
                            self.value,
                            &Default::default(),
                        );
                        self.g.register::<NdArray, D>(p.id, t);
                    }
                }
            }
            routers.visit(&mut Fill {
                g: &mut g,
                value: d as f32 + 1.0,
                skip: (d == 2).then(|| ids[0]),
            });
            g
        };
        let agreement = PeerAgreement::new(3);
        let results: Vec<GradientsParams> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..3)
                .map(|d| {
                    let (a, routers) = (agreement.clone(), routers.clone());
                    let (mut g, mut again) = (grads_of(d), grads_of(d));
                    s.spawn(move || {
                        // Two exchanges in a row: the sums are cleared between them.
                        a.average::<B, _>(&routers, &mut g);
                        a.average::<B, _>(&routers, &mut again);
                        (g, again)
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| {
                    let (g, again) = h.join().unwrap();
                    [g, again]
                })
                .collect()
        });
        for g in results {
            for (k, id) in ids.iter().enumerate() {
                let values: Vec<f32> = g
                    .get::<NdArray, 1>(*id)
                    .map(|t| t.into_data().to_vec().unwrap())
                    .or_else(|| {
                        g.get::<NdArray, 2>(*id)
                            .map(|t| t.into_data().to_vec().unwrap())
                    })
                    .expect("every parameter has its mean");
                // (1 + 2 + 3) / 3, or (1 + 2 + 0) / 3 for the parameter device 2 lacked.
                let want = if k == 0 { 1.0 } else { 2.0 };
                assert!(
                    values.iter().all(|v| (v - want).abs() < 1e-6),
                    "{k}: {values:?}"
                );
            }
        }
    }

    #[test]
    fn one_device_decides_alone() {
        let a = PeerAgreement::new(1);
        assert!(a.all_go_on(true));
        assert!(!a.all_go_on(false));
        assert!(!a.all_go_on(true), "a stop is final");
    }

    #[test]
    fn a_stop_on_any_device_stops_all_in_the_same_round() {
        for stopping in 0..3 {
            let a = PeerAgreement::new(3);
            let answers: Vec<Vec<bool>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..3)
                    .map(|peer| {
                        let a = a.clone();
                        s.spawn(move || {
                            // Round 0: all go on; round 1: `stopping` says no; round 2: yes.
                            (0..3)
                                .map(|round| a.all_go_on(!(round == 1 && peer == stopping)))
                                .collect::<Vec<bool>>()
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for peer in answers {
                assert_eq!(peer, vec![true, false, false]);
            }
        }
    }
}
