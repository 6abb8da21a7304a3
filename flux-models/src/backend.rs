//! Choosing a burn backend at run time (`--backend ndarray|wgpu|cuda` in the programs).
//! Only this file names concrete backends; the model code is generic.

use flux_attention::FluxBackend;
use std::fmt;
use std::str::FromStr;

use burn::tensor::FloatDType;

use crate::error::ModelError;
use crate::model::{check_dtype, dtype_name};

/// The burn backend a program runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// CPU, always available in the default build.
    #[default]
    Ndarray,
    /// Vulkan / Metal / DX12 through wgpu (cargo feature `wgpu`).
    Wgpu,
    /// NVIDIA CUDA (cargo feature `cuda`).
    Cuda,
}

impl FromStr for BackendChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "ndarray" => Ok(Self::Ndarray),
            "wgpu" => Ok(Self::Wgpu),
            "cuda" => Ok(Self::Cuda),
            other => Err(format!("unknown backend `{other}` (ndarray, wgpu, cuda)")),
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ndarray => "ndarray",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
        })
    }
}

/// The dtype a program computes in (`--dtype auto|bf16|f16|f32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DTypeChoice {
    /// bf16 on CUDA; f16 on wgpu where the adapter has it; f32 otherwise (ndarray).
    #[default]
    Auto,
    /// This dtype, or an error when the backend cannot compute in it.
    Fixed(FloatDType),
}

impl FromStr for DTypeChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "bf16" => Ok(Self::Fixed(FloatDType::BF16)),
            "f16" => Ok(Self::Fixed(FloatDType::F16)),
            "f32" => Ok(Self::Fixed(FloatDType::F32)),
            other => Err(format!("unknown dtype `{other}` (auto, bf16, f16, f32)")),
        }
    }
}

impl fmt::Display for DTypeChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Fixed(dtype) => f.write_str(dtype_name(*dtype)),
        }
    }
}

impl DTypeChoice {
    /// The dtype to load a model in on `device` of `backend` (`B` is that backend).
    pub fn resolve<B: burn::tensor::backend::Backend>(
        self,
        backend: BackendChoice,
        device: &B::Device,
    ) -> Result<FloatDType, ModelError> {
        let dtype = match (self, backend) {
            (Self::Fixed(dtype), _) => dtype,
            (Self::Auto, BackendChoice::Cuda) => FloatDType::BF16,
            (Self::Auto, BackendChoice::Wgpu)
                if B::supports_dtype(device, FloatDType::F16.into()) =>
            {
                FloatDType::F16
            }
            (Self::Auto, _) => FloatDType::F32,
        };
        check_dtype::<B>(device, dtype)?;
        Ok(dtype)
    }
}

/// Work that is generic over the backend; [`run_on`] picks the concrete one.
pub trait BackendTask {
    /// What the work returns.
    type Output;
    /// The work's error type (must accept a missing-backend error).
    type Error: From<ModelError>;
    /// Runs on backend `B` with its default device.
    fn run<B: FluxBackend>(
        self,
        device: B::Device,
    ) -> std::result::Result<Self::Output, Self::Error>;
}

fn not_built(choice: BackendChoice) -> ModelError {
    ModelError::InvalidArgument {
        argument: "backend".into(),
        message: format!("`{choice}` is not in this build: rebuild with `--features {choice}`"),
    }
}

/// Runs `task` on the chosen backend, or says which cargo feature is missing.
pub fn run_on<T: BackendTask>(
    choice: BackendChoice,
    task: T,
) -> std::result::Result<T::Output, T::Error> {
    match choice {
        #[cfg(feature = "ndarray")]
        BackendChoice::Ndarray => task.run::<burn::backend::NdArray<f32>>(Default::default()),
        #[cfg(feature = "wgpu")]
        BackendChoice::Wgpu => task.run::<burn::backend::Wgpu>(Default::default()),
        #[cfg(feature = "cuda")]
        BackendChoice::Cuda => {
            // Kernels compiled by an earlier run load from disk: a warm start.
            flux_attention::enable_kernel_cache();
            task.run::<burn::backend::Cuda>(Default::default())
        }
        #[allow(unreachable_patterns)]
        other => Err(not_built(other).into()),
    }
}

/// The device numbered `index` (a GPU number, as in `--devices 0,1`) of backend `B`'s kind.
pub fn device_number<B: burn::tensor::backend::Backend>(
    index: usize,
) -> Result<B::Device, ModelError> {
    use burn::tensor::backend::{Device, DeviceOps};
    let mut id = B::Device::default().id();
    id.index_id = u16::try_from(index).map_err(|_| ModelError::InvalidArgument {
        argument: "devices".into(),
        message: format!("device number {index} is out of range"),
    })?;
    Ok(<B::Device as Device>::from_id(id))
}

/// Backends that router training can spread over several devices. With the cargo feature
/// `distributed` these are burn's distributed backends (cuda, wgpu: burn then requires one
/// under autodiff, so ndarray cannot train in such a build); without it, every backend.
#[cfg(feature = "distributed")]
pub trait DataParallelBackend: burn::tensor::backend::distributed::DistributedBackend {}
#[cfg(feature = "distributed")]
impl<B: burn::tensor::backend::distributed::DistributedBackend> DataParallelBackend for B {}
/// Backends that router training can spread over several devices: without the cargo feature
/// `distributed`, every backend (and none runs on more than one device).
#[cfg(not(feature = "distributed"))]
pub trait DataParallelBackend {}
#[cfg(not(feature = "distributed"))]
impl<B> DataParallelBackend for B {}

/// Work that trains: generic over an autodiff backend whose inner backend runs inference;
/// [`run_autodiff_on`] picks the concrete one.
pub trait AutodiffTask {
    /// What the work returns.
    type Output;
    /// The work's error type (must accept a missing-backend error).
    type Error: From<ModelError>;
    /// Runs on backend `B` with its default device.
    fn run<B>(self, device: B::Device) -> std::result::Result<Self::Output, Self::Error>
    where
        B: burn::tensor::backend::AutodiffBackend + FluxBackend + DataParallelBackend,
        B::InnerBackend: FluxBackend;
}

/// Runs `task` on `Autodiff` over the chosen backend, or says which cargo feature is missing.
pub fn run_autodiff_on<T: AutodiffTask>(
    choice: BackendChoice,
    task: T,
) -> std::result::Result<T::Output, T::Error> {
    use burn::backend::Autodiff;
    match choice {
        #[cfg(all(feature = "ndarray", not(feature = "distributed")))]
        BackendChoice::Ndarray => {
            task.run::<Autodiff<burn::backend::NdArray<f32>>>(Default::default())
        }
        #[cfg(feature = "distributed")]
        BackendChoice::Ndarray => Err(ModelError::InvalidArgument {
            argument: "backend".into(),
            message: "ndarray cannot train in a build with the `distributed` feature (burn's autodiff then needs a distributed backend): use cuda or wgpu, or a build without `distributed`".into(),
        }
        .into()),
        #[cfg(feature = "wgpu")]
        BackendChoice::Wgpu => task.run::<Autodiff<burn::backend::Wgpu>>(Default::default()),
        #[cfg(feature = "cuda")]
        BackendChoice::Cuda => {
            flux_attention::enable_kernel_cache();
            task.run::<Autodiff<burn::backend::Cuda>>(Default::default())
        }
        #[allow(unreachable_patterns)]
        other => Err(not_built(other).into()),
    }
}
