//! Agreement between the devices of a data-parallel run.
//!
//! burn's DDP all-reduces gradients inside each backward pass, so every device must run the
//! same backward passes: one that stops alone (a non-finite loss, the time limit) leaves the
//! others waiting forever. Before its first backward pass a step asks its peers whether all of
//! them go on; a stop is final for everyone.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};

/// The devices of one run (threads of one process) deciding together to go on or stop.
#[derive(Clone)]
pub struct PeerAgreement {
    barrier: Arc<Barrier>,
    stopped: Arc<AtomicBool>,
    peers: usize,
}

impl PeerAgreement {
    /// An agreement between `peers` devices (1: a single device, which never waits).
    pub fn new(peers: usize) -> Self {
        let peers = peers.max(1);
        Self {
            barrier: Arc::new(Barrier::new(peers)),
            stopped: Arc::new(AtomicBool::new(false)),
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

    /// Waits until every device has come here. burn's gradient-sync server forgets a device
    /// that registers its next backward pass before the others closed the last one (it resets
    /// its counts when the last device syncs), so a step that runs several backward passes
    /// waits after each one that exchanged gradients.
    pub fn wait_for_all(&self) {
        if self.peers > 1 {
            self.barrier.wait();
        }
    }

    /// Whether some device stopped the run.
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
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
