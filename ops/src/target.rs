//! Device targets: the choices a kernel generator makes per GPU family.
//!
//! `drift compile --target generic,nvidia,...` lowers the graph once per
//! target; each target's kernels go into the bundle as one kernel set and the
//! runtime picks the set matching the adapter. What differs between targets
//! is only how products (MatMul, Gemm, Conv) are tiled and whether they may
//! use cooperative-matrix (tensor-core) instructions; every other op lowers
//! the same everywhere.
//!
//! The vendor numbers are PCI vendor ids, as wgpu's `AdapterInfo::vendor`
//! reports them. Tile sizes for targets other than `generic` and `nvidia`
//! follow each vendor's published guidance (wave size, local memory) and are
//! untested on that hardware: the kernels are the same generator with other
//! constants, validated by naga and tested for correctness on lavapipe.

/// One tile configuration of the tiled product kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    pub bm: usize,
    pub bn: usize,
    pub bk: usize,
    pub tm: usize,
    pub tn: usize,
}

impl Tile {
    pub const fn threads(&self) -> usize {
        (self.bm / self.tm) * (self.bn / self.tn)
    }
}

/// Overrides of the product heuristics for one compile (`drift compile
/// --tune`): calibration sweeps on a device force a tile, a split or a
/// conv kernel, time the result and write the winners back into the
/// target tables. Empty by default: the heuristics decide.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tuning {
    /// Workgroups a product should spread over (overrides `Target::fill`).
    pub fill: Option<usize>,
    /// Fewest `bk` slices of the reduction one part keeps when split.
    pub min_slices: Option<usize>,
    /// Parts the reduction splits into (1: never split).
    pub split: Option<usize>,
    /// The f32 tile, as `Tile`, instead of choosing from `Target::tiles`.
    pub tile: Option<Tile>,
    /// The cooperative-matrix tile `[bm, bn, bk, wm, wn]`.
    pub coop: Option<[usize; 5]>,
    /// Grouped convolutions too thin to tile (depthwise) on the direct
    /// gather kernel (`Some(true)`) or the register-blocked product.
    pub direct_grouped: Option<bool>,
    /// Split reductions meet in the product kernel (`Some(true)`, the
    /// default: the last workgroup of a tile adds the parts) or in a
    /// second kernel.
    pub split_in_kernel: Option<bool>,
}

/// Everything a kernel generator may specialize on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// The name users give to `--target` and `drift inspect` shows.
    pub name: &'static str,
    /// PCI vendor ids this target is for; empty for `generic`.
    pub vendors: &'static [u32],
    /// Product tiles, largest first: a product takes the largest that still
    /// gives enough workgroups to fill the GPU. Empty: register blocks read
    /// straight from memory, no workgroup memory (best on lavapipe, where
    /// every load is a per-lane loop).
    pub tiles: &'static [Tile],
    /// Threads per SIMD group (warp, wavefront) the tiles are laid out for.
    pub subgroup: u32,
    /// Workgroups a product should spread over to fill the GPU (about two
    /// per compute unit); fewer make it split the reduction.
    pub fill: usize,
    /// Cooperative-matrix 16x16 f16 products with f32 accumulation, used
    /// where the precision is f16.
    pub cooperative_matrix: bool,
    /// Largest storage binding the target's GPUs allow.
    pub max_binding_bytes: u64,
    /// Activations stored as f16 (`--precision f16`); set by the compiler.
    pub f16: bool,
    /// Overrides from `drift compile --tune`; set by the compiler.
    pub tuning: Tuning,
}

/// NVIDIA, from the H100 sweep (`tests/bench/tune.py`): 128x128 for
/// products that fill the GPU, then 128x64 (a 1024x768 product ran 1.7x
/// faster than on 128x128 tiles, which left SMs idle); smaller products
/// split their reduction over 64x64 tiles (1.4-2.5x faster than 32x32 ones
/// split less, on ResNet-50 and BERT shapes at batch 1); 32x32 where the
/// reduction is too short to split.
const NVIDIA_TILES: &[Tile] = &[
    Tile { bm: 128, bn: 128, bk: 16, tm: 8, tn: 8 },
    Tile { bm: 128, bn: 64, bk: 16, tm: 8, tn: 4 },
    Tile { bm: 64, bn: 64, bk: 16, tm: 4, tn: 4 },
    Tile { bm: 32, bn: 32, bk: 32, tm: 2, tn: 2 },
];
/// Tiles for desktop GPUs with 32-wide warps and 48+ KiB of shared memory.
const DESKTOP_TILES: &[Tile] = &[
    Tile { bm: 128, bn: 128, bk: 16, tm: 8, tn: 8 },
    Tile { bm: 64, bn: 64, bk: 16, tm: 4, tn: 4 },
    Tile { bm: 32, bn: 32, bk: 32, tm: 2, tn: 2 },
];
/// Wave64 GPUs (AMD): 256-thread groups are four waves.
const AMD_TILES: &[Tile] = &[
    Tile { bm: 128, bn: 128, bk: 16, tm: 8, tn: 8 },
    Tile { bm: 64, bn: 64, bk: 16, tm: 4, tn: 4 },
    Tile { bm: 32, bn: 64, bk: 16, tm: 2, tn: 4 },
];
/// Mobile GPUs: small local memory, 64-128 thread groups.
const MOBILE_TILES: &[Tile] =
    &[Tile { bm: 64, bn: 64, bk: 8, tm: 8, tn: 4 }, Tile { bm: 32, bn: 32, bk: 8, tm: 4, tn: 4 }];

const MIB: u64 = 1 << 20;

impl Target {
    /// The fallback every bundle carries: what the test suite runs on lavapipe.
    pub const GENERIC: Target = Target {
        name: "generic",
        vendors: &[],
        tiles: &[],
        subgroup: 8,
        fill: 8,
        cooperative_matrix: false,
        max_binding_bytes: 128 * MIB,
        f16: false,
        tuning: Tuning::EMPTY,
    };

    /// Every target `--target` accepts, in the order the runtime tries them.
    pub const ALL: &'static [Target] = &[
        Target::GENERIC,
        Target {
            name: "nvidia",
            vendors: &[0x10de],
            tiles: NVIDIA_TILES,
            subgroup: 32,
            // 132 SMs on an H100/H200; about three workgroups each (the
            // sweep's best splits gave 320-512 workgroups).
            fill: 384,
            cooperative_matrix: true,
            max_binding_bytes: 2048 * MIB - 4,
            f16: false,
            tuning: Tuning::EMPTY,
        },
        Target {
            name: "amd",
            vendors: &[0x1002],
            tiles: AMD_TILES,
            subgroup: 64,
            fill: 192,
            cooperative_matrix: true,
            max_binding_bytes: 2048 * MIB - 4,
            f16: false,
            tuning: Tuning::EMPTY,
        },
        Target {
            name: "intel",
            vendors: &[0x8086],
            tiles: DESKTOP_TILES,
            subgroup: 16,
            fill: 128,
            cooperative_matrix: false,
            max_binding_bytes: 1024 * MIB,
            f16: false,
            tuning: Tuning::EMPTY,
        },
        Target {
            name: "apple",
            vendors: &[0x106b],
            tiles: DESKTOP_TILES,
            subgroup: 32,
            fill: 64,
            cooperative_matrix: false,
            max_binding_bytes: 1024 * MIB,
            f16: false,
            tuning: Tuning::EMPTY,
        },
        Target {
            name: "adreno",
            vendors: &[0x5143],
            tiles: MOBILE_TILES,
            subgroup: 64,
            fill: 16,
            cooperative_matrix: false,
            max_binding_bytes: 128 * MIB,
            f16: false,
            tuning: Tuning::EMPTY,
        },
        Target {
            name: "mali",
            vendors: &[0x13b5],
            tiles: MOBILE_TILES,
            subgroup: 16,
            fill: 16,
            cooperative_matrix: false,
            max_binding_bytes: 128 * MIB,
            f16: false,
            tuning: Tuning::EMPTY,
        },
    ];

    /// The target called `name`, if any.
    pub fn named(name: &str) -> Option<Target> {
        Target::ALL.iter().copied().find(|t| t.name == name)
    }

    /// Whether products may use cooperative-matrix kernels: only where
    /// activations are f16 anyway, since the tiles multiply in f16.
    pub fn use_cooperative(&self) -> bool {
        self.cooperative_matrix && self.f16
    }
}

impl Tuning {
    const EMPTY: Tuning = Tuning {
        fill: None,
        min_slices: None,
        split: None,
        tile: None,
        coop: None,
        direct_grouped: None,
        split_in_kernel: None,
    };

    /// Parses `key=value` pairs separated by commas: `fill=N`,
    /// `slices=N`, `split=N`, `tile=BMxBNxBKxTMxTN`, `coop=BMxBNxBKxWMxWN`,
    /// `grouped=direct|product`, `split-meet=kernel|pass`.
    pub fn parse(text: &str) -> std::result::Result<Tuning, String> {
        let mut t = Tuning::default();
        for item in text.split(',').filter(|s| !s.is_empty()) {
            let (key, value) = item.split_once('=').ok_or_else(|| format!("{item}: expected KEY=VALUE"))?;
            let num = || {
                value
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or(format!("{key}={value}: expected a positive integer"))
            };
            let five = || -> std::result::Result<[usize; 5], String> {
                let v: Vec<usize> = value.split('x').filter_map(|n| n.parse().ok()).collect();
                match v[..] {
                    [a, b, c, d, e] if v.iter().all(|&n| n > 0) => Ok([a, b, c, d, e]),
                    _ => Err(format!("{key}={value}: expected five positive sizes like 64x64x16x4x4")),
                }
            };
            match key {
                "fill" => t.fill = Some(num()?),
                "slices" => t.min_slices = Some(num()?),
                "split" => t.split = Some(num()?),
                "tile" => {
                    let [bm, bn, bk, tm, tn] = five()?;
                    let tile = Tile { bm, bn, bk, tm, tn };
                    if bm % tm != 0 || bn % tn != 0 || !(32..=1024).contains(&tile.threads()) {
                        return Err(format!("tile={value}: tm and tn must divide bm and bn, with 32..=1024 threads"));
                    }
                    if (bm * bk) % tile.threads() != 0 || (bn * bk) % tile.threads() != 0 {
                        return Err(format!("tile={value}: the threads must share each operand tile evenly"));
                    }
                    t.tile = Some(tile);
                }
                "coop" => {
                    let c = five()?;
                    let [bm, bn, bk, wm, wn] = c;
                    let warps = (bm / wm.max(1)) * (bn / wn.max(1));
                    if bm % wm != 0 || bn % wn != 0 || wm % 16 != 0 || wn % 16 != 0 || bk % 16 != 0 || warps > 32 {
                        return Err(format!(
                            "coop={value}: 16-multiples, warp tiles dividing the tile, at most 32 warps"
                        ));
                    }
                    t.coop = Some(c);
                }
                "grouped" => {
                    t.direct_grouped = match value {
                        "direct" => Some(true),
                        "product" => Some(false),
                        _ => return Err(format!("grouped={value}: expected direct or product")),
                    }
                }
                "split-meet" => {
                    t.split_in_kernel = match value {
                        "kernel" => Some(true),
                        "pass" => Some(false),
                        _ => return Err(format!("split-meet={value}: expected kernel or pass")),
                    }
                }
                _ => {
                    return Err(format!(
                        "--tune {key}: unknown (fill, slices, split, tile, coop, grouped, split-meet)"
                    ));
                }
            }
        }
        Ok(t)
    }
}

impl Default for Target {
    fn default() -> Self {
        Target::GENERIC
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_fit_a_workgroup() {
        for t in Target::ALL {
            for tile in t.tiles {
                assert!(tile.threads() <= 256 && tile.threads() >= 32, "{}: {tile:?}", t.name);
                assert_eq!(tile.bm % tile.tm, 0);
                assert_eq!(tile.bn % tile.tn, 0);
                assert_eq!((tile.bm * tile.bk) % tile.threads(), 0, "{}: {tile:?}", t.name);
                assert_eq!((tile.bn * tile.bk) % tile.threads(), 0, "{}: {tile:?}", t.name);
            }
        }
        assert_eq!(Target::named("nvidia").map(|t| t.vendors), Some(&[0x10de][..]));
        assert!(Target::named("cray").is_none());
    }
}
