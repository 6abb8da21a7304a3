//! Optional timing of the attention calls, to split a forward pass into attention and the rest.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;

/// Accumulates the wall time spent in attention while enabled. Asynchronous backends are
/// synchronised before and after each timed call, so enabling it slows GPU runs a little.
#[derive(Debug, Default)]
pub struct AttentionTimer {
    enabled: AtomicBool,
    nanos: AtomicU64,
}

impl AttentionTimer {
    /// Starts (or stops) timing.
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Relaxed);
    }

    /// Time accumulated since the last reset.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }

    /// Sets the accumulated time to zero.
    pub fn reset(&self) {
        self.nanos.store(0, Ordering::Relaxed);
    }

    /// Runs `f`, adding its time when enabled.
    pub(crate) fn time<B: Backend, T>(&self, device: &B::Device, f: impl FnOnce() -> T) -> T {
        if !self.enabled.load(Ordering::Relaxed) {
            return f();
        }
        let _ = B::sync(device);
        let start = Instant::now();
        let out = f();
        let _ = B::sync(device);
        self.nanos
            .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        out
    }
}
