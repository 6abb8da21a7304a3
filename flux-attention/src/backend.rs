//! The backend extension behind [`crate::attend`]: a backend either has a fused kernel for a call
//! or answers `false` to [`AttentionBackend::has_fused_attention`], and the reference runs.
//!
//! Implemented for burn-cubecl's `CubeBackend` (CUDA and wgpu: one impl), for `Fusion` over it
//! (a custom operation in the fusion stream), for `Autodiff` (the inner backend's kernels for
//! calls outside the graph, the reference inside it until the kernels have a backward) and for
//! ndarray (reference).

use burn::tensor::{backend::Backend, ops::FloatTensor, DType};
use kernels_cubecl::AttentionSpec;

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
/// layer-wise training) run the inner backend's kernels; tracked ones the reference, whose
/// operations autodiff records. XAttention's keep flags carry no gradient, so they always come
/// from the inner backend.
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

    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        spec: &AttentionSpec,
    ) -> FloatTensor<Self> {
        debug_assert!(!Self::attention_needs_graph(&q, &k, &v));
        // A new untracked tensor: the call is outside any graph.
        FloatTensor::<Self>::new(B::fused_attention(
            q.primitive,
            k.primitive,
            v.primitive,
            spec,
        ))
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

#[cfg(feature = "kernels")]
mod cube {
    use super::*;
    use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

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
