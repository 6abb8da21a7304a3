//! Choosing the next token from logits: greedy, or temperature / top-k / top-p sampling.

use rand::{rngs::StdRng, Rng};

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the k most likely tokens (None: all).
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches p (None: all).
    pub top_p: Option<f32>,
}

/// Index of the largest finite logit (the first one on ties, like torch.argmax).
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best
}

impl Sampling {
    /// Picks a token id from `logits` (one row of the vocabulary).
    pub fn pick(&self, logits: &[f32], rng: &mut StdRng) -> usize {
        if self.temperature <= 0.0 {
            return argmax(logits);
        }
        let mut order: Vec<usize> = (0..logits.len())
            .filter(|&i| logits[i].is_finite())
            .collect();
        if order.is_empty() {
            return argmax(logits);
        }
        order.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        if let Some(k) = self.top_k {
            order.truncate(k.max(1));
        }
        let max = logits[order[0]];
        let mut probs: Vec<f64> = order
            .iter()
            .map(|&i| (((logits[i] - max) / self.temperature) as f64).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if let Some(top_p) = self.top_p {
            let mut cumulative = 0.0;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                cumulative += p;
                if cumulative >= top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            order.truncate(keep);
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut draw = rng.random::<f64>() * total;
        for (i, p) in order.iter().zip(&probs) {
            if draw < *p {
                return *i;
            }
            draw -= p;
        }
        order[order.len() - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn greedy_is_argmax() {
        let s = Sampling {
            temperature: 0.0,
            top_k: None,
            top_p: None,
        };
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(s.pick(&[0.1, 3.0, -1.0, 3.0], &mut rng), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_frequencies_follow_softmax() {
        let mut rng = StdRng::seed_from_u64(1);
        let logits = [0.0f32, (2.0f32).ln(), f32::NEG_INFINITY];
        let s = Sampling {
            temperature: 1.0,
            top_k: Some(1),
            top_p: None,
        };
        assert!((0..50).all(|_| s.pick(&logits, &mut rng) == 1));
        // Probabilities 1/3, 2/3, 0.
        let s = Sampling {
            temperature: 1.0,
            top_k: None,
            top_p: None,
        };
        let n = 30_000;
        let ones = (0..n).filter(|_| s.pick(&logits, &mut rng) == 1).count();
        assert!((ones as f64 / n as f64 - 2.0 / 3.0).abs() < 0.02, "{ones}");
        // top_p 0.5 keeps only the most likely token.
        let s = Sampling {
            temperature: 1.0,
            top_k: None,
            top_p: Some(0.5),
        };
        assert!((0..50).all(|_| s.pick(&logits, &mut rng) == 1));
    }

    #[test]
    fn same_seed_same_choices() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let s = Sampling {
            temperature: 0.8,
            top_k: Some(40),
            top_p: Some(0.9),
        };
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..20)
                .map(|_| s.pick(&logits, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
    }
}
