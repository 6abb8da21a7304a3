//! What a linear-layer call is: the weight's storage order, shared by the cuBLASLt path and the
//! reference (burn's matmul) in flux-attention.

/// How the weight of `y = x·Wᵀ (+ b)` is stored (row-major in both cases).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightLayout {
    /// `Wᵀ`, `[in, out]`: flux's loaded projections (`y = x · w`).
    InOut,
    /// `W`, `[out, in]`: the checkpoint's own order, e.g. a tied embedding used as the output
    /// head (`y = x · wᵀ`).
    OutIn,
}

impl WeightLayout {
    /// `(in, out)` features of a weight of this layout and shape `[rows, cols]`.
    pub fn in_out(self, rows: usize, cols: usize) -> (usize, usize) {
        match self {
            Self::InOut => (rows, cols),
            Self::OutIn => (cols, rows),
        }
    }
}
