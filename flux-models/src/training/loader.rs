//! The data loader of router training: "virtual epochs" of a fixed number of optimizer steps
//! over a seeded, endless sequence of shuffled passes, so that an epoch's batches depend only on
//! its number. A resumed run starts at the next epoch and sees exactly the batches an
//! uninterrupted run would have seen; no loader state needs saving.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::tensor::backend::Backend;
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

use super::batch::{BatchPosition, RouterBatch};
use crate::router_data::RouterSample;

/// Batches of router samples, epoch by epoch.
pub struct RouterLoader<B: Backend> {
    samples: Arc<Vec<RouterSample>>,
    /// `Some(seed)`: shuffled passes; `None`: the samples in file order (validation).
    shuffle_seed: Option<u64>,
    batch_size: usize,
    items_per_epoch: usize,
    /// The part of each epoch's items this loader serves (all of them, or one device's share).
    share: Range<usize>,
    /// The epoch the next `iter()` serves (0-based); shared by clones moved to a device.
    next_epoch: Arc<AtomicUsize>,
    device: B::Device,
}

impl<B: Backend> RouterLoader<B> {
    /// A training loader: epochs of `items_per_epoch` samples (a multiple of `batch_size`)
    /// drawn from shuffled passes over `samples`, starting at epoch `first_epoch` (0-based; a
    /// resumed run passes the number of epochs already done).
    pub fn training(
        samples: Arc<Vec<RouterSample>>,
        batch_size: usize,
        items_per_epoch: usize,
        seed: u64,
        first_epoch: usize,
        device: B::Device,
    ) -> Self {
        Self {
            samples,
            shuffle_seed: Some(seed),
            batch_size: batch_size.max(1),
            items_per_epoch,
            share: 0..items_per_epoch,
            next_epoch: Arc::new(AtomicUsize::new(first_epoch)),
            device,
        }
    }

    /// A validation loader: every sample, in order, every epoch.
    pub fn validation(
        samples: Arc<Vec<RouterSample>>,
        batch_size: usize,
        device: B::Device,
    ) -> Self {
        let n = samples.len();
        Self {
            samples,
            shuffle_seed: None,
            batch_size: batch_size.max(1),
            items_per_epoch: n,
            share: 0..n,
            next_epoch: Arc::new(AtomicUsize::new(0)),
            device,
        }
    }

    /// The sample indices of epoch `epoch`, this loader's share.
    ///
    /// When the share is one device's of several (burn's data-parallel split: equal contiguous
    /// slices), each optimizer step's sequences (micro-batch `k` of every slice) are dealt out
    /// again so that the devices get equal numbers of sequences and token counts as close as
    /// possible: every device waits for the slowest at each step.
    pub fn epoch_indices(&self, epoch: usize) -> Vec<usize> {
        let n = self.samples.len();
        if n == 0 {
            return Vec::new();
        }
        let Some(seed) = self.shuffle_seed else {
            return self.share.clone().collect();
        };
        let first = epoch * self.items_per_epoch;
        let mut pass_cache: Option<(usize, Vec<usize>)> = None;
        let order: Vec<usize> = (0..self.items_per_epoch)
            .map(|i| {
                let global = first + i;
                let (pass, offset) = (global / n, global % n);
                if pass_cache.as_ref().is_none_or(|(p, _)| *p != pass) {
                    pass_cache = Some((pass, permutation(n, seed, pass)));
                }
                pass_cache.as_ref().expect("filled above").1[offset]
            })
            .collect();
        match self.device_slot() {
            Some((device, devices)) => self.balanced_share(&order, device, devices),
            None => order[self.share.clone()].to_vec(),
        }
    }

    /// `(device, devices)` when the share is one of `devices` equal slices of the epoch.
    fn device_slot(&self) -> Option<(usize, usize)> {
        let len = self.share.len();
        if len == 0 || len == self.items_per_epoch || !self.items_per_epoch.is_multiple_of(len) {
            return None;
        }
        self.share
            .start
            .is_multiple_of(len)
            .then(|| (self.share.start / len, self.items_per_epoch / len))
    }

    /// Device `device`'s share of `order` (the whole epoch): for each micro-batch index `k`,
    /// the sequences of micro-batch `k` of all slices, longest first, each to the device with
    /// the fewest tokens so far among those still short of a full micro-batch.
    fn balanced_share(&self, order: &[usize], device: usize, devices: usize) -> Vec<usize> {
        let slice = self.share.len();
        let b = self.batch_size.min(slice);
        let mut mine = Vec::with_capacity(slice);
        for start in (0..slice).step_by(b) {
            let end = (start + b).min(slice);
            let mut step: Vec<usize> = (0..devices)
                .flat_map(|d| order[d * slice + start..d * slice + end].iter().copied())
                .collect();
            let len = |i: &usize| self.samples[*i].ids.len();
            // Stable: equal lengths keep the epoch's order, so every device computes the same.
            step.sort_by_key(|i| std::cmp::Reverse(len(i)));
            let mut tokens = vec![0usize; devices];
            let mut count = vec![0usize; devices];
            for i in step {
                let d = (0..devices)
                    .filter(|&d| count[d] < end - start)
                    .min_by_key(|&d| tokens[d])
                    .expect("the step has one micro-batch per device");
                tokens[d] += len(&i);
                count[d] += 1;
                if d == device {
                    mine.push(i);
                }
            }
        }
        mine
    }

    fn with_share(&self, share: Range<usize>, device: B::Device) -> Self {
        Self {
            samples: self.samples.clone(),
            shuffle_seed: self.shuffle_seed,
            batch_size: self.batch_size,
            items_per_epoch: self.items_per_epoch,
            share,
            // A share (one device of several) counts its own epochs.
            next_epoch: Arc::new(AtomicUsize::new(self.next_epoch.load(Ordering::SeqCst))),
            device,
        }
    }
}

/// The seeded permutation of pass `pass` over `n` samples.
pub(crate) fn permutation(n: usize, seed: u64, pass: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mixed = seed
        ^ (pass as u64)
            .wrapping_add(1)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    order.shuffle(&mut StdRng::seed_from_u64(mixed));
    order
}

struct RouterLoaderIter<'a, B: Backend> {
    loader: &'a RouterLoader<B>,
    epoch: usize,
    indices: Vec<usize>,
    position: usize,
}

impl<B: Backend> Iterator for RouterLoaderIter<'_, B> {
    type Item = RouterBatch<B>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.position >= self.indices.len() {
            return None;
        }
        let end = (self.position + self.loader.batch_size).min(self.indices.len());
        let samples: Vec<&RouterSample> = self.indices[self.position..end]
            .iter()
            .map(|&i| &self.loader.samples[i])
            .collect();
        let position = BatchPosition {
            epoch: self.epoch,
            micro_batch: self.position / self.loader.batch_size,
            first_item: self.epoch * self.loader.items_per_epoch
                + self.loader.share.start
                + self.position,
        };
        self.position = end;
        Some(RouterBatch::new(&samples, &self.loader.device).at(position))
    }
}

impl<B: Backend> DataLoaderIterator<RouterBatch<B>> for RouterLoaderIter<'_, B> {
    fn progress(&self) -> Progress {
        Progress::new(self.position, self.indices.len())
    }
}

impl<B: Backend> DataLoader<B, RouterBatch<B>> for RouterLoader<B> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<RouterBatch<B>> + 'a> {
        let epoch = if self.shuffle_seed.is_some() {
            self.next_epoch.fetch_add(1, Ordering::SeqCst)
        } else {
            0
        };
        Box::new(RouterLoaderIter {
            loader: self,
            epoch,
            indices: self.epoch_indices(epoch),
            position: 0,
        })
    }

    fn num_items(&self) -> usize {
        self.share.len()
    }

    fn to_device(&self, device: &B::Device) -> Arc<dyn DataLoader<B, RouterBatch<B>>> {
        Arc::new(Self {
            samples: self.samples.clone(),
            shuffle_seed: self.shuffle_seed,
            batch_size: self.batch_size,
            items_per_epoch: self.items_per_epoch,
            share: self.share.clone(),
            next_epoch: self.next_epoch.clone(),
            device: device.clone(),
        })
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<B, RouterBatch<B>>> {
        let s = self.share.start;
        let share = (s + start).min(self.share.end)..(s + end).min(self.share.end);
        Arc::new(self.with_share(share, self.device.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use flux_router::TaskCategory;

    fn samples(n: usize) -> Arc<Vec<RouterSample>> {
        Arc::new(
            (0..n)
                .map(|i| RouterSample {
                    ids: vec![i as u32 + 1; 4],
                    prompt_span: 0..2,
                    answer: 2..4,
                    category: TaskCategory::SingleDocQa,
                    target: 0.45,
                    family: "test".into(),
                })
                .collect(),
        )
    }

    /// Each batch's first token names its sample (`id - 1`).
    fn drawn(
        loader: &dyn DataLoader<NdArray, RouterBatch<NdArray>>,
    ) -> Vec<(usize, BatchPosition)> {
        let mut out = Vec::new();
        for b in loader.iter() {
            for ids in &b.ids {
                out.push((ids[0] as usize - 1, b.position));
            }
        }
        out
    }

    #[test]
    fn device_shares_split_every_epoch_into_the_single_device_samples() {
        let (batch, devices, micro_per_epoch) = (4, 2, 3);
        let items = micro_per_epoch * batch;
        let whole =
            RouterLoader::<NdArray>::training(samples(10), batch, items, 7, 0, Default::default());
        let split = RouterLoader::<NdArray>::training(
            samples(10),
            batch / devices,
            items,
            7,
            0,
            Default::default(),
        );
        let shares = burn::data::dataloader::split::split_dataloader(
            Arc::new(split) as Arc<dyn DataLoader<NdArray, RouterBatch<NdArray>>>,
            &[Default::default(), Default::default()],
        );
        for epoch in 0..3 {
            let single = drawn(&whole);
            let per_device: Vec<_> = shares.iter().map(|s| drawn(s.as_ref())).collect();
            // Equal numbers of micro-batches per device, or DDP's all-reduce would hang.
            assert_eq!(per_device[0].len(), per_device[1].len());
            let mut a: Vec<usize> = single.iter().map(|(i, _)| *i).collect();
            let mut b: Vec<usize> = per_device.iter().flatten().map(|(i, _)| *i).collect();
            assert_eq!(a.len(), items);
            a.sort_unstable();
            b.sort_unstable();
            assert_eq!(
                a, b,
                "epoch {epoch}: the devices see the single device's samples"
            );
            // Positions: the epoch, micro-batches counted per device, and first items that
            // differ between all batches of all devices.
            let mut firsts: Vec<usize> = per_device
                .iter()
                .flatten()
                .map(|(_, p)| p.first_item)
                .collect();
            for d in &per_device {
                for (k, (_, p)) in d.iter().enumerate() {
                    assert_eq!(p.epoch, epoch);
                    assert_eq!(p.micro_batch, k / (batch / devices));
                }
            }
            firsts.sort_unstable();
            firsts.dedup();
            assert_eq!(firsts.len(), devices * micro_per_epoch);
        }
    }

    #[test]
    fn device_shares_balance_the_tokens_of_every_step() {
        // Lengths 1..=40 tokens: contiguous slices would pair long with long by chance.
        let samples = Arc::new(
            (0..40)
                .map(|i| RouterSample {
                    ids: vec![i as u32 + 1; i + 1],
                    prompt_span: 0..1,
                    answer: 0..1,
                    category: TaskCategory::Code,
                    target: 1.0,
                    family: "test".into(),
                })
                .collect::<Vec<_>>(),
        );
        let (batch, devices, micro_per_epoch) = (6, 3, 5);
        let items = batch * micro_per_epoch;
        let split = RouterLoader::<NdArray>::training(
            samples.clone(),
            batch / devices,
            items,
            11,
            0,
            Default::default(),
        );
        let whole =
            RouterLoader::<NdArray>::training(samples, batch, items, 11, 0, Default::default());
        let shares = burn::data::dataloader::split::split_dataloader(
            Arc::new(split) as Arc<dyn DataLoader<NdArray, RouterBatch<NdArray>>>,
            &[Default::default(), Default::default(), Default::default()],
        );
        let per_device: Vec<_> = shares.iter().map(|s| drawn(s.as_ref())).collect();
        let single = drawn(&whole);
        for k in 0..micro_per_epoch {
            // Step k's sequences on each device (sample i has i + 1 tokens).
            let tokens: Vec<usize> = per_device
                .iter()
                .map(|d| d[k * 2..k * 2 + 2].iter().map(|(i, _)| i + 1).sum())
                .collect();
            let longest = per_device
                .iter()
                .flat_map(|d| d[k * 2..k * 2 + 2].iter().map(|(i, _)| i + 1))
                .max()
                .unwrap();
            let spread = tokens.iter().max().unwrap() - tokens.iter().min().unwrap();
            // Greedy dealing, longest first: the spread is at most one sequence's length.
            assert!(spread <= longest, "step {k}: tokens per device {tokens:?}");
        }
        let mut a: Vec<usize> = single.iter().map(|(i, _)| *i).collect();
        let mut b: Vec<usize> = per_device.iter().flatten().map(|(i, _)| *i).collect();
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b);
    }

    #[test]
    fn a_resumed_loader_serves_the_same_epochs() {
        let whole = RouterLoader::<NdArray>::training(samples(7), 2, 6, 3, 0, Default::default());
        let first = drawn(&whole);
        let second = drawn(&whole);
        let resumed = RouterLoader::<NdArray>::training(samples(7), 2, 6, 3, 1, Default::default());
        assert_eq!(drawn(&resumed), second);
        assert_ne!(first, second);
    }
}
