//! Small WGSL-writing helpers shared by the kernel generators: index
//! arithmetic over baked shapes, literals, and the 1-D kernel skeleton.

use crate::{Kernel, KernelArg, Phys};

/// Threads per workgroup of 1-D kernels.
pub const WG: u32 = 256;
/// WebGPU's limit on workgroups per grid dimension.
pub const MAX_GROUPS: u32 = 65535;

/// Workgroup counts covering `n` threads in groups of `wg`, spilling into y
/// when x would pass the per-dimension limit.
pub fn grid_1d(n: usize, wg: u32) -> [u32; 3] {
    let groups = n.div_ceil(wg as usize).max(1);
    if groups <= MAX_GROUPS as usize {
        return [groups as u32, 1, 1];
    }
    let y = groups.div_ceil(MAX_GROUPS as usize);
    let x = groups.div_ceil(y);
    [x as u32, y as u32, 1]
}

/// A kernel running `body` once per element index `i` in `0..n`.
/// `body` sees `i: u32`.
pub fn kernel_1d(name: &str, args: Vec<KernelArg>, n: usize, helpers: &str, body: &str) -> Kernel {
    let workgroups = grid_1d(n, WG);
    let stride = workgroups[0] * WG;
    let body = format!(
        "{helpers}
@compute @workgroup_size({WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {{
    let i = gid.x + gid.y * {stride}u;
    if (i >= {n}u) {{ return; }}
{body}
}}
"
    );
    Kernel { name: name.to_string(), args, body, workgroup_size: [WG, 1, 1], workgroups, flops: 0 }
}

/// `ld4_<name>(i)` of a wide argument (`KernelArg::wide`) from its `ld_`:
/// the 32-bit patterns of elements `4i .. 4i + 3`, four loads. Where the
/// argument is bound as quads its prelude reads them with one load instead.
pub fn quads_from_loads(name: &str) -> String {
    format!(
        "fn ld4_{name}(i: u32) -> vec4<u32> {{ let e = 4u * i; \
         return bitcast<vec4<u32>>(vec4(ld_{name}(e), ld_{name}(e + 1u), ld_{name}(e + 2u), ld_{name}(e + 3u))); }}\n"
    )
}

/// Row-major strides of a shape.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// WGSL statements splitting linear index `idx` into coordinates named
/// `{prefix}0..{prefix}{rank-1}` over `shape`.
pub fn unravel(prefix: &str, idx: &str, shape: &[usize]) -> String {
    let st = strides(shape);
    let mut out = String::new();
    for (d, (&dim, &s)) in shape.iter().zip(&st).enumerate() {
        // An empty tensor has zero strides; its kernels never reach this
        // code, but the text must still be valid WGSL (no division by 0u).
        let (dim, s) = (dim.max(1), s.max(1));
        if d == 0 {
            out += &format!("    let {prefix}{d} = {idx} / {s}u;\n");
        } else {
            out += &format!("    let {prefix}{d} = ({idx} / {s}u) % {dim}u;\n");
        }
    }
    out
}

/// WGSL expression for the linear index into a tensor of `in_shape`
/// broadcast (numpy rules, right-aligned) to coordinates `{prefix}d` of
/// `out_shape`.
pub fn broadcast_index(prefix: &str, out_shape: &[usize], in_shape: &[usize]) -> String {
    let st = strides(in_shape);
    let off = out_shape.len() - in_shape.len();
    let terms: Vec<String> = in_shape
        .iter()
        .enumerate()
        .filter(|&(_, &d)| d != 1)
        .map(|(d, _)| format!("{prefix}{} * {}u", d + off, st[d]))
        .collect();
    if terms.is_empty() { "0u".to_string() } else { terms.join(" + ") }
}

/// A WGSL f32 literal for any value, infinities and NaN included.
pub fn f32_lit(x: f32) -> String {
    if x.is_finite() {
        if x < 0.0 { format!("({:?}f)", x) } else { format!("{:?}f", x) }
    } else {
        format!("bitcast<f32>({}u)", x.to_bits())
    }
}

/// A WGSL literal of physical type `p` for value `x`.
pub fn lit(p: Phys, x: f64) -> String {
    match p {
        Phys::F32 => f32_lit(x as f32),
        Phys::I32 => {
            let v = x.clamp(i32::MIN as f64, i32::MAX as f64) as i32;
            if v == i32::MIN { "i32(-2147483648)".to_string() } else { format!("i32({v})") }
        }
        Phys::U32 => format!("{}u", x.clamp(0.0, u32::MAX as f64) as u32),
    }
}
