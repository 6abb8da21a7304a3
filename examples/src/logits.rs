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
    let row = model
        .logits(hidden.narrow(1, n - 1, 1))
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading the logits of {what}: {e:?}"))?;
    if let Some(i) = row.iter().position(|x| !x.is_finite()) {
        bail!("{what}: logit {i} is {}", row[i]);
    }
    Ok(row)
}
