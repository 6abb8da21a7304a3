//! The linear layers of an attention block (and the rest of the model): `y = x·Wᵀ (+ b)`.
//!
//! [`linear`] is the one entry point. Like [`crate::attend`] it goes through a backend extension,
//! [`LinearBackend`]: burn's matmul everywhere (the reference), cuBLASLt on CUDA for bf16 and f16
//! (burn 0.21's own matmul reaches a quarter to a third of cuBLAS there, platform.md). A call
//! cuBLASLt refuses falls back to the reference, with one warning per process. Set
//! `FLUX_NO_CUBLAS=1` to run burn's matmul on CUDA too (comparisons, bisecting).

use burn::tensor::{backend::Backend, ops::FloatTensor, DType, Tensor, TensorPrimitive};
pub use kernels_cubecl::WeightLayout;

/// A burn backend that may run linear layers with a vendor GEMM.
pub trait LinearBackend: Backend {
    /// Whether a call on these tensors must be recorded for a backward pass (an autodiff backend
    /// with a tracked input), so that only the reference may run it.
    fn linear_needs_graph(
        _x: &FloatTensor<Self>,
        _weight: &FloatTensor<Self>,
        _bias: Option<&FloatTensor<Self>>,
    ) -> bool {
        false
    }

    /// Whether [`LinearBackend::fused_linear`] serves `x [m, k]` times a weight of this shape and
    /// layout in `dtype` on `device`.
    fn has_fused_linear(
        _x: &[usize],
        _weight: &[usize],
        _layout: WeightLayout,
        _dtype: DType,
        _device: &Self::Device,
    ) -> bool {
        false
    }

    /// The product; called only after [`LinearBackend::has_fused_linear`] said yes.
    fn fused_linear(
        _x: FloatTensor<Self>,
        _weight: FloatTensor<Self>,
        _bias: Option<FloatTensor<Self>>,
        _layout: WeightLayout,
    ) -> FloatTensor<Self> {
        unreachable!("fused_linear is only called when has_fused_linear is true")
    }
}

/// `x [m, k]` times the weight (`[k, n]` for [`WeightLayout::InOut`], `[n, k]` for
/// [`WeightLayout::OutIn`]) plus `bias [n]`: `[m, n]` in `x`'s dtype.
///
/// ```
/// use burn::backend::NdArray;
/// use burn::tensor::Tensor;
/// use flux_attention::{linear, WeightLayout};
///
/// let device = Default::default();
/// let x = Tensor::<NdArray, 2>::from_floats([[1.0, 2.0]], &device);
/// let w_t = Tensor::<NdArray, 2>::from_floats([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], &device);
/// let bias = Tensor::<NdArray, 1>::from_floats([0.5, 0.5, 0.5], &device);
/// let y = linear(x.clone(), w_t.clone(), Some(bias), WeightLayout::InOut);
/// assert_eq!(y.into_data().to_vec::<f32>().unwrap(), vec![1.5, 2.5, 3.5]);
/// // The same weight stored [out, in].
/// let y = linear(x, w_t.transpose(), None, WeightLayout::OutIn);
/// assert_eq!(y.into_data().to_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0]);
/// ```
pub fn linear<B: LinearBackend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
    layout: WeightLayout,
) -> Tensor<B, 2> {
    let [xp, wp] = [&x, &weight].map(|t| t.clone().into_primitive().tensor());
    let bp = bias.as_ref().map(|b| b.clone().into_primitive().tensor());
    if !B::linear_needs_graph(&xp, &wp, bp.as_ref())
        && B::has_fused_linear(&x.dims(), &weight.dims(), layout, x.dtype(), &x.device())
    {
        return Tensor::from_primitive(TensorPrimitive::Float(B::fused_linear(xp, wp, bp, layout)));
    }
    linear_reference(x, weight, bias, layout)
}

/// [`linear`] with burn's matmul: the reference, and the path of every backend without a GEMM
/// extension.
pub fn linear_reference<B: Backend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
    layout: WeightLayout,
) -> Tensor<B, 2> {
    let y = match layout {
        WeightLayout::InOut => x.matmul(weight),
        // W xᵀ, transposed back: a transposed view of a large weight would be copied by ndarray
        // on every call; transposing the activations costs far less.
        WeightLayout::OutIn => weight.matmul(x.transpose()).transpose(),
    };
    match bias {
        Some(bias) => y + bias.unsqueeze::<2>(),
        None => y,
    }
}

#[cfg(feature = "ndarray")]
macro_rules! ndarray_reference {
    ($($e:ty, $i:ty);*) => {$(
        impl LinearBackend for burn::backend::NdArray<$e, $i> {}
    )*};
}
#[cfg(feature = "ndarray")]
ndarray_reference!(f32, i64; f64, i64; f32, i32; f64, i32);

#[cfg(feature = "flex")]
impl LinearBackend for burn::backend::Flex {}

/// Untracked calls (inference, validation, the graph-free pass of layer-wise training) run the
/// inner backend's GEMM; tracked ones the reference, which autodiff records.
impl<B: LinearBackend, C: burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy>
    LinearBackend for burn::backend::Autodiff<B, C>
{
    fn linear_needs_graph(
        x: &FloatTensor<Self>,
        weight: &FloatTensor<Self>,
        bias: Option<&FloatTensor<Self>>,
    ) -> bool {
        x.is_tracked() || weight.is_tracked() || bias.is_some_and(|b| b.is_tracked())
    }

    fn has_fused_linear(
        x: &[usize],
        weight: &[usize],
        layout: WeightLayout,
        dtype: DType,
        device: &Self::Device,
    ) -> bool {
        B::has_fused_linear(x, weight, layout, dtype, device)
    }

    fn fused_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        layout: WeightLayout,
    ) -> FloatTensor<Self> {
        debug_assert!(!Self::linear_needs_graph(&x, &weight, bias.as_ref()));
        FloatTensor::<Self>::new(B::fused_linear(
            x.primitive,
            weight.primitive,
            bias.map(|b| b.primitive),
            layout,
        ))
    }
}

#[cfg(feature = "kernels")]
mod cube {
    use super::*;
    use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

    /// cuBLASLt serves CUDA runtimes in builds with the `cuda` feature; every other runtime
    /// (wgpu) keeps burn's matmul.
    impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> LinearBackend
        for CubeBackend<R, F, I, BT>
    {
        fn has_fused_linear(
            x: &[usize],
            weight: &[usize],
            _layout: WeightLayout,
            dtype: DType,
            _device: &Self::Device,
        ) -> bool {
            #[cfg(feature = "cuda")]
            {
                cuda::serves::<R>(x, weight, dtype)
            }
            #[cfg(not(feature = "cuda"))]
            {
                let _ = (x, weight, dtype);
                false
            }
        }

        fn fused_linear(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            bias: Option<FloatTensor<Self>>,
            layout: WeightLayout,
        ) -> FloatTensor<Self> {
            #[cfg(feature = "cuda")]
            {
                if let Some(y) = cuda::linear::<R>(x.clone(), weight.clone(), bias.clone(), layout)
                {
                    return y;
                }
                // Refused before anything was enqueued: the reference.
                let tensor = |p| Tensor::<Self, 2>::from_primitive(TensorPrimitive::Float(p));
                let bias = bias.map(|b| Tensor::from_primitive(TensorPrimitive::Float(b)));
                linear_reference(tensor(x), tensor(weight), bias, layout)
                    .into_primitive()
                    .tensor()
            }
            #[cfg(not(feature = "cuda"))]
            {
                let _ = (x, weight, bias, layout);
                unreachable!("fused_linear is only called when has_fused_linear is true")
            }
        }
    }

    #[cfg(feature = "cuda")]
    mod cuda {
        use super::*;
        use burn_cubecl::tensor::CubeTensor;
        use cubecl::cuda::CudaRuntime;
        use std::any::{Any, TypeId};
        use std::sync::{Once, OnceLock};

        /// cuBLASLt is on unless `FLUX_NO_CUBLAS` is set (to anything but `0`), and its library
        /// loads.
        fn enabled() -> bool {
            static ENABLED: OnceLock<bool> = OnceLock::new();
            *ENABLED.get_or_init(|| {
                let off = std::env::var("FLUX_NO_CUBLAS").is_ok_and(|v| v != "0");
                !off && kernels_cubecl::blas::cublaslt_available()
            })
        }

        pub(super) fn serves<R: CubeRuntime>(x: &[usize], weight: &[usize], dtype: DType) -> bool {
            TypeId::of::<R>() == TypeId::of::<CudaRuntime>()
                && matches!(dtype, DType::BF16 | DType::F16 | DType::F32)
                && x.len() == 2
                && weight.len() == 2
                && x.iter().chain(weight).all(|&d| d > 0)
                && enabled()
        }

        fn to_cuda<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<CudaRuntime> {
            *(Box::new(t) as Box<dyn Any>)
                .downcast::<CubeTensor<CudaRuntime>>()
                .expect("serves() checked the runtime is CUDA")
        }

        /// The product on cuBLASLt, or `None` (with one warning per process) when it refused.
        pub(super) fn linear<R: CubeRuntime>(
            x: CubeTensor<R>,
            weight: CubeTensor<R>,
            bias: Option<CubeTensor<R>>,
            layout: WeightLayout,
        ) -> Option<CubeTensor<R>> {
            let result = kernels_cubecl::blas::linear(
                to_cuda(x),
                to_cuda(weight),
                bias.map(to_cuda),
                layout,
            );
            match result {
                Ok(y) => Some(
                    *(Box::new(y) as Box<dyn Any>)
                        .downcast::<CubeTensor<R>>()
                        .expect("R is CudaRuntime"),
                ),
                Err(e) => {
                    static WARNED: Once = Once::new();
                    WARNED.call_once(|| {
                        eprintln!("flux: {e}; this call and others like it use burn's matmul")
                    });
                    None
                }
            }
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
    struct FusedLinearOp<B> {
        desc: CustomOpIr,
        layout: WeightLayout,
        _backend: core::marker::PhantomData<B>,
    }

    impl<B: FusionBackend + LinearBackend> Operation<B::FusionRuntime> for FusedLinearOp<B> {
        fn execute(
            &self,
            handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>,
        ) {
            // Inputs: x, the weight, the bias if any; one output.
            let x = handles.get_float_tensor::<B>(&self.desc.inputs[0]);
            let w = handles.get_float_tensor::<B>(&self.desc.inputs[1]);
            let bias = self
                .desc
                .inputs
                .get(2)
                .map(|b| handles.get_float_tensor::<B>(b));
            let y = B::fused_linear(x, w, bias, self.layout);
            handles.register_float_tensor::<B>(&self.desc.outputs[0].id, y);
        }
    }

    impl<B: FusionBackend + LinearBackend> LinearBackend for Fusion<B> {
        fn has_fused_linear(
            x: &[usize],
            weight: &[usize],
            layout: WeightLayout,
            dtype: DType,
            device: &Self::Device,
        ) -> bool {
            B::has_fused_linear(x, weight, layout, dtype, device)
        }

        fn fused_linear(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            bias: Option<FloatTensor<Self>>,
            layout: WeightLayout,
        ) -> FloatTensor<Self> {
            let client = x.client.clone();
            let (rows, cols) = (weight.shape[0], weight.shape[1]);
            let (_, n) = layout.in_out(rows, cols);
            let out = TensorIr::uninit(
                client.create_empty_handle(),
                Shape::new([x.shape[0], n]),
                x.dtype,
            );
            let streams = match &bias {
                Some(b) => OperationStreams::with_inputs([&x, &weight, b]),
                None => OperationStreams::with_inputs([&x, &weight]),
            };
            let mut inputs = vec![x.into_ir(), weight.into_ir()];
            inputs.extend(bias.map(|b| b.into_ir()));
            let desc = CustomOpIr::new("flux_linear", &inputs, &[out]);
            let op = FusedLinearOp::<B> {
                desc: desc.clone(),
                layout,
                _backend: core::marker::PhantomData,
            };
            client
                .register(streams, OperationIr::Custom(desc), op)
                .output()
        }
    }
}
