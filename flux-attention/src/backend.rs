//! The backend extension behind [`crate::attend`]: a backend either has a fused kernel for a call
//! or answers `false` to [`AttentionBackend::has_fused_attention`], and the reference runs.
//!
//! Implemented for burn-cubecl's `CubeBackend` (CUDA and wgpu: one impl), for `Fusion` over it
//! (a custom operation in the fusion stream), for `Autodiff` (the inner backend's kernels for
//! calls outside the graph; a tracked call is one graph operation whose forward keeps the row
//! log-sum-exps and whose backward recomputes the probabilities, by the inner backend's kernels
//! where it has them, by the chunked reference otherwise) and for ndarray (reference).

use burn::tensor::{
    backend::Backend, ops::FloatTensor, DType, FloatDType, Tensor, TensorPrimitive,
};
use kernels_cubecl::AttentionSpec;

use crate::reference_backward;

/// Tensors to and from burn primitives, for the default methods.
trait FloatPrimitive<B: Backend> {
    fn from_primitive_float(t: FloatTensor<B>) -> Self;
    fn into_float(self) -> FloatTensor<B>;
}

impl<B: Backend, const D: usize> FloatPrimitive<B> for Tensor<B, D> {
    fn from_primitive_float(t: FloatTensor<B>) -> Self {
        Tensor::from_primitive(TensorPrimitive::Float(t))
    }
    fn into_float(self) -> FloatTensor<B> {
        self.into_primitive().tensor()
    }
}

/// A burn backend that may run flux's attention calls with fused kernels.
pub trait AttentionBackend: Backend {
    /// Whether a call on these tensors must be recorded for a backward pass, so that only the
    /// differentiable reference may run it (an autodiff backend with a tracked input).
    fn attention_needs_graph(
        _q: &FloatTensor<Self>,
        _k: &FloatTensor<Self>,
        _v: &FloatTensor<Self>,
    ) -> bool {
        false
    }

    /// Whether [`AttentionBackend::fused_attention`] serves a call of these shapes, dtype and
    /// spec on `device`.
    fn has_fused_attention(
        _q: &[usize],
        _k: &[usize],
        _dtype: DType,
        _spec: &AttentionSpec,
        _device: &Self::Device,
    ) -> bool {
        false
    }

    /// Fused attention; called only after [`AttentionBackend::has_fused_attention`] said yes.
    fn fused_attention(
        _q: FloatTensor<Self>,
        _k: FloatTensor<Self>,
        _v: FloatTensor<Self>,
        _spec: &AttentionSpec,
    ) -> FloatTensor<Self> {
        unreachable!("fused_attention is only called when has_fused_attention is true")
    }

    /// Fused attention that reads its choice on the device: sequence `i` runs full causal
    /// attention where `full[i]` (`[b]`, q's float dtype) is non-zero and `spec`'s sink + window
    /// rule otherwise. Called only after [`AttentionBackend::has_fused_attention`] said yes for
    /// `spec`, which holds a [`crate::Visibility::Window`] rule.
    fn fused_attention_routed(
        _q: FloatTensor<Self>,
        _k: FloatTensor<Self>,
        _v: FloatTensor<Self>,
        _full: FloatTensor<Self>,
        _spec: &AttentionSpec,
    ) -> FloatTensor<Self> {
        unreachable!("fused_attention_routed is only called when has_fused_attention is true")
    }

    /// Whether a call whose inputs are tracked (see [`AttentionBackend::attention_needs_graph`])
    /// runs as one differentiable operation: forward by
    /// [`AttentionBackend::attention_forward_with_lse`], backward by
    /// [`AttentionBackend::attention_backward`], keeping O(N) state instead of the N x N
    /// probabilities autodiff would record. Asked of the autodiff backend, which asks its inner
    /// one; by default every call without padding rows or keys.
    fn has_attention_backward(spec: &AttentionSpec) -> bool {
        spec.q_lens.is_none() && spec.kv_lens.is_none()
    }

    /// Attention and the log-sum-exp of each query row's scaled scores (`[b, hq, nq]`, f32 for
    /// 16-bit inputs): the forward of a tracked call. By default the chunked reference.
    fn attention_forward_with_lse(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        spec: &AttentionSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference_forward_with_lse::<Self>(q, k, v, spec)
    }

    /// Gradients `(dq, dk, dv)` of a tracked call, from its inputs, output, row log-sum-exps and
    /// the output's gradient, in the inputs' dtype. By default the chunked reference.
    fn attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        d_out: FloatTensor<Self>,
        spec: &AttentionSpec,
    ) -> [FloatTensor<Self>; 3] {
        reference_backward_grads::<Self>(q, k, v, out, lse, d_out, spec)
    }

    /// Whether [`AttentionBackend::fused_xattention_keep`] serves XAttention's block selection
    /// for these shapes on `device`.
    fn has_fused_xattention(
        _q: &[usize],
        _k: &[usize],
        _dtype: DType,
        _block: usize,
        _stride: usize,
        _device: &Self::Device,
    ) -> bool {
        false
    }

    /// XAttention's keep flags `[b, hq, q_blocks, k_blocks]` (f32, 1 = kept) on the device;
    /// called only after [`AttentionBackend::has_fused_xattention`] said yes.
    fn fused_xattention_keep(
        _q: FloatTensor<Self>,
        _k: FloatTensor<Self>,
        _block: usize,
        _stride: usize,
        _threshold: f64,
    ) -> FloatTensor<Self> {
        unreachable!("fused_xattention_keep is only called when has_fused_xattention is true")
    }
}

/// The chunked reference forward with log-sum-exps, in f32 at least (as the kernels).
fn reference_forward_with_lse<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    spec: &AttentionSpec,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let [q, k, v] = [q, k, v].map(Tensor::<B, 4>::from_primitive_float);
    let dtype = q.dtype();
    let [q, k, v] = [q, k, v].map(|t| t.cast(crate::accumulation_dtype(dtype)));
    let (out, lse) = reference_backward::attention_with_lse(q, k, v, spec.layout, &spec.visibility);
    (
        out.cast(FloatDType::from(dtype)).into_float(),
        lse.into_float(),
    )
}

/// The chunked reference backward, in f32 at least, gradients in the inputs' dtype.
fn reference_backward_grads<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    out: FloatTensor<B>,
    lse: FloatTensor<B>,
    d_out: FloatTensor<B>,
    spec: &AttentionSpec,
) -> [FloatTensor<B>; 3] {
    let [q, k, v, out, d_out] = [q, k, v, out, d_out].map(Tensor::<B, 4>::from_primitive_float);
    let dtype = q.dtype();
    let wide = crate::accumulation_dtype(dtype);
    let [q, k, v, out, d_out] = [q, k, v, out, d_out].map(|t| t.cast(wide));
    let lse = Tensor::<B, 3>::from_primitive_float(lse).cast(wide);
    let (dq, dk, dv) = reference_backward::attention_backward(
        q,
        k,
        v,
        out,
        lse,
        d_out,
        spec.layout,
        &spec.visibility,
    );
    [dq, dk, dv].map(|t| t.cast(FloatDType::from(dtype)).into_float())
}

#[cfg(feature = "ndarray")]
macro_rules! ndarray_reference {
    ($($e:ty, $i:ty);*) => {$(
        impl AttentionBackend for burn::backend::NdArray<$e, $i> {}
    )*};
}
#[cfg(feature = "ndarray")]
ndarray_reference!(f32, i64; f64, i64; f32, i32; f64, i32);

#[cfg(feature = "flex")]
impl AttentionBackend for burn::backend::Flex {}

/// Untracked calls (a forward pass with no graph: inference, validation, the first pass of
/// layer-wise training) run the inner backend's kernels; tracked ones run as one graph operation
/// (forward with log-sum-exps, FlashAttention-style backward) where the inner backend says
/// [`AttentionBackend::has_attention_backward`], the reference's recorded operations elsewhere.
/// XAttention's keep flags carry no gradient, so they always come from the inner backend.
impl<B: AttentionBackend, C: burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy>
    AttentionBackend for burn::backend::Autodiff<B, C>
{
    fn attention_needs_graph(
        q: &FloatTensor<Self>,
        k: &FloatTensor<Self>,
        v: &FloatTensor<Self>,
    ) -> bool {
        q.is_tracked() || k.is_tracked() || v.is_tracked()
    }

    fn has_fused_attention(
        q: &[usize],
        k: &[usize],
        dtype: DType,
        spec: &AttentionSpec,
        device: &Self::Device,
    ) -> bool {
        B::has_fused_attention(q, k, dtype, spec, device)
    }

    fn has_attention_backward(spec: &AttentionSpec) -> bool {
        B::has_attention_backward(spec)
    }

    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        spec: &AttentionSpec,
    ) -> FloatTensor<Self> {
        if !Self::attention_needs_graph(&q, &k, &v) {
            // A new untracked tensor: the call is outside any graph.
            return FloatTensor::<Self>::new(B::fused_attention(
                q.primitive,
                k.primitive,
                v.primitive,
                spec,
            ));
        }
        tracked::attention::<B, C>(q, k, v, spec)
    }

    fn fused_attention_routed(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        full: FloatTensor<Self>,
        spec: &AttentionSpec,
    ) -> FloatTensor<Self> {
        debug_assert!(!Self::attention_needs_graph(&q, &k, &v));
        FloatTensor::<Self>::new(B::fused_attention_routed(
            q.primitive,
            k.primitive,
            v.primitive,
            full.primitive,
            spec,
        ))
    }

    fn has_fused_xattention(
        q: &[usize],
        k: &[usize],
        dtype: DType,
        block: usize,
        stride: usize,
        device: &Self::Device,
    ) -> bool {
        B::has_fused_xattention(q, k, dtype, block, stride, device)
    }

    fn fused_xattention_keep(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        block: usize,
        stride: usize,
        threshold: f64,
    ) -> FloatTensor<Self> {
        FloatTensor::<Self>::new(B::fused_xattention_keep(
            q.primitive,
            k.primitive,
            block,
            stride,
            threshold,
        ))
    }
}

/// A tracked call as one operation of the autodiff graph.
mod tracked {
    use super::*;
    use burn::backend::autodiff::{
        checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
        grads::Gradients,
        ops::{Backward, Ops, OpsKind},
        Autodiff,
    };

    #[derive(Debug)]
    struct AttentionGrad;

    /// Inputs, output and row log-sum-exps (O(N)), and the call.
    type Saved<B> = ([FloatTensor<B>; 5], AttentionSpec);

    impl<B: AttentionBackend> Backward<B, 3> for AttentionGrad {
        type State = Saved<B>;

        fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let d_out = grads.consume::<B>(&ops.node);
            let ([q, k, v, out, lse], spec) = ops.state;
            let grads_in = B::attention_backward(q, k, v, out, lse, d_out, &spec);
            for (parent, grad) in ops.parents.into_iter().zip(grads_in) {
                if let Some(node) = parent {
                    grads.register::<B>(node.id, grad);
                }
            }
        }
    }

    pub(super) fn attention<B: AttentionBackend, C: CheckpointStrategy>(
        q: FloatTensor<Autodiff<B, C>>,
        k: FloatTensor<Autodiff<B, C>>,
        v: FloatTensor<Autodiff<B, C>>,
        spec: &AttentionSpec,
    ) -> FloatTensor<Autodiff<B, C>> {
        let (out, lse) = B::attention_forward_with_lse(
            q.primitive.clone(),
            k.primitive.clone(),
            v.primitive.clone(),
            spec,
        );
        let prep = AttentionGrad
            .prepare::<C>([q.node.clone(), k.node.clone(), v.node.clone()])
            .compute_bound()
            .stateful();
        match prep {
            OpsKind::Tracked(prep) => {
                let saved = [q.primitive, k.primitive, v.primitive, out.clone(), lse];
                prep.finish((saved, spec.clone()), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}

#[cfg(feature = "kernels")]
mod cube {
    use super::*;
    use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

    /// Whether the backward kernels serve a call of these tensors (else the chunked reference).
    fn backward_kernels<R: CubeRuntime>(
        q: &burn_cubecl::tensor::CubeTensor<R>,
        k: &burn_cubecl::tensor::CubeTensor<R>,
        spec: &AttentionSpec,
    ) -> bool {
        kernels_cubecl::check_backward(&q.client, q.meta.shape(), k.meta.shape(), q.dtype, spec)
            .is_ok()
    }

    impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> AttentionBackend
        for CubeBackend<R, F, I, BT>
    {
        fn has_fused_attention(
            q: &[usize],
            k: &[usize],
            dtype: DType,
            spec: &AttentionSpec,
            device: &Self::Device,
        ) -> bool {
            kernels_cubecl::check_call(q, k, k, dtype, spec)
                .and_then(|dims| kernels_cubecl::choose_kernel(&R::client(device), &dims, dtype))
                .is_ok()
        }

        fn fused_attention(
            q: FloatTensor<Self>,
            k: FloatTensor<Self>,
            v: FloatTensor<Self>,
            spec: &AttentionSpec,
        ) -> FloatTensor<Self> {
            kernels_cubecl::fused_attention(q, k, v, spec)
                .expect("the call was checked by has_fused_attention")
        }

        fn fused_attention_routed(
            q: FloatTensor<Self>,
            k: FloatTensor<Self>,
            v: FloatTensor<Self>,
            full: FloatTensor<Self>,
            spec: &AttentionSpec,
        ) -> FloatTensor<Self> {
            kernels_cubecl::fused_attention_routed(q, k, v, full, spec)
                .expect("the call was checked by has_fused_attention and attend_routed")
        }

        fn attention_forward_with_lse(
            q: FloatTensor<Self>,
            k: FloatTensor<Self>,
            v: FloatTensor<Self>,
            spec: &AttentionSpec,
        ) -> (FloatTensor<Self>, FloatTensor<Self>) {
            if backward_kernels(&q, &k, spec) {
                kernels_cubecl::fused_attention_with_lse(q, k, v, spec)
                    .expect("the call was checked by check_backward")
            } else {
                reference_forward_with_lse::<Self>(q, k, v, spec)
            }
        }

        fn attention_backward(
            q: FloatTensor<Self>,
            k: FloatTensor<Self>,
            v: FloatTensor<Self>,
            out: FloatTensor<Self>,
            lse: FloatTensor<Self>,
            d_out: FloatTensor<Self>,
            spec: &AttentionSpec,
        ) -> [FloatTensor<Self>; 3] {
            // The kernels' and the reference's log-sum-exps mean the same: either forward
            // pairs with either backward.
            if backward_kernels(&q, &k, spec) {
                kernels_cubecl::fused_attention_backward(q, k, v, out, lse, d_out, spec)
                    .expect("the call was checked by check_backward")
            } else {
                reference_backward_grads::<Self>(q, k, v, out, lse, d_out, spec)
            }
        }

        fn has_fused_xattention(
            q: &[usize],
            k: &[usize],
            dtype: DType,
            block: usize,
            stride: usize,
            device: &Self::Device,
        ) -> bool {
            let smem = R::client(device)
                .properties()
                .hardware
                .max_shared_memory_size;
            kernels_cubecl::check_xattention(q, k, dtype, block, stride, smem).is_ok()
        }

        fn fused_xattention_keep(
            q: FloatTensor<Self>,
            k: FloatTensor<Self>,
            block: usize,
            stride: usize,
            threshold: f64,
        ) -> FloatTensor<Self> {
            let (scores, blocks) = kernels_cubecl::xattention_block_scores(q, k, block, stride)
                .expect("the call was checked by has_fused_xattention");
            kernels_cubecl::xattention_keep(scores, blocks, threshold as f32)
        }
    }
}

#[cfg(feature = "kernels")]
mod fusion {
    use super::*;
    use burn::tensor::Shape;
    use burn_fusion::{
        stream::{Operation, OperationStreams},
        Fusion, FusionBackend, FusionRuntime,
    };
    use burn_ir::{CustomOpIr, HandleContainer, OperationIr, OperationOutput, TensorIr};

    #[derive(Clone, Debug)]
    struct FusedAttentionOp<B> {
        desc: CustomOpIr,
        spec: AttentionSpec,
        _backend: core::marker::PhantomData<B>,
    }

    impl<B: FusionBackend + AttentionBackend> Operation<B::FusionRuntime> for FusedAttentionOp<B> {
        fn execute(
            &self,
            handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>,
        ) {
            let ([q, k, v], [out]) = self.desc.as_fixed();
            let q = handles.get_float_tensor::<B>(q);
            let k = handles.get_float_tensor::<B>(k);
            let v = handles.get_float_tensor::<B>(v);
            let o = B::fused_attention(q, k, v, &self.spec);
            handles.register_float_tensor::<B>(&out.id, o);
        }
    }

    #[derive(Clone, Debug)]
    struct RoutedAttentionOp<B> {
        desc: CustomOpIr,
        spec: AttentionSpec,
        _backend: core::marker::PhantomData<B>,
    }

    impl<B: FusionBackend + AttentionBackend> Operation<B::FusionRuntime> for RoutedAttentionOp<B> {
        fn execute(
            &self,
            handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>,
        ) {
            let ([q, k, v, full], [out]) = self.desc.as_fixed();
            let [q, k, v, full] = [q, k, v, full].map(|t| handles.get_float_tensor::<B>(t));
            let o = B::fused_attention_routed(q, k, v, full, &self.spec);
            handles.register_float_tensor::<B>(&out.id, o);
        }
    }

    #[derive(Clone, Debug)]
    struct XAttentionKeepOp<B> {
        desc: CustomOpIr,
        block: usize,
        stride: usize,
        threshold: f64,
        _backend: core::marker::PhantomData<B>,
    }

    impl<B: FusionBackend + AttentionBackend> Operation<B::FusionRuntime> for XAttentionKeepOp<B> {
        fn execute(
            &self,
            handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>,
        ) {
            let ([q, k], [out]) = self.desc.as_fixed();
            let q = handles.get_float_tensor::<B>(q);
            let k = handles.get_float_tensor::<B>(k);
            let keep = B::fused_xattention_keep(q, k, self.block, self.stride, self.threshold);
            handles.register_float_tensor::<B>(&out.id, keep);
        }
    }

    impl<B: FusionBackend + AttentionBackend> AttentionBackend for Fusion<B> {
        fn has_fused_xattention(
            q: &[usize],
            k: &[usize],
            dtype: DType,
            block: usize,
            stride: usize,
            device: &Self::Device,
        ) -> bool {
            B::has_fused_xattention(q, k, dtype, block, stride, device)
        }

        fn fused_xattention_keep(
            q: FloatTensor<Self>,
            k: FloatTensor<Self>,
            block: usize,
            stride: usize,
            threshold: f64,
        ) -> FloatTensor<Self> {
            let client = q.client.clone();
            let (b, hq, nq, nk) = (q.shape[0], q.shape[1], q.shape[2], k.shape[2]);
            let blocks = kernels_cubecl::XAttentionBlocks::new(nq, nk, block, stride);
            let out = TensorIr::uninit(
                client.create_empty_handle(),
                Shape::new([b, hq, blocks.q_blocks, blocks.k_blocks]),
                DType::F32,
            );
            let streams = OperationStreams::with_inputs([&q, &k]);
            let desc = CustomOpIr::new("flux_xattention_keep", &[q.into_ir(), k.into_ir()], &[out]);
            let op = XAttentionKeepOp::<B> {
                desc: desc.clone(),
                block,
                stride,
                threshold,
                _backend: core::marker::PhantomData,
            };
            client
                .register(streams, OperationIr::Custom(desc), op)
                .output()
        }

        fn has_fused_attention(
            q: &[usize],
            k: &[usize],
            dtype: DType,
            spec: &AttentionSpec,
            device: &Self::Device,
        ) -> bool {
            B::has_fused_attention(q, k, dtype, spec, device)
        }

        fn fused_attention(
            q: FloatTensor<Self>,
            k: FloatTensor<Self>,
            v: FloatTensor<Self>,
            spec: &AttentionSpec,
        ) -> FloatTensor<Self> {
            let client = q.client.clone();
            let out = TensorIr::uninit(client.create_empty_handle(), q.shape.clone(), q.dtype);
            let streams = OperationStreams::with_inputs([&q, &k, &v]);
            let desc = CustomOpIr::new(
                "flux_fused_attention",
                &[q.into_ir(), k.into_ir(), v.into_ir()],
                &[out],
            );
            let op = FusedAttentionOp::<B> {
                desc: desc.clone(),
                spec: spec.clone(),
                _backend: core::marker::PhantomData,
            };
            client
                .register(streams, OperationIr::Custom(desc), op)
                .output()
        }

        fn fused_attention_routed(
            q: FloatTensor<Self>,
            k: FloatTensor<Self>,
            v: FloatTensor<Self>,
            full: FloatTensor<Self>,
            spec: &AttentionSpec,
        ) -> FloatTensor<Self> {
            let client = q.client.clone();
            let out = TensorIr::uninit(client.create_empty_handle(), q.shape.clone(), q.dtype);
            let streams = OperationStreams::with_inputs([&q, &k, &v, &full]);
            let desc = CustomOpIr::new(
                "flux_routed_attention",
                &[q.into_ir(), k.into_ir(), v.into_ir(), full.into_ir()],
                &[out],
            );
            let op = RoutedAttentionOp::<B> {
                desc: desc.clone(),
                spec: spec.clone(),
                _backend: core::marker::PhantomData,
            };
            client
                .register(streams, OperationIr::Custom(desc), op)
                .output()
        }
    }
}
