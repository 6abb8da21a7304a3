//! SiLU, SwiGLU, RMS norm and RoPE through a backend extension: one kernel each on cubecl
//! backends (burn's ops take five, nine and about eight launches for SiLU, RMS norm and RoPE),
//! burn's ops elsewhere and wherever autodiff records the call.

use burn::tensor::{backend::Backend, ops::FloatTensor, DType, Tensor, TensorPrimitive};

use crate::AttentionError;

/// A burn backend that may run SiLU, SwiGLU, RMS norm and RoPE as fused kernels.
pub trait ActivationBackend: Backend {
    /// Whether a call on `x` must be recorded for a backward pass (autodiff with a tracked
    /// input), so that only burn's ops may run it.
    fn activation_needs_graph(_x: &FloatTensor<Self>) -> bool {
        false
    }

    /// Whether [`ActivationBackend::fused_silu`], [`ActivationBackend::fused_swiglu`] and
    /// [`ActivationBackend::fused_rms_norm`] serve tensors of `dtype`.
    fn has_fused_activation(_dtype: DType) -> bool {
        false
    }

    /// `silu(x)`; called only after [`ActivationBackend::has_fused_activation`] said yes.
    fn fused_silu(_x: FloatTensor<Self>) -> FloatTensor<Self> {
        unreachable!("fused_silu is only called when has_fused_activation is true")
    }

    /// `silu(gate) * up` of `x [.., 2w]` (gate first), `[.., w]`; called only after
    /// [`ActivationBackend::has_fused_activation`] said yes, with an even last dimension.
    fn fused_swiglu(_x: FloatTensor<Self>) -> FloatTensor<Self> {
        unreachable!("fused_swiglu is only called when has_fused_activation is true")
    }

    /// RMS norm of the last axis of `x` with the scale `weight [d]` (x's dtype); called only
    /// after [`ActivationBackend::has_fused_activation`] said yes.
    fn fused_rms_norm(
        _x: FloatTensor<Self>,
        _weight: FloatTensor<Self>,
        _eps: f64,
    ) -> FloatTensor<Self> {
        unreachable!("fused_rms_norm is only called when has_fused_activation is true")
    }

    /// `h = x + residual` and the RMS norm of `h`, `(h, norm(h))`, as [`add_rms_norm`]; called
    /// only after [`ActivationBackend::has_fused_activation`] said yes, with `x` and `residual`
    /// of one shape.
    fn fused_add_rms_norm(
        _x: FloatTensor<Self>,
        _residual: FloatTensor<Self>,
        _weight: FloatTensor<Self>,
        _eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        unreachable!("fused_add_rms_norm is only called when has_fused_activation is true")
    }

    /// RoPE of `x [b, h, n, d]` with tables `cos`, `sin` `[1, 1, n, d / 2]` (x's dtype), as
    /// [`rope`]; called only after [`ActivationBackend::has_fused_activation`] said yes.
    fn fused_rope(
        _x: FloatTensor<Self>,
        _cos: FloatTensor<Self>,
        _sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        unreachable!("fused_rope is only called when has_fused_activation is true")
    }
}

/// `x * sigmoid(x)`, written as `x / (1 + exp(min(-x, 80)))` in `x`'s precision.
///
/// burn 0.21's ndarray backend evaluates `sigmoid` (and so `silu`) in f32 precision even on f64
/// tensors; rounding noise then swamps finite-difference gradient checks, so the reference
/// stays in the tensor's precision. The exponent is capped so that it never overflows: an
/// infinite `exp(-x)` gives the right value (0) but a NaN gradient (`inf / inf`), which large
/// router activations in training reached. Below -80, `silu(x)` is below `1e-33` in magnitude
/// either way. Fused kernels compute the same formula in f32.
pub fn silu<B: ActivationBackend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let prim = x.clone().into_primitive().tensor();
    if !B::activation_needs_graph(&prim) && B::has_fused_activation(x.dtype()) {
        return Tensor::from_primitive(TensorPrimitive::Float(B::fused_silu(prim)));
    }
    silu_reference(x)
}

/// [`silu`] with burn's ops: the reference.
pub fn silu_reference<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.clone() / x.neg().clamp_max(80.0).exp().add_scalar(1.0)
}

/// SwiGLU of a fused gate/up product: `x [.., 2w]` holds the gate in its first `w` columns and
/// `up` in the last `w`; returns `silu(gate) * up` `[.., w]`. An odd last dimension is an error.
pub fn swiglu<B: ActivationBackend, const D: usize>(
    x: Tensor<B, D>,
) -> Result<Tensor<B, D>, AttentionError> {
    let dims = x.dims();
    let last = dims[D - 1];
    if !last.is_multiple_of(2) {
        return Err(AttentionError::Shape {
            tensor: "x",
            expected: "an even last dimension: gate then up".into(),
            found: dims.to_vec(),
        });
    }
    let prim = x.clone().into_primitive().tensor();
    if !B::activation_needs_graph(&prim) && B::has_fused_activation(x.dtype()) {
        return Ok(Tensor::from_primitive(TensorPrimitive::Float(
            B::fused_swiglu(prim),
        )));
    }
    let width = last / 2;
    let gate = x.clone().narrow(D - 1, 0, width);
    let up = x.narrow(D - 1, width, width);
    Ok(silu_reference(gate) * up)
}

/// RMS norm over the last axis, as transformers computes it: `x / sqrt(mean(x^2) + eps)` in f32
/// for bf16 / f16 inputs, rounded back to their dtype, then times `weight` `[d]`. One kernel
/// where the backend has it.
pub fn rms_norm<B: ActivationBackend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    let [xp, wp] = [
        x.clone().into_primitive().tensor(),
        weight.clone().into_primitive().tensor(),
    ];
    let fused = !B::activation_needs_graph(&xp)
        && !B::activation_needs_graph(&wp)
        && B::has_fused_activation(x.dtype())
        && weight.dtype() == x.dtype()
        && weight.dims()[0] == x.dims()[D - 1];
    if fused {
        return Tensor::from_primitive(TensorPrimitive::Float(B::fused_rms_norm(xp, wp, eps)));
    }
    rms_norm_reference(x, weight, eps)
}

/// The residual add before a norm, and the norm, in one kernel where the backend has it:
/// returns `(h, rms_norm(h))` for `h = x + residual`, `h` rounded to the dtype as a separate add
/// would leave it. Shapes that differ, tracked calls, and every call when the environment sets
/// `FLUX_NO_FUSED_ADD_NORM` (to measure what the fusion saves) take burn's add and [`rms_norm`].
pub fn add_rms_norm<B: ActivationBackend, const D: usize>(
    x: Tensor<B, D>,
    residual: Tensor<B, D>,
    weight: Tensor<B, 1>,
    eps: f64,
) -> (Tensor<B, D>, Tensor<B, D>) {
    let [xp, rp, wp] = [
        x.clone().into_primitive().tensor(),
        residual.clone().into_primitive().tensor(),
        weight.clone().into_primitive().tensor(),
    ];
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let off = *OFF.get_or_init(|| std::env::var_os("FLUX_NO_FUSED_ADD_NORM").is_some());
    let fused = !off
        && ![&xp, &rp, &wp].into_iter().any(B::activation_needs_graph)
        && B::has_fused_activation(x.dtype())
        && residual.dtype() == x.dtype()
        && weight.dtype() == x.dtype()
        && residual.dims() == x.dims()
        && weight.dims()[0] == x.dims()[D - 1];
    if fused {
        let (h, normed) = B::fused_add_rms_norm(xp, rp, wp, eps);
        return (
            Tensor::from_primitive(TensorPrimitive::Float(h)),
            Tensor::from_primitive(TensorPrimitive::Float(normed)),
        );
    }
    let h = x + residual;
    let normed = rms_norm(h.clone(), weight, eps);
    (h, normed)
}

/// [`rms_norm`] with burn's ops: the reference.
pub fn rms_norm_reference<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    let dtype = x.dtype();
    let x = x.cast(crate::accumulation_dtype(dtype));
    let mean_square = x.clone().powi_scalar(2).mean_dim(D - 1);
    let normed = x * (mean_square + eps).sqrt().recip();
    normed.cast(burn::tensor::FloatDType::from(dtype)) * weight.unsqueeze::<D>()
}

/// Rotary position embedding in HF's split-halves layout: for `x [b, h, n, d]` with halves
/// `x1`, `x2` and tables `cos`, `sin` `[1, 1, n, d / 2]`, returns `[x1 cos - x2 sin, x2 cos + x1
/// sin]`. One kernel where the backend has it (computed in f32, rounded once); a shape that does
/// not fit is an error naming the tensor.
pub fn rope<B: ActivationBackend>(
    x: Tensor<B, 4>,
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
) -> Result<Tensor<B, 4>, AttentionError> {
    let [_, _, n, d] = x.dims();
    let want = [1, 1, n, d / 2];
    for (tensor, table) in [("cos", &cos), ("sin", &sin)] {
        if d % 2 != 0 || table.dims() != want {
            return Err(AttentionError::Shape {
                tensor,
                expected: format!("{want:?} for x of {:?} (even head_dim)", x.dims()),
                found: table.dims().to_vec(),
            });
        }
    }
    let [xp, cp, sp] = [&x, &cos, &sin].map(|t| t.clone().into_primitive().tensor());
    let fused = [&xp, &cp, &sp]
        .iter()
        .all(|t| !B::activation_needs_graph(t))
        && B::has_fused_activation(x.dtype())
        && cos.dtype() == x.dtype()
        && sin.dtype() == x.dtype();
    if fused {
        return Ok(Tensor::from_primitive(TensorPrimitive::Float(
            B::fused_rope(xp, cp, sp),
        )));
    }
    Ok(rope_reference(x, cos, sin))
}

/// [`rope`] with burn's ops (in x's dtype): the reference.
pub fn rope_reference<B: Backend>(
    x: Tensor<B, 4>,
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [b, h, n, d] = x.dims();
    let half = d / 2;
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    let cos = cos.expand([b, h, n, half]);
    let sin = sin.expand([b, h, n, half]);
    let first = x1.clone() * cos.clone() - x2.clone() * sin.clone();
    let second = x2 * cos + x1 * sin;
    Tensor::cat(vec![first, second], 3)
}

#[cfg(feature = "ndarray")]
macro_rules! ndarray_reference {
    ($($e:ty, $i:ty);*) => {$(
        impl ActivationBackend for burn::backend::NdArray<$e, $i> {}
    )*};
}
#[cfg(feature = "ndarray")]
ndarray_reference!(f32, i64; f64, i64; f32, i32; f64, i32);

#[cfg(feature = "flex")]
impl ActivationBackend for burn::backend::Flex {}

/// Untracked calls run the inner backend's kernels; tracked ones burn's ops, which autodiff
/// records.
impl<
        B: ActivationBackend,
        C: burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy,
    > ActivationBackend for burn::backend::Autodiff<B, C>
{
    fn activation_needs_graph(x: &FloatTensor<Self>) -> bool {
        x.is_tracked()
    }

    fn has_fused_activation(dtype: DType) -> bool {
        B::has_fused_activation(dtype)
    }

    fn fused_silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        FloatTensor::<Self>::new(B::fused_silu(x.primitive))
    }

    fn fused_swiglu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        FloatTensor::<Self>::new(B::fused_swiglu(x.primitive))
    }

    fn fused_rms_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        FloatTensor::<Self>::new(B::fused_rms_norm(x.primitive, weight.primitive, eps))
    }

    fn fused_add_rms_norm(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (h, normed) =
            B::fused_add_rms_norm(x.primitive, residual.primitive, weight.primitive, eps);
        (
            FloatTensor::<Self>::new(h),
            FloatTensor::<Self>::new(normed),
        )
    }

    fn fused_rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        FloatTensor::<Self>::new(B::fused_rope(x.primitive, cos.primitive, sin.primitive))
    }
}

#[cfg(feature = "kernels")]
mod cube {
    use super::*;
    use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

    impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> ActivationBackend
        for CubeBackend<R, F, I, BT>
    {
        fn has_fused_activation(dtype: DType) -> bool {
            kernels_cubecl::activation::has_fused_activation(dtype)
        }

        fn fused_silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
            kernels_cubecl::activation::silu(x).expect("the dtype was checked")
        }

        fn fused_swiglu(x: FloatTensor<Self>) -> FloatTensor<Self> {
            kernels_cubecl::activation::swiglu(x).expect("the dtype and width were checked")
        }

        fn fused_rms_norm(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            eps: f64,
        ) -> FloatTensor<Self> {
            kernels_cubecl::rms_norm::rms_norm(x, weight, eps)
                .expect("the dtypes and the width were checked")
        }

        fn fused_add_rms_norm(
            x: FloatTensor<Self>,
            residual: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            eps: f64,
        ) -> (FloatTensor<Self>, FloatTensor<Self>) {
            kernels_cubecl::rms_norm::add_rms_norm(x, residual, weight, eps)
                .expect("the dtypes and shapes were checked")
        }

        fn fused_rope(
            x: FloatTensor<Self>,
            cos: FloatTensor<Self>,
            sin: FloatTensor<Self>,
        ) -> FloatTensor<Self> {
            kernels_cubecl::rope::rope(x, cos, sin).expect("the dtypes and shapes were checked")
        }
    }
}

#[cfg(feature = "kernels")]
mod fusion {
    use super::*;
    use burn_fusion::{
        stream::{Operation, OperationStreams},
        Fusion, FusionBackend, FusionRuntime,
    };
    use burn_ir::{CustomOpIr, HandleContainer, OperationIr, OperationOutput, TensorIr};

    #[derive(Clone, Debug)]
    struct RmsNormOp<B> {
        desc: CustomOpIr,
        eps: f64,
        _backend: core::marker::PhantomData<B>,
    }

    impl<B: FusionBackend + ActivationBackend> Operation<B::FusionRuntime> for RmsNormOp<B> {
        fn execute(
            &self,
            handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>,
        ) {
            let ([x, weight], [out]) = self.desc.as_fixed();
            let x = handles.get_float_tensor::<B>(x);
            let weight = handles.get_float_tensor::<B>(weight);
            let y = B::fused_rms_norm(x, weight, self.eps);
            handles.register_float_tensor::<B>(&out.id, y);
        }
    }

    #[derive(Clone, Debug)]
    struct AddRmsNormOp<B> {
        desc: CustomOpIr,
        eps: f64,
        _backend: core::marker::PhantomData<B>,
    }

    impl<B: FusionBackend + ActivationBackend> Operation<B::FusionRuntime> for AddRmsNormOp<B> {
        fn execute(
            &self,
            handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>,
        ) {
            let ([x, residual, weight], [sum, out]) = self.desc.as_fixed();
            let x = handles.get_float_tensor::<B>(x);
            let residual = handles.get_float_tensor::<B>(residual);
            let weight = handles.get_float_tensor::<B>(weight);
            let (h, y) = B::fused_add_rms_norm(x, residual, weight, self.eps);
            handles.register_float_tensor::<B>(&sum.id, h);
            handles.register_float_tensor::<B>(&out.id, y);
        }
    }

    #[derive(Clone, Debug)]
    struct RopeOp<B> {
        desc: CustomOpIr,
        _backend: core::marker::PhantomData<B>,
    }

    impl<B: FusionBackend + ActivationBackend> Operation<B::FusionRuntime> for RopeOp<B> {
        fn execute(
            &self,
            handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>,
        ) {
            let ([x, cos, sin], [out]) = self.desc.as_fixed();
            let x = handles.get_float_tensor::<B>(x);
            let cos = handles.get_float_tensor::<B>(cos);
            let sin = handles.get_float_tensor::<B>(sin);
            let y = B::fused_rope(x, cos, sin);
            handles.register_float_tensor::<B>(&out.id, y);
        }
    }

    #[derive(Clone, Debug)]
    struct ActivationOp<B> {
        desc: CustomOpIr,
        /// SwiGLU (else SiLU).
        swiglu: bool,
        _backend: core::marker::PhantomData<B>,
    }

    impl<B: FusionBackend + ActivationBackend> Operation<B::FusionRuntime> for ActivationOp<B> {
        fn execute(
            &self,
            handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>,
        ) {
            let ([x], [out]) = self.desc.as_fixed();
            let x = handles.get_float_tensor::<B>(x);
            let y = if self.swiglu {
                B::fused_swiglu(x)
            } else {
                B::fused_silu(x)
            };
            handles.register_float_tensor::<B>(&out.id, y);
        }
    }

    fn register<B: FusionBackend + ActivationBackend>(
        x: FloatTensor<Fusion<B>>,
        swiglu: bool,
    ) -> FloatTensor<Fusion<B>> {
        let client = x.client.clone();
        let mut shape = x.shape.clone();
        if swiglu {
            let last = shape.len() - 1;
            shape[last] /= 2;
        }
        let out = TensorIr::uninit(client.create_empty_handle(), shape, x.dtype);
        let streams = OperationStreams::with_inputs([&x]);
        let name = if swiglu { "flux_swiglu" } else { "flux_silu" };
        let desc = CustomOpIr::new(name, &[x.into_ir()], &[out]);
        let op = ActivationOp::<B> {
            desc: desc.clone(),
            swiglu,
            _backend: core::marker::PhantomData,
        };
        client
            .register(streams, OperationIr::Custom(desc), op)
            .output()
    }

    impl<B: FusionBackend + ActivationBackend> ActivationBackend for Fusion<B> {
        fn has_fused_activation(dtype: DType) -> bool {
            B::has_fused_activation(dtype)
        }

        fn fused_silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
            register::<B>(x, false)
        }

        fn fused_swiglu(x: FloatTensor<Self>) -> FloatTensor<Self> {
            register::<B>(x, true)
        }

        fn fused_rms_norm(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            eps: f64,
        ) -> FloatTensor<Self> {
            let client = x.client.clone();
            let out = TensorIr::uninit(client.create_empty_handle(), x.shape.clone(), x.dtype);
            let streams = OperationStreams::with_inputs([&x, &weight]);
            let desc = CustomOpIr::new("flux_rms_norm", &[x.into_ir(), weight.into_ir()], &[out]);
            let op = RmsNormOp::<B> {
                desc: desc.clone(),
                eps,
                _backend: core::marker::PhantomData,
            };
            client
                .register(streams, OperationIr::Custom(desc), op)
                .output()
        }

        fn fused_add_rms_norm(
            x: FloatTensor<Self>,
            residual: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            eps: f64,
        ) -> (FloatTensor<Self>, FloatTensor<Self>) {
            let client = x.client.clone();
            let out = || TensorIr::uninit(client.create_empty_handle(), x.shape.clone(), x.dtype);
            let outs = [out(), out()];
            let streams = OperationStreams::with_inputs([&x, &residual, &weight]);
            let desc = CustomOpIr::new(
                "flux_add_rms_norm",
                &[x.into_ir(), residual.into_ir(), weight.into_ir()],
                &outs,
            );
            let op = AddRmsNormOp::<B> {
                desc: desc.clone(),
                eps,
                _backend: core::marker::PhantomData,
            };
            let [h, normed] = client
                .register(streams, OperationIr::Custom(desc), op)
                .outputs();
            (h, normed)
        }

        fn fused_rope(
            x: FloatTensor<Self>,
            cos: FloatTensor<Self>,
            sin: FloatTensor<Self>,
        ) -> FloatTensor<Self> {
            let client = x.client.clone();
            let out = TensorIr::uninit(client.create_empty_handle(), x.shape.clone(), x.dtype);
            let streams = OperationStreams::with_inputs([&x, &cos, &sin]);
            let desc = CustomOpIr::new(
                "flux_rope",
                &[x.into_ir(), cos.into_ir(), sin.into_ir()],
                &[out],
            );
            let op = RopeOp::<B> {
                desc: desc.clone(),
                _backend: core::marker::PhantomData,
            };
            client
                .register(streams, OperationIr::Custom(desc), op)
                .output()
        }
    }
}
