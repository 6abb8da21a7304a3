//! Timing shared by the benchmark programs (included with `#[path]`: benches has no library).

use std::time::Instant;

use burn::tensor::backend::Backend;

/// Median seconds per call of `f`, after a warm-up call (kernel compilation). Calls are queued
/// back to back between two synchronisations, as in a forward pass.
pub fn time<B: Backend>(device: &B::Device, budget: f64, mut f: impl FnMut()) -> f64 {
    f();
    B::sync(device).expect("device sync");
    let t0 = Instant::now();
    f();
    B::sync(device).expect("device sync");
    let once = t0.elapsed().as_secs_f64();
    let reps = ((budget / 5.0 / once.max(1e-6)) as usize).clamp(1, 200);
    let batches = if once > budget { 3 } else { 5 };
    let mut per_call: Vec<f64> = (0..batches)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            B::sync(device).expect("device sync");
            t.elapsed().as_secs_f64() / reps as f64
        })
        .collect();
    per_call.sort_by(f64::total_cmp);
    per_call[per_call.len() / 2]
}
