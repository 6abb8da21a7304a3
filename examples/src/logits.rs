//! The last position's logits, read back from the device and checked, for the harnesses.

use anyhow::{bail, Result};
use burn::tensor::Tensor;
use flux_attention::FluxBackend;
use flux_models::Model;

/// The logits of the last position of `hidden` `[1, n, hidden]`, read back; an error names
/// `what` (e.g. "decode step 12") and the first logit that is not finite (a failed backend op
/// must not turn into a timing or a token).
pub fn last_logits<B: FluxBackend>(
    model: &Model<B>,
    hidden: Tensor<B, 3>,
    what: &str,
) -> Result<Vec<f32>> {
    let n = hidden.dims()[1];
    let mut rows = last_logits_of_each(model, hidden, &[n], what)?;
    Ok(rows.remove(0))
}

/// [`last_logits`] of each sequence `i` of a batch `hidden` `[b, n, hidden]` at position
/// `ends[i] - 1`, read back in one transfer ([`Model::last_logits`]).
pub fn last_logits_of_each<B: FluxBackend>(
    model: &Model<B>,
    hidden: Tensor<B, 3>,
    ends: &[usize],
    what: &str,
) -> Result<Vec<Vec<f32>>> {
    let rows = model
        .last_logits(hidden, ends)
        .map_err(|e| anyhow::anyhow!("reading the logits of {what}: {e}"))?;
    for (i, row) in rows.iter().enumerate() {
        if let Some(j) = row.iter().position(|x| !x.is_finite()) {
            let which = if rows.len() == 1 {
                String::new()
            } else {
                format!(", sequence {i}")
            };
            bail!("{what}{which}: logit {j} is {}", row[j]);
        }
    }
    Ok(rows)
}
