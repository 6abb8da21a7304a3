//! Linear layers on cuBLASLt: `y = x·Wᵀ (+ b)` for burn-cubecl CUDA tensors in bf16 / f16 with
//! f32 accumulation, and in f32 (full f32 arithmetic, no TF32: the routers' small products).
//!
//! The GEMM is enqueued on the CUDA stream cubecl launches its own kernels on (the `with_stream`
//! hook of the vendored cubecl-cuda, vendor/README.md), so it is ordered with them and costs no
//! host synchronisation. The first call of a shape waits for the device's server thread (it
//! builds the plan and can report a refusal); later calls of that shape are queued to it like
//! cubecl's own launches, without waiting.
//!
//! Row-major `y [m, n]` is column-major `yᵀ [n, m] = W · xᵀ`: cuBLASLt is called with its m = n
//! (output features), n = m (tokens), the weight as A and the activations as B.

use std::collections::{hash_map::Entry, HashMap, HashSet};
use std::ffi::c_void;
use std::sync::{Mutex, OnceLock};

use burn::tensor::{DType, Shape};
use burn_cubecl::{
    kernel::into_contiguous, ops::numeric::empty_device_contiguous_dtype, tensor::CubeTensor,
};
use cubecl::cuda::CudaRuntime;
use cubecl::device::Device as _;
use cubecl::device_handle::DeviceHandle;
use cubecl::stream_id::StreamId;
use cubecl::Runtime;
use cudarc::cublaslt::{result as lt, sys};

use crate::{KernelError, WeightLayout};

type CudaServer = <CudaRuntime as Runtime>::Server;
type Tensor = CubeTensor<CudaRuntime>;

/// Workspace cuBLASLt may use, one per CUDA stream (what cudarc gives Hopper).
const WORKSPACE_BYTES: usize = 32 << 20;
/// Plans kept per device before the cache is emptied (each prompt length is its own plan).
const MAX_PLANS: usize = 512;

/// Whether the cuBLASLt library loads on this machine (probed once; without it every call is
/// refused and burn's matmul runs).
pub fn cublaslt_available() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    // SAFETY: only tries to open the library by its candidate names.
    *PRESENT.get_or_init(|| unsafe { sys::is_culib_present() })
}

/// `x [m, k] · Wᵀ (+ bias [n])` → `[m, n]` in `x`'s dtype, with the weight stored as `layout`
/// says. `x`, the weight and the bias must share a dtype, bf16, f16 or f32; strided inputs are made
/// contiguous first. An error means nothing was enqueued.
pub fn linear(
    x: Tensor,
    weight: Tensor,
    bias: Option<Tensor>,
    layout: WeightLayout,
) -> Result<Tensor, KernelError> {
    let fail = |message: String| Err(KernelError::Linear(message));
    let [m, k] = dims2(&x, "x")?;
    let [rows, cols] = dims2(&weight, "weight")?;
    let (in_features, n) = layout.in_out(rows, cols);
    if in_features != k {
        return fail(format!(
            "x has {k} features, the weight {rows}x{cols} ({layout:?}) takes {in_features}"
        ));
    }
    if m == 0 || n == 0 || k == 0 {
        return fail(format!("empty product [{m}, {k}] x [{k}, {n}]"));
    }
    let data_type = match x.dtype {
        DType::BF16 => sys::cudaDataType::CUDA_R_16BF,
        DType::F16 => sys::cudaDataType::CUDA_R_16F,
        // Full f32 arithmetic (no TF32): small products such as the routers'.
        DType::F32 => sys::cudaDataType::CUDA_R_32F,
        other => return fail(format!("dtype {other:?} (bf16, f16 or f32 only)")),
    };
    if weight.dtype != x.dtype {
        return fail(format!("x is {:?}, the weight {:?}", x.dtype, weight.dtype));
    }
    if let Some(b) = &bias {
        if b.dtype != x.dtype || b.meta.shape().as_slice() != [n] {
            return fail(format!(
                "bias {:?} {:?}, expected {:?} [{n}]",
                b.dtype,
                b.meta.shape(),
                x.dtype
            ));
        }
    }
    let x = unit_inner_stride(x);
    let weight = unit_inner_stride(weight);
    let bias = bias.map(into_contiguous);
    // A row count of 1 leaves the row stride free (e.g. a reshaped [1, 1, k]); cuBLASLt wants it
    // at least the row width.
    let ldb = leading(&x, k);
    let lda = leading(&weight, cols);
    let out = empty_device_contiguous_dtype::<CudaRuntime>(
        x.client.clone(),
        x.device.clone(),
        Shape::new([m, n]),
        x.dtype,
    );
    let ldd = leading(&out, n);
    let gemm = Gemm {
        m: n,
        n: m,
        k,
        lda,
        ldb,
        ldd,
        transpose_a: layout == WeightLayout::OutIn,
        data_type,
        bias: bias.is_some(),
    };
    let mut bindings = vec![
        weight.handle.clone().binding(),
        x.handle.clone().binding(),
        out.handle.clone().binding(),
    ];
    if let Some(b) = &bias {
        bindings.push(b.handle.clone().binding());
    }
    if let Some(failure) = QUEUED_FAILURE.get() {
        return fail(format!(
            "an earlier queued cuBLASLt product failed: {failure}"
        ));
    }
    let device_id = x.device.to_id();
    let device = device_id.index_id as usize;
    let stream_id = StreamId::current();
    let run = move |server: &mut CudaServer| {
        server
            .with_stream(stream_id, bindings, |stream, pointers| {
                // SAFETY: on the server thread with the device's context current; the pointers
                // are live allocations of the shapes `gemm` describes, and `stream` orders the
                // product after the kernels that wrote them.
                unsafe { enqueue(device, stream, pointers, gemm) }
            })
            .map_err(|e| KernelError::Linear(format!("the CUDA stream is not usable: {e:?}")))?
    };
    let handle = DeviceHandle::<CudaServer>::new(device_id);
    let known = known_good()
        .as_ref()
        .is_some_and(|k| k.contains(&(device, gemm)));
    if known {
        // Queued like a kernel launch: the caller does not wait for the server thread.
        handle.submit(move |server| {
            if let Err(e) = run(server) {
                let message = e.to_string();
                if QUEUED_FAILURE.set(message.clone()).is_ok() {
                    eprintln!(
                        "flux: a queued cuBLASLt product failed, its output is invalid and later \
                         linear layers use burn's matmul: {message}"
                    );
                }
            }
        });
    } else {
        handle
            .submit_blocking(run)
            .map_err(|e| KernelError::Linear(format!("the CUDA device thread failed: {e:?}")))??;
        known_good()
            .get_or_insert_with(HashSet::new)
            .insert((device, gemm));
    }
    Ok(out)
}

fn dims2(t: &Tensor, name: &str) -> Result<[usize; 2], KernelError> {
    match t.meta.shape().as_slice() {
        &[a, b] => Ok([a, b]),
        other => Err(KernelError::Linear(format!(
            "`{name}` must be 2-D, it is {other:?}"
        ))),
    }
}

fn unit_inner_stride(t: Tensor) -> Tensor {
    if t.meta.strides()[1] == 1 {
        t
    } else {
        into_contiguous(t)
    }
}

fn leading(t: &Tensor, width: usize) -> usize {
    t.meta.strides()[0].max(width)
}

/// One product in cuBLASLt's column-major terms: `D [m, n] = op(A) [m, k] · B [k, n]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Gemm {
    m: usize,
    n: usize,
    k: usize,
    lda: usize,
    ldb: usize,
    ldd: usize,
    /// A is stored `[k, m]` column-major (a row-major `[out, in]` weight).
    transpose_a: bool,
    data_type: sys::cudaDataType,
    bias: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PlanKey {
    gemm: Gemm,
    /// Byte alignment of A, B, D (and the bias) that every row start keeps: the heuristic
    /// assumes 256 unless told.
    align: [u32; 4],
}

/// Descriptors and the algorithm the heuristic chose for one [`PlanKey`].
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    d: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: created by `Plan::new` and destroyed once, here.
        unsafe {
            let _ = lt::destroy_matmul_desc(self.desc);
            for layout in [self.a, self.b, self.d] {
                let _ = lt::destroy_matrix_layout(layout);
            }
        }
    }
}

/// Per device: the library handle, one workspace per stream, the plan cache.
struct DeviceState {
    handle: sys::cublasLtHandle_t,
    workspaces: HashMap<usize, u64>,
    plans: HashMap<PlanKey, Plan>,
}

// SAFETY: the raw handles are only used under `STATES`' lock, on the device's server thread.
unsafe impl Send for DeviceState {}

static STATES: Mutex<Vec<Option<DeviceState>>> = Mutex::new(Vec::new());

/// Products (per device) that ran once: they are queued without waiting from then on.
static KNOWN_GOOD: Mutex<Option<HashSet<(usize, Gemm)>>> = Mutex::new(None);

/// The first failure of a product queued without waiting. Its output was not written, so it is
/// reported at once, and every later call is refused (burn's matmul then runs).
static QUEUED_FAILURE: OnceLock<String> = OnceLock::new();

fn known_good() -> std::sync::MutexGuard<'static, Option<HashSet<(usize, Gemm)>>> {
    KNOWN_GOOD
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn lt_error(what: &str, e: lt::CublasError) -> KernelError {
    KernelError::Linear(format!("{what}: {:?}", e.0))
}

/// Largest power of two (at most 256) dividing the address of every row of a matrix.
fn alignment(pointer: u64, row_bytes: usize) -> u32 {
    let bits = (pointer | row_bytes as u64 | 256).trailing_zeros();
    1 << bits.min(8)
}

unsafe fn enqueue(
    device: usize,
    stream: cudarc::driver::sys::CUstream,
    pointers: &[u64],
    gemm: Gemm,
) -> Result<(), KernelError> {
    let mut states = STATES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if states.len() <= device {
        states.resize_with(device + 1, || None);
    }
    let state = match &mut states[device] {
        Some(state) => state,
        slot => slot.insert(DeviceState {
            handle: lt::create_handle().map_err(|e| lt_error("cublasLtCreate", e))?,
            workspaces: HashMap::new(),
            plans: HashMap::new(),
        }),
    };
    let workspace = match state.workspaces.get(&(stream as usize)) {
        Some(&w) => w,
        None => {
            let w = cudarc::driver::result::malloc_sync(WORKSPACE_BYTES).map_err(|e| {
                KernelError::Linear(format!(
                    "cannot allocate the {WORKSPACE_BYTES}-byte workspace: {e:?}"
                ))
            })?;
            state.workspaces.insert(stream as usize, w);
            w
        }
    };
    let bytes = match gemm.data_type {
        sys::cudaDataType::CUDA_R_32F => 4,
        _ => 2,
    };
    let key = PlanKey {
        gemm,
        align: [
            alignment(pointers[0], gemm.lda * bytes),
            alignment(pointers[1], gemm.ldb * bytes),
            alignment(pointers[2], gemm.ldd * bytes),
            pointers.get(3).map_or(256, |&p| alignment(p, 0)),
        ],
    };
    if state.plans.len() >= MAX_PLANS && !state.plans.contains_key(&key) {
        state.plans.clear();
    }
    let plan = match state.plans.entry(key) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(e) => e.insert(Plan::new(state.handle, &key)?),
    };
    if gemm.bias {
        let bias = pointers[3] as *const c_void;
        set_desc(
            plan.desc,
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
            &bias,
        )?;
    }
    let (alpha, beta) = (1f32, 0f32);
    lt::matmul(
        state.handle,
        plan.desc,
        &alpha as *const f32 as *const c_void,
        &beta as *const f32 as *const c_void,
        pointers[0] as *const c_void,
        plan.a,
        pointers[1] as *const c_void,
        plan.b,
        pointers[2] as *const c_void,
        plan.d,
        pointers[2] as *mut c_void,
        plan.d,
        &plan.algo,
        workspace as *mut c_void,
        WORKSPACE_BYTES,
        stream as sys::cudaStream_t,
    )
    .map_err(|e| lt_error("cublasLtMatmul", e))
}

unsafe fn set_desc<T>(
    desc: sys::cublasLtMatmulDesc_t,
    attribute: sys::cublasLtMatmulDescAttributes_t,
    value: &T,
) -> Result<(), KernelError> {
    lt::set_matmul_desc_attribute(
        desc,
        attribute,
        value as *const T as *const c_void,
        size_of::<T>(),
    )
    .map_err(|e| lt_error("cublasLtMatmulDescSetAttribute", e))
}

impl Plan {
    unsafe fn new(handle: sys::cublasLtHandle_t, key: &PlanKey) -> Result<Self, KernelError> {
        use sys::cublasLtMatmulDescAttributes_t as Desc;
        use sys::cublasLtMatmulPreferenceAttributes_t as Pref;
        let g = key.gemm;
        let layout = |rows: usize, cols: usize, ld: usize| {
            lt::create_matrix_layout(g.data_type, rows as u64, cols as u64, ld as i64)
                .map_err(|e| lt_error("cublasLtMatrixLayoutCreate", e))
        };
        let desc = lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType::CUDA_R_32F,
        )
        .map_err(|e| lt_error("cublasLtMatmulDescCreate", e))?;
        // Owned from here on, so an early return frees what exists.
        let mut plan = Plan {
            desc,
            a: std::ptr::null_mut(),
            b: std::ptr::null_mut(),
            d: std::ptr::null_mut(),
            algo: sys::cublasLtMatmulAlgo_t { data: [0; 8] },
        };
        // cublasOperation_t: 0 = N, 1 = T.
        let transa: i32 = g.transpose_a as i32;
        set_desc(desc, Desc::CUBLASLT_MATMUL_DESC_TRANSA, &transa)?;
        let epilogue = if g.bias {
            sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS
        } else {
            sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT
        };
        set_desc(desc, Desc::CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue)?;
        plan.a = if g.transpose_a {
            layout(g.k, g.m, g.lda)?
        } else {
            layout(g.m, g.k, g.lda)?
        };
        plan.b = layout(g.k, g.n, g.ldb)?;
        plan.d = layout(g.m, g.n, g.ldd)?;
        let pref =
            lt::create_matmul_pref().map_err(|e| lt_error("cublasLtMatmulPreferenceCreate", e))?;
        let set_pref = |attribute, value: *const c_void, size| {
            lt::set_matmul_pref_attribute(pref, attribute, value, size)
                .map_err(|e| lt_error("cublasLtMatmulPreferenceSetAttribute", e))
        };
        let workspace = WORKSPACE_BYTES as u64;
        let chosen = (|| {
            set_pref(
                Pref::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &workspace as *const u64 as _,
                8,
            )?;
            let [a, b, d, _] = key.align;
            for (attribute, value) in [
                (Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, a),
                (Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, b),
                (Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, d),
                (Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, d),
            ] {
                set_pref(attribute, &value as *const u32 as _, 4)?;
            }
            lt::get_matmul_algo_heuristic(handle, desc, plan.a, plan.b, plan.d, plan.d, pref)
                .map_err(|e| lt_error(&format!("no cuBLASLt algorithm for {g:?}"), e))
        })();
        let _ = lt::destroy_matmul_pref(pref);
        plan.algo = chosen?.algo;
        Ok(plan)
    }
}
