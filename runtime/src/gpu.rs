//! Opening a GPU and deciding how kernels reach it.
//!
//! [`Gpu`] holds the wgpu instance, adapter, device and queue, and the
//! [`ShaderPath`] that sessions of trusted models on it use: SPIR-V
//! passthrough on Vulkan and MSL passthrough on Metal (the compiler already
//! validated those with naga), WGSL (translated by naga at load) elsewhere.
//! Sessions of untrusted models always take the WGSL path.
//! GL is never used: its compute support is too uneven to be worth it.

use std::sync::{Arc, Mutex};

use crate::bundle::Need;
use crate::error::{Error, Result};

/// How kernels are turned into pipelines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShaderPath {
    /// `Kernel::spirv` handed to Vulkan as is.
    SpirvPassthrough,
    /// `Kernel::msl` handed to Metal as is.
    MslPassthrough,
    /// `Kernel::wgsl` (or, lacking it, `Kernel::spirv`) through naga.
    Wgsl,
}

impl ShaderPath {
    pub fn name(self) -> &'static str {
        match self {
            ShaderPath::SpirvPassthrough => "spirv-passthrough",
            ShaderPath::MslPassthrough => "msl-passthrough",
            ShaderPath::Wgsl => "wgsl",
        }
    }
}

/// Choices for [`Gpu::with_options`]; [`GpuOptions::from_env`] reads them
/// from `DRIFT_BACKEND` and `DRIFT_SHADERS`.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Use only this backend instead of the best available.
    pub backend: Option<wgpu::Backend>,
    /// Use the WGSL path even where passthrough is available.
    pub force_wgsl: bool,
}

impl GpuOptions {
    /// `DRIFT_BACKEND=vulkan|metal|dx12|webgpu` forces a backend;
    /// `DRIFT_SHADERS=wgsl` forces the WGSL path.
    pub fn from_env() -> Result<GpuOptions> {
        let backend = match std::env::var("DRIFT_BACKEND").ok().as_deref() {
            None | Some("") => None,
            Some("vulkan") => Some(wgpu::Backend::Vulkan),
            Some("metal") => Some(wgpu::Backend::Metal),
            Some("dx12") => Some(wgpu::Backend::Dx12),
            Some("webgpu") => Some(wgpu::Backend::BrowserWebGpu),
            Some(other) => {
                return Err(bad_env("DRIFT_BACKEND", other, "vulkan, metal, dx12, webgpu"));
            }
        };
        let force_wgsl = match std::env::var("DRIFT_SHADERS").ok().as_deref() {
            None | Some("") | Some("auto") => false,
            Some("wgsl") => true,
            Some(other) => return Err(bad_env("DRIFT_SHADERS", other, "auto, wgsl")),
        };
        Ok(GpuOptions { backend, force_wgsl })
    }
}

fn bad_env(var: &'static str, value: &str, allowed: &'static str) -> Error {
    Error::BadEnv { var, value: value.to_string(), allowed }
}

/// Features requested when the adapter has them: passthrough for the fast
/// shader path, timestamps (also between dispatches) for profiling, f16,
/// subgroups and cooperative matrices for kernels that use them
/// (passthrough SPIR-V gets only the Vulkan features wgpu enabled).
const WANTED_FEATURES: wgpu::Features = wgpu::Features::PASSTHROUGH_SHADERS
    .union(wgpu::Features::TIMESTAMP_QUERY)
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES)
    .union(wgpu::Features::SHADER_F16)
    .union(wgpu::Features::SUBGROUP)
    .union(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX);

/// An open GPU. Sessions clone its device and queue handles.
pub struct Gpu {
    pub(crate) adapter: wgpu::Adapter,
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) shader_path: ShaderPath,
    /// The first error wgpu reported outside an error scope; see [`Gpu::take_error`].
    pub(crate) errors: Arc<Mutex<Option<String>>>,
    // Kept alive for as long as the device, as wgpu's examples do.
    _instance: wgpu::Instance,
}

/// What [`Gpu::info`] reports.
#[derive(Clone, Debug)]
pub struct GpuInfo {
    pub adapter: String,
    pub backend: String,
    pub driver: String,
    pub shader_path: ShaderPath,
}

impl std::fmt::Display for GpuInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (a, b, d, s) = (&self.adapter, &self.backend, &self.driver, self.shader_path.name());
        write!(f, "{a} ({b}, driver {d}, shaders: {s})")
    }
}

impl Gpu {
    /// Opens the best GPU, honouring `DRIFT_BACKEND` and `DRIFT_SHADERS`.
    pub fn new() -> Result<Gpu> {
        Gpu::with_options(&GpuOptions::from_env()?)
    }

    /// Opens the best GPU allowed by `options`.
    pub fn with_options(options: &GpuOptions) -> Result<Gpu> {
        let backends = match options.backend {
            Some(b) => wgpu::Backends::from(b),
            None => {
                wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12 | wgpu::Backends::BROWSER_WEBGPU
            }
        };
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = backends;
        let instance = wgpu::Instance::new(desc);
        let adapter_options = wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        };
        let adapter = pollster::block_on(instance.request_adapter(&adapter_options))
            .map_err(|e| Error::NoAdapter(format!("backends {backends:?}: {e}")))?;
        let features = adapter.features() & WANTED_FEATURES;
        let experimental_features = if features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
            // SAFETY: only kernels the compiler validated use the feature, and
            // only where the adapter reports it.
            unsafe { wgpu::ExperimentalFeatures::enabled() }
        } else {
            wgpu::ExperimentalFeatures::disabled()
        };
        let device_desc = wgpu::DeviceDescriptor {
            label: Some("drift"),
            required_features: features,
            // Large models need the adapter's real binding sizes, not WebGPU's defaults.
            required_limits: adapter.limits(),
            experimental_features,
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&device_desc))
            .map_err(|e| Error::RequestDevice(e.to_string()))?;

        // wgpu's default handler panics; keep the first error for `run` to report.
        let errors = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&errors);
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut slot) = slot.lock() {
                slot.get_or_insert_with(|| e.to_string());
            }
        }));
        // A lost device (a kernel that crashed the driver) otherwise surfaces
        // only as a failed map with no reason; keep the reason for `run`.
        let slot = Arc::clone(&errors);
        device.set_device_lost_callback(move |reason, message| {
            if reason == wgpu::DeviceLostReason::Destroyed {
                return;
            }
            if let Ok(mut slot) = slot.lock() {
                slot.get_or_insert_with(|| {
                    format!(
                        "the GPU device was lost ({message}); a kernel crashed the driver \
                         (recompile the bundle if the file may be damaged)"
                    )
                });
            }
        });

        let shader_path = choose_path(adapter.get_info().backend, features, options.force_wgsl);
        Ok(Gpu { adapter, device, queue, shader_path, errors, _instance: instance })
    }

    /// Adapter name, backend, driver and shader path, for logs and reports.
    pub fn info(&self) -> GpuInfo {
        let info = self.adapter.get_info();
        GpuInfo {
            adapter: info.name,
            backend: info.backend.to_string(),
            driver: format!("{} {}", info.driver, info.driver_info).trim().to_string(),
            shader_path: self.shader_path,
        }
    }

    /// The adapter's PCI vendor id (0x10de NVIDIA, 0x1002 AMD, ...).
    pub fn vendor(&self) -> u32 {
        self.adapter.get_info().vendor
    }

    /// Whether the device has what kernels with `need` use.
    pub fn has(&self, need: Need) -> bool {
        let f = self.device.features();
        match need {
            Need::F16 => f.contains(wgpu::Features::SHADER_F16),
            Need::CooperativeMatrix => f.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX),
        }
    }

    pub fn shader_path(&self) -> ShaderPath {
        self.shader_path
    }

    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    pub fn adapter(&self) -> &wgpu::Adapter {
        &self.adapter
    }

    /// Takes the first uncaptured wgpu error since the last call, if any.
    pub fn take_error(&self) -> Option<String> {
        take_error(&self.errors)
    }
}

pub(crate) fn take_error(errors: &Mutex<Option<String>>) -> Option<String> {
    // A poisoned lock only means a panic elsewhere; the slot is still usable.
    errors.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// Passthrough where the backend has it and it was not overridden.
fn choose_path(backend: wgpu::Backend, features: wgpu::Features, force_wgsl: bool) -> ShaderPath {
    let passthrough = features.contains(wgpu::Features::PASSTHROUGH_SHADERS) && !force_wgsl;
    match backend {
        wgpu::Backend::Vulkan if passthrough => ShaderPath::SpirvPassthrough,
        wgpu::Backend::Metal if passthrough => ShaderPath::MslPassthrough,
        _ => ShaderPath::Wgsl,
    }
}
