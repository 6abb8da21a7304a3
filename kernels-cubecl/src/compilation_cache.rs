//! cubecl's on-disk cache of compiled kernels, switched on for flux's programs so that a
//! kernel compiles once per machine, not once per process (CUDA: the PTX of each kernel).

use std::path::PathBuf;

use cubecl::config::{cache::CacheConfig, CubeClRuntimeConfig, RuntimeConfig};

/// Where compiled kernels are kept: `$FLUX_KERNEL_CACHE`, else `$XDG_CACHE_HOME/flux/kernels`,
/// else `~/.cache/flux/kernels`; `None` when `FLUX_KERNEL_CACHE=off` or no home is known.
pub fn kernel_cache_dir() -> Option<PathBuf> {
    match std::env::var_os("FLUX_KERNEL_CACHE") {
        Some(v) if v == "off" => None,
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|base| base.join("flux").join("kernels")),
    }
}

/// Turns on cubecl's compiled-kernel cache in [`kernel_cache_dir`], unless a `cubecl.toml` /
/// `burn.toml` already chose a cache or cubecl's configuration was read before (then nothing
/// changes). Call it first thing, before any device is used. Returns the directory in use.
pub fn enable_kernel_cache() -> Option<PathBuf> {
    let mut slot = CubeClRuntimeConfig::storage().lock();
    if slot.is_some() {
        return None;
    }
    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    let dir = match &config.compilation.cache {
        Some(chosen) => Some(chosen.root()),
        None => {
            let dir = kernel_cache_dir()?;
            std::fs::create_dir_all(&dir).ok()?;
            config.compilation.cache = Some(CacheConfig::File(dir.clone()));
            Some(dir)
        }
    };
    *slot = Some(std::sync::Arc::new(config));
    dir
}
